//! The accept loop: TCP (optionally TLS) connections served by hyper-util's HTTP/1.1 + HTTP/2
//! builder, each connection closed when idle, and a graceful drain on shutdown.
//!
//! Draining follows mini-redis: every connection task holds a clone of an mpsc sender; after
//! the shutdown signal the server drops its own and waits (up to the grace period) until
//! `recv()` returns `None`, i.e. every connection has finished its in-flight requests.

use crate::body::{Body, BodyObserver, observe};
use crate::config::ServerConfig;
use http::{HeaderValue, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
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

/// What a connection needs to know about limits.
#[derive(Clone)]
pub struct ConnSettings {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_head_bytes: usize,
    max_headers: usize,
    open: Arc<AtomicUsize>,
}

impl ConnSettings {
    /// Builds the hyper connection builder with the configured bounds.
    pub fn new(cfg: &ServerConfig, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Also bounds idle keep-alive: hyper restarts this timer while waiting for the next
            // request head.
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(cfg.max_header_bytes)
            .max_headers(cfg.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        ConnSettings {
            builder,
            tls,
            handshake_timeout: cfg.header_read_timeout,
            idle_timeout: cfg.idle_timeout,
            max_connections: cfg.max_connections,
            max_head_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            open: Arc::default(),
        }
    }

    /// Reads how many inbound connections are open now (for metrics).
    pub fn open_connections(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let open = self.open.clone();
        move || open.load(Ordering::Relaxed)
    }
}

/// Counts a connection as open from accept until its task ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(n: &Arc<AtomicUsize>) -> Open {
        n.fetch_add(1, Ordering::Relaxed);
        Open(n.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the accept loop until `shutdown` flips to true, then drains for up to `grace`.
pub async fn serve<S>(
    listener: TcpListener,
    settings: ConnSettings,
    svc: S,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let (force_tx, force_rx) = watch::channel(false);
    let for_conns = shutdown.clone();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        // At the connection limit we stop accepting (the kernel backlog queues the rest)
        // rather than accept and drop.
        let slot = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let conn = Connection {
                        _open: Open::new(&settings.open),
                        settings: settings.clone(),
                        svc: svc.clone(),
                        shutdown: for_conns.clone(),
                        force: force_rx.clone(),
                        _alive: alive_tx.clone(),
                        _slot: slot,
                    };
                    tokio::spawn(conn.run(tcp));
                }
                // EMFILE and friends: back off briefly instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    drop(alive_tx);
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "drain deadline passed; closing remaining connections"
        );
        let _ = force_tx.send(true);
        // Connections drop at their next poll; this wait is only for their tasks to notice.
        let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
    }
}

/// Resolves once shutdown has been signalled (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

struct Connection<S> {
    settings: ConnSettings,
    svc: S,
    shutdown: watch::Receiver<bool>,
    // Flips after the drain deadline: drop the connection, whatever it is doing.
    force: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    _slot: OwnedSemaphorePermit,
    _open: Open,
}

impl<S> Connection<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    async fn run(self, tcp: tokio::net::TcpStream) {
        match self.settings.tls.clone() {
            None => self.serve_io(tcp).await,
            Some(acc) => {
                match tokio::time::timeout(self.settings.handshake_timeout, acc.accept(tcp)).await {
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
        let idle = Arc::new(Idle::new());
        let svc = self.svc.clone();
        let tracker = idle.clone();
        // hyper resolves Content-Length + Transfer-Encoding itself and drops the length before
        // we see the request; the framing watch saw the raw head and tells us (see framing.rs).
        let (io, framing) =
            crate::framing::watch(io, self.settings.max_head_bytes, self.settings.max_headers);
        let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let busy = tracker.begin();
            // Exactly once per request, in arrival order, before anything can reject it.
            let seen = framing.take_next();
            let svc = svc.clone();
            async move {
                let mut req = req.map(Body::new);
                if seen.ambiguous_length {
                    req.extensions_mut().insert(crate::guard::AmbiguousLength);
                }
                if seen.bad_target {
                    req.extensions_mut().insert(crate::guard::UnusableTarget);
                }
                let mut resp = svc.oneshot(req).await?;
                if seen.bad_target {
                    // The watch only names the first such request of a connection: end it.
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp.map(|b| observe(b, busy)))
            }
        });
        let conn = self
            .settings
            .builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        let idle_timeout = self.settings.idle_timeout;
        let mut closing = false;
        loop {
            let wait = idle.remaining(idle_timeout);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stopped(&mut self.force) => {
                    tracing::debug!("connection closed at the drain deadline");
                    break;
                }
                _ = stopped(&mut self.shutdown), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(wait), if !closing => {
                    if idle.remaining(idle_timeout).is_zero() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Per-connection idleness: no request in flight (response bodies included) for a while.
struct Idle {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_done_ms: AtomicU64,
}

impl Idle {
    fn new() -> Self {
        Idle {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Time left before the connection counts as idle (zero: idle now).
    fn remaining(&self, timeout: Duration) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return timeout;
        }
        let since = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        (since + timeout).saturating_sub(self.epoch.elapsed())
    }
}

/// Held from the request's arrival until its response body is finished or dropped.
struct Busy(Arc<Idle>);

impl BodyObserver for Busy {}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last_done_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
