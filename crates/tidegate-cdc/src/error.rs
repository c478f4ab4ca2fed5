//! The crate's one error type.
//!
//! Variants name the object that failed — the server as `host:port/database`, a slot, a
//! table, a column, a protocol message — and never carry a row value or a password. Server
//! errors keep only the SQLSTATE code and the primary message (never `DETAIL`, which can
//! quote row values).

use std::io;

use crate::pgoutput::DecodeError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while replicating changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, as a fixed text.
        reason: &'static str,
    },

    /// A name (slot, publication) cannot be used.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `slot` or `publication`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// The TCP connection could not be opened, or broke.
    #[error("connection to {server} failed")]
    Connect {
        /// `host:port/database`.
        server: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// TLS could not be set up.
    #[error("TLS with {server} failed: {reason}")]
    Tls {
        /// `host:port/database`.
        server: String,
        /// What failed.
        reason: String,
    },

    /// The server authenticated us in a way we do not support, or did not finish.
    #[error("authentication with {server} failed: {reason}")]
    Authentication {
        /// `host:port/database`.
        server: String,
        /// What failed: the server's message, or a fixed text.
        reason: String,
    },

    /// The server reported an error.
    #[error("{server}: {message} (SQLSTATE {code})")]
    Server {
        /// `host:port/database`.
        server: String,
        /// The SQLSTATE code.
        code: String,
        /// The primary message (no detail, which can quote values).
        message: String,
    },

    /// The replication slot does not exist (dropped, or never created).
    #[error("replication slot {slot:?} does not exist on {server}")]
    SlotNotFound {
        /// `host:port/database`.
        server: String,
        /// The slot.
        slot: String,
    },

    /// The server sent something the protocol does not allow here.
    #[error("protocol error with {server}: {reason}")]
    Protocol {
        /// `host:port/database`.
        server: String,
        /// What was wrong, as a fixed text.
        reason: &'static str,
    },

    /// A server message is larger than the configured maximum.
    #[error("{server} sent a message of {len} bytes; the maximum is {max}")]
    MessageTooLarge {
        /// `host:port/database`.
        server: String,
        /// Its length.
        len: usize,
        /// `ConnectConfig::max_message_bytes`.
        max: usize,
    },

    /// A `pgoutput` message is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// A change refers to a table no Relation message described.
    #[error("a change refers to relation {oid}, which was not described")]
    UnknownRelation {
        /// The table's oid.
        oid: u32,
    },

    /// A column cannot be captured as configured.
    #[error("table {table}: column {column} cannot be captured: {reason}")]
    UnsupportedColumn {
        /// The table, as `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// Why, as a fixed text.
        reason: &'static str,
    },

    /// A value has no form in its column's Arrow type, or is malformed.
    #[error("table {table}: column {column}: {reason}")]
    InvalidValue {
        /// The table, as `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// What is wrong, as a fixed text that never quotes the value.
        reason: &'static str,
    },

    /// Building a record batch failed.
    #[error("table {table}: cannot build a change batch")]
    Arrow {
        /// The table, as `schema.name`.
        table: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A query on an ordinary connection (publications, slots, types) failed.
    #[error("{what} failed")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The task's slot is gone although the target holds a checkpoint: it was dropped behind
    /// the task's back, so the changes after the checkpoint can no longer be streamed. Start
    /// the task anew (remove its checkpoint) for a fresh initial load.
    #[error(
        "replication slot {slot:?} is missing (or lost its WAL) while the target's checkpoint \
         is at {checkpoint}: changes after it cannot be streamed; start the task anew"
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// The target's checkpoint.
        checkpoint: crate::lsn::Lsn,
    },

    /// The slot was acknowledged past the target's checkpoint: the target lost changes it had
    /// (restored from a backup?) or another consumer used the slot.
    #[error(
        "replication slot {slot:?} is confirmed up to {confirmed}, past the target's \
         checkpoint {checkpoint}: the changes in between are gone; start the task anew"
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// The slot's confirmed flush position.
        confirmed: crate::lsn::Lsn,
        /// The target's checkpoint.
        checkpoint: crate::lsn::Lsn,
    },

    /// The slot is in use by a connection (a task still running): it cannot be dropped.
    #[error("replication slot {slot:?} is in use; stop the task before dropping it")]
    SlotActive {
        /// The slot.
        slot: String,
    },

    /// A table of the task does not exist at the source.
    #[error("table {table} does not exist at the source")]
    TableNotFound {
        /// The table, as `schema.name`.
        table: String,
    },

    /// A table cannot be applied: it has neither a primary key nor a replica identity index
    /// (`REPLICA IDENTITY FULL` needs a primary key too), so its rows cannot be matched.
    #[error(
        "table {table} has no primary key or replica identity index: its changes cannot be \
         applied (add a primary key, or ALTER TABLE … REPLICA IDENTITY USING INDEX a unique index)"
    )]
    NoApplyKey {
        /// The table, as `schema.name`.
        table: String,
    },

    /// A schema change the sink does not follow.
    #[error("table {table}: column {column}: schema change not followed: {reason}")]
    SchemaChange {
        /// The table, as `schema.name`.
        table: String,
        /// The column.
        column: String,
        /// Why, as a fixed text.
        reason: &'static str,
    },

    /// The target does not hold what the changes expect (a row an update changes is missing):
    /// it was changed behind the task's back.
    #[error("target table {table}: {reason} ({count} rows)")]
    TargetDiverged {
        /// The target table, as `schema.name`.
        table: String,
        /// What was found, as a fixed text.
        reason: &'static str,
        /// How many rows.
        count: u64,
    },

    /// A statement at a PostgreSQL target failed. The text carries the server's SQLSTATE and
    /// primary message (names, never values: those are in its `DETAIL`, which is left out).
    #[error("target {target}: {what} failed{}", server_summary(.source))]
    Target {
        /// The table, or `host:port/database`.
        target: String,
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The full-load core failed: the initial load, or encoding rows for a target. Its text
    /// (names and counts, never values) is part of this one's.
    #[error("{what} failed: {source}")]
    Replicate {
        /// What was being done.
        what: &'static str,
        /// Its error.
        #[source]
        source: tidegate_replicate::Error,
    },

    /// An object store operation failed.
    #[error("object store: {path}")]
    ObjectStore {
        /// The object.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// Writing a Parquet change file failed.
    #[error("change file {path}")]
    Parquet {
        /// The object.
        path: String,
        /// Parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A change manifest cannot be read or written.
    #[error("change manifest {path}: {reason}")]
    Manifest {
        /// The object.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// Applying one table's changes failed; the other tables were not at fault. A sink that
    /// [isolates tables](crate::ChangeSink::isolates_tables) reports its table errors so,
    /// and the task then sets the table apart (see [`run_cdc_task`](crate::run_cdc_task)).
    #[error("table {table}: {source}")]
    Table {
        /// The source table.
        table: tidegate_replicate::TableRef,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// The stream delivered something a CDC task does not expect here.
    #[error("unexpected change stream: {reason}")]
    UnexpectedEvent {
        /// What, as a fixed text.
        reason: &'static str,
    },
}

impl Error {
    /// Whether trying again later (reconnecting, restarting from the last acknowledged
    /// position) may succeed: broken connections and server-side conditions such as a
    /// shutdown or too many connections. Protocol, decoding and configuration errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Table { source, .. } => source.is_retryable(),
            Error::Replicate { source, .. } => source.is_retryable(),
            Error::Target { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
                // As for the source, plus 40: serialization failures and deadlocks, 55P03: a
                // lock not available, 25006: a read-only target (a standby being promoted).
                sqlx::Error::Database(database) => database.code().is_some_and(|code| {
                    ["08", "40", "53", "57"]
                        .iter()
                        .any(|class| code.starts_with(class))
                        || code == "55P03"
                        || code == "25006"
                }),
                _ => false,
            },
            Error::ObjectStore { .. } | Error::SlotActive { .. } => true,
            // 08: connection exception, 53: insufficient resources, 57: operator intervention
            // (shutdown, admin termination), 55006: object in use (a slot active elsewhere).
            Error::Server { code, .. } => {
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "55006"
            }
            Error::Sql { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ),
            _ => false,
        }
    }
}

/// `: <SQLSTATE> <primary message>` of a database error, or nothing for other errors.
fn server_summary(source: &sqlx::Error) -> String {
    match source {
        sqlx::Error::Database(database) => format!(
            ": {} {}",
            database.code().as_deref().unwrap_or("?????"),
            database.message()
        ),
        sqlx::Error::Io(_) => ": the connection was lost".to_owned(),
        _ => String::new(),
    }
}
