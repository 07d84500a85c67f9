//! The `[ratelimit]` section and its validation (called from `config::validate`).

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

settings! {
    /// `[ratelimit]`: every limit the gateway keeps.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RateLimitConfig {
        /// Master switch for the limits (per user, per key, Cliniko pauses). The resends are
        /// not limits: `[upstream.retries]` has them, whatever this says.
        pub enabled: bool = true,
        /// The budget per Cliniko user (all replicas together when `redis.url` is set).
        // Cliniko allows 200/min per Cliniko user; stay a little under it.
        pub key: Quota = Quota { rate: 190, period: minute(), burst: 10 },
        /// The limit per verified user.
        pub user: UserLimitConfig = UserLimitConfig::default(),
        /// How the requests waiting on one key budget are shared among apps.
        pub shares: super::shares::SharesConfig = Default::default(),
        /// Longest a request waits for a key-budget slot (or a Cliniko pause) instead of a 429.
        #[serde(with = "humantime_serde")]
        pub max_wait: Duration = Duration::from_secs(2),
        /// Most requests waiting on one key budget at once (per replica); beyond it, 429.
        pub max_waiting: usize = 100,
        /// Replicas sharing each key without Redis: the local budget is `key` divided by this.
        pub replicas: u32 = 1,
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

settings! {
    /// `[ratelimit.user]`: the per-user limit.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct UserLimitConfig {
        /// Switch for the per-user limit alone.
        pub enabled: bool = true,
        /// The quota of a user with no group or user override.
        // About two thirds of a key's budget: one app alone cannot starve the others.
        pub default: Quota = Quota { rate: 120, period: minute(), burst: 20 },
        /// The JWT claim holding the caller's groups (a string or an array of strings).
        pub group_claim: String = "groups".into(),
        /// Quota per group name; a user in several groups gets the most generous one.
        pub groups: BTreeMap<String, Quota> = BTreeMap::new(),
        /// Quota per user (the configured user claim's value); wins over groups.
        pub users: BTreeMap<String, Quota> = BTreeMap::new(),
    }
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

fn check_quota(field: &str, q: &Quota) -> Result<(), ConfigError> {
    refuse_if(
        q.rate == 0 || q.burst == 0,
        field,
        "rate and burst must be at least 1",
        "write it like { rate = 190, period = \"1m\", burst = 10 }",
    )?;
    refuse_if(
        q.period.is_zero() || q.interval() < Duration::from_micros(1),
        field,
        "period must be longer than zero and at least 1µs per request",
        "use e.g. period = \"1m\"",
    )
}

/// The `[ratelimit]` rules the types cannot express; called from the config validator.
pub(super) fn validate(c: &RateLimitConfig) -> Result<(), ConfigError> {
    check_quota("ratelimit.key", &c.key)?;
    check_quota("ratelimit.user.default", &c.user.default)?;
    for (name, q) in &c.user.groups {
        check_quota(&format!("ratelimit.user.groups.{name}"), q)?;
    }
    for (name, q) in &c.user.users {
        check_quota(&format!("ratelimit.user.users.{name}"), q)?;
    }
    super::shares::validate(&c.shares)?;
    refuse_if(
        c.user.group_claim.is_empty(),
        "ratelimit.user.group_claim",
        "is empty",
        "name the JWT claim holding groups, e.g. \"groups\"",
    )?;
    refuse_if(
        c.max_wait > Duration::from_secs(60),
        "ratelimit.max_wait",
        "longer than a minute",
        "keep it short (default 2s): callers are waiting",
    )?;
    refuse_if(
        c.replicas == 0,
        "ratelimit.replicas",
        "must be at least 1",
        "use 1",
    )
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
