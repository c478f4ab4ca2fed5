//! The walking skeleton: a control plane and a gateway in one process, over real TLS on
//! loopback, copying a generated SQLite database to Parquet files on the local filesystem.
//!
//! Everything goes the way it goes in a deployment: a throwaway CA signs the control plane's
//! certificate; an operator creates a gateway through the REST API and receives a one-time
//! enrollment token; the gateway enrolls (generating its own identity key), dials out over WSS,
//! authenticates with a TLS-bound JWT and runs the channel-key handshake; the operator creates
//! connections and a data task through the API and starts a run; the gateway copies the tables
//! and reports progress, which the caller polls through the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tidegate_control_plane::{ControlPlane, ControlPlaneConfig};
use tidegate_gateway::{ClientTls, Gateway, GatewayConfig, LinkState};
use tidegate_metadata::{TaskRun, TaskState};
use tidegate_proto::SecretString;
use tidegate_replicate::sample::{SampleSize, generate_sqlite};

use crate::dev_tls::ThrowawayCa;

/// Why the quickstart failed.
#[derive(Debug, thiserror::Error)]
#[error("quickstart: {0}")]
pub struct Error(String);

fn err(context: &str) -> impl FnOnce(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error(format!("{context}: {e}"))
}

macro_rules! ctx {
    ($result:expr, $context:expr) => {
        $result.map_err(|e| err($context)(&e))
    };
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the Parquet files go.
    pub out_dir: PathBuf,
    /// A scratch directory for the sample database and the gateway's state directory.
    pub work_dir: PathBuf,
    /// The sample database's size.
    pub sample: SampleSize,
}

/// One table's outcome.
#[derive(Debug, Clone)]
pub struct TableSummary {
    /// `schema.table`.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
}

/// What the quickstart did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Per table.
    pub tables: Vec<TableSummary>,
    /// Rows over all tables.
    pub rows: u64,
    /// Bytes over all tables.
    pub bytes: u64,
    /// Time from starting the run to its completion.
    pub elapsed: Duration,
    /// The sample database that was copied.
    pub source: PathBuf,
    /// The gateway's state directory.
    pub gateway_state_dir: PathBuf,
    /// The run's id (part of every output path).
    pub run_id: String,
}

/// Progress as the control plane reports it, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Per table: rows so far, rows expected, done.
    pub tables: BTreeMap<String, (u64, u64, bool)>,
}

/// Runs the whole walking skeleton. `on_progress` is called about five times a second.
pub async fn run(
    options: Options,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Summary, Error> {
    crate::install_crypto_provider();
    ctx!(std::fs::create_dir_all(&options.work_dir), "work directory")?;
    ctx!(
        std::fs::create_dir_all(&options.out_dir),
        "output directory"
    )?;
    let out_dir = ctx!(std::fs::canonicalize(&options.out_dir), "output directory")?;

    // The source: a generated SQLite database.
    let source = options.work_dir.join("sample.sqlite");
    let _ = std::fs::remove_file(&source);
    let sample = ctx!(
        generate_sqlite(&source, options.sample).await,
        "sample database"
    )?;
    let expected: BTreeMap<String, u64> = sample
        .tables
        .iter()
        .map(|(t, rows)| (format!("main.{t}"), *rows))
        .collect();

    // The control plane, with TLS from a throwaway CA and one operator token.
    let ca = ctx!(
        ThrowawayCa::new(&["localhost", "127.0.0.1"]),
        "certificates"
    )?;
    let operator_token = random_token();
    let mut cp_config = ControlPlaneConfig::new(ca.server_tls());
    cp_config.listen = ([127, 0, 0, 1], 0).into();
    cp_config.operator_tokens = vec![SecretString::new(operator_token.clone())];
    cp_config.heartbeat_interval = Duration::from_secs(2);
    let cp = ctx!(ControlPlane::start(cp_config).await, "control plane")?;
    let api = Api::new(&ca.ca_pem, cp.local_addr().port(), &operator_token)?;

    let result = async {
        // An operator creates a gateway and hands its enrollment token to the gateway.
        let created = api
            .post("/api/v1/gateways", json!({"name": "quickstart gateway"}))
            .await?;
        let token = str_field(&created, "enrollment_token")?;
        let gateway_id = str_field(&created, "id")?;

        let state_dir = options.work_dir.join("gateway-state");
        let mut gw_config = GatewayConfig::new(
            format!("wss://localhost:{}", cp.local_addr().port()),
            &state_dir,
        );
        gw_config.tls = ClientTls {
            system_roots: false,
            ca_bundle_pem: Some(ca.ca_pem.clone()),
            pinned_sha256: Vec::new(),
        };
        let identity = ctx!(
            tidegate_gateway::enroll(&gw_config, &token).await,
            "enrollment"
        )?;
        let gateway = ctx!(Gateway::start(gw_config, identity), "gateway")?;
        let mut state = gateway.state();
        ctx!(
            tokio::time::timeout(
                Duration::from_secs(20),
                state.wait_for(|s| matches!(s, LinkState::Online | LinkState::Refused { .. })),
            )
            .await,
            "gateway did not connect"
        )?
        .map_err(|_| Error("gateway stopped".into()))?;
        if let LinkState::Refused { reason } = &*state.borrow() {
            return Err(Error(format!("gateway refused: {reason}")));
        }

        // The operator defines connections and a task, and starts a run.
        let src = api
            .post(
                "/api/v1/connections",
                json!({"name": "sample sqlite", "kind": "sqlite",
                       "settings": {"path": source.display().to_string()}}),
            )
            .await?;
        let dst = api
            .post(
                "/api/v1/connections",
                json!({"name": "quickstart parquet", "kind": "local",
                       "settings": {"root": out_dir.display().to_string()}}),
            )
            .await?;
        let task = api
            .post(
                "/api/v1/tasks",
                json!({"name": "sample to parquet", "gateway_id": gateway_id,
                       "source_id": str_field(&src, "id")?, "target_id": str_field(&dst, "id")?}),
            )
            .await?;
        let task_id = str_field(&task, "id")?;
        let started = Instant::now();
        let run = api
            .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
            .await?;
        let run_id = str_field(&run, "id")?;

        let run = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let value = api.get(&format!("/api/v1/runs/{run_id}")).await?;
            let run: TaskRun = ctx!(serde_json::from_value(value), "run status")?;
            on_progress(&Progress {
                tables: expected
                    .iter()
                    .map(|(t, total)| {
                        let r = run.tables.get(t);
                        let rows = r.map_or(0, |r| r.rows);
                        let done = r.is_some_and(|r| r.state == tidegate_proto::TableState::Done);
                        (t.clone(), (rows, *total, done))
                    })
                    .collect(),
            });
            match run.state {
                TaskState::Completed => break run,
                TaskState::Failed | TaskState::Stopped => {
                    return Err(Error(format!(
                        "run {run_id} ended {:?}: {}",
                        run.state,
                        run.error.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        };
        let elapsed = started.elapsed();
        gateway.shutdown().await;
        let tables: Vec<TableSummary> = run
            .tables
            .iter()
            .map(|(t, r)| TableSummary {
                table: t.clone(),
                rows: r.rows,
                bytes: r.bytes,
            })
            .collect();
        Ok(Summary {
            rows: tables.iter().map(|t| t.rows).sum(),
            bytes: tables.iter().map(|t| t.bytes).sum(),
            tables,
            elapsed,
            source: source.clone(),
            gateway_state_dir: state_dir,
            run_id,
        })
    }
    .await;
    cp.shutdown().await;
    result
}

fn random_token() -> String {
    let mut raw = [0u8; 24];
    let _ = getrandom_fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), Error> {
    use aws_lc_rs::rand::SecureRandom;
    ctx!(
        aws_lc_rs::rand::SystemRandom::new().fill(buf),
        "random source"
    )
}

fn str_field(value: &serde_json::Value, field: &str) -> Result<String, Error> {
    value
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Error(format!("API answer has no {field:?}")))
}

/// A small client for the control plane's REST API, trusting only the throwaway CA.
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for `https://localhost:{port}` that trusts `ca_pem` and sends `token`.
    pub fn new(ca_pem: &str, port: u16, token: &str) -> Result<Self, Error> {
        let ca = ctx!(reqwest::Certificate::from_pem(ca_pem.as_bytes()), "CA")?;
        let client = ctx!(
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build(),
            "HTTP client"
        )?;
        Ok(Self {
            client,
            base: format!("https://localhost:{port}"),
            token: token.to_owned(),
        })
    }

    /// POSTs JSON and returns the JSON answer; a non-2xx status is an error with its message.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body);
        Self::answer(path, request).await
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, Error> {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        Self::answer(path, request).await
    }

    async fn answer(
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, Error> {
        let response = ctx!(request.send().await, path)?;
        let status = response.status();
        let value: serde_json::Value = ctx!(response.json().await, path)?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(Error(format!("{path}: {status}: {value}")))
        }
    }
}

/// Where the quickstart writes a table's Parquet files for a run.
pub fn table_dir(out_dir: &Path, table: &str, run_id: &str) -> PathBuf {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    out_dir.join(schema).join(name).join(run_id)
}
