//! The harness the end-to-end tests share: a control plane on loopback TLS and helpers to
//! create and enroll gateways through its API.

// Each test file uses a different part of the harness; `pub` items are reached through
// `mod common;` in each file, which the lint cannot see.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use serde_json::json;
use tidegate::control_plane::{ControlPlane, ControlPlaneConfig, RunningControlPlane};
use tidegate::dev_tls::ThrowawayCa;
use tidegate::gateway::{ClientTls, GatewayConfig, Identity};
use tidegate::proto::SecretString;
use tidegate::quickstart::Api;

pub const OPERATOR: &str = "operator-token-for-tests-0123456789abcdef";

pub struct Harness {
    pub ca: ThrowawayCa,
    pub cp: RunningControlPlane,
    pub api: Api,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        tidegate::install_crypto_provider();
        let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"]).unwrap();
        let mut config = ControlPlaneConfig::new(ca.server_tls());
        config.listen = ([127, 0, 0, 1], 0).into();
        config.id = "cp-test".into();
        config.operator_tokens = vec![SecretString::new(OPERATOR)];
        config.heartbeat_interval = Duration::from_millis(300);
        let cp = ControlPlane::start(config).await.unwrap();
        let api = Api::new(&ca.ca_pem, cp.local_addr().port(), OPERATOR).unwrap();
        Self {
            ca,
            cp,
            api,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Creates a gateway on the control plane: its id and one-time enrollment token.
    pub async fn create_gateway(&self) -> (String, String) {
        let v = self
            .api
            .post("/api/v1/gateways", json!({"name": "gw"}))
            .await
            .unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["enrollment_token"].as_str().unwrap().to_owned(),
        )
    }

    pub fn config(&self, state: &str) -> GatewayConfig {
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

    pub async fn enrolled(&self, state: &str) -> (String, GatewayConfig, Identity) {
        let (id, token) = self.create_gateway().await;
        let config = self.config(state);
        let identity = tidegate::gateway::enroll(&config, &token).await.unwrap();
        assert_eq!(identity.gateway_id, id);
        (id, config, identity)
    }

    /// Creates a source and a target connection and a task between them on `gateway_id`;
    /// returns the three API answers.
    pub async fn create_task(
        &self,
        gateway_id: &str,
        source: serde_json::Value,
        target: serde_json::Value,
    ) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
        let src = self.api.post("/api/v1/connections", source).await.unwrap();
        let dst = self.api.post("/api/v1/connections", target).await.unwrap();
        let task = self
            .api
            .post(
                "/api/v1/tasks",
                json!({"name": "t", "gateway_id": gateway_id,
                       "source_id": src["id"], "target_id": dst["id"]}),
            )
            .await
            .unwrap();
        (src, dst, task)
    }

    /// Polls a run until it is neither starting nor running (at most 10 s); returns its view.
    pub async fn wait_run_end(&self, run_id: &str) -> serde_json::Value {
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

    pub fn gateway(&self, id: &str) -> tidegate::metadata::Gateway {
        self.cp.store().gateway(id).unwrap()
    }
}

pub async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}
