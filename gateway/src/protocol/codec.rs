//! The frame codec: a tokio-util `Decoder`/`Encoder` with explicit limits.
//!
//! The decoder reads the header, checks version, op, flags and the body length
//! against the current limit, and only then reserves room for the body. A peer
//! therefore cannot make us allocate more than `max_body + HEADER_LEN` bytes per
//! connection, whatever it writes in the length field.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{Code, Frame, Op, HEADER_LEN, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported protocol version {version}")]
    BadVersion { version: u8, seq: u32 },
    #[error("unknown op 0x{op:02x}")]
    UnknownOp { op: u8, seq: u32 },
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u32, max: usize, seq: u32 },
    #[error("reserved flags 0x{flags:04x} must be zero")]
    BadFlags { flags: u16, seq: u32 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// The ERROR code to send back, or `None` for I/O errors (nothing to answer).
    pub fn code(&self) -> Option<Code> {
        match self {
            DecodeError::BadVersion { .. } => Some(Code::BadVersion),
            DecodeError::UnknownOp { .. } => Some(Code::UnknownOp),
            DecodeError::FrameTooLarge { .. } => Some(Code::FrameTooLarge),
            DecodeError::BadFlags { .. } => Some(Code::BadFlags),
            DecodeError::Io(_) => None,
        }
    }

    /// The offending frame's sequence number, echoed in the ERROR.
    pub fn seq(&self) -> u32 {
        match self {
            DecodeError::BadVersion { seq, .. }
            | DecodeError::UnknownOp { seq, .. }
            | DecodeError::FrameTooLarge { seq, .. }
            | DecodeError::BadFlags { seq, .. } => *seq,
            DecodeError::Io(_) => 0,
        }
    }
}

/// Stateless apart from the current body limit, which the session raises after login.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> FrameCodec {
        FrameCodec { max_body }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body;
    }
}

/// Parsed header fields; `len` is the body length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub version: u8,
    pub op: u8,
    pub flags: u16,
    pub seq: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            version: b[4],
            op: b[5],
            flags: u16::from_be_bytes([b[6], b[7]]),
            seq: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(head) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(head);
        let h = Header::parse(&raw);
        // Order matters for the client's diagnosis: version first (a v2 client
        // may legitimately use ops we do not know), then op, then size.
        if h.version != VERSION {
            return Err(DecodeError::BadVersion { version: h.version, seq: h.seq });
        }
        let Some(op) = Op::from_u8(h.op) else {
            return Err(DecodeError::UnknownOp { op: h.op, seq: h.seq });
        };
        if h.flags != 0 {
            return Err(DecodeError::BadFlags { flags: h.flags, seq: h.seq });
        }
        let len = h.len as usize;
        if len > self.max_body {
            return Err(DecodeError::FrameTooLarge { len: h.len, max: self.max_body, seq: h.seq });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Bounded by the check above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame { op, seq: h.seq, body }))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode_frame(frame.op, frame.seq, &frame.body, dst);
        Ok(())
    }
}

/// Append one frame to `dst`. Outbound frames are bounded by their producers
/// (the push API's body limit, config), not by the peer.
pub fn encode_frame(op: Op, seq: u32, body: &[u8], dst: &mut BytesMut) {
    dst.reserve(HEADER_LEN + body.len());
    dst.put_u32(body.len() as u32);
    dst.put_u8(VERSION);
    dst.put_u8(op as u8);
    dst.put_u16(0);
    dst.put_u32(seq);
    dst.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(len: u32, version: u8, op: u8, flags: u16, seq: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(len);
        b.put_u8(version);
        b.put_u8(op);
        b.put_u16(flags);
        b.put_u32(seq);
        b.put_slice(body);
        b
    }

    #[test]
    fn round_trip_and_partial_input() {
        let mut codec = FrameCodec::new(1024);
        let mut out = BytesMut::new();
        encode_frame(Op::Heartbeat, 7, b"", &mut out);
        encode_frame(Op::Send, 8, b"hello", &mut out);
        let all = out.clone();
        // Feed one byte at a time: nothing decodes early, everything decodes eventually.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in all.iter() {
            buf.put_u8(*byte);
            while let Some(f) = codec.decode(&mut buf).expect("valid input") {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].op, got[0].seq, got[0].body.len()), (Op::Heartbeat, 7, 0));
        assert_eq!((got[1].op, got[1].seq, &got[1].body[..]), (Op::Send, 8, &b"hello"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut codec = FrameCodec::new(4096);
        let mut buf = frame_bytes(u32::MAX, VERSION, Op::Send as u8, 0, 3, b"");
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(DecodeError::FrameTooLarge { len, max, seq }) => {
                assert_eq!((len, max, seq), (u32::MAX, 4096, 3));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before, "decoder must not reserve for a rejected frame");
    }

    #[test]
    fn limit_is_inclusive_and_adjustable() {
        let mut codec = FrameCodec::new(4);
        let mut ok = frame_bytes(4, VERSION, Op::Send as u8, 0, 1, b"abcd");
        assert!(codec.decode(&mut ok).unwrap().is_some());
        let mut big = frame_bytes(5, VERSION, Op::Send as u8, 0, 1, b"abcde");
        assert!(matches!(codec.decode(&mut big), Err(DecodeError::FrameTooLarge { .. })));
        codec.set_max_body(5);
        let mut big = frame_bytes(5, VERSION, Op::Send as u8, 0, 1, b"abcde");
        assert!(codec.decode(&mut big).unwrap().is_some());
    }

    #[test]
    fn bad_version_unknown_op_and_flags_have_codes() {
        let mut codec = FrameCodec::new(64);
        let mut b = frame_bytes(0, 2, Op::Heartbeat as u8, 0, 9, b"");
        let e = codec.decode(&mut b).unwrap_err();
        assert_eq!((e.code(), e.seq()), (Some(Code::BadVersion), 9));
        let mut b = frame_bytes(0, VERSION, 0x7f, 0, 10, b"");
        let e = codec.decode(&mut b).unwrap_err();
        assert_eq!((e.code(), e.seq()), (Some(Code::UnknownOp), 10));
        let mut b = frame_bytes(0, VERSION, Op::Heartbeat as u8, 1, 11, b"");
        assert_eq!(codec.decode(&mut b).unwrap_err().code(), Some(Code::BadFlags));
    }

    #[test]
    fn header_alone_waits_for_the_body() {
        let mut codec = FrameCodec::new(64);
        let mut b = frame_bytes(10, VERSION, Op::Send as u8, 0, 1, b"abc");
        assert!(codec.decode(&mut b).unwrap().is_none());
        b.put_slice(b"defghij");
        let f = codec.decode(&mut b).unwrap().expect("complete now");
        assert_eq!(&f.body[..], b"abcdefghij");
    }
}
