//! A key to store and what storing it did: shared by the file edits ([`super::edit`]) and
//! the serving store ([`super::store`]), below both so neither imports the other for them.

use super::{ApiKey, KeyStoreError, validate_name};
use crate::upstream::Shard;

/// Longest accepted API key in bytes (Cliniko keys are far shorter; this catches paste accidents).
const MAX_KEY_BYTES: usize = 1024;

/// What [`super::Backend::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOutcome {
    /// The id of the user's key in the file.
    pub key_id: String,
    /// The key's fingerprint (safe to print).
    pub fingerprint: String,
    /// The key's shard.
    pub shard: Shard,
    /// True when the key was already stored (for another user or this one) and was reused.
    pub reused_key: bool,
}

/// A key to store for a user (owned, so an edit can move it off the async threads).
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The user (the JWT's user claim).
    pub user: String,
    /// The API key.
    pub key: ApiKey,
    /// Label of the Cliniko user owning the key, when known; (re)labels a stored key.
    pub cliniko_user: Option<String>,
    /// When Cliniko accepted the key (RFC 3339); set by enrolment.
    pub verified_at: Option<String>,
    /// Refuse a key another user already holds ([`KeyStoreError::KeyInUse`]): enrolment
    /// does, so nobody can connect a colleague's key; ops' `keys add` may share keys.
    pub exclusive: bool,
}

impl NewKey {
    /// A mapping as ops make it: shared keys allowed, not verified with Cliniko.
    pub fn new(user: &str, key: ApiKey, cliniko_user: Option<&str>) -> NewKey {
        NewKey {
            user: user.to_string(),
            key,
            cliniko_user: cliniko_user.map(str::to_string),
            verified_at: None,
            exclusive: false,
        }
    }

    /// Checks the user name, the label and the key; the key's shard when all are valid.
    pub fn check(&self) -> Result<Shard, KeyStoreError> {
        validate_name("user name", &self.user)?;
        // Ops paste both user and key (`keys add`/`import`; not exclusive): with the columns
        // swapped the key would be stored as a user name, which `keys list`, logs and metrics
        // then show; refuse without echoing it. Enrolment's user comes from a verified token,
        // whose `sub` may be any base64url string: not checked there.
        if !self.exclusive && key_shaped(&self.user, 32) {
            return Err(KeyStoreError::InvalidName {
                what: "user name",
                problem: "it looks like a Cliniko API key (user and key swapped?)",
            });
        }
        if let Some(label) = &self.cliniko_user {
            validate_name("cliniko_user label", label)?;
        }
        check_api_key(&self.key)
    }
}

/// Shaped like a Cliniko API key: at least `min_body` base64 characters, then a hyphen and a
/// shard name. A JWT never matches (it has dots), nor do the user names ops type (e-mail
/// addresses, `provider|id`, UUIDs). Shared by the token check (a key sent as a bearer token)
/// and `keys add`/`import` (columns swapped).
pub fn key_shaped(s: &str, min_body: usize) -> bool {
    let Some((body, suffix)) = s.rsplit_once('-') else {
        return false;
    };
    let key_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-');
    body.len() >= min_body && body.bytes().all(key_char) && crate::config::is_shard_name(suffix)
}

/// Checks a key's form (length, no whitespace, a shard suffix) and returns its shard.
pub fn check_api_key(key: &ApiKey) -> Result<Shard, KeyStoreError> {
    let k = key.expose();
    if k.is_empty() {
        return Err(KeyStoreError::InvalidApiKey("it is empty"));
    }
    if k.len() > MAX_KEY_BYTES {
        return Err(KeyStoreError::InvalidApiKey("it is longer than 1024 bytes"));
    }
    if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyStoreError::InvalidApiKey(
            "it contains whitespace or control characters (a paste error?)",
        ));
    }
    Shard::from_key(k).map_err(|_| {
        KeyStoreError::InvalidApiKey(
            "its shard suffix (after the last '-') is not a shard name such as au1 or uk2",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{ApiKey, NewKey, key_shaped};

    fn looks_like_api_key(s: &str) -> bool {
        key_shaped(s, 32)
    }

    #[test]
    fn only_ops_mappings_refuse_a_key_shaped_user_name() {
        let shaped = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_AbCd-ab1"; // a base64url `sub`
        let mut new = NewKey::new(shaped, ApiKey::new("MS0xMjM0-au1".into()), None);
        assert!(new.check().is_err(), "keys add/import: columns swapped?");
        new.exclusive = true; // enrolment: the user name comes from a verified token
        assert!(new.check().is_ok());
    }

    #[test]
    fn a_key_shaped_user_name_is_recognised_and_real_user_claims_are_not() {
        assert!(looks_like_api_key(
            "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZjAxMjM0NTY3ODk-au1"
        ));
        for user in [
            "alice",
            "alice@example.com",
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "550e8400-e29b-41d4-a716-446655440000",
            "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZjAxMjM0NTY3ODk", // no shard suffix
            "short-au1",
        ] {
            assert!(!looks_like_api_key(user), "{user}");
        }
    }
}
