//! Static verification keys: the HMAC secret and PEM public keys, loaded once at start-up.
//!
//! Each key carries its own algorithm allowlist, all of one family, so a token can only ever be
//! checked with an algorithm its key was configured for (no HS256-with-RSA-bytes confusion).

use crate::config::{AuthConfig, ConfigError};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use secrecy::ExposeSecret;

/// One verification key bound to the algorithms it may be used with (a static key, or one
/// from the JWKS).
///
/// No `Debug`: an HMAC `DecodingKey` holds the secret bytes.
pub(crate) struct KeyEntry {
    /// The key material.
    pub key: DecodingKey,
    /// Allowed algorithms; all share the key's family (for a JWKS key: `jwks.algorithms` ∩
    /// the key's family ∩ the JWK's own `alg`, if any).
    pub algs: Vec<Algorithm>,
    /// A PEM key with a `kid` is only for tokens naming it; a JWKS key's `kid` is how tokens
    /// naming one find it (tokens naming none try every key of the set).
    pub kid: Option<String>,
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
        // HMAC only, whatever the caller built: the secret must never verify an RS/ES/Ed
        // token (config refuses other families; this holds for configs built in code too).
        algs: (cfg.hmac_algorithms.iter().copied())
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .collect(),
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

#[cfg(test)]
mod tests {
    // PEM public keys: per-key allowlists, kid binding, alg confusion and ignored header keys.

    use crate::auth::test_support::*;
    use crate::auth::*;
    use crate::config::PublicKeyConfig;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    fn pem_cfg(dir: &TempDir, keys: &[(&Signer, &[&str], Option<&str>)]) -> AuthConfig {
        let public_keys = keys
            .iter()
            .enumerate()
            .map(|(i, (s, algs, kid))| PublicKeyConfig {
                file: dir.write(&format!("k{i}.pem"), &s.public_pem),
                algorithms: algs.iter().map(|a| a.parse().unwrap()).collect(),
                kid: kid.map(str::to_owned),
            })
            .collect();
        AuthConfig {
            public_keys,
            hmac_secret: None,
            ..base_cfg()
        }
    }

    #[tokio::test]
    async fn valid_es256_rs256_eddsa() {
        let dir = TempDir::new();
        let ec = generate(Algorithm::ES256);
        let ed = generate(Algorithm::EdDSA);
        let a = authn(&pem_cfg(
            &dir,
            &[
                (&ec, &["ES256"], None),
                (rsa(), &["RS256", "PS256"], None),
                (&ed, &["EdDSA"], None),
            ],
        ));
        for (s, alg) in [
            (&ec, Algorithm::ES256),
            (rsa(), Algorithm::RS256),
            (rsa(), Algorithm::PS256),
            (&ed, Algorithm::EdDSA),
        ] {
            let t = s.sign(Header::new(alg), &claims("carol"));
            assert_eq!(&*check(&a, &t).await.unwrap().id, "carol", "{alg:?}");
        }
        // A key outside the configured set is refused even though its family is allowed.
        let stranger = generate(Algorithm::ES256);
        let t = stranger.sign(Header::new(Algorithm::ES256), &claims("carol"));
        assert_eq!(
            check(&a, &t).await.unwrap_err(),
            AuthError::Invalid("signature")
        );
        assert!(a.ready(), "static keys are always ready");
    }

    #[tokio::test]
    async fn each_key_only_verifies_its_own_algorithms() {
        let dir = TempDir::new();
        let ec = generate(Algorithm::ES256);
        let a = authn(&pem_cfg(
            &dir,
            &[(rsa(), &["RS256"], None), (&ec, &["ES256"], None)],
        ));
        let not_allowed = AuthError::Invalid("algorithm not allowed for this key");
        let t = rsa().sign(Header::new(Algorithm::PS256), &claims("a"));
        assert_eq!(check(&a, &t).await.unwrap_err(), not_allowed);
        let t = rsa().sign(Header::new(Algorithm::RS512), &claims("a"));
        assert_eq!(check(&a, &t).await.unwrap_err(), not_allowed);
        // No HMAC secret is configured, so HS256 has no key at all.
        assert_eq!(check(&a, &hs(&claims("a"))).await.unwrap_err(), not_allowed);
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let dir = TempDir::new();
        let forged_with = EncodingKey::from_secret(rsa().public_pem.as_bytes());
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims("mallory"),
            &forged_with,
        )
        .unwrap();

        let rsa_only = authn(&pem_cfg(&dir, &[(rsa(), &["RS256"], None)]));
        assert_eq!(
            check(&rsa_only, &forged).await.unwrap_err(),
            AuthError::Invalid("algorithm not allowed for this key")
        );
        // With an HMAC secret configured too, the forgery meets only the secret and fails there.
        let both = authn(&AuthConfig {
            hmac_secret: Some(SECRET.to_vec().into()),
            ..pem_cfg(&dir, &[(rsa(), &["RS256"], None)])
        });
        assert_eq!(
            check(&both, &forged).await.unwrap_err(),
            AuthError::Invalid("signature")
        );
    }

    #[tokio::test]
    async fn kid_binds_a_key_to_its_tokens() {
        let dir = TempDir::new();
        let k1 = generate(Algorithm::ES256);
        let k2 = generate(Algorithm::ES256);
        let a = authn(&pem_cfg(
            &dir,
            &[
                (&k1, &["ES256"], Some("one")),
                (&k2, &["ES256"], Some("two")),
            ],
        ));
        let ok = k2.sign(header(Algorithm::ES256, Some("two")), &claims("a"));
        assert!(check(&a, &ok).await.is_ok());
        // Right key, wrong kid: key "one" is tried and fails; key "two" is never considered.
        let mismatched = k2.sign(header(Algorithm::ES256, Some("one")), &claims("a"));
        assert_eq!(
            check(&a, &mismatched).await.unwrap_err(),
            AuthError::Invalid("signature")
        );
        let unknown = k2.sign(header(Algorithm::ES256, Some("three")), &claims("a"));
        assert!(matches!(
            check(&a, &unknown).await,
            Err(AuthError::Invalid(_))
        ));
        let no_kid = k2.sign(Header::new(Algorithm::ES256), &claims("a"));
        assert!(matches!(
            check(&a, &no_kid).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn jku_jwk_x5u_x5c_headers_are_ignored() {
        let dir = TempDir::new();
        let trusted = generate(Algorithm::ES256);
        let attacker = generate(Algorithm::ES256);
        let a = authn(&pem_cfg(&dir, &[(&trusted, &["ES256"], None)]));
        let mut h = Header::new(Algorithm::ES256);
        h.jwk = Some(Jwk::from_encoding_key(&attacker.enc, Algorithm::ES256).unwrap());
        // Port 9 on loopback: nothing listens, and nothing should try.
        h.jku = Some("https://127.0.0.1:9/jwks.json".into());
        h.x5u = Some("https://127.0.0.1:9/cert.pem".into());
        h.x5c = Some(vec!["MIIB".into()]);
        let forged = attacker.sign(h.clone(), &claims("mallory"));
        assert_eq!(
            check(&a, &forged).await.unwrap_err(),
            AuthError::Invalid("signature")
        );
        // The same headers on a genuinely signed token change nothing.
        let genuine = trusted.sign(h, &claims("carol"));
        assert_eq!(&*check(&a, &genuine).await.unwrap().id, "carol");
    }

    #[tokio::test]
    async fn bad_key_files_name_the_field() {
        let dir = TempDir::new();
        let ec = generate(Algorithm::ES256);
        let private = dir.write(
            "private.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let cases = [
            (
                dir.0.join("missing.pem"),
                vec!["ES256"],
                "auth.public_keys[0].file",
            ),
            (private, vec!["ES256"], "auth.public_keys[0].file"),
            (
                dir.write("ec.pem", &ec.public_pem),
                vec!["RS256"],
                "auth.public_keys[0].file",
            ),
            (
                dir.write("ec2.pem", &ec.public_pem),
                vec!["ES256", "RS256"],
                "auth.public_keys[0].algorithms",
            ),
        ];
        for (file, algs, field) in cases {
            let cfg = AuthConfig {
                public_keys: vec![PublicKeyConfig {
                    file,
                    algorithms: algs.iter().map(|a| a.parse().unwrap()).collect(),
                    kid: None,
                }],
                ..base_cfg()
            };
            let err = Authenticator::new(&cfg, client(None), None).err().unwrap();
            assert_eq!(err.field, field, "{algs:?}");
        }
    }
}
