//! The control plane's in-memory model, used by [`MemoryStore`](crate::MemoryStore) and the
//! API today.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidegate_proto::{SecretMap, TableSelection, TableState, TaskState};

/// Where a gateway stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
