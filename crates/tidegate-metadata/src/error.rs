//! The crate's one error type.

/// Why a metadata operation failed.
///
/// Messages name the kind of object, the field and the id; never a secret (a password hash, a
/// token digest, a wrapped key, sealed credentials) and never a database URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such object.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object kind (gateway, connection, task, run, ...).
        kind: &'static str,
        /// Its id (or the key it was looked up by, when that is not secret).
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
    /// The operation conflicts with stored state: a unique field is taken, an object is still
    /// referenced, or another writer changed the object first (optimistic concurrency). The
    /// message names the field or the object, never a value of a secret.
    #[error("{0}")]
    Conflict(String),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Export(#[source] std::io::Error),
    /// The database failed, or returned what this version cannot read.
    #[error("database error while {operation}: {source}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// Whether the same call may succeed if made again unchanged: a lost connection, a pool
    /// timeout, a PostgreSQL serialization failure or deadlock, a busy SQLite database.
    ///
    /// A [`Conflict`](Self::Conflict) is not: the caller reads the object again and decides
    /// (an optimistic update needs the new version; a taken name stays taken).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // 40001 serialization_failure, 40P01 deadlock_detected (PostgreSQL);
                // 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 517 SQLITE_BUSY_SNAPSHOT.
                sqlx::Error::Database(e) => {
                    matches!(
                        e.code().as_deref(),
                        Some("40001" | "40P01" | "5" | "6" | "517")
                    )
                }
                _ => false,
            },
            Self::NotFound { .. } | Self::Invalid { .. } | Self::Conflict(_) | Self::Export(_) => {
                false
            }
        }
    }
}
