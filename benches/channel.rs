//! What framing and sealing cost on top of the bare AEAD.
//!
//! Group `channel`, for 1 KiB and 64 KiB:
//!
//! * `bare_aead`: ChaCha20-Poly1305 seal and open of a buffer in place with a detached tag,
//!   nonce and associated data shaped like the channel's: the floor nothing can go below.
//! * `frame_seal_open`: one whole frame through the public path a link uses,
//!   [`tidegate::link::seal_frame`] then [`tidegate::link::open_frame`], with a `Message` whose
//!   encoded frame is exactly as long as the bare buffer, so both sides encrypt the same number
//!   of bytes and the difference is what framing adds (encode, decode, wiping). Like the two
//!   halves of a link, the sealing side keeps its scratch buffer and the opening side its
//!   plaintext buffer from frame to frame; the decoded message is a fresh allocation, as it is
//!   for a link.
//!
//! Group `channel_parts` splits `frame_seal_open` into its steps, so that a regression can be
//! traced without a profiler.
//!
//! Last, `channel_interleaved` alternates the two whole paths round by round and prints the
//! ratio of their medians: on a shared, noisy machine that ratio is steadier than two
//! criterion measurements taken one after the other.
//!
//! Run with `cargo bench --bench channel` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::BytesMut;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use criterion::{Criterion, Throughput, criterion_group};
use tidegate::channel::{ChannelBinding, Handshake, Opener, Role, Sealer};
use tidegate::link::{open_frame, seal_frame};
use tidegate::proto::{ErrorCode, ErrorReport, FrameCodec, Message};

const SIZES: [usize; 2] = [1 << 10, 64 << 10];

/// A sealer for the gateway's direction and the control plane's opener for it.
fn channel_pair() -> (Sealer, Opener) {
    let gateway = Handshake::new(Role::Gateway);
    let control = Handshake::new(Role::ControlPlane);
    let (g_pub, c_pub) = (gateway.public_key(), control.public_key());
    let binding = ChannelBinding::new([7; 32]);
    let transcript = b"bench transcript";
    let (sealer, _) = gateway
        .finish(&c_pub, &binding, transcript)
        .expect("fresh ephemeral keys are contributory");
    let (_, opener) = control
        .finish(&g_pub, &binding, transcript)
        .expect("fresh ephemeral keys are contributory");
    (sealer, opener)
}

/// A message whose encoded frame (frame header included) is exactly `frame_len` bytes.
fn message_with_frame_len(codec: &FrameCodec, frame_len: usize) -> Message {
    let make = |text_len: usize| {
        Message::Error(ErrorReport {
            code: ErrorCode::Internal,
            message: "x".repeat(text_len),
            retryable: false,
        })
    };
    let encoded_len = |message: &Message| {
        let mut buf = Vec::new();
        codec.encode(0, message, &mut buf).expect("frame fits");
        buf.len()
    };
    // The overhead (headers, variant tags, the varint length) depends only weakly on the text
    // length; two rounds settle it.
    let mut text_len = frame_len;
    for _ in 0..2 {
        let overhead = encoded_len(&make(text_len)) - text_len;
        text_len = frame_len - overhead;
    }
    let message = make(text_len);
    assert_eq!(
        encoded_len(&message),
        frame_len,
        "frame length is not exact"
    );
    message
}

fn channel(c: &mut Criterion) {
    let mut group = c.benchmark_group("channel");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_function(format!("bare_aead/{size}"), |b| {
            let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
            let mut buf = vec![0x5au8; size];
            let mut counter = 0u64;
            b.iter(|| {
                let mut nonce = [0u8; 12];
                nonce[0] = 1;
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let nonce = Nonce::from(nonce);
                let mut aad = [1u8; 9];
                aad[1..].copy_from_slice(&counter.to_be_bytes());
                let tag: Tag = cipher
                    .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut buf[..]))
                    .expect("buffer within the AEAD's limit");
                cipher
                    .decrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut buf[..]), &tag)
                    .expect("what was just sealed opens");
                counter += 1;
                black_box(&buf);
            });
        });

        group.bench_function(format!("frame_seal_open/{size}"), |b| {
            let codec = FrameCodec::default();
            let message = message_with_frame_len(&codec, size);
            let (mut sealer, mut opener) = channel_pair();
            let (mut scratch, mut plaintext) = (BytesMut::new(), Vec::new());
            let mut seq = 1u64;
            b.iter(|| {
                let sealed =
                    seal_frame(&codec, &mut sealer, seq, black_box(&message), &mut scratch)
                        .expect("seals");
                let opened =
                    open_frame(&codec, &mut opener, seq, &sealed, &mut plaintext).expect("opens");
                seq += 1;
                black_box(opened);
            });
        });
    }
    group.finish();
}

fn channel_parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("channel_parts");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let codec = FrameCodec::default();
        let message = message_with_frame_len(&codec, size);
        let mut plain = Vec::new();
        codec.encode(1, &message, &mut plain).expect("frame fits");

        group.bench_function(format!("encode_reused_buf/{size}"), |b| {
            let mut buf = Vec::with_capacity(size + 64);
            b.iter(|| {
                buf.clear();
                codec
                    .encode(1, black_box(&message), &mut buf)
                    .expect("frame fits");
                black_box(&buf);
            });
        });

        group.bench_function(format!("decode_exact/{size}"), |b| {
            b.iter(|| black_box(codec.decode_exact(black_box(&plain)).expect("decodes")));
        });

        group.bench_function(format!("seal_frame/{size}"), |b| {
            let (mut sealer, _) = channel_pair();
            let mut scratch = BytesMut::new();
            let mut seq = 1u64;
            b.iter(|| {
                let sealed =
                    seal_frame(&codec, &mut sealer, seq, black_box(&message), &mut scratch)
                        .expect("seals");
                seq += 1;
                black_box(sealed);
            });
        });
    }
    group.finish();
}

/// Both paths alternated round by round, so the load of a shared machine hits them equally;
/// prints the ratio of their median round times. Criterion measures one function after the
/// other, and on a noisy machine the two land in different conditions.
fn interleaved(rounds_64k: usize) {
    const PER_ROUND: usize = 8;
    for size in SIZES {
        let rounds = rounds_64k * (64 << 10) / size;
        let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
        let mut buf = vec![0x5au8; size];
        let mut counter = 0u64;
        let mut bare = || {
            let mut nonce = [0u8; 12];
            nonce[0] = 1;
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let nonce = Nonce::from(nonce);
            let mut aad = [1u8; 9];
            aad[1..].copy_from_slice(&counter.to_be_bytes());
            let tag: Tag = cipher
                .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut buf[..]))
                .expect("buffer within the AEAD's limit");
            cipher
                .decrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut buf[..]), &tag)
                .expect("what was just sealed opens");
            counter += 1;
            black_box(&buf);
        };
        let codec = FrameCodec::default();
        let message = message_with_frame_len(&codec, size);
        let (mut sealer, mut opener) = channel_pair();
        let (mut scratch, mut plaintext) = (BytesMut::new(), Vec::new());
        let mut seq = 1u64;
        let mut frame = || {
            let sealed = seal_frame(&codec, &mut sealer, seq, black_box(&message), &mut scratch)
                .expect("seals");
            let opened =
                open_frame(&codec, &mut opener, seq, &sealed, &mut plaintext).expect("opens");
            seq += 1;
            black_box(opened);
        };
        let time = |f: &mut dyn FnMut()| {
            let started = std::time::Instant::now();
            for _ in 0..PER_ROUND {
                f();
            }
            started.elapsed()
        };
        let (mut bare_times, mut frame_times) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                bare_times.push(time(&mut bare));
                frame_times.push(time(&mut frame));
            } else {
                frame_times.push(time(&mut frame));
                bare_times.push(time(&mut bare));
            }
        }
        let median = |times: &mut Vec<std::time::Duration>| {
            times.sort();
            times[times.len() / 2].as_secs_f64() * 1e6 / PER_ROUND as f64
        };
        let (bare, frame) = (median(&mut bare_times), median(&mut frame_times));
        println!(
            "channel_interleaved/{size}: bare_aead {bare:.2} µs, frame_seal_open {frame:.2} µs, \
             ratio {:.3} (medians of {rounds} alternating rounds)",
            frame / bare
        );
    }
}

criterion_group!(benches, channel, channel_parts);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs this with `--test`: keep it short there.
    let quick = std::env::args().any(|arg| arg == "--test" || arg == "--quick");
    interleaved(if quick { 200 } else { 3000 });
}
