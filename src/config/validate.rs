//! Each section's own rules live beside its types; here are the helpers they share, the rules
//! of `[cache]` and `[upstream]`, and [`validate`], which runs them all.

use super::{CacheConfig, Config, ConfigError, UpstreamConfig};
use std::time::Duration;

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

pub(super) fn err(field: &str, problem: &str, fix: &str) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

/// The problems [`https_url`] finds, each with its fix; they hold no value, so the loader
/// shows them as they are when serde reports one (see [`OWN_ERRORS`]).
const URL_INVALID: (&str, &str) = ("not a valid URL", "write it as https://host[:port]/path");
const URL_NOT_HTTPS: (&str, &str) = (
    "must be an absolute https:// URL",
    "Cliniko and identity providers are only reached over TLS; use https://",
);
const URL_SECRETS: (&str, &str) = (
    "must not carry credentials or a query string",
    "write it as https://host[:port]/path",
);

/// What this crate's own deserialisers report (serde carries only a message), with the fix.
/// None holds a value, so the loader shows them whole; any other message may echo a value.
pub(super) const OWN_ERRORS: [(&str, &str); 4] = [
    (super::auth::UNKNOWN_ALG, super::auth::ALG_FIX),
    URL_INVALID,
    URL_NOT_HTTPS,
    URL_SECRETS,
];

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
    https_uri(url).map_err(|(problem, fix)| err(field, problem, fix))
}

/// `#[serde(with = "https_url")]`: an absolute `https://` URL without credentials or query,
/// checked once at load and held as an [`http::Uri`].
pub(super) mod https_url {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(uri: &http::Uri, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(uri)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<http::Uri, D::Error> {
        super::https_uri(&String::deserialize(d)?).map_err(|(problem, _)| D::Error::custom(problem))
    }
}

/// Userinfo or a query in a configured URL: refused, because URLs are logged and printed by
/// check-config and there is no place there for a credential.
pub(super) fn carries_secrets(uri: &http::Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some()
}

/// Every section's rules; each error names the field and the fix.
pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    super::policy::validate(&c.policy)?;
    super::keystore::validate(&c.keystore, &c.enrol)?;
    super::telemetry::validate(&c.telemetry)?;
    super::cors::validate(&c.cors)?;
    super::server::validate(&c.server, &c.admin)?;
    super::auth::validate(&c.auth)?;
    validate_cache(&c.cache)?;
    super::compression::validate(&c.compression)?;
    super::ratelimit::validate(&c.ratelimit)?;
    super::redis::validate(&c.redis)?;
    super::retries::validate(&c.upstream.retries)?;
    non_zero(&[
        ("upstream.connect_timeout", c.upstream.connect_timeout),
        ("upstream.timeout", c.upstream.timeout),
    ])?;
    validate_upstream(&c.upstream)
}

fn validate_cache(k: &CacheConfig) -> Result<(), ConfigError> {
    // A fill holds the answer while reading it, out of the 1/16 of the capacity kept for that.
    if k.enabled && (k.max_entry_bytes == 0 || k.max_entry_bytes > k.capacity_bytes / 16) {
        return Err(err(
            "cache.max_entry_bytes",
            "must be between 1 and cache.capacity_bytes / 16",
            "use e.g. 1048576 (1 MiB) with a capacity of 268435456 (256 MiB)",
        ));
    }
    if k.max_entry_bytes > u64::from(u32::MAX) {
        return Err(err(
            "cache.max_entry_bytes",
            "too large",
            "keep entries under 4 GiB (1 MiB is typical)",
        ));
    }
    for (i, r) in k.rules.iter().enumerate() {
        if !(r.prefix == "/v1" || r.prefix.starts_with("/v1/"))
            || r.prefix.ends_with('/')
            || r.prefix.contains('?')
        {
            return Err(err(
                &format!("cache.rules[{i}].prefix"),
                "must be a /v1/... path without a trailing slash or query",
                "write it like \"/v1/practitioners\"",
            ));
        }
    }
    Ok(())
}

fn validate_upstream(u: &UpstreamConfig) -> Result<(), ConfigError> {
    if !valid_user_agent(&u.user_agent) {
        return Err(err(
            "upstream.user_agent",
            "Cliniko requires `App name (contact email)`",
            "write it like \"Acme Clinic Gateway (it@acme.example)\"",
        ));
    }
    if !u.url_template.contains("{shard}") {
        return Err(err(
            "upstream.url_template",
            "has no {shard} placeholder",
            "use https://api.{shard}.cliniko.com/v1",
        ));
    }
    if !(1..=1000).contains(&u.max_in_flight_per_user) {
        return Err(err(
            "upstream.max_in_flight_per_user",
            "out of range",
            "use 1 to 1000, well below Cliniko's concurrent streams per connection (default 16)",
        ));
    }
    check_https_url(
        "upstream.url_template",
        &u.url_template.replace("{shard}", "au1"),
    )?;
    for (shard, url) in &u.shards {
        let f = format!("upstream.shards.{shard}");
        if !is_shard_name(shard) {
            return Err(err(
                &f,
                "not a shard name",
                "shard names look like au1, uk2, ca1",
            ));
        }
        check_https_url(&f, url)?;
    }
    Ok(())
}

/// `#[serde(default = "secs::<30>")]`: a default of that many seconds.
pub(super) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// The first of `durations` that is zero, named.
pub(super) fn non_zero(durations: &[(&str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((f, _)) => Err(err(
            f,
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
