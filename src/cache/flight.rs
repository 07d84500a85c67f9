//! Single flight: concurrent misses for one key share one upstream request.
//!
//! Each caller joins a `OnceCell` for its key; the first to arrive runs its own fetch and the
//! others wait for that result. If the runner is cancelled (its caller went away), tokio hands
//! the job to the next waiter, so nobody is left hanging; and whoever leaves last, finished or
//! cancelled, takes the cell out of the map, so abandoned keys cannot pile up.

use super::entry::{CacheKey, Entry};
use crate::error::GatewayError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

/// What one flight produced, shared by everybody who waited for it.
#[derive(Clone, Debug)]
pub enum Landed {
    /// Stored (or storable): serve it.
    Entry(Arc<Entry>),
    /// Not shareable: the runner keeps its own answer (a non-cacheable response, or a refusal
    /// that concerns only its caller, like a per-user 429); waiters ask for themselves.
    Uncacheable,
    /// Cliniko could not be reached or refused the key: the same for every caller on this key,
    /// so everybody gets it, and nothing is cached.
    Failed(GatewayError),
}

type Cell = Arc<OnceCell<Landed>>;

/// Takes `n` more bytes of `reserve` (a permit per byte that answers being read in to be
/// stored may hold) into `held`, one fill's share; `false` (taking nothing) when the allowance
/// would be overrun. Whatever `held` holds goes back when it is dropped (the fill finished,
/// gave up, or was cancelled with its caller).
pub fn take<'a>(reserve: &'a Semaphore, held: &mut Option<SemaphorePermit<'a>>, n: usize) -> bool {
    let more = u32::try_from(n).map(|n| reserve.try_acquire_many(n));
    let Ok(Ok(more)) = more else {
        return false;
    };
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
    true
}

/// The flights in progress.
#[derive(Default)]
pub struct Flights {
    cells: Mutex<HashMap<CacheKey, Cell>>,
}

/// Removes the cell when its last participant leaves (normally or by cancellation).
struct Leave<'a> {
    flights: &'a Flights,
    key: &'a CacheKey,
    cell: Cell,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.flights.cells.lock()
            && m.get(self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell))
            // The map's reference and ours: nobody else is waiting on it.
            && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
        {
            m.remove(self.key);
        }
    }
}

impl Flights {
    /// Runs `fetch` unless a flight for `key` is already up, and returns what landed.
    pub async fn run<F, Fut>(&self, key: &CacheKey, fetch: F) -> Landed
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Landed>,
    {
        let cell = match self.cells.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            // A poisoned map only costs coalescing, never correctness.
            Err(_) => Arc::new(OnceCell::new()),
        };
        // The guard holds our only reference, so its count check sees exactly who is waiting.
        let leave = Leave {
            flights: self,
            key,
            cell,
        };
        leave.cell.get_or_init(fetch).await.clone()
    }

    /// Flights currently tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cells.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// No flight is tracked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::CredentialId;

    fn key(n: usize) -> CacheKey {
        CacheKey {
            credential: CredentialId([0; 32]),
            target: format!("/v1/patients?x={n}").into(),
            accept: None,
        }
    }

    #[test]
    fn fills_share_the_reserve_and_give_it_back() {
        let r = Semaphore::new(100);
        let (mut a, mut b) = (None, None);
        assert!(take(&r, &mut a, 60));
        assert!(!take(&r, &mut b, 41), "over the allowance");
        assert!(take(&r, &mut b, 40));
        drop(a);
        assert!(take(&r, &mut b, 60));
        drop(b);
        assert!(take(&r, &mut None, 100));
    }

    #[tokio::test]
    async fn cancelled_flights_leave_nothing_behind() {
        let flights = Flights::default();
        for n in 0..200 {
            let k = key(n);
            let run = flights.run(&k, std::future::pending::<Landed>);
            // Polled once (the cell is in the map), then dropped as a disconnecting caller would.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), run).await;
        }
        assert_eq!(flights.len(), 0);
        let k = key(1);
        let landed = flights.run(&k, || async { Landed::Uncacheable }).await;
        assert!(matches!(landed, Landed::Uncacheable));
        assert!(flights.is_empty());
    }
}
