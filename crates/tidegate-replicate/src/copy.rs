//! [`copy_tables`]: moves tables from a [`Source`] to a [`Sink`], several at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::sink::{Sink, TableOutput, TableWriter};
use crate::source::Source;
use crate::table::{TableRef, TableSchema};

/// What [`copy_tables`] copies and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyPlan {
    /// Identifies this run in the sink's output (see [`Sink`]).
    pub run_id: String,
    /// Tables to copy, by `name` or `schema.name`; `None` copies every discovered table.
    pub tables: Option<Vec<String>>,
    /// Maximum rows per record batch. Default 65,536.
    pub batch_rows: usize,
    /// Tables copied at the same time. Default 2.
    pub parallel_tables: usize,
    /// Batches buffered between a table's reader and writer. Default 2.
    pub channel_batches: usize,
    /// Readers per table: a source that can split a table ([`Source::partitions`]) reads up
    /// to this many parts of it at once into the table's one writer. Default 1.
    pub readers_per_table: usize,
}

impl CopyPlan {
    /// A plan copying every table under `run_id`, with the defaults above.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            tables: None,
            batch_rows: 65_536,
            parallel_tables: 2,
            channel_batches: 2,
            readers_per_table: 1,
        }
    }

    /// Copies only these tables (by `name` or `schema.name`).
    pub fn with_tables<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tables = Some(tables.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the maximum rows per record batch.
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }

    /// Sets how many tables are copied at the same time.
    pub fn with_parallel_tables(mut self, tables: usize) -> Self {
        self.parallel_tables = tables;
        self
    }

    /// Sets how many batches may wait between a table's reader and its writer.
    pub fn with_channel_batches(mut self, batches: usize) -> Self {
        self.channel_batches = batches;
        self
    }

    /// Sets how many readers may read parts of one table at once.
    pub fn with_readers_per_table(mut self, readers: usize) -> Self {
        self.readers_per_table = readers;
        self
    }

    fn validate(&self) -> Result<()> {
        let reason = if self.batch_rows == 0 {
            "batch_rows must be at least 1"
        } else if self.parallel_tables == 0 {
            "parallel_tables must be at least 1"
        } else if self.channel_batches == 0 {
            "channel_batches must be at least 1"
        } else if self.readers_per_table == 0 {
            "readers_per_table must be at least 1"
        } else {
            return Ok(());
        };
        Err(Error::InvalidConfig { reason })
    }
}

/// Progress of one table, sent after every batch the sink accepted and once when it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgressEvent {
    /// The table.
    pub table: TableRef,
    /// Rows accepted by the sink so far.
    pub rows: u64,
    /// Output bytes produced so far.
    pub bytes: u64,
    /// The table is durable (its manifest is written); this is its last event.
    pub done: bool,
}

/// The result of a successful [`copy_tables`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopySummary {
    /// The run id of the plan.
    pub run_id: String,
    /// One output per copied table, sorted by table.
    pub tables: Vec<TableOutput>,
    /// Wall time of the whole copy, discovery included.
    pub elapsed: Duration,
}

impl CopySummary {
    /// Rows copied over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|table| table.rows).sum()
    }

    /// Output bytes over all tables.
    pub fn total_bytes(&self) -> u64 {
        self.tables.iter().map(|table| table.bytes).sum()
    }
}

/// Copies the tables of `plan` from `source` to `sink`, `plan.parallel_tables` at a time.
///
/// Each table is read and written concurrently with at most `plan.channel_batches` batches in
/// between, so a slow sink slows the reader down instead of filling memory. Tables run on
/// tasks of the current Tokio runtime (in a [`JoinSet`], so none outlives this call).
///
/// **Progress.** Intermediate events are sent with `try_send` and dropped when the channel is
/// full; each table's final `done` event is always sent (waiting for room), so drain the
/// receiver concurrently. A closed receiver is ignored.
///
/// **Errors.** An unknown name in `plan.tables` fails before anything is written
/// ([`Error::UnknownTable`]). A table that fails is aborted (no manifest) but does not stop
/// the others: every other table is still copied and gets its final `done` event, so a resumed
/// run redoes only the failed ones. The first table's error is returned; the names of any
/// further failed tables are logged.
///
/// **Cancellation.** When `cancel` fires, reading and writing stop at the next await, every
/// unfinished table is aborted and [`Error::Cancelled`] is returned. A table already writing
/// its manifest completes. Dropping the returned future instead also leaves no manifest for
/// unfinished tables, but skips the clean-up of their parts.
pub async fn copy_tables(
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    plan: CopyPlan,
    progress: mpsc::Sender<ProgressEvent>,
    cancel: CancellationToken,
) -> Result<CopySummary> {
    let started = Instant::now();
    plan.validate()?;
    let discovered = tokio::select! {
        tables = source.discover() => tables?,
        () = cancel.cancelled() => return Err(Error::Cancelled),
    };
    let selected = select_tables(discovered, plan.tables.as_deref())?;
    tracing::info!(
        message = "copy started",
        run_id = %plan.run_id,
        tables = selected.len(),
    );

    // Cancelled by the caller only: a failed table does not stop the others.
    let stop = cancel.child_token();
    let settings = Arc::new(TableCopy {
        source,
        sink,
        run_id: plan.run_id.clone(),
        batch_rows: plan.batch_rows,
        channel_batches: plan.channel_batches,
        readers_per_table: plan.readers_per_table,
        progress,
        stop: stop.clone(),
    });
    let mut pending = selected.into_iter();
    let mut running = JoinSet::new();
    let mut names = HashMap::new();
    let mut outputs = Vec::new();
    let mut failure: Option<Error> = None;
    loop {
        while running.len() < plan.parallel_tables {
            let Some(table) = pending.next() else { break };
            let name = table.table.clone();
            let handle = running.spawn(Arc::clone(&settings).copy(table));
            names.insert(handle.id(), name);
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let result = match joined {
            Ok((_, result)) => result,
            Err(source) => Err(Error::Task {
                table: names
                    .get(&source.id())
                    .map_or_else(String::new, ToString::to_string),
                source,
            }),
        };
        match result {
            Ok(output) => outputs.push(output),
            Err(Error::Cancelled) => {}
            Err(error) => match &failure {
                None => failure = Some(error),
                Some(_) => tracing::warn!(
                    message = "another table failed",
                    run_id = %plan.run_id,
                    error = %error,
                ),
            },
        }
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    outputs.sort_by(|a, b| a.table.cmp(&b.table));
    let summary = CopySummary {
        run_id: plan.run_id,
        tables: outputs,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        message = "copy finished",
        run_id = %summary.run_id,
        rows = summary.total_rows(),
        bytes = summary.total_bytes(),
        elapsed_ms = summary.elapsed.as_millis(),
    );
    Ok(summary)
}

/// Keeps the discovered tables named in `filter` (all of them without a filter).
fn select_tables(
    discovered: Vec<TableSchema>,
    filter: Option<&[String]>,
) -> Result<Vec<TableSchema>> {
    let Some(filter) = filter else {
        return Ok(discovered);
    };
    let matches = |table: &TableSchema, name: &str| {
        table.table.name == name || table.table.to_string() == name
    };
    if let Some(unknown) = filter
        .iter()
        .find(|name| !discovered.iter().any(|table| matches(table, name)))
    {
        return Err(Error::UnknownTable {
            name: unknown.clone(),
        });
    }
    Ok(discovered
        .into_iter()
        .filter(|table| filter.iter().any(|name| matches(table, name)))
        .collect())
}

/// Everything a table's task needs, shared by all tables of one copy.
#[derive(Debug)]
struct TableCopy {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    run_id: String,
    batch_rows: usize,
    channel_batches: usize,
    readers_per_table: usize,
    progress: mpsc::Sender<ProgressEvent>,
    stop: CancellationToken,
}

impl TableCopy {
    /// Copies one table: read and write concurrently, then finish, or abort on error or stop.
    async fn copy(self: Arc<Self>, table: TableSchema) -> Result<TableOutput> {
        let mut writer = tokio::select! {
            writer = self.sink.begin_table(&table, &self.run_id) => writer?,
            () = self.stop.cancelled() => return Err(Error::Cancelled),
        };
        let pumped = tokio::select! {
            result = self.pump(&table, writer.as_mut()) => result,
            () = self.stop.cancelled() => Err(Error::Cancelled),
        };
        if let Err(error) = pumped {
            if let Err(abort_error) = writer.abort().await {
                tracing::warn!(
                    message = "cannot clean up aborted table",
                    table = %table.table,
                    error = %abort_error,
                );
            }
            return Err(error);
        }
        // Committing is not interrupted: it is bounded by one row group and the manifest.
        let output = writer.finish().await?;
        let done = ProgressEvent {
            table: output.table.clone(),
            rows: output.rows,
            bytes: output.bytes,
            done: true,
        };
        tokio::select! {
            _ = self.progress.send(done) => {}
            () = self.stop.cancelled() => {}
        }
        tracing::info!(
            message = "table copied",
            table = %output.table,
            rows = output.rows,
            bytes = output.bytes,
            files = output.files.len(),
        );
        Ok(output)
    }

    /// Streams every batch of `table` into `writer` through a bounded channel.
    async fn pump(&self, table: &TableSchema, writer: &mut dyn TableWriter) -> Result<()> {
        let partitions = self
            .source
            .partitions(table, self.readers_per_table)
            .await?;
        let mut parts = Vec::with_capacity(partitions.len());
        for partition in &partitions {
            parts.push(
                self.source
                    .read_partition(table, partition, self.batch_rows)
                    .await?,
            );
        }
        // Parts interleave; rows of a table come in no particular order anyway.
        let mut batches = futures::stream::select_all(parts);
        let (sender, mut receiver) = mpsc::channel(self.channel_batches);
        let read = async move {
            while let Some(batch) = batches.next().await {
                if sender.send(batch?).await.is_err() {
                    break;
                }
            }
            Ok::<_, Error>(())
        };
        let write = async {
            let mut rows = 0u64;
            while let Some(batch) = receiver.recv().await {
                rows += batch.num_rows() as u64;
                writer.write(batch).await?;
                // Advisory: dropped when the receiver lags or is gone.
                let _ = self.progress.try_send(ProgressEvent {
                    table: table.table.clone(),
                    rows,
                    bytes: writer.bytes_written(),
                    done: false,
                });
            }
            Ok::<_, Error>(())
        };
        tokio::try_join!(read, write).map(|_| ())
    }
}
