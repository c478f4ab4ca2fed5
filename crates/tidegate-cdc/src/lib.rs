//! Tidegate's change data capture from PostgreSQL: logical replication with the built-in
//! `pgoutput` plugin, decoded into Arrow record batches of changes.
//!
//! ```text
//!  catalog (sqlx)            replication connection (ours)             pure decoding
//! ┌────────────────┐  ┌──────────────────────────────────────┐  ┌────────────────────────┐
//! │ publications,  │  │ ReplicationClient ─ IDENTIFY_SYSTEM,  │  │ pgoutput::decode       │
//! │ slot look-ups, │  │   CREATE/DROP_REPLICATION_SLOT,       │  │   bytes → Message      │
//! │ type catalog   │  │   ExportedSnapshot                    │  │ ChangeDecoder          │
//! └────────────────┘  │ ReplicationStream ─ CopyBoth,         │  │   Message → ChangeEvent│
//!                     │   keepalives, status updates          │  │   (Arrow batches)      │
//!                     └──────────────────────────────────────┘  └────────────────────────┘
//!                                        ChangeStream: both, with the caller's acknowledgements
//! ```
//!
//! # Using it
//!
//! 1. Create a publication ([`create_publication`], with `publish_via_partition_root`).
//! 2. Create the slot and export its snapshot
//!    ([`ReplicationClient::create_slot_exporting_snapshot`]); read the initial load in that
//!    snapshot (`SET TRANSACTION SNAPSHOT`); keep the [`ExportedSnapshot`] until every reader
//!    has joined it, then release it.
//! 3. Stream from the slot's consistent point ([`ChangeStream::start_on`]), apply each
//!    transaction at the target, and acknowledge its commit's `end_lsn` once it is durable
//!    ([`ChangeStream::acknowledge`]). On a restart, stream from the last acknowledged
//!    position: nothing is delivered twice, nothing is lost.
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn run() -> Result<(), tidegate_cdc::Error> {
//! use tidegate_cdc::{BatchConfig, ChangeEvent, ChangeStream, ConnectConfig, Lsn, StreamOptions};
//!
//! let connect = ConnectConfig::from_url("postgres://cdc:secret@db:5432/shop?sslmode=require")?;
//! let options = StreamOptions::new("tidegate_shop", vec!["tidegate_shop".into()], Lsn::ZERO);
//! let mut changes = ChangeStream::start(&connect, options, BatchConfig::default()).await?;
//! while let Some(event) = changes.next().await? {
//!     match event {
//!         ChangeEvent::Changes(batch) => {
//!             println!("{}: {} rows", batch.relation.table, batch.batch.num_rows());
//!         }
//!         ChangeEvent::Commit { end_lsn, .. } => {
//!             /* make the transaction durable at the target, then: */
//!             changes.acknowledge(end_lsn);
//!         }
//!         ChangeEvent::Keepalive { .. } => changes.acknowledge_idle(),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # CDC tasks: initial load, then changes, exactly once
//!
//! [`run_cdc_task`] runs a whole task ([`CdcTaskConfig`]: a task id, the source, the tables)
//! into a [`ChangeSink`]:
//!
//! ```text
//!  publication + slot ──▶ initial load in the slot's snapshot ──▶ checkpoint = consistent point
//!  (tidegate_<task id>)    (tidegate-replicate: PostgresSource        (written by the sink)
//!                           joining the snapshot, copy_tables)
//!          ┌───────────────────────────────────────────────────────────────────┘
//!          ▼
//!  ChangeStream from the checkpoint ──▶ commit groups ──▶ sink.commit(group + checkpoint)
//!                                                         └─▶ then ChangeStream::acknowledge
//! ```
//!
//! Two sinks ship with the crate:
//!
//! * [`PostgresApplySink`] merges changes into PostgreSQL tables: the initial load through
//!   `tidegate-replicate`'s `PostgresSink`, then per commit group one transaction that stages
//!   each table's rows with binary `COPY` and merges them (`DELETE … USING`, `UPDATE … FROM`,
//!   `INSERT … ON CONFLICT` on the key, `TRUNCATE`), and upserts the checkpoint row (task id →
//!   position) in the same transaction. A value an update left unchanged (TOAST) keeps the
//!   target's value; it is never set to null.
//! * [`StoreChangesSink`] appends Parquet change files under
//!   `<prefix>/<schema>/<table>/changes/` on any object store, and one manifest per commit
//!   group, written last, naming the files, the schema version and the position reached; the
//!   newest manifest is the checkpoint.
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn run() -> Result<(), tidegate_cdc::Error> {
//! use tidegate_cdc::{
//!     ApplySinkConfig, CancellationToken, CdcTaskConfig, ConnectConfig, PostgresApplySink,
//!     TableRef, run_cdc_task,
//! };
//!
//! let source = ConnectConfig::from_url("postgres://cdc:secret@db:5432/shop?sslmode=require")?;
//! let tables = vec![TableRef::new("public", "orders")];
//! let config = CdcTaskConfig::new("shop_orders", source, tables);
//! let target = "postgres://load:secret@warehouse:5432/shop";
//! let mut sink = PostgresApplySink::connect(target, ApplySinkConfig::new("shop_orders")).await?;
//! let cancel = CancellationToken::new(); // cancel() it to stop
//! let summary = run_cdc_task(&config, &mut sink, cancel).await?;
//! println!("{} transactions applied", summary.transactions);
//! # Ok(())
//! # }
//! ```
//!
//! **Exactly once.** The target stores each group's changes and its checkpoint atomically
//! (one transaction; files then one manifest put). The slot is acknowledged only after that,
//! so it never runs ahead of the target. On a restart the task reads the checkpoint *from the
//! target* and streams from it; a transaction whose commit LSN lies before it is skipped. A
//! crash at any point therefore loses nothing (the slot still holds what the target lacks)
//! and repeats nothing (what the target holds is skipped). A crash during the initial load
//! leaves no checkpoint: the slot is made again and the load redone. Large transactions are
//! streamed by the server before they commit when the sink takes them (the apply sink keeps
//! their blocks in a table at the target until the commit), else received at commit: either
//! way the sink applies whole transactions in commit order, and memory stays bounded by
//! [`BatchConfig`].
//!
//! **Initial load.** The tables are locked in `ACCESS SHARE` mode, in the slot's snapshot,
//! for the duration of the load: `TRUNCATE` and table rewrites are not MVCC-safe and would
//! otherwise hide the snapshot's rows from the load. They wait until the load ends.
//! Partitioned tables are read through their root (never `ONLY`), as the publication
//! (`publish_via_partition_root`) streams their changes.
//!
//! **Keys.** The apply sink matches rows on the replica identity index's columns, or on the
//! primary key under `REPLICA IDENTITY FULL`. A table with neither ([`Error::NoApplyKey`]) is
//! refused before anything is created; the store sink takes any table (PostgreSQL itself
//! refuses updates and deletes on a published table without replica identity). A unique
//! index on the key is added to the target table if it has none.
//!
//! **Schema changes.** A changed table description is a new schema version
//! ([`ChangeEvent::Relation`]). The apply sink adds new columns (`ALTER TABLE … ADD COLUMN`)
//! and widens a column whose type widened (`smallint` → `integer` → `bigint`, `real` →
//! `double precision`, `numeric` to more digits at the same scale). The store sink starts
//! new files with the new schema, and the manifest records the version and the fields. What
//! is **not** followed:
//!
//! * a dropped column stays in the apply target (null in rows inserted afterwards);
//! * a rename is a drop and an add: the new name is a new column, the old one keeps the values
//!   it had;
//! * type narrowing and changes to an unrelated type are refused ([`Error::SchemaChange`]);
//!   values captured in text form are cast to the target column's type;
//! * new tables, dropped tables and a changed key are not followed (a task's tables are
//!   fixed; a changed key surfaces as an error when it no longer has a unique index);
//! * a `TRUNCATE` naming a partition directly is not published through the root (PostgreSQL's
//!   behaviour), so it does not reach the target.
//!
//! **Watching and cleaning up.** [`run_cdc_task_with_progress`] publishes a [`CdcProgress`]
//! (phase, the target's checkpoint, the server's position, the commit time of the oldest
//! transaction not yet durable) on a watch channel, from which lag in bytes and time follow.
//! A stopped task keeps its slot, which keeps WAL at the source: [`cdc_task_slot`] reports how
//! much, and [`drop_cdc_task`] drops the slot and the publication once the task is gone.
//!
//! **Clear errors.** The slot dropped behind the task's back ([`Error::SlotLost`]), a slot
//! confirmed past the target ([`Error::SlotAhead`]), a target changed behind the task's back
//! ([`Error::TargetDiverged`]): each names the slot, table and positions, never a value.
//!
//! # Why our own protocol layer
//!
//! Upstream `tokio-postgres` has no replication support (the forks that do are git-only). The
//! two crates.io clients were judged and set aside:
//!
//! * `pgwire-replication` (0.5) turns on rustls' default features, which bring `ring` as a
//!   second crypto provider beside aws-lc-rs — the runtime panic our dependency rules exist to
//!   prevent. It also runs the connection on a task it spawns itself, sends standby status
//!   updates from its own loop, uses `anyhow` and `thiserror` 1 in its library API, and hands
//!   out raw `XLogData` without a decoder we could reuse.
//! * `pg_walstream` (0.10; aws-lc-rs and `postgres-protocol` under its `rustls-tls` feature)
//!   decodes changes into per-row maps of column names to values (with `chrono` and `serde`),
//!   while we decode straight into Arrow builders with the full-load source's binary decoders;
//!   it brings its own retry loop and an atomically shared feedback position updated behind
//!   the caller's back, has `expect`s on conversions of server-sent timestamps, and went
//!   through ten minor versions in a few months.
//!
//! So the protocol layer is ours, on the well-kept `postgres-protocol` crate (the one under
//! `tokio-postgres`) for frontend messages, backend message parsing, SCRAM-SHA-256 and md5,
//! with tokio, and rustls on the aws-lc-rs provider. Framing is ours so that a message length
//! is checked against [`ConnectConfig::max_message_bytes`] before anything is reserved for it
//! (`postgres-protocol`'s `Message::parse` reserves whatever length the header claims).
//! Ordinary queries (publications, slots, the type catalog) use sqlx like the rest of the
//! workspace.
//!
//! # Guarantees
//!
//! * **Acknowledgements are the caller's.** Status updates report only positions the caller
//!   gave ([`ChangeStream::acknowledge`]), except the opt-in idle advance
//!   ([`ChangeStream::acknowledge_idle`]).
//! * **Bounded memory.** Rows are emitted in batches of at most
//!   [`BatchConfig::batch_rows`] rows per table and [`BatchConfig::batch_bytes`] bytes over all
//!   tables; a large transaction is streamed by the server (`streaming 'on'`) and flows through
//!   in such batches, marked `streamed`, before its commit.
//! * **Nothing silently null.** A TOASTed value an update did not touch is null in its column
//!   *and* listed in [`UNCHANGED_COLUMN`]. A changed table description is a new schema
//!   version, reported with [`ChangeEvent::Relation`].
//! * **No panics on input.** [`pgoutput::decode`] and the protocol layer check every length;
//!   malformed input is an error (fuzzed).
//! * **No values or secrets in errors and logs**: ids, LSNs, names and counts only.
//! * **Checkpoints live at the target.** The task acknowledges the slot only with positions
//!   its sink made durable, together with the data, and resumes from the target's checkpoint.
//!
//! # Features
//!
//! None. TLS (rustls on aws-lc-rs) is always built in.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod apply;
mod catalog;
mod changes;
mod config;
mod error;
mod kept;
mod lsn;
pub mod pgoutput;
mod replication;
mod sink;
mod store;
mod stream;
mod task;
mod tls;
mod wire;

// The public interface.
pub use crate::catalog::{
    PublicationTables, SlotInfo, create_publication, drop_publication, drop_slot,
    publication_tables, set_publication_tables, slot_info,
};
pub use crate::changes::{
    BatchConfig, COMMIT_TS_COLUMN, CapturedColumn, ChangeBatch, ChangeDecoder, ChangeEvent,
    LSN_COLUMN, METADATA_COLUMNS, OLD_COLUMN_PREFIX, OP_COLUMN, Progress, RESERVED_PREFIX,
    RelationSchema, SchemaDiff, UNCHANGED_COLUMN, XID_COLUMN,
};
pub use crate::config::{ConnectConfig, SslMode};
pub use crate::error::{Error, Result};
pub use crate::lsn::{Lsn, ParseLsnError};
pub use crate::replication::{
    CreatedSlot, ExportedSnapshot, Positions, ReplicationClient, ReplicationMessage,
    ReplicationStream, StreamOptions, SystemIdentity,
};
pub use crate::stream::ChangeStream;
// CDC tasks: the driver, the sink contract and the two sinks.
pub use crate::apply::{ApplySinkConfig, PostgresApplySink};
pub use crate::sink::{ChangeSink, Checkpoint, CommitGroup, TableDescription, TableState};
pub use crate::store::{
    CHANGE_MANIFEST_VERSION, COMMIT_LSN_COLUMN, ChangeManifest, ManifestFile, StoreChangesSink,
    StoreSinkConfig, TableVersion,
};
pub use crate::task::{
    CdcPhase, CdcProgress, CdcTaskConfig, CdcTaskSummary, cdc_task_slot, drop_cdc_task,
    run_cdc_task, run_cdc_task_with_progress,
};

// Crates that appear in the public API, re-exported so callers use the same versions.
pub use arrow;
pub use object_store;
pub use sqlx;
pub use tidegate_replicate::{CancellationToken, TableRef};
