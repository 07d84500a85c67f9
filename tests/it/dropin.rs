//! Cliniko clients work through the gateway with only a base-URL change: real python
//! `requests` and `curl` with HTTP Basic (the JWT where the API key went), Cliniko's filter
//! syntax typed raw, and what HTTP/2 does with such a path.

use crate::hostile::{addr, raw};
use crate::support::*;
use base64::Engine;
use std::path::PathBuf;
use std::time::Duration;

/// The three filters from the issue, typed raw, and what Cliniko must receive for each.
const FILTERS: [(&str, &str); 3] = [
    (
        "q[]=updated_at:>2024-01-01T00:00:00Z",
        "q[]=updated_at:%3E2024-01-01T00:00:00Z",
    ),
    (
        "q[]=date_of_birth:>=1980-01-01&q[]=date_of_birth:<1990-01-01",
        "q[]=date_of_birth:%3E=1980-01-01&q[]=date_of_birth:%3C1990-01-01",
    ),
    ("q[]=last_name:\"O'Brien\"", "q[]=last_name:%22O'Brien%22"),
];

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

/// A python with `requests`: `CLINIKO_GATEWAY_TEST_PYTHON`, else the CI venv `.ci/run`
/// makes, else `python3`.
fn python_with_requests() -> Option<PathBuf> {
    let tmp = std::env::var_os("TMPDIR").unwrap_or_else(|| "/tmp".into());
    let mut candidates: Vec<PathBuf> = std::env::var_os("CLINIKO_GATEWAY_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from(tmp).join("cliniko-gateway-ci-venv/bin/python"));
    candidates.push("python3".into());
    real_tool(
        &candidates,
        &["-c", "import requests"],
        "python3 with `requests` (the CI venv)",
    )
}

#[tokio::test]
async fn python_requests_and_curl_work_with_basic_auth_and_only_a_base_url_change() {
    let (Some(python), Some(_curl)) = (
        python_with_requests(),
        real_tool(&["curl".into()], &["--version"], "curl"),
    ) else {
        return;
    };
    let h = Harness::start(Setup::default()).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/drop_in.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .arg(&h.base)
        .env("JWT", h.token("alice"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client script finished within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let seeded = cliniko_gateway::sandbox::SEEDED_PATIENTS;
    assert_eq!(summary["requests"]["patients"], seeded);
    assert_eq!(summary["requests"]["pages"], seeded.div_ceil(50));
    assert_eq!(summary["curl"]["pages"], seeded.div_ceil(50));
    assert_eq!(summary["curl"]["filters"], 3);

    // What Cliniko saw: the stored key every time (never the JWT), every write, the filters.
    let recs = h.sandbox("au1").requests();
    let key = basic(&format!("{KEY_ALICE}:"));
    assert!(
        recs.iter()
            .all(|r| r.header("authorization") == Some(&*key))
    );
    let count = |m: &str| recs.iter().filter(|r| r.method == m).count();
    assert_eq!((count("POST"), count("PATCH"), count("DELETE")), (3, 2, 2));
    for (typed, sent) in FILTERS {
        let want = format!("/v1/patients?{sent}");
        assert!(
            recs.iter().any(|r| r.path_and_query == want),
            "{typed} arrived as {want}"
        );
    }
}

#[tokio::test]
async fn clinikos_filters_typed_raw_get_200_and_reach_cliniko_encoded() {
    let h = Harness::start(Setup::default()).await;
    let sb = h.sandbox("au1");
    let credentials = [
        format!("Bearer {}", h.token("alice")),
        basic(&format!("{}:", h.token("alice"))),
    ];
    for (form, auth) in credentials.iter().enumerate() {
        for (typed, sent) in FILTERS {
            sb.clear();
            // `form` keeps the two forms apart in the cache (one token, one cache key).
            let req = format!(
                "GET /v1/patients?{typed}&form={form} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
                addr(&h)
            );
            let got = raw(&addr(&h), req.as_bytes(), Duration::from_secs(5)).await;
            assert_eq!(got.status, 200, "{typed}: {got:?}");
            assert!(got.body.contains("\"patients\""), "{typed}");
            let recs = sb.requests();
            assert_eq!(recs.len(), 1, "{typed}");
            assert_eq!(
                recs[0].path_and_query,
                format!("/v1/patients?{sent}&form={form}")
            );
        }
    }
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A HEADERS frame (END_STREAM | END_HEADERS) for `GET <path>` on `stream`, HPACK without
/// Huffman coding or indexing, so any bytes can be sent.
fn h2_get(stream: u32, path: &[u8], authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(4, path), (1, authority.as_bytes())] {
        block.push(index); // literal without indexing, indexed name (:path, :authority)
        hpack_int(0, 7, value.len(), &mut block);
        block.extend_from_slice(value);
    }
    let mut f = (block.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[0x1, 0x5]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&block);
    f
}

/// Reads frames until one of `(type, stream)` arrives; returns its payload.
async fn h2_until(s: &mut tokio::net::TcpStream, kinds: &[(u8, u32)]) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, s.read_exact(&mut head))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        if kinds.contains(&(head[3], stream)) {
            return (head[3], payload);
        }
    }
}

/// HTTP/2 has no request line to rewrite: h2 itself checks `:path` with `http::Uri` and
/// resets the stream (RST_STREAM PROTOCOL_ERROR) before the gateway sees the request. The
/// connection stays usable; an encoded path on it is served. Documented in docs/migrating.md.
#[tokio::test]
async fn over_http2_a_raw_quote_in_the_path_resets_the_stream() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Setup::default()).await;
    let mut s = tokio::net::TcpStream::connect(addr(&h)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    s.write_all(&h2_get(1, b"/v1/patients?q[]=last_name:\"O'Brien\"", "gw"))
        .await
        .unwrap();
    let (kind, payload) = h2_until(&mut s, &[(0x3, 1), (0x1, 1)]).await;
    assert_eq!(kind, 0x3, "RST_STREAM, not a response");
    assert_eq!(payload, 1u32.to_be_bytes(), "PROTOCOL_ERROR");
    s.write_all(&h2_get(
        3,
        b"/v1/patients?q[]=last_name:%22O'Brien%22",
        "gw",
    ))
    .await
    .unwrap();
    let (kind, _) = h2_until(&mut s, &[(0x3, 3), (0x1, 3)]).await;
    assert_eq!(kind, 0x1, "the encoded form is answered (401: no token)");
    assert_eq!(h.upstream_hits(), 0);
}
