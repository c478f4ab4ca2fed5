//! Gateway sessions: one task per connected gateway, holding its sealed link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use bytes::Bytes;
use tidegate_channel::ChannelBinding;
use tidegate_link::{Admission, ControlPlaneHandshake, LinkConfig, TransportError};
use tidegate_metadata::{
    GatewayRecord, GatewaySeen, GatewayState, MetadataStore, RunReplication, TableRun, TaskState,
};
use tidegate_proto::{
    Command, CommandId, CommandOutcome, CommandResult, Goodbye, Heartbeat, Message,
    ProtocolVersion, Refusal, RefusalReason,
};
use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// A command on its way to a gateway, with where to deliver the answer.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<CommandResult>,
}

#[derive(Debug)]
struct Handle {
    connection: u64,
    version: ProtocolVersion,
    commands: mpsc::Sender<Outbound>,
}

/// The connected gateways.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next_connection: AtomicU64,
    handles: Mutex<HashMap<String, Handle>>,
    /// Gateways heard from since the last write to the store, by id: when, and their latest
    /// metrics. Written in one transaction per [`SEEN_FLUSH_EVERY`], so that thousands of
    /// links do not each wait for a database write on every heartbeat.
    seen: Mutex<HashMap<String, (i64, Option<tidegate_proto::MetricsReport>)>>,
}

/// How often the gateways heard from are written to the store.
pub(crate) const SEEN_FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        // Every critical section is a single map operation: a poisoned lock holds a consistent
        // map, so it is used as is.
        self.handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the gateway holds a link to this control plane now.
    pub(crate) fn is_online(&self, gateway_id: &str) -> bool {
        self.lock().contains_key(gateway_id)
    }

    /// The protocol version of the gateway's link to this control plane, if it has one.
    pub(crate) fn version(&self, gateway_id: &str) -> Option<ProtocolVersion> {
        self.lock().get(gateway_id).map(|h| h.version)
    }

    /// Cuts the gateway's link to this control plane, if it has one: its session ends at its
    /// next turn.
    pub(crate) fn disconnect(&self, gateway_id: &str) {
        self.lock().remove(gateway_id);
    }

    /// Sends a command to a connected gateway and waits for its result.
    pub(crate) async fn command(
        &self,
        gateway_id: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, String> {
        let sender = self
            .lock()
            .get(gateway_id)
            .map(|h| h.commands.clone())
            .ok_or_else(|| "gateway is offline".to_owned())?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Outbound { command, reply })
            .await
            .map_err(|_| "gateway disconnected".to_owned())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err("gateway disconnected before answering".into()),
            Err(_) => Err(format!(
                "gateway did not answer within {} s",
                timeout.as_secs()
            )),
        }
    }
}

/// Adapts axum's WebSocket to the link's transport: binary messages only.
fn transport(ws: WebSocket) -> impl tidegate_link::Transport {
    fn decode(m: WsMessage) -> Option<Result<Bytes, TransportError>> {
        match m {
            WsMessage::Binary(b) => Some(Ok(b)),
            WsMessage::Text(_) => Some(Err(TransportError(
                "text WebSocket message on a binary link".into(),
            ))),
            WsMessage::Close(_) | WsMessage::Ping(_) | WsMessage::Pong(_) => None,
        }
    }
    tidegate_link::Adapter::new(ws, decode, WsMessage::Binary)
}

/// What the handshake decided about a gateway, to be written down once it is over (the
/// handshake's admission check cannot wait for the database).
enum Decision {
    /// Refused: it speaks only protocol versions this control plane no longer supports.
    Outdated { reason: String, software: String },
    /// Let in.
    Let { software: String },
    /// Refused: not enrolled, deactivated, or unknown.
    Refused,
}

/// Runs one gateway's session until the link fails or the control plane stops. `gateway` is
/// its record as read when it connected: the handshake's admission check is synchronous.
pub(crate) async fn run(
    shared: Arc<Shared>,
    gateway: GatewayRecord,
    ws: WebSocket,
    binding: [u8; 32],
) {
    let binding = ChannelBinding::new(binding);
    let handshake = ControlPlaneHandshake::new(LinkConfig::default());
    let interval = shared.config.heartbeat_interval;
    let gateway_id = gateway.id.clone();
    let mut decision = Decision::Refused;
    let admit = |hello: &tidegate_proto::Hello, version| {
        let software = hello.software.clone();
        match (version, &gateway.state) {
            (None, _) => {
                let reason = format!(
                    "protocol versions {}..={} are no longer supported; upgrade the gateway",
                    hello.min_version.0, hello.max_version.0
                );
                decision = Decision::Outdated { reason, software };
                Admission::Refuse(Refusal {
                    reason: RefusalReason::Deactivated,
                    message: String::new(),
                })
            }
            (Some(_), GatewayState::Active | GatewayState::Outdated { .. }) => {
                decision = Decision::Let { software };
                Admission::Admit {
                    heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
                }
            }
            (Some(_), _) => Admission::Refuse(Refusal {
                reason: RefusalReason::Deactivated,
                message: "gateway is not active on this control plane".into(),
            }),
        }
    };
    let outcome = handshake.run(transport(ws), &binding, admit).await;
    record_admission(&shared, gateway, decision).await;
    let (link, _hello, version) = match outcome {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(message = "gateway handshake failed", gateway = %gateway_id, %error);
            return;
        }
    };
    let connection = shared
        .sessions
        .next_connection
        .fetch_add(1, Ordering::Relaxed);
    let (commands_tx, mut commands) = mpsc::channel::<Outbound>(64);
    // A new connection from the same gateway supersedes the old one, and revoking a gateway
    // removes its handle: either way the old session's command channel closes and it ends at
    // its next turn.
    shared.sessions.lock().insert(
        gateway_id.clone(),
        Handle {
            connection,
            version,
            commands: commands_tx,
        },
    );
    seen(&shared, &gateway_id, None).await;
    tracing::info!(message = "gateway online", gateway = %gateway_id, version = version.0);
    if version >= ProtocolVersion(2) {
        tokio::spawn(reconcile_runs(
            shared.clone(),
            gateway_id.clone(),
            crate::api::now_ms(),
        ));
    }

    let (mut tx, mut rx) = link.split();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last_heard = Instant::now();
    let mut heartbeat_id = 0u64;
    let mut next_command = 0u64;
    let mut pending: HashMap<u64, oneshot::Sender<CommandResult>> = HashMap::new();
    let reason = loop {
        tokio::select! {
            received = rx.recv() => {
                let message = match received {
                    Ok(m) => m,
                    Err(error) => break format!("link ended: {error}"),
                };
                last_heard = Instant::now();
                // Every message from a gateway, opened, for audits at `trace` level. None can
                // hold a credential or a row value (`tidegate-proto`'s invariant).
                tracing::trace!(message = "from gateway", gateway = %gateway_id, received = ?message);
                match message {
                    Message::Heartbeat(h) => {
                        if let Err(error) = tx.send(&Message::HeartbeatAck(h)).await {
                            break format!("link ended: {error}");
                        }
                    }
                    Message::HeartbeatAck(_) => {}
                    Message::CommandResult(result) => {
                        if let Some(reply) = pending.remove(&result.id.0) {
                            let _ = reply.send(result);
                        }
                    }
                    Message::TaskStatus(status) => {
                        if owns_run(&shared, &gateway_id, &status.task_id, &status.run_id).await {
                            apply_status(&shared, status).await;
                        }
                    }
                    Message::Progress(progress) => {
                        if owns_run(&shared, &gateway_id, &progress.task_id, &progress.run_id).await {
                            apply_progress(&shared, progress).await;
                        }
                    }
                    Message::Replication(report) => {
                        if owns_run(&shared, &gateway_id, &report.task_id, &report.run_id).await {
                            apply_replication(&shared, report).await;
                        }
                    }
                    Message::FailedTables(report) => {
                        if owns_run(&shared, &gateway_id, &report.task_id, &report.run_id).await {
                            apply_failed_tables(&shared, report).await;
                        }
                    }
                    Message::Metrics(metrics) => seen(&shared, &gateway_id, Some(&metrics)).await,
                    Message::Error(report) => {
                        tracing::warn!(message = "gateway reported an error", gateway = %gateway_id, code = ?report.code, error = %report.message);
                    }
                    Message::Goodbye(g) => break format!("gateway said goodbye: {}", g.reason),
                    other => break format!("protocol violation: unexpected {} from gateway", other.kind()),
                }
            }
            outbound = commands.recv() => {
                let Some(Outbound { command, reply }) = outbound else {
                    break "superseded by a newer connection, or revoked".to_owned();
                };
                next_command += 1;
                pending.insert(next_command, reply);
                let message = Message::Command { id: CommandId(next_command), command };
                if let Err(error) = tx.send(&message).await {
                    break format!("link ended: {error}");
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > interval * 3 {
                    break "no heartbeat within three intervals".to_owned();
                }
                heartbeat_id += 1;
                if let Err(error) = tx.send(&Message::Heartbeat(Heartbeat { id: heartbeat_id })).await {
                    break format!("link ended: {error}");
                }
                seen(&shared, &gateway_id, None).await;
            }
            () = shared.shutdown.cancelled() => {
                let _ = tx.send(&Message::Goodbye(Goodbye { reason: "control plane shutting down".into() })).await;
                break "control plane shutting down".to_owned();
            }
        }
    };
    let _ = tx.close().await;
    {
        let mut handles = shared.sessions.lock();
        if handles.get(&gateway_id).map(|h| h.connection) == Some(connection) {
            handles.remove(&gateway_id);
        }
    }
    tracing::info!(message = "gateway offline", gateway = %gateway_id, %reason);
}

/// Writes down what the handshake decided: an outdated gateway is shown as such, an admitted
/// one is active (again) with the software it announced.
async fn record_admission(shared: &Shared, mut gateway: GatewayRecord, decision: Decision) {
    let (state, software) = match decision {
        Decision::Outdated { reason, software } => (GatewayState::Outdated { reason }, software),
        Decision::Let { software } => (GatewayState::Active, software),
        Decision::Refused => return,
    };
    if gateway.state == state && gateway.software.as_deref() == Some(software.as_str()) {
        return;
    }
    let id = gateway.id.clone();
    gateway.state = state;
    gateway.software = Some(software);
    if let Err(error) = shared.store.update_gateway(&gateway).await {
        tracing::warn!(message = "gateway state not recorded", gateway = %id, %error);
    }
}

/// Notes that a gateway was heard from, with its metrics if it sent some; written to the store
/// by [`flush_seen`] within [`SEEN_FLUSH_EVERY`].
async fn seen(shared: &Shared, gateway_id: &str, metrics: Option<&tidegate_proto::MetricsReport>) {
    let now = crate::api::now_ms();
    let mut seen = shared
        .sessions
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let entry = seen.entry(gateway_id.to_owned()).or_insert((now, None));
    entry.0 = now;
    if let Some(metrics) = metrics {
        entry.1 = Some(metrics.clone());
    }
}

/// Writes the gateways heard from to the store, every [`SEEN_FLUSH_EVERY`] until shutdown,
/// and once more then.
pub(crate) async fn flush_seen(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(SEEN_FLUSH_EVERY);
    loop {
        let stop = tokio::select! {
            _ = ticker.tick() => false,
            () = shared.shutdown.cancelled() => true,
        };
        let batch: Vec<GatewaySeen> = shared
            .sessions
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(id, (seen_at_ms, metrics))| GatewaySeen {
                id,
                seen_at_ms,
                metrics,
            })
            .collect();
        if let Err(error) = shared.store.record_gateways_seen(&batch).await {
            tracing::warn!(message = "gateway heartbeats not recorded", gateways = batch.len(), %error);
        }
        if stop {
            return;
        }
    }
}

/// How long a gateway has to list its runs.
const LIST_RUNS_TIMEOUT: Duration = Duration::from_secs(15);

/// A gateway keeps its runs in memory only. On a new link, a run the store has starting or
/// running on the gateway, unchanged since before the link and not among the runs the
/// gateway lists, was lost with an earlier gateway process (or its start command with an
/// earlier link): it is marked failed, resumable, so that nobody waits on it.
async fn reconcile_runs(shared: Arc<Shared>, gateway_id: String, linked_at_ms: i64) {
    let listed = match shared
        .sessions
        .command(&gateway_id, Command::ListRuns, LIST_RUNS_TIMEOUT)
        .await
    {
        Ok(CommandResult {
            outcome: Ok(CommandOutcome::Runs(runs)),
            ..
        }) => runs,
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(message = "runs of the gateway not reconciled", gateway = %gateway_id, %error);
            return;
        }
    };
    let listed: HashSet<String> = listed.into_iter().map(|(_, run)| run).collect();
    let runs = match shared.store.active_runs_on_gateway(&gateway_id).await {
        Ok(runs) => runs,
        Err(error) => {
            tracing::warn!(message = "runs of the gateway not reconciled", gateway = %gateway_id, %error);
            return;
        }
    };
    for run in runs {
        if listed.contains(&run.id) || run.updated_at_ms >= linked_at_ms {
            continue;
        }
        tracing::warn!(message = "run lost by its gateway; marked failed", gateway = %gateway_id, run = %run.id);
        if let Err(error) = shared
            .store
            .transition_run(
                &run.id,
                run.state,
                TaskState::Failed,
                Some("the gateway lost the run (its process ended or restarted); resume it"),
            )
            .await
        {
            tracing::warn!(message = "lost run not recorded", run = %run.id, %error);
        }
    }
}

/// Whether run `run_id` of task `task_id` is one the gateway was given: a gateway reports
/// on its own tasks only, never on another gateway's.
async fn owns_run(shared: &Shared, gateway_id: &str, task_id: &str, run_id: &str) -> bool {
    let owned = match shared.store.task(task_id).await {
        Ok(task) => task.gateway_id == gateway_id && task.tenant_id == shared.tenant_id,
        Err(_) => false,
    } && shared
        .store
        .run(run_id)
        .await
        .is_ok_and(|run| run.task_id == task_id);
    if !owned {
        tracing::warn!(message = "report on a run this gateway was not given; ignored", gateway = %gateway_id, task = %task_id, run = %run_id);
    }
    owned
}

/// Keeps where a change data capture run stands, as its gateway reports it.
async fn apply_replication(shared: &Shared, report: tidegate_proto::ReplicationReport) {
    let run = match shared.store.run(&report.run_id).await {
        Ok(run) => run,
        Err(error) => {
            tracing::warn!(message = "replication report for an unknown run", run = %report.run_id, %error);
            return;
        }
    };
    let replication = RunReplication {
        phase: Some(report.phase),
        checkpoint_lsn: Some(report.checkpoint_lsn),
        source_lsn: Some(report.source_lsn),
        lag_bytes: report.lag_bytes,
        lag_ms: report.lag_ms,
        load_rows: report.load_rows,
        transactions: report.transactions,
        rows: report.rows,
        reported_at_ms: Some(crate::api::now_ms()),
        // The slot is in use while the run reports: what an earlier inspection saw is stale.
        slot: None,
        slot_checked_at_ms: None,
        warning: report
            .retrying
            .map(|error| format!("retrying after an error: {error}")),
        // Reported on their own, when they change.
        failed_tables: run
            .replication
            .map(|replication| replication.failed_tables)
            .unwrap_or_default(),
    };
    if let Err(error) = shared
        .store
        .record_run_replication(&run.id, &replication)
        .await
    {
        tracing::warn!(message = "run replication not recorded", run = %run.id, %error);
    }
}

async fn apply_failed_tables(shared: &Shared, report: tidegate_proto::FailedTablesReport) {
    let run = match shared.store.run(&report.run_id).await {
        Ok(run) => run,
        Err(error) => {
            tracing::warn!(message = "failed tables report for an unknown run", run = %report.run_id, %error);
            return;
        }
    };
    for table in &report.tables {
        tracing::warn!(message = "a table of the run failed and is set apart", run = %run.id, table = %table.table, error = %table.error);
    }
    let mut replication = run.replication.unwrap_or_default();
    replication.failed_tables = report.tables;
    if let Err(error) = shared
        .store
        .record_run_replication(&run.id, &replication)
        .await
    {
        tracing::warn!(message = "run replication not recorded", run = %run.id, %error);
    }
}

/// Moves a run to the state the gateway reports. The move is a compare-and-swap on the state
/// the run was read in; losing it (another writer moved the run) reads the run again.
async fn apply_status(shared: &Shared, status: tidegate_proto::TaskStatus) {
    let error = status.error.map(|e| e.message);
    for _ in 0..3 {
        let run = match shared.store.run(&status.run_id).await {
            Ok(run) => run,
            Err(error) => {
                tracing::warn!(message = "status for an unknown run", run = %status.run_id, %error);
                return;
            }
        };
        if run.state == status.state && run.error == error {
            return;
        }
        match shared
            .store
            .transition_run(&run.id, run.state, status.state, error.as_deref())
            .await
        {
            Ok(_) => return,
            Err(tidegate_metadata::Error::Conflict(_)) => continue,
            Err(error) => {
                tracing::warn!(message = "run state not recorded", run = %run.id, %error);
                return;
            }
        }
    }
}

/// Merges a progress report into the run's tables; a starting run is running from then on.
async fn apply_progress(shared: &Shared, progress: tidegate_proto::ProgressReport) {
    let run = match shared.store.run(&progress.run_id).await {
        Ok(run) => run,
        Err(error) => {
            tracing::warn!(message = "progress for an unknown run", run = %progress.run_id, %error);
            return;
        }
    };
    let mut tables = run.tables;
    for t in progress.tables {
        tables.insert(
            t.table,
            TableRun {
                rows: t.rows,
                bytes: t.bytes,
                rows_expected: t.rows_expected,
                state: t.state,
            },
        );
    }
    if let Err(error) = shared.store.record_run_tables(&run.id, &tables).await {
        tracing::warn!(message = "run progress not recorded", run = %run.id, %error);
    }
    if run.state == TaskState::Starting {
        // Losing this race is fine: whoever won moved the run on.
        let _ = shared
            .store
            .transition_run(&run.id, TaskState::Starting, TaskState::Running, None)
            .await;
    }
}
