//! [`PostgresApplySink`]: changes merged into PostgreSQL tables.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{RowConverter, SortField};
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};
use tidegate_replicate::postgres::{BinaryCopyEncoder, TypeCatalog, postgres_type};
use tidegate_replicate::{CopySummary, PostgresSink, PostgresSinkConfig, Sink, TableRef};

use crate::changes::{ChangeBatch, OLD_COLUMN_PREFIX, OP_COLUMN, RelationSchema, UNCHANGED_COLUMN};
use crate::error::{Error, Result};
use crate::kept::{KeptTransactions, ipc_bytes};
use crate::lsn::Lsn;
use crate::sink::{ChangeSink, Checkpoint, CommitGroup, TableDescription, TableState};

/// Staged batches of at least this many rows are analysed before they are merged.
const ANALYZE_ROWS: usize = 1_000;

/// Staging column: the segment a row belongs to.
const SEGMENT_COLUMN: &str = "_tg_seg";

/// How a [`PostgresApplySink`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplySinkConfig {
    /// The task whose checkpoint row this sink keeps.
    pub task_id: String,
    /// Apply every table into this schema instead of the source table's own (as
    /// [`PostgresSinkConfig::schema`] does for the initial load).
    pub schema: Option<String>,
    /// The checkpoint table, created if missing. Default `tidegate.cdc_checkpoint`.
    pub checkpoint_table: TableRef,
    /// Tables loaded at once by the initial load. Default 2.
    pub load_parallel_tables: u32,
    /// Change rows gathered (over all tables) before they are merged, so that many small
    /// transactions are merged with a few statements. Default 20,000.
    pub merge_rows: usize,
}

impl ApplySinkConfig {
    /// Defaults for task `task_id`.
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            schema: None,
            checkpoint_table: TableRef::new("tidegate", "cdc_checkpoint"),
            load_parallel_tables: 2,
            merge_rows: 20_000,
        }
    }

    /// Sets [`schema`](Self::schema).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// A [`ChangeSink`] merging changes into PostgreSQL tables, with the checkpoint in the
/// same transaction.
///
/// For each commit group one target transaction:
///
/// 1. per change batch, the rows go with binary `COPY` into a temporary staging table (one
///    per table and schema version), split into *segments* in which no key appears twice, so
///    that the order of rows inside a segment does not matter; a truncate is a segment of its
///    own;
/// 2. per segment, in order: `DELETE … USING` the staged deletes (matched on the old key),
///    `UPDATE … FROM` the staged updates (matched on the old key when the key changed, else
///    the key; an unchanged TOASTed value keeps the target's value through
///    `CASE WHEN i = ANY (_tg_unchanged)`), `INSERT … ON CONFLICT (key) DO UPDATE` the staged
///    inserts; `TRUNCATE` for a truncate;
/// 3. on commit, the checkpoint row (task id → position, last commit LSN) is upserted and the
///    transaction committed: data and checkpoint are durable together or not at all.
///
/// An update that finds no row fails the group ([`Error::TargetDiverged`]): the target was
/// changed behind the task's back, and inserting the row would set its unchanged TOAST
/// values to null.
///
/// Schema: the target table is created if missing; a unique index on the key is added if
/// none exists (the initial load creates tables without constraints). Columns new at the
/// source are added (`ADD COLUMN`); a column whose type widened (`smallint` → `integer` →
/// `bigint`, `real` → `double precision`, `numeric` to more digits at the same scale) is
/// altered; any other type change is refused ([`Error::SchemaChange`]). Columns dropped at
/// the source stay in the target (null in new rows) — so a rename becomes a new column, the
/// old one keeping the values it had. Values captured in text form are cast to the target
/// column's type.
pub struct PostgresApplySink {
    options: PgConnectOptions,
    server: String,
    config: ApplySinkConfig,
    snapshot: Arc<PostgresSink>,
    connection: Option<PgConnection>,
    in_transaction: bool,
    tables: HashMap<u32, ApplyTable>,
    /// Batches accepted and not yet merged, per table in order of arrival.
    pending: Vec<(u32, Vec<RecordBatch>)>,
    pending_rows: usize,
    /// Streamed transactions not committed yet, whose batches are kept at the target.
    streamed: KeptTransactions,
}

impl fmt::Debug for PostgresApplySink {
    // The options hold the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresApplySink")
            .field("server", &self.server)
            .field("config", &self.config)
            .field("tables", &self.tables.len())
            .field("in_transaction", &self.in_transaction)
            .finish_non_exhaustive()
    }
}

/// One table's target and the statements that merge its staged rows.
#[derive(Debug)]
struct ApplyTable {
    schema: Arc<RelationSchema>,
    /// The key's column names.
    key: Vec<String>,
    target: TableRef,
    quoted: String,
    stage: String,
    /// Indexes into the batch's columns of the key's new and old values.
    key_columns: Vec<usize>,
    old_key_columns: Vec<usize>,
    /// The staging batch's schema.
    stage_schema: Arc<Schema>,
    /// Indexes into the change batch of the columns staged after the segment column.
    staged: Vec<usize>,
    delete: String,
    update: String,
    insert: String,
}

impl PostgresApplySink {
    /// Connects to the target at `url`.
    pub async fn connect(url: &str, config: ApplySinkConfig) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|_| Error::InvalidConfig {
            reason: "the target PostgreSQL URL does not parse",
        })?;
        Self::connect_with(options, config).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(options: PgConnectOptions, config: ApplySinkConfig) -> Result<Self> {
        let options = options.application_name("tidegate-cdc");
        let server = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let mut load = PostgresSinkConfig::default();
        load.schema = config.schema.clone();
        let snapshot =
            PostgresSink::connect_with(options.clone(), load, config.load_parallel_tables)
                .await
                .map_err(|source| Error::Replicate {
                    what: "the initial load",
                    source,
                })?;
        let mut sink = Self {
            options,
            server,
            config,
            snapshot: Arc::new(snapshot),
            connection: None,
            in_transaction: false,
            tables: HashMap::new(),
            pending: Vec::new(),
            pending_rows: 0,
            streamed: KeptTransactions::default(),
        };
        let mut ddl = String::from("CREATE SCHEMA IF NOT EXISTS ");
        push_identifier(&mut ddl, &sink.config.checkpoint_table.schema);
        ddl.push_str("; CREATE TABLE IF NOT EXISTS ");
        ddl.push_str(&sink.checkpoint_table());
        ddl.push_str(
            " (task_id text PRIMARY KEY, lsn pg_lsn NOT NULL, last_commit_lsn pg_lsn, \
             updated_at timestamptz NOT NULL DEFAULT now()); CREATE TABLE IF NOT EXISTS ",
        );
        ddl.push_str(&sink.table_state_table());
        ddl.push_str(
            " (task_id text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL, \
             failure text, resynced_at pg_lsn, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (task_id, table_schema, table_name)); CREATE TABLE IF NOT EXISTS ",
        );
        ddl.push_str(&sink.stream_table());
        ddl.push_str(
            " (task_id text NOT NULL, xid bigint NOT NULL, seq bigint NOT NULL, \
             relation_oid bigint NOT NULL, version bigint NOT NULL, batch bytea NOT NULL, \
             PRIMARY KEY (task_id, xid, seq))",
        );
        let error = sink.error("creating the checkpoint tables");
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(sink.connection().await?)
            .await
            .map_err(error)?;
        Ok(sink)
    }

    fn checkpoint_table(&self) -> String {
        qualified(&self.config.checkpoint_table)
    }

    /// Beside the checkpoint table: `<checkpoint table>_tables`, the tables' own states.
    fn table_state_table(&self) -> String {
        let checkpoint = &self.config.checkpoint_table;
        qualified(&TableRef::new(
            checkpoint.schema.clone(),
            format!("{}_tables", checkpoint.name),
        ))
    }

    /// Beside the checkpoint table: `<checkpoint table>_stream`, the batches of streamed
    /// transactions not committed yet (Arrow IPC).
    fn stream_table(&self) -> String {
        let checkpoint = &self.config.checkpoint_table;
        qualified(&TableRef::new(
            checkpoint.schema.clone(),
            format!("{}_stream", checkpoint.name),
        ))
    }

    /// Keeps a batch of a streamed transaction in the stream table, inside the open group.
    async fn keep_streamed(&mut self, batch: ChangeBatch) -> Result<()> {
        let bytes = ipc_bytes(&batch)?;
        let relation = &batch.relation;
        let seq = self.streamed.keep(&batch);
        let sql = format!(
            "INSERT INTO {} (task_id, xid, seq, relation_oid, version, batch) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            self.stream_table()
        );
        let task_id = self.config.task_id.clone();
        let error = self.error("keeping a streamed transaction's changes");
        sqlx::query(AssertSqlSafe(sql))
            .bind(task_id)
            .bind(i64::from(batch.xid))
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(i64::from(relation.oid))
            .bind(i64::from(relation.version))
            .bind(bytes)
            .execute(self.transaction().await?)
            .await
            .map_err(error)?;
        Ok(())
    }

    /// Deletes the kept batches of streamed transaction `xid` (all of the task's with `None`).
    async fn forget_streamed(&mut self, xid: Option<u32>) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE task_id = $1 AND ($2::int8 IS NULL OR xid = $2)",
            self.stream_table()
        );
        let task_id = self.config.task_id.clone();
        let error = self.error("forgetting a streamed transaction's changes");
        let connection = if self.in_transaction || xid.is_some() {
            self.transaction().await?
        } else {
            self.connection().await?
        };
        sqlx::query(AssertSqlSafe(sql))
            .bind(task_id)
            .bind(xid.map(i64::from))
            .execute(connection)
            .await
            .map_err(error)?;
        Ok(())
    }

    /// Streamed transaction `xid` committed: its kept batches join the open group.
    async fn commit_streamed(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        skip: &[TableRef],
    ) -> Result<u64> {
        let Some(transaction) = self.streamed.take(xid) else {
            return Ok(0);
        };
        let sql = format!(
            "SELECT seq, relation_oid, version, batch FROM {} \
             WHERE task_id = $1 AND xid = $2 AND seq >= $3 ORDER BY seq LIMIT 8",
            self.stream_table()
        );
        let mut rows = 0;
        let mut next = 0i64;
        loop {
            let task_id = self.config.task_id.clone();
            let error = self.error("reading a streamed transaction's changes");
            let kept: Vec<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(AssertSqlSafe(sql.clone()))
                .bind(task_id)
                .bind(i64::from(xid))
                .bind(next)
                .fetch_all(self.transaction().await?)
                .await
                .map_err(error)?;
            if kept.is_empty() {
                break;
            }
            for (seq, oid, version, bytes) in kept {
                next = seq + 1;
                let key = (
                    u32::try_from(oid).unwrap_or_default(),
                    u32::try_from(version).unwrap_or_default(),
                );
                let Some((relation, batch)) = transaction.read(key, &bytes, skip)? else {
                    continue;
                };
                self.ensure_version(&relation).await?;
                rows += batch.num_rows() as u64;
                self.accept(ChangeBatch {
                    relation,
                    xid,
                    commit_lsn: Some(commit_lsn),
                    streamed: false,
                    batch,
                })
                .await?;
            }
        }
        self.forget_streamed(Some(xid)).await?;
        Ok(rows)
    }

    /// Describes `relation` again if the sink follows another version of the table by now
    /// (a later transaction changed it while this one was streamed).
    async fn ensure_version(&mut self, relation: &Arc<RelationSchema>) -> Result<()> {
        let Some(current) = self.tables.get(&relation.oid) else {
            return Err(Error::UnexpectedEvent {
                reason: "a streamed batch of a table not described to the sink",
            });
        };
        if current.schema.version == relation.version {
            return Ok(());
        }
        let description = TableDescription {
            schema: Arc::clone(relation),
            previous: Some(Arc::clone(&current.schema)),
            key: Some(current.key.clone()),
        };
        self.describe(&description)
            .await
            .map_err(|error| table_error(relation.table.clone(), error))
    }

    /// Upserts `table`'s state row outside any commit group.
    async fn set_table_state(
        &mut self,
        table: &TableRef,
        failure: Option<&str>,
        resynced_at: Option<Lsn>,
    ) -> Result<()> {
        if self.in_transaction {
            return Err(Error::UnexpectedEvent {
                reason: "a table state written while a commit group is open",
            });
        }
        // A failure keeps the last resync point; a resync clears the failure.
        let sql = format!(
            "INSERT INTO {} AS s (task_id, table_schema, table_name, failure, resynced_at) \
             VALUES ($1, $2, $3, $4, $5::pg_lsn) ON CONFLICT (task_id, table_schema, table_name) \
             DO UPDATE SET failure = EXCLUDED.failure, \
             resynced_at = coalesce(EXCLUDED.resynced_at, s.resynced_at), updated_at = now()",
            self.table_state_table()
        );
        let task_id = self.config.task_id.clone();
        let error = self.error("recording a table's state");
        sqlx::query(AssertSqlSafe(sql))
            .bind(task_id)
            .bind(&table.schema)
            .bind(&table.name)
            .bind(failure)
            .bind(resynced_at.map(|lsn| lsn.to_string()))
            .execute(self.connection().await?)
            .await
            .map_err(error)?;
        Ok(())
    }

    fn error(&self, what: &'static str) -> impl Fn(sqlx::Error) -> Error + use<> {
        let target = self.server.clone();
        move |source| Error::Target {
            target: target.clone(),
            what,
            source,
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection> {
        if self.connection.is_none() {
            let connection = self
                .options
                .connect()
                .await
                .map_err(self.error("connecting"))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("set above"))
    }

    /// The open group's transaction.
    async fn transaction(&mut self) -> Result<&mut PgConnection> {
        let error = self.error("starting a transaction");
        let begin = !self.in_transaction;
        let connection = self.connection().await?;
        if begin {
            sqlx::raw_sql("BEGIN")
                .execute(&mut *connection)
                .await
                .map_err(error)?;
        }
        self.in_transaction = true;
        Ok(self.connection.as_mut().expect("connected above"))
    }

    fn target_of(&self, table: &TableRef) -> TableRef {
        TableRef::new(
            self.config
                .schema
                .clone()
                .unwrap_or_else(|| table.schema.clone()),
            table.name.clone(),
        )
    }

    async fn describe(&mut self, description: &TableDescription) -> Result<()> {
        let schema = &description.schema;
        let table_name = schema.table.to_string();
        let Some(key) = &description.key else {
            return Err(Error::NoApplyKey { table: table_name });
        };
        if self
            .tables
            .get(&schema.oid)
            .is_some_and(|table| table.schema.version == schema.version)
        {
            return Ok(());
        }
        // Rows gathered under the previous version are merged with its statements.
        self.merge_table(schema.oid).await?;
        let target = self.target_of(&schema.table);
        let quoted = qualified(&target);
        let error = {
            let target = format!("{target}");
            move |what: &'static str| {
                let target = target.clone();
                move |source| Error::Target {
                    target: target.clone(),
                    what,
                    source,
                }
            }
        };
        let connection = self.transaction().await?;
        let columns = target_columns(connection, &quoted)
            .await
            .map_err(error("reading the target table's columns"))?;
        let fields: Vec<&Field> = schema
            .columns
            .iter()
            .filter_map(|column| schema.schema.field_with_name(&column.name).ok())
            .collect();
        if columns.is_none() {
            let mut ddl = String::from("CREATE SCHEMA IF NOT EXISTS ");
            push_identifier(&mut ddl, &target.schema);
            ddl.push_str("; CREATE TABLE ");
            ddl.push_str(&quoted);
            ddl.push_str(" (");
            for (index, field) in fields.iter().enumerate() {
                if index > 0 {
                    ddl.push_str(", ");
                }
                push_identifier(&mut ddl, field.name());
                ddl.push(' ');
                ddl.push_str(&column_type(&table_name, field)?);
            }
            ddl.push(')');
            sqlx::raw_sql(AssertSqlSafe(ddl))
                .execute(&mut *connection)
                .await
                .map_err(error("creating the target table"))?;
        } else if let Some(columns) = &columns {
            let mut catalog = TypeCatalog::new();
            catalog
                .load(connection, columns.iter().map(|column| column.type_oid))
                .await
                .map_err(error("reading the target's column types"))?;
            for field in &fields {
                let ddl = match columns.iter().find(|column| column.name == *field.name()) {
                    None => {
                        let mut ddl = format!("ALTER TABLE {quoted} ADD COLUMN ");
                        push_identifier(&mut ddl, field.name());
                        ddl.push(' ');
                        ddl.push_str(&column_type(&table_name, field)?);
                        tracing::info!(table = %target, column = %field.name(), "target column added");
                        ddl
                    }
                    Some(existing) => {
                        let current = catalog
                            .native_type(existing.type_oid, existing.type_modifier)
                            .map(|pg_type| pg_type.data_type());
                        match type_change(current.as_ref(), field.data_type()) {
                            TypeChange::Same => continue,
                            TypeChange::Widen => {
                                let mut ddl = format!("ALTER TABLE {quoted} ALTER COLUMN ");
                                push_identifier(&mut ddl, field.name());
                                ddl.push_str(" TYPE ");
                                ddl.push_str(&column_type(&table_name, field)?);
                                tracing::info!(table = %target, column = %field.name(), "target column widened");
                                ddl
                            }
                            TypeChange::Refused(reason) => {
                                return Err(Error::SchemaChange {
                                    table: table_name,
                                    column: field.name().clone(),
                                    reason,
                                });
                            }
                        }
                    }
                };
                sqlx::raw_sql(AssertSqlSafe(ddl))
                    .execute(&mut *connection)
                    .await
                    .map_err(error("changing the target table's columns"))?;
            }
        }
        ensure_unique_key(connection, &quoted, key)
            .await
            .map_err(error("adding a unique index on the key"))?;

        // Types to cast staged values to: the target's.
        let columns = target_columns(connection, &quoted)
            .await
            .map_err(error("reading the target table's columns"))?
            .unwrap_or_default();
        let target_type = |name: &str| -> Result<String> {
            columns
                .iter()
                .find(|column| column.name == name)
                .map(|column| column.formatted.clone())
                .ok_or_else(|| Error::SchemaChange {
                    table: table_name.clone(),
                    column: name.to_owned(),
                    reason: "the target table has no such column",
                })
        };
        let batch_schema = &schema.schema;
        let index_of = |name: &str| {
            batch_schema
                .index_of(name)
                .map_err(|_| Error::SchemaChange {
                    table: table_name.clone(),
                    column: name.to_owned(),
                    reason: "a key column is not among the replica identity's old values",
                })
        };
        let mut key_columns = Vec::with_capacity(key.len());
        let mut old_key_columns = Vec::with_capacity(key.len());
        for name in key {
            key_columns.push(index_of(name)?);
            old_key_columns.push(index_of(&format!("{OLD_COLUMN_PREFIX}{name}"))?);
        }

        // The staging table: segment, op, unchanged (as int2[]), the columns, the old key.
        let mut staged = vec![index_of(OP_COLUMN)?, index_of(UNCHANGED_COLUMN)?];
        let data_start = staged.len();
        for column in &schema.columns {
            staged.push(index_of(&column.name)?);
        }
        staged.extend(old_key_columns.iter().copied());
        let mut stage_fields = vec![Field::new(SEGMENT_COLUMN, DataType::Int32, false)];
        for &index in &staged {
            let field = batch_schema.field(index);
            if field.name() == UNCHANGED_COLUMN {
                stage_fields.push(Field::new(UNCHANGED_COLUMN, unchanged_type(), false));
            } else {
                stage_fields.push(field.clone());
            }
        }
        let stage_schema = Arc::new(Schema::new(stage_fields));
        let stage = format!("pg_temp.\"_tg_stage_{}_{}\"", schema.oid, schema.version);
        let mut ddl = format!("CREATE TEMP TABLE IF NOT EXISTS {stage} (");
        for (index, field) in stage_schema.fields().iter().enumerate() {
            if index > 0 {
                ddl.push_str(", ");
            }
            push_identifier(&mut ddl, field.name());
            ddl.push(' ');
            ddl.push_str(&column_type(&table_name, field)?);
        }
        ddl.push(')');
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&mut *connection)
            .await
            .map_err(error("creating the staging table"))?;

        // The merge statements.
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let key_match = |new_side: bool| -> Result<String> {
            let mut sql = String::new();
            for (index, name) in key.iter().enumerate() {
                if index > 0 {
                    sql.push_str(" AND ");
                }
                sql.push_str("t.");
                push_identifier(&mut sql, name);
                sql.push_str(" = ");
                let old = format!("s.{}", quote(&format!("{OLD_COLUMN_PREFIX}{name}")));
                if new_side {
                    sql.push_str(&format!("COALESCE({old}, s.{})", quote(name)));
                } else {
                    sql.push_str(&old);
                }
                sql.push_str("::");
                sql.push_str(&target_type(name)?);
            }
            Ok(sql)
        };
        let delete = format!(
            "DELETE FROM {quoted} AS t USING {stage} AS s \
             WHERE s.{SEGMENT_COLUMN} = $1 AND s.{OP_COLUMN} = 'delete' AND {}",
            key_match(false)?
        );
        let mut sets = String::new();
        for (index, name) in names.iter().enumerate() {
            if index > 0 {
                sets.push_str(", ");
            }
            let column = quote(name);
            sets.push_str(&format!(
                "{column} = CASE WHEN {index} = ANY (s.{UNCHANGED_COLUMN}) THEN t.{column} \
                 ELSE s.{column}::{} END",
                target_type(name)?
            ));
        }
        let update = format!(
            "UPDATE {quoted} AS t SET {sets} FROM {stage} AS s \
             WHERE s.{SEGMENT_COLUMN} = $1 AND s.{OP_COLUMN} = 'update' AND {}",
            key_match(true)?
        );
        let column_list = names
            .iter()
            .map(|name| quote(name))
            .collect::<Vec<_>>()
            .join(", ");
        let values = names
            .iter()
            .map(|name| Ok(format!("s.{}::{}", quote(name), target_type(name)?)))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let key_list = key
            .iter()
            .map(|name| quote(name))
            .collect::<Vec<_>>()
            .join(", ");
        let updates: Vec<String> = names
            .iter()
            .filter(|name| !key.iter().any(|key| key == *name))
            .map(|name| format!("{0} = EXCLUDED.{0}", quote(name)))
            .collect();
        let conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let insert = format!(
            "INSERT INTO {quoted} AS t ({column_list}) SELECT {values} FROM {stage} AS s \
             WHERE s.{SEGMENT_COLUMN} = $1 AND s.{OP_COLUMN} = 'insert' \
             ON CONFLICT ({key_list}) {conflict}"
        );
        let _ = data_start;
        tracing::debug!(table = %target, version = schema.version, "target table ready");
        self.tables.insert(
            schema.oid,
            ApplyTable {
                schema: Arc::clone(schema),
                key: key.clone(),
                target,
                quoted,
                stage,
                key_columns,
                old_key_columns,
                stage_schema,
                staged,
                delete,
                update,
                insert,
            },
        );
        Ok(())
    }

    async fn accept(&mut self, batch: ChangeBatch) -> Result<()> {
        let oid = batch.relation.oid;
        let version_ok = self
            .tables
            .get(&oid)
            .is_some_and(|table| table.schema.version == batch.relation.version);
        if !version_ok {
            return Err(Error::UnexpectedEvent {
                reason: "a change batch of a table version not described to the sink",
            });
        }
        self.pending_rows += batch.batch.num_rows();
        match self.pending.iter_mut().find(|(pending, _)| *pending == oid) {
            Some((_, batches)) => batches.push(batch.batch),
            None => self.pending.push((oid, vec![batch.batch])),
        }
        if self.pending_rows >= self.config.merge_rows {
            self.merge_all().await?;
        }
        Ok(())
    }

    async fn merge_all(&mut self) -> Result<()> {
        let oids: Vec<u32> = self.pending.iter().map(|(oid, _)| *oid).collect();
        for oid in oids {
            self.merge_table(oid).await?;
        }
        self.pending_rows = 0;
        Ok(())
    }

    /// Merges the batches gathered for table `oid`, in order, as one.
    async fn merge_table(&mut self, oid: u32) -> Result<()> {
        let Some(position) = self.pending.iter().position(|(pending, _)| *pending == oid) else {
            return Ok(());
        };
        let (_, batches) = self.pending.remove(position);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.pending_rows = self.pending_rows.saturating_sub(rows);
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let batch =
            arrow::compute::concat_batches(&first.schema(), &batches).map_err(|source| {
                Error::Arrow {
                    table: oid.to_string(),
                    source,
                }
            })?;
        drop(batches);
        let table = self
            .tables
            .get(&oid)
            .map(|table| table.schema.table.clone());
        let merged = self.merge(oid, batch).await;
        match table {
            Some(table) => merged.map_err(|error| table_error(table, error)),
            None => merged,
        }
    }

    async fn merge(&mut self, oid: u32, batch: RecordBatch) -> Result<()> {
        self.transaction().await?;
        let Some(table) = self.tables.get(&oid) else {
            return Err(Error::UnexpectedEvent {
                reason: "a change batch of a table not described to the sink",
            });
        };
        let connection = self.connection.as_mut().expect("transaction open");
        let target = table.target.to_string();
        let error = |what: &'static str| {
            let target = target.clone();
            move |source| Error::Target {
                target: target.clone(),
                what,
                source,
            }
        };
        let plan = segments(table, &batch)?;
        let staged = stage_batch(table, &batch, &plan.segment_of)?;
        let mut encoder =
            BinaryCopyEncoder::new(target.clone(), &table.stage_schema).map_err(|source| {
                Error::Replicate {
                    what: "staging changes",
                    source,
                }
            })?;
        let mut buffer = Vec::new();
        encoder
            .encode(&staged, &mut buffer)
            .map_err(|source| Error::Replicate {
                what: "staging changes",
                source,
            })?;
        encoder.finish(&mut buffer);
        let copy_sql = format!("COPY {} FROM STDIN (FORMAT binary)", table.stage);
        let mut copy = connection
            .copy_in_raw(&copy_sql)
            .await
            .map_err(error("staging changes"))?;
        copy.send(buffer.as_slice())
            .await
            .map_err(error("staging changes"))?;
        copy.finish().await.map_err(error("staging changes"))?;
        if staged.num_rows() >= ANALYZE_ROWS {
            // Without statistics the planner may scan the target instead of using its key.
            sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", table.stage)))
                .execute(&mut *connection)
                .await
                .map_err(error("analysing the staged changes"))?;
        }

        for (number, segment) in plan.segments.iter().enumerate() {
            let number = i32::try_from(number).unwrap_or(i32::MAX);
            if segment.truncate {
                sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {}", table.quoted)))
                    .execute(&mut *connection)
                    .await
                    .map_err(error("truncating"))?;
                continue;
            }
            if segment.deletes > 0 {
                sqlx::query(AssertSqlSafe(table.delete.clone()))
                    .bind(number)
                    .execute(&mut *connection)
                    .await
                    .map_err(error("deleting rows"))?;
            }
            if segment.updates > 0 {
                let updated = sqlx::query(AssertSqlSafe(table.update.clone()))
                    .bind(number)
                    .execute(&mut *connection)
                    .await
                    .map_err(error("updating rows"))?
                    .rows_affected();
                if updated < segment.updates {
                    return Err(Error::TargetDiverged {
                        table: target,
                        reason: "rows updated at the source are missing at the target",
                        count: segment.updates - updated,
                    });
                }
            }
            if segment.inserts > 0 {
                sqlx::query(AssertSqlSafe(table.insert.clone()))
                    .bind(number)
                    .execute(&mut *connection)
                    .await
                    .map_err(error("inserting rows"))?;
            }
        }
        sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {}", table.stage)))
            .execute(&mut *connection)
            .await
            .map_err(error("clearing the staging table"))?;
        Ok(())
    }

    async fn commit_group(&mut self, group: &CommitGroup) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} AS c (task_id, lsn, last_commit_lsn) VALUES ($1, $2::pg_lsn, $3::pg_lsn) \
             ON CONFLICT (task_id) DO UPDATE SET lsn = EXCLUDED.lsn, \
             last_commit_lsn = EXCLUDED.last_commit_lsn, updated_at = now()",
            self.checkpoint_table()
        );
        let task_id = self.config.task_id.clone();
        let error = self.error("committing a group with its checkpoint");
        self.merge_all().await?;
        let connection = self.transaction().await?;
        sqlx::query(AssertSqlSafe(sql))
            .bind(task_id)
            .bind(group.checkpoint.lsn.to_string())
            .bind(group.checkpoint.last_commit_lsn.map(|lsn| lsn.to_string()))
            .execute(&mut *connection)
            .await
            .map_err(&error)?;
        sqlx::raw_sql("COMMIT")
            .execute(&mut *connection)
            .await
            .map_err(&error)?;
        self.in_transaction = false;
        Ok(())
    }
}

impl ChangeSink for PostgresApplySink {
    fn needs_key(&self) -> bool {
        true
    }

    fn checkpoint(&mut self) -> BoxFuture<'_, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            // Streaming starts again from the checkpoint: the server sends every transaction
            // not committed before it again, streamed ones from their first block.
            self.forget_streamed(None).await?;
            let sql = format!(
                "SELECT lsn::text, last_commit_lsn::text FROM {} WHERE task_id = $1",
                self.checkpoint_table()
            );
            let task_id = self.config.task_id.clone();
            let error = self.error("reading the checkpoint");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(task_id)
                .fetch_optional(self.connection().await?)
                .await
                .map_err(&error)?;
            let Some(row) = row else { return Ok(None) };
            let lsn: String = row.try_get(0).map_err(&error)?;
            let last: Option<String> = row.try_get(1).map_err(&error)?;
            let parse = |text: &str| {
                text.parse::<Lsn>().map_err(|_| Error::InvalidConfig {
                    reason: "the checkpoint table holds a position that is not an LSN",
                })
            };
            Ok(Some(Checkpoint::new(
                parse(&lsn)?,
                last.as_deref().map(parse).transpose()?,
            )))
        })
    }

    fn snapshot_sink(&self) -> Arc<dyn Sink> {
        Arc::clone(&self.snapshot) as Arc<dyn Sink>
    }

    fn snapshot_loaded<'a>(
        &'a mut self,
        consistent_point: Lsn,
        _load: &'a CopySummary,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let group = CommitGroup {
                checkpoint: Checkpoint::new(consistent_point, None),
                transactions: 0,
                rows: 0,
            };
            self.commit_group(&group).await
        })
    }

    fn relation<'a>(&'a mut self, table: &'a TableDescription) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.describe(table)
                .await
                .map_err(|error| table_error(table.schema.table.clone(), error))
        })
    }

    fn write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.accept(batch))
    }

    fn commit<'a>(&'a mut self, group: &'a CommitGroup) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.commit_group(group))
    }

    fn isolates_tables(&self) -> bool {
        true
    }

    fn takes_streamed(&self) -> bool {
        true
    }

    fn stream_write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.keep_streamed(batch))
    }

    fn stream_abort(&mut self, xid: u32, subxid: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.streamed.abort(xid, subxid) {
                Some(_) => self.forget_streamed(Some(xid)).await,
                None => Ok(()),
            }
        })
    }

    fn stream_commit<'a>(
        &'a mut self,
        xid: u32,
        commit_lsn: Lsn,
        skip: &'a [TableRef],
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.commit_streamed(xid, commit_lsn, skip))
    }

    fn table_states(&mut self) -> BoxFuture<'_, Result<Vec<TableState>>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT table_schema, table_name, failure, resynced_at::text FROM {} \
                 WHERE task_id = $1 ORDER BY 1, 2",
                self.table_state_table()
            );
            let task_id = self.config.task_id.clone();
            let error = self.error("reading the tables' states");
            let rows: Vec<(String, String, Option<String>, Option<String>)> =
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(task_id)
                    .fetch_all(self.connection().await?)
                    .await
                    .map_err(error)?;
            rows.into_iter()
                .map(|(schema, name, failure, resynced_at)| {
                    let resynced_at = resynced_at
                        .map(|lsn| {
                            lsn.parse::<Lsn>().map_err(|_| Error::InvalidConfig {
                                reason: "the table state table holds a position that is not an LSN",
                            })
                        })
                        .transpose()?;
                    Ok(TableState::new(
                        TableRef::new(schema, name),
                        failure,
                        resynced_at,
                    ))
                })
                .collect()
        })
    }

    fn table_failed<'a>(
        &'a mut self,
        table: &'a TableRef,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.set_table_state(table, Some(error), None))
    }

    fn table_resynced<'a>(
        &'a mut self,
        table: &'a TableRef,
        consistent_point: Lsn,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.set_table_state(table, None, Some(consistent_point)))
    }

    fn abort(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Closing the connection rolls back; temporary tables go with it.
            if let Some(connection) = self.connection.take() {
                let _ = sqlx::Connection::close(connection).await;
            }
            self.in_transaction = false;
            self.tables.clear();
            self.pending.clear();
            self.pending_rows = 0;
            self.streamed.clear();
            Ok(())
        })
    }
}

/// `error`, as the failure of `table` alone (unless it already names a table).
fn table_error(table: TableRef, error: Error) -> Error {
    match error {
        Error::Table { .. } => error,
        other => Error::Table {
            table,
            source: Box::new(other),
        },
    }
}

/// A target column.
#[derive(Debug)]
struct TargetColumn {
    name: String,
    type_oid: u32,
    type_modifier: i32,
    /// `format_type`: the type as SQL spells it, for casts.
    formatted: String,
}

/// The columns of table `quoted`, or `None` if it does not exist.
async fn target_columns(
    connection: &mut PgConnection,
    quoted: &str,
) -> sqlx::Result<Option<Vec<TargetColumn>>> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(quoted)
        .fetch_one(&mut *connection)
        .await?;
    let Some(oid) = oid else { return Ok(None) };
    let rows = sqlx::query(
        "SELECT attname::text, atttypid::int8, atttypmod, format_type(atttypid, atttypmod) \
         FROM pg_attribute WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(&mut *connection)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(TargetColumn {
                name: row.try_get(0)?,
                type_oid: u32::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                type_modifier: row.try_get(2)?,
                formatted: row.try_get(3)?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()
        .map(Some)
}

/// Adds a primary key (or, if the table has another one, a unique index) on `key` unless a
/// unique index on exactly those columns exists.
async fn ensure_unique_key(
    connection: &mut PgConnection,
    quoted: &str,
    key: &[String],
) -> sqlx::Result<()> {
    let rows = sqlx::query(
        "SELECT i.indisprimary, \
                array(SELECT a.attname::text FROM unnest(i.indkey) AS k(attnum) \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
         FROM pg_index i \
         WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid \
           AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(quoted)
    .fetch_all(&mut *connection)
    .await?;
    let wanted: HashSet<&str> = key.iter().map(String::as_str).collect();
    let mut has_primary = false;
    for row in rows {
        let primary: bool = row.try_get(0)?;
        let columns: Vec<String> = row.try_get(1)?;
        has_primary |= primary;
        if columns.len() == wanted.len() && columns.iter().all(|c| wanted.contains(c.as_str())) {
            return Ok(());
        }
    }
    let key_list = key
        .iter()
        .map(|name| quote(name))
        .collect::<Vec<_>>()
        .join(", ");
    let ddl = if has_primary {
        format!("CREATE UNIQUE INDEX ON {quoted} ({key_list})")
    } else {
        format!("ALTER TABLE {quoted} ADD PRIMARY KEY ({key_list})")
    };
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(connection)
        .await?;
    Ok(())
}

/// How a target column's type relates to the type changes now arrive with.
enum TypeChange {
    Same,
    Widen,
    Refused(&'static str),
}

fn type_change(current: Option<&DataType>, new: &DataType) -> TypeChange {
    use DataType::{Decimal128, Float32, Float64, Int16, Int32, Int64, Utf8};
    let Some(current) = current else {
        // A target type without an Arrow counterpart: values are cast to it.
        return TypeChange::Same;
    };
    match (current, new) {
        (a, b) if a == b => TypeChange::Same,
        // Values captured in text form are cast to the target's type.
        (_, Utf8) => TypeChange::Same,
        (Int16, Int32 | Int64) | (Int32, Int64) | (Float32, Float64) => TypeChange::Widen,
        (Decimal128(p1, s1), Decimal128(p2, s2)) if s1 == s2 && p2 >= p1 => TypeChange::Widen,
        (Int32 | Int64, Int16) | (Int64, Int32) | (Float64, Float32) => {
            TypeChange::Refused("its type was narrowed at the source")
        }
        (Decimal128(..), Decimal128(..)) => {
            TypeChange::Refused("its numeric precision or scale changed other than widening")
        }
        _ => TypeChange::Refused("its type changed to one the target column cannot hold"),
    }
}

fn unchanged_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true)))
}

fn column_type(table: &str, field: &Field) -> Result<String> {
    postgres_type(field).ok_or_else(|| Error::UnsupportedColumn {
        table: table.to_owned(),
        column: field.name().clone(),
        reason: "its Arrow type has no PostgreSQL column type",
    })
}

/// Statements a segment runs.
#[derive(Debug, Default)]
struct Segment {
    truncate: bool,
    deletes: u64,
    updates: u64,
    inserts: u64,
}

#[derive(Debug)]
struct SegmentPlan {
    segments: Vec<Segment>,
    /// Per row, its segment.
    segment_of: Vec<i32>,
}

/// Splits a batch into segments in which no key is touched twice.
fn segments(table: &ApplyTable, batch: &RecordBatch) -> Result<SegmentPlan> {
    let arrow_error = |source| Error::Arrow {
        table: table.target.to_string(),
        source,
    };
    let fields = |columns: &[usize]| -> Vec<SortField> {
        columns
            .iter()
            .map(|&index| SortField::new(batch.schema().field(index).data_type().clone()))
            .collect()
    };
    let converter = RowConverter::new(fields(&table.key_columns)).map_err(arrow_error)?;
    let pick = |columns: &[usize]| -> Vec<ArrayRef> {
        columns
            .iter()
            .map(|&index| Arc::clone(batch.column(index)))
            .collect()
    };
    let new_keys = converter
        .convert_columns(&pick(&table.key_columns))
        .map_err(arrow_error)?;
    let old_arrays = pick(&table.old_key_columns);
    let old_keys = converter
        .convert_columns(&old_arrays)
        .map_err(arrow_error)?;
    let ops = batch
        .column_by_name(OP_COLUMN)
        .and_then(|column| column.as_string_opt::<i32>())
        .ok_or(Error::UnexpectedEvent {
            reason: "a change batch without its operation column",
        })?;

    let mut segments = vec![Segment::default()];
    let mut segment_of = Vec::with_capacity(batch.num_rows());
    let mut touched = HashSet::new();
    for row in 0..batch.num_rows() {
        let has_old = old_arrays.first().is_some_and(|array| array.is_valid(row));
        let op = ops.value(row);
        if op == "truncate" {
            segments.push(Segment {
                truncate: true,
                ..Segment::default()
            });
            segment_of.push(segment_number(segments.len() - 1));
            segments.push(Segment::default());
            touched.clear();
            continue;
        }
        let mut keys = Vec::with_capacity(2);
        match op {
            "insert" => keys.push(new_keys.row(row)),
            "update" => {
                keys.push(new_keys.row(row));
                if has_old {
                    keys.push(old_keys.row(row));
                }
            }
            "delete" => keys.push(old_keys.row(row)),
            _ => {
                return Err(Error::UnexpectedEvent {
                    reason: "an unknown operation in a change batch",
                });
            }
        }
        keys.dedup();
        if keys.iter().any(|key| touched.contains(key)) {
            segments.push(Segment::default());
            touched.clear();
        }
        touched.extend(keys);
        let last = segments.len() - 1;
        let segment = &mut segments[last];
        match op {
            "insert" => segment.inserts += 1,
            "update" => segment.updates += 1,
            _ => segment.deletes += 1,
        }
        segment_of.push(segment_number(last));
    }
    Ok(SegmentPlan {
        segments,
        segment_of,
    })
}

fn segment_number(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// The staging batch: segment, then the staged columns (`_tg_unchanged` as `int2[]`).
fn stage_batch(table: &ApplyTable, batch: &RecordBatch, segment_of: &[i32]) -> Result<RecordBatch> {
    let arrow_error = |source| Error::Arrow {
        table: table.target.to_string(),
        source,
    };
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(segment_of.to_vec()))];
    for &index in &table.staged {
        let column = batch.column(index);
        if batch.schema().field(index).name() == UNCHANGED_COLUMN {
            columns.push(arrow::compute::cast(column, &unchanged_type()).map_err(arrow_error)?);
        } else {
            columns.push(Arc::clone(column));
        }
    }
    RecordBatch::try_new(Arc::clone(&table.stage_schema), columns).map_err(arrow_error)
}

fn quote(name: &str) -> String {
    let mut sql = String::new();
    push_identifier(&mut sql, name);
    sql
}

fn qualified(table: &TableRef) -> String {
    let mut sql = String::new();
    push_identifier(&mut sql, &table.schema);
    sql.push('.');
    push_identifier(&mut sql, &table.name);
    sql
}

fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_widening_type_changes_are_followed() {
        use DataType::{Date32, Decimal128, Float32, Float64, Int16, Int32, Int64, Utf8};
        let cases = [
            (Some(Int32), Int32, "same"),
            (Some(Int16), Int32, "widen"),
            (Some(Int32), Int64, "widen"),
            (Some(Float32), Float64, "widen"),
            (Some(Decimal128(10, 2)), Decimal128(12, 2), "widen"),
            (Some(Int64), Int32, "refused"),
            (Some(Float64), Float32, "refused"),
            (Some(Decimal128(10, 2)), Decimal128(10, 3), "refused"),
            (Some(Int32), Date32, "refused"),
            // Text-form values are cast to whatever the target column is.
            (Some(Int64), Utf8, "same"),
            (None, Int64, "same"),
        ];
        for (current, new, expected) in cases {
            let got = match type_change(current.as_ref(), &new) {
                TypeChange::Same => "same",
                TypeChange::Widen => "widen",
                TypeChange::Refused(_) => "refused",
            };
            assert_eq!(got, expected, "{current:?} -> {new:?}");
        }
    }
}
