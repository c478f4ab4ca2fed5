//! The crate's one error type.
//!
//! Every variant names the object that failed (a table, a column, an object path, a database
//! file) and never carries a row value or a secret: errors end up in logs and on the control
//! plane, which must not see row data.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A driver error whose concrete type depends on the layer that raised it (ODBC sources).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while discovering, reading, writing or copying tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite database file could not be opened.
    #[error("cannot open SQLite database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// Connecting to a database server failed.
    #[error("cannot connect to {server}")]
    Connect {
        /// `host:port/database`, without credentials.
        server: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// Connecting to an ODBC data source failed.
    #[cfg(feature = "odbc")]
    #[error("cannot connect to ODBC data source {data_source}")]
    OdbcConnect {
        /// The connection string's `Driver`/`DSN`, `Server`, `Port` and `Database`, never
        /// its credentials.
        data_source: String,
        /// The driver manager's or driver's error.
        #[source]
        source: BoxError,
    },

    /// Listing the tables of an ODBC data source failed.
    #[cfg(feature = "odbc")]
    #[error("cannot discover tables over ODBC")]
    OdbcDiscover {
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// Describing or reading a table over ODBC failed in the driver.
    #[cfg(feature = "odbc")]
    #[error("cannot read table {table} over ODBC")]
    OdbcRead {
        /// The table, as `schema.name`.
        table: String,
        /// The driver's (or arrow-odbc's) error.
        #[source]
        source: BoxError,
    },

    /// A blocking driver call panicked on its worker thread.
    #[error("the driver thread for {what} failed")]
    DriverThread {
        /// What the thread was doing (`connecting`, `discovery`).
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },

    /// Opening or joining the snapshot all tables are read in failed.
    #[error("cannot open the read snapshot")]
    Snapshot {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A binary `COPY` stream is malformed.
    #[error("table {table}: malformed COPY data: {reason}")]
    CopyFormat {
        /// The table, as `schema.name`.
        table: String,
        /// What is wrong, as a fixed text.
        reason: &'static str,
    },

    /// Listing the tables or columns of a source failed.
    #[error("cannot discover tables")]
    Discover {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// Reading rows of a table failed in the driver.
    #[error("cannot read table {table}")]
    Read {
        /// The table, as `schema.name`.
        table: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A column's declared type has no Arrow mapping.
    #[error("table {table}: column {column} has unsupported declared type {declared:?}")]
    UnsupportedType {
        /// The table, as `schema.name`.
        table: String,
        /// The column name.
        column: String,
        /// The declared type as written in the schema (metadata, not data).
        declared: String,
    },

    /// A value's storage class does not match its column's declared type (for example text in
    /// an `INTEGER` column).
    #[error("table {table}: column {column} declared as {expected} holds a {found} value")]
    TypeMismatch {
        /// The table, as `schema.name`.
        table: String,
        /// The column name.
        column: String,
        /// The Arrow type the column maps to.
        expected: String,
        /// The storage class found (`INTEGER`, `REAL`, `TEXT`, `BLOB`).
        found: String,
    },

    /// A value has the right storage class but cannot be represented in the column's Arrow type
    /// (a decimal with too many digits, a malformed timestamp, a boolean other than 0 or 1).
    #[error("table {table}: column {column} holds a value that is not a valid {expected}")]
    InvalidValue {
        /// The table, as `schema.name`.
        table: String,
        /// The column name.
        column: String,
        /// What the value should have been, e.g. `Decimal128(12, 2)`.
        expected: String,
    },

    /// A value read from a source has no form in its column's Arrow type (an infinite date,
    /// a NaN numeric, a malformed binary value).
    #[error("table {table}: column {column}: {reason}")]
    UnrepresentableValue {
        /// The table, as `schema.name`.
        table: String,
        /// The column name.
        column: String,
        /// What is wrong, as a fixed text that never quotes the value.
        reason: &'static str,
    },

    /// Writing to a database target failed.
    #[error("cannot write to {target}")]
    Write {
        /// The target table and server, as `schema.name on host:port/database`.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A target stored a different number of rows than were sent.
    #[error("table {table}: the target stored {found} rows, {expected} were sent")]
    RowCount {
        /// The target table.
        table: String,
        /// Rows sent.
        expected: u64,
        /// Rows the target reported.
        found: u64,
    },

    /// A record batch handed to a sink does not match the table's schema.
    #[error("table {table}: record batch schema does not match the table schema")]
    SchemaMismatch {
        /// The table, as `schema.name`.
        table: String,
    },

    /// A schema, table or run id cannot be used as an object path segment.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// Which kind of name (`schema`, `table`, `run id`).
        what: &'static str,
        /// The offending name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A table filter names a table the source does not have.
    #[error("unknown table {name:?} in the table filter")]
    UnknownTable {
        /// The name as given in the filter.
        name: String,
    },

    /// An object store URL or its options cannot be used.
    #[error("invalid target {target}: {reason}")]
    InvalidTarget {
        /// The URL, credentials removed.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// A copy plan or sink configuration is unusable.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },

    /// Building an Arrow array or record batch failed.
    #[error("table {table}: cannot build record batch")]
    Arrow {
        /// The table, as `schema.name`.
        table: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// Encoding or uploading a Parquet file failed.
    #[error("cannot write Parquet object {path}")]
    Parquet {
        /// The object path.
        path: String,
        /// Parquet's error (which wraps the object store's for uploads).
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An object store operation failed.
    #[error("object store operation on {path} failed")]
    ObjectStore {
        /// The object path.
        path: String,
        /// The object store's error.
        #[source]
        source: object_store::Error,
    },

    /// The manifest could not be serialised.
    #[error("cannot serialise manifest {path}")]
    Manifest {
        /// The manifest's object path.
        path: String,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },

    /// Generating the sample database failed.
    #[error("cannot generate sample database {path}")]
    Sample {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The sample database file already exists; it is never overwritten.
    #[error("sample database {path} already exists")]
    SampleExists {
        /// The database file.
        path: PathBuf,
    },

    /// A table's copy task panicked or was aborted.
    #[error("copy task for table {table} failed")]
    Task {
        /// The table, as `schema.name`.
        table: String,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },

    /// The operation was cancelled through its cancellation token.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whether retrying the same operation later may succeed (transient I/O, timeouts, busy
    /// databases). Schema and data errors are never retryable: the same rows fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Open { source, .. }
            | Error::Connect { source, .. }
            | Error::Snapshot { source }
            | Error::Write { source, .. }
            | Error::Discover { source }
            | Error::Read { source, .. }
            | Error::Sample { source, .. } => sqlx_retryable(source),
            Error::ObjectStore { source, .. } => object_store_retryable(source),
            #[cfg(feature = "odbc")]
            Error::OdbcConnect { source, .. }
            | Error::OdbcDiscover { source }
            | Error::OdbcRead { source, .. } => odbc_retryable(source.as_ref()),
            Error::Parquet { source, .. } => match source {
                parquet::errors::ParquetError::External(inner) => inner
                    .downcast_ref::<object_store::Error>()
                    .is_some_and(object_store_retryable),
                _ => false,
            },
            Error::UnsupportedType { .. }
            | Error::CopyFormat { .. }
            | Error::RowCount { .. }
            | Error::InvalidTarget { .. }
            | Error::UnrepresentableValue { .. }
            | Error::TypeMismatch { .. }
            | Error::InvalidValue { .. }
            | Error::SchemaMismatch { .. }
            | Error::InvalidName { .. }
            | Error::UnknownTable { .. }
            | Error::InvalidConfig { .. }
            | Error::Arrow { .. }
            | Error::Manifest { .. }
            | Error::SampleExists { .. }
            | Error::Task { .. }
            | Error::DriverThread { .. }
            | Error::Cancelled => false,
        }
    }
}

fn sqlx_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6): another connection holds a lock.
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("5" | "6")),
        _ => false,
    }
}

/// Connection failures (SQLSTATE class `08`), timeouts (`HYT00`, `HYT01`) and serialization
/// failures or deadlocks (`40001`, `40P01`) may pass on a retry.
#[cfg(feature = "odbc")]
fn odbc_retryable(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    match error.downcast_ref::<odbc_api::Error>() {
        Some(odbc_api::Error::Diagnostics { record, .. }) => {
            let state = record.state.as_str();
            state.starts_with("08") || matches!(state, "HYT00" | "HYT01" | "40001" | "40P01")
        }
        _ => false,
    }
}

fn object_store_retryable(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}
