//! The TLS listener: TLS 1.2 and 1.3 only, one exported binding per connection.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The control plane's TLS identity: a certificate chain and its private key, in PEM.
#[derive(Clone)]
pub struct ServerTls {
    cert_chain_pem: String,
    key_pem: tidegate_proto::SecretString,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM text: the chain (leaf first) and the private key.
    pub fn from_pem(cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: tidegate_proto::SecretString::new(key_pem),
        }
    }

    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Tls("certificate chain holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.expose().as_bytes())
            .map_err(|e| Error::Tls(format!("private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What the TLS layer tells the application about one connection.
#[derive(Clone, Debug)]
pub(crate) struct TlsInfo {
    /// Exporter output for `tidegate_auth::TLS_EXPORTER_LABEL`: binds gateway tokens.
    pub(crate) auth_binding: [u8; 32],
    /// Exporter output for `tidegate_channel::TLS_EXPORTER_LABEL`: binds channel keys.
    pub(crate) channel_binding: [u8; 32],
    /// The peer's address.
    pub(crate) peer: std::net::SocketAddr,
}

/// Accepts connections until `shutdown` fires. Each connection completes TLS, has its
/// bindings exported, and is served by `router` over HTTP/1.1 with upgrades.
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(message = "accept failed", %error);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Small frames in both directions: Nagle's algorithm with delayed ACKs would add 40 ms
        // stalls to handshakes and commands.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::warn!(message = "TLS handshake refused", %peer, %error);
                    return;
                }
                Err(_) => {
                    tracing::warn!(message = "TLS handshake timed out", %peer);
                    return;
                }
            };
            let conn = tls.get_ref().1;
            let export = |label: &[u8]| conn.export_keying_material([0u8; 32], label, None);
            let info = match (
                export(tidegate_auth::TLS_EXPORTER_LABEL),
                export(tidegate_channel::TLS_EXPORTER_LABEL),
            ) {
                (Ok(auth_binding), Ok(channel_binding)) => TlsInfo {
                    auth_binding,
                    channel_binding,
                    peer,
                },
                _ => {
                    tracing::warn!(message = "TLS exporter unavailable", %peer);
                    return;
                }
            };
            let service = TowerToHyperService::new(router.layer(axum::Extension(info)));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(message = "connection ended with error", %peer, %error);
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
