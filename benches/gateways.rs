//! How many gateways one control plane holds: real TLS, WSS, TLS-bound JWT and channel-key
//! handshake per gateway, heartbeats every 10 s, on loopback.
//!
//! The control plane runs in a child process (this binary started again with
//! `TIDEGATE_BENCH_CONTROL_PLANE` set), with its default embedded SQLite store, so that its
//! memory is its own. The parent enrolls gateways through the REST API (each makes its own
//! identity key), then adds them in steps (`TIDEGATE_BENCH_STEPS`, default
//! `1000,2500,5000,10000`). Each simulated gateway is one dialled link that sends a heartbeat
//! every 10 s (phases spread evenly) and answers the control plane's heartbeats and commands.
//! After each step it waits one interval, then measures for `TIDEGATE_BENCH_HOLD_SECONDS`
//! (default 30): heartbeat round trips (p50, p99, max), links lost, and the control plane's
//! resident memory (`VmRSS`) against its resident memory before the first gateway connected.
//!
//! Run with `cargo bench --bench gateways`. The target on a 2-core machine: at least 10,000
//! gateways with heartbeat p99 under 100 ms, at most 50 KiB per idle gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tidegate::control_plane::{ControlPlane, ControlPlaneConfig, ServerTls};
use tidegate::dev_tls::ThrowawayCa;
use tidegate::gateway::{ClientTls, GatewayConfig, Identity};
use tidegate::proto::{Command, CommandOutcome, CommandResult, Heartbeat, Message, SecretString};
use tidegate::quickstart::Api;
use tokio::sync::{Mutex, Semaphore};

const OPERATOR_TOKEN: &str = "bench-operator-token-not-a-secret";
const HEARTBEAT: Duration = Duration::from_secs(10);

fn main() {
    tidegate::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Ok(port) = std::env::var("TIDEGATE_BENCH_CONTROL_PLANE") {
        runtime.block_on(control_plane(port.parse().expect("a port")));
        return;
    }
    runtime.block_on(bench());
}

/// The child: a control plane until killed.
async fn control_plane(port: u16) {
    let cert = std::env::var("TIDEGATE_BENCH_CERT").expect("certificate");
    let key = std::env::var("TIDEGATE_BENCH_KEY").expect("key");
    let mut config = ControlPlaneConfig::new(ServerTls::from_pem(cert, key));
    config.listen = ([127, 0, 0, 1], port).into();
    config.operator_tokens = vec![SecretString::new(OPERATOR_TOKEN)];
    config.heartbeat_interval = HEARTBEAT;
    let _running = ControlPlane::start(config)
        .await
        .expect("the control plane starts");
    std::future::pending::<()>().await;
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench() {
    let steps: Vec<usize> = std::env::var("TIDEGATE_BENCH_STEPS")
        .unwrap_or_else(|_| "1000,2500,5000,10000".to_owned())
        .split(',')
        .map(|s| s.trim().parse().expect("a number of gateways"))
        .collect();
    let hold = Duration::from_secs(
        std::env::var("TIDEGATE_BENCH_HOLD_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let most = steps.iter().copied().max().unwrap_or(0);
    let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"]).expect("a CA");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Child(
        std::process::Command::new(std::env::current_exe().expect("this binary"))
            .env("TIDEGATE_BENCH_CONTROL_PLANE", port.to_string())
            .env("TIDEGATE_BENCH_CERT", &ca.server_cert_pem)
            .env("TIDEGATE_BENCH_KEY", &ca.server_key_pem)
            .spawn()
            .expect("the control plane process"),
    );
    let pid = child.0.id();
    let api = Api::new(&ca.ca_pem, port, OPERATOR_TOKEN).expect("an API client");
    for _ in 0..200 {
        if api.get("/api/v1/gateways?limit=1").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Enrollment, not measured.
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a directory");
    let mut identities: Vec<(GatewayConfig, Identity)> = Vec::with_capacity(most);
    let enrolling = Arc::new(Semaphore::new(16));
    let mut pending = Vec::with_capacity(most);
    for i in 0..most {
        let created = api
            .post("/api/v1/gateways", json!({"name": format!("bench {i}")}))
            .await
            .expect("a gateway");
        let token = created["enrollment_token"]
            .as_str()
            .expect("a token")
            .to_owned();
        let mut config = GatewayConfig::new(
            format!("wss://localhost:{port}"),
            dir.path().join(i.to_string()),
        );
        config.tls = ClientTls {
            system_roots: false,
            ca_bundle_pem: Some(ca.ca_pem.clone()),
            pinned_sha256: Vec::new(),
        };
        let permit = enrolling.clone().acquire_owned().await.expect("a permit");
        pending.push(tokio::spawn(async move {
            let identity = tidegate::gateway::enroll(&config, &token)
                .await
                .expect("enrollment");
            drop(permit);
            (config, identity)
        }));
    }
    for handle in pending {
        identities.push(handle.await.expect("an enrolled gateway"));
    }
    eprintln!(
        "{most} gateways enrolled in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_kib = resident_kib(pid);
    let rtts = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let lost = Arc::new(AtomicU64::new(0));
    let mut connected = 0;
    let mut best = None;
    println!(
        "gateways: heartbeats every {} s, control plane resident before any link: {} MiB",
        HEARTBEAT.as_secs(),
        base_kib / 1024
    );
    for &step in &steps {
        let dialling = Instant::now();
        let dials = Arc::new(Semaphore::new(32));
        let mut ready = Vec::new();
        let batch: Vec<(GatewayConfig, Identity)> = identities.drain(..step - connected).collect();
        for (index, (config, identity)) in batch.into_iter().enumerate() {
            let (rtts, lost) = (rtts.clone(), lost.clone());
            let permit = dials.clone().acquire_owned().await.expect("a permit");
            let phase = HEARTBEAT.mul_f64((connected + index) as f64 / most as f64);
            ready.push(tokio::spawn(async move {
                let (link, _) = tidegate::gateway::dial_once(&config, &identity)
                    .await
                    .expect("a link");
                drop(permit);
                tokio::spawn(simulate(link, phase, rtts, lost));
            }));
        }
        for handle in ready {
            handle.await.expect("a dialled gateway");
        }
        let dial_s = dialling.elapsed().as_secs_f64();
        let added = step - connected;
        connected = step;
        // Settle one interval, then measure.
        tokio::time::sleep(HEARTBEAT).await;
        rtts.lock().await.clear();
        let lost_before = lost.load(Ordering::Relaxed);
        tokio::time::sleep(hold).await;
        let mut samples = std::mem::take(&mut *rtts.lock().await);
        samples.sort();
        let kib = resident_kib(pid);
        let per_gateway = kib.saturating_sub(base_kib) as f64 / step as f64;
        let ms = |p: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
        };
        let p99 = ms(99.0);
        let lost_now = lost.load(Ordering::Relaxed) - lost_before;
        println!(
            "  {step:>6} gateways (+{added} dialled in {dial_s:.1} s): {} heartbeats, p50 {:.2} ms, \
             p99 {p99:.2} ms, max {:.2} ms, {lost_now} links lost; control plane {} MiB, \
             {per_gateway:.1} KiB per gateway",
            samples.len(),
            ms(50.0),
            ms(100.0),
            kib / 1024,
        );
        if p99 < 100.0 && lost_now == 0 {
            best = Some((step, per_gateway));
        }
    }
    match best {
        Some((n, kib)) => {
            println!("  largest held with heartbeat p99 < 100 ms: {n} gateways, {kib:.1} KiB each")
        }
        None => println!("  no step held with heartbeat p99 < 100 ms"),
    }
    drop(child);
}

/// One gateway on an established link: a heartbeat every interval from `phase` on, round
/// trips recorded; the control plane's heartbeats and commands answered.
async fn simulate<T: tidegate::link::Transport>(
    link: tidegate::link::Link<T>,
    phase: Duration,
    rtts: Arc<Mutex<Vec<Duration>>>,
    lost: Arc<AtomicU64>,
) {
    let (mut tx, mut rx) = link.split();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, HEARTBEAT);
    let mut sent: Option<(u64, Instant)> = None;
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            received = rx.recv() => {
                let reply = match received {
                    Ok(Message::Heartbeat(h)) => Some(Message::HeartbeatAck(h)),
                    Ok(Message::HeartbeatAck(h)) => {
                        if let Some((_, at)) = sent.take_if(|(id, _)| *id == h.id) {
                            rtts.lock().await.push(at.elapsed());
                        }
                        None
                    }
                    Ok(Message::Command { id, command }) => {
                        let outcome = match command {
                            Command::ListRuns => Ok(CommandOutcome::Runs(Vec::new())),
                            _ => Ok(CommandOutcome::Accepted),
                        };
                        Some(Message::CommandResult(CommandResult { id, outcome }))
                    }
                    Ok(_) => None,
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                if let Some(reply) = reply
                    && tx.send(&reply).await.is_err()
                {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = ticker.tick() => {
                next_id += 1;
                sent = Some((next_id, Instant::now()));
                if tx.send(&Message::Heartbeat(Heartbeat { id: next_id })).await.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
