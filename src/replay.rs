//! A request's head kept so the same request can be sent again without its body: by the rate
//! limits (after a Cliniko pause or a connect failure) and by the cache (the fill, and waiters
//! who must ask for themselves).

use crate::body::Body;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version, header};
use http_body::Body as _;

/// Method, target, version, headers and extensions of a request; resent with an empty body.
pub struct Replay {
    /// The method to resend with.
    pub method: Method,
    uri: Uri,
    version: Version,
    /// The headers to resend.
    pub headers: HeaderMap,
    extensions: Extensions,
}

impl Replay {
    /// The head of a request that carries no body; `None` when it has one (it cannot be sent
    /// twice: its body is streamed once).
    pub fn of(req: &Request<Body>) -> Option<Replay> {
        (req.body().size_hint().exact() == Some(0)).then(|| Replay::head(req))
    }

    /// The head of any request, for resending it without its body (whatever body it had is
    /// ignored): the headers that announce a body are dropped.
    pub fn without_body(req: &Request<Body>) -> Replay {
        let mut r = Replay::head(req);
        r.headers.remove(header::CONTENT_LENGTH);
        r.headers.remove(header::TRANSFER_ENCODING);
        r.headers.remove(header::CONTENT_TYPE);
        r
    }

    fn head(req: &Request<Body>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    /// A new request with this head and an empty body.
    pub fn build(&self) -> Request<Body> {
        let mut r = Request::new(Body::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        *r.extensions_mut() = self.extensions.clone();
        r
    }
}
