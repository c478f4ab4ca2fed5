//! End to end from PostgreSQL to Parquet, against the raw `COPY` it is built on.
//!
//! Starts a throwaway PostgreSQL, generates a TPC-H-like `lineitem` (scale factor 1,
//! 6,000,000 rows; `TIDEGATE_BENCH_ROWS` overrides) and, in each of three rounds, times:
//!
//! * `raw_copy`: `psql -c "COPY lineitem TO STDOUT (FORMAT binary)" > /dev/null`, the floor;
//! * `sqlx_drain`: the same COPY through our client library, bytes discarded;
//! * `e2e_1_reader` / `e2e_2_readers`: [`copy_tables`] from [`PostgresSource`] to a
//!   [`ParquetSink`] on the local filesystem, one reader, then two page-range readers.
//!
//! It prints the median of each, the end-to-end ratios to `raw_copy` (measured in the same
//! run: the machine is shared and noisy), rows/s and the peak RSS of each end-to-end run
//! (`VmHWM`, reset through `/proc/self/clear_refs` before the run).
//!
//! Run with `cargo bench --bench pg_copy`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::local::LocalFileSystem;
use tidegate::replicate::sqlx::postgres::PgConnection;
use tidegate::replicate::sqlx::{ConnectOptions, postgres::PgConnectOptions};
use tidegate::replicate::{
    CancellationToken, CopyPlan, ParquetSink, ParquetSinkConfig, PostgresSource,
    PostgresSourceConfig, copy_tables,
};
use tidegate_testkit::{PgServer, lineitem_sql};

const ROUNDS: usize = 3;

fn main() {
    tidegate::install_crypto_provider();
    let rows: u64 = std::env::var("TIDEGATE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000_000);
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let server = PgServer::start().expect("start PostgreSQL");
    server.create_database("bench").expect("create database");
    let started = Instant::now();
    server
        .execute("bench", &lineitem_sql(rows))
        .expect("generate lineitem");
    let size = server
        .execute(
            "bench",
            "SELECT pg_size_pretty(pg_relation_size('lineitem'))",
        )
        .expect("size");
    eprintln!(
        "generated lineitem: {rows} rows, {} in {:.1} s",
        size.trim(),
        started.elapsed().as_secs_f64()
    );
    let url = server.url("bench");

    // Warm the page cache once.
    raw_copy(&server);

    let mut raw = Vec::new();
    let mut drain = Vec::new();
    let mut one = Vec::new();
    let mut two = Vec::new();
    for round in 0..ROUNDS {
        raw.push(raw_copy(&server));
        drain.push(runtime.block_on(sqlx_drain(&url)));
        one.push(runtime.block_on(end_to_end(&url, 1, rows)));
        two.push(runtime.block_on(end_to_end(&url, 2, rows)));
        eprintln!(
            "round {round}: raw {:.2} s, sqlx drain {:.2} s, e2e 1 reader {:.2} s ({} MiB), \
             e2e 2 readers {:.2} s ({} MiB)",
            raw[round].as_secs_f64(),
            drain[round].as_secs_f64(),
            one[round].0.as_secs_f64(),
            one[round].1,
            two[round].0.as_secs_f64(),
            two[round].1,
        );
    }

    let raw = median(raw.clone());
    let drain = median(drain);
    let one_time = median(one.iter().map(|r| r.0).collect());
    let two_time = median(two.iter().map(|r| r.0).collect());
    let one_rss = one.iter().map(|r| r.1).max().unwrap_or(0);
    let two_rss = two.iter().map(|r| r.1).max().unwrap_or(0);
    let rate = |time: Duration| rows as f64 / time.as_secs_f64();
    println!("pg_copy: lineitem {rows} rows, median of {ROUNDS} rounds");
    println!(
        "  raw_copy       {:>7.2} s  {:>10.0} rows/s",
        raw.as_secs_f64(),
        rate(raw)
    );
    println!(
        "  sqlx_drain     {:>7.2} s  {:>10.0} rows/s  {:.2}x raw",
        drain.as_secs_f64(),
        rate(drain),
        drain.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  e2e_1_reader   {:>7.2} s  {:>10.0} rows/s  {:.2}x raw  peak RSS {one_rss} MiB",
        one_time.as_secs_f64(),
        rate(one_time),
        one_time.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  e2e_2_readers  {:>7.2} s  {:>10.0} rows/s  {:.2}x raw  peak RSS {two_rss} MiB",
        two_time.as_secs_f64(),
        rate(two_time),
        two_time.as_secs_f64() / raw.as_secs_f64()
    );
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `COPY lineitem TO STDOUT (FORMAT binary)` through psql into /dev/null.
fn raw_copy(server: &PgServer) -> Duration {
    let psql = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned() + "/psql")
        .filter(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| "psql".to_owned());
    let started = Instant::now();
    let status = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
        ])
        .args(["-U", server.user(), "-d", "bench"])
        .args(["-c", "COPY lineitem TO STDOUT (FORMAT binary)"])
        .env("PGPASSWORD", server.password())
        .stdout(Stdio::null())
        .status()
        .expect("run psql");
    assert!(status.success(), "psql COPY failed");
    started.elapsed()
}

/// The same COPY through sqlx, every chunk dropped.
async fn sqlx_drain(url: &str) -> Duration {
    let options: PgConnectOptions = url.parse().expect("url");
    let mut connection: PgConnection = options.connect().await.expect("connect");
    let started = Instant::now();
    let mut chunks = connection
        .copy_out_raw("COPY lineitem TO STDOUT (FORMAT binary)")
        .await
        .expect("copy");
    let mut bytes = 0usize;
    while let Some(chunk) = chunks.next().await {
        bytes += chunk.expect("chunk").len();
    }
    assert!(bytes > 0);
    started.elapsed()
}

/// One end-to-end copy into a fresh directory; returns its time and peak RSS in MiB.
async fn end_to_end(url: &str, readers: usize, rows: u64) -> (Duration, u64) {
    let dir = tempfile::tempdir().expect("output directory");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let options: PgConnectOptions = url.parse().expect("url");
    let mut config = PostgresSourceConfig::default();
    // Split lineitem even at small bench sizes.
    config.min_split_pages = 64;
    let source = Arc::new(
        PostgresSource::connect_with(options, config)
            .await
            .expect("connect"),
    );
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
    let sink = Arc::new(ParquetSink::new(
        store,
        Default::default(),
        ParquetSinkConfig::default(),
    ));
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    let plan = CopyPlan::new("bench")
        .with_tables(["lineitem"])
        .with_readers_per_table(readers);
    let summary = copy_tables(source, sink, plan, progress, CancellationToken::new())
        .await
        .expect("copy");
    let elapsed = started.elapsed();
    drain.await.ok();
    assert_eq!(summary.total_rows(), rows, "every row copied");
    (elapsed, peak_rss_mib())
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}
