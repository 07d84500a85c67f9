//! The ground floor of `config`: the error every rule returns and the helpers the sections'
//! rules share. Each section's own rules live beside its types; `config::check` runs them all.
//! Imports nothing of `config`, so no section and no rule can import in a loop.

use std::time::Duration;

/// A start-up configuration problem: which field, what is wrong, how to fix it.
///
/// Never carries a field's value: values can be secrets.
#[derive(Debug, thiserror::Error)]
#[error("config error in `{field}`: {problem}; fix: {fix}")]
pub struct ConfigError {
    /// Dotted path of the field (or the env var / file involved).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// True when `s` is a Cliniko shard name (`au1`, `uk2`, ...).
pub fn is_shard_name(s: &str) -> bool {
    is_shard_name_bytes(s.as_bytes())
}

/// [`is_shard_name`] on raw bytes (link rewriting reads them straight from a body).
#[inline]
pub fn is_shard_name_bytes(b: &[u8]) -> bool {
    b.len() >= 3
        && b.len() <= 4
        && b[..2].iter().all(u8::is_ascii_lowercase)
        && b[2..].iter().all(u8::is_ascii_digit)
}

/// A rule: `bad` is an error naming `field`, what is wrong and the fix. The sections' rules
/// are lists of these, checked in order, the first broken one reported.
pub(super) fn refuse_if(
    bad: bool,
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Result<(), ConfigError> {
    match bad {
        true => Err(ConfigError::new(field, problem, fix)),
        false => Ok(()),
    }
}

/// The problems [`https_uri`] finds, each with its fix; they hold no value, so the loader
/// shows them as they are when serde reports one (see [`own_error`]).
const URL_INVALID: (&str, &str) = ("not a valid URL", "write it as https://host[:port]/path");
const URL_NOT_HTTPS: (&str, &str) = (
    "must be an absolute https:// URL",
    "Cliniko and identity providers are only reached over TLS; use https://",
);
const URL_SECRETS: (&str, &str) = (
    "must not carry credentials or a query string",
    "write it as https://host[:port]/path",
);

/// Starts and splits the message of this crate's own deserialisers (`MARK problem MARK fix`).
/// serde's messages and the other crates' all begin with fixed text, never with this mark, so
/// the loader tells ours apart without matching their words, and shows them whole: they hold
/// no value, while any other message may echo one.
const MARK: char = '\u{1}';

/// A deserialiser's error that reaches the config error as this problem and fix.
pub(super) fn own_error<E: serde::de::Error>((problem, fix): (&str, &str)) -> E {
    E::custom(format_args!("{MARK}{problem}{MARK}{fix}"))
}

/// The problem and fix of a message made by [`own_error`].
pub(super) fn own_parts(msg: &str) -> Option<(&str, &str)> {
    msg.strip_prefix(MARK)?.split_once(MARK)
}

fn https_uri(url: &str) -> Result<http::Uri, (&'static str, &'static str)> {
    let uri: http::Uri = url.parse().map_err(|_| URL_INVALID)?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(URL_NOT_HTTPS);
    }
    if carries_secrets(&uri) {
        return Err(URL_SECRETS);
    }
    Ok(uri)
}

pub(super) fn check_https_url(field: &str, url: &str) -> Result<http::Uri, ConfigError> {
    https_uri(url).map_err(|(problem, fix)| ConfigError::new(field, problem, fix))
}

/// `#[serde(with = "https_url")]`: an absolute `https://` URL without credentials or query,
/// checked once at load and held as an [`http::Uri`].
pub(super) mod https_url {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(uri: &http::Uri, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(uri)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<http::Uri, D::Error> {
        super::https_uri(&String::deserialize(d)?).map_err(super::own_error)
    }
}

/// `#[serde(with = "https_urls")]`: names mapped to [`https_url`]s (an error names its key).
pub(super) mod https_urls {
    use serde::{Deserialize, Deserializer, Serializer};
    type Urls = std::collections::BTreeMap<String, http::Uri>;

    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Url(#[serde(with = "super::https_url")] http::Uri);

    pub fn serialize<S: Serializer>(m: &Urls, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, v.to_string())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Urls, D::Error> {
        let urls = std::collections::BTreeMap::<String, Url>::deserialize(d)?;
        Ok(urls.into_iter().map(|(k, Url(u))| (k, u)).collect())
    }
}

/// Userinfo or a query in a configured URL: refused, because URLs are logged and printed by
/// check-config and there is no place there for a credential.
pub(super) fn carries_secrets(uri: &http::Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some()
}

/// `#[serde(default = "count::<32>")]`: a default of that number.
pub(super) fn count<const N: usize>() -> usize {
    N
}

/// `#[serde(default = "secs::<30>")]`: a default of that many seconds.
pub(super) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// The first of `durations` that is zero, named.
pub(super) fn non_zero(durations: &[(&str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((f, _)) => Err(ConfigError::new(
            *f,
            "must be longer than zero",
            "use a duration such as \"10s\"",
        )),
        None => Ok(()),
    }
}

/// `Name (something@host)`: Cliniko's documented User-Agent form.
pub fn valid_user_agent(ua: &str) -> bool {
    let Some((name, rest)) = ua.split_once(" (") else {
        return false;
    };
    let Some(email) = rest.strip_suffix(')') else {
        return false;
    };
    let visible = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    !name.trim().is_empty()
        && visible(ua)
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
}

/// Whether `s` is a plain token, kept as it is in records and labels: 1-128 of
/// `A-Z a-z 0-9 . _ ~ : @ -` (`context::plain` prints anything else as `?`).
pub fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        for ok in ["au1", "uk2", "ca1", "au12"] {
            assert!(is_shard_name(ok), "{ok}");
        }
        for bad in ["", "au", "AU1", "a1", "au123", "au1.evil", "1au", "au-1"] {
            assert!(!is_shard_name(bad), "{bad}");
        }
    }

    #[test]
    fn user_agents() {
        assert!(valid_user_agent("Acme Gateway (it@acme.example)"));
        assert!(!valid_user_agent("curl/8"));
        assert!(!valid_user_agent("Acme (nobody)"));
        assert!(!valid_user_agent(" (a@b.c)"));
    }

    #[test]
    fn urls_that_would_print_a_credential_are_refused_without_echoing_it() {
        for bad in [
            "https://user:s3cr3t@idp.example/jwks.json",
            "https://idp.example/jwks.json?token=s3cr3t",
        ] {
            let e = check_https_url("auth.jwks.url", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("auth.jwks.url"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        assert!(check_https_url("auth.jwks.url", "https://idp.example:8443/jwks.json").is_ok());
    }
}
