//! One `Config`, parsed and validated once at start-up, then passed down read-only.
//!
//! Sources, later wins: the TOML file, then environment variables named
//! `CLINIKO_GATEWAY__<SECTION>__<FIELD>` (see [`load`]). Secrets never come from the file:
//! the JWT HMAC secret and the key-store master key come from `CLINIKO_GATEWAY_HMAC_SECRET` /
//! `CLINIKO_GATEWAY_MASTER_KEY` or from files named in the config.

mod auth;
mod compression;
mod cors;
mod deprecated;
mod keystore;
mod load;
mod log;
pub mod policy;
pub mod ratelimit;
pub mod redis;
pub mod retries;
mod secret;
mod server;
pub mod shares;
mod telemetry;
pub use secret::Secret;
mod validate;
pub use auth::{AuthConfig, JwksConfig, PublicKeyConfig};
pub use compression::CompressionConfig;
pub use cors::CorsConfig;
pub use deprecated::Deprecated;
pub use keystore::{DEFAULT_WATCH_INTERVAL, EnrolConfig, KeyStoreConfig, MasterKey, StoreKind};
pub use log::{LogConfig, LogFormat};
pub use policy::{GrantConfig, PolicyConfig};
pub use ratelimit::{Quota, RateLimitConfig, UserLimitConfig};
pub use redis::{RedisConfig, RedisFailure, RedisUrl};
pub use retries::RetryConfig;
pub use server::{AdminConfig, ServerConfig};
pub use telemetry::TelemetryConfig;
use validate::{check_https_url, err, non_zero};
pub use validate::{is_plain, is_shard_name, is_shard_name_bytes, valid_user_agent};

pub use load::{
    ConfigError, ConfigSource, ENV_HMAC_SECRET, ENV_MASTER_KEY, ENV_POSTGRES_URL, ENV_PREFIX, Env,
    load, load_str, parse_master_key,
};

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

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

/// Every section's rules; each error names the field and the fix.
fn check(c: &Config) -> Result<(), ConfigError> {
    policy::validate(&c.policy)?;
    keystore::validate(&c.keystore, &c.enrol)?;
    telemetry::validate(&c.telemetry)?;
    cors::validate(&c.cors)?;
    server::validate(&c.server, &c.admin)?;
    auth::validate(&c.auth)?;
    validate_cache(&c.cache)?;
    compression::validate(&c.compression)?;
    ratelimit::validate(&c.ratelimit)?;
    redis::validate(&c.redis)?;
    retries::validate(&c.upstream.retries)?;
    non_zero(&[
        ("upstream.connect_timeout", c.upstream.connect_timeout),
        ("upstream.timeout", c.upstream.timeout),
    ])?;
    validate_upstream(&c.upstream)
}

fn validate_cache(k: &CacheConfig) -> Result<(), ConfigError> {
    // A fill holds the answer while reading it, out of the 1/16 of the capacity kept for that.
    if k.enabled && (k.max_entry_bytes == 0 || k.max_entry_bytes > k.capacity_bytes / 16) {
        return Err(err(
            "cache.max_entry_bytes",
            "must be between 1 and cache.capacity_bytes / 16",
            "use e.g. 1048576 (1 MiB) with a capacity of 268435456 (256 MiB)",
        ));
    }
    if k.max_entry_bytes > u64::from(u32::MAX) {
        return Err(err(
            "cache.max_entry_bytes",
            "too large",
            "keep entries under 4 GiB (1 MiB is typical)",
        ));
    }
    for (i, r) in k.rules.iter().enumerate() {
        if !(r.prefix == "/v1" || r.prefix.starts_with("/v1/"))
            || r.prefix.ends_with('/')
            || r.prefix.contains('?')
        {
            return Err(err(
                &format!("cache.rules[{i}].prefix"),
                "must be a /v1/... path without a trailing slash or query",
                "write it like \"/v1/practitioners\"",
            ));
        }
    }
    Ok(())
}

fn validate_upstream(u: &UpstreamConfig) -> Result<(), ConfigError> {
    if !valid_user_agent(&u.user_agent) {
        return Err(err(
            "upstream.user_agent",
            "Cliniko requires `App name (contact email)`",
            "write it like \"Acme Clinic Gateway (it@acme.example)\"",
        ));
    }
    if !u.url_template.contains("{shard}") {
        return Err(err(
            "upstream.url_template",
            "has no {shard} placeholder",
            "use https://api.{shard}.cliniko.com/v1",
        ));
    }
    if !(1..=1000).contains(&u.max_in_flight_per_user) {
        return Err(err(
            "upstream.max_in_flight_per_user",
            "out of range",
            "use 1 to 1000, well below Cliniko's concurrent streams per connection (default 16)",
        ));
    }
    check_https_url(
        "upstream.url_template",
        &u.url_template.replace("{shard}", "au1"),
    )?;
    for (shard, url) in &u.shards {
        let f = format!("upstream.shards.{shard}");
        if !is_shard_name(shard) {
            return Err(err(
                &f,
                "not a shard name",
                "shard names look like au1, uk2, ca1",
            ));
        }
        check_https_url(&f, url)?;
    }
    Ok(())
}
