//! The real binaries, configured through TOML files and flags: the control plane listens, the
//! gateway enrolls and connects — and the gateway process holds no listening socket.
//!
//! The binaries are found next to this test's executable (`target/<profile>/`); the README's
//! test command builds them (`cargo nextest run --workspace`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
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

impl Guard {
    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An append-mode log file in `dir`.
fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

fn spawn_control_plane(dir: &Path, toml: &Path, filter: &str) -> Guard {
    Guard(
        Command::new(binary("tidegate-control-plane"))
            .args(["--config".as_ref(), toml.as_os_str()])
            .env("TIDEGATE_LOG", filter)
            .stdout(log_file(dir, "control-plane.log"))
            .stderr(log_file(dir, "control-plane.err"))
            .spawn()
            .unwrap(),
    )
}

/// The gateway runs from `dir/gw-home`.
fn spawn_gateway(dir: &Path, toml: &Path, filter: &str) -> Guard {
    Guard(
        Command::new(binary("tidegate-gateway"))
            .args(["--config".as_ref(), toml.as_os_str()])
            .arg("run")
            .current_dir(dir.join("gw-home"))
            .env("TIDEGATE_LOG", filter)
            .stdout(log_file(dir, "gateway.log"))
            .stderr(log_file(dir, "gateway.err"))
            .spawn()
            .unwrap(),
    )
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

/// A control plane binary and a gateway binary enrolled to it and online, configured through
/// TOML files in `dir`; each logs into its own file.
struct Deployment {
    cp: Guard,
    gw: Guard,
    dir: PathBuf,
    cp_toml: PathBuf,
    cp_filter: String,
    gw_toml: PathBuf,
    gw_filter: String,
    api: Api,
    gateway_id: String,
    cp_state: PathBuf,
    cp_log: PathBuf,
    gw_state: PathBuf,
    /// The gateway's working directory.
    gw_home: PathBuf,
    gw_log: PathBuf,
}

impl Deployment {
    /// Starts both with log filters `cp_log` and `gw_log` (`TIDEGATE_LOG`).
    async fn start(dir: &Path, cp_log: &str, gw_log: &str) -> Self {
        tidegate::install_crypto_provider();
        let ca = ThrowawayCa::new(&["localhost", "127.0.0.1"]).unwrap();
        let token = "operator-token-for-the-binaries-test-0123456789";
        let port = free_port();
        let cp_state = dir.join("cp-state");
        let cp_config = format!(
            "listen = \"127.0.0.1:{port}\"\nid = \"cp-bin\"\ntls_cert = {:?}\ntls_key = {:?}\n\
             operator_token_file = {:?}\nheartbeat_interval_s = 1\nstate_dir = {cp_state:?}\n",
            write(dir, "cert.pem", &ca.server_cert_pem),
            write(dir, "key.pem", &ca.server_key_pem),
            write(dir, "operator-token", token),
        );
        let cp_toml = write(dir, "control-plane.toml", &cp_config);
        let cp = spawn_control_plane(dir, &cp_toml, cp_log);
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

        let gw_home = dir.join("gw-home");
        std::fs::create_dir(&gw_home).unwrap();
        let gw_state = dir.join("gw-state");
        let gw_config = format!(
            "control_plane = \"wss://localhost:{port}\"\nstate_dir = {gw_state:?}\n\
             system_roots = false\nca_bundle = {:?}\n",
            write(dir, "ca.pem", &ca.ca_pem),
        );
        let gw_toml = write(dir, "gateway.toml", &gw_config);
        let enroll = Command::new(binary("tidegate-gateway"))
            .args(["--config".as_ref(), gw_toml.as_os_str()])
            .arg("enroll")
            .current_dir(&gw_home)
            .env("TIDEGATE_ENROLLMENT_TOKEN", &enrollment)
            .output()
            .unwrap();
        assert!(
            enroll.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&enroll.stderr)
        );
        let gw = spawn_gateway(dir, &gw_toml, gw_log);
        let deployment = Self {
            cp,
            gw,
            dir: dir.to_path_buf(),
            cp_toml,
            cp_filter: cp_log.to_owned(),
            gw_toml,
            gw_filter: gw_log.to_owned(),
            api,
            gateway_id,
            cp_state,
            cp_log: dir.join("control-plane.log"),
            gw_state,
            gw_home,
            gw_log: dir.join("gateway.log"),
        };
        let path = format!("/api/v1/gateways/{}", deployment.gateway_id);
        deployment
            .until("gateway online", &path, |g| g["online"] == json!(true))
            .await;
        deployment
    }

    /// Kills the control plane (SIGKILL) and starts it again on the same port and state.
    fn restart_control_plane(&mut self) {
        self.cp.kill();
        self.cp = spawn_control_plane(&self.dir, &self.cp_toml, &self.cp_filter);
    }

    /// Kills the gateway (SIGKILL) and starts it again with the same identity.
    fn restart_gateway(&mut self) {
        self.gw.kill();
        self.gw = spawn_gateway(&self.dir, &self.gw_toml, &self.gw_filter);
    }

    /// Polls `GET path` until `done` holds (at most 30 s); returns the answer.
    async fn until(
        &self,
        what: &str,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = None;
        for _ in 0..300 {
            if let Ok(value) = self.api.get(path).await {
                if done(&value) {
                    return value;
                }
                last = Some(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: not reached within 30 s; last seen {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_connect_and_the_gateway_never_listens() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::start(dir.path(), "info", "info").await;
    assert_eq!(
        listening_sockets(deployment.gw.0.id()),
        0,
        "the gateway holds a listening socket"
    );
    assert!(
        listening_sockets(deployment.cp.0.id()) >= 1,
        "the check cannot see the control plane's listener"
    );
    let entries: Vec<_> = std::fs::read_dir(&deployment.gw_state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, vec!["identity.json".to_owned()]);
}

/// Every needle of a canary value as it could sit in a file or a log: its text, and for numbers
/// their 2-, 4- and 8-byte forms in both byte orders where they fit.
struct Canary {
    column: &'static str,
    sql_type: &'static str,
    literal: &'static str,
    needles: Vec<Vec<u8>>,
}

fn canaries(round: &str) -> Vec<Canary> {
    let text = |s: &str| vec![s.as_bytes().to_vec()];
    let int = |v: i64, width: usize| {
        let mut needles = vec![v.to_string().into_bytes()];
        needles.push(v.to_be_bytes()[8 - width..].to_vec());
        needles.push(v.to_le_bytes()[..width].to_vec());
        needles
    };
    let (offset, tag) = if round == "load" {
        (0, "LD")
    } else {
        (1, "CD")
    };
    let leak = |s: &'static str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let owned = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        // Two bytes would match by chance in any binary file: the text form only.
        Canary {
            column: "c_small",
            sql_type: "smallint",
            literal: owned(format!("{}", -27_357 - offset)),
            needles: text(&format!("{}", -27_357 - offset)),
        },
        Canary {
            column: "c_int",
            sql_type: "integer",
            literal: owned(format!("{}", 1_735_773_571 + offset)),
            needles: int(1_735_773_571 + offset, 4),
        },
        Canary {
            column: "c_big",
            sql_type: "bigint",
            literal: owned(format!("{}", 7_357_735_773_577_357 + offset)),
            needles: int(7_357_735_773_577_357 + offset, 8),
        },
        Canary {
            column: "c_numeric",
            sql_type: "numeric(24, 6)",
            literal: owned(format!("98765432109.73{offset}573")),
            needles: text(&format!("98765432109.73{offset}573")),
        },
        Canary {
            column: "c_double",
            sql_type: "double precision",
            literal: owned(format!("7357.{offset}0625")),
            needles: {
                let v: f64 = format!("7357.{offset}0625").parse().unwrap();
                vec![
                    format!("7357.{offset}0625").into_bytes(),
                    v.to_be_bytes().to_vec(),
                    v.to_le_bytes().to_vec(),
                ]
            },
        },
        Canary {
            column: "c_text",
            sql_type: "text",
            literal: owned(format!("'CANARY-{tag}-TEXT-51c9e2'")),
            needles: text(&format!("CANARY-{tag}-TEXT-51c9e2")),
        },
        Canary {
            column: "c_varchar",
            sql_type: "varchar(40)",
            literal: owned(format!("'canary {tag} varchar ü7d'")),
            needles: text(&format!("canary {tag} varchar ü7d")),
        },
        Canary {
            column: "c_bytea",
            sql_type: "bytea",
            literal: owned(format!("'CANARY-{tag}-BYTES-0x9f'::bytea")),
            needles: text(&format!("CANARY-{tag}-BYTES-0x9f")),
        },
        Canary {
            column: "c_uuid",
            sql_type: "uuid",
            literal: owned(format!("'c0ffee00-7357-4a4a-8b8b-73577357735{offset}'")),
            needles: {
                let hex = format!("c0ffee0073574a4a8b8b73577357735{offset}");
                let bytes: Vec<u8> = (0..16)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                vec![
                    format!("c0ffee00-7357-4a4a-8b8b-73577357735{offset}").into_bytes(),
                    hex.into_bytes(),
                    bytes,
                ]
            },
        },
        Canary {
            column: "c_jsonb",
            sql_type: "jsonb",
            literal: owned(format!("'{{\"secret\": \"CANARY-{tag}-JSON-4b1\"}}'")),
            needles: text(&format!("CANARY-{tag}-JSON-4b1")),
        },
        Canary {
            column: "c_date",
            sql_type: "date",
            literal: leak(if offset == 0 {
                "'2173-05-07'"
            } else {
                "'2173-05-08'"
            }),
            needles: text(if offset == 0 {
                "2173-05-07"
            } else {
                "2173-05-08"
            }),
        },
        Canary {
            column: "c_ts",
            sql_type: "timestamptz",
            literal: owned(format!("'2161-03-0{} 07:35:57.735773+00'", 4 + offset)),
            needles: text(&format!("2161-03-0{} 07:35:57", 4 + offset)),
        },
        Canary {
            column: "c_array",
            sql_type: "text[]",
            literal: owned(format!("ARRAY['CANARY-{tag}-ARRAY-e0']")),
            needles: text(&format!("CANARY-{tag}-ARRAY-e0")),
        },
    ]
}

/// Where each needle appears among `files` (path, bytes).
fn find_needles(canaries: &[Canary], files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for canary in canaries {
        for needle in &canary.needles {
            for (path, bytes) in files {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!("{} ({needle:?}) in {path}", canary.column));
                }
            }
        }
    }
    found
}

/// Every regular file under `dir`, with its bytes.
fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path.display().to_string(), bytes));
            }
        }
    }
    files
}

/// The promise a buyer relies on, checked on the real binaries: a full load and a change data
/// capture run move rows holding unique canary values in every column type, and afterwards no
/// canary value is found in anything the control plane received (every opened frame from the
/// gateway, logged at `trace`), stored (its state directory: database, WAL, key file) or
/// logged; nor in the gateway's logs, its state directory or its working directory — where
/// the source's password must not appear either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_value_reaches_the_control_plane_or_the_gateways_disk() {
    tidegate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pg = tokio::task::spawn_blocking(tidegate_testkit::PgServer::start)
        .await
        .unwrap()
        .unwrap();
    let password = "CANARY-PASSWORD-d41f09b7";
    let load = canaries("load");
    let capture = canaries("capture");
    for database in ["src", "dst", "replica"] {
        pg.create_database(database).unwrap();
    }
    let columns: Vec<String> = load
        .iter()
        .map(|c| format!("{} {}", c.column, c.sql_type))
        .collect();
    let row = |canaries: &[Canary], id: u32| {
        let values: Vec<&str> = canaries.iter().map(|c| c.literal).collect();
        format!("INSERT INTO canary VALUES ({id}, {});", values.join(", "))
    };
    pg.execute(
        "src",
        &format!(
            "CREATE ROLE reader LOGIN REPLICATION PASSWORD '{password}';
             CREATE TABLE canary (id int PRIMARY KEY, {});
             {}
             ALTER TABLE canary OWNER TO reader;
             GRANT CREATE ON DATABASE src TO reader;",
            columns.join(", "),
            row(&load, 1),
        ),
    )
    .unwrap();

    // The control plane logs every frame it opens.
    let deployment =
        Deployment::start(dir.path(), "debug,tidegate_control_plane=trace", "debug").await;
    let (api, gateway_id) = (&deployment.api, &deployment.gateway_id);
    let connection = |name: &str, database: &str, user: &str, password: &str| {
        json!({"name": name, "kind": "postgres",
               "settings": {"host": "127.0.0.1", "port": pg.port().to_string(),
                            "database": database, "user": user, "sslmode": "disable"},
               "secrets": {"password": password}})
    };
    let source = api
        .post(
            "/api/v1/connections",
            connection("source", "src", "reader", password),
        )
        .await
        .unwrap();
    for (task_type, database) in [("full_load", "dst"), ("change_data_capture", "replica")] {
        let target = api
            .post(
                "/api/v1/connections",
                connection(database, database, pg.user(), pg.password()),
            )
            .await
            .unwrap();
        let task = api
            .post(
                "/api/v1/tasks",
                json!({"name": task_type, "gateway_id": gateway_id, "task_type": task_type,
                       "source_id": source["id"], "target_id": target["id"],
                       "tables": {"include": ["public.canary"]}}),
            )
            .await
            .unwrap();
        let task_id = task["id"].as_str().unwrap().to_owned();
        let run = api
            .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
            .await
            .unwrap();
        let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());
        if task_type == "full_load" {
            deployment
                .until("full load completed", &run_path, |r| {
                    r["state"] == json!("Completed")
                })
                .await;
        } else {
            deployment
                .until("initial load of the capture", &run_path, |r| {
                    r["replication"]["phase"] == json!("Streaming")
                })
                .await;
            pg.execute("src", &row(&capture, 2)).unwrap();
            deployment
                .until("change applied", &run_path, |r| {
                    r["replication"]["rows"] == json!(1)
                })
                .await;
            api.post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
                .await
                .unwrap();
            deployment
                .until("capture stopped", &run_path, |r| {
                    r["state"] == json!("Stopped")
                })
                .await;
        }
    }
    // The rows did travel, canaries and all.
    let digest = "SELECT string_agg(c_text || c_jsonb::text, ',' ORDER BY id) FROM canary";
    assert_eq!(
        pg.execute("dst", digest).unwrap().trim(),
        "CANARY-LD-TEXT-51c9e2{\"secret\": \"CANARY-LD-JSON-4b1\"}"
    );
    assert_eq!(
        pg.execute("replica", digest).unwrap(),
        pg.execute("src", digest).unwrap()
    );
    let Deployment {
        cp,
        gw,
        cp_state,
        cp_log,
        gw_state,
        gw_home,
        gw_log,
        ..
    } = deployment;
    drop((gw, cp));
    let log = |path: &Path| (path.display().to_string(), std::fs::read(path).unwrap());
    let cp_files: Vec<(String, Vec<u8>)> = read_tree(&cp_state)
        .into_iter()
        .chain([log(&cp_log), log(&dir.path().join("control-plane.err"))])
        .collect();
    let gw_files: Vec<(String, Vec<u8>)> = read_tree(&gw_state)
        .into_iter()
        .chain(read_tree(&gw_home))
        .chain([log(&gw_log), log(&dir.path().join("gateway.err"))])
        .collect();
    // The capture could see: the frames are in the log, the runs in the database.
    let cp_log_text = String::from_utf8_lossy(&log(&cp_log).1).into_owned();
    assert!(
        cp_log_text.contains("from gateway") && cp_log_text.contains("Replication"),
        "the control plane's log holds no opened frame"
    );
    let database: Vec<u8> = cp_files
        .iter()
        .filter(|(path, _)| path.contains("metadata.db"))
        .flat_map(|(_, bytes)| bytes.clone())
        .collect();
    assert!(
        database.windows(14).any(|w| w == b"public.canary\""),
        "the store holds no run of the table"
    );

    let all: Vec<Canary> = load.into_iter().chain(capture).collect();
    // The needles do find the values where they are.
    let dump = pg
        .execute("replica", "SELECT *, encode(c_bytea, 'escape') FROM canary")
        .unwrap();
    let dump = [("replica".to_owned(), dump.into_bytes())];
    for canary in &all {
        assert!(
            !find_needles(std::slice::from_ref(canary), &dump).is_empty(),
            "{} = {} not found in the replica: the needles are wrong",
            canary.column,
            canary.literal
        );
    }
    let leaks = find_needles(&all, &cp_files);
    assert!(
        leaks.is_empty(),
        "row values on the control plane's side: {leaks:#?}"
    );
    let leaks = find_needles(&all, &gw_files);
    assert!(
        leaks.is_empty(),
        "row values in the gateway's logs or disk: {leaks:#?}"
    );
    let secret = [Canary {
        column: "source password",
        sql_type: "",
        literal: "",
        needles: vec![password.as_bytes().to_vec()],
    }];
    for files in [&cp_files, &gw_files] {
        let leaks = find_needles(&secret, files);
        assert!(
            leaks.is_empty(),
            "the source's password in the clear: {leaks:#?}"
        );
    }
    assert_eq!(
        read_tree(&gw_home).len(),
        0,
        "the gateway wrote into its working directory"
    );
}

/// SIGKILL and restart of each real binary during a change data capture run: the gateway
/// carries on without the control plane, and the control plane finds the run still running
/// when it comes back; a gateway killed mid-run comes back without it, the control plane
/// marks the run failed (resumable), and the resumed run catches up from the target's
/// checkpoint. Source and target are identical after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_binaries_lose_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let pg = tokio::task::spawn_blocking(tidegate_testkit::PgServer::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("src").unwrap();
    pg.create_database("dst").unwrap();
    pg.execute(
        "src",
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 500) g;",
    )
    .unwrap();
    let mut deployment = Deployment::start(dir.path(), "info", "info").await;
    let connection = |database: &str| {
        json!({"name": database, "kind": "postgres",
               "settings": {"host": "127.0.0.1", "port": pg.port().to_string(),
                            "database": database, "user": pg.user(), "sslmode": "disable"},
               "secrets": {"password": pg.password()}})
    };
    let api = &deployment.api;
    let source = api
        .post("/api/v1/connections", connection("src"))
        .await
        .unwrap();
    let target = api
        .post("/api/v1/connections", connection("dst"))
        .await
        .unwrap();
    let task = api
        .post(
            "/api/v1/tasks",
            json!({"name": "orders", "gateway_id": deployment.gateway_id,
                   "task_type": "change_data_capture",
                   "source_id": source["id"], "target_id": target["id"]}),
        )
        .await
        .unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    let run = api
        .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
        .await
        .unwrap();
    let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());
    deployment
        .until("streaming", &run_path, |r| {
            r["replication"]["phase"] == json!("Streaming")
        })
        .await;
    let digest = |database: &str| {
        pg.execute(
            database,
            "SELECT count(*), sum(id), sum(amount), sum(length(note)) FROM orders",
        )
        .unwrap()
    };
    let mut next = 1000;
    let mut change = || {
        pg.execute(
            "src",
            &format!(
                "INSERT INTO orders SELECT g, g, 'n' || g FROM generate_series({next}, {}) g;
                 UPDATE orders SET amount = amount + 1 WHERE id % 7 = {};
                 DELETE FROM orders WHERE id % 19 = {};",
                next + 49,
                next % 7,
                next % 19
            ),
        )
        .unwrap();
        next += 50;
    };
    let in_sync = async |what: &str| {
        let expected = digest("src");
        for _ in 0..300 {
            if digest("dst") == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: source and target differ after 30 s");
    };

    // The control plane dies: changes keep flowing; back, it finds the run running.
    change();
    deployment.cp.kill();
    change();
    in_sync("changes while the control plane is down").await;
    deployment.restart_control_plane();
    change();
    let gateway_path = format!("/api/v1/gateways/{}", deployment.gateway_id);
    deployment
        .until("gateway back online", &gateway_path, |g| {
            g["online"] == json!(true)
        })
        .await;
    in_sync("changes after the control plane restarted").await;
    let rows = digest("src");
    deployment
        .until(
            "reports reach the restarted control plane",
            &run_path,
            |r| r["state"] == json!("Running") && r["replication"]["rows"].as_u64() > Some(0),
        )
        .await;

    // The gateway dies mid-run: its runs were in its memory only. The control plane marks
    // the run failed once the new gateway process connects; the resumed run catches up.
    deployment.restart_gateway();
    change();
    let failed = deployment
        .until("the lost run is failed", &run_path, |r| {
            r["state"] == json!("Failed")
        })
        .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("gateway lost the run"),
        "{failed}"
    );
    deployment
        .api
        .post(&format!("{run_path}/resume"), json!({}))
        .await
        .unwrap();
    change();
    in_sync("changes after the gateway restarted").await;
    assert_ne!(digest("src"), rows, "the workload changed nothing");
    deployment
        .until("running again", &run_path, |r| {
            r["state"] == json!("Running")
        })
        .await;
}
