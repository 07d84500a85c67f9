//! Sealing and opening API keys (AES-256-GCM), key ids, fingerprints and the whole-document MAC.
//!
//! Rejects any sealed blob that fails authentication: wrong master key, edited bytes, or a blob
//! moved to another key id (the id is in the associated data); and any document whose MAC does
//! not match its canonical form (an edited `users` map or `cliniko_user` label).

use super::{ApiKey, KeyStoreError};
use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest, hkdf, hmac,
};
use base64::Engine as _;
use secrecy::zeroize::Zeroize as _;

const AAD_PREFIX: &str = "cliniko-gateway/v1/";
const KEY_ID_DOMAIN: &[u8] = b"cliniko-gateway/v1/key-id\0";
const TAG_LEN: usize = 16;
/// HKDF-SHA256 salt and info for the document MAC key: the MAC never uses the master key (the
/// AES key) itself, and no other derivation uses this label.
const MAC_SALT: &[u8] = b"cliniko-gateway";
const MAC_INFO: &[u8] = b"cliniko-gateway/v2/keystore-mac";
/// Prefix of the stored MAC (names the algorithm, so a later change is visible).
const MAC_PREFIX: &str = "hmac-sha256:";
/// Hex characters in a derived key id (48 bits: collisions are checked, not assumed away).
const KEY_ID_HEX: usize = 12;

/// A fresh master key: base64 of 32 random bytes (what `keys gen-master-key` prints).
pub fn generate_master_key() -> Result<String, KeyStoreError> {
    let mut bytes = [0u8; 32];
    random(&mut bytes)?;
    let out = b64().encode(bytes);
    bytes.zeroize();
    Ok(out)
}

pub(super) fn random(buf: &mut [u8]) -> Result<(), KeyStoreError> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| KeyStoreError::Crypto("the system random generator failed"))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn cipher(master: &[u8; 32]) -> Result<LessSafeKey, KeyStoreError> {
    UnboundKey::new(&AES_256_GCM, master)
        .map(LessSafeKey::new)
        .map_err(|_| KeyStoreError::Crypto("AES-256-GCM rejected the master key"))
}

/// `sha256:` + the first 16 hex characters of SHA-256(key).
pub fn fingerprint(key: &str) -> String {
    let d = digest::digest(&digest::SHA256, key.as_bytes());
    format!("sha256:{}", hex::encode(&d.as_ref()[..8]))
}

/// The deterministic id of `key` under `master`.
pub(super) fn derive_key_id(master: &[u8; 32], key: &ApiKey) -> String {
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, master);
    let mut ctx = hmac::Context::with_key(&mac_key);
    ctx.update(KEY_ID_DOMAIN);
    ctx.update(key.expose().as_bytes());
    let tag = ctx.sign();
    let mut id = hex::encode(tag.as_ref());
    id.truncate(KEY_ID_HEX);
    id
}

/// The document MAC key: HKDF-SHA256(master, salt, info) with the MAC's own label.
fn mac_key(master: &[u8; 32]) -> Result<hmac::Key, KeyStoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, MAC_SALT).extract(master);
    let info = [MAC_INFO];
    let okm = prk
        .expand(&info, hmac::HMAC_SHA256)
        .map_err(|_| KeyStoreError::Crypto("HKDF expansion failed"))?;
    Ok(hmac::Key::from(okm))
}

/// `hmac-sha256:<hex>` of the document's canonical bytes.
pub(super) fn document_mac(master: &[u8; 32], canonical: &[u8]) -> Result<String, KeyStoreError> {
    let tag = hmac::sign(&mac_key(master)?, canonical);
    Ok(format!("{MAC_PREFIX}{}", hex::encode(tag.as_ref())))
}

/// True when `mac` is the document MAC of `canonical` (compared in constant time).
pub(super) fn verify_document_mac(
    master: &[u8; 32],
    canonical: &[u8],
    mac: &str,
) -> Result<bool, KeyStoreError> {
    let Some(tag) = mac
        .strip_prefix(MAC_PREFIX)
        .and_then(|h| hex::decode(h).ok())
    else {
        return Ok(false);
    };
    Ok(hmac::verify(&mac_key(master)?, canonical, &tag).is_ok())
}

/// Encrypts `key` for entry `key_id`: base64(nonce || ciphertext || tag).
pub(super) fn seal(master: &[u8; 32], key_id: &str, key: &ApiKey) -> Result<String, KeyStoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce)?;
    let aad = format!("{AAD_PREFIX}{key_id}");
    let mut buf = Vec::with_capacity(NONCE_LEN + key.expose().len() + TAG_LEN);
    buf.extend_from_slice(&nonce);
    let mut body = key.expose().as_bytes().to_vec();
    let sealed = cipher(master)?.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad.as_bytes()),
        &mut body,
    );
    if sealed.is_err() {
        body.zeroize();
        return Err(KeyStoreError::Crypto("AES-256-GCM sealing failed"));
    }
    buf.extend_from_slice(&body);
    Ok(b64().encode(&buf))
}

/// Decrypts the blob of entry `key_id`. `Ok(None)` means the blob is not even shaped like one.
pub(super) fn open(
    master: &[u8; 32],
    key_id: &str,
    sealed: &str,
) -> Result<Option<ApiKey>, KeyStoreError> {
    let Ok(raw) = b64().decode(sealed) else {
        return Ok(None);
    };
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Ok(None);
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| KeyStoreError::Crypto("bad nonce length"))?;
    let aad = format!("{AAD_PREFIX}{key_id}");
    let mut body = rest.to_vec();
    let decrypt = || KeyStoreError::Decrypt {
        key_id: key_id.to_string(),
    };
    let len = match cipher(master)?.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body) {
        Ok(plain) => plain.len(),
        Err(_) => return Err(decrypt()),
    };
    body.truncate(len);
    match String::from_utf8(body) {
        Ok(s) => Ok(Some(ApiKey::new(s))),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(decrypt())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: [u8; 32] = [7; 32];
    const M2: [u8; 32] = [8; 32];

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let key = ApiKey::new("MS0xLWFiYw-uk2".into());
        let a = seal(&M1, "id1", &key).unwrap();
        let b = seal(&M1, "id1", &key).unwrap();
        assert_ne!(a, b, "each seal uses a new nonce");
        let back = open(&M1, "id1", &a).unwrap().unwrap();
        assert_eq!(back.expose(), key.expose());
    }

    #[test]
    fn wrong_master_other_id_or_flipped_bit_fail() {
        let key = ApiKey::new("secret-au1".into());
        let s = seal(&M1, "id1", &key).unwrap();
        assert!(
            matches!(open(&M2, "id1", &s), Err(KeyStoreError::Decrypt { key_id }) if key_id == "id1")
        );
        assert!(matches!(
            open(&M1, "id2", &s),
            Err(KeyStoreError::Decrypt { .. })
        ));
        let mut raw = b64().decode(&s).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = b64().encode(&raw);
        assert!(matches!(
            open(&M1, "id1", &tampered),
            Err(KeyStoreError::Decrypt { .. })
        ));
        assert!(matches!(open(&M1, "id1", "not base64!"), Ok(None)));
        assert!(matches!(open(&M1, "id1", "AAAA"), Ok(None)));
    }

    #[test]
    fn key_id_is_deterministic_and_master_dependent() {
        let key = ApiKey::new("abc-au1".into());
        let id = derive_key_id(&M1, &key);
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, derive_key_id(&M1, &key));
        assert_ne!(id, derive_key_id(&M2, &key));
        assert_ne!(id, derive_key_id(&M1, &ApiKey::new("abd-au1".into())));
    }

    #[test]
    fn document_mac_covers_every_byte_and_the_master_key() {
        let doc = br#"{"version":2,"keys":{},"users":{"bob":"k1"}}"#;
        let mac = document_mac(&M1, doc).unwrap();
        assert!(
            mac.starts_with("hmac-sha256:") && mac.len() == 12 + 64,
            "{mac}"
        );
        assert!(verify_document_mac(&M1, doc, &mac).unwrap());
        assert!(!verify_document_mac(&M2, doc, &mac).unwrap());
        let edited = br#"{"version":2,"keys":{},"users":{"bob":"k2"}}"#;
        assert!(!verify_document_mac(&M1, edited, &mac).unwrap());
        for junk in ["", "hmac-sha256:", "hmac-sha256:zz", &mac[12..]] {
            assert!(!verify_document_mac(&M1, doc, junk).unwrap(), "{junk}");
        }
        // A distinct key from the AES key and the key-id HMAC: not HMAC(master, doc).
        let plain = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &M1), doc);
        assert_ne!(mac[12..], hex::encode(plain.as_ref()));
    }

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(fingerprint("abc"), "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn master_key_is_32_random_bytes_in_base64() {
        let a = generate_master_key().unwrap();
        let b = generate_master_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(b64().decode(&a).unwrap().len(), 32);
    }
}
