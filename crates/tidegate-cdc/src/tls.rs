//! rustls client configurations for the `sslmode`s, on the aws-lc-rs provider.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{ConnectConfig, SslMode};

/// The client configuration for `config`'s TLS mode; `Err` holds a reason for the error.
pub(crate) fn client_config(config: &ConnectConfig) -> Result<ClientConfig, String> {
    // The provider is named, not taken from the process default: the crate works whether or
    // not the application installed one, and never with a second provider.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("no TLS protocol version: {error}"))?;
    let algorithms = provider.signature_verification_algorithms;
    let tls = match config.ssl_mode {
        SslMode::Disable => return Err("TLS is disabled".to_owned()),
        // As libpq: encrypted, but any certificate is accepted.
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms }))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(config)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|error| format!("cannot build the certificate verifier: {error}"))?;
            if config.ssl_mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(tls)
}

/// The name the certificate is checked against (and sent as SNI when it is a DNS name).
pub(crate) fn server_name(config: &ConnectConfig) -> Result<ServerName<'static>, String> {
    ServerName::try_from(config.host.clone())
        .map_err(|_| "the host is not a valid TLS server name".to_owned())
}

fn roots(config: &ConnectConfig) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let mut add_all = |certificates: Vec<Result<CertificateDer<'static>, _>>, origin: &str| {
        for certificate in certificates {
            let certificate = certificate.map_err(|_| format!("{origin} is not PEM"))?;
            store
                .add(certificate)
                .map_err(|error| format!("a root in {origin} is unusable: {error}"))?;
        }
        Ok::<(), String>(())
    };
    match (&config.ssl_root_cert_pem, &config.ssl_root_cert) {
        (Some(pem), _) => {
            add_all(
                CertificateDer::pem_slice_iter(pem).collect(),
                "the root PEM",
            )?;
        }
        (None, Some(path)) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|_| format!("cannot read sslrootcert {}", path.display()))?;
            add_all(
                certificates.collect(),
                &format!("sslrootcert {}", path.display()),
            )?;
        }
        (None, None) => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err("no system root certificates found; set sslrootcert".to_owned());
            }
        }
    }
    if store.is_empty() {
        return Err("sslrootcert holds no certificate".to_owned());
    }
    Ok(store)
}

/// `sslmode=prefer|require`: the handshake is checked, the certificate is not.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is checked against the roots, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
