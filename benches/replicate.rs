//! The hot copy path, step by step, on 65,536 TPC-H-like `lineitem` rows:
//!
//! * `copy_decode/whole`: a PostgreSQL binary `COPY` stream decoded into a record batch, fed
//!   as one buffer;
//! * `copy_decode/per_row`: the same stream fed one row at a time, as the server sends it (one
//!   `CopyData` message per row);
//! * `copy_encode`: the batch encoded back into binary `COPY` (the PostgreSQL target's path);
//! * `parquet_encode`: the batch written as a zstd Parquet file in memory (the Parquet sink's
//!   CPU work, without I/O).
//!
//! Throughput is in rows. Run with `cargo bench --bench replicate`.

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::Schema;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tidegate::replicate::postgres::{BinaryCopyDecoder, BinaryCopyEncoder, PgType};

const ROWS: usize = 65_536;

fn lineitem_types() -> Vec<PgType> {
    let money = PgType::Numeric {
        precision: 15,
        scale: 2,
    };
    vec![
        PgType::Int8,
        PgType::Int4,
        PgType::Int4,
        PgType::Int4,
        money.clone(),
        money.clone(),
        money.clone(),
        money,
        PgType::Text,
        PgType::Text,
        PgType::Date,
        PgType::Date,
        PgType::Date,
        PgType::Text,
        PgType::Text,
        PgType::Text,
    ]
}

fn lineitem_batch() -> RecordBatch {
    let names = [
        "l_orderkey",
        "l_partkey",
        "l_suppkey",
        "l_linenumber",
        "l_quantity",
        "l_extendedprice",
        "l_discount",
        "l_tax",
        "l_returnflag",
        "l_linestatus",
        "l_shipdate",
        "l_commitdate",
        "l_receiptdate",
        "l_shipinstruct",
        "l_shipmode",
        "l_comment",
    ];
    let types = lineitem_types();
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .zip(&types)
            .map(|(name, pg_type)| pg_type.field(name, true))
            .collect::<Vec<_>>(),
    ));
    let g: Vec<i64> = (0..ROWS as i64).collect();
    let money = |f: &dyn Fn(i64) -> i128| -> ArrayRef {
        Arc::new(
            Decimal128Array::from_iter_values(g.iter().map(|&g| f(g)))
                .with_precision_and_scale(15, 2)
                .expect("valid decimal"),
        )
    };
    let text = |f: &dyn Fn(i64) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(g.iter().map(|&g| f(g))))
    };
    let date = |f: &dyn Fn(i64) -> i32| -> ArrayRef {
        Arc::new(Date32Array::from_iter_values(g.iter().map(|&g| f(g))))
    };
    let int = |f: &dyn Fn(i64) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(g.iter().map(|&g| f(g))))
    };
    let comment = "carefully final deposits detect slyly agai quickly regular packages wake";
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(g.iter().map(|g| g / 4 + 1))),
        int(&|g| ((g * 7919) % 200_000 + 1) as i32),
        int(&|g| ((g * 104_729) % 10_000 + 1) as i32),
        int(&|g| (g % 4 + 1) as i32),
        money(&|g| i128::from((g * 31) % 50 + 1) * 100),
        money(&|g| i128::from((g * 7919) % 9_000_000 + 90_000)),
        money(&|g| i128::from(g % 11)),
        money(&|g| i128::from(g % 9)),
        text(&|g| ["A", "N", "R"][(g % 3) as usize].to_owned()),
        text(&|g| ["F", "O"][(g % 2) as usize].to_owned()),
        date(&|g| 8036 + ((g * 37) % 2526) as i32),
        date(&|g| 8036 + ((g * 37) % 2526) as i32 + (g % 61 - 30) as i32),
        date(&|g| 8036 + ((g * 37) % 2526) as i32 + (g % 30 + 1) as i32),
        text(&|g| {
            [
                "DELIVER IN PERSON",
                "COLLECT COD",
                "NONE",
                "TAKE BACK RETURN",
            ][(g % 4) as usize]
                .to_owned()
        }),
        text(&|g| {
            ["REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB"][(g % 7) as usize].to_owned()
        }),
        text(&|g| {
            let start = ((g * 13) % 50) as usize;
            comment[start..(start + 10 + (g % 34) as usize).min(comment.len())].to_owned()
        }),
    ];
    RecordBatch::try_new(schema, columns).expect("lineitem batch")
}

/// The batch as binary COPY, and the offsets where each row starts.
fn copy_stream(batch: &RecordBatch) -> (Vec<u8>, Vec<usize>) {
    let mut encoder = BinaryCopyEncoder::new("lineitem", &batch.schema()).expect("encodable");
    let mut stream = Vec::new();
    let mut starts = Vec::with_capacity(batch.num_rows() + 1);
    for row in 0..batch.num_rows() {
        starts.push(stream.len());
        encoder
            .encode(&batch.slice(row, 1), &mut stream)
            .expect("encodes");
    }
    starts.push(stream.len());
    encoder.finish(&mut stream);
    // The first row's chunk also carries the 19-byte header, as PostgreSQL sends it.
    starts[0] = 0;
    (stream, starts)
}

fn decoder(batch: &RecordBatch) -> BinaryCopyDecoder {
    BinaryCopyDecoder::new("lineitem", batch.schema(), &lineitem_types(), ROWS, 1 << 30)
        .expect("decoder")
}

fn replicate(c: &mut Criterion) {
    let batch = lineitem_batch();
    let (stream, starts) = copy_stream(&batch);

    let mut group = c.benchmark_group("copy_decode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("whole", |b| {
        b.iter_batched(
            || decoder(&batch),
            |mut decoder| {
                let mut batches = Vec::new();
                let mut input = &stream[..];
                while decoder.decode(&mut input).expect("decodes") {
                    batches.extend(decoder.flush().expect("flushes"));
                }
                batches.extend(decoder.finish().expect("complete"));
                black_box(batches)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("per_row", |b| {
        b.iter_batched(
            || decoder(&batch),
            |mut decoder| {
                let mut batches = Vec::new();
                for window in starts.windows(2) {
                    let mut input = &stream[window[0]..window[1]];
                    while decoder.decode(&mut input).expect("decodes") {
                        batches.extend(decoder.flush().expect("flushes"));
                    }
                }
                let mut trailer = &stream[starts[starts.len() - 1]..];
                decoder.decode(&mut trailer).expect("decodes");
                batches.extend(decoder.finish().expect("complete"));
                black_box(batches)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("copy_encode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("batch", |b| {
        let mut out = Vec::with_capacity(stream.len());
        b.iter(|| {
            out.clear();
            let mut encoder =
                BinaryCopyEncoder::new("lineitem", &batch.schema()).expect("encodable");
            encoder.encode(&batch, &mut out).expect("encodes");
            encoder.finish(&mut out);
            black_box(out.len())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("parquet_encode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    group.bench_function("zstd", |b| {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        b.iter(|| {
            let mut out = Vec::with_capacity(4 << 20);
            let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props.clone()))
                .expect("writer");
            writer.write(&batch).expect("writes");
            writer.close().expect("closes");
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, replicate);
criterion_main!(benches);
