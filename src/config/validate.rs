//! Rules that the types alone cannot express; each names the field and the fix.

use super::{
    AuthConfig, CacheConfig, Config, ConfigError, CorsConfig, JwksConfig, TelemetryConfig,
    UpstreamConfig,
};
use jsonwebtoken::Algorithm;
use std::str::FromStr;

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

fn err(field: &str, problem: &str, fix: &str) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

fn check_https_url(field: &str, url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url.parse().map_err(|_| {
        err(
            field,
            "not a valid URL",
            "write it as https://host[:port]/path",
        )
    })?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(err(
            field,
            "must be an absolute https:// URL",
            "Cliniko and identity providers are only reached over TLS; use https://",
        ));
    }
    if carries_secrets(&uri) {
        return Err(err(
            field,
            "must not carry credentials or a query string",
            "write it as https://host[:port]/path",
        ));
    }
    Ok(uri)
}

/// Userinfo or a query in a configured URL: refused, because URLs are logged and printed by
/// check-config and there is no place there for a credential.
fn carries_secrets(uri: &http::Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some()
}

/// Parses an algorithm name, naming `field` when it is unknown.
pub fn parse_alg(field: &str, s: &str) -> Result<Algorithm, ConfigError> {
    Algorithm::from_str(s).map_err(|_| {
        err(
            field,
            "unknown JWT algorithm",
            "use one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
        )
    })
}

/// The file store needs its file; enrolment needs a grant to look for.
fn validate_keystore(c: &Config) -> Result<(), ConfigError> {
    if c.keystore.store == super::StoreKind::File && c.keystore.path.as_os_str().is_empty() {
        return Err(err(
            "keystore.path",
            "the file store (keystore.store = \"file\", the default) needs its file",
            "set keystore.path, e.g. \"keys.json\", or keystore.store = \"postgres\"",
        ));
    }
    let g = &c.enrol.grant;
    if c.enrol.enabled && (g.is_empty() || g.chars().any(char::is_whitespace)) {
        return Err(err(
            "enrol.grant",
            "is not a usable grant name (non-empty, no spaces)",
            "use the scope or role value tokens carry, e.g. \"cliniko:connect\"",
        ));
    }
    Ok(())
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    super::policy::validate(&c.policy)?;
    validate_keystore(c)?;
    validate_telemetry(&c.telemetry)?;
    validate_cors(&c.cors)?;
    validate_server(c)?;
    validate_auth(&c.auth)?;
    validate_cache(&c.cache)?;
    super::compression::validate(&c.compression)?;
    super::ratelimit::validate(&c.ratelimit)?;
    super::redis::validate(&c.redis)?;
    super::retries::validate(&c.upstream.retries)?;
    validate_upstream(&c.upstream)
}

/// `[server]`, with the rules that tie it to `[admin]` and the upstream timeouts.
fn validate_server(c: &Config) -> Result<(), ConfigError> {
    let s = &c.server;
    if !(8192..=1024 * 1024).contains(&s.max_header_bytes) {
        return Err(err(
            "server.max_header_bytes",
            "out of range",
            "use a value between 8192 and 1048576",
        ));
    }
    if s.max_headers == 0 || s.max_headers > 1000 {
        return Err(err("server.max_headers", "out of range", "use 1 to 1000"));
    }
    // Port 0 means "any free port", so two zeros never collide.
    if let Some(admin) = c.admin.listen
        && admin == s.listen
        && admin.port() != 0
    {
        return Err(err(
            "admin.listen",
            "must differ from server.listen: the proxy port never serves admin routes",
            "use another port, e.g. 127.0.0.1:9901",
        ));
    }
    if s.max_connections == 0 {
        return Err(err(
            "server.max_connections",
            "must be at least 1",
            "use e.g. 10000",
        ));
    }
    if c.admin.max_connections == 0 {
        return Err(err(
            "admin.max_connections",
            "must be at least 1",
            "use e.g. 64",
        ));
    }
    if !(1..=1000).contains(&s.max_streams_per_connection) {
        return Err(err(
            "server.max_streams_per_connection",
            "out of range",
            "use 1 to 1000 (e.g. 100)",
        ));
    }
    if s.public_base_url.is_none() && s.listen.ip().is_unspecified() {
        return Err(err(
            "server.public_base_url",
            "must be set when listening on all interfaces (links would point at 0.0.0.0)",
            "set it to the URL callers use, e.g. https://cliniko-gateway.internal",
        ));
    }
    if s.tls_cert_file.is_some() != s.tls_key_file.is_some() {
        return Err(err(
            "server.tls_cert_file",
            "inbound TLS needs both a certificate and a key",
            "set both server.tls_cert_file and server.tls_key_file, or neither",
        ));
    }
    for (f, d) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.send_timeout", s.send_timeout),
        ("upstream.connect_timeout", c.upstream.connect_timeout),
        ("upstream.timeout", c.upstream.timeout),
    ] {
        if d.is_zero() {
            return Err(err(
                f,
                "must be longer than zero",
                "use a duration such as \"10s\"",
            ));
        }
    }
    s.public_base_url
        .as_deref()
        .map_or(Ok(()), check_public_base)
}

fn check_public_base(u: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = u.parse().map_err(|_| {
        err(
            "server.public_base_url",
            "not a valid URL",
            "write it as https://gateway.example",
        )
    })?;
    let ok_scheme = matches!(uri.scheme_str(), Some("http" | "https"));
    let no_path = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !ok_scheme || uri.authority().is_none() || !no_path {
        return Err(err(
            "server.public_base_url",
            "must be scheme and host only",
            "write it as https://gateway.example (no path; the gateway serves /v1/...)",
        ));
    }
    Ok(())
}

fn validate_auth(a: &AuthConfig) -> Result<(), ConfigError> {
    if a.user_claim.is_empty() {
        return Err(err(
            "auth.user_claim",
            "is empty",
            "name the claim holding the user, e.g. \"sub\"",
        ));
    }
    if a.hmac_secret.is_none() && a.public_keys.is_empty() && a.jwks.is_none() {
        return Err(err(
            "auth",
            "no way to verify tokens is configured",
            "set CLINIKO_GATEWAY_HMAC_SECRET (or auth.hmac_secret_file), add [[auth.public_keys]], or add [auth.jwks]",
        ));
    }
    if let Some(secret) = &a.hmac_secret {
        use secrecy::ExposeSecret;
        if secret.expose_secret().len() < 32 {
            return Err(err(
                "auth.hmac_secret",
                "the HMAC secret is shorter than 32 bytes",
                "use at least 32 random bytes (e.g. `openssl rand -base64 48`)",
            ));
        }
        if a.hmac_algorithms.is_empty() {
            return Err(err(
                "auth.hmac_algorithms",
                "is empty",
                "list e.g. [\"HS256\"]",
            ));
        }
    }
    for alg in &a.hmac_algorithms {
        if !is_hmac(parse_alg("auth.hmac_algorithms", alg)?) {
            return Err(err(
                "auth.hmac_algorithms",
                "only HS256/HS384/HS512 belong here",
                "list public-key algorithms on the key in [[auth.public_keys]] or [auth.jwks]",
            ));
        }
    }
    for (i, k) in a.public_keys.iter().enumerate() {
        let f = format!("auth.public_keys[{i}].algorithms");
        if k.algorithms.is_empty() {
            return Err(err(
                &f,
                "is empty",
                "list the algorithms this key signs with, e.g. [\"RS256\"]",
            ));
        }
        for alg in &k.algorithms {
            if is_hmac(parse_alg(&f, alg)?) {
                return Err(err(
                    &f,
                    "an HMAC algorithm cannot be used with a public key",
                    "use RS*/PS*/ES*/EdDSA",
                ));
            }
        }
    }
    a.jwks.as_ref().map_or(Ok(()), validate_jwks)
}

fn validate_jwks(j: &JwksConfig) -> Result<(), ConfigError> {
    check_https_url("auth.jwks.url", &j.url)?;
    if j.algorithms.is_empty() {
        return Err(err(
            "auth.jwks.algorithms",
            "is empty",
            "list e.g. [\"RS256\"]",
        ));
    }
    for alg in &j.algorithms {
        if is_hmac(parse_alg("auth.jwks.algorithms", alg)?) {
            return Err(err(
                "auth.jwks.algorithms",
                "HMAC algorithms cannot come from a JWKS",
                "use RS*/PS*/ES*/EdDSA",
            ));
        }
    }
    if j.refresh_interval.is_zero() || j.timeout.is_zero() {
        return Err(err(
            "auth.jwks.refresh_interval",
            "must be longer than zero",
            "use e.g. \"5m\"",
        ));
    }
    Ok(())
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

fn validate_cors(c: &CorsConfig) -> Result<(), ConfigError> {
    for (i, o) in c.allowed_origins.iter().enumerate() {
        let field = format!("cors.allowed_origins[{i}]");
        if o == "*" || o.eq_ignore_ascii_case("null") {
            return Err(err(
                &field,
                "is a wildcard or `null`, not an origin",
                "list each web app's origin exactly, e.g. \"https://app.example.com\"",
            ));
        }
        if !is_origin(o) {
            return Err(err(
                &field,
                "is not an origin as browsers send it",
                "write scheme://host[:port] in lower case with no path or trailing slash, e.g. \
                 \"https://app.example.com\"",
            ));
        }
    }
    for (i, m) in c.allowed_methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
            return Err(err(
                &format!("cors.allowed_methods[{i}]"),
                "is not an HTTP method",
                "use upper-case method names, e.g. \"GET\"",
            ));
        }
    }
    for (i, h) in c.allowed_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(err(
                &format!("cors.allowed_headers[{i}]"),
                "is not a header name",
                "use header names, e.g. \"content-type\"",
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]` exactly as the `Origin` header spells it (RFC 6454 §6.1).
fn is_origin(s: &str) -> bool {
    let Ok(uri) = s.parse::<http::Uri>() else {
        return false;
    };
    let host_char = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri
            .authority()
            .is_some_and(|a| a.as_str().bytes().all(host_char))
        && !s.ends_with('/')
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        && s.to_ascii_lowercase() == s
}

fn validate_telemetry(t: &TelemetryConfig) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err(err(
            "telemetry.sample_ratio",
            "must be between 0 and 1",
            "use e.g. 1.0 (keep every trace) or 0.1 (keep one in ten)",
        ));
    }
    if t.service_name.trim().is_empty() {
        return Err(err(
            "telemetry.service_name",
            "is empty",
            "name the service, e.g. \"cliniko-gateway\"",
        ));
    }
    let Some(url) = &t.otlp_endpoint else {
        return Ok(());
    };
    if !cfg!(feature = "otel") {
        return Err(err(
            "telemetry.otlp_endpoint",
            "this binary was built without OpenTelemetry support",
            "rebuild with `--features otel` (a default feature), or unset telemetry.otlp_endpoint",
        ));
    }
    let uri: http::Uri = url.parse().map_err(|_| {
        err(
            "telemetry.otlp_endpoint",
            "not a valid URL",
            "write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.authority().is_none()
        || carries_secrets(&uri)
    {
        return Err(err(
            "telemetry.otlp_endpoint",
            "must be an absolute http:// or https:// URL without credentials or a query (it is printed by check-config)",
            "write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
        ));
    }
    Ok(())
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
    fn cors_origins_must_be_exact_origins() {
        let with = |origins: &[&str]| CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        };
        assert!(validate_cors(&CorsConfig::default()).is_ok());
        assert!(
            validate_cors(&with(&["https://app.example.com", "http://127.0.0.1:5173"])).is_ok()
        );
        for (i, bad) in [
            "*",
            "null",
            "https://web.example.net/",
            "https://web.example.net/path",
            "https://Web.example.net",
            "web.example.net",
            "ftp://web.example.net",
            "https://user@web.example.net",
            "https://*.example.com",
        ]
        .iter()
        .enumerate()
        {
            let mut list = vec!["https://ok.example"; i + 1];
            list[i] = bad;
            let e = validate_cors(&with(&list)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("cors.allowed_origins[{i}]")),
                "{bad}: {e}"
            );
            if bad.len() > 4 {
                assert!(!e.contains(bad), "never echoes the value: {e}");
            }
        }
        let methods = CorsConfig {
            allowed_methods: vec!["get".into()],
            ..CorsConfig::default()
        };
        assert!(
            validate_cors(&methods)
                .unwrap_err()
                .to_string()
                .contains("cors.allowed_methods[0]")
        );
        let headers = CorsConfig {
            allowed_headers: vec!["bad header".into()],
            ..CorsConfig::default()
        };
        assert!(
            validate_cors(&headers)
                .unwrap_err()
                .to_string()
                .contains("cors.allowed_headers[0]")
        );
    }

    fn telemetry(endpoint: Option<&str>, ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(String::from),
            sample_ratio: ratio,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn telemetry_off_by_default_and_valid() {
        let t = TelemetryConfig::default();
        assert!(t.otlp_endpoint.is_none());
        assert!(validate_telemetry(&t).is_ok());
    }

    #[test]
    fn telemetry_sample_ratio_must_be_a_share() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = validate_telemetry(&telemetry(None, bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("telemetry.sample_ratio"), "{e}");
        }
        for ok in [0.0, 0.25, 1.0] {
            assert!(validate_telemetry(&telemetry(None, ok)).is_ok(), "{ok}");
        }
    }

    #[cfg(feature = "otel")]
    #[test]
    fn telemetry_endpoint_must_be_an_http_url() {
        for bad in [
            "127.0.0.1:4318",
            "not a url",
            "ftp://collector:4318",
            "http://collector:4318/?token=x",
            "https://user:token=x@collector:4318",
            "/v1/traces",
        ] {
            let e = validate_telemetry(&telemetry(Some(bad), 1.0))
                .unwrap_err()
                .to_string();
            assert!(e.contains("telemetry.otlp_endpoint"), "{bad}: {e}");
            assert!(!e.contains("token=x"), "the value is not echoed: {e}");
        }
        for ok in ["http://127.0.0.1:4318", "https://otel.internal/otlp"] {
            assert!(
                validate_telemetry(&telemetry(Some(ok), 1.0)).is_ok(),
                "{ok}"
            );
        }
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn telemetry_endpoint_needs_the_feature() {
        let e = validate_telemetry(&telemetry(Some("http://127.0.0.1:4318"), 1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features otel"), "{e}");
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
