//! The live key store: lock-free lookups of the decrypted [`KeyStore`], swapped on reload.

use super::new_key::{AddOutcome, NewKey};
use super::{ApiKey, Backend, Credential, KeyStore, KeyStoreError, crypto};
use crate::config::KeyStoreConfig;
use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use std::{
    fmt,
    sync::Arc,
    sync::atomic::{AtomicI64, Ordering},
};

/// The live key store: lock-free lookups, atomically replaced by [`Credentials::reload`].
pub struct Credentials {
    current: ArcSwap<KeyStore>,
    /// The stored revision `current` was loaded from (PostgreSQL; 0 for a file).
    revision: AtomicI64,
    /// One reload at a time, so an older read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
    backend: Backend,
}

impl Credentials {
    /// Opens the configured store and loads it; fails when any entry is bad, and when the
    /// file is missing unless `missing_ok` (enrolment on: the first enrolment creates it).
    pub async fn open(
        cfg: &KeyStoreConfig,
        missing_ok: bool,
    ) -> Result<Credentials, KeyStoreError> {
        let backend = Backend::open(cfg).await?;
        let (store, revision) = backend.load(missing_ok).await?;
        Ok(Credentials {
            current: ArcSwap::from_pointee(store),
            revision: AtomicI64::new(revision),
            reloading: tokio::sync::Mutex::new(()),
            backend,
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
        let (store, revision) = self.backend.load(false).await?;
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
        let id = crypto::derive_key_id(self.backend.master.expose_secret(), &key);
        let mut cred = Credential::new(key, id, None)
            .map_err(|_| KeyStoreError::InvalidApiKey("its shard suffix is not a shard name"))?;
        cred.candidate = true;
        Ok(Arc::new(cred))
    }

    /// Stores `new` (under the store's lock), then serves it at once on this replica.
    pub async fn add(&self, new: NewKey) -> Result<AddOutcome, KeyStoreError> {
        let out = self.backend.add(new).await?;
        self.reload_after_write().await;
        Ok(out)
    }

    /// Removes `user`'s key; `false` when there was none.
    pub async fn remove(&self, user: &str) -> Result<bool, KeyStoreError> {
        let found = self.backend.remove(user).await?;
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
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("place", &self.backend.place())
            .field("store", &*self.current.load())
            .finish_non_exhaustive()
    }
}
