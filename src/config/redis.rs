//! The `[redis]` section: the one Redis that replicas share, for the key budgets
//! (`crate::ratelimit`) and the cache invalidation bus (`crate::cache`). Without `url` every
//! replica works alone and nothing here is used.
//!
//! The fields used to live in `[ratelimit]` as `redis_url`, `redis_timeout`, `redis_failure`
//! and `redis_prefix`; those still load, with a warning (`super::deprecated`).

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::time::Duration;

settings! {
    /// `[redis]`: shared state across replicas.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RedisConfig {
        /// `redis://[:password@]host:port[/db]`; unset = no Redis (each replica on its own).
        pub url: Option<RedisUrl> = None,
        /// Longest one Redis call may take before Redis counts as down.
        #[serde(with = "humantime_serde")]
        pub timeout: Duration = Duration::from_millis(100),
        /// What the key budgets do while Redis is down: `open` (local budget) or `closed` (503).
        pub failure: RedisFailure = RedisFailure::Open,
        /// Prefix of every Redis key and channel the gateway uses.
        pub prefix: String = "cliniko-gateway".into(),
    }
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

/// What to do when Redis cannot be asked for a key-budget decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Keep serving on the local budget (`key` / `replicas`), warn and count.
    Open,
    /// Answer 503 `rate_limiter_unavailable`.
    Closed,
}

/// The `[redis]` rules the types cannot express.
pub(super) fn validate(c: &RedisConfig) -> Result<(), ConfigError> {
    refuse_if(
        c.timeout.is_zero() || c.timeout > Duration::from_secs(5),
        "redis.timeout",
        "must be between 1ms and 5s",
        "use e.g. \"100ms\"",
    )?;
    refuse_if(
        c.url.as_ref().is_some_and(|RedisUrl(url)| {
            !url.starts_with("redis://") || ::redis::Client::open(url.as_str()).is_err()
        }),
        "redis.url",
        "not a redis:// URL",
        "write it like redis://127.0.0.1:6379/0",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_the_field() {
        validate(&RedisConfig::default()).unwrap();
        let field = |c: RedisConfig| validate(&c).unwrap_err().field;
        let url = |u: &str| RedisConfig {
            url: Some(RedisUrl(u.into())),
            ..RedisConfig::default()
        };
        assert_eq!(field(url("http://x")), "redis.url");
        let c = RedisConfig {
            timeout: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert_eq!(field(c), "redis.timeout");
    }

    #[test]
    fn redis_passwords_never_print() {
        let u = RedisUrl("redis://:s3cret@10.0.0.1:6379/0".into());
        assert_eq!(format!("{u:?}"), "redis://[REDACTED]@10.0.0.1:6379/0");
        let plain = RedisUrl("redis://127.0.0.1:6379".into());
        assert_eq!(plain.redacted(), "redis://127.0.0.1:6379");
    }
}
