//! A bounded listener for the internal HTTP APIs (push and admin).
//!
//! axum's own listener accepts without limit and keeps a connection that
//! never finishes its request headers forever. Both APIs share the process's
//! file descriptors with the client listener, so an internal caller (or a bug
//! in one) could starve client logins. Here every connection holds a permit
//! of a fixed pool, and a connection on which nothing is read for `idle` is
//! closed. At the bound, accepting waits: the kernel backlog absorbs the rest.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

pub struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    pub fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> BoundedListener {
        BoundedListener { inner, permits: Arc::new(Semaphore::new(max_connections)), idle }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        loop {
            // The semaphore is never closed, so acquiring only waits.
            let Ok(permit) = self.permits.clone().acquire_owned().await else { continue };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let deadline = Box::pin(tokio::time::sleep(self.idle));
                    return (BoundedStream { inner: stream, _permit: permit, idle: self.idle, deadline }, addr);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "internal API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

pub struct BoundedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    /// Reset by every read that returns data.
    deadline: Pin<Box<Sleep>>,
}

impl AsyncRead for BoundedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "internal API connection idle")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_connections_are_closed_and_permits_come_back() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut l = BoundedListener::new(tcp, 1, Duration::from_millis(200));
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (mut s1, _) = l.accept().await;
        // The pool has one permit: a second accept waits until s1 is gone.
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
        assert!(waiting.is_err(), "second connection must wait for a permit");
        let mut buf = [0u8; 8];
        let err = s1.read(&mut buf).await.expect_err("silent peer must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(s1);
        let (mut s2, _) = tokio::time::timeout(Duration::from_secs(2), l.accept()).await.expect("permit returned");
        c2.write_all(b"hi").await.unwrap();
        let n = s2.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
    }
}
