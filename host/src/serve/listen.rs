//! Accepting connections under limits: at most so many open per listener, a deadline on
//! reading a request's headers, and an idle timeout, so slow or idle clients cannot hold the
//! process's file descriptors. Each listener has its own cap: a flood on the check listeners
//! leaves the admin listener (health, metrics, revocations) reachable.
//!
//! Over the cap, a listener stops accepting until a connection closes; new clients wait in
//! the kernel's backlog rather than being refused.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// Limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most. Default 4096 (check listeners), 64 (admin).
    pub max_connections: usize,
    /// HTTP: longest time to receive a request's headers, from the connection's start or the
    /// previous response. Default 10 s.
    pub header_read_timeout: Duration,
    /// Longest time a connection may pass with no byte read or written. `None`: no limit
    /// (gRPC: Envoy keeps one HTTP/2 connection open between bursts). Default 60 s (HTTP).
    pub idle_timeout: Option<Duration>,
}

impl ConnectionLimits {
    /// The check listeners' defaults.
    pub const CHECKS: ConnectionLimits = ConnectionLimits {
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Some(Duration::from_secs(60)),
    };
    /// The admin listener's defaults.
    pub const ADMIN: ConnectionLimits = ConnectionLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Some(Duration::from_secs(60)),
    };
}

/// An accepted connection: it holds its listener's permit until dropped, and fails its reads
/// and writes once idle for too long.
#[derive(Debug)]
pub struct Limited<T> {
    inner: T,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Limited<T> {
    fn new(inner: T, idle: Option<Duration>, permit: OwnedSemaphorePermit) -> Limited<T> {
        let idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Limited { inner, idle, _permit: permit }
    }

    /// Some progress: the idle clock starts again.
    fn active(&mut self) {
        if let Some((d, sleep)) = &mut self.idle {
            sleep.as_mut().reset(Instant::now() + *d);
        }
    }

    /// Whether the idle deadline has passed (registers the waker when not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready())
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if me.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    me.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if me.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Limited<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts the next connection once the listener is under its cap. Accept errors (out of file
/// descriptors, a connection reset before it was accepted) are logged and retried after a
/// pause, never fatal.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    limits: &ConnectionLimits,
    what: &'static str,
) -> (Limited<TcpStream>, SocketAddr) {
    let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
        // The semaphore is never closed.
        return std::future::pending().await;
    };
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // Nagle plus delayed ACKs put ~40 ms on small responses.
                let _ = tcp.set_nodelay(true);
                return (Limited::new(tcp, limits.idle_timeout, permit), peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The gRPC listener's connections, as a stream for tonic. The accepting task ends when the
/// stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl tokio_stream::Stream<Item = std::io::Result<Limited<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        loop {
            let io = tokio::select! {
                (io, _) = accept(&listener, &slots, &limits, "gRPC") => io,
                () = tx.closed() => return,
            };
            if tx.send(Ok(io)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serves `app` over HTTP/1.1 on `listener` under `limits` until `stop` turns true, then
/// lets open connections finish their current request. `max_headers` gives each new
/// connection's header cap (the policy's limit, so the policy's own `malformed` answer
/// applies rather than the HTTP server's).
pub fn spawn_http(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    max_headers: Arc<dyn Fn() -> usize + Send + Sync>,
    stop: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (io, peer) = tokio::select! {
                c = accept(&listener, &slots, &limits, what) => c,
                _ = super::stopped(stop.clone()) => break,
            };
            let app = app.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let mut app = app.clone();
                async move {
                    let req = req.map(axum::body::Body::new);
                    tower_service::Service::call(&mut app, req).await
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_headers(max_headers().max(1))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(error = %e, listener = what, "connection ended");
                }
            });
        }
        drop(listener);
        // The handle's drain timeout bounds this.
        graceful.shutdown().await;
    })
}
