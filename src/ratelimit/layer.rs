//! The rate-limit layer: user limit, key budget (with shaping), then the forwarder, with
//! Cliniko's own throttling and connection failures handled on the way back.
//!
//! Resending is only ever done for requests without a body (nothing to replay, nothing that
//! can have been half-sent): a GET/HEAD after Cliniko's 429/503 (once, when its wait is within
//! `max_wait`), and any method after a connection failure (`connect_retries` times, jittered
//! exponential backoff from [`CONNECT_BACKOFF`]). A POST/PUT/PATCH/DELETE that Cliniko
//! answered is never resent.

use super::RateLimits;
use super::headers::upstream_wait;
use crate::auth::User;
use crate::body::Body;
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::error::ceil_secs;
use crate::replay::Replay;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tower::ServiceExt;

/// First backoff after a connection failure; doubles per retry, jittered down to half.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Cliniko's 429 without `Retry-After` or `X-RateLimit-Reset`: pause the key this long.
pub const DEFAULT_UPSTREAM_PAUSE: Duration = Duration::from_secs(5);

impl crate::step::Step for RateLimits {
    fn run<S>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, GatewayError>> + Send
    where
        S: crate::step::Next,
    {
        handle(self, inner, req)
    }
}

async fn handle<S>(
    l: Arc<RateLimits>,
    inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError>
where
    S: crate::step::Next,
{
    if let (Some(users), Some(user)) = (&l.users, req.extensions().get::<User>())
        && let Err(r) = users.check(user)
    {
        l.stats.refused_user.fetch_add(1, Ordering::Relaxed);
        return Err(GatewayError::RateLimited(r));
    }
    let Some(cred) = req.extensions().get::<Arc<Credential>>().cloned() else {
        return inner.oneshot(req).await;
    };
    let id = cred.budget_id();
    if let Some(b) = &l.budget {
        let who = l.shares.of(req.extensions().get::<User>());
        b.acquire(id, &who).await?;
    }

    let replay = Replay::of(&req);
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let resp = send(&l, inner.clone(), req, replay.as_ref()).await?;
    let Some(wait) = throttled(&resp) else {
        return Ok(resp);
    };
    l.stats.upstream_throttled.fetch_add(1, Ordering::Relaxed);
    let retry = safe && replay.is_some() && wait <= l.cfg.max_wait;
    let slot = pause(&l, id, wait, retry).await;
    let (Some(slot), Some(replay)) = (slot.filter(|_| retry), replay) else {
        return Ok(with_retry_after(resp, wait));
    };
    // Cliniko told us when; the first slot after its pause is ours. The refused answer's
    // body is dropped unread: the caller gets the retry's answer instead.
    drop(resp);
    tokio::time::sleep(slot).await;
    l.stats.upstream_retries.fetch_add(1, Ordering::Relaxed);
    let again = send(&l, inner, replay.build(), Some(&replay)).await?;
    match throttled(&again) {
        None => Ok(again),
        Some(wait) => {
            l.stats.upstream_throttled.fetch_add(1, Ordering::Relaxed);
            pause(&l, id, wait, false).await;
            Ok(with_retry_after(again, wait))
        }
    }
}

/// How long Cliniko wants us to back off, if this is a throttling answer.
fn throttled(resp: &Response<Body>) -> Option<Duration> {
    match resp.status() {
        StatusCode::TOO_MANY_REQUESTS => {
            Some(upstream_wait(resp.headers()).unwrap_or(DEFAULT_UPSTREAM_PAUSE))
        }
        // A 503 without a wait is an outage, not throttling: pass it on untouched.
        StatusCode::SERVICE_UNAVAILABLE => upstream_wait(resp.headers()),
        _ => None,
    }
}

/// Pauses the key budget (best effort: if Redis is down and fail-closed, the pause is lost,
/// and the caller still gets Cliniko's answer).
async fn pause(l: &RateLimits, id: &Arc<str>, wait: Duration, reserve: bool) -> Option<Duration> {
    let Some(budget) = &l.budget else {
        // No budget to pause (limits off): the resend simply waits Cliniko's wait.
        l.note_pause();
        return reserve.then_some(wait);
    };
    let r = budget.pause(id, wait, reserve).await;
    l.note_pause();
    match r {
        Ok(slot) => slot,
        Err(e) => {
            tracing::warn!(error = %e, "could not pause a key budget after Cliniko throttled it");
            None
        }
    }
}

/// Cliniko's throttling answer, passed on, always with a `Retry-After`.
fn with_retry_after(mut resp: Response<Body>, wait: Duration) -> Response<Body> {
    if !resp.headers().contains_key(header::RETRY_AFTER) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    }
    resp
}

/// Sends `req`, resending a bodiless one after connection failures.
async fn send<S>(
    l: &RateLimits,
    inner: S,
    req: Request<Body>,
    replay: Option<&Replay>,
) -> Result<Response<Body>, GatewayError>
where
    S: crate::step::Next,
{
    let mut attempt: u32 = 0;
    let mut next = Some(req);
    loop {
        let req = match (next.take(), replay) {
            (Some(r), _) => r,
            (None, Some(r)) => r.build(),
            (None, None) => return Err(GatewayError::UpstreamConnect),
        };
        match inner.clone().oneshot(req).await {
            Err(GatewayError::UpstreamConnect)
                if replay.is_some() && attempt < l.cfg.connect_retries =>
            {
                attempt += 1;
                l.stats.connect_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

/// `CONNECT_BACKOFF · 2^(attempt-1)`, scaled by a random factor in [0.5, 1).
fn backoff(attempt: u32) -> Duration {
    let full = CONNECT_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)).min(64);
    let mut b = [0u8; 1];
    let r = aws_lc_rs::rand::fill(&mut b).map_or(128, |_| b[0]);
    full / 2 + full * u32::from(r) / 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_bounded() {
        for attempt in 1..=5 {
            let full = CONNECT_BACKOFF * 2u32.pow(attempt - 1);
            for _ in 0..20 {
                let b = backoff(attempt);
                assert!(b >= full / 2 && b < full, "{attempt}: {b:?}");
            }
        }
    }

    #[test]
    fn only_bodiless_requests_can_be_replayed() {
        let get = Request::get("/v1/x").body(Body::empty()).unwrap();
        assert!(Replay::of(&get).is_some());
        let post = Request::post("/v1/x").body(Body::from("{}")).unwrap();
        assert!(Replay::of(&post).is_none());
    }

    #[test]
    fn throttling_answers() {
        let r = |s: u16, h: Option<(&'static str, &'static str)>| {
            let mut b = Response::builder().status(s);
            if let Some((k, v)) = h {
                b = b.header(k, v);
            }
            b.body(Body::empty()).unwrap()
        };
        assert_eq!(
            throttled(&r(429, None)),
            Some(DEFAULT_UPSTREAM_PAUSE),
            "a bare 429 still pauses"
        );
        assert_eq!(throttled(&r(503, None)), None, "a bare 503 is an outage");
        assert_eq!(
            throttled(&r(503, Some(("retry-after", "1")))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(throttled(&r(200, Some(("retry-after", "1")))), None);
    }
}
