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
}

impl Error {
    /// Whether trying again later (reconnecting, restarting from the last acknowledged
    /// position) may succeed: broken connections and server-side conditions such as a
    /// shutdown or too many connections. Protocol, decoding and configuration errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
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
