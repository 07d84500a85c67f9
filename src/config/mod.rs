//! One `Config`, parsed and validated once at start-up, then passed down read-only.
//!
//! Sources, later wins: the TOML file, then environment variables named
//! `CLINIKO_GATEWAY__<SECTION>__<FIELD>` (see [`load`]). Secrets never come from the file:
//! the JWT HMAC secret and the key-store master key come from `CLINIKO_GATEWAY_HMAC_SECRET` /
//! `CLINIKO_GATEWAY_MASTER_KEY` or from files named in the config.

mod compression;
mod deprecated;
mod load;
pub mod policy;
pub mod ratelimit;
pub mod redis;
pub mod retries;
mod secret;
pub mod shares;
pub use secret::Secret;
mod validate;
pub use compression::CompressionConfig;
pub use deprecated::Deprecated;
pub use policy::{GrantConfig, PolicyConfig};
pub use ratelimit::{Quota, RateLimitConfig, UserLimitConfig};
pub use redis::{RedisConfig, RedisFailure, RedisUrl};
pub use retries::RetryConfig;
pub use validate::{is_shard_name, is_shard_name_bytes, parse_alg, valid_user_agent};

pub use load::{
    ConfigError, ConfigSource, ENV_HMAC_SECRET, ENV_MASTER_KEY, ENV_POSTGRES_URL, ENV_PREFIX, Env,
    load, load_str, parse_master_key,
};

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

impl Config {
    /// Logs one warning per deprecated field read (at start-up and after each reload, so a
    /// renamed field is noticed whenever the file is read).
    pub fn warn_deprecated(&self) {
        for d in &self.deprecated {
            tracing::warn!(field = d.old, use_instead = d.new, "{d}");
        }
    }

    /// Every configured file that holds a secret, with the field naming it: the HMAC secret,
    /// the master key, the key store, the admin token and the inbound TLS private key.
    pub fn secret_files(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut out = Vec::new();
        if self.keystore.store == StoreKind::File {
            out.push(("keystore.path", self.keystore.path.as_path()));
        }
        let optional = [
            ("auth.hmac_secret_file", &self.auth.hmac_secret_file),
            ("keystore.master_key_file", &self.keystore.master_key_file),
            (
                "keystore.postgres_url_file",
                &self.keystore.postgres_url_file,
            ),
            ("admin.token_file", &self.admin.token_file),
            ("server.tls_key_file", &self.server.tls_key_file),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(f, p)| p.as_deref().map(|p| (f, p))),
        );
        out
    }
}

/// Everything the gateway needs to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Inbound listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// JWT verification.
    pub auth: AuthConfig,
    /// Where Cliniko keys are stored.
    pub keystore: KeyStoreConfig,
    /// Self-service key enrolment on the public port (off unless `enabled`).
    #[serde(default)]
    pub enrol: EnrolConfig,
    /// How Cliniko is reached.
    pub upstream: UpstreamConfig,
    /// The GET response cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Compressed answers to callers that ask for them.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// The admin listener (off unless `listen` is set).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Rate limits (per user, per Cliniko key, shared through Redis).
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    /// The Redis replicas share (key budgets, cache invalidations); off unless `url` is set.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Least privilege: which claims grant which methods on which paths (deny by default).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// OpenTelemetry trace export (off unless `otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// CORS for browser apps (off unless `allowed_origins` is set).
    #[serde(default)]
    pub cors: CorsConfig,
    /// The file this was read from (`None` for text loaded directly): what reloads re-read.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
    /// Deprecated fields that were read under their new names (warned about at start-up, on
    /// each reload and by `check-config`).
    #[serde(skip)]
    pub deprecated: Vec<Deprecated>,
}

/// OpenTelemetry: one server span per request, a client span per Cliniko call, exported over
/// OTLP/HTTP (protobuf). Setting `otlp_endpoint` is the one switch that turns it on.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:4318` (spans go to `<it>/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of traces kept (0..=1), decided by trace id (a caller's sampled flag is not trusted).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "cliniko-gateway".into(),
            sample_ratio: 1.0,
        }
    }
}

/// CORS: which web origins may call the gateway from a browser. Off while `allowed_origins`
/// is empty; then browsers keep other origins out, as they would without a gateway.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins, `scheme://host[:port]` as browsers send them
    /// (`https://app.example.com`); no wildcards, no path.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight allows.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight allows.
    pub allowed_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        CorsConfig {
            allowed_origins: vec![],
            allowed_methods: strings(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: strings(&[
                "authorization",
                "accept",
                "content-type",
                "if-none-match",
                "x-request-id",
            ]),
            max_age: Duration::from_secs(600),
        }
    }
}

/// The admin listener: separate address, own bearer token. Served by the same server code as
/// the public port, with the `[server]` timeouts and its own connection limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where admin routes listen (keep it on loopback or a private network); off when unset.
    pub listen: Option<SocketAddr>,
    /// Most open admin connections; beyond it the admin listener stops accepting.
    pub max_connections: usize,
    /// File holding the admin bearer token (else `CLINIKO_GATEWAY_ADMIN_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// Resolved at load. Never in the file.
    #[serde(skip)]
    pub token: Option<Secret<str>>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            // Scrapers and operators, not traffic: a small fixed pool is plenty.
            max_connections: 64,
            token_file: None,
            token: None,
        }
    }
}

/// The in-memory GET cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Master switch.
    pub enabled: bool,
    /// Memory the cache may hold: bodies as stored, headers, keys and bookkeeping, rounded as
    /// the allocator rounds them; 1/16 of it is kept for answers being read in.
    pub capacity_bytes: u64,
    /// Larger responses stream through uncached.
    pub max_entry_bytes: u64,
    /// Keep each answer as one gzip copy (sent as it is to callers that take gzip, decoded for
    /// the others): 4-5x more answers in the same bytes.
    pub compress: bool,
    /// How long past its TTL an entry with an ETag is kept for revalidation.
    #[serde(with = "humantime_serde")]
    pub revalidate_window: Duration,
    /// Which paths are cached and for how long; the longest matching prefix wins, TTL 0 = never.
    pub rules: Vec<CacheRule>,
}

/// One cache rule.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Path prefix, matched on whole segments (`/v1/patients` matches `/v1/patients/7`).
    pub prefix: String,
    /// Time to live; `0s` disables caching under this prefix.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let rule = |prefix: &str, secs: u64| CacheRule {
            prefix: prefix.into(),
            ttl: Duration::from_secs(secs),
        };
        CacheConfig {
            enabled: true,
            capacity_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            compress: true,
            revalidate_window: Duration::from_secs(600),
            rules: vec![
                // Reference data changes rarely: minutes.
                rule("/v1/practitioners", 300),
                rule("/v1/businesses", 300),
                rule("/v1/appointment_types", 300),
                rule("/v1/billable_items", 300),
                rule("/v1/services", 300),
                rule("/v1/settings", 300),
                // Patient and diary data changes all day: seconds.
                rule("/v1/patients", 10),
                rule("/v1/individual_appointments", 10),
                rule("/v1/appointments", 10),
            ],
        }
    }
}

/// Inbound listener settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Base URL callers use to reach the gateway; Cliniko links are rewritten onto it.
    pub public_base_url: Option<String>,
    /// PEM certificate chain for inbound TLS (with `tls_key_file`); plain HTTP when absent.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for inbound TLS.
    pub tls_key_file: Option<PathBuf>,
    /// Largest request head (request line + headers) in bytes.
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Time a client has to send a complete request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection whose caller takes none of a response (socket or HTTP/2 window full) for
    /// this long is closed, and the responses it held (Cliniko's included) are dropped.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Most concurrent HTTP/2 streams (requests) on one connection.
    pub max_streams_per_connection: u32,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, how long `/readyz` fails before the listener closes (lets load
    /// balancers stop sending first).
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Most open inbound connections; beyond it the gateway stops accepting until one closes.
    pub max_connections: usize,
    /// Proxies (CIDR, e.g. `10.0.0.0/8`; one host is `/32`) whose `X-Forwarded-For` is
    /// believed for the client address in the access log and the audit. Empty: the TCP peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            max_streams_per_connection: 100,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The public base URL (no trailing slash), defaulting to the address actually bound.
    pub fn public_base(&self, bound: SocketAddr) -> String {
        match &self.public_base_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls_cert_file.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{bound}")
            }
        }
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The claim that names the user (looked up in the key store).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Accepted `iss` values; when non-empty, `iss` is required.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when non-empty, `aud` is required.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms allowed with the HMAC secret (HS256/384/512).
    #[serde(default = "default_hmac_algs")]
    pub hmac_algorithms: Vec<String>,
    /// File holding the HMAC secret (else `CLINIKO_GATEWAY_HMAC_SECRET`).
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM public keys, each with its own algorithm allowlist.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWKS endpoint of the identity provider.
    pub jwks: Option<JwksConfig>,
    /// How many verified tokens to remember (until their `exp`).
    #[serde(default = "default_token_cache")]
    pub token_cache_size: u64,
    /// Also take the JWT from `Authorization: Basic base64(<JWT>:)`, the form clients written
    /// for Cliniko send (the JWT where they put the API key).
    #[serde(default = "default_true")]
    pub accept_basic: bool,
    /// Resolved at load: the HMAC secret, if any. Never in the file.
    #[serde(skip)]
    pub hmac_secret: Option<Secret<[u8]>>,
}

/// One PEM public key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// PEM file (RSA, EC or Ed25519 public key).
    pub file: PathBuf,
    /// Allowed algorithms for this key, e.g. `["RS256"]`.
    pub algorithms: Vec<String>,
    /// When set, only tokens with this `kid` use this key.
    pub kid: Option<String>,
}

/// A JWKS endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `https://` URL of the key set.
    pub url: String,
    /// Algorithms allowed with keys from this set (a key's own `alg`, if any, must also match).
    pub algorithms: Vec<String>,
    /// Background refresh period.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Fetches triggered by unknown `kid`s happen at most once per this interval.
    #[serde(default = "default_jwks_min_refetch", with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// How long an unknown `kid` is remembered as unknown.
    #[serde(default = "default_jwks_unknown_kid_ttl", with = "humantime_serde")]
    pub unknown_kid_ttl: Duration,
    /// Timeout of one fetch.
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Key-store settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreConfig {
    /// Where the sealed keys live: one file (one replica) or PostgreSQL (several).
    #[serde(default)]
    pub store: StoreKind,
    /// The encrypted key-store file (the file store; unused with PostgreSQL).
    #[serde(default)]
    pub path: PathBuf,
    /// File holding the master key (else `CLINIKO_GATEWAY_MASTER_KEY`).
    pub master_key_file: Option<PathBuf>,
    /// File holding the PostgreSQL URL (else `CLINIKO_GATEWAY_POSTGRES_URL`): it may carry a
    /// password, so it is a secret.
    pub postgres_url_file: Option<PathBuf>,
    /// How often the file (or the database's revision) is checked for changes; `0s` = off for
    /// the file, the default for a database store, which is always followed.
    #[serde(default = "default_keystore_watch", with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Resolved at load: the 32-byte master key. Never in the file.
    #[serde(skip)]
    pub master_key: Option<MasterKey>,
    /// Resolved at load (PostgreSQL store only): the database URL. Never in the file.
    #[serde(skip)]
    pub postgres_url: Option<Secret<str>>,
}

/// The key store's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One JSON file, written atomically by `keys` and by enrolment.
    #[default]
    File,
    /// One row of a PostgreSQL table that every replica reads and writes.
    Postgres,
}

/// Self-service enrolment: each person connects their own Cliniko key
/// (`/gateway/v1/me/cliniko-key`, page `/gateway/connect`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolConfig {
    /// Serve the enrolment API and page.
    pub enabled: bool,
    /// The grant (a value of one of `policy.claims`) that allows a caller to manage their own
    /// key; it needs no `[policy.grants]` entry and no paths.
    pub grant: String,
}

impl Default for EnrolConfig {
    fn default() -> Self {
        EnrolConfig {
            enabled: false,
            grant: "cliniko:connect".into(),
        }
    }
}

/// The key-store master key (AES-256-GCM), unprintable.
pub type MasterKey = Secret<[u8; 32]>;

/// How Cliniko is reached.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Sent as `User-Agent`; Cliniko requires `App name (contact email)`.
    pub user_agent: String,
    /// Base URL per shard; `{shard}` is replaced.
    #[serde(default = "default_url_template")]
    pub url_template: String,
    /// Per-shard base URLs that override the template (tests and the demo use loopback).
    #[serde(default)]
    pub shards: BTreeMap<String, String>,
    /// Extra PEM CA bundle trusted besides the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time until Cliniko's response headers arrive (504 beyond).
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest pause between body chunks from Cliniko before the response is cut off.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per shard.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Most requests one verified user may have in flight to Cliniko at once (sent, and the
    /// answer not yet fully delivered or dropped); beyond it, 429 `too_many_in_flight`.
    #[serde(default = "default_max_in_flight_per_user")]
    pub max_in_flight_per_user: usize,
    /// When a request goes to Cliniko again (reloadable, unlike the rest of `[upstream]`).
    #[serde(default)]
    pub retries: RetryConfig,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (text on a terminal, else JSON), `json` (one object per line) or `text`.
    pub format: LogFormat,
    /// Filter, e.g. `info` or `cliniko_gateway=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text when stdout is a terminal, JSON otherwise (a container, a pipe, a file).
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_hmac_algs() -> Vec<String> {
    vec!["HS256".into()]
}
fn default_true() -> bool {
    true
}
fn default_token_cache() -> u64 {
    10_000
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_unknown_kid_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}
/// `keystore.watch_interval`'s default, and the database store's poll when it is `0s`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

fn default_keystore_watch() -> Duration {
    DEFAULT_WATCH_INTERVAL
}
fn default_url_template() -> String {
    "https://api.{shard}.cliniko.com/v1".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    32
}
/// Well under the concurrent streams Cliniko allows on the shard's one HTTP/2 connection
/// (typically 100-128), so one caller cannot take them all; and above what an honest caller
/// reaches under the key budget (burst 10, then about 3 a second). See docs/security.md.
fn default_max_in_flight_per_user() -> usize {
    16
}
