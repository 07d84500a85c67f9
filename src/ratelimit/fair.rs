//! Who gets the next slot of one key budget: weighted fair queuing across the calling apps.
//!
//! One line (FIFO) per app within each priority class. Every waiting `interactive` request
//! goes before any `batch` one; within a class, start-time fair queuing (SFQ): each line's
//! head carries a virtual start tag, the head with the smallest tag goes, the class's
//! virtual time becomes that tag, and the line's next head starts `SCALE / weight` later. A
//! line that was empty starts at the current virtual time, so idling earns no credit; a line
//! alone is served back to back (work-conserving). Tags are given to heads, not at arrival,
//! so a waiter that gives up (its `max_wait` ran out) leaves the others' tags untouched.
//!
//! Pure bookkeeping with no clock and no I/O: [`super::key_budget`] asks it who goes when
//! the budget has a slot, and tests count who went.

use crate::config::shares::Class;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Virtual time one request of weight 1 takes; weight `w` takes `SCALE / w`.
const SCALE: u64 = 1 << 20;

/// The waiters of one budget, `T` being how to wake one.
pub struct FairQueue<T> {
    classes: [Lines<T>; 2],
}

struct Lines<T> {
    vtime: u64,
    queued: usize,
    lines: HashMap<Arc<str>, Line<T>>,
}

struct Line<T> {
    /// The head's start tag; when the line is empty, the tag its next request would get.
    start: u64,
    cost: u64,
    /// (ticket, waiter), oldest first.
    waiting: VecDeque<(u64, T)>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            classes: [Lines::default(), Lines::default()],
        }
    }
}

impl<T> Default for Lines<T> {
    fn default() -> Self {
        Lines {
            vtime: 0,
            queued: 0,
            lines: HashMap::new(),
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `waiter` (identified by the unique `ticket`) at the back of `app`'s line in
    /// `class`; `weight` (≥ 1) is the line's weight from now on, so a reload applies at once.
    pub fn push(&mut self, class: Class, app: &Arc<str>, weight: u32, ticket: u64, waiter: T) {
        let c = &mut self.classes[class as usize];
        let v = c.vtime;
        let line = c.lines.entry(Arc::clone(app)).or_insert_with(|| Line {
            start: v,
            cost: 0,
            waiting: VecDeque::new(),
        });
        line.cost = SCALE / u64::from(weight.max(1));
        if line.waiting.is_empty() {
            line.start = line.start.max(v);
        }
        line.waiting.push_back((ticket, waiter));
        c.queued += 1;
    }

    /// The waiter that gets the slot that just came free, if anyone waits.
    pub fn pop(&mut self) -> Option<T> {
        let c = self.classes.iter_mut().find(|c| c.queued > 0)?;
        // Smallest start tag; equal tags go in arrival order (tickets increase).
        let line = c
            .lines
            .values_mut()
            .filter_map(|l| Some((l.start, l.waiting.front()?.0, l)))
            .min_by_key(|(start, ticket, _)| (*start, *ticket))
            .map(|(_, _, l)| l)?;
        let (_, waiter) = line.waiting.pop_front()?;
        c.vtime = c.vtime.max(line.start);
        line.start = line.start.saturating_add(line.cost);
        c.queued -= 1;
        c.prune();
        Some(waiter)
    }

    /// Takes back the waiter of `ticket` (it gave up); `None` if it already went.
    pub fn remove(&mut self, class: Class, app: &str, ticket: u64) -> Option<T> {
        let c = &mut self.classes[class as usize];
        let line = c.lines.get_mut(app)?;
        let at = line.waiting.iter().position(|(t, _)| *t == ticket)?;
        let (_, waiter) = line.waiting.remove(at)?;
        c.queued -= 1;
        c.prune();
        Some(waiter)
    }

    /// How many of those waiting now would go before a request of `app` queued now with
    /// `weight` (later arrivals in a higher class could only add to it): what lets a request
    /// that cannot get a slot within its wait be refused at once.
    pub fn ahead(&self, class: Class, app: &str, weight: u32) -> usize {
        let i = class as usize;
        let higher: usize = self.classes[..i].iter().map(|c| c.queued).sum();
        let c = &self.classes[i];
        let cost = SCALE / u64::from(weight.max(1));
        let (own, tag) = match c.lines.get(app) {
            Some(l) if !l.waiting.is_empty() => {
                let n = l.waiting.len();
                (n, l.start.saturating_add(cost.saturating_mul(n as u64)))
            }
            Some(l) => (0, l.start.max(c.vtime)),
            None => (0, c.vtime),
        };
        // Other lines' waiters with a tag up to ours (ties go to the older, i.e. them).
        let others: usize = c
            .lines
            .iter()
            .filter(|(name, l)| &***name != app && tag >= l.start && !l.waiting.is_empty())
            .map(|(_, l)| {
                let k = (tag - l.start) / l.cost.max(1) + 1;
                l.waiting
                    .len()
                    .min(usize::try_from(k).unwrap_or(usize::MAX))
            })
            .sum();
        higher + own + others
    }

    /// Requests waiting, all classes.
    pub fn len(&self) -> usize {
        self.classes.iter().map(|c| c.queued).sum()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Lines<T> {
    /// An empty line whose next tag is not ahead of the virtual time would start at the
    /// virtual time anyway: forgetting it changes nothing. When the class empties, its
    /// virtual time moves to the last tag handed out (SFQ's rule for an idle server) and every
    /// line goes, so the map holds at most the apps waiting plus those served lately.
    fn prune(&mut self) {
        if self.queued == 0 {
            let last = self.lines.values().map(|l| l.start).max().unwrap_or(0);
            self.vtime = self.vtime.max(last);
            self.lines.clear();
            return;
        }
        let v = self.vtime;
        self.lines
            .retain(|_, l| !l.waiting.is_empty() || l.start > v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::{Batch, Interactive};

    impl<T> FairQueue<T> {
        /// Lines remembered (waiting, or empty but still ahead of their class's virtual time).
        fn lines(&self) -> usize {
            self.classes.iter().map(|c| c.lines.len()).sum()
        }
    }

    struct Rig {
        q: FairQueue<&'static str>,
        ticket: u64,
        apps: HashMap<&'static str, Arc<str>>,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                q: FairQueue::default(),
                ticket: 0,
                apps: HashMap::new(),
            }
        }
        fn push(&mut self, class: Class, app: &'static str, weight: u32, n: usize) -> u64 {
            let name = self.apps.entry(app).or_insert_with(|| Arc::from(app));
            for _ in 0..n {
                self.ticket += 1;
                self.q.push(class, name, weight, self.ticket, app);
            }
            self.ticket
        }
        /// Who got the next `n` slots, per app.
        fn serve(&mut self, n: usize) -> HashMap<&'static str, usize> {
            let mut got = HashMap::new();
            for _ in 0..n {
                *got.entry(self.q.pop().unwrap()).or_default() += 1;
            }
            got
        }
    }

    #[test]
    fn backlogged_apps_share_by_weight() {
        let mut r = Rig::new();
        r.push(Batch, "sync", 3, 500);
        r.push(Batch, "export", 1, 500);
        let got = r.serve(400);
        assert_eq!((got["sync"], got["export"]), (300, 100));
        // Any prefix is fair too, not just the total: never more than one slot off.
        let mut r = Rig::new();
        r.push(Batch, "sync", 3, 100);
        r.push(Batch, "export", 1, 100);
        let mut sync = 0i64;
        for i in 1..=100i64 {
            sync += i64::from(r.q.pop().unwrap() == "sync");
            assert!((sync * 4 - 3 * i).abs() <= 4, "after {i}: {sync} to sync");
        }
    }

    #[test]
    fn interactive_goes_before_any_batch_and_a_lone_app_takes_every_slot() {
        let mut r = Rig::new();
        r.push(Batch, "sync", 1000, 300);
        let got = r.serve(50);
        assert_eq!(got["sync"], 50, "alone, it uses the whole budget");
        r.push(Interactive, "reception", 1, 1);
        assert_eq!(
            r.q.pop(),
            Some("reception"),
            "next slot, past 250 batch waiters"
        );
        assert_eq!(r.q.pop(), Some("sync"));
        assert_eq!(r.q.len(), 249);
    }

    #[test]
    fn a_line_that_was_idle_gets_no_credit_for_it() {
        let mut r = Rig::new();
        r.push(Batch, "sync", 1, 300);
        r.serve(200);
        // A newcomer starts at the current virtual time: it alternates with sync rather than
        // taking 200 slots in a row.
        r.push(Batch, "export", 1, 50);
        let got = r.serve(20);
        assert_eq!((got["sync"], got["export"]), (10, 10));
    }

    #[test]
    fn one_app_keeps_its_order_and_a_waiter_that_gives_up_costs_nobody() {
        let mut r = Rig::new();
        r.ticket = 3;
        let name: Arc<str> = Arc::from("a");
        for (t, w) in [(1, "a1"), (2, "a2"), (3, "a3")] {
            r.q.push(Batch, &name, 1, t, w);
        }
        r.push(Batch, "b", 1, 3);
        // a1 gave up: a2 takes its place in the rotation, a and b still alternate.
        assert_eq!(r.q.remove(Batch, "a", 1), Some("a1"));
        assert_eq!(r.q.remove(Batch, "a", 1), None, "gone already");
        let order: Vec<_> = std::iter::from_fn(|| r.q.pop()).collect();
        assert_eq!(order, ["a2", "b", "a3", "b", "b"]);
        assert!(r.q.is_empty());
        assert_eq!(r.q.remove(Batch, "nobody", 9), None);
    }

    #[test]
    fn a_new_weight_applies_to_the_next_requests() {
        let mut r = Rig::new();
        r.push(Batch, "sync", 1, 200);
        r.push(Batch, "export", 1, 200);
        assert_eq!(r.serve(20)["sync"], 10);
        // A reload made sync 4 times heavier: its next pushes carry the new weight.
        r.push(Batch, "sync", 4, 1);
        r.serve(40);
        let got = r.serve(100);
        assert!(got["sync"] >= 78 && got["sync"] <= 82, "{got:?}");
    }

    #[test]
    fn ahead_counts_who_would_go_first() {
        let mut r = Rig::new();
        r.push(Batch, "sync", 3, 30);
        r.push(Batch, "export", 1, 10);
        assert_eq!(r.q.ahead(Interactive, "desk", 1), 0);
        // A newcomer starts at the virtual time: behind each line's head, which has that tag.
        assert_eq!(r.q.ahead(Batch, "report", 1), 2);
        assert_eq!(r.q.ahead(Batch, "export", 1), 10 + 30);
        r.push(Interactive, "desk", 1, 2);
        assert_eq!(r.q.ahead(Batch, "report", 1), 4);
        // Check the count against what really happens.
        let before = r.q.ahead(Batch, "report", 1);
        r.push(Batch, "report", 1, 1);
        let order: Vec<_> = std::iter::from_fn(|| r.q.pop()).collect();
        assert_eq!(order.iter().position(|a| *a == "report"), Some(before));
    }

    #[test]
    fn idle_lines_are_forgotten() {
        let mut r = Rig::new();
        for app in ["a", "b", "c", "d"] {
            r.push(Interactive, app, 1, 2);
        }
        r.serve(8);
        assert!(r.q.is_empty());
        assert_eq!(r.q.lines(), 0);
    }
}
