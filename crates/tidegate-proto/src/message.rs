//! The message vocabulary. Every type here holds metadata only: names, types, counts,
//! positions, settings and error texts. None can hold a row value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::SecretMap;

/// A protocol version number. Versions are negotiated in [`Hello`] / [`Welcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion(pub u16);

/// Identifies a command so that its [`CommandResult`] can be matched to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommandId(pub u64);

/// One unit of the command-and-control conversation.
///
/// Direction is given per variant: *G→C* from gateway to control plane, *C→G* the other way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
// Messages are built a few times a second at most and never stored in bulk; boxing the large
// command variant would only make every construction and match noisier.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    /// G→C, first frame: versions spoken and the gateway's ephemeral channel key.
    Hello(Hello),
    /// C→G, answer to [`Hello`]: the chosen version and the control plane's ephemeral key.
    Welcome(Welcome),
    /// C→G, answer to [`Hello`] when the gateway may not connect; the connection then closes.
    Refused(Refusal),
    /// Either way: a liveness probe. The receiver answers with [`Message::HeartbeatAck`].
    Heartbeat(Heartbeat),
    /// Either way: the answer to a [`Heartbeat`], echoing its id.
    HeartbeatAck(Heartbeat),
    /// C→G: something for the gateway to do.
    Command {
        /// Matches the eventual [`Message::CommandResult`].
        id: CommandId,
        /// What to do.
        command: Command,
    },
    /// G→C: the outcome of a command.
    CommandResult(CommandResult),
    /// G→C: a task changed state.
    TaskStatus(TaskStatus),
    /// G→C: how far a running task has come.
    Progress(ProgressReport),
    /// G→C: gateway-wide metrics.
    Metrics(MetricsReport),
    /// Either way: the sender hit an error not tied to one command.
    Error(ErrorReport),
    /// Either way: the sender is closing the connection on purpose.
    Goodbye(Goodbye),
    /// G→C, protocol 2: where a change data capture run stands.
    Replication(ReplicationReport),
    /// G→C, protocol 3: the tables a change data capture run sets apart after they failed;
    /// sent when the set changes (empty once none is left).
    FailedTables(FailedTablesReport),
}

impl Message {
    /// Whether the message can hold credentials ([`SecretMap`]s): only commands, which travel
    /// from the control plane to the gateway. Buffers that held such a message are wiped.
    pub fn may_carry_secrets(&self) -> bool {
        matches!(self, Message::Command { .. })
    }

    /// A short, stable name for logs: never includes the message's contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Refused(_) => "refused",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatAck(_) => "heartbeat_ack",
            Message::Command { .. } => "command",
            Message::CommandResult(_) => "command_result",
            Message::TaskStatus(_) => "task_status",
            Message::Progress(_) => "progress",
            Message::Metrics(_) => "metrics",
            Message::Error(_) => "error",
            Message::Goodbye(_) => "goodbye",
            Message::Replication(_) => "replication",
            Message::FailedTables(_) => "failed_tables",
        }
    }

    /// The oldest protocol version that can carry the message: a sender drops a message its
    /// link's version cannot carry rather than send a frame the peer cannot read.
    pub fn min_version(&self) -> ProtocolVersion {
        match self {
            Message::Replication(_) => ProtocolVersion(2),
            Message::FailedTables(_) => ProtocolVersion(3),
            Message::Command { command, .. } => command.min_version(),
            _ => ProtocolVersion(1),
        }
    }
}

/// The gateway's opening message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the gateway speaks.
    pub min_version: ProtocolVersion,
    /// Newest protocol version the gateway speaks.
    pub max_version: ProtocolVersion,
    /// The gateway's software version, for display.
    pub software: String,
    /// The gateway's ephemeral X25519 public key for this connection's channel keys.
    pub channel_public: [u8; 32],
    /// Fresh randomness mixed into the channel key derivation.
    pub nonce: [u8; 32],
}

/// The control plane's acceptance of a [`Hello`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    /// The control plane's ephemeral X25519 public key for this connection.
    pub channel_public: [u8; 32],
    /// Fresh randomness mixed into the channel key derivation.
    pub nonce: [u8; 32],
    /// How often each side sends a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u32,
}

/// Why a gateway was turned away.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The machine-readable reason.
    pub reason: RefusalReason,
    /// A human-readable explanation, shown to the operator.
    pub message: String,
}

/// The machine-readable reasons for a [`Refusal`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No protocol version in common; the control plane's supported range is given.
    UnsupportedVersion {
        /// Oldest version the control plane speaks.
        min: ProtocolVersion,
        /// Newest version the control plane speaks.
        max: ProtocolVersion,
    },
    /// The gateway has been deactivated by an operator.
    Deactivated,
    /// The same gateway is already connected.
    AlreadyConnected,
}

/// A liveness probe or its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Chosen by the prober, echoed by the answer.
    pub id: u64,
}

/// What the control plane asks a gateway to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Open the connection, check it answers, close it.
    TestConnection(ConnectionSpec),
    /// List the tables and columns the connection exposes.
    DiscoverSchema(ConnectionSpec),
    /// Start a run of a task.
    StartTask(TaskSpec),
    /// Stop a running task; tables already finished stay finished.
    StopTask {
        /// The task to stop.
        task_id: String,
    },
    /// Resume a stopped or failed task: only the tables not finished are copied again.
    ResumeTask(TaskSpec),
    /// Replace the definition of a running task; takes effect from its next table.
    ReloadTask(TaskSpec),
    /// Protocol 2: report the replication slot a change data capture task keeps at its
    /// source. Answered with [`CommandOutcome::Slot`].
    InspectReplication {
        /// The task.
        task_id: String,
        /// Its source connection.
        source: ConnectionSpec,
    },
    /// Protocol 2: list the runs this gateway process is running. Answered with
    /// [`CommandOutcome::Runs`]; the control plane asks on every new link, and a run it
    /// believes running that the list lacks was lost (the gateway restarted).
    ListRuns,
    /// Protocol 2: drop the replication slot and publication of a deleted change data
    /// capture task at its source. Answered with [`CommandOutcome::Slot`] (the slot as it
    /// was, `None` if there was none); refused while the task runs.
    DropReplication {
        /// The task.
        task_id: String,
        /// Its source connection.
        source: ConnectionSpec,
    },
    /// Protocol 3: load these tables of a running change data capture task again, alone, in
    /// a new snapshot, and apply their changes again from it (a table set apart after it
    /// failed, once the cause is fixed). The other tables are not loaded again. Answered with
    /// [`CommandOutcome::Accepted`].
    ResyncTables {
        /// The task.
        task_id: String,
        /// The tables, as `schema.name`.
        tables: Vec<String>,
    },
}

impl Command {
    /// The oldest protocol version that can carry the command.
    pub fn min_version(&self) -> ProtocolVersion {
        match self {
            Command::StartTask(spec) | Command::ResumeTask(spec) | Command::ReloadTask(spec) => {
                spec.kind.min_version()
            }
            Command::InspectReplication { .. }
            | Command::ListRuns
            | Command::DropReplication { .. } => ProtocolVersion(2),
            Command::ResyncTables { .. } => ProtocolVersion(3),
            Command::TestConnection(_) | Command::DiscoverSchema(_) | Command::StopTask { .. } => {
                ProtocolVersion(1)
            }
        }
    }
}

/// A connection as the gateway needs it to open it: a kind, plain settings and secrets.
///
/// Secrets travel only from the control plane to the gateway, which holds them in memory for
/// the duration of a command and zeroizes them on drop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    /// The connection's id in the control plane.
    pub id: String,
    /// The connection kind, for example `sqlite`, `postgres`, `odbc`, `local`, `s3`.
    pub kind: String,
    /// Settings that are not secret (host, path, bucket, ...).
    pub settings: BTreeMap<String, String>,
    /// Secret settings (passwords, keys).
    pub secrets: SecretMap,
}

/// Which tables a task moves: names or `*` patterns; exclusions win.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TableSelection {
    /// Tables to include; empty (or absent) means all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The kind of data task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskKind {
    /// Copy every selected table once.
    FullLoad,
    /// Protocol 2: copy the tables in a replication slot's snapshot, then apply their
    /// changes to PostgreSQL target tables until stopped.
    ChangeDataCapture,
    /// Protocol 2: copy the tables in a replication slot's snapshot, then append their
    /// changes as Parquet change files with manifests on object storage until stopped.
    StoreChanges,
}

impl TaskKind {
    /// The oldest protocol version that can carry a task of this kind.
    pub fn min_version(self) -> ProtocolVersion {
        match self {
            TaskKind::FullLoad => ProtocolVersion(1),
            TaskKind::ChangeDataCapture | TaskKind::StoreChanges => ProtocolVersion(2),
        }
    }
}

/// Everything a gateway needs to run a task. Lives in the gateway's memory only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's id.
    pub task_id: String,
    /// This run's id; output locations include it.
    pub run_id: String,
    /// What the task does.
    pub kind: TaskKind,
    /// Where data is read.
    pub source: ConnectionSpec,
    /// Where data is written.
    pub target: ConnectionSpec,
    /// Which tables.
    pub tables: TableSelection,
    /// Tables already finished in this run (for a resume): they are skipped.
    pub completed_tables: Vec<String>,
}

/// The result of one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command answered.
    pub id: CommandId,
    /// Its outcome.
    pub outcome: Result<CommandOutcome, ErrorReport>,
}

/// What a successful command returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandOutcome {
    /// The command was accepted; its progress follows in other messages.
    Accepted,
    /// The connection works.
    ConnectionOk {
        /// What the server said it is, if it says.
        server: Option<String>,
    },
    /// The tables a connection exposes.
    Schema(Vec<TableDescription>),
    /// A change data capture task's replication slot, `None` if it does not exist.
    Slot(Option<SlotReport>),
    /// The runs a gateway is running: (task id, run id).
    Runs(Vec<(String, String)>),
}

/// A replication slot as its source server shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotReport {
    /// The slot's name.
    pub name: String,
    /// Whether a connection streams from it now.
    pub active: bool,
    /// Bytes of WAL the slot keeps the server from removing.
    pub retained_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost`, as the server says.
    pub wal_status: Option<String>,
}

/// Protocol 3: the tables a change data capture run sets apart after they failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTablesReport {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// The tables, each with why (names and codes, never values).
    pub tables: Vec<FailedTable>,
}

/// A table set apart after it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedTable {
    /// The source table, as `schema.name`.
    pub table: String,
    /// Why it failed.
    pub error: String,
}

/// Where a change data capture run stands: positions and counts, never values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationReport {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// What the run is doing.
    pub phase: ReplicationPhase,
    /// The position the target holds (its checkpoint), as PostgreSQL shows LSNs.
    pub checkpoint_lsn: String,
    /// The source's WAL position as last reported by it.
    pub source_lsn: String,
    /// WAL bytes between the checkpoint and the source's position.
    pub lag_bytes: u64,
    /// How long the oldest transaction received but not yet durable at the target has been
    /// committed at the source, in milliseconds; 0 when every one received is durable.
    pub lag_ms: u64,
    /// Rows of the initial load, once it completed in this run.
    pub load_rows: u64,
    /// Source transactions made durable at the target by this run.
    pub transactions: u64,
    /// Change rows made durable at the target by this run.
    pub rows: u64,
    /// While the run retries after an error that may pass (the source restarting, a
    /// connection dropped): that error. The run keeps its state meanwhile.
    pub retrying: Option<String>,
}

/// The phases of a change data capture run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum ReplicationPhase {
    /// Checking the source and target; creating the publication and the slot.
    Starting,
    /// Copying the tables as of the slot's snapshot.
    InitialLoad,
    /// Receiving changes and making them durable at the target.
    Streaming,
}

/// One table's shape: names and types, never values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDescription {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<ColumnDescription>,
}

/// One column's name and type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDescription {
    /// Column name.
    pub name: String,
    /// The column's type as the target will see it (an Arrow type name).
    pub data_type: String,
    /// Whether it may hold NULL.
    pub nullable: bool,
}

/// The life cycle of a task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum TaskState {
    /// Accepted, not yet moving data.
    Starting,
    /// Moving data.
    Running,
    /// Every table finished.
    Completed,
    /// Stopped on request; resumable.
    Stopped,
    /// Stopped by an error; resumable.
    Failed,
}

/// A task's change of state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// Its new state.
    pub state: TaskState,
    /// Why it failed, for [`TaskState::Failed`].
    pub error: Option<ErrorReport>,
}

/// The progress of one table in a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProgress {
    /// `schema.table`.
    pub table: String,
    /// Rows written so far.
    pub rows: u64,
    /// Bytes written so far.
    pub bytes: u64,
    /// Rows expected in all, when the source can tell.
    pub rows_expected: Option<u64>,
    /// Where the table stands.
    pub state: TableState,
}

/// Where one table of a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum TableState {
    /// Not started.
    Pending,
    /// Being copied.
    Copying,
    /// Copied completely; its output is committed.
    Done,
    /// Failed; its output is not committed.
    Failed,
}

/// A snapshot of a run's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// Milliseconds since the run started.
    pub elapsed_ms: u64,
    /// Per-table progress; tables not listed have not changed since the last report.
    pub tables: Vec<TableProgress>,
}

/// Gateway-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsReport {
    /// Seconds since the gateway process started.
    pub uptime_s: u64,
    /// Tasks running now.
    pub running_tasks: u32,
    /// Rows moved since start.
    pub rows_total: u64,
    /// Bytes written since start.
    pub bytes_total: u64,
}

/// An error, as reported across the channel.
///
/// The message names objects (a table, a column, a connection) and never quotes a row value or
/// a secret: it is built from Tidegate's own error types, which hold no values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The machine-readable category.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

/// Categories of [`ErrorReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The command or its settings are invalid.
    InvalidRequest,
    /// The source could not be read.
    Source,
    /// The target could not be written.
    Target,
    /// The task does not exist on this gateway.
    UnknownTask,
    /// The task is already running.
    AlreadyRunning,
    /// The operation was cancelled.
    Cancelled,
    /// The peer broke the protocol.
    Protocol,
    /// Anything else.
    Internal,
}

/// A deliberate close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why.
    pub reason: String,
}
