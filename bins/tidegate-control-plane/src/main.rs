//! `tidegate-control-plane`: reads configuration, installs logging, starts the control plane
//! and stops it on SIGINT / SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use tidegate_control_plane::{ControlPlane, ControlPlaneConfig, ServerTls};
use tidegate_proto::SecretString;

/// The Tidegate control plane. Settings come from the TOML file, then from the environment
/// (`TIDEGATE_*`), then from flags; later sources win.
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
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
        )
        .with_context(|| format!("{}", path.display()))?,
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
    let tls = ServerTls::from_pem(
        std::fs::read_to_string(&cert).with_context(|| format!("{}", cert.display()))?,
        std::fs::read_to_string(&key).with_context(|| format!("{}", key.display()))?,
    );
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
    let token_file = args
        .operator_token_file
        .or(file.operator_token_file)
        .context("operator_token_file is required")?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("{}", token_file.display()))?;
    let token = token.trim();
    if token.len() < 32 {
        bail!("the operator token must be at least 32 characters");
    }
    config.operator_tokens = vec![SecretString::new(token)];

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
