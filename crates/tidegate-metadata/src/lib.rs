//! The control plane's metadata model: gateways, connections, data tasks and their runs.
//!
//! Everything here is metadata: names, settings, states and counts. Credentials are held as
//! [`SecretMap`]s, redacted in `Debug` and in every API view ([`ConnectionView`]). No type can
//! hold a row value.
//!
//! [`MemoryStore`] keeps the model in memory. It is the first implementation of the store; a
//! durable SQL store with the same operations comes with the governance work.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
pub use tidegate_proto::{SecretMap, SecretString, TableSelection, TableState, TaskState};

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such object.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object kind (gateway, connection, task, run).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request is invalid; the message says why.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation conflicts with the object's state.
    #[error("{0}")]
    Conflict(String),
}

/// Where a gateway stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GatewayState {
    /// Created; waiting for its enrollment token to be used.
    PendingEnrollment,
    /// Enrolled; may connect.
    Active,
    /// May not connect, for the reason given.
    Deactivated {
        /// Why, for the operator.
        reason: String,
    },
    /// Deactivated because it spoke only protocol versions this control plane no longer
    /// supports. It becomes active again when it connects with a supported version.
    Outdated {
        /// Why, for the operator (the versions it offered and what to do).
        reason: String,
    },
}

/// A gateway as the control plane knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gateway {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its state.
    pub state: GatewayState,
    /// Its Ed25519 public identity key (base64url), once enrolled.
    pub public_key: Option<String>,
    /// Whether it is connected now.
    pub online: bool,
    /// When it was last heard from (seconds since the Unix epoch).
    pub last_seen_s: Option<u64>,
    /// Its software version, as it announced.
    pub software: Option<String>,
    /// The last metrics it reported.
    pub metrics: Option<tidegate_proto::MetricsReport>,
    /// SHA-256 of its unused enrollment token; cleared when used.
    #[serde(skip)]
    pub enrollment_digest: Option<[u8; 32]>,
    /// When the enrollment token expires.
    pub enrollment_expires_s: Option<u64>,
}

/// A connection: how to reach a source or a target.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// `sqlite`, `postgres`, `odbc`, `local`, `s3`, ...
    pub kind: String,
    /// Settings that are not secret.
    pub settings: BTreeMap<String, String>,
    /// Secret settings; never returned by the API.
    pub secrets: SecretMap,
}

/// A connection as the API shows it: secrets by name only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Settings that are not secret.
    pub settings: BTreeMap<String, String>,
    /// The names of its secrets; their values are never shown.
    pub secret_names: Vec<String>,
}

impl From<&Connection> for ConnectionView {
    fn from(c: &Connection) -> Self {
        Self {
            id: c.id.clone(),
            name: c.name.clone(),
            kind: c.kind.clone(),
            settings: c.settings.clone(),
            secret_names: c.secrets.names().map(str::to_owned).collect(),
        }
    }
}

/// A data task: what to move, from where, to where, on which gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataTask {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// The gateway that runs it.
    pub gateway_id: String,
    /// The source connection.
    pub source_id: String,
    /// The target connection.
    pub target_id: String,
    /// The tables it moves.
    pub tables: TableSelection,
}

/// One table's progress in a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableRun {
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Rows expected, when known.
    pub rows_expected: Option<u64>,
    /// Where it stands.
    pub state: TableState,
}

/// One run of a task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRun {
    /// The run's id.
    pub id: String,
    /// The task's id.
    pub task_id: String,
    /// The run's state.
    pub state: TaskState,
    /// Per-table progress, by `schema.table`.
    pub tables: BTreeMap<String, TableRun>,
    /// Milliseconds since the run started, as the gateway last reported.
    pub elapsed_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (seconds since the Unix epoch).
    pub started_s: u64,
}

/// The metadata of one control plane, in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    gateways: HashMap<String, Gateway>,
    connections: HashMap<String, Connection>,
    tasks: HashMap<String, DataTask>,
    runs: HashMap<String, TaskRun>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock cannot leave the maps half-updated: every mutation
        // below is a single insert or field assignment. So a poisoned lock is still usable.
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Adds a gateway.
    pub fn insert_gateway(&self, gateway: Gateway) {
        self.with(|i| i.gateways.insert(gateway.id.clone(), gateway));
    }

    /// A gateway by id.
    pub fn gateway(&self, id: &str) -> Result<Gateway, Error> {
        self.with(|i| i.gateways.get(id).cloned())
            .ok_or_else(|| not_found("gateway", id))
    }

    /// All gateways, by id.
    pub fn gateways(&self) -> Vec<Gateway> {
        let mut all: Vec<_> = self.with(|i| i.gateways.values().cloned().collect());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Changes a gateway in place.
    pub fn update_gateway<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Gateway) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.with(|i| match i.gateways.get_mut(id) {
            Some(g) => f(g),
            None => Err(not_found("gateway", id)),
        })
    }

    /// Finds the gateway whose unused enrollment token has this digest.
    pub fn gateway_by_enrollment(&self, digest: &[u8; 32]) -> Option<Gateway> {
        self.with(|i| {
            i.gateways
                .values()
                .find(|g| g.enrollment_digest.as_ref() == Some(digest))
                .cloned()
        })
    }

    /// Adds a connection.
    pub fn insert_connection(&self, connection: Connection) {
        self.with(|i| i.connections.insert(connection.id.clone(), connection));
    }

    /// A connection by id, with its secrets (for sending to a gateway only).
    pub fn connection(&self, id: &str) -> Result<Connection, Error> {
        self.with(|i| i.connections.get(id).cloned())
            .ok_or_else(|| not_found("connection", id))
    }

    /// All connections, redacted.
    pub fn connection_views(&self) -> Vec<ConnectionView> {
        let mut all: Vec<_> =
            self.with(|i| i.connections.values().map(ConnectionView::from).collect());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Adds a task.
    pub fn insert_task(&self, task: DataTask) {
        self.with(|i| i.tasks.insert(task.id.clone(), task));
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Result<DataTask, Error> {
        self.with(|i| i.tasks.get(id).cloned())
            .ok_or_else(|| not_found("task", id))
    }

    /// Adds a run.
    pub fn insert_run(&self, run: TaskRun) {
        self.with(|i| i.runs.insert(run.id.clone(), run));
    }

    /// A run by id.
    pub fn run(&self, id: &str) -> Result<TaskRun, Error> {
        self.with(|i| i.runs.get(id).cloned())
            .ok_or_else(|| not_found("run", id))
    }

    /// The runs of a task that are starting or running.
    pub fn active_runs(&self, task_id: &str) -> Vec<TaskRun> {
        self.with(|i| {
            i.runs
                .values()
                .filter(|r| {
                    r.task_id == task_id
                        && matches!(r.state, TaskState::Starting | TaskState::Running)
                })
                .cloned()
                .collect()
        })
    }

    /// Changes a run in place.
    pub fn update_run(&self, id: &str, f: impl FnOnce(&mut TaskRun)) -> Result<(), Error> {
        self.with(|i| match i.runs.get_mut(id) {
            Some(r) => {
                f(r);
                Ok(())
            }
            None => Err(not_found("run", id)),
        })
    }
}

fn not_found(kind: &'static str, id: &str) -> Error {
    Error::NotFound {
        kind,
        id: id.to_owned(),
    }
}

/// Checks a display name: 1 to 200 characters, no control characters.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), Error> {
    let len = name.chars().count();
    if len == 0 || len > 200 {
        return Err(Error::Invalid {
            field,
            reason: format!("must be 1 to 200 characters, got {len}"),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}
