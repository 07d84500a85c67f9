//! Inbound connection IO, below hyper: spots HTTP/1.1 requests whose raw head had both
//! `Content-Length` and `Transfer-Encoding`.
//!
//! hyper resolves such a request itself (chunked wins, the Content-Length header is removed,
//! the connection closes after the response), so the service cannot see the conflict. This
//! wrapper watches the bytes hyper reads, follows request boundaries exactly as hyper does,
//! and lets the service ask, request by request, whether the head was ambiguous so it can
//! reject it (`ambiguous_length`) before anything goes upstream. It rejects nothing itself.
//! When it cannot follow the stream (HTTP/2, oversized or malformed heads, odd chunking) it
//! stops watching and answers `false`; hyper's own RFC 9112 handling then still applies.

mod tracker;

use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracker::Tracker;

/// Sentinel for "no ambiguous request on this connection".
const NONE: u64 = u64::MAX;

/// Wraps an inbound connection's IO; hand the wrapper to hyper and keep the watch.
///
/// `max_head_bytes` and `max_headers` should match hyper's own limits (`max_buf_size`,
/// `max_headers`): a head beyond them stops the watch rather than being buffered.
pub fn watch<I>(io: I, max_head_bytes: usize, max_headers: usize) -> (Watched<I>, FramingWatch) {
    let shared = Arc::new(Shared {
        taken: AtomicU64::new(0),
        ambiguous: AtomicU64::new(NONE),
    });
    let watched = Watched {
        io,
        tracker: Tracker::new(max_head_bytes, max_headers),
        shared: shared.clone(),
    };
    (watched, FramingWatch { shared })
}

struct Shared {
    /// Verdicts handed out so far, i.e. the index of the next request the service asks about.
    taken: AtomicU64,
    /// Index of the one ambiguous request (hyper closes right after it), or `NONE`.
    ambiguous: AtomicU64,
}

/// The service's side of a watched connection.
#[derive(Clone)]
pub struct FramingWatch {
    shared: Arc<Shared>,
}

impl FramingWatch {
    /// Called by the service exactly once per request, in arrival order: true if that
    /// request's raw head had both Content-Length and Transfer-Encoding.
    ///
    /// hyper's HTTP/1 server hands requests to the service one at a time in order, and it has
    /// read a head (through [`Watched`]) before the service sees it, so the n-th call answers
    /// for the n-th request. Skipping a call shifts later answers; call it first thing.
    pub fn take_next(&self) -> bool {
        let index = self.shared.taken.fetch_add(1, Ordering::Relaxed);
        self.shared.ambiguous.load(Ordering::Acquire) == index
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
    }
}

impl<I> Watched<I> {
    /// The wrapped IO (e.g. to read the peer address or TLS session).
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        if !this.tracker.is_off() {
            let was = this.tracker.seen().ambiguous;
            this.tracker.feed(&buf.filled()[before..]);
            if let (None, Some(index)) = (was, this.tracker.seen().ambiguous) {
                this.shared.ambiguous.store(index, Ordering::Release);
            }
        }
        Poll::Ready(Ok(()))
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
