//! `tidegate-gateway`: reads configuration, installs logging, enrolls or runs the gateway and
//! stops it on SIGINT / SIGTERM. Everything else lives in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tidegate_gateway::{ClientTls, Gateway, GatewayConfig, Identity};

/// The Tidegate gateway. It only dials out: it opens no listening socket.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "TIDEGATE_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Log filter, e.g. `info`.
    #[arg(long, env = "TIDEGATE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Enroll with a one-time token from the control plane; writes the identity file.
    Enroll {
        /// The enrollment token (or set TIDEGATE_ENROLLMENT_TOKEN).
        #[arg(long, env = "TIDEGATE_ENROLLMENT_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Connect to the control plane and run commands until stopped.
    Run,
}

/// The TOML file's shape. Environment variables `TIDEGATE_CONTROL_PLANE` and
/// `TIDEGATE_PROXY` override the matching fields.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control_plane: String,
    state_dir: PathBuf,
    #[serde(default = "yes")]
    system_roots: bool,
    ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pin_sha256: Vec<String>,
    proxy: Option<String>,
    backoff_max_s: Option<u64>,
}

fn yes() -> bool {
    true
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
    // One process-wide rustls provider; an error means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("{}", args.config.display()))?;
    let file: FileConfig =
        toml::from_str(&text).with_context(|| format!("{}", args.config.display()))?;
    let control_plane = std::env::var("TIDEGATE_CONTROL_PLANE").unwrap_or(file.control_plane);
    let mut config = GatewayConfig::new(control_plane, file.state_dir);
    config.proxy = std::env::var("TIDEGATE_PROXY").ok().or(file.proxy);
    config.tls = ClientTls {
        system_roots: file.system_roots,
        ca_bundle_pem: file
            .ca_bundle
            .map(|p| std::fs::read_to_string(&p).with_context(|| format!("{}", p.display())))
            .transpose()?,
        pinned_sha256: file
            .pin_sha256
            .iter()
            .map(|hex| parse_pin(hex))
            .collect::<anyhow::Result<_>>()?,
    };
    if let Some(s) = file.backoff_max_s {
        config.backoff_max = Duration::from_secs(s.max(1));
    }

    match args.command {
        Cmd::Enroll { token } => {
            let identity = tidegate_gateway::enroll(&config, &token).await?;
            println!(
                "enrolled as {}; identity written to {}",
                identity.gateway_id,
                Identity::path(&config.state_dir).display()
            );
        }
        Cmd::Run => {
            let identity = Identity::load(&config.state_dir)?;
            tracing::info!(message = "gateway starting", gateway = %identity.gateway_id);
            let running = Gateway::start(config, identity)?;
            shutdown_signal().await?;
            tracing::info!(message = "shutting down");
            running.shutdown().await;
        }
    }
    Ok(())
}

/// A SHA-256 pin as 64 hex digits (colons allowed).
fn parse_pin(text: &str) -> anyhow::Result<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    anyhow::ensure!(
        hex.len() == 64 && hex.is_ascii(),
        "pin_sha256 entries must be 64 hex digits"
    );
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("pin_sha256: not hex")?;
    }
    Ok(out)
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
