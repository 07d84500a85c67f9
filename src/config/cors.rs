//! The `[cors]` section (browser apps) and its validation.

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::time::Duration;

settings! {
    /// CORS: which web origins may call the gateway from a browser. Off while
    /// `allowed_origins` is empty; then browsers keep other origins out, as they would without
    /// a gateway.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct CorsConfig {
        /// Exact origins, `scheme://host[:port]` as browsers send them
        /// (`https://app.example.com`); no wildcards, no path.
        pub allowed_origins: Vec<String> = vec![],
        /// Methods a preflight allows.
        pub allowed_methods: Vec<String> =
            strings(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
        /// Request headers a preflight allows.
        pub allowed_headers: Vec<String> = strings(&[
            "authorization",
            "accept",
            "content-type",
            "if-none-match",
            "x-request-id",
        ]),
        /// How long a browser may keep a preflight's answer.
        #[serde(with = "humantime_serde")]
        pub max_age: Duration = Duration::from_secs(600),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The `[cors]` rules the types cannot express.
pub(super) fn validate(c: &CorsConfig) -> Result<(), ConfigError> {
    for (i, o) in c.allowed_origins.iter().enumerate() {
        let field = format!("cors.allowed_origins[{i}]");
        refuse_if(
            o == "*" || o.eq_ignore_ascii_case("null"),
            &field,
            "is a wildcard or `null`, not an origin",
            "list each web app's origin exactly, e.g. \"https://app.example.com\"",
        )?;
        refuse_if(
            !is_origin(o),
            &field,
            "is not an origin as browsers send it",
            "write scheme://host[:port] in lower case with no path or trailing slash, e.g. \
             \"https://app.example.com\"",
        )?;
    }
    for (i, m) in c.allowed_methods.iter().enumerate() {
        refuse_if(
            http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m,
            format!("cors.allowed_methods[{i}]"),
            "is not an HTTP method",
            "use upper-case method names, e.g. \"GET\"",
        )?;
    }
    for (i, h) in c.allowed_headers.iter().enumerate() {
        refuse_if(
            http::HeaderName::from_bytes(h.as_bytes()).is_err(),
            format!("cors.allowed_headers[{i}]"),
            "is not a header name",
            "use header names, e.g. \"content-type\"",
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_must_be_exact_origins() {
        let with = |origins: &[&str]| CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        };
        assert!(validate(&CorsConfig::default()).is_ok());
        assert!(validate(&with(&["https://app.example.com", "http://127.0.0.1:5173"])).is_ok());
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
            let e = validate(&with(&list)).unwrap_err().to_string();
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
            validate(&methods)
                .unwrap_err()
                .to_string()
                .contains("cors.allowed_methods[0]")
        );
        let headers = CorsConfig {
            allowed_headers: vec!["bad header".into()],
            ..CorsConfig::default()
        };
        assert!(
            validate(&headers)
                .unwrap_err()
                .to_string()
                .contains("cors.allowed_headers[0]")
        );
    }
}
