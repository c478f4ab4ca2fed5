//! The [`Sink`] and [`TableWriter`] traits: where record batches go.

use std::fmt::Debug;

use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::table::{TableRef, TableSchema};

/// A destination that stores tables, one [`TableWriter`] per table and run.
///
/// Object safe, meant to be held as `Arc<dyn Sink>`.
///
/// # Contract
///
/// * **Runs.** Output is addressed by table and `run_id`. Writing the same table under the
///   same run id again replaces that run's output; different run ids never interfere.
/// * **Accepted versus durable.** A batch is *accepted* when [`TableWriter::write`] returns
///   `Ok`: the sink has taken it (it may sit in memory or in a partly uploaded object) and the
///   caller may drop it, but nothing about it is durable yet. A table is *durable* only when
///   [`TableWriter::finish`] returns `Ok`: every data object is completely stored and the
///   table's **manifest has been written last**. A checkpoint (for example "table copied in
///   run R") may advance only on a durable table.
/// * **Visibility.** A table's output is complete when, and only when, its manifest exists.
///   Readers must take the list of data objects from the manifest, never from a listing.
/// * **Cancellation and failure.** Dropping a writer or any of its futures at any await point
///   never produces a manifest, so partial output never looks complete. Data objects may be
///   left behind when a writer is dropped; [`TableWriter::abort`] removes what it can.
/// * **Ordering and concurrency.** Batches of one table are stored in the order written;
///   different tables may be written concurrently through separate writers of the same sink.
pub trait Sink: Send + Sync + Debug {
    /// Starts writing `table` for run `run_id`.
    ///
    /// Fails if a name cannot be stored safely (see the implementation's documentation).
    fn begin_table<'a>(
        &'a self,
        table: &'a TableSchema,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn TableWriter>>>;
}

/// Writes one table of one run; obtained from [`Sink::begin_table`].
///
/// Either [`finish`](TableWriter::finish) or [`abort`](TableWriter::abort) ends it; both consume
/// the writer. After a failed [`write`](TableWriter::write) only `abort` is meaningful.
pub trait TableWriter: Send + Debug {
    /// Accepts one batch, which must have exactly the table's schema
    /// ([`Error::SchemaMismatch`](crate::Error::SchemaMismatch) otherwise).
    ///
    /// Not cancel-safe: if the future is dropped, the writer must be aborted or dropped.
    fn write(&mut self, batch: RecordBatch) -> BoxFuture<'_, Result<()>>;

    /// Bytes of output produced so far (encoded, possibly not yet durable); for progress.
    fn bytes_written(&self) -> u64;

    /// Makes the table durable: completes every data object, then writes the manifest.
    ///
    /// If the future is dropped before it completes, the manifest may or may not exist; when
    /// it exists the table is complete.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<TableOutput>>;

    /// Abandons the table: no manifest is written and data objects already stored are deleted
    /// on a best-effort basis.
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// What a finished table produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableOutput {
    /// The table.
    pub table: TableRef,
    /// The run the output belongs to.
    pub run_id: String,
    /// Data objects, in order.
    pub files: Vec<FileOutput>,
    /// Rows written, over all files.
    pub rows: u64,
    /// Bytes of the data objects, over all files (the manifest excluded).
    pub bytes: u64,
    /// Object path of the manifest, encoded as stored (turn it back into a path with
    /// [`object_store::path::Path::parse`]).
    pub manifest: String,
}

/// One data object of a finished table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FileOutput {
    /// Full object path, encoded as stored (turn it back into a path with
    /// [`object_store::path::Path::parse`], not `Path::from`, which would encode it again).
    pub path: String,
    /// Rows in this object.
    pub rows: u64,
    /// Size of this object in bytes.
    pub bytes: u64,
}
