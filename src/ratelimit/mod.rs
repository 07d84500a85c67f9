//! Rate limits, after the cache and before the forwarder (the order is [`crate::stack`]'s).
//!
//! Only requests that will really go to Cliniko get here (cache hits, 401s and 403s were
//! answered further out), so only they spend budget. Three things happen here:
//!
//! 1. **Per-user limit** ([`user_limit`]): the verified user (JWT subject) gets a quota
//!    (default, per group claim value, or per user), so one app cannot take a whole shared
//!    key's budget. Over it: 429 `rate_limited` with `limit: "user"`, no waiting.
//! 2. **Key budget** ([`key_budget`]): a GCRA budget per Cliniko user, keyed by the key's
//!    `cliniko_user` label when the key store has one (keys of one Cliniko user share it), else
//!    by key id. A request whose slot is at most `max_wait` away waits for it; beyond that, or
//!    with `max_waiting` requests already waiting on that budget, 429 with `limit: "key"`.
//!    With `redis.url` the budget lives in Redis ([`redis`]), shared by every replica.
//!    Requests that must wait are admitted by weighted fair queuing across the calling apps
//!    ([`fair`], [`shares`]), not in arrival order.
//! 3. **Cliniko's own 429/503** ([`layer`], asked by the retry layer,
//!    `crate::retry`, which sees each answer): the budget is paused until Cliniko's
//!    `X-RateLimit-Reset` / `Retry-After`, and a GET the retry layer resends gets the first
//!    slot after the pause. With `enabled = false` there is no budget to pause: a resend just
//!    waits Cliniko's wait. Resending itself is not a limit and is not decided here.

pub mod fair;
mod gcra;
pub mod headers;
pub mod key_budget;
pub mod layer;
pub mod redis;
pub mod shares;
pub mod user_limit;

use crate::config::{ConfigError, RateLimitConfig, RedisConfig};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

/// The groups a user's `claim` names (a string, or an array of strings), read in place: no
/// list is built per request.
fn groups_of<'a>(user: &'a crate::auth::User, claim: &str) -> impl Iterator<Item = &'a str> {
    let values = match user.claims.get(claim) {
        Some(v @ serde_json::Value::String(_)) => std::slice::from_ref(v),
        Some(serde_json::Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    values.iter().filter_map(serde_json::Value::as_str)
}

/// Counters for metrics, logs and tests.
#[derive(Debug, Default)]
pub struct RateLimitStats {
    /// Refused by a per-user limit.
    pub refused_user: AtomicU64,
    /// Refused by a key budget.
    pub refused_key: AtomicU64,
    /// Waited for a key-budget slot.
    pub shaped: AtomicU64,
    /// Requests waiting on a key budget now (deciding or shaped).
    pub waiting: AtomicU64,
    /// Decisions that could not ask Redis (timeout, refused, error).
    pub redis_failures: AtomicU64,
    /// Decisions made on the local budget because Redis was down (fail-open).
    pub fail_open: AtomicU64,
    /// Cliniko 429/503 answers that paused a key budget.
    pub upstream_throttled: AtomicU64,
    /// Per app: admitted, waited, refused by a key budget.
    pub apps: crate::metrics::AppMetrics,
}

/// Everything the rate-limit layer shares, built once at start-up.
pub struct RateLimits {
    cfg: RateLimitConfig,
    users: Option<Arc<user_limit::UserLimits>>,
    /// `None` with `enabled = false`: no limits (Cliniko's throttling still counted).
    budget: Option<Arc<key_budget::KeyBudgets>>,
    /// Who queues how on a key budget (rebuilt on every reload: new weights apply at once).
    shares: shares::Shares,
    stats: Arc<RateLimitStats>,
    pauses: watch::Sender<u64>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("key", &self.cfg.key)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Builds the limits (with `enabled = false` none: only the count of Cliniko's 429/503).
    /// Needs a Tokio runtime (Redis). After a reload `prev`'s state carries over: the key
    /// budgets always (a reload must not let a fresh burst through to Cliniko, nor end a
    /// Cliniko pause; a changed `[redis]` gives them a new Redis side), the per-user limits
    /// when `[ratelimit.user]` is unchanged, and the counters. The budgets take a new config in
    /// place: build these last, once nothing else can fail.
    pub fn new(
        cfg: &RateLimitConfig,
        redis: &RedisConfig,
        prev: Option<&Arc<RateLimits>>,
    ) -> Result<Arc<RateLimits>, ConfigError> {
        let prev = prev.map(|p| &**p);
        let stats = prev.map_or_else(Arc::default, |p| p.stats.clone());
        let on = cfg.enabled;
        let users = match prev {
            Some(p) if p.cfg.user == cfg.user && p.users.is_some() => p.users.clone(),
            _ => (cfg.user.enabled).then(|| Arc::new(user_limit::UserLimits::new(&cfg.user))),
        };
        let budget = match prev.and_then(|p| p.budget.clone()) {
            _ if !on => None,
            Some(b) => {
                b.reconfigure(cfg, redis)?;
                Some(b)
            }
            None => Some(Arc::new(key_budget::KeyBudgets::new(
                cfg,
                redis,
                stats.clone(),
            )?)),
        };
        Ok(Arc::new(RateLimits {
            cfg: cfg.clone(),
            users: users.filter(|_| on),
            budget,
            shares: shares::Shares::new(&cfg.shares, &stats.apps),
            stats,
            pauses: watch::Sender::new(0),
        }))
    }

    /// Counters.
    pub fn stats(&self) -> &RateLimitStats {
        &self.stats
    }

    /// Waits until Cliniko has paused key budgets at least `n` times in total (for tests and
    /// tools that must act only once a pause is in force); wrap it in a timeout.
    pub async fn wait_for_pauses(&self, n: u64) {
        let mut rx = self.pauses.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use crate::config::shares::{Class, Share};

    #[tokio::test]
    async fn a_reload_applies_new_weights_and_keeps_the_queues() {
        let mut cfg = RateLimitConfig::default();
        let redis = RedisConfig::default();
        let a = RateLimits::new(&cfg, &redis, None).unwrap();
        cfg.shares.apps.insert(
            "sync".into(),
            Share {
                weight: 7,
                class: Class::Batch,
            },
        );
        let b = RateLimits::new(&cfg, &redis, Some(&a)).unwrap();
        let (qa, qb) = (a.budget.as_ref().unwrap(), b.budget.as_ref().unwrap());
        assert!(
            Arc::ptr_eq(qa, qb),
            "the same budgets: who waits stays queued"
        );
        let user = User {
            id: Arc::from("u"),
            claims: Arc::default(),
            app: Some(Arc::from("sync")),
        };
        let now = b.shares.of(Some(&user));
        assert_eq!((now.weight, now.class), (7, Class::Batch));
        assert_eq!(a.shares.of(Some(&user)).weight, 1, "before the reload");
    }
}
