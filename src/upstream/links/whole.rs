//! The whole-body fast path: a page of Cliniko JSON held in memory, rewritten by jumping from
//! one possible link to the next instead of walking the streaming state machine.
//!
//! Why: on the miss path, link rewriting was the largest piece of the gateway's own CPU, most
//! of it per-string bookkeeping for the ~1,000 strings of a page that are not links. Here,
//! when the body has no escapes (the usual Cliniko page), only strings that start with `h` or
//! `H` are looked at, and the output is copied in as many pieces as there are links (none at
//! all when nothing matches).
//!
//! Finding those strings is one pass over 64-byte blocks, each turned into bit masks of its
//! quotes and its `h`/`H` bytes (SSE2 compares on x86_64). Without backslashes every quote
//! delimits a string, so a running parity says which quotes open one; a block with no quote
//! before an `h` costs only its masks and that parity, and a candidate's closing quote is the
//! next bit of the quote mask. Searching for `"h` and the closing quote separately, and
//! counting the quotes between candidates, cost more: `"` and `h` are both common in JSON, so
//! a substring search stopped at many false starts and each search paid its set-up again.
//! The backslash check rides in the same pass; one backslash anywhere sends the body to a
//! slower scan that visits every quote and backslash.
//!
//! It decides only what it can decide exactly as [`super::RewriteStream`] would; anything
//! rarer (an escape inside a possible link, a string that starts with an escape, a link at the
//! very end, very long strings or whitespace runs) returns `Err` and the caller uses the
//! streaming path. Property tests hold both to the same output on arbitrary input.

use super::Inner;
use super::stream::decide_string;

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
    let mut edits = Vec::new();
    // Whether an odd number of quotes came before the current block.
    let mut inside = false;
    // A possible link opened in an earlier block whose closing quote is not seen yet.
    let mut pending: Option<usize> = None;
    let mut base = 0;
    while base < body.len() {
        let m = match body.get(base..).and_then(<[u8]>::first_chunk) {
            Some(b) => block_masks(b),
            None => {
                // Zero padding: no quote, no `h`, no backslash.
                let mut tail = [0u8; BLOCK];
                tail[..body.len() - base].copy_from_slice(&body[base..]);
                block_masks(&tail)
            }
        };
        if m.backslash {
            // Escapes make quote counting wrong; the slower path reads them one by one.
            return find_edits_escaped(inner, body);
        }
        let q = m.quote;
        if let Some(start) = pending
            && q != 0
        {
            pending = None;
            let close = base + q.trailing_zeros() as usize;
            if let Some(end) = decide(inner, body, start, close)? {
                edits.push(Edit { start, end });
            }
        }
        // Bit i: byte i + 1 (possibly in the next block) is `h` or `H`.
        let next_h = body.get(base + BLOCK).is_some_and(|&b| b | 0x20 == b'h');
        let before_h = (m.h >> 1) | (u64::from(next_h) << 63);
        let maybe = q & before_h;
        if maybe != 0 {
            // A quote opens a string exactly when an even number of quotes came before it.
            let opens = q & (prefix_xor(q) ^ 0u64.wrapping_sub(u64::from(inside)));
            let mut cands = maybe & opens;
            while cands != 0 {
                let bit = cands.trailing_zeros();
                cands &= cands - 1;
                let start = base + bit as usize + 1;
                let later = q & (u64::MAX << bit << 1);
                if later == 0 {
                    // No backslash anywhere before, so the next quote closes it, in a later block.
                    pending = Some(start);
                } else {
                    let close = base + later.trailing_zeros() as usize;
                    if let Some(end) = decide(inner, body, start, close)? {
                        edits.push(Edit { start, end });
                    }
                }
            }
        }
        inside ^= q.count_ones() % 2 == 1;
        base += BLOCK;
    }
    if pending.is_some() {
        // Unterminated: the stream commits a long one as a value; let it decide.
        return Err(());
    }
    Ok(edits)
}

/// Bytes examined together: one bit per byte in a `u64`.
const BLOCK: usize = 64;

/// Where a block's quotes and `h`/`H` bytes are (bit i for byte i), and whether it has a
/// backslash anywhere.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Masks {
    quote: u64,
    h: u64,
    backslash: bool,
}

/// Bit i set when an odd number of bits at or below i are set in `x`.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// SSE2 (part of the x86_64 baseline): a compare and a movemask give 16 bits at a time.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn block_masks(block: &[u8; BLOCK]) -> Masks {
    // SAFETY: the only requirement of `block_masks_sse2` is that the CPU has SSE2, and this
    // is compiled only for targets that guarantee it (the `cfg` above), as every x86_64 does.
    unsafe { block_masks_sse2(block) }
}

/// [`block_masks`] with SSE2 intrinsics.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn block_masks_sse2(block: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let quote = _mm_set1_epi8(b'"' as i8);
    let backslash = _mm_set1_epi8(b'\\' as i8);
    let lower = _mm_set1_epi8(0x20);
    let h = _mm_set1_epi8(b'h' as i8);
    let bits = |eq: __m128i| _mm_movemask_epi8(eq) as u16 as u64;
    let mut m = Masks::default();
    let mut backslashes = _mm_setzero_si128();
    for (k, lane) in block.chunks_exact(16).enumerate() {
        // Two little-endian words, which compile to one unaligned 16-byte load: the load
        // intrinsic takes a raw pointer, and this keeps the code free of `unsafe` but the call.
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&lane[i..i + 8]);
            i64::from_le_bytes(w)
        };
        let v = _mm_set_epi64x(word(8), word(0));
        let shift = 16 * k;
        m.quote |= bits(_mm_cmpeq_epi8(v, quote)) << shift;
        m.h |= bits(_mm_cmpeq_epi8(_mm_or_si128(v, lower), h)) << shift;
        backslashes = _mm_or_si128(backslashes, _mm_cmpeq_epi8(v, backslash));
    }
    m.backslash = bits(backslashes) != 0;
    m
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn block_masks(block: &[u8; BLOCK]) -> Masks {
    block_masks_portable(block)
}

/// The same eight bytes at a time in a `u64`, for other targets (and as the tests' reference
/// for the SSE2 one): the high bit of every byte equal to the wanted one is set, exactly.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn block_masks_portable(block: &[u8; BLOCK]) -> Masks {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let eq = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        let high = !(((y & LOW7).wrapping_add(LOW7)) | y | LOW7);
        // Gathers the eight high bits (bytes 0..8) into the low byte.
        (high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
    };
    let mut m = Masks::default();
    for (k, w) in block.chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a);
        let shift = 8 * k;
        m.quote |= eq(x, b'"') << shift;
        m.backslash |= eq(x, b'\\') != 0;
        m.h |= eq(x | (ONES * 0x20), b'h') << shift;
    }
    m
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
        if candidate && let Some(end) = decide(inner, body, start, close)? {
            edits.push(Edit { start, end });
        }
    }
    Ok(edits)
}

/// What the streaming path does with the string `body[start..close]`, which starts with
/// `h`/`H` and has no escapes: the end of the bytes to replace if it is a link, `Err` when
/// the stream would not decide it in one step. (Small enough to come back in registers.)
fn decide(inner: &Inner, body: &[u8], start: usize, close: usize) -> Result<Option<usize>, ()> {
    match decide_string(inner, &body[start..close], &body[close + 1..]) {
        Some(k) => Ok(k.map(|k| start + k)),
        None => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::LinkRewriter;
    use super::{BLOCK, Masks, block_masks, block_masks_portable, prefix_xor};
    use proptest::prelude::*;

    /// The reference: one byte at a time.
    fn scalar(block: &[u8]) -> Masks {
        let mut m = Masks::default();
        for (i, &b) in block.iter().enumerate() {
            m.quote |= u64::from(b == b'"') << i;
            m.backslash |= b == b'\\';
            m.h |= u64::from(b == b'h' || b == b'H') << i;
        }
        m
    }

    #[test]
    fn block_masks_are_exact_for_every_byte_value() {
        // Every byte value at every position (neighbours such as 0x21, 0x23, 0xA2, 0x48 | 0x80
        // and 0x7C must never count), then random mixes weighted towards the wanted bytes.
        for v in 0..=255u8 {
            for pos in 0..BLOCK {
                let mut block = [b'"'; BLOCK];
                block[pos] = v;
                assert_eq!(block_masks(&block), scalar(&block), "{v:#x} at {pos}");
                assert_eq!(
                    block_masks_portable(&block),
                    scalar(&block),
                    "{v:#x} at {pos}"
                );
                let mut block = [v; BLOCK];
                block[pos] = b'h';
                assert_eq!(block_masks(&block), scalar(&block), "{v:#x} around {pos}");
                assert_eq!(block_masks_portable(&block), scalar(&block));
            }
        }
        let bytes = [
            b'"', b'\\', b'h', b'H', 0x21, 0x23, 0xA2, 0xE8, 0xC8, 0x00, 0xFF, 0x7F,
        ];
        let mut seed = 7u32;
        for _ in 0..5000 {
            let block: [u8; BLOCK] = std::array::from_fn(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let r = (seed >> 16) as usize;
                if r.is_multiple_of(3) {
                    (r >> 2) as u8
                } else {
                    bytes[(r >> 2) % bytes.len()]
                }
            });
            assert_eq!(block_masks(&block), scalar(&block), "{block:?}");
            assert_eq!(block_masks_portable(&block), scalar(&block), "{block:?}");
        }
    }

    #[test]
    fn prefix_xor_is_the_running_parity() {
        let mut seed = 11u64;
        for _ in 0..2000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let x = seed & (seed >> 7);
            let mut want = 0u64;
            let mut parity = 0u64;
            for i in 0..64 {
                parity ^= (x >> i) & 1;
                want |= parity << i;
            }
            assert_eq!(prefix_xor(x), want, "{x:#x}");
        }
    }

    fn rewriter() -> LinkRewriter {
        LinkRewriter::new(
            "http://127.0.0.1:8080",
            &["https://localhost:8443/v1".to_string()],
        )
    }

    fn streamed(r: &LinkRewriter, input: &[u8]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(input, &mut out);
        s.finish(&mut out);
        out
    }

    /// The fast path's output (the input itself when it changes nothing), or `None`.
    fn fast(r: &LinkRewriter, input: &[u8]) -> Option<Vec<u8>> {
        match super::rewrite(&r.inner, input) {
            Ok(Some(out)) => Some(out),
            Ok(None) => Some(input.to_vec()),
            Err(()) => None,
        }
    }

    #[test]
    fn every_alignment_against_the_blocks_gives_the_streams_output() {
        // Links, keys and other strings at every offset from a block boundary: quotes on the
        // last byte of a block with the `h` in the next, strings that span two or three
        // blocks, and candidates whose closing quote is several blocks on.
        let r = rewriter();
        let long = "x".repeat(150);
        let doc = format!(
            "{{\"a\":\"https://api.au1.cliniko.com/v1/p/1\",\"https://api.au1.cliniko.com/k\":\"h\",\
             \"b\":[\"HTTPS://API.UK2.cliniko.com/v1\",\"https://localhost:8443/x\",\"h{long}\",\
             \"https://acme.cliniko.com/t\",\"https://api.ca1.cliniko.com/v1/{long}\"],\
             \"c\":\"http://api.cliniko.com\" , \"d\":\"https://api.au1.cliniko.com\"}}"
        );
        for pad in 0..2 * BLOCK + 1 {
            let input = format!("{}{doc}", " ".repeat(pad)).into_bytes();
            let want = streamed(&r, &input);
            assert_eq!(
                fast(&r, &input).as_deref(),
                Some(want.as_slice()),
                "pad {pad}"
            );
            let text = String::from_utf8(want).unwrap();
            assert_eq!(
                text.matches("http://127.0.0.1:8080/v1").count(),
                6,
                "pad {pad}"
            );
        }
    }

    #[test]
    fn what_the_stream_must_decide_is_left_to_it() {
        let r = rewriter();
        let long = "x".repeat(200);
        for input in [
            // Unterminated, short and spanning blocks.
            "[\"https://api.au1.cliniko.com/v1".to_string(),
            format!("[\"https://api.au1.cliniko.com/v1/{long}"),
            // Nothing after the closing quote says key or value.
            "\"https://api.au1.cliniko.com/v1\"".to_string(),
            format!("{long}\"https://api.au1.cliniko.com/v1\"   "),
        ] {
            assert_eq!(
                super::rewrite(&r.inner, input.as_bytes()).err(),
                Some(()),
                "{input}"
            );
        }
        // A backslash anywhere, even past the links, takes the escape-aware scan.
        let input = format!("[\"https://api.au1.cliniko.com/v1\",\"{long}\\n\"]");
        assert_eq!(
            fast(&r, input.as_bytes()),
            Some(streamed(&r, input.as_bytes()))
        );
    }

    const FILLER: &[&str] = &[
        "\"",
        "\"h",
        "\"H",
        "\"https://api.au1.cliniko.com/v1/p\"",
        "\"https://localhost:8443\"",
        "\"http://API.cliniko.com/v1\"",
        ":",
        ",",
        "[",
        "]",
        " ",
        "\n",
        "https://",
        "x",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "                                                                                ",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Longer unescaped input than the shared property tests make, so that candidates
        /// and their closing quotes fall in different blocks, often several apart.
        #[test]
        fn the_block_scan_agrees_with_the_stream_across_blocks(
            pieces in proptest::collection::vec(proptest::sample::select(FILLER), 0..80),
        ) {
            let input = pieces.concat().into_bytes();
            let r = rewriter();
            if let Some(out) = fast(&r, &input) {
                prop_assert_eq!(out, streamed(&r, &input));
            }
        }
    }
}
