//! Link rewriting: the last step on the way back, between Cliniko's response and the caller.
//!
//! Cliniko answers with absolute URLs to its own host (`links.self/next/previous`, every
//! embedded relation, the `Location` of a 201). A caller that follows them must stay on the
//! gateway, so a JSON string value that *starts with* an upstream origin (any shard, the legacy
//! host, or a configured stand-in), optionally followed by `/v1`, is rewritten onto the
//! gateway's public base URL. Everything else passes byte for byte: other hosts
//! (`telehealth_url`, S3 presigned URLs), object keys, look-alike hosts
//! (`api.au1.cliniko.com.evil.example`), non-default ports, and input that is not JSON.

mod matcher;
mod stream;
mod whole;

pub use stream::RewriteStream;

use matcher::{Decision, Origins};
use std::sync::Arc;

/// What every clone of a [`LinkRewriter`] shares.
#[derive(Debug)]
struct Inner {
    origins: Origins,
    /// Public base URL without trailing slash, for header values.
    public_base: String,
    /// `<public_base>/v1`, escaped for use inside a JSON string.
    json_prefix: Vec<u8>,
}

/// Rewrites upstream URLs onto the gateway's public base; built once at start-up.
#[derive(Debug, Clone)]
pub struct LinkRewriter {
    inner: Arc<Inner>,
}

impl LinkRewriter {
    /// `public_base` is e.g. `http://127.0.0.1:8080`; `extra_origins` are the per-shard
    /// override URLs (their path, minus a trailing `/v1`, becomes part of the origin).
    pub fn new(public_base: &str, extra_origins: &[String]) -> LinkRewriter {
        let public_base = public_base.trim_end_matches('/').to_string();
        // As it reads inside a JSON string: serde_json's escaping, without its quotes.
        let quoted = serde_json::to_string(&public_base).unwrap_or_default();
        let inside = quoted.get(1..quoted.len().saturating_sub(1));
        let mut json_prefix = inside.unwrap_or_default().as_bytes().to_vec();
        json_prefix.extend_from_slice(b"/v1");
        LinkRewriter {
            inner: Arc::new(Inner {
                origins: Origins::new(extra_origins),
                public_base,
                json_prefix,
            }),
        }
    }

    /// Rewrites one URL (e.g. a `Location` header); `None` when it is not an upstream URL.
    pub fn rewrite_url(&self, s: &str) -> Option<String> {
        match self.inner.origins.classify(s.as_bytes(), true) {
            Decision::Match(n) => Some(format!("{}/v1{}", self.inner.public_base, s.get(n..)?)),
            Decision::NoMatch | Decision::NeedMore => None,
        }
    }

    /// Wraps a response body: streaming, bounded memory, chunk boundaries anywhere. Data
    /// frames are rewritten, trailers and errors pass through, and held bytes are flushed
    /// before the trailers or the end.
    ///
    /// The length changes, so the caller must drop any `Content-Length` it had.
    pub fn rewrite_body(&self, body: crate::body::Body) -> crate::body::Body {
        use futures_util::{StreamExt, stream};
        use http_body::Frame;
        let mut s = self.stream();
        // One buffer for the whole body: each frame's bytes are split off it, so its capacity
        // is reused instead of allocated per frame.
        let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
        // `None` marks the end, where the rewriter lets out what it still holds.
        let items = http_body_util::BodyStream::new(body)
            .map(Some)
            .chain(stream::iter([None]));
        let frames = items.flat_map(move |item| {
            // What goes after the rewritten bytes: the trailers, or an error as it came.
            let then = match item.map(|r| r.map(Frame::into_data)) {
                Some(Ok(Ok(data))) => {
                    // Links grow when the public base is longer than Cliniko's host.
                    buf.reserve(data.len() + data.len() / 8);
                    s.push(&data, &mut buf);
                    None
                }
                Some(Ok(Err(trailers))) => {
                    s.finish(&mut buf);
                    Some(Ok(trailers))
                }
                Some(Err(e)) => Some(Err(e)),
                None => {
                    s.finish(&mut buf);
                    None
                }
            };
            let out = buf.split();
            let data = (!out.is_empty()).then(|| Ok(Frame::data(out.freeze())));
            stream::iter([data, then].into_iter().flatten())
        });
        crate::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    /// Rewrites a whole body held in memory: the fast path when it can decide, else the
    /// streaming state machine over one chunk (same output either way). A body with nothing
    /// to rewrite is returned as it is, without a copy.
    pub fn rewrite_whole(&self, body: bytes::Bytes) -> bytes::Bytes {
        match whole::rewrite(&self.inner, &body) {
            Ok(None) => body,
            Ok(Some(out)) => bytes::Bytes::from(out),
            Err(()) => {
                let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 64);
                let mut s = self.stream();
                s.push(&body, &mut out);
                s.finish(&mut out);
                bytes::Bytes::from(out)
            }
        }
    }

    /// A fresh streaming rewriter for one body (for tests, benches and the body wrapper).
    pub fn stream(&self) -> RewriteStream {
        RewriteStream::new(Arc::clone(&self.inner))
    }
}

#[cfg(test)]
mod tests {
    use super::LinkRewriter;
    use crate::body::Body;
    use http_body_util::BodyExt;

    const BASE: &str = "http://127.0.0.1:8080";

    fn rewriter() -> LinkRewriter {
        LinkRewriter::new(
            "http://127.0.0.1:8080/",
            &["https://localhost:8443/v1/".to_string()],
        )
    }

    fn chunked(r: &LinkRewriter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    /// Rewrites in one chunk, and checks that every two-chunk split and 1-byte chunks agree.
    fn rw(input: &str) -> String {
        let r = rewriter();
        let b = input.as_bytes();
        let whole = chunked(&r, &[b]);
        for k in 0..=b.len() {
            assert_eq!(
                chunked(&r, &[&b[..k], &b[k..]]),
                whole,
                "split at {k} of {input}"
            );
        }
        let ones: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(chunked(&r, &ones), whole, "1-byte chunks of {input}");
        String::from_utf8(whole).unwrap()
    }

    fn json_str(url: &str) -> String {
        rw(&format!("{{\"self\":\"{url}\"}}"))
    }

    fn expect(url: &str, want: &str) {
        assert_eq!(json_str(url), format!("{{\"self\":\"{want}\"}}"), "{url}");
        assert_eq!(rewriter().rewrite_url(url).as_deref(), Some(want), "{url}");
    }

    fn untouched(url: &str) {
        let doc = format!("{{\"self\":\"{url}\"}}");
        assert_eq!(rw(&doc), doc, "{url}");
        assert_eq!(rewriter().rewrite_url(url), None, "{url}");
    }

    #[test]
    fn pagination_envelope() {
        let doc = r#"{
      "patients": [],
      "total_entries": 120,
      "links": {
        "self": "https://api.au1.cliniko.com/v1/patients?page=1&per_page=50",
        "next": "https://api.au1.cliniko.com/v1/patients?page=2&per_page=50",
        "previous": null
      }
    }"#;
        let want = doc.replace("https://api.au1.cliniko.com", BASE);
        assert_eq!(rw(doc), want);
        assert!(
            want.contains("\"next\": \"http://127.0.0.1:8080/v1/patients?page=2&per_page=50\"")
        );
    }

    #[test]
    fn embedded_relations_and_untouched_neighbours() {
        let doc = r#"{"id":"7","patient":{"links":{"self":"https://api.uk2.cliniko.com/v1/patients/1"}},
    "telehealth_url":"https://acme.cliniko.com/bookings/telehealth/7",
    "cancellation_url" : "https://acme.cliniko.com/bookings/cancel",
    "url":"https://s3.amazonaws.com/bucket?X-Amz-Signature=abc",
    "notes":"see https://api.au1.cliniko.com", "n": 1.5e3, "ok": true,
    "attendees":{"links":{"self":"https://api.uk2.cliniko.com/v1/attendees?x=1#f"}}}"#;
        let want = doc
            .replace(
                "https://api.uk2.cliniko.com/v1/patients/1",
                "http://127.0.0.1:8080/v1/patients/1",
            )
            .replace(
                "https://api.uk2.cliniko.com/v1/attendees",
                "http://127.0.0.1:8080/v1/attendees",
            );
        assert_eq!(rw(doc), want);
    }

    #[test]
    fn missing_v1_and_bare_origin() {
        expect(
            "https://api.au1.cliniko.com/patients/5",
            "http://127.0.0.1:8080/v1/patients/5",
        );
        expect("https://api.au1.cliniko.com", "http://127.0.0.1:8080/v1");
        expect("https://api.au1.cliniko.com/", "http://127.0.0.1:8080/v1/");
        expect("https://api.au1.cliniko.com/v1", "http://127.0.0.1:8080/v1");
        expect(
            "https://api.au1.cliniko.com?x=1",
            "http://127.0.0.1:8080/v1?x=1",
        );
        expect(
            "https://api.au1.cliniko.com/v1?x=1",
            "http://127.0.0.1:8080/v1?x=1",
        );
        expect(
            "https://api.au1.cliniko.com/v1#frag",
            "http://127.0.0.1:8080/v1#frag",
        );
        // `/v1` only counts as a whole segment.
        expect(
            "https://api.au1.cliniko.com/v10/x",
            "http://127.0.0.1:8080/v1/v10/x",
        );
        expect(
            "https://api.au1.cliniko.com/V1/x",
            "http://127.0.0.1:8080/v1/V1/x",
        );
    }

    #[test]
    fn legacy_host_schemes_and_case() {
        expect(
            "http://api.cliniko.com/v1/patients/9",
            "http://127.0.0.1:8080/v1/patients/9",
        );
        expect(
            "https://api.cliniko.com/patients/9",
            "http://127.0.0.1:8080/v1/patients/9",
        );
        expect(
            "http://api.ca1.cliniko.com/v1/x",
            "http://127.0.0.1:8080/v1/x",
        );
        expect(
            "https://API.AU1.Cliniko.COM/v1/x",
            "http://127.0.0.1:8080/v1/x",
        );
        expect(
            "HTTPS://api.au12.cliniko.com/v1/x",
            "http://127.0.0.1:8080/v1/x",
        );
    }

    #[test]
    fn default_port_matches_other_ports_do_not() {
        // An explicit default port is the same origin; any other port is a different service.
        expect(
            "https://api.au1.cliniko.com:443/v1/x",
            "http://127.0.0.1:8080/v1/x",
        );
        expect(
            "http://api.au1.cliniko.com:80/v1/x",
            "http://127.0.0.1:8080/v1/x",
        );
        untouched("https://api.au1.cliniko.com:8443/v1/x");
        untouched("http://api.au1.cliniko.com:443/v1/x");
        untouched("https://api.au1.cliniko.com:/v1/x");
        untouched("https://api.au1.cliniko.com:4430000/v1/x");
    }

    #[test]
    fn look_alike_hosts_are_untouched() {
        untouched("https://api.au1.cliniko.com.evil.example/v1/x");
        untouched("https://api.au1.cliniko.community/v1/x");
        untouched("https://api.au1.cliniko.comx");
        untouched("https://xapi.au1.cliniko.com/v1/x");
        untouched("https://api.au123.cliniko.com/v1/x");
        untouched("https://api.a1.cliniko.com/v1/x");
        untouched("https://user@api.au1.cliniko.com/v1/x");
        untouched("ftp://api.au1.cliniko.com/v1/x");
        untouched("https:/api.au1.cliniko.com/v1/x");
        untouched("https://acme.cliniko.com/bookings/telehealth/7");
        untouched(" https://api.au1.cliniko.com/v1/x");
        untouched("");
        untouched("h");
        untouched("https://");
    }

    #[test]
    fn extra_origin_from_override() {
        expect(
            "https://localhost:8443/v1/patients/1",
            "http://127.0.0.1:8080/v1/patients/1",
        );
        expect(
            "https://LOCALHOST:8443/patients/1",
            "http://127.0.0.1:8080/v1/patients/1",
        );
        untouched("http://localhost:8443/v1/patients/1");
        untouched("https://localhost/v1/patients/1");
        untouched("https://localhost:84430/v1/patients/1");
        untouched("https://localhost:8443x/v1");
        let r = LinkRewriter::new(
            BASE,
            &["https://[::1]:9443/api/v1".to_string(), "bogus".into()],
        );
        assert_eq!(
            r.rewrite_url("https://[::1]:9443/api/v1/x").as_deref(),
            Some("http://127.0.0.1:8080/v1/x")
        );
        assert_eq!(r.rewrite_url("https://[::1]:9443/apix"), None);
        assert_eq!(r.rewrite_url("https://[::1]:9443/other"), None);
    }

    #[test]
    fn escaped_slashes_and_quotes() {
        assert_eq!(
            json_str(r"https:\/\/api.au1.cliniko.com\/v1\/patients\/1"),
            r#"{"self":"http://127.0.0.1:8080/v1\/patients\/1"}"#
        );
        assert_eq!(
            json_str(r#"https:\u002f\u002Fapi.au1.cliniko.com\/patients?q=\"x\""#),
            r#"{"self":"http://127.0.0.1:8080/v1\/patients?q=\"x\""}"#
        );
        // Escaped quotes inside other strings do not end them early.
        let doc = r#"{"a":"say \"https://api.au1.cliniko.com\"","b":"\\","c":"https://api.au1.cliniko.com/x"}"#;
        let want = r#"{"a":"say \"https://api.au1.cliniko.com\"","b":"\\","c":"http://127.0.0.1:8080/v1/x"}"#;
        assert_eq!(rw(doc), want);
        // A string that opens with an escaped quote is not a link.
        untouched(r#"\"https://api.au1.cliniko.com/x"#);
        // Non-ASCII escapes never match a host byte.
        untouched(r"https://api.au1.cliniko.co\u00e9/x");
    }

    #[test]
    fn keys_are_never_rewritten() {
        let doc = "{\"https://api.au1.cliniko.com/v1/a\" \n: \"https://api.au1.cliniko.com/v1/b\" ,\"https://api.au1.cliniko.com\":1}";
        let want = "{\"https://api.au1.cliniko.com/v1/a\" \n: \"http://127.0.0.1:8080/v1/b\" ,\"https://api.au1.cliniko.com\":1}";
        assert_eq!(rw(doc), want);
        // Arrays and a bare top-level string are values.
        assert_eq!(
            rw("[\"https://api.au1.cliniko.com/v1/a\"]"),
            "[\"http://127.0.0.1:8080/v1/a\"]"
        );
        assert_eq!(
            rw("\"https://api.au1.cliniko.com/v1/a\"  "),
            "\"http://127.0.0.1:8080/v1/a\"  "
        );
    }

    #[test]
    fn garbage_passes_through() {
        for input in [
            "not json at all",
            "{\"a\":\"https://api.au1.cliniko.com/v1/unterminated",
            "{\"a\":\"https://api.au1.cliniko",
            "\"\\",
            "\"\\u12",
            "\"\\u12\"",
            "\"https:\\u00",
            "}}]]\"\"\"",
            "\u{0}\u{1}\"\u{7f}",
        ] {
            assert_eq!(rw(input), input, "{input:?}");
        }
        let r = rewriter();
        let bytes: Vec<u8> = (0..=255u8)
            .chain(b"\"https://api.au1.cliniko.com".iter().copied())
            .collect();
        assert_eq!(chunked(&r, &[&bytes]), bytes);
    }

    #[test]
    fn long_strings_are_bounded() {
        // A host longer than any DNS name is decided without waiting for the string's end.
        let long = format!("https://{}/x", "a".repeat(5000));
        untouched(&long);
        let mut s = rewriter().stream();
        let mut out = Vec::new();
        s.push(format!("\"{long}").as_bytes(), &mut out);
        assert_eq!(
            out.len(),
            1 + long.len(),
            "an undecidable prefix is not held"
        );
        // A matched link longer than the hold limit is still rewritten, and nothing is lost.
        let path = "p".repeat(20_000);
        expect(
            &format!("https://api.au1.cliniko.com/v1/{path}"),
            &format!("http://127.0.0.1:8080/v1/{path}"),
        );
    }

    #[test]
    fn public_base_is_json_escaped_in_bodies() {
        let r = LinkRewriter::new("http://a\"b", &[]);
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(br#"["https://api.au1.cliniko.com/x"]"#, &mut out);
        s.finish(&mut out);
        assert_eq!(out, br#"["http://a\"b/v1/x"]"#);
    }

    #[tokio::test]
    async fn body_wrapper_streams_and_keeps_trailers() {
        use futures_util::stream;
        use http_body::Frame;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = vec![
            Ok(Frame::data("{\"self\":\"https://api.au".into())),
            Ok(Frame::data("1.cliniko.com/v1/x\"".into())),
            Ok(Frame::data("}".into())),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = Body::new(http_body_util::StreamBody::new(stream::iter(frames)));
        let collected = rewriter().rewrite_body(inner).collect().await.unwrap();
        assert_eq!(
            collected.trailers().and_then(|t| t.get("x-t")).unwrap(),
            "1"
        );
        assert_eq!(
            collected.to_bytes(),
            "{\"self\":\"http://127.0.0.1:8080/v1/x\"}"
        );

        // A body ending inside a held string flushes it unchanged.
        let inner = Body::from("{\"a\":\"https://api.au1.cliniko.com/v1");
        let bytes = rewriter()
            .rewrite_body(inner)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(bytes, "{\"a\":\"https://api.au1.cliniko.com/v1");
    }

    #[tokio::test]
    async fn body_errors_pass_through() {
        use futures_util::stream;
        use http_body::Frame;
        let frames: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = vec![
            Ok(Frame::data("[1,".into())),
            Err(std::io::Error::other("upstream reset")),
        ];
        let inner = Body::new(http_body_util::StreamBody::new(stream::iter(frames)));
        let mut body = rewriter().rewrite_body(inner);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "[1,");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("upstream reset"));
    }

    #[test]
    fn a_cliniko_page_takes_the_fast_path_and_matches_the_stream() {
        let r = rewriter();
        let mut page = String::from("{\"patients\":[");
        for i in 0..50 {
            page.push_str(&format!(
                "{{\"id\":\"{i}\",\"first_name\":\"Ann\",\"notes\":\"said \\\"hi\\\" \\\\ https://api.au1.cliniko.com/v1/x\",\"links\":{{\"self\":\"https://api.au1.cliniko.com/v1/patients/{i}\"}},\"appointments\":{{\"links\":{{\"self\":\"https://api.au1.cliniko.com/v1/patients/{i}/appointments\"}}}},\"https://api.au1.cliniko.com/key\":1}},"
            ));
        }
        page.push_str(
            "{}],\"links\":{\"self\":\"https://api.au1.cliniko.com/v1/patients?page=1\"}}",
        );
        let streamed = chunked(&r, &[page.as_bytes()]);
        let fast = super::whole::rewrite(&r.inner, page.as_bytes())
            .expect("decided without the stream")
            .expect("links were rewritten");
        assert_eq!(fast, streamed);
        let text = String::from_utf8(fast).unwrap();
        assert_eq!(
            text.matches("http://127.0.0.1:8080/v1/patients/").count(),
            100
        );
        // Keys and text inside other strings stay as they were.
        assert_eq!(
            text.matches("\"https://api.au1.cliniko.com/key\"").count(),
            50
        );
        assert_eq!(
            text.matches("\\\\ https://api.au1.cliniko.com/v1/x")
                .count(),
            50
        );
        // Nothing to rewrite: the same buffer back, no copy.
        let plain = bytes::Bytes::from_static(b"{\"a\":\"hello\"}");
        let back = r.rewrite_whole(plain.clone());
        assert_eq!(back.as_ptr(), plain.as_ptr());
    }
}

#[cfg(test)]
mod proptests {
    use super::LinkRewriter;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    const BASE: &str = "http://127.0.0.1:8080";

    fn rewriter() -> LinkRewriter {
        LinkRewriter::new(BASE, &["https://localhost:8443/v1".to_string()])
    }

    fn run(r: &LinkRewriter, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            s.push(&input[at..c], &mut out);
            at = c;
        }
        s.push(&input[at..], &mut out);
        s.finish(&mut out);
        out
    }

    /// Pieces that make the scanner's interesting paths likely in random input.
    const PIECES: &[&str] = &[
        "\"",
        "\\",
        "\\\"",
        "\\/",
        "\\u002f",
        "\\u00",
        ":",
        ",",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\n",
        "http",
        "https://",
        "http://",
        "HTTPS://",
        "/v1",
        "/",
        "?",
        "#",
        ":443",
        ":8443",
        "api.",
        "au1.",
        "uk2",
        "api.au1.cliniko.com",
        "api.cliniko.com",
        ".cliniko.com",
        ".cliniko.community",
        ".evil.example",
        "localhost",
        "acme.cliniko.com",
        "patients",
    ];

    /// Like [`PIECES`] without escapes: what the whole-body fast path decides on its own.
    const UNESCAPED_PIECES: &[&str] = &[
        "\"",
        "\"h",
        "\"https://api.au1.cliniko.com/v1/p\"",
        "\"https://localhost:8443/v1\"",
        "\"https://acme.cliniko.com/t\"",
        ":",
        ",",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\n",
        "https://",
        "HTTPS://",
        "/v1",
        ":443",
        "api.au1.cliniko.com",
        "localhost",
        "x",
    ];

    /// Like [`PIECES`] but without any host that could form an upstream origin.
    const SAFE_PIECES: &[&str] = &[
        "\"",
        "\\",
        "\\\"",
        "\\/",
        ":",
        ",",
        "{",
        "}",
        "[",
        "]",
        " ",
        "http",
        "https://",
        "http://",
        "/v1",
        "/",
        "?",
        "#",
        ":443",
        "api.",
        "au1.",
        ".com",
        "acme.example",
        "x",
    ];

    fn bytes_from(pieces: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => proptest::sample::select(pieces).prop_map(|p| p.as_bytes().to_vec()),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        proptest::collection::vec(piece, 0..48).prop_map(|v| v.concat())
    }

    fn cuts(len: usize, raw: Vec<proptest::sample::Index>) -> Vec<usize> {
        let mut c: Vec<usize> = raw.iter().map(|i| i.index(len + 1)).collect();
        c.sort_unstable();
        c
    }

    fn link() -> impl Strategy<Value = String> {
        let origin = proptest::sample::select(vec![
            "https://api.au1.cliniko.com",
            "http://api.cliniko.com",
            "HTTPS://API.UK2.Cliniko.com",
            "https://api.ca1.cliniko.com:443",
            "https://localhost:8443",
        ]);
        let v1 = proptest::sample::select(vec!["", "/v1"]);
        (
            origin,
            v1,
            "(/[a-z0-9_]{0,8}){0,3}(\\?[a-z]=[0-9&]{0,6})?(#[a-z]{0,3})?",
        )
            .prop_map(|(o, v, rest)| format!("{o}{v}{rest}"))
    }

    fn other_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,12}",
            "https://acme\\.cliniko\\.com/[a-z]{0,6}",
            "https://api\\.au1\\.cliniko\\.com\\.evil\\.example/[a-z]{0,4}",
            "see https://api\\.au1\\.cliniko\\.com/[a-z]{0,4}",
        ]
    }

    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            3 => link().prop_map(Value::String),
            2 => other_string().prop_map(Value::String),
            1 => any::<i64>().prop_map(Value::from),
            1 => Just(Value::Null),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                // Keys include links: they must come back unchanged.
                proptest::collection::vec((prop_oneof![link(), "[a-z_]{1,8}"], inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// The expected document: every string value that is an upstream link, rewritten.
    fn expected(r: &LinkRewriter, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(r.rewrite_url(s).unwrap_or_else(|| s.clone())),
            Value::Array(a) => Value::Array(a.iter().map(|x| expected(r, x)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), expected(r, x))).collect())
            }
            other => other.clone(),
        }
    }

    /// An independent check that `s` still starts with an upstream origin.
    fn starts_with_upstream(s: &str) -> bool {
        let l = s.to_ascii_lowercase();
        let Some(rest) = l
            .strip_prefix("https://")
            .or_else(|| l.strip_prefix("http://"))
        else {
            return false;
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let host = rest[..end].trim_end_matches(":443").trim_end_matches(":80");
        host == "api.cliniko.com"
            || host == "localhost:8443"
            || host
                .strip_prefix("api.")
                .and_then(|h| h.strip_suffix(".cliniko.com"))
                .is_some_and(crate::config::is_shard_name)
    }

    /// The fast path gives the stream's output whenever it decides, and `rewrite_whole` always does.
    fn fast_path_agrees(input: Vec<u8>) -> Result<(), proptest::test_runner::TestCaseError> {
        let r = rewriter();
        let streamed = run(&r, &input, &[]);
        match super::whole::rewrite(&r.inner, &input) {
            Ok(Some(out)) => prop_assert_eq!(&out, &streamed),
            Ok(None) => prop_assert_eq!(&input, &streamed),
            Err(()) => {}
        }
        prop_assert_eq!(
            r.rewrite_whole(bytes::Bytes::from(input)).to_vec(),
            streamed
        );
        Ok(())
    }

    fn strings(v: &Value, values: &mut Vec<String>, keys: &mut Vec<String>) {
        match v {
            Value::String(s) => values.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, values, keys)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                keys.push(k.clone());
                strings(x, values, keys);
            }),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_chunking_gives_the_same_output(
            input in bytes_from(PIECES),
            raw in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        ) {
            let r = rewriter();
            let whole = run(&r, &input, &[]);
            prop_assert_eq!(&run(&r, &input, &cuts(input.len(), raw)), &whole);
            let ones: Vec<usize> = (1..input.len()).collect();
            prop_assert_eq!(&run(&r, &input, &ones), &whole);
        }

        #[test]
        fn the_whole_body_fast_path_agrees_with_the_stream(
            input in bytes_from(PIECES),
        ) {
            fast_path_agrees(input)?;
        }

        #[test]
        fn the_fast_path_agrees_with_the_stream_on_unescaped_input(
            pieces in proptest::collection::vec(proptest::sample::select(UNESCAPED_PIECES), 0..40),
        ) {
            fast_path_agrees(pieces.concat().into_bytes())?;
        }

        #[test]
        fn input_without_origins_is_unchanged(
            input in bytes_from(SAFE_PIECES),
            raw in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        ) {
            let r = rewriter();
            prop_assert_eq!(run(&r, &input, &cuts(input.len(), raw)), input);
        }

        #[test]
        fn links_in_documents_move_to_the_gateway(
            v in doc(),
            escape_slashes in any::<bool>(),
            pretty in any::<bool>(),
            raw in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        ) {
            let r = rewriter();
            let mut text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            if escape_slashes {
                text = text.replace('/', "\\/");
            }
            let out = run(&r, text.as_bytes(), &cuts(text.len(), raw));
            let got: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&got, &expected(&r, &v));
            prop_assert_eq!(r.rewrite_whole(bytes::Bytes::from(text.clone())).to_vec(), out.clone());
            if !escape_slashes && !text.contains('\\') && (v.is_object() || v.is_array()) {
                // Pages without escapes are exactly what the fast path is for: it decides.
                prop_assert!(super::whole::rewrite(&r.inner, text.as_bytes()).is_ok());
            }

            let (mut before, mut keys_before) = (Vec::new(), Vec::new());
            strings(&v, &mut before, &mut keys_before);
            let (mut after, mut keys_after) = (Vec::new(), Vec::new());
            strings(&got, &mut after, &mut keys_after);
            prop_assert_eq!(keys_after, keys_before);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(!starts_with_upstream(a), "left upstream: {a}");
                if starts_with_upstream(b) {
                    let want = format!("{BASE}/v1");
                    prop_assert!(a.starts_with(&want), "{b} became {a}");
                } else {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }

    /// Pieces of URL-like strings around the spellings the quick path knows.
    const URL_PIECES: &[&str] = &[
        "https://",
        "http://",
        "HTTPS://",
        "api.",
        "au1",
        "uk12",
        "xx123",
        ".cliniko.com",
        ".cliniko.community",
        "localhost",
        ":8443",
        ":443",
        "/v1",
        "/v10",
        "/",
        "?",
        "#",
        "patients",
        "7",
        ".",
        "-",
        "A",
        "a",
        "1",
        "12",
        "https://api.",
        "http://localhost",
        "acme.",
        "API.",
        "cliniko",
        ".com",
        "x",
    ];

    proptest! {
        // Near misses are narrow targets: more cases than the other properties.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The quick path never disagrees with the full matcher.
        #[test]
        fn quick_agrees_with_classify(
            s in prop_oneof![
                bytes_from(URL_PIECES),
                (
                    proptest::sample::select(&["https://", "http://", "HTTPS://", "https:/"][..]),
                    proptest::sample::select(&["api.au1.cliniko.com", "api.uk12.cliniko.com", "api.xx123.cliniko.com",
                        "api.cliniko.com", "api.au1.cliniko.community", "localhost", "LOCALHOST", "localhostx",
                        "acme.cliniko.com", "API.au1.cliniko.com", "Api.cliniko.com", "ap", "", "[::1]", "local"][..]),
                    proptest::sample::select(&["", ":8443", ":443", ":80", ":"][..]),
                    proptest::sample::select(&["", "/v1", "/v10", "/v1/patients/7", "?page=2", "#f", "/", "x"][..]),
                ).prop_map(|(a, b, c, d)| format!("{a}{b}{c}{d}").into_bytes()),
                // Near misses of Cliniko's own spelling: every shard shape, then what may follow.
                "https://api\\.[a-zA-Z0-9.]{0,6}\\.cliniko\\.com[a-z0-9:/?#.]{0,6}"
                    .prop_map(String::into_bytes),
            ]
        ) {
            let origins = super::matcher::Origins::new(&[
                "https://localhost:8443/v1".to_string(),
                "http://[::1]:8080".to_string(),
            ]);
            if let Some(d) = origins.quick(&s) {
                prop_assert_eq!(origins.classify(&s, true), d);
            }
            let link = [b"https://api.au1.cliniko.com".as_slice(), &s].concat();
            if let Some(d) = origins.quick(&link) {
                prop_assert_eq!(origins.classify(&link, true), d);
            }
        }
    }
}
