//! The in-memory GET cache, after credentials and before rate limits.
//!
//! Patient data lives here, so isolation comes first: every entry is keyed by a keyed hash of
//! the Cliniko API key that fetched it (HMAC-SHA256 under a per-process random key, never the
//! key itself), plus path, query and `Accept`. Two users sharing one key share entries; users
//! with different keys never do. Only 200 answers to GET on configured paths are stored, with
//! links already rewritten, as one gzip copy (`compress`; with the decoded one beside it once
//! callers that do not take gzip have read it twice), bounded in bytes of memory (not
//! entries; see [`Entry::weight`]). Concurrent misses for one key send
//! one request upstream. A successful write drops every credential's entries of that resource
//! type, and an epoch counter stops a fill that raced with a write from storing stale data.
//! With Redis, writes and admin purges reach every replica's cache ([`bus`]).

pub mod bus;
mod entry;
mod flight;
mod layer;

pub use bus::{CacheBus, Invalidation};
pub use entry::{CacheKey, CredentialId, Entry};

use crate::config::{CacheConfig, CacheRule};
// Paths here never hold a query: keys are matched by their path part (`CacheKey::path`).
use crate::policy::under;
use aws_lc_rs::hmac;
use entry::Lifetime;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Counters for metrics and tests.
#[derive(Default, Debug)]
pub struct CacheStats {
    /// Served from memory.
    pub hits: AtomicU64,
    /// Fetched upstream (stored or not).
    pub misses: AtomicU64,
    /// Stale entries confirmed by a 304.
    pub revalidated: AtomicU64,
    /// Requests the cache did not handle (path not enabled, `no-store`).
    pub bypasses: AtomicU64,
    /// Entries evicted to stay under the byte bound.
    pub evictions: AtomicU64,
}

/// The cache: storage, rules, single flight and the write epoch. Built once at start-up.
pub struct Cache {
    store: moka::future::Cache<CacheKey, Arc<Entry>>,
    rules: Vec<CacheRule>,
    max_entry: usize,
    /// Store bodies as gzip.
    compress: bool,
    /// Bytes of answers being read in to be stored, and the most there may be: the slice of
    /// the capacity the store leaves for them (a permit per byte, taken with [`flight::take`]),
    /// so fills in flight stay inside the bound.
    filling: Semaphore,
    hmac: &'static hmac::Key,
    flights: flight::Flights,
    epoch: AtomicU64,
    /// Purges running now. The epoch's parity cannot tell: two overlapping purges leave it
    /// even while both run.
    purges: AtomicU64,
    stats: Arc<CacheStats>,
    /// Carries this cache's invalidations to the other replicas and theirs to it, and knows
    /// every cache of this process still in use (see [`Cache::invalidate_after_write`]).
    bus: Option<Arc<CacheBus>>,
}

impl Cache {
    /// Builds an empty cache, or `None` when disabled, counting into `stats` (the process's,
    /// shared by every cache a reload builds, so the counters carry on) and sharing
    /// invalidations over `bus`.
    pub fn new(
        cfg: &CacheConfig,
        stats: Arc<CacheStats>,
        bus: Option<Arc<CacheBus>>,
    ) -> Option<Arc<Cache>> {
        if !cfg.enabled {
            return None;
        }
        let on_evict = stats.clone();
        // The store gets 15/16 of the bound; the rest is for answers still being read in.
        let reserve = cfg.capacity_bytes / 16;
        let store = moka::future::Cache::builder()
            .max_capacity(cfg.capacity_bytes - reserve)
            .weigher(|k: &CacheKey, v: &Arc<Entry>| v.weight(k))
            .expire_after(Lifetime(cfg.revalidate_window))
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    on_evict.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        let mut rules = cfg.rules.clone();
        // Longest prefix first, so the most specific rule wins.
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let hmac = process_key()?;
        let cache = Arc::new(Cache {
            store,
            rules,
            max_entry: usize::try_from(cfg.max_entry_bytes).unwrap_or(usize::MAX),
            compress: cfg.compress,
            filling: Semaphore::new(
                usize::try_from(reserve)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            ),
            hmac,
            flights: flight::Flights::default(),
            epoch: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            stats,
            bus,
        });
        if let Some(bus) = &cache.bus {
            bus.register(&cache);
        }
        Some(cache)
    }

    /// The TTL for `path`, or `None` when it is not cached.
    ///
    /// A rule covers its prefix and one segment below it (`/v1/patients`, `/v1/patients/7`),
    /// not deeper paths: `/v1/patients/7/treatment_notes` or
    /// `/v1/practitioners/5/appointments` are other resources, changed by writes elsewhere,
    /// and are cached only if a rule names them.
    pub fn ttl_for(&self, path: &str) -> Option<Duration> {
        self.rules
            .iter()
            .find(|r| {
                under(path, &r.prefix)
                    && path[r.prefix.len()..]
                        .trim_start_matches('/')
                        .split('/')
                        .count()
                        <= 1
            })
            .map(|r| r.ttl)
            .filter(|t| !t.is_zero())
    }

    /// The keyed hash that stands for an API key in cache keys.
    pub fn credential_id(&self, api_key: &str) -> CredentialId {
        let tag = hmac::sign(self.hmac, api_key.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(tag.as_ref());
        CredentialId(id)
    }

    /// [`Cache::credential_id`] of a credential's key, worked out once per credential (the
    /// hash is the same for every cache of the process), not on every request.
    pub fn id_of(&self, cred: &crate::credentials::Credential) -> CredentialId {
        *cred
            .cache_id
            .get_or_init(|| self.credential_id(cred.key.expose()))
    }

    /// Counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes currently held (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.store.run_pending_tasks().await;
        self.store.weighted_size()
    }

    /// Number of entries (after pending maintenance).
    pub async fn entry_count(&self) -> u64 {
        self.store.run_pending_tasks().await;
        self.store.entry_count()
    }

    /// Runs `drop` between two steps of the epoch: a fill begun before it ends sees the epoch
    /// move, and `purges` tells a hit that a purge is under way (the entry it read may be one
    /// being dropped, so it must not be stored again; see `layer::keep_plain`).
    fn purging(&self, drop: impl FnOnce()) {
        self.purges.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.purges.fetch_sub(1, Ordering::AcqRel);
    }

    /// A purge is under way, or one ran since `epoch` was read.
    fn purged_since(&self, epoch: u64) -> bool {
        self.purges.load(Ordering::Acquire) > 0 || self.epoch.load(Ordering::Acquire) != epoch
    }

    /// Drops every entry.
    pub fn purge_all(&self) {
        self.purging(|| self.store.invalidate_all());
    }

    /// Drops every entry fetched with one API key.
    pub fn purge_credential(&self, id: CredentialId) {
        self.purging(|| {
            let _ = self
                .store
                .invalidate_entries_if(move |k, _| k.credential == id);
        });
    }

    /// Drops every entry (any credential) whose path is `prefix` or below it; nothing at all
    /// (not even the epoch moves, which would discard unrelated fills in flight) when no rule
    /// can hold entries there.
    pub fn purge_prefix(&self, prefix: &str) {
        let prefix = prefix.trim_end_matches('/').to_string();
        if !self.may_hold(&prefix) {
            return;
        }
        self.purging(|| {
            let _ = self
                .store
                .invalidate_entries_if(move |k, _| under(k.path(), &prefix));
        });
    }

    /// After a successful write: drop the resource type for every credential, since other keys
    /// may have cached the same record (e.g. PATCH /v1/patients/7 drops /v1/patients…), here
    /// and on every other replica.
    /// Every write's scope is published, even one no rule here caches: during a rollout that
    /// changes `[cache] rules`, another replica may cache what this one does not. Each cache
    /// (here and there) drops only what its own rules can hold, so nothing else moves.
    pub fn invalidate_after_write(&self, path: &str) {
        let prefixes = write_scope(path);
        // A reload may have put another cache in this one's place while the write was in
        // flight: every cache of this process still in use drops them (the bus knows them
        // all; this one among them), or a fill on the new stack could keep pre-write data.
        let purge = |cache: &Cache| prefixes.iter().for_each(|p| cache.purge_prefix(p));
        match &self.bus {
            Some(bus) => bus.caches().iter().for_each(|c| purge(c)),
            None => purge(self),
        }
        if !prefixes.is_empty() {
            self.publish(Invalidation::Prefixes { prefixes });
        }
    }

    /// Whether a rule with a TTL can hold entries under `prefix`: its prefix is `prefix`,
    /// above it or below it (an entry lies under both its rule's prefix and the purged one).
    fn may_hold(&self, prefix: &str) -> bool {
        self.rules
            .iter()
            .any(|r| !r.ttl.is_zero() && (under(prefix, &r.prefix) || under(&r.prefix, prefix)))
    }

    /// Tells the other replicas to drop what this one dropped (the `purge_*` methods act here
    /// only); a no-op without Redis. Never waits.
    pub fn publish(&self, what: Invalidation) {
        if let Some(bus) = &self.bus {
            bus.publish(what);
        }
    }
}

/// The process's random key for credential ids: made at first use, never stored or shown, the
/// same for every cache a reload builds. `None` only if the system's RNG failed.
fn process_key() -> Option<&'static hmac::Key> {
    static KEY: std::sync::OnceLock<Option<hmac::Key>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()
    })
    .as_ref()
}

/// The cached paths a write to `path` can make stale.
fn write_scope(path: &str) -> Vec<String> {
    let Some(resource) = path
        .strip_prefix("/v1/")
        .and_then(|p| p.split(['/', '?']).next())
        .filter(|r| !r.is_empty())
    else {
        return vec![];
    };
    let mut scope = vec![format!("/v1/{resource}")];
    // The legacy `/appointments` union shows every kind of appointment.
    if matches!(
        resource,
        "individual_appointments" | "group_appointments" | "attendees" | "unavailable_blocks"
    ) {
        scope.push("/v1/appointments".into());
        scope.push("/v1/bookings".into());
    }
    // Patients appear inside appointment and attendee answers only as links, which do not change.
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_whole_segments_and_the_longest_wins() {
        let mut cfg = CacheConfig::default();
        cfg.rules.push(CacheRule {
            prefix: "/v1/patients/export".into(),
            ttl: Duration::ZERO,
        });
        let c = Cache::new(&cfg, Arc::default(), None).unwrap();
        assert_eq!(c.ttl_for("/v1/patients"), Some(Duration::from_secs(10)));
        assert_eq!(c.ttl_for("/v1/patients/7"), Some(Duration::from_secs(10)));
        assert_eq!(c.ttl_for("/v1/patientsx"), None);
        assert_eq!(c.ttl_for("/v1/patients/export"), None);
        assert_eq!(
            c.ttl_for("/v1/practitioners/1"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(c.ttl_for("/v1/invoices"), None);
        // Nested resources are not their parent's.
        assert_eq!(c.ttl_for("/v1/patients/7/treatment_notes"), None);
        assert_eq!(c.ttl_for("/v1/patients/7/attachment_presigned_post"), None);
        assert_eq!(c.ttl_for("/v1/practitioners/5/appointments"), None);
        assert_eq!(
            c.ttl_for("/v1/businesses/1/practitioners/2/appointment_types/3/available_times"),
            None
        );
    }

    #[test]
    fn credential_ids_are_keyed_and_distinct() {
        let c = Cache::new(&CacheConfig::default(), Arc::default(), None).unwrap();
        let d = Cache::new(&CacheConfig::default(), Arc::default(), None).unwrap();
        assert_eq!(c.credential_id("k-au1"), c.credential_id("k-au1"));
        assert_ne!(c.credential_id("k-au1"), c.credential_id("j-au1"));
        // One key per process, so a credential's id can be kept across reloads.
        assert_eq!(c.credential_id("k-au1"), d.credential_id("k-au1"));
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"k-au1");
        assert_ne!(
            c.credential_id("k-au1").0,
            hash.as_ref(),
            "keyed, not a plain hash"
        );
        let k = crate::credentials::Credential::new(
            crate::credentials::ApiKey::new("k-au1".into()),
            "k",
            None,
        )
        .unwrap();
        assert_eq!(d.id_of(&k), c.credential_id("k-au1"));
        assert_eq!(c.id_of(&k), c.credential_id("k-au1"), "memo");
    }

    #[test]
    fn writes_invalidate_their_resource_type() {
        assert_eq!(write_scope("/v1/patients/7"), vec!["/v1/patients"]);
        assert_eq!(write_scope("/v1/patients/7/archive"), vec!["/v1/patients"]);
        assert!(
            write_scope("/v1/individual_appointments/3/cancel")
                .contains(&"/v1/appointments".to_string())
        );
        assert!(write_scope("/v1").is_empty());
        assert!(!under("/v1/patients_x", "/v1/patients"));
    }

    #[test]
    fn only_prefixes_a_rule_can_hold_are_purged() {
        let c = Cache::new(&CacheConfig::default(), Arc::default(), None).unwrap();
        assert!(c.may_hold("/v1/patients"));
        assert!(c.may_hold("/v1"), "above a rule");
        assert!(c.may_hold("/v1/patients/7"), "below a rule");
        assert!(!c.may_hold("/v1/invoices"));
        assert!(!c.may_hold("/v1/patients_x"));
        c.purge_prefix("/v1/invoices");
        assert_eq!(
            c.epoch.load(Ordering::Acquire),
            0,
            "fills in flight are kept"
        );
        c.purge_prefix("/v1/patients/");
        assert_eq!(
            c.epoch.load(Ordering::Acquire),
            2,
            "moved, and even once done"
        );
    }
}
