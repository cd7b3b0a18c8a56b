//! The reference client: what an IM app does, in a few calls.
//!
//! Used by the integration tests and by `gateway client`. It speaks the wire
//! protocol over TLS (trusting a CA file) or plaintext, logs in, and exposes
//! frames as typed [`Message`]s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::protocol::{Code, DecodeError, Frame, FrameCodec, Message, MessageError};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Config(#[from] crate::tls::TlsError),
    #[error("bad server name {0:?} for TLS")]
    ServerName(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server sent an undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("server sent a malformed body: {0}")]
    Message(#[from] MessageError),
    #[error("connection closed by the server")]
    Closed,
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("server error {code} ({name}): {message}", name = code_name(*.code))]
    Refused { code: u16, message: String },
    #[error("kicked by the server, code {code} ({name}): {message}", name = code_name(*.code))]
    Kicked { code: u16, message: String },
    #[error("unexpected {0} from the server")]
    Unexpected(&'static str),
}

fn code_name(code: u16) -> &'static str {
    Code::from_u16(code).map_or("unknown", Code::name)
}

/// What the server said in LOGIN_ACK.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    pub node_id: String,
    pub session_id: u64,
    pub heartbeat: Duration,
}

/// Client-side codec: servers may send large pushes, and the client trusts
/// its server more than the server trusts clients, but a limit still applies.
struct ClientCodec(FrameCodec);

impl Decoder for ClientCodec {
    type Item = Frame;
    type Error = DecodeError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.0.decode(src)
    }
}

impl Encoder<(u32, Message)> for ClientCodec {
    type Error = std::io::Error;
    fn encode(&mut self, (seq, msg): (u32, Message), dst: &mut BytesMut) -> Result<(), std::io::Error> {
        msg.encode(seq, dst);
        Ok(())
    }
}

pub struct Client {
    framed: Framed<Box<dyn Io>, ClientCodec>,
    next_seq: u32,
}

/// Client TLS settings: which CA to trust and which name to verify.
#[derive(Clone)]
pub struct TlsOptions {
    pub config: Arc<ClientConfig>,
    pub server_name: String,
}

impl TlsOptions {
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<TlsOptions, ClientError> {
        Ok(TlsOptions { config: crate::tls::client_config(ca)?, server_name: server_name.to_string() })
    }
}

impl Client {
    /// Connect over TLS when `tls` is given, plaintext otherwise.
    pub async fn connect(addr: SocketAddr, tls: Option<&TlsOptions>) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(t) => {
                let name = ServerName::try_from(t.server_name.clone())
                    .map_err(|_| ClientError::ServerName(t.server_name.clone()))?;
                let stream = TlsConnector::from(t.config.clone()).connect(name, tcp).await.map_err(ClientError::Tls)?;
                Box::new(stream)
            }
        };
        Ok(Client::over(io))
    }

    /// Wrap an already connected stream (tests use this for odd transports).
    pub fn over(io: Box<dyn Io>) -> Client {
        Client { framed: Framed::new(io, ClientCodec(FrameCodec::new(16 * 1024 * 1024))), next_seq: 1 }
    }

    /// Send a message; returns the sequence number used.
    pub async fn send(&mut self, msg: Message) -> Result<u32, ClientError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.framed.send((seq, msg)).await?;
        Ok(seq)
    }

    /// Send raw bytes as-is (tests use this to break the protocol on purpose).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let io = self.framed.get_mut();
        io.write_all(bytes).await?;
        io.flush().await?;
        Ok(())
    }

    /// The next frame from the server as (seq, message); `Closed` at EOF.
    pub async fn recv(&mut self) -> Result<(u32, Message), ClientError> {
        match self.framed.next().await {
            None => Err(ClientError::Closed),
            Some(Err(DecodeError::Io(e))) if is_reset(&e) => Err(ClientError::Closed),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(frame)) => Ok((frame.seq, Message::decode(&frame)?)),
        }
    }

    pub async fn recv_timeout(&mut self, d: Duration) -> Result<(u32, Message), ClientError> {
        tokio::time::timeout(d, self.recv()).await.map_err(|_| ClientError::Timeout)?
    }

    /// LOGIN and wait for LOGIN_ACK; an ERROR becomes `ClientError::Refused`.
    pub async fn login(&mut self, token: &str) -> Result<LoginInfo, ClientError> {
        self.send(Message::Login { token: token.to_string() }).await?;
        match self.recv_timeout(Duration::from_secs(30)).await?.1 {
            Message::LoginAck { node_id, session_id, heartbeat_secs } => {
                Ok(LoginInfo { node_id, session_id, heartbeat: Duration::from_secs(heartbeat_secs as u64) })
            }
            Message::Error { code, message } => Err(ClientError::Refused { code, message }),
            Message::Kick { code, message } => Err(ClientError::Kicked { code, message }),
            other => Err(ClientError::Unexpected(other.op().name())),
        }
    }

    pub async fn heartbeat(&mut self) -> Result<u32, ClientError> {
        self.send(Message::Heartbeat).await
    }

    /// Orderly close: CLOSE, then wait (bounded) for the server's CLOSE.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.send(Message::Close { code: Code::Normal as u16, message: String::new() }).await?;
        loop {
            match self.recv_timeout(Duration::from_secs(5)).await {
                Ok((_, Message::Close { .. })) | Err(ClientError::Closed) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
    )
}
