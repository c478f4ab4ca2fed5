//! Blocks of streamed transactions a sink keeps at its target until the transaction commits
//! or rolls back: each block as Arrow IPC stream bytes, and in memory only what reads them
//! back (the table versions, the subtransactions rolled back).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use tidegate_replicate::TableRef;

use crate::changes::{ChangeBatch, RelationSchema, XID_COLUMN};
use crate::error::{Error, Result};

/// The streamed transactions a sink keeps blocks of, by top-level transaction id.
#[derive(Debug, Default)]
pub(crate) struct KeptTransactions(HashMap<u32, StreamedTransaction>);

impl KeptTransactions {
    /// Notes one more block of `batch`'s transaction; returns its sequence number.
    pub(crate) fn keep(&mut self, batch: &ChangeBatch) -> usize {
        self.0.entry(batch.xid).or_default().keep(&batch.relation)
    }

    /// `subxid` of `xid` rolled back. When it is the whole transaction, returns what was
    /// kept of it, for the sink to delete.
    pub(crate) fn abort(&mut self, xid: u32, subxid: u32) -> Option<StreamedTransaction> {
        if xid == subxid {
            return self.0.remove(&xid);
        }
        if let Some(transaction) = self.0.get_mut(&xid) {
            transaction.aborted.insert(subxid);
        }
        None
    }

    /// Transaction `xid` committed: what was kept of it.
    pub(crate) fn take(&mut self, xid: u32) -> Option<StreamedTransaction> {
        self.0.remove(&xid)
    }

    /// Forgets every transaction (the sink starts over).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A streamed transaction not committed yet.
#[derive(Debug, Default)]
pub(crate) struct StreamedTransaction {
    /// Each kept block's table, by `(oid, version)`, in order.
    pub(crate) blocks: Vec<(u32, u32)>,
    /// The table versions of its blocks.
    relations: HashMap<(u32, u32), Arc<RelationSchema>>,
    /// Its subtransactions rolled back.
    aborted: HashSet<u32>,
}

impl StreamedTransaction {
    fn keep(&mut self, relation: &Arc<RelationSchema>) -> usize {
        let key = (relation.oid, relation.version);
        self.relations
            .entry(key)
            .or_insert_with(|| Arc::clone(relation));
        self.blocks.push(key);
        self.blocks.len() - 1
    }

    /// A kept block read back: its table version and its rows but those of rolled-back
    /// subtransactions; `None` when its table is in `skip` or no row is left.
    pub(crate) fn read(
        &self,
        table_version: (u32, u32),
        bytes: &[u8],
        skip: &[TableRef],
    ) -> Result<Option<(Arc<RelationSchema>, RecordBatch)>> {
        let Some(relation) = self.relations.get(&table_version) else {
            return Err(Error::UnexpectedEvent {
                reason: "a kept streamed block of a table version never seen",
            });
        };
        if skip.contains(&relation.table) {
            return Ok(None);
        }
        let batch = without_aborted(read_ipc(bytes, relation)?, &self.aborted, relation)?;
        Ok((batch.num_rows() > 0).then(|| (Arc::clone(relation), batch)))
    }
}

/// A change batch as Arrow IPC stream bytes.
pub(crate) fn ipc_bytes(batch: &ChangeBatch) -> Result<Vec<u8>> {
    let ipc_error = |source| Error::Arrow {
        table: batch.relation.table.to_string(),
        source,
    };
    let mut bytes = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.batch.schema())
        .map_err(ipc_error)?;
    writer.write(&batch.batch).map_err(ipc_error)?;
    writer.finish().map_err(ipc_error)?;
    drop(writer);
    Ok(bytes)
}

/// The batch kept as `bytes` (one batch of `relation`'s schema).
fn read_ipc(bytes: &[u8], relation: &RelationSchema) -> Result<RecordBatch> {
    let ipc_error = |source| Error::Arrow {
        table: relation.table.to_string(),
        source,
    };
    let mut reader = arrow::ipc::reader::StreamReader::try_new(bytes, None).map_err(ipc_error)?;
    let batch = reader
        .next()
        .transpose()
        .map_err(ipc_error)?
        .ok_or(Error::UnexpectedEvent {
            reason: "a kept streamed block is empty",
        })?;
    if batch.schema() != relation.schema {
        return Err(Error::UnexpectedEvent {
            reason: "a kept streamed block does not have its table version's schema",
        });
    }
    Ok(batch)
}

/// `batch` without the rows of rolled-back subtransactions.
fn without_aborted(
    batch: RecordBatch,
    aborted: &HashSet<u32>,
    relation: &RelationSchema,
) -> Result<RecordBatch> {
    if aborted.is_empty() {
        return Ok(batch);
    }
    let xids = batch
        .column_by_name(XID_COLUMN)
        .and_then(|column| column.as_primitive_opt::<UInt32Type>())
        .ok_or(Error::UnexpectedEvent {
            reason: "a streamed block without transaction ids",
        })?;
    let keep: BooleanArray = xids
        .iter()
        .map(|xid| Some(!xid.is_some_and(|xid| aborted.contains(&xid))))
        .collect();
    arrow::compute::filter_record_batch(&batch, &keep).map_err(|source| Error::Arrow {
        table: relation.table.to_string(),
        source,
    })
}
