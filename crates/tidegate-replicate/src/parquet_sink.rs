//! [`ParquetSink`]: writes tables as Parquet files plus a JSON manifest to any object store.
//!
//! # Layout
//!
//! ```text
//! <prefix>/<schema>/<table>/<run_id>/part-00000.parquet
//! <prefix>/<schema>/<table>/<run_id>/part-00001.parquet
//! <prefix>/<schema>/<table>/<run_id>/_manifest.json      (written last)
//! ```
//!
//! Schema, table and run id become single path segments through
//! [`object_store::path::PathPart`], which percent-encodes `/`, `%`, control characters and the
//! characters object stores advise against, and turns `.` and `..` into `%2E` and `%2E%2E`. The
//! encoding is injective, so distinct names never share a directory and no name can leave the
//! prefix. Empty names are rejected with [`Error::InvalidName`].

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sink::{FileOutput, Sink, TableOutput, TableWriter};
use crate::table::{TableRef, TableSchema};

/// Name of the manifest object in a run directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// Version of the manifest format, stored in every manifest.
pub const MANIFEST_VERSION: u32 = 1;

/// How [`ParquetSink`] encodes and splits files. Start from [`Default`] and adjust.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    compression: Compression,
    max_row_group_rows: NonZeroUsize,
    max_file_rows: Option<NonZeroU64>,
    max_file_bytes: Option<NonZeroU64>,
    encryption: Option<Arc<FileEncryptionProperties>>,
}

impl Default for ParquetSinkConfig {
    /// Zstandard level 3, row groups of at most 1,048,576 rows, files rolled at about 512 MiB
    /// and no row limit per file.
    fn default() -> Self {
        Self {
            compression: Compression::ZSTD(ZstdLevel::default()),
            max_row_group_rows: NonZeroUsize::new(1024 * 1024).unwrap_or(NonZeroUsize::MIN),
            max_file_rows: None,
            max_file_bytes: NonZeroU64::new(512 * 1024 * 1024),
            encryption: None,
        }
    }
}

impl ParquetSinkConfig {
    /// Sets the compression codec of every column.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets the maximum rows of a row group.
    pub fn with_max_row_group_rows(mut self, rows: NonZeroUsize) -> Self {
        self.max_row_group_rows = rows;
        self
    }

    /// Sets the maximum rows of a file; a file holds exactly this many rows before the next
    /// part starts. `None` means no limit.
    pub fn with_max_file_rows(mut self, rows: Option<NonZeroU64>) -> Self {
        self.max_file_rows = rows;
        self
    }

    /// Sets the size at which a file is closed and the next part started. Checked after each
    /// batch against the bytes written plus the estimated size of the open row group, so a
    /// file can exceed it by about one batch. `None` means no limit.
    pub fn with_max_file_bytes(mut self, bytes: Option<NonZeroU64>) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    /// Encrypts every file with Parquet modular encryption (AES-GCM, footer and every column)
    /// under `key` (16, 24 or 32 bytes), recording `key_id` in the footer's key metadata so a
    /// reader can find the key. Without the key the files do not read.
    ///
    /// This is for managed storage, where the operator of the control plane keeps landed data
    /// for its tenants: the key is the tenant's, handed to the gateway in memory for the run.
    pub fn with_modular_encryption(mut self, key: &[u8], key_id: &str) -> Result<Self> {
        if ![16, 24, 32].contains(&key.len()) {
            return Err(Error::InvalidConfig {
                reason: "a Parquet encryption key is 16, 24 or 32 bytes long",
            });
        }
        let properties = FileEncryptionProperties::builder(key.to_vec())
            .with_footer_key_metadata(key_id.as_bytes().to_vec())
            .build()
            .map_err(|_| Error::InvalidConfig {
                reason: "the Parquet encryption settings are not usable",
            })?;
        self.encryption = Some(properties);
        Ok(self)
    }

    /// The compression codec.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The maximum rows of a row group.
    pub fn max_row_group_rows(&self) -> NonZeroUsize {
        self.max_row_group_rows
    }

    /// The maximum rows of a file, if any.
    pub fn max_file_rows(&self) -> Option<NonZeroU64> {
        self.max_file_rows
    }

    /// The file size that rolls to the next part, if any.
    pub fn max_file_bytes(&self) -> Option<NonZeroU64> {
        self.max_file_bytes
    }

    /// The modular encryption every file is written with, if any
    /// ([`with_modular_encryption`](Self::with_modular_encryption)).
    pub fn encryption(&self) -> Option<&Arc<FileEncryptionProperties>> {
        self.encryption.as_ref()
    }

    fn writer_properties(&self) -> WriterProperties {
        let builder = WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_row_count(Some(self.max_row_group_rows.get()))
            .set_created_by(concat!("tidegate-replicate ", env!("CARGO_PKG_VERSION")).to_owned());
        match &self.encryption {
            Some(properties) => builder.with_file_encryption_properties(Arc::clone(properties)),
            None => builder,
        }
        .build()
    }
}

/// A [`Sink`] writing Parquet files and a manifest under a prefix of an object store.
///
/// Files are uploaded through [`object_store::buffered::BufWriter`] (a single put for small
/// files, a multipart upload for large ones), so no reader sees a partially written object.
/// The manifest is one put after every part completed. Durability is the store's: for
/// object_store's `LocalFileSystem` enable `with_fsync(true)` if a
/// durable table must survive power loss.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: ParquetSinkConfig,
}

impl ParquetSink {
    /// A sink writing under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, config: ParquetSinkConfig) -> Self {
        Self {
            store,
            prefix,
            config,
        }
    }

    /// The directory of one table's run: `<prefix>/<schema>/<table>/<run_id>`.
    pub fn run_path(&self, table: &TableRef, run_id: &str) -> Result<Path> {
        let mut path = self.prefix.clone();
        for (what, name) in [
            ("schema", table.schema.as_str()),
            ("table", table.name.as_str()),
            ("run id", run_id),
        ] {
            if name.is_empty() {
                return Err(Error::InvalidName {
                    what,
                    name: name.to_owned(),
                    reason: "must not be empty",
                });
            }
            path = path.join(PathPart::from(name));
        }
        Ok(path)
    }

    /// The manifest's path for one table's run.
    pub fn manifest_path(&self, table: &TableRef, run_id: &str) -> Result<Path> {
        Ok(self.run_path(table, run_id)?.join(MANIFEST_FILE))
    }
}

impl Sink for ParquetSink {
    fn begin_table<'a>(
        &'a self,
        table: &'a TableSchema,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn TableWriter>>> {
        Box::pin(async move {
            let dir = self.run_path(&table.table, run_id)?;
            let writer: Box<dyn TableWriter> = Box::new(ParquetTableWriter {
                store: Arc::clone(&self.store),
                dir,
                table: table.clone(),
                run_id: run_id.to_owned(),
                properties: self.config.writer_properties(),
                max_file_rows: self.config.max_file_rows.map(NonZeroU64::get),
                max_file_bytes: self.config.max_file_bytes.map(NonZeroU64::get),
                open: None,
                files: Vec::new(),
                part_paths: Vec::new(),
            });
            Ok(writer)
        })
    }
}

/// The [`TableWriter`] of [`ParquetSink`].
struct ParquetTableWriter {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    table: TableSchema,
    run_id: String,
    properties: WriterProperties,
    max_file_rows: Option<u64>,
    max_file_bytes: Option<u64>,
    open: Option<OpenPart>,
    files: Vec<FileOutput>,
    /// Paths of the completed parts, parallel to `files`.
    part_paths: Vec<Path>,
}

/// The part file being written.
struct OpenPart {
    writer: AsyncArrowWriter<BufWriter>,
    path: Path,
    rows: u64,
}

impl ParquetTableWriter {
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.schema_ref().fields() != self.table.schema.fields() {
            return Err(Error::SchemaMismatch {
                table: self.table.table.to_string(),
            });
        }
        let mut offset = 0;
        while offset < batch.num_rows() {
            let part = match &mut self.open {
                Some(part) => part,
                None => self.open.insert(self.open_part()?),
            };
            let remaining = batch.num_rows() - offset;
            let room = self.max_file_rows.map_or(remaining, |max| {
                usize::try_from(max.saturating_sub(part.rows)).unwrap_or(usize::MAX)
            });
            let take = remaining.min(room);
            let slice = batch.slice(offset, take);
            part.writer
                .write(&slice)
                .await
                .map_err(|source| Error::Parquet {
                    path: part.path.to_string(),
                    source,
                })?;
            part.rows += take as u64;
            offset += take;

            let full_rows = self.max_file_rows.is_some_and(|max| part.rows >= max);
            let size = (part.writer.bytes_written() + part.writer.in_progress_size()) as u64;
            let full_bytes = self.max_file_bytes.is_some_and(|max| size >= max);
            if full_rows || full_bytes {
                self.close_part().await?;
            }
        }
        Ok(())
    }

    fn open_part(&self) -> Result<OpenPart> {
        let path = self
            .dir
            .clone()
            .join(format!("part-{:05}.parquet", self.files.len()));
        let upload = BufWriter::new(Arc::clone(&self.store), path.clone());
        let writer = AsyncArrowWriter::try_new(
            upload,
            Arc::clone(&self.table.schema),
            Some(self.properties.clone()),
        )
        .map_err(|source| Error::Parquet {
            path: path.to_string(),
            source,
        })?;
        Ok(OpenPart {
            writer,
            path,
            rows: 0,
        })
    }

    async fn close_part(&mut self) -> Result<()> {
        let Some(mut part) = self.open.take() else {
            return Ok(());
        };
        part.writer
            .finish()
            .await
            .map_err(|source| Error::Parquet {
                path: part.path.to_string(),
                source,
            })?;
        self.files.push(FileOutput {
            path: part.path.to_string(),
            rows: part.rows,
            bytes: part.writer.bytes_written() as u64,
        });
        self.part_paths.push(part.path);
        Ok(())
    }

    async fn finish_table(mut self) -> Result<TableOutput> {
        if self.open.is_none() && self.files.is_empty() {
            // An empty table still gets one file, so readers learn its schema from Parquet.
            self.open = Some(self.open_part()?);
        }
        self.close_part().await?;

        let manifest_path = self.dir.clone().join(MANIFEST_FILE);
        let output = TableOutput {
            table: self.table.table.clone(),
            run_id: self.run_id.clone(),
            rows: self.files.iter().map(|file| file.rows).sum(),
            bytes: self.files.iter().map(|file| file.bytes).sum(),
            files: self.files,
            manifest: manifest_path.to_string(),
        };
        let manifest = Manifest::new(&output, &self.table.schema);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Manifest {
            path: manifest_path.to_string(),
            source,
        })?;
        self.store
            .put(&manifest_path, PutPayload::from(json))
            .await
            .map_err(|source| Error::ObjectStore {
                path: manifest_path.to_string(),
                source,
            })?;
        tracing::debug!(
            message = "table written",
            table = %output.table,
            run_id = %output.run_id,
            rows = output.rows,
            bytes = output.bytes,
            files = output.files.len(),
        );
        Ok(output)
    }

    async fn abort_table(mut self) -> Result<()> {
        let mut first_error = None;
        if let Some(part) = self.open.take() {
            let path = part.path.to_string();
            // Never shut down, so `abort` cannot hit BufWriter's "already shut down" panic.
            if let Err(source) = part.writer.into_inner().abort().await {
                first_error.get_or_insert(Error::ObjectStore { path, source });
            }
        }
        for path in &self.part_paths {
            if let Err(source) = self.store.delete(path).await {
                tracing::warn!(message = "cannot delete part of aborted table", %path, error = %source);
                first_error.get_or_insert(Error::ObjectStore {
                    path: path.to_string(),
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn bytes(&self) -> u64 {
        let done: u64 = self.files.iter().map(|file| file.bytes).sum();
        let open = self
            .open
            .as_ref()
            .map_or(0, |part| part.writer.bytes_written() as u64);
        done + open
    }
}

impl TableWriter for ParquetTableWriter {
    fn write(&mut self, batch: RecordBatch) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write_batch(batch))
    }

    fn bytes_written(&self) -> u64 {
        self.bytes()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<TableOutput>> {
        Box::pin((*self).finish_table())
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).abort_table())
    }
}

impl std::fmt::Debug for ParquetTableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetTableWriter")
            .field("dir", &self.dir)
            .field("table", &self.table.table)
            .field("files", &self.files.len())
            .field("open", &self.open.as_ref().map(|part| part.path.as_ref()))
            .finish_non_exhaustive()
    }
}

/// The `_manifest.json` document.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    version: u32,
    run_id: &'a str,
    table: &'a TableRef,
    /// File names relative to the manifest's directory.
    files: Vec<ManifestFile<'a>>,
    total_rows: u64,
    total_bytes: u64,
    fields: Vec<ManifestField>,
    created_by: &'static str,
}

#[derive(Debug, Serialize)]
struct ManifestFile<'a> {
    name: &'a str,
    rows: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct ManifestField {
    name: String,
    data_type: String,
    nullable: bool,
}

impl<'a> Manifest<'a> {
    fn new(output: &'a TableOutput, schema: &SchemaRef) -> Self {
        Self {
            version: MANIFEST_VERSION,
            run_id: &output.run_id,
            table: &output.table,
            files: output
                .files
                .iter()
                .map(|file| ManifestFile {
                    name: file.path.rsplit('/').next().unwrap_or(&file.path),
                    rows: file.rows,
                    bytes: file.bytes,
                })
                .collect(),
            total_rows: output.rows,
            total_bytes: output.bytes,
            fields: schema
                .fields()
                .iter()
                .map(|field| ManifestField {
                    name: field.name().clone(),
                    data_type: field.data_type().to_string(),
                    nullable: field.is_nullable(),
                })
                .collect(),
            created_by: concat!("tidegate-replicate ", env!("CARGO_PKG_VERSION")),
        }
    }
}
