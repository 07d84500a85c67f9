//! Adapts [`RewriteStream`] to `http_body::Body`: data frames are rewritten, trailers and
//! errors pass through, and held bytes are flushed before the trailers or the end.

use super::RewriteStream;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Initial output capacity; `BytesMut` reuses it once the previous frame is dropped.
const INITIAL_CAPACITY: usize = 8 * 1024;

pin_project_lite::pin_project! {
    /// A response body whose upstream links are rewritten as it streams.
    pub(super) struct RewriteBody {
        #[pin]
        inner: crate::body::Body,
        stream: RewriteStream,
        buf: BytesMut,
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl RewriteBody {
    pub(super) fn new(inner: crate::body::Body, stream: RewriteStream) -> RewriteBody {
        RewriteBody {
            inner,
            stream,
            buf: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }
}

impl HttpBody for RewriteBody {
    type Data = Bytes;
    type Error = axum_core::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        loop {
            // What the rewriter let out goes first, then the trailers, then the end.
            if !this.buf.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
            }
            if let Some(t) = this.trailers.take() {
                *this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            // Whatever the rewriter holds back (e.g. the start of a link) waits for more.
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.reserve(data.len().max(INITIAL_CAPACITY));
                        this.stream.push(&data, this.buf);
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => {
                            this.stream.finish(this.buf);
                            *this.trailers = Some(t);
                        }
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    },
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    *this.done = true;
                    this.stream.finish(this.buf);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none() && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Rewriting changes the length; only a lower bound of zero is certain.
        SizeHint::default()
    }
}
