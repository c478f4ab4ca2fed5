//! Length-delimited framing.
//!
//! The decoder follows the `tokio_util::codec::Decoder` contract: `Ok(None)` means "need more
//! bytes"; `Err` means the stream is corrupt and must be closed. The length prefix is checked
//! against the maximum before any buffer is reserved.

use bytes::{Buf, BytesMut};

use crate::message::Message;

/// The byte-layout version written in every frame header.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the body: length (4), format (1), sequence number (8).
pub const HEADER_LEN: usize = 4 + 1 + 8;

/// The default maximum frame length (length prefix included): 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// No configuration can raise the maximum frame length above this: 16 MiB.
pub const HARD_MAX_FRAME_LEN: usize = 16 << 20;

/// One frame: a per-direction sequence number and a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Sequence number in the sender's direction, starting at 0 and increasing by one.
    pub seq: u64,
    /// The message.
    pub message: Message,
}

/// Why bytes could not be framed or unframed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The frame's declared length exceeds the limit. Nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length declared (or, when encoding, produced).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The declared length is too small to hold a header.
    #[error("frame length {len} is shorter than the {HEADER_LEN}-byte header")]
    FrameTooShort {
        /// The length declared.
        len: usize,
    },
    /// The frame was written in a byte layout this build does not read.
    #[error("unknown frame format version {0}")]
    UnknownFormat(u8),
    /// The body is not a valid message.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// A whole-frame decode found bytes after the frame, or too few for it.
    #[error("frame boundary mismatch: {0}")]
    Boundary(&'static str),
}

/// Encodes and decodes [`Frame`]s with a maximum length.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl FrameCodec {
    /// A codec with the given maximum frame length, clamped to [`HARD_MAX_FRAME_LEN`].
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            max_frame_len: max_frame_len.clamp(HEADER_LEN, HARD_MAX_FRAME_LEN),
        }
    }

    /// The maximum frame length in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Appends frame `seq` carrying `message` to `dst`. A frame longer than the maximum is an
    /// error and leaves `dst` as it was.
    pub fn encode<B: FrameBuf>(
        &self,
        seq: u64,
        message: &Message,
        dst: &mut B,
    ) -> Result<(), Error> {
        self.encode_with_room(seq, message, dst, 0, 0)
    }

    /// Like [`FrameCodec::encode`], with `head` zero bytes before the frame and `tail` zero bytes
    /// after it (room for a sealed frame's header and tag), all reserved at once: the frame's
    /// bytes are written once and never moved by a growing buffer.
    pub fn encode_with_room<B: FrameBuf>(
        &self,
        seq: u64,
        message: &Message,
        dst: &mut B,
        head: usize,
        tail: usize,
    ) -> Result<(), Error> {
        let len = self.encoded_len(message)?;
        let too_large = Error::FrameTooLarge {
            len,
            max: self.max_frame_len,
        };
        if len > self.max_frame_len {
            return Err(too_large);
        }
        let prefix = u32::try_from(len - 4).map_err(|_| too_large)?;
        let start = dst.len();
        dst.reserve(head + len + tail);
        dst.put_zeros(head);
        dst.put_slice(&prefix.to_be_bytes());
        dst.put_slice(&[FORMAT_VERSION]);
        dst.put_slice(&seq.to_be_bytes());
        if let Err(e) = postcard::serialize_with_flavor(message, Append(&mut *dst)) {
            // What was written may hold credentials: leave none of it in the spare room.
            dst.wipe_from(start);
            dst.truncate(start);
            return Err(Error::Malformed(e.to_string()));
        }
        debug_assert_eq!(
            dst.len() - start,
            head + len,
            "postcard's size pass disagrees"
        );
        dst.put_zeros(tail);
        Ok(())
    }

    /// The length of the frame that would carry `message`, length prefix included.
    pub fn encoded_len(&self, message: &Message) -> Result<usize, Error> {
        postcard::experimental::serialized_size(message)
            .map(|body| HEADER_LEN + body)
            .map_err(|e| Error::Malformed(e.to_string()))
    }

    /// Decodes one frame from the front of `src`, consuming its bytes.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame (nothing is consumed).
    /// An error means the stream is corrupt: the caller must close it.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(total) = self.frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = self.decode_body(&src[4..total])?;
        src.advance(total);
        Ok(Some(frame))
    }

    /// Decodes a buffer that must hold exactly one frame (a WebSocket message, an opened
    /// sealed frame). Missing or extra bytes are an error.
    pub fn decode_exact(&self, src: &[u8]) -> Result<Frame, Error> {
        let Some(total) = self.frame_len(src)? else {
            return Err(Error::Boundary("truncated frame"));
        };
        match src.len().cmp(&total) {
            std::cmp::Ordering::Less => Err(Error::Boundary("truncated frame")),
            std::cmp::Ordering::Greater => Err(Error::Boundary("bytes after the frame")),
            std::cmp::Ordering::Equal => self.decode_body(&src[4..]),
        }
    }

    /// Reads and checks the length prefix; `None` if fewer than four bytes are there.
    fn frame_len(&self, src: &[u8]) -> Result<Option<usize>, Error> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let total = declared.saturating_add(4);
        if total > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                len: total,
                max: self.max_frame_len,
            });
        }
        if total < HEADER_LEN {
            return Err(Error::FrameTooShort { len: total });
        }
        Ok(Some(total))
    }

    /// Decodes format, sequence number and body; `body` starts after the length prefix.
    fn decode_body(&self, mut body: &[u8]) -> Result<Frame, Error> {
        let format = body.get_u8();
        if format != FORMAT_VERSION {
            return Err(Error::UnknownFormat(format));
        }
        let seq = body.get_u64();
        let (message, rest) = postcard::take_from_bytes::<Message>(body)
            .map_err(|e| Error::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(Error::Boundary("bytes after the message body"));
        }
        Ok(Frame { seq, message })
    }
}

/// A buffer frames can be appended to: `Vec<u8>` or [`BytesMut`].
///
/// Sealed: the codec relies on how these two grow, and no other type can implement it.
pub trait FrameBuf: sealed::Sealed {}

impl FrameBuf for Vec<u8> {}
impl FrameBuf for BytesMut {}

mod sealed {
    use bytes::{BufMut, BytesMut};
    use zeroize::Zeroize;

    /// What the codec needs of a buffer. `reserve` is called once per frame with its whole
    /// length, so the appends after it never reallocate.
    pub trait Sealed {
        fn len(&self) -> usize;
        fn reserve(&mut self, additional: usize);
        fn put_slice(&mut self, bytes: &[u8]);
        fn put_zeros(&mut self, count: usize);
        fn truncate(&mut self, len: usize);
        /// Zeroes every byte from `start` on (the bytes stay, zeroed).
        fn wipe_from(&mut self, start: usize);
    }

    impl Sealed for Vec<u8> {
        fn len(&self) -> usize {
            Vec::len(self)
        }
        fn reserve(&mut self, additional: usize) {
            // Exact: growing by doubling would only leave unused room behind a large frame.
            Vec::reserve_exact(self, additional);
        }
        fn put_slice(&mut self, bytes: &[u8]) {
            self.extend_from_slice(bytes);
        }
        fn put_zeros(&mut self, count: usize) {
            self.resize(Vec::len(self) + count, 0);
        }
        fn truncate(&mut self, len: usize) {
            Vec::truncate(self, len);
        }
        fn wipe_from(&mut self, start: usize) {
            if let Some(tail) = self.get_mut(start..) {
                tail.zeroize();
            }
        }
    }

    impl Sealed for BytesMut {
        fn len(&self) -> usize {
            BytesMut::len(self)
        }
        fn reserve(&mut self, additional: usize) {
            // Takes the allocation back when every `Bytes` split off it has been dropped.
            BytesMut::reserve(self, additional);
        }
        fn put_slice(&mut self, bytes: &[u8]) {
            BufMut::put_slice(self, bytes);
        }
        fn put_zeros(&mut self, count: usize) {
            BufMut::put_bytes(self, 0, count);
        }
        fn truncate(&mut self, len: usize) {
            BytesMut::truncate(self, len);
        }
        fn wipe_from(&mut self, start: usize) {
            if let Some(tail) = self.get_mut(start..) {
                tail.zeroize();
            }
        }
    }
}

/// A postcard output that appends to a [`FrameBuf`] slice by slice, not byte by byte.
struct Append<'a, B>(&'a mut B);

/// Long strings are copied into the frame in pieces of at most this many bytes.
///
/// glibc's `memcpy` moves anything above about 2 KiB with `rep movsb`, which AMD Zen 3 and 4
/// run up to twenty times slower when the destination lies a few bytes (1 to 31, measured)
/// past the source modulo 4 KiB (glibc bug 30994). Where a string lands in a frame is set by
/// the frame header, so a long string can meet that case on every send; below the threshold
/// glibc copies with vector loads and stores, at full speed whatever the addresses.
const COPY_PIECE: usize = 2 << 10;

impl<B: FrameBuf> postcard::ser_flavors::Flavor for Append<'_, B> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        for piece in data.chunks(COPY_PIECE) {
            self.0.put_slice(piece);
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_slice(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::message::*;
    use crate::secret::{SecretMap, SecretString};

    fn sample_messages() -> Vec<Message> {
        let mut secrets = SecretMap::new();
        secrets.insert("password", SecretString::new("pw"));
        let conn = ConnectionSpec {
            id: "c1".into(),
            kind: "sqlite".into(),
            settings: [("path".to_string(), "/tmp/x.db".to_string())].into(),
            secrets,
        };
        vec![
            Message::Hello(Hello {
                min_version: ProtocolVersion(1),
                max_version: ProtocolVersion(3),
                software: "tidegate 0.1".into(),
                channel_public: [7; 32],
                nonce: [9; 32],
            }),
            Message::Heartbeat(Heartbeat { id: 42 }),
            Message::Command {
                id: CommandId(5),
                command: Command::StartTask(TaskSpec {
                    task_id: "t".into(),
                    run_id: "r".into(),
                    kind: TaskKind::FullLoad,
                    source: conn.clone(),
                    target: conn.clone(),
                    tables: TableSelection::default(),
                    completed_tables: vec!["main.a".into()],
                }),
            },
            Message::Command {
                id: CommandId(6),
                command: Command::DropReplication {
                    task_id: "t".into(),
                    source: conn,
                },
            },
            Message::CommandResult(CommandResult {
                id: CommandId(5),
                outcome: Err(ErrorReport {
                    code: ErrorCode::Source,
                    message: "table \"main\".\"a\": gone".into(),
                    retryable: true,
                }),
            }),
            Message::Replication(ReplicationReport {
                task_id: "t".into(),
                run_id: "r".into(),
                phase: ReplicationPhase::Streaming,
                checkpoint_lsn: "0/16B3748".into(),
                source_lsn: "0/16B3800".into(),
                lag_bytes: 184,
                lag_ms: 12,
                load_rows: 1000,
                transactions: 3,
                rows: 7,
                retrying: Some("source 127.0.0.1:5432/shop: connection refused".into()),
            }),
            Message::CommandResult(CommandResult {
                id: CommandId(6),
                outcome: Ok(CommandOutcome::Slot(Some(SlotReport {
                    name: "tidegate_t".into(),
                    active: false,
                    retained_bytes: Some(1 << 30),
                    wal_status: Some("extended".into()),
                }))),
            }),
        ]
    }

    #[test]
    fn round_trips_every_sample() {
        let codec = FrameCodec::default();
        for (seq, message) in sample_messages().into_iter().enumerate() {
            let frame = Frame {
                seq: seq as u64,
                message,
            };
            let mut buf = Vec::new();
            codec.encode(frame.seq, &frame.message, &mut buf).unwrap();
            assert_eq!(codec.decode_exact(&buf).unwrap(), frame);
            let mut stream = BytesMut::from(&buf[..]);
            assert_eq!(codec.decode(&mut stream).unwrap(), Some(frame));
            assert!(stream.is_empty());
        }
    }

    #[test]
    fn vec_and_bytes_mut_get_the_same_frame_with_the_room_asked_for() {
        let codec = FrameCodec::default();
        for (seq, message) in sample_messages().into_iter().enumerate() {
            let seq = seq as u64;
            let mut plain = Vec::new();
            codec.encode(seq, &message, &mut plain).unwrap();
            let mut vec = vec![7u8; 3];
            codec
                .encode_with_room(seq, &message, &mut vec, 8, 16)
                .unwrap();
            let mut bytes = BytesMut::from(&[7u8; 3][..]);
            codec
                .encode_with_room(seq, &message, &mut bytes, 8, 16)
                .unwrap();
            assert_eq!(&vec[..], &bytes[..]);
            let (before, rest) = vec.split_at(3 + 8);
            let (frame, after) = rest.split_at(rest.len() - 16);
            assert_eq!(before, [7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(frame, &plain[..]);
            assert_eq!(after, [0; 16]);
        }
    }

    #[test]
    fn long_texts_copied_in_pieces_round_trip() {
        let codec = FrameCodec::default();
        // Multi-byte characters straddle the piece boundaries.
        let text = "ä€𝄞x".repeat(3000);
        for len in [2047, 2048, 2049, 4096, 10_001, text.len()] {
            let cut = (0..=len).rev().find(|&i| text.is_char_boundary(i)).unwrap();
            let message = Message::Goodbye(Goodbye {
                reason: text[..cut].to_string(),
            });
            let mut buf = BytesMut::new();
            codec.encode(9, &message, &mut buf).unwrap();
            let frame = codec.decode_exact(&buf).unwrap();
            assert_eq!(frame.message, message, "{len} bytes");
        }
    }

    #[test]
    fn partial_input_asks_for_more_without_consuming() {
        let codec = FrameCodec::default();
        let mut buf = Vec::new();
        let frame = Frame {
            seq: 1,
            message: Message::Heartbeat(Heartbeat { id: 1 }),
        };
        codec.encode(frame.seq, &frame.message, &mut buf).unwrap();
        for cut in 0..buf.len() {
            let mut partial = BytesMut::from(&buf[..cut]);
            assert_eq!(codec.decode(&mut partial).unwrap(), None, "cut at {cut}");
            assert_eq!(partial.len(), cut);
            assert!(matches!(
                codec.decode_exact(&buf[..cut]),
                Err(Error::Boundary(_) | Error::FrameTooShort { .. } | Error::Malformed(_))
            ));
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let codec = FrameCodec::with_max_frame_len(1024);
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        let err = codec.decode(&mut src).unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { max: 1024, .. }),
            "{err}"
        );
        assert!(
            src.capacity() < 1024,
            "decoder reserved for a refused frame"
        );
    }

    #[test]
    fn encoding_above_the_maximum_fails_and_leaves_the_buffer() {
        let codec = FrameCodec::with_max_frame_len(64);
        let mut buf = vec![1, 2, 3];
        let frame = Frame {
            seq: 0,
            message: Message::Goodbye(Goodbye {
                reason: "x".repeat(100),
            }),
        };
        assert!(matches!(
            codec.encode(frame.seq, &frame.message, &mut buf),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(buf, vec![1, 2, 3]);
    }

    #[test]
    fn bad_headers_are_named() {
        let codec = FrameCodec::default();
        let mut buf = Vec::new();
        let frame = Frame {
            seq: 3,
            message: Message::Heartbeat(Heartbeat { id: 3 }),
        };
        codec.encode(frame.seq, &frame.message, &mut buf).unwrap();

        let mut wrong_format = buf.clone();
        wrong_format[4] = 99;
        assert!(matches!(
            codec.decode_exact(&wrong_format),
            Err(Error::UnknownFormat(99))
        ));

        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(matches!(
            codec.decode_exact(&trailing),
            Err(Error::Boundary(_))
        ));

        let mut short = BytesMut::from(&[0, 0, 0, 2, 1, 0][..]);
        assert!(matches!(
            codec.decode(&mut short),
            Err(Error::FrameTooShort { len: 6 })
        ));

        let mut unknown_variant = buf.clone();
        unknown_variant[HEADER_LEN] = 0xEE;
        assert!(matches!(
            codec.decode_exact(&unknown_variant),
            Err(Error::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = FrameCodec::default();
            let _ = codec.decode_exact(&bytes);
            let mut src = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut src) {}
        }

        #[test]
        fn goodbye_and_heartbeats_round_trip(seq in any::<u64>(), id in any::<u64>(), reason in ".{0,200}") {
            let codec = FrameCodec::default();
            for message in [Message::Heartbeat(Heartbeat { id }), Message::Goodbye(Goodbye { reason: reason.clone() })] {
                let frame = Frame { seq, message };
                let mut buf = Vec::new();
                codec.encode(frame.seq, &frame.message, &mut buf).unwrap();
                prop_assert_eq!(codec.decode_exact(&buf).unwrap(), frame);
            }
        }
    }
}
