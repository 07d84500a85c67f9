//! What the cache stores and under which key.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use crate::credentials::CredentialId;

/// Credential + target + `Accept`: two different keys can never share a key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Who fetched it.
    pub credential: CredentialId,
    /// Path and query exactly as received (Cliniko's queries are not normalisable safely).
    pub target: Arc<str>,
    /// The caller's `Accept`, if any.
    pub accept: Option<HeaderValue>,
}

impl CacheKey {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

// By hand: a query string can carry patient names (`q[]=last_name:=…`); only the path shows.
impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKey")
            .field("credential", &self.credential)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// Identity callers' hits that decode an entry's gzip copy before the entry is stored again
/// holding the decoded copy too: a second one says the entry is read that way, and every
/// further hit would decode it again (~270,000 instructions for a 15 KB page against ~60,000
/// for the whole hit otherwise; benches/RESULTS.md).
pub const DECODES_BEFORE_PLAIN: u32 = 2;

/// One stored 200 answer, links already rewritten.
pub struct Entry {
    /// Response headers (hop-by-hop and length headers removed).
    pub headers: HeaderMap,
    /// The body as stored, shared without copying: gzip when `gzipped`.
    pub body: Bytes,
    /// `body` is one gzip member (no `Content-Encoding` in `headers`: it is added per caller).
    pub gzipped: bool,
    /// The decoded body beside the gzip copy, for callers that do not take gzip: only in an
    /// entry identity callers read (see `DECODES_BEFORE_PLAIN`), and charged in its weight.
    pub plain: Option<Bytes>,
    /// The body's length once decoded (its `Content-Length` for identity callers and HEAD).
    pub plain_len: usize,
    /// Hits that decoded the gzip copy (only counted while `plain` is `None`).
    pub decodes: AtomicU32,
    /// When it was fetched or last revalidated.
    pub stored: Instant,
    /// Fresh for this long.
    pub ttl: Duration,
}

// By hand: the body and headers are patient data; a Debug print shows only their size.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("headers", &self.headers.len())
            .field("body_bytes", &self.body.len())
            .field("gzipped", &self.gzipped)
            .field("plain_bytes", &self.plain.as_ref().map(Bytes::len))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What one entry costs besides its body and headers: the moka node (key hash, access-order
/// and timer links, the `Arc`s), the `Entry` and `CacheKey` structs and the header map's index
/// table (measured with benches/memory.sh; see benches/RESULTS.md).
const ENTRY_OVERHEAD: usize = 512;

/// What one stored header costs: its bucket in the map (name, value, hash, links).
const HEADER_OVERHEAD: usize = 128;

/// The bytes an allocation of `n` really takes: jemalloc rounds to four classes per doubling
/// (16-byte steps up to 128), glibc adds an 8-byte header in 16-byte steps; the larger of the
/// two, so the bound holds under either.
pub fn allocated(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let step = (n.next_power_of_two() / 8).max(16);
    let jemalloc = n.div_ceil(step) * step;
    let glibc = (n + 8).div_ceil(16) * 16;
    jemalloc.max(glibc).max(32)
}

impl Entry {
    /// The entry's ETag, if Cliniko sent one.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    /// Still within its TTL.
    pub fn is_fresh(&self) -> bool {
        self.stored.elapsed() < self.ttl
    }

    /// The same entry, confirmed fresh now (after a 304).
    pub fn revalidated(&self) -> Entry {
        Entry {
            stored: Instant::now(),
            ..self.with_plain(self.plain.clone())
        }
    }

    /// The same entry (same fetch time), holding `plain` as its decoded copy.
    pub fn with_plain(&self, plain: Option<Bytes>) -> Entry {
        Entry {
            headers: self.headers.clone(),
            body: self.body.clone(),
            gzipped: self.gzipped,
            plain,
            plain_len: self.plain_len,
            decodes: AtomicU32::new(0),
            stored: self.stored,
            ttl: self.ttl,
        }
    }

    /// Counts one decode of the gzip copy; `true` once the decoded copy is worth keeping (and
    /// on every decode after, in case storing it was skipped for a purge under way).
    pub fn decoded_once_more(&self) -> bool {
        self.decodes.fetch_add(1, Ordering::Relaxed) + 1 >= DECODES_BEFORE_PLAIN
    }

    /// Bytes charged against the capacity: what the process holds for it, allocator rounding
    /// included (body, header values and names, the key's target), plus fixed bookkeeping.
    pub fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| HEADER_OVERHEAD + allocated(k.as_str().len()) + allocated(v.len()))
            .sum();
        let key_len = allocated(key.target.len() + 16)
            + key.accept.as_ref().map_or(0, |a| allocated(a.len()));
        let plain = self.plain.as_ref().map_or(0, |p| allocated(p.len()));
        let total = allocated(self.body.len()) + plain + headers + key_len + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// How long moka keeps it from now: the TTL, plus the cache's revalidation `window` when it
    /// has an ETag, counted from its fetch (an entry stored again with its decoded copy keeps
    /// its end).
    fn lifetime(&self, window: Duration) -> Duration {
        let whole = if self.etag().is_some() {
            self.ttl + window
        } else {
            self.ttl
        };
        whole.saturating_sub(self.stored.elapsed())
    }
}

/// moka expiry policy: each entry lives for its own lifetime from its (re)insertion; an entry
/// with an ETag is kept the cache's revalidation window (this) past its TTL.
pub(super) struct Lifetime(pub(super) Duration);

impl moka::Expiry<CacheKey, Arc<Entry>> for Lifetime {
    fn expire_after_create(
        &self,
        _k: &CacheKey,
        v: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(v.lifetime(self.0))
    }

    fn expire_after_update(
        &self,
        _k: &CacheKey,
        v: &Arc<Entry>,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.lifetime(self.0))
    }
}

/// Weak comparison of a caller's `If-None-Match` against an ETag (RFC 9110 §13.1.2).
pub fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let (Ok(list), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else {
        return false;
    };
    // Weak: `W/"x"` and `"x"` match (compared in place, nothing copied).
    let ours = etag.trim().trim_start_matches("W/");
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_round_up_to_size_classes() {
        for (n, want) in [
            (0, 0),
            (1, 32),
            (17, 32),
            (100, 112),
            (129, 160),
            (5000, 5120),
            (17 * 1024, 20 * 1024),
            (1 << 20, (1 << 20) + 16),
            ((1 << 20) + 1, 1280 * 1024),
        ] {
            assert_eq!(allocated(n), want, "{n}");
        }
    }

    #[test]
    fn weak_etag_comparison() {
        let e = HeaderValue::from_static("W/\"abc\"");
        assert!(etag_matches(&HeaderValue::from_static("\"abc\""), &e));
        assert!(etag_matches(
            &HeaderValue::from_static("\"x\", W/\"abc\""),
            &e
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &e));
        assert!(!etag_matches(&HeaderValue::from_static("\"abcd\""), &e));
    }
}
