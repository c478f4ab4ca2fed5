//! The walking skeleton end to end: the quickstart's Parquet output is read back with arrow's
//! Parquet reader and compared, column by column, with the SQLite source read through SQL.

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{Connection, Row};
use tidegate::quickstart::{self, Options};
use tidegate::replicate::sample::SampleSize;

/// An order-independent fingerprint of one column: non-null count and a type-specific sum.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    non_null: i64,
    sum: i128,
    float_sum: f64,
}

fn parquet_fingerprints(dir: &Path) -> (i64, Vec<(String, DataType, Fingerprint)>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no parquet files in {}", dir.display());
    let mut batches: Vec<RecordBatch> = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let schema = batches[0].schema();
    let rows: i64 = batches.iter().map(|b| b.num_rows() as i64).sum();
    let mut out = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let mut fp = Fingerprint {
            non_null: 0,
            sum: 0,
            float_sum: 0.0,
        };
        for b in &batches {
            let col = b.column(i);
            fp.non_null += (col.len() - col.null_count()) as i64;
            match field.data_type() {
                DataType::Int64 => {
                    fp.sum += col
                        .as_primitive::<Int64Type>()
                        .iter()
                        .flatten()
                        .map(i128::from)
                        .sum::<i128>()
                }
                DataType::Utf8 => {
                    fp.sum += col
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(|s| s.chars().count() as i128)
                        .sum::<i128>()
                }
                DataType::Binary => {
                    fp.sum += col
                        .as_binary::<i32>()
                        .iter()
                        .flatten()
                        .map(|s| s.len() as i128)
                        .sum::<i128>()
                }
                DataType::Boolean => {
                    fp.sum += col.as_boolean().iter().flatten().filter(|b| *b).count() as i128
                }
                DataType::Decimal128(_, 2) => {
                    fp.sum += col
                        .as_primitive::<Decimal128Type>()
                        .iter()
                        .flatten()
                        .sum::<i128>()
                }
                DataType::Float64 => {
                    fp.float_sum += col
                        .as_primitive::<Float64Type>()
                        .iter()
                        .flatten()
                        .sum::<f64>()
                }
                DataType::Timestamp(TimeUnit::Microsecond, None) => {
                    fp.sum += col
                        .as_primitive::<TimestampMicrosecondType>()
                        .iter()
                        .flatten()
                        .map(|v| i128::from(v.div_euclid(1_000_000)))
                        .sum::<i128>()
                }
                DataType::Date32 => {
                    fp.sum += col
                        .as_primitive::<Date32Type>()
                        .iter()
                        .flatten()
                        .map(i128::from)
                        .sum::<i128>()
                }
                other => panic!(
                    "column {} has a type the test does not check: {other}",
                    field.name()
                ),
            }
        }
        out.push((field.name().clone(), field.data_type().clone(), fp));
    }
    (rows, out)
}

/// The same fingerprint computed by SQLite itself, independently of Tidegate's decoding.
async fn sqlite_fingerprint(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    column: &str,
    data_type: &DataType,
) -> Fingerprint {
    let c = format!("\"{column}\"");
    let seconds = format!(
        "CASE typeof({c}) WHEN 'integer' THEN {c} ELSE CAST(strftime('%s', {c}) AS INTEGER) END"
    );
    let (sum, float) = match data_type {
        DataType::Int64 => (format!("SUM({c})"), false),
        DataType::Utf8 => (format!("SUM(length({c}))"), false),
        DataType::Binary => (format!("SUM(length(CAST({c} AS BLOB)))"), false),
        DataType::Boolean => (format!("SUM({c} != 0)"), false),
        DataType::Decimal128(_, 2) => (format!("SUM(CAST(ROUND({c} * 100) AS INTEGER))"), false),
        DataType::Float64 => (format!("TOTAL({c})"), true),
        DataType::Timestamp(..) => (format!("SUM({seconds})"), false),
        DataType::Date32 => (
            format!("SUM(CAST(strftime('%s', {c}) AS INTEGER) / 86400)"),
            false,
        ),
        other => panic!("unexpected type {other}"),
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT({c}), {sum} FROM \"{table}\""
    )))
    .fetch_one(conn)
    .await
    .unwrap();
    let non_null: i64 = row.get(0);
    if float {
        Fingerprint {
            non_null,
            sum: 0,
            float_sum: row.get::<f64, _>(1),
        }
    } else {
        Fingerprint {
            non_null,
            sum: i128::from(row.get::<Option<i64>, _>(1).unwrap_or(0)),
            float_sum: 0.0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_output_matches_the_source() {
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = quickstart::run(
        Options {
            out_dir: out.path().to_path_buf(),
            work_dir: work.path().to_path_buf(),
            sample: SampleSize::rows(30_000),
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.tables.len(), 3);
    assert_eq!(summary.rows, 30_000);

    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", summary.source.display()))
            .await
            .unwrap();
    for t in &summary.tables {
        let name = t.table.strip_prefix("main.").unwrap();
        let dir = quickstart::table_dir(out.path(), &t.table, &summary.run_id);
        assert!(
            dir.join("_manifest.json").is_file(),
            "{} has no manifest",
            t.table
        );
        let (rows, columns) = parquet_fingerprints(&dir);
        let source_rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{name}\""
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(rows, source_rows, "{name}: row count");
        assert_eq!(rows as u64, t.rows, "{name}: reported rows");
        for (column, data_type, fp) in columns {
            let want = sqlite_fingerprint(&mut conn, name, &column, &data_type).await;
            assert_eq!(
                fp.non_null, want.non_null,
                "{name}.{column}: non-null count"
            );
            assert_eq!(fp.sum, want.sum, "{name}.{column}: checksum");
            assert!(
                (fp.float_sum - want.float_sum).abs() <= 1e-6 * want.float_sum.abs().max(1.0),
                "{name}.{column}: {} vs {}",
                fp.float_sum,
                want.float_sum
            );
        }
    }
}
