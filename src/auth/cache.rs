//! Verified-token cache: skips signature checks for tokens seen recently.
//!
//! Keyed by the SHA-256 of the token (the token itself is never stored), holding the token's
//! verified [`User`]. Each entry expires no later than the token's `exp`, capped at
//! [`MAX_TTL`] so key rotation takes effect soon.

use super::User;
use super::verify::exp_of;
use moka::Expiry;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest time a verified token is remembered, whatever its `exp`.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(300);

/// SHA-256 of a token.
pub(crate) type TokenHash = [u8; 32];

/// Hashes a token for use as a cache key.
pub(crate) fn hash(token: &str) -> TokenHash {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    // Never a default on a length mismatch (every token would share one entry): SHA-256 is
    // 32 bytes, and copy_from_slice panics otherwise.
    let mut h = TokenHash::default();
    h.copy_from_slice(d.as_ref());
    h
}

/// Time since the epoch (zero if the clock is before 1970).
pub(crate) fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// How long an entry for a token expiring at `exp` may live, seen at `now`.
pub(crate) fn ttl_for(exp: u64, now: Duration) -> Duration {
    Duration::from_secs(exp).saturating_sub(now).min(MAX_TTL)
}

/// Each entry lives until its token's `exp` (at most [`MAX_TTL`]).
pub(crate) struct UntilExp;

// A token inserted again (two first requests at once) has the same `exp`: moka's default for
// an update, keeping the entry's expiry, is right. Only users with an `exp` are inserted.
impl Expiry<TokenHash, User> for UntilExp {
    fn expire_after_create(&self, _: &TokenHash, u: &User, _: Instant) -> Option<Duration> {
        Some(ttl_for(exp_of(&u.claims).unwrap_or(0), now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_never_outlives_exp_and_is_capped() {
        let now = Duration::from_millis(1_000_500);
        assert_eq!(ttl_for(1_000, now), Duration::ZERO);
        assert_eq!(ttl_for(999, now), Duration::ZERO);
        assert_eq!(ttl_for(1_010, now), Duration::from_millis(9_500));
        assert_eq!(ttl_for(u64::MAX / 2, now), MAX_TTL);
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
