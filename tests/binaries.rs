//! The real binaries, configured through TOML files and flags: the control plane listens, the
//! gateway enrolls and connects — and the gateway process holds no listening socket.
//!
//! The binaries are found next to this test's executable (`target/<profile>/`); the README's
//! test command builds them (`cargo nextest run --workspace`).

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tidegate::dev_tls::ThrowawayCa;
use tidegate::quickstart::Api;

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the workspace's tests (`cargo nextest run --workspace`)",
        path.display()
    );
    path
}

/// Kills the child when dropped, so a failed assertion leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Socket inodes of `pid` that are in the LISTEN state (TCP over IPv4 or IPv6).
fn listening_sockets(pid: u32) -> usize {
    let mut listening = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A") {
                listening.insert(fields[9].to_owned());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .filter(|inode| listening.contains(inode))
        .count()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_connect_and_the_gateway_never_listens() {
    tidegate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"]).unwrap();
    let token = "operator-token-for-the-binaries-test-0123456789";
    let port = free_port();
    let cp_config = format!(
        "listen = \"127.0.0.1:{port}\"\nid = \"cp-bin\"\ntls_cert = {:?}\ntls_key = {:?}\n\
         operator_token_file = {:?}\nheartbeat_interval_s = 1\n",
        write(dir.path(), "cert.pem", &ca.server_cert_pem),
        write(dir.path(), "key.pem", &ca.server_key_pem),
        write(dir.path(), "operator-token", token),
    );
    let cp_toml = write(dir.path(), "control-plane.toml", &cp_config);
    let cp = Guard(
        Command::new(binary("tidegate-control-plane"))
            .args(["--config".as_ref(), cp_toml.as_os_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = Api::new(&ca.ca_pem, port, token).unwrap();
    let mut created = None;
    for _ in 0..100 {
        if let Ok(v) = api.post("/api/v1/gateways", json!({"name": "bin"})).await {
            created = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = created.expect("control plane binary did not come up");
    let gateway_id = created["id"].as_str().unwrap().to_owned();
    let enrollment = created["enrollment_token"].as_str().unwrap().to_owned();

    let state = dir.path().join("gw-state");
    let gw_config = format!(
        "control_plane = \"wss://localhost:{port}\"\nstate_dir = {state:?}\n\
         system_roots = false\nca_bundle = {:?}\n",
        write(dir.path(), "ca.pem", &ca.ca_pem),
    );
    let gw_toml = write(dir.path(), "gateway.toml", &gw_config);
    let enroll = Command::new(binary("tidegate-gateway"))
        .args(["--config".as_ref(), gw_toml.as_os_str()])
        .arg("enroll")
        .env("TIDEGATE_ENROLLMENT_TOKEN", &enrollment)
        .output()
        .unwrap();
    assert!(
        enroll.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&enroll.stderr)
    );
    let gw = Guard(
        Command::new(binary("tidegate-gateway"))
            .args(["--config".as_ref(), gw_toml.as_os_str()])
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut online = false;
    for _ in 0..100 {
        let g = api
            .get(&format!("/api/v1/gateways/{gateway_id}"))
            .await
            .unwrap();
        if g["online"] == json!(true) {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online, "gateway binary did not come online");

    assert_eq!(
        listening_sockets(gw.0.id()),
        0,
        "the gateway holds a listening socket"
    );
    assert!(
        listening_sockets(cp.0.id()) >= 1,
        "the check cannot see the control plane's listener"
    );

    let entries: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, vec!["identity.json".to_owned()]);
    drop(gw);
    drop(cp);
}
