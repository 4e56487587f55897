//! The connection limit: accepted TCP connections each hold a permit until they close; one
//! accepted beyond `--max-connections` is closed at once (the client sees the connection
//! reset and reports UNAVAILABLE), so that no client can hold an unbounded number of sockets
//! and HTTP/2 buffers.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::server::{Connected, TcpIncoming};

/// Accepted connections, at most `max` open at once.
pub struct LimitedIncoming {
    inner: TcpIncoming,
    permits: Arc<Semaphore>,
    max: usize,
    refused: u64,
}

impl LimitedIncoming {
    pub fn new(inner: TcpIncoming, max: usize) -> Self {
        LimitedIncoming {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: 0,
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<Counted<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let io = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(io)) => io,
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Poll::Ready(Some(Ok(Counted {
                        io,
                        _permit: permit,
                    })))
                }
                Err(_) => {
                    self.refused += 1;
                    // 1st, 2nd, 4th, 8th, ... refusal: visible, without flooding the log.
                    if self.refused.is_power_of_two() {
                        tracing::warn!(
                            limit = self.max,
                            refused = self.refused,
                            peer = ?io.peer_addr().ok(),
                            "connection limit reached (--max-connections): closing new connections"
                        );
                    }
                    drop(io);
                }
            }
        }
    }
}

/// A connection that holds its slot until it is dropped.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Counted<IO> {
    /// `io`, holding `permit` until it is dropped.
    pub fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        Counted {
            io,
            _permit: permit,
        }
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
