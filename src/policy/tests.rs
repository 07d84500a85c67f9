use super::*;
use crate::config::policy::validate;
use proptest::prelude::*;
use serde_json::json;

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
