//! Helpers shared by the integration tests: databases, directory walks and order-independent
//! checksums computed independently over SQLite (through sqlx) and over Parquet files.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::compute::kernels::cast_utils::{Parser, parse_decimal, string_to_timestamp_nanos};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row, TypeInfo, ValueRef};

/// Rows and checksum of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) rows: u64,
    pub(crate) checksum: u64,
}

/// One value in a form both sides can produce.
#[derive(Debug, Hash)]
enum Canon {
    Null,
    Int(i128),
    Float(u64),
    Text(String),
    Bytes(Vec<u8>),
}

fn hash_row(values: impl Iterator<Item = Canon>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (index, value) in values.enumerate() {
        (index, value).hash(&mut hasher);
    }
    hasher.finish()
}

/// Creates a SQLite database at `path` and runs `statements` in it.
pub(crate) async fn create_db(path: &Path, statements: &[&str]) {
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    for statement in statements {
        sqlx::raw_sql(AssertSqlSafe(*statement))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    connection.close().await.unwrap();
}

async fn open(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .unwrap()
}

/// Row count of a table, straight from SQLite.
pub(crate) async fn sqlite_count(path: &Path, table: &str) -> u64 {
    let mut connection = open(path).await;
    let sql = format!("SELECT count(*) FROM {}", quote(table));
    let count: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(&mut connection)
        .await
        .unwrap();
    u64::try_from(count).unwrap()
}

/// Digest of a table read with plain sqlx, decoding by declared type.
pub(crate) async fn sqlite_digest(path: &Path, table: &str) -> Digest {
    let mut connection = open(path).await;
    let declared: Vec<String> =
        sqlx::query_scalar("SELECT type FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let sql = format!("SELECT * FROM {}", quote(table));
    let rows: Vec<SqliteRow> = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&mut connection)
        .await
        .unwrap();
    let mut digest = Digest {
        rows: 0,
        checksum: 0,
    };
    for row in &rows {
        let values = declared
            .iter()
            .enumerate()
            .map(|(index, declared)| sqlite_value(row, index, declared));
        digest.checksum = digest.checksum.wrapping_add(hash_row(values));
        digest.rows += 1;
    }
    digest
}

fn sqlite_value(row: &SqliteRow, index: usize, declared: &str) -> Canon {
    let raw = row.try_get_raw(index).unwrap();
    if raw.is_null() {
        return Canon::Null;
    }
    let storage = raw.type_info().name().to_owned();
    let declared = declared.to_ascii_uppercase();
    let int = || row.try_get_unchecked::<i64, _>(index).unwrap();
    let text = || row.try_get_unchecked::<String, _>(index).unwrap();
    if let Some(args) = declared
        .strip_prefix("DECIMAL(")
        .or_else(|| declared.strip_prefix("NUMERIC("))
    {
        let (precision, scale) = args.trim_end_matches(')').split_once(',').unwrap();
        let precision: u8 = precision.trim().parse().unwrap();
        let scale: i8 = scale.trim().parse().unwrap();
        let text = match storage.as_str() {
            "REAL" => format!("{}", row.try_get_unchecked::<f64, _>(index).unwrap()),
            "INTEGER" => int().to_string(),
            _ => text(),
        };
        return Canon::Int(parse_decimal::<Decimal128Type>(&text, precision, scale).unwrap());
    }
    match declared.as_str() {
        "INTEGER" | "INT" | "BIGINT" | "BOOLEAN" => Canon::Int(int().into()),
        "REAL" | "DOUBLE" | "FLOAT" => Canon::Float(if storage == "INTEGER" {
            (int() as f64).to_bits()
        } else {
            row.try_get_unchecked::<f64, _>(index).unwrap().to_bits()
        }),
        "TIMESTAMP" | "DATETIME" => Canon::Int(if storage == "INTEGER" {
            i128::from(int()) * 1_000_000
        } else {
            i128::from(string_to_timestamp_nanos(&text()).unwrap() / 1000)
        }),
        "DATE" => Canon::Int(Date32Type::parse(&text()).unwrap().into()),
        "BLOB" => Canon::Bytes(row.try_get_unchecked::<Vec<u8>, _>(index).unwrap()),
        _ => Canon::Text(text()),
    }
}

/// Digest of Parquet files read back with parquet's Arrow reader.
pub(crate) fn parquet_digest(files: &[PathBuf]) -> Digest {
    let mut digest = Digest {
        rows: 0,
        checksum: 0,
    };
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            for row in 0..batch.num_rows() {
                let values = batch
                    .columns()
                    .iter()
                    .map(|column| arrow_value(column.as_ref(), row));
                digest.checksum = digest.checksum.wrapping_add(hash_row(values));
                digest.rows += 1;
            }
        }
    }
    digest
}

fn arrow_value(array: &dyn Array, row: usize) -> Canon {
    if array.is_null(row) {
        return Canon::Null;
    }
    match array.data_type() {
        DataType::Int64 => Canon::Int(array.as_primitive::<Int64Type>().value(row).into()),
        DataType::Float64 => Canon::Float(array.as_primitive::<Float64Type>().value(row).to_bits()),
        DataType::Decimal128(_, _) => Canon::Int(array.as_primitive::<Decimal128Type>().value(row)),
        DataType::Boolean => Canon::Int(i128::from(array.as_boolean().value(row))),
        DataType::Utf8 => Canon::Text(array.as_string::<i32>().value(row).to_owned()),
        DataType::Binary => Canon::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Timestamp(TimeUnit::Microsecond, None) => Canon::Int(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .into(),
        ),
        DataType::Date32 => Canon::Int(array.as_primitive::<Date32Type>().value(row).into()),
        other => panic!("unexpected type {other}"),
    }
}

/// Every file below `dir`, recursively, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
