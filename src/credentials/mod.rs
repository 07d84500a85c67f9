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
//! [`Backend::reseal`] (`keys reseal`) has signed it; the other edits refuse it too, so nothing signs an
//! unreviewed file by the way.
//!
//! Edits ([`Backend::add`], [`Backend::remove`], [`Backend::reseal`]) check the master key against every
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

pub use backend::Backend;
pub use crypto::{fingerprint, generate_master_key};
pub use edit::Resealed;
pub use live::Credentials;
pub use new_key::{AddOutcome, NewKey, check_api_key, key_shaped};
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
    /// Wraps a key (no validation; [`NewKey::check`] validates).
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
/// Its `Debug` is written by hand and lists only what is safe to log: a field added later is
/// not printed until someone decides it may be.
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
    /// `Basic base64(key + ":")`, marked sensitive so HTTP/2 never indexes it.
    pub auth_header: http::HeaderValue,
    /// The key budget this credential spends (`user:<cliniko user>` or `key:<key id>`).
    pub budget: Arc<str>,
    /// The cache's keyed hash of `key`, once worked out ([`crate::cache::Cache::id_of`]).
    pub(crate) cache_id: std::sync::OnceLock<CredentialId>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("shard", &self.shard)
            .field("fingerprint", &self.fingerprint)
            .field("key_id", &self.key_id)
            .field("cliniko_user", &self.cliniko_user)
            .finish_non_exhaustive()
    }
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

/// Checks a user name or label (`what`): non-empty, at most [`MAX_USER_BYTES`], no control
/// characters, no whitespace at either end.
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

#[cfg(test)]
mod tests {
    // Store-level tests: file round trips, sharing, tampering, reload and redaction.

    use super::*;
    use crate::config::{KeyStoreConfig, MasterKey};
    use std::{
        fs,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
    };

    /// A directory under the system temp dir, removed on drop (avoids a tempfile dependency).
    pub(super) struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let mut r = [0u8; 4];
            crypto::random(&mut r).unwrap();
            let p = std::env::temp_dir().join(format!(
                "cg-creds-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                hex::encode(r)
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const KEY_A: &str = "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZmdoaWprbG1ub3A-uk2";
    const KEY_B: &str = "MS0yMjIyMjIyMjIyMjIyMjIyMjItenl4d3Z1dHNycXBvbm1sa2o-au1";

    fn master(b: u8) -> MasterKey {
        crate::config::Secret::new(Box::new([b; 32]))
    }

    fn key(s: &str) -> ApiKey {
        ApiKey::new(s.to_string())
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn setup() -> (TempDir, PathBuf, MasterKey) {
        let dir = TempDir::new();
        let path = dir.path().join("keys.json");
        (dir, path, master(1))
    }

    fn json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn add_then_load_round_trip() {
        let (_d, path, m) = setup();
        assert!(!path.exists());
        let out = add_key(&path, &m, "alice", &key(KEY_A), Some("dr-smith")).unwrap();
        assert!(
            path.exists() && !out.reused_key,
            "the first add creates the file"
        );
        assert_eq!(out.shard.as_str(), "uk2");
        let store = load(&path, &m).unwrap();
        assert_eq!(store.len(), 1);
        let c = store.get("alice").unwrap();
        assert_eq!(c.key.expose(), KEY_A);
        assert_eq!(c.shard.as_str(), "uk2");
        assert_eq!(&*c.key_id, out.key_id);
        assert_eq!(&*c.fingerprint, out.fingerprint);
        assert!(c.fingerprint.starts_with("sha256:") && c.fingerprint.len() == 7 + 16);
        assert_eq!(c.cliniko_user.as_deref(), Some("dr-smith"));
        assert!(store.get("bob").is_none());
        let v = json(&path);
        assert_eq!(v["version"], 2);
        assert!(v["mac"].as_str().unwrap().starts_with("hmac-sha256:"));
        assert_eq!(v["users"]["alice"], out.key_id.as_str());
        assert_eq!(v["keys"][&out.key_id]["shard"], "uk2");
    }

    #[test]
    fn two_users_share_one_key_entry() {
        let (_d, path, m) = setup();
        let a = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let b = add_key(&path, &m, "bob", &key(KEY_A), None).unwrap();
        assert!(b.reused_key);
        assert_eq!(a.key_id, b.key_id);
        assert_eq!(json(&path)["keys"].as_object().unwrap().len(), 1);
        let store = load(&path, &m).unwrap();
        assert_eq!((store.len(), store.keys().count()), (2, 1));
        let (ca, cb) = (store.get("alice").unwrap(), store.get("bob").unwrap());
        assert!(Arc::ptr_eq(&ca, &cb), "shared keys share one Credential");
    }

    #[test]
    fn wrong_master_key_is_a_decrypt_error_naming_the_key() {
        let (_d, path, m) = setup();
        let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let err = load(&path, &master(2)).unwrap_err();
        assert!(matches!(&err, KeyStoreError::Decrypt { key_id } if *key_id == out.key_id));
        let msg = err.to_string();
        assert!(
            msg.contains(&out.key_id) && msg.contains("CLINIKO_GATEWAY_MASTER_KEY"),
            "{msg}"
        );
        // Editing with the wrong master key must not mix master keys in one file.
        assert!(matches!(
            add_key(&path, &master(2), "bob", &key(KEY_B), None),
            Err(KeyStoreError::Decrypt { .. })
        ));
        assert!(matches!(
            remove_user(&path, &master(2), "alice"),
            Err(KeyStoreError::Decrypt { .. })
        ));
    }

    #[test]
    fn tampered_sealed_blob_is_a_decrypt_error() {
        let (_d, path, m) = setup();
        let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let mut v = json(&path);
        let sealed = v["keys"][&out.key_id]["sealed"]
            .as_str()
            .unwrap()
            .to_string();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        raw[14] ^= 0x40; // a ciphertext byte
        v["keys"][&out.key_id]["sealed"] =
            base64::engine::general_purpose::STANDARD.encode(raw).into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(
            load(&path, &m),
            Err(KeyStoreError::Decrypt { key_id }) if key_id == out.key_id
        ));
    }

    #[test]
    fn sealed_blob_moved_to_another_id_fails() {
        let (_d, path, m) = setup();
        let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let mut v = json(&path);
        let entry = v["keys"][&out.key_id].take();
        v["keys"] = serde_json::json!({ "aaaaaaaaaaaa": entry });
        v["users"]["alice"] = "aaaaaaaaaaaa".into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(
            load(&path, &m),
            Err(KeyStoreError::Decrypt { key_id }) if key_id == "aaaaaaaaaaaa"
        ));
    }

    #[test]
    fn add_refuses_bad_keys_and_user_names() {
        let (_d, path, m) = setup();
        for bad in ["abc-evil.com", "abc-", "", "abc def-au1", "abc-au1\n"] {
            assert!(
                matches!(
                    add_key(&path, &m, "alice", &key(bad), None),
                    Err(KeyStoreError::InvalidApiKey(_))
                ),
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_USER_BYTES + 1);
        for bad in ["", "a\u{7}b", " alice", long.as_str()] {
            assert!(
                matches!(
                    add_key(&path, &m, bad, &key(KEY_A), None),
                    Err(KeyStoreError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(!path.exists(), "nothing written after refusals");
        let err = add_key(&path, &m, "alice", &key("secretvalue-evil.com"), None).unwrap_err();
        assert!(!err.to_string().contains("secretvalue"));
        add_key(&path, &m, "Alice Smith <a@b.c>", &key(KEY_A), None).unwrap();
    }

    #[test]
    fn stored_bad_shard_fails_the_load_naming_the_key_id() {
        let (_d, path, m) = setup();
        // A hand-made entry whose key has an invalid suffix: only the id may be named.
        let bad = key("topsecret-evil.com");
        let sealed = crypto::seal(&[1; 32], "k1", &bad).unwrap();
        let doc = serde_json::json!({ "version": 1,
            "keys": { "k1": { "shard": "evil.com", "fingerprint": "x", "cliniko_user": null, "sealed": sealed } },
            "users": { "alice": "k1" } });
        fs::write(&path, doc.to_string()).unwrap();
        let err = load(&path, &m).unwrap_err();
        assert!(matches!(&err, KeyStoreError::BadShard { key_id } if key_id == "k1"));
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn changing_a_user_key_drops_the_old_one_and_remove_drops_unreferenced() {
        let (_d, path, m) = setup();
        let a = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let b = add_key(&path, &m, "alice", &key(KEY_B), None).unwrap();
        assert_ne!(a.key_id, b.key_id);
        let v = json(&path);
        assert_eq!(v["users"]["alice"], b.key_id.as_str());
        let kept: Vec<_> = v["keys"].as_object().unwrap().keys().collect();
        assert_eq!(kept, [&b.key_id], "alice's old key, now unused, is dropped");
        add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
        add_key(&path, &m, "carol", &key(KEY_A), None).unwrap();
        assert!(remove_user(&path, &m, "alice").unwrap());
        assert_eq!(
            json(&path)["keys"].as_object().unwrap().len(),
            2,
            "bob still uses B"
        );
        assert!(remove_user(&path, &m, "carol").unwrap());
        let v = json(&path);
        assert_eq!(v["keys"].as_object().unwrap().len(), 1);
        assert!(v["keys"].get(&a.key_id).is_none());
        assert!(!remove_user(&path, &m, "nobody").unwrap());
        let store = load(&path, &m).unwrap();
        let rows = store.sorted();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, &*rows[0].1.key_id), ("bob", b.key_id.as_str()));
        assert_eq!(rows[0].1.shard.as_str(), "au1");
    }

    #[test]
    fn list_is_sorted_and_relabel_applies() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "zed", &key(KEY_A), None).unwrap();
        add_key(&path, &m, "amy", &key(KEY_A), Some("owner")).unwrap();
        let store = load(&path, &m).unwrap();
        let rows = store.sorted();
        let names: Vec<_> = rows.iter().map(|r| r.0).collect();
        assert_eq!(names, ["amy", "zed"]);
        assert!(
            rows.iter()
                .all(|r| r.1.cliniko_user.as_deref() == Some("owner"))
        );
    }

    fn config(path: &Path, m: &MasterKey) -> KeyStoreConfig {
        KeyStoreConfig {
            store: crate::config::StoreKind::File,
            path: path.to_path_buf(),
            master_key_file: None,
            postgres_url_file: None,
            watch_interval: std::time::Duration::ZERO,
            master_key: Some(m.clone()),
            postgres_url: None,
        }
    }

    /// Runs a key-store future to completion (these tests are synchronous).
    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn open(cfg: &KeyStoreConfig) -> Result<Credentials, KeyStoreError> {
        run(Credentials::open(cfg, false))
    }

    fn reload(creds: &Credentials) -> Result<usize, KeyStoreError> {
        run(creds.reload())
    }

    fn reseal(path: &Path, m: &MasterKey, accept_edits: bool) -> Result<Resealed, KeyStoreError> {
        run(Backend::file(path.to_path_buf(), m.clone()).reseal(accept_edits))
    }

    /// `keys add` on the file store at `path`.
    fn add_key(
        path: &Path,
        m: &MasterKey,
        user: &str,
        key: &ApiKey,
        cliniko_user: Option<&str>,
    ) -> Result<AddOutcome, KeyStoreError> {
        let new = NewKey::new(user, key.clone(), cliniko_user);
        run(Backend::file(path.to_path_buf(), m.clone()).add(new))
    }

    /// `keys remove` on the file store at `path`.
    fn remove_user(path: &Path, m: &MasterKey, user: &str) -> Result<bool, KeyStoreError> {
        run(Backend::file(path.to_path_buf(), m.clone()).remove(user))
    }

    /// The file store at `path`, loaded as a gateway loads it (a missing file is an error).
    fn load(path: &Path, m: &MasterKey) -> Result<KeyStore, KeyStoreError> {
        run(Backend::file(path.to_path_buf(), m.clone()).load(false)).map(|(store, _)| store)
    }

    #[test]
    fn missing_file_and_missing_master_key_are_clear_errors() {
        let (_d, path, m) = setup();
        let err = open(&config(&path, &m)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KeyStoreError::NotFound { .. }));
        assert!(
            msg.contains("keys.json") && msg.contains("cliniko-gateway keys add"),
            "{msg}"
        );
        assert!(
            run(Backend::file(path.to_path_buf(), m.clone()).load(true))
                .unwrap()
                .0
                .is_empty()
        );
        let mut cfg = config(&path, &m);
        cfg.master_key = None;
        assert!(matches!(open(&cfg), Err(KeyStoreError::NoMasterKey)));
    }

    #[test]
    fn reload_keeps_old_store_on_error_and_picks_up_valid_changes() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let creds = open(&config(&path, &m)).unwrap();
        assert_eq!(creds.lookup("alice").unwrap().key.expose(), KEY_A);
        let good = fs::read(&path).unwrap();

        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(reload(&creds), Err(KeyStoreError::Format { .. })));
        assert_eq!(creds.lookup("alice").unwrap().key.expose(), KEY_A);
        assert_eq!(creds.current().len(), 1);

        fs::write(&path, good).unwrap();
        add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
        assert!(creds.lookup("bob").is_none(), "not visible before reload");
        assert_eq!(reload(&creds).unwrap(), 2);
        assert_eq!(creds.lookup("bob").unwrap().key.expose(), KEY_B);
    }

    #[test]
    fn hand_edited_fingerprint_or_dangling_user_is_a_format_error() {
        let (_d, path, m) = setup();
        let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let original = json(&path);
        let mut v = original.clone();
        v["keys"][&out.key_id]["fingerprint"] = "sha256:0000000000000000".into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(load(&path, &m), Err(KeyStoreError::Format { .. })));
        let mut v = original;
        v["users"]["bob"] = "nokey".into();
        fs::write(&path, v.to_string()).unwrap();
        let err = load(&path, &m).unwrap_err();
        assert!(err.to_string().contains("\"nokey\""), "{err}");
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let creds = open(&config(&path, &m)).unwrap();
        let c = creds.lookup("alice").unwrap();
        let enc = b64(&format!("{KEY_A}:"));
        let secret_prefix = &KEY_A[..20];
        for s in [
            format!("{c:?}"),
            format!("{:?}", c.key),
            format!("{:?}", creds.current()),
            format!("{creds:?}"),
            format!("{:?}", c.auth_header),
            format!("{:?}", load(&path, &m).unwrap().sorted()),
        ] {
            assert!(!s.contains(secret_prefix) && !s.contains(&enc[..20]), "{s}");
        }
        assert_eq!(format!("{:?}", c.key), "ApiKey([REDACTED])");
        assert!(format!("{c:?}").contains(&*c.fingerprint));
    }

    #[test]
    fn basic_auth_header_is_base64_of_key_colon_and_sensitive() {
        let c = Credential::new(key(KEY_A), "id", None).unwrap();
        let h = c.auth_header.clone();
        assert!(h.is_sensitive());
        assert_eq!(
            h.to_str().unwrap(),
            format!("Basic {}", b64(&format!("{KEY_A}:")))
        );
        assert!(Credential::new(key("x-evil.com"), "id", None).is_err());
    }

    #[test]
    fn file_on_disk_holds_neither_the_key_nor_its_base64() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        for k in [KEY_A, KEY_B] {
            let body = &k[..k.len() - 4]; // the shard suffix alone is public
            assert!(!text.contains(body));
            assert!(!text.contains(&b64(k)[..20]));
            assert!(!text.contains(&b64(&format!("{k}:"))[..20]));
        }
    }

    /// Writes `v` back as the attacker would: pretty JSON, MAC untouched.
    fn write_json(path: &Path, v: &serde_json::Value) {
        fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    #[test]
    fn editing_users_or_labels_without_the_master_key_is_refused() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
        let original = json(&path);
        let alice_id = original["users"]["alice"].clone();
        type Edit = fn(&mut serde_json::Value, &serde_json::Value);
        let edits: [(&str, Edit); 5] = [
            ("bob -> alice's key", |v, a| v["users"]["bob"] = a.clone()),
            ("new user on alice's key", |v, a| {
                v["users"]["mallory"] = a.clone()
            }),
            ("user removed", |v, _| {
                v["users"].as_object_mut().unwrap().remove("bob");
            }),
            ("label set", |v, a| {
                v["keys"][a.as_str().unwrap()]["cliniko_user"] = "owner".into()
            }),
            ("mac removed", |v, _| {
                v.as_object_mut().unwrap().remove("mac");
            }),
        ];
        for (name, edit) in edits {
            let mut v = original.clone();
            edit(&mut v, &alice_id);
            write_json(&path, &v);
            let err = load(&path, &m).unwrap_err();
            assert!(
                matches!(err, KeyStoreError::Tampered { .. }),
                "{name}: {err}"
            );
            assert!(
                err.to_string().contains("keys reseal --accept-edits"),
                "{err}"
            );
            // Edits through the CLI refuse to launder it too.
            assert!(matches!(
                add_key(&path, &m, "carol", &key(KEY_A), None),
                Err(KeyStoreError::Tampered { .. })
            ));
            assert!(matches!(
                remove_user(&path, &m, "alice"),
                Err(KeyStoreError::Tampered { .. })
            ));
        }
        // Layout is not content: re-indented, keys reordered, the MAC still holds.
        let mut compact = original.to_string();
        compact.push_str("\n\n");
        fs::write(&path, compact).unwrap();
        assert_eq!(load(&path, &m).unwrap().len(), 2);
    }

    #[test]
    fn a_version_1_file_is_refused_until_resealed() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let mut v = json(&path);
        v["version"] = 1.into();
        v.as_object_mut().unwrap().remove("mac");
        write_json(&path, &v);
        let err = load(&path, &m).unwrap_err();
        assert!(matches!(err, KeyStoreError::Unsigned { .. }), "{err}");
        assert!(err.to_string().contains("keys reseal"), "{err}");
        assert!(matches!(
            add_key(&path, &m, "bob", &key(KEY_B), None),
            Err(KeyStoreError::Unsigned { .. })
        ));
        // The wrong master key cannot sign it.
        assert!(matches!(
            reseal(&path, &master(2), false),
            Err(KeyStoreError::Decrypt { .. })
        ));
        // Unsigned is not proof of unedited: signing it takes the same explicit word as an edit.
        assert!(matches!(
            reseal(&path, &m, false),
            Err(KeyStoreError::Unsigned { .. })
        ));
        assert_eq!(reseal(&path, &m, true).unwrap(), Resealed::Migrated);
        let after = json(&path);
        assert_eq!(after["version"], 2);
        assert_eq!(after["users"], v["users"]);
        assert_eq!(load(&path, &m).unwrap().len(), 1);
        assert_eq!(reseal(&path, &m, false).unwrap(), Resealed::AlreadySigned);
    }

    #[test]
    fn reseal_accepts_an_edit_only_when_asked() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        let mut v = json(&path);
        v["users"]["bob"] = v["users"]["alice"].clone();
        write_json(&path, &v);
        assert!(matches!(
            reseal(&path, &m, false),
            Err(KeyStoreError::Tampered { .. })
        ));
        assert!(load(&path, &m).is_err(), "a refusal writes nothing");
        assert_eq!(reseal(&path, &m, true).unwrap(), Resealed::AcceptedEdits);
        let store = load(&path, &m).unwrap();
        assert_eq!(store.get("bob").unwrap().key.expose(), KEY_A);
    }

    #[test]
    fn reload_refuses_a_tampered_store_and_keeps_the_old_one() {
        let (_d, path, m) = setup();
        add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
        add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
        let creds = open(&config(&path, &m)).unwrap();
        let mut v = json(&path);
        v["users"]["bob"] = v["users"]["alice"].clone();
        write_json(&path, &v);
        assert!(matches!(
            reload(&creds),
            Err(KeyStoreError::Tampered { .. })
        ));
        assert_eq!(creds.lookup("bob").unwrap().key.expose(), KEY_B);
        assert!(matches!(
            open(&config(&path, &m)),
            Err(KeyStoreError::Tampered { .. })
        ));
    }
}
