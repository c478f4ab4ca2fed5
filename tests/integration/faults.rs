//! Faults injected into a running change data capture task, with real parts: a loopback TCP
//! proxy between the gateway and the control plane that cuts and stalls the link, a restart of
//! the source PostgreSQL, and a target that starts refusing writes. After each, the task has
//! recovered (or failed with a clear error and been resumed) and the target equals the source.
//! Killing and restarting the real binaries is in `binaries.rs`.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidegate_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common::Harness;

/// A loopback TCP proxy that can cut every connection through it, or stall them (hold every
/// byte, connections open) until released.
struct Proxy {
    address: SocketAddr,
    stalled: watch::Sender<bool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stalled, _) = watch::channel(false);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let proxy = Self {
            address,
            stalled,
            generation: generation.clone(),
            stop: stop.clone(),
        };
        let stalled = proxy.stalled.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => return,
                };
                let Ok((downstream, _)) = accepted else {
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let cut = generation.lock().unwrap().child_token();
                let (down_read, down_write) = downstream.into_split();
                let (up_read, up_write) = upstream.into_split();
                tokio::spawn(pump(down_read, up_write, stalled.clone(), cut.clone()));
                tokio::spawn(pump(up_read, down_write, stalled.clone(), cut));
            }
        });
        proxy
    }

    /// Closes every connection open now; new ones pass.
    fn cut(&self) {
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().unwrap().cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
    cut: CancellationToken,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = cut.cancelled() => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        tokio::select! {
            held = stalled.wait_for(|on| !on) => if held.is_err() { return },
            () = cut.cancelled() => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_data_capture_survives_link_faults_a_source_restart_and_a_refusing_target() {
    let harness = Harness::start().await;
    let mut pg = common::source_and_target(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 500) g;",
    )
    .await;
    let proxy = Proxy::start(harness.cp.local_addr()).await;
    let (gateway_id, mut config, identity) = harness.enrolled("gw").await;
    config.control_plane = format!("wss://localhost:{}", proxy.address.port());
    let gateway = harness.online(&gateway_id, config, identity).await;

    let (_, run) = harness.start_orders_capture(&gateway_id, &pg).await;
    let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());
    let run_state = async || harness.api.get(&run_path).await.unwrap();
    common::until("streaming", async || {
        (run_state().await["replication"]["phase"] == json!("Streaming")).then_some(())
    })
    .await;
    let mut next = 1000;
    let mut change = |pg: &PgServer| {
        pg.execute(
            "src",
            &format!(
                "INSERT INTO orders SELECT g, g * 1.25, 'note ' || g \
                 FROM generate_series({next}, {}) g;
                 UPDATE orders SET amount = amount + 1 WHERE id % 13 = {};
                 DELETE FROM orders WHERE id % 17 = {};",
                next + 99,
                next % 13,
                next % 17
            ),
        )
        .unwrap();
        next += 100;
    };
    let in_sync = async |pg: &PgServer, what: &str| {
        let expected = common::orders_digest(pg, "src");
        common::until(what, async || {
            (common::orders_digest(pg, "dst") == expected).then_some(())
        })
        .await;
    };

    // The link is cut: the gateway dials again; the task never stopped.
    change(&pg);
    proxy.cut();
    change(&pg);
    in_sync(&pg, "in sync after the link was cut").await;
    common::wait_for(async || harness.gateway(&gateway_id).await.online).await;

    // The link stalls past three heartbeats: both sides give it up; the gateway dials again
    // once bytes flow. Changes keep landing meanwhile (the data path does not use the link).
    proxy.stall(true);
    change(&pg);
    in_sync(&pg, "in sync while the link stalls").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !harness.cp.gateway_online(&gateway_id),
        "a stalled link was kept"
    );
    proxy.stall(false);
    proxy.cut();
    common::until("online again after the stall", async || {
        harness.cp.gateway_online(&gateway_id).then_some(())
    })
    .await;
    assert_eq!(run_state().await["state"], json!("Running"));

    // The source restarts: the task retries from the target's checkpoint by itself.
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    change(&pg);
    in_sync(&pg, "in sync after the source restarted").await;
    let after_restart = common::until("the retry is over", async || {
        let run = run_state().await;
        (run["replication"]["phase"] == json!("Streaming")
            && run["replication"]["warning"].is_null())
        .then_some(run)
    })
    .await;
    assert_eq!(after_restart["state"], json!("Running"), "{after_restart}");

    // The target starts refusing writes: the run fails, saying why; once the target takes
    // writes again, the run resumes where the target is.
    pg.execute(
        "dst",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'orders are read-only for maintenance'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON orders \
         FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .unwrap();
    change(&pg);
    let failed = common::until("the run fails", async || {
        let run = run_state().await;
        (run["state"] == json!("Failed")).then_some(run)
    })
    .await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("read-only for maintenance") && error.contains("orders"),
        "{failed}"
    );
    pg.execute("dst", "DROP TRIGGER refuse ON orders;").unwrap();
    change(&pg);
    harness
        .api
        .post(&format!("{run_path}/resume"), json!({}))
        .await
        .unwrap();
    in_sync(&pg, "in sync after the resume").await;
    assert_eq!(run_state().await["state"], json!("Running"));
    gateway.shutdown().await;
}
