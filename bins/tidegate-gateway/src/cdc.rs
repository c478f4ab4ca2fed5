//! Change data capture runs through `tidegate-cdc`: a PostgreSQL source's tables are loaded in
//! a replication slot's snapshot, then their changes are applied to PostgreSQL tables
//! (`ChangeDataCapture`) or appended as Parquet change files (`StoreChanges`) until the task
//! is stopped. Only positions and counts go back to the link.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidegate_cdc::{
    ApplySinkConfig, CdcPhase, CdcProgress, CdcTaskConfig, ChangeSink, ConnectConfig,
    PostgresApplySink, SlotInfo, SslMode, StoreChangesSink, StoreSinkConfig, TableRef, TableState,
};
use tidegate_proto::{
    CommandId, CommandOutcome, CommandResult, ConnectionSpec, ErrorCode, ErrorReport, FailedTable,
    FailedTablesReport, Message, ReplicationPhase, ReplicationReport, SlotReport, TaskKind,
    TaskSpec, TaskState,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::runner::{
    invalid, object_target, open_source, parquet_config, postgres_options, report, selected,
    setting, status,
};

/// How often a running task's position is reported when it changed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A request to load tables of the running task again alone; the run answers it.
#[derive(Debug)]
pub(crate) struct ResyncRequest {
    /// The command to answer.
    pub(crate) id: CommandId,
    /// The tables, as `schema.name`.
    pub(crate) tables: Vec<String>,
}

/// Reports a CDC error under the side that failed, with its text: names, positions and
/// counts, never values or credentials.
fn cdc_error(e: &tidegate_cdc::Error) -> ErrorReport {
    use tidegate_cdc::Error as E;
    let code = match e {
        E::Table { source, .. } => {
            return report(cdc_error(source).code, e.to_string(), e.is_retryable());
        }
        E::Target { .. }
        | E::TargetDiverged { .. }
        | E::ObjectStore { .. }
        | E::Parquet { .. }
        | E::Manifest { .. } => ErrorCode::Target,
        E::InvalidConfig { .. }
        | E::InvalidName { .. }
        | E::TableNotFound { .. }
        | E::NoApplyKey { .. } => ErrorCode::InvalidRequest,
        _ => ErrorCode::Source,
    };
    report(code, e.to_string(), e.is_retryable())
}

/// The task id as `tidegate-cdc` takes it (it names the slot and the publication). Ids are
/// not rewritten to fit: two tasks must never share a slot.
fn cdc_task_id(task_id: &str) -> Result<String, ErrorReport> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 48
        && task_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(task_id.to_owned())
    } else {
        Err(report(
            ErrorCode::InvalidRequest,
            format!(
                "task {task_id}: change data capture needs a task id of at most 48 lowercase \
                 letters, digits and '_' (it names the replication slot)"
            ),
            false,
        ))
    }
}

/// How to reach a `postgres` source for replication: settings `host`, `port`, `database`,
/// `user`, `sslmode`, `ca_pem` and secret `password`, as for a full load.
fn source_config(spec: &ConnectionSpec) -> Result<ConnectConfig, ErrorReport> {
    if spec.kind != "postgres" {
        return Err(invalid(
            spec,
            "change data capture reads PostgreSQL sources only (kind \"postgres\")",
        ));
    }
    let port = match spec.settings.get("port") {
        Some(port) => port
            .parse()
            .map_err(|_| invalid(spec, "the setting \"port\" is not a port number"))?,
        None => 5432,
    };
    let mut config = ConnectConfig::new(
        setting(spec, "host")?,
        port,
        setting(spec, "user")?,
        setting(spec, "database")?,
    );
    config.ssl_mode = match spec.settings.get("sslmode") {
        None => SslMode::Prefer,
        Some(mode) => mode.parse().map_err(|_| {
            invalid(
                spec,
                "the setting \"sslmode\" must be disable, prefer, require, verify-ca or verify-full",
            )
        })?,
    };
    config.ssl_root_cert_pem = spec
        .settings
        .get("ca_pem")
        .map(|pem| pem.as_bytes().to_vec());
    config.application_name = "tidegate-gateway".to_owned();
    if let Some(password) = spec.secrets.get("password") {
        config = config.with_password(password.expose());
    }
    Ok(config)
}

/// The sink of a CDC task's target: PostgreSQL tables to apply to, or an object store for
/// change files.
async fn open_change_sink(
    kind: TaskKind,
    id: &str,
    spec: &ConnectionSpec,
) -> Result<Box<dyn ChangeSink>, ErrorReport> {
    match kind {
        TaskKind::ChangeDataCapture => {
            if spec.kind != "postgres" {
                return Err(invalid(
                    spec,
                    "a change data capture task applies changes to PostgreSQL targets only; \
                     use a store changes task for object storage",
                ));
            }
            let mut config = ApplySinkConfig::new(id);
            config.schema = spec.settings.get("schema").cloned();
            let sink = PostgresApplySink::connect_with(postgres_options(spec)?, config)
                .await
                .map_err(|e| cdc_error(&e))?;
            Ok(Box::new(sink))
        }
        TaskKind::StoreChanges => {
            let Some((store, prefix)) = object_target(spec)? else {
                return Err(invalid(
                    spec,
                    "a store changes task writes to object storage only (kind \"s3\" or \"local\")",
                ));
            };
            let mut config = StoreSinkConfig::new(id);
            config.snapshot = parquet_config(spec)?;
            Ok(Box::new(StoreChangesSink::new(store, prefix, config)))
        }
        _ => Err(report(
            ErrorCode::InvalidRequest,
            "not a change data capture task",
            false,
        )),
    }
}

/// The selected tables of the source, as the full load would pick them.
async fn tables(spec: &TaskSpec) -> Result<Vec<TableRef>, ErrorReport> {
    let source = open_source(&spec.source).await?;
    let discovered = source
        .discover()
        .await
        .map_err(|e| report(ErrorCode::Source, e.to_string(), e.is_retryable()))?;
    let tables: Vec<TableRef> = discovered
        .into_iter()
        .filter(|t| selected(&spec.tables, &t.table.schema, &t.table.name))
        .map(|t| t.table)
        .collect();
    if tables.is_empty() {
        return Err(report(
            ErrorCode::InvalidRequest,
            "the table selection matches no table of the source",
            false,
        ));
    }
    Ok(tables)
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn replication_report(spec: &TaskSpec, progress: &CdcProgress, retrying: Option<&str>) -> Message {
    Message::Replication(ReplicationReport {
        task_id: spec.task_id.clone(),
        run_id: spec.run_id.clone(),
        phase: match progress.phase {
            CdcPhase::InitialLoad | CdcPhase::Resyncing => ReplicationPhase::InitialLoad,
            CdcPhase::Streaming => ReplicationPhase::Streaming,
            _ => ReplicationPhase::Starting,
        },
        checkpoint_lsn: progress.checkpoint.to_string(),
        source_lsn: progress.server_lsn.to_string(),
        lag_bytes: progress.lag_bytes(),
        lag_ms: u64::try_from(progress.lag(unix_micros()).as_millis()).unwrap_or(u64::MAX),
        load_rows: progress.load_rows,
        transactions: progress.transactions,
        rows: progress.rows,
        retrying: retrying.map(str::to_owned),
    })
}

fn failed_tables_report(spec: &TaskSpec, failed: &[TableState]) -> Message {
    Message::FailedTables(FailedTablesReport {
        task_id: spec.task_id.clone(),
        run_id: spec.run_id.clone(),
        tables: failed
            .iter()
            .map(|state| FailedTable {
                table: state.table.to_string(),
                error: state.failure.clone().unwrap_or_default(),
            })
            .collect(),
    })
}

/// Runs a CDC task until it is stopped or fails, and reports its life cycle and position on
/// `events`. Errors that may pass (the source or target restarting, a dropped connection)
/// are retried with backoff while the run keeps running; the error is shown on the run
/// meanwhile. Never panics on task errors: every other failure becomes a `Failed` status
/// whose message names objects and positions, not values. Returns the final state and the
/// rows made durable (initial load and changes).
pub(crate) async fn run_cdc(
    spec: TaskSpec,
    events: mpsc::Sender<Message>,
    cancel: CancellationToken,
    resync: Option<mpsc::Receiver<ResyncRequest>>,
) -> (TaskState, u64) {
    let _ = events.send(status(&spec, TaskState::Running, None)).await;
    let (progress, mut watched) = watch::channel(CdcProgress::default());
    let (retrying_tx, mut retrying) = watch::channel(None::<String>);
    let run = capture(&spec, &progress, &retrying_tx, &cancel, &events, resync);
    tokio::pin!(run);
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    // The failed tables the control plane was told of.
    let mut failed_sent: Vec<TableState> = Vec::new();
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = ticker.tick() => {
                let failed = watched.borrow().failed_tables.clone();
                if failed != failed_sent
                    && events.try_send(failed_tables_report(&spec, &failed)).is_ok()
                {
                    failed_sent = failed;
                }
                let changed = watched.has_changed().unwrap_or(false)
                    | retrying.has_changed().unwrap_or(false);
                if changed {
                    let now = watched.borrow_and_update().clone();
                    // A retried run streaming again is over its error.
                    if now.phase == CdcPhase::Streaming && retrying.borrow().is_some() {
                        retrying_tx.send_replace(None);
                    }
                    let error = retrying.borrow_and_update().clone();
                    // Reports are advisory: drop one rather than stall the task.
                    let _ = events.try_send(replication_report(&spec, &now, error.as_deref()));
                }
            }
        }
    };
    let last = progress.borrow().clone();
    let _ = events.send(replication_report(&spec, &last, None)).await;
    let rows = last.load_rows.saturating_add(last.rows);
    let (state, error) = match result {
        Ok(()) => (TaskState::Stopped, None),
        Err(e) => (TaskState::Failed, Some(e)),
    };
    match &error {
        Some(e) => {
            tracing::warn!(message = "task failed", task = %spec.task_id, run = %spec.run_id, error = %e.message);
        }
        None => {
            tracing::info!(message = "task stopped", task = %spec.task_id, run = %spec.run_id, checkpoint = %last.checkpoint, transactions = last.transactions);
        }
    }
    let _ = events.send(status(&spec, state, error)).await;
    (state, rows)
}

/// The longest wait between two attempts of a run that hit an error that may pass.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Opens the source and the sink and runs the task until `cancel` fires; retries errors that
/// may pass, from the target's checkpoint, with exponential backoff (1 s doubling to 30 s,
/// back to 1 s once an attempt made progress). A resync request that names tables of the
/// task is accepted and the task started again at once, resyncing them.
async fn capture(
    spec: &TaskSpec,
    progress: &watch::Sender<CdcProgress>,
    retrying: &watch::Sender<Option<String>>,
    cancel: &CancellationToken,
    events: &mpsc::Sender<Message>,
    mut resync_requests: Option<mpsc::Receiver<ResyncRequest>>,
) -> Result<(), ErrorReport> {
    let id = cdc_task_id(&spec.task_id)?;
    let source = source_config(&spec.source)?;
    let mut delay = Duration::from_secs(1);
    // The task's tables as last discovered, and those to resync on the next attempt.
    let discovered = std::sync::Mutex::new(Vec::<TableRef>::new());
    let mut resync = Vec::new();
    loop {
        let before = progress.borrow().checkpoint;
        let attempt_cancel = cancel.child_token();
        let attempt_resync = std::mem::take(&mut resync);
        let resyncing = attempt_resync.clone();
        let attempt = async {
            let tables = tables(spec).await?;
            *discovered.lock().unwrap_or_else(|e| e.into_inner()) = tables.clone();
            let mut sink = open_change_sink(spec.kind, &id, &spec.target).await?;
            let config =
                CdcTaskConfig::new(id.clone(), source.clone(), tables).with_resync(attempt_resync);
            tidegate_cdc::run_cdc_task_with_progress(
                &config,
                sink.as_mut(),
                attempt_cancel.clone(),
                progress,
            )
            .await
            .map(drop)
            .map_err(|e| cdc_error(&e))
        };
        tokio::pin!(attempt);
        let outcome = loop {
            tokio::select! {
                outcome = &mut attempt => break outcome,
                Some(request) = next_request(&mut resync_requests) => {
                    let known = discovered.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let outcome = match resync_tables(&request.tables, &known) {
                        Ok(tables) => {
                            tracing::info!(message = "resyncing tables", task = %spec.task_id, run = %spec.run_id, tables = tables.len());
                            // With those of a resync this one interrupts.
                            let interrupted: &[TableRef] =
                                if progress.borrow().phase == CdcPhase::Streaming {
                                    &[]
                                } else {
                                    &resyncing
                                };
                            for table in interrupted.iter().chain(&tables) {
                                if !resync.contains(table) {
                                    resync.push(table.clone());
                                }
                            }
                            attempt_cancel.cancel();
                            Ok(CommandOutcome::Accepted)
                        }
                        Err(error) => Err(error),
                    };
                    let _ = events
                        .send(Message::CommandResult(CommandResult { id: request.id, outcome }))
                        .await;
                }
            }
        };
        let error = match outcome {
            Ok(()) if !resync.is_empty() && !cancel.is_cancelled() => continue,
            Ok(()) => return Ok(()),
            Err(error) if error.retryable && !cancel.is_cancelled() => error,
            Err(error) => return Err(error),
        };
        if progress.borrow().checkpoint > before {
            delay = Duration::from_secs(1);
        }
        tracing::warn!(message = "task retrying", task = %spec.task_id, run = %spec.run_id, error = %error.message, in_s = delay.as_secs());
        progress.send_modify(|now| now.phase = CdcPhase::Starting);
        retrying.send_replace(Some(error.message));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return Ok(()),
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn next_request(
    requests: &mut Option<mpsc::Receiver<ResyncRequest>>,
) -> Option<ResyncRequest> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// The tables of a resync request, each one of the task's (`known`), without repeats.
fn resync_tables(requested: &[String], known: &[TableRef]) -> Result<Vec<TableRef>, ErrorReport> {
    if requested.is_empty() {
        return Err(report(
            ErrorCode::InvalidRequest,
            "name at least one table to resync",
            false,
        ));
    }
    let mut tables: Vec<TableRef> = Vec::new();
    for name in requested {
        let Some(table) = known.iter().find(|table| table.to_string() == *name) else {
            return Err(report(
                ErrorCode::InvalidRequest,
                format!("{name} is not one of the task's tables (name them as schema.table)"),
                false,
            ));
        };
        if !tables.contains(table) {
            tables.push(table.clone());
        }
    }
    Ok(tables)
}

fn slot_report(info: SlotInfo) -> SlotReport {
    SlotReport {
        name: info.name,
        active: info.active,
        retained_bytes: info.retained_bytes,
        wal_status: info.wal_status,
    }
}

/// The replication slot of task `task_id` at `source`.
pub(crate) async fn inspect(
    task_id: &str,
    source: &ConnectionSpec,
) -> Result<CommandOutcome, ErrorReport> {
    let id = cdc_task_id(task_id)?;
    let info = tidegate_cdc::cdc_task_slot(&source_config(source)?, &id)
        .await
        .map_err(|e| cdc_error(&e))?;
    Ok(CommandOutcome::Slot(info.map(slot_report)))
}

/// Drops the replication slot and publication of task `task_id` at `source`; answers with
/// the slot as it was before.
pub(crate) async fn drop_replication(
    task_id: &str,
    source: &ConnectionSpec,
) -> Result<CommandOutcome, ErrorReport> {
    let id = cdc_task_id(task_id)?;
    let config = source_config(source)?;
    let before = tidegate_cdc::cdc_task_slot(&config, &id)
        .await
        .map_err(|e| cdc_error(&e))?;
    tidegate_cdc::drop_cdc_task(&config, &id)
        .await
        .map_err(|e| cdc_error(&e))?;
    tracing::info!(message = "replication slot and publication dropped", task = %task_id);
    Ok(CommandOutcome::Slot(before.map(slot_report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_become_slot_safe_or_are_refused() {
        assert_eq!(
            cdc_task_id("task_0123abcd").unwrap(),
            "task_0123abcd".to_owned()
        );
        for bad in ["", "a b", "täsk", &"x".repeat(49), "a;drop", "Orders-Sync"] {
            assert!(cdc_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_settings_build_the_replication_config_without_a_url() {
        let mut secrets = tidegate_proto::SecretMap::new();
        secrets.insert("password", tidegate_proto::SecretString::new("s3cr3t-pw"));
        let spec = ConnectionSpec {
            id: "conn_1".into(),
            kind: "postgres".into(),
            settings: [
                ("host", "db.internal"),
                ("port", "6543"),
                ("database", "shop"),
                ("user", "cdc"),
                ("sslmode", "verify-full"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            secrets,
        };
        let config = source_config(&spec).unwrap();
        assert_eq!(config.server_label(), "db.internal:6543/shop");
        assert_eq!(config.ssl_mode, SslMode::VerifyFull);
        assert!(!format!("{config:?}").contains("s3cr3t-pw"));

        let mut odbc = spec.clone();
        odbc.kind = "odbc".into();
        let error = source_config(&odbc).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        let mut bad = spec;
        bad.settings.insert("sslmode".into(), "sometimes".into());
        assert!(source_config(&bad).unwrap_err().message.contains("sslmode"));
    }
}
