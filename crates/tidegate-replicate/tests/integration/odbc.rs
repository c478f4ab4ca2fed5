//! The ODBC source against real drivers: Debian's SQLite ODBC driver on a temporary SQLite file
//! and the PostgreSQL ODBC driver against a real server started for each test.
//!
//! Every table is checked column by column: the row count and an order-independent checksum of
//! each column's values, computed once from the source queried directly (sqlx, with SQL that
//! renders each value canonically) and once from what `OdbcSource` yields. Names are awkward on
//! purpose (quotes, spaces, mixed case, non-ASCII) and one row is NULL in every column.
//!
//! The drivers come from `unixodbc-dev odbc-postgresql libsqliteodbc` (`scripts/test.sh`
//! installs them); a missing driver fails the tests, it does not skip them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt8Type,
};
use futures::{StreamExt, TryStreamExt};
use sqlx::{AssertSqlSafe, Connection, Row};
use tidegate_replicate::odbc::ConnectionStringBuilder;
use tidegate_replicate::{Error, OdbcSource, OdbcSourceConfig, Source, TableRef, TableSchema};
use tidegate_testkit::PgServer;

// --- Drivers and servers ---------------------------------------------------------------------

/// The first installed ODBC driver whose name contains `wanted` (as `odbcinst -q -d` lists it).
fn driver(wanted: &str) -> String {
    let output = std::process::Command::new("odbcinst")
        .args(["-q", "-d"])
        .output()
        .expect("odbcinst (unixodbc) is installed: apt-get install unixodbc-dev");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().trim_start_matches('[').trim_end_matches(']'))
        .find(|name| name.contains(wanted))
        .unwrap_or_else(|| panic!("no ODBC driver named like {wanted:?}: apt-get install odbc-postgresql libsqliteodbc"))
        .to_owned()
}

fn sqlite_connection_string(path: &std::path::Path) -> String {
    ConnectionStringBuilder::new()
        .attribute("Driver", &driver("SQLite3"))
        .unwrap()
        .attribute("Database", path.to_str().unwrap())
        .unwrap()
        .finish()
}

/// psqlODBC with booleans as `BIT` (not its default `'1'`/`'0'` text).
fn postgres_connection_string(server: &PgServer, user: &str, password: &str) -> String {
    ConnectionStringBuilder::new()
        .attribute("Driver", &driver("PostgreSQL Unicode"))
        .unwrap()
        .attribute("Server", "127.0.0.1")
        .unwrap()
        .attribute("Port", &server.port().to_string())
        .unwrap()
        .attribute("Database", "src")
        .unwrap()
        .attribute("UID", user)
        .unwrap()
        .attribute("PWD", password)
        .unwrap()
        .attribute("BoolsAsChar", "0")
        .unwrap()
        .finish()
}

async fn pg_server(sql: &str) -> PgServer {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    server.create_database("src").unwrap();
    // timestamptz reaches ODBC as the session's wall-clock time: make that UTC.
    server
        .execute("postgres", "ALTER DATABASE src SET timezone TO 'UTC'")
        .unwrap();
    server.execute("src", sql).unwrap();
    server
}

async fn table(source: &OdbcSource, schema: &str, name: &str) -> TableSchema {
    source
        .discover()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.table == TableRef::new(schema, name))
        .unwrap_or_else(|| panic!("table {schema}.{name} not discovered"))
}

async fn read_all(source: &OdbcSource, table: &TableSchema, batch_rows: usize) -> Vec<RecordBatch> {
    let batches: Vec<RecordBatch> = source
        .read_table(table, batch_rows)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    for batch in &batches {
        assert_eq!(
            batch.schema(),
            table.schema,
            "every batch has the table's schema"
        );
        assert!(batch.num_rows() > 0 && batch.num_rows() <= batch_rows);
    }
    batches
}

async fn read_error(source: &OdbcSource, table: &TableSchema) -> Error {
    let stream = match source.read_table(table, 1000).await {
        Ok(stream) => stream,
        Err(error) => return error,
    };
    let results: Vec<_> = stream.collect().await;
    let position = results
        .iter()
        .position(Result::is_err)
        .expect("the read fails");
    assert_eq!(position, results.len() - 1, "an error ends the stream");
    results.into_iter().last().unwrap().unwrap_err()
}

// --- Order-independent column checksums ------------------------------------------------------

/// One column's row count, non-NULL count and order-independent checksum (the wrapping sum and
/// the xor of FNV-1a hashes of each value's canonical text). The first values are kept to show
/// what differs when a checksum does not match.
#[derive(Debug, Clone, Default)]
struct Digest {
    rows: u64,
    non_null: u64,
    sum: u64,
    xor: u64,
    sample: Vec<String>,
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.non_null, self.sum, self.xor)
            == (other.rows, other.non_null, other.sum, other.xor)
    }
}

impl Digest {
    fn add(&mut self, value: Option<&str>) {
        self.rows += 1;
        if self.sample.len() < 8 {
            self.sample.push(format!("{value:?}"));
            self.sample.sort();
        }
        if let Some(value) = value {
            let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
            self.non_null += 1;
            self.sum = self.sum.wrapping_add(hash);
            self.xor ^= hash;
        }
    }
}

/// How the text a source query returns becomes canonical.
#[derive(Debug, Clone, Copy)]
enum Canon {
    /// Already canonical.
    Text,
    /// A float in any exact decimal form: its IEEE bits.
    F64,
    F32,
}

fn float64_canon(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else {
        format!("{:016x}", value.to_bits())
    }
}

fn float32_canon(value: f32) -> String {
    if value.is_nan() {
        "NaN".into()
    } else {
        format!("{:08x}", value.to_bits())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The canonical text of one Arrow value, matching what the source queries render.
fn arrow_canon(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).to_string(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float32 => float32_canon(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => float64_canon(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, _) => array.as_primitive::<Decimal128Type>().value_as_string(row),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::Binary => hex(array.as_binary::<i32>().value(row)),
        DataType::Date32 => array.as_primitive::<Date32Type>().value(row).to_string(),
        DataType::Time64(TimeUnit::Microsecond) => array
            .as_primitive::<Time64MicrosecondType>()
            .value(row)
            .to_string(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(row)
            .to_string(),
        other => panic!("no canonical form for {other} in this test"),
    })
}

/// Per-column digests of what the ODBC source yields for `table`.
async fn odbc_digests(
    source: &OdbcSource,
    table: &TableSchema,
    batch_rows: usize,
) -> BTreeMap<String, Digest> {
    let mut digests: BTreeMap<String, Digest> = table
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), Digest::default()))
        .collect();
    for batch in read_all(source, table, batch_rows).await {
        for (field, array) in table.schema.fields().iter().zip(batch.columns()) {
            let digest = digests.get_mut(field.name()).unwrap();
            for row in 0..batch.num_rows() {
                digest.add(arrow_canon(array.as_ref(), row).as_deref());
            }
        }
    }
    digests
}

/// A column as the test queries it directly: its name and the SQL rendering its value
/// canonically (`{c}` stands for the quoted column).
struct Column {
    name: &'static str,
    sql: &'static str,
    canon: Canon,
}

const fn col(name: &'static str, sql: &'static str) -> Column {
    Column {
        name,
        sql,
        canon: Canon::Text,
    }
}

const fn float(name: &'static str, sql: &'static str, canon: Canon) -> Column {
    Column { name, sql, canon }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SELECT <canonical text of each column> FROM <table>`.
fn direct_sql(table: &str, columns: &[Column]) -> String {
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| {
            let expr = c.sql.replace("{c}", &quoted(c.name));
            format!(
                "CASE WHEN {q} IS NULL THEN NULL ELSE {expr} END",
                q = quoted(c.name)
            )
        })
        .collect();
    format!("SELECT {} FROM {table}", exprs.join(", "))
}

fn direct_digests<R: Row>(columns: &[Column], rows: &[R]) -> BTreeMap<String, Digest>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let mut digests = BTreeMap::new();
    for (index, column) in columns.iter().enumerate() {
        let mut digest = Digest::default();
        for row in rows {
            let text: Option<String> = row.try_get(index).unwrap();
            let canon = text.map(|text| match column.canon {
                Canon::Text => text,
                Canon::F64 => float64_canon(text.parse().unwrap()),
                Canon::F32 => float32_canon(text.parse().unwrap()),
            });
            digest.add(canon.as_deref());
        }
        digests.insert(column.name.to_owned(), digest);
    }
    digests
}

fn assert_same(table: &str, direct: &BTreeMap<String, Digest>, odbc: &BTreeMap<String, Digest>) {
    assert_eq!(
        direct.keys().collect::<Vec<_>>(),
        odbc.keys().collect::<Vec<_>>(),
        "{table}: every column is checked"
    );
    for (name, digest) in direct {
        assert!(
            digest.rows > 0 && digest.non_null < digest.rows,
            "{table}.{name}: the data has rows and NULLs"
        );
        assert!(
            odbc[name] == *digest,
            "{table}.{name}: ODBC and the source disagree:\n  source {digest:?}\n  odbc   {:?}",
            odbc[name]
        );
    }
}

// --- PostgreSQL through psqlODBC -------------------------------------------------------------

const PG_SQL: &str = r#"
CREATE TABLE "We""ird Tåble" (
    id integer, "Mixed Case" bigint, "sp ace" smallint, "quo""te" text, "ünï" varchar(20),
    c char(3), r real, d double precision, n numeric(12, 3), b bytea, bo boolean,
    dt date, tm time, ts timestamp, ts3 timestamp(3), tstz timestamptz,
    u uuid, j jsonb, wide numeric(50, 5), iv interval, ip inet
);
INSERT INTO "We""ird Tåble" VALUES
 (1, -9223372036854775808, -32768, '', 'zürich 東京 🦀', 'a', '-Infinity', 'NaN',
  -123456789.123, '', false, '0001-01-01', '00:00:00', '0001-01-01 00:00:00',
  '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000',
  '{}', -123456789012345678901234567890123456789012345.12345, '-1 days', '10.0.0.1'),
 (2, 9223372036854775807, 32767, 'with "quotes", ''single'' and a
line break', 'x', 'abc', 'Infinity', 1.7976931348623157e308, 999999999.999,
  '\x00ff10', true, '9999-12-31', '23:59:59.999999', '9999-12-31 23:59:59.999999',
  '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789012+05:30',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '{"k": [1, "v"], "ü": null}', 0.00001,
  '1 year 2 months 3 days 04:05:06.000007', '2001:db8::1/64'),
 (3, 0, 0, repeat('long ', 2000), '', 'x', '-0', 0.1, 0, decode(repeat('ab', 1000), 'hex'),
  true, '2000-02-29', '12:00:00.5', '1969-12-31 23:59:59.999999', '2000-01-01 00:00:00.001',
  '1969-12-31 23:59:59.5+00', '123e4567-e89b-12d3-a456-426614174000', 'null', 1.5,
  '00:00:00', '::1'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL);

CREATE SCHEMA "Sales Ü";
CREATE TABLE "Sales Ü"."order items" ("Id" bigint, "Amount €" numeric(10, 2), note text);
INSERT INTO "Sales Ü"."order items"
    SELECT CASE WHEN g % 11 = 0 THEN NULL ELSE g END, CASE WHEN g % 7 = 0 THEN NULL ELSE g * 1.25 END,
           CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END
    FROM generate_series(1, 2500) g;

CREATE VIEW not_a_table AS SELECT 1 AS x;
"#;

fn pg_weird_columns() -> Vec<Column> {
    let micros = "(extract(epoch from {c}) * 1000000)::numeric(38, 0)::text";
    vec![
        col("id", "{c}::text"),
        col("Mixed Case", "{c}::text"),
        col("sp ace", "{c}::text"),
        col("quo\"te", "{c}"),
        col("ünï", "{c}::text"),
        // bpchar loses its padding when cast to text; ODBC keeps it.
        col("c", "rpad({c}, 3)"),
        float("r", "{c}::text", Canon::F32),
        float("d", "{c}::text", Canon::F64),
        col("n", "{c}::text"),
        col("b", "encode({c}, 'hex')"),
        col("bo", "{c}::text"),
        col("dt", "({c} - date '1970-01-01')::text"),
        col("tm", micros),
        col("ts", micros),
        col("ts3", micros),
        col("tstz", micros),
        // psqlODBC renders SQL_GUID in upper case.
        col("u", "upper({c}::text)"),
        col("j", "{c}::text"),
        col("wide", "{c}::text"),
        col("iv", "{c}::text"),
        // inet's output form (::text would add the /32 of a host address).
        col("ip", "format('%s', {c})"),
    ]
}

async fn pg_direct(server: &PgServer, table: &str, columns: &[Column]) -> BTreeMap<String, Digest> {
    let mut connection = sqlx::PgConnection::connect(&server.url("src"))
        .await
        .unwrap();
    let rows = sqlx::query(AssertSqlSafe(direct_sql(table, columns)))
        .fetch_all(&mut connection)
        .await
        .unwrap();
    direct_digests(columns, &rows)
}

#[tokio::test]
async fn postgres_tables_read_exactly_through_psqlodbc() {
    let server = pg_server(PG_SQL).await;
    let source = OdbcSource::connect(postgres_connection_string(
        &server,
        server.user(),
        server.password(),
    ))
    .await
    .unwrap();

    let tables: Vec<TableRef> = source
        .discover()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.table)
        .collect();
    assert_eq!(
        tables,
        vec![
            TableRef::new("Sales Ü", "order items"),
            TableRef::new("public", "We\"ird Tåble")
        ],
        "user tables only: no view, no catalog tables"
    );

    let weird = table(&source, "public", "We\"ird Tåble").await;
    let types: Vec<(String, DataType)> = weird
        .schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    let expected = [
        ("id", DataType::Int32),
        ("Mixed Case", DataType::Int64),
        ("sp ace", DataType::Int16),
        ("quo\"te", DataType::Utf8),
        ("ünï", DataType::Utf8),
        ("c", DataType::Utf8),
        ("r", DataType::Float32),
        ("d", DataType::Float64),
        ("n", DataType::Decimal128(12, 3)),
        ("b", DataType::Binary),
        ("bo", DataType::Boolean),
        ("dt", DataType::Date32),
        ("tm", DataType::Time64(TimeUnit::Microsecond)),
        ("ts", micros.clone()),
        ("ts3", micros.clone()),
        ("tstz", micros),
        ("u", DataType::Utf8),
        ("j", DataType::Utf8),
        ("wide", DataType::Utf8),
        ("iv", DataType::Utf8),
        ("ip", DataType::Utf8),
    ];
    assert_eq!(
        types,
        expected
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect::<Vec<_>>()
    );
    assert!(weird.schema.fields().iter().all(|f| f.is_nullable()));

    let columns = pg_weird_columns();
    let direct = pg_direct(&server, r#"public."We""ird Tåble""#, &columns).await;
    assert_eq!(direct["id"].rows, 4);
    assert_same(
        "We\"ird Tåble",
        &direct,
        &odbc_digests(&source, &weird, 3).await,
    );

    // Many rows in small batches.
    let items = table(&source, "Sales Ü", "order items").await;
    let columns = [
        col("Id", "{c}::text"),
        col("Amount €", "{c}::text"),
        col("note", "{c}"),
    ];
    let direct = pg_direct(&server, r#""Sales Ü"."order items""#, &columns).await;
    assert_eq!(direct["Id"].rows, 2500);
    assert_same(
        "order items",
        &direct,
        &odbc_digests(&source, &items, 100).await,
    );
    assert_eq!(read_all(&source, &items, 100).await.len(), 25);
}

#[tokio::test]
async fn postgres_values_that_do_not_fit_fail_naming_the_column() {
    let server = pg_server(
        "CREATE TABLE loose (id int, v numeric);
         INSERT INTO loose VALUES (1, 1.5), (2, 0.000000000000000000001);
         CREATE TABLE endless (id int, t timestamp);
         INSERT INTO endless VALUES (1, '2020-01-01'), (2, '-infinity');
         CREATE TABLE forever (t timestamp);
         INSERT INTO forever VALUES ('infinity');
         CREATE TABLE long_text (id int, body text);
         INSERT INTO long_text VALUES (1, 'short'), (2, repeat('x', 5000));",
    )
    .await;
    let connection_string = postgres_connection_string(&server, server.user(), server.password());
    let source = OdbcSource::connect(connection_string.clone())
        .await
        .unwrap();

    // psqlODBC guesses numeric(28, 6) for an unconstrained numeric: a value with more digits
    // is refused, not truncated to six decimals.
    let loose = table(&source, "public", "loose").await;
    assert_eq!(
        loose.schema.field(1).data_type(),
        &DataType::Decimal128(28, 6)
    );
    match read_error(&source, &loose).await {
        Error::InvalidValue {
            table,
            column,
            expected,
        } => {
            assert_eq!((table.as_str(), column.as_str()), ("public.loose", "v"));
            assert_eq!(expected, "Decimal128(28, 6)");
        }
        other => panic!("unexpected {other:?}"),
    }

    // psqlODBC renders -infinity as a BC date, which is refused ...
    let endless = table(&source, "public", "endless").await;
    match read_error(&source, &endless).await {
        Error::InvalidValue { column, .. } => assert_eq!(column, "t"),
        other => panic!("unexpected {other:?}"),
    }
    // ... but +infinity as 9999-12-31 23:59:59, which nothing after the driver can tell from
    // that instant (documented in docs/types.md; the native PostgreSQL source refuses it).
    let forever = table(&source, "public", "forever").await;
    let batches = read_all(&source, &forever, 10).await;
    let value = batches[0]
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .value(0);
    assert_eq!(value, 253_402_300_799_000_000);

    // A text value longer than its transit buffer fails; it is never cut short.
    let mut config = OdbcSourceConfig::default();
    config.max_text_bytes = 1024;
    let limited = OdbcSource::connect_with(connection_string, config)
        .await
        .unwrap();
    let long_text = table(&limited, "public", "long_text").await;
    let error = read_error(&limited, &long_text).await;
    match &error {
        Error::UnrepresentableValue { table, column, .. } => {
            assert_eq!(
                (table.as_str(), column.as_str()),
                ("public.long_text", "body")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        !error.to_string().contains("xxxx"),
        "no value in the error: {error}"
    );
}

#[tokio::test]
async fn postgres_wrong_password_fails_without_repeating_it() {
    let server = pg_server("CREATE TABLE t (x int);").await;
    let password = "Wr0ng;pass{word}";
    let error = OdbcSource::connect(postgres_connection_string(&server, server.user(), password))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::OdbcConnect { .. }), "{error:?}");
    let mut texts = vec![format!("{error:?}")];
    let mut current: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = current {
        texts.push(e.to_string());
        current = e.source();
    }
    for text in &texts {
        for secret in [password, "Wr0ng", "pass{"] {
            assert!(!text.contains(secret), "the password leaked into {text:?}");
        }
    }
    assert!(
        texts[1].contains("server=127.0.0.1"),
        "the error says where: {}",
        texts[1]
    );

    // A password that needs braces in the connection string works, and Debug hides it.
    server
        .execute("src", "CREATE ROLE \"odbc reader\" LOGIN PASSWORD 'p;w}d{x=1'; GRANT SELECT ON t TO \"odbc reader\"")
        .unwrap();
    let source = OdbcSource::connect(postgres_connection_string(
        &server,
        "odbc reader",
        "p;w}d{x=1",
    ))
    .await
    .unwrap();
    let debug = format!("{source:?}");
    assert!(
        !debug.contains("p;w}d") && !debug.contains("odbc reader"),
        "{debug}"
    );
    assert_eq!(source.discover().await.unwrap().len(), 1);
}

/// Dropping the stream after one batch stops the read: the reader's connection closes, and the
/// server has scanned a few batches' worth of rows, not the table. psqlODBC fetches through a
/// server-side cursor here (`UseDeclareFetch`), so rows are only scanned as they are fetched.
#[tokio::test]
async fn dropping_the_stream_stops_the_read() {
    let server = pg_server(
        "CREATE TABLE big AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 200000) g;",
    )
    .await;
    let connection_string = format!(
        "{}UseDeclareFetch=1;Fetch=100;",
        postgres_connection_string(&server, server.user(), server.password())
    );
    let source = OdbcSource::connect(connection_string).await.unwrap();
    let big = table(&source, "public", "big").await;
    let others =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'src' AND pid <> pg_backend_pid()";

    let mut stream = source.read_table(&big, 100).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 100);
    let open: u32 = server
        .execute("src", others)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(open >= 1, "the reader's connection is open");
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if server.execute("src", others).unwrap().trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader's connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A backend flushes its statistics as it exits.
    let scanned: u64 = server
        .execute(
            "src",
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'big'",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        scanned < 10_000,
        "the reader went on after the stream was dropped: {scanned} rows scanned"
    );
}

// --- SQLite through the SQLite3 ODBC driver --------------------------------------------------

const SQLITE_SQL: &str = r#"
CREATE TABLE "we""ird tåble" (
    "Mixed Case" BIGINT, "sp ace" REAL, "ünï" TEXT, "quo""te" VARCHAR(40), b BLOB,
    dt DATE, ts TIMESTAMP, bo BOOLEAN, n NUMERIC(10, 2), small INTEGER
);
INSERT INTO "we""ird tåble" VALUES
    (-9223372036854775808, -1.5e300, 'zürich 東京 🦀', 'with "quotes"', x'00ff10',
     '0001-01-01', '1970-01-01 00:00:00', 0, 1.25, -2147483648),
    (9223372036854775807, 0.1, '', '', x'', '9999-12-31', '9999-12-31 23:59:59', 1, -3, 2147483647),
    (0, 3.0, 'line
break', 'x', x'ab', '2000-02-29', '2024-02-29 12:34:56', 1, 0.5, 0),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE plain (id INTEGER PRIMARY KEY AUTOINCREMENT, x TEXT);
INSERT INTO plain (x) VALUES ('a'), (NULL);
CREATE VIEW not_a_table AS SELECT 1 AS x;
"#;

async fn sqlite_file(sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("söurce db.sqlite");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut connection = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    (dir, path)
}

#[tokio::test]
async fn sqlite_tables_read_exactly_through_sqliteodbc() {
    let (_dir, path) = sqlite_file(SQLITE_SQL).await;
    let source = OdbcSource::connect(sqlite_connection_string(&path))
        .await
        .unwrap();

    let tables: Vec<TableRef> = source
        .discover()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.table)
        .collect();
    assert_eq!(
        tables,
        vec![
            TableRef::new("default", "plain"),
            TableRef::new("default", "we\"ird tåble")
        ],
        "no view, no sqlite_sequence"
    );
    let weird = table(&source, "default", "we\"ird tåble").await;
    let types: Vec<DataType> = weird
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [
            DataType::Int64,
            DataType::Float64,
            DataType::Utf8,
            DataType::Utf8,
            DataType::Binary,
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Boolean,
            // The driver reports NUMERIC as DOUBLE, as SQLite stores it.
            DataType::Float64,
            DataType::Int32,
        ]
    );

    let columns = [
        col("Mixed Case", "CAST({c} AS TEXT)"),
        float("sp ace", "printf('%.17g', {c})", Canon::F64),
        col("ünï", "{c}"),
        col("quo\"te", "{c}"),
        col("b", "lower(hex({c}))"),
        col(
            "dt",
            "CAST(CAST(julianday({c}) - 2440587.5 AS INTEGER) AS TEXT)",
        ),
        col(
            "ts",
            "CAST(CAST(strftime('%s', {c}) AS INTEGER) * 1000000 AS TEXT)",
        ),
        col("bo", "CASE {c} WHEN 1 THEN 'true' ELSE 'false' END"),
        float("n", "printf('%.17g', {c})", Canon::F64),
        col("small", "CAST({c} AS TEXT)"),
    ];
    let mut connection = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true),
    )
    .await
    .unwrap();
    let rows = sqlx::query(AssertSqlSafe(direct_sql(r#""we""ird tåble""#, &columns)))
        .fetch_all(&mut connection)
        .await
        .unwrap();
    let direct = direct_digests(&columns, &rows);
    assert_eq!(direct["b"].rows, 4);
    assert_same(
        "we\"ird tåble",
        &direct,
        &odbc_digests(&source, &weird, 2).await,
    );

    let plain = table(&source, "default", "plain").await;
    let batches = read_all(&source, &plain, 10).await;
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
}

#[tokio::test]
async fn sqlite_values_the_driver_cannot_carry_fail_naming_the_column() {
    let (_dir, path) = sqlite_file(
        "CREATE TABLE frac (id INTEGER, ts TIMESTAMP);
         INSERT INTO frac VALUES (1, '2020-01-02 03:04:05'), (2, '2020-01-02 03:04:05.123456');
         CREATE TABLE garbage (id INTEGER, d DATE);
         INSERT INTO garbage VALUES (1, '2020-01-02'), (2, 'not a date');
         CREATE TABLE wide (id INTEGER, n SMALLINT);
         INSERT INTO wide VALUES (1099511627776, 1), (2, 2);",
    )
    .await;
    let source = OdbcSource::connect(sqlite_connection_string(&path))
        .await
        .unwrap();

    // The driver reports TIMESTAMP with precision 0: a fraction does not fit the text it
    // allows for, and the read fails rather than dropping it.
    let frac = table(&source, "default", "frac").await;
    match read_error(&source, &frac).await {
        Error::UnrepresentableValue { column, .. } => assert_eq!(column, "ts"),
        other => panic!("unexpected {other:?}"),
    }
    // The driver reports INTEGER as 32 bits and would wrap 2^40 to 0: it is refused.
    let wide = table(&source, "default", "wide").await;
    match read_error(&source, &wide).await {
        Error::InvalidValue {
            column, expected, ..
        } => {
            assert_eq!((column.as_str(), expected.as_str()), ("id", "Int32"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let garbage = table(&source, "default", "garbage").await;
    match read_error(&source, &garbage).await {
        Error::InvalidValue {
            column, expected, ..
        } => {
            assert_eq!((column.as_str(), expected.as_str()), ("d", "Date32"));
        }
        other => panic!("unexpected {other:?}"),
    }
}
