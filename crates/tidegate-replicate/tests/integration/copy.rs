//! End-to-end tests through the public API: SQLite files in, Parquet files and manifests out.

use crate::common;

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use tidegate_replicate::sample::{SampleSize, generate_sqlite};
use tidegate_replicate::{
    CancellationToken, CopyPlan, CopySummary, Error, MANIFEST_FILE, ParquetSink, ParquetSinkConfig,
    ProgressEvent, Sink, Source, SqliteSource, TableOutput, TableRef, TableSchema, copy_tables,
};
use tokio::sync::mpsc;

use common::{create_db, files_under, parquet_digest, sqlite_count, sqlite_digest};

/// A sink writing below `<dir>/out`, small files and row groups so that parts roll.
fn local_sink(dir: &Path, config: ParquetSinkConfig) -> (Arc<LocalFileSystem>, Arc<ParquetSink>) {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(&out).unwrap());
    let sink = ParquetSink::new(store.clone(), ObjectPath::from("lake"), config);
    (store, Arc::new(sink))
}

fn small_files() -> ParquetSinkConfig {
    ParquetSinkConfig::default()
        .with_max_row_group_rows(NonZeroUsize::new(700).unwrap())
        .with_max_file_rows(NonZeroU64::new(2_500))
}

async fn run(
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    plan: CopyPlan,
) -> (Result<CopySummary, Error>, Vec<ProgressEvent>) {
    let (progress, mut events) = mpsc::channel(1024);
    let result = copy_tables(source, sink, plan, progress, CancellationToken::new()).await;
    let mut received = Vec::new();
    while let Ok(event) = events.try_recv() {
        received.push(event);
    }
    (result, received)
}

fn local_files(store: &LocalFileSystem, output: &TableOutput) -> Vec<PathBuf> {
    output
        .files
        .iter()
        .map(|file| {
            store
                .path_to_filesystem(&ObjectPath::parse(&file.path).unwrap())
                .unwrap()
        })
        .collect()
}

/// Checks a finished table against its SQLite source, its files and its manifest.
async fn assert_table_matches(db: &Path, store: &LocalFileSystem, output: &TableOutput) {
    let files = local_files(store, output);
    let expected = sqlite_digest(db, &output.table.name).await;
    let actual = parquet_digest(&files);
    assert_eq!(actual, expected, "table {}", output.table);
    assert_eq!(output.rows, expected.rows);
    let sizes: u64 = files
        .iter()
        .map(|file| std::fs::metadata(file).unwrap().len())
        .sum();
    assert_eq!(output.bytes, sizes);

    let manifest_path = store
        .path_to_filesystem(&ObjectPath::parse(&output.manifest).unwrap())
        .unwrap();
    assert_eq!(manifest_path.file_name().unwrap(), MANIFEST_FILE);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["total_rows"], output.rows);
    assert_eq!(manifest["total_bytes"], output.bytes);
    assert_eq!(manifest["table"]["name"], output.table.name.as_str());
    let listed = manifest["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len());
    for (entry, file) in listed.iter().zip(&files) {
        assert_eq!(entry["name"], file.file_name().unwrap().to_str().unwrap());
        assert_eq!(manifest_path.parent(), file.parent());
    }
    // Every Parquet file in the run directory is listed: nothing stale or extra.
    let on_disk = files_under(manifest_path.parent().unwrap());
    assert_eq!(on_disk.len(), files.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_database_round_trips_through_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sample.db");
    let generated = generate_sqlite(&db, SampleSize::rows(20_000))
        .await
        .unwrap();
    assert_eq!(generated.total_rows(), 20_000);

    let source = Arc::new(SqliteSource::open(&db).await.unwrap());
    let (store, sink) = local_sink(dir.path(), small_files());
    let plan = CopyPlan::new("run-1").with_batch_rows(1_000);
    let (summary, events) = run(source, sink, plan).await;
    let summary = summary.unwrap();

    let names: Vec<_> = summary.tables.iter().map(|t| t.table.to_string()).collect();
    assert_eq!(names, ["main.customers", "main.events", "main.orders"]);
    assert_eq!(summary.total_rows(), 20_000);
    for output in &summary.tables {
        assert_eq!(output.rows, sqlite_count(&db, &output.table.name).await);
        let expected_files = output.rows.div_ceil(2_500).max(1);
        assert_eq!(
            output.files.len() as u64,
            expected_files,
            "{}",
            output.table
        );
        assert!(output.files.iter().all(|file| file.rows <= 2_500));
        assert_table_matches(&db, &store, output).await;
    }
    let done: Vec<_> = events.iter().filter(|event| event.done).collect();
    assert_eq!(done.len(), 3);
    assert!(events.iter().any(|event| !event.done && event.rows > 0));
}

#[tokio::test]
async fn discovered_schema_maps_declared_types() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sample.db");
    generate_sqlite(&db, SampleSize::rows(100)).await.unwrap();
    let source = SqliteSource::open(&db).await.unwrap();
    let tables = source.discover().await.unwrap();
    let customers = tables
        .iter()
        .find(|table| table.table == TableRef::new("main", "customers"))
        .unwrap();
    let types: Vec<_> = customers
        .schema
        .fields()
        .iter()
        .map(|field| {
            (
                field.name().as_str(),
                field.data_type().to_string(),
                field.is_nullable(),
            )
        })
        .collect();
    let expected = [
        ("id", DataType::Int64, true),
        ("name", DataType::Utf8, false),
        ("email", DataType::Utf8, true),
        ("country", DataType::Utf8, false),
        ("balance", DataType::Decimal128(12, 2), true),
        (
            "created_at",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            false,
        ),
        ("is_active", DataType::Boolean, true),
        ("avatar", DataType::Binary, true),
    ]
    .map(|(name, data_type, nullable)| (name, data_type.to_string(), nullable));
    assert_eq!(types, expected);
    // The sample database opened read-only is still the sample: a second generation refuses.
    assert!(matches!(
        generate_sqlite(&db, SampleSize::rows(10)).await,
        Err(Error::SampleExists { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_sample_has_a_million_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let summary = generate_sqlite(&db, SampleSize::default()).await.unwrap();
    assert!(summary.tables.len() >= 3);
    assert!(summary.total_rows() >= 1_000_000);
    for (table, rows) in &summary.tables {
        assert_eq!(sqlite_count(&db, table).await, *rows);
    }
}

#[tokio::test]
async fn awkward_names_stay_under_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("names.db");
    create_db(
        &db,
        &[
            r#"CREATE TABLE "we""ird ta/ble ../ünï" ("col ""q""" INTEGER, "ß/x" TEXT)"#,
            r#"INSERT INTO "we""ird ta/ble ../ünï" VALUES (1, 'a'), (2, NULL), (NULL, 'ç')"#,
            r#"CREATE TABLE ".." (v INTEGER)"#,
            r#"INSERT INTO ".." VALUES (7)"#,
            r#"CREATE TABLE "%2E%2E" (v INTEGER)"#,
            r#"INSERT INTO "%2E%2E" VALUES (8), (9)"#,
            r#"CREATE TABLE "empty" (v INTEGER)"#,
        ],
    )
    .await;
    let source = Arc::new(SqliteSource::open(&db).await.unwrap());
    let (store, sink) = local_sink(dir.path(), ParquetSinkConfig::default());
    let (summary, _) = run(source, sink.clone(), CopyPlan::new("../run")).await;
    let summary = summary.unwrap();
    assert_eq!(summary.tables.len(), 4);

    let base = dir.path().canonicalize().unwrap();
    let root = base.join("out").join("lake");
    let everything = files_under(&base);
    let outside: Vec<_> = everything
        .iter()
        .filter(|file| !file.starts_with(&root) && !file.starts_with(base.join("names.db")))
        .collect();
    assert!(outside.is_empty(), "files escaped the prefix: {outside:?}");
    // Each table has its own directory: `..` and `%2E%2E` do not collide.
    let mut manifests: Vec<_> = summary.tables.iter().map(|t| t.manifest.clone()).collect();
    manifests.dedup();
    assert_eq!(manifests.len(), 4);
    for output in &summary.tables {
        assert_table_matches(&db, &store, output).await;
    }
    let empty = summary
        .tables
        .iter()
        .find(|t| t.table.name == "empty")
        .unwrap();
    assert_eq!((empty.rows, empty.files.len()), (0, 1));

    let nameless = TableRef::new("main", "");
    assert!(matches!(
        sink.run_path(&nameless, "r"),
        Err(Error::InvalidName { what: "table", .. })
    ));
}

#[tokio::test]
async fn mismatched_and_invalid_values_name_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        // (table definition and rows, column expected in the error, secret value)
        (
            "CREATE TABLE t (id INTEGER, qty INTEGER); \
             INSERT INTO t VALUES (1, 5), (2, 'secret-abc');",
            "qty",
            "secret-abc",
        ),
        (
            "CREATE TABLE t (id INTEGER, price DECIMAL(4,2)); \
             INSERT INTO t VALUES (1, 1.5), (2, 123.456);",
            "price",
            "123.456",
        ),
        (
            "CREATE TABLE t (id INTEGER, at TIMESTAMP); \
             INSERT INTO t VALUES (1, 'yesterday-secret');",
            "at",
            "yesterday-secret",
        ),
        (
            "CREATE TABLE t (id INTEGER, flag BOOLEAN); INSERT INTO t VALUES (1, 2);",
            "flag",
            "2",
        ),
    ];
    for (index, (sql, column, secret)) in cases.iter().enumerate() {
        let db = dir.path().join(format!("bad-{index}.db"));
        create_db(&db, &[sql]).await;
        let source = Arc::new(SqliteSource::open(&db).await.unwrap());
        let (_, sink) = local_sink(&dir.path().join(index.to_string()), small_files());
        let (result, _) = run(source, sink, CopyPlan::new("r")).await;
        let error = result.unwrap_err();
        match &error {
            Error::TypeMismatch {
                table, column: c, ..
            }
            | Error::InvalidValue {
                table, column: c, ..
            } => {
                assert_eq!((table.as_str(), c.as_str()), ("main.t", *column));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(!error.is_retryable());
        let message = format!("{error} {error:?}");
        assert!(message.contains(column), "{message}");
        assert!(!message.contains(secret), "{message} leaks the value");
        let out = dir.path().join(index.to_string());
        assert!(files_under(&out).is_empty(), "failed table left files");
    }

    let db = dir.path().join("unsupported.db");
    create_db(&db, &["CREATE TABLE doc (id INTEGER, body JSON)"]).await;
    let source = SqliteSource::open(&db).await.unwrap();
    match source.discover().await {
        Err(Error::UnsupportedType {
            table,
            column,
            declared,
        }) => {
            assert_eq!(
                (table.as_str(), column.as_str(), declared.as_str()),
                ("main.doc", "body", "JSON")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn unknown_table_in_filter_fails_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sample.db");
    generate_sqlite(&db, SampleSize::rows(100)).await.unwrap();
    let source = Arc::new(SqliteSource::open(&db).await.unwrap());
    let (_, sink) = local_sink(dir.path(), ParquetSinkConfig::default());
    let plan = CopyPlan::new("r").with_tables(["orders", "nope"]);
    let (result, _) = run(source.clone(), sink.clone(), plan).await;
    assert!(matches!(result, Err(Error::UnknownTable { name }) if name == "nope"));
    assert!(files_under(&dir.path().join("out")).is_empty());

    let plan = CopyPlan::new("r").with_tables(["main.orders"]);
    let (result, _) = run(source, sink, plan).await;
    let summary = result.unwrap();
    assert_eq!(summary.tables.len(), 1);
    assert_eq!(summary.tables[0].table.name, "orders");
}

#[tokio::test]
async fn missing_database_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    assert!(matches!(
        SqliteSource::open(&missing).await,
        Err(Error::Open { .. })
    ));
    assert!(!missing.exists(), "opening must never create the file");
}

/// A hand-written source: `tables` tables of `id` integers; table `fail` errors after its
/// first batch and table `stall` never ends after its first batch.
#[derive(Debug)]
struct ScriptedSource {
    tables: Vec<&'static str>,
}

fn ids_schema(name: &str) -> TableSchema {
    TableSchema {
        table: TableRef::new("main", name),
        schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
    }
}

fn ids_batch(table: &TableSchema, from: i64, rows: i64) -> RecordBatch {
    let ids = Int64Array::from_iter_values(from..from + rows);
    RecordBatch::try_new(table.schema.clone(), vec![Arc::new(ids)]).unwrap()
}

impl Source for ScriptedSource {
    fn discover(&self) -> BoxFuture<'_, Result<Vec<TableSchema>, Error>> {
        Box::pin(async move { Ok(self.tables.iter().map(|name| ids_schema(name)).collect()) })
    }

    fn read_table<'a>(
        &'a self,
        table: &'a TableSchema,
        batch_rows: usize,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<RecordBatch, Error>>, Error>> {
        Box::pin(async move {
            let rows = i64::try_from(batch_rows).unwrap();
            let schema = table.clone();
            let first = stream::iter((0..3).map(move |i| Ok(ids_batch(&schema, i * rows, rows))));
            let stream = match table.table.name.as_str() {
                "a_fail" | "c_fail" => first
                    .chain(stream::iter([Err(Error::InvalidValue {
                        table: table.table.to_string(),
                        column: "id".into(),
                        expected: "Int64".into(),
                    })]))
                    .boxed(),
                "stall" => first.chain(stream::pending()).boxed(),
                _ => first.boxed(),
            };
            Ok(stream)
        })
    }
}

fn manifests_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|file| file.file_name().unwrap() == MANIFEST_FILE)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_promptly_and_leaves_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn Source> = Arc::new(ScriptedSource {
        tables: vec!["stall", "stall2"],
    });
    let (_, sink) = local_sink(dir.path(), small_files());
    let (progress, mut events) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let plan = CopyPlan::new("r")
        .with_batch_rows(1_000)
        .with_tables(["stall"]);
    let copy = tokio::spawn(copy_tables(source, sink, plan, progress, cancel.clone()));

    // Wait until all three batches were accepted (one part file completed), then cancel.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!event.done);
        if event.rows >= 3_000 {
            break;
        }
    }
    assert_eq!(files_under(&dir.path().join("out")).len(), 1);
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), copy)
        .await
        .expect("cancel must stop the copy promptly")
        .unwrap();
    assert!(matches!(result, Err(Error::Cancelled)));
    assert!(manifests_under(dir.path()).is_empty());
    // Abort cleaned up the parts it had completed.
    assert!(files_under(&dir.path().join("out")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_table_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let source: Arc<dyn Source> = Arc::new(ScriptedSource {
        tables: vec!["a_fail", "b_ok", "c_fail", "d_ok"],
    });
    let (_, sink) = local_sink(dir.path(), small_files());
    // One table at a time: the tables after a failure must still be started.
    let plan = CopyPlan::new("r")
        .with_batch_rows(1_000)
        .with_parallel_tables(1);
    let (result, events) = run(source, sink, plan).await;
    assert!(
        matches!(result, Err(Error::InvalidValue { ref table, ref column, .. })
            if table == "main.a_fail" && column == "id"),
        "the first failure is returned: {result:?}"
    );
    let mut done: Vec<String> = events
        .iter()
        .filter(|e| e.done)
        .map(|e| e.table.to_string())
        .collect();
    done.sort();
    assert_eq!(done, ["main.b_ok", "main.d_ok"]);
    let mut manifests: Vec<String> = manifests_under(dir.path())
        .iter()
        .map(|m| {
            m.parent()
                .unwrap()
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    manifests.sort();
    assert_eq!(
        manifests,
        ["b_ok", "d_ok"],
        "failed tables leave no manifest"
    );
}

#[tokio::test]
async fn manifest_is_written_last() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = local_sink(dir.path(), small_files());
    let table = ids_schema("ids");
    let run_dir = store
        .path_to_filesystem(&sink.run_path(&table.table, "r").unwrap())
        .unwrap();

    let mut writer = sink.begin_table(&table, "r").await.unwrap();
    for i in 0..3 {
        writer
            .write(ids_batch(&table, i * 2_000, 2_000))
            .await
            .unwrap();
    }
    // Two parts of 2,500 rows are complete, the third is open: no manifest yet.
    let parts = files_under(&run_dir);
    assert_eq!(parts.len(), 2);
    assert!(manifests_under(&run_dir).is_empty());
    let wrong = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "other",
            DataType::Int64,
            false,
        )])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    assert!(matches!(
        writer.write(wrong).await,
        Err(Error::SchemaMismatch { .. })
    ));

    let output = writer.finish().await.unwrap();
    assert_eq!(output.rows, 6_000);
    assert_eq!(
        output.files.iter().map(|f| f.rows).collect::<Vec<_>>(),
        [2_500, 2_500, 1_000]
    );
    assert_eq!(manifests_under(&run_dir).len(), 1);
    let digest = parquet_digest(&local_files(&store, &output));
    assert_eq!(digest.rows, 6_000);

    // A second run of the same table is independent, and aborting it removes its parts.
    let mut writer = sink.begin_table(&table, "r2").await.unwrap();
    for i in 0..3 {
        writer
            .write(ids_batch(&table, i * 2_000, 2_000))
            .await
            .unwrap();
    }
    writer.abort().await.unwrap();
    let run2 = run_dir.parent().unwrap().join("r2");
    assert!(!run2.exists() || files_under(&run2).is_empty());
    assert_eq!(manifests_under(dir.path()).len(), 1);
}

#[test]
fn traits_are_usable_as_dyn() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Source>();
    assert_send_sync::<dyn Sink>();
    assert_send_sync::<Arc<dyn Source>>();
    fn takes(_: Arc<dyn Source>, _: Arc<dyn Sink>) {}
    let store = Arc::new(object_store::memory::InMemory::new());
    let sink = ParquetSink::new(store, ObjectPath::from("p"), ParquetSinkConfig::default());
    takes(Arc::new(ScriptedSource { tables: vec![] }), Arc::new(sink));
}
