//! The gateway's TLS client: TLS 1.2 and 1.3 only, system roots and/or a CA bundle, optional
//! pinning of the control plane's certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::Error;

/// How the gateway checks the control plane's certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// Trust the operating system's root certificates.
    pub system_roots: bool,
    /// Trust these CA certificates (PEM), in addition.
    pub ca_bundle_pem: Option<String>,
    /// If not empty, the control plane's leaf certificate must also have one of these SHA-256
    /// digests (of its DER encoding). Pinning adds to chain validation; it never replaces it.
    pub pinned_sha256: Vec<[u8; 32]>,
}

impl ClientTls {
    /// Builds the rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut roots = RootCertStore::empty();
        if self.system_roots {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system store may hold certificates rustls cannot parse; skip those.
                let _ = roots.add(cert);
            }
        }
        if let Some(pem) = &self.ca_bundle_pem {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Config(format!("CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("CA bundle holds no certificate".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("CA bundle: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "no trusted roots: enable system roots or configure a CA bundle".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Config(e.to_string()))?;
        let roots = Arc::new(roots);
        let mut config = if self.pinned_sha256.is_empty() {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinningVerifier {
                    inner,
                    pins: self.pinned_sha256.clone(),
                }))
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Full WebPKI validation, then a check of the leaf against the pins.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&digest) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "control plane certificate does not match the pinned digest".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
