//! Static verification keys: the HMAC secret and PEM public keys, loaded once at start-up.
//!
//! Each key carries its own algorithm allowlist, all of one family, so a token can only ever be
//! checked with an algorithm its key was configured for (no HS256-with-RSA-bytes confusion).

use crate::config::{AuthConfig, ConfigError};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use secrecy::ExposeSecret;

/// One verification key bound to the algorithms it may be used with.
///
/// No `Debug`: an HMAC `DecodingKey` holds the secret bytes.
pub(crate) struct KeyEntry {
    /// The key material.
    pub key: DecodingKey,
    /// Allowed algorithms; all share the key's family.
    pub algs: Vec<Algorithm>,
    /// When set, only tokens naming this `kid` may use the key.
    pub kid: Option<String>,
}

impl KeyEntry {
    /// True when a token signed with `alg` may be checked against this key.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algs.contains(&alg)
    }

    /// True when a token with header `kid` may use this key.
    pub fn matches_kid(&self, kid: Option<&str>) -> bool {
        match (&self.kid, kid) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        }
    }
}

/// The keys that never change while the gateway runs.
pub(crate) struct StaticKeys {
    /// The shared HMAC secret, if configured.
    pub hmac: Option<KeyEntry>,
    /// PEM public keys in configuration order.
    pub pem: Vec<KeyEntry>,
}

/// Loads the HMAC secret and reads every PEM file named in the config.
pub(crate) fn load(cfg: &AuthConfig) -> Result<StaticKeys, ConfigError> {
    let hmac = cfg.hmac_secret.as_ref().map(|secret| KeyEntry {
        key: DecodingKey::from_secret(secret.expose_secret()),
        algs: cfg.hmac_algorithms.clone(),
        kid: None,
    });
    let mut pem = Vec::with_capacity(cfg.public_keys.len());
    for (i, k) in cfg.public_keys.iter().enumerate() {
        let field = format!("auth.public_keys[{i}].file");
        let family = single_family(&k.algorithms).ok_or_else(|| {
            ConfigError::new(
                format!("auth.public_keys[{i}].algorithms"),
                "mixes algorithm families or is empty",
                "one key signs with one family: list only RS*/PS*, only ES*, or only EdDSA",
            )
        })?;
        let bytes = std::fs::read(&k.file).map_err(|_| {
            ConfigError::new(
                &field,
                "cannot read the file",
                "point it at a readable PEM public key",
            )
        })?;
        let key = pem_key(family, &bytes).ok_or_else(|| {
            ConfigError::new(
                &field,
                "not a PEM public key of the family its algorithms name",
                "give an RSA key for RS*/PS*, a P-256/P-384 key for ES*, an Ed25519 key for EdDSA (`-----BEGIN PUBLIC KEY-----`)",
            )
        })?;
        pem.push(KeyEntry {
            key,
            algs: k.algorithms.clone(),
            kid: k.kid.clone(),
        });
    }
    Ok(StaticKeys { hmac, pem })
}

fn single_family(algs: &[Algorithm]) -> Option<AlgorithmFamily> {
    let first = algs.first()?.family();
    algs.iter().all(|a| a.family() == first).then_some(first)
}

/// Parses a public key PEM; private keys are refused so a leaked signing key is never deployed.
fn pem_key(family: AlgorithmFamily, bytes: &[u8]) -> Option<DecodingKey> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.contains("PRIVATE KEY") {
        return None;
    }
    match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(bytes).ok(),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(bytes).ok(),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(bytes).ok(),
        AlgorithmFamily::Hmac => None,
    }
}
