//! Encoding of Arrow record batches into PostgreSQL's binary `COPY` format, for loading
//! PostgreSQL targets with `COPY … FROM STDIN (FORMAT binary)`.
//!
//! The inverse of [`BinaryCopyDecoder`](super::BinaryCopyDecoder) for every type of the
//! mapping in `docs/types.md`; [`postgres_type`] names the column type each Arrow type is
//! created as.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    LargeBinaryArray, LargeStringArray, ListArray, StringArray, StringViewArray,
    Time64MicrosecondArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Schema, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt32Type,
};
use arrow::record_batch::RecordBatch;

use super::types::{EXTENSION_NAME, interval_fields};
use crate::error::{Error, Result};

/// Signature, flags and an empty header extension.
const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const TRAILER: [u8; 2] = [0xff, 0xff];
const EPOCH_DAYS: i32 = 10_957;
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The PostgreSQL column type an Arrow field is created as, or `None` if it has none.
pub fn postgres_type(field: &Field) -> Option<String> {
    let extension = field.metadata().get(EXTENSION_NAME).map(String::as_str);
    match (field.data_type(), extension) {
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Some("arrow.json")) => {
            Some("json".into())
        }
        (DataType::FixedSizeBinary(16), Some("arrow.uuid")) => Some("uuid".into()),
        (DataType::Decimal128(precision, scale), _) if *scale >= 0 => {
            Some(format!("numeric({precision}, {scale})"))
        }
        // One-dimensional arrays of scalars only.
        (DataType::List(element), _) => element_oid(element)
            .and_then(|_| postgres_type(element))
            .map(|inner| format!("{inner}[]")),
        (data_type, _) => scalar_type(data_type).map(str::to_owned),
    }
}

/// Type names of the scalar types.
fn scalar_type(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Boolean => "boolean",
        DataType::Int16 => "smallint",
        DataType::Int32 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Decimal128(_, scale) if *scale >= 0 => "numeric",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Binary | DataType::LargeBinary => "bytea",
        DataType::Date32 => "date",
        DataType::Time64(TimeUnit::Microsecond) => "time",
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "timestamptz",
        DataType::Struct(fields) if *fields == interval_fields() => "interval",
        DataType::FixedSizeBinary(16) => "bytea",
        _ => return None,
    })
}

/// The oid of an array element type, as binary arrays carry it.
fn element_oid(field: &Field) -> Option<u32> {
    let extension = field.metadata().get(EXTENSION_NAME).map(String::as_str);
    Some(match (field.data_type(), extension) {
        (DataType::Utf8 | DataType::LargeUtf8, Some("arrow.json")) => 114,
        (DataType::FixedSizeBinary(16), Some("arrow.uuid")) => 2950,
        (DataType::Boolean, _) => 16,
        (DataType::Int16, _) => 21,
        (DataType::Int32, _) => 23,
        (DataType::Int64 | DataType::UInt32, _) => 20,
        (DataType::Float32, _) => 700,
        (DataType::Float64, _) => 701,
        (DataType::Decimal128(_, scale), _) if *scale >= 0 => 1700,
        (DataType::Utf8 | DataType::LargeUtf8, _) => 25,
        (DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(16), _) => 17,
        (DataType::Date32, _) => 1082,
        (DataType::Time64(TimeUnit::Microsecond), _) => 1083,
        (DataType::Timestamp(TimeUnit::Microsecond, None), _) => 1114,
        (DataType::Timestamp(TimeUnit::Microsecond, Some(_)), _) => 1184,
        (DataType::Struct(fields), _) if *fields == interval_fields() => 1186,
        _ => return None,
    })
}

/// Encodes record batches of one schema into one binary `COPY` stream.
#[derive(Debug)]
pub struct BinaryCopyEncoder {
    table: String,
    fields: Vec<Field>,
    header_written: bool,
}

impl BinaryCopyEncoder {
    /// An encoder for batches of `schema`; fails naming the first column whose type has no
    /// PostgreSQL form ([`Error::UnsupportedType`]). `table` names the table in errors.
    pub fn new(table: impl Into<String>, schema: &Schema) -> Result<Self> {
        let table = table.into();
        for field in schema.fields() {
            if postgres_type(field).is_none() || !encodable(field) {
                return Err(Error::UnsupportedType {
                    table,
                    column: field.name().clone(),
                    declared: field.data_type().to_string(),
                });
            }
        }
        Ok(Self {
            table,
            fields: schema.fields().iter().map(|f| f.as_ref().clone()).collect(),
            header_written: false,
        })
    }

    /// Appends `batch`'s rows to `out` (the stream header first, on the first call).
    pub fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
        if batch.num_columns() != self.fields.len() {
            return Err(Error::SchemaMismatch {
                table: self.table.clone(),
            });
        }
        if !self.header_written {
            out.extend_from_slice(HEADER);
            self.header_written = true;
        }
        let writers = batch
            .columns()
            .iter()
            .zip(&self.fields)
            .map(|(array, field)| ColumnWriter::new(array, field))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::SchemaMismatch {
                table: self.table.clone(),
            })?;
        let count = i16::try_from(self.fields.len()).map_err(|_| Error::InvalidConfig {
            reason: "PostgreSQL tables have at most 1,600 columns",
        })?;
        for row in 0..batch.num_rows() {
            out.extend_from_slice(&count.to_be_bytes());
            for (writer, field) in writers.iter().zip(&self.fields) {
                writer
                    .write(row, out)
                    .map_err(|reason| Error::UnrepresentableValue {
                        table: self.table.clone(),
                        column: field.name().clone(),
                        reason,
                    })?;
            }
        }
        Ok(())
    }

    /// Ends the stream: appends the trailer (and the header if no batch was encoded).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(HEADER);
            self.header_written = true;
        }
        out.extend_from_slice(&TRAILER);
    }
}

fn encodable(field: &Field) -> bool {
    match field.data_type() {
        DataType::List(element) => element_oid(element).is_some() && encodable(element),
        data_type => scalar_type(data_type).is_some(),
    }
}

type WriteError = &'static str;

/// A typed view of one column of one batch.
enum ColumnWriter<'a> {
    Bool(&'a BooleanArray),
    Int2(&'a Int16Array),
    Int4(&'a Int32Array),
    Int8(&'a Int64Array),
    UInt4(&'a UInt32Array),
    Float4(&'a Float32Array),
    Float8(&'a Float64Array),
    Numeric(&'a Decimal128Array, i8),
    Text(&'a StringArray),
    LargeText(&'a LargeStringArray),
    ViewText(&'a StringViewArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    Fixed(&'a FixedSizeBinaryArray),
    Date(&'a Date32Array),
    Time(&'a Time64MicrosecondArray),
    Timestamp(&'a TimestampMicrosecondArray),
    Interval {
        array: &'a dyn Array,
        months: &'a Int32Array,
        days: &'a Int32Array,
        micros: &'a Int64Array,
    },
    List {
        array: &'a ListArray,
        element_oid: u32,
        values: Box<ColumnWriter<'a>>,
    },
}

impl<'a> ColumnWriter<'a> {
    fn new(array: &'a ArrayRef, field: &Field) -> Option<Self> {
        Some(match field.data_type() {
            DataType::Boolean => Self::Bool(array.as_boolean_opt()?),
            DataType::Int16 => Self::Int2(array.as_primitive_opt::<Int16Type>()?),
            DataType::Int32 => Self::Int4(array.as_primitive_opt::<Int32Type>()?),
            DataType::Int64 => Self::Int8(array.as_primitive_opt::<Int64Type>()?),
            DataType::UInt32 => Self::UInt4(array.as_primitive_opt::<UInt32Type>()?),
            DataType::Float32 => Self::Float4(array.as_primitive_opt::<Float32Type>()?),
            DataType::Float64 => Self::Float8(array.as_primitive_opt::<Float64Type>()?),
            DataType::Decimal128(_, scale) => {
                Self::Numeric(array.as_primitive_opt::<Decimal128Type>()?, *scale)
            }
            DataType::Utf8 => Self::Text(array.as_string_opt::<i32>()?),
            DataType::LargeUtf8 => Self::LargeText(array.as_string_opt::<i64>()?),
            DataType::Utf8View => Self::ViewText(array.as_string_view_opt()?),
            DataType::Binary => Self::Binary(array.as_binary_opt::<i32>()?),
            DataType::LargeBinary => Self::LargeBinary(array.as_binary_opt::<i64>()?),
            DataType::FixedSizeBinary(16) => Self::Fixed(array.as_fixed_size_binary_opt()?),
            DataType::Date32 => Self::Date(array.as_primitive_opt::<Date32Type>()?),
            DataType::Time64(TimeUnit::Microsecond) => {
                Self::Time(array.as_primitive_opt::<Time64MicrosecondType>()?)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Self::Timestamp(array.as_primitive_opt::<TimestampMicrosecondType>()?)
            }
            DataType::Struct(fields) if *fields == interval_fields() => {
                let parts = array.as_struct_opt()?;
                Self::Interval {
                    array: array.as_ref(),
                    months: parts.column(0).as_primitive_opt::<Int32Type>()?,
                    days: parts.column(1).as_primitive_opt::<Int32Type>()?,
                    micros: parts.column(2).as_primitive_opt::<Int64Type>()?,
                }
            }
            DataType::List(element) => {
                let list = array.as_list_opt::<i32>()?;
                Self::List {
                    array: list,
                    element_oid: element_oid(element)?,
                    values: Box::new(Self::new(list.values(), element)?),
                }
            }
            _ => return None,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Self::Bool(a) => a.is_null(row),
            Self::Int2(a) => a.is_null(row),
            Self::Int4(a) => a.is_null(row),
            Self::Int8(a) => a.is_null(row),
            Self::UInt4(a) => a.is_null(row),
            Self::Float4(a) => a.is_null(row),
            Self::Float8(a) => a.is_null(row),
            Self::Numeric(a, _) => a.is_null(row),
            Self::Text(a) => a.is_null(row),
            Self::LargeText(a) => a.is_null(row),
            Self::ViewText(a) => a.is_null(row),
            Self::Binary(a) => a.is_null(row),
            Self::LargeBinary(a) => a.is_null(row),
            Self::Fixed(a) => a.is_null(row),
            Self::Date(a) => a.is_null(row),
            Self::Time(a) => a.is_null(row),
            Self::Timestamp(a) => a.is_null(row),
            Self::Interval { array, .. } => array.is_null(row),
            Self::List { array, .. } => array.is_null(row),
        }
    }

    /// Writes the value at `row` with its length prefix (`-1` for NULL).
    fn write(&self, row: usize, out: &mut Vec<u8>) -> Result<(), WriteError> {
        if self.is_null(row) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        match self {
            Self::Bool(a) => fixed(out, &[u8::from(a.value(row))]),
            Self::Int2(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::Int4(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::Int8(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::UInt4(a) => fixed(out, &i64::from(a.value(row)).to_be_bytes()),
            Self::Float4(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::Float8(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::Numeric(a, scale) => {
                let start = begin_value(out);
                encode_numeric(a.value(row), *scale, out);
                end_value(out, start)?;
            }
            Self::Text(a) => bytes(out, a.value(row).as_bytes())?,
            Self::LargeText(a) => bytes(out, a.value(row).as_bytes())?,
            Self::ViewText(a) => bytes(out, a.value(row).as_bytes())?,
            Self::Binary(a) => bytes(out, a.value(row))?,
            Self::LargeBinary(a) => bytes(out, a.value(row))?,
            Self::Fixed(a) => bytes(out, a.value(row))?,
            Self::Date(a) => {
                let days = a
                    .value(row)
                    .checked_sub(EPOCH_DAYS)
                    .ok_or("a date outside PostgreSQL's range")?;
                fixed(out, &days.to_be_bytes());
            }
            Self::Time(a) => fixed(out, &a.value(row).to_be_bytes()),
            Self::Timestamp(a) => {
                let micros = a
                    .value(row)
                    .checked_sub(EPOCH_MICROS)
                    .ok_or("a timestamp outside PostgreSQL's range")?;
                fixed(out, &micros.to_be_bytes());
            }
            Self::Interval {
                months,
                days,
                micros,
                ..
            } => {
                let mut value = [0u8; 16];
                value[..8].copy_from_slice(&micros.value(row).to_be_bytes());
                value[8..12].copy_from_slice(&days.value(row).to_be_bytes());
                value[12..].copy_from_slice(&months.value(row).to_be_bytes());
                fixed(out, &value);
            }
            Self::List {
                array,
                element_oid,
                values,
            } => {
                let start = begin_value(out);
                let offsets = array.value_offsets();
                let (first, last) = (offsets[row] as usize, offsets[row + 1] as usize);
                let count = i32::try_from(last - first).map_err(|_| "an array too long")?;
                let has_nulls = (first..last).any(|index| values.is_null(index));
                if count == 0 {
                    out.extend_from_slice(&0i32.to_be_bytes());
                    out.extend_from_slice(&0i32.to_be_bytes());
                    out.extend_from_slice(&element_oid.to_be_bytes());
                } else {
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.extend_from_slice(&i32::from(has_nulls).to_be_bytes());
                    out.extend_from_slice(&element_oid.to_be_bytes());
                    out.extend_from_slice(&count.to_be_bytes());
                    out.extend_from_slice(&1i32.to_be_bytes());
                    for index in first..last {
                        values.write(index, out)?;
                    }
                }
                end_value(out, start)?;
            }
        }
        Ok(())
    }
}

fn fixed(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) -> Result<(), WriteError> {
    let len = i32::try_from(value.len()).map_err(|_| "a value of 2 GiB or more")?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Reserves the length prefix of a value written in place; see [`end_value`].
fn begin_value(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 4]);
    out.len()
}

fn end_value(out: &mut [u8], start: usize) -> Result<(), WriteError> {
    let len = i32::try_from(out.len() - start).map_err(|_| "a value of 2 GiB or more")?;
    out[start - 4..start].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The binary form of the decimal `value × 10^-scale` (`scale >= 0`).
fn encode_numeric(value: i128, scale: i8, out: &mut Vec<u8>) {
    let scale = u32::from(scale.max(0).unsigned_abs());
    let negative = value < 0;
    let magnitude = value.unsigned_abs();
    let divisor = 10u128.pow(scale);
    let (mut integer, fraction) = (magnitude / divisor, magnitude % divisor);

    // Base-10000 digits of the integer part, most significant first.
    let mut digits: Vec<u16> = Vec::new();
    while integer > 0 {
        digits.push((integer % 10_000) as u16);
        integer /= 10_000;
    }
    digits.reverse();
    let mut weight = digits.len() as i16 - 1;
    // The fraction, padded on the right to whole groups of four decimal digits.
    let groups = scale.div_ceil(4);
    if groups > 0 {
        let mut padded = fraction * 10u128.pow(groups * 4 - scale);
        let mut fraction_digits = vec![0u16; groups as usize];
        for slot in fraction_digits.iter_mut().rev() {
            *slot = (padded % 10_000) as u16;
            padded /= 10_000;
        }
        digits.extend(fraction_digits);
    }
    // No leading or trailing zero groups; each leading one dropped lowers the weight.
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= leading as i16;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as u16).to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Decimal128Array, RecordBatch};
    use arrow::datatypes::Schema;
    use proptest::prelude::*;

    use super::*;
    use crate::postgres::{BinaryCopyDecoder, PgType};

    fn round_trip(types: &[PgType], batch: &RecordBatch) -> RecordBatch {
        let mut encoder = BinaryCopyEncoder::new("t", &batch.schema()).unwrap();
        let mut stream = Vec::new();
        encoder.encode(batch, &mut stream).unwrap();
        encoder.finish(&mut stream);
        let mut decoder =
            BinaryCopyDecoder::new("t", batch.schema(), types, 1 << 20, 1 << 30).unwrap();
        // Feed it in awkward chunks: rows never align with them.
        for chunk in stream.chunks(7) {
            let mut input = chunk;
            assert!(!decoder.decode(&mut input).unwrap());
        }
        decoder.finish().unwrap().unwrap()
    }

    proptest! {
        #[test]
        fn decimals_round_trip(values in prop::collection::vec(
            prop_oneof![Just(None), (-(10i128.pow(18)) + 1..10i128.pow(18)).prop_map(Some)],
            1..50,
        ), scale in 0i8..12) {
            let pg_type = PgType::Numeric { precision: 38, scale };
            let schema = Arc::new(Schema::new(vec![pg_type.field("n", true)]));
            let array = Decimal128Array::from(values).with_precision_and_scale(38, scale).unwrap();
            let batch = RecordBatch::try_new(schema, vec![Arc::new(array)]).unwrap();
            prop_assert_eq!(round_trip(&[pg_type], &batch), batch);
        }

        #[test]
        fn text_and_lists_round_trip(values in prop::collection::vec(
            prop::option::of(prop::collection::vec(prop::option::of(".{0,12}"), 0..5)),
            1..30,
        )) {
            let pg_type = PgType::Array(Box::new(PgType::Text));
            let schema = Arc::new(Schema::new(vec![pg_type.field("l", true)]));
            let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new())
                .with_field(Arc::new(PgType::Text.field("element", true)));
            for value in &values {
                match value {
                    None => builder.append_null(),
                    Some(items) => {
                        for item in items {
                            builder.values().append_option(item.as_deref());
                        }
                        builder.append(true);
                    }
                }
            }
            let batch = RecordBatch::try_new(schema, vec![Arc::new(builder.finish())]).unwrap();
            prop_assert_eq!(round_trip(&[pg_type], &batch), batch);
        }
    }

    #[test]
    fn numerics_encode_canonically() {
        let encode = |value: i128, scale: i8| {
            let mut out = Vec::new();
            encode_numeric(value, scale, &mut out);
            out
        };
        // 12345.67: digits [1, 2345, 6700], weight 1, dscale 2.
        assert_eq!(
            encode(1_234_567, 2),
            [0, 3, 0, 1, 0, 0, 0, 2, 0, 1, 0x09, 0x29, 0x1a, 0x2c]
        );
        // 0.0001: digits [1], weight -1.
        assert_eq!(encode(1, 4), [0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1]);
        // Zero keeps its display scale and no sign.
        assert_eq!(encode(0, 2), [0, 0, 0, 0, 0, 0, 0, 2]);
        // -10000: one digit, weight 1 (trailing zero group dropped).
        assert_eq!(encode(-10_000, 0), [0, 1, 0, 1, 0x40, 0, 0, 0, 0, 1]);
    }
}
