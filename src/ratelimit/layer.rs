//! The rate-limit layer: the user limit, then the key budget (with shaping), then the rest of
//! the journey. What Cliniko's own throttling does to a budget is asked from the retry layer
//! below ([`RateLimits::throttled`]).

use super::RateLimits;
use crate::auth::User;
use crate::body::Body;
use crate::credentials::Credential;
use crate::error::GatewayError;
use http::{Request, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tower::ServiceExt;

impl crate::step::Step for RateLimits {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        if let (Some(users), Some(user)) = (&self.users, req.extensions().get::<User>())
            && let Err(r) = users.check(user)
        {
            self.stats.refused_user.fetch_add(1, Ordering::Relaxed);
            return Err(GatewayError::RateLimited(r));
        }
        if let (Some(b), Some(cred)) = (&self.budget, req.extensions().get::<Arc<Credential>>()) {
            let who = self.shares.of(req.extensions().get::<User>());
            b.acquire(&cred.budget, &who).await?;
        }
        inner.oneshot(req).await
    }
}

impl RateLimits {
    /// Cliniko throttled a request on `cred`'s key for `wait`: its budget is paused so nobody
    /// goes before then (best effort: if Redis is down and fail-closed, the pause is lost, and
    /// the caller still gets Cliniko's answer). With `reserve`, the first slot after the pause
    /// is kept for the caller and its wait returned; without a budget (limits off) that is
    /// Cliniko's wait.
    pub async fn throttled(
        &self,
        cred: &Credential,
        wait: Duration,
        reserve: bool,
    ) -> Option<Duration> {
        self.stats
            .upstream_throttled
            .fetch_add(1, Ordering::Relaxed);
        let slot = match &self.budget {
            None => Ok(reserve.then_some(wait)),
            Some(b) => b.pause(&cred.budget, wait, reserve).await,
        };
        self.pauses.send_modify(|c| *c += 1);
        slot.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not pause a key budget after Cliniko throttled it");
            None
        })
    }
}
