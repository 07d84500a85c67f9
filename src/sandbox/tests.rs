use super::*;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};

type TestClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

const UA: &str = "Sandbox Tests (tests@example.com)";

fn client_for(ca_pem: &str, h2_only: bool) -> TestClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let https = if h2_only {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(https)
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(Bytes::copy_from_slice(body)))?)
        .await?;
    let (parts, b) = resp.into_parts();
    let body = b.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn get(c: &TestClient, url: &str, key: &str) -> Reply {
    let auth = basic(key);
    send(
        c,
        Method::GET,
        url,
        &[("authorization", &auth), ("user-agent", UA)],
        b"",
    )
    .await
    .unwrap()
}

fn opts(accounts: Vec<Account>) -> SandboxOptions {
    SandboxOptions {
        accounts,
        ..Default::default()
    }
}

async fn start_default() -> (Sandbox, TestClient) {
    let sb = Sandbox::start(opts(vec![
        Account::new("key-alice-au1", "alice"),
        Account::new("key-bob-au1", "bob"),
    ]))
    .await
    .unwrap();
    let c = client_for(&sb.ca_pem(), false);
    (sb, c)
}

#[tokio::test]
async fn pagination_envelope_and_links_keep_per_page() {
    let (sb, c) = start_default().await;
    let base = sb.base_url();
    assert_eq!(base, format!("https://localhost:{}/v1", sb.addr().port()));

    let r = get(
        &c,
        &format!("{base}/patients?page=2&per_page=50"),
        "key-alice-au1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers[header::CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert!(r.headers.contains_key(header::ETAG));
    assert_eq!(
        r.headers[header::CACHE_CONTROL],
        "max-age=0, private, must-revalidate"
    );
    let doc = r.json();
    assert_eq!(doc["total_entries"], SEEDED_PATIENTS);
    let pats = doc["patients"].as_array().unwrap();
    assert_eq!(pats.len(), 50);
    assert!(pats[0]["id"].is_string(), "ids are JSON strings");
    assert_eq!(pats[0]["id"], seeded_patient_id(0, 51));
    assert!(pats[0]["first_name"].as_str().unwrap().contains("alice"));
    assert_eq!(
        pats[0]["links"]["self"],
        format!("{base}/patients/{}", pats[0]["id"].as_str().unwrap())
    );
    assert!(
        pats[0]["telehealth_url"]
            .as_str()
            .unwrap()
            .starts_with("https://alice.cliniko.com/")
    );
    assert_eq!(
        doc["links"]["self"],
        format!("{base}/patients?page=2&per_page=50")
    );
    assert_eq!(
        doc["links"]["next"],
        format!("{base}/patients?page=3&per_page=50")
    );
    assert_eq!(
        doc["links"]["previous"],
        format!("{base}/patients?page=1&per_page=50")
    );

    let last = get(&c, &format!("{base}/patients?page=3"), "key-alice-au1")
        .await
        .json();
    assert_eq!(last["patients"].as_array().unwrap().len(), 20);
    assert!(last["links"].get("next").is_none());
    let first = get(
        &c,
        &format!("{base}/patients?per_page=500"),
        "key-alice-au1",
    )
    .await
    .json();
    assert_eq!(first["patients"].as_array().unwrap().len(), 100);
    assert!(first["links"].get("previous").is_none());
    assert_eq!(
        first["links"]["next"],
        format!("{base}/patients?page=2&per_page=100")
    );

    let appts = get(
        &c,
        &format!("{base}/individual_appointments"),
        "key-bob-au1",
    )
    .await
    .json();
    let a = &appts["individual_appointments"][0];
    assert!(
        a["patient"]["links"]["self"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/patients/"))
    );
    assert!(a["practitioner"]["links"]["self"].is_string());
}

#[tokio::test]
async fn accounts_see_their_own_data_and_key_works_without_suffix() {
    let (sb, c) = start_default().await;
    let base = sb.base_url();
    let bob = get(&c, &format!("{base}/patients"), "key-bob").await;
    assert_eq!(bob.status, StatusCode::OK);
    let first = bob.json()["patients"][0]["first_name"].clone();
    assert_eq!(first, "Ada-bob-1");
    let me = get(&c, &format!("{base}/user"), "key-alice-au1")
        .await
        .json();
    assert_eq!(me["first_name"], "alice");
    assert!(me["id"].is_string());
    let one = get(
        &c,
        &format!("{base}/patients/836447129235883062"),
        "key-alice-au1",
    )
    .await;
    assert_eq!(one.json()["first_name"], "Ada-alice-1");
    let missing = get(&c, &format!("{base}/patients/1"), "key-alice-au1").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json(), json!({"errors": "Not found"}));
}

#[tokio::test]
async fn unknown_or_missing_key_gets_rails_401() {
    let (sb, c) = start_default().await;
    let url = format!("{}/patients", sb.base_url());
    for auth in [
        Some(basic("nope-au1")),
        Some("Bearer abc".to_string()),
        None,
    ] {
        let mut h = vec![("user-agent", UA)];
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        let r = send(&c, Method::GET, &url, &h, b"").await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(&r.body[..], b"HTTP Basic: Access denied.\n");
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            "Basic realm=\"Application\""
        );
    }
    assert_eq!(sb.request_count(), 3, "rejected requests are recorded too");
}

#[tokio::test]
async fn user_agent_must_name_a_contact() {
    let (sb, c) = start_default().await;
    let url = format!("{}/patients", sb.base_url());
    let auth = basic("key-alice-au1");
    for ua in [
        None,
        Some("curl/8.0"),
        Some("App (not-an-email)"),
        Some(" (a@b)"),
    ] {
        let mut h = vec![("authorization", auth.as_str())];
        if let Some(u) = ua {
            h.push(("user-agent", u));
        }
        let r = send(&c, Method::GET, &url, &h, b"").await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "UA {ua:?}");
        assert_eq!(&r.body[..], b"Requires a user agent");
    }
}

#[tokio::test]
async fn create_update_archive_round_trip() {
    let (sb, c) = start_default().await;
    let base = sb.base_url();
    let auth = basic("key-alice-au1");
    let h = [
        ("authorization", auth.as_str()),
        ("user-agent", UA),
        ("content-type", "application/json"),
    ];
    let url = format!("{base}/patients");
    let r = send(
        &c,
        Method::POST,
        &url,
        &h,
        br#"{"first_name":"Grace","last_name":"Hopper"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    let rec = r.json();
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["first_name"], "Grace");
    let origin = format!("https://localhost:{}", sb.addr().port());
    assert_eq!(
        r.headers[header::LOCATION],
        format!("{origin}/patients/{id}").as_str(),
        "Location deliberately lacks /v1"
    );

    let bad = send(&c, Method::POST, &url, &h, br#"{"last_name":"x"}"#)
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad.json(),
        json!({"errors": {"first_name": ["can't be blank"]}})
    );
    let junk = send(&c, Method::POST, &url, &h, b"{not json")
        .await
        .unwrap();
    assert_eq!(junk.status, StatusCode::UNPROCESSABLE_ENTITY);

    let rec_url = format!("{base}/patients/{id}");
    let p = send(
        &c,
        Method::PATCH,
        &rec_url,
        &h,
        br#"{"last_name":"Murray"}"#,
    )
    .await
    .unwrap();
    assert_eq!(p.status, StatusCode::OK);
    let again = get(&c, &rec_url, "key-alice-au1").await.json();
    assert_eq!(again["last_name"], "Murray");
    assert_eq!(again["first_name"], "Grace");
    let other = get(&c, &rec_url, "key-bob-au1").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "accounts are isolated");

    let total = |d: Value| d["total_entries"].as_u64().unwrap();
    assert_eq!(total(get(&c, &url, "key-alice-au1").await.json()), 121);
    let arch = send(&c, Method::POST, &format!("{rec_url}/archive"), &h, b"")
        .await
        .unwrap();
    assert_eq!(arch.status, StatusCode::NO_CONTENT);
    assert_eq!(total(get(&c, &url, "key-alice-au1").await.json()), 120);
}

#[tokio::test]
async fn echo_is_byte_exact_over_h2_and_query_is_recorded_raw() {
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let c = client_for(&sb.ca_pem(), true);
    let auth = basic(DEMO_API_KEY);
    let payload: Vec<u8> = (0u8..=255).cycle().take(70_000).collect();
    let r = send(
        &c,
        Method::POST,
        &format!("{}/echo", sb.base_url()),
        &[
            ("authorization", &auth),
            ("user-agent", UA),
            ("content-type", "application/x-odd"),
        ],
        &payload,
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &payload[..]);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/x-odd");

    let q = "/patients?q[]=last_name:~~ja%on%&q%5B%5D=id:%3E5&sort=a,b:desc&q[]=x";
    let url = format!("{}{q}", sb.base_url());
    assert_eq!(get(&c, &url, DEMO_API_KEY).await.status, StatusCode::OK);
    let recs = sb.requests();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].body.len(), 70_000);
    assert_eq!(recs[0].version, http::Version::HTTP_2);
    assert_eq!(recs[1].path_and_query, format!("/v1{q}"));
    assert_eq!(recs[1].header("user-agent"), Some(UA));
    sb.clear();
    assert_eq!(sb.request_count(), 0);
}

#[tokio::test]
async fn if_none_match_answers_304() {
    let (sb, c) = start_default().await;
    let url = format!("{}/patients/836447129235883062", sb.base_url());
    let first = get(&c, &url, "key-alice-au1").await;
    let etag = first.headers[header::ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""));
    let auth = basic("key-alice-au1");
    let r = send(
        &c,
        Method::GET,
        &url,
        &[
            ("authorization", &auth),
            ("user-agent", UA),
            ("if-none-match", &etag),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn stall_records_the_request_before_stalling() {
    let (sb, c) = start_default().await;
    sb.set_fault("/v1/patients", Fault::Stall);
    let auth = basic("key-alice-au1");
    let url = format!("{}/patients?page=1", sb.base_url());
    let (c2, url2) = (c.clone(), url.clone());
    let mut attempt = tokio::spawn(async move {
        let h = [("authorization", auth.as_str()), ("user-agent", UA)];
        send(&c2, Method::POST, &url2, &h, b"{\"first_name\":\"S\"}").await
    });
    tokio::time::timeout(Duration::from_secs(5), sb.wait_for_requests(1))
        .await
        .unwrap();
    let res = tokio::time::timeout(Duration::from_millis(200), &mut attempt).await;
    assert!(res.is_err(), "a stalled request must not be answered");
    attempt.abort();
    let recs = sb.requests();
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0].body[..], b"{\"first_name\":\"S\"}");
    assert_eq!(recs[0].path(), "/v1/patients");
    sb.clear_fault("/v1/patients");
    assert_eq!(get(&c, &url, "key-alice-au1").await.status, StatusCode::OK);
}

#[tokio::test]
async fn simple_faults_override_auth() {
    let (sb, c) = start_default().await;
    let base = sb.base_url();
    sb.set_fault("/v1/a", Fault::Status(503, "down".into()));
    sb.set_fault("/v1/b", Fault::Json(429, json!({"message": "slow"})));
    sb.set_fault(
        "/v1/c",
        Fault::WithHeaders(
            429,
            vec![("X-RateLimit-Reset".into(), "1700000000".into())],
            "x".into(),
        ),
    );
    sb.set_fault("/v1/d", Fault::Delay(Duration::from_millis(1)));
    let r = send(&c, Method::GET, &format!("{base}/a"), &[], b"")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (503, &b"down"[..]));
    let r = send(&c, Method::GET, &format!("{base}/b"), &[], b"")
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (429, json!({"message": "slow"}))
    );
    let r = send(&c, Method::GET, &format!("{base}/c"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.headers["x-ratelimit-reset"], "1700000000");
    let r = send(&c, Method::GET, &format!("{base}/d"), &[], b"")
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "Delay then behaves normally"
    );
}

#[tokio::test]
async fn broken_faults_break_the_answer() {
    for h2 in [false, true] {
        let (sb, _) = start_default().await;
        let c = client_for(&sb.ca_pem(), h2);
        let base = sb.base_url();
        sb.set_fault("/v1/garbage", Fault::Garbage);
        sb.set_fault("/v1/reset", Fault::ResetMidBody);
        sb.set_fault("/v1/slow", Fault::StallAfterHeaders);
        let g = send(&c, Method::GET, &format!("{base}/garbage"), &[], b"").await;
        assert!(g.is_err(), "garbage must not parse as HTTP (h2={h2})");
        let r = send(&c, Method::GET, &format!("{base}/reset"), &[], b"").await;
        assert!(r.is_err(), "a reset body must not complete (h2={h2})");

        let resp = c
            .request(
                Request::get(format!("{base}/slow"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = tokio::time::timeout(Duration::from_millis(200), resp.collect()).await;
        assert!(body.is_err(), "the body must never finish (h2={h2})");
        assert_eq!(sb.request_count(), 3);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn large_fault_streams_valid_json() {
    let (sb, c) = start_default().await;
    sb.set_fault("/v1/patients", Fault::Large(1_000_000));
    let r = get(&c, &format!("{}/patients", sb.base_url()), "key-alice-au1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers.get(header::CONTENT_LENGTH).is_none(),
        "streamed, not sized"
    );
    assert!(
        (900_000..=1_000_000).contains(&r.body.len()),
        "{}",
        r.body.len()
    );
    let doc = r.json();
    let n = doc["patients"].as_array().unwrap().len();
    assert_eq!(doc["total_entries"], n);
    assert!(
        doc["patients"][0]["links"]["self"]
            .as_str()
            .unwrap()
            .starts_with(&sb.base_url())
    );
}

#[tokio::test]
async fn jwks_is_served_without_auth_and_counted() {
    let (sb, c) = start_default().await;
    let url = format!(
        "https://localhost:{}/.well-known/jwks.json",
        sb.addr().port()
    );
    let r = send(&c, Method::GET, &url, &[], b"").await.unwrap();
    assert_eq!(r.json(), json!({"keys": []}));
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1"}]});
    sb.set_jwks(jwks.clone());
    assert_eq!(
        send(&c, Method::GET, &url, &[], b"").await.unwrap().json(),
        jwks
    );
    sb.set_jwks_status(500);
    let r = send(&c, Method::GET, &url, &[], b"").await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert_eq!(sb.jwks_fetch_count(), 3);
}

#[tokio::test]
async fn other_ca_and_wrong_name_are_refused_by_a_verifying_client() {
    let pki = Arc::new(TestPki::new().unwrap());
    let other = TestPki::new().unwrap();
    assert_ne!(pki.ca_pem(), other.ca_pem());
    let sb = Sandbox::start(SandboxOptions {
        pki: Some(pki.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(sb.ca_pem(), pki.ca_pem());
    let url = format!("{}/user", sb.base_url());
    let good = client_for(&pki.ca_pem(), false);
    assert_eq!(get(&good, &url, DEMO_API_KEY).await.status, StatusCode::OK);
    let foreign = client_for(&other.ca_pem(), false);
    let r = send(&foreign, Method::GET, &url, &[], b"").await;
    assert!(r.is_err(), "a certificate from another CA must fail");

    let wrong = Sandbox::start(SandboxOptions {
        names: vec!["wrong.example".into()],
        pki: Some(pki.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    // Connect by a name the certificate does not carry (never resolve wrong.example).
    let url = format!("https://localhost:{}/v1/user", wrong.addr().port());
    assert!(send(&good, Method::GET, &url, &[], b"").await.is_err());
    let ip_url = format!("https://127.0.0.1:{}/v1/user", sb.addr().port());
    assert_eq!(
        get(&good, &ip_url, DEMO_API_KEY).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let (sb, c) = start_default().await;
    let addr = sb.addr();
    sb.set_fault("/v1/stall", Fault::Stall);
    let url = format!("{}/stall", sb.base_url());
    let pending = tokio::spawn(async move { send(&c, Method::GET, &url, &[], b"").await });
    // Wait until the stalled request has arrived; shutdown must end it.
    tokio::time::timeout(Duration::from_secs(5), sb.wait_for_requests(1))
        .await
        .unwrap();
    sb.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending).await;
    let answered = outcome.unwrap().unwrap();
    assert!(answered.map_or(true, |r| r.status != StatusCode::OK));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn signing_key_pairs_round_trip_through_jsonwebtoken() {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }
    type Keys = (EncodingKey, DecodingKey);
    type Loader = fn(&SigningKeyPair) -> Keys;
    let cases: Vec<(Algorithm, SigningKeyPair, Loader)> = vec![
        (Algorithm::RS256, rsa_keypair().unwrap(), |k| {
            (
                EncodingKey::from_rsa_pem(k.private_pem.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(k.public_pem.as_bytes()).unwrap(),
            )
        }),
        (Algorithm::ES256, ec_keypair().unwrap(), |k| {
            (
                EncodingKey::from_ec_pem(k.private_pem.as_bytes()).unwrap(),
                DecodingKey::from_ec_pem(k.public_pem.as_bytes()).unwrap(),
            )
        }),
        (Algorithm::EdDSA, ed25519_keypair().unwrap(), |k| {
            (
                EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(k.public_pem.as_bytes()).unwrap(),
            )
        }),
    ];
    for (alg, pair, load) in cases {
        assert!(
            !format!("{pair:?}").contains("PRIVATE"),
            "Debug hides the key"
        );
        let (enc, dec) = load(&pair);
        let claims = Claims {
            sub: "u1".into(),
            exp: 4_000_000_000,
        };
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
        let back = jsonwebtoken::decode::<Claims>(&token, &dec, &Validation::new(alg)).unwrap();
        assert_eq!(back.claims.sub, "u1");
        let stranger = ed25519_keypair().unwrap();
        if alg == Algorithm::EdDSA {
            let wrong = DecodingKey::from_ed_pem(stranger.public_pem.as_bytes()).unwrap();
            assert!(jsonwebtoken::decode::<Claims>(&token, &wrong, &Validation::new(alg)).is_err());
        }
    }
}
