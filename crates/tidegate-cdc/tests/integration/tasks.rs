//! CDC tasks against a real PostgreSQL (and a local directory as object store): the initial
//! load meets the stream without gap or duplicate, a mixed workload ends with source and
//! target identical for both sinks, restarts lose and repeat nothing, unchanged TOAST values
//! survive, added columns arrive, and the errors people meet are clear.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use arrow::util::display::array_value_to_string;
use futures::future::BoxFuture;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidegate_cdc::sqlx::{self, Connection, PgConnection};
use tidegate_cdc::{
    ApplySinkConfig, BatchConfig, COMMIT_LSN_COLUMN, CancellationToken, CdcPhase, CdcProgress,
    CdcTaskConfig, CdcTaskSummary, ChangeBatch, ChangeSink, Checkpoint, CommitGroup, ConnectConfig,
    Error, LSN_COLUMN, Lsn, OLD_COLUMN_PREFIX, OP_COLUMN, PostgresApplySink, StoreChangesSink,
    StoreSinkConfig, TableDescription, TableRef, UNCHANGED_COLUMN, run_cdc_task,
    run_cdc_task_with_progress, slot_info,
};
use tidegate_replicate::{CopySummary, Sink};
use tidegate_testkit::PgServer;

const CATCH_UP: Duration = Duration::from_secs(90);

/// The captured tables: a plain one with a TOAST-able column, and a partitioned one.
const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, name text, qty integer, note text);
ALTER TABLE items ALTER COLUMN note SET STORAGE EXTERNAL;
CREATE TABLE parted (id bigint, region integer, v text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2);
INSERT INTO items SELECT g, 'item ' || g, g % 100, CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 100) END
    FROM generate_series(1, 3000) g;
INSERT INTO parted SELECT g, 1 + g % 2, 'p' || g FROM generate_series(1, 500) g;
";

struct Env {
    server: PgServer,
}

impl Env {
    async fn start(sql: &str) -> Self {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .unwrap();
        server.create_database("src").unwrap();
        server.create_database("dst").unwrap();
        server.execute("src", sql).unwrap();
        Self { server }
    }

    fn source_url(&self) -> String {
        format!("{}?sslmode=disable", self.server.url("src"))
    }

    fn target_url(&self) -> String {
        self.server.url("dst")
    }

    fn task(&self, id: &str, tables: &[&str]) -> CdcTaskConfig {
        let source = ConnectConfig::from_url(&self.source_url()).unwrap();
        let tables = tables.iter().map(|t| TableRef::new("public", *t)).collect();
        CdcTaskConfig::new(id, source, tables)
            .with_batch(BatchConfig::default().with_batch_rows(256))
            .with_group(1_000, 20, Duration::from_millis(100))
    }

    async fn source(&self) -> PgConnection {
        PgConnection::connect(&self.server.url("src"))
            .await
            .unwrap()
    }

    async fn target(&self) -> PgConnection {
        PgConnection::connect(&self.server.url("dst"))
            .await
            .unwrap()
    }
}

/// A running task in this process.
struct Running {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<Result<CdcTaskSummary, Error>>,
}

impl Running {
    async fn stop(self) -> CdcTaskSummary {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap()
    }
}

fn spawn_apply(env: &Env, config: CdcTaskConfig) -> Running {
    let cancel = CancellationToken::new();
    let url = env.target_url();
    let token = cancel.clone();
    let handle = tokio::spawn(async move {
        let mut sink =
            PostgresApplySink::connect(&url, ApplySinkConfig::new(config.task_id.clone())).await?;
        run_cdc_task(&config, &mut sink, token).await
    });
    Running { cancel, handle }
}

fn store_sink(dir: &std::path::Path, task_id: &str) -> StoreChangesSink {
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    StoreChangesSink::new(store, Path::from("lake"), StoreSinkConfig::new(task_id))
}

fn spawn_store(dir: &std::path::Path, config: CdcTaskConfig) -> Running {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let mut sink = store_sink(dir, &config.task_id);
    let handle = tokio::spawn(async move { run_cdc_task(&config, &mut sink, token).await });
    Running { cancel, handle }
}

/// A small deterministic generator (no dependency for randomness in tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// `transactions` transactions of inserts, updates (some changing the key, some leaving the
/// TOASTed note untouched), deletes, several changes of one row in one transaction, and now
/// and then a truncate of the partitioned table.
async fn workload(source: &mut PgConnection, seed: u64, transactions: u64) {
    let mut rng = Lcg(seed);
    for n in 0..transactions {
        let mut sql = String::from("BEGIN;");
        for _ in 0..=rng.next(6) {
            let id = 1 + rng.next(4_000);
            let statement = match rng.next(12) {
                0..=2 => format!(
                    "INSERT INTO items VALUES ({}, 'new {id}', {}, {}) ON CONFLICT (id) DO NOTHING;",
                    id + 10_000 * (1 + rng.next(5)),
                    rng.next(1000),
                    if rng.next(3) == 0 {
                        format!("repeat(md5('{n}'), 80)")
                    } else {
                        "NULL".into()
                    }
                ),
                3..=5 => format!("UPDATE items SET qty = qty + 1 WHERE id = {id};"),
                6 => format!("UPDATE items SET name = 'renamed {n}', note = NULL WHERE id = {id};"),
                7 => format!(
                    "UPDATE items SET id = id + 100000 WHERE id = {id} \
                     AND NOT EXISTS (SELECT 1 FROM items WHERE id = {id} + 100000);"
                ),
                8 => format!("DELETE FROM items WHERE id = {id};"),
                9 => format!(
                    "INSERT INTO items VALUES ({0}, 'x', 1, NULL) ON CONFLICT (id) DO NOTHING; \
                     UPDATE items SET qty = 2 WHERE id = {0}; DELETE FROM items WHERE id = {0}; \
                     INSERT INTO items VALUES ({0}, 'y', 3, NULL) ON CONFLICT (id) DO NOTHING;",
                    200_000 + id
                ),
                10 => format!(
                    "INSERT INTO parted VALUES ({id}, {}, 'w{n}') ON CONFLICT DO NOTHING; \
                     UPDATE parted SET v = v || '+' WHERE id = {};",
                    1 + rng.next(2),
                    1 + rng.next(600)
                ),
                _ => {
                    if rng.next(40) == 0 {
                        "TRUNCATE parted; INSERT INTO parted VALUES (1, 1, 'after truncate');"
                            .into()
                    } else {
                        format!("DELETE FROM parted WHERE id = {id};")
                    }
                }
            };
            sql.push_str(&statement);
        }
        sql.push_str("COMMIT;");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *source)
            .await
            .unwrap();
    }
}

/// An order-independent fingerprint of `table`'s rows over `columns`, and its row count;
/// `None` while the table does not exist.
async fn fingerprint(
    connection: &mut PgConnection,
    table: &str,
    columns: &str,
) -> Option<(String, i64)> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    if !exists {
        return None;
    }
    let sql = format!(
        "SELECT coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), ''), count(*) \
         FROM (SELECT {columns} FROM {table}) r"
    );
    // Columns added at the source reach the target with the next change: until then, the
    // query may fail.
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(connection)
        .await
        .ok()
}

/// Waits until every table's fingerprint is the same at the source and the target.
async fn wait_identical(env: &Env, tables: &[(&str, &str)]) {
    let started = Instant::now();
    let mut source = env.source().await;
    let mut target = env.target().await;
    loop {
        let mut same = true;
        for (table, columns) in tables {
            let at_source = fingerprint(&mut source, table, columns).await;
            let at_target = fingerprint(&mut target, table, columns).await;
            same &= at_source.is_some() && at_source == at_target;
        }
        if same {
            return;
        }
        if started.elapsed() >= CATCH_UP {
            for (table, columns) in tables {
                eprintln!(
                    "{table}: source {:?}, target {:?}",
                    fingerprint(&mut source, table, columns).await,
                    fingerprint(&mut target, table, columns).await
                );
            }
            panic!("the target did not catch up with the source");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const ITEMS: (&str, &str) = ("items", "id, name, qty, note");
const PARTED: (&str, &str) = ("parted", "id, region, v");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_initial_load_and_mixed_workload_end_identical() {
    let env = Env::start(SCHEMA).await;
    let running = spawn_apply(&env, env.task("apply1", &["items", "parted"]));
    // Changes begin while the initial load runs: none may be lost or applied twice.
    let mut source = env.source().await;
    workload(&mut source, 1, 300).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;
    workload(&mut source, 11, 200).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;
    let summary = running.stop().await;
    assert!(summary.initial_load.is_some());
    // Some generated transactions change nothing (and are not sent).
    assert!(summary.transactions >= 100, "{summary:?}");

    // The checkpoint sits in the target, next to the data.
    let mut target = env.target().await;
    let (lsn,): (String,) =
        sqlx::query_as("SELECT lsn::text FROM tidegate.cdc_checkpoint WHERE task_id = 'apply1'")
            .fetch_one(&mut target)
            .await
            .unwrap();
    assert_eq!(lsn, summary.checkpoint.unwrap().lsn.to_string());

    // A restart resumes from it without a new initial load.
    let running = spawn_apply(&env, env.task("apply1", &["items", "parted"]));
    workload(&mut source, 2, 100).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;
    let summary = running.stop().await;
    assert!(summary.initial_load.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_restarts_without_acknowledging_lose_and_repeat_nothing() {
    let env = Env::start(SCHEMA).await;
    let mut source = env.source().await;
    for round in 0..4 {
        let running = spawn_apply(&env, env.task("restart", &["items", "parted"]));
        workload(&mut source, 10 + round, 60).await;
        // Dropped mid-flight: whatever was not committed with its checkpoint is redone.
        tokio::time::sleep(Duration::from_millis(50 * round)).await;
        running.handle.abort();
        let _ = running.handle.await;
    }
    let running = spawn_apply(&env, env.task("restart", &["items", "parted"]));
    wait_identical(&env, &[ITEMS, PARTED]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_keeps_unchanged_toast_values() {
    let env = Env::start(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 3000) g;",
    )
    .await;
    let running = spawn_apply(&env, env.task("toast", &["docs"]));
    let mut source = env.source().await;
    sqlx::raw_sql(
        "INSERT INTO docs SELECT 2, string_agg(md5((g * 7)::text), ''), 0 FROM generate_series(1, 3000) g;
         UPDATE docs SET n = 1 WHERE id = 1;
         UPDATE docs SET n = 5 WHERE id = 2;
         BEGIN; UPDATE docs SET n = n + 1; UPDATE docs SET n = n + 1 WHERE id = 2; COMMIT;",
    )
    .execute(&mut source)
    .await
    .unwrap();
    wait_identical(&env, &[("docs", "id, md5(body), n")]).await;
    running.stop().await;
    let mut target = env.target().await;
    let nulls: i64 = sqlx::query_scalar("SELECT count(*) FROM docs WHERE body IS NULL")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(nulls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_identity_full_and_using_index_are_applied_on_their_keys() {
    let env = Env::start(
        "CREATE TABLE full_t (id int PRIMARY KEY, v text, n int);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         CREATE TABLE idx_t (a int NOT NULL, b int NOT NULL, v text);
         CREATE UNIQUE INDEX idx_t_ab ON idx_t (a, b);
         ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_ab;
         INSERT INTO full_t SELECT g, 'v' || g, g FROM generate_series(1, 100) g;
         INSERT INTO idx_t SELECT g, g % 3, 'w' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let running = spawn_apply(&env, env.task("identities", &["full_t", "idx_t"]));
    let mut source = env.source().await;
    sqlx::raw_sql(
        "UPDATE full_t SET v = 'changed' WHERE id % 7 = 0;
         UPDATE full_t SET id = id + 1000 WHERE id % 11 = 0;
         DELETE FROM full_t WHERE id % 13 = 0;
         INSERT INTO full_t VALUES (5000, NULL, 1);
         UPDATE idx_t SET v = 'changed' WHERE a % 7 = 0;
         UPDATE idx_t SET b = b + 10 WHERE a % 11 = 0;
         DELETE FROM idx_t WHERE a % 13 = 0;
         INSERT INTO idx_t VALUES (5000, 1, 'new');",
    )
    .execute(&mut source)
    .await
    .unwrap();
    wait_identical(&env, &[("full_t", "id, v, n"), ("idx_t", "a, b, v")]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_task_moves_its_checkpoint_and_slot_along_with_the_server() {
    let env = Env::start(
        "CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE other (id int);
         INSERT INTO watched VALUES (1);",
    )
    .await;
    // Keepalives every second rather than every 30.
    env.server
        .execute("src", "ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .unwrap();
    env.server
        .execute("src", "SELECT pg_reload_conf()")
        .unwrap();
    let config = env
        .task("idle", &["watched"])
        .with_idle_checkpoint(Some(Duration::from_millis(100)));
    let running = spawn_apply(&env, config.clone());
    wait_identical(&env, &[("watched", "id")]).await;

    // Only a table the task does not capture changes: the WAL moves on without it.
    let mut source = env.source().await;
    sqlx::raw_sql("INSERT INTO other SELECT generate_series(1, 10000)")
        .execute(&mut source)
        .await
        .unwrap();
    let wal: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut source)
        .await
        .unwrap();
    let wal: Lsn = wal.parse().unwrap();
    let mut target = env.target().await;
    let started = Instant::now();
    loop {
        let checkpoint: String = sqlx::query_scalar(
            "SELECT lsn::text FROM tidegate.cdc_checkpoint WHERE task_id = 'idle'",
        )
        .fetch_one(&mut target)
        .await
        .unwrap();
        let checkpoint: Lsn = checkpoint.parse().unwrap();
        let slot = slot_info(&mut source, &config.slot_name())
            .await
            .unwrap()
            .unwrap();
        let confirmed = slot.confirmed_flush_lsn.unwrap();
        // The slot never runs ahead of the target.
        assert!(confirmed <= checkpoint, "{confirmed} > {checkpoint}");
        if confirmed >= wal {
            break;
        }
        assert!(
            started.elapsed() < CATCH_UP,
            "the idle checkpoint did not advance"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn columns_added_mid_stream_reach_both_sinks() {
    let env = Env::start(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    let apply = spawn_apply(&env, env.task("added_apply", &["items"]));
    let store = spawn_store(dir.path(), env.task("added_store", &["items"]));
    let mut source = env.source().await;
    workload(&mut source, 3, 30).await;
    // Both streams run (and have described the table) before the column comes.
    wait_identical(&env, &[ITEMS]).await;
    wait_replayed(&env, dir.path(), "added_store", &["items"]).await;
    sqlx::raw_sql("UPDATE items SET qty = qty + 1 WHERE id <= 10")
        .execute(&mut source)
        .await
        .unwrap();
    wait_identical(&env, &[ITEMS]).await;
    wait_replayed(&env, dir.path(), "added_store", &["items"]).await;
    sqlx::raw_sql(
        "ALTER TABLE items ADD COLUMN extra numeric(10, 2);
         UPDATE items SET extra = id / 7.0 WHERE id % 10 = 0;
         INSERT INTO items VALUES (999999, 'with extra', 1, NULL, 12.5);",
    )
    .execute(&mut source)
    .await
    .unwrap();
    workload(&mut source, 4, 30).await;
    wait_identical(&env, &[("items", "id, name, qty, note, extra")]).await;
    apply.stop().await;

    wait_replayed(&env, dir.path(), "added_store", &["items"]).await;
    store.stop().await;
    // After a restart the numbering goes on where it stood.
    let store = spawn_store(dir.path(), env.task("added_store", &["items"]));
    workload(&mut source, 5, 10).await;
    wait_replayed(&env, dir.path(), "added_store", &["items"]).await;
    store.stop().await;
    let manifests = store_sink(dir.path(), "added_store")
        .manifests()
        .await
        .unwrap();
    let current = &manifests.last().unwrap().schemas["public.items"];
    assert_eq!(current.version, 2);
    assert!(current.fields.iter().any(|(name, _)| name == "extra"));
    let versions: Vec<u32> = manifests
        .iter()
        .flat_map(|manifest| &manifest.files)
        .filter(|file| file.fields.iter().any(|(name, _)| name == "extra"))
        .map(|file| file.schema_version)
        .collect();
    assert!(!versions.is_empty(), "no change file has the added column");
    assert!(versions.iter().all(|version| *version == 2), "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_changes_replay_to_the_source_state_across_restarts() {
    let env = Env::start(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    let mut source = env.source().await;
    let running = spawn_store(dir.path(), env.task("lake", &["items", "parted"]));
    workload(&mut source, 5, 200).await;
    wait_replayed(&env, dir.path(), "lake", &["items", "parted"]).await;
    running.stop().await;
    for round in 0..3 {
        let running = spawn_store(dir.path(), env.task("lake", &["items", "parted"]));
        workload(&mut source, 6 + round, 50).await;
        tokio::time::sleep(Duration::from_millis(40 * round)).await;
        running.handle.abort();
        let _ = running.handle.await;
    }
    let running = spawn_store(dir.path(), env.task("lake", &["items", "parted"]));
    wait_replayed(&env, dir.path(), "lake", &["items", "parted"]).await;
    let summary = running.stop().await;
    assert!(summary.initial_load.is_none());

    // The confirmed position is the newest manifest's.
    let manifests = store_sink(dir.path(), "lake").manifests().await.unwrap();
    assert_eq!(manifests[0].kind, "snapshot");
    let newest = manifests.last().unwrap();
    assert_eq!(newest.lsn, summary.checkpoint.unwrap().lsn.to_string());
}

/// An apply task in this process that publishes its progress.
struct Watched {
    cancel: CancellationToken,
    progress: tokio::sync::watch::Receiver<CdcProgress>,
    handle: tokio::task::JoinHandle<Result<CdcTaskSummary, Error>>,
}

impl Watched {
    fn apply(env: &Env, config: CdcTaskConfig) -> Self {
        let cancel = CancellationToken::new();
        let (sender, progress) = tokio::sync::watch::channel(CdcProgress::default());
        let url = env.target_url();
        let token = cancel.clone();
        let handle = tokio::spawn(async move {
            let mut sink =
                PostgresApplySink::connect(&url, ApplySinkConfig::new(config.task_id.clone()))
                    .await?;
            run_cdc_task_with_progress(&config, &mut sink, token, &sender).await
        });
        Self {
            cancel,
            progress,
            handle,
        }
    }

    async fn until(&mut self, what: impl Fn(&CdcProgress) -> bool) -> CdcProgress {
        tokio::time::timeout(CATCH_UP, self.progress.wait_for(what))
            .await
            .expect("in time")
            .expect("the task runs")
            .clone()
    }

    async fn stop(self) -> CdcTaskSummary {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap()
    }
}

async fn table_oid(target: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar("SELECT $1::regclass::oid::int8")
        .bind(table)
        .fetch_one(target)
        .await
        .unwrap()
}

/// Runs task `task_id` resyncing `parted` while a workload runs: both tables end identical to
/// the source, none is failed, and `items` was not loaded again (a load makes a new table, so
/// its oid would change).
async fn resync_parted_alone(env: &Env, task_id: &str, seed: u64) {
    let mut target = env.target().await;
    let items_oid = table_oid(&mut target, "public.items").await;
    let config = env
        .task(task_id, &["items", "parted"])
        .with_resync(vec![TableRef::new("public", "parted")]);
    let mut task = Watched::apply(env, config);
    workload(&mut env.source().await, seed, 100).await;
    wait_identical(env, &[ITEMS, PARTED]).await;
    let now = task.until(|p| p.phase == CdcPhase::Streaming).await;
    assert!(now.failed_tables.is_empty(), "{:?}", now.failed_tables);
    task.stop().await;
    assert_eq!(table_oid(&mut target, "public.items").await, items_oid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_table_is_set_apart_and_resynced_alone() {
    let env = Env::start(SCHEMA).await;
    let mut source = env.source().await;
    let mut target = env.target().await;
    let mut task = Watched::apply(&env, env.task("isolate", &["items", "parted"]));
    workload(&mut source, 21, 100).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;

    // The target starts refusing one table's changes.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'parted is closed for maintenance'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON public.parted \
         FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&mut target)
    .await
    .unwrap();
    workload(&mut source, 22, 150).await;
    let now = task.until(|p| !p.failed_tables.is_empty()).await;
    assert_eq!(now.failed_tables.len(), 1, "{:?}", now.failed_tables);
    let failed = &now.failed_tables[0];
    assert_eq!(failed.table, TableRef::new("public", "parted"));
    let failure = failed.failure.as_deref().unwrap();
    assert!(
        failure.contains("P0001") && failure.contains("parted is closed for maintenance"),
        "{failure}"
    );
    // The other table goes on, and the task runs.
    wait_identical(&env, &[ITEMS]).await;
    assert!(!task.handle.is_finished());
    let (recorded,): (Option<String>,) = sqlx::query_as(
        "SELECT failure FROM tidegate.cdc_checkpoint_tables \
         WHERE task_id = 'isolate' AND table_name = 'parted'",
    )
    .fetch_one(&mut target)
    .await
    .unwrap();
    assert_eq!(recorded.as_deref(), Some(failure));
    task.stop().await;

    // A restart keeps it apart: nothing is lost, nothing is redone.
    let mut task = Watched::apply(&env, env.task("isolate", &["items", "parted"]));
    task.until(|p| p.phase == CdcPhase::Streaming && p.failed_tables.len() == 1)
        .await;
    workload(&mut source, 23, 50).await;
    wait_identical(&env, &[ITEMS]).await;
    task.stop().await;

    // Fixed, then resynced alone while changes keep coming; the other table is not loaded
    // again (the initial load makes a new table, so its oid would change).
    sqlx::raw_sql("DROP TRIGGER refuse ON public.parted")
        .execute(&mut target)
        .await
        .unwrap();
    let parted_oid = table_oid(&mut target, "public.parted").await;
    resync_parted_alone(&env, "isolate", 24).await;
    assert_ne!(table_oid(&mut target, "public.parted").await, parted_oid);
    let (failure, resynced): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT failure, resynced_at::text FROM tidegate.cdc_checkpoint_tables \
         WHERE task_id = 'isolate' AND table_name = 'parted'",
    )
    .fetch_one(&mut target)
    .await
    .unwrap();
    assert_eq!(failure, None);
    assert!(resynced.is_some());

    // And from then on both tables follow, across restarts.
    let mut task = Watched::apply(&env, env.task("isolate", &["items", "parted"]));
    task.until(|p| p.phase == CdcPhase::Streaming).await;
    workload(&mut source, 25, 100).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;
    task.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_failing_its_initial_load_is_set_apart_and_resynced_alone() {
    let env = Env::start(SCHEMA).await;
    let mut source = env.source().await;
    let mut target = env.target().await;
    // A view on the target's table keeps the load from replacing it.
    sqlx::raw_sql(
        "CREATE TABLE public.parted (id bigint); \
         CREATE VIEW parted_ids AS SELECT id FROM public.parted;",
    )
    .execute(&mut target)
    .await
    .unwrap();
    let mut task = Watched::apply(&env, env.task("loadfail", &["items", "parted"]));
    let now = task.until(|p| p.phase == CdcPhase::Streaming).await;
    assert_eq!(now.failed_tables.len(), 1, "{:?}", now.failed_tables);
    assert_eq!(
        now.failed_tables[0].table,
        TableRef::new("public", "parted")
    );
    let failure = now.failed_tables[0].failure.as_deref().unwrap();
    assert!(failure.contains("the initial load failed"), "{failure}");
    // The other table was loaded and follows.
    workload(&mut source, 31, 80).await;
    wait_identical(&env, &[ITEMS]).await;
    task.stop().await;

    sqlx::raw_sql("DROP VIEW parted_ids")
        .execute(&mut target)
        .await
        .unwrap();
    resync_parted_alone(&env, "loadfail", 32).await;
}

/// Makes the test server stream transactions past 64 kB.
fn stream_large_transactions(env: &Env) {
    env.server
        .execute("src", "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        .unwrap();
    env.server
        .execute("src", "SELECT pg_reload_conf()")
        .unwrap();
}

/// Two large transactions on `large` while `small` commits others: one committed with a
/// subtransaction rolled back, one rolled back altogether.
async fn large_transactions(large: &mut PgConnection, small: &mut PgConnection) {
    let mut step = async |sql: &str, seed: Option<u64>| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *large)
            .await
            .unwrap();
        // Other transactions commit while the large one is open.
        if let Some(seed) = seed {
            workload(&mut *small, seed, 10).await;
        }
    };
    step(
        "BEGIN; INSERT INTO items SELECT g, 'large ' || g, g % 10, NULL \
         FROM generate_series(500001, 503000) g",
        Some(41),
    )
    .await;
    step(
        "SAVEPOINT s1; UPDATE items SET qty = qty + 100 WHERE id BETWEEN 500001 AND 501000; \
         INSERT INTO items SELECT g, 'rolled back ' || g, 1, NULL \
         FROM generate_series(510001, 512000) g",
        Some(42),
    )
    .await;
    step("ROLLBACK TO SAVEPOINT s1", Some(43)).await;
    step(
        "UPDATE items SET name = name || ' kept' WHERE id BETWEEN 502001 AND 502500; \
         DELETE FROM items WHERE id BETWEEN 500001 AND 500100; \
         INSERT INTO parted SELECT g, 1 + g % 2, 'large' FROM generate_series(700001, 702000) g",
        Some(44),
    )
    .await;
    // Last, the table changes while the transaction is open (its lock keeps the other
    // transactions out until the commit): rows before and after have other columns.
    step(
        "ALTER TABLE items ADD COLUMN extra text; \
         UPDATE items SET extra = 'added' WHERE id BETWEEN 502001 AND 502300",
        None,
    )
    .await;
    step("COMMIT", Some(45)).await;
    // A large transaction rolled back altogether leaves nothing.
    step(
        "BEGIN; INSERT INTO items SELECT g, 'never', 0, NULL \
         FROM generate_series(600001, 604000) g",
        Some(46),
    )
    .await;
    step("ROLLBACK", Some(47)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_transactions_are_streamed_before_they_commit_and_applied_once() {
    let env = Env::start(SCHEMA).await;
    // Small enough that the large transactions below are streamed in blocks.
    env.server
        .execute("src", "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        .unwrap();
    env.server
        .execute("src", "SELECT pg_reload_conf()")
        .unwrap();
    let mut task = Watched::apply(&env, env.task("streamed", &["items", "parted"]));
    task.until(|p| p.phase == CdcPhase::Streaming).await;
    let mut large = env.source().await;
    let mut small = env.source().await;
    large_transactions(&mut large, &mut small).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;
    let summary = task.stop().await;
    assert!(summary.streamed_transactions >= 1, "{summary:?}");

    // Nothing is left kept, and a restart changes nothing.
    let mut target = env.target().await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM tidegate.cdc_checkpoint_stream")
        .fetch_one(&mut target)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let mut task = Watched::apply(&env, env.task("streamed", &["items", "parted"]));
    task.until(|p| p.phase == CdcPhase::Streaming).await;
    workload(&mut small, 48, 20).await;
    wait_identical(&env, &[ITEMS, PARTED]).await;

    // Stopped while a large transaction is open: its blocks kept so far are dropped at the
    // next start, and the server sends it again from its start.
    sqlx::raw_sql(
        "BEGIN; INSERT INTO items SELECT g, 'across a restart', 2, NULL \
         FROM generate_series(800001, 804000) g",
    )
    .execute(&mut large)
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM tidegate.cdc_checkpoint_stream")
            .fetch_one(&mut target)
            .await
            .unwrap();
        if kept > 0 {
            break;
        }
        assert!(
            started.elapsed() < CATCH_UP,
            "no block of the open transaction was kept"
        );
        workload(&mut small, 49, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.stop().await;
    sqlx::raw_sql("COMMIT").execute(&mut large).await.unwrap();
    let mut task = Watched::apply(&env, env.task("streamed", &["items", "parted"]));
    wait_identical(&env, &[ITEMS, PARTED]).await;
    task.until(|p| p.phase == CdcPhase::Streaming).await;
    let summary = task.stop().await;
    assert!(summary.streamed_transactions >= 1, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_transactions_are_streamed_into_change_files_once() {
    let env = Env::start(SCHEMA).await;
    stream_large_transactions(&env);
    let dir = tempfile::tempdir().unwrap();
    let running = spawn_store(dir.path(), env.task("lakestream", &["items", "parted"]));
    wait_replayed(&env, dir.path(), "lakestream", &["items", "parted"]).await;
    let mut large = env.source().await;
    let mut small = env.source().await;
    large_transactions(&mut large, &mut small).await;
    wait_replayed(&env, dir.path(), "lakestream", &["items", "parted"]).await;
    let summary = running.stop().await;
    assert!(summary.streamed_transactions >= 1, "{summary:?}");
    let kept = dir.path().join("lake/_tidegate/cdc/lakestream/streamed");
    let left = std::fs::read_dir(&kept)
        .map(|entries| {
            entries
                .flatten()
                .flat_map(|xid| std::fs::read_dir(xid.path()).into_iter().flatten())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "blocks left under {}", kept.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_is_refused_for_a_table_outside_the_task_and_by_store_changes() {
    let env = Env::start(SCHEMA).await;
    let outside = env
        .task("refused", &["items"])
        .with_resync(vec![TableRef::new("public", "parted")]);
    let error = Watched::apply(&env, outside)
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        error.to_string().contains("not one of the task's tables"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let running = spawn_store(dir.path(), env.task("lake", &["items"]));
    wait_replayed(&env, dir.path(), "lake", &["items"]).await;
    running.stop().await;
    let config = env
        .task("lake", &["items"])
        .with_resync(vec![TableRef::new("public", "items")]);
    let error = spawn_store(dir.path(), config)
        .handle
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        error.to_string().contains("cannot load tables again alone"),
        "{error}"
    );
}

/// A target that takes its time to commit, as a distant one does; counts the groups that
/// held transactions.
#[derive(Debug)]
struct SlowCommits {
    inner: StoreChangesSink,
    delay: Duration,
    groups: Arc<AtomicUsize>,
}

impl ChangeSink for SlowCommits {
    fn checkpoint(&mut self) -> BoxFuture<'_, Result<Option<Checkpoint>, Error>> {
        self.inner.checkpoint()
    }

    fn snapshot_sink(&self) -> Arc<dyn Sink> {
        self.inner.snapshot_sink()
    }

    fn snapshot_loaded<'a>(
        &'a mut self,
        consistent_point: Lsn,
        load: &'a CopySummary,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.snapshot_loaded(consistent_point, load)
    }

    fn relation<'a>(&'a mut self, table: &'a TableDescription) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.relation(table)
    }

    fn write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.write(batch)
    }

    fn commit<'a>(&'a mut self, group: &'a CommitGroup) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if group.transactions > 0 {
                self.groups.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.commit(group).await
        })
    }

    fn abort(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.abort()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_received_during_a_slow_commit_share_the_next_group() {
    let env = Env::start(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    // Only the server running out of changes ends a group here.
    let config =
        env.task("slow", &["items"])
            .with_group(1_000_000, 1_000_000, Duration::from_secs(60));
    let groups = Arc::new(AtomicUsize::new(0));
    let mut sink = SlowCommits {
        inner: store_sink(dir.path(), "slow"),
        delay: Duration::from_millis(300),
        groups: Arc::clone(&groups),
    };
    let (progress, mut watch) = tokio::sync::watch::channel(CdcProgress::default());
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let handle = tokio::spawn(async move {
        run_cdc_task_with_progress(&config, &mut sink, token, &progress).await
    });
    tokio::time::timeout(CATCH_UP, watch.wait_for(|p| p.phase == CdcPhase::Streaming))
        .await
        .unwrap()
        .unwrap();

    // Committed one by one, synchronously: the server sends each as it commits, and a
    // keepalive after each once it has caught up.
    let mut source = env.source().await;
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut source)
        .await
        .unwrap();
    const TRANSACTIONS: usize = 40;
    for i in 0..TRANSACTIONS {
        sqlx::query("INSERT INTO items (id, name, qty) VALUES ($1, 'slow', 1)")
            .bind(1_000_000 + i as i64)
            .execute(&mut source)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut source)
        .await
        .unwrap();
    let end: Lsn = end.parse().unwrap();
    tokio::time::timeout(CATCH_UP, watch.wait_for(|p| p.checkpoint >= end))
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    let summary = handle.await.unwrap().unwrap();

    assert_eq!(summary.transactions, TRANSACTIONS as u64, "{summary:?}");
    // A group per keepalive would be one per transaction: 40 commits of 300 ms.
    let groups = groups.load(Ordering::SeqCst);
    assert!(
        groups <= TRANSACTIONS / 4,
        "{groups} groups for {TRANSACTIONS} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_files_no_manifest_names_are_deleted_on_restart() {
    let env = Env::start(SCHEMA).await;
    let dir = tempfile::tempdir().unwrap();
    let mut source = env.source().await;
    let running = spawn_store(dir.path(), env.task("tidy", &["items"]));
    wait_replayed(&env, dir.path(), "tidy", &["items"]).await;
    workload(&mut source, 51, 60).await;
    wait_replayed(&env, dir.path(), "tidy", &["items"]).await;
    running.stop().await;

    // What a run that died in the middle of a group leaves: a change file past the
    // checkpoint that no manifest names.
    let manifests = store_sink(dir.path(), "tidy").manifests().await.unwrap();
    let checkpoint: Lsn = manifests.last().unwrap().lsn.parse().unwrap();
    let changes = dir.path().join("lake/public/items/changes");
    let named: Vec<PathBuf> = std::fs::read_dir(&changes)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(!named.is_empty());
    let orphan = changes.join(format!("{:016X}-v1-000.parquet", checkpoint.as_u64() + 8));
    std::fs::write(&orphan, b"half a file").unwrap();

    let running = spawn_store(dir.path(), env.task("tidy", &["items"]));
    workload(&mut source, 52, 60).await;
    wait_replayed(&env, dir.path(), "tidy", &["items"]).await;
    running.stop().await;
    assert!(!orphan.exists(), "{} is left", orphan.display());
    for path in named {
        assert!(path.exists(), "{} was deleted", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_without_key_is_refused_by_apply_before_anything_is_created() {
    let env =
        Env::start("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (a int, b text);")
            .await;
    let config = env.task("nokey", &["keyed", "loose"]);
    let mut sink = PostgresApplySink::connect(&env.target_url(), ApplySinkConfig::new("nokey"))
        .await
        .unwrap();
    let error = run_cdc_task(&config, &mut sink, CancellationToken::new())
        .await
        .unwrap_err();
    match &error {
        Error::NoApplyKey { table } => assert_eq!(table, "public.loose"),
        other => panic!("unexpected error: {other}"),
    }
    assert!(error.to_string().contains("primary key"), "{error}");
    let mut source = env.source().await;
    assert!(
        slot_info(&mut source, &config.slot_name())
            .await
            .unwrap()
            .is_none()
    );

    // The store sink has no such need: the initial load of both tables completes.
    let dir = tempfile::tempdir().unwrap();
    let running = spawn_store(dir.path(), env.task("nokey_store", &["keyed", "loose"]));
    let started = Instant::now();
    while store_sink(dir.path(), "nokey_store")
        .manifests()
        .await
        .unwrap()
        .is_empty()
    {
        assert!(started.elapsed() < CATCH_UP, "no snapshot manifest");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = running.stop().await;
    assert_eq!(summary.initial_load.unwrap().tables.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_dropped_behind_the_tasks_back_is_a_clear_error() {
    let env = Env::start(SCHEMA).await;
    let config = env.task("dropped", &["items"]);
    let running = spawn_apply(&env, config.clone());
    let mut source = env.source().await;
    workload(&mut source, 7, 20).await;
    wait_identical(&env, &[ITEMS]).await;
    running.stop().await;

    // The server lets go of the slot a moment after the task's connection closed.
    let started = Instant::now();
    while let Err(error) = sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(config.slot_name())
        .execute(&mut source)
        .await
    {
        assert!(started.elapsed() < CATCH_UP, "{error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sink = PostgresApplySink::connect(&env.target_url(), ApplySinkConfig::new("dropped"))
        .await
        .unwrap();
    let error = run_cdc_task(&config, &mut sink, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::SlotLost { .. }), "{error}");
    assert!(error.to_string().contains("tidegate_dropped"), "{error}");
}

/// SIGKILLs the `cdc_apply` example at random moments, at least ten times, while a workload
/// runs, then lets it finish: the target must equal the source. With `TIDEGATE_SOAK_SECONDS`
/// set (`scripts/soak.sh`), the kills go on for that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_at_random_moments_ends_identical() {
    let binary = example_binary("cdc_apply");
    let env = Env::start(SCHEMA).await;
    sqlx::raw_sql(
        "INSERT INTO items SELECT g, 'bulk ' || g, g % 7, NULL FROM generate_series(300001, 340000) g",
    )
    .execute(&mut env.source().await)
    .await
    .unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);

    let stop = Arc::new(AtomicBool::new(false));
    let workload_task = {
        let mut source = env.source().await;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut round = 100;
            while !stop.load(Ordering::Relaxed) {
                workload(&mut source, round, 10).await;
                round += 1;
            }
        })
    };
    let spawn = || {
        tokio::process::Command::new(&binary)
            .args([
                env.source_url(),
                env.target_url(),
                "killed".into(),
                "public.items,public.parted".into(),
            ])
            .env(
                "RUST_LOG",
                std::env::var("TIDEGATE_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let soak = Duration::from_secs(
        std::env::var("TIDEGATE_SOAK_SECONDS")
            .ok()
            .and_then(|seconds| seconds.parse().ok())
            .unwrap_or(0),
    );
    let started = Instant::now();
    let mut kill = 0;
    while kill < 12 || started.elapsed() < soak {
        kill += 1;
        let mut child = spawn();
        let wait = Duration::from_millis(150 + rng.next(1_800));
        tokio::time::sleep(wait).await;
        if let Some(status) = child.try_wait().unwrap() {
            print_diff(&env, "parted", "id, region, v").await;
            print_diff(&env, "items", "id, name, qty, md5(note)").await;
            panic!("the task process ended by itself ({status}) before kill {kill}");
        }
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    workload_task.await.unwrap();
    let mut child = spawn();
    wait_identical(&env, &[ITEMS, PARTED]).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// Prints the rows only one side has (test data only).
async fn print_diff(env: &Env, table: &str, columns: &str) {
    let sql = format!("SELECT ({columns})::text FROM {table}");
    let mut at_source: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(&mut env.source().await)
        .await
        .unwrap();
    let mut at_target: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut env.target().await)
        .await
        .unwrap();
    at_source.sort();
    at_target.sort();
    let only_source: Vec<_> = at_source
        .iter()
        .filter(|r| at_target.binary_search(r).is_err())
        .take(10)
        .collect();
    let only_target: Vec<_> = at_target
        .iter()
        .filter(|r| at_source.binary_search(r).is_err())
        .take(10)
        .collect();
    eprintln!("{table}: only at the source {only_source:?}; only at the target {only_target:?}");
}

/// The path of an example built alongside this test (`cargo test` builds examples).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example {name} not built at {}: run `cargo build -p tidegate-cdc --examples`",
        path.display()
    );
    path
}

// --- Replaying the store sink's output -------------------------------------------------

type Rows = BTreeMap<String, Vec<Option<String>>>;

/// Waits until replaying the task's manifests gives exactly the source's rows.
async fn wait_replayed(env: &Env, dir: &std::path::Path, task_id: &str, tables: &[&str]) {
    let started = Instant::now();
    let mut source = env.source().await;
    loop {
        let replayed = replay(dir, task_id).await;
        let mut same = true;
        for table in tables {
            let expected = source_rows(&mut source, table).await;
            let got = replayed.get(*table).cloned().unwrap_or_default();
            same &= project(&got, &expected) == expected;
        }
        if same {
            return;
        }
        assert!(
            started.elapsed() < CATCH_UP,
            "the change files did not catch up with the source"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `got` restricted to the columns the source rows have (the replay keeps every column).
fn project(got: &Rows, expected: &Rows) -> Rows {
    let width = expected.values().next().map_or(0, Vec::len);
    got.iter()
        .map(|(key, row)| (key.clone(), row.iter().take(width).cloned().collect()))
        .collect()
}

/// Rows keyed by their key columns, as text.
async fn source_rows(source: &mut PgConnection, table: &str) -> Rows {
    let (sql, key_width) = match table {
        "items" => ("SELECT id::text, name, qty::text, note FROM items", 1),
        "parted" => ("SELECT id::text, region::text, v FROM parted", 2),
        _ => unreachable!(),
    };
    let rows: Vec<Vec<Option<String>>> = match table {
        "items" => {
            sqlx::query_as::<_, (String, Option<String>, Option<String>, Option<String>)>(sql)
                .fetch_all(source)
                .await
                .unwrap()
                .into_iter()
                .map(|(a, b, c, d)| vec![Some(a), b, c, d])
                .collect()
        }
        _ => sqlx::query_as::<_, (String, String, Option<String>)>(sql)
            .fetch_all(source)
            .await
            .unwrap()
            .into_iter()
            .map(|(a, b, c)| vec![Some(a), Some(b), c])
            .collect(),
    };
    rows.into_iter()
        .map(|row| (key_of(&row[..key_width]), row))
        .collect()
}

fn key_of(values: &[Option<String>]) -> String {
    values
        .iter()
        .map(|value| value.clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

fn key_width(table: &str) -> usize {
    if table == "parted" { 2 } else { 1 }
}

fn read_parquet(dir: &std::path::Path, path: &str) -> Vec<RecordBatch> {
    let file = std::fs::File::open(dir.join(path)).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn text(array: &dyn Array, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array_value_to_string(array, row).unwrap())
}

/// The tables as the snapshot and the change files, replayed in manifest order, leave them.
/// Panics on a duplicate insert or a change to a missing row.
async fn replay(dir: &std::path::Path, task_id: &str) -> HashMap<String, Rows> {
    let manifests = store_sink(dir, task_id).manifests().await.unwrap();
    let mut tables: HashMap<String, Rows> = HashMap::new();
    for manifest in manifests {
        if manifest.kind == "snapshot" {
            for file in &manifest.files {
                let table_manifest: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(dir.join(&file.path)).unwrap()).unwrap();
                let run_dir = file.path.rsplit_once('/').unwrap().0;
                let rows = tables.entry(file.table.name.clone()).or_default();
                for part in table_manifest["files"].as_array().unwrap() {
                    let path = format!("{run_dir}/{}", part["name"].as_str().unwrap());
                    for batch in read_parquet(dir, &path) {
                        for row in 0..batch.num_rows() {
                            let values: Vec<Option<String>> = batch
                                .columns()
                                .iter()
                                .map(|column| text(column.as_ref(), row))
                                .collect();
                            let key = key_of(&values[..key_width(&file.table.name)]);
                            assert!(rows.insert(key, values).is_none(), "duplicate in snapshot");
                        }
                    }
                }
            }
            continue;
        }
        // Per table, the group's rows in commit order.
        let mut by_table: BTreeMap<String, Vec<(u64, u64, RecordBatch, usize)>> = BTreeMap::new();
        for file in &manifest.files {
            for batch in read_parquet(dir, &file.path) {
                let commit = batch
                    .column_by_name(COMMIT_LSN_COLUMN)
                    .unwrap()
                    .as_primitive::<UInt64Type>()
                    .clone();
                let lsn = batch
                    .column_by_name(LSN_COLUMN)
                    .unwrap()
                    .as_primitive::<UInt64Type>()
                    .clone();
                for row in 0..batch.num_rows() {
                    by_table.entry(file.table.name.clone()).or_default().push((
                        commit.value(row),
                        lsn.value(row),
                        batch.clone(),
                        row,
                    ));
                }
            }
        }
        for (table, mut changes) in by_table {
            changes.sort_by_key(|(commit, lsn, _, _)| (*commit, *lsn));
            let rows = tables.entry(table.clone()).or_default();
            let width = key_width(&table);
            for (_, _, batch, row) in changes {
                apply_change(rows, &batch, row, width);
            }
        }
    }
    tables
}

fn apply_change(rows: &mut Rows, batch: &RecordBatch, row: usize, key_width: usize) {
    let schema = batch.schema();
    let op = batch
        .column_by_name(OP_COLUMN)
        .unwrap()
        .as_string::<i32>()
        .value(row)
        .to_owned();
    if op == "truncate" {
        rows.clear();
        return;
    }
    // The table's columns sit between the metadata and the old values.
    let columns: Vec<usize> = (0..schema.fields().len())
        .filter(|&index| !schema.field(index).name().starts_with("_tg_"))
        .collect();
    let new: Vec<Option<String>> = columns
        .iter()
        .map(|&index| text(batch.column(index).as_ref(), row))
        .collect();
    let old_key: Option<Vec<Option<String>>> = {
        let values: Vec<Option<String>> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| field.name().starts_with(OLD_COLUMN_PREFIX))
            .take(key_width)
            .map(|(index, _)| text(batch.column(index).as_ref(), row))
            .collect();
        (values.len() == key_width && values.iter().all(Option::is_some)).then_some(values)
    };
    let unchanged: Vec<usize> = {
        let list = batch
            .column_by_name(UNCHANGED_COLUMN)
            .unwrap()
            .as_list::<i32>()
            .value(row);
        let list = list.as_primitive::<arrow::datatypes::UInt16Type>();
        list.values()
            .iter()
            .map(|index| usize::from(*index))
            .collect()
    };
    let new_key = key_of(&new[..key_width]);
    match op.as_str() {
        "insert" => {
            assert!(
                rows.insert(new_key, new).is_none(),
                "insert of a row that exists"
            );
        }
        "update" => {
            let from = old_key.map_or_else(|| new_key.clone(), |key| key_of(&key));
            let previous = rows.remove(&from).expect("update of a missing row");
            let mut values = new;
            for index in unchanged {
                values[index] = previous[index].clone();
            }
            rows.insert(new_key, values);
        }
        "delete" => {
            let key = key_of(&old_key.expect("a delete carries its key"));
            assert!(rows.remove(&key).is_some(), "delete of a missing row");
        }
        other => panic!("unknown op {other}"),
    }
}
