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
