//! Property tests (proptest, 256 cases each) over the pieces that stand between a caller's
//! bytes and Cliniko: the request-target check, the header rewriter, the upstream URI and
//! token parsing. The link rewriter has its own in `src/upstream/links/proptests.rs`.

use crate::support::*;
use cliniko_gateway::auth::Authenticator;
use cliniko_gateway::config::{Env, load_str};
use cliniko_gateway::guard::{Limits, check, check_path};
use cliniko_gateway::upstream::forward::upstream_uri;
use cliniko_gateway::upstream::headers::upstream_request_headers;
use cliniko_gateway::upstream::shard::{Shard, ShardRouter};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use std::sync::Arc;

fn cfg() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Path-ish strings rich in the bytes that matter: dots, slashes, percent signs, backslashes.
fn pathish() -> impl Strategy<Value = String> {
    prop_oneof![
        "/v1(/[a-z0-9._%~\\\\-]{0,8}){0,5}/?",
        "/v1/(%[0-9a-fA-F]{2}|[./a-z]){0,12}",
        "\\PC{0,40}",
        "/[ -~]{0,60}",
    ]
}

proptest! {
    #![proptest_config(cfg())]

    /// Never panics; anything accepted is under /v1 with no dot segments, empty segments,
    /// backslashes, control bytes or encoded separators.
    #[test]
    fn accepted_targets_are_plain_v1_paths(path in pathish()) {
        if check_path(&path).is_ok() {
            prop_assert!(path == "/v1" || path.starts_with("/v1/"));
            let lower = path.to_ascii_lowercase();
            for bad in ["%2f", "%5c", "%2e", "%00", "%25", "\\"] {
                prop_assert!(!lower.contains(bad), "{path}");
            }
            prop_assert!(!path.bytes().any(|b| b < 0x20 || b == 0x7f));
            let segs: Vec<&str> = path[1..].split('/').collect();
            for (i, s) in segs.iter().enumerate() {
                prop_assert!(*s != "." && *s != "..", "{path}");
                prop_assert!(!s.is_empty() || i == segs.len() - 1, "{path}");
            }
        }
    }

    /// The whole head check never panics on any target that parses as a URI.
    #[test]
    fn the_head_check_never_panics(target in "[ -~]{1,80}", m in "[A-Z]{1,8}") {
        let limits = Limits { max_body: 1024, authority: "gw.local:8080".parse().unwrap() };
        if let Ok(req) = http::Request::builder().method(m.as_str()).uri(target.as_str()).body(())
            && check(&req, &limits).is_ok()
        {
                prop_assert!(req.uri().path().starts_with("/v1"));
                prop_assert!(req.uri().authority().is_none_or(|a| a.as_str() == "gw.local:8080"));
        }
    }

    /// Whatever the caller sends (any names, any case, repeated), the upstream headers hold
    /// exactly one Authorization — ours — and no Cookie, Host, Forwarded, X-Forwarded-*,
    /// Proxy-* or hop-by-hop header.
    #[test]
    fn no_caller_credential_or_routing_header_survives(
        headers in proptest::collection::vec((
            prop_oneof![
                Just("authorization".to_string()), Just("cookie".to_string()),
                Just("host".to_string()), Just("forwarded".to_string()),
                Just("x-forwarded-host".to_string()), Just("x-forwarded-for".to_string()),
                Just("proxy-authorization".to_string()), Just("proxy-connection".to_string()),
                Just("connection".to_string()), Just("upgrade".to_string()),
                Just("te".to_string()), Just("content-type".to_string()),
                "[a-z][a-z0-9-]{0,15}",
            ],
            "[ -~]{0,30}",
        ), 0..24)
    ) {
        let mut caller = HeaderMap::new();
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                caller.append(k, v);
            }
        }
        let ours = HeaderValue::from_static("Basic b3VyLWtleTo=");
        let ua = HeaderValue::from_static("Gw (a@b.c)");
        let out = upstream_request_headers(&caller, &ua, &ours, &HeaderValue::from_static("rid"));
        let auths: Vec<_> = out.get_all("authorization").iter().collect();
        prop_assert_eq!(auths.len(), 1);
        prop_assert_eq!(auths[0], &ours);
        for name in out.keys() {
            let n = name.as_str();
            prop_assert!(
                !matches!(n, "cookie" | "host" | "forwarded" | "connection" | "upgrade" | "te" | "transfer-encoding")
                    && !n.starts_with("x-forwarded-") && !n.starts_with("proxy-"),
                "{} survived", n
            );
        }
        prop_assert_eq!(out.get_all("user-agent").iter().count(), 1);
    }

    /// Every target the guard accepts is sent to the configured shard's scheme and authority,
    /// under the shard's prefix, with the query byte for byte.
    #[test]
    fn the_upstream_uri_always_names_the_configured_shard(
        path in pathish(), query in proptest::option::of("[!-~&&[^#]]{0,40}")
    ) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()) };
        if check_path(uri.path()).is_err() {
            return Ok(());
        }
        let up: cliniko_gateway::config::UpstreamConfig = toml::from_str(
            "user_agent = \"A (a@b.c)\"\n[shards]\nuk2 = \"https://127.0.0.1:9443/api/v1\"",
        ).unwrap();
        let router = ShardRouter::new(&up).unwrap();
        for (shard, authority, prefix) in [("uk2", "127.0.0.1:9443", "/api/v1"), ("au1", "api.au1.cliniko.com", "/v1")] {
            let base = router.base(&Shard::parse(shard).unwrap()).unwrap();
            let out = upstream_uri(&base, &uri).unwrap();
            prop_assert_eq!(out.scheme_str(), Some("https"));
            prop_assert_eq!(out.authority().map(|a| a.as_str()), Some(authority));
            prop_assert!(out.path().starts_with(prefix));
            prop_assert_eq!(out.query(), uri.query());
        }
    }
}

fn authenticator() -> Arc<Authenticator> {
    let text = "[auth]\nhmac_algorithms = [\"HS256\"]\n[keystore]\npath = \"k.json\"\n[upstream]\nuser_agent = \"A (a@b.c)\"\n";
    let env = Env([
        ("CLINIKO_GATEWAY_HMAC_SECRET".to_string(), HMAC.to_string()),
        ("CLINIKO_GATEWAY_MASTER_KEY".to_string(), MASTER.to_string()),
    ]
    .into_iter()
    .collect());
    let cfg = load_str(text, std::path::Path::new("/tmp"), &env).unwrap();
    let http = cliniko_gateway::upstream::client::build(&cfg.upstream, Default::default()).unwrap();
    Authenticator::new(&cfg.auth, http, None).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    #![proptest_config(cfg())]

    /// Random bytes, random strings and random three-part "JWTs" never panic the verifier
    /// and never authenticate.
    #[test]
    fn random_tokens_never_authenticate(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        text in "\\PC{0,200}",
        parts in (proptest::collection::vec(any::<u8>(), 0..80), proptest::collection::vec(any::<u8>(), 0..120), proptest::collection::vec(any::<u8>(), 0..64)),
        json_header in prop_oneof![Just(r#"{"alg":"HS256"}"#.to_string()), Just(r#"{"alg":"none"}"#.to_string()), "\\{\"alg\":\"[A-Za-z0-9]{0,6}\"\\}"],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let auth = authenticator();
        let mut candidates: Vec<HeaderValue> = Vec::new();
        if let Ok(v) = HeaderValue::from_bytes(&bytes) { candidates.push(v); }
        let mut with_scheme = b"Bearer ".to_vec();
        with_scheme.extend_from_slice(&bytes);
        if let Ok(v) = HeaderValue::from_bytes(&with_scheme) { candidates.push(v); }
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {text}")) { candidates.push(v); }
        let forged = format!("Bearer {}.{}.{}", b64(&parts.0), b64(&parts.1), b64(&parts.2));
        candidates.push(HeaderValue::from_str(&forged).unwrap());
        let shaped = format!("Bearer {}.{}.{}", b64(json_header.as_bytes()), b64(br#"{"sub":"alice","exp":9999999999}"#), b64(&parts.2));
        candidates.push(HeaderValue::from_str(&shaped).unwrap());
        for c in candidates {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, c);
            let r = rt.block_on(auth.authenticate(&headers));
            prop_assert!(r.is_err());
        }
    }
}

/// One `Accept-Encoding` entry: a coding we send, one we do not, `*`, or nothing, with a
/// q-value tower-http reads or one it ignores.
fn encoding_entry() -> impl Strategy<Value = String> {
    let coding = prop_oneof![
        Just("gzip"),
        Just("x-gzip"),
        Just("GZIP"),
        Just("br"),
        Just("zstd"),
        Just("identity"),
        Just("Identity"),
        Just("*"),
        Just("deflate"),
        Just("compress"),
        Just(""),
    ];
    let q = prop_oneof![
        Just(""),
        Just(";q=0"),
        Just(";q=1"),
        Just(";q=0.5"),
        Just(";q=0.000"),
        Just(";q=1.000"),
        Just(";q=1.5"),
        Just(";q=.5"),
        Just(";q=0.5000"),
        Just("; q=0"),
        Just(";q =0"),
        Just(";Q=0.001"),
        Just(";q=0;x=1"),
        Just(";level=1"),
        Just(";q=0."),
    ];
    (coding, q).prop_map(|(c, q)| format!("{c}{q}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The gateway's up-front 406 and tower-http's own agree on any `Accept-Encoding` (one or
    /// two header lines): otherwise a caller would be refused what tower-http sends, or get a
    /// fetched answer relabelled 406 by tower-http.
    #[test]
    fn accept_encoding_refusals_agree_with_tower_http(
        first in proptest::collection::vec(encoding_entry(), 1..4),
        second in proptest::collection::vec(encoding_entry(), 0..3),
    ) {
        use cliniko_gateway::compression::Accepts;
        use futures_util::FutureExt;
        use tower::ServiceExt;
        let mut req = http::Request::new(());
        for line in [first.join(", "), second.join(",")] {
            if !line.is_empty() {
                req.headers_mut().append(http::header::ACCEPT_ENCODING, HeaderValue::from_str(&line).unwrap());
            }
        }
        let ours = !Accepts::of(req.headers()).anything();
        let page = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("x".repeat(2000)))
        });
        let resp = tower_http::compression::Compression::new(page)
            .no_deflate()
            .oneshot(req)
            .now_or_never()
            .expect("a ready service answers at once")
            .unwrap();
        prop_assert_eq!(ours, resp.status() == http::StatusCode::NOT_ACCEPTABLE);
    }
}
