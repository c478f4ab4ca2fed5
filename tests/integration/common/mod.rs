//! The harness the end-to-end tests share: a control plane on loopback TLS and helpers to
//! create and enroll gateways through its API.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use tidegate::control_plane::{ControlPlane, ControlPlaneConfig, RunningControlPlane};
use tidegate::dev_tls::ThrowawayCa;
use tidegate::gateway::{ClientTls, Gateway, GatewayConfig, Identity, LinkState, RunningGateway};
use tidegate::metadata::{GatewayState, MetadataStore, MetricsReport};
use tidegate::proto::SecretString;
use tidegate::quickstart::Api;

pub(crate) const OPERATOR: &str = "operator-token-for-tests-0123456789abcdef";
/// The bootstrap administrator of [`Harness::start`], holding every system role.
pub(crate) const ADMIN: &str = "admin";
pub(crate) const ADMIN_PASSWORD: &str = "admin password for tests";

pub(crate) struct Harness {
    pub(crate) ca: ThrowawayCa,
    pub(crate) cp: RunningControlPlane,
    pub(crate) api: Api,
    pub(crate) dir: tempfile::TempDir,
    /// Makes the names of objects the harness creates unique: names are unique per data space.
    serial: AtomicU32,
}

/// What a test checks about a gateway: its stored state and whether it is online.
#[derive(Debug)]
pub(crate) struct GatewayInfo {
    pub(crate) state: GatewayState,
    pub(crate) online: bool,
    pub(crate) public_key: Option<String>,
    pub(crate) metrics: Option<MetricsReport>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A harness whose control plane configuration `configure` adjusts first.
    pub(crate) async fn start_with(configure: impl FnOnce(&mut ControlPlaneConfig)) -> Self {
        tidegate::install_crypto_provider();
        let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"]).unwrap();
        let mut config = ControlPlaneConfig::new(ca.server_tls());
        config.listen = ([127, 0, 0, 1], 0).into();
        config.id = "cp-test".into();
        config.operator_tokens = vec![SecretString::new(OPERATOR)];
        config.heartbeat_interval = Duration::from_millis(300);
        config.bootstrap_admin = Some((ADMIN.into(), SecretString::new(ADMIN_PASSWORD)));
        configure(&mut config);
        let cp = ControlPlane::start(config).await.unwrap();
        let api = Api::new(&ca.ca_pem, cp.local_addr().port(), OPERATOR).unwrap();
        Self {
            ca,
            cp,
            api,
            dir: tempfile::tempdir().unwrap(),
            serial: AtomicU32::new(0),
        }
    }

    /// The REST client of `tidegate-client`, without a token.
    pub(crate) fn client(&self) -> tidegate::client::Client {
        tidegate::client::Client::new(
            &format!("https://localhost:{}", self.cp.local_addr().port()),
            Some(&self.ca.ca_pem),
        )
        .unwrap()
    }

    /// A client holding the operator token.
    pub(crate) fn operator(&self) -> tidegate::client::Client {
        self.client().with_token(OPERATOR)
    }

    /// Logs `username` in with `password`: a client holding the session token.
    pub(crate) async fn login(&self, username: &str, password: &str) -> tidegate::client::Client {
        let answer = self
            .client()
            .post(
                "/api/v1/auth/login",
                &json!({"username": username, "password": password}),
            )
            .await
            .unwrap();
        self.client().with_token(answer["token"].as_str().unwrap())
    }

    /// A name not used before in this harness: `base #n`.
    pub(crate) fn unique(&self, base: &str) -> String {
        format!("{base} #{}", self.serial.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates a gateway on the control plane: its id and one-time enrollment token.
    pub(crate) async fn create_gateway(&self) -> (String, String) {
        let v = self
            .api
            .post("/api/v1/gateways", json!({"name": self.unique("gw")}))
            .await
            .unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["enrollment_token"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) fn config(&self, state: &str) -> GatewayConfig {
        let mut c = GatewayConfig::new(
            format!("wss://localhost:{}", self.cp.local_addr().port()),
            self.dir.path().join(state),
        );
        c.tls = ClientTls {
            system_roots: false,
            ca_bundle_pem: Some(self.ca.ca_pem.clone()),
            pinned_sha256: Vec::new(),
        };
        c.backoff_initial = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(200);
        c
    }

    /// Starts an enrolled gateway and returns once the control plane sees it online.
    pub(crate) async fn online(
        &self,
        id: &str,
        config: GatewayConfig,
        identity: Identity,
    ) -> RunningGateway {
        let gateway = Gateway::start(config, identity).unwrap();
        gateway
            .state()
            .wait_for(|s| *s == LinkState::Online)
            .await
            .unwrap();
        wait_for(async || self.gateway(id).await.online).await;
        gateway
    }

    pub(crate) async fn enrolled(&self, state: &str) -> (String, GatewayConfig, Identity) {
        let (id, token) = self.create_gateway().await;
        let config = self.config(state);
        let identity = tidegate::gateway::enroll(&config, &token).await.unwrap();
        assert_eq!(identity.gateway_id, id);
        (id, config, identity)
    }

    /// Creates a source and a target connection and a task between them on `gateway_id`;
    /// returns the three API answers.
    pub(crate) async fn create_task(
        &self,
        gateway_id: &str,
        mut source: serde_json::Value,
        mut target: serde_json::Value,
    ) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
        for connection in [&mut source, &mut target] {
            let name = connection["name"].as_str().unwrap().to_owned();
            connection["name"] = json!(self.unique(&name));
        }
        let src = self.api.post("/api/v1/connections", source).await.unwrap();
        let dst = self.api.post("/api/v1/connections", target).await.unwrap();
        let task = self
            .api
            .post(
                "/api/v1/tasks",
                json!({"name": self.unique("t"), "gateway_id": gateway_id,
                       "source_id": src["id"], "target_id": dst["id"]}),
            )
            .await
            .unwrap();
        (src, dst, task)
    }

    /// Connections to databases `src` and `dst` of `pg`, a change data capture task of
    /// `public.orders` between them on `gateway_id`, and its first run started; returns the
    /// task's id and the run as the API answered.
    pub(crate) async fn start_orders_capture(
        &self,
        gateway_id: &str,
        pg: &tidegate_testkit::PgServer,
    ) -> (String, serde_json::Value) {
        let task_id = self.capture_task(gateway_id, pg, &["public.orders"]).await;
        let run = self
            .api
            .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
            .await
            .unwrap();
        (task_id, run)
    }

    /// Connections to databases `src` and `dst` of `pg` and a change data capture task of
    /// `tables` between them on `gateway_id`; returns the task's id.
    pub(crate) async fn capture_task(
        &self,
        gateway_id: &str,
        pg: &tidegate_testkit::PgServer,
        tables: &[&str],
    ) -> String {
        let source = self
            .api
            .post("/api/v1/connections", postgres_connection(pg, "src"))
            .await
            .unwrap();
        let target = self
            .api
            .post("/api/v1/connections", postgres_connection(pg, "dst"))
            .await
            .unwrap();
        let task = self
            .api
            .post(
                "/api/v1/tasks",
                json!({"name": self.unique("live"), "gateway_id": gateway_id,
                       "source_id": source["id"], "target_id": target["id"],
                       "task_type": "change_data_capture",
                       "tables": {"include": tables}}),
            )
            .await
            .unwrap();
        task["id"].as_str().unwrap().to_owned()
    }

    /// Starts a run of change data capture task `task_id` and waits until it streams; returns
    /// the run and its path.
    pub(crate) async fn run_until_streaming(&self, task_id: &str) -> (serde_json::Value, String) {
        let run = self
            .api
            .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
            .await
            .unwrap();
        let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());
        until("initial load reported", async || {
            let run = self.api.get(&run_path).await.unwrap();
            (run["replication"]["phase"] == json!("Streaming")).then_some(())
        })
        .await;
        (run, run_path)
    }

    /// Starts a run of `task_id` and waits for its end; returns the run's view.
    pub(crate) async fn run_to_end(&self, task_id: &str) -> serde_json::Value {
        let run = self
            .api
            .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
            .await
            .unwrap();
        self.wait_run_end(run["id"].as_str().unwrap()).await
    }

    /// Polls a run until it is neither starting nor running (at most 10 s); returns its view.
    pub(crate) async fn wait_run_end(&self, run_id: &str) -> serde_json::Value {
        let path = format!("/api/v1/runs/{run_id}");
        for _ in 0..200 {
            let run = self.api.get(&path).await.unwrap();
            if run["state"] != json!("Starting") && run["state"] != json!("Running") {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run_id} did not end within 10 s");
    }

    pub(crate) async fn gateway(&self, id: &str) -> GatewayInfo {
        let record = self.cp.store().gateway(id).await.unwrap();
        GatewayInfo {
            state: record.state,
            online: self.cp.gateway_online(id),
            public_key: record.public_key,
            metrics: record.metrics,
        }
    }
}

pub(crate) async fn wait_for(mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}

/// Polls `f` until it returns `Some`, for at most 60 s.
pub(crate) async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(value) = f().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within 60 s");
}

/// A `postgres` connection to `database` on `server`, as the API takes it.
pub(crate) fn postgres_connection(
    server: &tidegate_testkit::PgServer,
    database: &str,
) -> serde_json::Value {
    json!({
        "name": format!("pg-{database}"),
        "kind": "postgres",
        "settings": {
            "host": "127.0.0.1", "port": server.port().to_string(),
            "database": database, "user": server.user(), "sslmode": "disable"
        },
        "secrets": {"password": server.password()}
    })
}

/// A throwaway PostgreSQL with databases `src` (where `sql` runs) and `dst`.
pub(crate) async fn source_and_target(sql: &str) -> tidegate_testkit::PgServer {
    let pg = tokio::task::spawn_blocking(tidegate_testkit::PgServer::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("src").unwrap();
    pg.create_database("dst").unwrap();
    pg.execute("src", sql).unwrap();
    pg
}

/// Count and checksums of table `orders` (`id`, `amount`, `note`), to compare a source with
/// its target.
pub(crate) fn orders_digest(pg: &tidegate_testkit::PgServer, database: &str) -> String {
    pg.execute(
        database,
        "SELECT count(*), coalesce(sum(id), 0), coalesce(sum(amount), 0), \
         coalesce(sum(length(note)), 0) FROM orders",
    )
    .unwrap()
}
