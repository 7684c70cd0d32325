//! Accepting connections so that a server outlives hostile or broken peers: the gRPC server of
//! the collector and the HTTP endpoint of both roles take their connections from an
//! [`Acceptor`], and wrap each in a [`Conn`].
//!
//! - An accept that fails (file descriptors exhausted: `EMFILE`, `ENFILE`; memory: `ENOBUFS`,
//!   `ENOMEM`) never stops the server: the acceptor logs it (the first one, then a count at most
//!   every 10 s), waits (10 ms, doubling up to 1 s) and accepts again; it logs when accepting
//!   works again. A peer that reset its connection before it was accepted is skipped at once.
//! - At most `max_connections` are open at a time; beyond, the next accept waits for one to
//!   close (the kernel's backlog holds the new ones meanwhile), so peers cannot take the file
//!   descriptors the process needs for its own files.
//! - TCP keepalive on every connection (probes after 60 s idle, every 10 s, 3 of them): a peer
//!   gone without a FIN is noticed within 90 s.
//! - [`Conn::with_first_bytes`]: the peer must send its first bytes (for HTTP/2 the 24-byte
//!   client preface) within a deadline, else reads fail with `TimedOut` and the server drops
//!   the connection; a client trickling one byte every few seconds is dropped at the deadline.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

/// Backoff after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line of failed accepts per this.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// TCP keepalive of every accepted connection.
const KEEPALIVE_IDLE: Duration = Duration::from_mins(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Accepts connections on a listener, never giving up on an error; see the module docs.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    /// What is served, for the log (`gRPC`, `metrics`).
    what: &'static str,
    backoff: Duration,
    /// Failed accepts since accepting last worked, and those not logged yet.
    failures: u64,
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Acceptor {
    /// Accept on `listener`, at most `max_connections` open at a time (at least 1).
    #[must_use]
    pub fn new(listener: TcpListener, max_connections: usize, what: &'static str) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            what,
            backoff: BACKOFF_MIN,
            failures: 0,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, with its slot (freed when the permit is dropped). Waits for a free
    /// slot first; failed accepts are logged and retried after a backoff.
    ///
    /// # Panics
    /// Never: the semaphore of the slots is never closed.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    if self.failures > 0 {
                        tracing::warn!(
                            server = self.what,
                            failures = self.failures,
                            "accepting connections again after failed accepts"
                        );
                        self.failures = 0;
                        self.unlogged = 0;
                        self.backoff = BACKOFF_MIN;
                    }
                    keepalive(&tcp);
                    return (tcp, peer, permit);
                }
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    self.failures += 1;
                    self.unlogged += 1;
                    let now = Instant::now();
                    if self
                        .logged_at
                        .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
                    {
                        tracing::warn!(server = self.what, %error, failed = self.unlogged,
                            retry_in = ?self.backoff,
                            "accepting a connection failed; the server keeps accepting after a pause");
                        self.logged_at = Some(now);
                        self.unlogged = 0;
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn keepalive(tcp: &TcpStream) {
    let params = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(error) = SockRef::from(tcp).set_tcp_keepalive(&params) {
        tracing::debug!(%error, "TCP keepalive not set");
    }
    let _ = tcp.set_nodelay(true);
}

/// An accepted connection: holds its slot of the [`Acceptor`] until dropped, and optionally
/// fails reads when its first bytes do not arrive in time.
#[derive(Debug)]
pub struct Conn<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
    /// Bytes still expected before the deadline, and the deadline.
    first: Option<(usize, Pin<Box<Sleep>>)>,
}

impl<T> Conn<T> {
    #[must_use]
    pub fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _slot: slot,
            first: None,
        }
    }

    /// Fail reads with `TimedOut` unless `bytes` were read within `deadline` from now.
    #[must_use]
    pub fn with_first_bytes(mut self, bytes: usize, deadline: Duration) -> Self {
        self.first = Some((bytes, Box::pin(tokio::time::sleep(deadline))));
        self
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((expected, deadline)) = &mut this.first {
            if let Poll::Ready(Ok(())) = &polled {
                let read = buf.filled().len() - before;
                *expected = expected.saturating_sub(read);
                if *expected == 0 || read == 0 {
                    this.first = None;
                    return polled;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                this.first = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer did not send its first bytes in time",
                )));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests;
