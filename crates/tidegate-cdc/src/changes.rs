//! From `pgoutput` messages to change events with Arrow record batches, without I/O.
//!
//! [`ChangeDecoder`] keeps, per table, the column set the last Relation message described
//! (a [`RelationSchema`], versioned) and Arrow builders its rows are decoded into, value by
//! value, with the binary decoders of the full-load source
//! ([`tidegate_replicate::postgres::BinaryValueDecoder`]). Rows become a
//! [`ChangeBatch`] when a table's builder holds [`BatchConfig::batch_rows`] rows, when all
//! builders together hold [`BatchConfig::batch_bytes`] bytes, and at every transaction or
//! stream-block boundary: memory stays bounded whatever the size of a transaction.
//!
//! Batch layout: the metadata columns [`OP_COLUMN`], [`LSN_COLUMN`], [`COMMIT_TS_COLUMN`],
//! [`XID_COLUMN`] and [`UNCHANGED_COLUMN`], then the table's columns, then the old key (or,
//! with `REPLICA IDENTITY FULL`, the old row) as [`OLD_COLUMN_PREFIX`]`<name>`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, ListBuilder, StringBuilder, TimestampMicrosecondBuilder, UInt16Builder,
    UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tidegate_replicate::TableRef;
use tidegate_replicate::postgres::{BinaryValueDecoder, PgType, TypeCatalog};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pgoutput::{
    self, Message, OldKind, PgTimestamp, Relation, ReplicaIdentity, TupleColumn, TupleData,
};

/// Metadata column: `insert`, `update`, `delete` or `truncate`.
pub const OP_COLUMN: &str = "_tg_op";
/// Metadata column: the WAL position of the change (`UInt64`).
pub const LSN_COLUMN: &str = "_tg_lsn";
/// Metadata column: the commit time (UTC); null in streamed transactions, whose commit is
/// not known yet (see [`ChangeEvent::Commit`]).
pub const COMMIT_TS_COLUMN: &str = "_tg_commit_ts";
/// Metadata column: the transaction id; in a streamed transaction, the subtransaction's, so
/// that a [`ChangeEvent::StreamAbort`] of a subtransaction tells which rows to drop.
pub const XID_COLUMN: &str = "_tg_xid";
/// Metadata column: the indexes (into the table's columns, from 0) of the values an update
/// left unchanged and the server did not send (TOASTed values). Those values are null in the
/// batch but are *not* null in the table: a sink takes them from the target's current row.
pub const UNCHANGED_COLUMN: &str = "_tg_unchanged";
/// Prefix of the old-key columns.
pub const OLD_COLUMN_PREFIX: &str = "_tg_old_";
/// Column names with this prefix are refused: they would collide with the metadata.
pub const RESERVED_PREFIX: &str = "_tg_";
/// Leading metadata columns in every change batch.
pub const METADATA_COLUMNS: usize = 5;

/// How changes are gathered into batches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// A table's batch is emitted once it holds this many rows. Default 8,192.
    pub batch_rows: usize,
    /// All pending batches are emitted once they hold this many bytes together (measured on
    /// the wire). Default 16 MiB.
    pub batch_bytes: usize,
    /// Values arrive in binary form (`binary 'true'`); otherwise in text form, and every
    /// column is captured as `Utf8`. Default `true`.
    pub binary: bool,
}

impl BatchConfig {
    /// Sets [`batch_rows`](Self::batch_rows).
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }

    /// Sets [`batch_bytes`](Self::batch_bytes).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }

    /// Sets [`binary`](Self::binary).
    pub fn with_binary(mut self, binary: bool) -> Self {
        self.binary = binary;
        self
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_rows: 8_192,
            batch_bytes: 16 << 20,
            binary: true,
        }
    }
}

/// One captured column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedColumn {
    /// The column's name.
    pub name: String,
    /// Its type's oid.
    pub type_oid: u32,
    /// Its type modifier.
    pub type_modifier: i32,
    /// Part of the replica identity.
    pub is_key: bool,
    /// How its values decode (`Text` for every column in text mode).
    pub pg_type: PgType,
}

/// A table's captured columns as of one Relation message, and the layout of its batches.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationSchema {
    /// The table's oid.
    pub oid: u32,
    /// The table.
    pub table: TableRef,
    /// Counts from 1; goes up whenever a Relation message changes the table's name, replica
    /// identity or columns.
    pub version: u32,
    /// Its replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Its columns, in order.
    pub columns: Vec<CapturedColumn>,
    /// Indexes into `columns` of those carried as old values: the key columns, or every
    /// column with `REPLICA IDENTITY FULL`.
    pub old_columns: Vec<usize>,
    /// The schema of its change batches.
    pub schema: SchemaRef,
}

impl RelationSchema {
    /// Names of columns in `self` that `previous` lacks, of columns `previous` had that
    /// `self` lacks, and of columns in both whose type changed.
    pub fn diff(&self, previous: &RelationSchema) -> SchemaDiff {
        let find = |columns: &[CapturedColumn], name: &str| {
            columns.iter().find(|column| column.name == name).cloned()
        };
        let mut diff = SchemaDiff::default();
        for column in &self.columns {
            match find(&previous.columns, &column.name) {
                None => diff.added.push(column.name.clone()),
                Some(old)
                    if old.type_oid != column.type_oid
                        || old.type_modifier != column.type_modifier =>
                {
                    diff.retyped.push(column.name.clone())
                }
                Some(_) => {}
            }
        }
        for column in &previous.columns {
            if find(&self.columns, &column.name).is_none() {
                diff.dropped.push(column.name.clone());
            }
        }
        diff
    }
}

/// How a table's columns changed between two schema versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaDiff {
    /// New columns.
    pub added: Vec<String>,
    /// Columns gone (dropped, or renamed: a rename shows as one dropped and one added).
    pub dropped: Vec<String>,
    /// Columns whose type or modifier changed.
    pub retyped: Vec<String>,
}

/// Rows of one table, decoded.
#[derive(Clone)]
pub struct ChangeBatch {
    /// The table and the version of its schema the rows have.
    pub relation: Arc<RelationSchema>,
    /// The (top-level) transaction.
    pub xid: u32,
    /// The LSN the transaction commits at; `None` in a streamed transaction, which has not
    /// committed yet.
    pub commit_lsn: Option<Lsn>,
    /// Part of a streamed transaction (apply only after its [`ChangeEvent::Commit`]).
    pub streamed: bool,
    /// The rows: [`RelationSchema::schema`].
    pub batch: RecordBatch,
}

impl fmt::Debug for ChangeBatch {
    // Never the rows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeBatch")
            .field("table", &self.relation.table)
            .field("version", &self.relation.version)
            .field("xid", &self.xid)
            .field("commit_lsn", &self.commit_lsn)
            .field("streamed", &self.streamed)
            .field("rows", &self.batch.num_rows())
            .finish()
    }
}

/// What the change stream reports, in the order the server sent it.
///
/// A transaction is `Begin`, its `Changes` (and any `Relation`), `Commit`. A streamed
/// transaction comes in blocks, `StreamStart`, `Changes`…, `StreamStop`, possibly interleaved
/// with other transactions, and ends with `Commit` (`streamed: true`) or `StreamAbort`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChangeEvent {
    /// A transaction starts.
    Begin {
        /// Its id.
        xid: u32,
        /// Where it will commit.
        commit_lsn: Lsn,
        /// When it committed.
        commit_time: PgTimestamp,
    },
    /// A table was described for the first time in this stream, or its description changed
    /// (`previous` is then the version before; see [`RelationSchema::diff`]). Batches that
    /// follow have the new schema.
    Relation {
        /// The new version.
        schema: Arc<RelationSchema>,
        /// The version it replaces.
        previous: Option<Arc<RelationSchema>>,
    },
    /// Decoded rows.
    Changes(ChangeBatch),
    /// A transaction committed. Acknowledge `end_lsn` once everything before it is durable
    /// at the target.
    Commit {
        /// Its id.
        xid: u32,
        /// The commit record's LSN.
        commit_lsn: Lsn,
        /// The position to acknowledge.
        end_lsn: Lsn,
        /// When it committed.
        commit_time: PgTimestamp,
        /// It was streamed in blocks before it committed.
        streamed: bool,
    },
    /// A block of streamed transaction `xid` starts.
    StreamStart {
        /// The transaction.
        xid: u32,
        /// Its first block.
        first_segment: bool,
    },
    /// The block of streamed transaction `xid` ends.
    StreamStop {
        /// The transaction.
        xid: u32,
    },
    /// Streamed transaction `xid` (when `subxid == xid`) or its subtransaction `subxid` was
    /// rolled back: drop its rows (those whose [`XID_COLUMN`] is `subxid`).
    StreamAbort {
        /// The transaction.
        xid: u32,
        /// The transaction rolled back.
        subxid: u32,
    },
    /// A message written with `pg_logical_emit_message`.
    Message {
        /// Part of a transaction, or sent at once.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The server has sent everything up to `wal_end`.
    Keepalive {
        /// The server's position.
        wal_end: Lsn,
    },
}

/// What [`ChangeDecoder::decode`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Decoded; its events were appended.
    Done,
    /// A Relation message names types whose catalog entries are missing: load them into
    /// [`ChangeDecoder::catalog_mut`], then decode the same message again.
    NeedTypes(Vec<u32>),
}

/// The context of the transaction a change belongs to.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    xid: u32,
    commit_lsn: Option<Lsn>,
    commit_time: Option<PgTimestamp>,
    streamed: bool,
}

/// Decodes `pgoutput` messages into [`ChangeEvent`]s. Pure: the caller brings the bytes and
/// the type catalog.
///
/// After an error the decoder's state is undefined: drop it and restart the stream from the
/// last acknowledged position.
#[derive(Debug)]
pub struct ChangeDecoder {
    config: BatchConfig,
    catalog: TypeCatalog,
    relations: HashMap<u32, RelationState>,
    /// The open (non-streamed) transaction.
    transaction: Option<Transaction>,
    /// The transaction of the open stream block.
    stream_block: Option<u32>,
    /// Streamed transactions started and not yet committed or aborted.
    open_streams: HashSet<u32>,
    /// Bytes held in all builders.
    buffered: usize,
}

impl ChangeDecoder {
    /// A decoder gathering rows as `config` says.
    pub fn new(config: BatchConfig) -> Result<Self> {
        if config.batch_rows == 0 || config.batch_bytes == 0 {
            return Err(Error::InvalidConfig {
                reason: "batch_rows and batch_bytes must be at least 1",
            });
        }
        Ok(Self {
            config,
            catalog: TypeCatalog::new(),
            relations: HashMap::new(),
            transaction: None,
            stream_block: None,
            open_streams: HashSet::new(),
            buffered: 0,
        })
    }

    /// The type catalog column types are resolved through.
    pub fn catalog_mut(&mut self) -> &mut TypeCatalog {
        &mut self.catalog
    }

    /// Whether a transaction, stream block or streamed transaction is open: changes have
    /// been seen whose commit (or abort) has not.
    pub fn has_open_transactions(&self) -> bool {
        self.transaction.is_some() || self.stream_block.is_some() || !self.open_streams.is_empty()
    }

    /// Whether a stream block is open: the next data messages carry their transaction id.
    pub fn in_stream_block(&self) -> bool {
        self.stream_block.is_some()
    }

    /// The current schema of table `oid`, if described.
    pub fn relation(&self, oid: u32) -> Option<&Arc<RelationSchema>> {
        self.relations.get(&oid).map(|state| &state.schema)
    }

    /// Decodes one `pgoutput` message received at `wal_start`, appending its events to `out`.
    pub fn decode(
        &mut self,
        wal_start: Lsn,
        data: &[u8],
        out: &mut VecDeque<ChangeEvent>,
    ) -> Result<Progress> {
        let message = pgoutput::decode(data, self.stream_block.is_some())?;
        match message {
            Message::Begin(begin) => {
                if self.transaction.is_some() || self.stream_block.is_some() {
                    return Err(sequence("Begin inside a transaction"));
                }
                self.transaction = Some(Transaction {
                    xid: begin.xid,
                    commit_lsn: Some(begin.final_lsn),
                    commit_time: Some(begin.commit_time),
                    streamed: false,
                });
                out.push_back(ChangeEvent::Begin {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    commit_time: begin.commit_time,
                });
            }
            Message::Commit(commit) => {
                let Some(transaction) = self.transaction else {
                    return Err(sequence("Commit without Begin"));
                };
                self.flush_all(out)?;
                self.transaction = None;
                out.push_back(ChangeEvent::Commit {
                    xid: transaction.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                    streamed: false,
                });
            }
            Message::StreamStart(start) => {
                if self.transaction.is_some() || self.stream_block.is_some() {
                    return Err(sequence("Stream Start inside a transaction"));
                }
                self.stream_block = Some(start.xid);
                self.open_streams.insert(start.xid);
                out.push_back(ChangeEvent::StreamStart {
                    xid: start.xid,
                    first_segment: start.first_segment,
                });
            }
            Message::StreamStop => {
                let Some(xid) = self.stream_block else {
                    return Err(sequence("Stream Stop without Stream Start"));
                };
                self.flush_all(out)?;
                self.stream_block = None;
                out.push_back(ChangeEvent::StreamStop { xid });
            }
            Message::StreamCommit(commit) => {
                if self.transaction.is_some() || self.stream_block.is_some() {
                    return Err(sequence("Stream Commit inside a transaction"));
                }
                self.open_streams.remove(&commit.xid);
                out.push_back(ChangeEvent::Commit {
                    xid: commit.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                    streamed: true,
                });
            }
            Message::StreamAbort(abort) => {
                if abort.subxid == abort.xid {
                    self.open_streams.remove(&abort.xid);
                }
                out.push_back(ChangeEvent::StreamAbort {
                    xid: abort.xid,
                    subxid: abort.subxid,
                });
            }
            Message::Relation(relation) => return self.relation_message(relation, out),
            Message::Insert(insert) => {
                let (context, row_xid) = self.context(insert.xid)?;
                let state = self.state(insert.relation)?;
                let added = state.append(
                    Op::Insert,
                    wal_start,
                    &context,
                    row_xid,
                    Some(&insert.new),
                    None,
                )?;
                self.after_append(insert.relation, added, &context, out)?;
            }
            Message::Update(update) => {
                let (context, row_xid) = self.context(update.xid)?;
                let state = self.state(update.relation)?;
                let old = update.old.as_ref().map(|(kind, tuple)| (*kind, tuple));
                let added = state.append(
                    Op::Update,
                    wal_start,
                    &context,
                    row_xid,
                    Some(&update.new),
                    old,
                )?;
                self.after_append(update.relation, added, &context, out)?;
            }
            Message::Delete(delete) => {
                let (context, row_xid) = self.context(delete.xid)?;
                let state = self.state(delete.relation)?;
                let old = Some((delete.old.0, &delete.old.1));
                let added = state.append(Op::Delete, wal_start, &context, row_xid, None, old)?;
                self.after_append(delete.relation, added, &context, out)?;
            }
            Message::Truncate(truncate) => {
                let (context, row_xid) = self.context(truncate.xid)?;
                for oid in truncate.relations() {
                    let state = self.state(oid)?;
                    let added =
                        state.append(Op::Truncate, wal_start, &context, row_xid, None, None)?;
                    self.after_append(oid, added, &context, out)?;
                }
            }
            Message::Message(message) => out.push_back(ChangeEvent::Message {
                transactional: message.transactional,
                lsn: message.lsn,
                prefix: message.prefix.to_owned(),
                content: Bytes::copy_from_slice(message.content),
            }),
            // Type names are resolved through the catalog; origins are not tracked.
            Message::Type(_) | Message::Origin(_) => {}
        }
        Ok(Progress::Done)
    }

    /// The transaction a change belongs to, and the xid its row carries.
    fn context(&self, message_xid: Option<u32>) -> Result<(Transaction, u32)> {
        if let Some(xid) = self.stream_block {
            let transaction = Transaction {
                xid,
                commit_lsn: None,
                commit_time: None,
                streamed: true,
            };
            return Ok((transaction, message_xid.unwrap_or(xid)));
        }
        match self.transaction {
            Some(transaction) => Ok((transaction, transaction.xid)),
            None => Err(sequence("a change outside a transaction")),
        }
    }

    fn state(&mut self, oid: u32) -> Result<&mut RelationState> {
        self.relations
            .get_mut(&oid)
            .ok_or(Error::UnknownRelation { oid })
    }

    /// Counts the bytes of a row just appended and emits batches that are full.
    fn after_append(
        &mut self,
        oid: u32,
        added: usize,
        context: &Transaction,
        out: &mut VecDeque<ChangeEvent>,
    ) -> Result<()> {
        self.buffered += added;
        let batch_rows = self.config.batch_rows;
        if let Some(state) = self.relations.get_mut(&oid)
            && state.rows >= batch_rows
        {
            let bytes = state.bytes;
            if let Some(batch) = state.finish(context)? {
                out.push_back(ChangeEvent::Changes(batch));
            }
            self.buffered -= bytes;
        }
        if self.buffered >= self.config.batch_bytes {
            self.flush_with(context, out)?;
        }
        Ok(())
    }

    /// Emits every pending batch, in the current transaction's context.
    fn flush_all(&mut self, out: &mut VecDeque<ChangeEvent>) -> Result<()> {
        if self.buffered == 0 && self.relations.values().all(|state| state.rows == 0) {
            return Ok(());
        }
        let (context, _) = self.context(None)?;
        self.flush_with(&context, out)
    }

    fn flush_with(&mut self, context: &Transaction, out: &mut VecDeque<ChangeEvent>) -> Result<()> {
        // In oid order, so that output does not depend on hashing.
        let mut oids: Vec<u32> = self
            .relations
            .iter()
            .filter(|(_, state)| state.rows > 0)
            .map(|(oid, _)| *oid)
            .collect();
        oids.sort_unstable();
        for oid in oids {
            if let Some(state) = self.relations.get_mut(&oid)
                && let Some(batch) = state.finish(context)?
            {
                out.push_back(ChangeEvent::Changes(batch));
            }
        }
        self.buffered = 0;
        Ok(())
    }

    fn relation_message(
        &mut self,
        relation: Relation,
        out: &mut VecDeque<ChangeEvent>,
    ) -> Result<Progress> {
        let table = TableRef::new(relation.namespace.clone(), relation.name.clone());
        if self.config.binary {
            let mut missing: Vec<u32> = relation
                .columns
                .iter()
                .map(|column| column.type_oid)
                .filter(|oid| !self.catalog.is_resolvable(*oid))
                .collect();
            if !missing.is_empty() {
                missing.sort_unstable();
                missing.dedup();
                return Ok(Progress::NeedTypes(missing));
            }
        }
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            if column.name.starts_with(RESERVED_PREFIX) {
                return Err(Error::UnsupportedColumn {
                    table: table.to_string(),
                    column: column.name.clone(),
                    reason: "names starting with _tg_ are reserved for change metadata",
                });
            }
            let pg_type = if self.config.binary {
                self.catalog
                    .native_type(column.type_oid, column.type_modifier)
                    .ok_or_else(|| Error::UnsupportedColumn {
                        table: table.to_string(),
                        column: column.name.clone(),
                        reason: "its type has no exact binary decoding into Arrow; \
                                 capture this publication with values in text form",
                    })?
            } else {
                PgType::Text
            };
            columns.push(CapturedColumn {
                name: column.name.clone(),
                type_oid: column.type_oid,
                type_modifier: column.type_modifier,
                is_key: column.is_key,
                pg_type,
            });
        }
        let old_columns: Vec<usize> = match relation.replica_identity {
            ReplicaIdentity::Full => (0..columns.len()).collect(),
            ReplicaIdentity::Nothing => Vec::new(),
            _ => (0..columns.len()).filter(|&i| columns[i].is_key).collect(),
        };
        let previous = self
            .relations
            .get(&relation.oid)
            .map(|state| Arc::clone(&state.schema));
        if let Some(previous) = &previous
            && previous.table == table
            && previous.replica_identity == relation.replica_identity
            && previous.columns == columns
        {
            // The same description again (sent after every reconnect): nothing changed.
            return Ok(Progress::Done);
        }
        // Rows decoded under the previous version go out with it.
        let pending = self
            .relations
            .get(&relation.oid)
            .is_some_and(|state| state.rows > 0);
        if pending
            && let (context, _) = self.context(None)?
            && let Some(state) = self.relations.get_mut(&relation.oid)
        {
            let bytes = state.bytes;
            if let Some(batch) = state.finish(&context)? {
                out.push_back(ChangeEvent::Changes(batch));
            }
            self.buffered -= bytes;
        }
        let schema = Arc::new(RelationSchema {
            oid: relation.oid,
            version: previous.as_ref().map_or(1, |previous| previous.version + 1),
            schema: batch_schema(&columns, &old_columns),
            table,
            replica_identity: relation.replica_identity,
            columns,
            old_columns,
        });
        match &previous {
            Some(previous) => {
                let diff = schema.diff(previous);
                tracing::info!(
                    table = %schema.table,
                    version = schema.version,
                    added = diff.added.len(),
                    dropped = diff.dropped.len(),
                    retyped = diff.retyped.len(),
                    "table schema changed"
                );
            }
            None => tracing::debug!(table = %schema.table, oid = schema.oid, "table described"),
        }
        // Builders start small and grow with the table's traffic: thousands of described
        // tables must not each hold a full batch's worth of memory.
        let capacity = self.config.batch_rows.min(128);
        self.relations.insert(
            relation.oid,
            RelationState::new(Arc::clone(&schema), self.config.binary, capacity),
        );
        out.push_back(ChangeEvent::Relation { schema, previous });
        Ok(Progress::Done)
    }
}

fn sequence(reason: &'static str) -> Error {
    Error::Decode(pgoutput::DecodeError {
        message: "stream",
        reason,
    })
}

/// The Arrow schema of a table's change batches.
fn batch_schema(columns: &[CapturedColumn], old_columns: &[usize]) -> SchemaRef {
    let mut fields = vec![
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::UInt64, false),
        Field::new(
            COMMIT_TS_COLUMN,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(XID_COLUMN, DataType::UInt32, false),
        Field::new(
            UNCHANGED_COLUMN,
            DataType::List(Arc::new(Field::new_list_field(DataType::UInt16, true))),
            false,
        ),
    ];
    fields.extend(
        columns
            .iter()
            .map(|column| column.pg_type.field(&column.name, true)),
    );
    fields.extend(old_columns.iter().map(|&index| {
        let column = &columns[index];
        column
            .pg_type
            .field(&format!("{OLD_COLUMN_PREFIX}{}", column.name), true)
    }));
    Arc::new(Schema::new(fields))
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One table's schema and the builders of its pending rows.
#[derive(Debug)]
struct RelationState {
    schema: Arc<RelationSchema>,
    binary: bool,
    op: StringBuilder,
    lsn: UInt64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    xid: UInt32Builder,
    unchanged: ListBuilder<UInt16Builder>,
    values: Vec<BinaryValueDecoder>,
    old: Vec<BinaryValueDecoder>,
    rows: usize,
    bytes: usize,
}

impl RelationState {
    fn new(schema: Arc<RelationSchema>, binary: bool, capacity: usize) -> Self {
        let values = schema
            .columns
            .iter()
            .map(|column| BinaryValueDecoder::new(&column.pg_type, &column.name, capacity))
            .collect();
        let old = schema
            .old_columns
            .iter()
            .map(|&index| {
                let column = &schema.columns[index];
                BinaryValueDecoder::new(
                    &column.pg_type,
                    &format!("{OLD_COLUMN_PREFIX}{}", column.name),
                    capacity,
                )
            })
            .collect();
        Self {
            schema,
            binary,
            op: StringBuilder::with_capacity(capacity, capacity * 8),
            lsn: UInt64Builder::with_capacity(capacity),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            xid: UInt32Builder::with_capacity(capacity),
            unchanged: ListBuilder::new(UInt16Builder::new())
                .with_field(Field::new_list_field(DataType::UInt16, true)),
            values,
            old,
            rows: 0,
            bytes: 0,
        }
    }

    fn invalid(&self, column: usize, reason: &'static str) -> Error {
        Error::InvalidValue {
            table: self.schema.table.to_string(),
            column: self
                .schema
                .columns
                .get(column)
                .map_or_else(String::new, |column| column.name.clone()),
            reason,
        }
    }

    /// Appends one row; returns the bytes it counts for.
    fn append(
        &mut self,
        op: Op,
        wal_start: Lsn,
        context: &Transaction,
        row_xid: u32,
        new: Option<&TupleData<'_>>,
        old: Option<(OldKind, &TupleData<'_>)>,
    ) -> Result<usize> {
        let width = self.schema.columns.len();
        for tuple in new.iter().copied().chain(old.map(|(_, tuple)| tuple)) {
            if tuple.len() != width {
                return Err(Error::UnsupportedColumn {
                    table: self.schema.table.to_string(),
                    column: String::new(),
                    reason: "a change has a different number of columns than its relation",
                });
            }
        }
        match new {
            Some(tuple) => {
                for (index, column) in tuple.columns().enumerate() {
                    match column {
                        TupleColumn::Null => self.values[index].append_null(),
                        TupleColumn::UnchangedToast => {
                            self.values[index].append_null();
                            // Column counts fit in 16 bits (pgoutput sends them as Int16).
                            self.unchanged.values().append_value(index as u16);
                        }
                        TupleColumn::Text(value) | TupleColumn::Binary(value) => {
                            self.check_form(index, &column)?;
                            if let Err(error) = self.values[index].append(value) {
                                return Err(self.invalid(index, error.reason()));
                            }
                        }
                    }
                }
            }
            None => self
                .values
                .iter_mut()
                .for_each(BinaryValueDecoder::append_null),
        }
        self.unchanged.append(true);
        match old {
            Some((_, tuple)) => {
                let mut wanted = self.schema.old_columns.iter().enumerate().peekable();
                for (index, column) in tuple.columns().enumerate() {
                    let Some(&(slot, _)) = wanted.peek().filter(|(_, at)| **at == index) else {
                        continue;
                    };
                    wanted.next();
                    match column {
                        TupleColumn::Null => self.old[slot].append_null(),
                        TupleColumn::UnchangedToast => {
                            return Err(
                                self.invalid(index, "an unchanged TOAST value in an old row")
                            );
                        }
                        TupleColumn::Text(value) | TupleColumn::Binary(value) => {
                            self.check_form(index, &column)?;
                            if let Err(error) = self.old[slot].append(value) {
                                return Err(self.invalid(index, error.reason()));
                            }
                        }
                    }
                }
            }
            None => self
                .old
                .iter_mut()
                .for_each(BinaryValueDecoder::append_null),
        }
        self.op.append_value(op.name());
        self.lsn.append_value(wal_start.as_u64());
        self.commit_ts
            .append_option(context.commit_time.and_then(PgTimestamp::unix_micros));
        self.xid.append_value(row_xid);
        self.rows += 1;
        let added =
            16 + new.map_or(0, TupleData::byte_len) + old.map_or(0, |(_, tuple)| tuple.byte_len());
        self.bytes += added;
        Ok(added)
    }

    /// A value's form must be the one the column decodes: binary in binary mode (text and
    /// json, whose binary form is their text, accept both), text in text mode.
    fn check_form(&self, index: usize, column: &TupleColumn<'_>) -> Result<()> {
        let pg_type = &self.schema.columns[index].pg_type;
        let ok = match column {
            TupleColumn::Binary(_) => self.binary || matches!(pg_type, PgType::Text | PgType::Json),
            TupleColumn::Text(_) => !self.binary || matches!(pg_type, PgType::Text | PgType::Json),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(self.invalid(
                index,
                "a value in a form (text or binary) the stream did not ask for",
            ))
        }
    }

    /// Takes the pending rows as a batch.
    fn finish(&mut self, context: &Transaction) -> Result<Option<ChangeBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.schema.fields().len());
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        arrays.push(Arc::new(self.unchanged.finish()));
        for index in 0..self.values.len() {
            let array = self.values[index]
                .finish()
                .map_err(|error| self.invalid(index, error.reason()))?;
            arrays.push(array);
        }
        for slot in 0..self.old.len() {
            let index = self.schema.old_columns[slot];
            let array = self.old[slot]
                .finish()
                .map_err(|error| self.invalid(index, error.reason()))?;
            arrays.push(array);
        }
        self.rows = 0;
        self.bytes = 0;
        let batch =
            RecordBatch::try_new(Arc::clone(&self.schema.schema), arrays).map_err(|source| {
                Error::Arrow {
                    table: self.schema.table.to_string(),
                    source,
                }
            })?;
        Ok(Some(ChangeBatch {
            relation: Arc::clone(&self.schema),
            xid: context.xid,
            commit_lsn: context.commit_lsn,
            streamed: context.streamed,
            batch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Int32Type, UInt16Type, UInt32Type};

    use super::*;
    use crate::pgoutput::encode::{Column, MessageBuilder};

    const REL: u32 = 16384;

    /// `orders (id int4 key, note text, amount numeric(12, 2))`, identity as given.
    fn relation(identity: u8, in_stream: Option<u32>) -> Vec<u8> {
        let mut message = MessageBuilder::new(b'R');
        if let Some(xid) = in_stream {
            message = message.u32(xid);
        }
        message
            .u32(REL)
            .cstr("public")
            .cstr("orders")
            .u8(identity)
            .i16(3)
            .u8(1)
            .cstr("id")
            .u32(23)
            .u32(u32::MAX)
            .u8(0)
            .cstr("note")
            .u32(25)
            .u32(u32::MAX)
            .u8(0)
            .cstr("amount")
            .u32(1700)
            .u32((12 << 16 | 2) + 4)
            .build()
    }

    fn begin(xid: u32) -> Vec<u8> {
        MessageBuilder::new(b'B')
            .u64(0x100)
            .u64(1000)
            .u32(xid)
            .build()
    }

    fn commit() -> Vec<u8> {
        MessageBuilder::new(b'C')
            .u8(0)
            .u64(0x100)
            .u64(0x110)
            .u64(1000)
            .build()
    }

    /// 12.50 as a binary numeric.
    const AMOUNT: [u8; 12] = [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88];

    fn row<'a>(id: &'a [u8; 4], note: Column<'a>) -> [Column<'a>; 3] {
        [Some(Some((b'b', id))), note, Some(Some((b'b', &AMOUNT)))]
    }

    fn insert(id: i32, in_stream: Option<u32>) -> Vec<u8> {
        let id = id.to_be_bytes();
        let mut message = MessageBuilder::new(b'I');
        if let Some(xid) = in_stream {
            message = message.u32(xid);
        }
        message
            .u32(REL)
            .u8(b'N')
            .tuple(&row(&id, Some(Some((b'b', b"note")))))
            .build()
    }

    fn feed(decoder: &mut ChangeDecoder, messages: &[Vec<u8>]) -> Vec<ChangeEvent> {
        let mut out = VecDeque::new();
        for (index, message) in messages.iter().enumerate() {
            let progress = decoder
                .decode(Lsn::new(0x10 + index as u64), message, &mut out)
                .unwrap();
            assert_eq!(progress, Progress::Done);
        }
        out.into_iter().collect()
    }

    fn batches(events: &[ChangeEvent]) -> Vec<&ChangeBatch> {
        events
            .iter()
            .filter_map(|event| match event {
                ChangeEvent::Changes(batch) => Some(batch),
                _ => None,
            })
            .collect()
    }

    fn decoder() -> ChangeDecoder {
        ChangeDecoder::new(BatchConfig::default()).unwrap()
    }

    #[test]
    fn a_transaction_becomes_begin_relation_batch_commit() {
        let mut decoder = decoder();
        let key_old = [Some(Some((b'b', &1i32.to_be_bytes()[..]))), None, None];
        let update = MessageBuilder::new(b'U')
            .u32(REL)
            .u8(b'K')
            .tuple(&key_old)
            .u8(b'N')
            .tuple(&row(&2i32.to_be_bytes(), Some(None)))
            .build();
        let delete = MessageBuilder::new(b'D')
            .u32(REL)
            .u8(b'K')
            .tuple(&key_old)
            .build();
        let truncate = MessageBuilder::new(b'T').u32(1).u8(0).u32(REL).build();
        let events = feed(
            &mut decoder,
            &[
                begin(7),
                relation(b'd', None),
                insert(1, None),
                update,
                delete,
                truncate,
                commit(),
            ],
        );
        assert!(matches!(events[0], ChangeEvent::Begin { xid: 7, .. }));
        assert!(matches!(
            events[1],
            ChangeEvent::Relation { previous: None, .. }
        ));
        assert!(matches!(
            events.last(),
            Some(ChangeEvent::Commit {
                xid: 7,
                streamed: false,
                ..
            })
        ));
        let batches = batches(&events);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!((batch.xid, batch.commit_lsn), (7, Some(Lsn::new(0x100))));
        let rows = &batch.batch;
        assert_eq!(rows.num_rows(), 4);
        let ops: Vec<_> = rows.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(ops, ["insert", "update", "delete", "truncate"]);
        let ids = rows
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int32Type>();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Some(1), Some(2), None, None]
        );
        let old = rows
            .column_by_name("_tg_old_id")
            .unwrap()
            .as_primitive::<Int32Type>();
        assert_eq!(
            old.iter().collect::<Vec<_>>(),
            [None, Some(1), Some(1), None]
        );
        let amounts = rows
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        assert_eq!(amounts.value(0), 1250);
        // The update left `note` (column 1) unchanged: null, and listed.
        let notes = rows.column_by_name("note").unwrap();
        assert!(notes.is_null(1));
        let unchanged = rows
            .column_by_name(UNCHANGED_COLUMN)
            .unwrap()
            .as_list::<i32>();
        let listed = |row: usize| -> Vec<u16> {
            unchanged
                .value(row)
                .as_primitive::<UInt16Type>()
                .values()
                .to_vec()
        };
        assert_eq!(listed(0), Vec::<u16>::new());
        assert_eq!(listed(1), [1]);
        let lsns = rows.column_by_name(LSN_COLUMN).unwrap();
        assert_eq!(lsns.null_count(), 0);
        assert!(!decoder.has_open_transactions());
    }

    #[test]
    fn batches_are_bounded_by_rows_and_bytes() {
        let mut decoder = ChangeDecoder::new(BatchConfig::default().with_batch_rows(2)).unwrap();
        let mut messages = vec![begin(1), relation(b'd', None)];
        messages.extend((0..5).map(|id| insert(id, None)));
        messages.push(commit());
        let events = feed(&mut decoder, &messages);
        let sizes: Vec<_> = batches(&events)
            .iter()
            .map(|batch| batch.batch.num_rows())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);

        let mut decoder = ChangeDecoder::new(BatchConfig::default().with_batch_bytes(100)).unwrap();
        let events = feed(&mut decoder, &messages);
        let sizes: Vec<_> = batches(&events)
            .iter()
            .map(|batch| batch.batch.num_rows())
            .collect();
        assert!(sizes.iter().all(|&rows| rows <= 2), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 5);
    }

    #[test]
    fn streamed_transactions_carry_the_xid_of_each_change() {
        let mut decoder = decoder();
        let subtransaction_insert = {
            let id = 9i32.to_be_bytes();
            MessageBuilder::new(b'I')
                .u32(51)
                .u32(REL)
                .u8(b'N')
                .tuple(&row(&id, None))
                .build()
        };
        let events = feed(
            &mut decoder,
            &[
                MessageBuilder::new(b'S').u32(50).u8(1).build(),
                relation(b'd', Some(50)),
                insert(1, Some(50)),
                subtransaction_insert,
                b"E".to_vec(),
            ],
        );
        assert!(decoder.has_open_transactions(), "streamed, not committed");
        assert!(!decoder.in_stream_block());
        let batches = batches(&events);
        assert_eq!(batches.len(), 1);
        assert!(batches[0].streamed && batches[0].commit_lsn.is_none());
        assert_eq!(batches[0].xid, 50);
        let xids = batches[0].batch.column_by_name(XID_COLUMN).unwrap();
        let xids = xids.as_primitive::<UInt32Type>();
        assert_eq!(xids.values().to_vec(), [50, 51]);
        let commit_ts = batches[0].batch.column_by_name(COMMIT_TS_COLUMN).unwrap();
        assert_eq!(commit_ts.null_count(), 2, "not committed yet");
        assert!(matches!(
            events.last(),
            Some(ChangeEvent::StreamStop { xid: 50 })
        ));

        let end = feed(
            &mut decoder,
            &[
                MessageBuilder::new(b'A').u32(50).u32(51).build(),
                MessageBuilder::new(b'c')
                    .u32(50)
                    .u8(0)
                    .u64(0x200)
                    .u64(0x210)
                    .u64(5)
                    .build(),
            ],
        );
        assert!(matches!(
            end[0],
            ChangeEvent::StreamAbort {
                xid: 50,
                subxid: 51
            }
        ));
        assert!(matches!(
            end[1],
            ChangeEvent::Commit {
                xid: 50,
                streamed: true,
                ..
            }
        ));
        assert!(!decoder.has_open_transactions());
    }

    #[test]
    fn a_changed_relation_is_a_new_version_and_an_unchanged_one_is_not() {
        let mut decoder = decoder();
        let events = feed(
            &mut decoder,
            &[
                begin(1),
                relation(b'd', None),
                insert(1, None),
                relation(b'd', None),
            ],
        );
        assert_eq!(
            events
                .iter()
                .filter(|event| matches!(event, ChangeEvent::Relation { .. }))
                .count(),
            1,
            "the same description again is no new version"
        );
        // Identity FULL: a new version; the pending row goes out with the old one first.
        let events = feed(
            &mut decoder,
            &[relation(b'f', None), insert(2, None), commit()],
        );
        assert!(matches!(&events[0], ChangeEvent::Changes(batch) if batch.relation.version == 1));
        let ChangeEvent::Relation { schema, previous } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(schema.version, 2);
        assert_eq!(schema.old_columns, [0, 1, 2]);
        assert_eq!(
            schema.diff(previous.as_ref().unwrap()),
            SchemaDiff::default()
        );
        assert!(matches!(&events[2], ChangeEvent::Changes(batch) if batch.relation.version == 2));
    }

    #[test]
    fn unknown_types_are_asked_for_and_text_mode_needs_none() {
        let custom = MessageBuilder::new(b'R')
            .u32(REL)
            .cstr("public")
            .cstr("t")
            .u8(b'd')
            .i16(1)
            .u8(1)
            .cstr("mood")
            .u32(90_000)
            .u32(u32::MAX)
            .build();
        let mut out = VecDeque::new();
        let mut binary = decoder();
        assert_eq!(
            binary.decode(Lsn::ZERO, &custom, &mut out).unwrap(),
            Progress::NeedTypes(vec![90_000])
        );
        assert!(out.is_empty());
        let mut text = ChangeDecoder::new(BatchConfig::default().with_binary(false)).unwrap();
        assert_eq!(
            text.decode(Lsn::ZERO, &custom, &mut out).unwrap(),
            Progress::Done
        );
        let ChangeEvent::Relation { schema, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(schema.columns[0].pg_type, PgType::Text);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut out = VecDeque::new();
        // A change outside a transaction, of an undescribed table, of the wrong width.
        let mut fresh = decoder();
        assert!(fresh.decode(Lsn::ZERO, &insert(1, None), &mut out).is_err());
        let mut fresh = decoder();
        fresh.decode(Lsn::ZERO, &begin(1), &mut out).unwrap();
        assert!(matches!(
            fresh.decode(Lsn::ZERO, &insert(1, None), &mut out),
            Err(Error::UnknownRelation { oid: REL })
        ));
        let mut fresh = decoder();
        feed(&mut fresh, &[begin(1), relation(b'd', None)]);
        let narrow = MessageBuilder::new(b'I')
            .u32(REL)
            .u8(b'N')
            .tuple(&[None])
            .build();
        assert!(fresh.decode(Lsn::ZERO, &narrow, &mut out).is_err());
        // A value of the wrong size for its type names the column, not the value.
        let mut fresh = decoder();
        feed(&mut fresh, &[begin(1), relation(b'd', None)]);
        let bad = MessageBuilder::new(b'I')
            .u32(REL)
            .u8(b'N')
            .tuple(&[Some(Some((b'b', b"12345"))), None, None])
            .build();
        let error = fresh.decode(Lsn::ZERO, &bad, &mut out).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidValue { column, .. } if column == "id"),
            "{error:?}"
        );
        assert!(!error.to_string().contains("12345"), "{error}");
        // Text where binary was asked for (an int4 in text form).
        let mut fresh = decoder();
        feed(&mut fresh, &[begin(1), relation(b'd', None)]);
        let text = MessageBuilder::new(b'I')
            .u32(REL)
            .u8(b'N')
            .tuple(&[Some(Some((b't', b"1"))), None, None])
            .build();
        assert!(fresh.decode(Lsn::ZERO, &text, &mut out).is_err());
        // Commit without Begin, Stream Stop without Stream Start.
        assert!(decoder().decode(Lsn::ZERO, &commit(), &mut out).is_err());
        assert!(decoder().decode(Lsn::ZERO, b"E", &mut out).is_err());
        // Reserved column names.
        let reserved = MessageBuilder::new(b'R')
            .u32(REL)
            .cstr("public")
            .cstr("t")
            .u8(b'd')
            .i16(1)
            .u8(0)
            .cstr("_tg_op")
            .u32(23)
            .u32(u32::MAX)
            .build();
        assert!(matches!(
            decoder().decode(Lsn::ZERO, &reserved, &mut out),
            Err(Error::UnsupportedColumn { .. })
        ));
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/pgoutput_decode");
        for name in ["transaction", "streamed", "text_values"] {
            let data = std::fs::read(corpus.join(name)).unwrap();
            let (flags, mut input) = data.split_first().unwrap();
            let config = BatchConfig::default().with_binary(flags & 1 == 1);
            let mut decoder = ChangeDecoder::new(config).unwrap();
            let mut out = VecDeque::new();
            while let [high, low, tail @ ..] = input {
                let len = usize::from(u16::from_be_bytes([*high, *low]));
                let (message, rest) = tail.split_at(len);
                input = rest;
                assert_eq!(
                    decoder.decode(Lsn::ZERO, message, &mut out).unwrap(),
                    Progress::Done,
                    "{name}"
                );
            }
            assert!(
                !batches(&out.into_iter().collect::<Vec<_>>()).is_empty(),
                "{name}"
            );
        }
    }
}
