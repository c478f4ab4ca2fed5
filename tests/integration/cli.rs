//! The `tidegate` command line against a real control plane and gateway: log in with an
//! operator token, register a gateway, create connections (a secret from the environment, never
//! echoed), create a task and run it with `--follow` until it completes; the saved session is
//! private to its owner and goes away on logout.
//!
//! The binary is found next to this test's executable; the README's test command builds it.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Harness, OPERATOR};
use serde_json::Value;
use tidegate::gateway::{Gateway, LinkState};

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("tidegate");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs `tidegate` with its session kept in `config_dir`.
fn tidegate(config_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env("TIDEGATE_CONFIG_DIR", config_dir)
        .env_remove("TIDEGATE_URL")
        .env_remove("TIDEGATE_TOKEN")
        .env_remove("TIDEGATE_CA_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn ok_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operate_a_task_from_the_command_line() {
    let h = Harness::start().await;
    let config_dir = h.dir.path().join("cli");
    let ca_file = h.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &h.ca.ca_pem).unwrap();
    let url = format!("https://localhost:{}", h.cp.local_addr().port());
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let (dir, args, env): (PathBuf, Vec<String>, Vec<(String, String)>) = (
            config_dir.clone(),
            args.iter().map(|a| (*a).to_owned()).collect(),
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        // The CLI blocks on its own runtime; keep this test's workers free.
        tokio::task::block_in_place(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            tidegate(&dir, &args, &env)
        })
    };

    // Nothing works before a login, and says so.
    let out = cli(&["gateways", "list"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));

    let out = cli(
        &[
            "login",
            "--url",
            &url,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--token-env",
            "OP",
        ],
        &[("OP", OPERATOR)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = config_dir.join("credentials.json");
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session file is private");

    // A gateway registered from the CLI, enrolled with the token it printed.
    let created = ok_json(&cli(&["gateways", "create", "plant-1"], &[]));
    let gateway_id = created["id"].as_str().unwrap().to_owned();
    let config = h.config("gw");
    let identity =
        tidegate::gateway::enroll(&config, created["enrollment_token"].as_str().unwrap())
            .await
            .unwrap();
    let gateway = Gateway::start(config, identity).unwrap();
    gateway
        .state()
        .wait_for(|s| *s == LinkState::Online)
        .await
        .unwrap();
    let listed = cli(&["gateways", "list"], &[]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&gateway_id));

    // Connections: settings as KEY=VALUE, a secret from the environment, never shown.
    let source = h.dir.path().join("sample.sqlite");
    tidegate::replicate::sample::generate_sqlite(
        &source,
        tidegate::replicate::sample::SampleSize::rows(20_000),
    )
    .await
    .unwrap();
    let src = ok_json(&cli(
        &[
            "connections",
            "create",
            "--name",
            "shop",
            "--kind",
            "sqlite",
            "--setting",
            &format!("path={}", source.display()),
            "--secret",
            "password",
        ],
        &[("TIDEGATE_SECRET_PASSWORD", "cli-secret-canary")],
    ));
    assert!(!src.to_string().contains("cli-secret-canary"), "{src}");
    let out_dir = h.dir.path().join("out");
    let dst = ok_json(&cli(
        &[
            "connections",
            "create",
            "--name",
            "landing",
            "--kind",
            "local",
            "--setting",
            &format!("root={}", out_dir.display()),
        ],
        &[],
    ));
    let bad = cli(
        &[
            "connections",
            "create",
            "--name",
            "x",
            "--kind",
            "local",
            "--setting",
            "root",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not KEY=VALUE"));

    // A task run and followed to the end: exit status 0, the final run on stdout, a summary.
    let task = ok_json(&cli(
        &[
            "tasks",
            "create",
            "--name",
            "copy shop",
            "--gateway",
            &gateway_id,
            "--source",
            src["id"].as_str().unwrap(),
            "--target",
            dst["id"].as_str().unwrap(),
        ],
        &[],
    ));
    let task_id = task["id"].as_str().unwrap().to_owned();
    let run_out = cli(&["tasks", "run", &task_id, "--follow"], &[]);
    let run = ok_json(&run_out);
    assert_eq!(run["state"], "Completed", "{run}");
    let rows: u64 = run["tables"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum();
    assert!(rows >= 20_000, "{run}");
    let summary = String::from_utf8_lossy(&run_out.stderr);
    assert!(summary.contains(&format!("{rows} rows")), "{summary}");
    // Resuming a completed run is refused with the control plane's reason.
    let resume = cli(&["runs", "resume", run["id"].as_str().unwrap()], &[]);
    assert!(!resume.status.success());
    assert!(String::from_utf8_lossy(&resume.stderr).contains("409"));

    // A session file others can read is refused, not used.
    std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = cli(&["gateways", "list"], &[]);
    assert!(!loose.status.success());
    assert!(String::from_utf8_lossy(&loose.stderr).contains("chmod 600"));
    std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = cli(&["logout"], &[]);
    assert!(out.status.success());
    assert!(!saved.exists());
    gateway.shutdown().await;
}
