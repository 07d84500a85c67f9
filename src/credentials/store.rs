//! The decrypted, immutable user -> credential map, and the live handle that swaps it on reload.
//!
//! Rejects, at load, any file that does not decrypt completely and consistently or whose
//! whole-document MAC does not match (an unsigned version-1 file included): one bad entry fails
//! the whole load, so a running gateway keeps its previous store instead.

use super::new_key::{AddOutcome, NewKey};
use super::{ApiKey, Backend, Credential, KeyStoreError, crypto, file, validate_name};
use crate::config::{KeyStoreConfig, MasterKey};
use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::Path,
    sync::Arc,
    sync::atomic::{AtomicI64, Ordering},
};

/// Every user's credential, decrypted once at load and never mutated.
#[derive(Default)]
pub struct KeyStore {
    users: HashMap<Box<str>, Arc<Credential>>,
    keys: BTreeMap<Arc<str>, Arc<Credential>>,
}

impl KeyStore {
    /// Loads and decrypts `path`; a missing file is an error.
    pub fn load(path: &Path, master: &MasterKey) -> Result<KeyStore, KeyStoreError> {
        match file::read(path)? {
            Some(doc) => KeyStore::from_document(path, &doc, master),
            None => Err(KeyStoreError::NotFound {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Like [`KeyStore::load`], but a missing file is an empty store (for `keys add`).
    pub fn load_or_empty(path: &Path, master: &MasterKey) -> Result<KeyStore, KeyStoreError> {
        match file::read(path)? {
            Some(doc) => KeyStore::from_document(path, &doc, master),
            None => Ok(KeyStore::default()),
        }
    }

    /// A store built in memory (tests and embedders); `users` maps names to credentials.
    pub fn from_users(users: impl IntoIterator<Item = (String, Arc<Credential>)>) -> KeyStore {
        let mut store = KeyStore::default();
        for (user, cred) in users {
            store.keys.insert(cred.key_id.clone(), cred.clone());
            store.users.insert(user.into(), cred);
        }
        store
    }

    /// Opens every entry and checks the document MAC (last, so that a wrong master key is
    /// reported as such rather than as an edit).
    pub(super) fn from_document(
        path: &Path,
        doc: &file::Document,
        master: &MasterKey,
    ) -> Result<KeyStore, KeyStoreError> {
        let store = KeyStore::open_entries(path, doc, master)?;
        match integrity(doc, master)?.refusal(path) {
            None => Ok(store),
            Some(e) => Err(e),
        }
    }

    /// Decrypts and cross-checks every entry and user, without looking at the MAC.
    pub(super) fn open_entries(
        path: &Path,
        doc: &file::Document,
        master: &MasterKey,
    ) -> Result<KeyStore, KeyStoreError> {
        let master = master.expose_secret();
        let bad = |problem: String| file::format_error(path, problem);
        let mut keys = BTreeMap::new();
        for (key_id, entry) in &doc.keys {
            if !is_key_id(key_id) {
                return Err(bad(format!(
                    "the key id {} is not 1-64 characters of [A-Za-z0-9_-]",
                    shown(key_id)
                )));
            }
            let key = crypto::open(master, key_id, &entry.sealed)?.ok_or_else(|| {
                bad(format!(
                    "key {key_id}: `sealed` is not base64 of nonce || ciphertext || tag"
                ))
            })?;
            let label = match &entry.cliniko_user {
                Some(l) => {
                    validate_name("cliniko_user label", l)
                        .map_err(|e| bad(format!("key {key_id}: {e}")))?;
                    Some(Arc::<str>::from(l.as_str()))
                }
                None => None,
            };
            let mut cred = Credential::new(key, key_id.as_str(), label).map_err(|_| {
                KeyStoreError::BadShard {
                    key_id: key_id.clone(),
                }
            })?;
            cred.verified_at = entry.verified_at.as_deref().map(Arc::from);
            // Hand edits to these informational fields would make `keys list` lie.
            if cred.shard.as_str() != entry.shard || *cred.fingerprint != *entry.fingerprint {
                return Err(bad(format!(
                    "key {key_id}: the stored shard or fingerprint does not match the decrypted key"
                )));
            }
            keys.insert(cred.key_id.clone(), Arc::new(cred));
        }
        let mut users = HashMap::with_capacity(doc.users.len());
        for (user, key_id) in &doc.users {
            validate_name("user name", user)
                .map_err(|e| bad(format!("user {}: {e}", shown(user))))?;
            let cred = keys.get(key_id.as_str()).ok_or_else(|| {
                bad(format!(
                    "user {} points at key {}, which is not in `keys`",
                    shown(user),
                    shown(key_id)
                ))
            })?;
            users.insert(Box::<str>::from(user.as_str()), Arc::clone(cred));
        }
        Ok(KeyStore { users, keys })
    }

    /// The credential of `user`, if one is stored.
    pub fn get(&self, user: &str) -> Option<Arc<Credential>> {
        self.users.get(user).cloned()
    }

    /// Every user and their credential, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = (&str, &Credential)> {
        self.users.iter().map(|(u, c)| (&**u, &**c))
    }

    /// Distinct keys by id (several users may share one).
    pub(super) fn keys(&self) -> impl Iterator<Item = (&str, &Arc<Credential>)> {
        self.keys.iter().map(|(id, c)| (&**id, c))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user has a key.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Number of distinct keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("users", &self.users.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Where a document stands with its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Integrity {
    /// Version 2 with a MAC that matches.
    Signed,
    /// Version 1: written before the MAC existed.
    Unsigned,
    /// Version 2 whose MAC is missing or does not match: changed without the master key.
    Mismatch,
}

impl Integrity {
    /// Why a file in this state is not trusted as it is (`None`: it is signed).
    pub(super) fn refusal(self, path: &Path) -> Option<KeyStoreError> {
        let path = path.to_path_buf();
        match self {
            Integrity::Signed => None,
            Integrity::Unsigned => Some(KeyStoreError::Unsigned { path }),
            Integrity::Mismatch => Some(KeyStoreError::Tampered { path }),
        }
    }
}

pub(super) fn integrity(
    doc: &file::Document,
    master: &MasterKey,
) -> Result<Integrity, KeyStoreError> {
    if doc.version == file::UNSIGNED_VERSION {
        return Ok(Integrity::Unsigned);
    }
    let Some(mac) = &doc.mac else {
        return Ok(Integrity::Mismatch);
    };
    let ok = crypto::verify_document_mac(master.expose_secret(), &doc.canonical(), mac)?;
    Ok(if ok {
        Integrity::Signed
    } else {
        Integrity::Mismatch
    })
}

fn is_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A name from the file, escaped and shortened so a message stays one readable line.
fn shown(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    let ellipsis = if short.len() < s.len() { "…" } else { "" };
    format!("{short:?}{ellipsis}")
}

/// The live key store: lock-free lookups, atomically replaced by [`Credentials::reload`].
pub struct Credentials {
    current: ArcSwap<KeyStore>,
    /// The stored revision `current` was loaded from (PostgreSQL; 0 for a file).
    revision: AtomicI64,
    /// One reload at a time, so an older read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
    backend: Backend,
    master: MasterKey,
}

impl Credentials {
    /// Opens the configured store and loads it; fails when any entry is bad, and when the
    /// file is missing unless `missing_ok` (enrolment on: the first enrolment creates it).
    pub async fn open(
        cfg: &KeyStoreConfig,
        missing_ok: bool,
    ) -> Result<Credentials, KeyStoreError> {
        let master = cfg.master_key.clone().ok_or(KeyStoreError::NoMasterKey)?;
        let backend = Backend::open(cfg).await?;
        let (store, revision) = backend.load(&master, missing_ok).await?;
        Ok(Credentials {
            current: ArcSwap::from_pointee(store),
            revision: AtomicI64::new(revision),
            reloading: tokio::sync::Mutex::new(()),
            backend,
            master,
        })
    }

    /// The credential of `user` in the current store (hot path: no lock).
    pub fn lookup(&self, user: &str) -> Option<Arc<Credential>> {
        self.current.load().get(user)
    }

    /// Re-reads the store (file I/O and decryption off the async threads); on success swaps
    /// it in and returns the user count, on error keeps the old store (the caller logs it).
    pub async fn reload(&self) -> Result<usize, KeyStoreError> {
        self.swap(true).await
    }

    /// Loads and serves the stored store; `settle`: remember its revision as served.
    async fn swap(&self, settle: bool) -> Result<usize, KeyStoreError> {
        let _one = self.reloading.lock().await;
        let (store, revision) = self.backend.load(&self.master, false).await?;
        let n = store.len();
        self.current.store(Arc::new(store));
        if settle {
            self.revision.store(revision, Ordering::Release);
        }
        Ok(n)
    }

    /// True when the database holds a newer revision than the one serving (never for a
    /// file, which the file watch follows instead).
    pub async fn stale(&self) -> Result<bool, KeyStoreError> {
        match self.backend.database() {
            Some(pg) => Ok(pg.revision().await? != self.revision.load(Ordering::Acquire)),
            None => Ok(false),
        }
    }

    /// A credential for `key`, not stored: what enrolment checks with Cliniko first. It
    /// spends the budget the key will have once stored (`key:<key id>`).
    pub fn candidate(&self, key: ApiKey) -> Result<Arc<Credential>, KeyStoreError> {
        let id = crypto::derive_key_id(self.master.expose_secret(), &key);
        let mut cred = Credential::new(key, id, None)
            .map_err(|_| KeyStoreError::InvalidApiKey("its shard suffix is not a shard name"))?;
        cred.candidate = true;
        Ok(Arc::new(cred))
    }

    /// Stores `new` (under the store's lock), then serves it at once on this replica.
    pub async fn add(&self, new: NewKey) -> Result<AddOutcome, KeyStoreError> {
        let out = self.backend.add(&self.master, new).await?;
        self.reload_after_write().await;
        Ok(out)
    }

    /// Removes `user`'s key; `false` when there was none.
    pub async fn remove(&self, user: &str) -> Result<bool, KeyStoreError> {
        let found = self.backend.remove(&self.master, user).await?;
        self.reload_after_write().await;
        Ok(found)
    }

    /// Serves a write at once. The revision stays unsettled, so the watch (the file's, or the
    /// database's, woken by our own notification) reloads once more through the reloader,
    /// which records it (users gauge, reload counter); a failure here only delays it.
    async fn reload_after_write(&self) {
        if let Err(e) = self.swap(false).await {
            tracing::error!(error = %e, "key store written but not reloaded; the watch will retry");
        }
    }

    /// The store in use right now.
    pub fn current(&self) -> Arc<KeyStore> {
        self.current.load_full()
    }

    /// Where the keys are stored.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The file this handle reloads from (`None` for a database store).
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::File { path, .. } => Some(path),
            Backend::Postgres(_) => None,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("place", &self.backend.place())
            .field("store", &*self.current.load())
            .finish_non_exhaustive()
    }
}
