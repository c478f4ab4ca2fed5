//! [`OdbcSource`]: any database with an ODBC driver, read as Arrow record batches through
//! [`arrow_odbc`].
//!
//! * **Connection.** The source holds an ODBC connection string (`Driver={…};Server=…;UID=…;
//!   PWD=…` or `DSN=…`), which usually carries credentials: it is zeroized on drop, never
//!   printed, and `Debug` and errors show only its `Driver`/`DSN`, `Server`, `Port` and
//!   `Database` attributes. Every discovery and every table read opens its own connection
//!   through unixODBC (one process-wide ODBC environment).
//! * **Discovery** lists the user tables `SQLTables` reports with type `TABLE` (views and the
//!   driver's `SYSTEM TABLE`s are not listed; neither are PostgreSQL's `pg_*` and
//!   `information_schema`, SQL Server's `sys`, MySQL's `performance_schema`, nor SQLite's
//!   `sqlite_*` tables), then describes each with `SELECT * FROM t WHERE 1=0` and maps the
//!   result-set metadata with arrow-odbc's [`arrow_schema_from`]. A table is reported under its
//!   schema, or its catalog when the driver has no schemas (MySQL), or `default` when it has
//!   neither (SQLite).
//! * **Types** follow arrow-odbc's mapping (see `docs/types.md`, "ODBC sources"), with three
//!   changes so that nothing is lost silently: decimals, dates, times and timestamps are fetched
//!   as the driver's text and parsed exactly by Tidegate (a value that does not fit its column's
//!   type fails the read naming the column, where arrow-odbc would truncate digits or panic);
//!   timestamps and times of a reported precision up to 6 all become microseconds (arrow-odbc
//!   would drop the fraction of a driver that reports precision 0 but stores more); and fixed
//!   `BINARY(n)` columns become variable `Binary`. Types arrow-odbc does not know are read as
//!   the driver's text (`Utf8`). Every column is nullable.
//! * **Limits.** ODBC fetches into buffers sized per row from what the driver reports for each
//!   column; columns the driver reports as unbounded (or larger than the limit) get
//!   [`OdbcSourceConfig::max_text_bytes`] / [`OdbcSourceConfig::max_binary_bytes`]. A value that
//!   does not fit its buffer is never truncated: the read fails with
//!   [`Error::UnrepresentableValue`] naming the column. Rows per fetch are cut so that one
//!   fetch's buffers stay under [`OdbcSourceConfig::max_batch_bytes`].
//! * **Threads.** ODBC calls block: each discovery runs on `spawn_blocking`, and each table read
//!   on its own blocking thread that sends batches through a bounded channel. Dropping the
//!   stream makes the next send fail, and the thread closes its statement and connection; a
//!   driver call in progress finishes first. A thread that panics ends the stream with an error,
//!   never with a short table.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, PrimitiveBuilder,
    RecordBatchOptions,
};
use arrow::datatypes::{
    DataType, Field, Int8Type, Int16Type, Int32Type, Int64Type, Schema, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampNanosecondType, UInt8Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow_odbc::{OdbcReaderBuilder, TextEncoding, arrow_schema_from};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use odbc_api::{Connection, ConnectionOptions, DataType as OdbcType, ResultSetMetadata};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::plan_cache::{Plan, PlanCache};
use crate::source::Source;
use crate::table::{TableRef, TableSchema};
use crate::values;

/// The schema name of tables whose driver reports neither a schema nor a catalog.
const NO_SCHEMA: &str = "default";

/// How an [`OdbcSource`] connects and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OdbcSourceConfig {
    /// Transit buffer per row for a text column the driver reports as unbounded or larger than
    /// this, in bytes (UTF-8; with [`wide_text`](Self::wide_text), two bytes per UTF-16 unit).
    /// A longer value fails the read. Default 64 KiB.
    pub max_text_bytes: usize,
    /// The same for binary columns, in bytes. Default 64 KiB.
    pub max_binary_bytes: usize,
    /// Upper bound of one fetch's transit buffers: rows per fetch are reduced so that rows ×
    /// bytes per row stay under it. Default 32 MiB.
    pub max_batch_bytes: usize,
    /// Record batches kept in flight per table read. Default 1.
    pub read_ahead_batches: usize,
    /// Seconds to wait for the driver to log in; 0 waits as long as the driver does.
    /// Default 30.
    pub login_timeout_secs: u32,
    /// Fetch text as UTF-16 (`SQL_C_WCHAR`) instead of the driver manager's narrow encoding,
    /// which Tidegate expects to be UTF-8 (a read fails on invalid UTF-8). Turn it on for
    /// drivers whose narrow text follows a non-UTF-8 locale. Default `false`.
    pub wide_text: bool,
}

impl Default for OdbcSourceConfig {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 << 10,
            max_binary_bytes: 64 << 10,
            max_batch_bytes: 32 << 20,
            read_ahead_batches: 1,
            login_timeout_secs: 30,
            wide_text: false,
        }
    }
}

/// A database read through an ODBC driver.
///
/// Cheap to share behind an `Arc`; every operation opens its own connection.
pub struct OdbcSource {
    shared: Arc<Shared>,
    /// How each discovered table is read, by table.
    plans: PlanCache<TablePlan>,
}

/// What every worker thread needs: where to connect and how to read.
struct Shared {
    connection_string: Zeroizing<String>,
    /// The non-secret attributes of the connection string, for errors and `Debug`.
    label: String,
    config: OdbcSourceConfig,
}

impl fmt::Debug for OdbcSource {
    // The connection string holds credentials: show where, not how.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OdbcSource")
            .field("data_source", &self.shared.label)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// How one table is read.
#[derive(Debug)]
struct TablePlan {
    schema: TableSchema,
    /// The schema (or catalog) the table is qualified with in SQL, if any.
    qualifier: Option<String>,
    /// The table's name as the driver reports it.
    name: String,
    columns: Vec<ColumnPlan>,
}

impl Plan for TablePlan {
    fn schema(&self) -> &TableSchema {
        &self.schema
    }
}

/// One column: its name, its Arrow type, and how its values reach that type.
#[derive(Debug, Clone, PartialEq)]
struct ColumnPlan {
    name: String,
    data_type: DataType,
    read: ColumnRead,
}

/// How a column's values are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnRead {
    /// arrow-odbc fills the column's Arrow type directly.
    Direct,
    /// Fetched as 64-bit integers and narrowed to the column's integer type, each value checked.
    Narrow,
    /// Fetched as text and parsed exactly into `Decimal128(precision, scale)`.
    Decimal { precision: u8, scale: i8 },
    /// Fetched as text `YYYY-MM-DD`.
    Date,
    /// Fetched as text `HH:MM:SS[.fffffffff]`.
    Time(TimeUnit),
    /// Fetched as text `YYYY-MM-DD HH:MM:SS[.fffffffff]`.
    Timestamp(TimeUnit),
}

impl ColumnPlan {
    /// The column as read: arrow-odbc's inferred type, adjusted as the module docs describe;
    /// `sql_type` is what the driver reported.
    fn from_inferred(field: &Field, sql_type: OdbcType) -> Self {
        let (data_type, read) = match field.data_type() {
            // ODBC's FLOAT(p) counts binary digits, but drivers report decimal ones (psqlODBC
            // says FLOAT(17) for double precision) and arrow-odbc reads FLOAT(p ≤ 24) as f32:
            // fetching every FLOAT as f64 loses nothing.
            DataType::Float32 if matches!(sql_type, OdbcType::Float { .. }) => {
                (DataType::Float64, ColumnRead::Direct)
            }
            &DataType::Decimal128(precision, scale) if scale >= 0 => (
                DataType::Decimal128(precision, scale),
                ColumnRead::Decimal { precision, scale },
            ),
            &DataType::Decimal128(precision, scale) => {
                // A negative scale (Oracle's NUMBER(5,-2)): whole numbers of up to p - s digits.
                match u8::try_from(i16::from(precision) - i16::from(scale)) {
                    Ok(precision) if precision <= 38 => (
                        DataType::Decimal128(precision, 0),
                        ColumnRead::Decimal {
                            precision,
                            scale: 0,
                        },
                    ),
                    _ => (DataType::Utf8, ColumnRead::Direct),
                }
            }
            DataType::Date32 => (DataType::Date32, ColumnRead::Date),
            DataType::Time64(TimeUnit::Nanosecond) => (
                DataType::Time64(TimeUnit::Nanosecond),
                ColumnRead::Time(TimeUnit::Nanosecond),
            ),
            DataType::Time32(_) | DataType::Time64(_) => (
                DataType::Time64(TimeUnit::Microsecond),
                ColumnRead::Time(TimeUnit::Microsecond),
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => (
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                ColumnRead::Timestamp(TimeUnit::Nanosecond),
            ),
            DataType::Timestamp(_, _) => (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                ColumnRead::Timestamp(TimeUnit::Microsecond),
            ),
            DataType::FixedSizeBinary(_) => (DataType::Binary, ColumnRead::Direct),
            // Drivers convert a value wider than the column's declared width by wrapping it
            // (SQLite's, whose INTEGER holds 64 bits, reports 32): fetch 64 bits and check.
            narrow @ (DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8) => {
                (narrow.clone(), ColumnRead::Narrow)
            }
            other => (other.clone(), ColumnRead::Direct),
        };
        Self {
            name: field.name().clone(),
            data_type,
            read,
        }
    }

    /// The Arrow type arrow-odbc is asked for.
    fn transit_type(&self) -> DataType {
        match self.read {
            ColumnRead::Direct => self.data_type.clone(),
            ColumnRead::Narrow => DataType::Int64,
            _ => DataType::Utf8,
        }
    }
}

impl OdbcSource {
    /// Connects with `connection_string` and the default configuration.
    ///
    /// See [`connect_with`](Self::connect_with).
    pub async fn connect(connection_string: impl Into<String>) -> Result<Self> {
        Self::connect_with(connection_string, OdbcSourceConfig::default()).await
    }

    /// Connects once to check the connection string and credentials, and keeps the string
    /// (zeroized on drop) for later connections.
    ///
    /// Cancel-safe: dropping the future leaves at most a connection attempt that ends on its
    /// blocking thread.
    pub async fn connect_with(
        connection_string: impl Into<String>,
        config: OdbcSourceConfig,
    ) -> Result<Self> {
        let connection_string = Zeroizing::new(connection_string.into());
        if config.max_text_bytes < 2
            || config.max_binary_bytes == 0
            || config.max_batch_bytes == 0
            || config.read_ahead_batches == 0
        {
            return Err(Error::InvalidConfig {
                reason: "ODBC buffer limits and read_ahead_batches must be at least 1 (text 2)",
            });
        }
        let shared = Arc::new(Shared {
            label: data_source_label(&connection_string),
            connection_string,
            config,
        });
        let check = Arc::clone(&shared);
        blocking("connecting", move || check.connect().map(drop)).await?;
        Ok(Self {
            shared,
            plans: PlanCache::new(),
        })
    }

    /// The connection string's non-secret attributes, e.g.
    /// `driver=PostgreSQL Unicode server=db.internal port=5432 database=shop`.
    pub fn data_source(&self) -> &str {
        &self.shared.label
    }

    async fn discover_plans(&self) -> Result<Vec<Arc<TablePlan>>> {
        let shared = Arc::clone(&self.shared);
        let plans: Vec<Arc<TablePlan>> = blocking("discovery", move || shared.discover())
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(self.plans.replace(plans))
    }

    /// The plan of a discovered table, checked against the schema the caller holds.
    async fn plan_for(&self, table: &TableSchema) -> Result<Arc<TablePlan>> {
        self.plans.plan_for(table, self.discover_plans()).await
    }
}

impl Source for OdbcSource {
    fn discover(&self) -> BoxFuture<'_, Result<Vec<TableSchema>>> {
        Box::pin(async move {
            Ok(self
                .discover_plans()
                .await?
                .iter()
                .map(|plan| plan.schema.clone())
                .collect())
        })
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
            let plan = self.plan_for(table).await?;
            let name = table.table.to_string();
            let (ready_sender, ready) = oneshot::channel();
            let (sender, receiver) = mpsc::channel(self.shared.config.read_ahead_batches);
            let shared = Arc::clone(&self.shared);
            let worker = tokio::task::spawn_blocking(move || {
                read_worker(&shared, &plan, batch_rows, ready_sender, &sender);
            });
            match ready.await {
                Ok(Ok(())) => Ok(batch_stream(receiver, worker, name)),
                Ok(Err(error)) => Err(error),
                // The worker ended without a word: it panicked.
                Err(_) => Err(match worker.await {
                    Err(source) => Error::Task {
                        table: name,
                        source,
                    },
                    Ok(()) => Error::InvalidConfig {
                        reason: "the ODBC reader ended before it started",
                    },
                }),
            }
        })
    }
}

/// Runs `work` on the blocking pool; a panic becomes [`Error::DriverThread`].
async fn blocking<T, F>(what: &'static str, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::DriverThread { what, source })?
}

/// The batches a worker sends, then the worker's own fate: a panic ends the stream with an
/// error rather than with a short table.
fn batch_stream(
    receiver: mpsc::Receiver<Result<RecordBatch>>,
    worker: JoinHandle<()>,
    table: String,
) -> BoxStream<'static, Result<RecordBatch>> {
    stream::unfold(Some((receiver, worker, table)), |state| async move {
        let (mut receiver, worker, table) = state?;
        match receiver.recv().await {
            Some(Ok(batch)) => Some((Ok(batch), Some((receiver, worker, table)))),
            Some(Err(error)) => Some((Err(error), None)),
            None => match worker.await {
                Ok(()) => None,
                Err(source) => Some((Err(Error::Task { table, source }), None)),
            },
        }
    })
    .boxed()
}

impl Shared {
    fn connect(&self) -> Result<Connection<'static>> {
        let connect_error = |source: odbc_api::Error| Error::OdbcConnect {
            data_source: self.label.clone(),
            source: Box::new(source),
        };
        let environment = odbc_api::environment().map_err(connect_error)?;
        let options = ConnectionOptions {
            login_timeout_sec: Some(self.config.login_timeout_secs),
            packet_size: None,
        };
        environment
            .connect_with_connection_string(&self.connection_string, options)
            .map_err(connect_error)
    }

    /// Lists and describes the user tables (blocking).
    fn discover(&self) -> Result<Vec<TablePlan>> {
        let discover_error = |source: odbc_api::Error| Error::OdbcDiscover {
            source: Box::new(source),
        };
        let connection = self.connect()?;
        let dbms = connection
            .database_management_system_name()
            .map_err(discover_error)?;
        let quote = quote_char(&connection).map_err(discover_error)?;

        let mut names = Vec::new();
        for row in connection
            .tables("", "%", "%", "TABLE")
            .map_err(discover_error)?
        {
            let row = row.map_err(discover_error)?;
            let text = |value: Result<Option<&str>, std::str::Utf8Error>| {
                value
                    .map(|text| text.filter(|text| !text.is_empty()).map(str::to_owned))
                    .map_err(|source| Error::OdbcDiscover {
                        source: Box::new(source),
                    })
            };
            let catalog = text(row.catalog.as_str())?;
            let schema = text(row.schema.as_str())?;
            let Some(table) = text(row.table.as_str())? else {
                continue;
            };
            let kind = text(row.table_type.as_str())?.unwrap_or_default();
            if kind.eq_ignore_ascii_case("TABLE") && !is_internal(&dbms, schema.as_deref(), &table)
            {
                names.push((schema.or(catalog), table));
            }
        }
        names.sort();
        names.dedup();

        let mut plans = Vec::with_capacity(names.len());
        for (qualifier, name) in names {
            let table = TableRef::new(qualifier.as_deref().unwrap_or(NO_SCHEMA), name.as_str());
            let label = table.to_string();
            let mut plan = TablePlan {
                schema: TableSchema {
                    table,
                    schema: Arc::new(Schema::empty()),
                },
                qualifier,
                name,
                columns: Vec::new(),
            };
            let sql = select_sql(&plan, quote, true)?;
            let mut cursor = connection
                .execute(&sql, (), None)
                .map_err(|source| read_error(&label, source))?
                .ok_or_else(|| no_result_set(&label))?;
            plan.columns = infer_columns(&mut cursor, &dbms, &label)?;
            let fields: Vec<Field> = plan
                .columns
                .iter()
                .map(|column| Field::new(&column.name, column.data_type.clone(), true))
                .collect();
            plan.schema.schema = Arc::new(Schema::new(fields));
            plans.push(plan);
        }
        Ok(plans)
    }
}

/// The columns of a result set: arrow-odbc's mapping of its metadata, adjusted.
fn infer_columns(
    cursor: &mut impl ResultSetMetadata,
    dbms: &str,
    table: &str,
) -> Result<Vec<ColumnPlan>> {
    let inferred = arrow_schema_from(cursor, Some(dbms), false)
        .map_err(|error| describe_error(table, error))?;
    inferred
        .fields()
        .iter()
        .zip(1u16..)
        .map(|(field, index)| {
            let sql_type = cursor
                .col_data_type(index)
                .map_err(|source| read_error(table, source))?;
            Ok(ColumnPlan::from_inferred(field, sql_type))
        })
        .collect()
}

/// Whether a table is the database's own rather than the user's.
fn is_internal(dbms: &str, schema: Option<&str>, table: &str) -> bool {
    const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "sys", "performance_schema"];
    let schema_internal = schema.is_some_and(|schema| {
        SYSTEM_SCHEMAS
            .iter()
            .any(|system| schema.eq_ignore_ascii_case(system))
            || (dbms == "PostgreSQL" && schema.starts_with("pg_"))
    });
    schema_internal || (dbms == "SQLite" && table.starts_with("sqlite_"))
}

/// The driver's identifier quote, or `None` if it supports no quoted identifiers.
fn quote_char(connection: &Connection<'_>) -> Result<Option<char>, odbc_api::Error> {
    Ok(connection
        .identifier_quote_char()?
        .filter(|quote| *quote != ' '))
}

/// `SELECT "c1", "c2", … FROM "qualifier"."table"` with every identifier quoted, optionally
/// `WHERE 1=0` (describe only). `SELECT *` when no column is known yet, `SELECT 1` for a table
/// without columns.
fn select_sql(plan: &TablePlan, quote: Option<char>, describe: bool) -> Result<String> {
    let mut sql = String::from("SELECT ");
    if describe {
        sql.push('*');
    } else if plan.columns.is_empty() {
        sql.push('1');
    }
    if !describe {
        for (index, column) in plan.columns.iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            push_identifier(&mut sql, &column.name, "column", quote)?;
        }
    }
    sql.push_str(" FROM ");
    if let Some(qualifier) = &plan.qualifier {
        push_identifier(&mut sql, qualifier, "schema", quote)?;
        sql.push('.');
    }
    push_identifier(&mut sql, &plan.name, "table", quote)?;
    if describe {
        sql.push_str(" WHERE 1=0");
    }
    Ok(sql)
}

/// Appends `name` quoted with `quote` (doubled inside); without a quote character only plain
/// identifiers can be used.
fn push_identifier(
    sql: &mut String,
    name: &str,
    what: &'static str,
    quote: Option<char>,
) -> Result<()> {
    match quote {
        Some(quote) => {
            sql.push(quote);
            for c in name.chars() {
                if c == quote {
                    sql.push(quote);
                }
                sql.push(c);
            }
            sql.push(quote);
        }
        None => {
            let plain = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(Error::InvalidName {
                    what,
                    name: name.to_owned(),
                    reason: "the ODBC driver supports no quoted identifiers",
                });
            }
            sql.push_str(name);
        }
    }
    Ok(())
}

/// Reads one table to the end on the calling (blocking) thread, sending each batch. Setup
/// errors go to `ready`, later ones into the channel; a closed channel ends the read quietly.
fn read_worker(
    shared: &Shared,
    plan: &TablePlan,
    batch_rows: usize,
    ready: oneshot::Sender<Result<()>>,
    sender: &mpsc::Sender<Result<RecordBatch>>,
) {
    let mut ready = Some(ready);
    if let Err(error) = read_into(shared, plan, batch_rows, &mut ready, sender) {
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
            }
            // The consumer may be gone already; then nobody needs the error.
            None => {
                let _ = sender.blocking_send(Err(error));
            }
        }
    }
    // Dropping the reader and the connection closes the statement.
}

fn read_into(
    shared: &Shared,
    plan: &TablePlan,
    batch_rows: usize,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
    sender: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let table = plan.schema.table.to_string();
    let connection = shared.connect()?;
    let dbms = connection
        .database_management_system_name()
        .map_err(|source| read_error(&table, source))?;
    let quote = quote_char(&connection).map_err(|source| read_error(&table, source))?;
    let sql = select_sql(plan, quote, false)?;
    let mut cursor = connection
        .execute(&sql, (), None)
        .map_err(|source| read_error(&table, source))?
        .ok_or_else(|| no_result_set(&table))?;

    let config = &shared.config;
    let mut builder = OdbcReaderBuilder::new();
    builder
        .with_max_num_rows_per_batch(batch_rows)
        .with_max_bytes_per_batch(config.max_batch_bytes)
        .with_max_binary_size(config.max_binary_bytes)
        .with_fallibale_allocations(true)
        .with_dbms_name(dbms.clone());
    if config.wide_text {
        builder
            .with_payload_text_encoding(TextEncoding::Utf16)
            .with_max_text_size(config.max_text_bytes / 2);
    } else {
        builder
            .with_payload_text_encoding(TextEncoding::Utf8)
            .with_max_text_size(config.max_text_bytes);
    }
    if !plan.columns.is_empty() {
        // The table must still be what discovery described, or the types would not hold.
        if infer_columns(&mut cursor, &dbms, &table)? != plan.columns {
            return Err(Error::SchemaMismatch { table });
        }
        let transit: Vec<Field> = plan
            .columns
            .iter()
            .map(|column| Field::new(&column.name, column.transit_type(), true))
            .collect();
        builder.with_schema(Arc::new(Schema::new(transit)));
    }
    let reader = builder
        .build(cursor)
        .map_err(|error| describe_error(&table, error))?;

    if let Some(ready) = ready.take()
        && ready.send(Ok(())).is_err()
    {
        return Ok(());
    }
    for batch in reader {
        let batch = batch.map_err(|error| fetch_error(plan, error))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = finish_batch(plan, &batch)?;
        if sender.blocking_send(Ok(batch)).is_err() {
            // The stream was dropped: stop reading.
            return Ok(());
        }
    }
    Ok(())
}

/// Turns a batch as arrow-odbc filled it into the table's schema, parsing the text-fetched
/// columns exactly.
fn finish_batch(plan: &TablePlan, transit: &RecordBatch) -> Result<RecordBatch> {
    let table = &plan.schema.table;
    let mut arrays = Vec::with_capacity(plan.columns.len());
    for (index, column) in plan.columns.iter().enumerate() {
        let array = transit.column(index);
        let converted = match column.read {
            ColumnRead::Direct => Some(Arc::clone(array)),
            ColumnRead::Narrow => match column.data_type {
                DataType::Int8 => narrow::<Int8Type>(array),
                DataType::Int16 => narrow::<Int16Type>(array),
                DataType::Int32 => narrow::<Int32Type>(array),
                DataType::UInt8 => narrow::<UInt8Type>(array),
                _ => None,
            },
            ColumnRead::Decimal { precision, scale } => {
                let texts = array.as_string::<i32>();
                let mut builder = Decimal128Builder::with_capacity(texts.len())
                    .with_data_type(column.data_type.clone());
                let mut valid = true;
                for text in texts.iter() {
                    match text {
                        None => builder.append_null(),
                        Some(text) => match values::parse_decimal(text.trim(), precision, scale) {
                            Some(value) => builder.append_value(value),
                            None => {
                                valid = false;
                                break;
                            }
                        },
                    }
                }
                valid.then(|| Arc::new(builder.finish()) as ArrayRef)
            }
            ColumnRead::Date => {
                let texts = array.as_string::<i32>();
                let mut builder = Date32Builder::with_capacity(texts.len());
                let mut valid = true;
                for text in texts.iter() {
                    match text.map(|text| values::parse_date_days(text.trim())) {
                        None => builder.append_null(),
                        Some(Some(days)) => builder.append_value(days),
                        Some(None) => {
                            valid = false;
                            break;
                        }
                    }
                }
                valid.then(|| Arc::new(builder.finish()) as ArrayRef)
            }
            ColumnRead::Time(TimeUnit::Nanosecond) => {
                parse_ticks::<Time64NanosecondType>(array, |text| parse_time(text, 9))
            }
            ColumnRead::Time(_) => {
                parse_ticks::<Time64MicrosecondType>(array, |text| parse_time(text, 6))
            }
            ColumnRead::Timestamp(TimeUnit::Nanosecond) => {
                parse_ticks::<TimestampNanosecondType>(array, |text| parse_timestamp(text, 9))
            }
            ColumnRead::Timestamp(_) => {
                parse_ticks::<TimestampMicrosecondType>(array, |text| parse_timestamp(text, 6))
            }
        };
        let array = converted.ok_or_else(|| Error::InvalidValue {
            table: table.to_string(),
            column: column.name.clone(),
            expected: column.data_type.to_string(),
        })?;
        arrays.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(transit.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(&plan.schema.schema), arrays, &options).map_err(
        |source| Error::Arrow {
            table: table.to_string(),
            source,
        },
    )
}

/// Narrows a 64-bit integer column to `T`; `None` at the first value out of `T`'s range.
fn narrow<T>(array: &ArrayRef) -> Option<ArrayRef>
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: TryFrom<i64>,
{
    let wide = array.as_primitive::<Int64Type>();
    let mut builder = PrimitiveBuilder::<T>::with_capacity(wide.len());
    for value in wide.iter() {
        match value {
            None => builder.append_null(),
            Some(value) => builder.append_value(T::Native::try_from(value).ok()?),
        }
    }
    Some(Arc::new(builder.finish()))
}

/// Parses a text column into 64-bit ticks of `T`; `None` at the first value that does not parse.
fn parse_ticks<T>(array: &ArrayRef, parse: impl Fn(&str) -> Option<i64>) -> Option<ArrayRef>
where
    T: arrow::datatypes::ArrowPrimitiveType<Native = i64>,
{
    let texts = array.as_string::<i32>();
    let mut builder = PrimitiveBuilder::<T>::with_capacity(texts.len());
    for text in texts.iter() {
        match text {
            None => builder.append_null(),
            Some(text) => builder.append_value(parse(text.trim())?),
        }
    }
    Some(Arc::new(builder.finish()))
}

/// `HH:MM:SS[.f…]` into ticks of 10^-`digits` seconds since midnight. Fraction digits beyond
/// `digits` must be zeros; hours run to 23.
fn parse_time(text: &str, digits: u32) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 8 || bytes[2] != b':' || bytes[5] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &bytes[range];
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0, |acc, &b| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (hour, minute, second) = (number(0..2)?, number(3..5)?, number(6..8)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let scale = 10i64.pow(digits);
    let mut ticks = ((hour * 60 + minute) * 60 + second) * scale;
    let fraction = &bytes[8..];
    if !fraction.is_empty() {
        let fraction = fraction.strip_prefix(b".")?;
        if fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let (kept, dropped) = fraction.split_at(fraction.len().min(digits as usize));
        if dropped.iter().any(|&digit| digit != b'0') {
            return None;
        }
        let mut value = kept
            .iter()
            .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'));
        for _ in kept.len()..digits as usize {
            value *= 10;
        }
        ticks += value;
    }
    Some(ticks)
}

/// `YYYY-MM-DD[ HH:MM:SS[.f…]]` (or `T` between date and time) into ticks of 10^-`digits`
/// seconds since the Unix epoch; `None` if it does not parse or fit an `i64`.
fn parse_timestamp(text: &str, digits: u32) -> Option<i64> {
    let days = i64::from(values::parse_date_days(text.get(..10)?)?);
    let per_day = 86_400 * 10i64.pow(digits);
    let start = days.checked_mul(per_day)?;
    let rest = &text[10..];
    if rest.is_empty() {
        return Some(start);
    }
    let time = rest.strip_prefix([' ', 'T'])?;
    start.checked_add(parse_time(time, digits)?)
}

fn read_error(table: &str, source: odbc_api::Error) -> Error {
    Error::OdbcRead {
        table: table.to_owned(),
        source: Box::new(source),
    }
}

fn no_result_set(table: &str) -> Error {
    Error::OdbcRead {
        table: table.to_owned(),
        source: "the driver returned no result set for a SELECT".into(),
    }
}

/// An arrow-odbc error while describing a table or binding its buffers.
fn describe_error(table: &str, error: arrow_odbc::Error) -> Error {
    match error {
        arrow_odbc::Error::ColumnFailure {
            name,
            source: arrow_odbc::ColumnFailure::ZeroSizedColumn { sql_type },
            ..
        } => Error::UnsupportedType {
            table: table.to_owned(),
            column: name,
            declared: format!("{sql_type:?} (the driver reports no size)"),
        },
        arrow_odbc::Error::ColumnFailure {
            name,
            source: arrow_odbc::ColumnFailure::UnsupportedArrowType(data_type),
            ..
        } => Error::UnsupportedType {
            table: table.to_owned(),
            column: name,
            declared: data_type.to_string(),
        },
        arrow_odbc::Error::OdbcBufferTooSmall { .. } => Error::InvalidConfig {
            reason: "one row does not fit max_batch_bytes: raise it or lower max_text_bytes / \
                     max_binary_bytes",
        },
        other => Error::OdbcRead {
            table: table.to_owned(),
            source: Box::new(other),
        },
    }
}

/// An error from arrow-odbc's fetch loop. Truncation and mapping errors name the column and
/// never carry arrow-odbc's message, which can quote the value.
fn fetch_error(plan: &TablePlan, error: ArrowError) -> Error {
    let table = plan.schema.table.to_string();
    let ArrowError::ExternalError(inner) = error else {
        return Error::Arrow {
            table,
            source: error,
        };
    };
    if let Ok(odbc) = inner.downcast::<odbc_api::Error>() {
        return match *odbc {
            odbc_api::Error::TooLargeValueForBuffer { buffer_index, .. } => {
                Error::UnrepresentableValue {
                    table,
                    column: plan
                        .columns
                        .get(buffer_index)
                        .map_or_else(|| format!("#{buffer_index}"), |c| c.name.clone()),
                    reason: "a value is longer than the column's transit buffer (the size the \
                             driver reports, capped by max_text_bytes / max_binary_bytes); it is \
                             not truncated",
                }
            }
            other => Error::OdbcRead {
                table,
                source: Box::new(other),
            },
        };
    }
    // Otherwise one of arrow-odbc's mapping errors, whose type is private and whose message
    // quotes the value: only its kind is kept. With the transit types chosen above the only
    // one left is text that is not valid UTF-8.
    let text_columns: Vec<&str> = plan
        .columns
        .iter()
        .filter(|column| column.transit_type() == DataType::Utf8)
        .map(|column| column.name.as_str())
        .collect();
    Error::UnrepresentableValue {
        table,
        column: text_columns.join(", "),
        reason: "a value has no form in its column's Arrow type (text that is not valid \
                 UTF-8?: try wide_text)",
    }
}

/// The attributes of a connection string that say where it points (`Driver`/`DSN`, `Server`,
/// `Port`, `Database`), never the others. A string that does not parse is shown as such.
fn data_source_label(connection_string: &str) -> String {
    const SHOWN: &[(&str, &[&str])] = &[
        ("dsn", &["dsn"]),
        ("driver", &["driver"]),
        ("server", &["server", "host", "servername"]),
        ("port", &["port"]),
        ("database", &["database", "db"]),
    ];
    let Some(attributes) = parse_attributes(connection_string) else {
        return "(a connection string that does not parse)".to_owned();
    };
    let mut label = Vec::new();
    for (shown, keys) in SHOWN {
        if let Some((_, value)) = attributes
            .iter()
            .find(|(key, _)| keys.iter().any(|k| key.eq_ignore_ascii_case(k)))
        {
            label.push(format!("{shown}={value}"));
        }
    }
    if label.is_empty() {
        "(a connection string without driver or DSN)".to_owned()
    } else {
        label.join(" ")
    }
}

/// Splits `key=value;key={va;lue}` into pairs; `}}` inside braces is one `}`. `None` for
/// anything malformed, so that no part of a secret is ever taken for another attribute.
fn parse_attributes(text: &str) -> Option<Vec<(&str, String)>> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
        if rest.is_empty() {
            return Some(pairs);
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.contains([';', '{', '}']) {
            return None;
        }
        let after = after.trim_start();
        if let Some(braced) = after.strip_prefix('{') {
            let mut value = String::new();
            let mut chars = braced.char_indices();
            let end = loop {
                let (at, c) = chars.next()?;
                if c == '}' {
                    if braced[at + 1..].starts_with('}') {
                        value.push('}');
                        chars.next();
                    } else {
                        break at + 1;
                    }
                } else {
                    value.push(c);
                }
            };
            rest = braced[end..].trim_start();
            if !(rest.is_empty() || rest.starts_with(';')) {
                return None;
            }
            pairs.push((key, value));
        } else {
            let (value, after) = after.split_once(';').unwrap_or((after, ""));
            pairs.push((key, value.trim().to_owned()));
            rest = after;
        }
    }
}

/// Builds an ODBC connection string attribute by attribute, bracing values that need it, so
/// that settings never have to be pasted into a string by hand.
///
/// ```
/// use tidegate_replicate::odbc::ConnectionStringBuilder;
///
/// let text = ConnectionStringBuilder::new()
///     .attribute("Driver", "PostgreSQL Unicode")?
///     .attribute("UID", "reader")?
///     .attribute("PWD", "p;w}d")?
///     .finish();
/// assert_eq!(text, "Driver=PostgreSQL Unicode;UID=reader;PWD={p;w}}d};");
/// # Ok::<(), tidegate_replicate::Error>(())
/// ```
#[derive(Default)]
pub struct ConnectionStringBuilder {
    text: Zeroizing<String>,
}

impl fmt::Debug for ConnectionStringBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionStringBuilder")
            .field("data_source", &data_source_label(&self.text))
            .finish_non_exhaustive()
    }
}

impl ConnectionStringBuilder {
    /// An empty connection string.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value;`. The value is braced (with `}` doubled) when it holds `;`, `{`,
    /// `}` or surrounding spaces. Keys must be plain: no `=`, `;`, braces, nor empty.
    pub fn attribute(mut self, key: &str, value: &str) -> Result<Self> {
        if key.trim().is_empty() || key.contains(['=', ';', '{', '}']) {
            return Err(Error::InvalidConfig {
                reason: "an ODBC connection string key is empty or holds '=', ';' or braces",
            });
        }
        let needs_braces = value.contains([';', '{', '}']) || value.trim() != value;
        self.text.push_str(key);
        self.text.push('=');
        if needs_braces {
            self.text.push('{');
            for c in value.chars() {
                if c == '}' {
                    self.text.push('}');
                }
                self.text.push(c);
            }
            self.text.push('}');
        } else {
            self.text.push_str(value);
        }
        self.text.push(';');
        Ok(self)
    }

    /// The connection string, to hand to [`OdbcSource::connect`] (which zeroizes it when
    /// the source is dropped).
    pub fn finish(mut self) -> String {
        std::mem::take(&mut *self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inferred_types_are_adjusted_so_nothing_is_lost() {
        let cases = [
            (DataType::Int32, DataType::Int32, ColumnRead::Narrow),
            (DataType::UInt8, DataType::UInt8, ColumnRead::Narrow),
            (DataType::Int64, DataType::Int64, ColumnRead::Direct),
            (DataType::Float64, DataType::Float64, ColumnRead::Direct),
            (DataType::Utf8, DataType::Utf8, ColumnRead::Direct),
            (
                DataType::Decimal128(10, 2),
                DataType::Decimal128(10, 2),
                ColumnRead::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            (
                DataType::Decimal128(5, -2),
                DataType::Decimal128(7, 0),
                ColumnRead::Decimal {
                    precision: 7,
                    scale: 0,
                },
            ),
            (
                DataType::Decimal128(38, -2),
                DataType::Utf8,
                ColumnRead::Direct,
            ),
            (DataType::Date32, DataType::Date32, ColumnRead::Date),
            (
                DataType::Time32(TimeUnit::Second),
                DataType::Time64(TimeUnit::Microsecond),
                ColumnRead::Time(TimeUnit::Microsecond),
            ),
            (
                DataType::Time64(TimeUnit::Nanosecond),
                DataType::Time64(TimeUnit::Nanosecond),
                ColumnRead::Time(TimeUnit::Nanosecond),
            ),
            (
                DataType::Timestamp(TimeUnit::Second, None),
                DataType::Timestamp(TimeUnit::Microsecond, None),
                ColumnRead::Timestamp(TimeUnit::Microsecond),
            ),
            (
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                ColumnRead::Timestamp(TimeUnit::Nanosecond),
            ),
            (
                DataType::FixedSizeBinary(16),
                DataType::Binary,
                ColumnRead::Direct,
            ),
        ];
        for (inferred, expected, read) in cases {
            let field = Field::new("c", inferred.clone(), false);
            let plan = ColumnPlan::from_inferred(&field, OdbcType::Unknown);
            assert_eq!((plan.data_type, plan.read), (expected, read), "{inferred}");
        }
        let single = Field::new("c", DataType::Float32, false);
        let real = ColumnPlan::from_inferred(&single, OdbcType::Real);
        assert_eq!(real.data_type, DataType::Float32);
        let float = ColumnPlan::from_inferred(&single, OdbcType::Float { precision: 17 });
        assert_eq!(
            float.data_type,
            DataType::Float64,
            "FLOAT(17) is psqlODBC's double"
        );
    }

    #[test]
    fn times_and_timestamps_parse_exactly() {
        assert_eq!(parse_time("00:00:00", 6), Some(0));
        assert_eq!(parse_time("23:59:59.999999", 6), Some(86_399_999_999));
        assert_eq!(parse_time("10:11:12.5", 6), Some(36_672_500_000));
        assert_eq!(parse_time("10:11:12.500000000", 6), Some(36_672_500_000));
        assert_eq!(parse_time("10:11:12.1234567", 6), None);
        assert_eq!(
            parse_time("10:11:12.123456789", 9),
            Some(36_672_123_456_789)
        );
        assert_eq!(parse_time("24:00:00", 6), None);
        assert_eq!(parse_time("10:11:12+02", 6), None);
        assert_eq!(parse_time("10:11", 6), None);
        assert_eq!(parse_time("10:11:12.", 6), None);
        assert_eq!(parse_timestamp("1970-01-01 00:00:01", 6), Some(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000001", 6), Some(1));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59.5", 6), Some(-500_000));
        assert_eq!(
            parse_timestamp("2020-01-02", 6),
            Some(1_577_923_200_000_000)
        );
        assert_eq!(
            parse_timestamp("9999-12-31 23:59:59.999999", 6),
            Some(253_402_300_799_999_999)
        );
        assert_eq!(
            parse_timestamp("9999-12-31 23:59:59", 9),
            None,
            "beyond i64 nanoseconds"
        );
        assert_eq!(parse_timestamp("4713-01-01 00:00:00 BC", 6), None);
        assert_eq!(parse_timestamp("infinity", 6), None);
        assert_eq!(parse_timestamp("2020-01-02 03:04:05+01", 6), None);
    }

    #[test]
    fn identifiers_are_quoted_with_the_driver_quote() {
        let plan = TablePlan {
            schema: TableSchema {
                table: TableRef::new("s", "t"),
                schema: Arc::new(Schema::empty()),
            },
            qualifier: Some("my \"schema\"".into()),
            name: "tä ble`".into(),
            columns: vec![ColumnPlan {
                name: "a\"b`".into(),
                data_type: DataType::Int32,
                read: ColumnRead::Direct,
            }],
        };
        assert_eq!(
            select_sql(&plan, Some('"'), false).unwrap(),
            r#"SELECT "a""b`" FROM "my ""schema"""."tä ble`""#
        );
        assert_eq!(
            select_sql(&plan, Some('`'), true).unwrap(),
            "SELECT * FROM `my \"schema\"`.`tä ble``` WHERE 1=0"
        );
        assert!(matches!(
            select_sql(&plan, None, false),
            Err(Error::InvalidName { what: "column", .. })
        ));
    }

    #[test]
    fn labels_show_where_never_credentials() {
        let cases = [
            (
                "Driver={PostgreSQL Unicode};Server=db;Port=5432;Database=shop;UID=u;PWD=secret;",
                "driver=PostgreSQL Unicode server=db port=5432 database=shop",
            ),
            ("DSN=warehouse;PWD={se;cret}", "dsn=warehouse"),
            ("PWD={a;Server=evil}};x};Driver=d", "driver=d"),
            (
                "UID=u;PWD=secret",
                "(a connection string without driver or DSN)",
            ),
            (
                "Driver=d;PWD={unterminated",
                "(a connection string that does not parse)",
            ),
            (
                "Driver=d;PWD={x}y;",
                "(a connection string that does not parse)",
            ),
            ("PWD", "(a connection string that does not parse)"),
        ];
        for (text, label) in cases {
            assert_eq!(data_source_label(text), label, "{text}");
        }
    }

    #[test]
    fn built_strings_parse_back() {
        let values = [
            "plain", "se;cret", "{braced}", "a}}b", " spaced ", "", "é=ü",
        ];
        for value in values {
            let text = ConnectionStringBuilder::new()
                .attribute("Driver", "x")
                .unwrap()
                .attribute("PWD", value)
                .unwrap()
                .finish();
            let pairs = parse_attributes(&text).unwrap();
            assert_eq!(pairs[1], ("PWD", value.to_owned()), "{text}");
        }
        assert!(
            ConnectionStringBuilder::new()
                .attribute("a=b", "x")
                .is_err()
        );
        assert!(ConnectionStringBuilder::new().attribute("", "x").is_err());
    }

    #[test]
    fn internal_tables_are_recognised() {
        assert!(is_internal("PostgreSQL", Some("pg_catalog"), "pg_class"));
        assert!(is_internal(
            "PostgreSQL",
            Some("information_schema"),
            "tables"
        ));
        assert!(!is_internal("PostgreSQL", Some("public"), "pg_like_name"));
        assert!(is_internal("SQLite", None, "sqlite_sequence"));
        assert!(!is_internal(
            "PostgreSQL",
            Some("public"),
            "sqlite_sequence"
        ));
        assert!(is_internal("Microsoft SQL Server", Some("sys"), "objects"));
    }
}
