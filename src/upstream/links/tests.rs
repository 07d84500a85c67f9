use super::LinkRewriter;
use super::matcher::Decision;
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
    assert!(want.contains("\"next\": \"http://127.0.0.1:8080/v1/patients?page=2&per_page=50\""));
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
    let want =
        r#"{"a":"say \"https://api.au1.cliniko.com\"","b":"\\","c":"http://127.0.0.1:8080/v1/x"}"#;
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
fn the_quick_path_covers_the_common_spellings() {
    let o = super::matcher::Origins::new(&["https://localhost:8443/v1".to_string()]);
    for (s, k) in [
        ("https://api.au1.cliniko.com/v1/patients/7", 30),
        ("https://api.uk12.cliniko.com/patients", 28),
        ("https://localhost:8443/v1?page=2", 25),
        ("https://localhost:8443", 22),
    ] {
        assert_eq!(o.quick(s.as_bytes()), Some(Decision::Match(k)), "{s}");
        assert_eq!(o.classify(s.as_bytes(), true), Decision::Match(k), "{s}");
    }
    for s in [
        "https://api.au1.cliniko.com.evil.example/",
        "https://localhost:9999/v1",
        "HTTPS://api.au1.cliniko.com/",
        "https://LocalHost:8443/v1",
        "https://API.au1.cliniko.com/v1",
    ] {
        assert_eq!(o.quick(s.as_bytes()), None, "{s}");
    }
    // Cliniko's hosts that are not its API (a telehealth link), and other sites, are refused
    // without the full parse; a configured host of the other scheme is not that origin.
    for s in [
        "https://acme.cliniko.com/telehealth/abc",
        "https://cliniko.com",
        "http://localhost:8443/v1",
        "https://example.com/api.au1.cliniko.com",
        "https://",
    ] {
        assert_eq!(o.quick(s.as_bytes()), Some(Decision::NoMatch), "{s}");
        assert_eq!(o.classify(s.as_bytes(), true), Decision::NoMatch, "{s}");
    }
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
    page.push_str("{}],\"links\":{\"self\":\"https://api.au1.cliniko.com/v1/patients?page=1\"}}");
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

#[test]
fn quick_takes_the_usual_spellings() {
    let cases: &[(&str, Option<usize>)] = &[
        ("https://api.au1.cliniko.com/v1/patients/7", Some(30)),
        ("https://api.uk12.cliniko.com/v1", Some(31)),
        ("https://api.au1.cliniko.com", Some(27)),
        ("https://api.au1.cliniko.com?x", Some(27)),
        ("https://api.au1.cliniko.com/v10", Some(27)),
        ("https://api.au1.cliniko.com/v1#f", Some(30)),
        // Left to the matcher: other hosts, ports, case, look-alikes.
        ("https://api.au1.cliniko.com.evil.example/v1", None),
        ("https://api.au1.cliniko.community", None),
        ("https://api.au1.cliniko.com:443/v1", None),
        ("https://api.cliniko.com/v1", None),
        ("https://api.au123.cliniko.com/v1", None),
        ("https://api.aux.cliniko.com/v1", None),
        ("https://api.a12.cliniko.com/v1", None),
        ("https://api.au1x.cliniko.com/v1", None),
        ("https://api.Au1.cliniko.com/v1", None),
        ("HTTPS://api.au1.cliniko.com/v1", None),
        ("https://api.au1", None),
    ];
    for &(s, want) in cases {
        assert_eq!(
            super::matcher::Origins::default().quick(s.as_bytes()),
            want.map(Decision::Match),
            "{s}"
        );
    }
    // Not an API host: refused on the spot.
    assert_eq!(
        super::matcher::Origins::default().quick(b"https://acme.cliniko.com/t/1"),
        Some(Decision::NoMatch)
    );
}
