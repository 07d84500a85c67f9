//! The parts of the stack a config reload may replace (token verification, policy, cache,
//! rate limits, retries, CORS), held as one set behind an atomic pointer, and the service that
//! sends each request through whichever set is current when the request arrives.
//!
//! Why the whole stack is rebuilt rather than each part made swappable inside: a request then
//! sees one consistent configuration from its first layer to its last (never the old policy
//! with the new limits), and the parts themselves stay plain, immutable values. Requests in
//! flight finish on the set they started with; the old set is freed when the last one ends.

use crate::auth::Authenticator;
use crate::body::Body;
use crate::cache::Cache;
use crate::config::{Config, ConfigError};
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::retry::Retries;
use crate::stack::{self, Fixed, GatewayService, Parts};
use arc_swap::ArcSwap;
use http::Request;
use std::sync::Arc;
use tower::ServiceExt;

/// One consistent set of reloadable parts and the stack built from them (read its parts
/// through `Deref`: `live.cache`, `live.authn`).
pub struct Live {
    parts: Parts,
    service: GatewayService,
    /// The config the set was built from: what a reload compares the re-read file with.
    pub(crate) config: Config,
    /// Digest of what its token verifier was built from (`reload::config::auth_identity`;
    /// empty when the config is not from a file, so never reloads): a reload compares it, not
    /// `config`, as a key file rotated in place reads the same through both.
    pub(crate) auth: Vec<u8>,
}

impl std::ops::Deref for Live {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl Live {
    /// Builds the reloadable parts for `cfg` and the stack around them: at start-up from
    /// nothing, at a reload keeping every stateful part of `prev` whose section is unchanged
    /// (the cache's entries, the budgets, the verifier's token cache and JWKS) and carrying
    /// state over into the parts it rebuilds. Nothing is swapped here but the key budgets'
    /// parameters, built last, so a config that fails half-way changes nothing. On a reload a
    /// new verifier's JWKS must answer now: a key set that cannot be fetched is refused rather
    /// than swapped in unable to verify (at start-up the gateway starts not ready instead).
    /// `auth` is the digest of what token verification is built from (see [`Live`]'s).
    /// Returns the set to swap in and the reloadable sections that changed (and were rebuilt).
    pub async fn build(
        fixed: &Fixed,
        cfg: &Config,
        auth: Vec<u8>,
        prev: Option<&Live>,
    ) -> Result<(Live, Vec<&'static str>), ConfigError> {
        let authn = authn_for(fixed, cfg, prev, &auth).await?;
        let cache = cache_for(fixed, cfg, prev);
        // What depends on Redis is rebuilt: the key budgets' shared side here, the cache bus
        // once the new set serves (`CacheBus::configure`, by the caller).
        let ratelimits = match prev {
            Some(c) if c.config.ratelimit == cfg.ratelimit && c.config.redis == cfg.redis => {
                c.ratelimits.clone()
            }
            _ => RateLimits::new(&cfg.ratelimit, &cfg.redis, prev.map(|c| &c.ratelimits))?,
        };
        let changed = prev.map_or_else(Vec::new, |p| {
            let o = &p.config;
            [
                ("auth", p.auth != auth),
                ("policy", o.policy != cfg.policy),
                ("cors", o.cors != cfg.cors),
                ("redis", o.redis != cfg.redis),
                ("cache", o.cache != cfg.cache),
                ("ratelimit", o.ratelimit != cfg.ratelimit),
                (
                    "upstream.retries",
                    o.upstream.retries != cfg.upstream.retries,
                ),
            ]
            .into_iter()
            .filter_map(|(name, changed)| changed.then_some(name))
            .collect()
        });
        // Cheap and stateless, always rebuilt, so a swap never shares them across configs.
        let parts = Parts {
            authn,
            policy: Arc::new(Policy::new(&cfg.policy)),
            cache,
            retries: Retries::new(
                &cfg.upstream.retries,
                cfg.ratelimit.max_wait,
                ratelimits.clone(),
                prev.map(|c| &*c.retries),
            ),
            ratelimits,
            cors: crate::cors::Cors::new(&cfg.cors),
        };
        let service = stack::build(fixed, &parts);
        let config = cfg.clone();
        let live = Live {
            parts,
            service,
            config,
            auth,
        };
        Ok((live, changed))
    }
}

/// The token verifier: the serving one when verification did not change, else a new one
/// (whose key set must answer now on a reload).
async fn authn_for(
    fixed: &Fixed,
    cfg: &Config,
    prev: Option<&Live>,
    auth: &[u8],
) -> Result<Arc<Authenticator>, ConfigError> {
    if let Some(live) = prev.filter(|p| p.auth == auth) {
        return Ok(live.authn.clone());
    }
    // Counters carried on from the serving verifier; PEM files read off the async threads.
    let before = prev.map(|live| live.authn.clone());
    let (auth, http) = (cfg.auth.clone(), fixed.http.clone());
    let authn =
        tokio::task::spawn_blocking(move || Authenticator::new(&auth, http, before.as_deref()))
            .await
            .map_err(|_| ConfigError::new("auth", "the build task failed", "try again"))??;
    authn.start().await;
    if prev.is_some() && !authn.ready() {
        return Err(ConfigError::new(
            "auth.jwks.url",
            "the new key set could not be fetched",
            "check the URL and that the identity provider answers; the previous keys keep serving",
        ));
    }
    Ok(authn)
}

/// The cache: the serving one (with its entries) when `[cache]` did not change, else a new one.
fn cache_for(fixed: &Fixed, cfg: &Config, prev: Option<&Live>) -> Option<Arc<Cache>> {
    match prev {
        Some(c) if c.config.cache == cfg.cache => c.cache.clone(),
        _ => {
            // New rules apply to every answer from now on: entries stored under the old
            // TTLs go.
            // The gzip copy only pays when callers can be sent it: with [compression] off
            // every hit would decode it.
            let compress = cfg.cache.compress && fixed.compression.is_some();
            Cache::new(
                &crate::config::CacheConfig {
                    compress,
                    ..cfg.cache.clone()
                },
                fixed.cache_stats.clone(),
                Some(fixed.bus.clone()),
            )
        }
    }
}

/// The current set, shared by the server, the reloader, the admin routes and the metrics.
pub type Shared = Arc<ArcSwap<Live>>;

/// The gateway as the server sees it: each request goes through the set current at arrival.
pub fn current(live: Shared) -> impl crate::server::Served {
    tower::service_fn(move |req: Request<Body>| live.load().service.clone().oneshot(req))
}
