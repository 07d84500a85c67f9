//! Outermost layer: every request gets an `X-Request-Id`.
//!
//! A caller's id is kept when it is short and plain (`[A-Za-z0-9._-]`, ≤ 128 bytes) so traces
//! join up across services; anything else is replaced with a fresh UUID, so a caller cannot
//! inject log-breaking text. The id is forwarded to Cliniko and returned on every response.

use crate::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Request, Response};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// The header name.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// Layer that installs [`SetRequestId`].
#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId { inner }
    }
}

/// Propagates or creates the request id.
#[derive(Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for SetRequestId<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = match req.headers().get(&HEADER) {
            Some(v) if acceptable(v) => v.clone(),
            // Formatted on the stack: no `Display` machinery and no String per request.
            _ => {
                let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
                HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown"))
            }
        };
        // Inner layers read the extension (the forwarder sends it on); the caller's header,
        // plain or not, is never forwarded as it came.
        req.extensions_mut().insert(RequestId(id.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(HEADER, id);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_kept() {
        assert!(acceptable(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!acceptable(&HeaderValue::from_static("a b")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }
}
