//! Between the cache and the rate limits: a cap on each verified user's requests in flight to
//! Cliniko (`upstream.max_in_flight_per_user`), so one caller cannot take all the concurrent
//! streams Cliniko allows on a shard's one shared HTTP/2 connection.
//!
//! A request takes a slot when it passes here (cache hits never get this far) and gives it
//! back when its response body has been delivered whole or is dropped: the slot travels in
//! the body ([`crate::body::observe`]). So a caller who stops reading keeps its slots, exactly
//! as long as its unread answers keep their Cliniko streams open, and no longer than
//! `server.send_timeout`. Over the cap: 429 `too_many_in_flight` at once, never queued and
//! never sent. Not part of `[ratelimit]`: switching rate limits off leaves it on.
//!
//! The table holds one counter per user with something in flight and drops a user when the
//! count returns to 0, so it is bounded by the requests in flight and needs no expiry.

use crate::auth::User;
use crate::body::{Body, BodyObserver, observe};
use crate::error::GatewayError;
use http::{Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tower::ServiceExt;

/// The per-user cap and who holds how many slots.
pub struct InFlight {
    max: usize,
    users: Mutex<HashMap<Arc<str>, usize>>,
    refused: AtomicU64,
}

/// One request's slot; given back when dropped (with the response body that carries it).
pub struct Slot {
    owner: Arc<InFlight>,
    user: Arc<str>,
}

impl BodyObserver for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut users = self.owner.users();
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl InFlight {
    /// At most `max` requests in flight per user.
    pub fn new(max: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            max,
            users: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    fn users(&self) -> MutexGuard<'_, HashMap<Arc<str>, usize>> {
        // Only counters inside; a panic elsewhere cannot leave them inconsistent.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `user`, or `None` when it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, user: &Arc<str>) -> Option<Slot> {
        let mut users = self.users();
        let n = users.entry(Arc::clone(user)).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: Arc::clone(self),
            user: Arc::clone(user),
        })
    }

    /// Requests in flight to Cliniko now, all users together.
    pub fn in_flight(&self) -> u64 {
        // At scrape time only: the table's own counts, no second counter on the hot path.
        self.users().values().map(|n| *n as u64).sum()
    }

    /// Requests refused with `too_many_in_flight` since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Users holding at least one slot (for tests of the pruning).
    #[cfg(test)]
    fn users_tracked(&self) -> usize {
        self.users().len()
    }
}

impl crate::step::Step for InFlight {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        // Every request that gets here was authenticated; without a user there is no one to
        // count against (as with the per-user rate limit).
        let Some(user) = req.extensions().get::<User>().map(|u| u.id.clone()) else {
            return inner.oneshot(req).await;
        };
        let Some(slot) = self.try_acquire(&user) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(GatewayError::TooManyInFlight { max: self.max });
        };
        // An error or a dropped future gives the slot back at once; an answer keeps it until its
        // body is done with.
        let resp = inner.oneshot(req).await?;
        Ok(resp.map(|b| observe(b, slot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_max_slots_and_gets_them_back() {
        let f = InFlight::new(2);
        let (a, b): (Arc<str>, Arc<str>) = ("alice".into(), "dave".into());
        let a1 = f.try_acquire(&a).unwrap();
        let a2 = f.try_acquire(&a).unwrap();
        assert!(f.try_acquire(&a).is_none(), "a third slot for alice");
        // Another user is not affected.
        let b1 = f.try_acquire(&b).unwrap();
        assert_eq!((f.in_flight(), f.users_tracked()), (3, 2));
        drop(a1);
        let a3 = f.try_acquire(&a).unwrap();
        drop((a2, a3, b1));
        assert_eq!((f.in_flight(), f.users_tracked()), (0, 0), "nothing kept");
    }

    #[tokio::test]
    async fn the_slot_lives_as_long_as_the_body() {
        use http_body_util::BodyExt;
        let f = InFlight::new(1);
        let a: Arc<str> = "alice".into();
        let body = observe(Body::from("answer"), f.try_acquire(&a).unwrap());
        assert!(f.try_acquire(&a).is_none());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"answer");
        assert_eq!(f.in_flight(), 0, "read whole and dropped: given back");
        let unread = observe(Body::from("answer"), f.try_acquire(&a).unwrap());
        assert_eq!(f.in_flight(), 1);
        drop(unread);
        assert!(f.try_acquire(&a).is_some(), "dropped unread: given back");
    }
}
