//! The Tidegate control plane as a library: start one in-process with [`ControlPlane::start`].
//!
//! It serves, on one TLS port (TLS 1.2 and 1.3 only):
//!
//! * the REST API under `/api/v1` for operators (gateways and their enrollment, connections,
//!   data tasks, runs), authorized through `tidegate-rbac`, deny by default;
//! * `/v1/gateway/connect`, where gateways open their WebSocket command-and-control link,
//!   authenticated with a TLS-bound JWT and sealed with per-connection channel keys.
//!
//! It never opens a connection to a gateway, and no message it can receive carries row data.
//! The binary `tidegate-control-plane` only reads configuration and calls [`ControlPlane::start`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod sessions;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidegate_metadata::MemoryStore;
use tidegate_proto::SecretString;
use tidegate_rbac::Authorizer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use tls::ServerTls;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TLS certificate or key could not be used.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The authorization engine failed to start.
    #[error("authorization: {0}")]
    Rbac(#[from] tidegate_rbac::Error),
}

/// How to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Where to listen. Port 0 picks a free port ([`RunningControlPlane::local_addr`]).
    pub listen: SocketAddr,
    /// The server certificate and key.
    pub tls: ServerTls,
    /// This control plane's id: the audience gateway tokens must name.
    pub id: String,
    /// Bearer tokens of operators with the operator role. Stored as given; keep them secret.
    pub operator_tokens: Vec<SecretString>,
    /// How often each side of a gateway link sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long an enrollment token stays valid.
    pub enrollment_ttl: Duration,
}

impl ControlPlaneConfig {
    /// A configuration with defaults for everything but the TLS identity.
    pub fn new(tls: ServerTls) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls,
            id: "tidegate-control-plane".to_owned(),
            operator_tokens: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            enrollment_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// State shared by the API and the gateway sessions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) store: MemoryStore,
    pub(crate) authz: Authorizer,
    pub(crate) sessions: sessions::Sessions,
    pub(crate) shutdown: CancellationToken,
}

/// Entry point: see [`ControlPlane::start`].
#[derive(Debug)]
pub struct ControlPlane;

impl ControlPlane {
    /// Starts a control plane and returns once it listens.
    pub async fn start(config: ControlPlaneConfig) -> Result<RunningControlPlane, Error> {
        let server_config = config.tls.server_config()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let authz = Authorizer::new().await?;
        for (i, _) in config.operator_tokens.iter().enumerate() {
            authz.add_operator(&api::operator_subject(i)).await?;
        }
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            store: MemoryStore::new(),
            authz,
            sessions: sessions::Sessions::default(),
            shutdown: shutdown.clone(),
        });
        let router = api::router(shared.clone());
        let task = tokio::spawn(tls::serve(
            listener,
            server_config,
            router,
            shutdown.clone(),
        ));
        tracing::info!(message = "control plane listening", %local_addr);
        Ok(RunningControlPlane {
            local_addr,
            shared,
            shutdown,
            task,
        })
    }
}

/// A running control plane. Dropping it does not stop it: call [`RunningControlPlane::shutdown`].
#[derive(Debug)]
pub struct RunningControlPlane {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningControlPlane {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its metadata, for inspection by embedders and tests.
    pub fn store(&self) -> &MemoryStore {
        &self.shared.store
    }

    /// Stops accepting connections, says goodbye to connected gateways and waits for the
    /// listener to stop.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
