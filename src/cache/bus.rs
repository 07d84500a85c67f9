//! One cache across replicas: invalidations travel over Redis pub/sub (`<redis.prefix>:cache`).
//!
//! Every invalidating write and every admin purge is published, and every replica drops the
//! same entries on receipt (its own messages carry its replica id and are skipped). Publishing
//! never slows a request: messages go into a bounded queue that one task sends to Redis. A
//! message that cannot be sent (queue full, PUBLISH failed or timed out) leaves a purge owed:
//! the task sends one `all` as soon as Redis takes it, however many were lost. What goes on the wire is what to drop, never who or what was written:
//! the resource prefixes of a write (`/v1/patients`, not the patient's id), `all`, or for a
//! credential purge the key's fingerprint (never the key, never the cache's HMAC id, which is
//! per process anyway); a receiver maps the fingerprint to its own entries through its key
//! store, or drops everything when its store does not know the key. A message on the channel
//! that this replica cannot read (a newer replica's kind, malformed, oversized) counts as `all`:
//! ignoring it could keep data another replica's write made stale.
//!
//! A replica that loses its subscription may have missed invalidations, so when it subscribes
//! again it clears its whole cache (counted); the first subscription clears too, for what was
//! filled before it. It reconnects with backoff and PINGs the
//! subscription now and then, so a silently dead connection is noticed too. Without `redis.url`
//! nothing here runs and nothing changes.

use super::Cache;
use crate::config::RedisConfig;
use crate::credentials::Credentials;
use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Messages waiting to be published; beyond it a message is dropped (and counted), never
/// waited for.
const QUEUE: usize = 1024;
/// Longest message accepted from the channel.
const MAX_MESSAGE: usize = 4096;
/// How often the subscription is PINGed (a dead connection that no RST announced).
const PING_EVERY: Duration = Duration::from_secs(10);
/// Reconnection backoff bounds.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// What to drop, on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "drop", rename_all = "snake_case")]
pub enum Invalidation {
    /// Every entry.
    All,
    /// Every entry (any credential) under these `/v1` prefixes.
    Prefixes {
        /// Path prefixes, each `/v1` or below.
        prefixes: Vec<String>,
    },
    /// Every entry fetched with the key of this fingerprint (`sha256:…`, safe to log).
    Credential {
        /// The key's fingerprint.
        fingerprint: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing replica.
    from: String,
    #[serde(flatten)]
    what: Invalidation,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Invalidations sent to Redis.
    pub published: AtomicU64,
    /// Invalidations from other replicas applied here.
    pub received: AtomicU64,
    /// Invalidations not published (queue full, Redis down); each is covered by a later
    /// `catch_up`.
    pub dropped: AtomicU64,
    /// `all` invalidations published once Redis took messages again after drops.
    pub catch_up: AtomicU64,
    /// Messages from the channel this replica could not read, applied as `all`.
    pub unreadable: AtomicU64,
    /// Whole-cache clears after a lost subscription came back.
    pub resubscribe_clears: AtomicU64,
}

/// What the publishing and subscribing tasks share.
struct Shared {
    id: String,
    caches: Mutex<Vec<Weak<Cache>>>,
    credentials: Arc<Credentials>,
    stats: BusStats,
}

/// The tasks serving one `[redis]`: dropping it stops them.
struct Link {
    cfg: RedisConfig,
    tx: mpsc::Sender<Invalidation>,
    tasks: Arc<Tasks>,
    _stop: oneshot::Sender<()>,
}

/// The cache invalidation bus of this process (built once; [`CacheBus::configure`] follows
/// `[redis]` across reloads).
pub struct CacheBus {
    shared: Arc<Shared>,
    link: ArcSwapOption<Link>,
}

impl CacheBus {
    /// A bus with no Redis yet; `credentials` maps received fingerprints to keys.
    pub fn new(credentials: Arc<Credentials>) -> Arc<CacheBus> {
        Arc::new(CacheBus {
            shared: Arc::new(Shared {
                id: uuid::Uuid::new_v4().simple().to_string(),
                caches: Mutex::default(),
                credentials,
                stats: BusStats::default(),
            }),
            link: ArcSwapOption::empty(),
        })
    }

    /// Starts, restarts (a changed `[redis]`) or stops (no `url`) the tasks. Needs a Tokio
    /// runtime. The caller serialises calls (start-up, then the reloader).
    pub fn configure(&self, cfg: &RedisConfig) {
        let current = self.link.load();
        if current.as_ref().map(|l| &l.cfg) == Some(cfg) || (current.is_none() && cfg.url.is_none())
        {
            return;
        }
        // After another link, the first subscription clears too: messages sent while the
        // links changed over were heard by neither.
        let resume = current.is_some();
        // The old link's tasks stop when it is dropped here.
        self.link.store(cfg.url.as_ref().and_then(|url| {
            let client = redis::Client::open(url.0.as_str()).ok()?;
            Some(Arc::new(start(self.shared.clone(), client, cfg, resume)))
        }));
    }

    /// Whether invalidations from other replicas reach this one now (`None`: no Redis).
    pub fn subscribed(&self) -> Option<bool> {
        (*self.link.load())
            .as_ref()
            .map(|l| l.tasks.up.load(Ordering::Relaxed))
    }

    /// Counters.
    pub fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    /// Receives from now on into `cache` too (every cache a reload builds registers itself).
    pub(super) fn register(&self, cache: &Arc<Cache>) {
        let mut caches = lock(&self.shared.caches);
        caches.retain(|c| c.strong_count() > 0);
        caches.push(Arc::downgrade(cache));
    }

    /// Every cache of this process still in use (the one serving, and older ones that
    /// requests in flight still hold).
    pub(super) fn caches(&self) -> Vec<Arc<Cache>> {
        live_caches(&self.shared)
    }

    /// Queues `what` for the other replicas; never waits.
    pub(super) fn publish(&self, what: Invalidation) {
        if let Some(link) = &*self.link.load()
            && link.tx.try_send(what).is_err()
        {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            link.tasks.owed.store(true, Ordering::Release);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only weak pointers inside: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(shared: Arc<Shared>, client: redis::Client, cfg: &RedisConfig, resume: bool) -> Link {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop, stopped) = oneshot::channel();
    let tasks = Arc::new(Tasks {
        shared,
        client,
        channel: format!("{}:cache", cfg.prefix),
        timeout: cfg.timeout,
        up: AtomicBool::default(),
        owed: AtomicBool::default(),
    });
    tokio::spawn(tasks.clone().publish(rx));
    tokio::spawn(tasks.clone().subscribe(resume, stopped));
    Link {
        cfg: cfg.clone(),
        tx,
        tasks,
        _stop: stop,
    }
}

/// What the publishing and the subscribing task of one link share.
struct Tasks {
    shared: Arc<Shared>,
    client: redis::Client,
    channel: String,
    timeout: Duration,
    /// This link's subscription is up (its own flag: a stopping link cannot set it).
    up: AtomicBool,
    /// A message was lost: one `all` is owed to the other replicas.
    owed: AtomicBool,
}

impl Tasks {
    /// Sends queued invalidations until the link is dropped (its sender with it). After a loss
    /// it first pays the owed `all`, retrying with backoff; messages queued meanwhile are
    /// covered by it.
    async fn publish(self: Arc<Self>, mut rx: mpsc::Receiver<Invalidation>) {
        let mc = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let client = self.client.clone();
        let Ok(mut conn) = redis::aio::ConnectionManager::new_lazy_with_config(client, mc) else {
            return;
        };
        let stats = &self.shared.stats;
        let mut backoff = BACKOFF.0;
        loop {
            // Swapped first: a loss noted while the `all` is on its way owes another.
            if self.owed.swap(false, Ordering::AcqRel) {
                if self.send(&mut conn, Invalidation::All).await {
                    stats.catch_up.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF.0;
                } else {
                    self.owed.store(true, Ordering::Release);
                    if !wait_out(backoff, &mut rx, stats).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            }
            let Some(what) = rx.recv().await else { return };
            if self.send(&mut conn, what).await {
                stats.published.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.owed.store(true, Ordering::Release);
            }
        }
    }

    /// One PUBLISH, bounded by `redis.timeout`; whether Redis took it.
    async fn send(&self, conn: &mut redis::aio::ConnectionManager, what: Invalidation) -> bool {
        let text = serde_json::to_string(&Envelope {
            from: self.shared.id.clone(),
            what,
        })
        .unwrap_or_default();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(text);
        let sent = publish.query_async::<i64>(conn);
        matches!(tokio::time::timeout(self.timeout, sent).await, Ok(Ok(_)))
    }

    /// Keeps one subscription up until `stop` fires, reconnecting with backoff. Every
    /// subscription, the first too, starts by clearing the caches: entries filled before it
    /// (at start-up, during the backoff, under another link) may have missed invalidations.
    /// The first clear is cheap (the cache is nearly empty then); clearing was chosen over
    /// holding fills until subscribed, which would stop caching while Redis is down. Only
    /// the clears after a failed or lost subscription (or, with `resume`, another link) count.
    async fn subscribe(self: Arc<Self>, resume: bool, mut stop: oneshot::Receiver<()>) {
        let channel = self.channel.as_str();
        // Longest a connect-and-subscribe may take.
        let bound = self.timeout.max(Duration::from_secs(1));
        let (mut again, mut backoff) = (resume, BACKOFF.0);
        loop {
            match tokio::time::timeout(bound, subscribe(&self.client, channel)).await {
                Ok(Ok(pubsub)) => {
                    live_caches(&self.shared).iter().for_each(|c| c.purge_all());
                    if again {
                        let clears = &self.shared.stats.resubscribe_clears;
                        clears.fetch_add(1, Ordering::Relaxed);
                    }
                    self.up.store(true, Ordering::Relaxed);
                    tracing::info!(
                        channel,
                        resubscribed = again,
                        "cache invalidations: subscribed; cache cleared"
                    );
                    backoff = BACKOFF.0;
                    if listen(&self.shared, pubsub, &mut stop).await {
                        return;
                    }
                    self.up.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        channel,
                        "cache invalidations: subscription lost; the cache is cleared once it is back"
                    );
                }
                Ok(Err(e)) => not_yet(channel, again, &e),
                Err(_) => not_yet(channel, again, &"timed out"),
            }
            again = true;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }
}

/// A failed attempt: a warning the first time (Redis down at start-up), quietly after that
/// (the lost subscription was warned about).
fn not_yet(channel: &str, retrying: bool, e: &dyn std::fmt::Display) {
    if retrying {
        tracing::debug!(channel, error = %e, "cache invalidations: cannot subscribe yet");
    } else {
        tracing::warn!(
            channel,
            error = %e,
            "cache invalidations: cannot subscribe yet; the cache is cleared once subscribed"
        );
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Applies messages until the subscription fails (false) or `stop` fires (true).
async fn listen(
    shared: &Shared,
    pubsub: redis::aio::PubSub,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(m) => receive(shared, m.get_payload_bytes()),
                None => return false,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return false;
                }
            }
            _ = &mut *stop => return true,
        }
    }
}

/// One message off the channel: our own is skipped; one this replica cannot read (a newer
/// replica's kind, malformed, oversized, a path outside `/v1`) drops everything, since what
/// it meant to drop is unknown.
fn receive(shared: &Shared, payload: &[u8]) {
    let msg = (payload.len() <= MAX_MESSAGE)
        .then(|| serde_json::from_slice::<Envelope>(payload).ok())
        .flatten()
        .filter(|m| well_formed(&m.what));
    let what = match msg {
        Some(m) if m.from == shared.id => return,
        Some(m) => {
            shared.stats.received.fetch_add(1, Ordering::Relaxed);
            m.what
        }
        None => {
            tracing::debug!("cache invalidations: an unreadable message; clearing the cache");
            shared.stats.unreadable.fetch_add(1, Ordering::Relaxed);
            Invalidation::All
        }
    };
    for cache in live_caches(shared) {
        apply(shared, &cache, &what);
    }
}

fn well_formed(what: &Invalidation) -> bool {
    match what {
        Invalidation::Prefixes { prefixes } => {
            prefixes.len() <= 8
                && prefixes
                    .iter()
                    .all(|p| p == "/v1" || (p.starts_with("/v1/") && p.len() <= 256))
        }
        Invalidation::Credential { fingerprint } => fingerprint.len() <= 64,
        Invalidation::All => true,
    }
}

fn live_caches(shared: &Shared) -> Vec<Arc<Cache>> {
    lock(&shared.caches)
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

/// Waits the whole `backoff` before Redis is tried again, dropping (and counting) what is
/// queued meanwhile: the owed `all` covers it. A message must not cut the wait short, or every
/// write during an outage would be another reconnect. False when the channel closed.
async fn wait_out(
    backoff: Duration,
    rx: &mut mpsc::Receiver<Invalidation>,
    stats: &BusStats,
) -> bool {
    let pause = tokio::time::sleep(backoff);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = &mut pause => return true,
            m = rx.recv() => match m {
                Some(_) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                None => return false,
            },
        }
    }
}

/// Drops here what another replica dropped there (never published again).
fn apply(shared: &Shared, cache: &Cache, what: &Invalidation) {
    match what {
        Invalidation::All => cache.purge_all(),
        Invalidation::Prefixes { prefixes } => prefixes.iter().for_each(|p| cache.purge_prefix(p)),
        Invalidation::Credential { fingerprint } => {
            let store = shared.credentials.current();
            let known = store
                .users()
                .find(|(_, c)| &*c.fingerprint == fingerprint.as_str());
            match known {
                Some((_, c)) => cache.purge_credential(cache.id_of(c)),
                // Not a key this replica holds (rotated already, or another store): all of it.
                None => cache.purge_all(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes during an outage do not cut the backoff short (each would be a reconnect).
    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_waited_out_whatever_arrives_meanwhile() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let stats = BusStats::default();
        let start = tokio::time::Instant::now();
        let writes = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(Invalidation::All).await.unwrap();
            }
            tx
        });
        assert!(wait_out(Duration::from_secs(1), &mut rx, &stats).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        drop(writes.await.unwrap());
        assert!(
            !wait_out(Duration::from_secs(1), &mut rx, &stats).await,
            "closed"
        );
    }

    #[test]
    fn the_wire_format_names_what_to_drop_and_nothing_else() {
        let e = Envelope {
            from: "r1".into(),
            what: Invalidation::Prefixes {
                prefixes: vec!["/v1/patients".into()],
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"from":"r1","drop":"prefixes","prefixes":["/v1/patients"]}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.what, e.what);
        let all: Envelope = serde_json::from_str(r#"{"from":"r2","drop":"all"}"#).unwrap();
        assert_eq!(all.what, Invalidation::All);
    }

    #[test]
    fn prefixes_outside_v1_or_too_many_are_not_applied() {
        let p = |v: &[&str]| Invalidation::Prefixes {
            prefixes: v.iter().map(|s| s.to_string()).collect(),
        };
        assert!(well_formed(&p(&["/v1/patients", "/v1"])));
        assert!(!well_formed(&p(&["/admin"])));
        assert!(!well_formed(&p(&["/v1x"])));
        assert!(!well_formed(&p(&["/v1/a"; 9])));
    }
}
