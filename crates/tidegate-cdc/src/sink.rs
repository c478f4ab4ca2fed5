//! The [`ChangeSink`] trait: where a CDC task's changes go, and where its progress is kept.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;
use tidegate_replicate::{CopySummary, Sink, TableRef};

use crate::changes::{ChangeBatch, RelationSchema};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// The position a target holds: every source transaction whose commit record lies before
/// [`lsn`](Self::lsn) is durable there, none after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The end of the last transaction applied (its commit's `end_lsn`), the slot's
    /// consistent point right after the initial load, or a position the stream reached while
    /// idle. Streaming resumes here, and a transaction whose commit LSN is below it is
    /// skipped.
    pub lsn: Lsn,
    /// The commit LSN of the last transaction applied, if any since the initial load.
    pub last_commit_lsn: Option<Lsn>,
}

impl Checkpoint {
    /// A checkpoint at `lsn`.
    pub fn new(lsn: Lsn, last_commit_lsn: Option<Lsn>) -> Self {
        Self {
            lsn,
            last_commit_lsn,
        }
    }
}

/// A table as the changes that follow describe it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TableDescription {
    /// Its current schema version.
    pub schema: Arc<RelationSchema>,
    /// The version it replaces, if this stream described the table before.
    pub previous: Option<Arc<RelationSchema>>,
    /// The columns that identify a row — the replica identity index's, or the primary key
    /// with `REPLICA IDENTITY FULL` — or `None` if the table has no such key. Every key
    /// column is among the old values ([`RelationSchema::old_columns`]).
    pub key: Option<Vec<String>>,
}

/// A group of whole source transactions made durable at once, in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitGroup {
    /// The checkpoint the group moves the target to.
    pub checkpoint: Checkpoint,
    /// Transactions in the group (0 for an idle advance).
    pub transactions: u64,
    /// Change rows in the group.
    pub rows: u64,
}

/// Where a CDC task's changes go.
///
/// Object safe, used as `&mut dyn ChangeSink` by [`run_cdc_task`](crate::run_cdc_task),
/// which drives it from one task: calls never overlap.
///
/// # Contract
///
/// * **Order.** Calls come as: [`checkpoint`](Self::checkpoint); when it is `None`, the
///   initial load through [`snapshot_sink`](Self::snapshot_sink) followed by
///   [`snapshot_loaded`](Self::snapshot_loaded); then any number of
///   [`relation`](Self::relation) and [`write`](Self::write) calls, ended by
///   [`commit`](Self::commit) (or [`abort`](Self::abort)). A table's `relation` comes before
///   its first batch and again whenever its schema changes; batches arrive in commit order,
///   and within a transaction in change order. A group holds only whole transactions.
/// * **Accepted versus durable.** `write` only accepts a batch. A group is durable when
///   `commit` returns `Ok`: its changes *and* the checkpoint it names are stored together,
///   atomically — a target never holds a group's changes without its checkpoint or the other
///   way round. The task acknowledges the slot only after that.
/// * **Restarts.** `checkpoint` reads the position back from the target itself, never from
///   a progress marker kept elsewhere. `relation` may come again for a schema the target
///   already follows (every new stream describes its tables again) and must then change
///   nothing.
/// * **Cancellation and failure.** Any future may be dropped at an await: what was not
///   committed is lost, never half-applied, and the sink is not used again (a new one is
///   made for the next run). After an error `abort` is called; then the sink is dropped —
///   unless it [isolates tables](ChangeSink::isolates_tables) and the error was an
///   [`Error::Table`]: then `table_failed` is called and the sink is used again from
///   `checkpoint`.
pub trait ChangeSink: Send + Debug {
    /// Whether every table needs a key ([`TableDescription::key`]); the task refuses tables
    /// without one before anything is created. Default `false`.
    fn needs_key(&self) -> bool {
        false
    }

    /// The position the target holds, or `None` if no initial load completed.
    fn checkpoint(&mut self) -> BoxFuture<'_, Result<Option<Checkpoint>>>;

    /// The sink the initial load writes to, run id = the task id.
    fn snapshot_sink(&self) -> Arc<dyn Sink>;

    /// The initial load, read in the slot's snapshot, is complete; makes checkpoint
    /// `consistent_point` durable.
    fn snapshot_loaded<'a>(
        &'a mut self,
        consistent_point: Lsn,
        load: &'a CopySummary,
    ) -> BoxFuture<'a, Result<()>>;

    /// Batches of `table` that follow have its schema.
    fn relation<'a>(&'a mut self, table: &'a TableDescription) -> BoxFuture<'a, Result<()>>;

    /// Accepts one batch of a committed transaction.
    fn write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>>;

    /// Makes everything accepted since the last commit durable, with `group.checkpoint`.
    fn commit<'a>(&'a mut self, group: &'a CommitGroup) -> BoxFuture<'a, Result<()>>;

    /// Abandons what was accepted since the last commit (best effort). The sink may be used
    /// again afterwards, starting over from [`checkpoint`](Self::checkpoint).
    fn abort(&mut self) -> BoxFuture<'_, Result<()>>;

    /// Whether the sink takes transactions the server streams before they commit
    /// ([`stream_write`](Self::stream_write) …); the task then asks for streaming. Default
    /// `false`: the server spills large transactions to its disk and sends them at commit.
    fn takes_streamed(&self) -> bool {
        false
    }

    /// Keeps rows of the streamed, not yet committed, transaction `batch.xid` (its
    /// subtransactions' rows tagged in [`XID_COLUMN`](crate::XID_COLUMN)) until
    /// [`stream_commit`](Self::stream_commit) or [`stream_abort`](Self::stream_abort), without
    /// holding them in memory. What is kept need not survive a restart: the server streams an
    /// unacknowledged transaction again from its start.
    fn stream_write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>> {
        let _ = batch;
        Box::pin(async { Err(NOT_STREAMED) })
    }

    /// Streamed transaction `xid` was rolled back (`subxid == xid`), or its subtransaction
    /// `subxid`: forgets the rows kept for it.
    fn stream_abort(&mut self, xid: u32, subxid: u32) -> BoxFuture<'_, Result<()>> {
        let _ = (xid, subxid);
        Box::pin(async { Err(NOT_STREAMED) })
    }

    /// Streamed transaction `xid` committed at `commit_lsn`: the rows kept for it, but those
    /// of rolled-back subtransactions and of tables in `skip`, join the open commit group in
    /// order, as [`write`](Self::write) would have delivered them. Returns how many rows
    /// joined.
    fn stream_commit<'a>(
        &'a mut self,
        xid: u32,
        commit_lsn: Lsn,
        skip: &'a [TableRef],
    ) -> BoxFuture<'a, Result<u64>> {
        let _ = (xid, commit_lsn, skip);
        Box::pin(async { Err(NOT_STREAMED) })
    }

    /// Whether one table's failure can be set apart from the others: the sink reports it as
    /// [`Error::Table`] and keeps [`TableState`]s beside its checkpoint. Default `false`: any
    /// error fails the task.
    fn isolates_tables(&self) -> bool {
        false
    }

    /// The tables the target keeps a state for (failed or resynced ones), read from the
    /// target itself.
    fn table_states(&mut self) -> BoxFuture<'_, Result<Vec<TableState>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Makes durable that `table`'s changes are no longer applied, because of `error` (a
    /// text without values), until it is resynced. Called after [`abort`](Self::abort).
    fn table_failed<'a>(
        &'a mut self,
        table: &'a TableRef,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (table, error);
        Box::pin(async { Err(NOT_ISOLATED) })
    }

    /// `table` was loaded again through [`snapshot_sink`](Self::snapshot_sink) in a snapshot
    /// whose consistent point is `consistent_point`: makes durable that its failure is over
    /// and that its changes apply again from the transactions committing at or after that
    /// point.
    fn table_resynced<'a>(
        &'a mut self,
        table: &'a TableRef,
        consistent_point: Lsn,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (table, consistent_point);
        Box::pin(async { Err(NOT_ISOLATED) })
    }
}

const NOT_ISOLATED: Error = Error::InvalidConfig {
    reason: "this sink does not set failed tables apart",
};

const NOT_STREAMED: Error = Error::InvalidConfig {
    reason: "this sink does not take streamed transactions",
};

/// What a target keeps about one table besides the task's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableState {
    /// The source table.
    pub table: TableRef,
    /// Why its changes stopped being applied (names and codes, never values); `None` once it
    /// was resynced.
    pub failure: Option<String>,
    /// The consistent point of its last resync: its changes apply from the transactions
    /// committing at or after it.
    pub resynced_at: Option<Lsn>,
}

impl TableState {
    /// A state for `table`.
    pub fn new(table: TableRef, failure: Option<String>, resynced_at: Option<Lsn>) -> Self {
        Self {
            table,
            failure,
            resynced_at,
        }
    }
}
