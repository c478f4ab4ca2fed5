//! [`run_cdc_task`]: initial load in the slot's snapshot, then changes into a
//! [`ChangeSink`], acknowledged only once the sink made them durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::ConnectOptions;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use tidegate_replicate::{
    CancellationToken, CopyPlan, CopySummary, PostgresSource, PostgresSourceConfig, Sink, Source,
    TableRef, copy_tables,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::{
    PublicationTables, SlotInfo, create_publication, drop_publication, drop_slot,
    publication_tables, slot_info,
};
use crate::changes::{BatchConfig, ChangeEvent, RelationSchema};
use crate::config::ConnectConfig;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pgoutput::ReplicaIdentity;
use crate::replication::{CreatedSlot, ExportedSnapshot, ReplicationClient, StreamOptions};
use crate::sink::{ChangeSink, Checkpoint, CommitGroup, TableDescription, TableState};
use crate::stream::ChangeStream;

/// Longest task id: the slot and publication names (`tidegate_<id>`) stay within
/// PostgreSQL's 63 bytes.
const MAX_TASK_ID: usize = 48;

/// What a CDC task captures and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CdcTaskConfig {
    /// Names the task's slot and publication (`tidegate_<task_id>`) and its checkpoint at the
    /// target: lowercase ASCII letters, digits and `_`, at most 48 characters.
    pub task_id: String,
    /// The source database.
    pub source: ConnectConfig,
    /// The tables captured (a partitioned table by its root).
    pub tables: Vec<TableRef>,
    /// How change rows are gathered into batches (bounds memory).
    pub batch: BatchConfig,
    /// A commit group is made durable once it holds this many change rows (at the next
    /// commit boundary). Default 50,000.
    pub group_rows: u64,
    /// … or this many transactions. Default 1,000.
    pub group_transactions: u64,
    /// … or once its first transaction has waited this long. Default 1 s.
    pub group_delay: Duration,
    /// While no captured table changes, the checkpoint (and the slot) is moved to the
    /// server's position at most this often, so the slot does not hold WAL back. `None`
    /// never does. Default 30 s.
    pub idle_checkpoint: Option<Duration>,
    /// Rows per batch of the initial load. Default 65,536.
    pub load_batch_rows: usize,
    /// Tables loaded at once in the initial load. Default 2.
    pub load_parallel_tables: usize,
    /// How long to wait for the slot to be released by a previous run that died (its server
    /// connection lingers a moment). Default 30 s.
    pub slot_wait: Duration,
    /// Ask the server to stream large transactions before they commit (PostgreSQL 14+), when
    /// the sink [takes them](ChangeSink::takes_streamed); otherwise the server spills them to
    /// its disk and sends them at commit. Default `true`.
    pub streaming: bool,
    /// Tables to load again, alone, before streaming resumes (a failed table once its cause
    /// is fixed, or one whose target was changed behind the task's back). Needs a sink that
    /// [isolates tables](ChangeSink::isolates_tables). Ignored when the task has no
    /// checkpoint yet: the initial load loads every table. Default none.
    pub resync: Vec<TableRef>,
}

impl CdcTaskConfig {
    /// A task with the defaults above.
    pub fn new(task_id: impl Into<String>, source: ConnectConfig, tables: Vec<TableRef>) -> Self {
        Self {
            task_id: task_id.into(),
            source,
            tables,
            batch: BatchConfig::default(),
            group_rows: 50_000,
            group_transactions: 1_000,
            group_delay: Duration::from_secs(1),
            idle_checkpoint: Some(Duration::from_secs(30)),
            load_batch_rows: 65_536,
            load_parallel_tables: 2,
            slot_wait: Duration::from_secs(30),
            resync: Vec::new(),
            streaming: true,
        }
    }

    /// Sets [`resync`](Self::resync).
    pub fn with_resync(mut self, tables: Vec<TableRef>) -> Self {
        self.resync = tables;
        self
    }

    /// Sets [`batch`](Self::batch).
    pub fn with_batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }

    /// Sets the commit group limits ([`group_rows`](Self::group_rows),
    /// [`group_transactions`](Self::group_transactions), [`group_delay`](Self::group_delay)).
    pub fn with_group(mut self, rows: u64, transactions: u64, delay: Duration) -> Self {
        self.group_rows = rows;
        self.group_transactions = transactions;
        self.group_delay = delay;
        self
    }

    /// Sets [`idle_checkpoint`](Self::idle_checkpoint).
    pub fn with_idle_checkpoint(mut self, interval: Option<Duration>) -> Self {
        self.idle_checkpoint = interval;
        self
    }

    /// The replication slot's name: `tidegate_` and the task id.
    pub fn slot_name(&self) -> String {
        format!("tidegate_{}", self.task_id)
    }

    /// The publication's name.
    pub fn publication_name(&self) -> String {
        format!("tidegate_{}", self.task_id)
    }

    fn validate(&self) -> Result<()> {
        check_task_id(&self.task_id)?;
        let reason = if self.tables.is_empty() {
            "a CDC task needs at least one table"
        } else if self.group_rows == 0 || self.group_transactions == 0 {
            "group_rows and group_transactions must be at least 1"
        } else if self.load_batch_rows == 0 || self.load_parallel_tables == 0 {
            "load_batch_rows and load_parallel_tables must be at least 1"
        } else if self.resync.iter().any(|table| !self.tables.contains(table)) {
            "a table to resync is not one of the task's tables"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig { reason })
    }
}

fn check_task_id(task_id: &str) -> Result<()> {
    let id_ok = !task_id.is_empty()
        && task_id.len() <= MAX_TASK_ID
        && task_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if id_ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            reason: "a task id is 1 to 48 lowercase ASCII letters, digits and underscores",
        })
    }
}

/// The slot of CDC task `task_id` at `source` (how much WAL it holds back, whether a
/// connection streams from it), or `None` if it does not exist.
pub async fn cdc_task_slot(source: &ConnectConfig, task_id: &str) -> Result<Option<SlotInfo>> {
    check_task_id(task_id)?;
    let mut catalog = connect_sql(source).await?;
    let info = slot_info(&mut catalog, &format!("tidegate_{task_id}")).await;
    let _ = sqlx::Connection::close(catalog).await;
    info
}

/// Drops the replication slot and the publication of CDC task `task_id` at `source`, so the
/// server stops keeping WAL for it; what exists of the two is dropped, what does not is
/// skipped. A slot in use (the task still running) is refused with [`Error::SlotActive`].
/// The target, its data and its checkpoint are left alone. Returns whether the slot existed.
pub async fn drop_cdc_task(source: &ConnectConfig, task_id: &str) -> Result<bool> {
    check_task_id(task_id)?;
    let name = format!("tidegate_{task_id}");
    let mut catalog = connect_sql(source).await?;
    let existed = match slot_info(&mut catalog, &name).await? {
        Some(info) if info.active => return Err(Error::SlotActive { slot: name }),
        Some(_) => drop_slot(&mut catalog, &name)
            .await
            .map_err(|error| match error {
                // It became active in between.
                Error::Sql {
                    source: sqlx::Error::Database(ref database),
                    ..
                } if database.code().as_deref() == Some("55006") => {
                    Error::SlotActive { slot: name.clone() }
                }
                other => other,
            })?,
        None => false,
    };
    drop_publication(&mut catalog, &name).await?;
    let _ = sqlx::Connection::close(catalog).await;
    Ok(existed)
}

/// What a CDC task did until it stopped.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CdcTaskSummary {
    /// The initial load, if this run made it.
    pub initial_load: Option<CopySummary>,
    /// Where streaming started.
    pub started_at: Lsn,
    /// The checkpoint when the task stopped.
    pub checkpoint: Option<Checkpoint>,
    /// Transactions made durable at the target.
    pub transactions: u64,
    /// Transactions skipped because the target already held them.
    pub skipped_transactions: u64,
    /// Change rows made durable.
    pub rows: u64,
    /// Commit groups made durable (idle advances included).
    pub groups: u64,
    /// Transactions among `transactions` the server streamed before they committed.
    pub streamed_transactions: u64,
}

/// Where a running CDC task stands, published while it runs
/// ([`run_cdc_task_with_progress`]). Positions and counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CdcProgress {
    /// What the task is doing.
    pub phase: CdcPhase,
    /// The position the target holds (its checkpoint).
    pub checkpoint: Lsn,
    /// The source server's WAL position as last reported by it.
    pub server_lsn: Lsn,
    /// When the oldest transaction received but not yet durable at the target committed at
    /// the source, in microseconds since the Unix epoch; `None` when there is none.
    pub pending_since_micros: Option<i64>,
    /// Transactions made durable at the target, over every call that shared the channel (a
    /// caller retrying keeps its counts).
    pub transactions: u64,
    /// Change rows made durable at the target, counted likewise.
    pub rows: u64,
    /// Rows of the initial load, once it completed.
    pub load_rows: u64,
    /// Tables whose changes are set apart after they failed, until they are resynced
    /// ([`CdcTaskConfig::resync`]), with why.
    pub failed_tables: Vec<TableState>,
}

impl CdcProgress {
    /// WAL bytes between the target's checkpoint and the source's position: what the target
    /// still lacks, unpublished changes included.
    pub fn lag_bytes(&self) -> u64 {
        self.server_lsn
            .as_u64()
            .saturating_sub(self.checkpoint.as_u64())
    }

    /// How long the oldest transaction not yet durable at the target has been committed at
    /// the source, at `now_micros` (Unix microseconds); zero when every transaction received
    /// is durable.
    pub fn lag(&self, now_micros: i64) -> Duration {
        self.pending_since_micros.map_or(Duration::ZERO, |since| {
            Duration::from_micros(u64::try_from(now_micros.saturating_sub(since)).unwrap_or(0))
        })
    }
}

/// The phases of a CDC task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CdcPhase {
    /// Checking the source and the target, creating the publication and the slot.
    #[default]
    Starting,
    /// Copying the tables as of the slot's snapshot.
    InitialLoad,
    /// Copying tables to resync ([`CdcTaskConfig::resync`]) as of a new snapshot.
    Resyncing,
    /// Receiving changes and making them durable at the target.
    Streaming,
}

/// Runs CDC task `config` into `sink` until `cancel` fires or an error occurs.
///
/// 1. Creates the publication (`publish_via_partition_root`) if it is missing and reads the
///    target's checkpoint ([`ChangeSink::checkpoint`]).
/// 2. Without a checkpoint, (re)creates the slot exporting its snapshot, runs the initial load
///    in that snapshot into [`ChangeSink::snapshot_sink`], and records the slot's consistent
///    point as the checkpoint. A load interrupted before that is redone from scratch.
/// 3. Streams from the checkpoint — the target's, never the slot's own position. A
///    transaction whose commit LSN lies before the checkpoint is skipped. Whole transactions
///    are gathered into commit groups; after [`ChangeSink::commit`] returns, the slot is
///    acknowledged up to the group's end.
///
/// **One failing table.** With a sink that [isolates tables](ChangeSink::isolates_tables),
/// an error applying one table's changes ([`Error::Table`], not one that may pass) does not
/// stop the others: the open group is abandoned, the table is recorded as failed at the
/// target ([`ChangeSink::table_failed`]) and reported in [`CdcProgress::failed_tables`], and
/// streaming starts again from the checkpoint without it. Its changes are skipped until it is
/// resynced ([`CdcTaskConfig::resync`]): loaded again alone, in the snapshot of a temporary
/// slot, after which its changes apply from that snapshot's consistent point on. Tables that
/// did not fail are not loaded again. When the failing table is the last one not set apart,
/// the task fails instead (nothing is recorded), and a new run resumes it from its
/// checkpoint once the cause is fixed. The initial load does the same: each table is loaded
/// on its own, and one that fails twice is set apart (recorded before the checkpoint) while
/// the others stream, unless no table loaded; an error that may pass (a lost connection)
/// fails the load instead.
///
/// **Large transactions.** With a sink that [takes streamed
/// transactions](ChangeSink::takes_streamed) (and [`CdcTaskConfig::streaming`]), the server
/// streams a transaction in blocks once it outgrows its `logical_decoding_work_mem`, before it
/// commits; the sink keeps the blocks ([`ChangeSink::stream_write`], rows of rolled-back
/// subtransactions dropped), and at the commit they join the commit group in commit order.
/// Otherwise the server spills large transactions to its disk and sends them at commit. Either
/// way the sink sees transactions in commit order, and memory stays bounded by
/// [`CdcTaskConfig::batch`].
///
/// **Cancellation.** When `cancel` fires, the open group is abandoned (nothing of it is
/// acknowledged) and the summary returned. Dropping the future instead is just as safe: the
/// target commits groups atomically with their checkpoint, and a restart resumes from it.
pub async fn run_cdc_task(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    cancel: CancellationToken,
) -> Result<CdcTaskSummary> {
    let (progress, _) = watch::channel(CdcProgress::default());
    run_cdc_task_with_progress(config, sink, cancel, &progress).await
}

/// [`run_cdc_task`], publishing where the task stands on `progress` as it goes: after each
/// commit group, on each keepalive from the server, and when the phase changes.
pub async fn run_cdc_task_with_progress(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    cancel: CancellationToken,
    progress: &watch::Sender<CdcProgress>,
) -> Result<CdcTaskSummary> {
    config.validate()?;
    // Counts go on from an earlier call that shared `progress` (a caller retrying).
    progress.send_modify(|now| {
        now.phase = CdcPhase::Starting;
        now.pending_since_micros = None;
        now.failed_tables.clear();
    });
    let mut summary = CdcTaskSummary::default();
    // Tables are resynced on the first pass only: a table that fails later stays set apart
    // until the caller asks again.
    let mut resync = config.resync.clone();
    loop {
        let result = run_once(config, sink, &cancel, progress, &mut summary, &resync).await;
        resync.clear();
        match result {
            Err(Error::Table { table, source })
                if sink.isolates_tables()
                    && !source.is_retryable()
                    && config.tables.contains(&table) =>
            {
                let others_failed = sink
                    .table_states()
                    .await?
                    .into_iter()
                    .filter(|state| {
                        state.failure.is_some()
                            && state.table != table
                            && config.tables.contains(&state.table)
                    })
                    .count();
                if others_failed + 1 >= config.tables.len() {
                    // No other table to keep going: the task fails as a whole, and resumes
                    // from its checkpoint once the cause is fixed.
                    return Err(Error::Table { table, source });
                }
                let error = source.to_string();
                tracing::warn!(task = %config.task_id, %table, %error, "a table failed: its changes are set apart until it is resynced");
                sink.table_failed(&table, &error).await?;
                // Streaming starts again from the checkpoint without it.
            }
            other => return other.map(|()| summary),
        }
    }
}

/// One pass: the load or resyncs, then streaming until cancelled or an error.
async fn run_once(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    cancel: &CancellationToken,
    progress: &watch::Sender<CdcProgress>,
    summary: &mut CdcTaskSummary,
    resync: &[TableRef],
) -> Result<()> {
    let mut catalog = connect_sql(&config.source).await?;
    if sink.needs_key() {
        for table in &config.tables {
            if !has_key(&mut catalog, table).await? {
                return Err(Error::NoApplyKey {
                    table: table.to_string(),
                });
            }
        }
    }
    ensure_publication(&mut catalog, config).await?;

    let prepared = tokio::select! {
        prepared = prepare(config, sink, &mut catalog, cancel, progress, resync) => prepared?,
        () = cancel.cancelled() => None,
    };
    let Some(prepared) = prepared else {
        return Ok(());
    };
    let Prepared {
        client,
        checkpoint,
        load,
    } = prepared;
    let mut gates = HashMap::new();
    let mut failed_tables = Vec::new();
    for state in sink.table_states().await? {
        if !config.tables.contains(&state.table) {
            continue;
        }
        if state.failure.is_some() {
            gates.insert(state.table.clone(), Gate::Failed);
            failed_tables.push(state);
        } else if let Some(from) = state.resynced_at.filter(|from| *from > checkpoint.lsn) {
            gates.insert(state.table.clone(), Gate::From(from));
        }
    }
    if let Some(load) = load {
        progress.send_modify(|now| now.load_rows = load.total_rows());
        summary.initial_load = Some(load);
    }
    if summary.checkpoint.is_none() {
        summary.started_at = checkpoint.lsn;
    }
    summary.checkpoint = Some(checkpoint);
    progress.send_modify(|now| {
        now.phase = CdcPhase::Streaming;
        now.checkpoint = checkpoint.lsn;
        now.server_lsn = now.server_lsn.max(checkpoint.lsn);
        now.failed_tables = failed_tables;
    });

    let mut options = StreamOptions::new(
        config.slot_name(),
        vec![config.publication_name()],
        checkpoint.lsn,
    );
    options.streaming = config.streaming && sink.takes_streamed();
    let mut stream =
        ChangeStream::start_on(client, &config.source, options, config.batch.clone()).await?;
    let mut run = Run {
        config,
        checkpoint,
        keys: KeyResolver {
            connection: catalog,
        },
        transaction: None,
        group: Group::default(),
        last_idle: Instant::now(),
        progress,
        gates,
        isolates_tables: sink.isolates_tables(),
        block: None,
    };
    let result = run.stream(&mut stream, sink, cancel, summary).await;
    summary.checkpoint = Some(run.checkpoint);
    match result {
        Ok(()) => {
            let _ = stream.close().await;
            Ok(())
        }
        Err(error) => {
            let _ = sink.abort().await;
            if matches!(error, Error::Table { .. }) {
                // Released at once, for the next pass.
                let _ = stream.close().await;
            }
            Err(error)
        }
    }
}

/// Whether a table's changes are applied.
#[derive(Debug, Clone, Copy)]
enum Gate {
    /// Not at all: it failed and awaits a resync.
    Failed,
    /// From the transactions committing at or after this LSN (the consistent point of its
    /// resync; those before are in the table already).
    From(Lsn),
}

struct Prepared {
    client: ReplicationClient,
    checkpoint: Checkpoint,
    load: Option<CopySummary>,
}

/// The checkpoint to stream from and a replication connection, after the initial load if
/// the target has none; `None` if cancelled.
async fn prepare(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    catalog: &mut PgConnection,
    cancel: &CancellationToken,
    progress: &watch::Sender<CdcProgress>,
    resync: &[TableRef],
) -> Result<Option<Prepared>> {
    let slot = config.slot_name();
    if let Some(checkpoint) = sink.checkpoint().await? {
        let started = Instant::now();
        loop {
            let info = slot_info(catalog, &slot).await?;
            let Some(info) = info.filter(|info| info.wal_status.as_deref() != Some("lost")) else {
                return Err(Error::SlotLost {
                    slot,
                    checkpoint: checkpoint.lsn,
                });
            };
            if let Some(confirmed) = info.confirmed_flush_lsn
                && confirmed > checkpoint.lsn
            {
                return Err(Error::SlotAhead {
                    slot,
                    confirmed,
                    checkpoint: checkpoint.lsn,
                });
            }
            if !info.active || started.elapsed() >= config.slot_wait {
                break;
            }
            // A previous run that died may still hold it until the server notices.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !resync.is_empty() {
            if !sink.isolates_tables() {
                return Err(Error::InvalidConfig {
                    reason: "this target cannot load tables again alone",
                });
            }
            progress.send_modify(|now| now.phase = CdcPhase::Resyncing);
            if !resync_tables(config, sink, catalog, resync, cancel).await? {
                return Ok(None);
            }
        }
        tracing::info!(task = %config.task_id, checkpoint = %checkpoint.lsn, "resuming from the target's checkpoint");
        let client = ReplicationClient::connect(&config.source).await?;
        return Ok(Some(Prepared {
            client,
            checkpoint,
            load: None,
        }));
    }

    // No checkpoint: a slot left by an interrupted initial load is useless (its snapshot is
    // gone); start over.
    let (created, snapshot, guard) =
        guarded_slot(config, catalog, &config.slot_name(), &config.tables, false).await?;
    progress.send_modify(|now| now.phase = CdcPhase::InitialLoad);
    tracing::info!(task = %config.task_id, consistent_point = %created.consistent_point, "initial load started");
    let source = snapshot_source(config, &snapshot, "the initial load").await?;
    let Some((load, failed)) = initial_load(config, sink, source, cancel).await? else {
        return Ok(None);
    };
    // Every reader has joined the snapshot and finished.
    let client = snapshot.release();
    let _ = sqlx::Connection::close(guard).await;
    // Table states first, the checkpoint last: a restart never streams into a table the load
    // did not fill.
    if sink.isolates_tables() {
        for state in sink.table_states().await? {
            let failed_again = failed.iter().any(|(table, _)| *table == state.table);
            if state.failure.is_some() && !failed_again {
                sink.table_resynced(&state.table, created.consistent_point)
                    .await?;
            }
        }
        for (table, error) in &failed {
            let error = error.to_string();
            tracing::warn!(task = %config.task_id, %table, %error, "a table failed its initial load: it is set apart until it is resynced");
            sink.table_failed(table, &error).await?;
        }
    }
    sink.snapshot_loaded(created.consistent_point, &load)
        .await?;
    tracing::info!(
        task = %config.task_id,
        rows = load.total_rows(),
        tables = load.tables.len(),
        "initial load complete"
    );
    Ok(Some(Prepared {
        client,
        checkpoint: Checkpoint::new(created.consistent_point, None),
        load: Some(load),
    }))
}

/// How often a slot is created again because a table was rewritten while it was created.
const SLOT_ATTEMPTS: usize = 30;

/// Creates the slot exporting its snapshot, with the tables locked in `ACCESS SHARE` mode by
/// the returned connection (a transaction in that snapshot) until the load is over.
///
/// `TRUNCATE` and table rewrites are not MVCC-safe: one committed after the snapshot but
/// before the load reads the table would make the load see the rewritten table instead of
/// the snapshot's. The lock keeps them out during the load; one that slipped in between the
/// slot's creation and the lock shows as a changed file node, and the slot is made again.
async fn guarded_slot(
    config: &CdcTaskConfig,
    catalog: &mut PgConnection,
    slot: &str,
    tables: &[TableRef],
    temporary: bool,
) -> Result<(CreatedSlot, ExportedSnapshot, PgConnection)> {
    for attempt in 1..=SLOT_ATTEMPTS {
        if slot_info(catalog, slot).await?.is_some() {
            let mut client = ReplicationClient::connect(&config.source).await?;
            match client.drop_slot(slot, true).await {
                Ok(()) | Err(Error::SlotNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
            client.close().await;
        }
        // Everything connected first: the window between the two looks is kept short.
        let mut guard = connect_sql(&config.source).await?;
        let client = ReplicationClient::connect(&config.source).await?;
        let before = file_nodes(catalog, tables).await?;
        let (created, snapshot) = client
            .create_slot_exporting_snapshot(slot, temporary)
            .await?;
        let mut lock = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'; \
             LOCK TABLE ",
            snapshot.name()
        );
        for (index, table) in tables.iter().enumerate() {
            if index > 0 {
                lock.push_str(", ");
            }
            lock.push_str(&qualified(table));
        }
        lock.push_str(" IN ACCESS SHARE MODE");
        // The snapshot's name was checked by the replication layer; names are quoted.
        sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
            .execute(&mut guard)
            .await
            .map_err(|source| Error::Sql {
                what: "locking the tables for the initial load",
                source,
            })?;
        if file_nodes(&mut guard, tables).await? == before {
            return Ok((created, snapshot, guard));
        }
        tracing::info!(task = %config.task_id, attempt, "a table was rewritten while the slot was created: creating it again");
        drop(guard);
        drop(snapshot);
        tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
    }
    Err(Error::InvalidConfig {
        reason: "the tables were truncated or rewritten every time the slot was created",
    })
}

/// The failure a table shows while a resync replaces it, and after a resync that stopped.
const RESYNC_INTERRUPTED: &str = "a resync of the table did not complete; resync it again";

/// Loads `tables` again, one at a time, in the snapshot of a temporary slot, and records each
/// as resynced at the slot's consistent point. `false` if cancelled.
async fn resync_tables(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    catalog: &mut PgConnection,
    tables: &[TableRef],
    cancel: &CancellationToken,
) -> Result<bool> {
    // `tidegate_<id>_r`: within PostgreSQL's 63 bytes for the longest task id.
    let slot = format!("{}_r", config.slot_name());
    let (created, snapshot, guard) = guarded_slot(config, catalog, &slot, tables, true).await?;
    tracing::info!(task = %config.task_id, tables = tables.len(), consistent_point = %created.consistent_point, "resyncing tables");
    let source = snapshot_source(config, &snapshot, "resyncing tables").await?;
    for table in tables {
        // Set apart while it is replaced: a resync that stops half-way leaves it failed (to
        // be resynced again), never applying changes its new contents already hold.
        sink.table_failed(table, RESYNC_INTERRUPTED).await?;
        let plan = CopyPlan::new(config.task_id.clone())
            .with_tables([table.to_string()])
            .with_batch_rows(config.load_batch_rows)
            .with_parallel_tables(1);
        match copy_in_snapshot(Arc::clone(&source), sink.snapshot_sink(), plan, cancel).await {
            Ok(Some(load)) => {
                sink.table_resynced(table, created.consistent_point).await?;
                tracing::info!(task = %config.task_id, %table, rows = load.total_rows(), "table resynced");
            }
            Ok(None) => return Ok(false),
            Err(error) => {
                return Err(Error::Table {
                    table: table.clone(),
                    source: Box::new(Error::Replicate {
                        what: "resyncing the table",
                        source: error,
                    }),
                });
            }
        }
    }
    // Closing the replication connection drops the temporary slot.
    snapshot.release().close().await;
    let _ = sqlx::Connection::close(guard).await;
    Ok(true)
}

/// Loads the task's tables in the snapshot `source` reads in; `None` if cancelled.
///
/// With a sink that isolates tables (and more than one table), each table is loaded on its
/// own: tables that fail come back with their error, set apart while the others go on, as
/// long as one table loaded. Otherwise any failure fails the load.
async fn initial_load(
    config: &CdcTaskConfig,
    sink: &mut dyn ChangeSink,
    source: Arc<dyn Source>,
    cancel: &CancellationToken,
) -> Result<Option<(CopySummary, Vec<(TableRef, Error)>)>> {
    let plan = |tables: &[TableRef], parallel: usize| {
        CopyPlan::new(config.task_id.clone())
            .with_tables(tables.iter().map(ToString::to_string))
            .with_batch_rows(config.load_batch_rows)
            .with_parallel_tables(parallel)
    };
    let failure = |source| Error::Replicate {
        what: "the initial load",
        source,
    };
    let snapshot_sink = sink.snapshot_sink();
    if !sink.isolates_tables() || config.tables.len() < 2 {
        let plan = plan(&config.tables, config.load_parallel_tables);
        return match copy_in_snapshot(source, snapshot_sink, plan, cancel).await {
            Ok(load) => Ok(load.map(|load| (load, Vec::new()))),
            Err(error) => Err(failure(error)),
        };
    }
    let started = Instant::now();
    let copies: Vec<_> = futures::stream::iter(config.tables.iter().cloned())
        .map(|table| {
            let (source, snapshot_sink) = (Arc::clone(&source), Arc::clone(&snapshot_sink));
            let plan = plan(std::slice::from_ref(&table), 1);
            async move {
                let copied = copy_in_snapshot(source, snapshot_sink, plan, cancel).await;
                (table, copied)
            }
        })
        .buffer_unordered(config.load_parallel_tables)
        .collect()
        .await;
    let mut load: Option<CopySummary> = None;
    let mut failed = Vec::new();
    for (table, mut copied) in copies {
        if let Err(error) = copied {
            if error.is_retryable() {
                // The source or the target is unreachable: not one table's fault.
                return Err(failure(error));
            }
            // Once more, alone: an error that passes (a race with a session of an earlier
            // run that is still going away) must not set a table apart.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let plan = plan(std::slice::from_ref(&table), 1);
            copied = copy_in_snapshot(
                Arc::clone(&source),
                Arc::clone(&snapshot_sink),
                plan,
                cancel,
            )
            .await;
        }
        match copied {
            Ok(None) => return Ok(None),
            Ok(Some(one)) => match &mut load {
                Some(load) => load.tables.extend(one.tables),
                None => load = Some(one),
            },
            Err(error) if error.is_retryable() => return Err(failure(error)),
            Err(error) => failed.push((table, failure(error))),
        }
    }
    let Some(mut load) = load else {
        // Not one table loaded: the task fails as a whole.
        let (_, error) = failed.swap_remove(0);
        return Err(error);
    };
    load.tables.sort_by(|a, b| a.table.cmp(&b.table));
    load.elapsed = started.elapsed();
    Ok(Some((load, failed)))
}

/// A source reading in the exported `snapshot`.
async fn snapshot_source(
    config: &CdcTaskConfig,
    snapshot: &ExportedSnapshot,
    what: &'static str,
) -> Result<Arc<dyn Source>> {
    let source = PostgresSource::connect_with(
        config.source.sqlx_options(),
        PostgresSourceConfig::default().with_snapshot(snapshot.name()),
    )
    .await
    .map_err(|source| Error::Replicate { what, source })?;
    Ok(Arc::new(source))
}

/// Copies `plan`'s tables from `source` into `sink`; `None` if cancelled.
async fn copy_in_snapshot(
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    plan: CopyPlan,
    cancel: &CancellationToken,
) -> std::result::Result<Option<CopySummary>, tidegate_replicate::Error> {
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    let copy = copy_tables(source, sink, plan, progress, cancel.child_token());
    let drain = async { while events.recv().await.is_some() {} };
    match tokio::join!(copy, drain).0 {
        Ok(load) => Ok(Some(load)),
        Err(tidegate_replicate::Error::Cancelled) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The file nodes of every leaf table (partitions included) of `tables`.
async fn file_nodes(connection: &mut PgConnection, tables: &[TableRef]) -> Result<Vec<(i64, i64)>> {
    let names: Vec<String> = tables.iter().map(qualified).collect();
    sqlx::query_as(
        "SELECT t.relid::oid::int8, coalesce(pg_relation_filenode(t.relid)::int8, 0) \
         FROM unnest($1::text[]) AS n(name), pg_partition_tree(n.name::regclass) AS t \
         WHERE t.isleaf ORDER BY 1",
    )
    .bind(names)
    .fetch_all(connection)
    .await
    .map_err(|source| Error::Sql {
        what: "reading the tables' file nodes",
        source,
    })
}

fn qualified(table: &TableRef) -> String {
    format!(
        "\"{}\".\"{}\"",
        table.schema.replace('"', "\"\""),
        table.name.replace('"', "\"\"")
    )
}

async fn connect_sql(source: &ConnectConfig) -> Result<PgConnection> {
    source
        .sqlx_options()
        .connect()
        .await
        .map_err(|source| Error::Sql {
            what: "connecting to the source",
            source,
        })
}

/// Creates the task's publication if it is missing; refuses one that publishes other tables.
async fn ensure_publication(catalog: &mut PgConnection, config: &CdcTaskConfig) -> Result<()> {
    let name = config.publication_name();
    let mut wanted = config.tables.clone();
    wanted.sort();
    wanted.dedup();
    match publication_tables(catalog, &name).await? {
        None => create_publication(catalog, &name, &PublicationTables::Tables(wanted)).await,
        Some(existing) if existing == wanted => Ok(()),
        Some(_) => Err(Error::InvalidConfig {
            reason: "the task's publication exists and publishes other tables; \
                     a task's tables cannot change once it started",
        }),
    }
}

/// Whether `table` has a key changes can be applied by.
async fn has_key(catalog: &mut PgConnection, table: &TableRef) -> Result<bool> {
    let row = sqlx::query(
        "SELECT c.relreplident::text, \
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_optional(catalog)
    .await
    .map_err(|source| Error::Sql {
        what: "looking up the table's key",
        source,
    })?;
    let Some(row) = row else {
        return Err(Error::TableNotFound {
            table: table.to_string(),
        });
    };
    let read = |row: &sqlx::postgres::PgRow| -> sqlx::Result<(String, bool, bool)> {
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    };
    let (identity, primary, index) = read(&row).map_err(|source| Error::Sql {
        what: "looking up the table's key",
        source,
    })?;
    Ok(match identity.as_str() {
        "d" | "f" => primary,
        "i" => index,
        _ => false,
    })
}

/// Resolves the key columns of described tables through the source catalog.
struct KeyResolver {
    connection: PgConnection,
}

impl KeyResolver {
    async fn key(&mut self, schema: &RelationSchema) -> Result<Option<Vec<String>>> {
        let flagged = || {
            let key: Vec<String> = schema
                .columns
                .iter()
                .filter(|column| column.is_key)
                .map(|column| column.name.clone())
                .collect();
            (!key.is_empty()).then_some(key)
        };
        match schema.replica_identity {
            ReplicaIdentity::Nothing => Ok(None),
            // With FULL every column is flagged: the key is the primary key.
            ReplicaIdentity::Full => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                     WHERE i.indrelid = $1::int8::oid AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                )
                .bind(i64::from(schema.oid))
                .fetch_all(&mut self.connection)
                .await
                .map_err(|source| Error::Sql {
                    what: "looking up the table's primary key",
                    source,
                })?;
                Ok((!names.is_empty()).then_some(names))
            }
            _ => Ok(flagged()),
        }
    }
}

/// The commit group being gathered.
#[derive(Debug, Default)]
struct Group {
    transactions: u64,
    rows: u64,
    /// When its first transaction committed.
    since: Option<Instant>,
    /// The end and commit LSN of its last transaction.
    last: Option<(Lsn, Lsn)>,
}

/// The transaction being received: its commit LSN and whether the target holds it already.
#[derive(Debug, Clone, Copy)]
struct OpenTransaction {
    skip: bool,
    commit_lsn: Lsn,
}

struct Run<'a> {
    config: &'a CdcTaskConfig,
    checkpoint: Checkpoint,
    keys: KeyResolver,
    transaction: Option<OpenTransaction>,
    group: Group,
    last_idle: Instant,
    progress: &'a watch::Sender<CdcProgress>,
    /// Tables whose changes are not (all) applied.
    gates: HashMap<TableRef, Gate>,
    /// Whether the sink sets failed tables apart.
    isolates_tables: bool,
    /// The streamed transaction whose block is being received.
    block: Option<u32>,
}

impl Run<'_> {
    async fn stream(
        &mut self,
        stream: &mut ChangeStream,
        sink: &mut dyn ChangeSink,
        cancel: &CancellationToken,
        summary: &mut CdcTaskSummary,
    ) -> Result<()> {
        let mut described: HashMap<u32, Arc<RelationSchema>> = HashMap::new();
        loop {
            let flush_at = match (self.transaction, self.block, self.group.since) {
                (None, None, Some(since)) => Some(since + self.config.group_delay),
                _ => None,
            };
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    sink.abort().await?;
                    return Ok(());
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush(stream, sink, summary).await?;
                    continue;
                }
                event = stream.next() => event?,
            };
            let Some(event) = event else {
                return Err(Error::UnexpectedEvent {
                    reason: "the server ended the replication stream",
                });
            };
            match event {
                ChangeEvent::Begin {
                    commit_lsn,
                    commit_time,
                    ..
                } => {
                    let skip = commit_lsn < self.checkpoint.lsn;
                    if !skip {
                        self.progress.send_if_modified(|now| {
                            let first = now.pending_since_micros.is_none();
                            if first {
                                now.pending_since_micros = commit_time.unix_micros();
                            }
                            first
                        });
                    }
                    if skip {
                        summary.skipped_transactions += 1;
                        tracing::debug!(commit_lsn = %commit_lsn, checkpoint = %self.checkpoint.lsn, "transaction already at the target: skipped");
                    }
                    self.transaction = Some(OpenTransaction { skip, commit_lsn });
                }
                ChangeEvent::Relation { schema, previous } => {
                    let previous = previous.or_else(|| described.get(&schema.oid).cloned());
                    if matches!(self.gates.get(&schema.table), Some(Gate::Failed)) {
                        // Described again when it is resynced.
                        described.insert(schema.oid, Arc::clone(&schema));
                        continue;
                    }
                    let key = self.keys.key(&schema).await?;
                    if key.is_none() && sink.needs_key() {
                        let error = Error::NoApplyKey {
                            table: schema.table.to_string(),
                        };
                        return Err(if self.isolates_tables {
                            Error::Table {
                                table: schema.table.clone(),
                                source: Box::new(error),
                            }
                        } else {
                            error
                        });
                    }
                    described.insert(schema.oid, Arc::clone(&schema));
                    let description = TableDescription {
                        schema,
                        previous,
                        key,
                    };
                    sink.relation(&description).await?;
                }
                ChangeEvent::Changes(batch) if batch.streamed => {
                    if self.block != Some(batch.xid) {
                        return Err(Error::UnexpectedEvent {
                            reason: "streamed changes outside their stream block",
                        });
                    }
                    // Failed tables are left out at commit, with the resync gates.
                    sink.stream_write(batch).await?;
                }
                ChangeEvent::Changes(batch) => match self.transaction {
                    Some(OpenTransaction { skip: true, .. }) => {}
                    Some(OpenTransaction {
                        skip: false,
                        commit_lsn,
                    }) => {
                        let applied = match self.gates.get(&batch.relation.table) {
                            None => true,
                            Some(Gate::Failed) => false,
                            Some(Gate::From(from)) => commit_lsn >= *from,
                        };
                        if applied {
                            self.group.rows += batch.batch.num_rows() as u64;
                            sink.write(batch).await?;
                        }
                    }
                    None => {
                        return Err(Error::UnexpectedEvent {
                            reason: "changes outside a transaction",
                        });
                    }
                },
                ChangeEvent::Commit {
                    xid,
                    commit_lsn,
                    end_lsn,
                    streamed: true,
                    ..
                } => {
                    if commit_lsn < self.checkpoint.lsn {
                        // Already at the target.
                        summary.skipped_transactions += 1;
                        sink.stream_abort(xid, xid).await?;
                        continue;
                    }
                    let skip: Vec<TableRef> = self
                        .gates
                        .iter()
                        .filter(|(_, gate)| match gate {
                            Gate::Failed => true,
                            Gate::From(from) => commit_lsn < *from,
                        })
                        .map(|(table, _)| table.clone())
                        .collect();
                    self.group.rows += sink.stream_commit(xid, commit_lsn, &skip).await?;
                    summary.streamed_transactions += 1;
                    self.committed(end_lsn, commit_lsn, stream, sink, summary)
                        .await?;
                }
                ChangeEvent::Commit {
                    commit_lsn,
                    end_lsn,
                    ..
                } => {
                    let Some(transaction) = self.transaction.take() else {
                        return Err(Error::UnexpectedEvent {
                            reason: "a commit without a transaction",
                        });
                    };
                    if !transaction.skip {
                        self.committed(end_lsn, commit_lsn, stream, sink, summary)
                            .await?;
                    }
                }
                ChangeEvent::Keepalive { wal_end } => {
                    self.progress.send_modify(|now| {
                        now.server_lsn = now.server_lsn.max(stream.server_wal_end().max(wal_end));
                    });
                    if self.transaction.is_some() || self.block.is_some() {
                        continue;
                    }
                    if self.group.transactions > 0 {
                        if stream.has_received_more() {
                            // The server sent more while the last group was being made
                            // durable: the group goes on gathering (within its limits) up to
                            // the keepalive that ends what the server had to send.
                            continue;
                        }
                        // The server had nothing more to send for now.
                        self.flush(stream, sink, summary).await?;
                    } else if let Some(interval) = self.config.idle_checkpoint
                        && wal_end > self.checkpoint.lsn
                        && self.last_idle.elapsed() >= interval
                    {
                        // Everything before `wal_end` was delivered or is not published.
                        let group = CommitGroup {
                            checkpoint: Checkpoint::new(wal_end, self.checkpoint.last_commit_lsn),
                            transactions: 0,
                            rows: 0,
                        };
                        sink.commit(&group).await?;
                        self.durable(stream, &group, summary).await?;
                        self.last_idle = Instant::now();
                    }
                }
                ChangeEvent::StreamStart { xid, .. } => {
                    if self.block.is_some() || self.transaction.is_some() {
                        return Err(Error::UnexpectedEvent {
                            reason: "a stream block inside a transaction or another block",
                        });
                    }
                    self.block = Some(xid);
                }
                ChangeEvent::StreamStop { .. } => self.block = None,
                ChangeEvent::StreamAbort { xid, subxid } => {
                    sink.stream_abort(xid, subxid).await?;
                }
                _ => {}
            }
        }
    }

    /// A transaction joined the open group: flushes it when full.
    async fn committed(
        &mut self,
        end_lsn: Lsn,
        commit_lsn: Lsn,
        stream: &mut ChangeStream,
        sink: &mut dyn ChangeSink,
        summary: &mut CdcTaskSummary,
    ) -> Result<()> {
        self.group.transactions += 1;
        self.group.last = Some((end_lsn, commit_lsn));
        self.group.since.get_or_insert_with(Instant::now);
        if self.group.rows >= self.config.group_rows
            || self.group.transactions >= self.config.group_transactions
        {
            self.flush(stream, sink, summary).await?;
        }
        Ok(())
    }

    /// Makes the open group durable and acknowledges it.
    async fn flush(
        &mut self,
        stream: &mut ChangeStream,
        sink: &mut dyn ChangeSink,
        summary: &mut CdcTaskSummary,
    ) -> Result<()> {
        let Some((end_lsn, commit_lsn)) = self.group.last else {
            self.group = Group::default();
            return Ok(());
        };
        let group = CommitGroup {
            checkpoint: Checkpoint::new(end_lsn, Some(commit_lsn)),
            transactions: self.group.transactions,
            rows: self.group.rows,
        };
        sink.commit(&group).await?;
        self.group = Group::default();
        self.durable(stream, &group, summary).await
    }

    async fn durable(
        &mut self,
        stream: &mut ChangeStream,
        group: &CommitGroup,
        summary: &mut CdcTaskSummary,
    ) -> Result<()> {
        self.checkpoint = group.checkpoint;
        summary.transactions += group.transactions;
        summary.rows += group.rows;
        summary.groups += 1;
        tracing::debug!(
            checkpoint = %group.checkpoint.lsn,
            transactions = group.transactions,
            rows = group.rows,
            "commit group durable"
        );
        stream.acknowledge(group.checkpoint.lsn);
        self.progress.send_modify(|now| {
            now.checkpoint = group.checkpoint.lsn;
            now.server_lsn = now
                .server_lsn
                .max(stream.server_wal_end())
                .max(group.checkpoint.lsn);
            now.pending_since_micros = None;
            now.transactions += group.transactions;
            now.rows += group.rows;
        });
        stream.send_status().await
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
