//! Full loads from a real PostgreSQL through the control plane and a gateway: to Parquet on a
//! real S3-compatible server with SSE-KMS, and to PostgreSQL tables. Credentials travel as
//! connection secrets; the results are compared with the source by count and checksum. The last
//! test reads the same source through the PostgreSQL ODBC driver.

use crate::common;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use tidegate::replicate::{ServerSideEncryption, StoreOptions, open_store};
use tidegate_testkit::{PgServer, S3Server};

use crate::common::Harness;

const SOURCE_SQL: &str = r#"
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 30000) g;
CREATE SCHEMA "Ops";
CREATE TABLE "Ops"."Event Log" (id bigint, kind text);
INSERT INTO "Ops"."Event Log" SELECT g, 'k' || (g % 5) FROM generate_series(1, 5000) g;
"#;

async fn run_task(
    harness: &Harness,
    gateway_id: &str,
    source: serde_json::Value,
    target: serde_json::Value,
) -> serde_json::Value {
    let (_, _, task) = harness.create_task(gateway_id, source, target).await;
    harness.run_to_end(task["id"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_s3_with_sse_kms_through_a_gateway() {
    let harness = Harness::start().await;
    let (pg, s3) = tokio::task::spawn_blocking(|| (PgServer::start(), S3Server::start()))
        .await
        .unwrap();
    let (pg, s3) = (pg.unwrap(), s3.unwrap());
    pg.create_database("src").unwrap();
    pg.execute("src", SOURCE_SQL).unwrap();
    s3.create_bucket("lake").unwrap();

    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;
    let target = json!({
        "name": "lake", "kind": "s3",
        "settings": {
            "bucket": "lake", "prefix": "landing", "endpoint": s3.endpoint(),
            "region": "us-east-1", "allow_http": "true", "access_key_id": "gw-key",
            "sse": "kms", "kms_key_id": "alias/tenant-a"
        },
        "secrets": {"secret_access_key": "gw-secret"}
    });
    let run = run_task(
        &harness,
        &gateway_id,
        common::postgres_connection(&pg, "src"),
        target,
    )
    .await;
    assert_eq!(run["state"], json!("Completed"), "{run}");
    let rows: u64 = run["tables"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 35000, "{run}");

    let mut options = StoreOptions::default();
    options.endpoint = Some(s3.endpoint());
    options.region = Some("us-east-1".into());
    options.allow_http = true;
    options.access_key_id = Some("reader".into());
    options.secret_access_key = Some("reader".into());
    options.encryption = ServerSideEncryption::BucketDefault;
    let store = open_store("s3://lake", &options).unwrap().store;
    for (table, expected_rows, expected_sum) in [
        ("landing/public/orders", 30000u64, 30000 * 30001 / 2),
        ("landing/Ops/Event Log", 5000, 5000 * 5001 / 2),
    ] {
        let manifest_key = format!("{table}/{}/_manifest.json", run["id"].as_str().unwrap());
        let manifest_path = Path::from_iter(manifest_key.split('/'));
        let manifest: serde_json::Value = serde_json::from_slice(
            &store
                .get(&manifest_path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        let (algorithm, key_id) = s3
            .object_encryption("lake", manifest_path.as_ref())
            .unwrap();
        assert_eq!(algorithm.as_deref(), Some("aws:kms"));
        assert_eq!(key_id.as_deref(), Some("alias/tenant-a"));
        let (mut rows, mut sum) = (0u64, 0i64);
        for file in manifest["files"].as_array().unwrap() {
            // File names are relative to the manifest's directory.
            let name = file["name"].as_str().unwrap();
            let dir = manifest_key.rsplit_once('/').unwrap().0;
            let path = Path::from_iter(dir.split('/').chain([name]));
            let (algorithm, _) = s3.object_encryption("lake", path.as_ref()).unwrap();
            assert_eq!(algorithm.as_deref(), Some("aws:kms"), "{path}");
            let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                rows += batch.num_rows() as u64;
                sum += batch
                    .column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .sum::<i64>();
            }
        }
        assert_eq!((rows, sum), (expected_rows, expected_sum), "{table}");
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_through_a_gateway() {
    let harness = Harness::start().await;
    let pg = common::source_and_target(SOURCE_SQL).await;
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;

    let run = run_task(
        &harness,
        &gateway_id,
        common::postgres_connection(&pg, "src"),
        common::postgres_connection(&pg, "dst"),
    )
    .await;
    assert_eq!(run["state"], json!("Completed"), "{run}");
    let digest = |db: &str, table: &str| {
        pg.execute(
            db,
            &format!(
                "SELECT count(*), sum(id), md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
            ),
        )
        .unwrap()
    };
    assert_eq!(digest("src", "orders"), digest("dst", "orders"));
    assert_eq!(
        digest("src", r#""Ops"."Event Log""#),
        digest("dst", r#""Ops"."Event Log""#)
    );

    // A wrong password fails the run with a clear error that does not repeat it.
    let mut bad = common::postgres_connection(&pg, "src");
    bad["secrets"]["password"] = json!("wrong-password-canary");
    let run = run_task(
        &harness,
        &gateway_id,
        bad,
        common::postgres_connection(&pg, "dst"),
    )
    .await;
    assert_eq!(run["state"], json!("Failed"), "{run}");
    let error = run["error"].to_string();
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(!error.contains("wrong-password-canary"), "{error}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_redoing_only_unfinished_tables() {
    let harness = Harness::start().await;
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("src").unwrap();
    pg.create_database("dst").unwrap();
    // `a_good` is small and done long before `b_bad` reaches its last row, which has no
    // Arrow form.
    pg.execute(
        "src",
        "CREATE TABLE a_good (id int); INSERT INTO a_good SELECT generate_series(1, 100);
         CREATE TABLE b_bad (id int, d date);
         INSERT INTO b_bad SELECT g, '2020-01-01' FROM generate_series(1, 200000) g;
         INSERT INTO b_bad VALUES (200001, 'infinity');",
    )
    .unwrap();
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;

    let run = run_task(
        &harness,
        &gateway_id,
        common::postgres_connection(&pg, "src"),
        common::postgres_connection(&pg, "dst"),
    )
    .await;
    assert_eq!(run["state"], json!("Failed"), "{run}");
    assert!(run["error"].to_string().contains("b_bad"), "{run}");
    assert_eq!(
        run["tables"]["public.a_good"]["state"],
        json!("Done"),
        "{run}"
    );
    let good_oid = pg.execute("dst", "SELECT 'a_good'::regclass::oid").unwrap();
    assert_eq!(
        pg.execute("dst", "SELECT to_regclass('b_bad') IS NULL")
            .unwrap()
            .trim(),
        "t",
        "no partial b_bad"
    );

    // Only a failed or stopped run resumes.
    let run_id = run["id"].as_str().unwrap().to_owned();
    pg.execute("src", "UPDATE b_bad SET d = '2021-01-01' WHERE id = 200001")
        .unwrap();
    let resumed = harness
        .api
        .post(&format!("/api/v1/runs/{run_id}/resume"), json!({}))
        .await
        .unwrap();
    assert_eq!(resumed["id"], json!(run_id));
    let run = harness.wait_run_end(&run_id).await;
    assert_eq!(run["state"], json!("Completed"), "{run}");
    let error = harness
        .api
        .post(&format!("/api/v1/runs/{run_id}/resume"), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("409"), "{error}");

    assert_eq!(
        pg.execute("dst", "SELECT 'a_good'::regclass::oid").unwrap(),
        good_oid,
        "the finished table was not copied again"
    );
    assert_eq!(
        pg.execute("dst", "SELECT count(*) FROM b_bad")
            .unwrap()
            .trim(),
        "200001"
    );
    gateway.shutdown().await;
}

/// The same PostgreSQL read through its ODBC driver: an `odbc` connection given as settings plus
/// the secret `password`, then as one secret `connection_string`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odbc_to_postgres_through_a_gateway() {
    let harness = Harness::start().await;
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    for database in ["src", "dst", "dst2"] {
        pg.create_database(database).unwrap();
    }
    pg.execute("src", SOURCE_SQL).unwrap();
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;

    let odbc = |password: &str| {
        json!({
            "name": "pg-odbc",
            "kind": "odbc",
            "settings": {
                "driver": "PostgreSQL Unicode", "server": "127.0.0.1",
                "port": pg.port().to_string(), "database": "src", "user": pg.user()
            },
            "secrets": {"password": password}
        })
    };
    let digest = |db: &str, table: &str| {
        pg.execute(
            db,
            &format!(
                "SELECT count(*), sum(id), md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
            ),
        )
        .unwrap()
    };
    let run = run_task(
        &harness,
        &gateway_id,
        odbc(pg.password()),
        common::postgres_connection(&pg, "dst"),
    )
    .await;
    assert_eq!(run["state"], json!("Completed"), "{run}");
    assert_eq!(digest("src", "orders"), digest("dst", "orders"));
    assert_eq!(
        digest("src", r#""Ops"."Event Log""#),
        digest("dst", r#""Ops"."Event Log""#)
    );

    let whole = json!({
        "name": "pg-odbc-string",
        "kind": "odbc",
        "secrets": {"connection_string": format!(
            "Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port={};Database=src;UID={};PWD={};",
            pg.port(), pg.user(), pg.password()
        )}
    });
    let run = run_task(
        &harness,
        &gateway_id,
        whole,
        common::postgres_connection(&pg, "dst2"),
    )
    .await;
    assert_eq!(run["state"], json!("Completed"), "{run}");
    assert_eq!(digest("src", "orders"), digest("dst2", "orders"));

    // A wrong password fails the run with an error that says where, not with what.
    let run = run_task(
        &harness,
        &gateway_id,
        odbc("wrong-password-canary"),
        common::postgres_connection(&pg, "dst"),
    )
    .await;
    assert_eq!(run["state"], json!("Failed"), "{run}");
    let error = run["error"].to_string();
    assert!(error.contains("server=127.0.0.1"), "{error}");
    assert!(!error.contains("wrong-password-canary"), "{error}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_data_capture_through_a_gateway_keeps_a_live_replica() {
    let harness = Harness::start_with(|config| {
        config.slot_check_interval = std::time::Duration::from_millis(200);
        config.slot_retention_limit = 1;
    })
    .await;
    let pg = common::source_and_target(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 1000) g;
         CREATE TABLE other (id bigint PRIMARY KEY);",
    )
    .await;
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;

    let (task_id, run) = harness.start_orders_capture(&gateway_id, &pg).await;
    let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());

    // The initial load lands, then changes follow while the run keeps running.
    let loaded = common::until("initial load reported", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        (run["replication"]["phase"] == json!("Streaming")).then_some(run)
    })
    .await;
    assert_eq!(loaded["state"], json!("Running"), "{loaded}");
    assert_eq!(loaded["replication"]["load_rows"], json!(1000), "{loaded}");
    pg.execute(
        "src",
        "INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1001, 1500) g;
         UPDATE orders SET amount = amount + 1, note = note || ' changed' WHERE id % 7 = 0;
         DELETE FROM orders WHERE id % 11 = 0;
         INSERT INTO other VALUES (1);",
    )
    .unwrap();
    let expected = common::orders_digest(&pg, "src");
    common::until("changes applied", async || {
        (common::orders_digest(&pg, "dst") == expected).then_some(())
    })
    .await;
    let streaming = common::until("changes reported", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        (run["replication"]["transactions"].as_u64() >= Some(1)).then_some(run)
    })
    .await;
    assert_eq!(streaming["state"], json!("Running"), "{streaming}");
    assert!(
        streaming["replication"]["checkpoint_lsn"]
            .as_str()
            .unwrap()
            .contains('/'),
        "{streaming}"
    );
    assert!(
        streaming["replication"]["lag_bytes"].is_u64(),
        "{streaming}"
    );
    let untouched = pg
        .execute(
            "dst",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'other'",
        )
        .unwrap();
    assert_eq!(
        untouched.trim(),
        "0",
        "a table outside the selection was replicated"
    );

    // A running task's slot cannot be dropped: deleting the task is refused, nothing changes.
    let refused = harness
        .operator()
        .delete(&format!("/api/v1/tasks/{task_id}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("409") && refused.contains("stop it first"),
        "{refused}"
    );

    // Stopped, the slot keeps WAL: the control plane inspects it and warns past the limit.
    harness
        .api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap();
    let stopped = harness.wait_run_end(run["id"].as_str().unwrap()).await;
    assert_eq!(stopped["state"], json!("Stopped"), "{stopped}");
    let output = harness
        .api
        .get(&format!("/api/v1/tasks/{task_id}/output"))
        .await
        .unwrap();
    let replication = &output["replication"];
    assert_eq!(replication["state"], json!("Stopped"), "{output}");
    assert_eq!(
        replication["checkpoint_lsn"], stopped["replication"]["checkpoint_lsn"],
        "{output}"
    );
    assert_eq!(replication["manifests"], json!(null), "{output}");
    pg.execute(
        "src",
        "INSERT INTO orders SELECT g, g * 1.25, 'late ' || g FROM generate_series(2001, 2300) g;
         DELETE FROM orders WHERE id BETWEEN 100 AND 150;",
    )
    .unwrap();
    let warned = common::until("slot warning", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        run["replication"]["warning"].is_string().then_some(run)
    })
    .await;
    let slot = &warned["replication"]["slot"];
    assert_eq!(
        slot["name"],
        json!(format!("tidegate_{task_id}")),
        "{warned}"
    );
    assert_eq!(slot["active"], json!(false), "{warned}");
    assert!(slot["retained_bytes"].as_u64().unwrap() > 1, "{warned}");
    assert!(
        warned["replication"]["warning"]
            .as_str()
            .unwrap()
            .contains("bytes of WAL"),
        "{warned}"
    );

    // Resumed, it catches up from the target's checkpoint: nothing lost, nothing twice.
    harness
        .api
        .post(&format!("{run_path}/resume"), json!({}))
        .await
        .unwrap();
    let expected = common::orders_digest(&pg, "src");
    common::until("caught up after resume", async || {
        (common::orders_digest(&pg, "dst") == expected).then_some(())
    })
    .await;
    harness
        .api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap();
    harness.wait_run_end(run["id"].as_str().unwrap()).await;

    // Deleting the task drops its slot and publication at the source.
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tidegate_%'";
    let publications = "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'tidegate_%'";
    assert_eq!(pg.execute("src", slots).unwrap().trim(), "1");
    harness
        .operator()
        .delete(&format!("/api/v1/tasks/{task_id}"))
        .await
        .unwrap();
    assert_eq!(pg.execute("src", slots).unwrap().trim(), "0");
    assert_eq!(pg.execute("src", publications).unwrap().trim(), "0");
    assert_eq!(
        common::orders_digest(&pg, "dst"),
        expected,
        "the target was left alone"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_table_is_reported_and_resynced_through_the_control_plane() {
    let harness = Harness::start().await;
    let pg = common::source_and_target(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 500) g;
         CREATE TABLE items (id bigint PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g;",
    )
    .await;
    let items_digest = |database: &str| {
        pg.execute(
            database,
            "SELECT count(*), coalesce(sum(id), 0), md5(string_agg(name, ',' ORDER BY id)) FROM items",
        )
        .unwrap()
    };
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;
    let task_id = &harness
        .capture_task(&gateway_id, &pg, &["public.orders", "public.items"])
        .await;
    let (run, run_path) = harness.run_until_streaming(task_id).await;

    // The target refuses one table's changes: that table is set apart and reported, the
    // other goes on, and the run keeps running.
    pg.execute(
        "dst",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'items are frozen'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON items
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .unwrap();
    pg.execute(
        "src",
        "INSERT INTO items VALUES (1001, 'late item');
         UPDATE items SET name = name || ' renamed' WHERE id % 5 = 0;
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(501, 700) g;",
    )
    .unwrap();
    let failed = common::until("failed table reported", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        run["replication"]["failed_tables"]
            .as_array()
            .is_some_and(|tables| !tables.is_empty())
            .then_some(run)
    })
    .await;
    assert_eq!(failed["state"], json!("Running"), "{failed}");
    let tables = failed["replication"]["failed_tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{failed}");
    assert_eq!(tables[0]["table"], json!("public.items"), "{failed}");
    let error = tables[0]["error"].as_str().unwrap();
    assert!(
        error.contains("P0001") && error.contains("items are frozen"),
        "{error}"
    );
    // Consumers of the output see which tables lag behind, not the server's error texts.
    let output = harness
        .api
        .get(&format!("/api/v1/tasks/{task_id}/output"))
        .await
        .unwrap();
    assert_eq!(
        output["replication"]["failed_tables"],
        json!(["public.items"]),
        "{output}"
    );
    assert!(!output.to_string().contains("frozen"), "{output}");
    let expected = common::orders_digest(&pg, "src");
    common::until("the other table applied", async || {
        (common::orders_digest(&pg, "dst") == expected).then_some(())
    })
    .await;

    // A resync names tables of the task only.
    let refused = harness
        .api
        .post(
            &format!("/api/v1/tasks/{task_id}/resync"),
            json!({"tables": ["public.nope"]}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("409") && refused.contains("not one of the task's tables"),
        "{refused}"
    );

    // Fixed and resynced: the table is loaded again alone and follows again.
    pg.execute("dst", "DROP TRIGGER refuse ON items").unwrap();
    let accepted = harness
        .api
        .post(
            &format!("/api/v1/tasks/{task_id}/resync"),
            json!({"tables": ["public.items"]}),
        )
        .await
        .unwrap();
    assert_eq!(accepted["state"], json!("resyncing"), "{accepted}");
    pg.execute("src", "INSERT INTO items VALUES (1002, 'after the fix')")
        .unwrap();
    let expected = items_digest("src");
    common::until("the table resynced", async || {
        (items_digest("dst") == expected).then_some(())
    })
    .await;
    common::until("no failed table reported", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        (run["replication"]["failed_tables"] == json!([])).then_some(())
    })
    .await;
    harness
        .api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap();
    let stopped = harness.wait_run_end(run["id"].as_str().unwrap()).await;
    assert_eq!(stopped["state"], json!("Stopped"), "{stopped}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_changes_through_a_gateway_writes_change_files_and_manifests() {
    let harness = Harness::start().await;
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("src").unwrap();
    pg.execute(
        "src",
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12, 2), note text);
         INSERT INTO orders SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, 100) g;",
    )
    .unwrap();
    let (gateway_id, config, identity) = harness.enrolled("gw").await;
    let gateway = harness.online(&gateway_id, config, identity).await;
    let lake = tempfile::tempdir().unwrap();
    let source = harness
        .api
        .post(
            "/api/v1/connections",
            common::postgres_connection(&pg, "src"),
        )
        .await
        .unwrap();
    let target = harness
        .api
        .post(
            "/api/v1/connections",
            json!({"name": "lake", "kind": "local",
                   "settings": {"root": lake.path().to_str().unwrap(), "prefix": "cdc"}}),
        )
        .await
        .unwrap();
    let create = |task_type: &'static str, target_id: serde_json::Value| {
        json!({"name": harness.unique("changes"), "gateway_id": gateway_id,
               "source_id": source["id"], "target_id": target_id,
               "task_type": task_type, "tables": {"include": ["orders"]}})
    };
    let task = harness
        .api
        .post(
            "/api/v1/tasks",
            create("store_changes", target["id"].clone()),
        )
        .await
        .unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    let (run, run_path) = harness.run_until_streaming(&task_id).await;
    pg.execute(
        "src",
        "UPDATE orders SET note = 'changed' WHERE id <= 10; DELETE FROM orders WHERE id > 90;",
    )
    .unwrap();
    let manifests = lake
        .path()
        .join("cdc/_tidegate/cdc")
        .join(&task_id)
        .join("manifests");
    let reported = common::until("changes stored", async || {
        let run = harness.api.get(&run_path).await.unwrap();
        (run["replication"]["rows"].as_u64() >= Some(20)).then_some(run)
    })
    .await;
    assert_eq!(reported["replication"]["rows"], json!(20), "{reported}");
    assert!(
        std::fs::read_dir(&manifests).unwrap().count() >= 1,
        "no manifest in {}",
        manifests.display()
    );
    // A consumer learns from the control plane where the manifests are and how far they go.
    let output = harness
        .api
        .get(&format!("/api/v1/tasks/{task_id}/output"))
        .await
        .unwrap();
    let replication = &output["replication"];
    assert_eq!(replication["run_id"], run["id"], "{output}");
    assert_eq!(replication["state"], json!("Running"), "{output}");
    assert!(replication["lag_bytes"].is_u64(), "{output}");
    assert_eq!(replication["failed_tables"], json!([]), "{output}");
    assert_eq!(
        output["run"],
        json!(null),
        "a capture run never completes: {output}"
    );
    let listed = lake.path().join(replication["manifests"].as_str().unwrap());
    assert_eq!(listed, manifests, "{output}");
    // The checkpoint is the position of a manifest the target holds (`<LSN as 16 hex>.json`).
    let checkpoint = replication["checkpoint_lsn"].as_str().unwrap();
    let (high, low) = checkpoint.split_once('/').unwrap();
    let lsn = u64::from_str_radix(high, 16).unwrap() << 32 | u64::from_str_radix(low, 16).unwrap();
    assert!(
        manifests.join(format!("{lsn:016X}.json")).exists(),
        "no manifest for the checkpoint {checkpoint} in {}",
        manifests.display()
    );
    harness
        .api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap();
    let stopped = harness.wait_run_end(run["id"].as_str().unwrap()).await;
    assert_eq!(stopped["state"], json!("Stopped"), "{stopped}");

    // Each task type takes the targets it can write, and says so clearly otherwise.
    let wrong = harness
        .api
        .post(
            "/api/v1/tasks",
            create("change_data_capture", target["id"].clone()),
        )
        .await
        .unwrap();
    let failed = harness.run_to_end(wrong["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], json!("Failed"), "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL targets only"),
        "{failed}"
    );
    for id in [&task_id, wrong["id"].as_str().unwrap()] {
        harness
            .operator()
            .delete(&format!("/api/v1/tasks/{id}"))
            .await
            .unwrap();
    }
    let slots = pg
        .execute("src", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0");
    gateway.shutdown().await;
}
