//! The `[auth]` section (JWT verification: HMAC secret, PEM keys, JWKS) and its validation.

use super::validate::{own_error, refuse_if, secs};
use super::{ConfigError, Secret};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, Serialize};
use std::{path::PathBuf, str::FromStr, time::Duration};

settings! {
    /// JWT verification settings.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AuthConfig {
        /// The claim that names the user (looked up in the key store).
        pub user_claim: String = "sub".into(),
        /// Clock skew tolerated on `exp`/`nbf`.
        #[serde(with = "humantime_serde")]
        pub leeway: Duration = Duration::from_secs(30),
        /// Accepted `iss` values; when non-empty, `iss` is required.
        pub issuers: Vec<String> = Vec::new(),
        /// Accepted `aud` values; when non-empty, `aud` is required.
        pub audiences: Vec<String> = Vec::new(),
        /// Algorithms allowed with the HMAC secret (HS256/384/512).
        #[serde(deserialize_with = "algorithms")]
        pub hmac_algorithms: Vec<Algorithm> = vec![Algorithm::HS256],
        /// File holding the HMAC secret (else `CLINIKO_GATEWAY_HMAC_SECRET`).
        pub hmac_secret_file: Option<PathBuf> = None,
        /// PEM public keys, each with its own algorithm allowlist.
        pub public_keys: Vec<PublicKeyConfig> = Vec::new(),
        /// A JWKS endpoint of the identity provider.
        pub jwks: Option<JwksConfig> = None,
        /// How many verified tokens to remember (until their `exp`).
        pub token_cache_size: u64 = 10_000,
        /// Also take the JWT from `Authorization: Basic base64(<JWT>:)`, the form clients
        /// written for Cliniko send (the JWT where they put the API key).
        pub accept_basic: bool = true,
        /// Resolved at load: the HMAC secret, if any. Never in the file.
        #[serde(skip)]
        pub hmac_secret: Option<Secret<[u8]>> = None,
    }
}

/// One PEM public key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// PEM file (RSA, EC or Ed25519 public key).
    pub file: PathBuf,
    /// Allowed algorithms for this key, e.g. `["RS256"]`.
    #[serde(deserialize_with = "algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// When set, only tokens with this `kid` use this key.
    pub kid: Option<String>,
}

/// A JWKS endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `https://` URL of the key set.
    #[serde(with = "super::validate::https_url")]
    pub url: http::Uri,
    /// Algorithms allowed with keys from this set (a key's own `alg`, if any, must also match).
    #[serde(deserialize_with = "algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Background refresh period.
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Fetches triggered by unknown `kid`s happen at most once per this interval.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// How long an unknown `kid` is remembered as unknown.
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub unknown_kid_ttl: Duration,
    /// Timeout of one fetch.
    #[serde(default = "secs::<5>", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Why an algorithm name was refused, and the fix.
const UNKNOWN_ALG: (&str, &str) = (
    "unknown JWT algorithm",
    "use one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
);

/// Algorithm names, parsed once at load.
fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Algorithm>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| Algorithm::from_str(s).map_err(|_| own_error(UNKNOWN_ALG)))
        .collect()
}

fn is_hmac(a: &Algorithm) -> bool {
    a.family() == AlgorithmFamily::Hmac
}

/// The `[auth]` rules the types cannot express.
pub(super) fn validate(a: &AuthConfig) -> Result<(), ConfigError> {
    refuse_if(
        a.user_claim.is_empty(),
        "auth.user_claim",
        "is empty",
        "name the claim holding the user, e.g. \"sub\"",
    )?;
    refuse_if(
        a.hmac_secret.is_none() && a.public_keys.is_empty() && a.jwks.is_none(),
        "auth",
        "no way to verify tokens is configured",
        "set CLINIKO_GATEWAY_HMAC_SECRET (or auth.hmac_secret_file), add [[auth.public_keys]], or add [auth.jwks]",
    )?;
    if let Some(secret) = &a.hmac_secret {
        use secrecy::ExposeSecret;
        refuse_if(
            secret.expose_secret().len() < 32,
            "auth.hmac_secret",
            "the HMAC secret is shorter than 32 bytes",
            "use at least 32 random bytes (e.g. `openssl rand -base64 48`)",
        )?;
        refuse_if(
            a.hmac_algorithms.is_empty(),
            "auth.hmac_algorithms",
            "is empty",
            "list e.g. [\"HS256\"]",
        )?;
    }
    refuse_if(
        !a.hmac_algorithms.iter().all(is_hmac),
        "auth.hmac_algorithms",
        "only HS256/HS384/HS512 belong here",
        "list public-key algorithms on the key in [[auth.public_keys]] or [auth.jwks]",
    )?;
    for (i, k) in a.public_keys.iter().enumerate() {
        let f = format!("auth.public_keys[{i}].algorithms");
        refuse_if(
            k.algorithms.is_empty(),
            &f,
            "is empty",
            "list the algorithms this key signs with, e.g. [\"RS256\"]",
        )?;
        refuse_if(
            k.algorithms.iter().any(is_hmac),
            &f,
            "an HMAC algorithm cannot be used with a public key",
            "use RS*/PS*/ES*/EdDSA",
        )?;
    }
    a.jwks.as_ref().map_or(Ok(()), validate_jwks)
}

fn validate_jwks(j: &JwksConfig) -> Result<(), ConfigError> {
    refuse_if(
        j.algorithms.is_empty(),
        "auth.jwks.algorithms",
        "is empty",
        "list e.g. [\"RS256\"]",
    )?;
    refuse_if(
        j.algorithms.iter().any(is_hmac),
        "auth.jwks.algorithms",
        "HMAC algorithms cannot come from a JWKS",
        "use RS*/PS*/ES*/EdDSA",
    )?;
    refuse_if(
        j.refresh_interval.is_zero() || j.timeout.is_zero(),
        "auth.jwks.refresh_interval",
        "must be longer than zero",
        "use e.g. \"5m\"",
    )
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, ENV_HMAC_SECRET, ENV_MASTER_KEY, Env, load_str};
    use jsonwebtoken::Algorithm;
    use std::time::Duration;

    fn load(auth: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[auth]\n{auth}\n[keystore]\npath = \"k.json\"\n[upstream]\nuser_agent = \"A (a@b.c)\"\n"
        );
        let env = Env([
            (ENV_HMAC_SECRET, "h".repeat(40)),
            (ENV_MASTER_KEY, "0".repeat(64)),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into());
        load_str(&text, std::path::Path::new("/tmp"), &env)
    }

    fn load_err(auth: &str) -> ConfigError {
        load(auth).unwrap_err()
    }

    #[test]
    fn algorithms_and_the_jwks_url_arrive_parsed_with_their_defaults() {
        let a = load("[auth.jwks]\nurl = \"https://idp.example/jwks\"\nalgorithms = [\"ES256\"]")
            .unwrap()
            .auth;
        assert_eq!(a.hmac_algorithms, [Algorithm::HS256]);
        assert_eq!(a.leeway, Duration::from_secs(30));
        let j = a.jwks.unwrap();
        assert_eq!((j.url.host(), j.url.path()), (Some("idp.example"), "/jwks"));
        assert_eq!(j.algorithms, [Algorithm::ES256]);
        let secs = [
            j.refresh_interval,
            j.min_refetch_interval,
            j.unknown_kid_ttl,
            j.timeout,
        ];
        assert_eq!(secs.map(|d| d.as_secs()), [300, 30, 300, 5]);
    }

    #[test]
    fn unknown_algorithms_name_the_field_and_the_choices_without_echoing_the_value() {
        for (auth, field) in [
            (
                "hmac_algorithms = [\"HS256\", \"HS999\"]",
                "auth.hmac_algorithms",
            ),
            (
                "[[auth.public_keys]]\nfile = \"k.pem\"\nalgorithms = [\"RS999\"]",
                "auth.public_keys[0].algorithms",
            ),
            (
                "[auth.jwks]\nurl = \"https://idp.example/jwks\"\nalgorithms = [\"none\"]",
                "auth.jwks.algorithms",
            ),
        ] {
            let e = load_err(auth);
            assert_eq!(e.field, field);
            let shown = e.to_string();
            assert!(shown.contains("unknown JWT algorithm"), "{shown}");
            assert!(
                shown.contains("use one of HS256 HS384 HS512 RS256"),
                "{shown}"
            );
            assert!(!shown.contains("999") && !shown.contains("none"), "{shown}");
        }
    }
    #[test]
    fn a_jwks_url_is_checked_once_at_load_naming_the_field_and_the_fix() {
        let jwks = |url: &str| format!("[auth.jwks]\nurl = \"{url}\"\nalgorithms = [\"ES256\"]");
        for (url, problem, fix) in [
            ("not a url", "not a valid URL", "https://host[:port]/path"),
            (
                "http://idp.example/jwks",
                "absolute https:// URL",
                "use https://",
            ),
            (
                "https://u:s3cr3t@idp.example/jwks",
                "credentials",
                "https://host[:port]/path",
            ),
            (
                "https://idp.example/jwks?s3cr3t",
                "query",
                "https://host[:port]/path",
            ),
        ] {
            let e = load_err(&jwks(url));
            assert_eq!(e.field, "auth.jwks.url", "{url}");
            assert!(
                e.problem.contains(problem) && e.fix.contains(fix),
                "{url}: {e}"
            );
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }
}
