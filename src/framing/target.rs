//! Request targets as real clients send them, made parseable before hyper sees them.
//!
//! curl, Go's `net/http` and old Java clients send a query exactly as it was typed, and
//! Cliniko's own filter syntax types `"`, `<` and `>` (`q[]=updated_at:>2024-01-01T00:00:00Z`,
//! `q[]=last_name:"O'Brien"`). `http::Uri`, which hyper parses every target with, refuses those
//! bytes, and hyper then answers a bare 400 before any gateway code runs. So, per HTTP/1.x head:
//! - in the query, every byte `http::Uri` refuses that a client may mean literally (`"`, `<`,
//!   `>`, a space, bytes that are not UTF-8) is percent-encoded; Cliniko decodes the query, so
//!   it sees the same filter. Every other byte stays as it came.
//! - a target that stays unusable (such a byte in the path, a control byte anywhere, no target
//!   at all) is still made parseable, so that the gateway answers it, and flagged `bad`: the
//!   guard answers it with a JSON 400 `bad_target` and an access line.
//!
//! HTTP/2 has no request line: h2 checks `:path` itself and resets the stream (see
//! docs/migrating.md).

/// Bytes `http::Uri` accepts as they are in a path and in a query (no `"` `<` `>` `` ` ``, no
/// space, no control or non-ASCII byte): a target made only of these needs no look.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'"' | b'<' | b'>' | b'`');
        b += 1;
    }
    t
};

/// A head whose request target was rewritten.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fixed {
    /// The whole head with the new target.
    pub head: Vec<u8>,
    /// The target was unusable: the request must be refused (`bad_target`).
    pub bad: bool,
}

/// The head with its request target made parseable, or `None` when it needs nothing (or is
/// not an HTTP/1.x request line at all, which hyper judges as before). A rewritten head longer
/// than `max_head_bytes` gets the target `/` instead, flagged bad.
pub(super) fn fix_head(head: &[u8], max_head_bytes: usize) -> Option<Fixed> {
    let lf = memchr::memchr(b'\n', head)?;
    let line = head[..lf].strip_suffix(b"\r").unwrap_or(&head[..lf]);
    let first = memchr::memchr(b' ', line)?;
    // The last space, not the second: old Java clients send spaces inside the target.
    let last = memchr::memrchr(b' ', line)?;
    if last <= first || !matches!(&line[last + 1..], b"HTTP/1.1" | b"HTTP/1.0") {
        return None;
    }
    let target = &line[first + 1..last];
    if !target.is_empty() && target.iter().all(|b| PLAIN[usize::from(*b)]) {
        return None;
    }
    let (mut new, mut bad) = fix_target(target)?;
    let grown = head.len() - target.len() + new.len();
    if grown > max_head_bytes || http::Uri::try_from(new.as_slice()).is_err() {
        new = b"/".to_vec();
        bad = true;
    }
    let mut out = Vec::with_capacity(head.len() - target.len() + new.len());
    out.extend_from_slice(&head[..=first]);
    out.extend_from_slice(&new);
    out.extend_from_slice(&head[last..]);
    Some(Fixed { head: out, bad })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
    Fragment,
}

/// The target with every byte `http::Uri` refuses percent-encoded, and whether one of them
/// makes it unusable; `None` when nothing needed encoding.
fn fix_target(target: &[u8]) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::with_capacity(target.len() + 16);
    let mut bad = false;
    let mut changed = target.is_empty();
    let mut part = Part::Path;
    for chunk in target.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            part = match (part, b) {
                (Part::Path, b'?') => Part::Query,
                (Part::Path | Part::Query, b'#') => Part::Fragment,
                _ => part,
            };
            // Refused: a control byte anywhere; in the path, what `http::Uri`'s path refuses
            // (it accepts `"`, `{`, `}` and `|` as sent).
            let refuse = b < 0x20 || b == 0x7f || (part == Part::Path && b" <>`".contains(&b));
            // Encoded and let through: what a query means literally; in the fragment (never
            // parsed: `http::Uri` drops it) only what httparse would not accept.
            let encode = match part {
                Part::Query => b" \"<>".contains(&b),
                Part::Fragment => b == b' ',
                Part::Path => false,
            };
            if refuse || encode {
                bad |= refuse;
                changed = true;
                encode_byte(b, &mut out);
            } else {
                out.push(b);
            }
        }
        // Not UTF-8 (`http::Uri` requires it): a Latin-1 name in a query is encoded.
        for &b in chunk.invalid() {
            bad |= part == Part::Path;
            changed = true;
            encode_byte(b, &mut out);
        }
    }
    changed.then_some((out, bad))
}

fn encode_byte(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(target: &[u8]) -> Vec<u8> {
        let mut h = b"GET ".to_vec();
        h.extend_from_slice(target);
        h.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        h
    }

    /// The new target and whether it is flagged; `None` when untouched.
    fn fixed(target: &[u8]) -> Option<(String, bool)> {
        let f = fix_head(&head(target), 16 * 1024)?;
        let line_end = memchr::memmem::find(&f.head, b" HTTP/1.1").unwrap();
        let t = String::from_utf8(f.head[4..line_end].to_vec()).unwrap();
        assert!(f.head.ends_with(b" HTTP/1.1\r\nHost: x\r\n\r\n"));
        Some((t, f.bad))
    }

    #[test]
    fn clinikos_filters_are_encoded_in_the_query() {
        for (raw, want) in [
            (
                &b"/v1/patients?q[]=updated_at:>2024-01-01T00:00:00Z"[..],
                "/v1/patients?q[]=updated_at:%3E2024-01-01T00:00:00Z",
            ),
            (
                b"/v1/patients?q[]=date_of_birth:>=1980-01-01&q[]=date_of_birth:<1990-01-01",
                "/v1/patients?q[]=date_of_birth:%3E=1980-01-01&q[]=date_of_birth:%3C1990-01-01",
            ),
            (
                b"/v1/patients?q[]=last_name:\"O'Brien\"",
                "/v1/patients?q[]=last_name:%22O'Brien%22",
            ),
            (b"/v1/x?a=b c", "/v1/x?a=b%20c"),
            (b"/v1/x?name=\xe9", "/v1/x?name=%E9"),
            (b"/v1/x?a=1#<frag> x", "/v1/x?a=1#<frag>%20x"),
        ] {
            assert_eq!(
                fixed(raw),
                Some((want.to_string(), false)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn what_http_accepts_is_left_alone() {
        for raw in [
            &b"/v1/patients?q[]=last_name:~~ja%on%&sort=a,b:desc"[..],
            b"/v1/x?a={|}`^\\",
            b"/v1/\"x\"/{y}",
            "/v1/x?name=Zoë".as_bytes(),
            "/v1/Zoë".as_bytes(),
            b"http://gw:8080/v1/x?a=1",
            b"*",
        ] {
            assert_eq!(fixed(raw), None, "{}", String::from_utf8_lossy(raw));
        }
        // Not an HTTP/1.x request line: hyper judges it as before.
        assert_eq!(fix_head(b"GET /x?a=<\r\n\r\n", 1024), None);
        assert_eq!(fix_head(b"GET /x?a=< HTTP/2.0\r\n\r\n", 1024), None);
        assert_eq!(fix_head(b"PRI * HTTP/2.0\r\n\r\n", 1024), None);
    }

    #[test]
    fn unusable_targets_are_made_parseable_and_flagged() {
        for (raw, want) in [
            (&b"/v1/a<b>"[..], "/v1/a%3Cb%3E"),
            (b"/v1/a`b", "/v1/a%60b"),
            (b"/v1/pat ients/x", "/v1/pat%20ients/x"),
            (b"/v1/pat\0ients", "/v1/pat%00ients"),
            (b"/v1/x?a=\x01", "/v1/x?a=%01"),
            (b"/v1/x?a=\x7f", "/v1/x?a=%7F"),
            (b"/v1/patients#\x01", "/v1/patients#%01"),
            (b"/v1/\xff", "/v1/%FF"),
            (b"", "/"),
            (b" /v1/x", "/"),
        ] {
            assert_eq!(
                fixed(raw),
                Some((want.to_string(), true)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn growth_past_the_head_limit_is_flagged_not_passed_on() {
        let target = format!("/v1/x?q={}", "<".repeat(100));
        let f = fix_head(&head(target.as_bytes()), 200).unwrap();
        assert!(f.bad);
        assert!(f.head.starts_with(b"GET / HTTP/1.1\r\n"));
    }

    proptest! {
        /// Whatever the target, the rewritten one parses as hyper parses it; an unflagged one
        /// has the same path, and its query decodes to the same bytes.
        #[test]
        fn rewritten_targets_parse_and_mean_the_same(
            query in proptest::collection::vec(any::<u8>().prop_filter("no delimiter", |b| !b" \r\n#".contains(b)), 0..60),
            path in "/v1/[a-z0-9<>` \"]{0,12}",
        ) {
            let mut target = path.as_bytes().to_vec();
            target.push(b'?');
            target.extend_from_slice(&query);
            let Some(f) = fix_head(&head(&target), 16 * 1024) else {
                prop_assert!(http::Uri::try_from(target.as_slice()).is_ok());
                return Ok(());
            };
            let end = memchr::memmem::find(&f.head, b" HTTP/1.1\r\n").unwrap();
            let uri = http::Uri::try_from(&f.head[4..end]).unwrap();
            let path_ok = path.bytes().all(|b| !b" <>`".contains(&b));
            let query_ok = query.iter().all(|b| *b >= 0x20 && *b != 0x7f);
            prop_assert_eq!(f.bad, !(path_ok && query_ok));
            if !f.bad {
                prop_assert_eq!(uri.path(), path.as_str());
                let decoded: Vec<u8> = percent_decode(uri.query().unwrap_or("").as_bytes());
                prop_assert_eq!(decoded, percent_decode(&query));
            }
        }
    }

    fn percent_decode(s: &[u8]) -> Vec<u8> {
        percent_encoding::percent_decode(s).collect()
    }
}
