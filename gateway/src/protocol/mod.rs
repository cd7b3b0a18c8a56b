//! Wire protocol v1 (specified in `docs/protocol.md`).
//!
//! A frame is a fixed 12-byte header followed by `len` body bytes:
//!
//! ```text
//!  0       4   5   6       8               12
//!  +-------+---+---+-------+---------------+------------------+
//!  |  len  |ver| op| flags |      seq      |  body (len bytes) |
//!  +-------+---+---+-------+---------------+------------------+
//!  u32 BE   u8  u8  u16 BE  u32 BE
//! ```
//!
//! [`codec`] turns bytes into [`Frame`]s with the size limit checked from the
//! header before any allocation; [`message`] gives each op's body a type.

pub mod codec;
pub mod message;

pub use codec::{DecodeError, FrameCodec};
pub use message::{Message, MessageError};

use bytes::Bytes;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;

/// Operation codes. The numeric values are the wire format; never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Login = 0x01,
    LoginAck = 0x02,
    Heartbeat = 0x03,
    HeartbeatAck = 0x04,
    Send = 0x05,
    SendAck = 0x06,
    Push = 0x07,
    PushAck = 0x08,
    Kick = 0x09,
    Migrate = 0x0A,
    Error = 0x0B,
    Close = 0x0C,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            0x01 => Op::Login,
            0x02 => Op::LoginAck,
            0x03 => Op::Heartbeat,
            0x04 => Op::HeartbeatAck,
            0x05 => Op::Send,
            0x06 => Op::SendAck,
            0x07 => Op::Push,
            0x08 => Op::PushAck,
            0x09 => Op::Kick,
            0x0A => Op::Migrate,
            0x0B => Op::Error,
            0x0C => Op::Close,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Login => "LOGIN",
            Op::LoginAck => "LOGIN_ACK",
            Op::Heartbeat => "HEARTBEAT",
            Op::HeartbeatAck => "HEARTBEAT_ACK",
            Op::Send => "SEND",
            Op::SendAck => "SEND_ACK",
            Op::Push => "PUSH",
            Op::PushAck => "PUSH_ACK",
            Op::Kick => "KICK",
            Op::Migrate => "MIGRATE",
            Op::Error => "ERROR",
            Op::Close => "CLOSE",
        }
    }
}

/// One code space for ERROR, KICK, CLOSE and SEND_ACK, so a client needs one table.
/// The numeric values are the wire format; `docs/protocol.md` lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Code {
    Ok = 0,
    // Framing (1xx): the connection is closed after the ERROR.
    BadVersion = 100,
    UnknownOp = 101,
    FrameTooLarge = 102,
    Malformed = 103,
    BadFlags = 104,
    // Session state (2xx).
    NotLoggedIn = 200,
    AlreadyLoggedIn = 201,
    UnexpectedOp = 202,
    // Login (3xx).
    TokenInvalid = 300,
    TokenExpired = 301,
    LoginTimeout = 302,
    DuplicateSession = 303,
    Banned = 304,
    BadIdentity = 305,
    // Flow (4xx).
    RateLimited = 400,
    SlowConsumer = 401,
    HeartbeatTimeout = 402,
    // Node (5xx).
    ServerBusy = 500,
    ShuttingDown = 501,
    Internal = 502,
    Migrating = 503,
    // Kick reasons (6xx).
    DuplicateLogin = 600,
    KickedByAdmin = 601,
    // SEND results (7xx).
    TargetOffline = 700,
    TargetSlow = 701,
    UpstreamError = 702,
    UpstreamTimeout = 703,
    UpstreamBusy = 704,
    Rejected = 705,
    // Orderly close by the client.
    Normal = 800,
}

impl Code {
    pub fn from_u16(v: u16) -> Option<Code> {
        use Code::*;
        Some(match v {
            0 => Ok,
            100 => BadVersion,
            101 => UnknownOp,
            102 => FrameTooLarge,
            103 => Malformed,
            104 => BadFlags,
            200 => NotLoggedIn,
            201 => AlreadyLoggedIn,
            202 => UnexpectedOp,
            300 => TokenInvalid,
            301 => TokenExpired,
            302 => LoginTimeout,
            303 => DuplicateSession,
            304 => Banned,
            305 => BadIdentity,
            400 => RateLimited,
            401 => SlowConsumer,
            402 => HeartbeatTimeout,
            500 => ServerBusy,
            501 => ShuttingDown,
            502 => Internal,
            503 => Migrating,
            600 => DuplicateLogin,
            601 => KickedByAdmin,
            700 => TargetOffline,
            701 => TargetSlow,
            702 => UpstreamError,
            703 => UpstreamTimeout,
            704 => UpstreamBusy,
            705 => Rejected,
            800 => Normal,
            _ => return None,
        })
    }

    /// Stable lower-case name, used in logs, metrics labels and the push API.
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "ok",
            BadVersion => "bad_version",
            UnknownOp => "unknown_op",
            FrameTooLarge => "frame_too_large",
            Malformed => "malformed",
            BadFlags => "bad_flags",
            NotLoggedIn => "not_logged_in",
            AlreadyLoggedIn => "already_logged_in",
            UnexpectedOp => "unexpected_op",
            TokenInvalid => "token_invalid",
            TokenExpired => "token_expired",
            LoginTimeout => "login_timeout",
            DuplicateSession => "duplicate_session",
            Banned => "banned",
            BadIdentity => "bad_identity",
            RateLimited => "rate_limited",
            SlowConsumer => "slow_consumer",
            HeartbeatTimeout => "heartbeat_timeout",
            ServerBusy => "server_busy",
            ShuttingDown => "shutting_down",
            Internal => "internal",
            Migrating => "migrating",
            DuplicateLogin => "duplicate_login",
            KickedByAdmin => "kicked_by_admin",
            TargetOffline => "target_offline",
            TargetSlow => "target_slow",
            UpstreamError => "upstream_error",
            UpstreamTimeout => "upstream_timeout",
            UpstreamBusy => "upstream_busy",
            Rejected => "rejected",
            Normal => "normal",
        }
    }
}

/// A decoded frame: header fields plus the raw body, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub op: Op,
    pub seq: u32,
    pub body: Bytes,
}
