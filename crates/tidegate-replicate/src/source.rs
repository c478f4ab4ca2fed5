//! The [`Source`] trait: where record batches come from.

use std::fmt::Debug;

use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::table::TableSchema;

/// A database whose tables can be listed and read as Arrow record batches.
///
/// The trait is object safe and meant to be held as `Arc<dyn Source>`; its futures and streams
/// are boxed so that every implementation fits behind the same pointer.
///
/// # Contract
///
/// * [`discover`](Source::discover) lists the user tables with the Arrow schema each will be
///   read with. Internal tables (SQLite's `sqlite_%`) are never listed.
/// * [`read_table`](Source::read_table) returns a stream of record batches, in the manner of
///   DataFusion's `RecordBatchStream`:
///   - every batch has **exactly** `table.schema` (same fields, types, nullability, order);
///   - no batch has more than `batch_rows` rows, and none is empty;
///   - an `Err` item ends the stream: the table is not fully read and the caller must not treat
///     what it has as complete;
///   - rows come in no particular order;
///   - dropping the stream at any point stops the read and releases its connection.
/// * Both are cancel-safe in the sense that dropping the future or stream leaves the source
///   usable; no partial state is kept between calls.
pub trait Source: Send + Sync + Debug {
    /// Lists the tables this source can read, with the Arrow schema of each.
    fn discover(&self) -> BoxFuture<'_, Result<Vec<TableSchema>>>;

    /// Starts reading `table` in batches of at most `batch_rows` rows.
    ///
    /// `table` should come from [`discover`](Source::discover); the stream owns everything it
    /// needs and outlives the borrow of `self`.
    fn read_table<'a>(
        &'a self,
        table: &'a TableSchema,
        batch_rows: usize,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<RecordBatch>>>>;
}
