//! Single flight: concurrent misses for one key share one upstream request.
//!
//! Each caller joins a `OnceCell` for its key; the first to arrive runs its own fetch and the
//! others wait for that result. If the runner is cancelled (its caller went away), tokio hands
//! the job to the next waiter, so nobody is left hanging.

use super::entry::{CacheKey, Entry};
use crate::error::GatewayError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// What one flight produced, shared by everybody who waited for it.
#[derive(Clone, Debug)]
pub enum Landed {
    /// Stored (or storable): serve it.
    Entry(Arc<Entry>),
    /// Cliniko answered something not cacheable (the runner keeps that answer; waiters must
    /// ask Cliniko themselves).
    Uncacheable,
    /// The upstream failed: everybody gets the same error, and nothing is cached.
    Failed(GatewayError),
}

type Cell = Arc<OnceCell<Landed>>;

/// The flights in progress.
#[derive(Default)]
pub struct Flights {
    cells: Mutex<HashMap<CacheKey, Cell>>,
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
        let landed = cell.get_or_init(fetch).await.clone();
        if let Ok(mut m) = self.cells.lock()
            && m.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            m.remove(key);
        }
        landed
    }
}
