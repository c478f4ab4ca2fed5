//! [`StoreChangesSink`]: change batches as Parquet change files on object storage.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tidegate_replicate::{CopySummary, ParquetSink, ParquetSinkConfig, Sink, TableRef};

use crate::changes::{ChangeBatch, METADATA_COLUMNS, RelationSchema};
use crate::error::{Error, Result};
use crate::kept::{KeptTransactions, ipc_bytes};
use crate::lsn::Lsn;
use crate::sink::{ChangeSink, Checkpoint, CommitGroup, TableDescription};

/// Extra metadata column of change files: the commit LSN of the row's transaction (`UInt64`).
pub const COMMIT_LSN_COLUMN: &str = "_tg_commit_lsn";

/// Version of the change manifest format.
pub const CHANGE_MANIFEST_VERSION: u32 = 1;

/// How a [`StoreChangesSink`] writes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreSinkConfig {
    /// The task whose manifests this sink keeps.
    pub task_id: String,
    /// How the initial load is written; change files take its compression and modular
    /// encryption too.
    pub snapshot: ParquetSinkConfig,
    /// Rows per row group of a change file (bounds the memory an open file holds). Default
    /// 65,536.
    pub row_group_rows: usize,
}

impl StoreSinkConfig {
    /// Defaults for task `task_id`.
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            snapshot: ParquetSinkConfig::default(),
            row_group_rows: 65_536,
        }
    }
}

/// A [`ChangeSink`] writing change batches as Parquet change files on object storage, with
/// one manifest per commit group, written last.
///
/// # Layout
///
/// ```text
/// <prefix>/<schema>/<table>/<task_id>/part-00000.parquet          initial load (ParquetSink)
/// <prefix>/<schema>/<table>/<task_id>/_manifest.json
/// <prefix>/<schema>/<table>/changes/<first commit LSN>-v<version>-<n>.parquet
/// <prefix>/_tidegate/cdc/<task_id>/manifests/<LSN>.json           one per commit group
/// <prefix>/_tidegate/cdc/<task_id>/streamed/<xid>/<n>.arrow        blocks of open transactions
/// ```
///
/// Blocks of a transaction the server streams before it commits are kept as Arrow IPC
/// objects until its commit, when their rows (but a rolled-back subtransaction's) go into
/// the group's change files like any other, and the blocks are deleted. A sink that writes
/// with modular encryption does not take streamed transactions (its blocks would be plain):
/// the server then sends large transactions at commit.
///
/// LSNs in names are 16 upper-case hex digits, so names sort in LSN order. A change file has
/// the layout of the change batches ([`crate::ChangeBatch`]) with one more metadata column,
/// [`COMMIT_LSN_COLUMN`], after the others: rows are in commit order when sorted by
/// (`_tg_commit_lsn`, `_tg_lsn`). One file holds one schema version of one table.
///
/// A group's manifest names every change file of the group (table, schema version, fields,
/// key, rows), the checkpoint it moves to (`lsn`) and the last commit LSN it covers. A
/// table's schema version counts from 1 and goes up whenever its files get other fields,
/// across restarts: every manifest carries each table's current version and fields
/// (`schemas`). It is
/// written after every file completed; files without a manifest (a group interrupted by a
/// crash) never count. Every group a manifest names starts before the checkpoint, so on
/// restart a table's change files named at or after it are a dead run's: they are deleted
/// before the table's first new file (a prefix holds one store-changes task per table). The
/// first manifest (`kind: "snapshot"`) names the initial load's per-table manifests at the
/// slot's consistent point. The checkpoint is the `lsn` of the newest manifest.
///
/// A reader replays: the snapshot, then the manifests' change files in manifest order, each
/// file's rows by (`_tg_commit_lsn`, `_tg_lsn`); a value listed in `_tg_unchanged` keeps the
/// row's previous value.
pub struct StoreChangesSink {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: StoreSinkConfig,
    snapshot: Arc<ParquetSink>,
    tables: BTreeMap<u32, (Arc<RelationSchema>, Option<Vec<String>>)>,
    /// Each table's schema version as the manifests number it, across restarts.
    versions: BTreeMap<String, TableVersion>,
    /// Open files of the group, by table oid and schema version.
    open: BTreeMap<(u32, u32), OpenFile>,
    /// Files of the group completed.
    done: Vec<ManifestFile>,
    /// The first commit LSN of the group, naming its files.
    group_start: Option<Lsn>,
    /// The checkpoint before the group.
    previous: Option<Lsn>,
    /// Streamed transactions not committed yet, whose blocks are kept on the store.
    streamed: KeptTransactions,
    /// The checkpoint this run resumed from, and the tables whose change files past it were
    /// cleaned up.
    resumed_from: Option<Lsn>,
    cleaned: HashSet<TableRef>,
}

impl fmt::Debug for StoreChangesSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreChangesSink")
            .field("prefix", &self.prefix)
            .field("task_id", &self.config.task_id)
            .field("open", &self.open.len())
            .field("done", &self.done.len())
            .finish_non_exhaustive()
    }
}

struct OpenFile {
    writer: AsyncArrowWriter<BufWriter>,
    path: Path,
    schema: SchemaRef,
    entry: ManifestFile,
}

/// A group's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChangeManifest {
    /// [`CHANGE_MANIFEST_VERSION`].
    pub version: u32,
    /// The task.
    pub task_id: String,
    /// `snapshot` (the initial load) or `changes`.
    pub kind: String,
    /// The checkpoint this group moves to.
    pub lsn: String,
    /// The last commit LSN covered, if any.
    pub last_commit_lsn: Option<String>,
    /// The checkpoint before this group.
    pub previous_lsn: Option<String>,
    /// Transactions in the group.
    pub transactions: u64,
    /// The change files (for `changes`), or the initial load's table manifests (for
    /// `snapshot`, with `schema_version` 0).
    pub files: Vec<ManifestFile>,
    /// Every table's current schema version and fields, as of this manifest (so that the
    /// newest manifest alone tells a restarted sink where the numbering stands).
    #[serde(default)]
    pub schemas: BTreeMap<String, TableVersion>,
    /// The writer.
    pub created_by: String,
}

/// A table's schema version in the manifests: counts from 1 and goes up whenever the table's
/// change files get other fields, across restarts of the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableVersion {
    /// The version.
    pub version: u32,
    /// Its fields: name and Arrow type.
    pub fields: Vec<(String, String)>,
}

/// One file a manifest names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestFile {
    /// The table.
    pub table: TableRef,
    /// The table's schema version ([`TableVersion`]).
    pub schema_version: u32,
    /// Full object path, as stored.
    pub path: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
    /// The key columns, if the table has a key.
    pub key: Option<Vec<String>>,
    /// Its columns: name and Arrow type.
    pub fields: Vec<(String, String)>,
}

impl StoreChangesSink {
    /// A sink writing under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, config: StoreSinkConfig) -> Self {
        let snapshot =
            ParquetSink::new(Arc::clone(&store), prefix.clone(), config.snapshot.clone());
        Self {
            store,
            prefix,
            config,
            snapshot: Arc::new(snapshot),
            tables: BTreeMap::new(),
            versions: BTreeMap::new(),
            open: BTreeMap::new(),
            done: Vec::new(),
            group_start: None,
            previous: None,
            streamed: KeptTransactions::default(),
            resumed_from: None,
            cleaned: HashSet::new(),
        }
    }

    /// Makes `schema` the table's current one: a new schema version in the change files when
    /// its fields differ from the current version's.
    fn follow(&mut self, schema: &Arc<RelationSchema>, key: Option<Vec<String>>) {
        let fields = fields_of(&schema.schema);
        let name = schema.table.to_string();
        let version = match self.versions.get(&name) {
            Some(known) if known.fields == fields => known.version,
            Some(known) => {
                let version = known.version + 1;
                tracing::info!(table = %name, version, "new schema version in the change files");
                version
            }
            None => 1,
        };
        self.versions.insert(name, TableVersion { version, fields });
        self.tables.insert(schema.oid, (Arc::clone(schema), key));
    }

    /// Deletes `table`'s change files named at or after the checkpoint this run resumed from:
    /// no manifest names them (every group a manifest names starts before it), so they are
    /// what a run that died wrote for a group it never committed. Once per table, before the
    /// run writes its first change file of the table.
    async fn clean_up_after_crash(&mut self, table: &TableRef) -> Result<()> {
        let Some(resumed_from) = self.resumed_from else {
            return Ok(());
        };
        if !self.cleaned.insert(table.clone()) {
            return Ok(());
        }
        let dir = self.changes_dir(table)?;
        let from = format!("{:016X}", resumed_from.as_u64());
        let offset = dir.clone().join(from.as_str());
        let listed: Vec<_> = self
            .store
            .list_with_offset(Some(&dir), &offset)
            .try_collect()
            .await
            .map_err(Self::object_error(&dir))?;
        for object in listed {
            let orphan = object
                .location
                .filename()
                .and_then(|name| name.get(..16))
                .is_some_and(|lsn| lsn.bytes().all(|b| b.is_ascii_hexdigit()) && *lsn >= *from);
            if !orphan {
                continue;
            }
            tracing::info!(path = %object.location, "change file of a group never committed: deleted");
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(Self::object_error(&object.location)(error)),
            }
        }
        Ok(())
    }

    /// Where blocks of streamed transactions wait for their commit:
    /// `<prefix>/_tidegate/cdc/<task_id>/streamed/`.
    fn streamed_dir(&self) -> Path {
        self.prefix
            .clone()
            .join("_tidegate")
            .join("cdc")
            .join(PathPart::from(self.config.task_id.as_str()))
            .join("streamed")
    }

    fn streamed_path(&self, xid: u32, seq: usize) -> Path {
        self.streamed_dir()
            .join(xid.to_string())
            .join(format!("{seq:08}.arrow"))
    }

    fn object_error(path: &Path) -> impl Fn(object_store::Error) -> Error + use<> {
        let path = path.to_string();
        move |source| Error::ObjectStore {
            path: path.clone(),
            source,
        }
    }

    /// Keeps a block of a streamed transaction on the store.
    async fn keep_streamed(&mut self, batch: ChangeBatch) -> Result<()> {
        let bytes = ipc_bytes(&batch)?;
        let seq = self.streamed.keep(&batch);
        let path = self.streamed_path(batch.xid, seq);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(Self::object_error(&path))?;
        Ok(())
    }

    /// Deletes the kept blocks of `xid`'s first `blocks` sequence numbers.
    async fn forget_streamed(&mut self, xid: u32, blocks: usize) -> Result<()> {
        for seq in 0..blocks {
            let path = self.streamed_path(xid, seq);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(Self::object_error(&path)(error)),
            }
        }
        Ok(())
    }

    /// Streamed transaction `xid` committed: its kept blocks join the open group.
    async fn commit_streamed(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        skip: &[TableRef],
    ) -> Result<u64> {
        let Some(transaction) = self.streamed.take(xid) else {
            return Ok(0);
        };
        let mut rows = 0;
        for (seq, table_version) in transaction.blocks.iter().enumerate() {
            let path = self.streamed_path(xid, seq);
            let bytes = self
                .store
                .get(&path)
                .await
                .map_err(Self::object_error(&path))?
                .bytes()
                .await
                .map_err(Self::object_error(&path))?;
            let Some((relation, batch)) = transaction.read(*table_version, &bytes, skip)? else {
                continue;
            };
            rows += batch.num_rows() as u64;
            self.write_batch(ChangeBatch {
                relation,
                xid,
                commit_lsn: Some(commit_lsn),
                streamed: false,
                batch,
            })
            .await?;
        }
        // The blocks can go now: if the group is lost, the server sends the transaction again.
        self.forget_streamed(xid, transaction.blocks.len()).await?;
        Ok(rows)
    }

    /// The directory of the task's manifests.
    pub fn manifest_dir(&self) -> Path {
        self.prefix
            .clone()
            .join("_tidegate")
            .join("cdc")
            .join(PathPart::from(self.config.task_id.as_str()))
            .join("manifests")
    }

    /// Every manifest of the task, oldest first.
    pub fn manifests(&self) -> impl Future<Output = Result<Vec<ChangeManifest>>> + Send + 'static {
        let store = Arc::clone(&self.store);
        let dir = self.manifest_dir();
        async move {
            let mut paths = manifest_paths(store.as_ref(), &dir).await?;
            paths.sort();
            let mut manifests = Vec::with_capacity(paths.len());
            for path in paths {
                manifests.push(read_manifest(store.as_ref(), &path).await?);
            }
            Ok(manifests)
        }
    }

    fn file_path(&self, table: &TableRef, version: u32, index: usize) -> Result<Path> {
        let start = self.group_start.unwrap_or(Lsn::ZERO);
        Ok(self.changes_dir(table)?.join(format!(
            "{:016X}-v{version}-{index:03}.parquet",
            start.as_u64()
        )))
    }

    /// `<prefix>/<schema>/<table>/changes`.
    fn changes_dir(&self, table: &TableRef) -> Result<Path> {
        let mut path = self.prefix.clone();
        for (what, name) in [("schema", &table.schema), ("table", &table.name)] {
            if name.is_empty() {
                return Err(Error::InvalidName {
                    what,
                    name: String::new(),
                    reason: "must not be empty",
                });
            }
            path = path.join(PathPart::from(name.as_str()));
        }
        Ok(path.join("changes"))
    }

    async fn write_batch(&mut self, batch: ChangeBatch) -> Result<()> {
        let relation = &batch.relation;
        let followed = self
            .tables
            .get(&relation.oid)
            .is_some_and(|(schema, _)| Arc::ptr_eq(schema, relation));
        if !followed {
            // A streamed transaction's rows, kept while the table changed: they go under a
            // version with their own fields.
            let current = self
                .versions
                .get(&relation.table.to_string())
                .map(|known| &known.fields);
            if current != Some(&fields_of(&relation.schema)) {
                let key = self
                    .tables
                    .get(&relation.oid)
                    .and_then(|(_, key)| key.clone());
                self.follow(relation, key);
            }
        }
        let commit_lsn = batch.commit_lsn.ok_or(Error::UnexpectedEvent {
            reason: "a change batch of a transaction not committed yet",
        })?;
        self.group_start.get_or_insert(commit_lsn);
        let version = self
            .versions
            .get(&relation.table.to_string())
            .map_or(1, |known| known.version);
        let slot = (relation.oid, version);
        if !self.open.contains_key(&slot) {
            let index = self
                .done
                .iter()
                .filter(|file| file.table == relation.table)
                .count()
                + self
                    .open
                    .keys()
                    .filter(|(oid, _)| *oid == relation.oid)
                    .count();
            let path = self.file_path(&relation.table, version, index)?;
            let schema = file_schema(&relation.schema);
            // Change files are compressed and encrypted as the initial load's files are.
            let properties = WriterProperties::builder()
                .set_compression(self.config.snapshot.compression())
                .set_max_row_group_row_count(Some(self.config.row_group_rows.max(1)))
                .set_created_by(concat!("tidegate-cdc ", env!("CARGO_PKG_VERSION")).to_owned());
            let properties = match self.config.snapshot.encryption() {
                Some(encryption) => {
                    properties.with_file_encryption_properties(Arc::clone(encryption))
                }
                None => properties,
            }
            .build();
            let upload = BufWriter::new(Arc::clone(&self.store), path.clone());
            let writer = AsyncArrowWriter::try_new(upload, Arc::clone(&schema), Some(properties))
                .map_err(|source| Error::Parquet {
                path: path.to_string(),
                source,
            })?;
            let key = self
                .tables
                .get(&relation.oid)
                .and_then(|(_, key)| key.clone());
            let entry = ManifestFile {
                table: relation.table.clone(),
                schema_version: version,
                path: path.to_string(),
                rows: 0,
                bytes: 0,
                key,
                fields: schema
                    .fields()
                    .iter()
                    .map(|field| (field.name().clone(), field.data_type().to_string()))
                    .collect(),
            };
            self.open.insert(
                slot,
                OpenFile {
                    writer,
                    path,
                    schema,
                    entry,
                },
            );
        }
        let file = self.open.get_mut(&slot).expect("opened above");
        let rows = batch.batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.batch.columns().to_vec();
        columns.insert(
            METADATA_COLUMNS,
            Arc::new(UInt64Array::from(vec![commit_lsn.as_u64(); rows])),
        );
        let with_commit =
            RecordBatch::try_new(Arc::clone(&file.schema), columns).map_err(|source| {
                Error::Arrow {
                    table: relation.table.to_string(),
                    source,
                }
            })?;
        file.writer
            .write(&with_commit)
            .await
            .map_err(|source| Error::Parquet {
                path: file.path.to_string(),
                source,
            })?;
        file.entry.rows += rows as u64;
        Ok(())
    }

    async fn commit_group(&mut self, group: &CommitGroup) -> Result<()> {
        for (_, mut file) in std::mem::take(&mut self.open) {
            file.writer
                .finish()
                .await
                .map_err(|source| Error::Parquet {
                    path: file.path.to_string(),
                    source,
                })?;
            file.entry.bytes = file.writer.bytes_written() as u64;
            self.done.push(file.entry);
        }
        let manifest = ChangeManifest {
            version: CHANGE_MANIFEST_VERSION,
            task_id: self.config.task_id.clone(),
            kind: "changes".into(),
            lsn: group.checkpoint.lsn.to_string(),
            last_commit_lsn: group.checkpoint.last_commit_lsn.map(|lsn| lsn.to_string()),
            previous_lsn: self.previous.map(|lsn| lsn.to_string()),
            transactions: group.transactions,
            files: std::mem::take(&mut self.done),
            schemas: self.versions.clone(),
            created_by: concat!("tidegate-cdc ", env!("CARGO_PKG_VERSION")).into(),
        };
        write_manifest(
            self.store.as_ref(),
            self.manifest_dir(),
            &manifest,
            group.checkpoint.lsn,
        )
        .await?;
        self.previous = Some(group.checkpoint.lsn);
        self.group_start = None;
        Ok(())
    }
}

/// A change file's fields for `batch`'s schema: name and Arrow type.
fn fields_of(batch: &SchemaRef) -> Vec<(String, String)> {
    file_schema(batch)
        .fields()
        .iter()
        .map(|field| (field.name().clone(), field.data_type().to_string()))
        .collect()
}

/// The schema of a change file: the batch's, with [`COMMIT_LSN_COLUMN`] after the metadata.
fn file_schema(batch: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = batch.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.insert(
        METADATA_COLUMNS,
        Field::new(COMMIT_LSN_COLUMN, DataType::UInt64, false),
    );
    Arc::new(Schema::new(fields))
}

async fn manifest_paths(store: &dyn ObjectStore, dir: &Path) -> Result<Vec<Path>> {
    let listed: Vec<_> = store
        .list(Some(dir))
        .try_collect()
        .await
        .map_err(|source| Error::ObjectStore {
            path: dir.to_string(),
            source,
        })?;
    Ok(listed
        .into_iter()
        .map(|meta| meta.location)
        .filter(|path| {
            path.filename()
                .and_then(|name| name.strip_suffix(".json"))
                .is_some_and(|lsn| lsn.len() == 16 && lsn.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect())
}

async fn read_manifest(store: &dyn ObjectStore, path: &Path) -> Result<ChangeManifest> {
    let object_error = |source| Error::ObjectStore {
        path: path.to_string(),
        source,
    };
    let bytes = store
        .get(path)
        .await
        .map_err(object_error)?
        .bytes()
        .await
        .map_err(object_error)?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Manifest {
        path: path.to_string(),
        reason: format!("not a change manifest: {error}"),
    })
}

/// Writes `manifest` as `<dir>/<lsn>.json`, in one put.
async fn write_manifest(
    store: &dyn ObjectStore,
    dir: Path,
    manifest: &ChangeManifest,
    lsn: Lsn,
) -> Result<()> {
    let path = dir.join(format!("{:016X}.json", lsn.as_u64()));
    let json = serde_json::to_vec_pretty(manifest).map_err(|error| Error::Manifest {
        path: path.to_string(),
        reason: error.to_string(),
    })?;
    store
        .put(&path, PutPayload::from(json))
        .await
        .map_err(|source| Error::ObjectStore {
            path: path.to_string(),
            source,
        })?;
    Ok(())
}

impl ChangeSink for StoreChangesSink {
    fn checkpoint(&mut self) -> BoxFuture<'_, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            let store = Arc::clone(&self.store);
            let dir = self.manifest_dir();
            let paths = manifest_paths(store.as_ref(), &dir).await?;
            let Some(newest) = paths.into_iter().max() else {
                return Ok(None);
            };
            let manifest = read_manifest(store.as_ref(), &newest).await?;
            let parse = |text: &str| {
                text.parse::<Lsn>().map_err(|_| Error::Manifest {
                    path: newest.to_string(),
                    reason: "a position that is not an LSN".into(),
                })
            };
            let checkpoint = Checkpoint::new(
                parse(&manifest.lsn)?,
                manifest.last_commit_lsn.as_deref().map(parse).transpose()?,
            );
            self.previous = Some(checkpoint.lsn);
            self.resumed_from = Some(checkpoint.lsn);
            self.cleaned.clear();
            self.versions = manifest.schemas;
            // Streaming starts again from the checkpoint: blocks an earlier run kept are sent
            // again.
            let dir = self.streamed_dir();
            let kept: Vec<_> = store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(Self::object_error(&dir))?;
            for object in kept {
                match store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => return Err(Self::object_error(&object.location)(error)),
                }
            }
            Ok(Some(checkpoint))
        })
    }

    fn snapshot_sink(&self) -> Arc<dyn Sink> {
        Arc::clone(&self.snapshot) as Arc<dyn Sink>
    }

    fn snapshot_loaded<'a>(
        &'a mut self,
        consistent_point: Lsn,
        load: &'a CopySummary,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let manifest = ChangeManifest {
                version: CHANGE_MANIFEST_VERSION,
                task_id: self.config.task_id.clone(),
                kind: "snapshot".into(),
                lsn: consistent_point.to_string(),
                last_commit_lsn: None,
                previous_lsn: None,
                transactions: 0,
                files: load
                    .tables
                    .iter()
                    .map(|table| ManifestFile {
                        table: table.table.clone(),
                        schema_version: 0,
                        path: table.manifest.clone(),
                        rows: table.rows,
                        bytes: table.bytes,
                        key: None,
                        fields: Vec::new(),
                    })
                    .collect(),
                schemas: BTreeMap::new(),
                created_by: concat!("tidegate-cdc ", env!("CARGO_PKG_VERSION")).into(),
            };
            write_manifest(
                self.store.as_ref(),
                self.manifest_dir(),
                &manifest,
                consistent_point,
            )
            .await?;
            self.previous = Some(consistent_point);
            Ok(())
        })
    }

    fn relation<'a>(&'a mut self, table: &'a TableDescription) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.follow(&table.schema, table.key.clone());
            self.clean_up_after_crash(&table.schema.table).await
        })
    }

    fn write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write_batch(batch))
    }

    /// Blocks are kept as plain Arrow IPC objects: not with modular encryption, so a sink
    /// writing encrypted files takes whole transactions at commit instead.
    fn takes_streamed(&self) -> bool {
        self.config.snapshot.encryption().is_none()
    }

    fn stream_write(&mut self, batch: ChangeBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.keep_streamed(batch))
    }

    fn stream_abort(&mut self, xid: u32, subxid: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.streamed.abort(xid, subxid) {
                Some(transaction) => self.forget_streamed(xid, transaction.blocks.len()).await,
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

    fn commit<'a>(&'a mut self, group: &'a CommitGroup) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.commit_group(group))
    }

    fn abort(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // No manifest names them: they never count, and the next run deletes them.
            for (_, file) in std::mem::take(&mut self.open) {
                let _ = file.writer.into_inner().abort().await;
            }
            self.done.clear();
            self.group_start = None;
            Ok(())
        })
    }
}
