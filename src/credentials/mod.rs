//! The encrypted key store: maps a verified user to the Cliniko API key the gateway sends for them.
//!
//! Place in the request path: after JWT verification has produced a user name, the credentials
//! step calls [`Credentials::lookup`] (lock-free) and puts the [`Credential`] (key, shard,
//! precomputed `Authorization: Basic` header) into the request; a user with no stored key is
//! refused (403 `no_credential`) before anything reaches Cliniko. At load it rejects a wrong master
//! key or a tampered entry ([`KeyStoreError::Decrypt`]), a document changed without the master
//! key ([`KeyStoreError::Tampered`]), an unsigned version-1 file ([`KeyStoreError::Unsigned`]),
//! malformed JSON ([`KeyStoreError::Format`]) and a key whose shard suffix could steer the
//! upstream host ([`KeyStoreError::BadShard`]).
//!
//! # File format (version 2)
//!
//! A JSON document, pretty-printed with sorted keys so it diffs well in version control:
//!
//! ```json
//! {
//!   "version": 2,
//!   "keys": {
//!     "3f9a0c1b2d4e": {
//!       "shard": "au1",
//!       "fingerprint": "sha256:0a1b2c3d4e5f6071",
//!       "cliniko_user": null,
//!       "sealed": "<base64 of nonce(12) || ciphertext || tag(16)>"
//!     }
//!   },
//!   "users": { "alice": "3f9a0c1b2d4e", "bob": "3f9a0c1b2d4e" },
//!   "mac": "hmac-sha256:<64 hex>"
//! }
//! ```
//!
//! - `keys` holds each distinct API key once; several `users` may point at the same key id.
//! - `sealed` is AES-256-GCM under the master key with a fresh random 96-bit nonce and the
//!   associated data `cliniko-gateway/v1/<key_id>`, so a blob copied under another id fails to
//!   decrypt.
//! - `mac` is HMAC-SHA256 over the document's canonical form (`file::Document::canonical`:
//!   compact JSON of `version`, `keys`, `users`, maps in byte order) under a key derived from
//!   the master key with HKDF-SHA256 (info `cliniko-gateway/v2/keystore-mac`). It binds the
//!   `users` map and the `cliniko_user` labels, which the sealed blobs do not: pointing bob at
//!   alice's key id needs the master key.
//! - A key id is the first 12 hex characters of HMAC-SHA256(master key,
//!   `cliniko-gateway/v1/key-id\0` + API key): adding the same key twice reuses its entry, and the
//!   id reveals nothing about the key without the master key.
//! - `shard` and `fingerprint` are for humans (`keys list`, diffs); at load they are recomputed
//!   from the decrypted key and a mismatch is a format error. `fingerprint` is
//!   `sha256:` + the first 16 hex characters of SHA-256(key), safe to log.
//! - `cliniko_user` optionally labels which Cliniko user owns the key (rate limits group by it).
//!
//! Version 1 is the same without `mac`. It is refused at start-up and reload until
//! [`reseal`] (`keys reseal`) has signed it; the other edits refuse it too, so nothing signs an
//! unreviewed file by the way.
//!
//! Edits ([`add_key`], [`remove_user`], [`reseal`]) check the master key against every
//! existing entry and the MAC first, then sign and replace the file atomically (temp file with
//! mode 0600 in the same directory, fsync, rename). A running gateway picks the change up on
//! [`Credentials::reload`] (SIGHUP or the file watch).

mod backend;
mod crypto;
mod edit;
mod file;
mod layer;
mod live;
mod new_key;
mod postgres;
mod store;
/// A keyed hash standing for one Cliniko API key (never the key itself): what the cache keys
/// its entries by, kept in the credential once worked out.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialId(pub [u8; 32]);

impl std::fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialId({})", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests;

pub use backend::Backend;
pub use crypto::{fingerprint, generate_master_key};
pub use edit::{ListedUser, Resealed, add_key, add_keys, list, remove_user, reseal};
pub use live::Credentials;
pub use new_key::{AddOutcome, NewKey, check_api_key};
pub use store::KeyStore;

use crate::upstream::Shard;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use std::{fmt, path::PathBuf, sync::Arc};

/// Longest accepted user name or `cliniko_user` label, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// A Cliniko API key: never printed (Debug is redacted, no Display).
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Wraps a key (no validation; [`add_key`] validates).
    pub fn new(key: String) -> ApiKey {
        ApiKey(SecretString::from(key))
    }

    /// The key itself: only for building the upstream `Authorization` header or sealing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// Everything needed to call Cliniko for one user; shared (`Arc`) by users of the same key.
pub struct Credential {
    /// The API key.
    pub key: ApiKey,
    /// The shard the key belongs to (from its suffix).
    pub shard: Shard,
    /// `sha256:` + 16 hex characters of SHA-256(key); safe to log.
    pub fingerprint: Arc<str>,
    /// The key's id in the store file; safe to log.
    pub key_id: Arc<str>,
    /// Which Cliniko user owns the key, if labelled.
    pub cliniko_user: Option<Arc<str>>,
    /// When Cliniko last accepted the key at enrolment (RFC 3339); `None` for keys ops added.
    pub verified_at: Option<Arc<str>>,
    /// A key being checked before it is stored ([`Credentials::candidate`]): Cliniko
    /// refusing it is an answer to the person enrolling, not a stored key to rotate.
    pub candidate: bool,
    auth_header: http::HeaderValue,
    budget: Arc<str>,
    /// The cache's keyed hash of `key`, once worked out ([`crate::cache::Cache::id_of`]).
    pub(crate) cache_id: std::sync::OnceLock<CredentialId>,
}

impl Credential {
    /// Builds a credential, deriving shard, fingerprint and the `Authorization` header once.
    pub fn new(
        key: ApiKey,
        key_id: impl Into<Arc<str>>,
        cliniko_user: Option<Arc<str>>,
    ) -> Result<Credential, crate::upstream::shard::BadShard> {
        let shard = Shard::from_key(key.expose())?;
        let fingerprint = crypto::fingerprint(key.expose()).into();
        let auth_header = basic_header(&key);
        let key_id: Arc<str> = key_id.into();
        // Labelled keys of one Cliniko user share a budget; Cliniko counts per user.
        let budget = match &cliniko_user {
            Some(user) => format!("user:{user}"),
            None => format!("key:{key_id}"),
        }
        .into();
        Ok(Credential {
            key,
            shard,
            fingerprint,
            key_id,
            cliniko_user,
            verified_at: None,
            candidate: false,
            auth_header,
            budget,
            cache_id: std::sync::OnceLock::new(),
        })
    }

    /// `Basic base64(key + ":")`, marked sensitive so HTTP/2 never indexes it.
    pub fn basic_auth_header(&self) -> http::HeaderValue {
        self.auth_header.clone()
    }

    /// The key budget this credential spends (`user:<cliniko user>` or `key:<key id>`).
    pub fn budget_id(&self) -> &Arc<str> {
        &self.budget
    }
}

fn basic_header(key: &ApiKey) -> http::HeaderValue {
    // The buffer holds the key in base64, so it is wiped once the header has copied it.
    let mut raw = secrecy::zeroize::Zeroizing::new(String::with_capacity(key.expose().len() + 1));
    raw.push_str(key.expose());
    raw.push(':');
    let mut encoded = secrecy::zeroize::Zeroizing::new(String::from("Basic "));
    base64::engine::general_purpose::STANDARD.encode_string(raw.as_bytes(), &mut encoded);
    // Base64 output is always a valid header value; the fallback only satisfies the types.
    let mut value = http::HeaderValue::from_str(&encoded)
        .unwrap_or_else(|_| http::HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("key", &self.key)
            .field("shard", &self.shard)
            .field("fingerprint", &self.fingerprint)
            .field("key_id", &self.key_id)
            .field("cliniko_user", &self.cliniko_user)
            .finish_non_exhaustive()
    }
}

/// Why the key store could not be read, decrypted or changed. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store file does not exist.
    #[error(
        "the key store {} does not exist; create it with `cliniko-gateway keys add`",
        path.display()
    )]
    NotFound {
        /// The configured path.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("could not {op} the key store {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `read`.
        op: &'static str,
        /// The file (or temp file) involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid version-1 key store.
    #[error("the key store {} is not valid: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (position and category, never file content).
        problem: String,
    },
    /// A sealed key failed authentication.
    #[error(
        "the master key does not decrypt key {key_id}: wrong CLINIKO_GATEWAY_MASTER_KEY or a corrupted file"
    )]
    Decrypt {
        /// The entry that failed.
        key_id: String,
    },
    /// The file is version 1, written before the whole-document MAC existed.
    #[error(
        "the key store {} has no integrity MAC (version 1, written by an older gateway), so nothing proves it was not edited: check its users against your records, then sign it once with `cliniko-gateway keys reseal --accept-edits --config <gateway.toml>`",
        path.display()
    )]
    Unsigned {
        /// The file.
        path: PathBuf,
    },
    /// The whole-document MAC does not match: the file changed without the master key.
    #[error(
        "the key store {} fails its integrity check: it was changed without the master key (or this is not the master key that wrote it); restore the last good file, or, if the edit is yours, review it and sign it with `cliniko-gateway keys reseal --accept-edits`",
        path.display()
    )]
    Tampered {
        /// The file.
        path: PathBuf,
    },
    /// A stored key's shard suffix is not a shard name.
    #[error("key {key_id}: the API key's shard suffix is not a valid shard name")]
    BadShard {
        /// The entry that failed.
        key_id: String,
    },
    /// A key offered to `keys add` is unusable.
    #[error("invalid API key: {0}")]
    InvalidApiKey(&'static str),
    /// A user name (or `cliniko_user` label) is unusable.
    #[error("invalid {what}: {problem}")]
    InvalidName {
        /// `user name` or `cliniko_user label`.
        what: &'static str,
        /// Why.
        problem: &'static str,
    },
    /// Enrolment offered a key that another user already holds (whose is never said).
    #[error("this Cliniko API key is already connected for another person")]
    KeyInUse,
    /// `keys migrate` into a store that already holds users.
    #[error(
        "the key store {} already holds users; `keys migrate` only copies into an empty store",
        path.display()
    )]
    NotEmpty {
        /// The store.
        path: PathBuf,
    },
    /// The PostgreSQL store could not be reached or answered with an error.
    #[error("the key-store database: could not {op}: {problem}")]
    Database {
        /// What was being done, e.g. `connect`.
        op: &'static str,
        /// The driver's message (it never carries the URL or a stored value).
        problem: String,
    },
    /// No master key was configured.
    #[error(
        "no key-store master key: set CLINIKO_GATEWAY_MASTER_KEY or keystore.master_key_file (generate one with `cliniko-gateway keys gen-master-key`)"
    )]
    NoMasterKey,
    /// The system random generator or the cipher failed.
    #[error("cryptography failure: {0}")]
    Crypto(&'static str),
}

/// Checks a user name: non-empty, at most [`MAX_USER_BYTES`], no control characters.
pub fn validate_user(user: &str) -> Result<(), KeyStoreError> {
    validate_name("user name", user)
}

fn validate_name(what: &'static str, s: &str) -> Result<(), KeyStoreError> {
    let problem = if s.is_empty() {
        "it is empty"
    } else if s.len() > MAX_USER_BYTES {
        "it is longer than 256 bytes"
    } else if s.chars().any(char::is_control) {
        "it contains control characters"
    } else if s.trim() != s {
        "it starts or ends with whitespace"
    } else {
        return Ok(());
    };
    Err(KeyStoreError::InvalidName { what, problem })
}

/// Runs blocking work (file I/O, decryption) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyStoreError> + Send + 'static,
) -> Result<T, KeyStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KeyStoreError::Crypto("a key-store task failed")))
}
