//! Byte-level shadow of hyper's HTTP/1.1 request framing.
//!
//! It follows request boundaries exactly as hyper 1's server does (role.rs head rules, decode.rs
//! chunked grammar) so it can number requests the same way. Whenever it is unsure it stops
//! (`Off`): from then on no request is flagged, and hyper's own handling applies.

use httparse::Header;
use std::mem::MaybeUninit;

/// The longest chunk-size line extension we follow; hyper allows more, but real clients never
/// send long extensions, and stopping early is always safe.
const MAX_CHUNK_EXT: usize = 1024;

/// Header slots kept on the stack; larger configured limits fall back to the heap.
const INLINE_HEADERS: usize = 128;

/// hyper refuses bodies this long or longer (`DecodedLength::MAX_LEN`).
const MAX_BODY_LEN: u64 = u64::MAX - 2;

/// What the tracker learned about one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// Request heads completed so far (index of the next one).
    pub requests: u64,
    /// Index of the request whose head had both Content-Length and Transfer-Encoding. hyper
    /// closes the connection after such a request, so there is at most one.
    pub ambiguous: Option<u64>,
    /// Index of the first request whose target was unusable (see [`super::target`]). The
    /// server closes the connection after answering it, so later ones are never asked about.
    pub bad_target: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Ext(u64, usize),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer lines seen and their total bytes, carried through the trailer section.
    EndCr(usize, usize),
    Trailer(usize, usize),
    TrailerLf(usize, usize),
    EndLf,
}

enum ChunkStep {
    More,
    Done,
    Off,
}

/// Follows request framing over every byte read from one connection.
pub(super) struct Tracker {
    state: State,
    /// The head being read: kept across reads while incomplete, never what follows it.
    head: Vec<u8>,
    /// How much of `head` hyper has already read: the method and its space go on at once (so
    /// hyper-util can tell HTTP/1 from an HTTP/2 preface and hyper's header timer runs); from
    /// the target on, bytes wait until the head is complete.
    head_sent: usize,
    max_head_bytes: usize,
    max_headers: usize,
    seen: Seen,
}

impl Tracker {
    pub(super) fn new(max_head_bytes: usize, max_headers: usize) -> Self {
        Tracker {
            state: State::Head,
            head: Vec::new(),
            head_sent: 0,
            max_head_bytes,
            max_headers,
            seen: Seen::default(),
        }
    }

    pub(super) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    pub(super) fn seen(&self) -> Seen {
        self.seen
    }

    /// Feeds the next bytes read from the connection, in order. Returns true when hyper must
    /// read `out` (appended to) instead of `input`: a head is held back until it is complete,
    /// then passed on with its request target made parseable ([`super::target`]).
    pub(super) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let mut edit = Edit {
            input,
            out,
            done: 0,
            changed: false,
        };
        let mut at = 0;
        while at < input.len() {
            let data = &input[at..];
            match self.state {
                State::Off => break,
                State::Body(n) => {
                    let k = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    at += k;
                    let left = n - k as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Head => at = self.feed_head(&mut edit, at),
                State::Chunked(c) => {
                    let (c, used, step) =
                        feed_chunked(c, data, self.max_head_bytes, self.max_headers);
                    at += used;
                    self.state = match step {
                        ChunkStep::More => State::Chunked(c),
                        ChunkStep::Done => State::Head,
                        ChunkStep::Off => State::Off,
                    };
                }
            }
        }
        edit.finish()
    }

    /// The connection ended: stops watching and returns the head bytes still held back (hyper
    /// gets them as they came and judges the incomplete head itself).
    pub(super) fn stop(&mut self) -> Vec<u8> {
        self.state = State::Off;
        let held = self.head.split_off(self.head_sent.min(self.head.len()));
        self.head.clear();
        held
    }

    /// Consumes head bytes from `at`; returns where what follows the head starts (or the end
    /// of the input if the head is incomplete).
    fn feed_head(&mut self, edit: &mut Edit<'_>, mut at: usize) -> usize {
        let input = edit.input;
        let end_of_input = input.len();
        if self.head.is_empty() {
            // httparse (so hyper) skips empty lines before a request line. Skipping any CR/LF
            // run is looser, but only on input hyper rejects, which closes the connection.
            let Some(skip) = input[at..].iter().position(|b| *b != b'\r' && *b != b'\n') else {
                return end_of_input;
            };
            at += skip;
        }
        // Find where the head ends without copying what follows it: first an end marker
        // straddling the boundary (its first LF is one of the last two buffered bytes), then
        // one wholly inside the new data.
        let data = &input[at..];
        let old = self.head.len();
        let tail = &self.head[old.saturating_sub(2)..];
        let mut joint = [0u8; 4];
        let lead = data.len().min(2);
        joint[..tail.len()].copy_from_slice(tail);
        joint[tail.len()..tail.len() + lead].copy_from_slice(&data[..lead]);
        let end_in_data = match head_end(&joint[..tail.len() + lead]) {
            Some(e) => Some(e - tail.len()),
            None => head_end(data),
        };
        let Some(used) = end_in_data else {
            if old + data.len() > self.max_head_bytes {
                self.give_up(edit, at);
            } else {
                self.hold(edit, at);
            }
            return end_of_input;
        };
        if old + used > self.max_head_bytes {
            self.give_up(edit, at);
            return end_of_input;
        }
        if old == 0 {
            // The whole head came in this read (the common case): parsed where it lies.
            self.complete_head(edit, (at, at + used), &data[..used], 0);
            return at + used;
        }
        self.head.extend_from_slice(&data[..used]);
        let head = std::mem::take(&mut self.head);
        self.complete_head(edit, (at, at + used), &head, old);
        // Keep the allocation for the next head.
        self.head = head;
        self.head.clear();
        at + used
    }

    /// Buffers `input[from..]`, the rest of an incomplete head: up to the first space it goes
    /// on to hyper at once, after it hyper gets nothing until the head is complete.
    fn hold(&mut self, edit: &mut Edit<'_>, from: usize) {
        let data = &edit.input[from..];
        let mut pass = 0;
        // Until the first space has gone on, everything has (the space ends what may).
        let space_sent = self.head[..self.head_sent].last() == Some(&b' ');
        if !space_sent {
            pass = memchr::memchr(b' ', data).map_or(data.len(), |p| p + 1);
            self.head_sent += pass;
        }
        self.head.extend_from_slice(data);
        if pass < data.len() {
            edit.replace(from + pass, edit.input.len(), b"");
        }
    }

    /// Stops watching; the held head bytes go to hyper as they came, before `input[at..]`.
    fn give_up(&mut self, edit: &mut Edit<'_>, at: usize) {
        let held = self.stop();
        edit.replace(at, at, &held);
    }

    /// A complete head whose last bytes are `input[from..to]` (`buffered` bytes of it came in
    /// earlier reads, of which hyper has `head_sent`): hyper gets the rest, with its target
    /// fixed ([`super::target`]); the head is recorded.
    fn complete_head(
        &mut self,
        edit: &mut Edit<'_>,
        (from, to): (usize, usize),
        head: &[u8],
        buffered: usize,
    ) {
        let fixed = super::target::fix_head(head, self.max_head_bytes);
        let head = fixed.as_ref().map_or(head, |f| &f.head);
        // A fix never touches the method and its space, the only part hyper may have read.
        if fixed.is_some() || self.head_sent < buffered {
            edit.replace(from, to, &head[self.head_sent..]);
        }
        self.head_sent = 0;
        let index = self.seen.requests;
        self.on_head(head);
        if fixed.is_some_and(|f| f.bad) && self.seen.requests > index {
            self.seen.bad_target.get_or_insert(index);
        }
    }

    /// Records the verdict for a complete head and picks the body framing hyper will use.
    fn on_head(&mut self, head: &[u8]) {
        let parsed = if self.max_headers <= INLINE_HEADERS {
            let mut slots = [const { MaybeUninit::uninit() }; INLINE_HEADERS];
            parse_head(head, &mut slots[..self.max_headers])
        } else {
            let mut slots = Vec::new();
            slots.resize_with(self.max_headers, MaybeUninit::uninit);
            parse_head(head, &mut slots)
        };
        let Some(h) = parsed else {
            self.state = State::Off;
            return;
        };
        let index = self.seen.requests;
        self.seen.requests += 1;
        self.state = if h.has_cl && h.has_te {
            // hyper picks chunked and closes after this request; nothing later is served.
            self.seen.ambiguous = Some(index);
            State::Off
        } else if h.has_te {
            if h.http10 || !h.te_chunked {
                State::Off
            } else {
                State::Chunked(Chunk::Start)
            }
        } else if h.cl_invalid {
            State::Off
        } else {
            match h.cl {
                Some(n) if n >= MAX_BODY_LEN => State::Off,
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head,
            }
        };
    }
}

/// The bytes hyper reads for one read off the connection: the input itself until something
/// differs, then `out`, built from the input's unchanged stretches and the replacements.
struct Edit<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    /// Input before this is accounted for in `out` (once `changed`).
    done: usize,
    changed: bool,
}

impl Edit<'_> {
    /// Hyper reads `with` in place of `input[from..to]`.
    fn replace(&mut self, from: usize, to: usize, with: &[u8]) {
        let kept = if self.changed { self.done } else { 0 };
        self.out.extend_from_slice(&self.input[kept..from]);
        self.out.extend_from_slice(with);
        self.done = to;
        self.changed = true;
    }

    fn finish(self) -> bool {
        if self.changed {
            self.out.extend_from_slice(&self.input[self.done..]);
        }
        self.changed
    }
}

/// The framing facts of one head.
struct HeadFacts {
    http10: bool,
    has_cl: bool,
    has_te: bool,
    te_chunked: bool,
    cl: Option<u64>,
    cl_invalid: bool,
}

/// Parses a complete head the way hyper does; `None` if hyper would not accept it as one.
fn parse_head<'b>(head: &'b [u8], slots: &mut [MaybeUninit<Header<'b>>]) -> Option<HeadFacts> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let mut f = HeadFacts {
        http10: req.version != Some(1),
        has_cl: false,
        has_te: false,
        te_chunked: false,
        cl: None,
        cl_invalid: false,
    };
    // Mirrors hyper's header loop: the last Transfer-Encoding line decides chunked, and a
    // Content-Length after a Transfer-Encoding is not even validated.
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            f.has_te = true;
            f.te_chunked = is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            f.has_cl = true;
            if f.has_te {
                continue;
            }
            match (digits(h.value), f.cl) {
                (None, _) => f.cl_invalid = true,
                (Some(n), Some(prev)) if n != prev => f.cl_invalid = true,
                (Some(n), _) => f.cl = Some(n),
            }
        }
    }
    Some(f)
}

/// hyper's `is_chunked_`: the last comma-separated coding of a visible-ASCII value.
fn is_chunked(value: &[u8]) -> bool {
    if !value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
    {
        return false;
    }
    let last = value.rsplit(|b| *b == b',').next().unwrap_or(value);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// hyper's `from_digits`: plain decimal, no sign, no spaces, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, b| match b {
        b'0'..=b'9' => acc.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Index just past the first empty line (`\n\n` or `\n\r\n`).
///
/// httparse accepts bare-LF line endings, and no valid head holds an empty line before its end.
fn head_end(buf: &[u8]) -> Option<usize> {
    for p in memchr::memchr_iter(b'\n', buf) {
        match buf.get(p + 1..p + 3) {
            Some([b'\n', _]) => return Some(p + 2),
            Some([b'\r', b'\n']) => return Some(p + 3),
            Some(_) => {}
            None if buf.get(p + 1) == Some(&b'\n') => return Some(p + 2),
            None => {}
        }
    }
    None
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

/// Advances hyper's chunked decoder grammar over `data`; returns the new state and bytes used.
fn feed_chunked(
    mut c: Chunk,
    data: &[u8],
    max_trailer: usize,
    max_trailers: usize,
) -> (Chunk, usize, ChunkStep) {
    let mut i = 0;
    while i < data.len() {
        let rest = &data[i..];
        c = match c {
            Chunk::Data(n) => {
                let k = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
                i += k;
                let left = n - k as u64;
                if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                }
            }
            Chunk::Ext(size, len) => match memchr::memchr2(b'\r', b'\n', rest) {
                None if len + rest.len() > MAX_CHUNK_EXT => return (c, i, ChunkStep::Off),
                None => {
                    i = data.len();
                    Chunk::Ext(size, len + rest.len())
                }
                Some(p) if len + p > MAX_CHUNK_EXT || rest[p] == b'\n' => {
                    return (c, i, ChunkStep::Off);
                }
                Some(p) => {
                    i += p + 1;
                    Chunk::SizeLf(size)
                }
            },
            // Like hyper, a trailer line runs to the next CR (a bare LF is just a byte in it).
            Chunk::Trailer(lines, len) => match memchr::memchr(b'\r', rest) {
                None if len + rest.len() > max_trailer => return (c, i, ChunkStep::Off),
                None => {
                    i = data.len();
                    Chunk::Trailer(lines, len + rest.len())
                }
                Some(p) if len + p > max_trailer => return (c, i, ChunkStep::Off),
                Some(p) => {
                    i += p + 1;
                    Chunk::TrailerLf(lines, len + p)
                }
            },
            _ => {
                i += 1;
                match chunk_byte(c, rest[0], max_trailers) {
                    Ok(next) => next,
                    Err(step) => return (c, i, step),
                }
            }
        };
    }
    (c, i, ChunkStep::More)
}

/// One byte of the chunk grammar's single-byte states: the next state, or where tracking ends
/// (`Done` after the last CRLF, `Off` on anything hyper would refuse).
fn chunk_byte(c: Chunk, b: u8, max_trailers: usize) -> Result<Chunk, ChunkStep> {
    Ok(match (c, b) {
        (Chunk::Start, _) => Chunk::Size(hex(b).ok_or(ChunkStep::Off)?),
        (Chunk::Size(s), _) if hex(b).is_some() => s
            .checked_mul(16)
            .zip(hex(b))
            .and_then(|(s, v)| s.checked_add(v))
            .map(Chunk::Size)
            .ok_or(ChunkStep::Off)?,
        (Chunk::Size(s) | Chunk::SizeLws(s), b' ' | b'\t') => Chunk::SizeLws(s),
        (Chunk::Size(s) | Chunk::SizeLws(s), b';') => Chunk::Ext(s, 0),
        (Chunk::Size(s) | Chunk::SizeLws(s), b'\r') => Chunk::SizeLf(s),
        (Chunk::SizeLf(0), b'\n') => Chunk::EndCr(0, 0),
        (Chunk::SizeLf(s), b'\n') => Chunk::Data(s),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Start,
        (Chunk::EndCr(..), b'\r') => Chunk::EndLf,
        (Chunk::EndCr(lines, _), _) if lines >= max_trailers => return Err(ChunkStep::Off),
        (Chunk::EndCr(lines, len), _) => Chunk::Trailer(lines, len + 1),
        (Chunk::TrailerLf(lines, len), b'\n') => Chunk::EndCr(lines + 1, len),
        (Chunk::EndLf, b'\n') => return Err(ChunkStep::Done),
        _ => return Err(ChunkStep::Off),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 8 * 1024;

    /// Feeds `chunks` in order: the bytes hyper reads (held bytes flushed as at the end of
    /// the connection), what was seen, and whether tracking had stopped before that.
    fn run_full(chunks: &[&[u8]]) -> (Vec<u8>, Seen, bool) {
        let mut t = Tracker::new(MAX_HEAD, 100);
        let mut read = Vec::new();
        for c in chunks {
            let mut out = Vec::new();
            if t.feed(c, &mut out) {
                read.extend_from_slice(&out);
            } else {
                read.extend_from_slice(c);
            }
        }
        let off = t.is_off();
        read.extend_from_slice(&t.stop());
        (read, t.seen(), off)
    }

    /// Per-request verdicts and whether tracking stopped; hyper reads the input unchanged.
    fn run(chunks: &[&[u8]]) -> (Vec<bool>, bool) {
        let (read, seen, off) = run_full(chunks);
        assert_eq!(read, chunks.concat(), "nothing here needs rewriting");
        let verdicts = (0..seen.requests)
            .map(|i| seen.ambiguous == Some(i))
            .collect();
        (verdicts, off)
    }

    /// Feeds `input` whole, split at every offset, and byte by byte; all must agree.
    fn verdicts(input: &[u8]) -> (Vec<bool>, bool) {
        let whole = run(&[input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(run(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "one byte at a time");
        whole
    }

    /// What hyper reads and what was seen for `input`, the same however it is split.
    fn rewritten(input: &[u8]) -> (Vec<u8>, Seen) {
        let (read, seen, _) = run_full(&[input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let (r, s, _) = run_full(&[a, b]);
            assert_eq!((&r, s), (&read, seen), "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (r, s, _) = run_full(&bytes);
        assert_eq!((&r, s), (&read, seen), "one byte at a time");
        (read, seen)
    }

    #[test]
    fn raw_filter_bytes_are_encoded_in_pipelined_heads() {
        let input = b"GET /v1/p?q[]=a:>1 HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /v1/p?q[]=b:\"O'B\" HTTP/1.1\r\nContent-Length: 3\r\n\r\n<a>\
            GET /v1/p HTTP/1.1\r\n\r\n";
        let (read, seen) = rewritten(input);
        assert_eq!(
            String::from_utf8(read).unwrap(),
            "GET /v1/p?q[]=a:%3E1 HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /v1/p?q[]=b:%22O'B%22 HTTP/1.1\r\nContent-Length: 3\r\n\r\n<a>\
             GET /v1/p HTTP/1.1\r\n\r\n",
            "bodies stay as sent"
        );
        assert_eq!((seen.requests, seen.bad_target), (3, None));
    }

    #[test]
    fn first_unusable_target_is_flagged_by_index() {
        let input =
            b"GET /ok HTTP/1.1\r\n\r\nGET /v1/a<b HTTP/1.1\r\n\r\nGET /v1/\x01 HTTP/1.1\r\n\r\n";
        let (read, seen) = rewritten(input);
        assert_eq!(
            read,
            b"GET /ok HTTP/1.1\r\n\r\nGET /v1/a%3Cb HTTP/1.1\r\n\r\nGET /v1/%01 HTTP/1.1\r\n\r\n"
        );
        assert_eq!((seen.requests, seen.bad_target), (3, Some(1)));
    }

    #[test]
    fn incomplete_head_is_held_then_flushed_as_sent() {
        let mut t = Tracker::new(MAX_HEAD, 100);
        let mut out = Vec::new();
        assert!(t.feed(b"GET /v1/p?q=<", &mut out));
        assert_eq!(
            out, b"GET ",
            "the method goes on, the target waits for the head"
        );
        out.clear();
        assert!(t.feed(b" HTTP/1.1\r\nHost: a", &mut out));
        assert!(out.is_empty());
        assert_eq!(t.stop(), b"/v1/p?q=< HTTP/1.1\r\nHost: a");
        // A method that has not ended yet goes on as it comes.
        let mut t = Tracker::new(MAX_HEAD, 100);
        assert!(!t.feed(b"GE", &mut out));
        assert!(t.feed(b"T /x", &mut out));
        assert_eq!(out, b"T ");
        // Past the head limit: what was held goes on unchanged and tracking stops.
        let mut t = Tracker::new(64, 100);
        let first = b"GET /v1/p?q=< HTTP/1.1\r\n";
        let mut out = Vec::new();
        assert!(t.feed(first, &mut out));
        assert!(t.feed(&[b'a'; 64], &mut out));
        assert_eq!(out, [&first[..], &[b'a'; 64]].concat());
        assert!(t.is_off());
    }

    #[test]
    fn plain_get() {
        let (v, off) = verdicts(b"GET /v1/patients HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(v, [false]);
        assert!(!off);
    }

    #[test]
    fn content_length_body_is_skipped() {
        let req = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(req), (vec![false, false], false));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;name=value\r\nhello\r\n1A \t;x\r\nabcdefghijklmnopqrstuvwxyz\r\n\
            0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n\
            GET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(req), (vec![false, false], false));
    }

    #[test]
    fn pipelined_mixed_requests() {
        let req = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
            POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n\
            GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdicts(req), (vec![false; 4], false));
    }

    #[test]
    fn both_headers_flag_the_request_in_either_order_and_case() {
        for req in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\nTRANSFER-ENCODING: chunked\r\n\r\n",
            // Not chunked-last, bad length, HTTP/1.0: hyper rejects these itself, still flagged.
            b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                verdicts(req),
                (vec![true], true),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn ambiguous_request_after_others_gets_its_own_index() {
        let req = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        assert_eq!(verdicts(req), (vec![false, false, true], true));
    }

    #[test]
    fn request_text_inside_a_body_is_not_a_request() {
        let inner: &[u8] =
            b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut cl =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", inner.len()).into_bytes();
        cl.extend_from_slice(inner);
        cl.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(verdicts(&cl), (vec![false, false], false));

        let mut chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            inner.len()
        )
        .into_bytes();
        chunked.extend_from_slice(inner);
        chunked.extend_from_slice(b"\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(verdicts(&chunked), (vec![false, false], false));
    }

    #[test]
    fn leading_empty_lines_and_bare_lf_heads_are_followed() {
        let req = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n\nGET / HTTP/1.1\nHost: a\n\n\
            POST / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n";
        assert_eq!(verdicts(req), (vec![false, false, true], true));
    }

    #[test]
    fn upgrade_requests_keep_the_count() {
        // hyper only stops parsing after a 101 (or 2xx to CONNECT); verdicts counted past
        // that point are never asked for, so following on is safe and catches more.
        let req = b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(req), (vec![false, true], true));
    }

    #[test]
    fn h2_preface_turns_tracking_off() {
        let (v, off) = verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0");
        assert!(v.is_empty() && off);
    }

    #[test]
    fn oversized_head_turns_tracking_off() {
        let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        req.resize(MAX_HEAD + 10, b'a');
        req.extend_from_slice(b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (v, off) = verdicts(&req);
        assert!(v.is_empty() && off);
        // Exactly at the limit is still followed.
        let mut ok = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        ok.resize(MAX_HEAD - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        assert_eq!(run(&[&ok]), (vec![false], false));
    }

    #[test]
    fn garbage_turns_tracking_off() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        ] {
            assert!(verdicts(bad).1, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn too_many_headers_turns_tracking_off() {
        let mut t = Tracker::new(MAX_HEAD, 2);
        t.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", &mut Vec::new());
        assert!(!t.is_off());
        t.feed(
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            &mut Vec::new(),
        );
        assert!(t.is_off());
        assert_eq!(t.seen().requests, 1);
    }

    #[test]
    fn large_header_limit_uses_heap_slots() {
        let mut t = Tracker::new(MAX_HEAD, 1000);
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n");
        t.feed(&req, &mut Vec::new());
        assert_eq!(t.seen().ambiguous, Some(0));
    }

    #[test]
    fn only_head_bytes_are_buffered_across_reads() {
        let mut t = Tracker::new(MAX_HEAD, 100);
        t.feed(
            b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r",
            &mut Vec::new(),
        );
        assert_eq!(t.head.len(), 39);
        t.feed(&[b'\n'; 51], &mut Vec::new());
        assert!(t.head.is_empty());
        assert_eq!(t.state, State::Body(50));
    }

    #[test]
    fn a_head_that_came_whole_is_parsed_in_place() {
        let mut t = Tracker::new(MAX_HEAD, 100);
        let mut out = Vec::new();
        let input = b"POST /v1/a<b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\n\
            Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(t.feed(input, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/a%3Cb HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\n\
             Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let seen = t.seen();
        assert_eq!(
            (seen.requests, seen.bad_target, seen.ambiguous),
            (2, Some(0), Some(1))
        );
        assert_eq!(
            t.head.capacity(),
            0,
            "nothing was copied into the head buffer"
        );
    }

    #[test]
    fn long_body_is_skipped_in_one_step() {
        let mut t = Tracker::new(MAX_HEAD, 100);
        let mut out = Vec::new();
        t.feed(
            b"PUT / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n",
            &mut out,
        );
        assert_eq!(t.state, State::Body(1_000_000_000_000));
        assert!(!t.feed(&[b'x'; 4096], &mut out), "a body is never copied");
        assert_eq!(t.state, State::Body(1_000_000_000_000 - 4096));
    }
}
