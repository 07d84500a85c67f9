//! The `[keystore]` section (where Cliniko keys are kept) and `[enrol]` (people adding their
//! own), with their validation.

use super::validate::refuse_if;
use super::{ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

settings! {
    /// Key-store settings.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct KeyStoreConfig {
        /// Where the sealed keys live: one file (one replica) or PostgreSQL (several).
        pub store: StoreKind = StoreKind::File,
        /// The encrypted key-store file (the file store; unused with PostgreSQL).
        pub path: PathBuf = PathBuf::new(),
        /// File holding the master key (else `CLINIKO_GATEWAY_MASTER_KEY`).
        pub master_key_file: Option<PathBuf> = None,
        /// File holding the PostgreSQL URL (else `CLINIKO_GATEWAY_POSTGRES_URL`): it may carry
        /// a password, so it is a secret.
        pub postgres_url_file: Option<PathBuf> = None,
        /// How often the file (or the database's revision) is checked for changes; `0s` = off
        /// for the file, the default for a database store, which is always followed.
        #[serde(with = "humantime_serde")]
        pub watch_interval: Duration = DEFAULT_WATCH_INTERVAL,
        /// Resolved at load: the 32-byte master key. Never in the file.
        #[serde(skip)]
        pub master_key: Option<MasterKey> = None,
        /// Resolved at load (PostgreSQL store only): the database URL. Never in the file.
        #[serde(skip)]
        pub postgres_url: Option<Secret<str>> = None,
    }
}

/// The key store's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One JSON file, written atomically by `keys` and by enrolment.
    File,
    /// One row of a PostgreSQL table that every replica reads and writes.
    Postgres,
}

/// The key-store master key (AES-256-GCM), unprintable.
pub type MasterKey = Secret<[u8; 32]>;

/// `keystore.watch_interval`'s default, and the database store's poll when it is `0s`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

settings! {
    /// Self-service enrolment: each person connects their own Cliniko key
    /// (`/gateway/v1/me/cliniko-key`, page `/gateway/connect`).
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct EnrolConfig {
        /// Serve the enrolment API and page.
        pub enabled: bool = false,
        /// The grant (a value of one of `policy.claims`) that allows a caller to manage their
        /// own key; it needs no `[policy.grants]` entry and no paths.
        pub grant: String = "cliniko:connect".into(),
    }
}

/// The file store needs its file; enrolment needs a grant to look for.
pub(super) fn validate(k: &KeyStoreConfig, enrol: &EnrolConfig) -> Result<(), ConfigError> {
    refuse_if(
        k.store == StoreKind::File && k.path.as_os_str().is_empty(),
        "keystore.path",
        "the file store (keystore.store = \"file\", the default) needs its file",
        "set keystore.path, e.g. \"keys.json\", or keystore.store = \"postgres\"",
    )?;
    let g = &enrol.grant;
    refuse_if(
        enrol.enabled && (g.is_empty() || g.chars().any(char::is_whitespace)),
        "enrol.grant",
        "is not a usable grant name (non-empty, no spaces)",
        "use the scope or role value tokens carry, e.g. \"cliniko:connect\"",
    )
}
