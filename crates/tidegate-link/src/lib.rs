//! The sealed command-and-control link: `tidegate-proto` frames sealed with
//! `tidegate-channel` keys, over any message transport (a WebSocket in production).
//!
//! The link owns the order of things on a new connection:
//!
//! 1. the gateway sends `Hello` (sequence 0, in the clear inside TLS) with its protocol range and
//!    its ephemeral channel key;
//! 2. the control plane answers `Welcome` (or `Refused`, and closes);
//! 3. both derive the channel keys from the X25519 exchange, the TLS channel binding and the
//!    transcript of those two frames; from then on every frame is sealed, and each direction's
//!    sequence numbers must increase by exactly one.
//!
//! Any violation (a frame that does not open, a wrong sequence number, an oversized or malformed
//! frame, an unexpected message) ends the link with an error: the caller closes the connection.
//!
//! [`GatewayHandshake`] and [`ControlPlaneHandshake`] consume themselves, so a link can only be
//! used after its handshake completed. A link splits into a [`LinkSender`] and a
//! [`LinkReceiver`] that can live in different tasks.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::ops::RangeInclusive;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tidegate_channel::{ChannelBinding, Handshake, Opener, Role, Sealer};
use tidegate_channel::{HEADER_LEN as SEALED_HEADER_LEN, TAG_LEN};
use tidegate_proto::{
    FrameCodec, Hello, Message, ProtocolVersion, Refusal, RefusalReason, Welcome,
};
use zeroize::Zeroize;

/// An error from the underlying transport (the WebSocket), as text without payloads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Anything that carries whole binary messages both ways.
pub trait Transport:
    Stream<Item = Result<Bytes, TransportError>>
    + Sink<Bytes, Error = TransportError>
    + Send
    + Unpin
    + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<Bytes, TransportError>>
        + Sink<Bytes, Error = TransportError>
        + Send
        + Unpin
        + 'static
{
}

/// Adapts a stream-and-sink of message type `M` (a WebSocket) into a [`Transport`]:
/// `decode` turns a received message into bytes, an error, or nothing (control messages such
/// as ping and close are skipped); `encode` wraps bytes to send. Every transport error is
/// reported, however often the inner stream or sink fails.
pub struct Adapter<S, M> {
    inner: S,
    decode: fn(M) -> Option<Result<Bytes, TransportError>>,
    encode: fn(Bytes) -> M,
}

impl<S, M> std::fmt::Debug for Adapter<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").finish_non_exhaustive()
    }
}

impl<S, M> Adapter<S, M> {
    /// Wraps `inner`.
    pub fn new(
        inner: S,
        decode: fn(M) -> Option<Result<Bytes, TransportError>>,
        encode: fn(Bytes) -> M,
    ) -> Self {
        Self {
            inner,
            decode,
            encode,
        }
    }
}

impl<S, M, E> Stream for Adapter<S, M>
where
    S: Stream<Item = Result<M, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, TransportError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(TransportError(e.to_string()))));
                }
                Poll::Ready(Some(Ok(m))) => {
                    if let Some(item) = (self.decode)(m) {
                        return Poll::Ready(Some(item));
                    }
                }
            }
        }
    }
}

impl<S, M, E> Sink<Bytes> for Adapter<S, M>
where
    S: Sink<M, Error = E> + Unpin,
    E: std::fmt::Display,
{
    type Error = TransportError;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TransportError>> {
        self.inner
            .poll_ready_unpin(cx)
            .map_err(|e| TransportError(e.to_string()))
    }

    fn start_send(mut self: std::pin::Pin<&mut Self>, item: Bytes) -> Result<(), TransportError> {
        let message = (self.encode)(item);
        self.inner
            .start_send_unpin(message)
            .map_err(|e| TransportError(e.to_string()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TransportError>> {
        self.inner
            .poll_flush_unpin(cx)
            .map_err(|e| TransportError(e.to_string()))
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TransportError>> {
        self.inner
            .poll_close_unpin(cx)
            .map_err(|e| TransportError(e.to_string()))
    }
}

/// Why the link failed. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The transport closed.
    #[error("connection closed by peer")]
    Closed,
    /// A frame could not be decoded or encoded.
    #[error("frame: {0}")]
    Frame(#[from] tidegate_proto::Error),
    /// A sealed frame did not open.
    #[error("channel: {0}")]
    Channel(#[from] tidegate_channel::Error),
    /// A frame carried the wrong sequence number.
    #[error("frame sequence number {got}, expected {expected}")]
    Sequence {
        /// Expected.
        expected: u64,
        /// Received.
        got: u64,
    },
    /// A message arrived that is not allowed at this point.
    #[error("unexpected {got} message during {phase}")]
    Unexpected {
        /// The message kind received.
        got: &'static str,
        /// Where in the conversation.
        phase: &'static str,
    },
    /// The control plane picked a version outside the gateway's range.
    #[error("peer chose unsupported protocol version {0}")]
    BadVersion(u16),
    /// The control plane refused the gateway.
    #[error("refused by control plane: {}", .0.message)]
    Refused(Refusal),
}

impl Error {
    /// Whether reconnecting may help. A refusal or a protocol violation will not go away by
    /// itself; a dropped connection may.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Closed)
    }
}

/// Settings of a link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The frame codec (maximum frame length).
    pub codec: FrameCodec,
    /// The protocol versions this side speaks.
    pub versions: RangeInclusive<ProtocolVersion>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            codec: FrameCodec::default(),
            versions: tidegate_proto::SUPPORTED_VERSIONS,
        }
    }
}

/// The gateway's side of the handshake.
#[derive(Debug)]
pub struct GatewayHandshake {
    config: LinkConfig,
    software: String,
}

impl GatewayHandshake {
    /// Prepares a handshake announcing `software` (the gateway's version string).
    pub fn new(config: LinkConfig, software: impl Into<String>) -> Self {
        Self {
            config,
            software: software.into(),
        }
    }

    /// Runs the handshake over `transport`, bound to the TLS session by `binding`.
    ///
    /// Not cancel-safe: dropping the future leaves the transport mid-handshake; close it.
    pub async fn run<T: Transport>(
        self,
        mut transport: T,
        binding: &ChannelBinding,
    ) -> Result<(Link<T>, Welcome), Error> {
        let codec = self.config.codec;
        let keys = Handshake::new(Role::Gateway);
        let hello = Hello {
            min_version: *self.config.versions.start(),
            max_version: *self.config.versions.end(),
            software: self.software,
            channel_public: keys.public_key(),
            nonce: random_nonce(),
        };
        let mut transcript = Vec::new();
        codec.encode(0, &Message::Hello(hello), &mut transcript)?;
        transport.send(Bytes::copy_from_slice(&transcript)).await?;

        let reply = next_message(&mut transport).await?;
        let frame = codec.decode_exact(&reply)?;
        expect_seq(0, frame.seq)?;
        let welcome = match frame.message {
            Message::Welcome(w) => w,
            Message::Refused(r) => return Err(Error::Refused(r)),
            other => {
                return Err(Error::Unexpected {
                    got: other.kind(),
                    phase: "handshake",
                });
            }
        };
        if !self.config.versions.contains(&welcome.version) {
            return Err(Error::BadVersion(welcome.version.0));
        }
        transcript.extend_from_slice(&reply);
        let (sealer, opener) = keys.finish(&welcome.channel_public, binding, &transcript)?;
        Ok((Link::new(transport, codec, sealer, opener), welcome))
    }
}

/// What the control plane decides about a gateway's [`Hello`].
#[derive(Debug)]
pub enum Admission {
    /// Let it in, with this heartbeat interval.
    Admit {
        /// Milliseconds between heartbeats.
        heartbeat_interval_ms: u32,
    },
    /// Turn it away.
    Refuse(Refusal),
}

/// The control plane's side of the handshake.
#[derive(Debug)]
pub struct ControlPlaneHandshake {
    config: LinkConfig,
}

impl ControlPlaneHandshake {
    /// Prepares a handshake.
    pub fn new(config: LinkConfig) -> Self {
        Self { config }
    }

    /// Runs the handshake over `transport`. `admit` sees the gateway's hello and the
    /// negotiated version (`None` when the ranges do not overlap, in which case a refusal is
    /// sent whatever `admit` says) and decides.
    ///
    /// Returns the link, the hello and the negotiated version. A refused gateway gets a
    /// `Refused` frame and the call returns [`Error::Refused`].
    ///
    /// Not cancel-safe: dropping the future leaves the transport mid-handshake; close it.
    pub async fn run<T: Transport>(
        self,
        mut transport: T,
        binding: &ChannelBinding,
        admit: impl FnOnce(&Hello, Option<ProtocolVersion>) -> Admission,
    ) -> Result<(Link<T>, Hello, ProtocolVersion), Error> {
        let codec = self.config.codec;
        let first = next_message(&mut transport).await?;
        let frame = codec.decode_exact(&first)?;
        expect_seq(0, frame.seq)?;
        let hello = match frame.message {
            Message::Hello(h) => h,
            other => {
                return Err(Error::Unexpected {
                    got: other.kind(),
                    phase: "handshake",
                });
            }
        };
        let version =
            tidegate_proto::negotiate(&self.config.versions, hello.min_version, hello.max_version);
        let decision = admit(&hello, version);
        let (version, heartbeat_interval_ms) = match (version, decision) {
            (None, _) => {
                let refusal = Refusal {
                    reason: RefusalReason::UnsupportedVersion {
                        min: *self.config.versions.start(),
                        max: *self.config.versions.end(),
                    },
                    message: format!(
                        "gateway speaks protocol {}..={}, control plane supports {}..={}; upgrade the gateway",
                        hello.min_version.0,
                        hello.max_version.0,
                        self.config.versions.start().0,
                        self.config.versions.end().0
                    ),
                };
                return Err(refuse(&codec, transport, refusal).await);
            }
            (Some(_), Admission::Refuse(refusal)) => {
                return Err(refuse(&codec, transport, refusal).await);
            }
            (
                Some(v),
                Admission::Admit {
                    heartbeat_interval_ms,
                },
            ) => (v, heartbeat_interval_ms),
        };
        let keys = Handshake::new(Role::ControlPlane);
        let welcome = Welcome {
            version,
            channel_public: keys.public_key(),
            nonce: random_nonce(),
            heartbeat_interval_ms,
        };
        let mut reply = Vec::new();
        codec.encode(0, &Message::Welcome(welcome), &mut reply)?;
        let mut transcript = first.to_vec();
        transcript.extend_from_slice(&reply);
        transport.send(Bytes::from(reply)).await?;
        let (sealer, opener) = keys.finish(&hello.channel_public, binding, &transcript)?;
        Ok((Link::new(transport, codec, sealer, opener), hello, version))
    }
}

/// An established link. Use it whole, or [`Link::split`] it.
#[derive(Debug)]
pub struct Link<T> {
    sender: LinkSender<T>,
    receiver: LinkReceiver<T>,
}

/// Each half of a link keeps one buffer for the frames it seals or opens, so that steady
/// traffic allocates nothing. A frame larger than this (a rare large schema, say) lets its
/// buffer go afterwards rather than holding up to the maximum frame length for the life of
/// the link.
const RETAINED_BUFFER_LEN: usize = 256 << 10;

impl<T: Transport> Link<T> {
    fn new(transport: T, codec: FrameCodec, sealer: Sealer, opener: Opener) -> Self {
        let (sink, stream) = transport.split();
        Self {
            sender: LinkSender {
                sink,
                codec,
                sealer,
                seq: 1,
                scratch: BytesMut::new(),
            },
            receiver: LinkReceiver {
                stream,
                codec,
                opener,
                seq: 1,
                plaintext: Vec::new(),
            },
        }
    }

    /// Sends one message, sealed.
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        self.sender.send(message).await
    }

    /// Receives the next message.
    pub async fn recv(&mut self) -> Result<Message, Error> {
        self.receiver.recv().await
    }

    /// Splits the link into halves for separate tasks.
    pub fn split(self) -> (LinkSender<T>, LinkReceiver<T>) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a link.
pub struct LinkSender<T> {
    sink: SplitSink<T, Bytes>,
    codec: FrameCodec,
    sealer: Sealer,
    seq: u64,
    /// Where frames are encoded and sealed; its allocation comes back once the transport has
    /// dropped the last frame sent. Holds only ciphertext between sends.
    scratch: BytesMut,
}

impl<T> std::fmt::Debug for LinkSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSender")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> LinkSender<T> {
    /// Encodes, seals and sends one message.
    ///
    /// Not cancel-safe: a cancelled send may have consumed a sequence number; close the link.
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        let frame = seal_frame(
            &self.codec,
            &mut self.sealer,
            self.seq,
            message,
            &mut self.scratch,
        )?;
        self.seq += 1;
        if frame.len() > RETAINED_BUFFER_LEN {
            self.scratch = BytesMut::new();
        }
        self.sink.send(frame).await?;
        Ok(())
    }

    /// Closes the sending direction of the transport.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.sink.close().await?;
        Ok(())
    }
}

/// Encodes `message` as frame `seq` and seals it, returning the sealed frame to send.
///
/// The frame is encoded straight into `scratch` behind room for the sealed header, encrypted
/// where it lies and split off: its bytes are written once and never copied. Keep `scratch`
/// from one call to the next and its allocation is reused as soon as the frame returned
/// before (and every clone of it) has been dropped; what it held is discarded. On error,
/// nothing of the message is left in it.
pub fn seal_frame(
    codec: &FrameCodec,
    sealer: &mut Sealer,
    seq: u64,
    message: &Message,
    scratch: &mut BytesMut,
) -> Result<Bytes, Error> {
    scratch.clear();
    codec.encode_with_room(seq, message, scratch, SEALED_HEADER_LEN, TAG_LEN)?;
    if let Err(e) = sealer.seal_in_place(scratch) {
        scratch.as_mut().zeroize();
        scratch.clear();
        return Err(e.into());
    }
    Ok(scratch.split().freeze())
}

/// Opens a sealed frame into `plaintext`, decodes it and checks its sequence number.
///
/// `sealed` is only read, so it can stay the shared buffer the transport delivered;
/// `plaintext`'s contents are replaced and its allocation is reused, so a receiver keeping it
/// from frame to frame allocates nothing but the message itself. A plaintext that can hold
/// credentials (a command), or a frame that failed to open or decode, is then wiped: every
/// byte of `plaintext` is zeroed, its length kept. Status and progress frames, which never
/// hold credentials, are not wiped (the volatile wipe of a large frame would cost as much as
/// decrypting it): theirs is the only plaintext `plaintext`'s allocation ever keeps.
pub fn open_frame(
    codec: &FrameCodec,
    opener: &mut Opener,
    expected_seq: u64,
    sealed: &[u8],
    plaintext: &mut Vec<u8>,
) -> Result<Message, Error> {
    let result = opener
        .open_into(sealed, plaintext)
        .map_err(Error::from)
        .and_then(|()| codec.decode_exact(plaintext).map_err(Error::from));
    if result
        .as_ref()
        .map_or(true, |frame| frame.message.may_carry_secrets())
    {
        plaintext.as_mut_slice().zeroize();
    }
    let frame = result?;
    expect_seq(expected_seq, frame.seq)?;
    Ok(frame.message)
}

/// The receiving half of a link.
pub struct LinkReceiver<T> {
    stream: SplitStream<T>,
    codec: FrameCodec,
    opener: Opener,
    seq: u64,
    /// Where frames are opened. [`open_frame`] wipes what could hold credentials, so between
    /// receives it holds at most status and progress plaintext.
    plaintext: Vec<u8>,
}

impl<T> std::fmt::Debug for LinkReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReceiver")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> LinkReceiver<T> {
    /// Receives, opens and decodes the next message.
    ///
    /// Cancel-safe: if the future is dropped before a message arrived, no message is lost.
    pub async fn recv(&mut self) -> Result<Message, Error> {
        let sealed = next_message(&mut self.stream).await?;
        let result = open_frame(
            &self.codec,
            &mut self.opener,
            self.seq,
            &sealed,
            &mut self.plaintext,
        );
        if self.plaintext.capacity() > RETAINED_BUFFER_LEN {
            self.plaintext = Vec::new();
        }
        let message = result?;
        self.seq += 1;
        Ok(message)
    }
}

async fn next_message<S>(stream: &mut S) -> Result<Bytes, Error>
where
    S: Stream<Item = Result<Bytes, TransportError>> + Unpin,
{
    match stream.next().await {
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(e)) => Err(Error::Transport(e)),
        None => Err(Error::Closed),
    }
}

fn expect_seq(expected: u64, got: u64) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Sequence { expected, got })
    }
}

/// Sends a refusal, closes the transport and returns the error that ends the handshake.
async fn refuse<T: Transport>(codec: &FrameCodec, mut transport: T, refusal: Refusal) -> Error {
    let mut buf = Vec::new();
    if codec
        .encode(0, &Message::Refused(refusal.clone()), &mut buf)
        .is_ok()
    {
        let _ = transport.send(Bytes::from(buf)).await;
    }
    let _ = transport.close().await;
    Error::Refused(refusal)
}

fn random_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    // The nonce adds freshness on top of the ephemeral keys, which alone already make every
    // connection's keys unique; a failing random source would only remove that margin.
    let _ = getrandom::fill(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use tidegate_proto::{
        Command, CommandId, ErrorCode, ErrorReport, Goodbye, TaskState, TaskStatus,
    };

    use super::*;

    fn channel() -> (Sealer, Opener) {
        let gateway = Handshake::new(Role::Gateway);
        let control = Handshake::new(Role::ControlPlane);
        let (g_pub, c_pub) = (gateway.public_key(), control.public_key());
        let binding = ChannelBinding::new([3; 32]);
        let (sealer, _) = gateway.finish(&c_pub, &binding, b"t").unwrap();
        let (_, opener) = control.finish(&g_pub, &binding, b"t").unwrap();
        (sealer, opener)
    }

    fn goodbye(len: usize) -> Message {
        Message::Goodbye(Goodbye {
            reason: "abcdefghijklmnopqrstuvwxyz0123456789".repeat(len / 36 + 1)[..len].to_string(),
        })
    }

    #[test]
    fn frames_of_growing_and_shrinking_sizes_reuse_both_buffers() {
        let codec = FrameCodec::default();
        let (mut sealer, mut opener) = channel();
        let (mut scratch, mut plaintext) = (BytesMut::new(), Vec::new());
        let sizes = [0, 1, 2047, 2048, 2049, 70_000, 10, 300_000, 5, 70_000];
        for (seq, len) in (1..).zip(sizes) {
            let message = goodbye(len);
            let sealed = seal_frame(&codec, &mut sealer, seq, &message, &mut scratch).unwrap();
            let opened = open_frame(&codec, &mut opener, seq, &sealed, &mut plaintext).unwrap();
            assert_eq!(opened, message, "message of {len} bytes");
        }
    }

    #[test]
    fn the_scratch_allocation_comes_back_once_the_frame_is_dropped() {
        let codec = FrameCodec::default();
        let (mut sealer, mut opener) = channel();
        let mut scratch = BytesMut::new();
        let message = goodbye(1000);
        let first = seal_frame(&codec, &mut sealer, 1, &message, &mut scratch).unwrap();
        let first_at = first.as_ptr();
        // While the transport still holds a frame, the next one goes elsewhere.
        let second = seal_frame(&codec, &mut sealer, 2, &message, &mut scratch).unwrap();
        assert_ne!(second.as_ptr(), first_at);
        let mut plaintext = Vec::new();
        for (seq, sealed) in [(1, first), (2, second)] {
            let opened = open_frame(&codec, &mut opener, seq, &sealed, &mut plaintext).unwrap();
            assert_eq!(opened, message);
        }
        let third = seal_frame(&codec, &mut sealer, 3, &message, &mut scratch).unwrap();
        let third_at = third.as_ptr();
        drop(third);
        let fourth = seal_frame(&codec, &mut sealer, 4, &message, &mut scratch).unwrap();
        assert_eq!(
            fourth.as_ptr(),
            third_at,
            "the dropped frame's allocation was not reused"
        );
    }

    #[test]
    fn plaintext_that_may_hold_credentials_or_did_not_open_is_wiped() {
        let codec = FrameCodec::default();
        let command = Message::Command {
            id: CommandId(1),
            command: Command::StopTask {
                task_id: "t".into(),
            },
        };
        let status = Message::TaskStatus(TaskStatus {
            task_id: "t".into(),
            run_id: "r".into(),
            state: TaskState::Failed,
            error: Some(ErrorReport {
                code: ErrorCode::Source,
                message: "table \"main\".\"t\": gone".into(),
                retryable: true,
            }),
        });
        type Tamper = fn(&mut Vec<u8>);
        let cases: [(&str, &Message, Tamper, bool); 4] = [
            ("status", &status, |_| {}, false),
            ("command", &command, |_| {}, true),
            ("tampered status", &status, |f| f[10] ^= 1, true),
            (
                "status under a wrong sequence number",
                &status,
                |_| {},
                false,
            ),
        ];
        for (name, message, tamper, wiped) in cases {
            let (mut sealer, mut opener) = channel();
            let mut scratch = BytesMut::new();
            let mut sealed = seal_frame(&codec, &mut sealer, 1, message, &mut scratch)
                .unwrap()
                .to_vec();
            tamper(&mut sealed);
            let expected_seq = if name.contains("wrong sequence") {
                2
            } else {
                1
            };
            let mut plaintext = vec![0xaa; 16];
            let opened = open_frame(&codec, &mut opener, expected_seq, &sealed, &mut plaintext);
            let all_zero = plaintext.iter().all(|&b| b == 0);
            assert!(!plaintext.is_empty(), "{name}: wiped by emptying");
            assert_eq!(
                all_zero, wiped,
                "{name}: wiped {all_zero}, expected {wiped}"
            );
            assert_eq!(
                opened.is_ok(),
                name == "status" || name == "command",
                "{name}"
            );
        }
    }
}
