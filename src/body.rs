//! The one body type used on both sides of the proxy.
//!
//! `axum_core::body::Body` is a boxed, streaming body that tower-governor can also produce,
//! so every layer (ours and governor's) speaks the same type.

/// Request and response body throughout the gateway.
pub type Body = axum_core::body::Body;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Watches a body as it streams: sees each data frame; its `Drop` marks the end of the body
/// (finished, failed or abandoned by the client), which is where per-request bookkeeping ends.
pub trait BodyObserver: Send + 'static {
    /// Called when the body is asked for its next frame (before the inner body is polled).
    fn on_poll(&mut self) {}
    /// Called for every data frame with its length.
    fn on_data(&mut self, _len: usize) {}
}

pin_project_lite::pin_project! {
    /// A body that reports its frames to an observer.
    pub struct Observed<O> {
        #[pin]
        inner: Body,
        observer: O,
    }
}

/// Wraps `body` so `observer` sees it stream and is dropped when the body is.
pub fn observe<O: BodyObserver>(body: Body, observer: O) -> Body {
    Body::new(Observed {
        inner: body,
        observer,
    })
}

impl<O: BodyObserver> HttpBody for Observed<O> {
    type Data = Bytes;
    type Error = axum_core::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        this.observer.on_poll();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.observer.on_data(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
