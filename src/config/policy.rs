//! The `[policy]` section and its validation (called from `config::validate`).

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

settings! {
    /// Which claims carry permissions, what each named grant allows, and what a caller whose
    /// token carries none of those claims gets.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct PolicyConfig {
        /// Claims whose values name grants: a space-separated string (`scope`) or an array of
        /// strings (`roles`); a dotted name reaches into nested objects (`realm_access.roles`).
        pub claims: Vec<String> = vec!["scope".into(), "scp".into(), "roles".into()],
        /// Grants of a caller whose token has none of `claims`. Empty (the default) = refuse.
        pub default: Vec<String> = Vec::new(),
        /// Named grants, e.g. `cliniko:read`.
        pub grants: BTreeMap<String, GrantConfig> = BTreeMap::new(),
    }
}

/// One grant: these methods on these path prefixes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`, or `*` for all of them.
    pub methods: Vec<String>,
    /// Path prefixes under `/v1`, matched on whole segments (`/v1` = everything).
    pub paths: Vec<String>,
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*",
];

/// Checks the section; every error names the field and the fix.
pub fn validate(p: &PolicyConfig) -> Result<(), ConfigError> {
    for (i, c) in p.claims.iter().enumerate() {
        refuse_if(
            c.trim().is_empty(),
            format!("policy.claims[{i}]"),
            "is empty",
            "name a claim, e.g. \"scope\" or \"roles\"",
        )?;
    }
    for (name, g) in &p.grants {
        let field = format!("policy.grants.\"{name}\"");
        refuse_if(
            name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace),
            &field,
            "is not a usable grant name (1-128 characters, no spaces)",
            "use the scope or role name as it appears in tokens, e.g. \"cliniko:read\"",
        )?;
        refuse_if(
            g.methods.is_empty(),
            format!("{field}.methods"),
            "is empty, so the grant allows nothing",
            "list methods, e.g. [\"GET\", \"HEAD\"], or [\"*\"] for all",
        )?;
        if let Some(m) = g.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return Err(ConfigError::new(
                format!("{field}.methods"),
                format!("{m:?} is not a method the gateway forwards"),
                "use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (upper case) or \"*\"",
            ));
        }
        refuse_if(
            g.paths.is_empty(),
            format!("{field}.paths"),
            "is empty, so the grant allows nothing",
            "list path prefixes, e.g. [\"/v1/appointments\"], or [\"/v1\"] for everything",
        )?;
        for path in &g.paths {
            if let Some(problem) = bad_prefix(path) {
                return Err(ConfigError::new(
                    format!("{field}.paths"),
                    format!("{path:?} {problem}"),
                    "write a /v1 path of plain segments without a trailing slash, e.g. \"/v1/patients\"",
                ));
            }
        }
    }
    for d in &p.default {
        refuse_if(
            !p.grants.contains_key(d),
            "policy.default",
            format!("names {d:?}, which is not under [policy.grants]"),
            "define the grant or remove it from policy.default",
        )?;
    }
    Ok(())
}

/// Why a grant prefix is unusable, if it is: it must be a path the guard would accept.
fn bad_prefix(p: &str) -> Option<&'static str> {
    if p != "/v1" && !p.starts_with("/v1/") {
        return Some("does not start with /v1");
    }
    if p.ends_with('/') {
        return Some("ends with '/'");
    }
    if p.contains(['%', '?', '#', '\\']) || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Some("contains a character paths never match on");
    }
    if p[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("has an empty or dot segment");
    }
    None
}
