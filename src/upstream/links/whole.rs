//! The whole-body fast path: a page of Cliniko JSON held in memory, rewritten by jumping from
//! one possible link to the next instead of walking the streaming state machine.
//!
//! Why: on the miss path, link rewriting was the largest piece of the gateway's own CPU, most
//! of it per-string bookkeeping for the ~1,000 strings of a page that are not links. Here,
//! when the body has no escapes (the usual Cliniko page), only strings that start with `h` are
//! looked at, the quotes between them are counted with a vectorised loop, and the output is
//! copied in as many pieces as there are links (none at all when nothing matches).
//!
//! It decides only what it can decide exactly as [`super::RewriteStream`] would; anything
//! rarer (an escape inside a possible link, a string that starts with an escape, a link at the
//! very end, very long strings or whitespace runs) returns `Err` and the caller uses the
//! streaming path. Property tests hold both to the same output on arbitrary input.

use super::Inner;
use super::matcher::Decision;
use super::stream::{MAX_HOLD, MAX_WS};

/// One replacement: `body[start..end]` becomes the JSON prefix.
struct Edit {
    start: usize,
    end: usize,
}

/// The rewritten body, `Ok(None)` when nothing changes, or `Err(())` when the streaming path
/// must decide.
pub(super) fn rewrite(inner: &Inner, body: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let edits = find_edits(inner, body)?;
    if edits.is_empty() {
        return Ok(None);
    }
    let grow = inner.json_prefix.len() * edits.len();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for e in &edits {
        out.extend_from_slice(&body[at..e.start]);
        out.extend_from_slice(&inner.json_prefix);
        at = e.end;
    }
    out.extend_from_slice(&body[at..]);
    Ok(Some(out))
}

fn find_edits(inner: &Inner, body: &[u8]) -> Result<Vec<Edit>, ()> {
    if memchr::memchr(b'\\', body).is_some() || memchr::memmem::find(body, b"\"H").is_some() {
        return find_edits_escaped(inner, body);
    }
    // No backslash anywhere: every quote delimits a string, so a quote opens one exactly when
    // an even number of quotes came before it. Only quotes followed by `h` need a look; the
    // quotes between them are only counted (a loop the compiler vectorises).
    let mut edits = Vec::new();
    let mut at = 0;
    for open in memchr::memmem::find_iter(body, b"\"h") {
        if open < at {
            continue;
        }
        if odd_quotes(&body[at..open]) {
            // It closes a string (not JSON, but the stream reads it the same way).
            at = open + 1;
            continue;
        }
        let start = open + 1;
        let Some(close) = memchr::memchr(b'"', &body[start..]).map(|p| start + p) else {
            // Unterminated: the stream commits a long one as a value; let it decide.
            return Err(());
        };
        at = close + 1;
        if let Some(edit) = decide(inner, body, start, close)? {
            edits.push(edit);
        }
    }
    Ok(edits)
}

/// Whether `s` holds an odd number of quotes, eight bytes at a time: in each word, the high
/// bit of every byte that is a quote is set (exactly, no false hits), and the parity of all
/// those bits is the answer. Cheaper than a byte loop, and no set-up cost for short runs.
fn odd_quotes(s: &[u8]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const QUOTES: u64 = 0x2222_2222_2222_2222;
    let mut acc = 0u64;
    let mut words = s.chunks_exact(8);
    for w in words.by_ref() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a) ^ QUOTES;
        acc ^= !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
    }
    let tail = words.remainder().iter().filter(|&&b| b == b'"').count();
    (acc.count_ones() as usize + tail) % 2 == 1
}

/// The same for bodies with escapes: every quote and backslash is visited.
fn find_edits_escaped(inner: &Inner, body: &[u8]) -> Result<Vec<Edit>, ()> {
    let mut edits = Vec::new();
    let mut hits = memchr::memchr2_iter(b'"', b'\\', body);
    // Outside a string, backslashes mean nothing (the streaming path copies them too).
    while let Some(open) = hits.next() {
        if body[open] != b'"' {
            continue;
        }
        let start = open + 1;
        let first = body.get(start).copied();
        let candidate = matches!(first, Some(b'h' | b'H'));
        if first == Some(b'\\') || first.is_none() {
            return Err(());
        }
        // Find the closing quote: an escape skips the byte after the backslash.
        let mut skip_to = 0;
        let mut close = None;
        for p in hits.by_ref() {
            if p < skip_to {
                continue;
            }
            if body[p] == b'"' {
                close = Some(p);
                break;
            }
            if candidate {
                return Err(());
            }
            skip_to = p + 2;
        }
        let Some(close) = close else {
            // Unterminated: an ordinary string is given back as it came; a possible link is
            // committed by the stream once long enough, so it decides.
            return if candidate { Err(()) } else { Ok(edits) };
        };
        if candidate && let Some(edit) = decide(inner, body, start, close)? {
            edits.push(edit);
        }
    }
    Ok(edits)
}

/// What the streaming path does with the string `body[start..close]`, which starts with
/// `h`/`H` and has no escapes: `Err` when it would not decide it in one step.
fn decide(inner: &Inner, body: &[u8], start: usize, close: usize) -> Result<Option<Edit>, ()> {
    let s = &body[start..close];
    if s.len() >= MAX_HOLD {
        return Err(());
    }
    let after = &body[close + 1..];
    let ws = after
        .iter()
        .take(MAX_WS + 1)
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    let Some(&next) = after.get(ws) else {
        return Err(());
    };
    if ws > MAX_WS {
        return Err(());
    }
    if next == b':' {
        return Ok(None);
    }
    let decision = match inner.origins.quick(s) {
        Some(k) => Decision::Match(k),
        None => inner.origins.classify(s, true),
    };
    Ok(match decision {
        Decision::Match(k) => Some(Edit {
            start,
            end: start + k,
        }),
        Decision::NoMatch | Decision::NeedMore => None,
    })
}

#[cfg(test)]
mod tests {
    use super::odd_quotes;

    #[test]
    fn quote_parity_is_exact_for_every_byte_and_length() {
        // Bytes next to `"` in value (0x21, 0x23, 0xA2) must never count as quotes.
        let bytes = [b'"', 0x21, 0x23, 0xA2, 0x00, 0xFF, 0x7F, b'a'];
        let mut seed = 7u32;
        for len in 0..80 {
            for _ in 0..50 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        bytes[(seed >> 16) as usize % bytes.len()]
                    })
                    .collect();
                let want = s.iter().filter(|&&b| b == b'"').count() % 2 == 1;
                assert_eq!(odd_quotes(&s), want, "{s:?}");
            }
        }
    }
}
