//! A server-side TLS stream that holds no buffers while the connection is idle.
//!
//! `tokio_rustls::server::TlsStream` wraps rustls' buffered `ServerConnection`, whose deframer keeps
//! a 4 KiB buffer for the whole life of the connection. With tens of thousands of idle IM sessions
//! that buffer is most of the userspace cost of a session. This module drives rustls' *unbuffered*
//! API instead (`UnbufferedServerConnection::process_tls_records`), where the caller owns every
//! buffer, so it can keep them only while they hold bytes:
//!
//! - **incoming** TLS bytes: a buffer is taken (from a small per-thread pool) only once the socket
//!   reports readable, and given back as soon as rustls has consumed every byte of it. A record left
//!   half-received when the socket runs dry is moved into an exact-sized allocation, so a stalled peer
//!   pins about as many bytes as it sent, not a whole pool buffer.
//! - **plaintext**: decrypted records are copied straight into the reader's `ReadBuf`; only the part
//!   that did not fit is kept, in an exact-sized allocation freed when the reader takes it.
//! - **outgoing** TLS bytes: encrypted one record (<= 16 KiB of plaintext) at a time and written at
//!   once; only what the socket refused stays queued, bounded by `MAX_OUTGOING`.
//!
//! [`accept`] runs the handshake; [`LeanTlsStream`] implements `AsyncRead` + `AsyncWrite` and is a
//! drop-in for `tokio_rustls::server::TlsStream<TcpStream>` under `FramedRead`, with one reader and
//! one writer in the same task (the gateway's pattern). Semantics follow tokio-rustls: close_notify
//! from the peer reads as EOF, a TCP close without it is an `UnexpectedEof` error.
//!
//! When rustls rejects the peer's bytes its fatal alert is written best-effort (one non-blocking
//! write, as tokio-rustls does) and the stream stays failed. TLS 1.3 early data is refused; the
//! gateway does not enable it.

use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    self,
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
    ServerConfig,
};

/// Largest TLS record on the wire: 16 KiB of plaintext, the 2 KiB of expansion TLS allows, and the
/// 5-byte header (rustls' own `MAX_WIRE_SIZE`; it rejects anything longer from the header alone).
const MAX_RECORD: usize = 16_384 + 2_048 + 5;

/// Size of a pooled buffer: one whole record, so a single read can always complete any record.
const POOL_BUF: usize = MAX_RECORD;

/// Bound on held incoming TLS bytes. After the handshake a partial record (< `MAX_RECORD`) is all
/// that can be pending; only a handshake message split over several records needs more, and rustls
/// caps those at 64 KiB.
const MAX_INCOMING: usize = 0x1_0000 + 2 * MAX_RECORD;

/// Plaintext per record we encrypt: rustls' default maximum fragment size.
const MAX_PLAIN_RECORD: usize = 16_384;

/// Bound on queued ciphertext. `poll_write` queues at most one record beyond what the socket took;
/// the rest of the room is for protocol messages rustls emits on its own (key update, alerts).
const MAX_OUTGOING: usize = 4 * MAX_RECORD;

/// Pool buffers kept per thread: enough to serve the reads and writes in flight on one runtime
/// worker without a malloc each, few enough (8 x 18 KiB) not to matter per process.
const POOL_PER_THREAD: usize = 8;

/// Why the stream failed. Carried inside the `io::Error` the stream returns (`get_ref()` +
/// `downcast_ref::<LeanTlsError>()`), so the session can tell a rude peer from a protocol error.
#[derive(Debug, thiserror::Error)]
pub enum LeanTlsError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS encrypt: {0}")]
    Encrypt(#[from] EncryptError),
    #[error("TLS encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("peer closed TCP in the middle of a TLS record ({held} bytes of it received)")]
    EofMidRecord { held: usize },
    #[error("peer closed TCP without sending TLS close_notify")]
    EofWithoutCloseNotify,
    #[error("peer closed the connection during the TLS handshake")]
    EofInHandshake,
    #[error("{what} would exceed its bound of {bound} bytes")]
    BufferBound { what: &'static str, bound: usize },
    #[error("peer sent TLS early data, which this listener does not accept")]
    EarlyData,
    #[error("the TLS connection failed earlier; it cannot be used any more")]
    Broken,
    #[error("write after shutdown (close_notify already sent)")]
    WriteAfterShutdown,
    #[error("rustls reported state {0} where the stream cannot handle it")]
    UnexpectedState(&'static str),
}

impl From<LeanTlsError> for io::Error {
    fn from(e: LeanTlsError) -> Self {
        let kind = match e {
            LeanTlsError::EofMidRecord { .. } | LeanTlsError::EofWithoutCloseNotify | LeanTlsError::EofInHandshake => {
                io::ErrorKind::UnexpectedEof
            }
            LeanTlsError::WriteAfterShutdown => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Run the TLS handshake on `tcp`. No timeout here: the caller wraps this in its own deadline.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<LeanTlsStream> {
    let tls = UnbufferedServerConnection::new(config).map_err(LeanTlsError::from)?;
    let mut stream = LeanTlsStream {
        tcp,
        tls,
        incoming: Vec::new(),
        in_start: 0,
        plain: Vec::new(),
        plain_start: 0,
        outgoing: Vec::new(),
        out_start: 0,
        peer_closed: false,
        sent_close: false,
        broken: false,
        read_error: None,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// An established server-side TLS connection over TCP. See the module doc.
pub struct LeanTlsStream {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// TLS bytes received and not yet consumed by rustls are `incoming[in_start..]`. rustls reports
    /// consumption as a count to drop from the front; advancing `in_start` instead of shifting
    /// keeps that O(1). Capacity 0 whenever nothing is pending.
    incoming: Vec<u8>,
    in_start: usize,
    /// Decrypted bytes the reader has not taken yet are `plain[plain_start..]`.
    plain: Vec<u8>,
    plain_start: usize,
    /// Encrypted bytes the socket has not taken yet are `outgoing[out_start..]`.
    outgoing: Vec<u8>,
    out_start: usize,
    /// The peer's close_notify arrived: reads return EOF once `plain` is drained.
    peer_closed: bool,
    /// Our close_notify is queued: further writes fail.
    sent_close: bool,
    /// rustls rejected the peer's input. Its state must not be driven again: it would re-read the
    /// bad bytes and raise a second fatal alert.
    broken: bool,
    /// A read failed after plaintext was already delivered in the same call: the reader gets that
    /// plaintext first and this error on its next read, as with tokio-rustls.
    read_error: Option<io::Error>,
}

/// What one run of the rustls state machine is for.
enum Goal<'a, 'b> {
    Handshake,
    /// Deliver plaintext into the `ReadBuf`, the overflow into `plain`.
    Read(&'a mut ReadBuf<'b>),
    /// Encrypt this (non-empty, <= one record) plaintext into `outgoing`.
    Write(&'a [u8]),
    /// Queue close_notify into `outgoing`.
    Close,
}

/// Where a run of the state machine stopped.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// rustls needs more bytes from the peer.
    NeedInput,
    HandshakeDone,
    /// `Goal::Read`: some plaintext went into the `ReadBuf` (and maybe `plain`).
    Delivered,
    /// `Goal::Read`: the peer's close_notify arrived, no more plaintext follows.
    PeerClosed,
    /// `Goal::Write` / `Goal::Close`: the bytes are in `outgoing`.
    Queued,
}

/// One step of the loop in `drive`, decided while rustls' state borrows the connection.
enum Step {
    Continue,
    Stop(Outcome),
    /// rustls would accept application data; what that means depends on the goal.
    Writable,
    PeerClosed,
}

impl LeanTlsStream {
    /// Bytes of heap held by this stream's own buffers (capacity, not length). Zero when idle:
    /// no partial record received, no plaintext unread, no ciphertext unsent. rustls' connection
    /// state (keys, a few small queues) is not counted.
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The rustls connection, for negotiated parameters (ALPN, protocol version, cipher suite).
    pub fn tls(&self) -> &UnbufferedServerConnection {
        &self.tls
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let outcome = self.drive(Goal::Handshake)?;
            // Our flight must be on the wire before we wait for the peer's answer to it.
            ready!(self.poll_send_pending(cx))?;
            if outcome == Outcome::HandshakeDone {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill_incoming(cx))? == 0 {
                return Poll::Ready(Err(LeanTlsError::EofInHandshake.into()));
            }
        }
    }

    /// Run rustls over the held input until it needs more input or has done what `goal` asks.
    fn drive(&mut self, mut goal: Goal<'_, '_>) -> Result<Outcome, LeanTlsError> {
        if self.broken {
            return Err(LeanTlsError::Broken);
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming[self.in_start..]);
            let step = match state {
                Err(e) => Err(LeanTlsError::Tls(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Ok(Step::Continue);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                let rb = match &mut goal {
                                    Goal::Read(rb) => Some(&mut **rb),
                                    _ => None,
                                };
                                stash_plaintext(record.payload, rb, &mut self.plain, &mut self.plain_start);
                                if matches!(goal, Goal::Read(_)) {
                                    step = Ok(Step::Stop(Outcome::Delivered));
                                }
                            }
                            Err(e) => {
                                step = Err(LeanTlsError::Tls(e));
                                break;
                            }
                        }
                    }
                    step
                }
                // Each of these is sized by a probe into an empty slice: on `InsufficientSize`
                // rustls changes nothing (beyond queueing internally what it then asks room for)
                // and names the exact room it needs. A probe that succeeds had nothing to write.
                Ok(ConnectionState::EncodeTlsData(mut enc)) => match enc.encode(&mut []) {
                    Err(EncodeError::InsufficientSize(e)) => {
                        append_outgoing(&mut self.outgoing, &mut self.out_start, e.required_size, |buf| {
                            Ok(enc.encode(buf)?)
                        })
                        .map(|()| Step::Continue)
                    }
                    Ok(_) => Ok(Step::Continue),
                    Err(e) => Err(e.into()),
                },
                // The encoded bytes are already queued in `outgoing`, which goes to the socket in
                // order before anything queued later, so the handshake may move on now.
                Ok(ConnectionState::TransmitTlsData(tx)) => {
                    tx.done();
                    Ok(Step::Continue)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Step::Stop(Outcome::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut w)) => match goal {
                    Goal::Write(data) => match w.encrypt(data, &mut []) {
                        Err(EncryptError::InsufficientSize(e)) => {
                            append_outgoing(&mut self.outgoing, &mut self.out_start, e.required_size, |buf| {
                                Ok(w.encrypt(data, buf)?)
                            })
                            .map(|()| Step::Stop(Outcome::Queued))
                        }
                        Ok(_) => Ok(Step::Stop(Outcome::Queued)),
                        Err(e) => Err(e.into()),
                    },
                    // The probe makes rustls queue the alert; the second call moves it out.
                    Goal::Close => match w.queue_close_notify(&mut []) {
                        Err(EncryptError::InsufficientSize(e)) => {
                            append_outgoing(&mut self.outgoing, &mut self.out_start, e.required_size, |buf| {
                                Ok(w.queue_close_notify(buf)?)
                            })
                            .map(|()| Step::Stop(Outcome::Queued))
                        }
                        Ok(_) => Ok(Step::Stop(Outcome::Queued)),
                        Err(e) => Err(e.into()),
                    },
                    Goal::Handshake | Goal::Read(_) => Ok(Step::Writable),
                },
                Ok(ConnectionState::PeerClosed) => Ok(Step::PeerClosed),
                Ok(ConnectionState::Closed) => match goal {
                    Goal::Read(_) => Ok(Step::Stop(Outcome::PeerClosed)),
                    Goal::Close => Ok(Step::Stop(Outcome::Queued)),
                    Goal::Write(_) => Err(LeanTlsError::WriteAfterShutdown),
                    Goal::Handshake => Err(LeanTlsError::EofInHandshake),
                },
                Ok(ConnectionState::ReadEarlyData(_)) => Err(LeanTlsError::EarlyData),
                Ok(_) => Err(LeanTlsError::UnexpectedState("(unknown, newer rustls)")),
            };
            self.consume_incoming(discard);
            let step = match step {
                Err(e @ LeanTlsError::Tls(_)) => {
                    self.broken = true;
                    self.send_alert_last_gasp();
                    return Err(e);
                }
                step => step?,
            };
            let outcome = match step {
                Step::Continue => continue,
                Step::Stop(outcome) => outcome,
                Step::Writable => match goal {
                    // A TLS 1.3 server may send after its own Finished, before the client's.
                    Goal::Handshake if self.tls.is_handshaking() => Outcome::NeedInput,
                    Goal::Handshake => Outcome::HandshakeDone,
                    _ => Outcome::NeedInput,
                },
                Step::PeerClosed => {
                    self.peer_closed = true;
                    // rustls reads nothing after close_notify, so whatever follows is garbage.
                    pool::give(mem::take(&mut self.incoming));
                    self.in_start = 0;
                    match goal {
                        Goal::Read(_) => Outcome::PeerClosed,
                        Goal::Handshake => return Err(LeanTlsError::EofInHandshake),
                        // We may still send after the peer's close_notify (half close).
                        Goal::Write(_) | Goal::Close => continue,
                    }
                }
            };
            return Ok(outcome);
        }
    }

    /// rustls queues a fatal alert when it rejects the peer's bytes but reports only the error.
    /// The alert comes out of the next `process_tls_records` call (queued output is offered before
    /// any input is looked at); write it if the socket takes it right now, as tokio-rustls does,
    /// so the peer learns why instead of seeing a bare close.
    fn send_alert_last_gasp(&mut self) {
        // Exactly one more call: with the alert taken, rustls would re-read the bad input and
        // raise a second fatal alert (a debug assertion in rustls). `broken` stops any later call.
        let UnbufferedStatus { discard, state } = self.tls.process_tls_records(&mut self.incoming[self.in_start..]);
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
            if let Err(EncodeError::InsufficientSize(e)) = enc.encode(&mut []) {
                let _ = append_outgoing(&mut self.outgoing, &mut self.out_start, e.required_size, |buf| {
                    Ok(enc.encode(buf)?)
                });
            }
        }
        self.consume_incoming(discard);
        if self.out_start < self.outgoing.len() {
            if let Ok(n) = self.tcp.try_write(&self.outgoing[self.out_start..]) {
                self.out_start += n;
            }
        }
    }

    fn consume_incoming(&mut self, n: usize) {
        self.in_start += n;
        debug_assert!(self.in_start <= self.incoming.len(), "rustls discarded more than it was given");
        if self.in_start >= self.incoming.len() {
            pool::give(mem::take(&mut self.incoming));
            self.in_start = 0;
        }
    }

    /// Read what the socket has into `incoming`; `Ready(Ok(0))` is TCP EOF. Takes a buffer only
    /// once the socket is readable, and trims what it holds before returning `Pending`.
    fn poll_fill_incoming(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    self.trim_incoming();
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
            }
            self.ensure_read_space()?;
            match self.tcp.try_read_buf(&mut self.incoming) {
                // Readiness was stale: `try_read_buf` cleared it, the next `poll_read_ready` arms
                // the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 => return Poll::Ready(Ok(n)),
                // EOF or a socket error: nothing more will arrive, so keep only what is held.
                r => {
                    self.trim_incoming();
                    return Poll::Ready(r);
                }
            }
        }
    }

    /// Make room at the end of `incoming` for at least one byte, within `MAX_INCOMING`.
    fn ensure_read_space(&mut self) -> Result<(), LeanTlsError> {
        if self.in_start > 0 {
            self.incoming.drain(..self.in_start);
            self.in_start = 0;
        }
        let live = self.incoming.len();
        if self.incoming.capacity() >= POOL_BUF && self.incoming.capacity() > live {
            return Ok(());
        }
        let want = if live < POOL_BUF { POOL_BUF } else { (live + POOL_BUF).min(MAX_INCOMING) };
        if want <= live {
            return Err(LeanTlsError::BufferBound { what: "incoming TLS data", bound: MAX_INCOMING });
        }
        let mut bigger = if want == POOL_BUF { pool::take() } else { Vec::with_capacity(want) };
        bigger.extend_from_slice(&self.incoming);
        pool::give(mem::replace(&mut self.incoming, bigger));
        Ok(())
    }

    /// Before going idle on the socket: give the buffer back if it is empty, and move a partial
    /// record into an exact-sized allocation if it fills less than half the buffer.
    fn trim_incoming(&mut self) {
        let live = self.incoming.len() - self.in_start;
        if live == 0 {
            pool::give(mem::take(&mut self.incoming));
            self.in_start = 0;
        } else if self.incoming.capacity() > 2 * live {
            let exact = self.incoming[self.in_start..].to_vec();
            pool::give(mem::replace(&mut self.incoming, exact));
            self.in_start = 0;
        }
    }

    /// Write `outgoing` to the socket; `Ready(Ok)` once all of it is gone (and the buffer freed).
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_start < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_start += n;
        }
        pool::give(mem::take(&mut self.outgoing));
        self.out_start = 0;
        Poll::Ready(Ok(()))
    }

    /// Hand the reader plaintext that did not fit its buffer last time.
    fn read_stashed(&mut self, rb: &mut ReadBuf<'_>) -> bool {
        if self.plain_start >= self.plain.len() {
            return false;
        }
        let n = rb.remaining().min(self.plain.len() - self.plain_start);
        rb.put_slice(&self.plain[self.plain_start..self.plain_start + n]);
        self.plain_start += n;
        if self.plain_start == self.plain.len() {
            self.plain = Vec::new();
            self.plain_start = 0;
        }
        true
    }
}

/// Copy a decrypted record to the reader, keeping what does not fit in `plain`.
fn stash_plaintext(payload: &[u8], rb: Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>, plain_start: &mut usize) {
    let direct = match rb {
        Some(rb) => {
            let n = rb.remaining().min(payload.len());
            rb.put_slice(&payload[..n]);
            n
        }
        None => 0,
    };
    let rest = &payload[direct..];
    if rest.is_empty() {
        return;
    }
    if *plain_start > 0 {
        plain.drain(..*plain_start);
        *plain_start = 0;
    }
    // From empty, `extend_from_slice` allocates exactly `rest.len()`.
    plain.extend_from_slice(rest);
}

/// Append up to `need` bytes produced by `fill` to the unsent ciphertext, within `MAX_OUTGOING`.
fn append_outgoing(
    out: &mut Vec<u8>,
    out_start: &mut usize,
    need: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<usize, LeanTlsError>,
) -> Result<(), LeanTlsError> {
    if *out_start > 0 {
        out.drain(..*out_start);
        *out_start = 0;
    }
    if out.len() + need > MAX_OUTGOING {
        return Err(LeanTlsError::BufferBound { what: "unsent TLS data", bound: MAX_OUTGOING });
    }
    if out.capacity() == 0 && need <= POOL_BUF {
        *out = pool::take();
    }
    let old = out.len();
    out.resize(old + need, 0);
    match fill(&mut out[old..]) {
        Ok(n) => {
            out.truncate(old + n.min(need));
            Ok(())
        }
        Err(e) => {
            out.truncate(old);
            Err(e)
        }
    }
}

impl AsyncRead for LeanTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, rb: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if rb.remaining() == 0 || this.read_stashed(rb) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.read_error.take() {
            return Poll::Ready(Err(e));
        }
        let filled_before = rb.filled().len();
        loop {
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let outcome = match this.drive(Goal::Read(&mut *rb)) {
                Ok(outcome) => outcome,
                Err(e) if rb.filled().len() > filled_before => {
                    this.read_error = Some(e.into());
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            match outcome {
                // More whole records may already be held; keep filling until the reader's buffer
                // is full or only a partial record is left.
                Outcome::Delivered if rb.remaining() > 0 => continue,
                Outcome::Delivered | Outcome::PeerClosed => return Poll::Ready(Ok(())),
                Outcome::NeedInput => {}
                Outcome::HandshakeDone | Outcome::Queued => {
                    return Poll::Ready(Err(LeanTlsError::UnexpectedState("read finished as a write").into()));
                }
            }
            if rb.filled().len() > filled_before {
                return Poll::Ready(Ok(()));
            }
            // rustls may have queued a protocol message while reading; send it if the socket takes
            // it now, otherwise the next write or flush will. Errors resurface there too.
            if this.out_start < this.outgoing.len() {
                let _ = this.poll_send_pending(cx);
            }
            match ready!(this.poll_fill_incoming(cx))? {
                0 => {
                    let held = this.incoming.len() - this.in_start;
                    let e = if held > 0 {
                        LeanTlsError::EofMidRecord { held }
                    } else {
                        LeanTlsError::EofWithoutCloseNotify
                    };
                    return Poll::Ready(Err(e.into()));
                }
                _ => continue,
            }
        }
    }
}

impl AsyncWrite for LeanTlsStream {
    /// Encrypts `buf` one record at a time, writing each as it is made. Returns how much plaintext
    /// was encrypted: all of it, or less once the socket refused, in which case the refused
    /// ciphertext (at most one record) waits in `outgoing`. `Pending` only when that queue from an
    /// earlier call cannot drain, so nothing of `buf` was taken.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.sent_close {
            return Poll::Ready(Err(LeanTlsError::WriteAfterShutdown.into()));
        }
        ready!(this.poll_send_pending(cx))?;
        let mut taken = 0;
        while taken < buf.len() {
            let end = buf.len().min(taken + MAX_PLAIN_RECORD);
            this.drive(Goal::Write(&buf[taken..end]))?;
            taken = end;
            match this.poll_send_pending(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify, then shuts the TCP write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_close {
            this.drive(Goal::Close)?;
            this.sent_close = true;
        }
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl Drop for LeanTlsStream {
    fn drop(&mut self) {
        pool::give(mem::take(&mut self.incoming));
        pool::give(mem::take(&mut self.outgoing));
    }
}

/// A few record-sized buffers per thread, so the read or write on a busy worker reuses memory
/// instead of going to malloc each time. Buffers may hold stale bytes of another connection
/// beyond their length; the stream only ever exposes bytes it has just read or written into them.
mod pool {
    use super::{POOL_BUF, POOL_PER_THREAD};
    use std::cell::RefCell;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> Vec<u8> {
        FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| Vec::with_capacity(POOL_BUF))
    }

    /// Keep `buf` for reuse if it is a pool-sized buffer and the pool has room; free it otherwise.
    pub(super) fn give(mut buf: Vec<u8>) {
        if buf.capacity() != POOL_BUF {
            return;
        }
        buf.clear();
        let _ = FREE.try_with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < POOL_PER_THREAD {
                free.push(buf);
            }
        });
    }

    #[cfg(test)]
    pub(super) fn held() -> usize {
        FREE.with(|f| f.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    //! A real rustls client (tokio-rustls, or a bare `ClientConnection` when a test needs to cut
    //! records at chosen places) against `accept` over loopback TCP.

    use super::*;
    use std::future::Future;
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio_rustls::client::TlsStream as ClientTls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore};
    use tokio_rustls::TlsConnector;
    use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

    struct Pki {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    }

    /// The gateway's server settings (tickets off) and a client trusting the test certificate.
    fn pki(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("test certificate");
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .expect("server versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server cert");
        server.send_tls13_tickets = 0;
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("trust test cert");
        let client = ClientConfig::builder_with_provider(super::super::provider())
            .with_protocol_versions(versions)
            .expect("client versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki { server: Arc::new(server), client: Arc::new(client) }
    }

    fn tls13() -> Pki {
        pki(&[&rustls::version::TLS13])
    }

    /// Fail the test instead of hanging it.
    async fn within<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    /// A handshaken (server, client) pair over loopback; `client_tcp` lets a test shape the socket.
    async fn pair_with(
        p: &Pki,
        client_tcp: impl Future<Output = TcpStream>,
        listener: TcpListener,
    ) -> (LeanTlsStream, ClientTls<TcpStream>) {
        let connector = TlsConnector::from(p.client.clone());
        let client = async {
            let tcp = client_tcp.await;
            tcp.set_nodelay(true).expect("nodelay");
            connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("client handshake")
        };
        let server = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(p.server.clone(), tcp).await.expect("server handshake")
        };
        within("handshake", async { tokio::join!(server, client) }).await
    }

    async fn pair(p: &Pki) -> (LeanTlsStream, ClientTls<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        pair_with(p, async move { TcpStream::connect(addr).await.expect("connect") }, listener).await
    }

    /// Deterministic bytes that reveal reordering or loss.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Echo until the peer's close_notify, then send ours; returns the stream for inspection.
    async fn echo(mut s: LeanTlsStream) -> LeanTlsStream {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.expect("server read");
            if n == 0 {
                s.shutdown().await.expect("server shutdown");
                return s;
            }
            s.write_all(&buf[..n]).await.expect("server write");
            s.flush().await.expect("server flush");
        }
    }

    fn lean_error(e: &io::Error) -> &LeanTlsError {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<LeanTlsError>())
            .unwrap_or_else(|| panic!("expected a LeanTlsError inside {e:?}"))
    }

    #[tokio::test]
    async fn handshake_and_small_echo_tls13_and_tls12() {
        for (p, version) in
            [(tls13(), ProtocolVersion::TLSv1_3), (pki(&[&rustls::version::TLS12]), ProtocolVersion::TLSv1_2)]
        {
            let (server, mut client) = pair(&p).await;
            assert_eq!(server.tls().protocol_version(), Some(version), "negotiated version");
            let server = tokio::spawn(echo(server));
            within("small echo", async {
                for msg in [&b"ping"[..], b"x", b"hello, gateway"] {
                    client.write_all(msg).await.expect("client write");
                    client.flush().await.expect("client flush");
                    let mut back = vec![0u8; msg.len()];
                    client.read_exact(&mut back).await.expect("client read");
                    assert_eq!(back, msg, "echo of {msg:?}");
                }
                client.shutdown().await.expect("client shutdown");
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.expect("client sees the server's close_notify as EOF");
                assert!(rest.is_empty(), "nothing after the echo");
                let server = server.await.expect("echo task");
                assert_eq!(server.buffered_bytes(), 0, "closed stream holds no buffers");
            })
            .await;
        }
    }

    #[tokio::test]
    async fn echo_100k_both_directions() {
        let p = tls13();
        let (server, client) = pair(&p).await;
        let server = tokio::spawn(echo(server));
        let data = pattern(100 * 1024, 0x5a);
        let (mut rd, mut wr) = tokio::io::split(client);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.expect("client write 100 KiB");
            wr.shutdown().await.expect("client shutdown");
        });
        let mut back = Vec::new();
        within("100 KiB echo", rd.read_to_end(&mut back)).await.expect("client read");
        writer.await.expect("writer task");
        assert!(back == data, "echoed 100 KiB differs (got {} bytes)", back.len());
        assert_eq!(server.await.expect("echo task").buffered_bytes(), 0, "no buffers after close");
    }

    /// Many sessions at once on a multi-thread runtime (tasks move between workers and their
    /// per-thread pools), messages of assorted sizes both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sessions_echo_assorted_sizes() {
        let p = Arc::new(tls13());
        let mut sessions = Vec::new();
        for c in 0..24u64 {
            let p = p.clone();
            sessions.push(tokio::spawn(async move {
                let (server, mut client) = pair(&p).await;
                let server = tokio::spawn(echo(server));
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ c;
                for m in 0..12u8 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let msg = pattern(1 + (x % 40_000) as usize, m);
                    let (mut rd, mut wr) = tokio::io::split(client);
                    let sent = msg.clone();
                    let w = tokio::spawn(async move {
                        wr.write_all(&sent).await.expect("client write");
                        wr.flush().await.expect("client flush");
                        wr
                    });
                    let mut back = vec![0u8; msg.len()];
                    rd.read_exact(&mut back).await.expect("client read");
                    assert!(back == msg, "session {c} message {m}: echo differs");
                    client = rd.unsplit(w.await.expect("writer"));
                }
                client.shutdown().await.expect("client shutdown");
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.expect("clean close");
                assert_eq!(server.await.expect("echo task").buffered_bytes(), 0, "session {c}: buffers after close");
            }));
        }
        within("24 concurrent sessions", async {
            for s in sessions {
                s.await.expect("session task");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn one_100k_write_from_server_is_split_into_records() {
        let p = tls13();
        let (mut server, mut client) = pair(&p).await;
        let data = pattern(100 * 1024, 7);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 100 * 1024];
            client.read_exact(&mut got).await.expect("client read");
            got
        });
        within("server write", async {
            server.write_all(&data).await.expect("server write_all");
            server.flush().await.expect("server flush");
        })
        .await;
        assert!(within("client read", reader).await.expect("reader") == data, "client got other bytes");
        assert_eq!(server.buffered_bytes(), 0, "flushed stream holds no buffers");
    }

    /// The gateway's pattern: frames through `FramedRead`, replies via `get_mut().write_all` + flush.
    #[tokio::test]
    async fn framed_read_many_small_and_large_frames() {
        let p = tls13();
        let (server, client) = pair(&p).await;
        let sizes: Vec<usize> = (0..500).map(|i| 1 + i % 40).chain([100 * 1024, 3, 16_384, 16_385]).collect();
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
        let expect = frames.clone();
        let server = tokio::spawn(async move {
            let codec = LengthDelimitedCodec::builder().max_frame_length(1 << 20).new_codec();
            let mut framed = FramedRead::new(server, codec);
            for (i, want) in expect.iter().enumerate() {
                let got = framed.next().await.expect("a frame").expect("frame decodes");
                assert!(got[..] == want[..], "frame {i} differs");
                // Reply with a small ack per frame: many small writes the other way.
                framed.get_mut().write_all(&(i as u32).to_be_bytes()).await.expect("ack write");
                framed.get_mut().flush().await.expect("ack flush");
            }
            framed.into_inner()
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let acks = tokio::spawn(async move {
            for i in 0..sizes.len() as u32 {
                let mut ack = [0u8; 4];
                rd.read_exact(&mut ack).await.expect("ack read");
                assert_eq!(u32::from_be_bytes(ack), i, "acks in order");
            }
        });
        within("framed exchange", async {
            for f in &frames {
                wr.write_all(&(f.len() as u32).to_be_bytes()).await.expect("len");
                wr.write_all(f).await.expect("body");
                wr.flush().await.expect("flush");
            }
            acks.await.expect("acks");
            let server = server.await.expect("server task");
            assert_eq!(server.buffered_bytes(), 0, "idle after the exchange: no buffers");
        })
        .await;
    }

    #[tokio::test]
    async fn client_close_notify_reads_as_eof_and_half_close_still_writes() {
        let p = tls13();
        let (mut server, mut client) = pair(&p).await;
        within("close_notify", async {
            client.write_all(b"last words").await.expect("client write");
            client.shutdown().await.expect("client close_notify");
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("close_notify is a clean EOF");
            assert_eq!(got, b"last words");
            assert_eq!(server.read(&mut [0u8; 16]).await.expect("EOF again"), 0, "EOF is sticky");
            server.write_all(b"bye").await.expect("write after the peer's close_notify");
            server.shutdown().await.expect("server close_notify");
            assert!(server.write_all(b"more").await.is_err(), "write after our shutdown must fail");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("client reads to our close_notify");
            assert_eq!(back, b"bye");
        })
        .await;
        assert_eq!(server.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn tcp_close_without_close_notify_is_unexpected_eof() {
        let p = tls13();
        let (mut server, mut client) = pair(&p).await;
        client.write_all(b"abc").await.expect("client write");
        client.flush().await.expect("client flush");
        let (tcp, _tls) = client.into_inner();
        drop(tcp);
        within("abrupt close", async {
            let mut got = [0u8; 3];
            server.read_exact(&mut got).await.expect("data before the close arrives");
            let e = server.read(&mut [0u8; 16]).await.expect_err("TCP FIN without close_notify");
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert!(matches!(lean_error(&e), LeanTlsError::EofWithoutCloseNotify), "got {e}");
        })
        .await;
        assert_eq!(server.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn tcp_close_mid_record_is_an_error() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let (mut tcp, _tls) = client.into_inner();
        // Header of a 50-byte application-data record, then 3 bytes of it, then FIN.
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 50, 1, 2, 3]).await.expect("raw write");
        tcp.shutdown().await.expect("FIN");
        let e = within("mid-record close", server.read(&mut [0u8; 16])).await.expect_err("truncated record");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(matches!(lean_error(&e), LeanTlsError::EofMidRecord { held: 8 }), "got {e}");
    }

    #[tokio::test]
    async fn oversized_record_header_is_rejected_without_buffering_it() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let (mut tcp, _tls) = client.into_inner();
        tcp.write_all(&[0x17, 0x03, 0x03, 0xff, 0xff, 0]).await.expect("raw write");
        let e = within("oversized record", server.read(&mut [0u8; 16]))
            .await
            .expect_err("a 64 KiB record is over the TLS limit");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(lean_error(&e), LeanTlsError::Tls(rustls::Error::InvalidMessage(_))), "got {e}");
    }

    #[tokio::test]
    async fn client_key_updates_are_followed_both_ways() {
        let p = tls13();
        let (server, mut client) = pair(&p).await;
        let server = tokio::spawn(echo(server));
        within("key updates", async {
            for round in 0..3u8 {
                // Asks the server to update too: its key_update goes out before its next record.
                client.get_mut().1.refresh_traffic_keys().expect("client key update");
                let msg = pattern(3000, round);
                client.write_all(&msg).await.expect("client write");
                client.flush().await.expect("client flush");
                let mut back = vec![0u8; msg.len()];
                client.read_exact(&mut back).await.expect("echo under new keys");
                assert!(back == msg, "round {round}: echo differs");
            }
            client.shutdown().await.expect("client shutdown");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("clean close after key updates");
            assert_eq!(server.await.expect("echo task").buffered_bytes(), 0);
        })
        .await;
    }

    /// A bare rustls client: encrypt locally, then put the bytes on the wire in any cut.
    struct RawClient {
        tcp: TcpStream,
        tls: ClientConnection,
    }

    impl RawClient {
        fn from(client: ClientTls<TcpStream>) -> Self {
            let (tcp, tls) = client.into_inner();
            Self { tcp, tls }
        }

        /// One record per call (<= 16 KiB), so records are where the test says.
        fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
            let mut wire = Vec::new();
            for chunk in plain.chunks(16_384) {
                self.tls.writer().write_all(chunk).expect("client encrypt");
                while self.tls.wants_write() {
                    self.tls.write_tls(&mut wire).expect("client write_tls");
                }
            }
            wire
        }
    }

    /// Read exactly `n` bytes of plaintext on the server.
    async fn read_n(server: &mut LeanTlsStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        within("server read_exact", server.read_exact(&mut got)).await.expect("server read");
        got
    }

    #[tokio::test]
    async fn records_split_across_reads_and_many_records_per_read() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let mut raw = RawClient::from(client);

        // Many records in one TCP write.
        let small: Vec<Vec<u8>> = (0..200).map(|i| pattern(10, i as u8)).collect();
        let wire: Vec<u8> = small.iter().flat_map(|m| raw.seal(m)).collect();
        raw.tcp.write_all(&wire).await.expect("raw write");
        assert_eq!(read_n(&mut server, 2000).await, small.concat(), "200 records from one write");
        assert_eq!(server.buffered_bytes(), 0, "all records consumed: buffer returned");

        // Records (small, max-size, spanning) cut at awkward places and trickled in.
        let msgs = [pattern(5, 1), pattern(16_384, 2), pattern(40_000, 3), pattern(1, 4)];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| raw.seal(m)).collect();
        let total: usize = msgs.iter().map(Vec::len).sum();
        let mut tcp = raw.tcp;
        let cuts = [1usize, 2, 3, 700, 5, 9000, 1, 16_000, 333, 4096];
        let trickle = tokio::spawn(async move {
            let mut pos = 0;
            for cut in cuts.iter().cycle() {
                if pos == wire.len() {
                    break;
                }
                let end = wire.len().min(pos + cut);
                tcp.write_all(&wire[pos..end]).await.expect("trickle write");
                pos = end;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tcp
        });
        assert!(read_n(&mut server, total).await == msgs.concat(), "trickled records reassembled in order");
        let _tcp = trickle.await.expect("trickle task");
        assert_eq!(server.buffered_bytes(), 0);
    }

    /// A write can run rustls over records the reader has not reached yet; their plaintext must
    /// wait for the reader, in order, ahead of anything newer.
    #[tokio::test]
    async fn write_between_reads_keeps_unread_records_in_order() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let mut raw = RawClient::from(client);
        let msgs: Vec<Vec<u8>> = (0..5).map(|i| pattern(700, i)).collect();
        let wire: Vec<u8> = msgs.iter().flat_map(|m| raw.seal(m)).collect();
        raw.tcp.write_all(&wire).await.expect("5 records in one write");
        // Take 10 bytes: one record is decrypted, four stay encrypted in `incoming`.
        let head = read_n(&mut server, 10).await;
        server.write_all(b"reply").await.expect("server write");
        server.flush().await.expect("server flush");
        let rest = read_n(&mut server, 5 * 700 - 10).await;
        assert!([head, rest].concat() == msgs.concat(), "records reordered or lost around a write");
        assert_eq!(server.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn data_before_a_bad_record_is_delivered_then_the_error() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let mut raw = RawClient::from(client);
        let mut wire = raw.seal(b"good frame");
        let mut bad = raw.seal(b"tampered");
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        wire.extend_from_slice(&bad);
        raw.tcp.write_all(&wire).await.expect("good then tampered record, one write");
        let mut buf = vec![0u8; 64];
        let n = within("good record", server.read(&mut buf)).await.expect("the good record is delivered");
        assert_eq!(&buf[..n], b"good frame");
        let e = within("bad record", server.read(&mut buf)).await.expect_err("tampered record");
        assert!(matches!(lean_error(&e), LeanTlsError::Tls(rustls::Error::DecryptError)), "got {e}");
        let e = server.read(&mut buf).await.expect_err("still failed");
        assert!(matches!(lean_error(&e), LeanTlsError::Broken), "got {e}");
        let e = server.write_all(b"x").await.expect_err("writes fail too");
        assert!(matches!(lean_error(&e), LeanTlsError::Broken), "got {e}");
        drop(server);
        // The client learns why: a bad_record_mac alert arrives before the close.
        let mut wire = Vec::new();
        within("alert", raw.tcp.read_to_end(&mut wire)).await.expect("client reads until close");
        raw.tls.read_tls(&mut &wire[..]).expect("client takes the bytes");
        let alert = raw.tls.process_new_packets().expect_err("an alert, not data");
        assert_eq!(alert, rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac), "alert the client saw");
    }

    #[tokio::test]
    async fn partial_record_held_exactly_while_stalled() {
        let p = tls13();
        let (mut server, client) = pair(&p).await;
        let mut raw = RawClient::from(client);
        let msg = pattern(1000, 9);
        let wire = raw.seal(&msg);
        raw.tcp.write_all(&wire[..3]).await.expect("3 header bytes");
        // The read stays pending (cancelled by the timeout) with the partial header held.
        let mut buf = vec![0u8; 2000];
        let r = tokio::time::timeout(Duration::from_millis(100), server.read(&mut buf)).await;
        assert!(r.is_err(), "no plaintext from a partial header");
        assert_eq!(server.buffered_bytes(), 3, "a stalled partial record pins only its own bytes");
        raw.tcp.write_all(&wire[3..]).await.expect("rest of the record");
        assert_eq!(read_n(&mut server, msg.len()).await, msg, "the cancelled read lost nothing");
        assert_eq!(server.buffered_bytes(), 0);
    }

    fn set_sndbuf(tcp: &TcpStream, bytes: libc::c_int) {
        // SAFETY: a valid socket fd and a pointer to a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt SO_SNDBUF: {}", io::Error::last_os_error());
    }

    /// With the peer not reading, `poll_write` must report what it took, keep at most about one
    /// record queued, and return `Pending` once that cannot drain; nothing is lost or duplicated.
    #[tokio::test]
    async fn backpressure_partial_progress_and_bounded_queue() {
        let p = tls13();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client_tcp = async move {
            let s = TcpSocket::new_v4().expect("socket");
            s.set_recv_buffer_size(4096).expect("rcvbuf");
            s.connect(addr).await.expect("connect")
        };
        let (mut server, mut client) = pair_with(&p, client_tcp, listener).await;
        set_sndbuf(server.tcp(), 4096);

        let data = pattern(1 << 20, 3);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut taken, mut partial, mut pending) = (0usize, false, false);
        for _ in 0..10_000 {
            match Pin::new(&mut server).poll_write(&mut cx, &data[taken..]) {
                Poll::Ready(Ok(n)) => {
                    assert!(n > 0, "Ready(Ok(0)) from a non-empty write");
                    partial |= n < data.len() - taken;
                    taken += n;
                }
                Poll::Ready(Err(e)) => panic!("write failed under backpressure: {e}"),
                Poll::Pending => {
                    pending = true;
                    break;
                }
            }
            assert!(server.buffered_bytes() <= 2 * POOL_BUF, "queue bounded, holds {}", server.buffered_bytes());
        }
        assert!(partial && pending, "expected partial progress then Pending (took {taken} of {})", data.len());
        assert!(taken < data.len(), "the socket cannot have taken 1 MiB");

        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1 << 20];
            client.read_exact(&mut got).await.expect("client read");
            got
        });
        within("drain", async {
            server.write_all(&data[taken..]).await.expect("rest of the write");
            server.flush().await.expect("flush");
        })
        .await;
        assert!(within("client read", reader).await.expect("reader") == data, "bytes lost or duplicated");
        assert_eq!(server.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn handshake_failures_are_errors() {
        let p = tls13();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");

        // TCP closed before a ClientHello.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (stcp, _) = listener.accept().await.expect("accept");
        drop(tcp);
        let e = within("eof handshake", accept(p.server.clone(), stcp))
            .await
            .err()
            .expect("no handshake on a closed socket");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        // Not TLS at all.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (stcp, _) = listener.accept().await.expect("accept");
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let e =
            within("garbage handshake", accept(p.server.clone(), stcp)).await.err().expect("HTTP is not a ClientHello");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut reply = Vec::new();
        within("alert", tcp.read_to_end(&mut reply)).await.expect("read the server's answer");
        assert_eq!(reply.first(), Some(&0x15), "a TLS alert record before the close, got {reply:?}");

        // A client that does not trust our certificate aborts with an alert.
        let other = tls13();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (stcp, _) = listener.accept().await.expect("accept");
        let connector = TlsConnector::from(other.client.clone());
        let client = connector.connect(ServerName::try_from("localhost").expect("name"), tcp);
        let (server, client) =
            within("untrusted", async { tokio::join!(accept(p.server.clone(), stcp), client) }).await;
        assert!(client.is_err(), "client must reject an untrusted certificate");
        assert!(server.is_err(), "server must not report an established session");
    }

    /// The client's first record arrives in the same segment as its Finished, so the handshake
    /// itself decrypts it: the data must wait in `plain` for the first read.
    #[tokio::test]
    async fn app_data_right_behind_client_finished() {
        let p = tls13();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client_cfg = p.client.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = accept(p.server.clone(), tcp).await.expect("server handshake");
            // One loopback write of ~100 bytes arrives as one segment, so one read got both.
            assert_eq!(s.plain.len() - s.plain_start, 21, "decrypted during the handshake, waiting in plain");
            let mut got = [0u8; 21];
            s.read_exact(&mut got).await.expect("first read");
            got
        });
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = ClientConnection::new(client_cfg, name).expect("client");
        // rustls sends this right after its Finished, in the same `write_tls` output.
        tls.writer().write_all(b"right behind Finished").expect("buffer early plaintext");
        within("manual client handshake", async {
            loop {
                let mut out = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut out).expect("write_tls");
                }
                if !out.is_empty() {
                    tcp.write_all(&out).await.expect("client flight");
                }
                if !tls.is_handshaking() {
                    break;
                }
                let mut buf = vec![0u8; 32 * 1024];
                let n = tcp.read(&mut buf).await.expect("server flight");
                assert!(n > 0, "server closed during handshake");
                tls.read_tls(&mut &buf[..n]).expect("read_tls");
                tls.process_new_packets().expect("client accepts the server flight");
            }
            assert_eq!(&server.await.expect("server task"), b"right behind Finished");
        })
        .await;
    }

    #[test]
    fn pool_keeps_only_pool_sized_buffers_up_to_its_bound() {
        // Each test runs on its own thread, so this pool starts empty.
        for _ in 0..3 * POOL_PER_THREAD {
            pool::give(Vec::with_capacity(POOL_BUF));
        }
        assert_eq!(pool::held(), POOL_PER_THREAD, "pool bounded per thread");
        pool::give(Vec::with_capacity(100));
        pool::give(Vec::with_capacity(MAX_INCOMING));
        assert_eq!(pool::held(), POOL_PER_THREAD, "odd sizes are freed, not pooled");
        let mut b = pool::take();
        b.extend_from_slice(b"stale");
        pool::give(b);
        let b = pool::take();
        assert!(b.is_empty() && b.capacity() == POOL_BUF, "pooled buffers come back empty and full-sized");
    }

    #[test]
    fn report_sizes() {
        let lean = std::mem::size_of::<LeanTlsStream>();
        let buffered = std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>();
        println!("size_of LeanTlsStream = {lean} B, tokio_rustls::server::TlsStream<TcpStream> = {buffered} B");
        // Inline size is about rustls' connection state either way (~1.2 KiB); the saving is on
        // the heap. This bound only catches a buffer accidentally made inline.
        assert!(lean <= buffered + 64, "LeanTlsStream grew inline: {lean} B vs tokio-rustls' {buffered} B");
    }
}
