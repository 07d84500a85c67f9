//! Least privilege: in the journey right after auth and before credentials.
//!
//! Maps the verified token's claims (`scope` as a space-separated string or an array, `roles`,
//! any custom claim; configurable) to named grants, each a set of methods and `/v1` path
//! prefixes matched on whole segments. A request no grant of the caller allows is refused with
//! 403 `forbidden` naming the missing permission; nothing is looked up in the key store,
//! served from the cache or sent to Cliniko. A caller whose token carries none of the
//! configured claims gets the `default` grants, which are none unless configured: the gateway
//! fails closed.

mod layer;

use crate::config::{GrantConfig, PolicyConfig};
use crate::error::GatewayError;
use http::Method;
use serde_json::{Map, Value};

/// The methods the guard lets through; `*` in a grant means all of them.
pub const ALL_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// True when `g` allows `method` on `path` (`*` in its methods stands for [`ALL_METHODS`]).
fn allows(g: &GrantConfig, method: &Method, path: &str) -> bool {
    let star = ALL_METHODS.contains(method);
    g.methods
        .iter()
        .any(|m| (star && m == "*") || m == method.as_str())
        && g.paths.iter().any(|p| under(path, p))
}

/// True when `path` is `prefix` or lies below it on a segment boundary
/// (`/v1/appointments` covers `/v1/appointments/7`, not `/v1/appointments_archive`).
pub fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The policy, checked as configured: [`crate::config::policy::validate`] has already
/// refused unknown methods, paths outside `/v1` and default grants that do not exist.
#[derive(Debug)]
pub struct Policy(PolicyConfig);

impl Policy {
    /// Takes `cfg` (already validated); warns loudly when it can never allow anything.
    pub fn new(cfg: &PolicyConfig) -> Policy {
        if cfg.grants.is_empty() {
            tracing::warn!(
                "policy: no grants are configured, so every proxied request will be refused \
                 with 403 forbidden; add [policy.grants.<name>] sections \
                 (see docs/security.md, Least privilege)"
            );
        }
        Policy(cfg.clone())
    }

    /// Calls `f` with each configured grant a token's claims give (the default ones when it
    /// carries none of the configured claims) until `f` says true; whether it did. Nothing is
    /// collected: this runs on every request.
    fn any_granted(&self, claims: &Map<String, Value>, mut f: impl FnMut(&str) -> bool) -> bool {
        let mut any_claim = false;
        for v in self.0.claims.iter().filter_map(|name| claim(claims, name)) {
            // A present claim decides, even when empty or of the wrong type: falling back to
            // the default then would turn a malformed claim into more access, not less.
            any_claim = true;
            if names_in(v).any(|g| self.0.grants.contains_key(g) && f(g)) {
                return true;
            }
        }
        !any_claim && self.0.default.iter().any(|g| f(g))
    }

    /// Allows the call, or says which permission is missing.
    pub fn check(
        &self,
        claims: &Map<String, Value>,
        method: &Method,
        path: &str,
    ) -> Result<(), GatewayError> {
        let grants = &self.0.grants;
        let granted = |g: &str| grants.get(g).is_some_and(|g| allows(g, method, path));
        if self.any_granted(claims, granted) {
            return Ok(());
        }
        let mut needed = format!("{method} {}", shown_prefix(path));
        let would: Vec<&str> = grants
            .iter()
            .filter(|(_, g)| allows(g, method, path))
            .map(|(name, _)| name.as_str())
            .take(5)
            .collect();
        if !would.is_empty() {
            needed.push_str(&format!(
                " (configured grants that do: {})",
                would.join(", ")
            ));
        }
        Err(GatewayError::Forbidden { needed })
    }

    /// Whether the token's claims carry `grant` as a value of one of the policy's claims,
    /// whether or not `[policy.grants]` defines it: how a route of the gateway's own outside
    /// `/v1` (enrolment) is allowed by a grant that lists no paths.
    pub fn names(&self, claims: &Map<String, Value>, grant: &str) -> bool {
        (self.0.claims.iter())
            .filter_map(|name| claim(claims, name))
            .flat_map(names_in)
            .any(|g| g == grant)
    }
}

/// The grant names a claim's value holds: the words of a string (`scope`), the strings of
/// an array (`roles`); none for any other type.
fn names_in(v: &Value) -> impl Iterator<Item = &str> {
    let (words, items) = match v {
        Value::String(s) => (Some(s.as_str()), &[][..]),
        Value::Array(items) => (None, items.as_slice()),
        _ => (None, &[][..]),
    };
    let words = words.into_iter().flat_map(str::split_ascii_whitespace);
    words.chain(items.iter().filter_map(Value::as_str))
}

/// A claim by exact name, else by a dotted path into nested objects (`realm_access.roles`).
/// Exact names come first because namespaced claims (`https://acme.example/roles`) contain dots.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// `/v1/<resource>` for the error message: enough to name the grant to ask for, without
/// echoing ids or anything unusual the caller put in the path.
fn shown_prefix(path: &str) -> String {
    let seg = path
        .strip_prefix("/v1/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let plain = !seg.is_empty()
        && seg.len() <= 64
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("/v1/{seg}")
    } else {
        "/v1".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::validate;
    use proptest::prelude::*;
    use serde_json::json;

    impl Policy {
        /// The names of the grants a token's claims give (for diagnostics and tests).
        fn grant_names(&self, claims: &Map<String, Value>) -> Vec<String> {
            let mut found: Vec<String> = Vec::new();
            self.any_granted(claims, |g| {
                if !found.iter().any(|f| f == g) {
                    found.push(g.to_string());
                }
                false
            });
            found
        }
    }

    fn policy(toml_text: &str) -> Policy {
        let cfg: PolicyConfig = toml::from_str(toml_text).unwrap();
        validate(&cfg).unwrap();
        Policy::new(&cfg)
    }

    const EXAMPLE: &str = r#"
claims = ["scope", "roles", "https://acme.example/perms", "realm_access.roles"]
default = []
[grants."cliniko:read"]
methods = ["GET", "HEAD"]
paths = ["/v1"]
[grants."cliniko:appointments:write"]
methods = ["POST", "PATCH"]
paths = ["/v1/appointments", "/v1/individual_appointments"]
[grants.admin]
methods = ["*"]
paths = ["/v1"]
"#;

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn code(p: &Policy, c: &Map<String, Value>, m: &str, path: &str) -> &'static str {
        match p.check(c, &Method::from_bytes(m.as_bytes()).unwrap(), path) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn scope_strings_arrays_and_custom_claims_grant() {
        let p = policy(EXAMPLE);
        let read = claims(json!({"scope": "openid cliniko:read profile"}));
        assert_eq!(code(&p, &read, "GET", "/v1/patients/7"), "ok");
        assert_eq!(code(&p, &read, "HEAD", "/v1"), "ok");
        assert_eq!(code(&p, &read, "PATCH", "/v1/patients/7"), "forbidden");
        let write = claims(json!({"roles": ["cliniko:appointments:write"]}));
        assert_eq!(code(&p, &write, "POST", "/v1/appointments"), "ok");
        assert_eq!(
            code(&p, &write, "PATCH", "/v1/individual_appointments/9"),
            "ok"
        );
        assert_eq!(code(&p, &write, "GET", "/v1/appointments"), "forbidden");
        assert_eq!(
            code(&p, &write, "DELETE", "/v1/appointments/9"),
            "forbidden"
        );
        // Whole segments only.
        assert_eq!(
            code(&p, &write, "POST", "/v1/appointments_archive"),
            "forbidden"
        );
        assert_eq!(code(&p, &write, "POST", "/v1/appointment"), "forbidden");
        let custom = claims(json!({"https://acme.example/perms": ["admin"]}));
        assert_eq!(code(&p, &custom, "DELETE", "/v1/patients/1"), "ok");
        let nested = claims(json!({"realm_access": {"roles": ["cliniko:read"]}}));
        assert_eq!(code(&p, &nested, "GET", "/v1/x"), "ok");
        assert_eq!(p.grant_names(&nested), vec!["cliniko:read"]);
    }

    #[test]
    fn no_claim_wrong_types_and_unknown_names_are_refused() {
        let p = policy(EXAMPLE);
        for c in [
            json!({}),
            json!({"scope": ""}),
            json!({"scope": 7}),
            json!({"scope": {"cliniko:read": true}}),
            json!({"roles": [1, 2, null]}),
            json!({"scope": "cliniko:READ"}),
            json!({"scope": "cliniko:read2"}),
            json!({"Scope": "cliniko:read"}),
        ] {
            assert_eq!(
                code(&p, &claims(c.clone()), "GET", "/v1/patients"),
                "forbidden",
                "{c}"
            );
        }
    }

    #[test]
    fn the_default_applies_only_without_any_claim() {
        let mut cfg: PolicyConfig = toml::from_str(EXAMPLE).unwrap();
        cfg.default = vec!["cliniko:read".into()];
        validate(&cfg).unwrap();
        let p = Policy::new(&cfg);
        assert_eq!(
            code(&p, &claims(json!({"sub": "a"})), "GET", "/v1/patients"),
            "ok"
        );
        // A present (even useless) claim decides: no silent fallback to the default.
        assert_eq!(
            code(
                &p,
                &claims(json!({"scope": "openid"})),
                "GET",
                "/v1/patients"
            ),
            "forbidden"
        );
        assert_eq!(
            code(&p, &claims(json!({"scope": 5})), "GET", "/v1/patients"),
            "forbidden"
        );
    }

    #[test]
    fn the_code_default_denies_everything() {
        let p = Policy::new(&PolicyConfig::default());
        let c = claims(json!({"scope": "cliniko:read", "roles": ["admin"]}));
        assert_eq!(code(&p, &c, "GET", "/v1/patients"), "forbidden");
    }

    #[test]
    fn the_message_names_the_missing_permission() {
        let p = policy(EXAMPLE);
        let c = claims(json!({"scope": "cliniko:read"}));
        let e = p
            .check(&c, &Method::PATCH, "/v1/patients/7")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs a grant allowing PATCH /v1/patients"),
            "{e}"
        );
        assert!(e.contains("admin"), "{e}");
        assert!(!e.contains('7'), "ids are not echoed: {e}");
        let e = p
            .check(&c, &Method::POST, "/v1/weird%41x/1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("POST /v1 "), "{e}");
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        let field = |t: &str| {
            let cfg: PolicyConfig = toml::from_str(t).unwrap();
            let e = validate(&cfg).unwrap_err();
            assert!(!e.fix.is_empty());
            e.field
        };
        let g = |m: &str, p: &str| format!("[grants.g]\nmethods = {m}\npaths = {p}\n");
        assert_eq!(field(&g("[]", "[\"/v1\"]")), "policy.grants.\"g\".methods");
        assert_eq!(
            field(&g("[\"get\"]", "[\"/v1\"]")),
            "policy.grants.\"g\".methods"
        );
        assert_eq!(
            field(&g("[\"TRACE\"]", "[\"/v1\"]")),
            "policy.grants.\"g\".methods"
        );
        for bad in [
            "[]",
            "[\"/v2\"]",
            "[\"/v1/\"]",
            "[\"/v1/../x\"]",
            "[\"/v1//x\"]",
            "[\"/v1/a%2fb\"]",
            "[\"v1\"]",
            "[\"/v1x\"]",
        ] {
            assert_eq!(
                field(&g("[\"GET\"]", bad)),
                "policy.grants.\"g\".paths",
                "{bad}"
            );
        }
        assert_eq!(field("default = [\"nope\"]"), "policy.default");
        assert_eq!(field("claims = [\"\"]"), "policy.claims[0]");
        assert_eq!(
            field("[grants.\"two words\"]\nmethods = [\"GET\"]\npaths = [\"/v1\"]"),
            "policy.grants.\"two words\""
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the path, an allow means it lies under one of the granted prefixes on a
        /// segment boundary; never a panic.
        #[test]
        fn allows_only_under_granted_prefixes(path in "/v1(/[a-z_%.0-9]{0,12}){0,4}", m in 0usize..7) {
            let p = policy(EXAMPLE);
            let c = claims(json!({"roles": ["cliniko:appointments:write"]}));
            let method = ALL_METHODS[m].clone();
            if p.check(&c, &method, &path).is_ok() {
                prop_assert!(method == Method::POST || method == Method::PATCH);
                let inside = ["/v1/appointments", "/v1/individual_appointments"]
                    .iter()
                    .any(|pre| path == *pre || path.starts_with(&format!("{pre}/")));
                prop_assert!(inside);
            }
        }
    }
}
