//! Typed bodies for each op.
//!
//! Primitive encodings (all integers big-endian):
//! - `str8`: `u8` length, then that many UTF-8 bytes;
//! - `str16`: `u16` length, then that many UTF-8 bytes;
//! - `rest`: every remaining body byte (opaque payload).
//!
//! Messages without a `rest` field ignore trailing bytes, so a later minor
//! revision can append fields without breaking v1 peers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::encode_frame;
use super::{Code, Frame, Op};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Login {
        token: String,
    },
    LoginAck {
        node_id: String,
        session_id: u64,
        heartbeat_secs: u32,
    },
    Heartbeat,
    HeartbeatAck,
    /// `to` empty: for the business upstream only; otherwise a uid to relay to.
    Send {
        to: String,
        payload: Bytes,
    },
    SendAck {
        code: u16,
        message: String,
        payload: Bytes,
    },
    Push {
        push_id: u64,
        from: String,
        payload: Bytes,
    },
    PushAck {
        push_id: u64,
    },
    Kick {
        code: u16,
        message: String,
    },
    /// Reconnect to one of `targets` (host:port) after `delay_ms`, then close this one.
    Migrate {
        delay_ms: u32,
        targets: Vec<String>,
    },
    Error {
        code: u16,
        message: String,
    },
    Close {
        code: u16,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {op} body: {reason}")]
pub struct MessageError {
    pub op: &'static str,
    pub reason: &'static str,
}

struct Reader<'a> {
    op: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, MessageError> {
        Err(MessageError { op: self.op, reason })
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        if self.buf.remaining() < 1 {
            return self.fail("truncated");
        }
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, MessageError> {
        if self.buf.remaining() < 2 {
            return self.fail("truncated");
        }
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        if self.buf.remaining() < 4 {
            return self.fail("truncated");
        }
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        if self.buf.remaining() < 8 {
            return self.fail("truncated");
        }
        Ok(self.buf.get_u64())
    }
    fn str_n(&mut self, n: usize) -> Result<String, MessageError> {
        if self.buf.remaining() < n {
            return self.fail("string length exceeds the body");
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.fail("string is not UTF-8"),
        }
    }
    fn str8(&mut self) -> Result<String, MessageError> {
        let n = self.u8()? as usize;
        self.str_n(n)
    }
    fn str16(&mut self) -> Result<String, MessageError> {
        let n = self.u16()? as usize;
        self.str_n(n)
    }
}

fn put_str8(dst: &mut BytesMut, s: &str) {
    // Producers keep these short (uids, node ids, addresses); cut rather than corrupt.
    let b = truncate_utf8(s, u8::MAX as usize);
    dst.put_u8(b.len() as u8);
    dst.put_slice(b);
}

fn put_str16(dst: &mut BytesMut, s: &str) {
    let b = truncate_utf8(s, u16::MAX as usize);
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

fn truncate_utf8(s: &str, max: usize) -> &[u8] {
    if s.len() <= max {
        return s.as_bytes();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

impl Message {
    pub fn op(&self) -> Op {
        match self {
            Message::Login { .. } => Op::Login,
            Message::LoginAck { .. } => Op::LoginAck,
            Message::Heartbeat => Op::Heartbeat,
            Message::HeartbeatAck => Op::HeartbeatAck,
            Message::Send { .. } => Op::Send,
            Message::SendAck { .. } => Op::SendAck,
            Message::Push { .. } => Op::Push,
            Message::PushAck { .. } => Op::PushAck,
            Message::Kick { .. } => Op::Kick,
            Message::Migrate { .. } => Op::Migrate,
            Message::Error { .. } => Op::Error,
            Message::Close { .. } => Op::Close,
        }
    }

    pub fn error(code: Code, message: impl Into<String>) -> Message {
        Message::Error { code: code as u16, message: message.into() }
    }

    /// Interpret a frame's body according to its op.
    pub fn decode(frame: &Frame) -> Result<Message, MessageError> {
        let mut r = Reader { op: frame.op.name(), buf: &frame.body[..] };
        let rest = |r: &Reader<'_>| frame.body.slice(frame.body.len() - r.buf.len()..);
        Ok(match frame.op {
            Op::Login => Message::Login { token: r.str16()? },
            Op::LoginAck => Message::LoginAck { node_id: r.str8()?, session_id: r.u64()?, heartbeat_secs: r.u32()? },
            Op::Heartbeat => Message::Heartbeat,
            Op::HeartbeatAck => Message::HeartbeatAck,
            Op::Send => {
                let to = r.str8()?;
                Message::Send { to, payload: rest(&r) }
            }
            Op::SendAck => {
                let code = r.u16()?;
                let message = r.str16()?;
                Message::SendAck { code, message, payload: rest(&r) }
            }
            Op::Push => {
                let push_id = r.u64()?;
                let from = r.str8()?;
                Message::Push { push_id, from, payload: rest(&r) }
            }
            Op::PushAck => Message::PushAck { push_id: r.u64()? },
            Op::Kick => Message::Kick { code: r.u16()?, message: r.str16()? },
            Op::Migrate => {
                let delay_ms = r.u32()?;
                let n = r.u8()? as usize;
                // At most 255 targets, each at most 255 bytes: bounded by construction.
                let mut targets = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    targets.push(r.str8()?);
                }
                Message::Migrate { delay_ms, targets }
            }
            Op::Error => Message::Error { code: r.u16()?, message: r.str16()? },
            Op::Close => Message::Close { code: r.u16()?, message: r.str16()? },
        })
    }

    /// Append this message as one frame with sequence number `seq`.
    pub fn encode(&self, seq: u32, dst: &mut BytesMut) {
        let mut body = BytesMut::new();
        match self {
            Message::Login { token } => put_str16(&mut body, token),
            Message::LoginAck { node_id, session_id, heartbeat_secs } => {
                put_str8(&mut body, node_id);
                body.put_u64(*session_id);
                body.put_u32(*heartbeat_secs);
            }
            Message::Heartbeat | Message::HeartbeatAck => {}
            Message::Send { to, payload } => {
                put_str8(&mut body, to);
                body.put_slice(payload);
            }
            Message::SendAck { code, message, payload } => {
                body.put_u16(*code);
                put_str16(&mut body, message);
                body.put_slice(payload);
            }
            Message::Push { push_id, from, payload } => {
                body.put_u64(*push_id);
                put_str8(&mut body, from);
                body.put_slice(payload);
            }
            Message::PushAck { push_id } => body.put_u64(*push_id),
            Message::Kick { code, message } | Message::Error { code, message } | Message::Close { code, message } => {
                body.put_u16(*code);
                put_str16(&mut body, message);
            }
            Message::Migrate { delay_ms, targets } => {
                body.put_u32(*delay_ms);
                let n = targets.len().min(u8::MAX as usize);
                body.put_u8(n as u8);
                for t in &targets[..n] {
                    put_str8(&mut body, t);
                }
            }
        }
        encode_frame(self.op(), seq, &body, dst);
    }

    /// Encode into a fresh buffer (one frame).
    pub fn to_bytes(&self, seq: u32) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(seq, &mut b);
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameCodec;
    use tokio_util::codec::Decoder;

    fn round_trip(m: Message) {
        let mut buf = BytesMut::new();
        m.encode(42, &mut buf);
        let f = FrameCodec::new(1 << 20).decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.seq, 42);
        assert_eq!(Message::decode(&f).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Login { token: "a.b.c".into() });
        round_trip(Message::LoginAck { node_id: "edge-1".into(), session_id: 9, heartbeat_secs: 270 });
        round_trip(Message::Heartbeat);
        round_trip(Message::HeartbeatAck);
        round_trip(Message::Send { to: "bob".into(), payload: Bytes::from_static(b"hi") });
        round_trip(Message::SendAck { code: 700, message: "offline".into(), payload: Bytes::new() });
        round_trip(Message::Push { push_id: u64::MAX, from: "".into(), payload: Bytes::from_static(&[0, 1, 2]) });
        round_trip(Message::PushAck { push_id: 5 });
        round_trip(Message::Kick { code: 600, message: "dup".into() });
        round_trip(Message::Migrate { delay_ms: 1500, targets: vec!["10.0.0.1:7000".into(), "b:1".into()] });
        round_trip(Message::Error { code: 101, message: "unknown op".into() });
        round_trip(Message::Close { code: 800, message: String::new() });
    }

    #[test]
    fn truncated_and_lying_bodies_are_errors() {
        let f = Frame { op: Op::Login, seq: 1, body: Bytes::from_static(&[0xff, 0xff, b'a']) };
        assert_eq!(Message::decode(&f).unwrap_err().reason, "string length exceeds the body");
        let f = Frame { op: Op::PushAck, seq: 1, body: Bytes::from_static(&[1, 2, 3]) };
        assert_eq!(Message::decode(&f).unwrap_err().reason, "truncated");
        let f = Frame { op: Op::Send, seq: 1, body: Bytes::from_static(&[2, 0xc3, 0x28]) };
        assert_eq!(Message::decode(&f).unwrap_err().reason, "string is not UTF-8");
        let f = Frame { op: Op::Migrate, seq: 1, body: Bytes::from_static(&[0, 0, 0, 1, 200]) };
        assert!(Message::decode(&f).is_err(), "claims 200 targets, has none");
    }

    #[test]
    fn trailing_bytes_are_ignored_for_fixed_messages() {
        let f = Frame { op: Op::PushAck, seq: 1, body: Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 7, 0xaa]) };
        assert_eq!(Message::decode(&f).unwrap(), Message::PushAck { push_id: 7 });
    }

    #[test]
    fn long_strings_are_cut_on_a_char_boundary() {
        let s = "é".repeat(200); // 400 bytes
        let m = Message::Push { push_id: 1, from: s, payload: Bytes::new() };
        let mut buf = BytesMut::new();
        m.encode(0, &mut buf);
        let f = FrameCodec::new(1 << 20).decode(&mut buf).unwrap().unwrap();
        match Message::decode(&f).unwrap() {
            Message::Push { from, .. } => assert_eq!(from.len(), 254),
            other => panic!("{other:?}"),
        }
    }
}
