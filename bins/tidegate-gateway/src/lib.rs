//! The Tidegate gateway as a library: enroll with [`enroll`], run with [`Gateway::start`].
//!
//! The gateway opens no listening socket. It dials the control plane (`wss://`, TLS 1.2/1.3,
//! optionally through an HTTP CONNECT proxy), authenticates with a short-lived JWT bound to the
//! TLS session, runs the channel-key handshake, and then executes the commands it receives.
//! Data goes from sources straight to targets; the control plane receives states, counts and
//! error texts only. Task definitions and credentials live in memory only; the only file the
//! gateway writes of its own is its identity ([`identity::IDENTITY_FILE`], mode 0600).
//!
//! The binary `tidegate-gateway` only reads configuration and calls these functions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cdc;
mod connect;
pub mod identity;
mod runner;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use connect::Endpoint;
pub use identity::Identity;
use tidegate_auth::IdentityKey;
use tidegate_proto::{
    Command, CommandId, CommandOutcome, CommandResult, ErrorCode, Goodbye, Heartbeat, Message,
    TaskKind, TaskSpec,
};
pub use tls::ClientTls;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a gateway operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The identity file could not be read or written.
    #[error("identity file {}: {reason}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The control plane could not be reached.
    #[error("cannot reach the control plane: {0}")]
    Connect(String),
    /// TLS failed (certificate not trusted, pin mismatch, protocol version...).
    #[error("TLS: {0}")]
    Tls(String),
    /// A token could not be made.
    #[error("authentication: {0}")]
    Auth(String),
    /// The control plane answered with an HTTP error.
    #[error("control plane refused ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },
    /// The sealed link failed.
    #[error("link: {0}")]
    Link(#[from] tidegate_link::Error),
}

/// How to reach and trust the control plane, and where the identity lives.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `wss://host:port` of the control plane.
    pub control_plane: String,
    /// Where the identity file lives (the only file the gateway writes).
    pub state_dir: PathBuf,
    /// Certificate trust.
    pub tls: ClientTls,
    /// An optional HTTP CONNECT proxy, `http://host:port`.
    pub proxy: Option<String>,
    /// First reconnect delay; doubles up to `backoff_max`, with full jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Lifetime of each connection's JWT (at most 300 s).
    pub token_lifetime: Duration,
    /// The protocol versions offered; by default all this build speaks.
    pub protocol_versions: std::ops::RangeInclusive<tidegate_proto::ProtocolVersion>,
}

impl GatewayConfig {
    /// Defaults for everything but the control plane URL and the state directory.
    pub fn new(control_plane: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            control_plane: control_plane.into(),
            state_dir: state_dir.into(),
            tls: ClientTls {
                system_roots: true,
                ..ClientTls::default()
            },
            proxy: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            token_lifetime: Duration::from_secs(tidegate_auth::DEFAULT_TOKEN_LIFETIME_S),
            protocol_versions: tidegate_proto::SUPPORTED_VERSIONS,
        }
    }
}

/// Enrolls this gateway with a one-time token: generates the identity key pair, registers the
/// public key with the control plane, and saves the identity (mode 0600) in `state_dir`.
pub async fn enroll(config: &GatewayConfig, token: &str) -> Result<Identity, Error> {
    let token = tidegate_auth::EnrollmentToken::parse(token)
        .map_err(|e| Error::Config(format!("enrollment token: {e}")))?;
    let endpoint = Endpoint::parse(&config.control_plane)?;
    let tls = config.tls.client_config()?;
    let mut client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(30));
    client = match &config.proxy {
        Some(p) => {
            client.proxy(reqwest::Proxy::all(p).map_err(|e| Error::Config(format!("proxy: {e}")))?)
        }
        None => client.no_proxy(),
    };
    let client = client.build().map_err(|e| Error::Config(e.to_string()))?;
    let key = IdentityKey::generate().map_err(|e| Error::Auth(e.to_string()))?;
    let url = format!("{}/api/v1/gateways/enroll", endpoint.https_base());
    let body = serde_json::json!({
        "token": token.expose(),
        "public_key": key.public_key().to_base64(),
    });
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::Connect(e.without_url().to_string()))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    if !status.is_success() {
        return Err(Error::Rejected {
            status: status.as_u16(),
            message: text,
        });
    }
    #[derive(serde::Deserialize)]
    struct Enrolled {
        gateway_id: String,
        audience: String,
    }
    let enrolled: Enrolled = serde_json::from_str(&text)
        .map_err(|e| Error::Connect(format!("unexpected enrollment answer: {e}")))?;
    let identity = Identity {
        gateway_id: enrolled.gateway_id,
        audience: enrolled.audience,
        key,
    };
    identity.save(&config.state_dir)?;
    Ok(identity)
}

/// Dials the control plane once and completes TCP, TLS, JWT authentication, the WebSocket
/// upgrade and the channel-key handshake, returning the established sealed link. The gateway
/// runtime does this on every (re)connection; it is public for benchmarks and diagnostics.
pub async fn dial_once(
    config: &GatewayConfig,
    identity: &Identity,
) -> Result<
    (
        tidegate_link::Link<impl tidegate_link::Transport + use<>>,
        tidegate_proto::Welcome,
    ),
    Error,
> {
    let endpoint = Endpoint::parse(&config.control_plane)?;
    let tls = config.tls.client_config()?;
    connect::dial(&endpoint, config, tls, identity).await
}

/// The gateway's connection to its control plane, as seen from the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling.
    Connecting,
    /// The sealed link is up.
    Online,
    /// The last attempt failed; retrying after a backoff.
    Offline {
        /// Why the last attempt or link failed.
        reason: String,
    },
    /// The control plane refused this gateway (deactivated, unsupported version).
    Refused {
        /// The control plane's explanation.
        reason: String,
    },
}

/// Entry point: see [`Gateway::start`].
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// Starts the gateway's connection loop with an enrolled identity.
    pub fn start(config: GatewayConfig, identity: Identity) -> Result<RunningGateway, Error> {
        let endpoint = Endpoint::parse(&config.control_plane)?;
        let tls = config.tls.client_config()?;
        if config.token_lifetime.as_secs() > tidegate_auth::MAX_TOKEN_LIFETIME_S {
            return Err(Error::Config(format!(
                "token lifetime above {} s",
                tidegate_auth::MAX_TOKEN_LIFETIME_S
            )));
        }
        let shutdown = CancellationToken::new();
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
        let worker = Worker {
            config,
            endpoint,
            tls,
            identity,
            state: state_tx,
            shutdown: shutdown.clone(),
            tasks: HashMap::new(),
            totals: Arc::new(Totals::default()),
            started: Instant::now(),
        };
        let task = tokio::spawn(worker.run());
        Ok(RunningGateway {
            state: state_rx,
            shutdown,
            task,
        })
    }
}

/// A running gateway. Call [`RunningGateway::shutdown`] to stop it.
#[derive(Debug)]
pub struct RunningGateway {
    state: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningGateway {
    /// Watches the link state.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Stops running tasks, says goodbye and waits for the gateway to stop.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A task running on this gateway.
#[derive(Debug)]
struct RunningTask {
    run_id: String,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    /// Resync requests, for a change data capture run (answered by the run).
    resync: Option<mpsc::Sender<cdc::ResyncRequest>>,
}

struct Worker {
    config: GatewayConfig,
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    identity: Identity,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
    tasks: HashMap<String, RunningTask>,
    totals: Arc<Totals>,
    started: Instant,
}

/// Rows and bytes moved since the gateway started, for metrics reports.
#[derive(Debug, Default)]
struct Totals {
    rows: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// Metrics are sent every this many heartbeat ticks.
const METRICS_EVERY_TICKS: u64 = 6;

impl Worker {
    fn metrics(&self) -> Message {
        use std::sync::atomic::Ordering::Relaxed;
        Message::Metrics(tidegate_proto::MetricsReport {
            uptime_s: self.started.elapsed().as_secs(),
            running_tasks: u32::try_from(self.tasks.len()).unwrap_or(u32::MAX),
            rows_total: self.totals.rows.load(Relaxed),
            bytes_total: self.totals.bytes.load(Relaxed),
        })
    }

    async fn run(mut self) {
        // Messages from running tasks to the control plane. Owned here, not by a session, so
        // a task's final status survives a reconnect.
        let (events_tx, mut events_rx) = mpsc::channel::<Message>(256);
        let mut failures = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            self.state.send_replace(LinkState::Connecting);
            let dialled = tokio::select! {
                d = connect::dial(&self.endpoint, &self.config, self.tls.clone(), &self.identity) => d,
                () = self.shutdown.cancelled() => break,
            };
            let reason = match dialled {
                Ok((link, welcome)) => {
                    self.state.send_replace(LinkState::Online);
                    tracing::info!(
                        message = "connected to control plane",
                        version = welcome.version.0
                    );
                    let started = Instant::now();
                    let interval =
                        Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
                    let reason = self
                        .session(link, welcome.version, interval, &events_tx, &mut events_rx)
                        .await;
                    if started.elapsed() > Duration::from_secs(60) {
                        failures = 0;
                    }
                    reason
                }
                Err(Error::Link(tidegate_link::Error::Refused(refusal))) => {
                    let reason = if refusal.message.is_empty() {
                        format!("{:?}", refusal.reason)
                    } else {
                        refusal.message
                    };
                    tracing::error!(message = "control plane refused this gateway", %reason);
                    self.state.send_replace(LinkState::Refused {
                        reason: reason.clone(),
                    });
                    reason
                }
                Err(error) => {
                    tracing::warn!(message = "connection to control plane failed", %error);
                    error.to_string()
                }
            };
            if self.shutdown.is_cancelled() {
                break;
            }
            if !matches!(*self.state.borrow(), LinkState::Refused { .. }) {
                self.state.send_replace(LinkState::Offline { reason });
            }
            failures = failures.saturating_add(1);
            let delay = backoff(
                self.config.backoff_initial,
                self.config.backoff_max,
                failures,
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        for (_, task) in self.tasks.drain() {
            task.cancel.cancel();
            let _ = task.handle.await;
        }
    }

    /// Runs one established link until it fails; returns why it ended.
    async fn session<T: tidegate_link::Transport>(
        &mut self,
        link: tidegate_link::Link<T>,
        version: tidegate_proto::ProtocolVersion,
        interval: Duration,
        events_tx: &mpsc::Sender<Message>,
        events_rx: &mut mpsc::Receiver<Message>,
    ) -> String {
        let (mut tx, mut rx) = link.split();
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut last_heard = Instant::now();
        let mut heartbeat_id = 0u64;
        let reason = loop {
            tokio::select! {
                received = rx.recv() => {
                    let message = match received {
                        Ok(m) => m,
                        Err(error) => break format!("link ended: {error}"),
                    };
                    last_heard = Instant::now();
                    let reply = match message {
                        Message::Heartbeat(h) => Some(Message::HeartbeatAck(h)),
                        Message::HeartbeatAck(_) => None,
                        Message::Command { id, command } => self.dispatch(id, command, events_tx),
                        Message::Error(report) => {
                            tracing::warn!(message = "control plane reported an error", error = %report.message);
                            None
                        }
                        Message::Goodbye(g) => break format!("control plane said goodbye: {}", g.reason),
                        other => break format!("protocol violation: unexpected {} from control plane", other.kind()),
                    };
                    if let Some(reply) = reply
                        && let Err(error) = tx.send(&reply).await
                    {
                        break format!("link ended: {error}");
                    }
                }
                Some(event) = events_rx.recv() => {
                    if event.min_version() > version {
                        // An older control plane could not read it.
                        tracing::debug!(message = "report dropped for this link's protocol version", kind = event.kind());
                        continue;
                    }
                    if let Err(error) = tx.send(&event).await {
                        break format!("link ended: {error}");
                    }
                }
                _ = ticker.tick() => {
                    self.reap();
                    if last_heard.elapsed() > interval * 3 {
                        break "no heartbeat from the control plane within three intervals".to_owned();
                    }
                    heartbeat_id += 1;
                    if let Err(error) = tx.send(&Message::Heartbeat(Heartbeat { id: heartbeat_id })).await {
                        break format!("link ended: {error}");
                    }
                    if heartbeat_id % METRICS_EVERY_TICKS == 1
                        && let Err(error) = tx.send(&self.metrics()).await
                    {
                        break format!("link ended: {error}");
                    }
                }
                () = self.shutdown.cancelled() => {
                    let _ = tx.send(&Message::Goodbye(Goodbye { reason: "gateway shutting down".into() })).await;
                    break "shutting down".to_owned();
                }
            }
        };
        let _ = tx.close().await;
        tracing::info!(message = "link to control plane ended", %reason);
        reason
    }

    /// Forgets tasks that have finished.
    fn reap(&mut self) {
        self.tasks.retain(|_, t| !t.handle.is_finished());
    }

    /// Handles one command. Quick commands answer at once; slow ones answer through `events`.
    fn dispatch(
        &mut self,
        id: CommandId,
        command: Command,
        events: &mpsc::Sender<Message>,
    ) -> Option<Message> {
        let answer = |outcome| Some(Message::CommandResult(CommandResult { id, outcome }));
        self.reap();
        match command {
            Command::StartTask(spec) | Command::ResumeTask(spec) => {
                answer(self.start_task(spec, events))
            }
            Command::StopTask { task_id } => match self.tasks.get(&task_id) {
                Some(task) => {
                    tracing::info!(message = "stopping task", task = %task_id, run = %task.run_id);
                    task.cancel.cancel();
                    answer(Ok(CommandOutcome::Accepted))
                }
                None => answer(Err(runner::report(
                    ErrorCode::UnknownTask,
                    format!("task {task_id} is not running on this gateway"),
                    false,
                ))),
            },
            Command::ResyncTables { task_id, tables } => {
                let refused = |message: String| {
                    answer(Err(runner::report(
                        ErrorCode::InvalidRequest,
                        message,
                        false,
                    )))
                };
                match self.tasks.get(&task_id) {
                    None => answer(Err(runner::report(
                        ErrorCode::UnknownTask,
                        format!("task {task_id} is not running on this gateway"),
                        false,
                    ))),
                    Some(RunningTask { resync: None, .. }) => refused(format!(
                        "task {task_id}: only change data capture tasks resync tables alone"
                    )),
                    Some(RunningTask {
                        resync: Some(requests),
                        ..
                    }) => match requests.try_send(cdc::ResyncRequest { id, tables }) {
                        // The run answers once it has checked the tables.
                        Ok(()) => None,
                        Err(_) => refused(format!(
                            "task {task_id}: a resync is already pending; try again once it started"
                        )),
                    },
                }
            }
            Command::ReloadTask(spec) => answer(Err(runner::report(
                ErrorCode::InvalidRequest,
                format!(
                    "task {}: a running task cannot change; stop it and start it again",
                    spec.task_id
                ),
                false,
            ))),
            Command::ListRuns => answer(Ok(CommandOutcome::Runs(
                self.tasks
                    .iter()
                    .map(|(task_id, task)| (task_id.clone(), task.run_id.clone()))
                    .collect(),
            ))),
            Command::InspectReplication { task_id, source } => {
                let events = events.clone();
                tokio::spawn(async move {
                    let outcome = cdc::inspect(&task_id, &source).await;
                    let _ = events
                        .send(Message::CommandResult(CommandResult { id, outcome }))
                        .await;
                });
                None
            }
            Command::DropReplication { task_id, source } => {
                if self.tasks.contains_key(&task_id) {
                    return answer(Err(runner::report(
                        ErrorCode::AlreadyRunning,
                        format!("task {task_id} is running on this gateway; stop it first"),
                        false,
                    )));
                }
                let events = events.clone();
                tokio::spawn(async move {
                    let outcome = cdc::drop_replication(&task_id, &source).await;
                    let _ = events
                        .send(Message::CommandResult(CommandResult { id, outcome }))
                        .await;
                });
                None
            }
            Command::TestConnection(spec) => {
                let events = events.clone();
                tokio::spawn(async move {
                    let outcome = runner::test_connection(&spec).await;
                    let _ = events
                        .send(Message::CommandResult(CommandResult { id, outcome }))
                        .await;
                });
                None
            }
            Command::DiscoverSchema(spec) => {
                let events = events.clone();
                tokio::spawn(async move {
                    let outcome = runner::discover(&spec).await;
                    let _ = events
                        .send(Message::CommandResult(CommandResult { id, outcome }))
                        .await;
                });
                None
            }
            other => answer(Err(runner::report(
                ErrorCode::InvalidRequest,
                format!("this gateway does not know the command {other:?}"),
                false,
            ))),
        }
    }

    fn start_task(
        &mut self,
        spec: TaskSpec,
        events: &mpsc::Sender<Message>,
    ) -> Result<CommandOutcome, tidegate_proto::ErrorReport> {
        if let Some(running) = self.tasks.get(&spec.task_id) {
            return Err(runner::report(
                ErrorCode::AlreadyRunning,
                format!(
                    "task {} is already running (run {})",
                    spec.task_id, running.run_id
                ),
                false,
            ));
        }
        let cancel = self.shutdown.child_token();
        let task_id = spec.task_id.clone();
        let run_id = spec.run_id.clone();
        tracing::info!(message = "starting task", task = %task_id, run = %run_id);
        let totals = self.totals.clone();
        let (events, token) = (events.clone(), cancel.clone());
        let (resync, resync_requests) = match spec.kind {
            TaskKind::ChangeDataCapture => {
                let (sender, receiver) = mpsc::channel(1);
                (Some(sender), Some(receiver))
            }
            _ => (None, None),
        };
        let handle = tokio::spawn(async move {
            let (rows, bytes) = match spec.kind {
                TaskKind::FullLoad => {
                    let (_, rows, bytes) = runner::run_full_load(spec, events, token).await;
                    (rows, bytes)
                }
                _ => (
                    cdc::run_cdc(spec, events, token, resync_requests).await.1,
                    0,
                ),
            };
            totals
                .rows
                .fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
            totals
                .bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        });
        self.tasks.insert(
            task_id,
            RunningTask {
                run_id,
                cancel,
                handle,
                resync,
            },
        );
        Ok(CommandOutcome::Accepted)
    }
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(max, initial * 2^n))`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let cap = initial
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(max);
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let fraction = (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(fraction).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for n in 0..40 {
            let cap = i.saturating_mul(2u32.saturating_pow(n.min(16))).min(m);
            for _ in 0..20 {
                let d = backoff(i, m, n);
                assert!(d <= cap.max(Duration::from_millis(10)), "n={n} d={d:?}");
            }
        }
        let late: Vec<_> = (0..50).map(|_| backoff(i, m, 30)).collect();
        assert!(
            late.iter().any(|d| *d > Duration::from_secs(1)),
            "no jitter spread: {late:?}"
        );
    }
}
