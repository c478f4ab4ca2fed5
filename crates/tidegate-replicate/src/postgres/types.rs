//! PostgreSQL types and the Arrow types they are read as.
//!
//! The mapping is documented in `docs/types.md`; this module is its implementation. Every
//! PostgreSQL type is either decoded from binary `COPY` straight into an Arrow array
//! ([`PgType`]) or, when no exact Arrow type exists, read through a cast to `text` (the
//! documented fallback: nothing is lost, the column becomes a string).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use sqlx::Row;
use sqlx::postgres::PgConnection;

/// Field metadata key of Arrow canonical extension types.
pub(crate) const EXTENSION_NAME: &str = "ARROW:extension:name";

/// A PostgreSQL type as binary `COPY` sends it, with the Arrow type it decodes into.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgType {
    /// `boolean` → `Boolean`.
    Bool,
    /// `smallint` → `Int16`.
    Int2,
    /// `integer` → `Int32`.
    Int4,
    /// `bigint` → `Int64`.
    Int8,
    /// `oid` → `UInt32`.
    Oid,
    /// `real` → `Float32` (NaN and infinities kept).
    Float4,
    /// `double precision` → `Float64` (NaN and infinities kept).
    Float8,
    /// `numeric(p, s)` with `p <= 38` → `Decimal128(p, s)`; a negative scale `s` becomes
    /// `Decimal128(p - s, 0)` (Parquet has no negative scales).
    Numeric {
        /// Total significant digits.
        precision: u8,
        /// Digits after the decimal point.
        scale: i8,
    },
    /// `text`, `varchar`, `char(n)`, `name`, enums, and every type read through the `text`
    /// fallback → `Utf8`.
    Text,
    /// `json` → `Utf8` tagged `arrow.json`.
    Json,
    /// `jsonb` → `Utf8` tagged `arrow.json` (the binary form's version byte is checked).
    Jsonb,
    /// `bytea` → `Binary`.
    Bytea,
    /// `date` → `Date32`.
    Date,
    /// `time` → `Time64(Microsecond)`.
    Time,
    /// `timestamp` → `Timestamp(Microsecond, None)`.
    Timestamp,
    /// `timestamptz` → `Timestamp(Microsecond, "UTC")`.
    TimestampTz,
    /// `interval` → `Struct { months: Int32, days: Int32, microseconds: Int64 }`: PostgreSQL
    /// keeps the three parts apart and Parquet has no type that holds them exactly.
    Interval,
    /// `uuid` → `FixedSizeBinary(16)` tagged `arrow.uuid`.
    Uuid,
    /// A one-dimensional array → `List` of the element's type.
    Array(Box<PgType>),
}

impl PgType {
    /// The Arrow type values of this type are decoded into.
    pub fn data_type(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Oid => DataType::UInt32,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Numeric { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::Text | PgType::Json | PgType::Jsonb => DataType::Utf8,
            PgType::Bytea => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Interval => DataType::Struct(interval_fields()),
            PgType::Uuid => DataType::FixedSizeBinary(16),
            PgType::Array(element) => DataType::List(Arc::new(element.field("element", true))),
        }
    }

    /// An Arrow field of this type, with the canonical extension tag where one applies.
    pub fn field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.data_type(), nullable);
        let extension = match self {
            PgType::Json | PgType::Jsonb => Some("arrow.json"),
            PgType::Uuid => Some("arrow.uuid"),
            _ => None,
        };
        match extension {
            Some(extension) => field.with_metadata(HashMap::from([(
                EXTENSION_NAME.to_owned(),
                extension.to_owned(),
            )])),
            None => field,
        }
    }
}

/// The fields of the struct an `interval` is read as.
pub(crate) fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, false),
        Field::new("days", DataType::Int32, false),
        Field::new("microseconds", DataType::Int64, false),
    ])
}

/// One row of `pg_type`, as much as the mapping needs.
#[derive(Debug, Clone)]
struct CatalogType {
    name: String,
    /// `b` base, `c` composite, `d` domain, `e` enum, `p` pseudo, `r` range, `m` multirange.
    kind: char,
    /// For a domain, its base type.
    base: u32,
    /// For a domain, the base type's modifier.
    base_typmod: i32,
    /// For an array type, its element type.
    element: u32,
    /// `A` for array types.
    category: char,
}

/// The catalog entries (`pg_type`) of the types columns refer to, as far as the type mapping
/// needs them: domains, enums, arrays and extension types such as `citext`.
///
/// Built-in scalar types need no entry. Fill it with [`load`](Self::load) for the type oids of
/// the columns to be read, then ask [`native_type`](Self::native_type) how each decodes.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    entries: HashMap<u32, CatalogType>,
}

impl TypeCatalog {
    /// An empty catalog: only built-in scalar types resolve.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the entry of `type_oid` has been loaded.
    pub fn contains(&self, type_oid: u32) -> bool {
        self.entries.contains_key(&type_oid)
    }

    /// Whether a column of `type_oid` can be resolved without loading anything: a built-in
    /// scalar type, or a type whose entry is loaded.
    pub fn is_resolvable(&self, type_oid: u32) -> bool {
        builtin(type_oid, -1).is_some() || type_oid == oid::NUMERIC || self.contains(type_oid)
    }

    /// Loads the entries of `type_oids` and of every type they reach through domains and array
    /// elements, skipping those already loaded.
    pub async fn load(
        &mut self,
        connection: &mut PgConnection,
        type_oids: impl IntoIterator<Item = u32>,
    ) -> sqlx::Result<()> {
        let mut wanted: Vec<i64> = type_oids.into_iter().map(i64::from).collect();
        // Domains over arrays over domains…: a few levels, never a loop.
        for _ in 0..8 {
            wanted.sort_unstable();
            wanted.dedup();
            wanted.retain(|oid| u32::try_from(*oid).is_ok_and(|oid| !self.contains(oid)));
            if wanted.is_empty() {
                break;
            }
            let rows = sqlx::query(
                "SELECT t.oid::int8, t.typname::text, t.typtype::text, t.typbasetype::int8, \
                        t.typtypmod, t.typelem::int8, t.typcategory::text \
                 FROM pg_type t WHERE t.oid::int8 = ANY($1)",
            )
            .bind(&wanted)
            .fetch_all(&mut *connection)
            .await?;
            let mut next = Vec::new();
            for row in rows {
                let oid = u32::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0);
                let first = |text: String| text.chars().next().unwrap_or(' ');
                let entry = CatalogType {
                    name: row.try_get(1)?,
                    kind: first(row.try_get(2)?),
                    base: u32::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
                    base_typmod: row.try_get(4)?,
                    element: u32::try_from(row.try_get::<i64, _>(5)?).unwrap_or(0),
                    category: first(row.try_get(6)?),
                };
                self.entries.insert(oid, entry);
                next.extend(referenced_types(oid, self).into_iter().map(i64::from));
            }
            wanted = next;
        }
        Ok(())
    }

    /// How a column of type `type_oid` with modifier `typmod` is decoded from its binary form:
    /// `Some` with the native type, or `None` when the full-load source reads it through the
    /// `text` fallback (no exact Arrow type, or an entry that was not loaded).
    pub fn native_type(&self, type_oid: u32, typmod: i32) -> Option<PgType> {
        let read = column_read(type_oid, typmod, self);
        read.cast.is_none().then_some(read.pg_type)
    }
}

/// How a column is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnRead {
    /// The binary decoding and the Arrow type.
    pub(crate) pg_type: PgType,
    /// The cast applied in the `SELECT` (`text` or `text[]`), for types read through the
    /// text fallback.
    pub(crate) cast: Option<&'static str>,
}

impl ColumnRead {
    fn direct(pg_type: PgType) -> Self {
        Self {
            pg_type,
            cast: None,
        }
    }

    fn as_text() -> Self {
        Self {
            pg_type: PgType::Text,
            cast: Some("text"),
        }
    }
}

/// Well-known type oids (`pg_type.dat`); stable across PostgreSQL versions.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const INTERVAL: u32 = 1186;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;
    pub(super) const CITEXT_NAME: &str = "citext";
}

/// Decides how a column of type `type_oid` with modifier `typmod` is read.
///
/// `catalog` must hold every type reachable from `type_oid` through domains and array
/// elements (see [`referenced_types`]); a type missing from it is read as text.
pub(crate) fn column_read(type_oid: u32, typmod: i32, catalog: &TypeCatalog) -> ColumnRead {
    resolve(type_oid, typmod, catalog, 0)
}

fn resolve(type_oid: u32, typmod: i32, catalog: &TypeCatalog, depth: u8) -> ColumnRead {
    if let Some(pg_type) = builtin(type_oid, typmod) {
        return ColumnRead::direct(pg_type);
    }
    let Some(entry) = catalog.entries.get(&type_oid) else {
        return ColumnRead::as_text();
    };
    if depth > 8 {
        return ColumnRead::as_text();
    }
    match entry.kind {
        // A domain reads as its base type (binary COPY sends the base type's form).
        'd' => {
            let typmod = if entry.base_typmod != -1 {
                entry.base_typmod
            } else {
                typmod
            };
            resolve(entry.base, typmod, catalog, depth + 1)
        }
        // An enum's binary form is its label.
        'e' => ColumnRead::direct(PgType::Text),
        'b' if entry.name == oid::CITEXT_NAME => ColumnRead::direct(PgType::Text),
        'b' if entry.category == 'A' && entry.element != 0 => {
            // The modifier of an array column applies to its elements.
            let element = resolve(entry.element, typmod, catalog, depth + 1);
            match (element.cast, element.pg_type) {
                (None, pg_type) => ColumnRead::direct(PgType::Array(Box::new(pg_type))),
                (Some(_), _) => ColumnRead {
                    pg_type: PgType::Array(Box::new(PgType::Text)),
                    cast: Some("text[]"),
                },
            }
        }
        _ => ColumnRead::as_text(),
    }
}

/// The types decoded natively, by oid.
fn builtin(type_oid: u32, typmod: i32) -> Option<PgType> {
    Some(match type_oid {
        oid::BOOL => PgType::Bool,
        oid::BYTEA => PgType::Bytea,
        oid::NAME | oid::TEXT | oid::BPCHAR | oid::VARCHAR => PgType::Text,
        oid::INT8 => PgType::Int8,
        oid::INT2 => PgType::Int2,
        oid::INT4 => PgType::Int4,
        oid::OID => PgType::Oid,
        oid::JSON => PgType::Json,
        oid::JSONB => PgType::Jsonb,
        oid::FLOAT4 => PgType::Float4,
        oid::FLOAT8 => PgType::Float8,
        oid::DATE => PgType::Date,
        oid::TIME => PgType::Time,
        oid::TIMESTAMP => PgType::Timestamp,
        oid::TIMESTAMPTZ => PgType::TimestampTz,
        oid::INTERVAL => PgType::Interval,
        oid::UUID => PgType::Uuid,
        // Only a declared precision of at most 38 fits Decimal128; an unconstrained numeric
        // can hold 131,072 digits and is read as text.
        oid::NUMERIC => {
            let (precision, scale) = numeric_typmod(typmod)?;
            // Parquet has no negative scales: numeric(5, -2) holds integers of up to 7 digits.
            let (precision, scale) = if scale < 0 {
                (precision.checked_add(scale.unsigned_abs())?, 0)
            } else {
                (precision, scale)
            };
            if precision > 38 || precision == 0 {
                return None;
            }
            PgType::Numeric { precision, scale }
        }
        _ => return None,
    })
}

/// Precision and scale from a `numeric` type modifier; `None` when unconstrained.
fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    // VARHDRSZ (4) + (precision << 16) | (scale & 0x7ff), scale sign-extended from 11 bits
    // (PostgreSQL 15 allows negative scales).
    let packed = typmod.checked_sub(4).filter(|packed| *packed >= 0)?;
    let precision = u8::try_from((packed >> 16) & 0xffff).ok()?;
    let raw_scale = packed & 0x7ff;
    let scale = if raw_scale & 0x400 != 0 {
        raw_scale - 0x800
    } else {
        raw_scale
    };
    Some((precision, i8::try_from(scale).ok()?))
}

/// Type oids that [`column_read`] may look up in the catalog for `type_oid`.
fn referenced_types(type_oid: u32, catalog: &TypeCatalog) -> Vec<u32> {
    match catalog.entries.get(&type_oid) {
        Some(entry) if entry.kind == 'd' => vec![entry.base],
        Some(entry) if entry.category == 'A' && entry.element != 0 => vec![entry.element],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers() {
        // numeric(12, 2), numeric(38, 0), numeric(5, -2); -1 is unconstrained.
        assert_eq!(numeric_typmod((12 << 16 | 2) + 4), Some((12, 2)));
        assert_eq!(numeric_typmod((38 << 16) + 4), Some((38, 0)));
        assert_eq!(numeric_typmod((5 << 16 | (0x800 - 2)) + 4), Some((5, -2)));
        assert_eq!(numeric_typmod(-1), None);
        assert_eq!(builtin(oid::NUMERIC, (39 << 16) + 4), None);
    }

    #[test]
    fn unknown_types_fall_back_to_text() {
        let catalog = TypeCatalog::new();
        assert_eq!(
            column_read(869 /* inet */, -1, &catalog),
            ColumnRead::as_text()
        );
        assert_eq!(
            column_read(oid::NUMERIC, -1, &catalog),
            ColumnRead::as_text(),
            "unconstrained numeric"
        );
    }

    #[test]
    fn domains_and_arrays_resolve_to_their_base() {
        let catalog = TypeCatalog {
            entries: HashMap::from([
                (
                    90_000,
                    CatalogType {
                        name: "positive_int".into(),
                        kind: 'd',
                        base: oid::INT4,
                        base_typmod: -1,
                        element: 0,
                        category: 'N',
                    },
                ),
                (
                    1007,
                    CatalogType {
                        name: "_int4".into(),
                        kind: 'b',
                        base: 0,
                        base_typmod: -1,
                        element: oid::INT4,
                        category: 'A',
                    },
                ),
                (
                    1041,
                    CatalogType {
                        name: "_inet".into(),
                        kind: 'b',
                        base: 0,
                        base_typmod: -1,
                        element: 869,
                        category: 'A',
                    },
                ),
            ]),
        };
        assert_eq!(column_read(90_000, -1, &catalog).pg_type, PgType::Int4);
        assert_eq!(
            column_read(1007, -1, &catalog).pg_type,
            PgType::Array(Box::new(PgType::Int4))
        );
        let inet_array = column_read(1041, -1, &catalog);
        assert_eq!(inet_array.cast, Some("text[]"));
        assert_eq!(inet_array.pg_type, PgType::Array(Box::new(PgType::Text)));
    }
}
