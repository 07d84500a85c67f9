//! Admission to a key budget: a request that cannot go at once waits in the budget's fair
//! queue ([`crate::ratelimit::fair`]) until a pump hands it a slot, for at most `max_wait`.
//!
//! - **Nobody queued** on the budget (and nobody else asking it): the budget alone decides,
//!   as before there were queues: go now; 429 at once when its next slot is further than
//!   `max_wait` (a Cliniko pause, `max_wait = 0`); else queue. Requests arriving meanwhile
//!   queue, so a crowd arriving at once costs one question to Redis, not one each.
//! - **Hopeless**: when the waiters that would go before it ([`FairQueue::ahead`]) already
//!   take every slot until its `max_wait`, 429 at once rather than after waiting for nothing.
//! - **Queued**: one pump task per busy budget asks the budget (local GCRA or the Redis
//!   script) for a slot *now*. When there is one, it wakes the waiter the fair queue picks;
//!   when not, it sleeps until the budget's next slot and asks again (no polling; a pump
//!   started by a refused request sleeps first, as that request's answer said when). The
//!   choice is made when the slot frees, not when requests arrive, so an interactive request
//!   that arrives behind hundreds of batch ones takes the next slot. The pump stops when the
//!   queue is empty; a reload's quota and Redis apply to its next question.
//! - A waiter that reaches `max_wait` takes itself out of the queue: the usual 429.
//!
//! With Redis each replica has its own queue and pump in front of the shared budget: the
//! budget is never exceeded (every slot is one atomic script), and the slots a replica wins
//! are shared fairly among the requests waiting on that replica.

use super::{KeyBudgets, Params, micros};
use crate::config::Quota;
use crate::error::{GatewayError, Limit, Refusal};
#[cfg(doc)]
use crate::ratelimit::fair::FairQueue;
use crate::ratelimit::gcra::Decision;
use crate::ratelimit::shares::Caller;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a pump tells a waiter.
#[derive(Clone, Copy)]
pub(super) enum Verdict {
    /// The slot is yours.
    Go,
    /// The budget could not be asked (Redis down, `redis.failure = "closed"`).
    Unavailable,
}

/// How a pump wakes one waiter.
pub(super) type Waker = oneshot::Sender<Verdict>;

/// A request in `acquire` on one budget, counted (what `max_waiting` caps) until it leaves.
/// Leaving gives back what it holds, under one lock: the asking mark (the budget answered,
/// or the caller went while it was asking) and its place in the queue (admitted, timed out,
/// caller gone).
struct Entered<'a> {
    budgets: &'a KeyBudgets,
    id: &'a Arc<str>,
    who: &'a Caller,
    /// It is asking the budget directly (nobody was queued or asking).
    asking: bool,
    /// Its queue ticket once queued.
    ticket: Option<u64>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut t = self.budgets.table();
        if let Some(s) = t.get_mut(&**self.id) {
            s.waiting = s.waiting.saturating_sub(1);
            s.asking &= !self.asking;
            if let Some(ticket) = self.ticket {
                s.queue.remove(self.who.class, &self.who.app, ticket);
            }
        }
        drop(t);
        self.budgets.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KeyBudgets {
    /// Waits for a slot of budget `id` (at most `max_wait`), or says why not; counted under
    /// `who`'s app.
    pub async fn acquire(
        self: &Arc<Self>,
        id: &Arc<str>,
        who: &Caller,
    ) -> Result<(), GatewayError> {
        let started = Instant::now();
        let r = self.admit(id, who, started).await;
        match &r {
            Ok(()) => who.counts.admitted(started.elapsed()),
            Err(GatewayError::RateLimited(_)) => {
                self.stats.refused_key.fetch_add(1, Ordering::Relaxed);
                who.counts.refused();
            }
            Err(_) => {}
        }
        r
    }

    async fn admit(
        self: &Arc<Self>,
        id: &Arc<str>,
        who: &Caller,
        started: Instant,
    ) -> Result<(), GatewayError> {
        // One config for the whole admission: a reload meanwhile applies to the next one.
        let p = self.params.load_full();
        let mut me = self.enter(&p, id, who)?;
        // µs until the budget's next slot, when this request asked it.
        let mut next = 0;
        if me.asking {
            match self.decide(&p, id, 0, 0, true).await? {
                Decision::Admit(_) => return Ok(()),
                Decision::Refuse(w) if w > micros(p.cfg.max_wait) => {
                    return Err(refusal(self.quota(&p), w));
                }
                Decision::Refuse(w) => next = w,
            }
        }
        let (tx, rx) = oneshot::channel();
        self.queue(&p, &mut me, tx, next)?;
        // Counted once it really waits: `queue` refuses a hopeless wait at once.
        self.stats.shaped.fetch_add(1, Ordering::Relaxed);
        self.wait(&p, rx, started + p.cfg.max_wait).await
    }

    /// Counts the request in, or refuses it when `max_waiting` are in already. When nobody
    /// is queued or asking, it may ask the budget itself (`asking`); else it queues, fairly.
    fn enter<'a>(
        &'a self,
        p: &Params,
        id: &'a Arc<str>,
        who: &'a Caller,
    ) -> Result<Entered<'a>, GatewayError> {
        let mut t = self.table();
        let slot = t.entry(Arc::clone(id)).or_default();
        if slot.waiting >= p.cfg.max_waiting {
            drop(t);
            return Err(refusal(self.quota(p), micros(p.cfg.max_wait)));
        }
        slot.waiting += 1;
        let asking = !slot.pumping && !slot.asking;
        slot.asking |= asking;
        drop(t);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(Entered {
            budgets: self,
            id,
            who,
            asking,
            ticket: None,
        })
    }

    /// Takes a place in the queue (giving up the asking mark in the same breath), starting
    /// the budget's pump if none runs (`next`: µs to the budget's next slot, if known: the
    /// pump sleeps until then rather than ask again at once).
    fn queue(
        self: &Arc<Self>,
        p: &Params,
        me: &mut Entered<'_>,
        tx: Waker,
        next: u64,
    ) -> Result<(), GatewayError> {
        let (id, who) = (me.id, me.who);
        let now = self.now_us();
        let quota = self.quota(p);
        let interval = micros(quota.interval()).max(1);
        let max_wait = micros(p.cfg.max_wait);
        let mut t = self.table();
        let slot = t.entry(Arc::clone(id)).or_default();
        slot.asking &= !std::mem::take(&mut me.asking);
        // Refused at once when the waiters that would go first already take every slot
        // until our `max_wait` (the first at the pump's next try, then one per interval).
        let first = if slot.pumping {
            slot.next_try.saturating_sub(now)
        } else {
            next
        };
        let ahead = slot.queue.ahead(who.class, &who.app, who.weight) as u64;
        let wait = first.saturating_add(ahead.saturating_mul(interval));
        if wait > max_wait {
            drop(t);
            return Err(refusal(quota, wait));
        }
        slot.tickets += 1;
        me.ticket = Some(slot.tickets);
        slot.queue
            .push(who.class, &who.app, who.weight, slot.tickets, tx);
        if !slot.pumping {
            slot.pumping = true;
            slot.next_try = now.saturating_add(next);
            tokio::spawn(self.clone().pump(Arc::clone(id), next));
        }
        Ok(())
    }

    /// Serves budget `id`'s queue until it is empty (see the module notes), first sleeping
    /// `wait` µs when the budget's next slot is known to be that far.
    async fn pump(self: Arc<Self>, id: Arc<str>, mut wait: u64) {
        loop {
            if wait > 0 {
                tokio::time::sleep(Duration::from_micros(wait)).await;
            }
            // Waiters may give up before the pump starts and while it sleeps (a hand-out
            // checks for the rounds in between).
            if !self.still_needed(&id) {
                return;
            }
            loop {
                // Each question with the config of its time: a reload applies at once.
                let p = self.params.load_full();
                let more = match self.decide(&p, &id, 0, 0, true).await {
                    Ok(Decision::Refuse(w)) => {
                        wait = self.next_try_in(&id, w);
                        break;
                    }
                    Ok(Decision::Admit(_)) => self.hand_out(&id, Verdict::Go),
                    Err(_) => self.hand_out(&id, Verdict::Unavailable),
                };
                if !more {
                    return;
                }
            }
        }
    }

    /// Whether anyone waits on `id`; if not, the pump stops, decided under the lock so that a
    /// request queuing right after starts a new one.
    fn still_needed(&self, id: &str) -> bool {
        let mut t = self.table();
        let Some(s) = t.get_mut(id) else { return false };
        s.pumping = !s.queue.is_empty();
        s.pumping
    }

    /// Notes when the pump asks next (what a newcomer's hopeless check counts from); the
    /// wait to sleep.
    fn next_try_in(&self, id: &str, wait_us: u64) -> u64 {
        let wait_us = wait_us.max(1);
        let at = self.now_us().saturating_add(wait_us);
        if let Some(s) = self.table().get_mut(id) {
            s.next_try = at;
        }
        wait_us
    }

    /// Gives the slot to the waiter the fair queue picks (one that gave up meanwhile passes
    /// it on); a budget that could not be asked fails every waiter, as it would have failed
    /// each one asking itself. Then, under the same lock, whether anyone still waits (if not,
    /// the pump stops).
    fn hand_out(&self, id: &str, verdict: Verdict) -> bool {
        let mut t = self.table();
        let Some(s) = t.get_mut(id) else { return false };
        while let Some(w) = s.queue.pop() {
            if w.send(verdict).is_ok() && matches!(verdict, Verdict::Go) {
                break;
            }
        }
        s.pumping = !s.queue.is_empty();
        s.pumping
    }

    /// Waits for the pump's word until `deadline`; then the usual 429.
    async fn wait(
        &self,
        p: &Params,
        mut rx: oneshot::Receiver<Verdict>,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        let verdict = tokio::select! {
            v = &mut rx => v.ok(),
            () = tokio::time::sleep_until(deadline) => {
                // The pump may have picked us in the same instant: then the slot is ours.
                rx.close();
                rx.try_recv().ok()
            }
        };
        match verdict {
            Some(Verdict::Go) => Ok(()),
            Some(Verdict::Unavailable) => Err(GatewayError::RateLimiterUnavailable),
            None => Err(refusal(self.quota(p), micros(p.cfg.max_wait))),
        }
    }
}

/// The 429 for a request that would wait `wait_us` for a budget of `quota`.
fn refusal(quota: Quota, wait_us: u64) -> GatewayError {
    GatewayError::RateLimited(Refusal::new(
        Limit::Key,
        &quota,
        Duration::from_micros(wait_us),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{budgets, who};
    use super::*;
    use crate::config::RateLimitConfig;
    use crate::config::shares::Class::{Batch, Interactive};
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<(&'static str, Duration)>>>;

    /// `n` requests of `app` on budget `key:a`, each logging (app, when admitted) into `log`.
    fn flood(b: &Arc<KeyBudgets>, log: &Log, caller: Caller, app: &'static str, n: usize) {
        let started = Instant::now();
        for _ in 0..n {
            let (b, log, caller) = (b.clone(), log.clone(), caller.clone());
            tokio::spawn(async move {
                if b.acquire(&"key:a".into(), &caller).await.is_ok() {
                    log.lock().unwrap().push((app, started.elapsed()));
                }
            });
        }
    }

    /// Lets the spawned requests run (the clock is paused: it moves only when all wait)
    /// until `n` are queued.
    async fn queued(b: &KeyBudgets, n: usize) {
        for _ in 0..100_000 {
            if b.table()["key:a"].queue.len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never {n} queued");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_go_by_class_and_weight_not_arrival() {
        // 10/s, burst 1: one slot per 100 ms; waits up to a minute.
        let b = budgets(10, 1, 60_000, 1000);
        b.acquire(&"key:a".into(), &who("x", Batch, 1))
            .await
            .unwrap();
        let log: Log = Arc::default();
        flood(&b, &log, who("sync", Batch, 3), "sync", 300);
        flood(&b, &log, who("export", Batch, 1), "export", 300);
        queued(&b, 600).await;
        // The front desk arrives behind 600 batch requests and takes the next slot.
        let t = Instant::now();
        b.acquire(&"key:a".into(), &who("desk", Interactive, 1))
            .await
            .unwrap();
        assert!(
            t.elapsed() <= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        // 20 s of budget later: 200 slots, shared 3:1.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let log = log.lock().unwrap();
        let sync = log.iter().filter(|(a, _)| *a == "sync").count();
        assert!((195..=201).contains(&log.len()), "{}", log.len());
        assert!(
            (146..=152).contains(&sync),
            "sync got {sync} of {}",
            log.len()
        );
        // Paced one per slot: never two within one interval.
        for w in log.windows(2) {
            assert!(w[1].1 - w[0].1 >= Duration::from_millis(100), "{w:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_applies_its_quota_to_the_requests_already_queued() {
        let b = budgets(10, 1, 60_000, 1000);
        b.acquire(&"key:a".into(), &who("x", Batch, 1))
            .await
            .unwrap();
        let log: Log = Arc::default();
        flood(&b, &log, who("sync", Batch, 1), "sync", 40);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(log.lock().unwrap().len(), 2);
        // Ten times the rate: the pump's next question uses it.
        let cfg = RateLimitConfig {
            key: crate::config::Quota {
                rate: 100,
                period: Duration::from_secs(1),
                burst: 1,
            },
            max_wait: Duration::from_secs(60),
            ..RateLimitConfig::default()
        };
        b.reconfigure(&cfg, &Default::default()).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(log.lock().unwrap().len(), 40, "38 more in half a second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_costs_one_question_for_its_slot() {
        // 10/s, burst 1: the second request's own question says "in 100 ms"; the pump it
        // starts sleeps until then rather than asking again at once.
        let b = budgets(10, 1, 1000, 100);
        let caller = who("app", Interactive, 1);
        b.acquire(&"key:a".into(), &caller).await.unwrap();
        let t = Instant::now();
        b.acquire(&"key:a".into(), &caller).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(100));
        // The first request's, the second's (refused), the pump's (its slot).
        assert_eq!(b.ops.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_arriving_at_once_gets_the_burst_at_once() {
        // One of them asks the budget, the others queue behind it: the pump hands out the
        // rest of the burst without waiting for any slot.
        let b = budgets(1, 50, 1000, 1000);
        let log: Log = Arc::default();
        flood(&b, &log, who("desk", Interactive, 1), "desk", 50);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 50);
        assert!(log.iter().all(|(_, at)| at.is_zero()), "{log:?}");
        assert!(!b.table()["key:a"].asking);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_beyond_max_wait_is_refused_at_once() {
        let b = budgets(1, 1, 500, 100);
        b.acquire(&"key:a".into(), &who("x", Batch, 1))
            .await
            .unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            let r = b.acquire(&"key:a".into(), &who("sync", Batch, 1)).await;
            assert!(matches!(r, Err(GatewayError::RateLimited(_))), "{r:?}");
        }
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "nobody waited for a hopeless slot"
        );
        let t = b.table();
        assert!(t["key:a"].queue.is_empty() && !t["key:a"].pumping);
        assert_eq!(b.stats.refused_key.load(Ordering::Relaxed), 5);
    }
}
