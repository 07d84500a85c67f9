//! The Cliniko stand-in ("sandbox") and the test PKI.
//!
//! It sits where Cliniko sits: at the far end of the request path, behind the gateway's
//! upstream client. `demo` runs the gateway against it without a Cliniko account, and every
//! integration test talks to it over real TLS and asserts on what it recorded.
//!
//! Like one Cliniko shard it rejects `/v1/...` requests without a known API key in
//! `Authorization: Basic` (401, plain text `HTTP Basic: Access denied.`) and, after that, those
//! without a `User-Agent` of the form `Name (email@host)` (403, plain text
//! `Requires a user agent`; Cliniko's real status is unknown, 403 was chosen). Unknown routes
//! and records answer 404 `{"errors": "Not found"}`. Per-path [`Fault`]s override all of this,
//! auth included, so a test can make any path misbehave.

mod data;
mod fault;
mod handler;
mod pki;
mod server;
mod state;
mod sync;

pub use data::{SEEDED_PATIENTS, seeded_appointment_id, seeded_patient_id};
pub use pki::{IssuedCert, SigningKeyPair, TestPki, ec_keypair, ed25519_keypair, rsa_keypair};

use state::State;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The API key the default [`SandboxOptions`] accept (label `demo`, shard `au1`).
pub const DEMO_API_KEY: &str = "sandbox-demo-key-au1";

/// Why the sandbox or the test PKI could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// rcgen could not make a key or certificate.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// A PEM produced by rcgen could not be read back.
    #[error("cannot parse the generated {0} PEM")]
    Pem(&'static str),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the loopback listener failed.
    #[error("cannot bind the sandbox listener: {0}")]
    Io(#[from] std::io::Error),
}

/// One Cliniko account the sandbox knows: the key it accepts and a label stamped on its data.
#[derive(Clone)]
pub struct Account {
    /// The API key, usually with a shard suffix (`abc-au1`); the suffix-less form works too.
    pub api_key: String,
    /// Appears in every record of this account (e.g. `Ada-<label>-7`) so tests can tell
    /// accounts apart; use something URL-safe like `alice`.
    pub label: String,
}

impl Account {
    /// An account with this key and label.
    pub fn new(api_key: impl Into<String>, label: impl Into<String>) -> Account {
        Account {
            api_key: api_key.into(),
            label: label.into(),
        }
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("api_key", &"[REDACTED]")
            .field("label", &self.label)
            .finish()
    }
}

/// How to start a [`Sandbox`]; `Default` gives one `demo` account ([`DEMO_API_KEY`]) on `au1`.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Which API keys it accepts and whose data each sees.
    pub accounts: Vec<Account>,
    /// Certificate SANs; the first one is the host in `base_url` and in every link.
    pub names: Vec<String>,
    /// CA to issue the server certificate from; a fresh one is made if `None`.
    pub pki: Option<Arc<TestPki>>,
    /// Shard name (e.g. `au1`), only used in data text.
    pub shard: String,
    /// Where to listen; tests use `127.0.0.1:0`, the `sandbox` subcommand a fixed address.
    pub listen: SocketAddr,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` to advertise (`None`: hyper's default, 200),
    /// to stand in for a Cliniko that allows few streams per connection.
    pub max_concurrent_streams: Option<u32>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            accounts: vec![Account::new(DEMO_API_KEY, "demo")],
            names: vec!["localhost".to_string(), "127.0.0.1".to_string()],
            pki: None,
            shard: "au1".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_concurrent_streams: None,
        }
    }
}

/// One request as the sandbox received it, body included.
#[derive(Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and raw query exactly as received (`/v1/patients?q[]=...`).
    pub path_and_query: String,
    /// All request headers.
    pub headers: http::HeaderMap,
    /// The complete request body.
    pub body: bytes::Bytes,
    /// When the request (with its body) had been read.
    pub at: Instant,
    /// HTTP version the request arrived with.
    pub version: http::Version,
}

impl Recorded {
    /// The value of one header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

impl fmt::Debug for Recorded {
    // Header values and bodies can hold keys and tokens: show only their shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("Recorded")
            .field("method", &self.method)
            .field("path", &self.path())
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .field("version", &self.version)
            .finish()
    }
}

/// A behaviour override for one exact path (query ignored); applies to every method and
/// takes precedence over authentication.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with this plain-text body.
    Status(u16, String),
    /// Never answer (until the sandbox shuts down).
    Stall,
    /// Send `200` headers, then never finish the body.
    StallAfterHeaders,
    /// Send `200` headers and part of a body, then abort the stream/connection.
    ResetMidBody,
    /// Write non-HTTP bytes (inside TLS) instead of an answer, then close the connection;
    /// on HTTP/2 every other stream of that connection dies too.
    Garbage,
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// `200` with a valid JSON body of about this many bytes, streamed in ~64 KiB chunks.
    Large(usize),
    /// Answer this status with this JSON body.
    Json(u16, serde_json::Value),
    /// Answer this status with these extra headers and this body.
    WithHeaders(u16, Vec<(String, String)>, String),
    /// Answer this status with exactly these headers and body bytes (e.g. a gzipped body).
    Raw(u16, Vec<(String, String)>, bytes::Bytes),
}

/// A running Cliniko stand-in on `127.0.0.1:<random port>`; dropping it stops it.
pub struct Sandbox {
    addr: SocketAddr,
    base_url: String,
    ca_pem: String,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `127.0.0.1:0`, issues a certificate and starts serving.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let pki = match opts.pki.clone() {
            Some(p) => p,
            None => Arc::new(TestPki::new()?),
        };
        let names: Vec<&str> = opts.names.iter().map(String::as_str).collect();
        let tls = pki.issue(&names)?.server_config()?;
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let host = opts.names.first().map_or("localhost", String::as_str);
        let origin = if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("https://[{host}]:{}", addr.port())
        } else {
            format!("https://{host}:{}", addr.port())
        };
        let base_url = format!("{origin}/v1");
        let state = Arc::new(State::new(&opts, origin, base_url.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(server::run(listener, Arc::new(tls), state.clone(), stop_rx));
        Ok(Sandbox {
            addr,
            base_url,
            ca_pem: pki.ca_pem(),
            state,
            stop,
            task: Some(task),
        })
    }

    /// The listening address (127.0.0.1 unless `listen` said otherwise).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<first name>:<port>/v1`, the per-shard base URL to give the gateway.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// PEM of the CA that signed the sandbox certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        sync::lock(&self.state.requests).clone()
    }

    /// JSON answers sent gzipped (to a client that asked) and their bytes on the wire:
    /// `(answers, bytes)`.
    pub fn gzipped(&self) -> (usize, usize) {
        (
            self.state.gzipped.load(Ordering::SeqCst),
            self.state.gzipped_bytes.load(Ordering::SeqCst),
        )
    }

    /// How many requests were received so far (JWKS fetches included).
    pub fn request_count(&self) -> usize {
        sync::lock(&self.state.requests).len()
    }

    /// Forgets the recorded requests (faults, JWKS and data stay).
    pub fn clear(&self) {
        let mut requests = sync::lock(&self.state.requests);
        requests.clear();
        self.state.arrived.send_replace(0);
    }

    /// Waits until at least `n` requests are recorded (e.g. a stalled one has arrived);
    /// wrap it in a timeout.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.state.arrived.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Sets the document served at `GET /.well-known/jwks.json` (default `{"keys": []}`).
    pub fn set_jwks(&self, jwks: serde_json::Value) {
        sync::lock(&self.state.jwks).1 = jwks;
    }

    /// Sets the JWKS status; anything but 200 answers with a junk HTML body.
    pub fn set_jwks_status(&self, status: u16) {
        sync::lock(&self.state.jwks).0 = status;
    }

    /// How many times the JWKS document was requested.
    pub fn jwks_fetch_count(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Overrides the behaviour of one exact path (without query), e.g. `/v1/patients`.
    pub fn set_fault(&self, path: &str, fault: Fault) {
        sync::lock(&self.state.faults).insert(path.to_string(), fault);
    }

    /// Removes the override of one path.
    pub fn clear_fault(&self, path: &str) {
        sync::lock(&self.state.faults).remove(path);
    }

    /// Removes every override.
    pub fn clear_faults(&self) {
        sync::lock(&self.state.faults).clear();
    }

    /// Stops accepting, closes every connection and waits until all of it is done.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The accept loop and every connection watch this flag and end themselves.
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
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
}
