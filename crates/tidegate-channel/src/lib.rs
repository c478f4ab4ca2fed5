//! Channel keys: the second layer of encryption on Tidegate's command-and-control link.
//!
//! TLS protects the connection between the gateway and the control plane. On top of it, every
//! command-and-control frame is sealed again with keys that are new on every connection:
//!
//! 1. Each side makes an ephemeral X25519 key pair ([`Handshake::new`]) and sends its public key
//!    and a fresh nonce in the protocol's hello messages.
//! 2. Both sides compute the X25519 shared secret and feed it through HKDF-SHA-256, salted with
//!    the TLS session's exported keying material ([`ChannelBinding`]) and bound to a hash of the
//!    handshake transcript. A party that relays the exchange between two different TLS sessions
//!    derives different keys on each side, so its first sealed frame fails to open.
//! 3. HKDF yields one key per direction. [`Sealer`] seals frames with ChaCha20-Poly1305 and a
//!    counter nonce; [`Opener`] accepts only the next counter, so replayed, reordered, truncated
//!    and tampered frames are rejected. After any rejection the opener stays poisoned: the
//!    connection must be closed.
//!
//! Keys are zeroized on drop. This crate knows nothing of frames, protocols or the network; it
//! seals and opens byte strings.
//!
//! ```
//! use tidegate_channel::{ChannelBinding, Handshake, Role};
//!
//! let binding = ChannelBinding::new([7; 32]); // from the TLS exporter on both ends
//! let gateway = Handshake::new(Role::Gateway);
//! let control = Handshake::new(Role::ControlPlane);
//! let (g_pub, c_pub) = (gateway.public_key(), control.public_key());
//! let transcript = b"hello bytes, then welcome bytes";
//! let (mut g_seal, _g_open) = gateway.finish(&c_pub, &binding, transcript).unwrap();
//! let (_c_seal, mut c_open) = control.finish(&g_pub, &binding, transcript).unwrap();
//!
//! let mut sealed = Vec::new();
//! g_seal.seal(b"start task 7", &mut sealed).unwrap();
//! assert_eq!(c_open.open(&mut sealed).unwrap(), b"start task 7");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::{Zeroize, Zeroizing};

/// The label both sides pass to the TLS exporter (RFC 5705 / RFC 8446 §7.5).
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-tidegate-channel-v1";

/// Bytes of the sealed-frame header: the 64-bit counter.
pub const HEADER_LEN: usize = 8;

/// Bytes of the authentication tag after the ciphertext.
pub const TAG_LEN: usize = 16;

/// Bytes a sealed frame adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const KDF_INFO: &[u8] = b"tidegate channel v1";

/// Which end of the channel this is. The gateway always dials and speaks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The gateway (the TLS client).
    Gateway,
    /// The control plane (the TLS server).
    ControlPlane,
}

/// The direction a key protects. Part of every frame's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    GatewayToControlPlane = 1,
    ControlPlaneToGateway = 2,
}

/// Keying material exported from the TLS session the channel runs in.
///
/// Both ends obtain it with the TLS exporter, label [`TLS_EXPORTER_LABEL`] and no context, 32
/// bytes long. It is the same on both ends only if they share one TLS session.
#[derive(Clone)]
pub struct ChannelBinding(Zeroizing<[u8; 32]>);

impl ChannelBinding {
    /// Wraps exported keying material.
    pub fn new(material: [u8; 32]) -> Self {
        Self(Zeroizing::new(material))
    }

    /// The material itself.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelBinding(<redacted>)")
    }
}

/// Why a channel operation failed. Every error means the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// HKDF refused to expand (cannot happen for 32-byte keys; kept as an error, not a panic).
    #[error("channel key derivation failed")]
    KeyDerivation,
    /// The peer's public key gives an all-zero shared secret (a low-order point).
    #[error("peer's channel key is not contributory")]
    NonContributory,
    /// The sealed frame is shorter than header and tag.
    #[error("sealed frame truncated: {len} bytes")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The frame's counter is not the next one expected: replayed, reordered or dropped frames.
    #[error("sealed frame out of order: expected counter {expected}, got {got}")]
    OutOfOrder {
        /// The counter expected.
        expected: u64,
        /// The counter received.
        got: u64,
    },
    /// Authentication failed: the frame was tampered with, or the keys differ (a relayed
    /// exchange).
    #[error("sealed frame failed authentication")]
    Tampered,
    /// An earlier frame was rejected; this channel opens nothing more.
    #[error("channel closed after an earlier rejected frame")]
    Poisoned,
    /// 2^64 frames were sealed with one key. Reconnect for new keys.
    #[error("channel counter exhausted")]
    CounterExhausted,
}

/// One side of the ephemeral key exchange. Consumed by [`Handshake::finish`], so an ephemeral
/// secret can be used only once.
pub struct Handshake {
    role: Role,
    secret: EphemeralSecret,
    public: PublicKey,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A fresh ephemeral key pair for `role`.
    ///
    /// # Panics
    /// If the operating system's random source fails (as `getrandom` documents).
    pub fn new(role: Role) -> Self {
        // Draws from the operating system's random source.
        let secret = EphemeralSecret::random();
        let public = PublicKey::from(&secret);
        Self {
            role,
            secret,
            public,
        }
    }

    /// The public key to send to the peer.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// Derives this connection's keys from the peer's public key, the TLS binding and the
    /// handshake transcript (both hello messages as sent, gateway's first).
    ///
    /// Returns the sealer for frames this side sends and the opener for frames it receives.
    pub fn finish(
        self,
        peer_public: &[u8; 32],
        binding: &ChannelBinding,
        transcript: &[u8],
    ) -> Result<(Sealer, Opener), Error> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer_public));
        if !shared.was_contributory() {
            return Err(Error::NonContributory);
        }
        let hk = Hkdf::<Sha256>::new(Some(binding.as_bytes()), shared.as_bytes());
        let transcript_hash = Sha256::digest(transcript);

        let derive = |direction: Direction| -> Result<Zeroizing<[u8; 32]>, Error> {
            let mut key = Zeroizing::new([0u8; 32]);
            let info: [&[u8]; 3] = [KDF_INFO, &[direction as u8], transcript_hash.as_slice()];
            hk.expand_multi_info(&info, key.as_mut())
                .map_err(|_| Error::KeyDerivation)?;
            Ok(key)
        };
        let g2c = Direction::GatewayToControlPlane;
        let c2g = Direction::ControlPlaneToGateway;
        let (send, recv) = match self.role {
            Role::Gateway => (g2c, c2g),
            Role::ControlPlane => (c2g, g2c),
        };
        Ok((
            Sealer {
                state: KeyState::new(&*derive(send)?, send),
            },
            Opener {
                state: KeyState::new(&*derive(recv)?, recv),
                poisoned: false,
            },
        ))
    }
}

/// A key, its direction and the next counter. The cipher wipes its key on drop.
struct KeyState {
    cipher: ChaCha20Poly1305,
    direction: Direction,
    counter: u64,
}

impl KeyState {
    fn new(key: &[u8; 32], direction: Direction) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(key.into()),
            direction,
            counter: 0,
        }
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[0] = self.direction as u8;
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        nonce.into()
    }

    fn aad(&self, counter: u64) -> [u8; 9] {
        let mut aad = [0u8; 9];
        aad[0] = self.direction as u8;
        aad[1..].copy_from_slice(&counter.to_be_bytes());
        aad
    }
}

/// Seals the frames one side sends.
pub struct Sealer {
    state: KeyState,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("direction", &self.state.direction)
            .field("counter", &self.state.counter)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Seals `plaintext` and appends the sealed frame (counter, ciphertext, tag) to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        out.extend_from_slice(&[0; TAG_LEN]);
        let result = self.seal_in_place(&mut out[start..]);
        if result.is_err() {
            out[start..].zeroize();
            out.truncate(start);
        }
        result
    }

    /// Seals in place, in any buffer: `frame` is [`HEADER_LEN`] bytes of room for the header,
    /// the plaintext, and [`TAG_LEN`] bytes of room for the tag. The header and tag are written
    /// and the plaintext is encrypted where it lies, so a frame encoded straight into its final
    /// buffer is never copied.
    pub fn seal_in_place(&mut self, frame: &mut [u8]) -> Result<(), Error> {
        if frame.len() < OVERHEAD {
            return Err(Error::Truncated { len: frame.len() });
        }
        let counter = self.state.counter;
        let next = counter.checked_add(1).ok_or(Error::CounterExhausted)?;
        let nonce = self.state.nonce(counter);
        let aad = self.state.aad(counter);
        let (header, rest) = frame.split_at_mut(HEADER_LEN);
        let (body, tag_room) = rest.split_at_mut(rest.len() - TAG_LEN);
        header.copy_from_slice(&counter.to_be_bytes());
        let tag = self
            .state
            .cipher
            .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(body))
            .map_err(|_| Error::Tampered)?;
        tag_room.copy_from_slice(&tag);
        self.state.counter = next;
        Ok(())
    }

    /// The counter the next sealed frame will carry.
    pub fn next_counter(&self) -> u64 {
        self.state.counter
    }
}

/// Opens the frames one side receives, strictly in order.
pub struct Opener {
    state: KeyState,
    poisoned: bool,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("direction", &self.state.direction)
            .field("counter", &self.state.counter)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Opens a sealed frame in place and returns its plaintext, a sub-slice of `sealed`.
    ///
    /// Any error poisons the opener: every later call fails with [`Error::Poisoned`]. A frame
    /// that fails authentication leaves zeros where its plaintext would have been.
    pub fn open<'a>(&mut self, sealed: &'a mut [u8]) -> Result<&'a [u8], Error> {
        let (counter, next) = self.check(sealed)?;
        let body_len = sealed.len() - OVERHEAD;
        let (body, tag) = sealed[HEADER_LEN..].split_at_mut(body_len);
        let tag = Tag::try_from(&*tag).map_err(|_| Error::Tampered)?;
        let (nonce, aad) = (self.state.nonce(counter), self.state.aad(counter));
        if self
            .state
            .cipher
            .decrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut *body), &tag)
            .is_err()
        {
            // Leave no partially decrypted bytes behind.
            body.zeroize();
            return Err(Error::Tampered);
        }
        self.accept(counter, next);
        Ok(body)
    }

    /// Opens a sealed frame into `plaintext`, which is resized to the plaintext's length (only
    /// the part it grows by is zeroed first) and reuses its allocation: a receiver keeps one
    /// buffer for every frame and never copies the sealed bytes, which can then stay shared
    /// and immutable.
    ///
    /// The tag is checked before any byte is decrypted: a frame that fails authentication
    /// writes no plaintext (what `plaintext` held before may remain). Any error poisons the
    /// opener: every later call fails with [`Error::Poisoned`].
    pub fn open_into(&mut self, sealed: &[u8], plaintext: &mut Vec<u8>) -> Result<(), Error> {
        let (counter, next) = self.check(sealed)?;
        let (body, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - OVERHEAD);
        let tag = Tag::try_from(tag).map_err(|_| Error::Tampered)?;
        let (nonce, aad) = (self.state.nonce(counter), self.state.aad(counter));
        plaintext.resize(body.len(), 0);
        let buf = InOutBuf::new(body, plaintext).map_err(|_| Error::Tampered)?;
        self.state
            .cipher
            .decrypt_inout_detached(&nonce, &aad, buf, &tag)
            .map_err(|_| Error::Tampered)?;
        self.accept(counter, next);
        Ok(())
    }

    /// Poisons the opener, then checks what can be checked before decrypting: not poisoned,
    /// long enough, the expected counter, not the last one. Returns the counter and the one
    /// after it.
    fn check(&mut self, sealed: &[u8]) -> Result<(u64, u64), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.poisoned = true;
        if sealed.len() < OVERHEAD {
            return Err(Error::Truncated { len: sealed.len() });
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&sealed[..HEADER_LEN]);
        let got = u64::from_be_bytes(counter_bytes);
        let expected = self.state.counter;
        if got != expected {
            return Err(Error::OutOfOrder { expected, got });
        }
        let next = expected.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok((expected, next))
    }

    /// Records that frame `counter` opened: the next one must carry `next`.
    fn accept(&mut self, counter: u64, next: u64) {
        debug_assert_eq!(self.state.counter, counter);
        self.state.counter = next;
        self.poisoned = false;
    }

    /// The counter the next frame must carry.
    pub fn next_counter(&self) -> u64 {
        self.state.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(binding_g: [u8; 32], binding_c: [u8; 32]) -> ((Sealer, Opener), (Sealer, Opener)) {
        let g = Handshake::new(Role::Gateway);
        let c = Handshake::new(Role::ControlPlane);
        let (gp, cp) = (g.public_key(), c.public_key());
        let t = b"transcript";
        (
            g.finish(&cp, &ChannelBinding::new(binding_g), t).unwrap(),
            c.finish(&gp, &ChannelBinding::new(binding_c), t).unwrap(),
        )
    }

    fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(msg, &mut out).unwrap();
        out
    }

    #[test]
    fn both_directions_round_trip_in_order() {
        let ((mut gs, mut go), (mut cs, mut co)) = pair([1; 32], [1; 32]);
        for i in 0..5u8 {
            let msg = vec![i; 100 * i as usize];
            assert_eq!(co.open(&mut seal(&mut gs, &msg)).unwrap(), &msg[..]);
            assert_eq!(go.open(&mut seal(&mut cs, &msg)).unwrap(), &msg[..]);
        }
        assert_eq!(gs.next_counter(), 5);
        assert_eq!(co.next_counter(), 5);
    }

    #[test]
    fn replayed_frame_is_rejected_and_poisons() {
        let ((mut gs, _), (_, mut co)) = pair([1; 32], [1; 32]);
        let first = seal(&mut gs, b"one");
        co.open(&mut first.clone()).unwrap();
        let err = co.open(&mut first.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OutOfOrder {
                    expected: 1,
                    got: 0
                }
            ),
            "{err}"
        );
        let mut second = seal(&mut gs, b"two");
        assert!(matches!(co.open(&mut second), Err(Error::Poisoned)));
    }

    #[test]
    fn reordered_frame_is_rejected() {
        let ((mut gs, _), (_, mut co)) = pair([1; 32], [1; 32]);
        let _first = seal(&mut gs, b"one");
        let mut second = seal(&mut gs, b"two");
        assert!(matches!(
            co.open(&mut second),
            Err(Error::OutOfOrder {
                expected: 0,
                got: 1
            })
        ));
    }

    #[test]
    fn tampered_truncated_and_reflected_frames_are_rejected() {
        type Mutation = fn(&mut Vec<u8>);
        let cases: [(&str, Mutation); 4] = [
            ("flip a ciphertext bit", |f| f[HEADER_LEN] ^= 1),
            ("flip a tag bit", |f| {
                let last = f.len() - 1;
                f[last] ^= 0x80
            }),
            ("cut the tag", |f| f.truncate(f.len() - 1)),
            ("cut to the header", |f| f.truncate(HEADER_LEN)),
        ];
        for (name, mutate) in cases {
            let ((mut gs, _), (_, mut co)) = pair([1; 32], [1; 32]);
            let mut frame = seal(&mut gs, b"stop task 3");
            mutate(&mut frame);
            assert!(co.open(&mut frame).is_err(), "{name} was accepted");
        }
        // A frame sent back to its own sender (reflection) fails: directions use other keys.
        let ((mut gs, mut go), _) = pair([1; 32], [1; 32]);
        assert!(matches!(
            go.open(&mut seal(&mut gs, b"x")),
            Err(Error::Tampered)
        ));
    }

    #[test]
    fn relayed_exchange_across_tls_sessions_fails() {
        let ((mut gs, _), (_, mut co)) = pair([1; 32], [2; 32]);
        assert!(matches!(
            co.open(&mut seal(&mut gs, b"x")),
            Err(Error::Tampered)
        ));
    }

    #[test]
    fn different_transcripts_give_different_keys() {
        let g = Handshake::new(Role::Gateway);
        let c = Handshake::new(Role::ControlPlane);
        let (gp, cp) = (g.public_key(), c.public_key());
        let b = ChannelBinding::new([1; 32]);
        let (mut gs, _) = g.finish(&cp, &b, b"hello v1").unwrap();
        let (_, mut co) = c.finish(&gp, &b, b"hello v2").unwrap();
        assert!(co.open(&mut seal(&mut gs, b"x")).is_err());
    }

    #[test]
    fn two_connections_never_share_keys() {
        // Same TLS binding and transcript on purpose: only the ephemeral keys differ.
        let ((mut gs1, _), _) = pair([1; 32], [1; 32]);
        let ((mut gs2, _), (_, mut co2)) = pair([1; 32], [1; 32]);
        let a = seal(&mut gs1, b"same plaintext");
        let b = seal(&mut gs2, b"same plaintext");
        assert_ne!(a, b, "two connections produced the same ciphertext");
        assert!(
            co2.open(&mut a.clone()).is_err(),
            "connection 2 opened connection 1's frame"
        );
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let g = Handshake::new(Role::Gateway);
        let err = g
            .finish(&[0; 32], &ChannelBinding::new([1; 32]), b"t")
            .unwrap_err();
        assert!(matches!(err, Error::NonContributory));
    }

    #[test]
    fn open_into_reuses_one_buffer_and_writes_nothing_unauthenticated() {
        let ((mut gs, _), (_, mut co)) = pair([4; 32], [4; 32]);
        let mut plain = Vec::new();
        for len in [100, 5000, 0, 17, 5000] {
            let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            co.open_into(&seal(&mut gs, &msg), &mut plain).unwrap();
            assert_eq!(plain, msg, "{len} bytes");
        }
        let mut tampered = seal(&mut gs, &[9; 64]);
        tampered[HEADER_LEN] ^= 1;
        let mut plain = vec![0u8; 64];
        assert!(matches!(
            co.open_into(&tampered, &mut plain),
            Err(Error::Tampered)
        ));
        assert_eq!(plain, [0; 64], "plaintext of a forged frame was written");
        let mut next = seal(&mut gs, b"after");
        assert!(matches!(
            co.open_into(&next, &mut plain),
            Err(Error::Poisoned)
        ));
        assert!(matches!(co.open(&mut next), Err(Error::Poisoned)));
    }

    #[test]
    fn seal_in_place_matches_seal() {
        let ((mut gs, _), (_, mut co)) = pair([3; 32], [3; 32]);
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(b"in place");
        buf.extend_from_slice(&[0; TAG_LEN]);
        gs.seal_in_place(&mut buf).unwrap();
        assert_eq!(co.open(&mut buf).unwrap(), b"in place");
        let mut short = [0u8; OVERHEAD - 1];
        assert!(matches!(
            gs.seal_in_place(&mut short),
            Err(Error::Truncated { len }) if len == OVERHEAD - 1
        ));
    }
}
