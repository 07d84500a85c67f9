//! The GCRA arithmetic, on microseconds, shared by the local budget and (line for line) by the
//! Redis script in [`super::redis`], so a replica decides the same way with or without Redis.
//!
//! State is one number per budget, the theoretical arrival time (TAT). A request at `now` gets
//! the slot `max(TAT, now) + T - burst·T`; if that is at most `max_wait` away the slot is
//! *reserved* (TAT moves on by `T`) and the request waits until it; otherwise nothing changes.
//! Reserving means any window of length `W` holds at most `burst + W/T` slots.

use std::time::Duration;

/// `d` in whole µs (saturating).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What the budget said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A slot was reserved this many µs from now (0 = go now).
    Admit(u64),
    /// No slot within the allowed wait; the next one is this many µs away.
    Refuse(u64),
}

/// The emission interval `T` and the burst, in µs and requests.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// µs between two requests at the sustained rate.
    pub interval: u64,
    /// Requests allowed back to back.
    pub burst: u64,
}

impl Gcra {
    /// From a quota.
    pub fn of(q: &crate::config::Quota) -> Gcra {
        Gcra {
            interval: micros(q.interval()).max(1),
            burst: u64::from(q.burst.max(1)),
        }
    }

    /// One request at `now` with state `tat`: the decision and the new TAT.
    pub fn decide(&self, tat: u64, now: u64, max_wait: u64) -> (Decision, u64) {
        let base = tat.max(now);
        let new_tat = base.saturating_add(self.interval);
        let slot = new_tat.saturating_sub(self.interval.saturating_mul(self.burst));
        let wait = slot.saturating_sub(now);
        if wait > max_wait {
            (Decision::Refuse(wait), tat)
        } else {
            (Decision::Admit(wait), new_tat)
        }
    }

    /// Cliniko said "not before `now + pause`": move TAT so that the next slot is no earlier,
    /// and from then on requests are paced at `T` with no burst.
    pub fn pause(&self, tat: u64, now: u64, pause: u64) -> u64 {
        let floor = now
            .saturating_add(pause)
            .saturating_add(self.interval.saturating_mul(self.burst - 1));
        tat.max(floor)
    }

    /// A budget's state under this quota, restated under quota `to` (a config reload): the
    /// share of the burst in use is kept, and a key that had to wait (spent, or paused by
    /// Cliniko) waits no less for its next slot. So a reload never hands out a fresh burst
    /// nor ends a pause early.
    pub fn carry(&self, to: &Gcra, tat: u64, now: u64) -> u64 {
        let debt = tat.saturating_sub(now);
        if debt == 0 {
            return tat;
        }
        let full = self.interval.saturating_mul(self.burst).max(1);
        let full_to = to.interval.saturating_mul(to.burst);
        let used = u128::from(debt.min(full)) * u128::from(full_to) / u128::from(full);
        let scaled = u64::try_from(used).unwrap_or(u64::MAX);
        let wait = debt.saturating_sub(self.interval.saturating_mul(self.burst - 1));
        let debt_to = if wait == 0 {
            scaled
        } else {
            scaled.max(wait.saturating_add(to.interval.saturating_mul(to.burst - 1)))
        };
        now.saturating_add(debt_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000;

    /// Time until the next slot for state `tat` at `now`.
    fn wait(g: &Gcra, tat: u64, now: u64) -> u64 {
        match g.decide(tat, now, u64::MAX).0 {
            Decision::Admit(w) | Decision::Refuse(w) => w,
        }
    }

    #[test]
    fn a_new_quota_keeps_spent_keys_spent_and_pauses_paused() {
        let now = 10 * H;
        // 1/h burst 2, both spent: next slot in 1 h; at 2/h it is still 1 h, not later.
        let (a, b) = (
            Gcra {
                interval: H,
                burst: 2,
            },
            Gcra {
                interval: H / 2,
                burst: 2,
            },
        );
        let tat = now + 2 * H;
        assert_eq!(wait(&a, tat, now), H);
        assert_eq!(wait(&b, a.carry(&b, tat, now), now), H);
        // 100/min burst 100 spent, lowered to 10/min: no fresh burst (one slot per 6 s).
        let m = 60_000_000;
        let (a, b) = (
            Gcra {
                interval: m / 100,
                burst: 100,
            },
            Gcra {
                interval: m / 10,
                burst: 100,
            },
        );
        let tat = now + m;
        assert!(wait(&b, a.carry(&b, tat, now), now) >= m / 10);
        // A 60 s Cliniko pause survives a larger burst.
        let (a, b) = (
            Gcra {
                interval: 300_000,
                burst: 5,
            },
            Gcra {
                interval: 300_000,
                burst: 200,
            },
        );
        let tat = a.pause(0, now, 60_000_000);
        assert_eq!(wait(&b, a.carry(&b, tat, now), now), 60_000_000);
        // Half a burst used stays half used; an idle key stays idle.
        let (a, b) = (
            Gcra {
                interval: 1000,
                burst: 100,
            },
            Gcra {
                interval: 1000,
                burst: 10,
            },
        );
        assert_eq!(a.carry(&b, now + 50_000, now), now + 5_000);
        assert_eq!(a.carry(&b, now - 1, now), now - 1);
    }

    const T: u64 = 100_000; // 10/s

    #[test]
    fn burst_then_paced_slots() {
        let g = Gcra {
            interval: T,
            burst: 5,
        };
        let mut tat = 0;
        let now = 1_000_000;
        for _ in 0..5 {
            let (d, t) = g.decide(tat, now, 0);
            assert_eq!(d, Decision::Admit(0));
            tat = t;
        }
        // The sixth must wait one interval; with no waiting allowed it is refused.
        assert_eq!(g.decide(tat, now, 0), (Decision::Refuse(T), tat));
        let (d, t) = g.decide(tat, now, 2_000_000);
        assert_eq!(d, Decision::Admit(T));
        let (d, _) = g.decide(t, now, 2_000_000);
        assert_eq!(d, Decision::Admit(2 * T));
    }

    #[test]
    fn any_window_holds_at_most_burst_plus_rate() {
        let g = Gcra {
            interval: T,
            burst: 5,
        };
        let mut tat = 0;
        let mut slots = vec![];
        // 300 requests arriving every 10 ms, allowed to wait up to 2 s.
        for i in 0..300u64 {
            let now = i * 10_000;
            if let (Decision::Admit(w), t) = g.decide(tat, now, 2_000_000) {
                slots.push(now + w);
                tat = t;
            }
        }
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .take_while(|x| **x < s + 1_000_000)
                .count();
            assert!(in_window <= 15, "{in_window} slots in one second");
        }
    }

    #[test]
    fn a_pause_pushes_the_next_slot_past_it() {
        let g = Gcra {
            interval: T,
            burst: 5,
        };
        let now = 10_000_000;
        let tat = g.pause(0, now, 1_000_000);
        let (d, tat) = g.decide(tat, now, u64::MAX);
        assert_eq!(d, Decision::Admit(1_000_000));
        let (d, _) = g.decide(tat, now, u64::MAX);
        assert_eq!(d, Decision::Admit(1_000_000 + T), "paced, no burst");
        // A pause shorter than what is already queued changes nothing.
        assert_eq!(g.pause(now + 5_000_000, now, 1_000), now + 5_000_000);
    }
}
