//! Editing the store file for the `keys` CLI: add a user's key, remove a user, list users,
//! reseal (sign a version-1 file, or accept a reviewed hand edit).
//!
//! Rejects a master key that does not open every existing entry (so one file never mixes
//! master keys), a file that fails its integrity MAC (edits never launder a tampered file;
//! only `reseal --accept-edits` does, on purpose), invalid user names, and API keys that are
//! empty, contain whitespace or control characters, or whose shard suffix is not a shard name.
//! Every write signs the whole document.

use super::new_key::{AddOutcome, NewKey};
use super::{
    ApiKey, KeyStore, KeyStoreError, crypto,
    file::{Document, Edited, KeyEntry},
    store::check_mac,
};
use crate::config::MasterKey;
use secrecy::ExposeSecret;
use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

/// Maps each `user` to its key, replacing any previous mapping, on a document in memory
/// (`None`: no store yet); the caller signs and writes. The same key already stored is reused;
/// a `cliniko_user`, when given, (re)labels the key. Every mapping is checked before anything
/// changes, so a bad one leaves the store as it was.
pub(super) fn add_all(
    existing: Option<Document>,
    place: &Path,
    master: &MasterKey,
    mappings: &[NewKey],
) -> Result<Edited<Vec<AddOutcome>>, KeyStoreError> {
    let shards = mappings
        .iter()
        .map(NewKey::check)
        .collect::<Result<Vec<_>, _>>()?;
    let store = match &existing {
        Some(doc) => KeyStore::from_document(place, doc, master)?,
        None => KeyStore::default(),
    };
    let mut doc = existing.unwrap_or_else(Document::empty);
    // Stored keys by fingerprint (confirmed by comparing the keys), so a batch is linear.
    let mut known: HashMap<String, (String, ApiKey)> = store
        .keys()
        .map(|(id, c)| (c.fingerprint.to_string(), (id.to_string(), c.key.clone())))
        .collect();
    let mut outcomes = Vec::with_capacity(mappings.len());
    for (m, shard) in mappings.iter().zip(shards) {
        let fingerprint = crypto::fingerprint(m.key.expose());
        let same = known
            .get(&fingerprint)
            .filter(|(_, k)| k.expose() == m.key.expose())
            .map(|(id, _)| id.clone());
        let reused_key = same.is_some();
        let key_id = match same {
            Some(id) => reuse(&mut doc, id, m)?,
            None => {
                let id = fresh_key_id(master, &m.key, &doc)?;
                let entry = KeyEntry {
                    shard: shard.as_str().to_string(),
                    fingerprint: fingerprint.clone(),
                    cliniko_user: m.cliniko_user.clone(),
                    sealed: crypto::seal(master.expose_secret(), &id, &m.key)?,
                    verified_at: m.verified_at.clone(),
                };
                doc.keys.insert(id.clone(), entry);
                known.insert(fingerprint.clone(), (id.clone(), m.key.clone()));
                id
            }
        };
        doc.users.insert(m.user.clone(), key_id.clone());
        outcomes.push(AddOutcome {
            key_id,
            fingerprint,
            shard,
            reused_key,
        });
    }
    if !mappings.is_empty() {
        drop_unreferenced(&mut doc);
    }
    Ok((Some(doc), outcomes))
}

/// Points `m.user` at the stored key `id`, (re)labelling it; refused when `m` is exclusive
/// and another user holds the key. Checked under the store's lock, so it cannot race.
fn reuse(doc: &mut Document, id: String, m: &NewKey) -> Result<String, KeyStoreError> {
    if m.exclusive && doc.users.iter().any(|(u, k)| *k == id && *u != m.user) {
        return Err(KeyStoreError::KeyInUse);
    }
    if let Some(entry) = doc.keys.get_mut(&id) {
        if let Some(label) = &m.cliniko_user {
            entry.cliniko_user = Some(label.clone());
        }
        if m.verified_at.is_some() {
            entry.verified_at.clone_from(&m.verified_at);
        }
    }
    Ok(id)
}

/// Removes `user` from a document in memory (keys left unreferenced are dropped): `false`
/// (nothing to write) when there is no store or the user had no key.
pub(super) fn remove_from(
    doc: Option<Document>,
    place: &Path,
    master: &MasterKey,
    user: &str,
) -> Result<Edited<bool>, KeyStoreError> {
    let Some(mut doc) = doc else {
        return Ok((None, false));
    };
    KeyStore::from_document(place, &doc, master)?;
    if doc.users.remove(user).is_none() {
        return Ok((None, false));
    }
    drop_unreferenced(&mut doc);
    Ok((Some(doc), true))
}

/// What [`super::Backend::reseal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resealed {
    /// The file already carried a valid MAC; nothing was written.
    AlreadySigned,
    /// A version-1 file was signed and written as version 2.
    Migrated,
    /// A file that failed its MAC was signed as it is (`--accept-edits`).
    AcceptedEdits,
}

/// What signing the store with its whole-document MAC ([`super::Backend::reseal`]) writes:
/// a version-1 file migrated, or (only with `accept_edits`) a file changed without the master
/// key accepted; nothing when it is already signed. Every entry must still open with `master`.
pub(super) fn resealed(
    doc: Option<Document>,
    place: &Path,
    master: &MasterKey,
    accept_edits: bool,
) -> Result<Edited<Resealed>, KeyStoreError> {
    let doc = doc.ok_or_else(|| KeyStoreError::NotFound {
        path: place.to_path_buf(),
    })?;
    KeyStore::open_entries(place, &doc, master)?;
    let done = match check_mac(place, &doc, master) {
        Ok(()) => Resealed::AlreadySigned,
        // Nothing vouches for an unsigned or edited file: signing it is accepting whatever it
        // says, which takes the explicit flag.
        Err(KeyStoreError::Unsigned { .. }) if accept_edits => Resealed::Migrated,
        Err(KeyStoreError::Tampered { .. }) if accept_edits => Resealed::AcceptedEdits,
        Err(e) => return Err(e),
    };
    Ok(((done != Resealed::AlreadySigned).then_some(doc), done))
}

/// The derived id, or a random one in the (2^-48) case that it is taken by another key.
fn fresh_key_id(master: &MasterKey, key: &ApiKey, doc: &Document) -> Result<String, KeyStoreError> {
    let mut id = crypto::derive_key_id(master.expose_secret(), key);
    while doc.keys.contains_key(&id) {
        let mut b = [0u8; 6];
        crypto::random(&mut b)?;
        id = hex::encode(b);
    }
    Ok(id)
}

/// Drops the keys no user points at any more.
fn drop_unreferenced(doc: &mut Document) {
    let used: BTreeSet<&str> = doc.users.values().map(String::as_str).collect();
    doc.keys.retain(|id, _| used.contains(id.as_str()));
}
