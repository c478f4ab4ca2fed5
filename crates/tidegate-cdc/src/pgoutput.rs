//! The `pgoutput` logical replication message format, decoded from bytes with no I/O.
//!
//! [`decode`] reads one message — the payload of one `XLogData` — as PostgreSQL's
//! [message formats][formats] describe it, protocol versions 1 and 2: Begin, Commit, Origin,
//! Relation, Type, Insert, Update, Delete, Truncate, Message, and the streaming messages
//! Stream Start, Stop, Commit and Abort. Between a Stream Start and its Stream Stop the
//! data messages carry the transaction id in front of their body; the caller says whether it
//! is inside such a block.
//!
//! Decoding borrows from the input: tuples are checked once and then iterated without
//! allocation ([`TupleData::columns`]). Only Relation messages, which callers keep, own their
//! strings. Every length and count is checked against the bytes that remain before it is
//! used, nothing is allocated for a count the input cannot hold, and malformed input is a
//! [`DecodeError`] — never a panic (fuzzed: `fuzz/fuzz_targets/pgoutput_decode.rs`). Errors
//! say which message and what was wrong with its form, never a value.
//!
//! [formats]: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

use std::fmt;

use crate::lsn::Lsn;

/// Microseconds from 1970-01-01 (the Unix epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL `timestamptz` as the replication protocol sends it: microseconds since
/// 2000-01-01 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch, or `None` beyond the range of an `i64`.
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(EPOCH_MICROS)
    }

    /// The timestamp of a Unix time in microseconds (saturating at the ends of the range).
    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros.saturating_sub(EPOCH_MICROS))
    }
}

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// A transaction starts (not sent for streamed transactions).
    Begin(Begin),
    /// The transaction begun by the last Begin committed.
    Commit(Commit),
    /// The transaction came from another node, by replication origin.
    Origin(Origin<'a>),
    /// A table's description; sent before its first change in a session and whenever it
    /// changed.
    Relation(Relation),
    /// A non-built-in type's name.
    Type(TypeMessage<'a>),
    /// A row was inserted.
    Insert(Insert<'a>),
    /// A row was updated.
    Update(Update<'a>),
    /// A row was deleted.
    Delete(Delete<'a>),
    /// Tables were truncated.
    Truncate(Truncate<'a>),
    /// A message written with `pg_logical_emit_message`.
    Message(LogicalMessage<'a>),
    /// A block of a streamed, still uncommitted transaction starts.
    StreamStart(StreamStart),
    /// The current streamed block ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit(StreamCommit),
    /// A streamed transaction, or one of its subtransactions, was rolled back.
    StreamAbort(StreamAbort),
}

/// Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// Its transaction id.
    pub xid: u32,
}

/// Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (none are defined yet).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to acknowledge once the transaction is
    /// durable at the target.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: &'a str,
}

/// How a table identifies the old row of updates and deletes (`REPLICA IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaIdentity {
    /// `DEFAULT`: the primary key, if any.
    Default,
    /// `NOTHING`: no old row.
    Nothing,
    /// `FULL`: every column of the old row.
    Full,
    /// `USING INDEX`: the columns of a unique index.
    Index,
}

/// Relation: a table's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The streamed transaction this message belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// The table's oid, which the data messages refer to.
    pub oid: u32,
    /// Its schema (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Its published columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity.
    pub is_key: bool,
    /// Its name.
    pub name: String,
    /// Its type's oid.
    pub type_oid: u32,
    /// Its type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// Type: a non-built-in type's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage<'a> {
    /// The streamed transaction this message belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// The type's oid.
    pub oid: u32,
    /// Its schema.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
}

/// Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    /// The streamed transaction this change belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// The table's oid.
    pub relation: u32,
    /// The new row.
    pub new: TupleData<'a>,
}

/// Which old row an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the replica identity's key columns (the others are null).
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    /// The streamed transaction this change belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// The table's oid.
    pub relation: u32,
    /// The old key or row, when the server sends it (the key changed, or identity `FULL`).
    pub old: Option<(OldKind, TupleData<'a>)>,
    /// The new row; TOASTed values the update did not touch come as
    /// [`TupleColumn::UnchangedToast`].
    pub new: TupleData<'a>,
}

/// Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    /// The streamed transaction this change belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// The table's oid.
    pub relation: u32,
    /// The old key or row.
    pub old: (OldKind, TupleData<'a>),
}

/// Truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate<'a> {
    /// The streamed transaction this change belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated tables' oids, four bytes each (checked).
    relations: &'a [u8],
}

impl<'a> Truncate<'a> {
    /// The truncated tables' oids.
    pub fn relations(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.relations
            .chunks_exact(4)
            .map(|oid| u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]))
    }
}

/// Message: written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// The streamed transaction this message belongs to, inside a stream block.
    pub xid: Option<u32>,
    /// Part of its transaction, or sent at once.
    pub transactional: bool,
    /// Its LSN.
    pub lsn: Lsn,
    /// Its prefix.
    pub prefix: &'a str,
    /// Its content.
    pub content: &'a [u8],
}

/// Stream Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The streamed transaction.
    pub xid: u32,
    /// The transaction's first block.
    pub first_segment: bool,
}

/// Stream Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: u32,
    /// Flags (none are defined yet).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to acknowledge.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// Stream Abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The streamed (top-level) transaction.
    pub xid: u32,
    /// The transaction rolled back: `xid` itself, or one of its subtransactions.
    pub subxid: u32,
}

/// The columns of one row, checked when the message was decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct TupleData<'a> {
    count: u16,
    /// The columns, exactly (checked to hold `count` well-formed columns).
    bytes: &'a [u8],
}

// A tuple holds row values: its debug form shows only its shape.
impl fmt::Debug for TupleData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TupleData")
            .field("columns", &self.count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// One column of a [`TupleData`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TupleColumn<'a> {
    /// `n`: NULL.
    Null,
    /// `u`: a TOASTed value the change did not touch; the server does not send it.
    UnchangedToast,
    /// `t`: the value in text form.
    Text(&'a [u8]),
    /// `b`: the value in binary (`send`) form.
    Binary(&'a [u8]),
}

impl fmt::Debug for TupleColumn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::UnchangedToast => f.write_str("UnchangedToast"),
            Self::Text(value) => write!(f, "Text({} bytes)", value.len()),
            Self::Binary(value) => write!(f, "Binary({} bytes)", value.len()),
        }
    }
}

impl<'a> TupleData<'a> {
    /// How many columns the row has.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The size of the tuple on the wire, in bytes (column headers included).
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The columns, in order.
    pub fn columns(&self) -> TupleColumns<'a> {
        TupleColumns {
            remaining: self.count,
            bytes: self.bytes,
        }
    }

    /// Reads a tuple at the front of `reader`, checking every column.
    fn read(reader: &mut Reader<'a>) -> Result<Self, &'static str> {
        let count = u16::try_from(reader.i16()?).map_err(|_| "a negative column count")?;
        let start = reader.bytes;
        for _ in 0..count {
            match reader.u8()? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = usize::try_from(reader.i32()?)
                        .map_err(|_| "a column with a negative length")?;
                    reader.take(len)?;
                }
                _ => return Err("an unknown column kind"),
            }
        }
        let used = start.len() - reader.bytes.len();
        Ok(Self {
            count,
            bytes: &start[..used],
        })
    }
}

/// The columns of a [`TupleData`].
#[derive(Debug, Clone)]
pub struct TupleColumns<'a> {
    remaining: u16,
    bytes: &'a [u8],
}

impl<'a> Iterator for TupleColumns<'a> {
    type Item = TupleColumn<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // The tuple was checked when decoded; should the bytes still run short, the iterator
        // ends early rather than panicking.
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut reader = Reader { bytes: self.bytes };
        let column = match reader.u8().ok()? {
            b'n' => TupleColumn::Null,
            b'u' => TupleColumn::UnchangedToast,
            kind => {
                let len = usize::try_from(reader.i32().ok()?).ok()?;
                let value = reader.take(len).ok()?;
                if kind == b't' {
                    TupleColumn::Text(value)
                } else {
                    TupleColumn::Binary(value)
                }
            }
        };
        self.bytes = reader.bytes;
        Some(column)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.remaining)))
    }
}

/// A `pgoutput` message is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput {message} message: {reason}")]
pub struct DecodeError {
    /// Which message (`Insert`, `Relation`, …, or `unknown`).
    pub message: &'static str,
    /// What was wrong with its form, as a fixed text.
    pub reason: &'static str,
}

/// Decodes one `pgoutput` message.
///
/// `in_stream` says whether the message was received between a Stream Start and its Stream
/// Stop: there, data messages carry their transaction id.
///
/// ```
/// use tidegate_cdc::pgoutput::{Message, TupleColumn, decode};
///
/// // Insert into relation 16384 a row of two columns: 'hi' in text form, and NULL.
/// let mut bytes = vec![b'I', 0, 0, 0x40, 0, b'N', 0, 2, b't', 0, 0, 0, 2, b'h', b'i', b'n'];
/// let Message::Insert(insert) = decode(&bytes, false)? else { unreachable!() };
/// assert_eq!(insert.relation, 16384);
/// let columns: Vec<_> = insert.new.columns().collect();
/// assert_eq!(columns, [TupleColumn::Text(b"hi"), TupleColumn::Null]);
///
/// bytes.truncate(10);
/// assert!(decode(&bytes, false).is_err(), "a truncated message is an error");
/// # Ok::<(), tidegate_cdc::pgoutput::DecodeError>(())
/// ```
pub fn decode(input: &[u8], in_stream: bool) -> Result<Message<'_>, DecodeError> {
    let Some((&tag, body)) = input.split_first() else {
        return Err(DecodeError {
            message: "unknown",
            reason: "an empty message",
        });
    };
    let name = message_name(tag);
    let mut reader = Reader { bytes: body };
    let message = decode_body(tag, &mut reader, in_stream).map_err(|reason| DecodeError {
        message: name,
        reason,
    })?;
    if !reader.bytes.is_empty() {
        return Err(DecodeError {
            message: name,
            reason: "bytes after the end of the message",
        });
    }
    Ok(message)
}

fn message_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        _ => "unknown",
    }
}

fn decode_body<'a>(
    tag: u8,
    reader: &mut Reader<'a>,
    in_stream: bool,
) -> Result<Message<'a>, &'static str> {
    // Data messages inside a stream block start with their transaction's id.
    let xid = |reader: &mut Reader<'a>| -> Result<Option<u32>, &'static str> {
        if in_stream {
            reader.u32().map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: reader.lsn()?,
            commit_time: reader.timestamp()?,
            xid: reader.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: reader.u8()?,
            commit_lsn: reader.lsn()?,
            end_lsn: reader.lsn()?,
            commit_time: reader.timestamp()?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: reader.lsn()?,
            name: reader.cstr()?,
        }),
        b'R' => {
            let xid = xid(reader)?;
            let oid = reader.u32()?;
            let namespace = reader.cstr()?.to_owned();
            let name = reader.cstr()?.to_owned();
            let replica_identity = match reader.u8()? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                _ => return Err("an unknown replica identity"),
            };
            let count = u16::try_from(reader.i16()?).map_err(|_| "a negative column count")?;
            // Each column takes at least 10 bytes: allocate only for what the input holds.
            let mut columns = Vec::with_capacity(usize::from(count).min(reader.bytes.len() / 10));
            for _ in 0..count {
                let flags = reader.u8()?;
                columns.push(RelationColumn {
                    is_key: flags & 1 != 0,
                    name: reader.cstr()?.to_owned(),
                    type_oid: reader.u32()?,
                    type_modifier: reader.i32()?,
                });
            }
            Message::Relation(Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeMessage {
            xid: xid(reader)?,
            oid: reader.u32()?,
            namespace: reader.cstr()?,
            name: reader.cstr()?,
        }),
        b'I' => {
            let xid = xid(reader)?;
            let relation = reader.u32()?;
            if reader.u8()? != b'N' {
                return Err("no new tuple");
            }
            Message::Insert(Insert {
                xid,
                relation,
                new: TupleData::read(reader)?,
            })
        }
        b'U' => {
            let xid = xid(reader)?;
            let relation = reader.u32()?;
            let (old, marker) = match reader.u8()? {
                kind @ (b'K' | b'O') => {
                    let kind = if kind == b'K' {
                        OldKind::Key
                    } else {
                        OldKind::Full
                    };
                    (Some((kind, TupleData::read(reader)?)), reader.u8()?)
                }
                marker => (None, marker),
            };
            if marker != b'N' {
                return Err("no new tuple");
            }
            Message::Update(Update {
                xid,
                relation,
                old,
                new: TupleData::read(reader)?,
            })
        }
        b'D' => {
            let xid = xid(reader)?;
            let relation = reader.u32()?;
            let kind = match reader.u8()? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Full,
                _ => return Err("no old key or tuple"),
            };
            Message::Delete(Delete {
                xid,
                relation,
                old: (kind, TupleData::read(reader)?),
            })
        }
        b'T' => {
            let xid = xid(reader)?;
            let count = usize::try_from(reader.i32()?).map_err(|_| "a negative table count")?;
            let options = reader.u8()?;
            let relations = reader.take(count.checked_mul(4).ok_or("too many tables")?)?;
            Message::Truncate(Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            })
        }
        b'M' => {
            let xid = xid(reader)?;
            let flags = reader.u8()?;
            let lsn = reader.lsn()?;
            let prefix = reader.cstr()?;
            let len = usize::try_from(reader.i32()?).map_err(|_| "a negative content length")?;
            Message::Message(LogicalMessage {
                xid,
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: reader.take(len)?,
            })
        }
        b'S' => Message::StreamStart(StreamStart {
            xid: reader.u32()?,
            first_segment: match reader.u8()? {
                0 => false,
                1 => true,
                _ => return Err("a first-segment flag other than 0 or 1"),
            },
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: reader.u32()?,
            flags: reader.u8()?,
            commit_lsn: reader.lsn()?,
            end_lsn: reader.lsn()?,
            commit_time: reader.timestamp()?,
        }),
        b'A' => {
            let abort = StreamAbort {
                xid: reader.u32()?,
                subxid: reader.u32()?,
            };
            // Protocol 4 (parallel apply) adds the abort's LSN and time; they are not used.
            if reader.bytes.len() == 16 {
                reader.take(16)?;
            }
            Message::StreamAbort(abort)
        }
        _ => return Err("an unknown message type"),
    })
}

/// Reads big-endian fields from the front of a byte slice, checking every length.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    const SHORT: &'static str = "the message ends early";

    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if len > self.bytes.len() {
            return Err(Self::SHORT);
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (taken, rest) = self.bytes.split_first_chunk::<N>().ok_or(Self::SHORT)?;
        self.bytes = rest;
        Ok(*taken)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn i16(&mut self) -> Result<i16, &'static str> {
        self.array().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, &'static str> {
        self.array().map(i32::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_be_bytes)
    }

    fn lsn(&mut self) -> Result<Lsn, &'static str> {
        self.array()
            .map(|bytes| Lsn::new(u64::from_be_bytes(bytes)))
    }

    fn timestamp(&mut self) -> Result<PgTimestamp, &'static str> {
        self.array()
            .map(|bytes| PgTimestamp(i64::from_be_bytes(bytes)))
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self) -> Result<&'a str, &'static str> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or("a string without its terminator")?;
        let text = std::str::from_utf8(&self.bytes[..end]).map_err(|_| "a name not in UTF-8")?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }
}

/// Builders of `pgoutput` messages, for tests and fuzz seeds. Not a stable API.
#[doc(hidden)]
pub mod encode {
    /// One column of a tuple: `None` is NULL, `Some(None)` an unchanged TOAST value,
    /// `Some(Some((kind, bytes)))` a value of kind `t` or `b`.
    pub type Column<'a> = Option<Option<(u8, &'a [u8])>>;

    /// A message being built: a tag, then fields appended big-endian.
    #[derive(Debug, Default, Clone)]
    pub struct MessageBuilder(pub Vec<u8>);

    impl MessageBuilder {
        /// A message starting with `tag`.
        pub fn new(tag: u8) -> Self {
            Self(vec![tag])
        }

        /// Appends a byte.
        pub fn u8(mut self, value: u8) -> Self {
            self.0.push(value);
            self
        }

        /// Appends a 16-bit integer.
        pub fn i16(mut self, value: i16) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        /// Appends a 32-bit integer.
        pub fn u32(mut self, value: u32) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        /// Appends a 64-bit integer.
        pub fn u64(mut self, value: u64) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        /// Appends a NUL-terminated string.
        pub fn cstr(mut self, value: &str) -> Self {
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(0);
            self
        }

        /// Appends a tuple of `columns`.
        pub fn tuple(mut self, columns: &[Column<'_>]) -> Self {
            self = self.i16(columns.len() as i16);
            for column in columns {
                match column {
                    None => self.0.push(b'n'),
                    Some(None) => self.0.push(b'u'),
                    Some(Some((kind, value))) => {
                        self.0.push(*kind);
                        self.0
                            .extend_from_slice(&(value.len() as i32).to_be_bytes());
                        self.0.extend_from_slice(value);
                    }
                }
            }
            self
        }

        /// The message's bytes.
        pub fn build(self) -> Vec<u8> {
            self.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode::MessageBuilder;
    use super::*;

    fn ok(bytes: &[u8], in_stream: bool) -> Message<'_> {
        decode(bytes, in_stream).unwrap()
    }

    /// Every prefix of a valid message is an error, never a panic.
    fn every_prefix_fails(bytes: &[u8], in_stream: bool) {
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], in_stream).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn begin_and_commit() {
        let begin = MessageBuilder::new(b'B')
            .u64(0x1_0000_0010)
            .u64(1000)
            .u32(742)
            .build();
        assert_eq!(
            ok(&begin, false),
            Message::Begin(Begin {
                final_lsn: Lsn::new(0x1_0000_0010),
                commit_time: PgTimestamp(1000),
                xid: 742,
            })
        );
        every_prefix_fails(&begin, false);
        let commit = MessageBuilder::new(b'C')
            .u8(0)
            .u64(16)
            .u64(48)
            .u64(1000)
            .build();
        assert_eq!(
            ok(&commit, false),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn::new(16),
                end_lsn: Lsn::new(48),
                commit_time: PgTimestamp(1000),
            })
        );
        every_prefix_fails(&commit, false);
        let mut long = commit.clone();
        long.push(0);
        assert_eq!(
            decode(&long, false).unwrap_err().reason,
            "bytes after the end of the message"
        );
    }

    #[test]
    fn origin_and_type() {
        let origin = MessageBuilder::new(b'O').u64(7).cstr("node_a").build();
        assert_eq!(
            ok(&origin, false),
            Message::Origin(Origin {
                commit_lsn: Lsn::new(7),
                name: "node_a"
            })
        );
        every_prefix_fails(&origin, false);
        let type_message = MessageBuilder::new(b'Y')
            .u32(99)
            .u32(16500)
            .cstr("public")
            .cstr("mood")
            .build();
        assert_eq!(
            ok(&type_message, true),
            Message::Type(TypeMessage {
                xid: Some(99),
                oid: 16500,
                namespace: "public",
                name: "mood"
            })
        );
        every_prefix_fails(&type_message, true);
        let bad_utf8 = MessageBuilder::new(b'O').u64(7).u8(0xff).u8(0).build();
        assert_eq!(
            decode(&bad_utf8, false).unwrap_err().reason,
            "a name not in UTF-8"
        );
    }

    fn relation_bytes(in_stream: bool) -> Vec<u8> {
        let mut builder = MessageBuilder::new(b'R');
        if in_stream {
            builder = builder.u32(5);
        }
        builder
            .u32(16384)
            .cstr("public")
            .cstr("orders")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(23)
            .u32(u32::MAX) // typmod -1
            .u8(0)
            .cstr("note")
            .u32(25)
            .u32(u32::MAX)
            .build()
    }

    #[test]
    fn relation() {
        for in_stream in [false, true] {
            let bytes = relation_bytes(in_stream);
            let Message::Relation(relation) = ok(&bytes, in_stream) else {
                panic!("not a relation")
            };
            assert_eq!(relation.xid, in_stream.then_some(5));
            assert_eq!(relation.oid, 16384);
            assert_eq!(
                (&*relation.namespace, &*relation.name),
                ("public", "orders")
            );
            assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
            assert_eq!(
                relation.columns,
                [
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    RelationColumn {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                ]
            );
            every_prefix_fails(&bytes, in_stream);
        }
        // A column count the input cannot hold is refused without allocating for it.
        let huge = MessageBuilder::new(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'd')
            .i16(i16::MAX)
            .build();
        assert!(decode(&huge, false).is_err());
        let bad_identity = MessageBuilder::new(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'x')
            .i16(0)
            .build();
        assert_eq!(
            decode(&bad_identity, false).unwrap_err().reason,
            "an unknown replica identity"
        );
    }

    #[test]
    fn insert_with_every_column_kind() {
        let bytes = MessageBuilder::new(b'I')
            .u32(16384)
            .u8(b'N')
            .tuple(&[
                None,
                Some(None),
                Some(Some((b't', b"42"))),
                Some(Some((b'b', &[0, 0, 0, 42]))),
                Some(Some((b't', b""))),
            ])
            .build();
        let Message::Insert(insert) = ok(&bytes, false) else {
            panic!("not an insert")
        };
        assert_eq!(insert.relation, 16384);
        assert_eq!(insert.new.len(), 5);
        assert_eq!(
            insert.new.columns().collect::<Vec<_>>(),
            [
                TupleColumn::Null,
                TupleColumn::UnchangedToast,
                TupleColumn::Text(b"42"),
                TupleColumn::Binary(&[0, 0, 0, 42]),
                TupleColumn::Text(b""),
            ]
        );
        every_prefix_fails(&bytes, false);
        // Debug output shows the shape, never the values.
        let debug = format!("{insert:?}");
        assert!(!debug.contains("42"), "{debug}");
    }

    #[test]
    fn insert_in_a_stream_carries_its_xid() {
        let bytes = MessageBuilder::new(b'I')
            .u32(77)
            .u32(16384)
            .u8(b'N')
            .tuple(&[None])
            .build();
        let Message::Insert(insert) = ok(&bytes, true) else {
            panic!("not an insert")
        };
        assert_eq!((insert.xid, insert.relation), (Some(77), 16384));
        // Read as if outside a stream, the xid is taken for the relation and the rest is off.
        assert!(decode(&bytes, false).is_err());
    }

    #[test]
    fn malformed_tuples() {
        let cases: [(&[u8], &str); 4] = [
            (
                &[b'I', 0, 0, 0, 1, b'N', 0xff, 0xff],
                "a negative column count",
            ),
            (
                &[b'I', 0, 0, 0, 1, b'N', 0, 1, b'x'],
                "an unknown column kind",
            ),
            (
                &[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff],
                "a column with a negative length",
            ),
            (
                &[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0x7f, 0xff, 0xff, 0xff],
                "the message ends early",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(decode(bytes, false).unwrap_err().reason, reason);
        }
        let no_new = MessageBuilder::new(b'I').u32(1).u8(b'K').build();
        assert_eq!(decode(&no_new, false).unwrap_err().reason, "no new tuple");
    }

    #[test]
    fn update_with_and_without_old_rows() {
        let plain = MessageBuilder::new(b'U')
            .u32(1)
            .u8(b'N')
            .tuple(&[Some(Some((b't', b"1"))), Some(None)])
            .build();
        let Message::Update(update) = ok(&plain, false) else {
            panic!("not an update")
        };
        assert_eq!(update.old, None);
        assert_eq!(
            update.new.columns().nth(1),
            Some(TupleColumn::UnchangedToast)
        );
        every_prefix_fails(&plain, false);
        for (marker, kind) in [(b'K', OldKind::Key), (b'O', OldKind::Full)] {
            let bytes = MessageBuilder::new(b'U')
                .u32(1)
                .u8(marker)
                .tuple(&[Some(Some((b't', b"1"))), None])
                .u8(b'N')
                .tuple(&[Some(Some((b't', b"2"))), None])
                .build();
            let Message::Update(update) = ok(&bytes, false) else {
                panic!("not an update")
            };
            let (old_kind, old) = update.old.unwrap();
            assert_eq!(old_kind, kind);
            assert_eq!(old.columns().next(), Some(TupleColumn::Text(b"1")));
            assert_eq!(update.new.columns().next(), Some(TupleColumn::Text(b"2")));
            every_prefix_fails(&bytes, false);
        }
        let old_then_garbage = MessageBuilder::new(b'U')
            .u32(1)
            .u8(b'K')
            .tuple(&[None])
            .u8(b'X')
            .build();
        assert_eq!(
            decode(&old_then_garbage, false).unwrap_err().reason,
            "no new tuple"
        );
    }

    #[test]
    fn delete() {
        for (marker, kind) in [(b'K', OldKind::Key), (b'O', OldKind::Full)] {
            let bytes = MessageBuilder::new(b'D')
                .u32(9)
                .u32(1)
                .u8(marker)
                .tuple(&[Some(Some((b'b', &[1])))])
                .build();
            let Message::Delete(delete) = ok(&bytes, true) else {
                panic!("not a delete")
            };
            assert_eq!(
                (delete.xid, delete.relation, delete.old.0),
                (Some(9), 1, kind)
            );
            every_prefix_fails(&bytes, true);
        }
        let no_old = MessageBuilder::new(b'D').u32(1).u8(b'N').build();
        assert_eq!(
            decode(&no_old, false).unwrap_err().reason,
            "no old key or tuple"
        );
    }

    #[test]
    fn truncate() {
        let bytes = MessageBuilder::new(b'T')
            .u32(2)
            .u8(3)
            .u32(100)
            .u32(200)
            .build();
        let Message::Truncate(truncate) = ok(&bytes, false) else {
            panic!("not a truncate")
        };
        assert!(truncate.cascade && truncate.restart_identity);
        assert_eq!(truncate.relations().collect::<Vec<_>>(), [100, 200]);
        every_prefix_fails(&bytes, false);
        let huge = MessageBuilder::new(b'T').u32(0x7fff_ffff).u8(0).build();
        assert!(decode(&huge, false).is_err());
        let negative = MessageBuilder::new(b'T').u32(u32::MAX).u8(0).build();
        assert_eq!(
            decode(&negative, false).unwrap_err().reason,
            "a negative table count"
        );
    }

    #[test]
    fn logical_message() {
        let bytes = MessageBuilder::new(b'M')
            .u8(1)
            .u64(99)
            .cstr("tidegate")
            .u32(3)
            .u8(b'a')
            .u8(b'b')
            .u8(b'c')
            .build();
        assert_eq!(
            ok(&bytes, false),
            Message::Message(LogicalMessage {
                xid: None,
                transactional: true,
                lsn: Lsn::new(99),
                prefix: "tidegate",
                content: b"abc",
            })
        );
        every_prefix_fails(&bytes, false);
    }

    #[test]
    fn streaming_messages() {
        let start = MessageBuilder::new(b'S').u32(7).u8(1).build();
        assert_eq!(
            ok(&start, false),
            Message::StreamStart(StreamStart {
                xid: 7,
                first_segment: true
            })
        );
        every_prefix_fails(&start, false);
        assert_eq!(
            decode(&MessageBuilder::new(b'S').u32(7).u8(2).build(), false)
                .unwrap_err()
                .reason,
            "a first-segment flag other than 0 or 1"
        );
        assert_eq!(ok(b"E", true), Message::StreamStop);
        let commit = MessageBuilder::new(b'c')
            .u32(7)
            .u8(0)
            .u64(10)
            .u64(20)
            .u64(30)
            .build();
        assert_eq!(
            ok(&commit, false),
            Message::StreamCommit(StreamCommit {
                xid: 7,
                flags: 0,
                commit_lsn: Lsn::new(10),
                end_lsn: Lsn::new(20),
                commit_time: PgTimestamp(30),
            })
        );
        every_prefix_fails(&commit, false);
        let abort = MessageBuilder::new(b'A').u32(7).u32(8).build();
        assert_eq!(
            ok(&abort, false),
            Message::StreamAbort(StreamAbort { xid: 7, subxid: 8 })
        );
        let abort_v4 = MessageBuilder::new(b'A')
            .u32(7)
            .u32(8)
            .u64(1)
            .u64(2)
            .build();
        assert_eq!(
            ok(&abort_v4, false),
            Message::StreamAbort(StreamAbort { xid: 7, subxid: 8 })
        );
    }

    #[test]
    fn unknown_and_empty_messages() {
        assert_eq!(decode(&[], false).unwrap_err().reason, "an empty message");
        assert_eq!(
            decode(b"Z", false).unwrap_err(),
            DecodeError {
                message: "unknown",
                reason: "an unknown message type"
            }
        );
    }

    #[test]
    fn timestamps_convert_to_unix_time() {
        assert_eq!(PgTimestamp(0).unix_micros(), Some(EPOCH_MICROS));
        assert_eq!(PgTimestamp::from_unix_micros(EPOCH_MICROS), PgTimestamp(0));
        assert_eq!(PgTimestamp(i64::MAX).unix_micros(), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>, in_stream: bool) {
            // Whatever decodes can be walked completely.
            if let Ok(Message::Insert(insert)) = decode(&bytes, in_stream) {
                proptest::prop_assert_eq!(insert.new.columns().count(), insert.new.len());
            }
        }
    }
}
