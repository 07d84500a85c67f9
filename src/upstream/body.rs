//! Cliniko's response body on its way to the caller: bounded waiting, and decoding what
//! Cliniko compressed (the gateway asks for gzip), so links can be rewritten; streaming, or in
//! one piece for a page small enough to rewrite whole.

use crate::body::Body;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// Fails the body when Cliniko sends nothing for `limit` while we are waiting on it.
    ///
    /// The clock runs only while a frame is awaited, so a slow *caller* (who is not polling)
    /// never trips it; a Cliniko that stalls mid-body does, and frees the connection.
    struct IdleLimit {
        #[pin]
        inner: Body,
        #[pin]
        sleep: Sleep,
        limit: Duration,
        waiting: bool,
    }
}

/// Wraps `body` so a stall of `limit` between frames ends it with an error.
pub fn idle_limit(body: Body, limit: Duration) -> Body {
    Body::new(IdleLimit {
        inner: body,
        sleep: tokio::time::sleep(limit),
        limit,
        waiting: false,
    })
}

/// The error a stalled upstream body ends with.
#[derive(Debug, thiserror::Error)]
#[error("Cliniko stopped sending the response body")]
pub struct BodyStalled;

impl HttpBody for IdleLimit {
    type Data = Bytes;
    type Error = axum_core::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame);
        }
        // The clock starts at the first wait: a frame that is already there (most of them,
        // on a page that arrived whole) costs no clock read and no timer update.
        if !*this.waiting {
            let deadline = Instant::now() + *this.limit;
            this.sleep.as_mut().reset(deadline);
            *this.waiting = true;
        }
        ready!(this.sleep.poll(cx));
        tracing::warn!("upstream body stalled; closing the response");
        Poll::Ready(Some(Err(axum_core::Error::new(BodyStalled))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads `body` whole while `admit(total, len)` takes each data frame (`len` bytes, `total`
/// read with it). The first frame refused ends the reading: what was read, that frame
/// included, comes back ahead of the rest, still streaming. A body read whole loses its
/// trailers (the decoders and the cache drop them anyway).
pub async fn read_while(
    mut body: Body,
    mut admit: impl FnMut(usize, usize) -> bool,
) -> Result<Result<Vec<Bytes>, Body>, axum_core::Error> {
    let (mut read, mut total) = (Vec::new(), 0);
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let len = data.len();
        total += len;
        read.push(data);
        if !admit(total, len) {
            let head = futures_util::stream::iter(read.into_iter().map(|d| Ok(Frame::data(d))));
            let rest = http_body_util::BodyStream::new(body);
            return Ok(Err(Body::new(http_body_util::StreamBody::new(
                head.chain(rest),
            ))));
        }
    }
    Ok(Ok(read))
}

/// A content coding the gateway can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, as RFC 9110 defines it).
    Deflate,
    /// `br`.
    Brotli,
}

impl Coding {
    /// Parses a single `Content-Encoding` value; stacked or unknown codings are `None`.
    pub fn parse(v: &str) -> Option<Coding> {
        match v.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        }
    }
}

/// Decodes `body`, streaming.
pub fn decode(body: Body, coding: Coding) -> Body {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder};
    use tokio_util::io::{ReaderStream, StreamReader};
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    match coding {
        Coding::Gzip => Body::from_stream(ReaderStream::new(GzipDecoder::new(reader))),
        Coding::Deflate => Body::from_stream(ReaderStream::new(ZlibDecoder::new(reader))),
        Coding::Brotli => Body::from_stream(ReaderStream::new(BrotliDecoder::new(reader))),
    }
}

/// Why a body held in memory was not decoded in one piece.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflate {
    /// Larger than the limit once decoded, or a coding only the streaming decoder knows:
    /// decode it streaming instead.
    Stream,
    /// Not valid data in its coding.
    Corrupt,
}

/// Decodes a whole compressed body, refusing to grow it past `limit` bytes (a small gzip can
/// decode to a very large page; that one streams instead of filling memory).
///
/// Decoders are kept and reset per body: a fresh one allocates and clears its ~40 KiB state
/// and window every time, which was about half the cost of inflating a Cliniko page. The output
/// goes straight into spare capacity (nothing zeroed first).
pub fn inflate(bytes: &[u8], coding: Coding, limit: usize) -> Result<Bytes, Inflate> {
    use flate2::Decompress;
    static GZIP: Kept<Decompress> = Mutex::new(Vec::new());
    static ZLIB: Kept<Decompress> = Mutex::new(Vec::new());
    match coding {
        Coding::Gzip => with_kept(
            &GZIP,
            || Decompress::new_gzip(15),
            |d| members(d, bytes, limit, true),
        ),
        Coding::Deflate => with_kept(
            &ZLIB,
            || Decompress::new(true),
            |d| members(d, bytes, limit, false),
        ),
        Coding::Brotli => Err(Inflate::Stream),
    }
}

/// `plain` as one gzip member at the fastest level, through a kept encoder (a fresh one
/// allocates and clears ~256 KiB of state, more than compressing a Cliniko page costs). The
/// result is an allocation of its own size when it fits `GZIP_SCRATCH` (one copy out of the
/// encoder's scratch buffer, nothing to shrink afterwards).
pub fn gzip_fast(plain: &[u8]) -> Option<Vec<u8>> {
    static KEPT_GZIP: Kept<Gzip> = Mutex::new(Vec::new());
    with_kept(&KEPT_GZIP, Gzip::new, |g| g.member(plain))
}

/// Bytes of compressed output taken from the encoder per call: a whole Cliniko page's gzip
/// (a few KiB for 15–40 KB) in one, and little memory for each kept encoder.
const GZIP_SCRATCH: usize = 16 * 1024;

/// A kept level-1 gzip encoder and the buffer it writes into.
struct Gzip {
    deflate: zlib_rs::Deflate,
    scratch: Box<[u8]>,
}

impl Gzip {
    fn new() -> Gzip {
        let config = zlib_rs::DeflateConfig {
            level: 1,
            window_bits: 15 + 16, // 32 KiB window, gzip wrapper
            // Level 1 (zlib-rs' deflate_quick, fixed Huffman codes) keeps no symbol buffer, but
            // every reset zeroes one sized by memLevel: 48 KiB at the default 8, 768 bytes at
            // 2. The output is the same; only its pending buffer (1 KiB) is flushed more often.
            mem_level: 2,
            ..zlib_rs::DeflateConfig::default()
        };
        Gzip {
            deflate: zlib_rs::Deflate::new_with_config(config),
            scratch: vec![0; GZIP_SCRATCH].into_boxed_slice(),
        }
    }

    fn member(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        use zlib_rs::{DeflateFlush, Status};
        let d = &mut self.deflate;
        d.reset();
        let mut out = Vec::new();
        let mut input = plain;
        loop {
            let (read, wrote) = (d.total_in(), d.total_out());
            // An error is never a truncated copy: no copy at all. zlib-rs' reset does not
            // fully clean an encoder stopped mid-member (its next output can be corrupt), so
            // this one is replaced rather than kept.
            let Ok(status) = d.compress(input, &mut self.scratch, DeflateFlush::Finish) else {
                *self = Gzip::new();
                return None;
            };
            let used = usize::try_from(d.total_in() - read).unwrap_or(input.len());
            input = &input[used..];
            let made = usize::try_from(d.total_out() - wrote).ok()?;
            out.extend_from_slice(&self.scratch[..made]);
            if status == Status::StreamEnd {
                return Some(out);
            }
        }
    }
}

/// (De)compressors kept for reuse, at most [`KEPT`] (not one per thread: the blocking pool can
/// run hundreds).
type Kept<T> = Mutex<Vec<T>>;

/// Kept (de)compressors of each kind: about one per core and body worked on at once.
const KEPT: usize = 8;

/// Runs `f` on a kept `T` (or a fresh one), then keeps it if there is room.
fn with_kept<T, R>(kept: &Kept<T>, fresh: fn() -> T, f: impl FnOnce(&mut T) -> R) -> R {
    let lock = || {
        kept.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let taken = lock().pop();
    let mut t = taken.unwrap_or_else(fresh);
    let r = f(&mut t);
    let mut kept = lock();
    if kept.len() < KEPT {
        kept.push(t);
    }
    r
}

/// Every member of `input` through `d`, into one buffer: gzip allows several back to back
/// (`multi`), a zlib stream is one.
fn members(
    d: &mut flate2::Decompress,
    mut input: &[u8],
    limit: usize,
    multi: bool,
) -> Result<Bytes, Inflate> {
    use flate2::{FlushDecompress, Status};
    if input.is_empty() {
        return Err(Inflate::Corrupt); // not even one member's header
    }
    let cap = limit.saturating_add(1);
    let mut out = Vec::with_capacity(input.len().saturating_mul(8).min(cap));
    while !input.is_empty() {
        d.reset(true);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(Inflate::Stream);
                }
                out.reserve_exact(out.len().max(4096).min(cap - out.len()));
            }
            let before = d.total_in();
            let status = d.decompress_vec(input, &mut out, FlushDecompress::None);
            input = &input[usize::try_from(d.total_in() - before).unwrap_or(input.len())..];
            match status.map_err(|_| Inflate::Corrupt)? {
                Status::StreamEnd => break,
                // Input used up before the member's end: a truncated body.
                _ if input.is_empty() && out.len() < out.capacity() => {
                    return Err(Inflate::Corrupt);
                }
                _ => {}
            }
        }
        if out.len() > limit {
            return Err(Inflate::Stream);
        }
        if !multi {
            break; // one zlib stream; what follows it is ignored, as flate2's reader does
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn whole_bodies_decode_within_the_limit_and_stream_past_it() {
        let page = b"{\"patients\":[]}".repeat(100);
        let gz = gzip(&page);
        assert_eq!(inflate(&gz, Coding::Gzip, page.len()).unwrap(), page);
        assert_eq!(
            inflate(&gz, Coding::Gzip, page.len() - 1),
            Err(Inflate::Stream)
        );
        assert_eq!(
            inflate(&gz[..gz.len() / 2], Coding::Gzip, 1 << 20),
            Err(Inflate::Corrupt)
        );
        assert_eq!(inflate(&gz, Coding::Brotli, 1 << 20), Err(Inflate::Stream));
    }

    /// What `inflate` did before its decoders were kept per thread: flate2's readers.
    fn reference(bytes: &[u8], coding: Coding, limit: usize) -> Result<Bytes, Inflate> {
        use std::io::Read;
        let reader: Box<dyn Read + '_> = match coding {
            Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
            _ => Box::new(flate2::read::ZlibDecoder::new(bytes)),
        };
        let mut out = Vec::new();
        match reader.take(limit as u64 + 1).read_to_end(&mut out) {
            Ok(n) if n > limit => Err(Inflate::Stream),
            Ok(_) => Ok(Bytes::from(out)),
            Err(_) => Err(Inflate::Corrupt),
        }
    }

    #[test]
    fn kept_encoders_make_whole_gzip_members() {
        let page = b"{\"patients\":[{\"id\":\"1\"}]}".repeat(3000);
        // Bytes that do not compress: their gzip takes several turns of the scratch buffer.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..3 * GZIP_SCRATCH)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for body in [&page[..], b"", &page[..10], &noise, &page[..]] {
            let gz = gzip_fast(body).unwrap();
            assert_eq!(reference(&gz, Coding::Gzip, 1 << 20).unwrap(), body);
        }
    }

    #[test]
    fn reused_decoders_answer_like_fresh_ones_whatever_came_before() {
        use std::io::Write;
        let page = b"{\"patients\":[{\"id\":\"1\"}]}".repeat(400);
        let gz = gzip(&page);
        let two = [gzip(b"first member, "), gzip(b"second")].concat();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&page).unwrap();
        let z = z.finish().unwrap();
        let z_trailing = [&z[..], b"trailing bytes"].concat();
        let mut garbage = gz.clone();
        garbage.extend_from_slice(b"not gzip");
        let cases: Vec<(&[u8], Coding, usize)> = vec![
            (&gz, Coding::Gzip, 1 << 20),
            (&gz[..gz.len() / 2], Coding::Gzip, 1 << 20), // truncated, leaves state behind
            (&gz, Coding::Gzip, page.len()),
            (&gz, Coding::Gzip, page.len() - 1),
            (&gz, Coding::Gzip, 10),
            (&two, Coding::Gzip, 1 << 20),
            (b"", Coding::Gzip, 1 << 20),
            (b"", Coding::Deflate, 1 << 20),
            (&garbage, Coding::Gzip, 1 << 20),
            (b"\x1f\x8b\x08\x00 not deflate", Coding::Gzip, 1 << 20),
            (&z, Coding::Deflate, 1 << 20),
            (&z[..z.len() - 3], Coding::Deflate, 1 << 20),
            (&z, Coding::Deflate, 100),
            (&z_trailing, Coding::Deflate, 1 << 20),
        ];
        // Twice over: the second round runs on decoders the first one used.
        for (bytes, coding, limit) in cases.iter().chain(cases.iter()) {
            let want = reference(bytes, *coding, *limit);
            assert_eq!(
                inflate(bytes, *coding, *limit),
                want,
                "{coding:?} limit {limit}"
            );
        }
        assert_eq!(
            inflate(&two, Coding::Gzip, 1 << 20).unwrap(),
            &b"first member, second"[..]
        );
    }

    /// A body fed by hand, one `Bytes` at a time.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        Body,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, Body::from_stream(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_wait_for_cliniko_counts_not_the_callers_pace() {
        let (tx, body) = fed();
        let mut b = idle_limit(body, Duration::from_secs(5));
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"a"));
        // The caller is slow to ask for more: that time is not Cliniko's.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let asked = Instant::now();
        // Bounded, so a missing limit fails here instead of hanging the test.
        let next = tokio::time::timeout(Duration::from_secs(60), b.frame())
            .await
            .expect("a stalled body must be cut off by the idle limit");
        assert!(next.unwrap().is_err(), "the stall is an error frame");
        assert_eq!(Instant::now() - asked, Duration::from_secs(5));
        drop(tx);
    }
}
