//! How long a gateway takes to get from a TCP connect to an authenticated, sealed channel.
//!
//! Setup (not measured): a throwaway CA, a control plane on `127.0.0.1:0` with an operator
//! token, one gateway created through the REST API and enrolled. Each iteration then runs
//! [`tidegate::gateway::dial_once`]: TCP connect, TLS, the TLS-bound JWT, the WSS upgrade and
//! the channel-key handshake, and drops the link.
//!
//! Besides criterion's estimate, a bench run (not `--test` or `--list`) dials [`DIALS`] more
//! times in a row and prints the latency percentiles to stderr.
//!
//! Run with `cargo bench --bench handshake`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tidegate::control_plane::{ControlPlane, ControlPlaneConfig, RunningControlPlane};
use tidegate::dev_tls::ThrowawayCa;
use tidegate::gateway::{ClientTls, GatewayConfig, Identity};
use tidegate::proto::SecretString;
use tidegate::quickstart::Api;
use tokio::runtime::Runtime;

/// Sequential dials timed for the percentiles.
const DIALS: usize = 200;

const OPERATOR_TOKEN: &str = "bench-operator-token-not-a-secret";

/// A control plane and one enrolled gateway that can dial it.
struct Fixture {
    control_plane: RunningControlPlane,
    config: GatewayConfig,
    identity: Identity,
    // Holds the gateway's state directory until the end.
    _state_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"])?;
        let mut cp_config = ControlPlaneConfig::new(ca.server_tls());
        cp_config.listen = ([127, 0, 0, 1], 0).into();
        cp_config.operator_tokens = vec![SecretString::new(OPERATOR_TOKEN)];
        let control_plane = ControlPlane::start(cp_config).await?;
        let port = control_plane.local_addr().port();

        let api = Api::new(&ca.ca_pem, port, OPERATOR_TOKEN)?;
        let created = api
            .post("/api/v1/gateways", json!({"name": "bench gateway"}))
            .await?;
        let token = created
            .get("enrollment_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow::anyhow!("no enrollment_token in {created}"))?;

        let state_dir = tempfile::tempdir()?;
        let mut config = GatewayConfig::new(format!("wss://localhost:{port}"), state_dir.path());
        config.tls = ClientTls {
            system_roots: false,
            ca_bundle_pem: Some(ca.ca_pem.clone()),
            pinned_sha256: Vec::new(),
        };
        let identity = tidegate::gateway::enroll(&config, token).await?;
        Ok(Self {
            control_plane,
            config,
            identity,
            _state_dir: state_dir,
        })
    }

    /// One dial, the link dropped at once.
    async fn dial(&self) {
        let (link, welcome) = tidegate::gateway::dial_once(&self.config, &self.identity)
            .await
            .expect("dial the control plane");
        black_box(&welcome);
        drop(link);
    }
}

fn handshake(c: &mut Criterion) {
    tidegate::install_crypto_provider();
    let rt = Runtime::new().expect("tokio runtime");
    let fixture = rt
        .block_on(Fixture::start())
        .expect("control plane and enrolled gateway");

    let mut group = c.benchmark_group("handshake");
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("dial_once", |b| b.iter(|| rt.block_on(fixture.dial())));
    group.finish();

    // Criterion runs each benchmark once under `cargo test --benches`; skip the extra dials
    // there, and when only listing.
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        let mut samples: Vec<Duration> = Vec::with_capacity(DIALS);
        for _ in 0..DIALS {
            let started = Instant::now();
            rt.block_on(fixture.dial());
            samples.push(started.elapsed());
        }
        samples.sort_unstable();
        let ms = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        eprintln!(
            "handshake/dial_once over {DIALS} sequential dials: p50 {:.2} ms, p90 {:.2} ms, \
             p99 {:.2} ms, min {:.2} ms, max {:.2} ms",
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(0.0),
            ms(1.0),
        );
    }

    rt.block_on(fixture.control_plane.shutdown());
}

criterion_group!(benches, handshake);
criterion_main!(benches);
