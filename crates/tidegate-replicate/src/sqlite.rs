//! [`SqliteSource`]: reads a SQLite database file, read-only, as Arrow record batches.
//!
//! SQLite is dynamically typed: a column's *declared* type only suggests what its values are.
//! This source takes the declared type as the contract, maps it to one Arrow type, and checks
//! every value's storage class against it. A value that does not fit is an error naming the
//! table and column, never a silent `NULL` or a lossy conversion.
//!
//! # Type mapping
//!
//! Declared types are matched case-insensitively, ignoring a `(…)` length on text types.
//!
//! | Declared type | Arrow type | Accepted storage classes |
//! |---|---|---|
//! | `INTEGER`, `INT`, `TINYINT`, `SMALLINT`, `MEDIUMINT`, `BIGINT`, `UNSIGNED BIG INT`, `INT2`, `INT4`, `INT8` | `Int64` | INTEGER |
//! | `REAL`, `DOUBLE`, `DOUBLE PRECISION`, `FLOAT` | `Float64` | REAL; INTEGER (converted, exact below 2^53) |
//! | `DECIMAL(p,s)`, `NUMERIC(p,s)` (`(p)` means `s = 0`; bare `DECIMAL`/`NUMERIC` means `(38,10)`) | `Decimal128(p,s)` | TEXT (parsed exactly), INTEGER, REAL (its shortest round-trip decimal form) |
//! | `BOOLEAN`, `BOOL` | `Boolean` | INTEGER 0 or 1 |
//! | `TEXT`, `VARCHAR`, `CHAR`, `CHARACTER`, `NCHAR`, `NVARCHAR`, `VARYING CHARACTER`, `NATIVE CHARACTER`, `CLOB` | `Utf8` | TEXT |
//! | `BLOB` | `Binary` | BLOB |
//! | `TIMESTAMP`, `DATETIME` | `Timestamp(Microsecond, None)` | TEXT `YYYY-MM-DD HH:MM:SS[.ffffff]` (`T` separator and bare dates accepted); INTEGER Unix seconds |
//! | `DATE` | `Date32` | TEXT `YYYY-MM-DD` |
//!
//! `NULL` is accepted in every column. Decimal values are never rounded: digits beyond the
//! scale must be zeros, and the value must fit the precision. Note that SQLite's `NUMERIC`
//! affinity (which `DECIMAL(p,s)` columns have) converts decimal-looking text to INTEGER or REAL
//! when it is stored, so most decimals arrive as REAL; values with more than 15 significant
//! digits may already have lost precision inside SQLite.
//!
//! **Any other declared type, including none at all, is rejected** by
//! [`discover`](crate::Source::discover) with [`Error::UnsupportedType`] naming the table and
//! column: there is no fallback, so a schema is never guessed.
//!
//! Tables are listed from `sqlite_schema` (schema `main` only); internal `sqlite_%` tables and
//! virtual tables are skipped.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Row, TypeInfo, ValueRef};

use crate::error::{Error, Result};
use crate::source::Source;
use crate::table::{TableRef, TableSchema};
use crate::values;

/// The schema name SQLite tables are reported under.
const SCHEMA: &str = "main";

/// Connections kept open: one per table read in parallel.
const MAX_CONNECTIONS: u32 = 4;

/// A read-only SQLite database exposed as a [`Source`].
///
/// Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    pool: SqlitePool,
}

impl SqliteSource {
    /// Opens the database file at `path` read-only. The file must exist; it is never created
    /// or written.
    ///
    /// Cancel-safe: dropping the future opens nothing.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Statement logging is off: a logged statement can quote values (and slow ones are
        // logged at WARN by default), and Tidegate never logs row data.
        let options = sqlx::ConnectOptions::disable_statement_logging(
            SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .create_if_missing(false),
        );
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self { pool })
    }

    async fn discover_tables(&self) -> Result<Vec<TableSchema>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema \
             WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL TABLE%' \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| Error::Discover { source })?;

        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            let table = TableRef::new(SCHEMA, name);
            let columns = sqlx::query(
                "SELECT name, type, \"notnull\" FROM pragma_table_info(?1, 'main') ORDER BY cid",
            )
            .bind(&table.name)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| Error::Discover { source })?;

            let mut fields = Vec::with_capacity(columns.len());
            for column in &columns {
                let decode = |source| Error::Discover { source };
                let name: String = column.try_get(0).map_err(decode)?;
                let declared: String = column.try_get(1).map_err(decode)?;
                let not_null: i64 = column.try_get(2).map_err(decode)?;
                let kind =
                    ColumnKind::from_declared(&declared).ok_or_else(|| Error::UnsupportedType {
                        table: table.to_string(),
                        column: name.clone(),
                        declared: declared.clone(),
                    })?;
                fields.push(Field::new(name, kind.data_type(), not_null == 0));
            }
            tables.push(TableSchema {
                table,
                schema: Arc::new(Schema::new(fields)),
            });
        }
        Ok(tables)
    }
}

impl Source for SqliteSource {
    fn discover(&self) -> BoxFuture<'_, Result<Vec<TableSchema>>> {
        Box::pin(self.discover_tables())
    }

    fn read_table<'a>(
        &'a self,
        table: &'a TableSchema,
        batch_rows: usize,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<RecordBatch>>>> {
        Box::pin(async move {
            if batch_rows == 0 {
                return Err(Error::InvalidConfig {
                    reason: "batch_rows must be at least 1",
                });
            }
            let columns = table
                .schema
                .fields()
                .iter()
                .map(|field| {
                    let kind = ColumnKind::from_data_type(field.data_type()).ok_or_else(|| {
                        Error::UnsupportedType {
                            table: table.table.to_string(),
                            column: field.name().clone(),
                            declared: field.data_type().to_string(),
                        }
                    })?;
                    Ok(ColumnBuilder::new(kind, field.name().clone(), batch_rows))
                })
                .collect::<Result<Vec<_>>>()?;

            let rows = sqlx::query(AssertSqlSafe(select_sql(table)))
                .persistent(false)
                .fetch(&self.pool);
            let state = BatchReader {
                rows,
                columns,
                schema: Arc::clone(&table.schema),
                table: table.table.to_string(),
                batch_rows,
                done: false,
            };
            Ok(stream::unfold(state, BatchReader::next_batch).boxed())
        })
    }
}

/// `SELECT "c1", "c2", … FROM "main"."table"` with every identifier quoted.
fn select_sql(table: &TableSchema) -> String {
    let mut sql = String::from("SELECT ");
    for (index, field) in table.schema.fields().iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        push_identifier(&mut sql, field.name());
    }
    if table.schema.fields().is_empty() {
        sql.push_str("NULL");
    }
    sql.push_str(" FROM ");
    push_identifier(&mut sql, &table.table.schema);
    sql.push('.');
    push_identifier(&mut sql, &table.table.name);
    sql
}

fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}

/// The Arrow type a column maps to, with what decoding it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Int64,
    Float64,
    Decimal { precision: u8, scale: i8 },
    Boolean,
    Utf8,
    Binary,
    Timestamp,
    Date,
}

impl ColumnKind {
    /// Maps a declared SQLite type; `None` if unsupported (see the module docs).
    fn from_declared(declared: &str) -> Option<Self> {
        let upper = declared.trim().to_ascii_uppercase();
        let (base, args) = match upper.split_once('(') {
            Some((base, rest)) => (base, Some(rest.strip_suffix(')')?)),
            None => (upper.as_str(), None),
        };
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        let kind = match base.as_str() {
            "INTEGER" | "INT" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "BIGINT"
            | "UNSIGNED BIG INT" | "INT2" | "INT4" | "INT8" => Self::Int64,
            "REAL" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" => Self::Float64,
            "DECIMAL" | "NUMERIC" => return Self::decimal(args),
            "BOOLEAN" | "BOOL" => Self::Boolean,
            "TEXT" | "VARCHAR" | "CHAR" | "CHARACTER" | "NCHAR" | "NVARCHAR"
            | "VARYING CHARACTER" | "NATIVE CHARACTER" | "CLOB" => Self::Utf8,
            "BLOB" => Self::Binary,
            "TIMESTAMP" | "DATETIME" => Self::Timestamp,
            "DATE" => Self::Date,
            _ => return None,
        };
        // Only text types take a length, which is ignored.
        (args.is_none() || kind == Self::Utf8).then_some(kind)
    }

    fn decimal(args: Option<&str>) -> Option<Self> {
        let (precision, scale) = match args {
            None => (38, 10),
            Some(args) => match args.split_once(',') {
                Some((precision, scale)) => {
                    (precision.trim().parse().ok()?, scale.trim().parse().ok()?)
                }
                None => (args.trim().parse().ok()?, 0),
            },
        };
        let valid = (1..=38).contains(&precision) && (0..=precision).contains(&scale);
        valid.then(|| Self::Decimal {
            precision,
            // Cannot fail: scale <= precision <= 38.
            scale: i8::try_from(scale).unwrap_or(i8::MAX),
        })
    }

    fn from_data_type(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Int64 => Self::Int64,
            DataType::Float64 => Self::Float64,
            &DataType::Decimal128(precision, scale) => Self::Decimal { precision, scale },
            DataType::Boolean => Self::Boolean,
            DataType::Utf8 => Self::Utf8,
            DataType::Binary => Self::Binary,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Self::Timestamp,
            DataType::Date32 => Self::Date,
            _ => return None,
        })
    }

    fn data_type(self) -> DataType {
        match self {
            Self::Int64 => DataType::Int64,
            Self::Float64 => DataType::Float64,
            Self::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            Self::Boolean => DataType::Boolean,
            Self::Utf8 => DataType::Utf8,
            Self::Binary => DataType::Binary,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::Date => DataType::Date32,
        }
    }
}

/// A value's SQLite storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    Integer,
    Real,
    Text,
    Blob,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Self::Integer => "INTEGER",
            Self::Real => "REAL",
            Self::Text => "TEXT",
            Self::Blob => "BLOB",
        }
    }
}

/// The Arrow builder of one column, reused across batches.
#[derive(Debug)]
enum Builder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

/// One column being decoded: its builder plus what error messages need.
#[derive(Debug)]
struct ColumnBuilder {
    kind: ColumnKind,
    name: String,
    builder: Builder,
    /// Scratch buffer for REAL values formatted as decimal text.
    scratch: String,
}

impl ColumnBuilder {
    fn new(kind: ColumnKind, name: String, capacity: usize) -> Self {
        let builder = match kind {
            ColumnKind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnKind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnKind::Decimal { .. } => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity).with_data_type(kind.data_type()),
            ),
            ColumnKind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(capacity, 0)),
            ColumnKind::Binary => Builder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
            ColumnKind::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            ColumnKind::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
        };
        Self {
            kind,
            name,
            builder,
            scratch: String::new(),
        }
    }

    /// Decodes column `index` of `row` into the builder.
    fn append(&mut self, table: &str, row: &SqliteRow, index: usize) -> Result<()> {
        self.decode(row, index).map_err(|fault| match fault {
            Fault::Read(source) => Error::Read {
                table: table.to_owned(),
                source,
            },
            Fault::Mismatch(storage) => Error::TypeMismatch {
                table: table.to_owned(),
                column: self.name.clone(),
                expected: self.kind.data_type().to_string(),
                found: storage.name().to_owned(),
            },
            Fault::Invalid => Error::InvalidValue {
                table: table.to_owned(),
                column: self.name.clone(),
                expected: self.kind.data_type().to_string(),
            },
        })
    }

    fn decode(&mut self, row: &SqliteRow, index: usize) -> Result<(), Fault> {
        let raw = row.try_get_raw(index)?;
        if raw.is_null() {
            self.append_null();
            return Ok(());
        }
        let storage = match raw.type_info().name() {
            "INTEGER" => Storage::Integer,
            "REAL" => Storage::Real,
            "TEXT" => Storage::Text,
            _ => Storage::Blob,
        };
        // The storage class was checked above, so the unchecked decodes read the value as
        // stored instead of letting SQLite coerce it.
        match (&mut self.builder, storage) {
            (Builder::Int64(builder), Storage::Integer) => {
                builder.append_value(row.try_get_unchecked::<i64, _>(index)?);
            }
            (Builder::Float64(builder), Storage::Real) => {
                builder.append_value(row.try_get_unchecked::<f64, _>(index)?);
            }
            (Builder::Float64(builder), Storage::Integer) => {
                // Documented conversion: exact for |value| < 2^53.
                builder.append_value(row.try_get_unchecked::<i64, _>(index)? as f64);
            }
            (Builder::Decimal(builder), storage) => {
                let ColumnKind::Decimal { precision, scale } = self.kind else {
                    return Err(Fault::Mismatch(storage));
                };
                let value = match storage {
                    Storage::Text => {
                        let text = row.try_get_unchecked::<&str, _>(index)?;
                        values::parse_decimal(text, precision, scale)
                    }
                    Storage::Integer => {
                        let value = row.try_get_unchecked::<i64, _>(index)?;
                        values::decimal_from_i64(value, precision, scale)
                    }
                    Storage::Real => {
                        let value = row.try_get_unchecked::<f64, _>(index)?;
                        self.scratch.clear();
                        if value.is_finite() && write!(self.scratch, "{value}").is_ok() {
                            values::parse_decimal(&self.scratch, precision, scale)
                        } else {
                            None
                        }
                    }
                    Storage::Blob => return Err(Fault::Mismatch(storage)),
                };
                builder.append_value(value.ok_or(Fault::Invalid)?);
            }
            (Builder::Boolean(builder), Storage::Integer) => {
                match row.try_get_unchecked::<i64, _>(index)? {
                    0 => builder.append_value(false),
                    1 => builder.append_value(true),
                    _ => return Err(Fault::Invalid),
                }
            }
            (Builder::Utf8(builder), Storage::Text) => {
                builder.append_value(row.try_get_unchecked::<&str, _>(index)?);
            }
            (Builder::Binary(builder), Storage::Blob) => {
                builder.append_value(row.try_get_unchecked::<&[u8], _>(index)?);
            }
            (Builder::Timestamp(builder), Storage::Text) => {
                let text = row.try_get_unchecked::<&str, _>(index)?;
                builder.append_value(values::parse_timestamp_micros(text).ok_or(Fault::Invalid)?);
            }
            (Builder::Timestamp(builder), Storage::Integer) => {
                let seconds = row.try_get_unchecked::<i64, _>(index)?;
                builder.append_value(seconds.checked_mul(1_000_000).ok_or(Fault::Invalid)?);
            }
            (Builder::Date(builder), Storage::Text) => {
                let text = row.try_get_unchecked::<&str, _>(index)?;
                builder.append_value(values::parse_date_days(text).ok_or(Fault::Invalid)?);
            }
            _ => return Err(Fault::Mismatch(storage)),
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match &mut self.builder {
            Builder::Int64(builder) => builder.append_null(),
            Builder::Float64(builder) => builder.append_null(),
            Builder::Decimal(builder) => builder.append_null(),
            Builder::Boolean(builder) => builder.append_null(),
            Builder::Utf8(builder) => builder.append_null(),
            Builder::Binary(builder) => builder.append_null(),
            Builder::Timestamp(builder) => builder.append_null(),
            Builder::Date(builder) => builder.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match &mut self.builder {
            Builder::Int64(builder) => Arc::new(builder.finish()),
            Builder::Float64(builder) => Arc::new(builder.finish()),
            Builder::Decimal(builder) => Arc::new(builder.finish()),
            Builder::Boolean(builder) => Arc::new(builder.finish()),
            Builder::Utf8(builder) => Arc::new(builder.finish()),
            Builder::Binary(builder) => Arc::new(builder.finish()),
            Builder::Timestamp(builder) => Arc::new(builder.finish()),
            Builder::Date(builder) => Arc::new(builder.finish()),
        }
    }
}

/// Why one value could not be decoded; turned into an [`Error`] naming table and column.
#[derive(Debug)]
enum Fault {
    Read(sqlx::Error),
    Mismatch(Storage),
    Invalid,
}

impl From<sqlx::Error> for Fault {
    fn from(error: sqlx::Error) -> Self {
        Self::Read(error)
    }
}

/// The state of one table read: the row stream and the column builders filling from it.
struct BatchReader {
    rows: BoxStream<'static, Result<SqliteRow, sqlx::Error>>,
    columns: Vec<ColumnBuilder>,
    schema: SchemaRef,
    table: String,
    batch_rows: usize,
    done: bool,
}

impl BatchReader {
    /// The `unfold` step: the next full batch, the last partial one, or the first error.
    async fn next_batch(mut self) -> Option<(Result<RecordBatch>, Self)> {
        if self.done {
            return None;
        }
        match self.fill().await {
            Ok(0) => None,
            Ok(rows) => {
                let arrays = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
                let batch =
                    RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)
                        .map_err(|source| Error::Arrow {
                            table: self.table.clone(),
                            source,
                        });
                self.done |= batch.is_err();
                Some((batch, self))
            }
            Err(error) => {
                self.done = true;
                Some((Err(error), self))
            }
        }
    }

    /// Appends up to `batch_rows` rows to the builders; returns how many.
    async fn fill(&mut self) -> Result<usize> {
        let mut rows = 0;
        while rows < self.batch_rows {
            let Some(row) = self.rows.next().await else {
                self.done = true;
                break;
            };
            let row = row.map_err(|source| Error::Read {
                table: self.table.clone(),
                source,
            })?;
            for (index, column) in self.columns.iter_mut().enumerate() {
                column.append(&self.table, &row, index)?;
            }
            rows += 1;
        }
        Ok(rows)
    }
}

impl std::fmt::Debug for BatchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReader")
            .field("table", &self.table)
            .field("batch_rows", &self.batch_rows)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map() {
        let cases: &[(&str, Option<DataType>)] = &[
            ("INTEGER", Some(DataType::Int64)),
            ("bigint", Some(DataType::Int64)),
            ("unsigned  big int", Some(DataType::Int64)),
            ("DOUBLE PRECISION", Some(DataType::Float64)),
            ("DECIMAL(12,2)", Some(DataType::Decimal128(12, 2))),
            ("numeric( 10 , 0 )", Some(DataType::Decimal128(10, 0))),
            ("DECIMAL(5)", Some(DataType::Decimal128(5, 0))),
            ("NUMERIC", Some(DataType::Decimal128(38, 10))),
            ("DECIMAL(39,2)", None),
            ("DECIMAL(4,5)", None),
            ("BOOLEAN", Some(DataType::Boolean)),
            ("VARCHAR(255)", Some(DataType::Utf8)),
            ("clob", Some(DataType::Utf8)),
            ("BLOB", Some(DataType::Binary)),
            (
                "DATETIME",
                Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
            ),
            ("DATE", Some(DataType::Date32)),
            ("INTEGER(4)", None),
            ("", None),
            ("JSON", None),
            ("VARCHAR(10", None),
        ];
        for (declared, expected) in cases {
            let actual = ColumnKind::from_declared(declared).map(ColumnKind::data_type);
            assert_eq!(&actual, expected, "{declared:?}");
        }
    }

    #[test]
    fn select_quotes_identifiers() {
        let table = TableSchema {
            table: TableRef::new("main", "we\"ird"),
            schema: Arc::new(Schema::new(vec![Field::new("a\"b", DataType::Int64, true)])),
        };
        assert_eq!(select_sql(&table), r#"SELECT "a""b" FROM "main"."we""ird""#);
    }
}
