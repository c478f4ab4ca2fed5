//! The PostgreSQL binary `COPY` decoder on arbitrary bytes.
//!
//! Input: one byte choosing the column types, one byte choosing the chunk size the stream is
//! fed in, then the stream. Properties: the decoder never panics; and whatever it accepts,
//! re-encoded with the `COPY` encoder and decoded again, gives the same record batch.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tidegate_replicate::arrow::datatypes::Schema;
use tidegate_replicate::arrow::record_batch::RecordBatch;
use tidegate_replicate::postgres::{BinaryCopyDecoder, BinaryCopyEncoder, PgType};

fn types(selector: u8) -> Vec<PgType> {
    let all = [
        PgType::Int4,
        PgType::Text,
        PgType::Numeric { precision: 20, scale: 4 },
        PgType::Array(Box::new(PgType::Int8)),
        PgType::Interval,
        PgType::Timestamp,
        PgType::Jsonb,
        PgType::Uuid,
        PgType::Bool,
        PgType::Date,
        PgType::Bytea,
        PgType::Array(Box::new(PgType::Text)),
    ];
    let count = usize::from(selector % 4) + 1;
    (0..count)
        .map(|i| all[(usize::from(selector / 4) + i * 5) % all.len()].clone())
        .collect()
}

fn decode(types: &[PgType], stream: &[u8], chunk: usize) -> Option<Vec<RecordBatch>> {
    let fields: Vec<_> = types
        .iter()
        .enumerate()
        .map(|(i, t)| t.field(&format!("c{i}"), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut decoder = BinaryCopyDecoder::new("fuzz", schema, types, 7, 1 << 16).ok()?;
    let mut batches = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        let mut input = piece;
        while decoder.decode(&mut input).ok()? {
            batches.extend(decoder.flush().ok()?);
        }
    }
    batches.extend(decoder.finish().ok()?);
    Some(batches)
}

fuzz_target!(|data: &[u8]| {
    let [selector, chunk, stream @ ..] = data else {
        return;
    };
    let types = types(*selector);
    let Some(batches) = decode(&types, stream, usize::from(*chunk)) else {
        return;
    };
    // Accepted input round-trips through the encoder.
    let Some(first) = batches.first() else {
        return;
    };
    let mut encoder = BinaryCopyEncoder::new("fuzz", &first.schema()).expect("decoded schemas encode");
    let mut encoded = Vec::new();
    for batch in &batches {
        encoder.encode(batch, &mut encoded).expect("decoded values encode");
    }
    encoder.finish(&mut encoded);
    // The encoder writes what Arrow can tell apart: JSON text as `json`, without jsonb's
    // version byte.
    let written: Vec<PgType> = types
        .iter()
        .map(|t| match t {
            PgType::Jsonb => PgType::Json,
            other => other.clone(),
        })
        .collect();
    let again = decode(&written, &encoded, 4096).expect("encoded streams decode");
    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    assert_eq!(rows(&batches), rows(&again));
    let concat = |b: &[RecordBatch]| {
        tidegate_replicate::arrow::compute::concat_batches(&b[0].schema(), b).expect("same schema")
    };
    assert_eq!(concat(&batches), concat(&again));
});
