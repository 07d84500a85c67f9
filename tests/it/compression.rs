//! Compressed answers to callers who ask: gzip, br and zstd, `Vary`, weak ETags and 304s, what stays
//! uncompressed (HEAD, small bodies, callers who ask for nothing), `Accept-Encoding` edge cases
//! (406 only when nothing is acceptable), and a real client (curl --compressed).

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::sandbox::Fault;
use http::Method;
use std::io::Read;

pub fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

async fn unbrotli(b: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    async_compression::tokio::bufread::BrotliDecoder::new(b)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(b).unwrap()
}

/// Cliniko answering `path` with a strong ETag and a 6 KiB JSON page full of its own links.
fn strong_page(h: &Harness, path: &str) -> String {
    let up = h.sandbox("au1").base_url();
    let item = format!(r#"{{"id":1,"links":{{"self":"{up}/patients/1"}}}}"#);
    let json = format!(r#"{{"patients":[{}]}}"#, vec![item; 60].join(","));
    h.sandbox("au1").set_fault(
        path,
        Fault::Raw(
            200,
            vec![
                ("content-type".into(), "application/json".into()),
                ("etag".into(), "\"v1\"".into()),
            ],
            json.clone().into(),
        ),
    );
    json.replace(&up, &format!("{}/v1", h.base))
}

/// `/v1/invoices` (uncached) for a caller taking only `coding`: compressed with it, `Vary`,
/// a weak ETag, at least 4x smaller than `want`.
async fn compressed_page(h: &Harness, coding: &str, want: &str) -> Got {
    let got = h
        .get_as_with("alice", "/v1/invoices", &[("accept-encoding", coding)])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-encoding"], coding);
    assert!(
        vary(&got).contains(&"accept-encoding".into()),
        "{:?}",
        vary(&got)
    );
    assert_eq!(got.headers["etag"], "W/\"v1\"", "transformed: weak");
    assert!(got.body.len() * 4 < want.len(), "{} bytes", got.body.len());
    got
}

/// The cached `/v1/patients/1` for a caller taking only `coding`: compressed with it under a
/// weak ETag, and that ETag sent back answers 304 with no body and no coding.
async fn revalidates_weakly(h: &Harness, coding: &str) {
    let first = h
        .get_as_with("alice", "/v1/patients/1", &[("accept-encoding", coding)])
        .await;
    assert_eq!(first.headers["content-encoding"], coding);
    assert_eq!(first.headers["etag"], "W/\"v1\"");
    let again = h
        .get_as_with(
            "alice",
            "/v1/patients/1",
            &[("accept-encoding", coding), ("if-none-match", "W/\"v1\"")],
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert!(!again.headers.contains_key("content-encoding"));
}

fn vary(g: &Got) -> Vec<String> {
    g.headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn gzip_callers_get_a_compressed_body_with_vary_and_a_weak_etag_that_still_revalidates() {
    let h = Harness::start(Setup::default()).await;
    // Not a cached path: the forwarder's answer is compressed on its way out.
    let want = strong_page(&h, "/v1/invoices");
    let gz = compressed_page(&h, "gzip", &want).await;
    assert_eq!(gunzip(&gz.body), want.as_bytes());

    // The same answer to a caller that asked for nothing: identity, strong ETag, a length.
    let plain = h.get_as("alice", "/v1/invoices").await;
    assert!(!plain.headers.contains_key("content-encoding"));
    assert_eq!(plain.headers["etag"], "\"v1\"");
    assert_eq!(plain.headers["content-length"], want.len().to_string());
    assert!(vary(&plain).contains(&"accept-encoding".into()));
    assert_eq!(plain.body, want.as_bytes());

    // A cached path: the weak ETag a gzip caller got still answers 304.
    strong_page(&h, "/v1/patients/1");
    revalidates_weakly(&h, "gzip").await;
}

#[tokio::test]
async fn head_and_small_bodies_go_out_uncompressed() {
    let h = Harness::start(Setup::default()).await;
    let want = strong_page(&h, "/v1/invoices");
    let auth = format!("Bearer {}", h.token("alice"));
    let head = h
        .send(
            Method::HEAD,
            "/v1/invoices",
            &[("authorization", &auth), ("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert!(!head.headers.contains_key("content-encoding"));
    assert!(head.body.is_empty());
    // One record is a few hundred bytes: under `min_bytes` (1 KiB), not worth a gzip header.
    let small = h
        .get_as_with(
            "alice",
            "/v1/patients?per_page=1",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(small.status, 200);
    assert!(small.body.len() < 1024, "{}", small.body.len());
    assert!(!small.headers.contains_key("content-encoding"));
    assert!(vary(&small).contains(&"accept-encoding".into()));
    small.json();
    // Errors are the gateway's own small JSON: plain.
    let denied = h
        .send(
            Method::GET,
            "/v1/invoices",
            &[("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert_eq!(denied.code(), "token_missing");
    assert!(want.len() > 1024);
}

#[tokio::test]
async fn accept_encoding_edge_cases_get_a_sensible_answer() {
    let h = Harness::start(Setup::default()).await;
    let want = strong_page(&h, "/v1/invoices");
    // Nothing acceptable at all: 406 with our JSON, and nothing sent to Cliniko.
    for refuse in [
        "identity;q=0",
        "*;q=0",
        "gzip;q=0, identity;q=0",
        "zstd;q=0, identity;q=0",
        "gzip;q=0, br;q=0, zstd;q=0, identity;q=0",
    ] {
        let got = h
            .get_as_with("alice", "/v1/invoices", &[("accept-encoding", refuse)])
            .await;
        assert_eq!(got.status, 406, "{refuse}");
        assert_eq!(got.code(), "not_acceptable", "{refuse}");
    }
    assert_eq!(h.upstream_hits(), 0);
    // Identity refused but gzip (or zstd) taken: that coding, even for a body under `min_bytes`.
    for (coding, decode) in [("gzip", gunzip as fn(&[u8]) -> Vec<u8>), ("zstd", unzstd)] {
        let ae = format!("{coding}, identity;q=0");
        let got = h
            .get_as_with(
                "alice",
                "/v1/patients?per_page=1",
                &[("accept-encoding", &ae)],
            )
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["content-encoding"], coding);
        serde_json::from_slice::<serde_json::Value>(&decode(&got.body)).unwrap();
    }
    // `*` covers gzip, br and zstd; identity refused by the wildcard but named on its own is
    // fine. Between codings of equal q, tower-http prefers zstd, then br, then gzip.
    for (ae, coding) in [
        ("*", "zstd"),
        ("*, zstd;q=0", "br"),
        ("*;q=0, gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("gzip, br, zstd", "zstd"),
        ("zstd;q=0.5, gzip", "gzip"),
        ("zstd, *;q=0", "zstd"),
    ] {
        let got = h
            .get_as_with("alice", "/v1/invoices", &[("accept-encoding", ae)])
            .await;
        assert_eq!(got.status, 200, "{ae}");
        assert_eq!(got.headers["content-encoding"], coding, "{ae}");
    }
    let br = h
        .get_as_with("alice", "/v1/invoices", &[("accept-encoding", "br")])
        .await;
    assert_eq!(br.headers["content-encoding"], "br");
    assert_eq!(unbrotli(&br.body).await, want.as_bytes());
    // An unknown coding alone: identity (it is acceptable unless refused).
    let other = h
        .get_as_with("alice", "/v1/invoices", &[("accept-encoding", "compress")])
        .await;
    assert_eq!(other.status, 200);
    assert!(!other.headers.contains_key("content-encoding"));
    assert_eq!(other.body, want.as_bytes());
}

#[tokio::test]
async fn curl_compressed_reads_the_page() {
    let Some(curl) = real_tool(
        &["curl".into()],
        &["--version"],
        "curl (apt-get install curl)",
    ) else {
        return;
    };
    let h = Harness::start(Setup::default()).await;
    let want = strong_page(&h, "/v1/invoices");
    let out = tokio::process::Command::new(curl)
        .args(["-sS", "--compressed", "-D", "-", "-H"])
        .arg(format!("Authorization: Bearer {}", h.token("alice")))
        .arg(format!("{}/v1/invoices", h.base))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        ["gzip", "br", "zstd"]
            .iter()
            .any(|c| head.contains(&format!("content-encoding: {c}"))),
        "{head}"
    );
    assert_eq!(body, want);
}

#[tokio::test]
async fn zstd_callers_get_a_zstd_body_with_vary_and_a_weak_etag_that_still_revalidates() {
    let h = Harness::start(Setup::default()).await;
    let want = strong_page(&h, "/v1/invoices");
    let zst = compressed_page(&h, "zstd", &want).await;
    // Exactly the identity body: Cliniko's links rewritten to the gateway's.
    assert_eq!(unzstd(&zst.body), want.as_bytes());

    // A cached path: the weak ETag a zstd caller got still answers 304.
    strong_page(&h, "/v1/patients/1");
    revalidates_weakly(&h, "zstd").await;
}

#[tokio::test]
async fn zstd_callers_get_head_and_small_bodies_uncompressed() {
    let h = Harness::start(Setup::default()).await;
    strong_page(&h, "/v1/invoices");
    let zstd = [("accept-encoding", "zstd")];
    // The page itself is worth it: zstd.
    let get = h.get_as_with("alice", "/v1/invoices", &zstd).await;
    assert_eq!(get.headers["content-encoding"], "zstd");
    let auth = format!("Bearer {}", h.token("alice"));
    let head = h
        .send(
            Method::HEAD,
            "/v1/invoices",
            &[("authorization", &auth), zstd[0]],
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert!(!head.headers.contains_key("content-encoding"));
    assert_eq!(head.headers["etag"], "\"v1\"", "not transformed: strong");
    assert!(head.body.is_empty());
    let small = h
        .get_as_with("alice", "/v1/patients?per_page=1", &zstd)
        .await;
    assert_eq!(small.status, 200);
    assert!(small.body.len() < 1024, "{}", small.body.len());
    assert!(!small.headers.contains_key("content-encoding"));
    assert!(vary(&small).contains(&"accept-encoding".into()));
    small.json();
}

/// The cache keeps one gzip copy: a caller that takes gzip gets it as it is (whatever else it
/// takes), a zstd-only caller gets the decoded bytes compressed with zstd on the way out.
#[tokio::test]
async fn cache_hits_for_zstd_callers_decode_to_the_page() {
    let h = Harness::start(Setup::default()).await;
    let path = "/v1/patients?per_page=50";
    let first = h
        .get_as_with("alice", path, &[("accept-encoding", "zstd")])
        .await;
    assert_eq!((first.status.as_u16(), xcache(&first)), (200, "MISS"));
    assert_eq!(first.headers["content-encoding"], "zstd");
    let plain = unzstd(&first.body);
    serde_json::from_slice::<serde_json::Value>(&plain).unwrap();

    let hit = h
        .get_as_with("alice", path, &[("accept-encoding", "zstd")])
        .await;
    assert_eq!(xcache(&hit), "HIT");
    assert_eq!(hit.headers["content-encoding"], "zstd");
    assert!(hit.body.len() * 2 < plain.len(), "{} bytes", hit.body.len());
    assert_eq!(unzstd(&hit.body), plain);

    // Takes both, prefers zstd: the stored gzip copy, labelled as what it is.
    let both = h
        .get_as_with("alice", path, &[("accept-encoding", "gzip;q=0.5, zstd")])
        .await;
    assert_eq!(xcache(&both), "HIT");
    assert_eq!(both.headers["content-encoding"], "gzip");
    assert_eq!(gunzip(&both.body), plain);
    // Refuses gzip: zstd again, not the stored copy.
    let no_gzip = h
        .get_as_with("alice", path, &[("accept-encoding", "gzip;q=0, zstd")])
        .await;
    assert_eq!(xcache(&no_gzip), "HIT");
    assert_eq!(no_gzip.headers["content-encoding"], "zstd");
    assert_eq!(unzstd(&no_gzip.body), plain);
    assert_eq!(h.upstream_hits(), 1);
}
