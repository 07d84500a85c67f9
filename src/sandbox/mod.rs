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
#[cfg(test)]
mod tests;

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
