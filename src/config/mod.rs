//! One `Config`, parsed and validated once at start-up, then passed down read-only.
//!
//! Sources, later wins: the TOML file, then environment variables named
//! `CLINIKO_GATEWAY__<SECTION>__<FIELD>` (see [`load`]). Secrets never come from the file:
//! the JWT HMAC secret and the key-store master key come from `CLINIKO_GATEWAY_HMAC_SECRET` /
//! `CLINIKO_GATEWAY_MASTER_KEY` or from files named in the config.

/// A section whose every field has a default, written after the field's type
/// (`pub name: Type = default,`): declares the struct and its `Default` from one list, so a
/// field and its default cannot drift apart.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr,)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }
    };
}

mod auth;
mod cache;
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
mod upstream;
pub use secret::Secret;
mod validate;
pub use auth::{AuthConfig, JwksConfig, PublicKeyConfig};
pub use cache::{CacheConfig, CacheRule};
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
pub use upstream::UpstreamConfig;
pub use validate::{is_plain, is_shard_name, is_shard_name_bytes, valid_user_agent};

pub use load::{
    ConfigError, ConfigSource, ENV_HMAC_SECRET, ENV_MASTER_KEY, ENV_POSTGRES_URL, ENV_PREFIX, Env,
    load, load_str, parse_master_key,
};

use serde::{Deserialize, Serialize};

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
        let store = (self.keystore.store == StoreKind::File).then_some(&self.keystore.path);
        [
            ("keystore.path", store),
            ("auth.hmac_secret_file", self.auth.hmac_secret_file.as_ref()),
            (
                "keystore.master_key_file",
                self.keystore.master_key_file.as_ref(),
            ),
            (
                "keystore.postgres_url_file",
                self.keystore.postgres_url_file.as_ref(),
            ),
            ("admin.token_file", self.admin.token_file.as_ref()),
            ("server.tls_key_file", self.server.tls_key_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, path)| Some((field, path?.as_path())))
        .collect()
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

/// Every section's rules; each error names the field and the fix.
fn check(c: &Config) -> Result<(), ConfigError> {
    policy::validate(&c.policy)?;
    keystore::validate(&c.keystore, &c.enrol)?;
    telemetry::validate(&c.telemetry)?;
    cors::validate(&c.cors)?;
    server::validate(&c.server, &c.admin)?;
    auth::validate(&c.auth)?;
    cache::validate(&c.cache)?;
    compression::validate(&c.compression)?;
    ratelimit::validate(&c.ratelimit)?;
    redis::validate(&c.redis)?;
    upstream::validate(&c.upstream)
}
