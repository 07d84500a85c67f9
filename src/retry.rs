//! Sending to Cliniko again: the one place that decides it, under one policy
//! (`[upstream.retries]`), whatever `[ratelimit]` says. Just above the forwarder, so a resend
//! spends no budget and passes no limit twice.
//!
//! Only requests without a body are resent (nothing to replay, nothing half-sent):
//! - the connection failed (nothing was sent): any method, up to `connect` times, after a
//!   jittered backoff doubling from `backoff`;
//! - a reused connection closed before Cliniko answered (it had closed it while idle): a
//!   GET/HEAD/OPTIONS, once, at once (the pool hands out a fresh connection). Not another
//!   method: Cliniko may have acted on it before the connection died;
//! - Cliniko's 429, or a 503 with a wait: a GET/HEAD/OPTIONS, once, when `throttled` and the
//!   wait is within `max_wait`, taking the first slot of the key's budget after the pause.
//!
//! Every throttling answer pauses the key's budget (the rate limits', asked from here) and is
//! passed on with a `Retry-After` when it is not resent. A POST/PUT/PATCH/DELETE that Cliniko
//! answered is never resent.

use crate::body::Body;
use crate::config::RetryConfig;
use crate::credentials::Credential;
use crate::error::{GatewayError, ceil_secs};
use crate::ratelimit::RateLimits;
use crate::ratelimit::headers::upstream_wait;
use crate::replay::Replay;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::ServiceExt;

/// Cliniko's 429 without `Retry-After` or `X-RateLimit-Reset`: pause the key this long.
pub const DEFAULT_UPSTREAM_PAUSE: Duration = Duration::from_secs(5);

/// Resends by reason, for metrics and tests (they carry over reloads).
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Resent after Cliniko's pause.
    pub throttled: AtomicU64,
    /// Resent after a connection failure.
    pub connect: AtomicU64,
    /// Resent after a reused connection closed before answering.
    pub stale: AtomicU64,
}

/// The retry policy and what it needs; rebuilt on every reload (it holds no state but its
/// counters).
#[derive(Debug)]
pub struct Retries {
    cfg: RetryConfig,
    /// `cfg.max_wait`, or `ratelimit.max_wait` when unset.
    max_wait: Duration,
    /// Paused when Cliniko throttles.
    limits: Arc<RateLimits>,
    stats: Arc<RetryStats>,
}

impl Retries {
    /// The policy of `cfg` (`max_wait`: the default wait), with `prev`'s counters.
    pub fn new(
        cfg: &RetryConfig,
        max_wait: Duration,
        limits: Arc<RateLimits>,
        prev: Option<&Retries>,
    ) -> Arc<Retries> {
        Arc::new(Retries {
            cfg: cfg.clone(),
            max_wait: cfg.max_wait.unwrap_or(max_wait),
            limits,
            stats: prev.map(|p| p.stats.clone()).unwrap_or_default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &RetryStats {
        &self.stats
    }

    /// Sends `req`, and a bodiless one again after a failed connect or a closed reused
    /// connection, as the policy allows.
    async fn send<S>(
        &self,
        inner: S,
        req: Request<Body>,
        replay: Option<&Replay>,
    ) -> Result<Response<Body>, GatewayError>
    where
        S: crate::step::Next,
    {
        // Nothing to resend with (a body): one try, its answer as it is.
        let Some(replay) = replay else {
            return inner.oneshot(req).await;
        };
        let (mut connects, mut stale) = (0, false);
        let idempotent = safe(&replay.head.method);
        let mut req = req;
        loop {
            match inner.clone().oneshot(req).await {
                Err(GatewayError::UpstreamConnect) if connects < self.cfg.connect => {
                    connects += 1;
                    self.stats.connect.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(self.cfg.backoff, connects)).await;
                }
                Err(GatewayError::UpstreamClosed) if idempotent && !stale => {
                    stale = true;
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
            req = replay.build();
        }
    }
}

impl crate::step::Step for Retries {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        // The forwarder answers nothing without a credential: nothing to resend or pause.
        let Some(cred) = req.extensions().get::<Arc<Credential>>().cloned() else {
            return inner.oneshot(req).await;
        };
        let replay = Replay::of(&req);
        let safe = safe(req.method());
        let resp = self.send(inner.clone(), req, replay.as_ref()).await?;
        let Some(wait) = throttled(&resp) else {
            return Ok(resp);
        };
        let resend = self.cfg.throttled && safe && replay.is_some() && wait <= self.max_wait;
        // Cliniko's wait pauses the key's budget; a resend is kept the first slot after it.
        let slot = self.limits.throttled(&cred, wait, resend).await;
        let (Some(slot), Some(replay)) = (slot.filter(|_| resend), replay) else {
            return Ok(with_retry_after(resp, wait));
        };
        // Cliniko told us when; the first slot after its pause is ours. The refused answer's
        // body is dropped unread: the caller gets the resend's answer instead.
        drop(resp);
        tokio::time::sleep(slot).await;
        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
        let again = self.send(inner, replay.build(), Some(&replay)).await?;
        match throttled(&again) {
            None => Ok(again),
            Some(wait) => {
                self.limits.throttled(&cred, wait, false).await;
                Ok(with_retry_after(again, wait))
            }
        }
    }
}

/// The methods sent again once Cliniko may have seen them (a closed connection, a throttling
/// answer): GET, HEAD and OPTIONS, safe by definition (RFC 9110 §9.2.1), so a second arrival
/// changes nothing. One rule for both resends: which methods may arrive twice does not depend
/// on why the first try failed (the 429 resend used to leave OPTIONS out, for no reason).
fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
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

/// Cliniko's throttling answer, passed on, always with a `Retry-After`.
fn with_retry_after(mut resp: Response<Body>, wait: Duration) -> Response<Body> {
    if !resp.headers().contains_key(header::RETRY_AFTER) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    }
    resp
}

/// `first · 2^(attempt-1)`, scaled by a random factor in [0.5, 1).
fn backoff(first: Duration, attempt: u32) -> Duration {
    let full = first * 2u32.saturating_pow(attempt.saturating_sub(1)).min(64);
    let mut b = [0u8; 1];
    let r = aws_lc_rs::rand::fill(&mut b).map_or(128, |_| b[0]);
    full / 2 + full * u32::from(r) / 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_bounded() {
        let first = Duration::from_millis(100);
        for attempt in 1..=5 {
            let full = first * 2u32.pow(attempt - 1);
            for _ in 0..20 {
                let b = backoff(first, attempt);
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
