//! The decrypted, immutable user -> credential map.
//!
//! Rejects, at load, any file that does not decrypt completely and consistently or whose
//! whole-document MAC does not match (an unsigned version-1 file included): one bad entry fails
//! the whole load, so a running gateway keeps its previous store instead.

use super::{Credential, KeyStoreError, crypto, file, validate_name};
use crate::config::MasterKey;
use secrecy::ExposeSecret;
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::Path,
    sync::Arc,
};

/// Every user's credential, decrypted once at load and never mutated.
#[derive(Default)]
pub struct KeyStore {
    users: HashMap<Box<str>, Arc<Credential>>,
    keys: BTreeMap<Arc<str>, Arc<Credential>>,
}

impl KeyStore {
    /// Opens every entry and checks the document MAC (last, so that a wrong master key is
    /// reported as such rather than as an edit).
    pub(super) fn from_document(
        path: &Path,
        doc: &file::Document,
        master: &MasterKey,
    ) -> Result<KeyStore, KeyStoreError> {
        let store = KeyStore::open_entries(path, doc, master)?;
        check_mac(path, doc, master)?;
        Ok(store)
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

    /// Every user and their credential, sorted by user (`keys list`).
    pub fn sorted(&self) -> Vec<(&str, &Credential)> {
        let mut rows: Vec<_> = self.users().collect();
        rows.sort_by_key(|(user, _)| *user);
        rows
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
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("users", &self.users.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Checks the whole-document MAC: a version-1 document (written before the MAC existed) is
/// [`KeyStoreError::Unsigned`], a missing or wrong MAC (changed without the master key)
/// [`KeyStoreError::Tampered`].
pub(super) fn check_mac(
    path: &Path,
    doc: &file::Document,
    master: &MasterKey,
) -> Result<(), KeyStoreError> {
    let path = path.to_path_buf();
    if doc.version == file::UNSIGNED_VERSION {
        return Err(KeyStoreError::Unsigned { path });
    }
    let signed = match &doc.mac {
        Some(mac) => crypto::verify_document_mac(master.expose_secret(), &doc.canonical(), mac)?,
        None => false,
    };
    if signed {
        Ok(())
    } else {
        Err(KeyStoreError::Tampered { path })
    }
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
