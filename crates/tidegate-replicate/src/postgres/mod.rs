//! PostgreSQL as a source: binary `COPY` decoded straight into Arrow, every table of a copy
//! read in one consistent snapshot, large tables split into page ranges read in parallel.
//!
//! * **Discovery** lists ordinary and partitioned tables the role may `SELECT` from, in every
//!   schema but the system ones. A partitioned table is listed once, as its root, and read
//!   through it (never `ONLY` the parent); its partitions are not listed separately.
//! * **Types** follow [`PgType`] and `docs/types.md`. Types with no exact Arrow counterpart
//!   (`inet`, `money`, ranges, unconstrained `numeric`, …) are read through a cast to `text`:
//!   the column becomes a string and nothing is lost.
//! * **Snapshot.** [`PostgresSource::connect`] opens a `REPEATABLE READ` transaction and
//!   exports its snapshot; every reader joins it with `SET TRANSACTION SNAPSHOT`, so all tables
//!   and all parts of a table are read as of one instant. The exporting connection is held
//!   until the source is dropped. With [`PostgresSourceConfig::snapshot`] the source joins a
//!   snapshot exported elsewhere instead — a logical replication slot's, so that a full load
//!   and the changes streamed from the slot meet without gap or overlap.
//! * **Parallel reads.** [`Source::partitions`] splits an ordinary table of at least
//!   [`PostgresSourceConfig::min_split_pages`] pages into ranges of heap pages, read with
//!   `ctid` range conditions (a TID range scan since PostgreSQL 14).
//!
//! Each reader runs on its own Tokio task, so decoding overlaps with whatever consumes the
//! batches, and holds its own connection; dropping the stream closes it.

mod decode;
mod encode;
mod sink;
mod types;

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use tokio::sync::{Mutex, mpsc};

pub use self::decode::{BinaryCopyDecoder, BinaryValueDecoder, ValueError};
pub use self::encode::{BinaryCopyEncoder, postgres_type};
pub use self::sink::{PostgresSink, PostgresSinkConfig};
use self::types::{ColumnRead, column_read};
pub use self::types::{PgType, TypeCatalog};
use crate::error::{Error, Result};
use crate::plan_cache::{Plan, PlanCache};
use crate::source::{Partition, Source};
use crate::table::{TableRef, TableSchema};

/// How a [`PostgresSource`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresSourceConfig {
    /// Read every table in one exported snapshot. Default `true`; turn it off only for
    /// servers that cannot export snapshots (some hot standbys before PostgreSQL 10).
    pub consistent_snapshot: bool,
    /// An ordinary table is split for parallel reading only from this many heap pages (8 KiB
    /// each by default). Default 16,384 (128 MiB).
    pub min_split_pages: u64,
    /// A batch is closed once it holds this many bytes of row data, whatever its row count,
    /// so wide rows do not blow memory up. Default 32 MiB.
    pub batch_bytes: usize,
    /// `COPY` data kept in flight per reader, in batches. Default 1.
    pub read_ahead_batches: usize,
    /// Join this snapshot, exported elsewhere (for instance by a logical replication slot
    /// created with `EXPORT_SNAPSHOT`), instead of exporting one. Every reader, discovery
    /// included, reads in it; it must stay valid (its exporter idle) until the read ends.
    /// Default `None`. Takes precedence over [`consistent_snapshot`](Self::consistent_snapshot).
    pub snapshot: Option<String>,
}

impl PostgresSourceConfig {
    /// Sets [`snapshot`](Self::snapshot): read in the snapshot exported as `id`.
    pub fn with_snapshot(mut self, id: impl Into<String>) -> Self {
        self.snapshot = Some(id.into());
        self
    }
}

impl Default for PostgresSourceConfig {
    fn default() -> Self {
        Self {
            consistent_snapshot: true,
            min_split_pages: 16_384,
            batch_bytes: 32 << 20,
            read_ahead_batches: 1,
            snapshot: None,
        }
    }
}

/// A PostgreSQL database read through binary `COPY`.
pub struct PostgresSource {
    options: PgConnectOptions,
    config: PostgresSourceConfig,
    /// The connection whose open transaction keeps the exported snapshot alive.
    snapshot: Option<(Mutex<PgConnection>, String)>,
    /// How each discovered table is read, by table.
    plans: PlanCache<TablePlan>,
}

impl fmt::Debug for PostgresSource {
    // The connect options hold the password: show where, not how.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSource")
            .field("server", &server_label(&self.options))
            .field("config", &self.config)
            .field("snapshot", &self.snapshot.as_ref().map(|(_, id)| id))
            .finish_non_exhaustive()
    }
}

/// How one table is read.
#[derive(Debug)]
struct TablePlan {
    schema: TableSchema,
    /// `r` ordinary, `p` partitioned.
    kind: char,
    columns: Vec<(String, ColumnRead)>,
}

impl Plan for TablePlan {
    fn schema(&self) -> &TableSchema {
        &self.schema
    }
}

impl PostgresSource {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?sslmode=…`)
    /// with the default configuration.
    ///
    /// A URL that does not parse is refused without repeating it (it may hold a password).
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|_| Error::InvalidConfig {
            reason: "the PostgreSQL URL does not parse (expected postgres://user:password@host:port/database)",
        })?;
        Self::connect_with(options, PostgresSourceConfig::default()).await
    }

    /// Connects with explicit options and configuration; exports the snapshot if configured.
    pub async fn connect_with(
        options: PgConnectOptions,
        config: PostgresSourceConfig,
    ) -> Result<Self> {
        if config.batch_bytes == 0 || config.read_ahead_batches == 0 {
            return Err(Error::InvalidConfig {
                reason: "batch_bytes and read_ahead_batches must be at least 1",
            });
        }
        let options = options.application_name("tidegate");
        let snapshot = if let Some(id) = &config.snapshot {
            // Interpolated into SET TRANSACTION SNAPSHOT: it must look like one.
            if !is_snapshot_id(id) {
                return Err(Error::InvalidConfig {
                    reason: "a snapshot id has the form of pg_export_snapshot()'s result",
                });
            }
            let mut connection = connect(&options).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'"
            )))
            .execute(&mut connection)
            .await
            .map_err(|source| Error::Snapshot { source })?;
            Some((Mutex::new(connection), id.clone()))
        } else if config.consistent_snapshot {
            let mut connection = connect(&options).await?;
            let id: String = async {
                sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut connection)
                    .await?;
                sqlx::query_scalar("SELECT pg_export_snapshot()")
                    .fetch_one(&mut connection)
                    .await
            }
            .await
            .map_err(|source| Error::Snapshot { source })?;
            // Interpolated into SET TRANSACTION SNAPSHOT below: it must look like one.
            if !is_snapshot_id(&id) {
                return Err(Error::InvalidConfig {
                    reason: "the server exported a snapshot id of an unexpected form",
                });
            }
            Some((Mutex::new(connection), id))
        } else {
            None
        };
        Ok(Self {
            options,
            config,
            snapshot,
            plans: PlanCache::new(),
        })
    }

    /// The exported snapshot every reader joins, if any.
    pub fn snapshot_id(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|(_, id)| id.as_str())
    }

    async fn discover_plans(&self) -> Result<Vec<Arc<TablePlan>>> {
        let rows = match &self.snapshot {
            Some((connection, _)) => catalog_rows(&mut *connection.lock().await).await,
            None => {
                let mut connection = connect(&self.options).await?;
                catalog_rows(&mut connection).await
            }
        }
        .map_err(|source| Error::Discover { source })?;
        let (columns, catalog) = rows;

        let mut plans: Vec<TablePlan> = Vec::new();
        for column in columns {
            let read = column_read(column.type_oid, column.typmod, &catalog);
            let same_table = plans.last().is_some_and(|plan| {
                plan.schema.table.schema == column.schema && plan.schema.table.name == column.table
            });
            if !same_table {
                plans.push(TablePlan {
                    schema: TableSchema {
                        table: TableRef::new(column.schema.clone(), column.table.clone()),
                        schema: Arc::new(Schema::empty()),
                    },
                    kind: column.kind,
                    columns: Vec::new(),
                });
            }
            let plan = plans.last_mut().expect("pushed above");
            plan.columns.push((column.column, read));
        }
        let plans: Vec<Arc<TablePlan>> = plans
            .into_iter()
            .map(|mut plan| {
                let fields: Vec<_> = plan
                    .columns
                    .iter()
                    .map(|(name, read)| read.pg_type.field(name, true))
                    .collect();
                plan.schema.schema = Arc::new(Schema::new(fields));
                Arc::new(plan)
            })
            .collect();
        Ok(self.plans.replace(plans))
    }

    /// The plan of a discovered table, checked against the schema the caller holds.
    async fn plan_for(&self, table: &TableSchema) -> Result<Arc<TablePlan>> {
        self.plans.plan_for(table, self.discover_plans()).await
    }

    async fn page_count(&self, table: &TableRef) -> Result<u64> {
        let sql = "SELECT (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8 \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname = $1 AND c.relname = $2";
        let query = sqlx::query_scalar::<_, i64>(sql)
            .bind(&table.schema)
            .bind(&table.name);
        let pages = match &self.snapshot {
            Some((connection, _)) => query.fetch_one(&mut *connection.lock().await).await,
            None => query.fetch_one(&mut connect(&self.options).await?).await,
        }
        .map_err(|source| Error::Discover { source })?;
        Ok(u64::try_from(pages).unwrap_or(0))
    }
}

impl Source for PostgresSource {
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
        self.read_partition(table, &Partition::Whole, batch_rows)
    }

    fn partitions<'a>(
        &'a self,
        table: &'a TableSchema,
        max_partitions: usize,
    ) -> BoxFuture<'a, Result<Vec<Partition>>> {
        Box::pin(async move {
            let plan = self.plan_for(table).await?;
            if max_partitions <= 1 || plan.kind != 'r' {
                return Ok(vec![Partition::Whole]);
            }
            let pages = self.page_count(&table.table).await?;
            if pages < self.config.min_split_pages.max(2) {
                return Ok(vec![Partition::Whole]);
            }
            Ok(split_pages(pages, max_partitions))
        })
    }

    fn read_partition<'a>(
        &'a self,
        table: &'a TableSchema,
        partition: &'a Partition,
        batch_rows: usize,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<RecordBatch>>>> {
        Box::pin(async move {
            let plan = self.plan_for(table).await?;
            let types: Vec<PgType> = plan
                .columns
                .iter()
                .map(|(_, read)| read.pg_type.clone())
                .collect();
            let decoder = BinaryCopyDecoder::new(
                table.table.to_string(),
                Arc::clone(&table.schema),
                &types,
                batch_rows,
                self.config.batch_bytes,
            )?;
            let statement = copy_statement(&plan, partition)?;
            let mut connection = connect(&self.options).await?;
            let begin = match self.snapshot_id() {
                Some(id) => format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'"
                ),
                None => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".to_owned(),
            };
            sqlx::raw_sql(AssertSqlSafe(begin))
                .execute(&mut connection)
                .await
                .map_err(|source| Error::Snapshot { source })?;

            let (sender, receiver) = mpsc::channel(self.config.read_ahead_batches);
            let table_name = table.table.to_string();
            tokio::spawn(async move {
                let result =
                    run_copy(&mut connection, &statement, decoder, &table_name, &sender).await;
                if let Err(error) = result {
                    // The consumer may be gone already; then nobody needs the error.
                    let _ = sender.send(Err(error)).await;
                }
                // Dropping the connection mid-COPY closes it: the server stops sending.
            });
            Ok(tokio_stream_from(receiver))
        })
    }
}

/// Reads one `COPY` to the end, sending each full batch.
async fn run_copy(
    connection: &mut PgConnection,
    statement: &str,
    mut decoder: BinaryCopyDecoder,
    table: &str,
    sender: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let read_error = |source| Error::Read {
        table: table.to_owned(),
        source,
    };
    let mut chunks = connection
        .copy_out_raw(statement)
        .await
        .map_err(read_error)?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(read_error)?;
        let mut input = &chunk[..];
        while decoder.decode(&mut input)? {
            if let Some(batch) = decoder.flush()?
                && sender.send(Ok(batch)).await.is_err()
            {
                return Ok(());
            }
        }
    }
    drop(chunks);
    if let Some(batch) = decoder.finish()? {
        let _ = sender.send(Ok(batch)).await;
    }
    Ok(())
}

fn tokio_stream_from(
    mut receiver: mpsc::Receiver<Result<RecordBatch>>,
) -> BoxStream<'static, Result<RecordBatch>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// `n` page ranges covering `pages` pages; the last range is open-ended.
fn split_pages(pages: u64, n: usize) -> Vec<Partition> {
    let n = (n as u64).min(pages).max(1);
    let step = pages.div_ceil(n);
    (0..n)
        .map(|index| {
            let start = index * step;
            let end = (index + 1 < n).then(|| (index + 1) * step);
            Partition::Pages { start, end }
        })
        .collect()
}

/// The `COPY … TO STDOUT (FORMAT binary)` statement reading `partition` of a table.
fn copy_statement(plan: &TablePlan, partition: &Partition) -> Result<String> {
    let table = &plan.schema.table;
    let mut sql = String::from("COPY ");
    let plain = plan.kind == 'r'
        && *partition == Partition::Whole
        && plan.columns.iter().all(|(_, read)| read.cast.is_none());
    if plain && !plan.columns.is_empty() {
        // The fastest form: no executor in between.
        push_identifier(&mut sql, &table.schema);
        sql.push('.');
        push_identifier(&mut sql, &table.name);
        sql.push_str(" (");
        for (index, (name, _)) in plan.columns.iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            push_identifier(&mut sql, name);
        }
        sql.push(')');
    } else {
        sql.push_str("(SELECT ");
        for (index, (name, read)) in plan.columns.iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            push_identifier(&mut sql, name);
            if let Some(cast) = read.cast {
                sql.push_str("::");
                sql.push_str(cast);
            }
        }
        sql.push_str(" FROM ");
        push_identifier(&mut sql, &table.schema);
        sql.push('.');
        push_identifier(&mut sql, &table.name);
        match partition {
            Partition::Whole => {}
            Partition::Pages { start, end } => {
                if plan.kind != 'r' {
                    return Err(Error::InvalidConfig {
                        reason: "only ordinary tables are read by page ranges",
                    });
                }
                sql.push_str(&format!(" WHERE ctid >= '({start},0)'::tid"));
                if let Some(end) = end {
                    sql.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(" TO STDOUT (FORMAT binary)");
    Ok(sql)
}

/// Whether `id` has the form of a snapshot id (`00000003-0000001B-1`).
fn is_snapshot_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}

/// `host:port/database`, for errors and debug output (never the credentials).
fn server_label(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    options.connect().await.map_err(|source| Error::Connect {
        server: server_label(options),
        source,
    })
}

/// One column of one table, as the catalog describes it.
struct CatalogColumn {
    schema: String,
    table: String,
    kind: char,
    column: String,
    type_oid: u32,
    typmod: i32,
}

/// The columns of every readable user table, and the catalog entries of their types.
async fn catalog_rows(
    connection: &mut PgConnection,
) -> sqlx::Result<(Vec<CatalogColumn>, TypeCatalog)> {
    let sql = "SELECT n.nspname::text, c.relname::text, c.relkind::text, a.attname::text, \
                      a.atttypid::int8, a.atttypmod \
               FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                 AND has_table_privilege(c.oid, 'SELECT') \
               ORDER BY n.nspname, c.relname, a.attnum";
    let rows = sqlx::query(sql).fetch_all(&mut *connection).await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get(2)?;
        columns.push(CatalogColumn {
            schema: row.try_get(0)?,
            table: row.try_get(1)?,
            kind: kind.chars().next().unwrap_or('r'),
            column: row.try_get(3)?,
            type_oid: u32::try_from(row.try_get::<i64, _>(4)?).unwrap_or(0),
            typmod: row.try_get(5)?,
        });
    }

    // Types reachable from the columns through domains and array elements.
    let mut catalog = TypeCatalog::new();
    catalog
        .load(&mut *connection, columns.iter().map(|c| c.type_oid))
        .await?;
    Ok((columns, catalog))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_ranges_covering_the_table() {
        assert_eq!(
            split_pages(10, 3),
            vec![
                Partition::Pages {
                    start: 0,
                    end: Some(4)
                },
                Partition::Pages {
                    start: 4,
                    end: Some(8)
                },
                Partition::Pages {
                    start: 8,
                    end: None
                },
            ]
        );
        assert_eq!(
            split_pages(1, 4),
            vec![Partition::Pages {
                start: 0,
                end: None
            }]
        );
    }
}
