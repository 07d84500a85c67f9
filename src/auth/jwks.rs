//! The identity provider's JWKS: fetched over HTTPS, refreshed in the background, refetched
//! (single-flight, rate-limited) when a token names an unknown `kid`.
//!
//! Rejects: tokens whose `kid` is unknown even after a refetch (remembered for
//! `unknown_kid_ttl`, so a flood of bogus kids cannot hammer the IdP), and every JWKS token
//! before the first successful fetch (`KeysUnavailable`). A failed refresh keeps the last good set.

use crate::body::Body;
use crate::config::JwksConfig;
use crate::error::AuthError;
use crate::upstream::HttpClient;
use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Most keys kept from one set (a token without `kid` may be tried against each).
const MAX_KEYS: usize = 64;
/// Most remembered unknown kids.
const MAX_UNKNOWN_KIDS: u64 = 10_000;
/// Longer kids are refused outright rather than remembered.
const MAX_KID: usize = 256;

/// A key from the set with the algorithms it may verify.
pub(crate) struct JwksKey {
    /// The key material.
    pub key: DecodingKey,
    /// `jwks.algorithms` ∩ the key's family ∩ the JWK's own `alg`, if any.
    pub algs: Vec<Algorithm>,
}

/// One fetched key set.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<JwksKey>>,
    all: Vec<Arc<JwksKey>>,
}

impl KeySet {
    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<JwksKey>> {
        self.by_kid.get(kid).cloned()
    }

    /// Every key that may verify `alg` (for tokens without a `kid`).
    pub fn for_alg(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<JwksKey>> {
        self.all.iter().filter(move |k| k.algs.contains(&alg))
    }
}

/// The JWKS source.
pub(crate) struct Jwks {
    uri: http::Uri,
    /// The URL without its query, safe to log.
    log_url: String,
    algorithms: Vec<Algorithm>,
    /// Background refresh period.
    pub refresh_interval: Duration,
    min_refetch: Duration,
    timeout: Duration,
    unknown_ttl: Duration,
    http: HttpClient,
    set: ArcSwapOption<KeySet>,
    /// Held while fetching: waiters share the fetch in progress. Holds the last attempt's start.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Completed fetch attempts.
    generation: AtomicU64,
    /// Value of `generation` after the last successful fetch.
    good_generation: AtomicU64,
    unknown: moka::future::Cache<String, ()>,
    counts: Arc<AuthCounts>,
}

/// The verifier's counters, one set shared by the verifiers a config reload replaces so the
/// exported counters never go backwards.
#[derive(Debug, Default)]
pub struct AuthCounts {
    /// Successful JWKS fetches.
    pub ok: AtomicU64,
    /// Failed JWKS fetches.
    pub failed: AtomicU64,
    /// Requests that carried a Cliniko API key instead of a JWT.
    pub cliniko_keys_refused: AtomicU64,
}

/// Why a fetch failed (logged; never contains the URL's query or the body).
struct FetchError(Cow<'static, str>);

impl Jwks {
    /// Prepares the source; nothing is fetched yet.
    pub fn new(cfg: &JwksConfig, http: HttpClient, counts: Arc<AuthCounts>) -> Self {
        let uri = cfg.url.clone();
        let log_url = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            uri.path()
        );
        Jwks {
            algorithms: cfg.algorithms.clone(),
            uri,
            log_url,
            refresh_interval: cfg.refresh_interval,
            min_refetch: cfg.min_refetch_interval,
            timeout: cfg.timeout,
            unknown_ttl: cfg.unknown_kid_ttl,
            http,
            set: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            good_generation: AtomicU64::new(0),
            unknown: moka::future::Cache::builder()
                .max_capacity(MAX_UNKNOWN_KIDS)
                .time_to_live(cfg.unknown_kid_ttl)
                .build(),
            counts,
        }
    }

    /// True when keys from this set may verify `alg` at all.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// True once a fetch has succeeded.
    pub fn ready(&self) -> bool {
        self.set.load().is_some()
    }

    /// The current set, or `KeysUnavailable` before the first successful fetch.
    pub fn current(&self) -> Result<Arc<KeySet>, AuthError> {
        self.set.load_full().ok_or(AuthError::KeysUnavailable)
    }

    /// Delay before retrying after a failed background fetch.
    pub fn retry_delay(&self) -> Duration {
        self.min_refetch
            .max(Duration::from_secs(1))
            .min(self.refresh_interval)
    }

    /// The key for `kid`, refetching the set once if it is unknown.
    pub async fn lookup(&self, kid: &str) -> Result<Arc<JwksKey>, AuthError> {
        const UNKNOWN: AuthError = AuthError::Invalid("unknown key id");
        if let Some(k) = self.current()?.get(kid) {
            return Ok(k);
        }
        if kid.len() > MAX_KID || self.unknown.contains_key(kid) {
            return Err(UNKNOWN);
        }
        let seen = self.generation.load(Ordering::SeqCst);
        self.refetch_after(seen).await;
        if let Some(k) = self.current()?.get(kid) {
            return Ok(k);
        }
        // Remember the kid only when the set is known to be newer than the request: if the
        // refetch was rate-limited or failed, a just-rotated kid must not be locked out.
        if self.good_generation.load(Ordering::SeqCst) > seen && !self.unknown_ttl.is_zero() {
            self.unknown.insert(kid.to_owned(), ()).await;
        }
        Err(UNKNOWN)
    }

    /// Fetches unless a fetch completed since generation `seen` or one started too recently.
    async fn refetch_after(&self, seen: u64) {
        let mut last = self.fetch.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        self.fetch_locked(&mut last).await;
    }

    /// Fetches now (background refresh and start-up); true on success.
    pub async fn refresh(&self) -> bool {
        let mut last = self.fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> bool {
        *last = Some(Instant::now());
        let result = self.fetch_once().await;
        let ok = match result {
            Ok(set) => {
                tracing::debug!(url = %self.log_url, keys = set.all.len(), "JWKS fetched");
                // Store before bumping the generation so waiters that see it also see the set.
                self.set.store(Some(Arc::new(set)));
                self.counts.ok.fetch_add(1, Ordering::SeqCst);
                true
            }
            Err(FetchError(why)) => {
                tracing::warn!(
                    url = %self.log_url,
                    reason = %why,
                    keeping_previous = self.ready(),
                    "JWKS fetch failed"
                );
                self.counts.failed.fetch_add(1, Ordering::SeqCst);
                false
            }
        };
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if ok {
            self.good_generation.store(g, Ordering::SeqCst);
        }
        ok
    }

    async fn fetch_once(&self) -> Result<KeySet, FetchError> {
        let req = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|_| FetchError("cannot build the request".into()))?;
        let work = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|_| FetchError("request failed".into()))?;
            if resp.status() != http::StatusCode::OK {
                return Err(FetchError(
                    format!("status {}", resp.status().as_u16()).into(),
                ));
            }
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|_| FetchError("body unreadable or larger than 1 MiB".into()))?
                .to_bytes();
            parse(&body, &self.algorithms)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError("timed out".into()))?
    }
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWK set, skipping (with a warning) keys that cannot be used with `allowed`.
fn parse(body: &[u8], allowed: &[Algorithm]) -> Result<KeySet, FetchError> {
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|_| FetchError("not a JWK set".into()))?;
    let mut set = KeySet::default();
    for (index, value) in raw.keys.into_iter().enumerate() {
        if set.all.len() >= MAX_KEYS {
            tracing::warn!(kept = MAX_KEYS, "JWKS has too many keys; ignoring the rest");
            break;
        }
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(_) => {
                tracing::warn!(index, "skipping JWK: unsupported key type or algorithm");
                continue;
            }
        };
        let key = match usable(&jwk, allowed) {
            Ok(k) => Arc::new(k),
            Err(reason) => {
                tracing::warn!(index, reason, "skipping JWK");
                continue;
            }
        };
        if let Some(kid) = &jwk.common.key_id {
            if set.by_kid.contains_key(kid) {
                tracing::warn!(index, "skipping JWK: duplicate kid");
                continue;
            }
            set.by_kid.insert(kid.clone(), key.clone());
        }
        set.all.push(key);
    }
    if set.all.is_empty() {
        return Err(FetchError("the set has no usable key".into()));
    }
    Ok(set)
}

fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Result<JwksKey, &'static str> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signing key");
    }
    let own_alg = match jwk.common.key_algorithm {
        Some(ka) => Some(Algorithm::try_from(ka).map_err(|_| "its alg is not a JWS algorithm")?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "unreadable key")?;
    if key.family() == AlgorithmFamily::Hmac {
        return Err("symmetric keys are never taken from a JWKS");
    }
    let algs: Vec<Algorithm> = allowed
        .iter()
        .copied()
        .filter(|a| a.family() == key.family() && own_alg.is_none_or(|o| o == *a))
        .collect();
    if algs.is_empty() {
        return Err("its algorithm is not in auth.jwks.algorithms");
    }
    Ok(JwksKey { key, algs })
}
