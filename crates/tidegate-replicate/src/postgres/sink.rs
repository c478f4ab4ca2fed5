//! PostgreSQL as a target: each table is loaded into a staging table with binary `COPY` and
//! swapped in atomically when it is complete.
//!
//! For a table `schema.name` and run `R`:
//!
//! 1. `CREATE SCHEMA IF NOT EXISTS schema`; drop a staging table left over by an earlier,
//!    interrupted run of the same table and run; `CREATE TABLE schema._tidegate_<hash>` with
//!    the columns typed by [`postgres_type`] (see `docs/types.md`);
//! 2. stream every batch into it with `COPY … FROM STDIN (FORMAT binary)`;
//! 3. on [`TableWriter::finish`], in one transaction: drop `schema.name` if it exists and
//!    rename the staging table to `name`. Readers see the old table or the new one, never a
//!    part.
//!
//! So a failed or cancelled load never touches the existing table, and the swap is the
//! PostgreSQL counterpart of the Parquet sink's manifest. The swap replaces the table
//! wholesale: grants, indexes and dependent views of the old table are not carried over (a
//! dependent view makes the swap fail with PostgreSQL's error, leaving the old table).

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgCopyIn, PgPool, PgPoolCopyExt, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres};

use super::encode::{BinaryCopyEncoder, postgres_type};
use super::{push_identifier, server_label};
use crate::error::{Error, Result};
use crate::sink::{Sink, TableOutput, TableWriter};
use crate::table::{TableRef, TableSchema};

/// COPY data is sent in chunks of about this size.
const SEND_CHUNK: usize = 1 << 20;

/// How a [`PostgresSink`] loads tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresSinkConfig {
    /// Load every table into this schema instead of the source table's own.
    pub schema: Option<String>,
}

/// A PostgreSQL database loaded through binary `COPY` and atomic table swaps.
pub struct PostgresSink {
    pool: PgPool,
    server: String,
    config: PostgresSinkConfig,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("server", &self.server)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// Connects to the database at `url`; up to `max_tables` tables load at once.
    pub async fn connect(url: &str, config: PostgresSinkConfig, max_tables: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|_| Error::InvalidConfig {
            reason: "the PostgreSQL URL does not parse (expected postgres://user:password@host:port/database)",
        })?;
        Self::connect_with(options, config, max_tables).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(
        options: PgConnectOptions,
        config: PostgresSinkConfig,
        max_tables: u32,
    ) -> Result<Self> {
        let options = options.application_name("tidegate");
        let server = server_label(&options);
        let pool = PgPoolOptions::new()
            // One COPY per table being loaded, plus one for DDL and swaps.
            .max_connections(max_tables.max(1) + 1)
            .connect_with(options)
            .await
            .map_err(|source| Error::Connect {
                server: server.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            server,
            config,
        })
    }

    fn write_error(&self, table: &TableRef) -> impl Fn(sqlx::Error) -> Error + use<> {
        let target = format!("{} on {}", table, self.server);
        move |source| Error::Write {
            target: target.clone(),
            source,
        }
    }
}

impl Sink for PostgresSink {
    fn begin_table<'a>(
        &'a self,
        table: &'a TableSchema,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn TableWriter>>> {
        Box::pin(async move {
            let target = TableRef::new(
                self.config
                    .schema
                    .clone()
                    .unwrap_or_else(|| table.table.schema.clone()),
                table.table.name.clone(),
            );
            let encoder = BinaryCopyEncoder::new(table.table.to_string(), &table.schema)?;
            let staging = staging_name(&target, run_id);
            let quoted_target = qualified(&target.schema, &target.name);
            let quoted_staging = qualified(&target.schema, &staging);

            let mut columns = String::new();
            let mut column_list = String::new();
            for (index, field) in table.schema.fields().iter().enumerate() {
                if index > 0 {
                    columns.push_str(", ");
                    column_list.push_str(", ");
                }
                push_identifier(&mut columns, field.name());
                push_identifier(&mut column_list, field.name());
                columns.push(' ');
                // `BinaryCopyEncoder::new` has checked every field has a type.
                columns.push_str(&postgres_type(field).unwrap_or_default());
            }
            let mut schema_sql = String::from("CREATE SCHEMA IF NOT EXISTS ");
            push_identifier(&mut schema_sql, &target.schema);
            let error = self.write_error(&target);
            let mut connection = self.pool.acquire().await.map_err(&error)?;
            for statement in [
                schema_sql,
                format!("DROP TABLE IF EXISTS {quoted_staging}"),
                format!("CREATE TABLE {quoted_staging} ({columns})"),
            ] {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *connection)
                    .await
                    .map_err(&error)?;
            }
            drop(connection);
            let copy_sql =
                format!("COPY {quoted_staging} ({column_list}) FROM STDIN (FORMAT binary)");
            let copy = self.pool.copy_in_raw(&copy_sql).await.map_err(&error)?;
            Ok(Box::new(PostgresTableWriter {
                pool: self.pool.clone(),
                source_table: table.table.clone(),
                target,
                schema: table.schema.clone(),
                run_id: run_id.to_owned(),
                server: self.server.clone(),
                quoted_target,
                quoted_staging,
                staging,
                copy: Some(copy),
                encoder,
                buffer: Vec::with_capacity(SEND_CHUNK + (64 << 10)),
                rows: 0,
                bytes: 0,
            }) as Box<dyn TableWriter>)
        })
    }
}

/// Loads one table; see the [module documentation](self).
struct PostgresTableWriter {
    pool: PgPool,
    source_table: TableRef,
    target: TableRef,
    schema: arrow::datatypes::SchemaRef,
    run_id: String,
    server: String,
    quoted_target: String,
    quoted_staging: String,
    staging: String,
    copy: Option<PgCopyIn<PoolConnection<Postgres>>>,
    encoder: BinaryCopyEncoder,
    buffer: Vec<u8>,
    rows: u64,
    bytes: u64,
}

impl fmt::Debug for PostgresTableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTableWriter")
            .field("target", &self.target)
            .field("staging", &self.staging)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl PostgresTableWriter {
    fn error(&self) -> impl Fn(sqlx::Error) -> Error + use<> {
        let target = format!("{} on {}", self.target, self.server);
        move |source| Error::Write {
            target: target.clone(),
            source,
        }
    }

    async fn send_buffer(&mut self) -> Result<()> {
        let error = self.error();
        let copy = self.copy.as_mut().ok_or(Error::InvalidConfig {
            reason: "the table writer is already finished",
        })?;
        copy.send(self.buffer.as_slice()).await.map_err(error)?;
        self.bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl TableWriter for PostgresTableWriter {
    fn write(&mut self, batch: RecordBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if batch.schema() != self.schema {
                return Err(Error::SchemaMismatch {
                    table: self.source_table.to_string(),
                });
            }
            self.encoder.encode(&batch, &mut self.buffer)?;
            self.rows += batch.num_rows() as u64;
            if self.buffer.len() >= SEND_CHUNK {
                self.send_buffer().await?;
            }
            Ok(())
        })
    }

    fn bytes_written(&self) -> u64 {
        self.bytes + self.buffer.len() as u64
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<TableOutput>> {
        Box::pin(async move {
            let error = self.error();
            self.encoder.finish(&mut self.buffer);
            self.send_buffer().await?;
            let copy = self.copy.take().ok_or(Error::InvalidConfig {
                reason: "the table writer is already finished",
            })?;
            let loaded = copy.finish().await.map_err(&error)?;
            if loaded != self.rows {
                return Err(Error::RowCount {
                    table: self.target.to_string(),
                    expected: self.rows,
                    found: loaded,
                });
            }
            // The swap: all or nothing.
            let mut transaction = self.pool.begin().await.map_err(&error)?;
            let mut rename = format!("ALTER TABLE {} RENAME TO ", self.quoted_staging);
            push_identifier(&mut rename, &self.target.name);
            for statement in [
                format!("DROP TABLE IF EXISTS {}", self.quoted_target),
                rename,
            ] {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *transaction)
                    .await
                    .map_err(&error)?;
            }
            transaction.commit().await.map_err(&error)?;
            let mut output = TableOutput {
                table: self.source_table.clone(),
                run_id: self.run_id.clone(),
                files: Vec::new(),
                rows: self.rows,
                bytes: self.bytes,
                manifest: String::new(),
            };
            output.manifest = self.target.to_string();
            Ok(output)
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let error = self.error();
            if let Some(copy) = self.copy.take() {
                // The server answers a failed COPY with an error: that is the expected reply.
                let _ = copy.abort("load aborted").await;
            }
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {}",
                self.quoted_staging
            )))
            .execute(&self.pool)
            .await
            .map_err(error)?;
            Ok(())
        })
    }
}

/// A staging table name unique to the target and run, within PostgreSQL's 63 bytes.
fn staging_name(target: &TableRef, run_id: &str) -> String {
    let mut hasher = DefaultHasher::new();
    (&target.schema, &target.name, run_id).hash(&mut hasher);
    format!("_tidegate_{:016x}", hasher.finish())
}

fn qualified(schema: &str, name: &str) -> String {
    let mut sql = String::new();
    push_identifier(&mut sql, schema);
    sql.push('.');
    push_identifier(&mut sql, name);
    sql
}
