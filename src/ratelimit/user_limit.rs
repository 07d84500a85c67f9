//! The limit per verified user (the configured user claim, `sub` by default), so one app
//! cannot spend a whole shared key's budget. Over it: 429 `rate_limited`, `limit: "user"`.
//!
//! Built on `governor` directly rather than `tower_governor`: quotas differ per user and per
//! group, and we want the exact wait for `Retry-After` (see the stack notes). One keyed
//! limiter per configured quota (the default, each group, each user override), keyed by user
//! id. Which quota applies: the user's own override, else the most generous quota among the
//! groups named in the token's `group_claim` (a string or an array of strings), else the
//! default. Keyed state is pruned with `retain_recent` every [`RETAIN_EVERY`] checks.

use crate::auth::User;
use crate::config::{Quota, UserLimitConfig};
use crate::error::{Limit, Refusal};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota as GovQuota};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prune idle users' state every this many checks.
pub const RETAIN_EVERY: u64 = 1024;

struct Tier {
    quota: Quota,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Tier {
    fn new(q: &Quota) -> Tier {
        let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
        let gq = GovQuota::with_period(q.interval())
            .unwrap_or_else(|| GovQuota::per_minute(NonZeroU32::MIN))
            .allow_burst(burst);
        Tier {
            quota: *q,
            limiter: DefaultKeyedRateLimiter::keyed(gq),
        }
    }
}

/// Every per-user quota.
pub struct UserLimits {
    default: Tier,
    groups: HashMap<String, Tier>,
    users: HashMap<String, Tier>,
    group_claim: String,
    checks: AtomicU64,
}

impl UserLimits {
    /// One limiter per configured quota.
    pub fn new(cfg: &UserLimitConfig) -> UserLimits {
        let tiers = |m: &BTreeMap<String, Quota>| {
            m.iter().map(|(k, q)| (k.clone(), Tier::new(q))).collect()
        };
        UserLimits {
            default: Tier::new(&cfg.default),
            groups: tiers(&cfg.groups),
            users: tiers(&cfg.users),
            group_claim: cfg.group_claim.clone(),
            checks: AtomicU64::new(0),
        }
    }

    fn tier_of(&self, user: &User) -> &Tier {
        if let Some(t) = self.users.get(&*user.id) {
            return t;
        }
        super::groups_of(user, &self.group_claim)
            .filter_map(|n| self.groups.get(n))
            // The most generous: the shortest interval, then the largest burst.
            .max_by_key(|t| (std::cmp::Reverse(t.quota.interval()), t.quota.burst))
            .unwrap_or(&self.default)
    }

    /// Spends one request of `user`'s quota, or says how long until the next one.
    pub fn check(&self, user: &User) -> Result<(), Refusal> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.retain_recent();
        }
        let tier = self.tier_of(user);
        (tier.limiter.check_key(&user.id.to_string())).map_err(|not_until| {
            let wait = not_until.wait_time_from(tier.limiter.clock().now());
            Refusal::new(Limit::User, &tier.quota, wait)
        })
    }

    /// Forgets users whose state is back to "full burst available".
    pub fn retain_recent(&self) {
        self.default.limiter.retain_recent();
        for t in self.groups.values().chain(self.users.values()) {
            t.limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    impl UserLimits {
        /// Users currently tracked by the default quota (for tests of the pruning).
        fn tracked(&self) -> usize {
            self.default.limiter.len()
        }
    }

    fn user(id: &str, groups: serde_json::Value) -> User {
        let mut claims = serde_json::Map::new();
        claims.insert("groups".into(), groups);
        User {
            id: id.into(),
            claims: Arc::new(claims),
            app: None,
        }
    }

    fn q(rate: u32, burst: u32) -> Quota {
        Quota {
            rate,
            period: Duration::from_secs(60),
            burst,
        }
    }

    #[test]
    fn overrides_beat_groups_beat_the_default() {
        let mut cfg = UserLimitConfig {
            default: q(60, 1),
            ..UserLimitConfig::default()
        };
        cfg.groups.insert("sync".into(), q(60, 3));
        cfg.groups.insert("bulk".into(), q(600, 2));
        cfg.users.insert("etl".into(), q(60, 4));
        let l = UserLimits::new(&cfg);
        let count = |u: &User| (0..10).take_while(|_| l.check(u).is_ok()).count();
        assert_eq!(count(&user("a", serde_json::Value::Null)), 1);
        assert_eq!(count(&user("b", "sync".into())), 3);
        // The most generous group wins (600/min beats 60/min).
        assert_eq!(count(&user("c", serde_json::json!(["sync", "bulk"]))), 2);
        assert_eq!(count(&user("etl", "sync".into())), 4);
        // Refusals name the user limit and round the wait up.
        let r = l.check(&user("a", serde_json::Value::Null)).unwrap_err();
        assert_eq!((r.limit, r.quota, r.window_secs), (Limit::User, 60, 60));
        assert!((1..=2).contains(&r.retry_after_secs));
    }

    #[test]
    fn idle_users_are_forgotten() {
        let l = UserLimits::new(&UserLimitConfig {
            default: Quota {
                rate: 1000,
                period: Duration::from_millis(1),
                burst: 1,
            },
            ..UserLimitConfig::default()
        });
        for i in 0..50 {
            let _ = l.check(&user(&format!("u{i}"), serde_json::Value::Null));
        }
        assert_eq!(l.tracked(), 50);
        std::thread::sleep(Duration::from_millis(5)); // lets the 1 µs-per-request state age out
        l.retain_recent();
        assert_eq!(l.tracked(), 0);
    }
}
