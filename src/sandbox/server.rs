//! The sandbox's accept loop: TLS, HTTP/1.1 + HTTP/2 (hyper-util auto), shutdown.
//!
//! Every task it starts (connections and HTTP/2 streams) watches the stop flag, so dropping
//! the [`super::Sandbox`] leaves nothing running. The connection IO is wrapped in [`Hijackable`]
//! so a [`super::Fault::Garbage`] answer can replace hyper's bytes with junk.

use super::state::State;
use super::sync::stopped;
use hyper::rt::Executor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Spawns hyper's HTTP/2 stream tasks so that they, too, end at shutdown.
#[derive(Clone)]
struct StopAwareExec(watch::Receiver<bool>);

impl<F> Executor<F> for StopAwareExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let stop = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stopped(stop) => {}
            }
        });
    }
}

/// Accepts connections until stopped, then closes them all before returning.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(stop.clone()) => break,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
        conns.spawn(async move {
            tokio::select! {
                _ = serve(acceptor, tcp, state, stop.clone()) => {}
                _ = stopped(stop) => {}
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let hijack = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Hijackable::new(tls, hijack.clone()));
    let exec = StopAwareExec(stop.clone());
    let mut builder = auto::Builder::new(exec);
    if let Some(n) = state.max_streams {
        builder.http2().max_concurrent_streams(n);
    }
    let svc = hyper::service::service_fn(move |req| {
        super::handler::handle(state.clone(), hijack.clone(), stop.clone(), req)
    });
    let _ = builder.serve_connection(io, svc).await;
}

/// Bytes written instead of an HTTP answer for [`Fault::Garbage`]: neither HTTP/1 nor HTTP/2.
const GARBAGE: &[u8] = b"\x00\xff\xfeSANDBOX GARBAGE: this is not HTTP\x01\x02\x03\r\n\r\n";

/// The connection's IO; once `hijacked` is set, writes send [`GARBAGE`] and then fail,
/// which makes hyper drop the connection.
struct Hijackable<S> {
    inner: S,
    hijacked: Arc<AtomicBool>,
    junk_sent: usize,
}

impl<S> Hijackable<S> {
    fn new(inner: S, hijacked: Arc<AtomicBool>) -> Self {
        Hijackable {
            inner,
            hijacked,
            junk_sent: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Hijackable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> Hijackable<S> {
    fn poll_junk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while self.junk_sent < GARBAGE.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &GARBAGE[self.junk_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.junk_sent += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "sandbox garbage fault",
        )))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Hijackable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hijacked.load(Ordering::SeqCst) {
            return self.poll_junk(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hijacked.load(Ordering::SeqCst) {
            return self.poll_junk(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.hijacked.load(Ordering::SeqCst) {
            return self.poll_junk(cx).map(|r| r.map(|_| ()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
