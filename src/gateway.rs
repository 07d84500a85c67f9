//! Starting, reloading and stopping a gateway: used by `serve`, `demo` and the tests alike.

use crate::config::{Config, ConfigError};
use crate::credentials::{Credentials, KeyStoreError};
use crate::live::{Live, Shared};
use crate::metrics::{Metrics, ReloadTrigger};
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::server::{self, ConnSettings};
use crate::stack::Fixed;
use crate::upstream::forward::Upstream;
use crate::upstream::links::LinkRewriter;
use crate::upstream::{ShardRouter, client};
use arc_swap::ArcSwap;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key store could not be loaded.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// Binding or reading the listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running gateway.
pub struct Gateway {
    /// The address actually bound.
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// The accept loops (public, and admin when on); each drains its own connections.
    tasks: Vec<JoinHandle<()>>,
    /// Set when shutdown begins: `/readyz` fails from then on.
    draining: Arc<AtomicBool>,
    shutdown_delay: std::time::Duration,
    /// The admin listener's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    reloader: Arc<Reloader>,
    /// The metrics registry (what `/metrics` renders).
    pub metrics: Arc<Metrics>,
    /// The cache invalidation bus (for its counters).
    pub cache_bus: Arc<crate::cache::CacheBus>,
}

impl Gateway {
    /// Builds every shared part from `cfg`, then serves on `listener` until shut down.
    pub async fn start(cfg: Config, listener: TcpListener) -> Result<Gateway, StartError> {
        warn_readable_secrets(&cfg);
        cfg.warn_deprecated();
        let mut metrics = Metrics::new();
        // Taken before the verifier reads the key files, so a file rotated in between is seen
        // as a change by the next reload.
        let auth_digest = match cfg.source {
            Some(_) => crate::reload::config::auth_identity(&cfg),
            None => Vec::new(),
        };
        let local_addr = listener.local_addr()?;
        let tls = server::tls_acceptor(&cfg.server)?;
        let draining = Arc::new(AtomicBool::new(false));
        let fixed = fixed_parts(&cfg, &metrics, local_addr, draining.clone()).await?;
        let (inflight, bus) = (fixed.inflight.clone(), fixed.bus.clone());
        // The same build a reload runs, from nothing.
        let (built, _) = Live::build(&fixed, &cfg, auth_digest, None).await?;
        let live: Shared = Arc::new(ArcSwap::from_pointee(built));
        metrics.add_sources(Arc::new(crate::scrape::Sources::new(
            live.clone(),
            inflight,
            bus.clone(),
            draining.clone(),
        )));
        let reloader = Reloader::new(live.clone(), fixed, metrics.reloads.clone());
        let metrics = Arc::new(metrics);
        let (tx, rx) = watch::channel(false);
        let settings = ConnSettings::new("public", cfg.server.clone(), tls, &metrics);
        let mut tasks = Vec::new();
        let admin = start_admin(&cfg, &reloader, &metrics, rx.clone()).await?;
        let admin_addr = admin.map(|(bound, serving)| {
            tasks.push(serving);
            bound
        });
        follow_changes(&cfg, &reloader, &rx);
        tasks.push(tokio::spawn(server::serve(
            listener,
            settings,
            crate::live::current(live),
            rx,
        )));
        tracing::info!(%local_addr, "gateway listening");
        Ok(Gateway {
            local_addr,
            shutdown: tx,
            tasks,
            draining,
            shutdown_delay: cfg.server.shutdown_delay,
            admin_addr,
            reloader,
            metrics,
            cache_bus: bus,
        })
    }

    /// Binds `cfg.server.listen` and starts.
    pub async fn bind_and_start(cfg: Config) -> Result<Gateway, StartError> {
        let listener = TcpListener::bind(cfg.server.listen).await?;
        Gateway::start(cfg, listener).await
    }

    /// The reloadable parts now serving (the cache for purges and stats, the rate limits and
    /// retries for their counters).
    pub fn live(&self) -> Arc<Live> {
        self.reloader.current()
    }

    /// Re-reads the key store (file I/O and decryption off the async threads); on error the
    /// old store keeps serving.
    pub async fn reload_credentials(&self) -> Result<usize, KeyStoreError> {
        self.reloader.reload_keys(ReloadTrigger::Signal).await
    }

    /// What SIGHUP does: re-reads the config file (when the gateway was started from one)
    /// and the key store; each part that fails keeps serving its previous state.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload(ReloadTrigger::Signal).await
    }

    /// Fails readiness, waits `shutdown_delay`, stops accepting, and waits for in-flight
    /// requests (up to the grace); connections still open then are closed.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Release);
        tracing::info!(
            shutdown_delay_ms = u64::try_from(self.shutdown_delay.as_millis()).unwrap_or(u64::MAX),
            "readiness now failing; the listener closes after shutdown_delay"
        );
        tokio::time::sleep(self.shutdown_delay).await;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Stops its Redis tasks (an in-process gateway must not outlive its shutdown).
        self.cache_bus
            .configure(&crate::config::RedisConfig::default());
        if let Some(t) = self.reloader.fixed.telemetry.clone() {
            // Exports what is still queued; blocking, so off the async threads.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        tracing::info!("gateway stopped");
    }

    /// Serves until SIGTERM/SIGINT (then drains); SIGHUP reloads the config and the key store.
    pub async fn run_until_signal(self, signals: Signals) -> std::io::Result<()> {
        let Signals { mut hup, mut stop } = signals;
        loop {
            tokio::select! {
                // In a task of its own: a reload waiting on a database must not delay a
                // SIGTERM (the pod could not drain).
                _ = hup.recv() => {
                    let reloader = self.reloader.clone();
                    tokio::spawn(async move { reloader.reload(ReloadTrigger::Signal).await });
                }
                _ = &mut stop => break,
            }
        }
        tracing::info!("shutdown signal received; draining");
        self.shutdown().await;
        Ok(())
    }
}

/// The signals a serving gateway acts on. Installed before it starts, so a SIGHUP sent as
/// soon as `gateway listening` is logged reloads rather than kills the process.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    /// SIGTERM or SIGINT (see [`stop_signal`]).
    stop: futures_util::future::BoxFuture<'static, ()>,
}

impl Signals {
    /// Takes over SIGHUP, SIGTERM and SIGINT for this process.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            stop: Box::pin(stop_signal()?),
        })
    }
}

/// Takes over SIGTERM and SIGINT for this process now; resolves on the first of them.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The forwarder to Cliniko (routing, fixed headers, link rewriting towards our public base)
/// and the authority callers must address (the guard refuses other hosts).
fn upstream(
    cfg: &Config,
    http: client::HttpClient,
    local_addr: SocketAddr,
    metrics: &Metrics,
) -> Result<(Arc<Upstream>, http::uri::Authority), ConfigError> {
    let router = ShardRouter::new(&cfg.upstream)?;
    let origins: Vec<String> = router.override_bases().map(|b| b.url()).collect();
    let public_base = cfg.server.public_base(local_addr);
    let links = LinkRewriter::new(&public_base, &origins);
    let authority = public_base
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().cloned())
        .ok_or_else(|| {
            ConfigError::new(
                "server.public_base_url",
                "has no host",
                "write it as https://host[:port]",
            )
        })?;
    let user_agent = HeaderValue::try_from(cfg.upstream.user_agent.as_str()).map_err(|_| {
        ConfigError::new(
            "upstream.user_agent",
            "not a valid header value",
            "use printable ASCII",
        )
    })?;
    let upstream = Upstream {
        client: http,
        router,
        user_agent,
        links,
        timeout: cfg.upstream.timeout,
        body_timeout: cfg.upstream.body_timeout,
        max_body: cfg.server.max_body_bytes,
        metrics: metrics.upstream.clone(),
    };
    Ok((Arc::new(upstream), authority))
}

/// Logs a warning per secret file that other local users can read: any file readable by
/// others, or readable by its group unless root owns it. The exception is PostgreSQL's rule
/// for key files, and what a Kubernetes Secret volume with `defaultMode: 0440` and an
/// `fsGroup` looks like (root-owned, group = the pod's own group). Never reads the file.
fn warn_readable_secrets(cfg: &Config) {
    use std::os::unix::fs::MetadataExt as _;
    for (field, path) in cfg.secret_files() {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let mode = meta.mode() & 0o777;
        if too_open(mode, meta.uid()) {
            tracing::warn!(
                field,
                path = %path.display(),
                mode = format!("{mode:o}").as_str(),
                fix = format!("chmod 600 {}", path.display()).as_str(),
                "a secret file is readable by group or others"
            );
        }
    }
}

fn too_open(mode: u32, owner: u32) -> bool {
    mode & 0o004 != 0 || (mode & 0o040 != 0 && owner != 0)
}

/// The parts that live as long as the process (a reload keeps them): the key store, the
/// upstream client, readiness, the in-flight cap, the cache bus, enrolment, compression.
async fn fixed_parts(
    cfg: &Config,
    metrics: &Metrics,
    local_addr: SocketAddr,
    draining: Arc<AtomicBool>,
) -> Result<Fixed, StartError> {
    let telemetry = crate::telemetry::start(&cfg.telemetry)?;
    let http = client::build(&cfg.upstream, metrics.handshakes.clone())?;
    let credentials = Arc::new(Credentials::open(&cfg.keystore, cfg.enrol.enabled).await?);
    let (upstream, authority) = upstream(cfg, http.clone(), local_addr, metrics)?;
    let bus = crate::cache::CacheBus::new(credentials.clone());
    bus.configure(&cfg.redis);
    let limits = Arc::new(crate::guard::Limits {
        max_body: cfg.server.max_body_bytes,
        authority,
    });
    Ok(Fixed {
        credentials,
        inflight: crate::inflight::InFlight::new(cfg.upstream.max_in_flight_per_user),
        upstream,
        draining,
        context: crate::context::ContextLayer::new(&cfg.server.trusted_proxies),
        limits,
        enrol_grant: cfg.enrol.enabled.then(|| cfg.enrol.grant.clone()),
        metrics: Some(Arc::new(metrics.http.clone())),
        http,
        telemetry,
        bus,
        cache_stats: Arc::default(),
        compression: crate::compression::Compress::new(&cfg.compression),
    })
}

/// The admin listener, when configured: its address and its accept loop.
async fn start_admin(
    cfg: &Config,
    reloader: &Arc<Reloader>,
    metrics: &Arc<Metrics>,
    rx: watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>, StartError> {
    let admin = crate::admin::Admin::new(&cfg.admin, reloader.clone(), metrics.clone());
    let (Some(addr), Some(admin)) = (cfg.admin.listen, admin) else {
        return Ok(None);
    };
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    let settings = ConnSettings::admin(&cfg.server, &cfg.admin, metrics);
    let serving = server::serve(l, settings, admin.service(), rx);
    tracing::info!(admin_addr = %bound, "admin listening");
    Ok(Some((bound, tokio::spawn(serving))))
}

/// Watches the config and key-store files, and follows a database store's changes.
fn follow_changes(cfg: &Config, reloader: &Arc<Reloader>, rx: &watch::Receiver<bool>) {
    if !cfg.keystore.watch_interval.is_zero() {
        tokio::spawn(
            reloader
                .clone()
                .watch_files(cfg.keystore.watch_interval, rx.clone()),
        );
    }
    // Other replicas' writes to a database store, always followed (a replica that never
    // saw them would serve revoked keys): `watch_interval = 0` polls at the default.
    let every = Some(cfg.keystore.watch_interval)
        .filter(|d| !d.is_zero())
        .unwrap_or(crate::config::DEFAULT_WATCH_INTERVAL);
    tokio::spawn(reloader.clone().follow_store(every, rx.clone()));
}

#[cfg(test)]
mod tests {
    #[test]
    fn readable_by_others_or_by_a_non_root_group_is_too_open() {
        for (mode, owner, open) in [
            (0o600, 1000, false),
            (0o400, 1000, false),
            (0o644, 1000, true),
            (0o604, 0, true),
            (0o640, 1000, true),
            // A Kubernetes Secret volume: root:fsGroup 0440.
            (0o440, 0, false),
            (0o640, 0, false),
        ] {
            assert_eq!(super::too_open(mode, owner), open, "{mode:o} uid {owner}");
        }
    }
}
