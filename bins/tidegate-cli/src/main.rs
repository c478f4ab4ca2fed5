//! `tidegate`: the operator command line for a Tidegate control plane.
//!
//! Log in once (`tidegate login`), then manage data spaces, members, users, connections,
//! gateways and tasks, run and follow tasks with live progress bars, and read the audit log.
//! Secrets (connection passwords, login passwords) are never taken from the command line, where
//! other users could see them: they come from an environment variable or a prompt.

#![forbid(unsafe_code)]

mod profile;
mod progress;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};
use tidegate_client::Client;

#[derive(Parser)]
#[command(name = "tidegate", version, about = "Operate a Tidegate control plane")]
struct Cli {
    /// The control plane's URL (default: the one saved by `login`).
    #[arg(long, env = "TIDEGATE_URL", global = true)]
    url: Option<String>,
    /// A PEM file with the CA that signed the control plane's certificate.
    #[arg(long, env = "TIDEGATE_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Print raw JSON answers instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in and save the session (URL, CA and token) for the next commands.
    Login(Login),
    /// End the session on the control plane and forget it here.
    Logout,
    /// Who the saved session belongs to, with its roles.
    Whoami,
    /// Data spaces.
    #[command(subcommand)]
    Spaces(Spaces),
    /// Members of a data space and their roles.
    #[command(subcommand)]
    Members(Members),
    /// Local users and their system roles.
    #[command(subcommand)]
    Users(Users),
    /// Source and target connections.
    #[command(subcommand)]
    Connections(Connections),
    /// Gateways and their enrollment.
    #[command(subcommand)]
    Gateways(Gateways),
    /// Data tasks.
    #[command(subcommand)]
    Tasks(Tasks),
    /// Task runs.
    #[command(subcommand)]
    Runs(Runs),
    /// The audit log.
    #[command(subcommand)]
    Audit(Audit),
}

#[derive(Args)]
struct Login {
    /// Log in as this local user; the password comes from TIDEGATE_PASSWORD or a prompt.
    #[arg(long, conflicts_with = "token_env")]
    username: Option<String>,
    /// Use the bearer token (an operator token) held in this environment variable.
    #[arg(long)]
    token_env: Option<String>,
}

#[derive(Subcommand)]
enum Spaces {
    /// List data spaces.
    List(Page),
    /// Create a data space.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show a data space.
    Show { id: String },
    /// Delete an empty data space.
    Delete { id: String },
}

#[derive(Subcommand)]
enum Members {
    /// List the members of a data space.
    List { space: String },
    /// Grant a user a role in a data space (owner, can_view, can_consume, can_manage,
    /// can_operate, can_edit).
    Grant {
        space: String,
        user: String,
        role: String,
    },
    /// Revoke a user's role in a data space.
    Revoke {
        space: String,
        user: String,
        role: String,
    },
}

#[derive(Subcommand)]
enum Users {
    /// List users.
    List(Page),
    /// Create a local user; the password comes from TIDEGATE_NEW_PASSWORD or a prompt.
    Create {
        username: String,
        #[arg(long)]
        email: Option<String>,
    },
    /// Disable a user: its sessions stop working at once.
    Disable { id: String },
    /// Grant a system role (data_admin, data_product_manager, data_space_creator,
    /// data_services_contributor).
    GrantSystem { user: String, role: String },
    /// Revoke a system role.
    RevokeSystem { user: String, role: String },
}

#[derive(Subcommand)]
enum Connections {
    /// List connections (credentials are never shown).
    List {
        #[arg(long)]
        space: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Create a connection.
    Create {
        /// The data space (default: the control plane's default space).
        #[arg(long)]
        space: Option<String>,
        #[arg(long)]
        name: String,
        /// sqlite, local, postgres, odbc, s3.
        #[arg(long)]
        kind: String,
        /// A setting, `key=value`; repeat.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A secret's name; its value comes from TIDEGATE_SECRET_{NAME} (upper case) or a
        /// prompt; repeat.
        #[arg(long = "secret", value_name = "NAME")]
        secrets: Vec<String>,
    },
    /// Show a connection (credentials redacted).
    Show { id: String },
    /// Test a connection from a gateway: can the gateway reach and log in to it?
    Test {
        id: String,
        #[arg(long)]
        gateway: String,
    },
}

#[derive(Subcommand)]
enum Gateways {
    /// List gateways.
    List {
        #[arg(long)]
        space: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Register a gateway and print its one-time enrollment token.
    Create {
        name: String,
        #[arg(long)]
        space: Option<String>,
    },
    /// Show a gateway.
    Show { id: String },
}

#[derive(Subcommand)]
enum Tasks {
    /// List data tasks.
    List {
        #[arg(long)]
        space: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Create a data task.
    Create {
        /// The data space (default: the control plane's default space).
        #[arg(long)]
        space: Option<String>,
        #[arg(long)]
        name: String,
        /// The source connection's id.
        #[arg(long)]
        source: String,
        /// The target connection's id.
        #[arg(long)]
        target: String,
        #[arg(long)]
        gateway: String,
        /// full_load (the default), change_data_capture or store_changes.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Tables to include (`name`, `schema.name`, `*` wildcards); repeat. Default: all.
        #[arg(long)]
        include: Vec<String>,
        /// Tables to exclude; repeat.
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Show a data task.
    Show { id: String },
    /// Start a run; with --follow, show live progress until it ends.
    Run {
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Stop the running run of a task.
    Stop { id: String },
    /// The task's latest runs.
    Status { id: String },
}

#[derive(Subcommand)]
enum Runs {
    /// Show a run; with --follow, show live progress until it ends.
    Show {
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Resume a failed or stopped run: only unfinished tables are copied again.
    Resume {
        id: String,
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum Audit {
    /// List audit events, newest first.
    List {
        #[arg(long)]
        space: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Export audit events as JSON lines on stdout.
    Export {
        #[arg(long)]
        space: Option<String>,
    },
}

#[derive(Args, Default)]
struct Page {
    /// At most this many items.
    #[arg(long)]
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[arg(long)]
    after: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The client for the saved session, with `--url` / `--ca-file` overriding it.
fn client(cli: &Cli) -> Result<Client, String> {
    let saved = profile::load()?;
    let url = cli
        .url
        .clone()
        .or_else(|| saved.as_ref().map(|p| p.url.clone()))
        .ok_or("not logged in: run `tidegate login --url https://...` first")?;
    let ca = ca_pem(cli)?.or_else(|| saved.as_ref().and_then(|p| p.ca_pem.clone()));
    let token = std::env::var("TIDEGATE_TOKEN")
        .ok()
        .or_else(|| saved.map(|p| p.token))
        .ok_or("not logged in: run `tidegate login` first")?;
    Ok(Client::new(&url, ca.as_deref())
        .map_err(|e| e.to_string())?
        .with_token(&token))
}

fn ca_pem(cli: &Cli) -> Result<Option<String>, String> {
    cli.ca_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
        })
        .transpose()
}

/// A secret from `env`, or typed at a prompt without echo.
fn secret(env: &str, prompt: &str) -> Result<String, String> {
    if let Ok(value) = std::env::var(env) {
        return Ok(value);
    }
    rpassword::prompt_password(format!("{prompt} (or set {env}): "))
        .map_err(|e| format!("reading {prompt}: {e}"))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a path segment or query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn page_query(page: &Page, extra: &[(&str, Option<String>)]) -> String {
    let mut pairs = extra.to_vec();
    pairs.push(("limit", page.limit.map(|l| l.to_string())));
    pairs.push(("after", page.after.clone()));
    query(&pairs)
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let json_out = cli.json;
    let show = |value: Value| {
        print_value(&value);
        Ok(ExitCode::SUCCESS)
    };
    match &cli.command {
        Command::Login(login) => return do_login(&cli, login).await,
        Command::Logout => {
            if let Ok(client) = client(&cli) {
                let _ = client.post("/api/v1/auth/logout", &json!({})).await;
            }
            let removed = profile::remove()?;
            eprintln!(
                "{}",
                if removed {
                    "logged out"
                } else {
                    "no saved session"
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let c = client(&cli)?;
    let e = |e: tidegate_client::Error| e.to_string();
    match cli.command {
        Command::Login(_) | Command::Logout => unreachable!("handled above"),
        Command::Whoami => show(c.get("/api/v1/auth/me").await.map_err(e)?),
        Command::Spaces(cmd) => match cmd {
            Spaces::List(page) => list(
                c.get(&format!("/api/v1/spaces{}", page_query(&page, &[])))
                    .await
                    .map_err(e)?,
                &["id", "name", "description"],
                json_out,
            ),
            Spaces::Create { name, description } => show(
                c.post(
                    "/api/v1/spaces",
                    &json!({"name": name, "description": description}),
                )
                .await
                .map_err(e)?,
            ),
            Spaces::Show { id } => show(
                c.get(&format!("/api/v1/spaces/{}", encode(&id)))
                    .await
                    .map_err(e)?,
            ),
            Spaces::Delete { id } => show(
                c.delete(&format!("/api/v1/spaces/{}", encode(&id)))
                    .await
                    .map_err(e)?,
            ),
        },
        Command::Members(cmd) => match cmd {
            Members::List { space } => list(
                c.get(&format!("/api/v1/spaces/{}/members", encode(&space)))
                    .await
                    .map_err(e)?,
                &["user_id", "username", "roles"],
                json_out,
            ),
            Members::Grant { space, user, role } => show(
                c.put(&member_path(&space, &user, &role), &json!({}))
                    .await
                    .map_err(e)?,
            ),
            Members::Revoke { space, user, role } => show(
                c.delete(&member_path(&space, &user, &role))
                    .await
                    .map_err(e)?,
            ),
        },
        Command::Users(cmd) => match cmd {
            Users::List(page) => list(
                c.get(&format!("/api/v1/users{}", page_query(&page, &[])))
                    .await
                    .map_err(e)?,
                &["id", "username", "email", "disabled", "system_roles"],
                json_out,
            ),
            Users::Create { username, email } => {
                let password = secret("TIDEGATE_NEW_PASSWORD", "new user's password")?;
                show(
                    c.post(
                        "/api/v1/users",
                        &json!({"username": username, "email": email, "password": password}),
                    )
                    .await
                    .map_err(e)?,
                )
            }
            Users::Disable { id } => show(
                c.patch(
                    &format!("/api/v1/users/{}", encode(&id)),
                    &json!({"disabled": true}),
                )
                .await
                .map_err(e)?,
            ),
            Users::GrantSystem { user, role } => show(
                c.put(&system_role_path(&user, &role), &json!({}))
                    .await
                    .map_err(e)?,
            ),
            Users::RevokeSystem { user, role } => {
                show(c.delete(&system_role_path(&user, &role)).await.map_err(e)?)
            }
        },
        Command::Connections(cmd) => match cmd {
            Connections::List { space, page } => list(
                c.get(&format!(
                    "/api/v1/connections{}",
                    page_query(&page, &[("space_id", space)])
                ))
                .await
                .map_err(e)?,
                &["id", "name", "kind", "space_id"],
                json_out,
            ),
            Connections::Create {
                space,
                name,
                kind,
                settings,
                secrets,
            } => {
                let mut setting_map = Map::new();
                for pair in settings {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("--setting {pair:?} is not KEY=VALUE"))?;
                    setting_map.insert(k.to_owned(), Value::String(v.to_owned()));
                }
                let mut secret_map = Map::new();
                for name in secrets {
                    let env = format!(
                        "TIDEGATE_SECRET_{}",
                        name.to_ascii_uppercase().replace('-', "_")
                    );
                    secret_map.insert(name.clone(), Value::String(secret(&env, &name)?));
                }
                let mut body = json!({"name": name, "kind": kind,
                                      "settings": setting_map, "secrets": secret_map});
                if let Some(space) = space {
                    body["space_id"] = Value::String(space);
                }
                show(c.post("/api/v1/connections", &body).await.map_err(e)?)
            }
            Connections::Show { id } => show(
                c.get(&format!("/api/v1/connections/{}", encode(&id)))
                    .await
                    .map_err(e)?,
            ),
            Connections::Test { id, gateway } => show(
                c.post(
                    &format!("/api/v1/connections/{}/test", encode(&id)),
                    &json!({"gateway_id": gateway}),
                )
                .await
                .map_err(e)?,
            ),
        },
        Command::Gateways(cmd) => match cmd {
            Gateways::List { space, page } => list(
                c.get(&format!(
                    "/api/v1/gateways{}",
                    page_query(&page, &[("space_id", space)])
                ))
                .await
                .map_err(e)?,
                &["id", "name", "state", "online", "version"],
                json_out,
            ),
            Gateways::Create { name, space } => {
                let mut body = json!({"name": name});
                if let Some(space) = space {
                    body["space_id"] = Value::String(space);
                }
                let created = c.post("/api/v1/gateways", &body).await.map_err(e)?;
                if !json_out {
                    eprintln!(
                        "The enrollment token below is shown once: hand it to the gateway's \
                         operator over a secure channel."
                    );
                }
                show(created)
            }
            Gateways::Show { id } => show(
                c.get(&format!("/api/v1/gateways/{}", encode(&id)))
                    .await
                    .map_err(e)?,
            ),
        },
        Command::Tasks(cmd) => match cmd {
            Tasks::List { space, page } => list(
                c.get(&format!(
                    "/api/v1/tasks{}",
                    page_query(&page, &[("space_id", space)])
                ))
                .await
                .map_err(e)?,
                &["id", "name", "task_type", "space_id"],
                json_out,
            ),
            Tasks::Create {
                space,
                name,
                source,
                target,
                gateway,
                task_type,
                include,
                exclude,
            } => {
                let mut body = json!({"name": name, "source_id": source, "target_id": target,
                                      "gateway_id": gateway,
                                      "tables": {"include": include, "exclude": exclude}});
                if let Some(space) = space {
                    body["space_id"] = Value::String(space);
                }
                if let Some(task_type) = task_type {
                    body["task_type"] = Value::String(task_type);
                }
                show(c.post("/api/v1/tasks", &body).await.map_err(e)?)
            }
            Tasks::Show { id } => show(
                c.get(&format!("/api/v1/tasks/{}", encode(&id)))
                    .await
                    .map_err(e)?,
            ),
            Tasks::Run { id, follow } => {
                let run = c
                    .post(&format!("/api/v1/tasks/{}/runs", encode(&id)), &json!({}))
                    .await
                    .map_err(e)?;
                finish_run(&c, run, follow, json_out).await
            }
            Tasks::Stop { id } => show(
                c.post(&format!("/api/v1/tasks/{}/stop", encode(&id)), &json!({}))
                    .await
                    .map_err(e)?,
            ),
            Tasks::Status { id } => list(
                c.get(&format!("/api/v1/tasks/{}/runs", encode(&id)))
                    .await
                    .map_err(e)?,
                &["id", "state", "started_s", "error"],
                json_out,
            ),
        },
        Command::Runs(cmd) => match cmd {
            Runs::Show { id, follow } => {
                let run = c
                    .get(&format!("/api/v1/runs/{}", encode(&id)))
                    .await
                    .map_err(e)?;
                finish_run(&c, run, follow, json_out).await
            }
            Runs::Resume { id, follow } => {
                let run = c
                    .post(&format!("/api/v1/runs/{}/resume", encode(&id)), &json!({}))
                    .await
                    .map_err(e)?;
                finish_run(&c, run, follow, json_out).await
            }
        },
        Command::Audit(cmd) => match cmd {
            Audit::List { space, actor, page } => list(
                c.get(&format!(
                    "/api/v1/audit{}",
                    page_query(&page, &[("space_id", space), ("actor", actor)])
                ))
                .await
                .map_err(e)?,
                &["at", "actor", "action", "target", "outcome"],
                json_out,
            ),
            Audit::Export { space } => {
                let text = c
                    .get_text(&format!(
                        "/api/v1/audit/export{}",
                        query(&[("space_id", space)])
                    ))
                    .await
                    .map_err(e)?;
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

fn member_path(space: &str, user: &str, role: &str) -> String {
    format!(
        "/api/v1/spaces/{}/members/{}/roles/{}",
        encode(space),
        encode(user),
        encode(role)
    )
}

fn system_role_path(user: &str, role: &str) -> String {
    format!(
        "/api/v1/users/{}/system-roles/{}",
        encode(user),
        encode(role)
    )
}

async fn do_login(cli: &Cli, login: &Login) -> Result<ExitCode, String> {
    let url = cli
        .url
        .clone()
        .ok_or("--url (or TIDEGATE_URL) is required to log in")?;
    let ca = ca_pem(cli)?;
    let client = Client::new(&url, ca.as_deref()).map_err(|e| e.to_string())?;
    let token = match (&login.username, &login.token_env) {
        (Some(username), None) => {
            let password = secret("TIDEGATE_PASSWORD", &format!("password for {username}"))?;
            let answer = client
                .post(
                    "/api/v1/auth/login",
                    &json!({"username": username, "password": password}),
                )
                .await
                .map_err(|e| e.to_string())?;
            answer["token"]
                .as_str()
                .ok_or("the login answer has no token")?
                .to_owned()
        }
        (None, Some(env)) => std::env::var(env).map_err(|_| format!("{env} is not set"))?,
        _ => return Err("give --username or --token-env".into()),
    };
    let authed = client.clone().with_token(&token);
    let me = match authed.get("/api/v1/auth/me").await {
        Ok(me) => me,
        // A control plane without user accounts: check the token on a guarded route instead.
        Err(e) if e.status() == Some(404) => {
            authed
                .get("/api/v1/gateways")
                .await
                .map_err(|e| e.to_string())?;
            json!({"username": "operator"})
        }
        Err(e) => return Err(e.to_string()),
    };
    let path = profile::save(&profile::Profile {
        url,
        ca_pem: ca,
        token,
    })?;
    eprintln!(
        "logged in as {} (session saved in {})",
        me["username"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn finish_run(
    client: &Client,
    run: Value,
    follow: bool,
    json_out: bool,
) -> Result<ExitCode, String> {
    let run = if follow {
        let id = run["id"]
            .as_str()
            .ok_or("the answer has no run id")?
            .to_owned();
        progress::follow(client, &id)
            .await
            .map_err(|e| e.to_string())?
    } else {
        run
    };
    print_value(&run);
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    if !json_out {
        summarize(&run);
    }
    Ok(if run["state"] == "Completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn summarize(run: &Value) {
    let tables = run["tables"].as_object().cloned().unwrap_or_default();
    let rows: u64 = tables.values().filter_map(|t| t["rows"].as_u64()).sum();
    let bytes: u64 = tables.values().filter_map(|t| t["bytes"].as_u64()).sum();
    let seconds = run["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    eprintln!(
        "run {} {}: {} tables, {rows} rows, {} in {seconds:.1} s{}",
        run["id"].as_str().unwrap_or("?"),
        run["state"].as_str().unwrap_or("?"),
        tables.len(),
        progress::human_bytes(bytes),
        run["error"]
            .as_str()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default()
    );
}

fn print_value(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Prints a list answer (`{"items": [...], "next": ...}` or a bare array) as a table of
/// `columns`, or as JSON.
fn list(answer: Value, columns: &[&str], json_out: bool) -> Result<ExitCode, String> {
    if json_out {
        print_value(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let items = answer["items"]
        .as_array()
        .or_else(|| answer.as_array())
        .cloned()
        .unwrap_or_default();
    let cell = |item: &Value, column: &str| match &item[column] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            items
                .iter()
                .map(|i| cell(i, c).chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_ascii_uppercase()).collect())
    );
    for item in &items {
        println!("{}", line(columns.iter().map(|c| cell(item, c)).collect()));
    }
    if let Some(next) = answer["next"].as_str() {
        eprintln!("more: --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}
