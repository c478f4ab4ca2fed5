//! The [`Source`] trait: where record batches come from.

use std::fmt::Debug;

use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
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

    /// Splits `table` into at most `max_partitions` parts that can be read in parallel with
    /// [`read_partition`](Source::read_partition); together they hold every row exactly once.
    ///
    /// The default does not split: one [`Partition::Whole`].
    fn partitions<'a>(
        &'a self,
        table: &'a TableSchema,
        max_partitions: usize,
    ) -> BoxFuture<'a, Result<Vec<Partition>>> {
        let _ = (table, max_partitions);
        Box::pin(async { Ok(vec![Partition::Whole]) })
    }

    /// Reads one part of `table` obtained from [`partitions`](Source::partitions), with the
    /// same contract as [`read_table`](Source::read_table).
    ///
    /// The default reads [`Partition::Whole`] with `read_table` and refuses other parts.
    fn read_partition<'a>(
        &'a self,
        table: &'a TableSchema,
        partition: &'a Partition,
        batch_rows: usize,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<RecordBatch>>>> {
        match partition {
            Partition::Whole => self.read_table(table, batch_rows),
            _ => Box::pin(async {
                Err(Error::InvalidConfig {
                    reason: "this source reads whole tables only",
                })
            }),
        }
    }
}

/// A part of a table that one reader reads; see [`Source::partitions`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Partition {
    /// The whole table.
    Whole,
    /// The rows stored in heap pages `start..end` (PostgreSQL `ctid` ranges); `end: None`
    /// runs to the end of the table.
    Pages {
        /// First page.
        start: u64,
        /// One past the last page, or the end of the table.
        end: Option<u64>,
    },
}
