//! A rate-limit refusal and the headers of our 429:
//!
//! ```text
//! Retry-After: <s>                          whole seconds, rounded up, >= 1
//! RateLimit-Policy: "<limit>";q=<rate>;w=<window s>
//! RateLimit: "<limit>";r=0;t=<s>           IETF draft (structured fields)
//! X-RateLimit-Limit: <rate>                 requests per window
//! X-RateLimit-Remaining: 0
//! X-RateLimit-Reset: <unix seconds>         when to retry, like Cliniko's own header
//! ```

use crate::config::Quota;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The per-user limit of the verified caller.
    User,
    /// The shared budget of a Cliniko key.
    Key,
}

impl Limit {
    /// The label callers, logs and metrics see.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::User => "user",
            Limit::Key => "key",
        }
    }
}

/// Which limit refused a request, and what the caller should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which limit.
    pub limit: Limit,
    /// Whole seconds until a retry may succeed (at least 1).
    pub retry_after_secs: u64,
    /// The refusing quota's requests per window.
    pub quota: u32,
    /// The refusing quota's window in whole seconds (at least 1).
    pub window_secs: u64,
}

impl Refusal {
    /// A refusal by `quota` whose next slot is `wait` away.
    pub fn new(limit: Limit, quota: &Quota, wait: Duration) -> Refusal {
        Refusal {
            limit,
            retry_after_secs: ceil_secs(wait),
            quota: quota.rate,
            window_secs: ceil_secs(quota.period),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.limit {
            Limit::User => "the per-user rate limit for this caller",
            Limit::Key => "the shared budget of this Cliniko API key",
        };
        write!(
            f,
            "rate limited by the {} limit: {what} is used up; retry after {} s",
            self.limit.as_str(),
            self.retry_after_secs
        )
    }
}

/// Whole seconds, rounded up, at least 1 (what `Retry-After` may carry).
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// `RateLimit-Policy` (IETF draft).
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft).
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset` (unix seconds, as Cliniko sends it).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Adds every header of our 429 for `r`.
pub fn apply(h: &mut HeaderMap, r: &Refusal) {
    let (t, limit) = (r.retry_after_secs.max(1), r.limit.as_str());
    h.insert(header::RETRY_AFTER, HeaderValue::from(t));
    if let Ok(v) = HeaderValue::try_from(format!("\"{limit}\";q={};w={}", r.quota, r.window_secs)) {
        h.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::try_from(format!("\"{limit}\";r=0;t={t}")) {
        h.insert(RATELIMIT, v);
    }
    h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(r.quota));
    h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(0));
    h.insert(X_RATELIMIT_RESET, HeaderValue::from(unix_now() + t));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_429_headers() {
        let mut h = HeaderMap::new();
        let r = Refusal {
            limit: Limit::Key,
            retry_after_secs: 3,
            quota: 190,
            window_secs: 60,
        };
        apply(&mut h, &r);
        assert_eq!(h[header::RETRY_AFTER], "3");
        assert_eq!(h[RATELIMIT_POLICY], "\"key\";q=190;w=60");
        assert_eq!(h[RATELIMIT], "\"key\";r=0;t=3");
        assert_eq!(h[X_RATELIMIT_LIMIT], "190");
        assert_eq!(h[X_RATELIMIT_REMAINING], "0");
        let reset: u64 = h[X_RATELIMIT_RESET].to_str().unwrap().parse().unwrap();
        assert!(reset.abs_diff(unix_now() + 3) <= 1);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }
}
