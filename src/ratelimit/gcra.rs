//! The GCRA arithmetic, on microseconds, shared by the local budget and (line for line) by the
//! Redis script in [`super::redis`], so a replica decides the same way with or without Redis.
//!
//! State is one number per budget, the theoretical arrival time (TAT). A request at `now` gets
//! the slot `max(TAT, now) + T - burst·T`; if that is at most `max_wait` away the slot is
//! *reserved* (TAT moves on by `T`) and the request waits until it; otherwise nothing changes.
//! Reserving means any window of length `W` holds at most `burst + W/T` slots.

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
    pub fn of(q: &super::Quota) -> Gcra {
        Gcra {
            interval: u64::try_from(q.interval().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
