//! The live parts' own counters (cache, rate limits, retries, token verification) as metrics,
//! read at scrape time from whichever set is serving then, so the figures follow a reload.

use crate::cache::{CacheBus, CacheStats, bus::BusStats};
use crate::inflight::InFlight;
use crate::live::Shared;
use crate::metrics::{Source, figures};
use crate::ratelimit::RateLimitStats;
use futures_util::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The parts whose own counters are exported: always those of the set serving now, so the
/// figures follow a config reload.
pub struct Sources {
    live: Shared,
    /// The cache's bytes and entries as of the last [`Source::refresh`].
    cache_bytes: AtomicU64,
    cache_entries: AtomicU64,
    inflight: Arc<InFlight>,
    bus: Arc<CacheBus>,
    /// Set once shutdown has begun (with the serving verifier, what `ready` reads).
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    /// Exports the counters of whatever set `live` holds when scraped, and `ready` (as
    /// `/readyz` answers: see [`crate::guard::ready`]).
    pub fn new(
        live: Shared,
        inflight: Arc<InFlight>,
        bus: Arc<CacheBus>,
        draining: Arc<AtomicBool>,
    ) -> Sources {
        Sources {
            live,
            inflight,
            bus,
            draining,
            cache_bytes: AtomicU64::default(),
            cache_entries: AtomicU64::default(),
        }
    }
}

impl Source for Sources {
    /// moka's sizes lag until its maintenance runs, which is async: done before encoding.
    fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let live = self.live.load_full();
            let (bytes, entries) = match &live.cache {
                Some(c) => (c.weighted_size().await, c.entry_count().await),
                None => (0, 0),
            };
            self.cache_bytes.store(bytes, Ordering::Relaxed);
            self.cache_entries.store(entries, Ordering::Relaxed);
        })
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The cache bus's figures (only with `[redis]`: without it there is nothing to watch).
fn bus(enc: &mut DescriptorEncoder, s: &BusStats, up: bool) -> Result<(), std::fmt::Error> {
    figures!(enc;
        family "cache_invalidations",
            "Cache invalidations shared over Redis: published to the other replicas, received \
             from them, dropped (queue full or Redis down), catch_up (one `all` sent once Redis \
             took messages again after drops), unreadable (a message this replica could not \
             read, applied as `all`)",
            "event", &[
                ("published", load(&s.published)),
                ("received", load(&s.received)),
                ("dropped", load(&s.dropped)),
                ("catch_up", load(&s.catch_up)),
                ("unreadable", load(&s.unreadable)),
            ];
        gauge "cache_invalidation_subscribed",
            "1 while this replica hears the other replicas' cache invalidations",
            u64::from(up);
        counter "cache_resubscribe_clears",
            "Whole-cache clears after the invalidation subscription came back (invalidations \
             may have been missed meanwhile)",
            load(&s.resubscribe_clears);
    );
    Ok(())
}

/// The cache's lookups and evictions.
fn cache(enc: &mut DescriptorEncoder, s: &CacheStats) -> Result<(), std::fmt::Error> {
    figures!(enc;
        family "cache_lookups", "GET/HEAD cache outcomes (hit, miss, revalidated, bypass)",
            "result", &[
                ("hit", load(&s.hits)),
                ("miss", load(&s.misses)),
                ("revalidated", load(&s.revalidated)),
                ("bypass", load(&s.bypasses)),
            ];
        counter "cache_evictions", "Entries evicted to stay under cache.capacity_bytes",
            load(&s.evictions);
    );
    Ok(())
}

/// The rate limits' refusals, waits, per-app shares, Redis health and Cliniko's throttling.
fn ratelimits(enc: &mut DescriptorEncoder, s: &RateLimitStats) -> Result<(), std::fmt::Error> {
    figures!(enc;
        family "ratelimit_refusals", "Requests refused with 429 by limit (user, key)",
            "limit", &[("user", load(&s.refused_user)), ("key", load(&s.refused_key))];
        family "ratelimit_waits", "Requests that waited for a slot (shaping) by limit",
            "limit", &[("key", load(&s.shaped))];
    );
    s.apps.encode(enc)?;
    figures!(enc;
        gauge "ratelimit_waiting", "Requests waiting on a key budget now", load(&s.waiting);
        counter "ratelimit_redis_failures", "Key-budget decisions that could not ask Redis",
            load(&s.redis_failures);
        counter "ratelimit_fail_open",
            "Key-budget decisions made on the local budget while Redis was down",
            load(&s.fail_open);
        counter "upstream_throttled", "Cliniko 429/503 answers that paused a key budget",
            load(&s.upstream_throttled);
    );
    Ok(())
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (live, enc) = (self.live.load(), &mut enc);
        figures!(enc;
            gauge "cache_weighted_bytes", "Bytes held by the GET cache (bodies, headers and keys)",
                load(&self.cache_bytes);
            gauge "cache_entries", "Entries held by the GET cache", load(&self.cache_entries);
        );
        if let Some(c) = &live.cache {
            cache(enc, c.stats())?;
        }
        if let Some(up) = self.bus.subscribed() {
            bus(enc, self.bus.stats(), up)?;
        }
        ratelimits(enc, live.ratelimits.stats())?;
        let (r, auth) = (live.retries.stats(), &live.authn.counts);
        figures!(enc;
            family "upstream_retries",
                "Requests resent to Cliniko, by reason (throttled, connect, stale)",
                "reason", &[
                    ("throttled", load(&r.throttled)),
                    ("connect", load(&r.connect)),
                    ("stale", load(&r.stale)),
                ];
            counter "upstream_in_flight_refusals",
                "Requests refused with 429 too_many_in_flight: the user already had \
                 upstream.max_in_flight_per_user requests to Cliniko whose answers were unread",
                self.inflight.refused();
            gauge "upstream_in_flight",
                "Requests to Cliniko whose answers have not yet been fully delivered or dropped",
                self.inflight.in_flight();
            counter "auth_cliniko_keys_refused",
                "Requests refused because they carried a Cliniko API key instead of a JWT (rotate \
                 that key: the warning log line has its fingerprint)",
                load(&auth.cliniko_keys_refused);
            family "jwks_refreshes", "JWKS fetches by result (ok, failed)",
                "result", &[("ok", load(&auth.ok)), ("failed", load(&auth.failed))];
            gauge "ready", "1 while /readyz answers 200", u64::from(crate::guard::ready(&self.draining, &live.authn));
        );
        Ok(())
    }
}
