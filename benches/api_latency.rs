//! REST API latency under a steady open-loop load: requests are issued on a fixed schedule
//! (default 500 per second) whatever the answers' speed, and each latency is measured from the
//! moment its request was due, so a stall shows up in the percentiles instead of slowing the
//! load down (no coordinated omission).
//!
//! Setup (not measured): a throwaway CA and a control plane on loopback with its default
//! embedded metadata store (SQLite), a user who owns the default data space and is logged in,
//! and a few connections, a gateway and a task. The mix is 80% reads (list a page of
//! connections, get a gateway, get a task) and 20% writes (create a connection with a sealed
//! secret, change a task), over HTTPS with the user's session token: every request looks the
//! session up, reads the user's roles from the store and asks the role matrix, and every write
//! appends an audit event.
//!
//! `cargo bench --bench api_latency -- [RATE] [SECONDS]` prints p50 / p90 / p99 / max per kind
//! and overall. The target on a 2-core machine: p99 ≤ 10 ms at 500 requests per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tidegate::client::Client;
use tidegate::control_plane::{ControlPlane, ControlPlaneConfig};
use tidegate::dev_tls::ThrowawayCa;
use tidegate::proto::SecretString;
use tokio::sync::Mutex;

const ADMIN_PASSWORD: &str = "bench admin password, not a secret";
const USER_PASSWORD: &str = "bench user password, not a secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ListConnections,
    GetGateway,
    GetTask,
    CreateConnection,
    UpdateTask,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:>18}: n={:>6} p50={:>7.2} ms p90={:>7.2} ms p99={:>7.2} ms max={:>8.2} ms",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

fn main() -> anyhow::Result<()> {
    tidegate::install_crypto_provider();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a short smoke version.
    let smoke = std::env::args().any(|a| a == "--test" || a == "--list");
    let rate: u32 = args.first().map_or(Ok(500), |a| a.parse())?;
    let seconds: u64 = args.get(1).map_or(Ok(20), |a| a.parse())?;
    let (rate, seconds) = if smoke { (50, 1) } else { (rate, seconds) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(rate, seconds))
}

async fn run(rate: u32, seconds: u64) -> anyhow::Result<()> {
    let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"])?;
    let mut config = ControlPlaneConfig::new(ca.server_tls());
    config.listen = ([127, 0, 0, 1], 0).into();
    config.bootstrap_admin = Some(("admin".into(), SecretString::new(ADMIN_PASSWORD)));
    let control_plane = ControlPlane::start(config).await?;
    let url = format!("https://localhost:{}", control_plane.local_addr().port());
    let anonymous = Client::new(&url, Some(&ca.ca_pem))?;
    let login = async |username: &str, password: &str| -> anyhow::Result<Client> {
        let answer = anonymous
            .post(
                "/api/v1/auth/login",
                &json!({"username": username, "password": password}),
            )
            .await?;
        let token = answer["token"].as_str().unwrap_or_default();
        Ok(anonymous.clone().with_token(token))
    };
    // The admin makes a user who owns the default data space and may use the integration
    // services; the load runs as that user.
    let admin = login("admin", ADMIN_PASSWORD).await?;
    let user = admin
        .post(
            "/api/v1/users",
            &json!({"username": "bench", "password": USER_PASSWORD}),
        )
        .await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_owned();
    admin
        .put(
            &format!("/api/v1/users/{user_id}/system-roles/data_services_contributor"),
            &json!({}),
        )
        .await?;
    let spaces = admin.get("/api/v1/spaces").await?;
    let default_space = spaces["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["name"] == "Default"))
        .and_then(|s| s["id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no Default data space"))?
        .to_owned();
    admin
        .put(
            &format!("/api/v1/spaces/{default_space}/members/{user_id}/roles/owner"),
            &json!({}),
        )
        .await?;
    let client = login("bench", USER_PASSWORD).await?;

    // Fixture: some connections, a gateway and a task to read.
    let mut connection_ids = Vec::new();
    for i in 0..50 {
        let created = client
            .post(
                "/api/v1/connections",
                &json!({"name": format!("db {i}"), "kind": "postgres",
                        "settings": {"host": "db.internal", "database": "sales", "user": "reader"},
                        "secrets": {"password": "bench-password"}}),
            )
            .await?;
        connection_ids.push(created["id"].as_str().unwrap_or_default().to_owned());
    }
    let gateway = client
        .post("/api/v1/gateways", &json!({"name": "bench gateway"}))
        .await?;
    let gateway_id = gateway["id"].as_str().unwrap_or_default().to_owned();
    // Writes spread over 20 tasks, as edits by different people would be.
    let mut task_ids = Vec::new();
    for i in 0..20 {
        let task = client
            .post(
                "/api/v1/tasks",
                &json!({"name": format!("bench task {i}"), "gateway_id": gateway_id,
                        "source_id": connection_ids[0], "target_id": connection_ids[1]}),
            )
            .await?;
        task_ids.push(task["id"].as_str().unwrap_or_default().to_owned());
    }

    // Warm the connection pool.
    for _ in 0..20 {
        client.get("/api/v1/connections").await?;
    }

    let samples: Arc<Mutex<Vec<(Kind, Duration)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let interval = Duration::from_secs(1) / rate;
    let total = u64::from(rate) * seconds;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let kind = match i % 10 {
            0 => Kind::CreateConnection,
            5 => Kind::UpdateTask,
            1 | 4 | 7 => Kind::ListConnections,
            2 | 6 | 9 => Kind::GetGateway,
            _ => Kind::GetTask,
        };
        let client = client.clone();
        let (samples, errors) = (samples.clone(), errors.clone());
        let gateway_id = gateway_id.clone();
        let task_id = task_ids[(i as usize / 10) % task_ids.len()].clone();
        handles.push(tokio::spawn(async move {
            let result = match kind {
                Kind::ListConnections => client.get("/api/v1/connections").await,
                Kind::GetGateway => client.get(&format!("/api/v1/gateways/{gateway_id}")).await,
                Kind::GetTask => client.get(&format!("/api/v1/tasks/{task_id}")).await,
                Kind::UpdateTask => {
                    client
                        .patch(
                            &format!("/api/v1/tasks/{task_id}"),
                            &json!({"schedule": if i % 20 == 5 { json!(null) } else { json!("0 3 * * *") }}),
                        )
                        .await
                }
                Kind::CreateConnection => {
                    client
                        .post(
                            "/api/v1/connections",
                            &json!({"name": format!("new {i}"), "kind": "postgres",
                                    "settings": {"host": "db.internal", "database": "sales", "user": "reader"},
                                    "secrets": {"password": "bench-password"}}),
                        )
                        .await
                }
            };
            let latency = due.elapsed();
            match result {
                Ok(_) => samples.lock().await.push((kind, latency)),
                Err(e) => errors.lock().await.push(e.to_string()),
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let wall = started.elapsed();
    let samples = std::mem::take(&mut *samples.lock().await);
    let errors = errors.lock().await;
    println!(
        "api_latency: {total} requests at {rate}/s over {:.1} s (achieved {:.0}/s), {} errors",
        wall.as_secs_f64(),
        samples.len() as f64 / wall.as_secs_f64(),
        errors.len()
    );
    for kind in [
        Kind::ListConnections,
        Kind::GetGateway,
        Kind::GetTask,
        Kind::CreateConnection,
        Kind::UpdateTask,
    ] {
        report(
            &format!("{kind:?}"),
            samples
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, d)| *d)
                .collect(),
        );
    }
    report("all", samples.iter().map(|(_, d)| *d).collect());
    if let Some(first) = errors.first() {
        println!("first error: {first}");
    }
    control_plane.shutdown().await;
    anyhow::ensure!(errors.is_empty(), "{} requests failed", errors.len());
    Ok(())
}
