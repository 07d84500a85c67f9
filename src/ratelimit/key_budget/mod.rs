//! The budget per Cliniko user: GCRA, with the requests that must wait for a slot queued
//! fairly across apps (`admit`) for up to `max_wait`.
//!
//! A budget is named by the credential: its key store `cliniko_user` label when there is one
//! (every key of that Cliniko user shares it, as Cliniko counts per user), else its key id.
//! With Redis configured the arithmetic runs in Redis ([`super::redis`]); the local table
//! still counts who is waiting here, and holds the fallback budget (`key / replicas`) used
//! while Redis is down and `redis.failure = "open"`. After a Redis failure the gateway does
//! not ask Redis again for [`REDIS_DOWN_FOR`], so a dead Redis costs at most one timeout per
//! second, never a hang.

mod admit;

use super::RateLimitStats;
use super::fair::FairQueue;
use super::gcra::{Decision, Gcra, micros};
use super::redis::SharedBudget;
use crate::config::{ConfigError, Quota, RateLimitConfig, RedisConfig, RedisFailure};
use crate::error::GatewayError;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
// Tokio's clock, so tests can run on paused time; in production it is the monotonic clock.
use tokio::time::Instant;

/// How long Redis is left alone after a failed decision.
pub const REDIS_DOWN_FOR: Duration = Duration::from_secs(1);

/// Prune idle local entries every this many decisions.
const PRUNE_EVERY: u64 = 1024;

#[derive(Default)]
struct Slot {
    tat: u64,
    /// Requests in `acquire` on this budget (deciding or queued): what `max_waiting` caps.
    waiting: usize,
    /// Those waiting for a slot, by class and app ([`admit`]).
    queue: FairQueue<admit::Waker>,
    /// A pump task is serving `queue` (one per busy budget).
    pumping: bool,
    /// A request is asking the budget directly (nobody was queued): others queue meanwhile,
    /// so a crowd arriving at once asks the budget (Redis) once, not once each.
    asking: bool,
    /// µs since the epoch when the pump next asks the budget.
    next_try: u64,
    /// The last queue ticket handed out.
    tickets: u64,
}

/// What the config sets: swapped whole by each reload of `[ratelimit]` or `[redis]`, under the
/// table's lock. Its `[ratelimit.user]` and `[ratelimit.shares]` are never read here.
struct Params {
    cfg: RateLimitConfig,
    local_quota: Quota,
    local_gcra: Gcra,
    shared: Option<SharedBudget>,
}

impl Params {
    fn of(cfg: &RateLimitConfig, shared: Option<SharedBudget>) -> Params {
        // Without Redis every replica keeps its own budget: each gets its share.
        let local_quota = cfg.key.divided(cfg.replicas);
        Params {
            cfg: cfg.clone(),
            local_quota,
            local_gcra: Gcra::of(&local_quota),
            shared,
        }
    }
}

/// Every key budget of this process (and its view of the shared ones). Built once and kept
/// across reloads, which swap its parameters: spent bursts, Cliniko pauses and the queues
/// stay where they are.
pub struct KeyBudgets {
    params: ArcSwap<Params>,
    // Keyed by the credential's own `Arc<str>`: finding or adding a slot copies no id.
    table: Mutex<HashMap<Arc<str>, Slot>>,
    epoch: Instant,
    /// µs since `epoch` until which Redis is not asked (0: ask).
    down_until: AtomicU64,
    ops: AtomicU64,
    stats: Arc<RateLimitStats>,
}

impl KeyBudgets {
    /// Builds the budgets (with their Redis side when `redis.url` is set).
    pub(super) fn new(
        cfg: &RateLimitConfig,
        redis: &RedisConfig,
        stats: Arc<RateLimitStats>,
    ) -> Result<KeyBudgets, ConfigError> {
        Ok(KeyBudgets {
            params: ArcSwap::from_pointee(Params::of(cfg, SharedBudget::of(redis)?)),
            table: Mutex::default(),
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            stats,
        })
    }

    /// A reload: the new quota applies from where each key stands (when each budget is free
    /// again, which also holds a Cliniko pause), so it never hands out a fresh burst, and to
    /// the requests already queued (their pump asks with it next). An unchanged `[redis]`
    /// keeps its connection and its down time; a new Redis (or none) is asked at once.
    pub(super) fn reconfigure(
        &self,
        cfg: &RateLimitConfig,
        redis: &RedisConfig,
    ) -> Result<(), ConfigError> {
        let old = self.params.load_full();
        let kept = old.shared.clone().filter(|s| s.cfg == *redis);
        let renewed = kept.is_none();
        let shared = match kept {
            Some(s) => Some(s),
            None => SharedBudget::of(redis)?,
        };
        let next = Params::of(cfg, shared);
        let (from, to) = (old.local_gcra, next.local_gcra);
        let mut t = self.table();
        if (from.interval, from.burst) != (to.interval, to.burst) {
            let now = self.now_us();
            for slot in t.values_mut() {
                slot.tat = from.carry(&to, slot.tat, now);
            }
        }
        if renewed {
            self.down_until.store(0, Ordering::Release);
        }
        self.params.store(Arc::new(next));
        Ok(())
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        // The table holds only counters; a panic elsewhere cannot leave it inconsistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Cliniko asked for `pause`: nobody on budget `id` goes before it. With `reserve`, the
    /// first slot after the pause is kept for the caller and its wait returned, if it is
    /// within `pause + max_wait`.
    pub async fn pause(
        &self,
        id: &Arc<str>,
        pause: Duration,
        reserve: bool,
    ) -> Result<Option<Duration>, GatewayError> {
        let p = self.params.load_full();
        let pause_us = micros(pause).max(1);
        let limit = pause_us.saturating_add(micros(p.cfg.max_wait));
        let decision = self.decide(&p, id, limit, pause_us, reserve).await?;
        Ok(match decision {
            Decision::Admit(w) if reserve => Some(Duration::from_micros(w)),
            _ => None,
        })
    }

    /// The quota decisions under `p` are made with now, what a refusal quotes: the shared one
    /// while Redis answers, else this replica's share (right after a failed question too,
    /// since it marks Redis down). Read after the decision: if Redis is marked down or back
    /// up in between (microseconds), a refusal quotes the other quota; only the quoted figure
    /// can be off, never the decision.
    fn quota(&self, p: &Params) -> Quota {
        if p.shared.is_some() && !self.redis_down() {
            p.cfg.key
        } else {
            p.local_quota
        }
    }

    fn redis_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        until != 0 && self.now_us() < until
    }

    /// Asks the budget under `p` (the caller holds it across the await: a reload meanwhile
    /// leaves this decision on the old Redis).
    async fn decide(
        &self,
        p: &Params,
        id: &Arc<str>,
        max_wait: u64,
        pause: u64,
        reserve: bool,
    ) -> Result<Decision, GatewayError> {
        if let Some(shared) = &p.shared {
            if !self.redis_down() {
                match shared
                    .decide(id, &Gcra::of(&p.cfg.key), max_wait, pause, reserve)
                    .await
                {
                    Ok(d) => return Ok(d),
                    Err(e) => {
                        self.stats.redis_failures.fetch_add(1, Ordering::Relaxed);
                        let until = self.now_us().saturating_add(micros(REDIS_DOWN_FOR));
                        self.down_until.store(until, Ordering::Release);
                        tracing::warn!(
                            error = %e,
                            fail = ?shared.cfg.failure,
                            "rate-limit Redis unavailable; not asking it again for 1s"
                        );
                    }
                }
            }
            if shared.cfg.failure == RedisFailure::Closed {
                return Err(GatewayError::RateLimiterUnavailable);
            }
            self.stats.fail_open.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.decide_local(id, max_wait, pause, reserve))
    }

    fn decide_local(&self, id: &Arc<str>, max_wait: u64, pause: u64, reserve: bool) -> Decision {
        // Under the lock: a reload restates the TATs and swaps the quota under it too.
        let mut t = self.table();
        let now = self.now_us();
        let g = self.params.load().local_gcra;
        let slot = t.entry(Arc::clone(id)).or_default();
        if pause > 0 {
            slot.tat = g.pause(slot.tat, now, pause);
        }
        let (d, tat) = g.decide(slot.tat, now, if reserve { max_wait } else { 0 });
        let d = match (reserve, d) {
            (true, d) => {
                slot.tat = tat;
                d
            }
            // A pause without a reservation only moves TAT.
            (false, Decision::Admit(w) | Decision::Refuse(w)) => Decision::Refuse(w),
        };
        if self.ops.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            t.retain(|_, s| s.waiting > 0 || s.pumping || s.asking || s.tat > now);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::shares::Class;
    use crate::error::Limit;
    use crate::ratelimit::shares::Caller;

    pub(super) fn who(app: &str, class: Class, weight: u32) -> Caller {
        Caller {
            class,
            weight,
            app: Arc::from(app),
            counts: Arc::new(crate::metrics::AppMetrics::default().app("t")),
        }
    }

    pub(super) fn budgets(
        rate: u32,
        burst: u32,
        max_wait_ms: u64,
        max_waiting: usize,
    ) -> Arc<KeyBudgets> {
        let cfg = RateLimitConfig {
            key: Quota {
                rate,
                period: Duration::from_secs(1),
                burst,
            },
            max_wait: Duration::from_millis(max_wait_ms),
            max_waiting,
            ..RateLimitConfig::default()
        };
        let stats = Arc::new(RateLimitStats::default());
        Arc::new(KeyBudgets::new(&cfg, &Default::default(), stats).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_go_then_requests_wait_their_slot_then_refuse() {
        let b = budgets(10, 3, 250, 100);
        for _ in 0..3 {
            b.acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
                .await
                .unwrap();
        }
        let started = Instant::now();
        // Five at once: slots at +100 ms and +200 ms fit the 250 ms bound, the rest do not.
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
                        .await
                        .map(|_| started.elapsed())
                })
            })
            .collect();
        let mut waited = vec![];
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => waited.push(w),
                Err(GatewayError::RateLimited(r)) => {
                    assert_eq!((r.limit, r.retry_after_secs, r.quota), (Limit::Key, 1, 10));
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        waited.sort();
        assert_eq!(
            waited,
            vec![Duration::from_millis(100), Duration::from_millis(200)]
        );
        assert_eq!(refused, 3);
        assert!(b.table()["key:a"].queue.is_empty(), "those refused left");
        // Another key is independent.
        let before = Instant::now();
        b.acquire(&"key:b".into(), &who("app", Class::Interactive, 1))
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_waiting_is_refused_at_once() {
        let b = budgets(1, 1, 10_000, 2);
        b.acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
            .await
            .unwrap();
        let mut waiting = vec![];
        for _ in 0..2 {
            let b = b.clone();
            waiting.push(tokio::spawn(async move {
                b.acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
                    .await
            }));
        }
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let third = b
            .acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
            .await;
        assert!(
            matches!(third, Err(GatewayError::RateLimited(_))),
            "{third:?}"
        );
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(b.table()["key:a"].waiting, 0, "guards released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_everyone_and_reserves_the_first_slot() {
        let b = budgets(10, 5, 2000, 100);
        let reserved = b
            .pause(&"key:a".into(), Duration::from_secs(1), true)
            .await
            .unwrap();
        let w = reserved.unwrap();
        assert!(w >= Duration::from_secs(1) && w < Duration::from_millis(1010));
        let started = Instant::now();
        b.acquire(&"key:a".into(), &who("app", Class::Interactive, 1))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1100));
        // Beyond max_wait nothing is reserved, but the pause still holds.
        assert_eq!(
            b.pause(&"key:b".into(), Duration::from_secs(5), false)
                .await
                .unwrap(),
            None
        );
        assert!(
            b.acquire(&"key:b".into(), &who("app", Class::Interactive, 1))
                .await
                .is_err()
        );
    }

    #[test]
    fn budgets_are_named_by_cliniko_user_when_labelled() {
        let c = crate::credentials::Credential::new(
            crate::credentials::ApiKey::new("k-au1".into()),
            "abc",
            None,
        )
        .unwrap();
        assert_eq!(&*c.budget, "key:abc");
        let c = crate::credentials::Credential::new(
            crate::credentials::ApiKey::new("k-au1".into()),
            "abc",
            Some("jo".into()),
        )
        .unwrap();
        assert_eq!(&*c.budget, "user:jo");
    }
}
