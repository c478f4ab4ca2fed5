//! Tidegate's columnar replication core: tables flow from a [`Source`] as Arrow record batches
//! into a [`Sink`].
//!
//! ```text
//! Source ──discover──▶ TableSchema ──read_table──▶ RecordBatch stream
//!                                                        │ bounded channel
//! Sink ──begin_table──▶ TableWriter ◀──write─────────────┘ ──finish──▶ files + manifest
//! ```
//!
//! * [`SqliteSource`] reads a SQLite file read-only, with a strict declared-type mapping
//!   (see the [`sqlite`] module).
//! * `OdbcSource` (feature `odbc`) reads any database with an ODBC driver through arrow-odbc,
//!   refusing values its types cannot carry exactly (see the `odbc` module).
//! * [`ParquetSink`] writes Parquet parts and a manifest, written last, to any
//!   [`object_store::ObjectStore`].
//! * [`copy_tables`] runs a [`CopyPlan`]: several tables at once, with backpressure, progress
//!   events and cancellation.
//! * [`sample::generate_sqlite`] builds a deterministic sample database.
//!
//! **Architecture invariant:** this crate knows nothing of the control plane, the network
//! protocol or the gateway; it moves rows and reports progress, and its errors never carry
//! row values.
//!
//! # Features
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `aws` | yes | `s3://` object stores |
//! | `gcp` | no | `gs://` object stores |
//! | `azure` | no | `az://` object stores |
//! | `odbc` | yes | `OdbcSource`; links against unixODBC (`libodbc.so`, Debian: `unixodbc-dev`) |
//!
//! Both traits are object safe and used as `Arc<dyn Source>` / `Arc<dyn Sink>`; their futures
//! and streams are boxed.
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn run() -> Result<(), tidegate_replicate::Error> {
//! use std::sync::Arc;
//! use object_store::local::LocalFileSystem;
//! use tidegate_replicate::{copy_tables, CopyPlan, ParquetSink, ParquetSinkConfig, SqliteSource};
//!
//! let source = Arc::new(SqliteSource::open("shop.db").await?);
//! let store = Arc::new(LocalFileSystem::new_with_prefix("out").expect("output directory"));
//! let sink = Arc::new(ParquetSink::new(store, "raw".into(), ParquetSinkConfig::default()));
//! let (progress, _events) = tokio::sync::mpsc::channel(64);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let summary = copy_tables(source, sink, CopyPlan::new("run-1"), progress, cancel).await?;
//! println!("{} rows in {:?}", summary.total_rows(), summary.elapsed);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod copy;
mod error;
#[cfg(feature = "odbc")]
pub mod odbc;
mod parquet_sink;
mod plan_cache;
pub mod postgres;
pub mod sample;
mod sink;
mod source;
pub mod sqlite;
mod store;
mod table;
mod values;

// The public interface.
pub use crate::copy::{CopyPlan, CopySummary, ProgressEvent, copy_tables};
pub use crate::error::{BoxError, Error, Result};
#[cfg(feature = "odbc")]
pub use crate::odbc::{OdbcSource, OdbcSourceConfig};
pub use crate::parquet_sink::{MANIFEST_FILE, MANIFEST_VERSION, ParquetSink, ParquetSinkConfig};
pub use crate::postgres::{PostgresSink, PostgresSinkConfig, PostgresSource, PostgresSourceConfig};
pub use crate::sink::{FileOutput, Sink, TableOutput, TableWriter};
pub use crate::source::{Partition, Source};
pub use crate::sqlite::SqliteSource;
pub use crate::store::{ServerSideEncryption, StoreOptions, StoreTarget, open_store};
pub use crate::table::{TableRef, TableSchema};

// Crates that appear in the public API, re-exported so callers use the same versions.
pub use arrow;
pub use object_store;
/// The ODBC layer whose errors [`BoxError`] can hold, for downcasting.
#[cfg(feature = "odbc")]
pub use odbc_api;
pub use parquet;
pub use sqlx;
pub use tokio_util::sync::CancellationToken;
