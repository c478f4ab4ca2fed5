//! Runs one CDC task from a PostgreSQL source into a PostgreSQL target until interrupted:
//! initial load in the slot's snapshot, then changes applied with the checkpoint.
//!
//! ```text
//! cargo run -p tidegate-cdc --example cdc_apply -- \
//!     'postgres://cdc:secret@src:5432/shop?sslmode=disable' \
//!     'postgres://load:secret@dst:5432/copy' shop public.orders,public.customers
//! ```
//!
//! Retryable errors (a broken connection, the slot still held by a previous run) are retried
//! after a pause; others end the process with status 1. The crash tests kill it with SIGKILL
//! at random moments and check that the target still ends up identical to the source.

use std::time::Duration;

use anyhow::{Context, bail};
use tidegate_cdc::{
    ApplySinkConfig, BatchConfig, CancellationToken, CdcTaskConfig, ConnectConfig,
    PostgresApplySink, TableRef, run_cdc_task,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, target, task_id, tables] = args.as_slice() else {
        bail!("usage: cdc_apply SOURCE_URL TARGET_URL TASK_ID SCHEMA.TABLE[,SCHEMA.TABLE…]");
    };
    let tables = tables
        .split(',')
        .map(|name| match name.split_once('.') {
            Some((schema, table)) => TableRef::new(schema, table),
            None => TableRef::new("public", name),
        })
        .collect();
    let source = ConnectConfig::from_url(source).context("the source URL")?;
    let config = CdcTaskConfig::new(task_id.clone(), source, tables)
        .with_batch(BatchConfig::default().with_batch_rows(512))
        .with_group(2_000, 50, Duration::from_millis(200));

    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    loop {
        let sink = PostgresApplySink::connect(target, ApplySinkConfig::new(task_id.clone())).await;
        let result = match sink {
            Ok(mut sink) => run_cdc_task(&config, &mut sink, cancel.clone()).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(summary) => {
                tracing::info!(
                    transactions = summary.transactions,
                    rows = summary.rows,
                    "stopped"
                );
                return Ok(());
            }
            Err(error) if error.is_retryable() && !cancel.is_cancelled() => {
                tracing::warn!(%error, "retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}
