//! Compressed answers to callers that ask (`Accept-Encoding`: gzip, br or zstd): tower-http's
//! [`CompressionLayer`](tower_http::compression), streaming, at the configured (fast) level,
//! with the rules it leaves to us:
//! - the caller's preferences are read once, up front: when they refuse every coding we can
//!   send (identity included) the answer is 406 `not_acceptable` before anything is spent;
//!   when they only refuse identity, even small bodies are compressed for them;
//! - `HEAD`, empty bodies and bodies known to be under `min_bytes` go out as they are;
//! - every answer says `Vary: Accept-Encoding` (a shared cache must not hand a gzip body to a
//!   caller that cannot read it, nor the reverse);
//! - a compressed body's strong ETag becomes weak (RFC 9110 §8.8.1: the bytes differ from the
//!   identity ones); `If-None-Match` compares weakly, so revalidation still answers 304.
//!
//! tower-http picks the coding: the highest q-value, then zstd over br over gzip (so
//! `gzip, br, zstd` gets zstd). The level is one number on each coding's own scale.
//!
//! The caller's acceptance of gzip goes into the request context, so the cache can send its
//! stored gzip copy as it is (even to a caller that would prefer zstd: a valid answer with no
//! work); a caller that does not take gzip gets the decoded bytes, compressed here.

use crate::body::Body;
use crate::config::CompressionConfig;
use crate::context::Context as RequestContext;
use crate::error::GatewayError;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::compression::predicate::{NotForContentType, SizeAbove};
use tower_http::compression::{Compression, CompressionLevel, Predicate};

/// The compression step (absent when `[compression]` is off).
pub struct Compress {
    level: i32,
    min_bytes: u64,
}

impl Compress {
    /// `None` when compression is off. Assumes a validated config.
    pub fn new(cfg: &CompressionConfig) -> Option<Arc<Compress>> {
        cfg.enabled
            .then(|| Compress {
                level: i32::try_from(cfg.level).unwrap_or(1),
                min_bytes: cfg.min_bytes,
            })
            .map(Arc::new)
    }
}

/// Whether a body is worth compressing: not known to be under the minimum (nor empty), not an
/// image (already compressed; SVG is text and is) or an event stream (must flush per event).
fn worth(min_bytes: u64) -> impl Predicate {
    SizeAbove::new(min_bytes.max(1))
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
}

/// Whether an answer goes out as it is even to a caller that takes a coding: already encoded
/// (the cache's gzip copy), a range, or not worth compressing. tower-http would decide the
/// same, after wrapping the body anyway.
fn as_it_is<B: http_body::Body>(resp: &Response<B>, min_bytes: u64) -> bool {
    let h = resp.headers();
    h.contains_key(header::CONTENT_ENCODING)
        || h.contains_key(header::CONTENT_RANGE)
        || !worth(min_bytes).should_compress(resp)
}

/// tower-http's compression, only for the answers it would compress.
impl crate::step::Step for Compress {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let accepts = Accepts::of(req.headers());
        if accepts.gzip
            && let Some(ctx) = RequestContext::of(&req)
        {
            ctx.set_accepts_gzip();
        }
        let min_bytes = match Plan::of(req.method(), accepts) {
            Plan::Refuse => return Err(GatewayError::NotAcceptable),
            Plan::AsIs => return Ok(finish(inner.oneshot(req).await?)),
            Plan::Compress => self.min_bytes,
            Plan::CompressAll => 1,
        };
        // tower-http picks the coding from the caller's `Accept-Encoding`, all it is given.
        let mut asked = Request::new(());
        for v in req.headers().get_all(header::ACCEPT_ENCODING) {
            asked
                .headers_mut()
                .append(header::ACCEPT_ENCODING, v.clone());
        }
        let resp = inner.oneshot(req).await?;
        if as_it_is(&resp, min_bytes) {
            return Ok(finish(resp));
        }
        // tower-http's service over the answer already in hand.
        let status = resp.status();
        let mut answer = Some(resp);
        let ready = tower::service_fn(move |_: Request<()>| {
            std::future::ready(answer.take().ok_or(GatewayError::Internal))
        });
        let resp = Compression::new(ready)
            .no_deflate()
            .quality(CompressionLevel::Precise(self.level))
            .compress_when(worth(min_bytes))
            .oneshot(asked)
            .await?;
        // tower-http relabels an answer it finds no coding for as 406, body and all. `Accepts`
        // reads the header as it does, so this never happens; if it did, the caller gets our
        // 406 rather than the answer under that status.
        if resp.status() == StatusCode::NOT_ACCEPTABLE && status != StatusCode::NOT_ACCEPTABLE {
            return Err(GatewayError::NotAcceptable);
        }
        Ok(finish(resp.map(Body::new)))
    }
}

/// How one request's answer is to be sent, decided before the inner service is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// 406: nothing the caller accepts.
    Refuse,
    /// As it is: HEAD, or a caller who takes none of our codings. No tower-http wrapper, which
    /// would only pass the frames through (and cost a box and a poll per frame).
    AsIs,
    /// Compressed when worth it (`min_bytes`).
    Compress,
    /// Compressed whatever its size: the caller refuses identity.
    CompressAll,
}

impl Plan {
    fn of(method: &Method, a: Accepts) -> Plan {
        if !a.anything() {
            Plan::Refuse
        } else if method == Method::HEAD || !a.coding() {
            Plan::AsIs
        } else if a.identity {
            Plan::Compress
        } else {
            Plan::CompressAll
        }
    }
}

/// `Vary` on every answer, and a weak ETag on a compressed one.
fn finish(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    if !varies_on_encoding(h) {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if h.contains_key(header::CONTENT_ENCODING)
        && let Some(tag) = h.get(header::ETAG)
        && !tag.as_bytes().starts_with(b"W/")
        && let Ok(v) = HeaderValue::from_bytes(&[b"W/", tag.as_bytes()].concat())
    {
        h.insert(header::ETAG, v);
    }
    resp
}

fn varies_on_encoding(h: &HeaderMap) -> bool {
    h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    })
}

/// Which of the codings we can send the caller accepts (RFC 9110 §12.5.3), read as
/// tower-http reads it: the rules are on [`Accepts::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    /// gzip (or `x-gzip`).
    pub gzip: bool,
    /// br.
    pub br: bool,
    /// zstd.
    pub zstd: bool,
    /// No coding at all.
    pub identity: bool,
}

impl Accepts {
    /// Reads every `Accept-Encoding` header exactly as tower-http's compression does: it picks
    /// the coding, and answers 406 with an empty body when it finds none, so our up-front
    /// refusal must see the same (every 406 ours, in JSON, before Cliniko is asked). Entries
    /// with an unknown coding or an unreadable q-value are ignored. Without `*`, a coding is
    /// acceptable when any of its entries has q > 0, identity unless an entry refuses it and
    /// none takes it; with `*`, each coding's first entry decides, else the first `*`'s.
    pub fn of(h: &HeaderMap) -> Accepts {
        // Per coding (gzip, br, zstd, identity): its first entry, any entry above 0, any at 0.
        let (mut first, mut taken, mut refused) = ([None::<bool>; 4], [false; 4], [false; 4]);
        let mut star = None;
        let entries = h
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','));
        for entry in entries {
            let (coding, q) = match entry.split_once(';') {
                Some((coding, q)) => (coding.trim(), qvalue(Some(q))),
                None => (entry.trim(), qvalue(None)),
            };
            let Some(q) = q else { continue };
            let is = |name: &str| coding.eq_ignore_ascii_case(name);
            let i = match () {
                _ if is("gzip") || is("x-gzip") => 0,
                _ if is("br") => 1,
                _ if is("zstd") => 2,
                _ if is("identity") => 3,
                _ => {
                    if coding == "*" {
                        star = star.or(Some(q));
                    }
                    continue;
                }
            };
            first[i] = first[i].or(Some(q));
            taken[i] |= q;
            refused[i] |= !q;
        }
        let ok = |i: usize| match star {
            Some(s) => first[i].unwrap_or(s),
            None if i == 3 => taken[3] || !refused[3],
            None => taken[i],
        };
        Accepts {
            gzip: ok(0),
            br: ok(1),
            zstd: ok(2),
            identity: ok(3),
        }
    }

    /// At least one coding we can send is acceptable.
    pub fn anything(&self) -> bool {
        self.coding() || self.identity
    }

    /// A coding we compress with is acceptable.
    pub fn coding(&self) -> bool {
        self.gzip || self.br || self.zstd
    }
}

/// A q-value as tower-http reads it (RFC 9110 §12.4.2: `q=` then 0 or 1 with at most three
/// decimals, no space around `=`): whether it is above zero; none is q=1; `None` when unreadable.
fn qvalue(param: Option<&str>) -> Option<bool> {
    let Some(p) = param else {
        return Some(true);
    };
    let v = p.trim().strip_prefix(['q', 'Q'])?.strip_prefix('=')?;
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
    match int {
        "0" if digits => Some(frac.bytes().any(|b| b != b'0')),
        "1" if digits && frac.bytes().all(|b| b == b'0') => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(v: &str) -> Accepts {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        Accepts::of(&h)
    }

    fn a(gzip: bool, br: bool, zstd: bool, identity: bool) -> Accepts {
        Accepts {
            gzip,
            br,
            zstd,
            identity,
        }
    }

    /// Our up-front refusal and tower-http's own 406 agree on every header: a disagreement would
    /// either refuse what tower-http sends or let tower-http relabel a fetched answer as 406.
    #[tokio::test]
    async fn refusals_agree_with_tower_http() {
        let headers = [
            "",
            "*",
            "identity;q=0",
            "*;q=0",
            "gzip;q=0.5000, identity;q=0",
            "gzip;q=.5, identity;q=0",
            "gzip;q = 1, identity;q=0",
            "gzip; q=1, identity;q=0",
            "gzip, gzip;q=0, identity;q=0",
            "gzip;q=0, gzip, identity;q=0",
            "identity, identity;q=0",
            "identity;q=0, identity",
            "*;q=0, gzip;q=0.001",
            "*;q=0.5, identity;q=0",
            "*;q=0, *;q=1",
            "*;q=x, *;q=0",
            "gzip;q=1.0001, identity;q=0",
            "gzip;q=1.000, *;q=0",
            "gzip;q=1.5, identity;q=0",
            "zstd;q=0.5;x=1, identity;q=0",
            "deflate, identity;q=0",
            "x-gzip, identity;q=0",
            "BR;Q=0.2, identity;q=0",
            "gzip;q=0., identity;q=0",
            "gzip;q=1., identity;q=0",
            "zstd;q=0, *;q=0.1, identity;q=0",
            "Identity;q=0",
            "*, identity;q=0, gzip;q=0, br;q=0, zstd;q=0",
            "gzip;level=1, identity;q=0",
        ];
        for v in headers {
            let mut req = Request::new(());
            req.headers_mut()
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            let ours = !Accepts::of(req.headers()).anything();
            let page = tower::service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new("x".repeat(2000)))
            });
            let resp = Compression::new(page)
                .no_deflate()
                .oneshot(req)
                .await
                .unwrap();
            let theirs = resp.status() == StatusCode::NOT_ACCEPTABLE;
            assert_eq!(ours, theirs, "Accept-Encoding: {v}");
        }
    }

    #[test]
    fn what_callers_accept() {
        assert_eq!(Accepts::of(&HeaderMap::new()), a(false, false, false, true));
        assert_eq!(of(""), a(false, false, false, true));
        assert_eq!(of("gzip, deflate, br, zstd"), a(true, true, true, true));
        assert_eq!(of("x-gzip"), a(true, false, false, true));
        assert_eq!(of("gzip;q=0"), a(false, false, false, true));
        assert_eq!(of("GZIP;Q=0.5, identity;q=0"), a(true, false, false, false));
        assert_eq!(of("identity;q=0"), a(false, false, false, false));
        assert_eq!(of("*;q=0"), a(false, false, false, false));
        assert_eq!(of("*;q=0, identity"), a(false, false, false, true));
        assert_eq!(of("*"), a(true, true, true, true));
        assert_eq!(of("br, *;q=0"), a(false, true, false, false));
        // An unreadable q-value drops the entry, not the header.
        assert_eq!(of("gzip;q=2, br"), a(false, true, false, true));
        assert!(!of("identity;q=0, gzip;q=0").anything());
    }

    #[test]
    fn zstd_is_a_coding_we_send_like_br() {
        assert_eq!(of("zstd"), a(false, false, true, true));
        assert_eq!(of("ZSTD;q=0.1"), a(false, false, true, true));
        assert_eq!(of("zstd;q=0"), a(false, false, false, true));
        assert_eq!(of("zstd, identity;q=0"), a(false, false, true, false));
        assert_eq!(of("zstd, *;q=0"), a(false, false, true, false));
        assert_eq!(of("*, zstd;q=0"), a(true, true, false, true));
        assert_eq!(of("zstd;q=1.5, gzip"), a(true, false, false, true));
        assert!(of("zstd, identity;q=0").anything());
        assert!(!of("zstd;q=0, identity;q=0").anything());
        assert!(!of("zstd;q=0, *;q=0").anything());
    }

    #[test]
    fn answers_already_encoded_ranges_and_small_ones_skip_the_compressor() {
        let resp = |body: &str, h: &[(header::HeaderName, &'static str)]| {
            let mut r = Response::new(Body::from(body.to_string()));
            for (k, v) in h {
                r.headers_mut().insert(k, HeaderValue::from_static(v));
            }
            r
        };
        let page = &"x".repeat(2048);
        assert!(!as_it_is(&resp(page, &[]), 1024), "a page worth it");
        assert!(as_it_is(
            &resp(page, &[(header::CONTENT_ENCODING, "gzip")]),
            1024
        ));
        assert!(as_it_is(
            &resp(page, &[(header::CONTENT_RANGE, "bytes 0-9/99")]),
            1024
        ));
        assert!(as_it_is(
            &resp(page, &[(header::CONTENT_TYPE, "image/png")]),
            1024
        ));
        assert!(as_it_is(&resp("{}", &[]), 1024), "under min_bytes");
        assert!(!as_it_is(&resp("{}", &[]), 1), "identity refused: any size");
    }

    #[test]
    fn only_callers_who_take_a_coding_get_the_compressing_service() {
        let plan = |m: Method, v: &str| Plan::of(&m, of(v));
        assert_eq!(
            Plan::of(&Method::GET, Accepts::of(&HeaderMap::new())),
            Plan::AsIs,
            "no Accept-Encoding"
        );
        assert_eq!(plan(Method::GET, "identity"), Plan::AsIs);
        assert_eq!(plan(Method::GET, "deflate, compress"), Plan::AsIs);
        assert_eq!(plan(Method::GET, "gzip;q=0"), Plan::AsIs);
        assert_eq!(plan(Method::HEAD, "gzip"), Plan::AsIs);
        assert_eq!(plan(Method::GET, "gzip"), Plan::Compress);
        assert_eq!(plan(Method::GET, "br"), Plan::Compress);
        assert_eq!(plan(Method::GET, "deflate, zstd"), Plan::Compress);
        assert_eq!(plan(Method::HEAD, "zstd"), Plan::AsIs);
        assert_eq!(plan(Method::GET, "zstd, identity;q=0"), Plan::CompressAll);
        assert_eq!(plan(Method::GET, "zstd;q=0, identity;q=0"), Plan::Refuse);
        assert_eq!(plan(Method::GET, "gzip, identity;q=0"), Plan::CompressAll);
        assert_eq!(plan(Method::GET, "identity;q=0"), Plan::Refuse);
        assert_eq!(plan(Method::HEAD, "*;q=0"), Plan::Refuse);
    }
}
