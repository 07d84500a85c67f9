//! Decides whether a (possibly partial) string starts with an upstream origin.
//!
//! The decision is made on unescaped content so that `https:\/\/api...` is recognised; the
//! caller maps the answer back onto raw bytes. Only an exact host at the host boundary counts:
//! `api.au1.cliniko.com.evil.example` and `api.au1.cliniko.community` are refused, as is any
//! port other than the scheme's default (or the configured one for an extra origin).

/// Longest host the matcher will read before giving up (DNS names are at most 253 bytes).
const MAX_HOST: usize = 253;

/// What the matcher knows about a prefix of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The string does not start with an upstream origin.
    NoMatch,
    /// The prefix is too short to decide; feed more bytes or the end of the string.
    NeedMore,
    /// The first `n` unescaped bytes (origin, port and optional `/v1`) are to be replaced.
    Match(usize),
}

/// A configured extra origin, e.g. a loopback stand-in for a shard.
#[derive(Debug, Clone)]
struct Extra {
    https: bool,
    /// Lower-case host, brackets kept for IPv6 literals.
    host: Vec<u8>,
    /// The port a link must carry (the scheme default may then be omitted).
    port: u16,
    /// Path prefix below the origin (no trailing slash, `/v1` removed), usually empty.
    path: Vec<u8>,
}

/// The set of upstream origins: Cliniko's own hosts plus configured extras.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins {
    extras: Vec<Extra>,
    /// Exact lower-case spellings of the extra origins (`https://host:port/path`, and without
    /// the port when it is the scheme's default), for [`Origins::quick`].
    spelled: Vec<Vec<u8>>,
    /// Longest prefix (in unescaped bytes) that can still be undecided; bounds held memory.
    max_prefix: usize,
}

fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

fn is_cliniko_host(host: &[u8]) -> bool {
    if host == b"api.cliniko.com" {
        return true;
    }
    host.strip_prefix(b"api.")
        .and_then(|h| h.strip_suffix(b".cliniko.com"))
        .is_some_and(crate::config::is_shard_name_bytes)
}

/// Reads the input one byte at a time; `None` means "ran out", which the caller interprets
/// as end-of-string when the string is complete, or as "need more" otherwise.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Consumes `lit` (ASCII case-insensitively if `ci`); `None` when the input ran out first.
    fn eat(&mut self, lit: &[u8], ci: bool) -> Option<bool> {
        for &want in lit {
            let got = self.peek()?;
            let same = if ci {
                got.eq_ignore_ascii_case(&want)
            } else {
                got == want
            };
            if !same {
                return Some(false);
            }
            self.i += 1;
        }
        Some(true)
    }
}

/// `http://` or `https://`, case-insensitive: whether it is https, or the decision when the
/// string is not (yet) a URL (`more` when it may still become one).
fn scheme(c: &mut Cursor<'_>, more: Decision) -> Result<bool, Decision> {
    match c.eat(b"http", true) {
        None => return Err(more),
        Some(false) => return Err(Decision::NoMatch),
        Some(true) => {}
    }
    let https = match c.peek() {
        None => return Err(more),
        Some(b's' | b'S') => {
            c.i += 1;
            true
        }
        Some(_) => false,
    };
    match c.eat(b"://", true) {
        None => Err(more),
        Some(false) => Err(Decision::NoMatch),
        Some(true) => Ok(https),
    }
}

/// Port: digits after `:`, compared numerically so `:0443` is still 443.
fn port(c: &mut Cursor<'_>, complete: bool) -> Result<Option<u16>, Decision> {
    if c.peek() != Some(b':') {
        return Ok(None);
    }
    c.i += 1;
    let start = c.i;
    let mut value: u32 = 0;
    while let Some(d @ b'0'..=b'9') = c.peek() {
        value = value * 10 + u32::from(d - b'0');
        c.i += 1;
        if c.i - start > 5 {
            return Err(Decision::NoMatch);
        }
    }
    if c.peek().is_none() && !complete {
        return Err(Decision::NeedMore);
    }
    if c.i == start || value > u32::from(u16::MAX) {
        return Err(Decision::NoMatch);
    }
    Ok(Some(value as u16))
}

/// Whether `b` ends an origin (or the `/v1` after it).
fn is_boundary(b: Option<u8>) -> bool {
    matches!(b, None | Some(b'/' | b'?' | b'#'))
}

impl Origins {
    /// Builds the set; extra origins that are not `http(s)://host[:port][/path]` are skipped.
    pub(crate) fn new(extra_origins: &[String]) -> Origins {
        let mut extras: Vec<Extra> = extra_origins
            .iter()
            .filter_map(|o| parse_extra(o))
            .collect();
        // Longest path first so that the most specific configured origin wins.
        extras.sort_by_key(|e| std::cmp::Reverse(e.path.len()));
        let longest_path = extras.iter().map(|e| e.path.len()).max().unwrap_or(0);
        // scheme + host + ":65535" + path + "/v1" + one boundary byte.
        let max_prefix = "https://".len() + MAX_HOST + 6 + longest_path + 3 + 1;
        let mut spelled = vec![];
        for e in &extras {
            let scheme: &[u8] = if e.https { b"https://" } else { b"http://" };
            let with_port = [scheme, &e.host, format!(":{}", e.port).as_bytes(), &e.path].concat();
            spelled.push(with_port);
            if e.port == default_port(e.https) {
                spelled.push([scheme, &e.host, &e.path].concat());
            }
        }
        Origins {
            extras,
            spelled,
            max_prefix,
        }
    }

    /// Decides a whole string without parsing when it is spelled the common way: a match for
    /// Cliniko's `https://api.<shard>.cliniko.com` and the configured origins exactly as
    /// configured (lower case), `NoMatch` for a plain `http(s)://` URL whose host cannot be
    /// an upstream one. `None` means "not decided here": [`Origins::classify`] then decides
    /// (upper case, ports, escapes). Whenever this says `Some(d)`, `classify(s, true)` says
    /// `d` too (a property test holds it).
    pub(crate) fn quick(&self, s: &[u8]) -> Option<Decision> {
        match self.quick_match(s) {
            Some(k) => Some(Decision::Match(k)),
            None => self.surely_not(s).then_some(Decision::NoMatch),
        }
    }

    /// Whether `s` is a lower-case `http(s)://` URL whose host neither starts with `api.` (as
    /// every Cliniko API host does) nor with a configured host of that scheme: such a string
    /// is no upstream link. Pages carry many (Cliniko's own non-API hosts, e.g. a patient's
    /// `telehealth_url`), and the full parse costs each of them hundreds of instructions.
    fn surely_not(&self, s: &[u8]) -> bool {
        let (https, rest) = match s.strip_prefix(b"https://") {
            Some(rest) => (true, rest),
            None => match s.strip_prefix(b"http://") {
                Some(rest) => (false, rest),
                None => return false,
            },
        };
        let starts_ci = |p: &[u8]| {
            rest.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        !starts_ci(b"api.")
            && !self
                .extras
                .iter()
                .any(|e| e.https == https && starts_ci(&e.host))
    }

    /// The match half of [`Origins::quick`].
    fn quick_match(&self, s: &[u8]) -> Option<usize> {
        let origin_end = if let Some(rest) = s.strip_prefix(b"https://api.") {
            // The shard is three or four bytes (two letters, one or two digits), read in place:
            // most candidates on a page are these, so no UTF-8 check and no search.
            let shard = if rest.get(3).is_some_and(u8::is_ascii_digit) {
                4
            } else {
                3
            };
            if !rest
                .get(..shard)
                .is_some_and(crate::config::is_shard_name_bytes)
            {
                return None;
            }
            if !rest[shard..].starts_with(b".cliniko.com") {
                return None;
            }
            "https://api.".len() + shard + ".cliniko.com".len()
        } else {
            self.spelled.iter().find(|p| s.starts_with(p))?.len()
        };
        if !is_boundary(s.get(origin_end).copied()) {
            return None;
        }
        let rest = &s[origin_end..];
        if rest.starts_with(b"/v1") && is_boundary(rest.get(3).copied()) {
            Some(origin_end + 3)
        } else {
            Some(origin_end)
        }
    }

    /// The most unescaped bytes [`Origins::classify`] can need before deciding.
    pub(crate) fn max_prefix(&self) -> usize {
        self.max_prefix
    }

    /// Classifies `s`; `complete` says the string ends right after `s`.
    pub(crate) fn classify(&self, s: &[u8], complete: bool) -> Decision {
        let more = if complete {
            Decision::NoMatch
        } else {
            Decision::NeedMore
        };
        let mut c = Cursor { s, i: 0 };
        let https = match scheme(&mut c, more) {
            Ok(https) => https,
            Err(d) => return d,
        };
        // Host: up to the first `/ ? # :` (an IPv6 literal runs to its `]`).
        let host_start = c.i;
        let bracketed = c.peek() == Some(b'[');
        loop {
            match c.peek() {
                None if !complete => return Decision::NeedMore,
                None => break,
                Some(b']') if bracketed => {
                    c.i += 1;
                    break;
                }
                Some(b'/' | b'?' | b'#' | b':') if !bracketed => break,
                Some(_) => c.i += 1,
            }
            if c.i - host_start > MAX_HOST {
                return Decision::NoMatch;
            }
        }
        // Lower-cased on the stack: this runs for every string that starts like a URL.
        let mut buf = [0u8; MAX_HOST + 2];
        let host = &mut buf[..c.i - host_start];
        host.copy_from_slice(&s[host_start..c.i]);
        host.make_ascii_lowercase();
        let host: &[u8] = host;
        let port = match port(&mut c, complete) {
            Ok(port) => port,
            Err(d) => return d,
        };
        c.i = if is_cliniko_host(host) {
            match port {
                Some(p) if p != default_port(https) => return Decision::NoMatch,
                _ => c.i,
            }
        } else {
            match self.match_extra(&c, https, host, port, complete) {
                Ok(end) => end,
                Err(d) => return d,
            }
        };
        if c.peek().is_none() && !complete {
            return Decision::NeedMore;
        }
        if !is_boundary(c.peek()) {
            return Decision::NoMatch;
        }
        // Optional `/v1`, only when it is a whole path segment.
        let after_origin = c.i;
        match c.eat(b"/v1", false) {
            None if !complete => return Decision::NeedMore,
            Some(true) => {
                if c.peek().is_none() && !complete {
                    return Decision::NeedMore;
                }
                if is_boundary(c.peek()) {
                    return Decision::Match(c.i);
                }
            }
            _ => {}
        }
        Decision::Match(after_origin)
    }

    /// Matches an extra origin's host, port and path at the cursor: where the origin (with its
    /// path prefix) ends, or the decision when none matches (yet).
    fn match_extra(
        &self,
        c: &Cursor<'_>,
        https: bool,
        host: &[u8],
        port: Option<u16>,
        complete: bool,
    ) -> Result<usize, Decision> {
        let mut need_more = false;
        for e in &self.extras {
            if e.https != https || e.host != host {
                continue;
            }
            let port_ok = match port {
                Some(p) => p == e.port,
                None => e.port == default_port(https),
            };
            if !port_ok {
                continue;
            }
            let rest = &c.s[c.i..];
            if rest.starts_with(&e.path) {
                let end = c.i + e.path.len();
                match c.s.get(end) {
                    None if !complete => return Err(Decision::NeedMore),
                    next if is_boundary(next.copied()) => return Ok(end),
                    _ => continue,
                }
            }
            if !complete && e.path.starts_with(rest) {
                need_more = true;
            }
        }
        Err(match need_more {
            true => Decision::NeedMore,
            false => Decision::NoMatch,
        })
    }
}

fn parse_extra(origin: &str) -> Option<Extra> {
    let uri: http::Uri = origin.trim().parse().ok()?;
    let https = match uri.scheme_str()? {
        s if s.eq_ignore_ascii_case("https") => true,
        s if s.eq_ignore_ascii_case("http") => false,
        _ => return None,
    };
    let authority = uri.authority()?;
    let mut path = uri.path().trim_end_matches('/');
    // Links carry `/v1` optionally, so the origin is whatever sits above it.
    if let Some(p) = path.strip_suffix("/v1") {
        path = p;
    }
    Some(Extra {
        https,
        host: authority.host().to_ascii_lowercase().into_bytes(),
        port: authority.port_u16().unwrap_or(default_port(https)),
        path: path.as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_path_covers_the_common_spellings() {
        let o = Origins::new(&["https://localhost:8443/v1".to_string()]);
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
                Origins::default().quick(s.as_bytes()),
                want.map(Decision::Match),
                "{s}"
            );
        }
        // Not an API host: refused on the spot.
        assert_eq!(
            Origins::default().quick(b"https://acme.cliniko.com/t/1"),
            Some(Decision::NoMatch)
        );
    }
}
