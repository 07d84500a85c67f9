//! Request targets built to escape `/v1`, reach another host or confuse Cliniko's router;
//! methods the gateway does not forward. The admin listener is on, to show its routes are not
//! served on the proxy port.

use super::*;

const TAIL: &str =
    " HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn hostile_targets_and_methods_are_refused() {
    let h = Harness::start(Setup {
        overrides: vec![
            ("CLINIKO_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0".into()),
            (
                "CLINIKO_GATEWAY_ADMIN_TOKEN",
                "admin-token-of-at-least-32-characters!!".into(),
            ),
        ],
        ..Setup::default()
    })
    .await;
    let long = format!("/v1/{}", "a".repeat(3000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "absolute-form naming another host",
            "GET http://evil.example/v1/patients".into(),
            400,
            "bad_target",
        ),
        (
            "absolute-form https to another host",
            "GET https://evil.example:443/v1/patients".into(),
            400,
            "bad_target",
        ),
        (
            "absolute-form with userinfo",
            "GET http://{host}@evil.example/v1/patients".into(),
            400,
            "bad_target",
        ),
        (
            "absolute-form to the IdP port",
            "GET http://127.0.0.1:1/v1/patients".into(),
            400,
            "bad_target",
        ),
        (
            "scheme-relative //evil.example/",
            "GET //evil.example/".into(),
            404,
            "route_not_found",
        ),
        (
            "//evil.example inside /v1",
            "GET /v1//evil.example/x".into(),
            400,
            "bad_target",
        ),
        ("dot-dot", "GET /v1/../admin".into(), 400, "bad_target"),
        (
            "trailing dot-dot",
            "GET /v1/patients/..".into(),
            400,
            "bad_target",
        ),
        (
            "dot segment",
            "GET /v1/./patients".into(),
            400,
            "bad_target",
        ),
        ("%2e%2e", "GET /v1/%2e%2e/admin".into(), 400, "bad_target"),
        (
            "%2E%2E upper case",
            "GET /v1/%2E%2E/admin".into(),
            400,
            "bad_target",
        ),
        (".%2e mixed", "GET /v1/.%2e/admin".into(), 400, "bad_target"),
        (
            "%2f",
            "GET /v1/patients%2f..%2fusers".into(),
            400,
            "bad_target",
        ),
        ("%2F upper case", "GET /v1/a%2Fb".into(), 400, "bad_target"),
        (
            "%5c encoded backslash",
            "GET /v1/a%5cb".into(),
            400,
            "bad_target",
        ),
        (
            "raw backslash",
            "GET /v1/a\\..\\admin".into(),
            400,
            "bad_target",
        ),
        ("%00", "GET /v1/patients%00.json".into(), 400, "bad_target"),
        (
            "double-encoded dot-dot",
            "GET /v1/%252e%252e/admin".into(),
            400,
            "bad_target",
        ),
        ("overlong path", format!("GET {long}"), 400, "bad_target"),
        (
            "non-/v1 path",
            "GET /v2/patients".into(),
            404,
            "route_not_found",
        ),
        ("root", "GET /".into(), 404, "route_not_found"),
        ("/v1x", "GET /v1x/patients".into(), 404, "route_not_found"),
        (
            "upper-case /V1",
            "GET /V1/patients".into(),
            404,
            "route_not_found",
        ),
        (
            "admin route on the proxy port",
            "GET /admin/keys".into(),
            404,
            "route_not_found",
        ),
        (
            "admin purge on the proxy port",
            "POST /admin/cache/purge?all=true".into(),
            404,
            "route_not_found",
        ),
        (
            "admin reload on the proxy port",
            "POST /admin/reload".into(),
            404,
            "route_not_found",
        ),
        (
            "metrics on the proxy port",
            "GET /metrics".into(),
            404,
            "route_not_found",
        ),
        ("asterisk-form", "OPTIONS *".into(), 404, "route_not_found"),
        (
            "unknown method",
            "FOO /v1/patients".into(),
            400,
            "bad_method",
        ),
        (
            "WebDAV method",
            "PROPFIND /v1/patients".into(),
            400,
            "bad_method",
        ),
        (
            "lower-case method",
            "get /v1/patients".into(),
            400,
            "bad_method",
        ),
        ("TRACE", "TRACE /v1/patients".into(), 400, "bad_method"),
        (
            "CONNECT to another host",
            "CONNECT evil.example:443".into(),
            400,
            "bad_method",
        ),
        (
            "CONNECT to a /v1 path",
            "CONNECT /v1/patients".into(),
            400,
            "bad_method",
        ),
    ];
    let n = cases.len();
    for (name, line, status, code) in cases {
        super::expect_raw(&h, name, &format!("{line}{TAIL}"), status, code).await;
    }
    // Bytes `http::Uri` refuses where they are: made parseable below hyper, then refused
    // by the gateway with JSON (hyper alone answered a bare 400 with no access line).
    for (name, line) in [
        ("raw NUL in the path", "GET /v1/pat\0ients"),
        ("raw space in the path", "GET /v1/pat ients/x"),
        ("raw < > in the path", "GET /v1/<script>"),
        ("raw backtick in the path", "GET /v1/a`b"),
        ("raw DEL in the path", "GET /v1/a\x7fb"),
        ("raw control byte in the query", "GET /v1/patients?q=\x01"),
        ("fragment with a raw control byte", "GET /v1/patients#\x01"),
        ("raw /healthz with a control byte", "GET /healthz?\x01"),
    ] {
        super::expect_raw(&h, name, &format!("{line}{TAIL}"), 400, "bad_target").await;
    }
    // A head over max_header_bytes is still hyper's to refuse (no JSON).
    let long = format!("GET /v1/{}{TAIL}", "a".repeat(20_000));
    super::expect_raw(&h, "path over max_header_bytes", &long, 431, "").await;
    assert!(n >= 30);
    assert_eq!(h.upstream_hits(), 0);
}

/// The framing watch names only the first unusable target of a connection, so the gateway
/// closes the connection after refusing it: a request pipelined behind it is never served.
#[tokio::test]
async fn an_unusable_target_closes_the_connection_after_its_400() {
    let h = Harness::start(Setup::default()).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let host = addr(&h);
    let req = format!(
        "GET /v1/a<b HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n\
         GET /v1/patients HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
    );
    let out = raw_exchange(&host, req.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(out.contains("bad_target"), "{out}");
    assert_eq!(h.upstream_hits(), 0);
}
