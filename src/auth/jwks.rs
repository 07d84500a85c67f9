//! The identity provider's JWKS: fetched over HTTPS, refreshed in the background, refetched
//! (single-flight, rate-limited) when a token names an unknown `kid`.
//!
//! Rejects: tokens whose `kid` is unknown even after a refetch (remembered for
//! `unknown_kid_ttl`, so a flood of bogus kids cannot hammer the IdP), and every JWKS token
//! before the first successful fetch (`KeysUnavailable`). A failed refresh keeps the last good set.

use super::keys::KeyEntry;
use crate::body::Body;
use crate::config::JwksConfig;
use crate::error::AuthError;
use crate::upstream::HttpClient;
use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Largest JWKS document accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Most keys kept from one set (a token without `kid` may be tried against each).
const MAX_KEYS: usize = 64;
/// Most remembered unknown kids.
const MAX_UNKNOWN_KIDS: u64 = 10_000;
/// Longer kids are refused outright rather than remembered.
const MAX_KID: usize = 256;

/// One fetched key set: at most [`MAX_KEYS`], so a `kid` is found by a scan.
pub(crate) type KeySet = Vec<KeyEntry>;

/// The JWKS source.
pub(crate) struct Jwks {
    /// `[auth.jwks]` as configured (its URL is safe to log: loading refuses one with
    /// credentials or a query).
    pub cfg: JwksConfig,
    http: HttpClient,
    set: ArcSwapOption<KeySet>,
    /// Held while fetching: waiters share the fetch in progress. Holds the last attempt's start.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Completed fetch attempts.
    generation: AtomicU64,
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
        Jwks {
            cfg: cfg.clone(),
            http,
            set: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            unknown: moka::future::Cache::builder()
                .max_capacity(MAX_UNKNOWN_KIDS)
                .time_to_live(cfg.unknown_kid_ttl)
                .build(),
            counts,
        }
    }

    /// True once a fetch has succeeded.
    pub fn ready(&self) -> bool {
        self.set.load().is_some()
    }

    /// The current set, or `KeysUnavailable` before the first successful fetch.
    pub fn current(&self) -> Result<Arc<KeySet>, AuthError> {
        self.set.load_full().ok_or(AuthError::KeysUnavailable)
    }

    /// The set, once it has the key named `kid`: refetched once if it has not.
    pub async fn lookup(&self, kid: &str) -> Result<Arc<KeySet>, AuthError> {
        const UNKNOWN: AuthError = AuthError::Invalid("unknown key id");
        let names_kid = |set: &KeySet| set.iter().any(|k| k.kid.as_deref() == Some(kid));
        let set = self.current()?;
        if names_kid(&set) {
            return Ok(set);
        }
        if kid.len() > MAX_KID || self.unknown.contains_key(kid) {
            return Err(UNKNOWN);
        }
        let seen = self.generation.load(Ordering::SeqCst);
        self.refresh(Some(seen)).await;
        let newer = self.current()?;
        if names_kid(&newer) {
            return Ok(newer);
        }
        // Remember the kid only when the set is known to be newer than the request (a good
        // fetch stores a new set): if the refetch was rate-limited or failed, a just-rotated
        // kid must not be locked out.
        if !Arc::ptr_eq(&set, &newer) && !self.cfg.unknown_kid_ttl.is_zero() {
            self.unknown.insert(kid.to_owned(), ()).await;
        }
        Err(UNKNOWN)
    }

    /// Fetches: now (background refresh and start-up, `seen` = `None`), or for a lookup
    /// that saw generation `seen`, unless a fetch completed since or one started too
    /// recently. True when this call fetched successfully.
    pub async fn refresh(&self, seen: Option<u64>) -> bool {
        let mut last = self.fetch.lock().await;
        let fetched_meanwhile = seen.is_some_and(|g| self.generation.load(Ordering::SeqCst) != g);
        let too_soon =
            seen.is_some() && last.is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval);
        if fetched_meanwhile || too_soon {
            return false;
        }
        *last = Some(Instant::now());
        let ok = match self.fetch_once().await {
            Ok(set) => {
                tracing::debug!(url = %self.cfg.url, keys = set.len(), "JWKS fetched");
                // Store before bumping the generation so waiters that see it also see the set.
                self.set.store(Some(Arc::new(set)));
                self.counts.ok.fetch_add(1, Ordering::SeqCst);
                true
            }
            Err(FetchError(why)) => {
                tracing::warn!(
                    url = %self.cfg.url,
                    reason = %why,
                    keeping_previous = self.ready(),
                    "JWKS fetch failed"
                );
                self.counts.failed.fetch_add(1, Ordering::SeqCst);
                false
            }
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        ok
    }

    async fn fetch_once(&self) -> Result<KeySet, FetchError> {
        let req = http::Request::get(self.cfg.url.clone())
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
            parse(&body, &self.cfg.algorithms)
        };
        tokio::time::timeout(self.cfg.timeout, work)
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
    let mut set = KeySet::new();
    for (index, value) in raw.keys.into_iter().enumerate() {
        if set.len() >= MAX_KEYS {
            tracing::warn!(kept = MAX_KEYS, "JWKS has too many keys; ignoring the rest");
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            tracing::warn!(index, "skipping JWK: unsupported key type or algorithm");
            continue;
        };
        let key = match usable(&jwk, allowed) {
            Ok(k) => k,
            Err(reason) => {
                tracing::warn!(index, reason, "skipping JWK");
                continue;
            }
        };
        if key.kid.is_some() && set.iter().any(|k| k.kid == key.kid) {
            tracing::warn!(index, "skipping JWK: duplicate kid");
            continue;
        }
        set.push(key);
    }
    if set.is_empty() {
        return Err(FetchError("the set has no usable key".into()));
    }
    Ok(set)
}

fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Result<KeyEntry, &'static str> {
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
    Ok(KeyEntry {
        key,
        algs,
        kid: jwk.common.key_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    // JWKS over a real loopback TLS server (self-signed rcgen certificate trusted via `ca_file`).

    use crate::auth::test_support::*;
    use crate::auth::*;
    use crate::config::JwksConfig;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use std::convert::Infallible;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    /// What the stand-in identity provider serves, and how often it was asked.
    #[derive(Default)]
    struct State {
        body: std::sync::Mutex<String>,
        fail: AtomicBool,
        hits: AtomicU64,
    }

    struct IdP {
        url: String,
        state: Arc<State>,
        ca: PathBuf,
        _dir: TempDir,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for IdP {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl IdP {
        async fn start() -> IdP {
            let dir = TempDir::new();
            let ck =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            let ca = dir.write("ca.pem", &ck.cert.pem());
            let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "https://127.0.0.1:{}/.well-known/jwks.json?tenant=secret",
                listener.local_addr().unwrap().port()
            );
            let state = Arc::new(State::default());
            let st = state.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, st) = (acceptor.clone(), st.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |_req| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(respond(&st)) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
            IdP {
                url,
                state,
                ca,
                _dir: dir,
                task,
            }
        }

        fn publish(&self, keys: &[(&Signer, Algorithm, &str)]) {
            let keys = keys
                .iter()
                .map(|(s, alg, kid)| {
                    let mut j = Jwk::from_encoding_key(&s.enc, *alg).unwrap();
                    j.common.key_id = Some(kid.to_string());
                    j
                })
                .collect();
            self.publish_raw(serde_json::to_string(&JwkSet { keys }).unwrap());
        }

        fn publish_raw(&self, body: String) {
            *self.state.body.lock().unwrap() = body;
        }

        fn fail(&self, on: bool) {
            self.state.fail.store(on, Ordering::SeqCst);
        }

        fn hits(&self) -> u64 {
            self.state.hits.load(Ordering::SeqCst)
        }

        fn cfg(&self) -> JwksConfig {
            JwksConfig {
                url: self.url.parse().unwrap(),
                algorithms: vec![Algorithm::ES256],
                refresh_interval: Duration::from_secs(3600),
                min_refetch_interval: Duration::ZERO,
                unknown_kid_ttl: Duration::from_secs(3600),
                timeout: Duration::from_secs(10),
            }
        }

        fn authn(&self, jwks: JwksConfig) -> Arc<Authenticator> {
            let cfg = AuthConfig {
                jwks: Some(jwks),
                hmac_secret: None,
                ..base_cfg()
            };
            Authenticator::new(&cfg, client(Some(&self.ca)), None).unwrap()
        }
    }

    fn respond(st: &State) -> http::Response<Full<Bytes>> {
        st.hits.fetch_add(1, Ordering::SeqCst);
        let mut resp = http::Response::new(Full::new(Bytes::from(st.body.lock().unwrap().clone())));
        if st.fail.load(Ordering::SeqCst) {
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        }
        resp
    }

    fn es(s: &Signer, kid: &str, sub: &str) -> String {
        s.sign(header(Algorithm::ES256, Some(kid)), &claims(sub))
    }

    const UNKNOWN: AuthError = AuthError::Invalid("unknown key id");

    #[tokio::test]
    async fn first_fetch_makes_ready() {
        let idp = IdP::start().await;
        let k1 = generate(Algorithm::ES256);
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);
        let a = idp.authn(idp.cfg());
        assert!(!a.ready());
        let t = es(&k1, "k1", "alice");
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::KeysUnavailable);
        assert_eq!(idp.hits(), 0, "new() does not fetch");
        a.start().await;
        assert!(a.ready());
        assert_eq!(fetches(&a), (1, 0));
        assert_eq!(&*check(&a, &t).await.unwrap().id, "alice");
        // A token without kid is tried against the set's keys.
        let no_kid = k1.sign(Header::new(Algorithm::ES256), &claims("bob"));
        assert_eq!(&*check(&a, &no_kid).await.unwrap().id, "bob");
        assert_eq!(idp.hits(), 1);
    }

    #[tokio::test]
    async fn rotation_is_picked_up_on_unknown_kid() {
        let idp = IdP::start().await;
        let (k1, k2) = (generate(Algorithm::ES256), generate(Algorithm::ES256));
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);
        let a = idp.authn(idp.cfg());
        a.start().await;
        idp.publish(&[(&k1, Algorithm::ES256, "k1"), (&k2, Algorithm::ES256, "k2")]);
        assert_eq!(
            &*check(&a, &es(&k2, "k2", "alice")).await.unwrap().id,
            "alice"
        );
        assert_eq!(idp.hits(), 2);
        // The new set still has k1, and a known kid costs no fetch.
        assert!(check(&a, &es(&k1, "k1", "bob")).await.is_ok());
        assert_eq!(idp.hits(), 2);
    }

    async fn concurrently(
        a: &Arc<Authenticator>,
        token: &str,
        n: usize,
    ) -> Vec<Result<User, AuthError>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (a, t) = (a.clone(), token.to_string());
                tokio::spawn(async move { check(&a, &t).await })
            })
            .collect();
        futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn concurrent_unknown_kid_shares_one_fetch() {
        let idp = IdP::start().await;
        let (k1, k2) = (generate(Algorithm::ES256), generate(Algorithm::ES256));
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);
        // No rate limit and no negative cache: only single-flight keeps this to one fetch.
        let a = idp.authn(JwksConfig {
            unknown_kid_ttl: Duration::ZERO,
            ..idp.cfg()
        });
        a.start().await;
        let results = concurrently(&a, &es(&k2, "k2", "alice"), 50).await;
        assert!(results.iter().all(|r| matches!(r, Err(e) if *e == UNKNOWN)));
        assert_eq!(idp.hits(), 2, "50 waiters, one fetch");

        idp.publish(&[(&k1, Algorithm::ES256, "k1"), (&k2, Algorithm::ES256, "k2")]);
        let results = concurrently(&a, &es(&k2, "k2", "bob"), 50).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|u| &*u.id == "bob"))
        );
        assert_eq!(idp.hits(), 3);
    }

    #[tokio::test]
    async fn bogus_kid_flood_is_bounded() {
        let idp = IdP::start().await;
        let (k1, bogus) = (generate(Algorithm::ES256), generate(Algorithm::ES256));
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);

        // The same bogus kid again and again: one refetch, then it is remembered as unknown.
        let a = idp.authn(idp.cfg());
        a.start().await;
        for i in 0..100 {
            let t = es(&bogus, "bogus", &format!("u{i}"));
            assert_eq!(check(&a, &t).await.unwrap_err(), UNKNOWN);
        }
        assert_eq!(idp.hits(), 2);

        // Many different bogus kids: the refetch rate limit caps fetches.
        let limited = idp.authn(JwksConfig {
            min_refetch_interval: Duration::from_secs(3600),
            ..idp.cfg()
        });
        limited.start().await;
        assert_eq!(idp.hits(), 3);
        for i in 0..200 {
            let t = es(&bogus, &format!("bogus-{i}"), "u");
            assert_eq!(check(&limited, &t).await.unwrap_err(), UNKNOWN);
        }
        assert_eq!(idp.hits(), 3, "no fetch within min_refetch_interval");
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_last_good_set() {
        let idp = IdP::start().await;
        let (k1, k9) = (generate(Algorithm::ES256), generate(Algorithm::ES256));
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);
        let a = idp.authn(idp.cfg());
        a.start().await;
        idp.fail(true);
        assert_eq!(check(&a, &es(&k9, "k9", "a")).await.unwrap_err(), UNKNOWN);
        assert_eq!(fetches(&a), (1, 1));
        assert!(a.ready());
        assert!(
            check(&a, &es(&k1, "k1", "b")).await.is_ok(),
            "old set still served"
        );

        // An unparseable set is a failure too, and also keeps the old keys.
        idp.fail(false);
        idp.publish_raw("{\"keys\": 12}".into());
        assert_eq!(check(&a, &es(&k9, "k9", "c")).await.unwrap_err(), UNKNOWN);
        assert_eq!(fetches(&a).1, 2);
        assert!(check(&a, &es(&k1, "k1", "d")).await.is_ok());

        // k9 was not remembered as unknown (no good fetch saw it missing), so it works once published.
        idp.publish(&[(&k1, Algorithm::ES256, "k1"), (&k9, Algorithm::ES256, "k9")]);
        assert!(check(&a, &es(&k9, "k9", "e")).await.is_ok());
    }

    #[tokio::test]
    async fn failed_first_fetch_recovers_in_the_background() {
        let idp = IdP::start().await;
        let k1 = generate(Algorithm::ES256);
        idp.publish(&[(&k1, Algorithm::ES256, "k1")]);
        idp.fail(true);
        let a = idp.authn(JwksConfig {
            refresh_interval: Duration::from_millis(100),
            ..idp.cfg()
        });
        a.start().await;
        assert!(!a.ready());
        assert!(fetches(&a).1 >= 1);
        let t = es(&k1, "k1", "alice");
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::KeysUnavailable);
        idp.fail(false);
        // Bounded wait on an observable condition (the refresher's retry), not a fixed sleep.
        tokio::time::timeout(Duration::from_secs(20), async {
            while !a.ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("refresher recovered");
        assert!(check(&a, &t).await.is_ok());
    }

    #[tokio::test]
    async fn jwk_alg_and_set_allowlist_both_apply() {
        let idp = IdP::start().await;
        let ec = generate(Algorithm::ES256);
        let mut rsa_jwk = Jwk::from_encoding_key(&rsa().enc, Algorithm::RS256).unwrap();
        rsa_jwk.common.key_id = Some("r1".into());
        let mut ec_jwk = Jwk::from_encoding_key(&ec.enc, Algorithm::ES256).unwrap();
        ec_jwk.common.key_id = Some("e1".into());
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h1", "k": B64.encode(SECRET), "alg": "HS256"},
            {"kty": "EC", "kid": "junk", "crv": "P-256", "x": 1},
            serde_json::to_value(&rsa_jwk).unwrap(),
            serde_json::to_value(&ec_jwk).unwrap(),
        ]});
        idp.publish_raw(set.to_string());
        let a = idp.authn(JwksConfig {
            algorithms: vec![Algorithm::RS256, Algorithm::PS256],
            ..idp.cfg()
        });
        a.start().await;
        assert!(a.ready(), "unusable keys are skipped, not fatal");
        let not_allowed = AuthError::Invalid("algorithm not allowed for this key");

        let rs = rsa().sign(header(Algorithm::RS256, Some("r1")), &claims("alice"));
        assert!(check(&a, &rs).await.is_ok());
        // The set allows PS256, but this JWK says RS256.
        let ps = rsa().sign(header(Algorithm::PS256, Some("r1")), &claims("alice"));
        assert_eq!(check(&a, &ps).await.unwrap_err(), not_allowed);
        // ES256 is not in auth.jwks.algorithms, even for an EC key in the set.
        assert_eq!(
            check(&a, &es(&ec, "e1", "alice")).await.unwrap_err(),
            not_allowed
        );
        // The `oct` key in the set is never used: HS256 has no key at all.
        let hs_kid = encode(
            &header(Algorithm::HS256, Some("h1")),
            &claims("m"),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(check(&a, &hs_kid).await.unwrap_err(), not_allowed);
    }
}
