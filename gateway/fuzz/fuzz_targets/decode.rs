//! Untrusted bytes from a client socket, as the session task sees them: the
//! frame codec (with a small body limit, like the pre-login one) decodes
//! frames out of a buffer that fills a chunk at a time, and each frame's body
//! is interpreted with `Message::decode`.
//!
//! Properties checked, beyond "never panics":
//! - no decoded frame has a body longer than the limit;
//! - a decode error carries an ERROR code (only I/O errors have none, and
//!   there is no I/O here) and the stream stops there, as the session does;
//! - a body that decodes re-encodes to a frame that decodes to the same
//!   message (trailing bytes aside, which v1 ignores by design).

#![no_main]

use bytes::BytesMut;
use gateway::protocol::{FrameCodec, Message, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Small enough that the fuzzer reaches complete frames often.
const LIMIT: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else { return };
    // The first byte picks how many bytes arrive per read (1..=64), so the
    // partial-header and partial-body paths are exercised too.
    let chunk = (first as usize % 64) + 1;
    let mut codec = FrameCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    assert!(
                        frame.body.len() <= LIMIT,
                        "frame of {} bytes passed a {LIMIT}-byte limit",
                        frame.body.len()
                    );
                    if let Ok(msg) = Message::decode(&frame) {
                        check_round_trip(&msg, frame.seq);
                    }
                }
                Err(e) => {
                    assert!(e.code().is_some(), "a framing error without an ERROR code: {e}");
                    return;
                }
            }
        }
    }
    // Whatever is left is an incomplete frame: less than a header, or a
    // header whose body has not fully arrived and is within the limit.
    assert!(buf.len() < HEADER_LEN + LIMIT, "{} bytes left undecoded", buf.len());
});

fn check_round_trip(msg: &Message, seq: u32) {
    let mut out = BytesMut::new();
    msg.encode(seq, &mut out);
    let frame = FrameCodec::new(LIMIT)
        .decode(&mut out)
        .expect("our own encoding must decode")
        .expect("our own encoding is one whole frame");
    assert_eq!(frame.seq, seq);
    assert!(out.is_empty(), "encoding produced more than one frame");
    let again = Message::decode(&frame).expect("our own encoding must parse");
    assert_eq!(&again, msg, "message changed across a round trip");
}
