//! Inbound connection IO, below hyper: the raw HTTP/1.1 bytes before hyper parses them.
//!
//! Two things hyper cannot tell the service, so this wrapper, which follows request
//! boundaries exactly as hyper does, tells it request by request:
//! - the raw head had both `Content-Length` and `Transfer-Encoding`: hyper resolves that
//!   itself (chunked wins, the Content-Length header is removed, the connection closes after
//!   the response), so the service could not see the conflict (`ambiguous_length`);
//! - the request target held bytes `http::Uri` refuses. Each head is held back until it is
//!   complete and its target rewritten first ([`target`]): raw `"` `<` `>` in a query are
//!   percent-encoded and the request goes on; an unusable target is made parseable and flagged
//!   (`bad_target`), where hyper would have answered a bare 400 on its own.
//!
//! It rejects nothing itself. When it cannot follow the stream (HTTP/2, oversized or
//! malformed heads, odd chunking) it stops watching, passes bytes through, and answers
//! "nothing seen"; hyper's own RFC 9112 handling then still applies.

mod target;
mod tracker;

use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracker::Tracker;

/// Sentinel for "no such request on this connection".
const NONE: u64 = u64::MAX;

/// Wraps an inbound connection's IO; hand the wrapper to hyper and keep the watch.
///
/// `max_head_bytes` and `max_headers` should match hyper's own limits (`max_buf_size`,
/// `max_headers`): a head beyond them stops the watch rather than being buffered.
pub fn watch<I>(io: I, max_head_bytes: usize, max_headers: usize) -> (Watched<I>, FramingWatch) {
    let shared = Arc::new(Shared {
        taken: AtomicU64::new(0),
        ambiguous: AtomicU64::new(NONE),
        bad_target: AtomicU64::new(NONE),
    });
    let watched = Watched {
        io,
        tracker: Tracker::new(max_head_bytes, max_headers),
        shared: shared.clone(),
        out: Vec::new(),
        sent: 0,
    };
    (watched, FramingWatch { shared })
}

struct Shared {
    /// Verdicts handed out so far, i.e. the index of the next request the service asks about.
    taken: AtomicU64,
    /// Index of the one ambiguous request (hyper closes right after it), or `NONE`.
    ambiguous: AtomicU64,
    /// Index of the first request with an unusable target (the server closes after it), or
    /// `NONE`.
    bad_target: AtomicU64,
}

/// What the raw head of one request showed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// It had both Content-Length and Transfer-Encoding.
    pub ambiguous_length: bool,
    /// Its target was unusable (rewritten only so that it parses): refuse it, then close.
    pub bad_target: bool,
}

/// The service's side of a watched connection.
#[derive(Clone)]
pub struct FramingWatch {
    shared: Arc<Shared>,
}

impl FramingWatch {
    /// Called by the service exactly once per request, in arrival order: what that
    /// request's raw head showed.
    ///
    /// hyper's HTTP/1 server hands requests to the service one at a time in order, and it has
    /// read a head (through [`Watched`]) before the service sees it, so the n-th call answers
    /// for the n-th request. Skipping a call shifts later answers; call it first thing.
    pub fn take_next(&self) -> Verdict {
        let index = self.shared.taken.fetch_add(1, Ordering::Relaxed);
        Verdict {
            ambiguous_length: self.shared.ambiguous.load(Ordering::Acquire) == index,
            bad_target: self.shared.bad_target.load(Ordering::Acquire) == index,
        }
    }
}

impl std::fmt::Debug for FramingWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramingWatch")
            .field("taken", &self.shared.taken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// An inbound connection whose reads are watched for request framing; writes pass through.
    pub struct Watched<I> {
        #[pin]
        io: I,
        tracker: Tracker,
        shared: Arc<Shared>,
        // Bytes hyper reads in place of what came off the connection, and how many of them
        // it has been given (they may not fit in one read buffer).
        out: Vec<u8>,
        sent: usize,
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.sent < this.out.len() || buf.remaining() == 0 {
            hand_over(this.out, this.sent, buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = buf.filled().len();
            ready!(this.io.as_mut().poll_read(cx, buf))?;
            if this.tracker.is_off() {
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            *this.sent = 0;
            let read = &buf.filled()[before..];
            let changed = if read.is_empty() {
                // End of stream: a head still held back goes to hyper as it came.
                this.out.extend_from_slice(&this.tracker.stop());
                !this.out.is_empty()
            } else {
                this.tracker.feed(read, this.out)
            };
            publish(this.tracker, this.shared);
            if !changed {
                return Poll::Ready(Ok(()));
            }
            buf.set_filled(before);
            if this.out.is_empty() {
                // Everything read is a head still incomplete: read on (a `Ready` with
                // nothing in it would tell hyper the connection ended).
                continue;
            }
            hand_over(this.out, this.sent, buf);
            return Poll::Ready(Ok(()));
        }
    }
}

/// Gives hyper as much of `out[sent..]` as fits in `buf`.
fn hand_over(out: &[u8], sent: &mut usize, buf: &mut ReadBuf<'_>) {
    let n = buf.remaining().min(out.len() - *sent);
    buf.put_slice(&out[*sent..*sent + n]);
    *sent += n;
}

/// Makes what the tracker saw visible to the service, before hyper can hand it the request.
fn publish(tracker: &Tracker, shared: &Shared) {
    let seen = tracker.seen();
    for (found, slot) in [
        (seen.ambiguous, &shared.ambiguous),
        (seen.bad_target, &shared.bad_target),
    ] {
        if let Some(index) = found {
            slot.store(index, Ordering::Release);
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
