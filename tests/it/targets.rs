//! Requests the gateway must refuse before anything reaches Cliniko (raw bytes on a socket,
//! since a well-behaved client would not send most of these).

use crate::support::*;

async fn refused(h: &Harness, request_line_and_headers: &str) -> String {
    let addr = h.base.strip_prefix("http://").unwrap().to_string();
    let auth = format!("Bearer {}", h.token("alice"));
    let req = request_line_and_headers
        .replace("{host}", &addr)
        .replace("{auth}", &auth);
    raw_exchange(&addr, req.as_bytes()).await
}

#[tokio::test]
async fn hostile_targets_get_400_and_never_reach_cliniko() {
    let h = Harness::start(Setup::default()).await;
    let cases = [
        (
            "GET http://evil.example/v1/patients HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/../admin HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/patients%2f..%2fusers HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1//evil.example/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "TRACE /v1/patients HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_method",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "",
        ),
    ];
    for (req, code) in cases {
        let out = refused(&h, req).await;
        assert!(out.starts_with("HTTP/1.1 4"), "{req:?} -> {out}");
        if !code.is_empty() {
            assert!(out.contains(code), "{req:?} -> {out}");
        }
    }
    assert_eq!(h.upstream_hits(), 0, "a hostile request reached Cliniko");
}

/// Content-Length + Transfer-Encoding: 400 `ambiguous_length`, nothing upstream, and bytes
/// hidden behind the chunked terminator never become a second request — in either header
/// order, and on a connection that already carried a good request.
#[tokio::test]
async fn content_length_plus_chunked_is_refused_and_cannot_smuggle() {
    let h = Harness::start(Setup::default()).await;
    let smuggled =
        "GET /v1/patients?smuggled=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n";
    let cl = format!("Content-Length: {}\r\n", 5 + smuggled.len());
    let te = "Transfer-Encoding: chunked\r\n";
    for (first, second) in [(cl.as_str(), te), (te, cl.as_str())] {
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {{host}}\r\n\r\nPOST /v1/echo HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: {{auth}}\r\n{first}{second}\r\n0\r\n\r\n{smuggled}"
        );
        let out = refused(&h, &req).await;
        assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
        assert!(out.contains("HTTP/1.1 400"), "{out}");
        assert!(out.contains("ambiguous_length"), "{out}");
    }
    assert_eq!(h.upstream_hits(), 0, "nothing may reach Cliniko");
}
