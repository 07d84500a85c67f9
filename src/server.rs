//! The accept loop of every listener (the public port and the admin port, each with its own
//! [`ConnSettings`]): TCP (optionally TLS) connections served by hyper-util's HTTP/1.1 + HTTP/2
//! builder, a connection limit, back-off on accept errors, each connection closed when idle or
//! when its caller stops taking its responses, and a graceful drain on shutdown.
//!
//! Draining: after the shutdown signal every connection closes gracefully (in-flight requests
//! finish) and the server waits for their tasks (a `JoinSet`) up to the grace period, then
//! aborts the rest.

use crate::body::{Body, BodyObserver, observe};
use crate::config::{AdminConfig, ServerConfig};
use crate::metrics::{ConnMetrics, Metrics};
use crate::step::Inner;
use http::{HeaderValue, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

/// Inbound TLS (rustls, ALPN h2 + http/1.1) from the configured PEM files.
pub fn tls_acceptor(cfg: &ServerConfig) -> Result<Option<TlsAcceptor>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|_| {
            ConfigError::new(
                "server.tls_cert_file",
                "cannot read PEM certificates",
                "point it at a PEM certificate chain",
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        ConfigError::new(
            "server.tls_key_file",
            "cannot read a PEM private key",
            "point it at the PEM key of the certificate",
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|_| {
            ConfigError::new(
                "server.tls_key_file",
                "the key does not match the certificate or is unsupported",
                "use the key that belongs to server.tls_cert_file",
            )
        })?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(tls))))
}

/// Bytes of response one HTTP/2 stream may queue inside hyper beyond what the caller's window
/// lets out (hyper's default is 400 KiB): with the stream limit, it bounds a connection's
/// memory when its caller stops reading.
const SEND_BUF_PER_STREAM: usize = 64 * 1024;

/// Admin requests are a bearer token and a path: fixed, small head and stream limits.
const ADMIN_HEAD_BYTES: usize = 16 * 1024;
const ADMIN_MAX_HEADERS: usize = 100;
const ADMIN_MAX_STREAMS: u32 = 16;

/// What a listener's connections need to know: the hyper builder, TLS, limits and metrics.
pub struct ConnSettings {
    /// `public` or `admin`: names the listener in logs and metrics.
    listener: &'static str,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    /// The bounds this listener's connections live under (timeouts, sizes, counts, grace).
    limits: ServerConfig,
    metrics: ConnMetrics,
}

impl ConnSettings {
    /// The admin port: the `[server]` timeouts, `admin.max_connections`, small fixed head and
    /// stream limits, plain HTTP.
    pub fn admin(server: &ServerConfig, admin: &AdminConfig, m: &Metrics) -> Self {
        let limits = ServerConfig {
            max_connections: admin.max_connections,
            max_header_bytes: ADMIN_HEAD_BYTES,
            max_headers: ADMIN_MAX_HEADERS,
            max_streams_per_connection: ADMIN_MAX_STREAMS,
            ..server.clone()
        };
        ConnSettings::new("admin", limits, None, m)
    }

    /// The listener named `listener` (the public port: `"public"`, every bound from
    /// `[server]`).
    pub fn new(
        listener: &'static str,
        limits: ServerConfig,
        tls: Option<TlsAcceptor>,
        m: &Metrics,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Also bounds idle keep-alive: hyper restarts this timer while waiting for the next
            // request head.
            .header_read_timeout(limits.header_read_timeout)
            // Bounds both the read buffer (heads, pipelined requests) and the write buffer.
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_streams_per_connection)
            .max_send_buf_size(SEND_BUF_PER_STREAM)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        ConnSettings {
            listener,
            builder,
            tls,
            metrics: m.connections(listener, limits.max_connections),
            limits,
        }
    }
}

/// What a listener serves: the whole stack (or the admin routes), which never fails (errors
/// are responses by then), cloned into every connection task.
pub trait Served: Inner<Infallible> + Clone + Send + Sync + 'static {}

impl<S: Inner<Infallible> + Clone + Send + Sync + 'static> Served for S {}

/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Runs the accept loop until `shutdown` flips to true, then drains for up to
/// `shutdown_grace`: connections still open then are dropped.
pub async fn serve<S>(
    listener: TcpListener,
    settings: ConnSettings,
    svc: S,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Served,
{
    let settings = Arc::new(settings);
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(settings.limits.max_connections));
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        // Finished connections leave the set here, so it holds only open ones.
        while conns.try_join_next().is_some() {}
        // At the connection limit we stop accepting (the kernel backlog queues the rest)
        // rather than accept and drop.
        let slot = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = ACCEPT_BACKOFF.0;
                let _ = tcp.set_nodelay(true);
                settings.metrics.open.inc();
                let conn = Connection {
                    peer,
                    settings: settings.clone(),
                    svc: svc.clone(),
                    shutdown: shutdown.clone(),
                    _slot: slot,
                };
                conns.spawn(conn.run(tcp));
            }
            // The peer gave up between its connect and our accept: nothing to wait for.
            Err(e) if peer_gone(&e) => {}
            // EMFILE, ENFILE, ENOBUFS...: accept keeps failing until something is freed, so
            // wait (doubling, up to a second) instead of spinning a core on the error.
            Err(e) => {
                tracing::warn!(
                    listener = settings.listener,
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "accept failed; backing off"
                );
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
    drop(listener);
    let grace = settings.limits.shutdown_grace;
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "drain deadline passed; closing remaining connections"
        );
        // Aborted connections drop at their next poll; this wait is only for their tasks to
        // notice.
        let _ = tokio::time::timeout(Duration::from_secs(5), conns.shutdown()).await;
    }
}

/// An accept error that concerns only the connection being accepted.
fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Resolves once shutdown has been signalled (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One accepted connection. It holds one of its listener's `max_connections` slots, and a
/// count in `connections_open`, for as long as it lives.
struct Connection<S> {
    peer: std::net::SocketAddr,
    settings: Arc<ConnSettings>,
    svc: S,
    shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        // Before the slot goes back (fields drop after this), so the gauge never shows more
        // than the limit.
        self.settings.metrics.open.dec();
    }
}

impl<S> Connection<S>
where
    S: Served,
{
    async fn run(self, tcp: tokio::net::TcpStream) {
        match self.settings.tls.clone() {
            None => self.serve_io(tcp).await,
            Some(acc) => {
                let limit = self.settings.limits.header_read_timeout;
                match tokio::time::timeout(limit, acc.accept(tcp)).await {
                    Ok(Ok(tls)) => self.serve_io(tls).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_io<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.settings.limits;
        let progress = Arc::new(Progress::new());
        // hyper resolves Content-Length + Transfer-Encoding itself and drops the length before
        // we see the request; the framing watch saw the raw head and tells us (see framing.rs).
        let (io, framing) = crate::framing::watch(
            io,
            limits.max_header_bytes,
            limits.max_headers,
            progress.on_write(),
        );
        let svc = per_request(self.svc.clone(), progress.clone(), framing, self.peer);
        let conn = self
            .settings
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        let mut closing = false;
        // An idle connection being closed has nothing in flight: whatever hyper still holds
        // (frames queued behind a tiny h2 window, which no response timer sees once the body
        // is handed over) gets `send_timeout` to leave, then the connection goes.
        let mut close_by: Option<Instant> = None;
        loop {
            // A graceful close still needs the caller to take what is queued, so the send
            // timeout keeps running while closing.
            let Some(wait) = next_check(&progress, limits, closing, close_by) else {
                self.settings.metrics.stalled.inc();
                tracing::debug!(
                    listener = self.settings.listener,
                    stalled_ms = progress.longest_wait().as_millis() as u64,
                    "closing a connection whose caller stopped taking responses"
                );
                break;
            };
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stopped(&mut self.shutdown), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(wait) => {
                    if !closing && progress.idle_remaining(limits.idle_timeout).is_zero() {
                        closing = true;
                        close_by = Some(Instant::now() + limits.send_timeout);
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The connection's service: each request gets its arrival facts (peer, what the framing watch
/// saw of its raw head) and is counted busy until its response body has been handed over.
fn per_request<S>(
    svc: S,
    tracker: Arc<Progress>,
    framing: crate::framing::FramingWatch,
    peer: std::net::SocketAddr,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static
where
    S: Served,
{
    tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let busy = tracker.begin();
        // Exactly once per request, in arrival order, before anything can reject it.
        let mut arrival = framing.take_next();
        arrival.peer = Some(peer);
        let svc = svc.clone();
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(arrival);
            let mut resp = svc.oneshot(req).await?;
            if arrival.unusable_target {
                // The watch only names the first such request of a connection: end it.
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            let sending = busy.handed_over();
            Ok::<_, Infallible>(resp.map(|b| observe(b, sending)))
        }
    })
}

/// How long the connection may go before its timers are checked again; `None` when the caller
/// has stalled a response (or a closing connection's queue) past `send_timeout`: close it.
fn next_check(
    progress: &Progress,
    limits: &ServerConfig,
    closing: bool,
    close_by: Option<Instant>,
) -> Option<Duration> {
    let stalled = progress.longest_wait();
    let overdue = close_by.is_some_and(|t| Instant::now() >= t);
    if stalled >= limits.send_timeout || overdue {
        return None;
    }
    let mut wait = limits.send_timeout.saturating_sub(stalled);
    if !closing {
        wait = wait.min(progress.idle_remaining(limits.idle_timeout));
    }
    if let Some(t) = close_by {
        wait = wait.min(t.saturating_duration_since(Instant::now()));
    }
    Some(wait)
}

/// Per connection: requests in flight (for idleness), and everything that can wait on the
/// caller (each response handed to hyper, and the socket's write side), each with the time
/// its wait began.
struct Progress {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
    /// The registered waits, each the time it began (ms since `epoch` plus one; 0 = not
    /// waiting); finished ones are forgotten as the next one is registered.
    waits: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            waits: Mutex::default(),
        }
    }

    /// Now, as a wait's stamp (never 0).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn waiter(&self) -> Arc<AtomicU64> {
        let w = Arc::new(AtomicU64::new(0));
        let mut waits = lock(&self.waits);
        // Drops the stamps only this list still holds (their response is finished).
        waits.retain(|w| Arc::strong_count(w) > 1);
        waits.push(w.clone());
        w
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy {
            progress: self.clone(),
            wait: self.waiter(),
        }
    }

    /// The socket's wait on the caller, for the framing watch to report each write to: from
    /// the first blocked write (the caller's receive buffer is full) until one goes through.
    fn on_write(self: &Arc<Self>) -> impl Fn(bool) + Send + Sync + Unpin + 'static {
        let (progress, wait) = (self.clone(), self.waiter());
        move |blocked| {
            if blocked {
                // Keep the first stamp: the wait began at the first blocked write.
                let now = progress.now();
                let _ = wait.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
            } else {
                wait.store(0, Ordering::Release);
            }
        }
    }

    /// How long the oldest current wait on the caller has lasted (zero: nothing waits).
    fn longest_wait(&self) -> Duration {
        let oldest = lock(&self.waits)
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .filter(|&t| t != 0)
            .min();
        oldest.map_or(Duration::ZERO, |t| {
            Duration::from_millis(self.now().saturating_sub(t))
        })
    }

    /// Time left before the connection counts as idle (zero: idle now).
    fn idle_remaining(&self, timeout: Duration) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return timeout;
        }
        let since = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        (since + timeout).saturating_sub(self.epoch.elapsed())
    }
}

/// Locks a mutex, ignoring poisoning (the list stays valid whatever panicked).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held from the request's arrival until its response body is finished or dropped; once the
/// response is handed to hyper, its wait tells whether the response waits on the caller: from
/// the moment a frame is handed over until hyper asks for the next one (unstamped before).
struct Busy {
    progress: Arc<Progress>,
    wait: Arc<AtomicU64>,
}

impl Busy {
    /// The response goes to hyper: from now until it asks for a frame, the caller is awaited.
    fn handed_over(self) -> Self {
        self.wait.store(self.progress.now(), Ordering::Release);
        self
    }
}

impl BodyObserver for Busy {
    fn on_poll(&mut self) {
        // hyper asks for more: what follows is the producer's time, not the caller's.
        self.wait.store(0, Ordering::Release);
    }

    fn on_data(&mut self, _len: usize) {
        self.wait.store(self.progress.now(), Ordering::Release);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.wait.store(0, Ordering::Release);
        let p = &self.progress;
        let now = p.epoch.elapsed().as_millis() as u64;
        p.last_done_ms.store(now, Ordering::Release);
        p.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_responses_do_not_pile_up_between_two_looks() {
        let p = Progress::new();
        let held: Vec<_> = (0..10).map(|_| p.waiter()).collect();
        for _ in 0..10_000 {
            drop(p.waiter());
        }
        let len = lock(&p.waits).len();
        assert!((10..=128).contains(&len), "{len} stamps kept");
        drop(held);
    }

    #[test]
    fn the_oldest_wait_counts_until_hyper_asks_again() {
        // A connection two seconds old, so stamps can lie in its past.
        let p = Arc::new(Progress {
            epoch: Instant::now() - Duration::from_secs(2),
            ..Progress::new()
        });
        assert_eq!(p.longest_wait(), Duration::ZERO);
        let mut busy = p.begin().handed_over();
        // Stamped one second ago: the caller has taken nothing since.
        let stamp = p.now() - 1000;
        busy.wait.store(stamp, Ordering::Release);
        assert!(p.longest_wait() >= Duration::from_millis(900));
        busy.on_poll();
        assert_eq!(p.longest_wait(), Duration::ZERO);
        drop(busy);
        assert_eq!(p.in_flight.load(Ordering::Acquire), 0);
    }
}
