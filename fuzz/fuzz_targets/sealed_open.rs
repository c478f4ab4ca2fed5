//! Sealed frames: what a peer or a man in the middle can send to `open_frame`.
//!
//! The first input byte picks a mode, the rest is the payload:
//!
//! * 0 — the payload as a sealed frame, into a fresh opener: it must never open (that would be
//!   a forgery) and never panic.
//! * 1 — the payload sealed as plaintext with the right key, as from a peer that holds the
//!   channel keys but sends garbage: `open_frame` must agree with `decode_exact` on the
//!   plaintext, check the sequence number, and leave the plaintext buffer zeroed whenever the
//!   payload could hold credentials or did not decode.
//! * 2 — a valid sealed frame, XORed with the payload (after a first byte that may cut it
//!   short): it opens to the original message if and only if no byte changed.
//!
//! Channel keys come from the real handshake (random ephemeral keys, fixed binding and
//! transcript), fresh for each input: a `Sealer` and an `Opener` are stateful (counters, and the
//! opener poisons itself on any error), so sharing them between inputs would make runs depend
//! on earlier inputs and crashes irreproducible.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidegate_channel::{ChannelBinding, Handshake, Opener, Role, Sealer};
use tidegate_link::{open_frame, seal_frame};
use tidegate_proto::{CommandId, ErrorCode, ErrorReport, FrameCodec, Heartbeat, Message};

const SEQ: u64 = 1;

fn channel() -> (Sealer, Opener) {
    let gateway = Handshake::new(Role::Gateway);
    let control = Handshake::new(Role::ControlPlane);
    let (g_pub, c_pub) = (gateway.public_key(), control.public_key());
    let binding = ChannelBinding::new([0x5a; 32]);
    let transcript = b"fuzz hello, fuzz welcome";
    let (sealer, _) = gateway
        .finish(&c_pub, &binding, transcript)
        .expect("fresh ephemeral keys are contributory");
    let (_, opener) = control
        .finish(&g_pub, &binding, transcript)
        .expect("fresh ephemeral keys are contributory");
    (sealer, opener)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let codec = FrameCodec::default();
    let (mut sealer, mut opener) = channel();
    // A receive buffer that held an earlier frame, as a link's does.
    let mut plaintext = vec![0xa5; 64];
    match mode % 3 {
        0 => {
            assert!(
                open_frame(&codec, &mut opener, SEQ, payload, &mut plaintext).is_err(),
                "an unsealed frame opened"
            );
        }
        1 => {
            let mut sealed = Vec::new();
            sealer.seal(payload, &mut sealed).expect("first counter");
            let opened = open_frame(&codec, &mut opener, SEQ, &sealed, &mut plaintext);
            // A plaintext that can hold credentials (a command) or did not decode is wiped,
            // whatever else is wrong with it (a wrong sequence number, say).
            let must_wipe = codec
                .decode_exact(payload)
                .map_or(true, |frame| frame.message.may_carry_secrets());
            match codec.decode_exact(payload) {
                Ok(frame) if frame.seq == SEQ => {
                    assert_eq!(opened.expect("a valid frame opens"), frame.message);
                }
                _ => assert!(opened.is_err(), "an invalid frame opened"),
            }
            if must_wipe {
                // Wiped in place: the length stays, so the check sees every byte opened.
                assert_eq!(
                    plaintext.len(),
                    payload.len(),
                    "plaintext buffer not as opened"
                );
                assert!(
                    plaintext.iter().all(|&b| b == 0),
                    "plaintext that may hold credentials left in the buffer"
                );
            }
        }
        _ => {
            let message = if payload.len() % 2 == 0 {
                Message::Heartbeat(Heartbeat { id: 0x0102_0304 })
            } else {
                Message::CommandResult(tidegate_proto::CommandResult {
                    id: CommandId(9),
                    outcome: Err(ErrorReport {
                        code: ErrorCode::Source,
                        message: "table \"main\".\"t\": gone".into(),
                        retryable: true,
                    }),
                })
            };
            let mut scratch = BytesMut::new();
            let original =
                seal_frame(&codec, &mut sealer, SEQ, &message, &mut scratch).expect("seals");
            let mut frame = original.to_vec();
            let (cut, mask) = payload.split_first().map_or((0, payload), |(c, m)| (*c, m));
            if cut != 0 {
                frame.truncate(usize::from(cut) % frame.len());
            }
            let len = frame.len();
            if len > 0 {
                for (i, b) in mask.iter().enumerate() {
                    frame[i % len] ^= b;
                }
            }
            let changed = frame != original;
            let opened = open_frame(&codec, &mut opener, SEQ, &frame, &mut plaintext);
            if changed {
                assert!(opened.is_err(), "a tampered frame opened");
            } else {
                assert_eq!(opened.expect("an untouched frame opens"), message);
            }
        }
    }
});
