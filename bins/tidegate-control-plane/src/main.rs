//! `tidegate-control-plane`: reads configuration, installs logging, starts the control plane
//! and stops it on SIGINT / SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use tidegate_control_plane::{ControlPlane, ControlPlaneConfig, OidcConfig, ServerTls};
use tidegate_identity::Zeroizing;
use tidegate_identity::oidc::UsernameClaim;
use tidegate_proto::SecretString;

/// The Tidegate control plane. Settings come from the TOML file, then from the environment
/// (`TIDEGATE_*`), then from flags; later sources win. Secrets (the database URL, the
/// bootstrap administrator's password, the OpenID client secret, operator tokens) come from
/// files or the environment, never from flags.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "TIDEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 0.0.0.0:8443.
    #[arg(long, env = "TIDEGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// This control plane's id (the audience of gateway tokens).
    #[arg(long, env = "TIDEGATE_ID")]
    id: Option<String>,
    /// PEM certificate chain.
    #[arg(long, env = "TIDEGATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "TIDEGATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// A file holding the operator bearer token (one line).
    #[arg(long, env = "TIDEGATE_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,
    /// Where the metadata database (`metadata.db`) and the key file (`keys`) live.
    #[arg(long, env = "TIDEGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A file holding the metadata database URL (`postgres://…`), instead of the SQLite file
    /// in the state directory. `TIDEGATE_DATABASE_URL` gives the URL itself.
    #[arg(long, env = "TIDEGATE_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// The bootstrap administrator's user name; its password comes from
    /// `TIDEGATE_BOOTSTRAP_ADMIN_PASSWORD` or `bootstrap_admin_password_file`.
    #[arg(long, env = "TIDEGATE_BOOTSTRAP_ADMIN")]
    bootstrap_admin: Option<String>,
    /// Log filter, e.g. `info` or `tidegate_control_plane=debug`.
    #[arg(long, env = "TIDEGATE_LOG", default_value = "info")]
    log: String,
}

/// The TOML file's shape; every field optional, unknown fields refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    id: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    operator_token_file: Option<PathBuf>,
    heartbeat_interval_s: Option<u64>,
    enrollment_ttl_s: Option<u64>,
    state_dir: Option<PathBuf>,
    database_url_file: Option<PathBuf>,
    bootstrap_admin: Option<String>,
    bootstrap_admin_password_file: Option<PathBuf>,
    session_ttl_s: Option<u64>,
    slot_check_interval_s: Option<u64>,
    slot_retention_limit_bytes: Option<u64>,
    oidc: Option<OidcFile>,
    /// `[[assist]]` tables: the AI assist's endpoints, one per region.
    #[serde(default)]
    assist: Vec<AssistFile>,
}

/// One `[[assist]]` table: an OpenAI-compatible chat-completions endpoint for one region.
/// Tenants use it only once a Data Admin turned the assist on and chose the region.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AssistFile {
    region: String,
    /// The API base URL; requests go to `<base_url>/chat/completions`.
    base_url: String,
    model: String,
    /// A file holding the API key, if the endpoint needs one.
    api_key_file: Option<PathBuf>,
}

/// The `[oidc]` table: single sign-on through an OpenID provider.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct OidcFile {
    issuer: String,
    client_id: String,
    /// A file holding the client secret (or `TIDEGATE_OIDC_CLIENT_SECRET`).
    client_secret_file: Option<PathBuf>,
    /// `https://<this control plane>/api/v1/auth/oidc/callback`, as registered.
    redirect_url: String,
    scopes: Option<Vec<String>>,
    username_claim: Option<UsernameClaim>,
    /// A PEM file with the CA of a provider under a private CA.
    ca_file: Option<PathBuf>,
    /// Whether unknown people the provider vouches for become users (without roles).
    #[serde(default)]
    auto_create: bool,
}

/// A secret from the environment variable `env`, else from the file `file` (trimmed).
fn secret(env: &str, file: Option<&Path>) -> anyhow::Result<Option<Zeroizing<String>>> {
    if let Ok(value) = std::env::var(env) {
        return Ok(Some(Zeroizing::new(value.trim().to_owned())));
    }
    match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
            );
            Ok(Some(Zeroizing::new(text.trim().to_owned())))
        }
        None => Ok(None),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
    // One process-wide rustls provider; an error means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let file: FileConfig = match &args.config {
        Some(path) => {
            toml::from_str(&read(path)?).with_context(|| format!("{}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let cert = args
        .tls_cert
        .or(file.tls_cert)
        .context("tls_cert is required")?;
    let key = args
        .tls_key
        .or(file.tls_key)
        .context("tls_key is required")?;
    let tls = ServerTls::from_pem(read(&cert)?, read(&key)?);
    let mut config = ControlPlaneConfig::new(tls);
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = listen;
    }
    if let Some(id) = args.id.or(file.id) {
        config.id = id;
    }
    if let Some(s) = file.heartbeat_interval_s {
        config.heartbeat_interval = Duration::from_secs(s.max(1));
    }
    if let Some(s) = file.enrollment_ttl_s {
        config.enrollment_ttl = Duration::from_secs(s);
    }
    if let Some(s) = file.session_ttl_s {
        config.session_ttl = Duration::from_secs(s.max(60));
    }
    if let Some(s) = file.slot_check_interval_s {
        config.slot_check_interval = Duration::from_secs(s.max(1));
    }
    if let Some(bytes) = file.slot_retention_limit_bytes {
        config.slot_retention_limit = bytes;
    }

    config.state_dir = args.state_dir.or(file.state_dir);
    let url_file = args.database_url_file.or(file.database_url_file);
    config.database_url =
        secret("TIDEGATE_DATABASE_URL", url_file.as_deref())?.map(|url| url.to_string());
    if config.state_dir.is_none() {
        tracing::warn!(
            message = "no state_dir: the key file (and the SQLite database, unless database_url \
                       names one) live in a temporary directory removed at exit"
        );
    }

    if let Some(username) = args.bootstrap_admin.or(file.bootstrap_admin) {
        let password = secret(
            "TIDEGATE_BOOTSTRAP_ADMIN_PASSWORD",
            file.bootstrap_admin_password_file.as_deref(),
        )?
        .context(
            "bootstrap_admin needs a password: TIDEGATE_BOOTSTRAP_ADMIN_PASSWORD or \
             bootstrap_admin_password_file",
        )?;
        config.bootstrap_admin = Some((username, SecretString::new(password.as_str())));
    }

    if let Some(oidc) = file.oidc {
        let mut c = OidcConfig::new(oidc.issuer, oidc.client_id, oidc.redirect_url);
        c.client_secret = secret(
            "TIDEGATE_OIDC_CLIENT_SECRET",
            oidc.client_secret_file.as_deref(),
        )?;
        if let Some(scopes) = oidc.scopes {
            c.scopes = scopes;
        }
        if let Some(claim) = oidc.username_claim {
            c.username_claim = claim;
        }
        c.ca_pem = oidc.ca_file.as_deref().map(read).transpose()?;
        config.oidc = Some(c);
        config.oidc_auto_create = oidc.auto_create;
    }
    for assist in file.assist {
        let mut base_url = url::Url::parse(&assist.base_url)
            .with_context(|| format!("[[assist]] {}: base_url", assist.region))?;
        // `join` keeps the last segment only after a slash.
        if !base_url.path().ends_with('/') {
            base_url.set_path(&format!("{}/", base_url.path()));
        }
        let api_key = match &assist.api_key_file {
            Some(path) => Some(SecretString::new(read(path)?.trim())),
            None => None,
        };
        config.assist.push(tidegate_assist::AssistEndpoint {
            region: assist.region,
            base_url,
            model: assist.model,
            api_key,
        });
    }

    if let Some(token_file) = args.operator_token_file.or(file.operator_token_file) {
        let token = Zeroizing::new(read(&token_file)?);
        let token = token.trim();
        if token.len() < 32 {
            bail!("the operator token must be at least 32 characters");
        }
        config.operator_tokens = vec![SecretString::new(token)];
    } else if config.bootstrap_admin.is_none() {
        tracing::warn!(
            message = "neither operator_token_file nor bootstrap_admin is set: only users \
                       already in the metadata database can log in"
        );
    }

    let running = ControlPlane::start(config).await?;
    tracing::info!(message = "control plane started", addr = %running.local_addr());
    shutdown_signal().await?;
    tracing::info!(message = "shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
