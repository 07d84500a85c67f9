//! The one typed record of a request's facts, shared by every layer through the request's
//! extensions (as `Arc<Context>`).
//!
//! The server records what it saw on the wire ([`Arrival`]); the outermost layer
//! ([`ContextLayer`]) turns that into a [`Context`] with the gateway's own request id; each
//! inner layer then writes the one fact it knows (auth the user, the cache its outcome, the
//! forwarder the shard and Cliniko's status, the rescue the error code), and the access log,
//! the audit, metrics and spans read them back when the answer is done. Facts are write-once
//! (`OnceLock`): a layer cannot overwrite what another one recorded.

use crate::body::Body;
use crate::config::is_plain;
use crate::error::ErrorCode;
use crate::step::{Answer, Inner, Wrap};
use http::{HeaderName, HeaderValue, Request};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};

/// `X-Request-Id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id (plain ASCII, at most 128 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    /// A fresh UUID, formatted on the stack (no `Display` machinery, no String).
    pub fn fresh() -> RequestId {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId(HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown")))
    }

    /// The caller's id, if it is short and plain (`[A-Za-z0-9._-]`, ≤ 128 bytes): anything
    /// else could break a log line, so it is not kept.
    fn from_caller(v: &HeaderValue) -> Option<RequestId> {
        let b = v.as_bytes();
        let plain = !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        plain.then(|| RequestId(v.clone()))
    }
}

/// `s` if it is a plain token (`[A-Za-z0-9._~:@-]`, at most 128 bytes), else `?`: the record
/// must not carry encoded bytes, control characters or anything built to confuse a reader.
pub fn plain(s: &str) -> &str {
    if is_plain(s) { s } else { "?" }
}

/// What the server saw before any layer ran (inserted by the server, folded into the
/// [`Context`] by [`ContextLayer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The raw head had both Content-Length and Transfer-Encoding (hyper hides it).
    pub ambiguous_length: bool,
    /// The target had bytes the server had to make parseable: what the request shows is only
    /// a stand-in for what was sent.
    pub unusable_target: bool,
}

/// How the cache handled a request (also the `X-Cache` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Answered from a fresh entry.
    Hit,
    /// Fetched from Cliniko.
    Miss,
    /// A stale entry that Cliniko confirmed (304).
    Revalidated,
    /// Not cacheable (method, rule, `no-store`).
    Bypass,
}

impl CacheOutcome {
    /// `HIT`, `MISS`, `REVALIDATED` or `BYPASS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Revalidated => "REVALIDATED",
            CacheOutcome::Bypass => "BYPASS",
        }
    }
}

/// A fresh id: what a request gets unless told otherwise.
impl Default for RequestId {
    fn default() -> Self {
        RequestId::fresh()
    }
}

/// The facts of one request.
#[derive(Debug, Default)]
pub struct Context {
    /// The gateway's own id: what logs and the audit are keyed by.
    pub id: RequestId,
    /// The caller's `X-Request-Id`, when it sent a plain one (logged beside ours, echoed back
    /// and forwarded to Cliniko so the caller's traces join up).
    pub client_id: Option<RequestId>,
    /// Who sent it: the TCP peer, or behind a trusted proxy the address it forwarded.
    pub client_addr: Option<IpAddr>,
    /// What the server saw on the wire.
    pub arrival: Arrival,
    /// The verified user, if any (see [`Context::set_user`]).
    pub user: OnceLock<Arc<str>>,
    /// The calling app, if the token named one.
    pub app: OnceLock<Arc<str>>,
    /// The shard the request went to, once routed.
    pub shard: OnceLock<Arc<str>>,
    /// How the cache handled the request, once known.
    pub cache: OnceLock<CacheOutcome>,
    /// The gateway's error code, if it answered with one (set where errors are rendered).
    pub error: OnceLock<ErrorCode>,
    upstream_status: AtomicU16,
    body_limit_tripped: AtomicBool,
    accepts_gzip: AtomicBool,
}

impl Context {
    /// A context for a request that arrived as `arrival` (ids and address not yet worked out).
    pub fn new(arrival: Arrival) -> Context {
        Context {
            client_addr: arrival.peer.map(|p| p.ip()),
            arrival,
            ..Context::default()
        }
    }

    /// The request's context (layers below [`ContextLayer`] always find one).
    pub fn of<B>(req: &Request<B>) -> Option<&Arc<Context>> {
        req.extensions().get::<Arc<Context>>()
    }

    /// The id the caller sees (response header, error bodies): theirs when they sent one.
    pub fn visible_id(&self) -> &RequestId {
        self.client_id.as_ref().unwrap_or(&self.id)
    }

    /// The verified user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(|u| &**u)
    }

    /// Records the verified user and the calling app.
    pub fn set_user(&self, user: Arc<str>, app: Option<Arc<str>>) {
        let _ = self.user.set(user);
        if let Some(app) = app {
            let _ = self.app.set(app);
        }
    }
    /// Records Cliniko's status.
    pub fn set_upstream_status(&self, s: u16) {
        self.upstream_status.store(s, Ordering::Relaxed);
    }
    /// Records that the request body went over the limit mid-stream.
    pub fn trip_body_limit(&self) {
        self.body_limit_tripped.store(true, Ordering::Relaxed);
    }

    /// Records that the caller takes gzip (set by the compression layer, so only while
    /// compression is on): the cache may then send its stored gzip copy as it is.
    pub fn set_accepts_gzip(&self) {
        self.accepts_gzip.store(true, Ordering::Relaxed);
    }
    /// Whether the caller takes gzip (see [`Context::set_accepts_gzip`]).
    pub fn accepts_gzip(&self) -> bool {
        self.accepts_gzip.load(Ordering::Relaxed)
    }

    /// Cliniko's status, if Cliniko answered.
    pub fn upstream_status(&self) -> Option<u16> {
        Some(self.upstream_status.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }
    /// Whether the body went over the limit mid-stream.
    pub fn body_limit_tripped(&self) -> bool {
        self.body_limit_tripped.load(Ordering::Relaxed)
    }
}

/// The caller's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left
/// were written by whoever the caller is, so they prove nothing).
fn client_addr(
    peer: Option<IpAddr>,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`: compare them as IPv4.
    let peer = peer?.to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Right to left, the nearest hop first; nothing collected.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .map(|s| s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical()));
    for hop in hops {
        match hop {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return Some(ip),
            // Unreadable: stop at the last address we can vouch for.
            None => break,
        }
    }
    Some(peer)
}

/// Outermost layer: builds each request's [`Context`] and puts its id on the response.
#[derive(Clone, Default)]
pub struct ContextLayer {
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl ContextLayer {
    /// Forwarded addresses are believed only from `trusted_proxies`.
    pub fn new(trusted_proxies: &[ipnet::IpNet]) -> ContextLayer {
        ContextLayer {
            trusted_proxies: trusted_proxies.into(),
        }
    }
}

impl Wrap for ContextLayer {
    type Error = Infallible;

    fn wrap<S: Inner<Infallible>>(
        &self,
        inner: &mut S,
        mut req: Request<Body>,
    ) -> Answer<Infallible> {
        let arrival = req.extensions_mut().remove::<Arrival>().unwrap_or_default();
        let mut ctx = Context::new(arrival);
        ctx.client_id = req
            .headers()
            .get(&REQUEST_ID)
            .and_then(RequestId::from_caller);
        ctx.client_addr = client_addr(
            arrival.peer.map(|p| p.ip()),
            req.headers(),
            &self.trusted_proxies,
        );
        let visible = ctx.visible_id().0.clone();
        req.extensions_mut().insert(Arc::new(ctx));
        let fut = inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(REQUEST_ID, visible);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_kept() {
        let kept = |s: &str| RequestId::from_caller(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(kept("abc-123_x.y"));
        assert!(!kept("a b"));
        assert!(!kept(""));
        assert!(!kept(&"a".repeat(129)));
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.1.1"),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Through the trusted proxy: the right-most untrusted hop, not the caller's own claim.
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.9"));
        // Straight from an untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_addr(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7")
        );
        // An IPv4-mapped peer is the IPv4 proxy it is.
        assert_eq!(
            client_addr(ip("::ffff:10.0.0.2"), &h, &trusted),
            ip("203.0.113.9")
        );
        // Nothing trusted: the peer.
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &[]), ip("10.0.0.2"));
        // Unreadable hop: the last address vouched for.
        h.insert("x-forwarded-for", HeaderValue::from_static("junk"));
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"));
    }
}
