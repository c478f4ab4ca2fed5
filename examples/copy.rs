//! One-shot copy without a control plane, for scripts and benchmarks:
//!
//! ```text
//! cargo run --release --example copy -- \
//!     --source postgres://user:password@host:5432/db \
//!     --target file:///tmp/landing            # or s3://bucket/prefix
//!     [--table NAME]... [--readers 2] [--sse aes256|kms:KEY_ID]
//! ```
//!
//! Sources: `postgres://` / `postgresql://` URLs (binary COPY, one snapshot for all tables),
//! `sqlite://PATH`, and `odbc://` followed by an ODBC connection string for any database with an
//! ODBC driver, e.g. `'odbc://Driver={PostgreSQL Unicode};Server=db;Database=shop;UID=u;PWD=p'`
//! or `odbc://DSN=warehouse` (pass it through `TIDEGATE_SOURCE` to keep the password out of the
//! process list). Targets: anything [`tidegate::replicate::open_store`] opens; S3 settings
//! come from the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL` for an S3-compatible
//! server). Prints progress per table and a summary with the peak resident memory.
//!
//! This uses only `tidegate-replicate`: it is also the example of embedding the replication
//! core in another Rust service.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tidegate::replicate::{
    CancellationToken, CopyPlan, OdbcSource, ParquetSink, ParquetSinkConfig, PostgresSource,
    ProgressEvent, ServerSideEncryption, Source, SqliteSource, StoreOptions, copy_tables,
    open_store,
};

#[derive(Parser, Debug)]
#[command(about = "Copy tables from PostgreSQL, SQLite or ODBC to Parquet on an object store")]
struct Args {
    /// `postgres://user:password@host:port/database`, `sqlite://PATH` or
    /// `odbc://CONNECTION_STRING`.
    #[arg(long, env = "TIDEGATE_SOURCE", hide_env_values = true)]
    source: String,
    /// `file:///absolute/dir`, `s3://bucket/prefix` (also `gs://`, `az://` with those features).
    #[arg(long)]
    target: String,
    /// Copy only this table (`name` or `schema.name`); repeat for several. Default: all.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Readers per table: large PostgreSQL tables are split into page ranges read in parallel.
    #[arg(long, default_value_t = 1)]
    readers: usize,
    /// Tables copied at the same time.
    #[arg(long, default_value_t = 2)]
    parallel_tables: usize,
    /// Run id: the directory of this run's files under each table.
    #[arg(long, default_value = "copy")]
    run_id: String,
    /// Server-side encryption on S3: `aes256` (SSE-S3) or `kms:KEY_ID` (SSE-KMS).
    #[arg(long)]
    sse: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tidegate::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let source: Arc<dyn Source> =
        if args.source.starts_with("postgres://") || args.source.starts_with("postgresql://") {
            Arc::new(PostgresSource::connect(&args.source).await?)
        } else if let Some(path) = args.source.strip_prefix("sqlite://") {
            Arc::new(SqliteSource::open(&PathBuf::from(path)).await?)
        } else if let Some(connection_string) = args.source.strip_prefix("odbc://") {
            Arc::new(OdbcSource::connect(connection_string).await?)
        } else {
            bail!("--source must be a postgres://, sqlite:// or odbc:// source");
        };

    let mut options = StoreOptions::default();
    options.allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true");
    options.encryption = match args.sse.as_deref() {
        None => ServerSideEncryption::BucketDefault,
        Some("aes256") => ServerSideEncryption::S3Managed,
        Some(kms) if kms.starts_with("kms:") => ServerSideEncryption::Kms {
            key_id: kms["kms:".len()..].to_owned(),
        },
        Some(_) => bail!("--sse must be aes256 or kms:KEY_ID"),
    };
    let target = open_store(&args.target, &options)?;
    let sink = Arc::new(ParquetSink::new(
        target.store,
        target.prefix,
        ParquetSinkConfig::default(),
    ));

    let mut plan = CopyPlan::new(args.run_id)
        .with_readers_per_table(args.readers)
        .with_parallel_tables(args.parallel_tables);
    if !args.tables.is_empty() {
        plan = plan.with_tables(args.tables);
    }

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>24} {spinner} {pos:>11} rows {per_sec:>14} {elapsed:>4} {msg}",
    )
    .context("progress style")?;
    let (progress, mut events) = tokio::sync::mpsc::channel::<ProgressEvent>(256);
    let progress_view = tokio::spawn(async move {
        let mut by_table: HashMap<String, ProgressBar> = HashMap::new();
        while let Some(event) = events.recv().await {
            let name = event.table.to_string();
            let bar = by_table.entry(name.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(name);
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            bar.set_position(event.rows);
            bar.set_message(format!("{:.1} MiB", event.bytes as f64 / 1048576.0));
            if event.done {
                bar.finish();
            }
        }
    });

    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let summary = copy_tables(source, sink, plan, progress, cancel).await?;
    progress_view.await.ok();

    let seconds = summary.elapsed.as_secs_f64();
    println!(
        "copied {} tables, {} rows, {:.1} MiB of Parquet in {:.2} s ({:.0} rows/s); peak RSS {}",
        summary.tables.len(),
        summary.total_rows(),
        summary.total_bytes() as f64 / 1048576.0,
        seconds,
        summary.total_rows() as f64 / seconds.max(1e-9),
        peak_rss().unwrap_or_else(|| "unknown".into()),
    );
    for table in &summary.tables {
        println!(
            "  {:<32} {:>12} rows {:>4} files  {}",
            table.table.to_string(),
            table.rows,
            table.files.len(),
            table.manifest
        );
    }
    Ok(())
}

/// `VmHWM` from `/proc/self/status` (Linux only).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.0} MiB", kib / 1024.0))
}
