//! Where the sealed document lives, and every edit to it under the store's lock.
//!
//! The file store (the default, one replica) is the JSON file, replaced atomically; the
//! PostgreSQL store (several replicas) keeps the very same signed document in one row
//! ([`super::postgres`]). Either way the document is sealed and signed here, under the master
//! key, before it is written: the database only ever holds sealed keys.
//!
//! An edit is read, change, write under one lock (a lock file beside the file store, held by
//! `keys` commands too; the row lock in PostgreSQL), so two enrolments of one key cannot both
//! pass the check that nobody else holds it. File I/O and decryption run off the async threads.

use super::edit::{self, Resealed};
use super::file::{self, Document, Edited};
use super::new_key::{AddOutcome, NewKey};
use super::postgres::PgStore;
use super::{KeyStore, KeyStoreError, blocking};
use crate::config::{KeyStoreConfig, MasterKey, StoreKind};
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key store's backend, with the master key that opens and signs what it holds.
pub struct Backend {
    store: Store,
    pub(super) master: MasterKey,
}

enum Store {
    /// One JSON file; the mutex orders this process's edits before the lock file is taken.
    File {
        /// The file.
        path: PathBuf,
        /// Held across one edit.
        lock: tokio::sync::Mutex<()>,
    },
    /// One row in PostgreSQL.
    Postgres(Arc<PgStore>),
}

impl Backend {
    /// Opens the configured backend (for PostgreSQL: connects and creates the table if needed).
    pub async fn open(cfg: &KeyStoreConfig) -> Result<Backend, KeyStoreError> {
        let master = cfg.master_key.clone().ok_or(KeyStoreError::NoMasterKey)?;
        match cfg.store {
            StoreKind::File => Ok(Backend::file(cfg.path.clone(), master)),
            StoreKind::Postgres => {
                let url = cfg.postgres_url.as_ref().ok_or(KeyStoreError::Database {
                    op: "connect",
                    problem: "no database URL is configured".into(),
                })?;
                let store = Store::Postgres(Arc::new(PgStore::open(url).await?));
                Ok(Backend { store, master })
            }
        }
    }

    /// The file store at `path`, under `master`.
    pub fn file(path: PathBuf, master: MasterKey) -> Backend {
        let lock = tokio::sync::Mutex::new(());
        let store = Store::File { path, lock };
        Backend { store, master }
    }

    /// Names the store in messages: the file, or the database table.
    pub fn place(&self) -> &Path {
        match &self.store {
            Store::File { path, .. } => path,
            Store::Postgres(pg) => pg.place(),
        }
    }

    /// Decrypts the stored document into a store, with its revision (always 0 for a file).
    /// A missing file is [`KeyStoreError::NotFound`] unless `missing_ok`.
    pub async fn load(&self, missing_ok: bool) -> Result<(KeyStore, i64), KeyStoreError> {
        let (doc, revision) = match &self.store {
            Store::File { path, .. } => {
                let path = path.clone();
                (blocking(move || file::read(&path)).await?, 0)
            }
            Store::Postgres(pg) => pg.read().await?,
        };
        let (place, master) = (self.place().to_path_buf(), self.master.clone());
        let store = blocking(move || match doc {
            Some(doc) => KeyStore::from_document(&place, &doc, &master),
            None if missing_ok => Ok(KeyStore::default()),
            None => Err(KeyStoreError::NotFound { path: place }),
        })
        .await?;
        Ok((store, revision))
    }

    /// Runs `f` on the stored document (`None`: nothing stored yet), the store's place and
    /// the master key under the store's lock, then signs and stores the document it
    /// returns, if any.
    pub(super) async fn edit<T, F>(&self, f: F) -> Result<T, KeyStoreError>
    where
        T: Send + 'static,
        F: FnOnce(Option<Document>, &Path, &MasterKey) -> Result<Edited<T>, KeyStoreError>
            + Send
            + 'static,
    {
        let (place, master) = (self.place().to_path_buf(), self.master.clone());
        // One signing step for both stores: what they write is the signed bytes.
        let signed = move |doc| {
            let (doc, out) = f(doc, &place, &master)?;
            let bytes = doc.map(|d| file::signed(d, master.expose_secret()));
            Ok((bytes.transpose()?, out))
        };
        match &self.store {
            Store::File { path, lock } => {
                let _ours = lock.lock().await;
                let path = path.clone();
                blocking(move || file::edit(&path, signed)).await
            }
            Store::Postgres(pg) => pg.edit(signed).await,
        }
    }

    /// Maps a user to a key (see [`NewKey`]).
    pub async fn add(&self, new: NewKey) -> Result<AddOutcome, KeyStoreError> {
        let mut done = self.add_many(vec![new]).await?;
        Ok(done.remove(0))
    }

    /// [`Backend::add`] for many mappings in one signed write: all or nothing.
    pub async fn add_many(&self, new: Vec<NewKey>) -> Result<Vec<AddOutcome>, KeyStoreError> {
        self.edit(move |doc, place, m| edit::add_all(doc, place, m, &new))
            .await
    }

    /// Removes a user; `false` when the user had no key.
    pub async fn remove(&self, user: &str) -> Result<bool, KeyStoreError> {
        let user = user.to_string();
        self.edit(move |doc, place, m| edit::remove_from(doc, place, m, &user))
            .await
    }

    /// Signs the store with its whole-document MAC: migrates a version-1 file, or (only with
    /// `accept_edits`) accepts a file changed without the master key (see `edit::resealed`).
    pub async fn reseal(&self, accept_edits: bool) -> Result<Resealed, KeyStoreError> {
        self.edit(move |doc, place, m| edit::resealed(doc, place, m, accept_edits))
            .await
    }

    /// Copies the signed file store at `from` into this (empty) store: `keys migrate`.
    /// Returns the number of users copied.
    pub async fn import(&self, from: &Path) -> Result<usize, KeyStoreError> {
        // Read once: the document checked is the one stored (a file swapped after the check
        // cannot be signed into the store).
        let (from, m) = (from.to_path_buf(), self.master.clone());
        let doc = blocking(move || {
            let doc = file::read(&from)?.ok_or(KeyStoreError::NotFound { path: from.clone() })?;
            KeyStore::from_document(&from, &doc, &m)?;
            Ok(doc)
        })
        .await?;
        let users = doc.users.len();
        self.edit(move |existing, place, _| {
            if existing.is_some_and(|d| !d.users.is_empty()) {
                return Err(KeyStoreError::NotEmpty {
                    path: place.to_path_buf(),
                });
            }
            Ok((Some(doc), users))
        })
        .await
    }

    /// The PostgreSQL store, when that is the backend (replicas follow its changes).
    pub fn database(&self) -> Option<&Arc<PgStore>> {
        match &self.store {
            Store::Postgres(pg) => Some(pg),
            Store::File { .. } => None,
        }
    }

    /// The file, when that is the backend (the file watch follows it).
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            Store::File { path, .. } => Some(path),
            Store::Postgres(_) => None,
        }
    }
}
