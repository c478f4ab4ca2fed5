//! PostgreSQL source against a real server started for each test: every mapped type with its
//! edge values, the text fallback, the snapshot, page-range partitions, awkward names,
//! partitioned tables, privileges and a connection dropped mid-copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt32Type,
};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidegate_replicate::postgres::PgType;
use tidegate_replicate::sqlx::postgres::PgConnectOptions;
use tidegate_replicate::{
    CancellationToken, CopyPlan, Error, ParquetSink, ParquetSinkConfig, Partition, PostgresSource,
    PostgresSourceConfig, Source, TableSchema, copy_tables,
};
use tidegate_replicate::{PostgresSink, PostgresSinkConfig};
use tidegate_testkit::PgServer;

async fn server_with(sql: &str) -> PgServer {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    server.create_database("src").unwrap();
    server.execute("src", sql).unwrap();
    server
}

async fn read_all(source: &PostgresSource, table: &TableSchema) -> RecordBatch {
    let batches: Vec<RecordBatch> = source
        .read_table(table, 1000)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    concat_batches(&table.schema, &batches).unwrap()
}

async fn table(source: &PostgresSource, name: &str) -> TableSchema {
    source
        .discover()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.table.name == name)
        .unwrap_or_else(|| panic!("table {name} not discovered"))
}

const TYPES_SQL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE all_types (
    id integer PRIMARY KEY,
    b boolean, i2 smallint, i4 integer, i8 bigint, o oid,
    f4 real, f8 double precision,
    n numeric(38, 4), n_neg numeric(5, -2), n_free numeric,
    t text, vc varchar(10), ch char(3), nm name,
    by bytea, d date, tm time, ts timestamp, tstz timestamptz,
    iv interval, u uuid, j json, jb jsonb,
    ai integer[], at text[], e mood, dom positive, ip inet
);
INSERT INTO all_types VALUES
 (1, false, -32768, -2147483648, -9223372036854775808, 0,
  '-Infinity', 'NaN',
  -9999999999999999999999999999999999.9999, -9999900, 0.000000000000000000001,
  '', '', 'a', 'n',
  '', '4713-01-01 BC', '00:00:00', '4713-01-01 00:00:00 BC', '1970-01-01 00:00:00+00',
  '-178000000 years', '00000000-0000-0000-0000-000000000000', '{}', '{}',
  '{}', '{}', 'sad', 1, '10.0.0.1'),
 (2, true, 32767, 2147483647, 9223372036854775807, 4294967295,
  'Infinity', '1.7976931348623157e308',
  9999999999999999999999999999999999.9999, 9999900, 123456789012345678901234567890.123456789,
  'zürich 東京 🦀 "quoted" \ back', 'ten chars!', 'abc', 'name',
  '\x00ff10', '294276-12-31', '23:59:59.999999', '294247-01-01 23:59:59.999999',
  '2024-02-29 12:34:56.789012+05:30',
  '1 year 2 months 3 days 04:05:06.000007', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '{"k": [1, "v"]}', '{"k": [1, "v"]}',
  '{1, NULL, -3}', '{"a", "", "東京"}', 'happy', 2147483647, '2001:db8::1/64'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, true, 0, 0, 0, 1, 0, '-0', 0, 0, 0,
  repeat('x', 1100000), repeat('y', 10), NULL, NULL,
  decode(repeat('ab', 1200000), 'hex'), '2000-01-01', '12:00', '2000-01-01', '2000-01-01 00:00:00+00',
  '-1 days', '123e4567-e89b-12d3-a456-426614174000', 'null', '[]',
  '{NULL}', '{NULL}', 'ok', 5, '::1');
"#;

#[tokio::test]
async fn every_type_reads_with_its_edge_values() {
    let server = server_with(TYPES_SQL).await;
    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    let table = table(&source, "all_types").await;

    let types: BTreeMap<&str, DataType> = table
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone()))
        .collect();
    assert_eq!(types["n"], DataType::Decimal128(38, 4));
    assert_eq!(
        types["n_neg"],
        DataType::Decimal128(7, 0),
        "a negative scale widens the precision: Parquet has no negative scales"
    );
    assert_eq!(
        types["n_free"],
        DataType::Utf8,
        "unconstrained numeric falls back to text"
    );
    assert_eq!(types["ip"], DataType::Utf8, "inet falls back to text");
    assert_eq!(types["e"], DataType::Utf8);
    assert_eq!(
        types["dom"],
        DataType::Int32,
        "a domain reads as its base type"
    );
    assert_eq!(types["u"], DataType::FixedSizeBinary(16));
    assert_eq!(types["iv"], PgType::Interval.data_type());
    assert_eq!(
        types["tstz"],
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let uuid_field = table.schema.field_with_name("u").unwrap();
    assert_eq!(
        uuid_field
            .metadata()
            .get("ARROW:extension:name")
            .map(String::as_str),
        Some("arrow.uuid")
    );

    let batch = read_all(&source, &table).await;
    assert_eq!(batch.num_rows(), 4);
    // Rows come in no particular order: index them by id.
    let ids = batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int32Type>();
    let row = |id: i32| ids.iter().position(|v| v == Some(id)).unwrap();
    let (r1, r2, r3, r4) = (row(1), row(2), row(3), row(4));
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();

    // NULL in every column.
    for (index, field) in table.schema.fields().iter().enumerate() {
        if field.name() != "id" {
            assert!(
                batch.column(index).is_null(r3),
                "{} should be NULL",
                field.name()
            );
        }
    }

    assert!(!col("b").as_boolean().value(r1));
    assert!(col("b").as_boolean().value(r2));
    assert_eq!(col("i2").as_primitive::<Int16Type>().value(r1), i16::MIN);
    assert_eq!(col("i2").as_primitive::<Int16Type>().value(r2), i16::MAX);
    assert_eq!(col("i4").as_primitive::<Int32Type>().value(r1), i32::MIN);
    assert_eq!(col("i8").as_primitive::<Int64Type>().value(r1), i64::MIN);
    assert_eq!(col("i8").as_primitive::<Int64Type>().value(r2), i64::MAX);
    assert_eq!(col("o").as_primitive::<UInt32Type>().value(r2), u32::MAX);
    assert_eq!(
        col("f4").as_primitive::<Float32Type>().value(r1),
        f32::NEG_INFINITY
    );
    assert_eq!(
        col("f4").as_primitive::<Float32Type>().value(r2),
        f32::INFINITY
    );
    assert!(col("f8").as_primitive::<Float64Type>().value(r1).is_nan());
    assert_eq!(col("f8").as_primitive::<Float64Type>().value(r2), f64::MAX);
    let negative_zero = col("f8").as_primitive::<Float64Type>().value(r4);
    assert!(negative_zero == 0.0 && negative_zero.is_sign_negative());

    let n = col("n");
    let n = n.as_primitive::<Decimal128Type>();
    let max = 10i128.pow(38) - 1;
    assert_eq!(n.value(r1), -max);
    assert_eq!(n.value(r2), max);
    assert_eq!(
        col("n_neg").as_primitive::<Decimal128Type>().value(r2),
        9_999_900
    );
    assert_eq!(
        col("n_free").as_string::<i32>().value(r2),
        "123456789012345678901234567890.123456789"
    );
    assert_eq!(
        col("n_free").as_string::<i32>().value(r1),
        "0.000000000000000000001"
    );

    let text = col("t");
    let text = text.as_string::<i32>();
    assert_eq!(text.value(r1), "");
    assert_eq!(text.value(r2), "zürich 東京 🦀 \"quoted\" \\ back");
    assert_eq!(text.value(r4).len(), 1_100_000, "a value above 1 MiB");
    assert_eq!(
        col("ch").as_string::<i32>().value(r1),
        "a  ",
        "char(n) keeps its padding"
    );
    assert_eq!(col("nm").as_string::<i32>().value(r2), "name");

    let bytes = col("by");
    let bytes = bytes.as_binary::<i32>();
    assert_eq!(bytes.value(r1), b"");
    assert_eq!(bytes.value(r2), [0x00, 0xff, 0x10]);
    assert_eq!(bytes.value(r4).len(), 1_200_000);

    // PostgreSQL's own arithmetic gives the expected day number of its earliest date.
    let earliest: i32 = server
        .execute("src", "SELECT '4713-01-01 BC'::date - '1970-01-01'::date")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(col("d").as_primitive::<Date32Type>().value(r1), earliest);
    assert_eq!(col("d").as_primitive::<Date32Type>().value(r4), 10_957);
    assert_eq!(
        col("tm").as_primitive::<Time64MicrosecondType>().value(r2),
        86_399_999_999
    );
    assert_eq!(
        col("ts")
            .as_primitive::<TimestampMicrosecondType>()
            .value(r1),
        i64::from(earliest) * 86_400_000_000
    );
    assert_eq!(
        col("tstz")
            .as_primitive::<TimestampMicrosecondType>()
            .value(r2),
        // 2024-02-29 07:04:56.789012 UTC
        1_709_190_296_789_012
    );

    let interval = col("iv");
    let interval = interval.as_struct();
    let months = interval.column(0).as_primitive::<Int32Type>();
    let days = interval.column(1).as_primitive::<Int32Type>();
    let micros = interval.column(2).as_primitive::<Int64Type>();
    assert_eq!(months.value(r1), -178_000_000 * 12);
    assert_eq!((months.value(r2), days.value(r2)), (14, 3));
    assert_eq!(micros.value(r2), ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 7);
    assert_eq!(days.value(r4), -1);

    let uuid = col("u");
    let uuid = uuid.as_fixed_size_binary();
    assert_eq!(uuid.value(r1), [0; 16]);
    assert_eq!(uuid.value(r2), [0xff; 16]);
    assert_eq!(
        uuid.value(r4),
        [
            0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17,
            0x40, 0
        ]
    );
    assert_eq!(col("j").as_string::<i32>().value(r2), r#"{"k": [1, "v"]}"#);
    assert_eq!(col("jb").as_string::<i32>().value(r2), r#"{"k": [1, "v"]}"#);

    let ints = col("ai");
    let ints = ints.as_list::<i32>();
    assert_eq!(ints.value(r1).len(), 0);
    let second = ints.value(r2);
    let second = second.as_primitive::<Int32Type>();
    assert_eq!(second.iter().collect::<Vec<_>>(), [Some(1), None, Some(-3)]);
    assert_eq!(ints.value(r4).null_count(), 1);
    let texts = col("at");
    let texts = texts.as_list::<i32>().value(r2);
    assert_eq!(
        texts.as_string::<i32>().iter().collect::<Vec<_>>(),
        [Some("a"), Some(""), Some("東京")]
    );
    assert_eq!(col("e").as_string::<i32>().value(r2), "happy");
    assert_eq!(col("dom").as_primitive::<Int32Type>().value(r2), i32::MAX);
    assert_eq!(col("ip").as_string::<i32>().value(r2), "2001:db8::1/64");
}

#[tokio::test]
async fn every_type_round_trips_through_parquet() {
    let server = server_with(TYPES_SQL).await;
    let source = Arc::new(PostgresSource::connect(&server.url("src")).await.unwrap());
    let table = table(&source, "all_types").await;
    let expected = read_all(&source, &table).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let sink = Arc::new(ParquetSink::new(
        store,
        "raw".into(),
        ParquetSinkConfig::default(),
    ));
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let summary = copy_tables(
        source,
        sink,
        CopyPlan::new("run-1").with_tables(["all_types"]),
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.total_rows(), 4);

    let mut batches = Vec::new();
    for file in &summary.tables[0].files {
        let path = dir.path().join(file.path.replace("%20", " "));
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let read_back = concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(read_back.num_rows(), expected.num_rows());
    for (index, field) in expected.schema().fields().iter().enumerate() {
        assert_eq!(
            read_back.column(index).to_data(),
            expected.column(index).to_data(),
            "column {} differs after the Parquet round trip",
            field.name()
        );
    }
}

#[tokio::test]
async fn values_without_an_arrow_form_fail_naming_the_column() {
    let server = server_with(
        "CREATE TABLE t (id int, d date, n numeric(10, 2), ts timestamp, note text);
         INSERT INTO t VALUES (1, 'infinity', 1.5, '2020-01-01', 'canary-value-4711');",
    )
    .await;
    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    let table = table(&source, "t").await;
    let result: Result<Vec<RecordBatch>, Error> = source
        .read_table(&table, 100)
        .await
        .unwrap()
        .try_collect()
        .await;
    let error = result.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("column d"), "{message}");
    assert!(
        !format!("{error:?}").contains("canary"),
        "no row value: {error:?}"
    );

    for (update, column) in [
        ("UPDATE t SET d = '2020-01-01', n = 'NaN'", "column n"),
        (
            "UPDATE t SET n = 1, ts = '294276-12-31 23:59:59'",
            "column ts",
        ),
        ("UPDATE t SET ts = '-infinity'", "column ts"),
    ] {
        server.execute("src", update).unwrap();
        let source = PostgresSource::connect(&server.url("src")).await.unwrap();
        let result: Result<Vec<RecordBatch>, Error> = source
            .read_table(&table, 100)
            .await
            .unwrap()
            .try_collect()
            .await;
        let error = result.unwrap_err();
        assert!(
            matches!(error, Error::UnrepresentableValue { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(column), "{update}: {error}");
        assert!(
            !format!("{error:?}").contains("canary"),
            "no row value: {error:?}"
        );
    }
}

#[tokio::test]
async fn all_tables_are_read_in_one_snapshot() {
    let server = server_with(
        "CREATE TABLE a (id int); CREATE TABLE b (id int);
         INSERT INTO a SELECT generate_series(1, 100); INSERT INTO b SELECT generate_series(1, 100);",
    )
    .await;
    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    assert!(source.snapshot_id().is_some());
    // Changes committed after the source connected are not seen, by any table.
    server
        .execute(
            "src",
            "INSERT INTO a SELECT generate_series(101, 150); DELETE FROM b;",
        )
        .unwrap();
    let a = table(&source, "a").await;
    let b = table(&source, "b").await;
    assert_eq!(read_all(&source, &a).await.num_rows(), 100);
    assert_eq!(read_all(&source, &b).await.num_rows(), 100);

    let later = PostgresSource::connect(&server.url("src")).await.unwrap();
    assert_eq!(read_all(&later, &a).await.num_rows(), 150);
    assert_eq!(read_all(&later, &b).await.num_rows(), 0);
}

#[tokio::test]
async fn a_snapshot_exported_elsewhere_is_joined_by_every_reader() {
    use tidegate_replicate::sqlx::{Connection, PgConnection};
    let server = server_with(
        "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 100);
         CREATE TABLE p (id int, k int) PARTITION BY LIST (k);
         CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);
         CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2);
         INSERT INTO p SELECT g, 1 + g % 2 FROM generate_series(1, 60) g;",
    )
    .await;
    // The exporter (a replication slot, in CDC) keeps its transaction open.
    let mut exporter = PgConnection::connect(&server.url("src")).await.unwrap();
    tidegate_replicate::sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut exporter)
        .await
        .unwrap();
    let id: String = tidegate_replicate::sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut exporter)
        .await
        .unwrap();
    server
        .execute(
            "src",
            "INSERT INTO a SELECT generate_series(101, 150); DELETE FROM p WHERE k = 2;",
        )
        .unwrap();
    let options: PgConnectOptions = server.url("src").parse().unwrap();
    let config = PostgresSourceConfig::default().with_snapshot(id.clone());
    let source = PostgresSource::connect_with(options.clone(), config)
        .await
        .unwrap();
    assert_eq!(source.snapshot_id(), Some(id.as_str()));
    let a = table(&source, "a").await;
    assert_eq!(read_all(&source, &a).await.num_rows(), 100);
    // A partitioned table is read through its root, partitions included.
    let p = table(&source, "p").await;
    assert_eq!(read_all(&source, &p).await.num_rows(), 60);

    // Something that is not a snapshot id is refused before it reaches SQL.
    let config = PostgresSourceConfig::default().with_snapshot("x'; DROP TABLE a; --");
    let error = PostgresSource::connect_with(options, config)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
}

#[tokio::test]
async fn page_ranges_partition_a_table_exactly() {
    let server = server_with(
        "CREATE TABLE big (id bigint, pad text);
         INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 20000) g;
         DELETE FROM big WHERE id % 7 = 0;",
    )
    .await;
    let options: PgConnectOptions = server.url("src").parse().unwrap();
    let mut config = PostgresSourceConfig::default();
    config.min_split_pages = 4;
    let source = PostgresSource::connect_with(options, config).await.unwrap();
    let table = table(&source, "big").await;
    let partitions = source.partitions(&table, 3).await.unwrap();
    assert_eq!(partitions.len(), 3);
    assert!(matches!(partitions[2], Partition::Pages { end: None, .. }));

    let mut ids = Vec::new();
    for partition in &partitions {
        let batches: Vec<RecordBatch> = source
            .read_partition(&table, partition, 1000)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(!batches.is_empty(), "every range holds rows");
        for batch in batches {
            ids.extend(
                batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
        }
    }
    ids.sort_unstable();
    let expected: Vec<i64> = (1..=20000).filter(|id| id % 7 != 0).collect();
    assert_eq!(ids, expected, "every row exactly once");
}

#[tokio::test]
async fn awkward_names_partitioned_tables_and_privileges() {
    let server = server_with(
        r#"CREATE SCHEMA "Sales ""EU""";
           CREATE TABLE "Sales ""EU"""."Order Lines; DROP TABLE x" ("Id" int, "naïve Ünïcode" text, "a""b" int);
           INSERT INTO "Sales ""EU"""."Order Lines; DROP TABLE x" VALUES (1, 'é', 2);
           CREATE TABLE measurements (id int, at date) PARTITION BY RANGE (at);
           CREATE TABLE measurements_2023 PARTITION OF measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
           CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           INSERT INTO measurements VALUES (1, '2023-05-01'), (2, '2024-05-01'), (3, '2024-06-01');
           CREATE TABLE secret (id int);
           CREATE ROLE reader LOGIN PASSWORD 'reader-pw';
           GRANT USAGE ON SCHEMA "Sales ""EU""" TO reader;
           GRANT SELECT ON ALL TABLES IN SCHEMA public, "Sales ""EU""" TO reader;
           REVOKE SELECT ON secret FROM reader;"#,
    )
    .await;
    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    let tables = source.discover().await.unwrap();
    let names: Vec<String> = tables.iter().map(|t| t.table.to_string()).collect();
    assert!(
        names.contains(&"public.measurements".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("measurements_20")),
        "partitions are read through their root: {names:?}"
    );
    let odd = tables
        .iter()
        .find(|t| t.table.schema == "Sales \"EU\"")
        .unwrap();
    assert_eq!(odd.table.name, "Order Lines; DROP TABLE x");
    let fields: Vec<&str> = odd
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(fields, ["Id", "naïve Ünïcode", "a\"b"]);
    let batch = read_all(&source, odd).await;
    assert_eq!(batch.column(1).as_string::<i32>().value(0), "é");

    let partitioned = tables
        .iter()
        .find(|t| t.table.name == "measurements")
        .unwrap();
    assert_eq!(read_all(&source, partitioned).await.num_rows(), 3);

    // A role sees only what it may read.
    let reader_url = server.url("src").replace(
        &format!("{}:{}", server.user(), server.password()),
        "reader:reader-pw",
    );
    let reader = PostgresSource::connect(&reader_url).await.unwrap();
    let visible: Vec<String> = reader
        .discover()
        .await
        .unwrap()
        .iter()
        .map(|t| t.table.to_string())
        .collect();
    assert!(
        !visible.contains(&"public.secret".to_owned()),
        "{visible:?}"
    );
    assert!(
        visible.contains(&"public.measurements".to_owned()),
        "{visible:?}"
    );
}

#[tokio::test]
async fn bad_credentials_and_urls_are_refused_without_echoing_secrets() {
    let server = server_with("SELECT 1").await;
    let url = server
        .url("src")
        .replace(server.password(), "wrong-password-canary");
    let error = PostgresSource::connect(&url).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(matches!(error, Error::Connect { .. }), "{text}");
    assert!(!text.contains("wrong-password-canary"), "{text}");

    let error = PostgresSource::connect("postgres://u:pw-canary@host:notaport/db")
        .await
        .unwrap_err();
    assert!(!format!("{error} {error:?}").contains("pw-canary"));

    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    assert!(!format!("{source:?}").contains(server.password()));
}

#[tokio::test]
async fn a_connection_dropped_mid_copy_fails_the_read() {
    let server = server_with(
        "CREATE TABLE big (id bigint, pad text);
         INSERT INTO big SELECT g, repeat('p', 500) FROM generate_series(1, 200000) g;",
    )
    .await;
    let source = PostgresSource::connect(&server.url("src")).await.unwrap();
    let table = table(&source, "big").await;
    let mut batches = source.read_table(&table, 1000).await.unwrap();
    let first = batches.try_next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 1000);
    server
        .execute(
            "src",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    let mut rows = first.num_rows();
    let error = loop {
        match batches.try_next().await {
            Ok(Some(batch)) => rows += batch.num_rows(),
            Ok(None) => panic!("the read ended normally after {rows} rows"),
            Err(error) => break error,
        }
    };
    assert!(rows < 200_000);
    assert!(matches!(error, Error::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("public.big"), "{error}");
}

/// Per column expression: rows, non-null values and an order-independent digest of PostgreSQL's own text
/// form of every value, so source and target are compared by the database itself.
fn column_digests(
    server: &PgServer,
    database: &str,
    table: &str,
    columns: &[String],
) -> Vec<String> {
    columns
        .iter()
        .map(|column| {
            let c = column;
            let sql = format!(
                "SELECT count(*) || ':' || count({c}) || ':' || \
                 md5(coalesce(string_agg(format('%s', {c}), E'\\x1f' ORDER BY format('%s', {c})), '')) \
                 FROM {table}"
            );
            let label = column.split("::").next().unwrap_or(column).trim_matches('"');
            format!("{label}={}", server.execute(database, &sql).unwrap().trim())
        })
        .collect()
}

async fn copy_into_postgres(
    server: &PgServer,
    tables: &[&str],
) -> tidegate_replicate::Result<tidegate_replicate::CopySummary> {
    let source = Arc::new(PostgresSource::connect(&server.url("src")).await?);
    let sink = Arc::new(
        PostgresSink::connect(&server.url("dst"), PostgresSinkConfig::default(), 2).await?,
    );
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let plan = CopyPlan::new("run-1")
        .with_tables(tables.iter().copied())
        .with_batch_rows(3);
    copy_tables(source, sink, plan, progress, CancellationToken::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_a_postgres_target() {
    let server = server_with(TYPES_SQL).await;
    server.create_database("dst").unwrap();
    let summary = copy_into_postgres(&server, &["all_types"]).await.unwrap();
    assert_eq!(summary.total_rows(), 4);

    let columns: Vec<String> = server
        .execute(
            "src",
            "SELECT attname FROM pg_attribute WHERE attrelid = 'all_types'::regclass \
             AND attnum > 0 ORDER BY attnum",
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(columns.len(), 29);
    // Columns read through the text fallback hold the `::text` cast of the source value.
    let quoted = |fallback: bool| -> Vec<String> {
        columns
            .iter()
            .map(|c| match c.as_str() {
                "ip" if fallback => "ip::text".to_owned(),
                _ => format!("\"{c}\""),
            })
            .collect()
    };
    let source = column_digests(&server, "src", "all_types", &quoted(true));
    let target = column_digests(&server, "dst", "public.all_types", &quoted(false));
    assert_eq!(source, target);
    // The target's types follow docs/types.md.
    let types = server
        .execute(
            "dst",
            "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'public.all_types'::regclass AND attnum > 0",
        )
        .unwrap();
    assert_eq!(
        types.trim(),
        "integer,boolean,smallint,integer,bigint,bigint,real,double precision,numeric(38,4),\
         numeric(7,0),text,text,text,text,text,bytea,date,time without time zone,\
         timestamp without time zone,timestamp with time zone,interval,uuid,json,json,\
         integer[],text[],text,integer,text"
    );
    // No staging table is left behind.
    let leftovers = server
        .execute(
            "dst",
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_tidegate\\_%'",
        )
        .unwrap();
    assert_eq!(leftovers.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_leaves_the_existing_target_table_untouched() {
    let server = server_with(
        r#"CREATE TABLE t (id int, d date);
           INSERT INTO t SELECT g, '2020-01-01' FROM generate_series(1, 100) g;
           CREATE TABLE "Mixed Case ""Name""" (v text);
           INSERT INTO "Mixed Case ""Name""" VALUES ('ok');"#,
    )
    .await;
    server.create_database("dst").unwrap();
    copy_into_postgres(&server, &["t", "Mixed Case \"Name\""])
        .await
        .unwrap();
    let count = |sql: &str| server.execute("dst", sql).unwrap().trim().to_owned();
    assert_eq!(count("SELECT count(*) FROM t"), "100");
    assert_eq!(count(r#"SELECT v FROM "Mixed Case ""Name""""#), "ok");

    // A value the source cannot read fails the next load midway: the target keeps run 1.
    server
        .execute(
            "src",
            "INSERT INTO t SELECT g, '2020-01-01' FROM generate_series(101, 200) g; \
                         UPDATE t SET d = 'infinity' WHERE id = 150",
        )
        .unwrap();
    let error = copy_into_postgres(&server, &["t"]).await.unwrap_err();
    assert!(
        matches!(error, Error::UnrepresentableValue { .. }),
        "{error:?}"
    );
    assert_eq!(count("SELECT count(*) FROM t"), "100");
    assert_eq!(
        count("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_tidegate\\_%'"),
        "0",
        "the staging table is dropped"
    );

    // A successful load replaces it.
    server
        .execute("src", "UPDATE t SET d = '2021-01-01' WHERE id = 150")
        .unwrap();
    copy_into_postgres(&server, &["t"]).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM t"), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusing_writes_fails_naming_the_target() {
    let server = server_with(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);
         CREATE ROLE loader LOGIN PASSWORD 'loader-pw';",
    )
    .await;
    server.create_database("dst").unwrap();
    server
        .execute("dst", "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .unwrap();
    let source = Arc::new(PostgresSource::connect(&server.url("src")).await.unwrap());
    let url = server.url("dst").replace(
        &format!("{}:{}", server.user(), server.password()),
        "loader:loader-pw",
    );
    let sink = Arc::new(
        PostgresSink::connect(&url, PostgresSinkConfig::default(), 1)
            .await
            .unwrap(),
    );
    let (progress, _events) = tokio::sync::mpsc::channel(64);
    let error = copy_tables(
        source,
        sink,
        CopyPlan::new("r"),
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("public.t") && text.contains("/dst"), "{text}");
    assert!(!text.contains("loader-pw"), "{text}");
}
