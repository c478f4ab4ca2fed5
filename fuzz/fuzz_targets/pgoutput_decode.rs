//! The `pgoutput` decoder and the change decoder on arbitrary bytes.
//!
//! Input: one flags byte (bit 0: values in binary form), then messages, each preceded by its
//! length as a big-endian u16. Properties: decoding never panics, alone or in a sequence;
//! whatever decodes can be walked to its end; every batch the change decoder emits has its
//! relation's schema and at most `batch_rows` rows.

#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use tidegate_cdc::pgoutput::{Message, decode};
use tidegate_cdc::{BatchConfig, ChangeDecoder, ChangeEvent, Lsn};

const BATCH_ROWS: usize = 3;

fn walk(message: &Message<'_>) {
    let tuples = match message {
        Message::Insert(insert) => vec![&insert.new],
        Message::Update(update) => {
            let mut tuples = vec![&update.new];
            tuples.extend(update.old.as_ref().map(|(_, old)| old));
            tuples
        }
        Message::Delete(delete) => vec![&delete.old.1],
        Message::Truncate(truncate) => {
            let _ = truncate.relations().count();
            vec![]
        }
        _ => vec![],
    };
    for tuple in tuples {
        assert_eq!(tuple.columns().count(), tuple.len(), "a checked tuple walks to its end");
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    for in_stream in [false, true] {
        if let Ok(message) = decode(rest, in_stream) {
            walk(&message);
        }
    }

    let config = BatchConfig::default()
        .with_batch_rows(BATCH_ROWS)
        .with_batch_bytes(4096)
        .with_binary(flags & 1 == 1);
    let mut decoder = ChangeDecoder::new(config).expect("valid config");
    let mut events = VecDeque::new();
    let mut input = rest;
    let mut lsn = 0;
    while let [high, low, tail @ ..] = input {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (message, next) = tail.split_at(len);
        input = next;
        lsn += 1;
        // An error ends the stream, as it would in production.
        if decoder.decode(Lsn::new(lsn), message, &mut events).is_err() {
            break;
        }
    }
    for event in events {
        if let ChangeEvent::Changes(batch) = event {
            assert!(batch.batch.num_rows() <= BATCH_ROWS);
            assert_eq!(batch.batch.schema(), batch.relation.schema);
        }
    }
});
