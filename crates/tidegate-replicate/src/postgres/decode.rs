//! Decoding of PostgreSQL's binary `COPY` format straight into Arrow arrays.
//!
//! The format ([PostgreSQL documentation, "Binary Format"][binary]): an 11-byte signature, a
//! flags word and a header extension, then one tuple per row — a 16-bit field count, and per
//! field a 32-bit length (`-1` for NULL) and the value in the type's binary `send` form — and a
//! trailer of field count `-1`.
//!
//! [`BinaryCopyDecoder`] appends each field directly to its column's Arrow builder: no per-row
//! structure, no per-value allocation (strings and byte strings are copied once, into the
//! builder's buffer). It takes input in chunks of any size, so it does not rely on the server
//! sending one row per `CopyData` message, and it never panics on malformed input: every
//! length is checked before it is used.
//!
//! Errors name the column and what was wrong with the value's *form* ("12 bytes for an
//! int4"), never the value.
//!
//! [binary]: https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Array, Int32Builder,
    Int64Array, Int64Builder, ListArray, StringArray, StructArray, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::types::{PgType, interval_fields};
use crate::error::{Error, Result};

/// The signature that opens every binary `COPY` stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags word and header extension length.
const HEADER_LEN: usize = 19;
/// Builders are sized for up to this many rows up front, so they do not grow (copying what
/// they hold) while a batch fills.
const MAX_PREALLOCATED_ROWS: usize = 65_536;
/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Rows,
    Done,
}

/// Decodes a binary `COPY` stream into record batches of a fixed schema.
///
/// Feed input with [`decode`](Self::decode); take a batch with [`flush`](Self::flush) whenever
/// `decode` reports the batch full, and the last one with [`finish`](Self::finish) when the
/// input ends.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::Schema;
/// use tidegate_replicate::postgres::{BinaryCopyDecoder, PgType};
///
/// let types = [PgType::Int4, PgType::Text];
/// let schema = Arc::new(Schema::new(vec![
///     types[0].field("id", false),
///     types[1].field("name", true),
/// ]));
/// let mut decoder = BinaryCopyDecoder::new("public.t", schema, &types, 1024, 1 << 20)?;
///
/// let mut stream = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
/// stream.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 2, b'h', b'i']);
/// stream.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff]);
/// stream.extend_from_slice(&[0xff, 0xff]);
///
/// let mut input = &stream[..];
/// assert!(!decoder.decode(&mut input)?, "two rows do not fill a batch");
/// let batch = decoder.finish()?.expect("two rows");
/// assert_eq!(batch.num_rows(), 2);
/// assert_eq!(batch.column(1).null_count(), 1);
/// # Ok::<(), tidegate_replicate::Error>(())
/// ```
#[derive(Debug)]
pub struct BinaryCopyDecoder {
    table: String,
    schema: SchemaRef,
    types: Vec<PgType>,
    columns: Vec<ColumnDecoder>,
    state: State,
    /// An incomplete row (or header) carried over to the next input.
    pending: Vec<u8>,
    rows: usize,
    bytes: usize,
    batch_rows: usize,
    batch_bytes: usize,
}

impl BinaryCopyDecoder {
    /// A decoder for rows of `types`, producing batches of `schema` with at most `batch_rows`
    /// rows; a batch is also closed once it holds `batch_bytes` bytes of row data.
    ///
    /// `schema` must have one field per type, of the type's [`PgType::data_type`]. `table`
    /// names the table in errors.
    pub fn new(
        table: impl Into<String>,
        schema: SchemaRef,
        types: &[PgType],
        batch_rows: usize,
        batch_bytes: usize,
    ) -> Result<Self> {
        let table = table.into();
        if batch_rows == 0 || batch_bytes == 0 {
            return Err(Error::InvalidConfig {
                reason: "batch_rows and batch_bytes must be at least 1",
            });
        }
        if schema.fields().len() != types.len()
            || schema
                .fields()
                .iter()
                .zip(types)
                .any(|(field, pg_type)| field.data_type() != &pg_type.data_type())
        {
            return Err(Error::SchemaMismatch { table });
        }
        let capacity = batch_rows.min(MAX_PREALLOCATED_ROWS);
        let columns = schema
            .fields()
            .iter()
            .zip(types)
            .map(|(field, pg_type)| ColumnDecoder::new(pg_type, field, capacity, capacity * 16))
            .collect();
        Ok(Self {
            table,
            schema,
            types: types.to_vec(),
            columns,
            state: State::Header,
            pending: Vec::new(),
            rows: 0,
            bytes: 0,
            batch_rows,
            batch_bytes,
        })
    }

    /// Decodes rows from `input`, advancing it past what was consumed.
    ///
    /// Returns `Ok(true)` when the current batch is full: call [`flush`](Self::flush), then
    /// `decode` again with the rest of `input` (which may be empty: carried-over bytes are
    /// decoded first). Returns `Ok(false)` when all of `input` is consumed; an incomplete row
    /// at its end is kept for the next call.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<bool> {
        if self.pending.is_empty() {
            let full = self.decode_slice(input)?;
            if !full && !input.is_empty() {
                self.pending.extend_from_slice(input);
                *input = &[];
            }
            return Ok(full);
        }
        self.pending.extend_from_slice(input);
        *input = &[];
        let buffer = std::mem::take(&mut self.pending);
        let mut rest = &buffer[..];
        let result = self.decode_slice(&mut rest);
        let consumed = buffer.len() - rest.len();
        self.pending = buffer;
        self.pending.drain(..consumed);
        result
    }

    /// Rows decoded into the current batch.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Whether the trailer has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the rows decoded so far as a batch; `None` when there are none.
    pub fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut arrays = Vec::with_capacity(self.columns.len());
        let rows = self.rows.min(MAX_PREALLOCATED_ROWS);
        for (index, column) in self.columns.iter_mut().enumerate() {
            let array = column.finish().map_err(|error| match error {
                FinishError::Value(reason) => Error::UnrepresentableValue {
                    table: self.table.clone(),
                    column: self.schema.field(index).name().clone(),
                    reason,
                },
                FinishError::Arrow(source) => Error::Arrow {
                    table: self.table.clone(),
                    source,
                },
            })?;
            // The next batch is likely shaped like this one: size its builders to match.
            let field = self.schema.field(index);
            let data = value_bytes(&array).unwrap_or(rows * 16);
            let data = data + data / 8;
            *column = ColumnDecoder::new(&self.types[index], &Arc::new(field.clone()), rows, data);
            arrays.push(array);
        }
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map(Some)
            .map_err(|source| Error::Arrow {
                table: self.table.clone(),
                source,
            })
    }

    /// Ends the stream: checks that the trailer was read and nothing follows it, and returns
    /// the last batch.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if self.state != State::Done {
            return Err(self.protocol("the stream ended before its trailer"));
        }
        if !self.pending.is_empty() {
            return Err(self.protocol("data after the trailer"));
        }
        self.flush()
    }

    fn protocol(&self, reason: &'static str) -> Error {
        Error::CopyFormat {
            table: self.table.clone(),
            reason,
        }
    }

    fn decode_slice(&mut self, input: &mut &[u8]) -> Result<bool> {
        loop {
            match self.state {
                State::Header => {
                    let Some(header) = input.get(..HEADER_LEN) else {
                        return Ok(false);
                    };
                    if &header[..11] != SIGNATURE {
                        return Err(self.protocol("not a binary COPY stream (bad signature)"));
                    }
                    let flags = be_u32(&header[11..15]);
                    if flags & (1 << 16) != 0 {
                        return Err(self.protocol("the stream carries OIDs, which are not read"));
                    }
                    if flags & 0xffff_0000 & !(1 << 16) != 0 {
                        return Err(self.protocol("unknown critical flag in the header"));
                    }
                    let extension = be_u32(&header[15..19]) as usize;
                    let Some(rest) = input.get(HEADER_LEN.saturating_add(extension)..) else {
                        return Ok(false);
                    };
                    *input = rest;
                    self.state = State::Rows;
                }
                State::Rows => {
                    if self.rows >= self.batch_rows || self.bytes >= self.batch_bytes {
                        return Ok(true);
                    }
                    let Some(count) = input.get(..2) else {
                        return Ok(false);
                    };
                    let count = i16::from_be_bytes([count[0], count[1]]);
                    if count == -1 {
                        *input = &input[2..];
                        self.state = State::Done;
                        continue;
                    }
                    if usize::try_from(count).ok() != Some(self.columns.len()) {
                        return Err(self.protocol("a row has a different number of fields"));
                    }
                    let Some(row_len) = self.row_len(input)? else {
                        return Ok(false);
                    };
                    self.decode_row(&input[2..row_len])?;
                    *input = &input[row_len..];
                    self.rows += 1;
                    self.bytes += row_len;
                }
                State::Done => {
                    if !input.is_empty() {
                        return Err(self.protocol("data after the trailer"));
                    }
                    return Ok(false);
                }
            }
        }
    }

    /// The length of the complete row at the start of `input` (field count included), or
    /// `None` if `input` ends inside it.
    fn row_len(&self, input: &[u8]) -> Result<Option<usize>> {
        let mut at = 2usize;
        for _ in 0..self.columns.len() {
            let Some(len) = input.get(at..at + 4) else {
                return Ok(None);
            };
            let len = be_i32(len);
            at += 4;
            if len == -1 {
                continue;
            }
            let Ok(len) = usize::try_from(len) else {
                return Err(self.protocol("a field has a negative length"));
            };
            at += len;
            if at > input.len() {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// Appends one complete row (without its field count) to the column builders.
    fn decode_row(&mut self, mut row: &[u8]) -> Result<()> {
        for (index, column) in self.columns.iter_mut().enumerate() {
            // `row_len` has checked every length against the row.
            let len = be_i32(&row[..4]);
            row = &row[4..];
            let value = if len < 0 {
                None
            } else {
                let (value, rest) = row.split_at(len as usize);
                row = rest;
                Some(value)
            };
            if let Err(reason) = column.append(value) {
                return Err(Error::UnrepresentableValue {
                    table: self.table.clone(),
                    column: self.schema.field(index).name().clone(),
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// Decodes single values of one column, each in PostgreSQL's binary `send` form, into an
/// Arrow array.
///
/// This is the per-value half of [`BinaryCopyDecoder`], for values that do not come in a
/// `COPY` stream: logical replication with `binary 'true'` sends each column of a tuple in
/// the same form as a binary `COPY` field. Values are appended straight into the column's
/// builder, as in `COPY` decoding.
///
/// ```
/// use arrow::array::{AsArray, Array};
/// use arrow::datatypes::Int32Type;
/// use tidegate_replicate::postgres::{BinaryValueDecoder, PgType};
///
/// let mut decoder = BinaryValueDecoder::new(&PgType::Int4, "id", 16);
/// decoder.append(&7i32.to_be_bytes())?;
/// decoder.append_null();
/// assert!(decoder.append(&[1, 2]).is_err(), "two bytes are no int4");
/// let array = decoder.finish()?;
/// assert_eq!(array.as_primitive::<Int32Type>().value(0), 7);
/// assert!(array.is_null(1));
/// # Ok::<(), tidegate_replicate::postgres::ValueError>(())
/// ```
#[derive(Debug)]
pub struct BinaryValueDecoder {
    pg_type: PgType,
    field: FieldRef,
    column: ColumnDecoder,
    len: usize,
    capacity: usize,
}

impl BinaryValueDecoder {
    /// A decoder for values of `pg_type`, into a nullable field called `name` (see
    /// [`field`](Self::field)), with room for `capacity` values before its builder grows.
    pub fn new(pg_type: &PgType, name: &str, capacity: usize) -> Self {
        let field: FieldRef = Arc::new(pg_type.field(name, true));
        let capacity = capacity.min(MAX_PREALLOCATED_ROWS);
        Self {
            pg_type: pg_type.clone(),
            column: ColumnDecoder::new(pg_type, &field, capacity, capacity * 16),
            field,
            len: 0,
            capacity,
        }
    }

    /// The field the decoded arrays belong to: the type's Arrow type and extension tag.
    pub fn field(&self) -> &FieldRef {
        &self.field
    }

    /// Appends one value in binary form. On error nothing is known about the builder's
    /// state: the caller must drop the batch being built.
    pub fn append(&mut self, value: &[u8]) -> std::result::Result<(), ValueError> {
        self.column.append(Some(value)).map_err(ValueError)?;
        self.len += 1;
        Ok(())
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.column.append_null();
        self.len += 1;
    }

    /// Values appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value has been appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the values appended so far as an array of [`field`](Self::field)'s type and
    /// starts over. Text is checked to be UTF-8 here, in bulk.
    pub fn finish(&mut self) -> std::result::Result<ArrayRef, ValueError> {
        self.len = 0;
        let fresh = ColumnDecoder::new(
            &self.pg_type,
            &self.field,
            self.capacity,
            self.capacity * 16,
        );
        let mut column = std::mem::replace(&mut self.column, fresh);
        column.finish().map_err(|error| match error {
            FinishError::Value(reason) => ValueError(reason),
            FinishError::Arrow(_) => ValueError("the values do not form a valid array"),
        })
    }
}

/// What is wrong with a value's binary form ("an int4 that is not 4 bytes long"); never
/// holds or quotes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueError(&'static str);

impl ValueError {
    /// The reason, as a fixed text.
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ValueError {}

/// What is wrong with a value's binary form; never quotes the value.
type ValueReason = &'static str;

const NOT_UTF8: ValueReason = "text that is not valid UTF-8";

/// Why a column's values could not become an array.
#[derive(Debug)]
enum FinishError {
    /// A value (found only when the batch is validated in bulk).
    Value(ValueReason),
    Arrow(arrow::error::ArrowError),
}

impl From<ValueReason> for FinishError {
    fn from(reason: ValueReason) -> Self {
        Self::Value(reason)
    }
}

impl From<arrow::error::ArrowError> for FinishError {
    fn from(error: arrow::error::ArrowError) -> Self {
        Self::Arrow(error)
    }
}

/// One column's builder and how it decodes values.
#[derive(Debug)]
enum ColumnDecoder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Oid(UInt32Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Numeric {
        builder: Decimal128Builder,
        precision: u8,
        scale: i8,
    },
    /// Text is collected as bytes and validated as UTF-8 once per batch, in bulk.
    Text(BinaryBuilder),
    Jsonb(BinaryBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp {
        builder: TimestampMicrosecondBuilder,
        utc: bool,
    },
    Interval {
        months: Vec<i32>,
        days: Vec<i32>,
        micros: Vec<i64>,
        nulls: NullBufferBuilder,
    },
    Uuid(FixedSizeBinaryBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        values: Box<ColumnDecoder>,
    },
}

impl ColumnDecoder {
    /// A decoder with room for `capacity` values and, for variable-length types,
    /// `data_capacity` bytes.
    fn new(pg_type: &PgType, field: &FieldRef, capacity: usize, data_capacity: usize) -> Self {
        match pg_type {
            PgType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Int2 => Self::Int2(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => Self::Int4(Int32Builder::with_capacity(capacity)),
            PgType::Int8 => Self::Int8(Int64Builder::with_capacity(capacity)),
            PgType::Oid => Self::Oid(UInt32Builder::with_capacity(capacity)),
            PgType::Float4 => Self::Float4(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Self::Float8(Float64Builder::with_capacity(capacity)),
            PgType::Numeric { precision, scale } => Self::Numeric {
                builder: Decimal128Builder::with_capacity(capacity),
                precision: *precision,
                scale: *scale,
            },
            PgType::Text | PgType::Json => {
                Self::Text(BinaryBuilder::with_capacity(capacity, data_capacity))
            }
            PgType::Jsonb => Self::Jsonb(BinaryBuilder::with_capacity(capacity, data_capacity)),
            PgType::Bytea => Self::Bytea(BinaryBuilder::with_capacity(capacity, data_capacity)),
            PgType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            PgType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgType::Timestamp | PgType::TimestampTz => Self::Timestamp {
                builder: TimestampMicrosecondBuilder::with_capacity(capacity),
                utc: *pg_type == PgType::TimestampTz,
            },
            PgType::Interval => Self::Interval {
                months: Vec::with_capacity(capacity),
                days: Vec::with_capacity(capacity),
                micros: Vec::with_capacity(capacity),
                nulls: NullBufferBuilder::new(capacity),
            },
            PgType::Uuid => Self::Uuid(FixedSizeBinaryBuilder::with_capacity(capacity, 16)),
            PgType::Array(element) => {
                let arrow::datatypes::DataType::List(element_field) = field.data_type() else {
                    unreachable!("PgType::Array maps to a List")
                };
                Self::List {
                    field: Arc::clone(element_field),
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(capacity),
                    values: Box::new(Self::new(element, element_field, capacity, data_capacity)),
                }
            }
        }
    }

    fn append(&mut self, value: Option<&[u8]>) -> Result<(), ValueReason> {
        let Some(value) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            Self::Bool(builder) => match value {
                [byte] => builder.append_value(*byte != 0),
                _ => return Err("a boolean that is not 1 byte long"),
            },
            Self::Int2(builder) => builder.append_value(i16::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "an int2 that is not 2 bytes long")?,
            )),
            Self::Int4(builder) => builder.append_value(i32::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "an int4 that is not 4 bytes long")?,
            )),
            Self::Int8(builder) => builder.append_value(i64::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "an int8 that is not 8 bytes long")?,
            )),
            Self::Oid(builder) => builder.append_value(u32::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "an oid that is not 4 bytes long")?,
            )),
            Self::Float4(builder) => builder.append_value(f32::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "a float4 that is not 4 bytes long")?,
            )),
            Self::Float8(builder) => builder.append_value(f64::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "a float8 that is not 8 bytes long")?,
            )),
            Self::Numeric {
                builder,
                precision,
                scale,
            } => builder.append_value(numeric_to_i128(value, *precision, *scale)?),
            Self::Text(builder) => builder.append_value(value),
            Self::Jsonb(builder) => match value.split_first() {
                Some((1, json)) => builder.append_value(json),
                _ => return Err("a jsonb value not in binary format version 1"),
            },
            Self::Bytea(builder) => builder.append_value(value),
            Self::Date(builder) => {
                let days = i32::from_be_bytes(
                    value
                        .try_into()
                        .map_err(|_| "a date that is not 4 bytes long")?,
                );
                if days == i32::MAX || days == i32::MIN {
                    return Err("an infinite date has no Date32 form");
                }
                builder.append_value(
                    days.checked_add(EPOCH_DAYS)
                        .ok_or("a date outside the Date32 range")?,
                );
            }
            Self::Time(builder) => builder.append_value(i64::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "a time that is not 8 bytes long")?,
            )),
            Self::Timestamp { builder, .. } => {
                let micros = i64::from_be_bytes(
                    value
                        .try_into()
                        .map_err(|_| "a timestamp that is not 8 bytes long")?,
                );
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("an infinite timestamp has no Timestamp form");
                }
                builder.append_value(
                    micros.checked_add(EPOCH_MICROS).ok_or(
                        "a timestamp after 294247-01-10 has no Timestamp(Microsecond) form",
                    )?,
                );
            }
            Self::Interval {
                months,
                days,
                micros,
                nulls,
            } => {
                let value: &[u8; 16] = value
                    .try_into()
                    .map_err(|_| "an interval that is not 16 bytes long")?;
                micros.push(i64::from_be_bytes(value[..8].try_into().expect("8 bytes")));
                days.push(i32::from_be_bytes(
                    value[8..12].try_into().expect("4 bytes"),
                ));
                months.push(i32::from_be_bytes(value[12..].try_into().expect("4 bytes")));
                nulls.append_non_null();
            }
            Self::Uuid(builder) => {
                if value.len() != 16 {
                    return Err("a uuid that is not 16 bytes long");
                }
                builder
                    .append_value(value)
                    .map_err(|_| "a uuid that is not 16 bytes long")?;
            }
            Self::List {
                offsets,
                nulls,
                values,
                ..
            } => {
                let appended = append_array(values, value)?;
                let last = *offsets.last().expect("offsets start with 0");
                let next = i32::try_from(appended)
                    .ok()
                    .and_then(|appended| last.checked_add(appended))
                    .ok_or("more than 2^31 array elements in one batch")?;
                offsets.push(next);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(builder) => builder.append_null(),
            Self::Int2(builder) => builder.append_null(),
            Self::Int4(builder) => builder.append_null(),
            Self::Int8(builder) => builder.append_null(),
            Self::Oid(builder) => builder.append_null(),
            Self::Float4(builder) => builder.append_null(),
            Self::Float8(builder) => builder.append_null(),
            Self::Numeric { builder, .. } => builder.append_null(),
            Self::Text(builder) | Self::Jsonb(builder) => builder.append_null(),
            Self::Bytea(builder) => builder.append_null(),
            Self::Date(builder) => builder.append_null(),
            Self::Time(builder) => builder.append_null(),
            Self::Timestamp { builder, .. } => builder.append_null(),
            Self::Interval {
                months,
                days,
                micros,
                nulls,
            } => {
                months.push(0);
                days.push(0);
                micros.push(0);
                nulls.append_null();
            }
            Self::Uuid(builder) => builder.append_null(),
            Self::List { offsets, nulls, .. } => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    /// Takes the values appended so far as an array and starts over.
    fn finish(&mut self) -> Result<ArrayRef, FinishError> {
        Ok(match self {
            Self::Bool(builder) => Arc::new(builder.finish()),
            Self::Int2(builder) => Arc::new(builder.finish()),
            Self::Int4(builder) => Arc::new(builder.finish()),
            Self::Int8(builder) => Arc::new(builder.finish()),
            Self::Oid(builder) => Arc::new(builder.finish()),
            Self::Float4(builder) => Arc::new(builder.finish()),
            Self::Float8(builder) => Arc::new(builder.finish()),
            Self::Numeric {
                builder,
                precision,
                scale,
            } => Arc::new(
                builder
                    .finish()
                    .with_precision_and_scale(*precision, *scale)?,
            ),
            Self::Text(builder) | Self::Jsonb(builder) => {
                Arc::new(StringArray::try_from_binary(builder.finish()).map_err(|_| NOT_UTF8)?)
            }
            Self::Bytea(builder) => Arc::new(builder.finish()),
            Self::Date(builder) => Arc::new(builder.finish()),
            Self::Time(builder) => Arc::new(builder.finish()),
            Self::Timestamp { builder, utc } => {
                let array = builder.finish();
                if *utc {
                    Arc::new(array.with_timezone("UTC"))
                } else {
                    Arc::new(array)
                }
            }
            Self::Interval {
                months,
                days,
                micros,
                nulls,
            } => {
                let capacity = months.capacity();
                let arrays: Vec<ArrayRef> = vec![
                    Arc::new(Int32Array::from(std::mem::replace(
                        months,
                        Vec::with_capacity(capacity),
                    ))),
                    Arc::new(Int32Array::from(std::mem::replace(
                        days,
                        Vec::with_capacity(capacity),
                    ))),
                    Arc::new(Int64Array::from(std::mem::replace(
                        micros,
                        Vec::with_capacity(capacity),
                    ))),
                ];
                Arc::new(StructArray::try_new(
                    interval_fields(),
                    arrays,
                    nulls.finish(),
                )?)
            }
            Self::Uuid(builder) => Arc::new(builder.finish()),
            Self::List {
                field,
                offsets,
                nulls,
                values,
            } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                Arc::new(ListArray::try_new(
                    Arc::clone(field),
                    offsets,
                    values.finish()?,
                    nulls.finish(),
                )?)
            }
        })
    }
}

/// The bytes of values a string or binary array holds (not its offsets or spare capacity).
fn value_bytes(array: &ArrayRef) -> Option<usize> {
    use arrow::array::AsArray;
    match array.data_type() {
        arrow::datatypes::DataType::Utf8 => Some(array.as_string::<i32>().values().len()),
        arrow::datatypes::DataType::Binary => Some(array.as_binary::<i32>().values().len()),
        _ => None,
    }
}

/// Appends the elements of a one-dimensional array in binary form; returns how many.
fn append_array(values: &mut ColumnDecoder, mut array: &[u8]) -> Result<usize, ValueReason> {
    const MALFORMED: ValueReason = "a malformed array";
    let header = array.get(..12).ok_or(MALFORMED)?;
    let dimensions = be_i32(&header[..4]);
    array = &array[12..];
    match dimensions {
        0 => {
            return if array.is_empty() {
                Ok(0)
            } else {
                Err(MALFORMED)
            };
        }
        1 => {}
        2.. => return Err("a multi-dimensional array (only one-dimensional arrays are read)"),
        _ => return Err(MALFORMED),
    }
    let dimension = array.get(..8).ok_or(MALFORMED)?;
    let count = usize::try_from(be_i32(&dimension[..4])).map_err(|_| MALFORMED)?;
    array = &array[8..];
    for _ in 0..count {
        let len = be_i32(array.get(..4).ok_or(MALFORMED)?);
        array = &array[4..];
        if len == -1 {
            values.append(None)?;
        } else {
            let len = usize::try_from(len).map_err(|_| MALFORMED)?;
            let element = array.get(..len).ok_or(MALFORMED)?;
            array = &array[len..];
            values.append(Some(element))?;
        }
    }
    if array.is_empty() {
        Ok(count)
    } else {
        Err(MALFORMED)
    }
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A `numeric` in binary form as an integer scaled by `10^scale`, checked against `precision`.
///
/// The form: digit count, weight (of the first base-10000 digit), sign, display scale, then
/// the base-10000 digits.
fn numeric_to_i128(value: &[u8], precision: u8, scale: i8) -> Result<i128, ValueReason> {
    const MALFORMED: ValueReason = "a malformed numeric";
    let header = value.get(..8).ok_or(MALFORMED)?;
    let digit_count = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let sign = u16::from_be_bytes([header[4], header[5]]);
    let digits = &value[8..];
    if digits.len() != digit_count * 2 {
        return Err(MALFORMED);
    }
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err("a NaN numeric has no Decimal128 form"),
        0xD000 | 0xF000 => return Err("an infinite numeric has no Decimal128 form"),
        _ => return Err(MALFORMED),
    };
    const OUT_OF_RANGE: ValueReason = "a numeric beyond the column's declared precision and scale";
    let Some((head, last)) = digits.split_last_chunk::<2>() else {
        return Ok(0);
    };
    // value × 10^scale = Σ digit_i × 10^(4 × (weight − i) + scale). Only the last digit may
    // reach below the scale, by at most three decimal places, and those must be zeros.
    let last_exponent = 4 * (weight - (digit_count as i32 - 1)) + i32::from(scale);
    let last = u64::from(u16::from_be_bytes(*last));
    if last > 9999 {
        return Err(MALFORMED);
    }
    let (last, last_width, tail) = match last_exponent {
        0.. => (last, 4, last_exponent as u32),
        -3..=-1 => {
            let divisor = POW10[(-last_exponent) as usize] as u64;
            if last % divisor != 0 {
                return Err(OUT_OF_RANGE);
            }
            (last / divisor, (4 + last_exponent) as u32, 0)
        }
        _ => return Err(OUT_OF_RANGE),
    };
    // Machine words first (every numeric(p ≤ 18) fits), 128 bits only when they overflow.
    let mut narrow = Some(0u64);
    for digit in head.chunks_exact(2) {
        let digit = u16::from_be_bytes([digit[0], digit[1]]);
        if digit > 9999 {
            return Err(MALFORMED);
        }
        narrow = narrow.and_then(|m| m.checked_mul(10_000)?.checked_add(u64::from(digit)));
    }
    let narrow = narrow.and_then(|m| {
        m.checked_mul(POW10[last_width as usize] as u64)?
            .checked_add(last)?
            .checked_mul(u64::try_from(*POW10.get(tail as usize)?).ok()?)
    });
    let magnitude = match narrow {
        Some(magnitude) => u128::from(magnitude),
        None => {
            let mut wide = 0u128;
            for digit in head.chunks_exact(2) {
                let digit = u16::from_be_bytes([digit[0], digit[1]]);
                wide = wide
                    .checked_mul(10_000)
                    .and_then(|m| m.checked_add(u128::from(digit)))
                    .ok_or(OUT_OF_RANGE)?;
            }
            wide.checked_mul(POW10[last_width as usize])
                .and_then(|m| m.checked_add(u128::from(last)))
                .and_then(|m| m.checked_mul(*POW10.get(tail as usize)?))
                .ok_or(OUT_OF_RANGE)?
        }
    };
    if magnitude >= POW10[usize::from(precision).min(38)] {
        return Err(OUT_OF_RANGE);
    }
    // Below 10^38, so it fits.
    let magnitude = magnitude as i128;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Powers of ten that fit in 128 bits: `POW10[n] == 10^n`.
const POW10: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut n = 1;
    while n < 39 {
        table[n] = table[n - 1] * 10;
        n += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary form of a numeric from its parts.
    fn numeric(weight: i16, sign: u16, scale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&scale.to_be_bytes());
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_scale_exactly() {
        // 12345.67 = [1, 2345, 6700] with weight 1.
        let value = numeric(1, 0, 2, &[1, 2345, 6700]);
        assert_eq!(numeric_to_i128(&value, 10, 2), Ok(1_234_567));
        assert_eq!(numeric_to_i128(&value, 10, 4), Ok(123_456_700));
        assert!(numeric_to_i128(&value, 10, 1).is_err(), "would round");
        assert!(numeric_to_i128(&value, 6, 2).is_err(), "exceeds precision");
        // -0.0001 = [1] with weight -1.
        assert_eq!(numeric_to_i128(&numeric(-1, 0x4000, 4, &[1]), 5, 4), Ok(-1));
        // 10^37 * 9.99…: the largest values of Decimal128(38, 0).
        let max = numeric(
            9,
            0,
            0,
            &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
        );
        assert_eq!(numeric_to_i128(&max, 38, 0), Ok(10i128.pow(38) - 1));
        // 1200 with scale -2 is stored as 12.
        assert_eq!(numeric_to_i128(&numeric(0, 0, 0, &[1200]), 5, -2), Ok(12));
        assert_eq!(numeric_to_i128(&numeric(0, 0, 0, &[]), 5, 2), Ok(0));
        assert!(
            numeric_to_i128(&numeric(0, 0xC000, 0, &[]), 5, 2).is_err(),
            "NaN"
        );
        assert!(
            numeric_to_i128(&numeric(0, 0xD000, 0, &[]), 5, 2).is_err(),
            "infinity"
        );
        assert!(
            numeric_to_i128(&numeric(0, 0, 0, &[10_000]), 5, 0).is_err(),
            "bad digit"
        );
        assert!(numeric_to_i128(&[0, 1], 5, 0).is_err(), "short");
    }
}
