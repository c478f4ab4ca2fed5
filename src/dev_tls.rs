//! A throwaway certificate authority for TLS on loopback: the quickstart, tests and benchmarks
//! use real TLS with certificates made at start. Never use it for a deployment.

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct Error(String);

/// A CA and one server certificate it signed.
#[derive(Debug)]
pub struct ThrowawayCa {
    /// The CA certificate (PEM): what clients trust.
    pub ca_pem: String,
    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8 PEM).
    pub server_key_pem: String,
}

impl ThrowawayCa {
    /// Makes a CA and a server certificate for `names` (host names or IP addresses).
    pub fn new(names: &[&str]) -> Result<Self, Error> {
        let err = |e: rcgen::Error| Error(e.to_string());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tidegate throwaway CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;

        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tidegate control plane");
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &ca).map_err(err)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        })
    }

    /// The server identity for [`tidegate_control_plane::ServerTls`].
    pub fn server_tls(&self) -> tidegate_control_plane::ServerTls {
        tidegate_control_plane::ServerTls::from_pem(&self.server_cert_pem, &self.server_key_pem)
    }
}
