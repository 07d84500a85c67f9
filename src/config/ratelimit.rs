//! The `[ratelimit]` section and its validation (called from `config::validate`).

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[ratelimit]`: every limit the gateway keeps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Master switch for the limits (per user, per key, Cliniko pauses). Off keeps the resends
    /// (connect failures, a GET after Cliniko's 429/503 within `max_wait`): they are not limits.
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
#[derive(Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
