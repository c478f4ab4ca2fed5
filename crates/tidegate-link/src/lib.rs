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

impl<T: Transport> Link<T> {
    fn new(transport: T, codec: FrameCodec, sealer: Sealer, opener: Opener) -> Self {
        let (sink, stream) = transport.split();
        Self {
            sender: LinkSender {
                sink,
                codec,
                sealer,
                seq: 1,
            },
            receiver: LinkReceiver {
                stream,
                codec,
                opener,
                seq: 1,
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
        let buf = seal_frame(&self.codec, &mut self.sealer, self.seq, message)?;
        self.seq += 1;
        self.sink.send(Bytes::from(buf)).await?;
        Ok(())
    }

    /// Closes the sending direction of the transport.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.sink.close().await?;
        Ok(())
    }
}

/// Encodes `message` as frame `seq` and seals it in place, without an intermediate copy.
pub fn seal_frame(
    codec: &FrameCodec,
    sealer: &mut Sealer,
    seq: u64,
    message: &Message,
) -> Result<Vec<u8>, Error> {
    // Room for the sealed header, the frame and the tag: sealing appends nothing that would
    // make the buffer grow and copy.
    let mut buf = vec![0u8; tidegate_channel::HEADER_LEN];
    if let Err(e) = codec.encode_with_slack(seq, message, &mut buf, tidegate_channel::TAG_LEN) {
        buf.zeroize();
        return Err(e.into());
    }
    sealer.seal_in_place(&mut buf, 0)?;
    Ok(buf)
}

/// Opens a sealed frame in place, decodes it and checks its sequence number. A plaintext that
/// can hold credentials (a command, or anything that failed to decode) is wiped from `sealed`
/// afterwards; status and progress frames, which never hold any, are not (the volatile wipe of
/// a large frame would cost as much as decrypting it).
pub fn open_frame(
    codec: &FrameCodec,
    opener: &mut Opener,
    expected_seq: u64,
    sealed: &mut [u8],
) -> Result<Message, Error> {
    let result = opener
        .open(sealed)
        .map_err(Error::from)
        .and_then(|plain| codec.decode_exact(plain).map_err(Error::from));
    if result
        .as_ref()
        .map_or(true, |frame| frame.message.may_carry_secrets())
    {
        sealed.zeroize();
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
        let bytes = next_message(&mut self.stream).await?;
        let mut buf = BytesMut::from(bytes);
        let message = open_frame(&self.codec, &mut self.opener, self.seq, &mut buf)?;
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
