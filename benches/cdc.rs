//! Change data capture: throughput against `pg_recvlogical`, and lag at a steady rate.
//!
//! Starts a throwaway PostgreSQL (`wal_level = logical`) and, in one run:
//!
//! 1. **Throughput.** Three slots see the same backlog: a generated workload of
//!    `TIDEGATE_BENCH_CHANGES` changes (default 600,000: 60% inserts, 30% updates, 10% deletes,
//!    100 rows per transaction) on a table of five columns. Each consumer then drains it to the
//!    same end position, timed:
//!    * `pg_recvlogical`: PostgreSQL's own client, `pgoutput` (protocol 2, binary) into
//!      `/dev/null`: the floor;
//!    * `store_changes`: a CDC task (`tidegate-cdc`) writing Parquet change files and
//!      manifests to the local filesystem;
//!    * `apply`: a CDC task merging the changes into PostgreSQL tables (same server, another
//!      database), and the replica checked equal to the source afterwards.
//!
//!    Rates are changes/s; the ratios to `pg_recvlogical` are measured in the same run.
//! 2. **Lag.** A store-changes task, then an apply task, runs live while a generator commits
//!    100-row transactions on a fixed schedule, 10,000 changes/s by default
//!    (`TIDEGATE_BENCH_LAG_RATE`), for `TIDEGATE_BENCH_LAG_SECONDS` (default 20), committing
//!    synchronously as a production source does. A transaction's lag runs from its commit
//!    returning at the source to the task's checkpoint passing the server's WAL position read
//!    right after that commit (so it errs on the long side). p50 / p99 / max are printed, and
//!    the live replica is checked equal to the source.
//!
//! Run with `cargo bench --bench cdc`. Targets: store changes at least 0.70× the rate of
//! `pg_recvlogical`; lag p99 at most 1 s.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use tidegate::cdc::sqlx::postgres::PgConnection;
use tidegate::cdc::sqlx::{ConnectOptions, Connection};
use tidegate::cdc::{
    ApplySinkConfig, CancellationToken, CdcPhase, CdcProgress, CdcTaskConfig, ChangeSink,
    ConnectConfig, Lsn, PostgresApplySink, StoreChangesSink, StoreSinkConfig, TableRef,
    run_cdc_task_with_progress,
};
use tidegate_testkit::PgServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Rows per generated transaction.
const ROWS_PER_TRANSACTION: u64 = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    tidegate::install_crypto_provider();
    let changes = env_u64("TIDEGATE_BENCH_CHANGES", 600_000);
    let lag_rate = env_u64("TIDEGATE_BENCH_LAG_RATE", 10_000);
    let lag_seconds = env_u64("TIDEGATE_BENCH_LAG_SECONDS", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let pg = PgServer::start().expect("PostgreSQL starts");
    pg.create_database("src").expect("source database");
    pg.create_database("dst").expect("target database");
    pg.execute(
        "src",
        "CREATE TABLE events (id bigint PRIMARY KEY, account int NOT NULL, \
         amount numeric(12, 2), note text, at timestamptz);
         CREATE PUBLICATION recv_pub FOR TABLE events;
         SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');",
    )
    .expect("schema");
    let lake = tempfile::tempdir().expect("a directory");
    let store = Arc::new(LocalFileSystem::new_with_prefix(lake.path()).expect("a store"));
    let source = ConnectConfig::from_url(&pg.url("src")).expect("source config");
    let config =
        |id: &str| CdcTaskConfig::new(id, source.clone(), vec![TableRef::new("public", "events")]);
    let store_sink = || -> Box<dyn ChangeSink> {
        Box::new(StoreChangesSink::new(
            store.clone(),
            StorePath::from("lake"),
            StoreSinkConfig::new("bench_store"),
        ))
    };
    let target_url = pg.url("dst");
    runtime.block_on(async {
        // Both tasks make their slot and an (empty) initial load, then stop: the backlog
        // below is streamed, as a task that fell behind would stream it.
        for (id, sink) in [
            ("bench_store", store_sink()),
            ("bench_apply", apply_sink(&target_url).await),
        ] {
            let task = Task::start(config(id), sink);
            task.until(|p| p.phase == CdcPhase::Streaming).await;
            task.stop().await;
        }
    });

    eprintln!("generating {changes} changes…");
    let end = workload(&pg, changes);
    eprintln!("backlog ends at {end}");

    let recv = pg_recvlogical(&pg, end);
    let (store_time, store_rows) = runtime.block_on(async {
        let started = Instant::now();
        let task = Task::start(config("bench_store"), store_sink());
        let done = task.until(|p| p.checkpoint >= end).await;
        let elapsed = started.elapsed();
        task.stop().await;
        (elapsed, done.rows)
    });
    let (apply_time, apply_rows) = runtime.block_on(async {
        let started = Instant::now();
        let task = Task::start(config("bench_apply"), apply_sink(&target_url).await);
        let done = task.until(|p| p.checkpoint >= end).await;
        let elapsed = started.elapsed();
        task.stop().await;
        (elapsed, done.rows)
    });
    assert_eq!(store_rows, changes, "every change stored once");
    assert_eq!(apply_rows, changes, "every change applied once");
    assert_eq!(
        digest(&pg, "dst"),
        digest(&pg, "src"),
        "the applied replica equals the source"
    );

    let rate = |time: Duration| changes as f64 / time.as_secs_f64();
    println!("cdc: {changes} changes (60% insert, 30% update, 10% delete), 100 per transaction");
    println!(
        "  pg_recvlogical  {:>7.2} s  {:>10.0} changes/s",
        recv.as_secs_f64(),
        rate(recv)
    );
    println!(
        "  store_changes   {:>7.2} s  {:>10.0} changes/s  {:.2}x pg_recvlogical's rate",
        store_time.as_secs_f64(),
        rate(store_time),
        rate(store_time) / rate(recv)
    );
    println!(
        "  apply           {:>7.2} s  {:>10.0} changes/s  {:.2}x pg_recvlogical's rate",
        apply_time.as_secs_f64(),
        rate(apply_time),
        rate(apply_time) / rate(recv)
    );

    for (name, id) in [("store_changes", "bench_store"), ("apply", "bench_apply")] {
        let (lags, achieved) = runtime.block_on(async {
            let sink = if id == "bench_store" {
                store_sink()
            } else {
                apply_sink(&target_url).await
            };
            lag(
                &pg,
                config(id),
                sink,
                lag_rate,
                Duration::from_secs(lag_seconds),
            )
            .await
        });
        println!(
            "  {name} lag at {achieved:.0} changes/s for {lag_seconds} s ({} transactions): \
             p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            lags.len(),
            ms(percentile(&lags, 50.0)),
            ms(percentile(&lags, 99.0)),
            ms(lags.last().copied().unwrap_or_default()),
        );
    }
    assert_eq!(
        digest(&pg, "dst"),
        digest(&pg, "src"),
        "the replica applied live equals the source"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn apply_sink(url: &str) -> Box<dyn ChangeSink> {
    let sink = PostgresApplySink::connect(url, ApplySinkConfig::new("bench_apply"))
        .await
        .expect("apply sink");
    Box::new(sink)
}

/// A CDC task running on the runtime, with its progress.
struct Task {
    cancel: CancellationToken,
    progress: watch::Receiver<CdcProgress>,
    handle: JoinHandle<()>,
}

impl Task {
    fn start(config: CdcTaskConfig, mut sink: Box<dyn ChangeSink>) -> Self {
        let (sender, progress) = watch::channel(CdcProgress::default());
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let handle = tokio::spawn(async move {
            run_cdc_task_with_progress(&config, sink.as_mut(), token, &sender)
                .await
                .expect("the CDC task runs");
        });
        Self {
            cancel,
            progress,
            handle,
        }
    }

    /// Waits until the progress satisfies `done`; returns it.
    async fn until(&self, done: impl Fn(&CdcProgress) -> bool) -> CdcProgress {
        let mut progress = self.progress.clone();
        let value = progress
            .wait_for(|p| done(p))
            .await
            .expect("the task is running");
        value.clone()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.expect("the task ends cleanly");
    }
}

/// Runs the generated workload through psql; returns the server's WAL position after it.
fn workload(pg: &PgServer, changes: u64) -> Lsn {
    let inserts = changes * 6 / 10;
    let updates = changes * 3 / 10;
    let deletes = changes - inserts - updates;
    let mut sql = String::new();
    let chunks =
        |total: u64, first: u64, sql: &mut String, statement: &dyn Fn(u64, u64) -> String| {
            let mut done = 0;
            while done < total {
                let n = ROWS_PER_TRANSACTION.min(total - done);
                sql.push_str(&statement(first + done, first + done + n - 1));
                sql.push('\n');
                done += n;
            }
        };
    chunks(inserts, 1, &mut sql, &|a, b| {
        format!(
            "INSERT INTO events SELECT g, g % 1000, g * 0.01, md5(g::text), now() \
             FROM generate_series({a}, {b}) g;"
        )
    });
    chunks(updates, 1, &mut sql, &|a, b| {
        format!(
            "UPDATE events SET amount = amount + 1, note = note || 'u' WHERE id BETWEEN {a} AND {b};"
        )
    });
    chunks(deletes, inserts - deletes + 1, &mut sql, &|a, b| {
        format!("DELETE FROM events WHERE id BETWEEN {a} AND {b};")
    });
    sql.push_str("SELECT pg_current_wal_lsn();");
    let out = pg.execute("src", &sql).expect("the workload runs");
    out.trim().parse().expect("an LSN")
}

/// `pg_recvlogical` drains the backlog of slot `bench_recv` to `end` into /dev/null.
fn pg_recvlogical(pg: &PgServer, end: Lsn) -> Duration {
    let started = Instant::now();
    let status = Command::new(pg.program("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            pg.user(),
        ])
        .args(["-d", "src", "--slot", "bench_recv", "--start", "--no-loop"])
        .args(["-E", &end.to_string(), "-f", "/dev/null"])
        .args(["-o", "proto_version=2", "-o", "publication_names=recv_pub"])
        .args(["-o", "binary=true"])
        .env("PGPASSWORD", pg.password())
        .status()
        .expect("pg_recvlogical runs");
    assert!(status.success(), "pg_recvlogical: {status}");
    started.elapsed()
}

fn digest(pg: &PgServer, database: &str) -> String {
    pg.execute(
        database,
        "SELECT count(*), sum(id), sum(account), sum(amount), sum(length(note)) FROM events",
    )
    .expect("a digest")
}

/// Runs a live task while a generator commits at `rate` changes/s for `duration`; returns the
/// sorted lags and the rate achieved.
async fn lag(
    pg: &PgServer,
    config: CdcTaskConfig,
    sink: Box<dyn ChangeSink>,
    rate: u64,
    duration: Duration,
) -> (Vec<Duration>, f64) {
    let mut connection: PgConnection = ConnectConfig::from_url(&pg.url("src"))
        .expect("config")
        .sqlx_options()
        .connect()
        .await
        .expect("a connection");
    let task = Task::start(config, sink);
    // Catch up with what was written while the task was stopped before timing anything.
    let now: String = tidegate::cdc::sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut connection)
        .await
        .expect("the WAL position");
    let now: Lsn = now.parse().expect("an LSN");
    task.until(|p| p.phase == CdcPhase::Streaming && p.checkpoint >= now)
        .await;
    // Every change of the checkpoint, with when it was seen.
    let mut progress = task.progress.clone();
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            let checkpoint = progress.borrow_and_update().checkpoint;
            seen.push((checkpoint, Instant::now()));
        }
        seen
    });

    // The test cluster defaults to `synchronous_commit = off`, which leaves commits to the WAL
    // writer (every `wal_writer_delay`, 200 ms) and so hides them from logical decoding until
    // then. Production sources commit synchronously: so does the generator.
    tidegate::cdc::sqlx::query("SET synchronous_commit = on")
        .execute(&mut connection)
        .await
        .expect("synchronous commits");
    let first: i64 = tidegate::cdc::sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events")
        .fetch_one(&mut connection)
        .await
        .expect("the highest id");
    let every = Duration::from_secs_f64(ROWS_PER_TRANSACTION as f64 / rate as f64);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut committed = Vec::new();
    let mut next = first + 1;
    while started.elapsed() < duration {
        ticker.tick().await;
        let last = next + ROWS_PER_TRANSACTION as i64 - 1;
        tidegate::cdc::sqlx::query(
            "INSERT INTO events SELECT g, g % 1000, g * 0.01, md5(g::text), now() \
             FROM generate_series($1::int8, $2::int8) g",
        )
        .bind(next)
        .bind(last)
        .execute(&mut connection)
        .await
        .expect("an insert");
        let at = Instant::now();
        let lsn: String = tidegate::cdc::sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut connection)
            .await
            .expect("the WAL position");
        committed.push((lsn.parse::<Lsn>().expect("an LSN"), at));
        next = last + 1;
    }
    let achieved =
        (committed.len() as u64 * ROWS_PER_TRANSACTION) as f64 / started.elapsed().as_secs_f64();
    let end = committed.last().map(|(lsn, _)| *lsn).unwrap_or(Lsn::ZERO);
    task.until(|p| p.checkpoint >= end).await;
    let _ = connection.close().await;
    task.stop().await;
    let seen = observer.await.expect("the observer ends");
    let mut lags: Vec<Duration> = committed
        .iter()
        .map(|(lsn, at)| {
            seen.iter()
                .find(|(checkpoint, _)| checkpoint >= lsn)
                .map_or(Duration::MAX, |(_, when)| {
                    when.saturating_duration_since(*at)
                })
        })
        .collect();
    lags.sort();
    (lags, achieved)
}
