//! Figures other parts already keep as plain atomics (cache, rate limits, JWKS), turned into
//! metrics when Prometheus scrapes, so their hot paths carry no metrics code.

use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::ratelimit::RateLimits;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The parts whose own counters are exported.
pub struct Sources {
    /// The GET cache, when enabled.
    pub cache: Option<Arc<Cache>>,
    /// The rate limits, when enabled.
    pub ratelimits: Option<Arc<RateLimits>>,
    /// JWT verification (JWKS fetch counters).
    pub authn: Arc<Authenticator>,
    cache_bytes: Gauge,
    cache_entries: Gauge,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("cache", &self.cache.is_some())
            .field("ratelimits", &self.ratelimits.is_some())
            .finish_non_exhaustive()
    }
}

impl Sources {
    /// Exports these parts' counters.
    pub fn new(
        cache: Option<Arc<Cache>>,
        ratelimits: Option<Arc<RateLimits>>,
        authn: Arc<Authenticator>,
    ) -> Sources {
        Sources {
            cache,
            ratelimits,
            authn,
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
        }
    }

    pub(super) fn register_gauges(&self, r: &mut Registry) {
        if self.cache.is_some() {
            r.register(
                "cache_weighted_bytes",
                "Bytes held by the GET cache (bodies, headers and keys)",
                self.cache_bytes.clone(),
            );
            r.register(
                "cache_entries",
                "Entries held by the GET cache",
                self.cache_entries.clone(),
            );
        }
    }

    /// moka's sizes lag until its maintenance runs, which is async: done before encoding.
    pub(super) async fn refresh(&self) {
        if let Some(c) = &self.cache {
            let bytes = c.weighted_size().await;
            let entries = c.entry_count().await;
            self.cache_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.cache_entries
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
        }
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One counter family with a single label.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        let labels = [(label, *v)];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(n).encode(m)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(c) = &self.cache {
            let s = c.stats();
            family(
                &mut enc,
                "cache_lookups",
                "GET/HEAD cache outcomes (hit, miss, revalidated, bypass)",
                "result",
                &[
                    ("hit", load(&s.hits)),
                    ("miss", load(&s.misses)),
                    ("revalidated", load(&s.revalidated)),
                    ("bypass", load(&s.bypasses)),
                ],
            )?;
            counter(
                &mut enc,
                "cache_evictions",
                "Entries evicted to stay under cache.capacity_bytes",
                load(&s.evictions),
            )?;
        }
        if let Some(r) = &self.ratelimits {
            let s = r.stats();
            family(
                &mut enc,
                "ratelimit_refusals",
                "Requests refused with 429 by limit (user, key)",
                "limit",
                &[
                    ("user", load(&s.refused_user)),
                    ("key", load(&s.refused_key)),
                ],
            )?;
            family(
                &mut enc,
                "ratelimit_waits",
                "Requests that waited for a slot (shaping) by limit",
                "limit",
                &[("key", load(&s.shaped))],
            )?;
            counter(
                &mut enc,
                "ratelimit_redis_failures",
                "Key-budget decisions that could not ask Redis",
                load(&s.redis_failures),
            )?;
            counter(
                &mut enc,
                "ratelimit_fail_open",
                "Key-budget decisions made on the local budget while Redis was down",
                load(&s.fail_open),
            )?;
            counter(
                &mut enc,
                "upstream_throttled",
                "Cliniko 429/503 answers that paused a key budget",
                load(&s.upstream_throttled),
            )?;
            family(
                &mut enc,
                "upstream_retries",
                "Requests resent to Cliniko, by reason (throttled, connect)",
                "reason",
                &[
                    ("throttled", load(&s.upstream_retries)),
                    ("connect", load(&s.connect_retries)),
                ],
            )?;
        }
        family(
            &mut enc,
            "jwks_refreshes",
            "JWKS fetches by result (ok, failed)",
            "result",
            &[
                ("ok", self.authn.jwks_fetches_ok()),
                ("failed", self.authn.jwks_fetches_failed()),
            ],
        )
    }
}
