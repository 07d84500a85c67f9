//! The cache as a tower layer: answers hits, fills misses (single flight), revalidates stale
//! entries with their ETag, and invalidates after writes.

use super::Cache;
use super::entry::{CacheKey, Entry, etag_matches};
use super::flight::{Landed, take};
use crate::body::Body;
use crate::context::{CacheOutcome, Context as RequestContext};
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::replay::Replay;
use crate::upstream::body::read_while;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use moka::ops::compute::Op;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Response header saying how the cache handled a request.
pub const X_CACHE: &str = "x-cache";

/// The caller's `Cache-Control` directives that matter to us.
fn directives(h: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for v in h.get_all(header::CACHE_CONTROL) {
        for d in v.to_str().unwrap_or("").split(',') {
            let d = d.trim();
            no_cache |= d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0");
            no_store |= d.eq_ignore_ascii_case("no-store");
        }
    }
    (no_cache, no_store)
}

impl crate::step::Step for Cache {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return pass_through(&self, inner, req).await;
        }
        let (no_cache, no_store) = directives(req.headers());
        let ttl = self.ttl_for(req.uri().path());
        let cred = req.extensions().get::<Arc<Credential>>().cloned();
        let (Some(ttl), Some(cred), false) = (ttl, cred, no_store) else {
            return bypass(&self, inner, req).await;
        };
        let ctx = RequestContext::of(&req).cloned();
        let (key, asked) = lookup(&self, &req, &cred, ctx.as_deref());

        // A stale entry with an ETag is revalidated rather than refetched.
        let mut stale: Option<Arc<Entry>> = None;
        // Read before the lookup: a decoded copy stored back must not outlive a purge.
        let epoch = self.epoch.load(Ordering::Acquire);
        if !no_cache && let Some(entry) = self.store.get(&key).await {
            if entry.is_fresh() {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                note(ctx.as_ref(), CacheOutcome::Hit);
                return serve(&self, &key, &entry, CacheOutcome::Hit, &asked, epoch).await;
            }
            if entry.etag().is_some() {
                stale = Some(entry);
            }
        }
        // Only a miss needs to send the request again: hits skip copying its head.
        let template = template(&req);
        drop(req);

        // Miss, refresh or revalidation: one request upstream per key at a time.
        let mut own: Option<Result<Response<Body>, GatewayError>> = None;
        let runner = inner.clone();
        // Made only by the flight's runner, and boxed: the fill's future is large, and every
        // hit would otherwise carry (and move) its space in this future too.
        let fetch = || {
            let own = &mut own;
            Box::pin(fill(
                &self,
                &key,
                runner,
                &template,
                stale.clone(),
                (no_cache, ttl),
                own,
            ))
        };
        let landed = self.flights.run(&key, fetch).await;
        match landed {
            Landed::Entry(e) => {
                let how = filled(&self, stale.as_deref(), &e);
                note(ctx.as_ref(), how);
                // Revalidated, or filled by another caller: may hold only the gzip copy.
                serve(&self, &key, &e, how, &asked, epoch).await
            }
            Landed::Failed(e) => Err(e),
            Landed::Uncacheable => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                note(ctx.as_ref(), CacheOutcome::Miss);
                uncacheable(own, inner, &template, asked).await
            }
        }
    }
}

/// The caller's answer when the flight stored nothing: the fill's own answer if this caller
/// ran it, else a request of its own (it waited on someone else's uncacheable answer).
async fn uncacheable<S: crate::step::Next>(
    own: Option<Result<Response<Body>, GatewayError>>,
    inner: S,
    template: &Replay,
    asked: Asked,
) -> Result<Response<Body>, GatewayError> {
    let resp = match own {
        Some(result) => result?,
        None => {
            inner
                .oneshot(fill_request(template, asked.if_none_match))
                .await?
        }
    };
    // A HEAD caller answered from a GET gets the GET's headers and no body.
    let resp = match asked.is_head {
        true => resp.map(|_| Body::empty()),
        false => resp,
    };
    Ok(mark(resp, CacheOutcome::Miss))
}

/// A request the cache does not handle (path not enabled, `no-store`, no credential).
async fn bypass<S: crate::step::Next>(
    cache: &Cache,
    inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    cache.stats.bypasses.fetch_add(1, Ordering::Relaxed);
    note(RequestContext::of(&req), CacheOutcome::Bypass);
    Ok(mark(inner.oneshot(req).await?, CacheOutcome::Bypass))
}

/// How an entry that landed answered: revalidated when it has the stale copy's body bytes
/// (Cliniko confirmed it with a 304), else a miss (counted).
fn filled(cache: &Cache, stale: Option<&Entry>, e: &Entry) -> CacheOutcome {
    if stale.is_some_and(|s| s.body.as_ptr() == e.body.as_ptr()) {
        return CacheOutcome::Revalidated;
    }
    cache.stats.misses.fetch_add(1, Ordering::Relaxed);
    CacheOutcome::Miss
}

/// The entry's key (the caller's credential, target and `Accept`) and what the caller asked.
fn lookup(
    cache: &Cache,
    req: &Request<Body>,
    cred: &Credential,
    ctx: Option<&RequestContext>,
) -> (CacheKey, Asked) {
    let key = CacheKey {
        credential: cache.id_of(cred),
        target: req.uri().path_and_query().map_or("", |p| p.as_str()).into(),
        accept: req.headers().get(header::ACCEPT).cloned(),
    };
    let asked = Asked {
        is_head: req.method() == Method::HEAD,
        if_none_match: req.headers().get(header::IF_NONE_MATCH).cloned(),
        gzip: ctx.is_some_and(|c| c.accepts_gzip()),
    };
    (key, asked)
}

/// A non-GET/HEAD passes; a write that may have happened drops the copies it made stale.
async fn pass_through<S: crate::step::Next>(
    cache: &Cache,
    inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let is_write = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let path = req.uri().path().to_string();
    let result = inner.oneshot(req).await;
    // Only a refusal proves the write did not happen; after a success, a timeout or a
    // broken exchange Cliniko may hold new data, so the copies go.
    let refused = matches!(&result, Ok(r) if r.status().is_client_error());
    if is_write && !refused {
        cache.invalidate_after_write(&path);
    }
    result
}

/// The one fetch of a flight: refetch, or revalidate `stale` with its ETag, and store what
/// can be stored. An answer about this caller alone lands in `own` instead.
async fn fill<S: crate::step::Next>(
    cache: &Cache,
    key: &CacheKey,
    runner: S,
    template: &Replay,
    stale: Option<Arc<Entry>>,
    (no_cache, ttl): (bool, Duration),
    own: &mut Option<Result<Response<Body>, GatewayError>>,
) -> Landed {
    // Someone may have filled it between our lookup and joining the flight.
    if !no_cache
        && let Some(e) = cache.store.get(key).await
        && e.is_fresh()
    {
        return Landed::Entry(e);
    }
    let epoch = cache.epoch.load(Ordering::Acquire);
    let validator = stale.as_ref().and_then(|e| e.etag().cloned());
    let answer = runner.oneshot(fill_request(template, validator)).await;
    match (answer, stale) {
        // Cliniko unreachable or the key refused: the same for every caller on it.
        (Err(e), _) if shared_failure(&e) => Landed::Failed(e),
        // A refusal about our caller alone (e.g. their own rate limit) stays theirs.
        (Err(e), _) => {
            *own = Some(Err(e));
            Landed::Uncacheable
        }
        (Ok(resp), Some(old)) if resp.status() == StatusCode::NOT_MODIFIED => {
            cache.stats.revalidated.fetch_add(1, Ordering::Relaxed);
            let fresh = Arc::new(old.revalidated());
            keep(cache, key.clone(), fresh.clone(), epoch).await;
            Landed::Entry(fresh)
        }
        (Ok(resp), _) => match store(cache, key.clone(), resp, ttl, epoch).await {
            Ok(entry) => Landed::Entry(entry),
            Err(NotStored::Pass(resp)) => {
                *own = Some(Ok(resp));
                Landed::Uncacheable
            }
            Err(NotStored::Broken) => Landed::Failed(GatewayError::UpstreamUnavailable),
        },
    }
}

/// Failures that depend only on Cliniko and the key, so every caller on the key shares them.
fn shared_failure(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::UpstreamUnavailable
            | GatewayError::UpstreamConnect
            | GatewayError::UpstreamClosed
            | GatewayError::UpstreamTimeout
            | GatewayError::CredentialRejected
    )
}

/// Inserts `entry` unless a write landed since `epoch`; a write that lands during the insert
/// is caught by re-checking after it (moka's invalidation predicates skip later inserts).
async fn keep(cache: &Cache, key: CacheKey, entry: Arc<Entry>, epoch: u64) {
    if cache.epoch.load(Ordering::Acquire) != epoch {
        return;
    }
    cache.store.insert(key.clone(), entry).await;
    if cache.epoch.load(Ordering::Acquire) != epoch {
        cache.store.invalidate(&key).await;
    }
}

/// The fill's request: the caller's GET (or HEAD, filled with a GET) without its body and
/// without the caller's own validators (the fill must get a full 200, not a 304).
fn template(req: &Request<Body>) -> Replay {
    let mut t = Replay::without_body(req);
    t.head.method = Method::GET;
    t.head.headers.remove(header::IF_NONE_MATCH);
    t.head.headers.remove(header::IF_MODIFIED_SINCE);
    t
}

/// The fill's request, revalidating with `if_none_match` when given.
fn fill_request(t: &Replay, if_none_match: Option<HeaderValue>) -> Request<Body> {
    let mut r = t.build();
    if let Some(v) = if_none_match {
        r.headers_mut().insert(header::IF_NONE_MATCH, v);
    }
    r
}

/// Why a response was not stored.
enum NotStored {
    /// Not cacheable (status, `no-store`, too big): pass it on as it is, still streaming.
    Pass(Response<Body>),
    /// Cliniko's body failed before we sent anything: the caller gets a clean 502.
    Broken,
}

/// Stores a 200 whose body fits; anything else comes back to be passed on.
async fn store(
    cache: &Cache,
    key: CacheKey,
    resp: Response<Body>,
    ttl: Duration,
    epoch: u64,
) -> Result<Arc<Entry>, NotStored> {
    // A body still encoded (an encoding the forwarder does not decode, or stacked ones) is
    // passed on as it is: the store keeps plain bytes (or its own gzip of them) only.
    let uncacheable = resp.status() != StatusCode::OK
        || resp.headers().contains_key(header::CONTENT_ENCODING)
        || resp
            .headers()
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().unwrap_or("").contains("no-store"));
    if uncacheable {
        return Err(NotStored::Pass(resp));
    }
    let (mut parts, body) = resp.into_parts();
    // What fills in flight hold stays within their slice of the capacity.
    let mut claim = None;
    let fits = |total, len| total <= cache.max_entry && take(&cache.filling, &mut claim, len);
    let read = match read_while(body, fits).await {
        Ok(Ok(read)) => read,
        // Over the limit, or over what fills in flight may hold: passed on, still streaming.
        Ok(Err(rest)) => return Err(NotStored::Pass(Response::from_parts(parts, rest))),
        Err(_) => return Err(NotStored::Broken),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::AGE);
    parts.headers.remove(X_CACHE);
    // A body that came in one piece (a page rewritten whole does) is used as it is to make the
    // gzip copy and to answer the flight's callers; it is copied only if it is what gets stored.
    let (plain, exact) = match read.as_slice() {
        [one] => (one.clone(), false),
        _ => (Bytes::from(read.concat()), true),
    };
    let plain_len = plain.len();
    let gzipped = match cache.compress {
        true => {
            let plain = plain.clone();
            off_worker(plain_len, move || gzip(&plain)).await.flatten()
        }
        false => None,
    };
    let entry = Arc::new(Entry {
        headers: owned(&parts.headers),
        gzipped: gzipped.is_some(),
        // One allocation of the body's own size: an entry must hold what it is charged for.
        body: gzipped.unwrap_or_else(|| match exact {
            true => plain.clone(),
            false => Bytes::copy_from_slice(&plain),
        }),
        plain: None,
        plain_len,
        decodes: AtomicU32::new(0),
        stored: Instant::now(),
        ttl,
    });
    // A write that landed while we fetched may have made this copy stale: serve, don't keep.
    keep(cache, key, entry.clone(), epoch).await;
    // The flight's callers are answered from the plain body at hand, not by decoding the copy
    // just made (what the store holds is charged for the gzip copy only).
    Ok(if entry.gzipped {
        Arc::new(entry.with_plain(Some(plain)))
    } else {
        entry
    })
}

/// A copy of `h` that owns its bytes. Parsed headers are slices of the client's read buffer;
/// stored as they are, each entry would pin a whole buffer (measured: ~5 KiB per entry).
fn owned(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let name =
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        let value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        out.append(name, value);
    }
    out
}

/// Bodies under this are kept as they are: the gzip header and the decoding would cost more
/// than the bytes saved (and small answers go out uncompressed anyway).
const GZIP_FROM: usize = 1024;

/// The body as one gzip member at the fastest level (a fill pays it once, every hit for a
/// gzip caller saves it), or `None` when small or when that does not make it smaller.
fn gzip(plain: &[u8]) -> Option<Bytes> {
    if plain.len() < GZIP_FROM {
        return None;
    }
    let mut out = crate::upstream::body::gzip_fast(plain)?;
    out.shrink_to_fit();
    (out.len() < plain.len()).then(|| Bytes::from(out))
}

/// The decoded body for a hit whose entry holds only the gzip copy (off the worker when
/// large). Once an entry has been decoded
/// [`DECODES_BEFORE_PLAIN`](super::entry::DECODES_BEFORE_PLAIN) times it is stored again
/// holding the decoded copy as well (charged for both), so identity callers' later hits send
/// bytes as they are; entries only gzip callers read keep the one small copy.
async fn decode(
    cache: &Cache,
    key: &CacheKey,
    e: &Arc<Entry>,
    epoch: u64,
) -> Result<Bytes, GatewayError> {
    let read = e.clone();
    let plain = off_worker(e.plain_len, move || gunzip(&read))
        .await
        .unwrap_or(Err(GatewayError::Internal))?;
    if e.decoded_once_more() {
        keep_plain(cache, key, e, plain.clone(), epoch).await;
    }
    Ok(plain)
}

/// Stores `read` again holding its decoded copy `plain`, unless it is no longer what the store
/// holds (replaced, dropped or purged since) or a purge ran since `epoch` was read before the
/// lookup that found it: a copy of a dropped entry must never come back.
async fn keep_plain(cache: &Cache, key: &CacheKey, read: &Arc<Entry>, plain: Bytes, epoch: u64) {
    // A purge under way, or one since the lookup (see `Cache::purging`).
    if cache.purged_since(epoch) {
        return;
    }
    let both = Arc::new(read.with_plain(Some(plain)));
    let read = read.clone();
    // Replaces the entry only if it is still the one read, atomically for the key.
    cache
        .store
        .entry(key.clone())
        .and_compute_with(|now| {
            let same = now.is_some_and(|n| Arc::ptr_eq(n.value(), &read));
            std::future::ready(if same { Op::Put(both) } else { Op::Nop })
        })
        .await;
    if cache.purged_since(epoch) {
        cache.store.invalidate(key).await;
    }
}

/// Bodies from this size on are gzipped and decoded on tokio's blocking pool: a 1 MiB entry is
/// milliseconds of CPU, which on an async worker would stall every request queued behind it.
const OFF_WORKER_FROM: usize = 64 * 1024;

/// Runs `f`, a (de)compression of `len` bytes, where it stalls nobody: here when small, on the
/// blocking pool when large (`None` if it could not run there: the runtime is shutting down).
async fn off_worker<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if len < OFF_WORKER_FROM {
        return Some(f());
    }
    tokio::task::spawn_blocking(f).await.ok()
}

/// A gzip copy decoded for a caller that does not take gzip.
fn gunzip(e: &Entry) -> Result<Bytes, GatewayError> {
    use crate::upstream::body::{Coding, inflate};
    // The copy was made from `plain_len` bytes: anything else is not ours.
    inflate(&e.body, Coding::Gzip, e.plain_len).map_err(|_| {
        tracing::error!("a stored gzip copy does not decode");
        GatewayError::Internal
    })
}

/// How one caller is to be answered from an entry.
struct Asked {
    is_head: bool,
    if_none_match: Option<HeaderValue>,
    /// The caller takes gzip (the compression layer said so in the context).
    gzip: bool,
}

/// The caller's validator matches the entry: a 304.
fn not_modified(e: &Entry, a: &Asked) -> bool {
    matches!((&a.if_none_match, e.etag()), (Some(i), Some(t)) if etag_matches(i, t))
}

/// Builds the answer from an entry found at `key` (`epoch` read before the lookup): 304 when
/// the caller's validator matches, else the body (shared, not copied; the gzip copy as it is
/// to a caller that takes gzip, the plain bytes to one that does not: the entry's own, or
/// decoded now); HEAD gets the identity headers only.
async fn serve(
    cache: &Cache,
    key: &CacheKey,
    e: &Arc<Entry>,
    how: CacheOutcome,
    a: &Asked,
    epoch: u64,
) -> Result<Response<Body>, GatewayError> {
    let not_modified = not_modified(e, a);
    let as_stored = e.gzipped && a.gzip;
    let body = if not_modified || a.is_head {
        Body::empty()
    } else if as_stored || !e.gzipped {
        Body::from(e.body.clone())
    } else if let Some(plain) = &e.plain {
        Body::from(plain.clone())
    } else {
        Body::from(decode(cache, key, e, epoch).await?)
    };
    let mut resp = Response::new(body);
    *resp.headers_mut() = e.headers.clone();
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    if not_modified {
        h.remove(header::CONTENT_TYPE);
    } else if as_stored && !a.is_head {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(e.body.len()));
    } else {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(e.plain_len));
    }
    // `Age`: seconds since it was fetched or revalidated.
    h.insert(header::AGE, HeaderValue::from(e.stored.elapsed().as_secs()));
    Ok(mark(resp, how))
}

fn mark(mut resp: Response<Body>, how: CacheOutcome) -> Response<Body> {
    resp.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(how.as_str()));
    resp
}

/// Records the outcome for the access log, the audit and the span.
fn note(ctx: Option<&Arc<RequestContext>>, how: CacheOutcome) {
    if let Some(c) = ctx {
        let _ = c.cache.set(how);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::DECODES_BEFORE_PLAIN;
    use crate::config::{CacheConfig, CacheRule};
    use crate::credentials::ApiKey;
    use crate::step::WrapLayer;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    fn cache(ttl: Duration) -> Arc<Cache> {
        let cfg = CacheConfig {
            rules: vec![CacheRule {
                prefix: "/v1/practitioners".into(),
                ttl,
            }],
            ..CacheConfig::default()
        };
        Cache::new(&cfg, Arc::default(), None).unwrap()
    }

    fn req(cred: &Arc<Credential>) -> Request<Body> {
        let mut r = Request::get("/v1/practitioners")
            .body(Body::empty())
            .unwrap();
        r.extensions_mut().insert(cred.clone());
        r
    }

    fn ok_json(etag: &'static str) -> Response<Body> {
        let mut r = Response::new(Body::from("{\"practitioners\":[]}"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static(etag));
        r
    }

    /// A page worth a gzip copy (> 1 KiB, compressible), as the origin sent it.
    fn page() -> Bytes {
        Bytes::from("{\"practitioners\":[{\"id\":\"1\",\"name\":\"Ada\"}]}".repeat(100))
    }

    /// A caller's GET; `gzip`: the compression layer found it takes gzip.
    fn get(cred: &Arc<Credential>, gzip: bool) -> Request<Body> {
        let mut r = req(cred);
        let ctx = RequestContext::new(crate::context::Arrival {
            peer: None,
            ambiguous_length: false,
            unusable_target: false,
        });
        if gzip {
            ctx.set_accepts_gzip();
        }
        r.extensions_mut().insert(Arc::new(ctx));
        r
    }

    /// A cache in front of an origin that always sends [`page`], a caller's credential and
    /// the key of its entry.
    fn page_rig() -> (
        Arc<Cache>,
        impl crate::step::Next,
        Arc<Credential>,
        CacheKey,
    ) {
        let inner = tower::service_fn(|_r: Request<Body>| async {
            Ok::<_, GatewayError>(Response::new(Body::from(page())))
        });
        let c = cache(Duration::from_secs(60));
        let svc = tower::Layer::layer(&WrapLayer(Some(c.clone())), inner);
        let cred = Arc::new(Credential::new(ApiKey::new("k-au1".into()), "k", None).unwrap());
        let key = CacheKey {
            credential: c.id_of(&cred),
            target: "/v1/practitioners".into(),
            accept: None,
        };
        (c, svc, cred, key)
    }

    async fn read(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn large_bodies_are_compressed_off_the_async_worker() {
        let here = std::thread::current().id();
        let small = off_worker(OFF_WORKER_FROM - 1, || std::thread::current().id()).await;
        let large = off_worker(OFF_WORKER_FROM, || std::thread::current().id()).await;
        assert_eq!(small, Some(here), "a small body is not worth a thread hop");
        assert_ne!(
            large.unwrap(),
            here,
            "a large one must not run on the request's worker"
        );
    }

    #[tokio::test]
    async fn identity_hits_get_the_origin_bytes_and_a_read_entry_keeps_them_beside_the_gzip() {
        let (c, svc, cred, key) = page_rig();
        let miss = svc.clone().oneshot(get(&cred, false)).await.unwrap();
        assert_eq!(miss.headers()[X_CACHE], "MISS");
        assert_eq!(read(miss).await, page(), "the filling caller, not decoded");
        let gzip_only = c.weighted_size().await;
        let mut stored = c.store.get(&key).await.unwrap();
        assert!(stored.gzipped && stored.plain.is_none());
        for hit in 1..=3 {
            let resp = svc.clone().oneshot(get(&cred, false)).await.unwrap();
            assert_eq!(resp.headers()[X_CACHE], "HIT");
            assert!(!resp.headers().contains_key(header::CONTENT_ENCODING));
            assert_eq!(
                resp.headers()[header::CONTENT_LENGTH],
                page().len().to_string()
            );
            assert_eq!(read(resp).await, page(), "hit {hit}: the origin's bytes");
            stored = c.store.get(&key).await.unwrap();
            let kept = u32::try_from(hit).unwrap() >= DECODES_BEFORE_PLAIN;
            assert_eq!(stored.plain.as_ref() == Some(&page()), kept, "hit {hit}");
        }
        assert!(
            c.weighted_size().await >= gzip_only + page().len() as u64,
            "charged for both copies"
        );
        // A gzip caller still gets the stored copy as it is.
        let resp = svc.clone().oneshot(get(&cred, true)).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(read(resp).await, stored.body);
        // Only entries identity callers read hold both: a gzip caller's keeps the one copy.
        let other = Arc::new(Credential::new(ApiKey::new("j-au1".into()), "j", None).unwrap());
        for _ in 0..4 {
            svc.clone().oneshot(get(&other, true)).await.unwrap();
        }
        let key = CacheKey {
            credential: c.id_of(&other),
            ..key
        };
        assert!(c.store.get(&key).await.unwrap().plain.is_none());
    }

    #[tokio::test]
    async fn a_decoded_copy_is_never_stored_over_a_purge_or_a_newer_entry() {
        let (c, svc, cred, key) = page_rig();
        let fill = || svc.clone().oneshot(get(&cred, false));
        fill().await.unwrap();
        let plain = page();
        // A purge after the lookup (epoch read before it): nothing comes back.
        let epoch = c.epoch.load(Ordering::Acquire);
        let read = c.store.get(&key).await.unwrap();
        c.purge_all();
        keep_plain(&c, &key, &read, plain.clone(), epoch).await;
        assert!(c.store.get(&key).await.is_none(), "purged stays purged");
        // A purge since the lookup (the epoch moved): not stored.
        fill().await.unwrap();
        let read = c.store.get(&key).await.unwrap();
        let epoch = c.epoch.load(Ordering::Acquire);
        keep_plain(&c, &key, &read, plain.clone(), epoch + 1).await;
        assert!(c.store.get(&key).await.unwrap().plain.is_none());
        // Two purges overlapping leave the epoch even while they run: still not stored.
        c.purges.fetch_add(1, Ordering::AcqRel);
        let epoch = c.epoch.load(Ordering::Acquire);
        keep_plain(&c, &key, &read, plain.clone(), epoch).await;
        assert!(c.store.get(&key).await.unwrap().plain.is_none());
        c.purges.fetch_sub(1, Ordering::AcqRel);
        // Skipped past its count (as for that purge), the next decode stores it.
        read.decodes
            .store(DECODES_BEFORE_PLAIN + 3, Ordering::Relaxed);
        let hit = fill().await.unwrap();
        assert_eq!(hit.headers()[X_CACHE], "HIT");
        assert_eq!(
            c.store.get(&key).await.unwrap().plain.as_ref(),
            Some(&plain)
        );
        // The entry read was replaced since: the newer one stays as it is.
        c.purge_all();
        fill().await.unwrap();
        let newer = c.store.get(&key).await.unwrap();
        let epoch = c.epoch.load(Ordering::Acquire);
        keep_plain(&c, &key, &read, plain.clone(), epoch).await;
        let now = c.store.get(&key).await.unwrap();
        assert!(Arc::ptr_eq(&now, &newer) && now.plain.is_none());
        // Still the one read, nothing in between: stored with both copies, same fetch time.
        keep_plain(&c, &key, &newer, plain.clone(), epoch).await;
        let now = c.store.get(&key).await.unwrap();
        assert_eq!(now.plain.as_ref(), Some(&plain));
        assert_eq!(now.stored, newer.stored);
    }

    #[tokio::test]
    async fn a_body_still_encoded_passes_as_it_is_and_is_not_stored() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |_r: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            let mut r = ok_json("\"z\"");
            // An encoding the forwarder leaves alone: re-gzipping it and labelling the result
            // plain gzip would send callers bytes they cannot decode.
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            async move { Ok::<_, GatewayError>(r) }
        });
        let svc = tower::Layer::layer(&WrapLayer(Some(cache(Duration::from_secs(60)))), inner);
        let cred = Arc::new(Credential::new(ApiKey::new("k-au1".into()), "k", None).unwrap());
        for _ in 0..2 {
            let resp = svc.clone().oneshot(req(&cred)).await.unwrap();
            assert_eq!(resp.headers()[header::CONTENT_ENCODING], "zstd");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"{\"practitioners\":[]}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing was stored");
    }

    #[tokio::test]
    async fn a_runners_own_refusal_is_not_handed_to_waiters() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (c, g) = (calls.clone(), gate.clone());
        let inner = tower::service_fn(move |_r: Request<Body>| {
            let (c, g) = (c.clone(), g.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The runner: held until the waiters have joined, then refused on its own.
                    g.notified().await;
                    return Err(GatewayError::Forbidden { needed: "x".into() });
                }
                Ok(ok_json("\"e\""))
            }
        });
        let svc = tower::Layer::layer(&WrapLayer(Some(cache(Duration::from_secs(60)))), inner);
        let cred = Arc::new(Credential::new(ApiKey::new("k-au1".into()), "k", None).unwrap());
        let runner = tokio::spawn(svc.clone().oneshot(req(&cred)));
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(svc.clone().oneshot(req(&cred))))
            .collect();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert!(
            runner.await.unwrap().is_err(),
            "the runner keeps its refusal"
        );
        for w in waiters {
            assert_eq!(
                w.await.unwrap().unwrap().status(),
                200,
                "waiters ask for themselves"
            );
        }
    }

    #[tokio::test]
    async fn stale_entries_are_revalidated_once_for_many_callers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |r: Request<Body>| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if r.headers().contains_key(header::IF_NONE_MATCH) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut resp = Response::new(Body::empty());
                    *resp.status_mut() = StatusCode::NOT_MODIFIED;
                    return Ok::<_, GatewayError>(resp);
                }
                Ok(ok_json("\"e\""))
            }
        });
        let svc = tower::Layer::layer(&WrapLayer(Some(cache(Duration::from_millis(1)))), inner);
        let cred = Arc::new(Credential::new(ApiKey::new("k-au1".into()), "k", None).unwrap());
        svc.clone().oneshot(req(&cred)).await.unwrap();
        // Let the 1 ms TTL run out (the cache's clock, not another task).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let many: Vec<_> = (0..30)
            .map(|_| tokio::spawn(svc.clone().oneshot(req(&cred))))
            .collect();
        for m in many {
            let resp = m.await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one fill, one revalidation"
        );
    }
}
