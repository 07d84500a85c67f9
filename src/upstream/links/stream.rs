//! The streaming rewriter: a byte-level JSON string scanner with bounded look-ahead.
//!
//! Outside strings and inside strings already known not to match, runs of bytes are copied
//! with `memchr`. Only the start of each string that could be a link is held (at most
//! [`Origins::max_prefix`] unescaped bytes), and a matched string is held until its closing
//! quote and the next significant byte show it is a value, not an object key. Every decision
//! depends on byte positions only, never on where a chunk ends, so any chunking gives the
//! same output. Bytes it cannot make sense of (invalid JSON) pass through unchanged.

use super::Inner;
use super::matcher::Decision;
use bytes::BufMut;
use std::sync::Arc;

/// A matched string longer than this is committed as a value without waiting for its end.
pub(super) const MAX_HOLD: usize = 8 * 1024;
/// Whitespace held between a matched string and the byte that says key or value.
pub(super) const MAX_WS: usize = 64;
/// Stands for an escape that decodes to non-ASCII or is invalid; matches no origin byte.
const OPAQUE: u8 = 0xFF;

/// Where the scanner is in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens: looking for the next `"`.
    Outside,
    /// In a string whose start is still being compared against the origins.
    Candidate,
    /// In a string that will not be rewritten; `escaped` means the last byte was `\`.
    Plain { escaped: bool },
    /// In a string that starts with an origin; `rest` is the raw offset after the origin.
    Matched { rest: usize, escaped: bool },
    /// After a matched string's closing quote, holding whitespace until `:` or anything else.
    After { rest: usize },
}

/// Progress through a JSON escape inside a candidate string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
}

/// Incremental rewriter for one response body; feed it chunks in order, then finish.
#[derive(Debug)]
pub struct RewriteStream {
    inner: Arc<Inner>,
    state: State,
    esc: Esc,
    /// Raw bytes of the current candidate or matched string (after the opening quote).
    raw: Vec<u8>,
    /// Unescaped content of the candidate string so far.
    unesc: Vec<u8>,
    /// For each unescaped byte, the raw length once it was complete.
    raw_end: Vec<usize>,
    /// Whitespace seen after a matched string's closing quote.
    ws: Vec<u8>,
}

impl RewriteStream {
    pub(super) fn new(inner: Arc<Inner>) -> RewriteStream {
        RewriteStream {
            inner,
            state: State::Outside,
            esc: Esc::None,
            raw: Vec::new(),
            unesc: Vec::new(),
            raw_end: Vec::new(),
            ws: Vec::new(),
        }
    }

    /// Rewrites `chunk`, appending whatever can be emitted so far to `out` (any buffer: the
    /// body wrapper uses `BytesMut`, tests and the whole-body path a `Vec`).
    pub fn push<B: BufMut>(&mut self, chunk: &[u8], out: &mut B) {
        let mut i = 0;
        while i < chunk.len() {
            i = match self.state {
                State::Outside => self.outside(chunk, i, out),
                State::Plain { escaped } => self.plain(chunk, i, escaped, out),
                State::Candidate => self.candidate(chunk, i, out),
                State::Matched { rest, escaped } => self.matched(chunk, i, rest, escaped, out),
                State::After { rest } => self.after(chunk[i], i, rest, out),
            };
        }
    }

    /// Emits everything still held; call once after the last chunk.
    pub fn finish<B: BufMut>(&mut self, out: &mut B) {
        match self.state {
            // An unterminated string is not JSON we understand: give it back as it came.
            State::Candidate | State::Matched { .. } => out.put_slice(&self.raw),
            State::After { rest } => {
                self.commit(true, rest, out);
                out.put_u8(b'"');
                out.put_slice(&self.ws);
            }
            State::Outside | State::Plain { .. } => {}
        }
        self.reset_string();
        self.state = State::Outside;
    }

    fn reset_string(&mut self) {
        self.raw.clear();
        self.unesc.clear();
        self.raw_end.clear();
        self.ws.clear();
        self.esc = Esc::None;
    }

    fn outside<B: BufMut>(&mut self, chunk: &[u8], i: usize, out: &mut B) -> usize {
        let Some(q) = memchr::memchr(b'"', &chunk[i..]).map(|p| i + p) else {
            out.put_slice(&chunk[i..]);
            return chunk.len();
        };
        out.put_slice(&chunk[i..=q]);
        // Most strings cannot start a URL; skip the candidate bookkeeping for them.
        self.state = match chunk.get(q + 1) {
            Some(b'h' | b'H') => {
                if let Some(next) = self.whole_string(chunk, q + 1, out) {
                    return next;
                }
                self.reset_string();
                State::Candidate
            }
            Some(b'\\') | None => {
                self.reset_string();
                State::Candidate
            }
            Some(_) => State::Plain { escaped: false },
        };
        q + 1
    }

    /// The common case, decided in one step: the string (no escapes) and the byte after it
    /// that says key or value are both in this chunk. Anything else returns `None` and takes
    /// the byte-by-byte path, which reaches the same output (the chunking tests hold it to that).
    fn whole_string<B: BufMut>(
        &mut self,
        chunk: &[u8],
        start: usize,
        out: &mut B,
    ) -> Option<usize> {
        let end = start + memchr::memchr2(b'"', b'\\', &chunk[start..])?;
        if chunk[end] != b'"' {
            return None;
        }
        let s = &chunk[start..end];
        match decide_string(&self.inner, s, &chunk[end + 1..])? {
            Some(k) => {
                out.put_slice(&self.inner.json_prefix);
                out.put_slice(&s[k..]);
            }
            None => out.put_slice(s),
        }
        out.put_u8(b'"');
        Some(end + 1)
    }

    fn plain<B: BufMut>(
        &mut self,
        chunk: &[u8],
        mut i: usize,
        escaped: bool,
        out: &mut B,
    ) -> usize {
        if escaped {
            out.put_u8(chunk[i]);
            i += 1;
        }
        loop {
            let Some(p) = memchr::memchr2(b'"', b'\\', &chunk[i..]).map(|p| i + p) else {
                out.put_slice(&chunk[i..]);
                self.state = State::Plain { escaped: false };
                return chunk.len();
            };
            if chunk[p] == b'"' {
                out.put_slice(&chunk[i..=p]);
                self.state = State::Outside;
                return p + 1;
            }
            // A backslash: the byte after it is escaped, whatever it is.
            match chunk.get(p + 1) {
                Some(_) => {
                    out.put_slice(&chunk[i..p + 2]);
                    i = p + 2;
                }
                None => {
                    out.put_slice(&chunk[i..]);
                    self.state = State::Plain { escaped: true };
                    return chunk.len();
                }
            }
        }
    }

    /// Feeds candidate bytes one at a time (a candidate is at most a few hundred bytes).
    fn candidate<B: BufMut>(&mut self, chunk: &[u8], mut i: usize, out: &mut B) -> usize {
        while i < chunk.len() {
            let b = chunk[i];
            let produced = match self.esc {
                Esc::None => match b {
                    b'"' => {
                        i += 1;
                        self.close_candidate(out);
                        return i;
                    }
                    b'\\' => {
                        self.esc = Esc::Backslash;
                        None
                    }
                    _ => Some(b),
                },
                Esc::Backslash => {
                    self.esc = Esc::None;
                    match b {
                        b'u' => {
                            self.esc = Esc::Unicode {
                                digits: 0,
                                value: 0,
                            };
                            None
                        }
                        b'"' | b'\\' | b'/' => Some(b),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0C),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        _ => Some(OPAQUE),
                    }
                }
                Esc::Unicode { digits, value } => match (b as char).to_digit(16) {
                    Some(d) => {
                        let value = value * 16 + d;
                        if digits == 3 {
                            self.esc = Esc::None;
                            Some(
                                u8::try_from(value)
                                    .ok()
                                    .filter(u8::is_ascii)
                                    .unwrap_or(OPAQUE),
                            )
                        } else {
                            self.esc = Esc::Unicode {
                                digits: digits + 1,
                                value,
                            };
                            None
                        }
                    }
                    None => {
                        // A broken `\u` escape ends here; `b` is read again as ordinary content.
                        self.esc = Esc::None;
                        self.produce(OPAQUE);
                        if self.decide(false, out) {
                            return i;
                        }
                        continue;
                    }
                },
            };
            self.raw.push(b);
            i += 1;
            if let Some(u) = produced {
                self.produce(u);
                if self.decide(false, out) {
                    return i;
                }
            }
        }
        i
    }

    fn produce(&mut self, u: u8) {
        self.unesc.push(u);
        self.raw_end.push(self.raw.len());
    }

    /// Classifies the candidate when it could have become decidable; true if it left `Candidate`.
    fn decide<B: BufMut>(&mut self, complete: bool, out: &mut B) -> bool {
        let n = self.unesc.len();
        let last = self.unesc.last().copied();
        let worth_asking = complete
            || n <= "https://".len()
            || n >= self.inner.origins.max_prefix()
            || matches!(last, Some(b'/' | b'?' | b'#' | b':' | b']'));
        if !worth_asking {
            return false;
        }
        let decision = match self.inner.origins.classify(&self.unesc, complete) {
            Decision::NeedMore if n >= self.inner.origins.max_prefix() => Decision::NoMatch,
            d => d,
        };
        match decision {
            Decision::NeedMore => false,
            Decision::NoMatch => {
                out.put_slice(&self.raw);
                self.reset_string();
                self.state = State::Plain { escaped: false };
                true
            }
            Decision::Match(k) => {
                let rest = k
                    .checked_sub(1)
                    .and_then(|j| self.raw_end.get(j))
                    .copied()
                    .unwrap_or(0);
                self.unesc.clear();
                self.raw_end.clear();
                self.state = State::Matched {
                    rest,
                    escaped: false,
                };
                true
            }
        }
    }

    fn close_candidate<B: BufMut>(&mut self, out: &mut B) {
        self.decide(true, out);
        match self.state {
            State::Matched { rest, .. } => {
                self.ws.clear();
                self.state = State::After { rest };
            }
            _ => {
                out.put_u8(b'"');
                self.state = State::Outside;
            }
        }
    }

    fn matched<B: BufMut>(
        &mut self,
        chunk: &[u8],
        mut i: usize,
        rest: usize,
        mut escaped: bool,
        out: &mut B,
    ) -> usize {
        while i < chunk.len() {
            if self.raw.len() >= MAX_HOLD {
                // Too long to wait for: a key this long starting with an origin is not real.
                self.commit(true, rest, out);
                self.state = State::Plain { escaped };
                return i;
            }
            let b = chunk[i];
            i += 1;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                self.ws.clear();
                self.state = State::After { rest };
                return i;
            }
            self.raw.push(b);
        }
        self.state = State::Matched { rest, escaped };
        i
    }

    fn after<B: BufMut>(&mut self, b: u8, i: usize, rest: usize, out: &mut B) -> usize {
        let is_ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        if is_ws && self.ws.len() < MAX_WS {
            self.ws.push(b);
            return i + 1;
        }
        // A key is a string followed by `:`; keys are never rewritten.
        self.commit(b != b':', rest, out);
        out.put_u8(b'"');
        out.put_slice(&self.ws);
        self.reset_string();
        self.state = State::Outside;
        // `b` is read again in `Outside`.
        i
    }

    /// Emits the held matched string: rewritten if it is a value, as received if a key.
    fn commit<B: BufMut>(&mut self, value: bool, rest: usize, out: &mut B) {
        if value {
            out.put_slice(&self.inner.json_prefix);
            out.put_slice(self.raw.get(rest..).unwrap_or_default());
        } else {
            out.put_slice(&self.raw);
        }
        self.raw.clear();
    }
}

/// How a whole string `s` (no escapes, closing quote seen) is rewritten, given the bytes
/// `after` its closing quote: `Some(Some(k))` when it is a value whose first `k` bytes are an
/// upstream origin, `Some(None)` when it stays as it is (a key, or not a link), `None` when it
/// cannot be decided from what is in sight (too long to hold, or the byte that says key or
/// value is not there yet). The stream and the whole-body fast path both decide through here.
pub(super) fn decide_string(inner: &Inner, s: &[u8], after: &[u8]) -> Option<Option<usize>> {
    if s.len() >= MAX_HOLD {
        return None;
    }
    let ws = after
        .iter()
        .take(MAX_WS + 1)
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    if ws > MAX_WS || *after.get(ws)? == b':' {
        return if ws > MAX_WS { None } else { Some(None) };
    }
    let decision = match inner.origins.quick(s) {
        Some(d) => d,
        None => inner.origins.classify(s, true),
    };
    Some(match decision {
        Decision::Match(k) => Some(k),
        Decision::NoMatch | Decision::NeedMore => None,
    })
}
