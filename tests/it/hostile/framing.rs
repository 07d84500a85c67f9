//! HTTP/1.1 framing attacks on raw sockets: smuggling, malformed heads, oversized heads and
//! bodies, and clients that send too slowly. Statuses with code "" are hyper's own answers.

use super::*;
use std::time::Instant;

async fn start() -> Harness {
    Harness::start(Setup {
        overrides: vec![
            ("CLINIKO_GATEWAY__SERVER__MAX_BODY_BYTES", "1024".into()),
            ("CLINIKO_GATEWAY__SERVER__HEADER_READ_TIMEOUT", "1s".into()),
            ("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "1s".into()),
        ],
        ..Setup::default()
    })
    .await
}

const HEAD: &str = "Host: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n";

#[tokio::test]
async fn malformed_framing_is_refused_before_cliniko() {
    let h = start().await;
    let big_header = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let over = "x".repeat(2000);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "CL then TE",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
            "ambiguous_length",
        ),
        (
            "TE then CL",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
            400,
            "ambiguous_length",
        ),
        (
            "duplicate Content-Length, different values",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
            400,
            "",
        ),
        (
            "Content-Length list",
            format!("POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Length: 5, 6\r\n\r\nhello!"),
            400,
            "",
        ),
        (
            "negative Content-Length",
            format!("POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Length: -1\r\n\r\n"),
            400,
            "",
        ),
        (
            "Content-Length with a plus sign",
            format!("POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Length: +5\r\n\r\nhello"),
            400,
            "",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
            ),
            400,
            "",
        ),
        // The head is valid, so the request is already streaming to Cliniko when the body
        // breaks: the exchange fails (502) and Cliniko never gets a complete request.
        (
            "bad chunk size",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            ),
            502,
            "upstream_unavailable",
        ),
        (
            "obs-fold",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}X-Folded: a\r\n  b\r\n\r\n"),
            400,
            "",
        ),
        (
            "bare CR inside a header value",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}X-A: a\rX-Injected: 1\r\n\r\n"),
            400,
            "",
        ),
        (
            "NUL in a header value",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}X-A: a\0b\r\n\r\n"),
            400,
            "",
        ),
        (
            "space in a header name",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}X A: b\r\n\r\n"),
            400,
            "",
        ),
        (
            "space before the colon",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}Authorization : Basic YWxpY2U6\r\n\r\n"),
            400,
            "",
        ),
        (
            "header over max_header_bytes",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}{big_header}\r\n"),
            431,
            "",
        ),
        (
            "more than max_headers headers",
            format!("GET /v1/patients HTTP/1.1\r\n{HEAD}{many}\r\n"),
            431,
            "",
        ),
        (
            "body over the limit, declared",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{over}",
                over.len()
            ),
            413,
            "body_too_large",
        ),
        (
            "body over the limit, declared, Expect 100-continue",
            format!(
                "POST /v1/patients HTTP/1.1\r\n{HEAD}Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
            ),
            413,
            "body_too_large",
        ),
        (
            "HTTP version 2.0 on an HTTP/1 connection",
            format!("GET /v1/patients HTTP/2.0\r\n{HEAD}\r\n"),
            0,
            "",
        ),
    ];
    let n = cases.len();
    for (name, req, status, code) in cases {
        if status == 0 {
            // hyper refuses it without a parseable answer (505 or a close): either way not ours.
            let before = h.upstream_hits();
            let got = raw(
                &addr(&h),
                req.replace("{host}", &addr(&h)).as_bytes(),
                Duration::from_secs(5),
            )
            .await;
            assert!(got.status == 0 || got.status >= 400, "{name}: {got:?}");
            assert_eq!(h.upstream_hits(), before, "{name} reached Cliniko");
            continue;
        }
        expect_raw(&h, name, &req, status, code).await;
    }
    assert!(n >= 18);
}

/// A chunked body that goes over the limit mid-stream: 413 and Cliniko never records a
/// request (it saw at most a head and a cut-off body, never a complete request).
#[tokio::test]
async fn an_undeclared_body_over_the_limit_is_cut_off() {
    let h = start().await;
    let chunk = "y".repeat(600);
    let body: String = (0..4)
        .map(|_| format!("{:x}\r\n{chunk}\r\n", chunk.len()))
        .collect();
    let req = format!(
        "POST /v1/patients HTTP/1.1\r\n{HEAD}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{body}0\r\n\r\n"
    );
    expect_raw(
        &h,
        "chunked body over the limit",
        &req,
        413,
        "body_too_large",
    )
    .await;
}

/// Slowloris: a head that never ends is cut off at `server.header_read_timeout` (1 s here);
/// a body that stalls ends at `upstream.timeout` (1 s here) with 504. Neither holds the
/// gateway, and neither becomes a request Cliniko records.
#[tokio::test]
async fn slow_heads_and_slow_bodies_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start().await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr(&h)).await.unwrap();
    s.write_all(b"GET /v1/patients HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "slow head was not cut off");
    assert!(started.elapsed() < Duration::from_secs(4));
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("200"), "{text}");

    let started = Instant::now();
    let auth = format!("Bearer {}", h.token("alice"));
    let mut s = tokio::net::TcpStream::connect(addr(&h)).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/patients HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"first"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    let got = super::parse(&String::from_utf8_lossy(&out));
    assert_eq!(got.status, 504, "{got:?}");
    assert_eq!(got.code(), "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(h.upstream_hits(), 0, "a slow body became a Cliniko request");
    // Meanwhile everyone else is served.
    assert_eq!(h.get_as("carol", "/v1/patients").await.status, 200);
}
