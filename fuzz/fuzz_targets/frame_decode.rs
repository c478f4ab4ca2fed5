//! Arbitrary bytes into the frame decoder, whole-frame and streaming.
//!
//! Properties: neither decoder panics; a frame that decodes re-encodes and decodes to the same
//! frame; the streaming decoder, fed the same bytes in small chunks, yields exactly the frame
//! `decode_exact` found and consumes every byte of it.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidegate_proto::{Frame, FrameCodec};

fuzz_target!(|data: &[u8]| {
    let codec = FrameCodec::default();

    let whole = codec.decode_exact(data);
    if let Ok(frame) = &whole {
        let mut again = Vec::new();
        codec
            .encode(frame.seq, &frame.message, &mut again)
            .expect("a decoded frame re-encodes");
        let back = codec
            .decode_exact(&again)
            .expect("a re-encoded frame decodes");
        assert_eq!(&back, frame, "re-encoding changed the frame");
    }

    // Streaming: chunk sizes of 1..=16 bytes, taken from the first byte.
    let chunk = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    let mut stream = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut failed = false;
    'feed: for piece in data.chunks(chunk) {
        stream.extend_from_slice(piece);
        loop {
            match codec.decode(&mut stream) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }

    if let Ok(frame) = whole {
        assert!(!failed, "stream decoder rejected a valid frame");
        assert_eq!(
            frames.first(),
            Some(&frame),
            "stream decoder saw another frame"
        );
        assert_eq!(frames.len(), 1, "one frame became several");
        assert!(
            stream.is_empty(),
            "stream decoder left bytes of a whole frame"
        );
    }
});
