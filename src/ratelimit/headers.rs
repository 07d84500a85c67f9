//! How long Cliniko's 429/503 asks us to wait (our own 429's headers are in
//! `crate::error::refusal`).

use crate::error::X_RATELIMIT_RESET;
use http::{HeaderMap, HeaderName, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest pause Cliniko's headers can impose on a key: a wild `Retry-After` or reset time
/// must not park a key for days (Cliniko's window is a minute).
pub const MAX_UPSTREAM_WAIT: Duration = Duration::from_secs(3600);

/// How long Cliniko asks us to wait: `Retry-After` (seconds or an HTTP date) or
/// `X-RateLimit-Reset` (unix seconds), the later of the two when both are present, at most
/// [`MAX_UPSTREAM_WAIT`].
pub fn upstream_wait(h: &HeaderMap) -> Option<Duration> {
    let now = SystemTime::now();
    let text = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = text(&header::RETRY_AFTER).and_then(|v| match v.parse::<u64>() {
        Ok(s) => Some(Duration::from_secs(s)),
        Err(_) => httpdate::parse_http_date(v)
            .ok()
            .map(|at| at.duration_since(now).unwrap_or_default()),
    });
    let reset = text(&X_RATELIMIT_RESET)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| {
            UNIX_EPOCH
                .checked_add(Duration::from_secs(s))
                .map_or(MAX_UPSTREAM_WAIT, |at| {
                    at.duration_since(now).unwrap_or_default()
                })
        });
    // `None` orders below any wait: the later of the two, or the one present.
    retry_after.max(reset).map(|w| w.min(MAX_UPSTREAM_WAIT))
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_waits_are_capped_and_never_panic() {
        let mut h = HeaderMap::new();
        h.insert(
            X_RATELIMIT_RESET,
            http::HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(upstream_wait(&h), Some(MAX_UPSTREAM_WAIT));
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, http::HeaderValue::from_static("86400"));
        assert_eq!(upstream_wait(&h), Some(MAX_UPSTREAM_WAIT));
    }

    use super::*;
    use http::HeaderValue;

    fn num(n: u64) -> HeaderValue {
        HeaderValue::from(n)
    }

    fn unix_now() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
    }

    #[test]
    fn clinikos_wait_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(upstream_wait(&h), None);
        h.insert(header::RETRY_AFTER, num(2));
        assert_eq!(upstream_wait(&h), Some(Duration::from_secs(2)));
        let in_5 = unix_now().as_secs() + 5;
        h.insert(X_RATELIMIT_RESET, num(in_5));
        let w = upstream_wait(&h).unwrap();
        assert!(
            w > Duration::from_secs(3) && w <= Duration::from_secs(5),
            "{w:?}"
        );
        h.remove(X_RATELIMIT_RESET);
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
        h.insert(header::RETRY_AFTER, HeaderValue::try_from(date).unwrap());
        let w = upstream_wait(&h).unwrap();
        assert!(w > Duration::from_secs(8), "{w:?}");
        // A reset in the past means "now".
        h.remove(header::RETRY_AFTER);
        h.insert(X_RATELIMIT_RESET, num(1));
        assert_eq!(upstream_wait(&h), Some(Duration::ZERO));
    }
}
