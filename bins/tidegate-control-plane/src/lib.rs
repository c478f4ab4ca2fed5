//! The Tidegate control plane as a library: start one in-process with [`ControlPlane::start`].
//!
//! It serves, on one TLS port (TLS 1.2 and 1.3 only):
//!
//! * the REST API under `/api/v1` for people and tools (logins, users, data spaces and their
//!   members, gateways and their enrollment, connections, data tasks, runs, the audit log),
//!   authorized through `tidegate-rbac`, deny by default;
//! * `/v1/gateway/connect`, where gateways open their WebSocket command-and-control link,
//!   authenticated with a TLS-bound JWT and sealed with per-connection channel keys.
//!
//! Its metadata lives in a `tidegate_metadata::SqlStore` (a SQLite file under the state
//! directory, or a PostgreSQL database several control planes share); connection credentials
//! are sealed there under the tenant's data key (`tidegate-secrets`), whose key-encryption key
//! sits in a `0600` key file beside the database.
//!
//! It never opens a connection to a gateway, and no message it can receive carries row data.
//! The binary `tidegate-control-plane` only reads configuration and calls [`ControlPlane::start`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod parquet_key;
mod sessions;
mod setup;
mod slots;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tidegate_metadata::SqlStore;
use tidegate_proto::SecretString;
use tidegate_rbac::Authorizer;
use tidegate_secrets::Keyring;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::openapi;
pub use parquet_key::ParquetKey;
pub use tidegate_identity::oidc::OidcConfig;
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
    /// The state directory could not be created or used.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata database could not be opened or prepared.
    #[error("metadata: {0}")]
    Metadata(#[from] tidegate_metadata::Error),
    /// The key file or the tenant's data keys could not be used.
    #[error("secrets: {0}")]
    Secrets(#[from] tidegate_secrets::Error),
    /// The bootstrap administrator could not be created.
    #[error("bootstrap administrator: {0}")]
    Bootstrap(String),
    /// The authorization engine failed to start.
    #[error("authorization: {0}")]
    Rbac(#[from] tidegate_rbac::Error),
    /// The tenant's Parquet key could not be made, stored or opened.
    #[error("the tenant's Parquet key: {0}")]
    ParquetKey(String),
}

/// How to run a control plane.
#[derive(Clone)]
pub struct ControlPlaneConfig {
    /// Where to listen. Port 0 picks a free port ([`RunningControlPlane::local_addr`]).
    pub listen: SocketAddr,
    /// The server certificate and key.
    pub tls: ServerTls,
    /// This control plane's id: the audience gateway tokens must name.
    pub id: String,
    /// Break-glass bearer tokens of operators, who may do everything. Stored as given; keep
    /// them secret, and offline once users hold roles.
    pub operator_tokens: Vec<SecretString>,
    /// How often each side of a gateway link sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long an enrollment token stays valid.
    pub enrollment_ttl: Duration,
    /// Where the control plane keeps its state: the metadata database `metadata.db` (unless
    /// [`database_url`](Self::database_url) names another) and the key file `keys` (mode
    /// `0600`). Without one, a private temporary directory is used and removed at
    /// [`RunningControlPlane::shutdown`]: fine for tests and demos, not for keeping anything.
    pub state_dir: Option<PathBuf>,
    /// The metadata database: `sqlite://path?mode=rwc` or `postgres://user:password@host/db`
    /// (control planes that share one PostgreSQL database must share the key file too).
    /// Default: `<state_dir>/metadata.db`. Hidden from `Debug`: it may hold a password.
    pub database_url: Option<String>,
    /// A local user created at start if no user of that name exists, holding every system
    /// role: the first administrator. The password must meet the password policy.
    pub bootstrap_admin: Option<(String, SecretString)>,
    /// How long a login session lasts.
    pub session_ttl: Duration,
    /// Single sign-on through an OpenID provider, if configured.
    pub oidc: Option<OidcConfig>,
    /// Whether a person the OpenID provider vouches for, unknown here, becomes a user (without
    /// any role) at first login; otherwise such a login is refused.
    pub oidc_auto_create: bool,
    /// The OpenAI-compatible endpoints of the AI assist, one per region. A tenant uses one only
    /// once a Data Admin turned the assist on and chose its region.
    pub assist: Vec<tidegate_assist::AssistEndpoint>,
    /// How often the replication slots of stopped and failed change data capture tasks are
    /// inspected through their gateways. Default 60 s.
    pub slot_check_interval: Duration,
    /// A stopped or failed change data capture task whose slot retains more WAL than this
    /// (bytes) gets a warning on its run and in the log. Default 1 GiB.
    pub slot_retention_limit: u64,
}

impl fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("listen", &self.listen)
            .field("id", &self.id)
            .field("operator_tokens", &self.operator_tokens.len())
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("enrollment_ttl", &self.enrollment_ttl)
            .field("state_dir", &self.state_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "bootstrap_admin",
                &self.bootstrap_admin.as_ref().map(|(name, _)| name),
            )
            .field("session_ttl", &self.session_ttl)
            .field("oidc", &self.oidc)
            .field("oidc_auto_create", &self.oidc_auto_create)
            .field("assist", &self.assist)
            .field("slot_check_interval", &self.slot_check_interval)
            .field("slot_retention_limit", &self.slot_retention_limit)
            .finish_non_exhaustive()
    }
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
            state_dir: None,
            database_url: None,
            bootstrap_admin: None,
            session_ttl: Duration::from_secs(12 * 3600),
            oidc: None,
            oidc_auto_create: false,
            assist: Vec::new(),
            slot_check_interval: Duration::from_secs(60),
            slot_retention_limit: 1 << 30,
        }
    }
}

/// State shared by the API and the gateway sessions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) store: SqlStore,
    /// The one tenant this control plane serves.
    pub(crate) tenant_id: String,
    /// The data space of requests that name none.
    pub(crate) default_space_id: String,
    /// The tenant's data keys: seals and opens connection credentials.
    pub(crate) keyring: Keyring,
    pub(crate) authz: Authorizer,
    /// Held while the `Authorizer` is brought in line with the store and a decision is made.
    pub(crate) authz_lock: tokio::sync::Mutex<()>,
    pub(crate) sessions: sessions::Sessions,
    pub(crate) oidc: api::OidcState,
    /// One AI assistant per configured region, sharing one HTTP client.
    pub(crate) assistants: Vec<tidegate_assist::Assistant>,
    pub(crate) shutdown: CancellationToken,
    /// The private state directory of a control plane started without one; removed at
    /// shutdown, after the database is closed.
    temp_dir: Mutex<Option<tempfile::TempDir>>,
}

/// Entry point: see [`ControlPlane::start`].
#[derive(Debug)]
pub struct ControlPlane;

impl ControlPlane {
    /// Starts a control plane and returns once it listens: opens (and migrates) the metadata
    /// database, makes sure the tenant, its default data space, its data key and the
    /// bootstrap administrator exist, and binds the port.
    pub async fn start(config: ControlPlaneConfig) -> Result<RunningControlPlane, Error> {
        let server_config = config.tls.server_config()?;
        let prepared = setup::prepare(&config).await?;
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
        let assistants = if config.assist.is_empty() {
            Vec::new()
        } else {
            let http = tidegate_client::http_client(None)
                .map_err(|e| Error::Tls(format!("the AI assist's HTTP client: {e}")))?;
            config
                .assist
                .iter()
                .map(|e| tidegate_assist::Assistant::new(e.clone(), http.clone()))
                .collect()
        };
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            assistants,
            oidc: api::OidcState::new(config.oidc.clone()),
            config,
            store: prepared.store,
            tenant_id: prepared.tenant_id,
            default_space_id: prepared.default_space_id,
            keyring: prepared.keyring,
            authz,
            authz_lock: tokio::sync::Mutex::new(()),
            sessions: sessions::Sessions::default(),
            shutdown: shutdown.clone(),
            temp_dir: Mutex::new(prepared.temp_dir),
        });
        tokio::spawn(slots::watch(shared.clone()));
        tokio::spawn(sessions::flush_seen(shared.clone()));
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
    /// The tenant's Parquet key (made on first use), for whoever reads the managed storage it
    /// protects on the operator's side. It is not served by the API.
    pub async fn tenant_parquet_key(&self) -> Result<ParquetKey, Error> {
        self.shared
            .tenant_parquet_key()
            .await
            .map_err(|e| Error::ParquetKey(e.message().to_owned()))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its metadata store, for inspection by embedders and tests.
    pub fn store(&self) -> &SqlStore {
        &self.shared.store
    }

    /// The id of the tenant it serves.
    pub fn tenant_id(&self) -> &str {
        &self.shared.tenant_id
    }

    /// The id of the data space of requests that name none.
    pub fn default_space_id(&self) -> &str {
        &self.shared.default_space_id
    }

    /// Whether the gateway holds a link to this control plane now.
    pub fn gateway_online(&self, gateway_id: &str) -> bool {
        self.shared.sessions.is_online(gateway_id)
    }

    /// Stops accepting connections, says goodbye to connected gateways, waits for the listener
    /// to stop and closes the metadata database (removing the private state directory of a
    /// control plane started without one).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.shared.store.close().await;
        let temp_dir = self
            .shared
            .temp_dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(temp_dir);
    }
}
