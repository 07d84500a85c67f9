//! Headers a caller sets to reach or steer Cliniko: each request goes through (200), and the
//! stand-in's record of it shows the header never arrived (or, for `Host` and
//! `Authorization`, that only the gateway's own value did).

use super::*;
use base64::Engine;
use http::Method;

#[tokio::test]
async fn caller_headers_never_reach_cliniko() {
    let h = Harness::start(Setup::default()).await;
    let sb = h.sandbox("au1");
    let ours = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{KEY_ALICE}:"))
    );
    let sb_authority = sb.base_url().split('/').nth(2).unwrap().to_string();
    let bearer = format!("Bearer {}", h.token("alice"));
    // (case, extra headers, header names that must not arrive)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "Host of another site",
            vec![("host", "evil.example")],
            vec![],
        ),
        (
            "X-Forwarded-Host",
            vec![("x-forwarded-host", "evil.example")],
            vec!["x-forwarded-host"],
        ),
        (
            "X-Forwarded-For",
            vec![("x-forwarded-for", "10.0.0.1")],
            vec!["x-forwarded-for"],
        ),
        (
            "X-Forwarded-Proto",
            vec![("x-forwarded-proto", "http")],
            vec!["x-forwarded-proto"],
        ),
        (
            "Forwarded",
            vec![("forwarded", "for=1.2.3.4;host=evil.example;proto=http")],
            vec!["forwarded"],
        ),
        (
            "Cookie",
            vec![("cookie", "_cliniko_session=stolen")],
            vec!["cookie"],
        ),
        (
            "Proxy-Authorization",
            vec![("proxy-authorization", "Basic c3RvbGVuOg==")],
            vec!["proxy-authorization"],
        ),
        (
            "X-HTTP-Method-Override",
            vec![("x-http-method-override", "DELETE")],
            vec!["x-http-method-override"],
        ),
        (
            "X-Original-URL",
            vec![("x-original-url", "/v1/users")],
            vec!["x-original-url"],
        ),
        (
            "X-Real-IP",
            vec![("x-real-ip", "10.0.0.1")],
            vec!["x-real-ip"],
        ),
        (
            "X-Api-Key",
            vec![("x-api-key", KEY_CAROL)],
            vec!["x-api-key"],
        ),
        (
            "Upgrade",
            vec![("upgrade", "websocket"), ("connection", "upgrade")],
            vec!["upgrade", "connection"],
        ),
        (
            "header named in Connection",
            vec![("connection", "x-secret"), ("x-secret", "1")],
            vec!["x-secret", "connection"],
        ),
        (
            "User-Agent of the caller",
            vec![("user-agent", "curl/8 (evil@example)")],
            vec![],
        ),
    ];
    for (i, (name, extra, gone)) in cases.into_iter().enumerate() {
        sb.clear();
        let mut hv: Vec<(&str, &str)> = vec![("authorization", &bearer)];
        hv.extend(extra.iter().copied());
        // A query of its own per case, so no answer comes from the cache.
        let path = format!("/v1/patients?per_page=1&case={i}");
        let got = h.send(Method::GET, &path, &hv, bytes::Bytes::new()).await;
        assert_eq!(got.status, 200, "{name}: {}", got.text());
        let recs = sb.requests();
        assert_eq!(recs.len(), 1, "{name}: the cache must not hide the request");
        let r = &recs[0];
        for g in gone {
            assert!(r.header(g).is_none(), "{name}: {g} reached Cliniko");
        }
        let auths: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert_eq!(auths.len(), 1, "{name}");
        assert_eq!(auths[0], ours.as_str(), "{name}");
        if let Some(host) = r.header("host") {
            assert_eq!(host, sb_authority, "{name}");
        }
        assert_eq!(
            r.header("user-agent"),
            Some("Gateway Tests (tests@example.invalid)"),
            "{name}"
        );
        assert!(r.header("x-forwarded-host").is_none() && r.header("cookie").is_none());
    }
}
