//! Running commands: connections are opened from their specs, full loads run through
//! `tidegate-replicate`, and only metadata (states, counts, errors) goes back to the link.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use tidegate_proto::{
    ColumnDescription, CommandOutcome, ConnectionSpec, ErrorCode, ErrorReport, Message,
    ProgressReport, TableDescription, TableProgress, TableSelection, TableState, TaskSpec,
    TaskState, TaskStatus,
};
use tidegate_replicate::{
    CopyPlan, ParquetSink, ParquetSinkConfig, ProgressEvent, Sink, Source, SqliteSource,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often progress is reported while a table copies.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn report(code: ErrorCode, message: impl Into<String>, retryable: bool) -> ErrorReport {
    ErrorReport {
        code,
        message: message.into(),
        retryable,
    }
}

/// Reports a replication error under the side that failed: writing Parquet or objects is the
/// target's fault, everything else (opening, discovering, reading, decoding) the source's.
fn source_error(e: &tidegate_replicate::Error) -> ErrorReport {
    use tidegate_replicate::Error as E;
    let code = match e {
        E::Parquet { .. } | E::ObjectStore { .. } | E::Manifest { .. } => ErrorCode::Target,
        E::InvalidName { .. } | E::UnknownTable { .. } | E::InvalidConfig { .. } => {
            ErrorCode::InvalidRequest
        }
        _ => ErrorCode::Source,
    };
    report(code, e.to_string(), e.is_retryable())
}

/// Opens a source from its spec. Credentials are used here and dropped with the spec.
pub(crate) async fn open_source(spec: &ConnectionSpec) -> Result<Arc<dyn Source>, ErrorReport> {
    match spec.kind.as_str() {
        "sqlite" => {
            let path = setting(spec, "path")?;
            let source = SqliteSource::open(path)
                .await
                .map_err(|e| source_error(&e))?;
            Ok(Arc::new(source))
        }
        other => Err(report(
            ErrorCode::InvalidRequest,
            format!(
                "connection {}: {other:?} is not a source kind this gateway reads",
                spec.id
            ),
            false,
        )),
    }
}

/// Opens a Parquet sink from a target spec.
pub(crate) fn open_sink(spec: &ConnectionSpec) -> Result<Arc<dyn Sink>, ErrorReport> {
    match spec.kind.as_str() {
        "local" => {
            let root = setting(spec, "root")?;
            std::fs::create_dir_all(root).map_err(|e| {
                report(
                    ErrorCode::Target,
                    format!(
                        "connection {}: cannot create target directory: {e}",
                        spec.id
                    ),
                    false,
                )
            })?;
            let store = LocalFileSystem::new_with_prefix(root).map_err(|e| {
                report(
                    ErrorCode::Target,
                    format!("connection {}: {e}", spec.id),
                    false,
                )
            })?;
            let prefix = StorePath::from(spec.settings.get("prefix").map_or("", String::as_str));
            Ok(Arc::new(ParquetSink::new(
                Arc::new(store),
                prefix,
                ParquetSinkConfig::default(),
            )))
        }
        other => Err(report(
            ErrorCode::InvalidRequest,
            format!(
                "connection {}: {other:?} is not a target kind this gateway writes",
                spec.id
            ),
            false,
        )),
    }
}

fn setting<'a>(spec: &'a ConnectionSpec, name: &str) -> Result<&'a str, ErrorReport> {
    spec.settings
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            report(
                ErrorCode::InvalidRequest,
                format!("connection {} has no {name:?} setting", spec.id),
                false,
            )
        })
}

/// The connection kinds this gateway reads from.
const SOURCE_KINDS: &[&str] = &["sqlite"];

/// Tests a connection by opening it (and, for sources, listing its tables). A source's own
/// error is reported as such, never masked by trying the spec as a target.
pub(crate) async fn test_connection(spec: &ConnectionSpec) -> Result<CommandOutcome, ErrorReport> {
    if SOURCE_KINDS.contains(&spec.kind.as_str()) {
        let source = open_source(spec).await?;
        source.discover().await.map_err(|e| source_error(&e))?;
    } else {
        open_sink(spec)?;
    }
    Ok(CommandOutcome::ConnectionOk { server: None })
}

/// Lists tables and columns of a source.
pub(crate) async fn discover(spec: &ConnectionSpec) -> Result<CommandOutcome, ErrorReport> {
    let source = open_source(spec).await?;
    let tables = source.discover().await.map_err(|e| source_error(&e))?;
    Ok(CommandOutcome::Schema(
        tables
            .into_iter()
            .map(|t| TableDescription {
                schema: t.table.schema.clone(),
                name: t.table.name.clone(),
                columns: t
                    .schema
                    .fields()
                    .iter()
                    .map(|f| ColumnDescription {
                        name: f.name().clone(),
                        data_type: f.data_type().to_string(),
                        nullable: f.is_nullable(),
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// Whether a table (`schema.name`) is selected: matched by an include (or includes are empty)
/// and by no exclude. Patterns match either `name` or `schema.name`.
pub(crate) fn selected(selection: &TableSelection, schema: &str, name: &str) -> bool {
    let qualified = format!("{schema}.{name}");
    let hit = |p: &String| glob(p, name) || glob(p, &qualified);
    (selection.include.is_empty() || selection.include.iter().any(hit))
        && !selection.exclude.iter().any(hit)
}

/// Runs a full load and reports its life cycle on `events`. Never panics on task errors: every
/// failure becomes a `Failed` status with a message that names objects, not values.
pub(crate) async fn run_full_load(
    spec: TaskSpec,
    events: mpsc::Sender<Message>,
    cancel: CancellationToken,
) -> (TaskState, u64, u64) {
    let status = |state, error| {
        Message::TaskStatus(TaskStatus {
            task_id: spec.task_id.clone(),
            run_id: spec.run_id.clone(),
            state,
            error,
        })
    };
    let _ = events.send(status(TaskState::Running, None)).await;
    let result = copy(&spec, &events, &cancel).await;
    let (state, error, rows, bytes) = match result {
        Ok((rows, bytes)) => (TaskState::Completed, None, rows, bytes),
        Err(e) if e.code == ErrorCode::Cancelled => (TaskState::Stopped, None, 0, 0),
        Err(e) => (TaskState::Failed, Some(e), 0, 0),
    };
    if let Some(e) = &error {
        tracing::warn!(message = "task failed", task = %spec.task_id, run = %spec.run_id, error = %e.message);
    } else {
        tracing::info!(message = "task ended", task = %spec.task_id, run = %spec.run_id, state = ?state, rows);
    }
    let _ = events.send(status(state, error)).await;
    (state, rows, bytes)
}

async fn copy(
    spec: &TaskSpec,
    events: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
) -> Result<(u64, u64), ErrorReport> {
    let started = Instant::now();
    let source = open_source(&spec.source).await?;
    let sink = open_sink(&spec.target)?;
    let discovered = source.discover().await.map_err(|e| source_error(&e))?;
    let tables: Vec<String> = discovered
        .iter()
        .filter(|t| selected(&spec.tables, &t.table.schema, &t.table.name))
        .map(|t| t.table.to_string())
        .filter(|name| !spec.completed_tables.contains(name))
        .collect();
    if tables.is_empty() {
        return Err(report(
            ErrorCode::InvalidRequest,
            "the table selection matches no table of the source",
            false,
        ));
    }
    let plan = CopyPlan::new(spec.run_id.clone()).with_tables(tables.clone());
    let (progress_tx, mut progress_rx) = mpsc::channel::<ProgressEvent>(256);
    let copy = tidegate_replicate::copy_tables(source, sink, plan, progress_tx, cancel.clone());
    tokio::pin!(copy);

    let mut state: BTreeMap<String, TableProgress> = tables
        .iter()
        .map(|t| {
            (
                t.clone(),
                TableProgress {
                    table: t.clone(),
                    rows: 0,
                    bytes: 0,
                    rows_expected: None,
                    state: TableState::Pending,
                },
            )
        })
        .collect();
    let mut changed: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let send_report = |state: &BTreeMap<String, TableProgress>, changed: &mut HashSet<String>| {
        let tables: Vec<TableProgress> = changed
            .drain()
            .filter_map(|t| state.get(&t).cloned())
            .collect();
        Message::Progress(ProgressReport {
            task_id: spec.task_id.clone(),
            run_id: spec.run_id.clone(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tables,
        })
    };
    let result = loop {
        tokio::select! {
            result = &mut copy => break result,
            Some(event) = progress_rx.recv() => apply(&mut state, &mut changed, &event),
            _ = ticker.tick() => {
                if !changed.is_empty() {
                    // Progress is advisory: drop a report rather than stall the copy.
                    let _ = events.try_send(send_report(&state, &mut changed));
                }
            }
        }
    };
    while let Ok(event) = progress_rx.try_recv() {
        apply(&mut state, &mut changed, &event);
    }
    match result {
        Ok(summary) => {
            for t in &summary.tables {
                let key = t.table.to_string();
                if let Some(p) = state.get_mut(&key) {
                    p.rows = t.rows;
                    p.bytes = t.bytes;
                    p.state = TableState::Done;
                    changed.insert(key);
                }
            }
            let _ = events.send(send_report(&state, &mut changed)).await;
            Ok((summary.total_rows(), summary.total_bytes()))
        }
        Err(e) => {
            for p in state.values_mut() {
                if p.state != TableState::Done {
                    p.state = TableState::Failed;
                    changed.insert(p.table.clone());
                }
            }
            let _ = events.send(send_report(&state, &mut changed)).await;
            if matches!(e, tidegate_replicate::Error::Cancelled) {
                Err(report(ErrorCode::Cancelled, "task stopped", true))
            } else {
                Err(source_error(&e))
            }
        }
    }
}

/// Folds one progress event into the per-table state and marks the table changed.
fn apply(
    state: &mut BTreeMap<String, TableProgress>,
    changed: &mut HashSet<String>,
    event: &ProgressEvent,
) {
    let key = event.table.to_string();
    if let Some(p) = state.get_mut(&key) {
        p.rows = event.rows;
        p.bytes = event.bytes;
        p.state = if event.done {
            TableState::Done
        } else {
            TableState::Copying
        };
        changed.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_selection_patterns() {
        let sel = |inc: &[&str], exc: &[&str]| TableSelection {
            include: inc.iter().map(|s| s.to_string()).collect(),
            exclude: exc.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (sel(&[], &[]), "orders", true),
            (sel(&["orders"], &[]), "orders", true),
            (sel(&["main.orders"], &[]), "orders", true),
            (sel(&["ord*"], &[]), "orders", true),
            (sel(&["*ers"], &[]), "orders", true),
            (sel(&["cust*"], &[]), "orders", false),
            (sel(&["*"], &["orders"]), "orders", false),
            (sel(&[], &["*"]), "orders", false),
            (sel(&["o*s"], &[]), "orders", true),
            (sel(&["o*x"], &[]), "orders", false),
        ];
        for (selection, table, want) in cases {
            assert_eq!(
                selected(&selection, "main", table),
                want,
                "{selection:?} {table}"
            );
        }
    }
}
