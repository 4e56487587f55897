//! The accepting side of both ports: at most `--max-connections` open connections (one beyond
//! it is closed as soon as it is accepted), the TLS handshake when TLS is on, done on a task of
//! its own so that a slow or silent client never holds up the accept loop, and each
//! connection's [`ConnInfo`]: the peer's address and, with client certificates, its identity.
//!
//! [`Incoming`] is a stream of connections for tonic and an `axum::serve::Listener` for axum.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};

use super::{
    caller::ClientId,
    tls::{self, Port, ServerTls},
};

/// Longest a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of a connection's peer. tonic and axum hand it to every request on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
    /// With client certificates: the verified certificate's identity, or why it has none
    /// usable; `None` when the client sent no certificate (or TLS is off).
    pub identity: Option<Result<ClientId, String>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection (after its handshake), holding its slot until it is dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.io().info.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// The connections of one listener, ready to serve (limited, handshaken).
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Stops accepting (and frees the port) as soon as the server stops listening.
        self.task.abort();
    }
}

impl Incoming {
    /// Accepts on `listener`, at most `max` connections open at once, with the TLS of `tls`
    /// (for `port`) when given. `name` names the port in the logs.
    pub fn new(
        listener: TcpListener,
        max: usize,
        tls: Option<(Arc<ServerTls>, Port)>,
        name: &'static str,
    ) -> io::Result<Incoming> {
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(max.max(1)));
        let task = tokio::spawn(accept_loop(listener, permits, max, tls, tx, name));
        Ok(Incoming {
            rx,
            local_addr,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    max: usize,
    tls: Option<(Arc<ServerTls>, Port)>,
    tx: mpsc::Sender<Conn>,
    name: &'static str,
) {
    let mut refused: u64 = 0;
    loop {
        let (io, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait, as axum's own listener does.
                tracing::warn!("{name} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            // 1st, 2nd, 4th, 8th, ... refusal: visible, without flooding the log.
            if refused.is_power_of_two() {
                tracing::warn!(
                    limit = max,
                    refused,
                    peer = %remote,
                    "{name} connection limit reached (--max-connections): closing new connections"
                );
            }
            continue;
        };
        let _ = io.set_nodelay(true);
        let local = io.local_addr().ok();
        match &tls {
            None => {
                let conn = Conn {
                    io: Io::Plain(io),
                    info: ConnInfo {
                        local,
                        remote,
                        identity: None,
                        tls: false,
                    },
                    _permit: permit,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some((tls, port)) => {
                let acceptor = tls.acceptor(*port);
                let asks = tls.asks_client_certificates();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %remote, "{name} TLS handshake failed: {e}");
                                crate::monitoring::tls_handshake_failure(name);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %remote, "{name} TLS handshake timed out");
                                crate::monitoring::tls_handshake_failure(name);
                                return;
                            }
                        };
                    let identity = if asks {
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(tls::identity)
                    } else {
                        None
                    };
                    let conn = Conn {
                        io: Io::Tls(Box::new(stream)),
                        info: ConnInfo {
                            local,
                            remote,
                            identity,
                            tls: true,
                        },
                        _permit: permit,
                    };
                    let _ = tx.send(conn).await;
                });
            }
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => {
                let addr = conn.info.remote;
                (conn, addr)
            }
            // The accept loop only ends with the listener: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
