//! A request's head kept so the same request can be sent again without its body: by the rate
//! limits (after a Cliniko pause or a connect failure) and by the cache (the fill, and waiters
//! who must ask for themselves).

use crate::body::Body;
use http::request::Parts;
use http::{Request, header};
use http_body::Body as _;

/// A request's head (method, target, version, headers and extensions); resent with an empty
/// body.
pub struct Replay {
    /// The head to resend.
    pub head: Parts,
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
        r.head.headers.remove(header::CONTENT_LENGTH);
        r.head.headers.remove(header::TRANSFER_ENCODING);
        r.head.headers.remove(header::CONTENT_TYPE);
        r
    }

    fn head(req: &Request<Body>) -> Replay {
        let mut r = Request::new(());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        *r.extensions_mut() = req.extensions().clone();
        Replay {
            head: r.into_parts().0,
        }
    }

    /// A new request with this head and an empty body.
    pub fn build(&self) -> Request<Body> {
        Request::from_parts(self.head.clone(), Body::empty())
    }
}
