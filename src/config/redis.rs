//! The `[redis]` section: the one Redis that replicas share, for the key budgets
//! (`crate::ratelimit`) and the cache invalidation bus (`crate::cache`). Without `url` every
//! replica works alone and nothing here is used.
//!
//! The fields used to live in `[ratelimit]` as `redis_url`, `redis_timeout`, `redis_failure`
//! and `redis_prefix`; those still load ([`migrate_legacy`] moves them here before the file is
//! deserialised, so the environment overrides of either name work) with a [`Deprecated`]
//! warning. Setting both the old and the new name of one field is refused.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[redis]`: shared state across replicas.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; unset = no Redis (each replica on its own).
    pub url: Option<RedisUrl>,
    /// Longest one Redis call may take before Redis counts as down.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What the key budgets do while Redis is down: `open` (local budget) or `closed` (503).
    pub failure: RedisFailure,
    /// Prefix of every Redis key and channel the gateway uses.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            timeout: Duration::from_millis(100),
            failure: RedisFailure::Open,
            prefix: "cliniko-gateway".into(),
        }
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

/// A deprecated config field that was read and moved to its new name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    /// The old dotted name, e.g. `ratelimit.redis_url`.
    pub old: &'static str,
    /// Where it lives now, e.g. `redis.url`.
    pub new: &'static str,
}

impl std::fmt::Display for Deprecated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is deprecated and was read as `{}`; rename it (the old name will go)",
            self.old, self.new
        )
    }
}

/// (old field in `[ratelimit]`, new field in `[redis]`, both dotted names).
const MOVED: [(&str, &str, &str, &str); 4] = [
    ("redis_url", "url", "ratelimit.redis_url", "redis.url"),
    (
        "redis_timeout",
        "timeout",
        "ratelimit.redis_timeout",
        "redis.timeout",
    ),
    (
        "redis_failure",
        "failure",
        "ratelimit.redis_failure",
        "redis.failure",
    ),
    (
        "redis_prefix",
        "prefix",
        "ratelimit.redis_prefix",
        "redis.prefix",
    ),
];

/// Moves the old `ratelimit.redis_*` fields of the raw file (environment already overlaid)
/// into `[redis]`; refuses a field set under both names, since which one wins would be a guess.
pub fn migrate_legacy(table: &mut toml::Table) -> Result<Vec<Deprecated>, ConfigError> {
    let mut moved = Vec::new();
    for (old, new, old_name, new_name) in MOVED {
        let Some(value) = table
            .get_mut("ratelimit")
            .and_then(toml::Value::as_table_mut)
            .and_then(|r| r.remove(old))
        else {
            continue;
        };
        let redis = table
            .entry("redis")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::new("redis", "is not a section", "write it as [redis]"))?;
        if redis.contains_key(new) {
            return Err(ConfigError::new(
                old_name,
                format!("is set and so is `{new_name}`"),
                format!("keep only `{new_name}` (`{old_name}` is the deprecated name)"),
            ));
        }
        redis.insert(new.to_string(), value);
        moved.push(Deprecated {
            old: old_name,
            new: new_name,
        });
    }
    Ok(moved)
}

/// The `[redis]` rules the types cannot express.
pub fn validate(c: &RedisConfig) -> Result<(), ConfigError> {
    if c.timeout.is_zero() || c.timeout > Duration::from_secs(5) {
        return Err(ConfigError::new(
            "redis.timeout",
            "must be between 1ms and 5s",
            "use e.g. \"100ms\"",
        ));
    }
    if let Some(RedisUrl(url)) = &c.url
        && (!url.starts_with("redis://") || ::redis::Client::open(url.as_str()).is_err())
    {
        return Err(ConfigError::new(
            "redis.url",
            "not a redis:// URL",
            "write it like redis://127.0.0.1:6379/0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn old_fields_move_into_redis_with_a_warning() {
        let mut t = table(
            "[ratelimit]\nredis_url = \"redis://r:6379\"\nredis_failure = \"closed\"\nreplicas = 2\n",
        );
        let moved = migrate_legacy(&mut t).unwrap();
        assert_eq!(
            moved.iter().map(|d| d.old).collect::<Vec<_>>(),
            ["ratelimit.redis_url", "ratelimit.redis_failure"]
        );
        assert!(moved[0].to_string().contains("`redis.url`"));
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://r:6379"));
        assert_eq!(t["redis"]["failure"].as_str(), Some("closed"));
        assert!(!t["ratelimit"].as_table().unwrap().contains_key("redis_url"));
        assert_eq!(t["ratelimit"]["replicas"].as_integer(), Some(2));
        let mut fresh = table("[redis]\nurl = \"redis://r:6379\"\n");
        assert!(migrate_legacy(&mut fresh).unwrap().is_empty());
    }

    #[test]
    fn the_same_field_under_both_names_is_refused_naming_both() {
        let mut t = table("[ratelimit]\nredis_prefix = \"a\"\n[redis]\nprefix = \"b\"\n");
        let e = migrate_legacy(&mut t).unwrap_err();
        assert_eq!(e.field, "ratelimit.redis_prefix");
        assert!(e.to_string().contains("`redis.prefix`"), "{e}");
    }

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
