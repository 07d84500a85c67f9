//! Step 5 of the journey, after the cache and before the forwarder: rate limits.
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
//!    With `redis_url` the budget lives in Redis ([`redis`]), shared by every replica.
//! 3. **Cliniko's own 429/503** and connection failures ([`layer`]): the budget is paused
//!    until Cliniko's `X-RateLimit-Reset` / `Retry-After`, bodiless GET/HEAD are retried once
//!    when that is within `max_wait`, and connect failures of bodiless requests are retried
//!    with jittered backoff. Nothing with a body is ever resent.

mod gcra;
pub mod headers;
pub mod key_budget;
pub mod layer;
pub mod redis;
pub mod user_limit;

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::watch;

fn key_budgets(
    cfg: &RateLimitConfig,
    stats: Arc<RateLimitStats>,
    prev: Option<&key_budget::KeyBudgets>,
) -> Result<Arc<key_budget::KeyBudgets>, ConfigError> {
    let shared = match &cfg.redis_url {
        Some(url) => Some(redis::SharedBudget::new(&url.0, cfg)?),
        None => None,
    };
    Ok(Arc::new(key_budget::KeyBudgets::new(
        cfg, shared, stats, prev,
    )))
}

fn user_limits(cfg: &RateLimitConfig) -> Option<Arc<user_limit::UserLimits>> {
    cfg.user
        .enabled
        .then(|| Arc::new(user_limit::UserLimits::new(&cfg.user)))
}

/// Whether two configs give the same key budgets (everything but the per-user part and the
/// connect retries, which the budgets do not hold).
fn same_budget(a: &RateLimitConfig, b: &RateLimitConfig) -> bool {
    let budget_part = |c: &RateLimitConfig| RateLimitConfig {
        user: UserLimitConfig::default(),
        connect_retries: 0,
        redis_url: None,
        ..c.clone()
    };
    let url = |c: &RateLimitConfig| c.redis_url.as_ref().map(|u| u.0.clone());
    url(a) == url(b) && crate::config::same(&budget_part(a), &budget_part(b))
}

/// `[ratelimit]`: every limit the gateway keeps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Master switch; off means no limits, no upstream-429 handling and no retries.
    pub enabled: bool,
    /// The budget per Cliniko user (all replicas together when `redis_url` is set).
    pub key: Quota,
    /// The limit per verified user.
    pub user: UserLimitConfig,
    /// Longest a request waits for a key-budget slot (or a Cliniko pause) instead of a 429.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Most requests waiting on one key budget at once (per replica); beyond it, 429.
    pub max_waiting: usize,
    /// Replicas sharing each key without Redis: the local budget is `key` divided by this.
    pub replicas: u32,
    /// `redis://[:password@]host:port[/db]`: share the key budget through Redis.
    pub redis_url: Option<RedisUrl>,
    /// Longest one Redis decision may take before Redis counts as down.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// What happens while Redis is down: `open` (local budget) or `closed` (503).
    pub redis_failure: RedisFailure,
    /// Prefix of every Redis key the gateway writes.
    pub redis_prefix: String,
    /// Retries of a bodiless request whose connection to Cliniko failed before it was sent.
    pub connect_retries: u32,
}

/// A Redis URL; a password in it never shows in `Debug` or in `check-config`'s output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl RedisUrl {
    /// The URL with any `user:password@` replaced.
    pub fn redacted(&self) -> String {
        match (self.0.split_once("://"), self.0.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://[REDACTED]{}", &self.0[at..]),
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// A GCRA quota: `rate` requests per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per period.
    pub rate: u32,
    /// The period `rate` is counted over.
    #[serde(default = "minute", with = "humantime_serde")]
    pub period: Duration,
    /// Requests allowed back to back after a quiet spell.
    pub burst: u32,
}

impl Quota {
    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / self.rate.max(1)
    }

    /// The same quota shared by `n` replicas: rate and burst divided (at least 1).
    pub fn divided(&self, n: u32) -> Quota {
        let n = n.max(1);
        Quota {
            rate: (self.rate / n).max(1),
            period: self.period,
            burst: (self.burst / n).max(1),
        }
    }
}

/// `[ratelimit.user]`: the per-user limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserLimitConfig {
    /// Switch for the per-user limit alone.
    pub enabled: bool,
    /// The quota of a user with no group or user override.
    pub default: Quota,
    /// The JWT claim holding the caller's groups (a string or an array of strings).
    pub group_claim: String,
    /// Quota per group name; a user in several groups gets the most generous one.
    pub groups: BTreeMap<String, Quota>,
    /// Quota per user (the configured user claim's value); wins over groups.
    pub users: BTreeMap<String, Quota>,
}

/// What to do when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Keep serving on the local budget (`key` / `replicas`), warn and count.
    Open,
    /// Answer 503 `rate_limiter_unavailable`.
    Closed,
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            // Cliniko allows 200/min per Cliniko user; stay a little under it.
            key: Quota {
                rate: 190,
                period: minute(),
                burst: 10,
            },
            user: UserLimitConfig::default(),
            max_wait: Duration::from_secs(2),
            max_waiting: 100,
            replicas: 1,
            redis_url: None,
            redis_timeout: Duration::from_millis(100),
            redis_failure: RedisFailure::Open,
            redis_prefix: "cliniko-gateway".into(),
            connect_retries: 2,
        }
    }
}

impl Default for UserLimitConfig {
    fn default() -> Self {
        UserLimitConfig {
            enabled: true,
            // About two thirds of a key's budget: one app alone cannot starve the others.
            default: Quota {
                rate: 120,
                period: minute(),
                burst: 20,
            },
            group_claim: "groups".into(),
            groups: BTreeMap::new(),
            users: BTreeMap::new(),
        }
    }
}

fn err(field: &str, problem: &str, fix: &str) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

fn check_quota(field: &str, q: &Quota) -> Result<(), ConfigError> {
    if q.rate == 0 || q.burst == 0 {
        return Err(err(
            field,
            "rate and burst must be at least 1",
            "write it like { rate = 190, period = \"1m\", burst = 10 }",
        ));
    }
    if q.period.is_zero() || q.interval() < Duration::from_micros(1) {
        return Err(err(
            field,
            "period must be longer than zero and at least 1µs per request",
            "use e.g. period = \"1m\"",
        ));
    }
    Ok(())
}

/// The `[ratelimit]` rules the types cannot express; called from the config validator.
pub fn validate(c: &RateLimitConfig) -> Result<(), ConfigError> {
    check_quota("ratelimit.key", &c.key)?;
    check_quota("ratelimit.user.default", &c.user.default)?;
    for (name, q) in &c.user.groups {
        check_quota(&format!("ratelimit.user.groups.{name}"), q)?;
    }
    for (name, q) in &c.user.users {
        check_quota(&format!("ratelimit.user.users.{name}"), q)?;
    }
    if c.user.group_claim.is_empty() {
        return Err(err(
            "ratelimit.user.group_claim",
            "is empty",
            "name the JWT claim holding groups, e.g. \"groups\"",
        ));
    }
    if c.max_wait > Duration::from_secs(60) {
        return Err(err(
            "ratelimit.max_wait",
            "longer than a minute",
            "keep it short (default 2s): callers are waiting",
        ));
    }
    if c.replicas == 0 {
        return Err(err("ratelimit.replicas", "must be at least 1", "use 1"));
    }
    if c.connect_retries > 5 {
        return Err(err(
            "ratelimit.connect_retries",
            "more than 5",
            "use 0 to 5",
        ));
    }
    if c.redis_timeout.is_zero() || c.redis_timeout > Duration::from_secs(5) {
        return Err(err(
            "ratelimit.redis_timeout",
            "must be between 1ms and 5s",
            "use e.g. \"100ms\"",
        ));
    }
    if let Some(RedisUrl(url)) = &c.redis_url
        && (!url.starts_with("redis://") || ::redis::Client::open(url.as_str()).is_err())
    {
        return Err(err(
            "ratelimit.redis_url",
            "not a redis:// URL",
            "write it like redis://127.0.0.1:6379/0",
        ));
    }
    Ok(())
}

/// Which limit refused a request, and what the caller should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `user` or `key`.
    pub limit: &'static str,
    /// Whole seconds until a retry may succeed (at least 1).
    pub retry_after_secs: u64,
    /// The refusing quota's requests per window.
    pub quota: u32,
    /// The refusing quota's window in whole seconds (at least 1).
    pub window_secs: u64,
}

impl Refusal {
    /// A refusal by `quota` whose next slot is `wait` away.
    pub fn new(limit: &'static str, quota: &Quota, wait: Duration) -> Refusal {
        Refusal {
            limit,
            retry_after_secs: ceil_secs(wait),
            quota: quota.rate,
            window_secs: ceil_secs(quota.period),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.limit == "user" {
            "the per-user rate limit for this caller"
        } else {
            "the shared budget of this Cliniko API key"
        };
        write!(
            f,
            "rate limited by the {} limit: {what} is used up; retry after {} s",
            self.limit, self.retry_after_secs
        )
    }
}

/// Whole seconds, rounded up, at least 1 (what `Retry-After` may carry).
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
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
    /// GET/HEAD resent after a Cliniko pause.
    pub upstream_retries: AtomicU64,
    /// Requests resent after a connection failure.
    pub connect_retries: AtomicU64,
}

/// Everything the rate-limit layer shares, built once at start-up.
pub struct RateLimits {
    cfg: RateLimitConfig,
    users: Option<Arc<user_limit::UserLimits>>,
    budget: Arc<key_budget::KeyBudgets>,
    stats: Arc<RateLimitStats>,
    pauses: watch::Sender<u64>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("key", &self.cfg.key)
            .field("redis", &self.cfg.redis_url.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Builds the limits, or `None` when `enabled = false`. Needs a Tokio runtime (Redis).
    pub fn new(cfg: &RateLimitConfig) -> Result<Option<Arc<RateLimits>>, ConfigError> {
        if !cfg.enabled {
            return Ok(None);
        }
        validate(cfg)?;
        let stats = Arc::new(RateLimitStats::default());
        Ok(Some(Arc::new(RateLimits {
            cfg: cfg.clone(),
            users: user_limits(cfg),
            budget: key_budgets(cfg, stats.clone(), None)?,
            stats,
            pauses: watch::Sender::new(0),
        })))
    }

    /// The limits for a reloaded `cfg`, keeping `prev`'s state: the key budgets' per-key state
    /// always (a reload must not let a fresh burst through to Cliniko, nor end a Cliniko
    /// pause), the per-user limits when `[ratelimit.user]` is unchanged, and the counters.
    pub fn reconfigure(
        cfg: &RateLimitConfig,
        prev: Option<&Arc<RateLimits>>,
    ) -> Result<Option<Arc<RateLimits>>, ConfigError> {
        let Some(prev) = prev else {
            return RateLimits::new(cfg);
        };
        if !cfg.enabled {
            return Ok(None);
        }
        validate(cfg)?;
        let budget = if same_budget(&prev.cfg, cfg) {
            prev.budget.clone()
        } else {
            key_budgets(cfg, prev.stats.clone(), Some(&prev.budget))?
        };
        let users = if crate::config::same(&prev.cfg.user, &cfg.user) {
            prev.users.clone()
        } else {
            user_limits(cfg)
        };
        Ok(Some(Arc::new(RateLimits {
            cfg: cfg.clone(),
            users,
            budget,
            stats: prev.stats.clone(),
            pauses: watch::Sender::new(0),
        })))
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

    fn note_pause(&self) {
        self.pauses.send_modify(|c| *c += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn defaults_stay_under_clinikos_limit_and_validate() {
        let c = RateLimitConfig::default();
        assert!(c.key.rate < 200 && c.key.period == minute());
        validate(&c).unwrap();
        let mut bad = RateLimitConfig::default();
        bad.key.burst = 0;
        assert_eq!(validate(&bad).unwrap_err().field, "ratelimit.key");
        let bad = RateLimitConfig {
            redis_url: Some(RedisUrl("http://x".into())),
            ..RateLimitConfig::default()
        };
        assert_eq!(validate(&bad).unwrap_err().field, "ratelimit.redis_url");
        let mut bad = RateLimitConfig::default();
        bad.user.groups.insert(
            "etl".into(),
            Quota {
                rate: 0,
                period: minute(),
                burst: 1,
            },
        );
        assert_eq!(
            validate(&bad).unwrap_err().field,
            "ratelimit.user.groups.etl"
        );
    }

    #[test]
    fn redis_passwords_never_print() {
        let u = RedisUrl("redis://:s3cret@10.0.0.1:6379/0".into());
        assert_eq!(format!("{u:?}"), "redis://[REDACTED]@10.0.0.1:6379/0");
        let plain = RedisUrl("redis://127.0.0.1:6379".into());
        assert_eq!(plain.redacted(), "redis://127.0.0.1:6379");
    }

    #[test]
    fn dividing_among_replicas_keeps_at_least_one() {
        let q = Quota {
            rate: 190,
            period: minute(),
            burst: 10,
        };
        assert_eq!(q.divided(2).rate, 95);
        assert_eq!(q.divided(2).burst, 5);
        assert_eq!(q.divided(50).burst, 1);
    }
}
