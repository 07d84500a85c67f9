//! The shapes the journey's own steps take, so each step is only its logic:
//! - [`Check`], as an `Arc` behind a [`WrapLayer`] (policy, credentials): decided at once,
//!   annotate the request or refuse it;
//! - [`Step`], as an `Option` behind a [`WrapLayer`] (token verification, cache, rate limits):
//!   asynchronous and stateful, and passed over entirely when the feature is switched off;
//! - [`Wrap`] (context, access log, audit, server span, guard): a layer that is one function
//!   of the request and the rest of the stack, outside the rescue or inside it.

use crate::body::Body;
use crate::error::GatewayError;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

/// The rest of the stack below a step: answers a request or fails with a [`GatewayError`]
/// (turned into a response by the rescue layer), and can be cloned into a spawned future.
pub trait Next: Inner<GatewayError> + Clone + Send + 'static {}

impl<S: Inner<GatewayError> + Clone + Send + 'static> Next for S {}

/// What a step does with a request, given the rest of the stack (`inner`).
pub trait Step: Send + Sync + 'static {
    /// Handles one request.
    fn run<S>(
        self: Arc<Self>,
        inner: S,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, GatewayError>> + Send
    where
        S: crate::step::Next;
}

/// A [`Step`] installed with a [`WrapLayer`]; `None` (feature off) passes requests through
/// untouched.
impl<T: Step> Wrap for Option<Arc<T>> {
    type Error = GatewayError;

    // Boxed even when the step is off: an `Either` of the rest's own future nests every
    // layer's future inside the next by value, and moving those cost more per request
    // (+630 instructions per hit, `benches/callgrind.sh hit`) than the clone and box it saved.
    fn wrap<S>(&self, inner: &mut S, req: Request<Body>) -> Answer<GatewayError>
    where
        S: Inner<GatewayError> + Clone + Send + 'static,
    {
        // The ready clone goes into the future; a fresh clone stays for the next call.
        let clone = inner.clone();
        let inner = std::mem::replace(inner, clone);
        match self.clone() {
            None => Box::pin(inner.oneshot(req)),
            Some(step) => Box::pin(step.run(inner, req)),
        }
    }
}

/// A step decided without waiting: it inspects (and may annotate) the request, or refuses it.
pub trait Check: Send + Sync + 'static {
    /// `Ok` lets the request on to the rest of the stack; `Err` answers it here.
    fn check(&self, req: &mut Request<Body>) -> Result<(), GatewayError>;
}

/// A [`Check`] installed with a [`WrapLayer`] (as an `Arc`). Not a [`Step`]: a check needs no
/// future of its own, so it calls the rest of the stack in place. As a `Step` each check cloned
/// the whole rest of the stack and boxed a future per request, about 5,700 instructions each
/// (`benches/callgrind.sh hit`).
impl<S: Inner<GatewayError>, T: Check> Service<Request<Body>> for Wrapped<S, Arc<T>> {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Response<Body>, GatewayError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        use futures_util::future::Either;
        match self.wrap.check(&mut req) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        }
    }
}

/// The rest of the stack below a [`Wrap`] layer, failing with `E`.
pub trait Inner<E>:
    Service<Request<Body>, Response = Response<Body>, Error = E, Future: Send + 'static>
{
}

impl<S, E> Inner<E> for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = E, Future: Send + 'static>
{
}

/// What a [`Wrap`] layer answers.
pub type Answer<E> = BoxFuture<'static, Result<Response<Body>, E>>;

/// A layer whose whole work is one function of the request and the rest of the stack
/// (`inner`): the context, the access log, the audit, the server span, the guard. The layer
/// is its own state (cloned into each [`Wrapped`] service) and fails as the rest fails.
pub trait Wrap: Clone + Send + Sync + 'static {
    /// `Infallible` outside the rescue, [`GatewayError`] inside it.
    type Error;

    /// Handles one request.
    fn wrap<S>(&self, inner: &mut S, req: Request<Body>) -> Answer<Self::Error>
    where
        S: Inner<Self::Error> + Clone + Send + 'static;
}

/// Installs a [`Wrap`] layer, an optional [`Step`] or a [`Check`]: its state is cloned into
/// each [`Wrapped`] service.
#[derive(Clone)]
pub struct WrapLayer<T>(pub T);

impl<S, T: Clone> tower::Layer<S> for WrapLayer<T> {
    type Service = Wrapped<S, T>;
    fn layer(&self, inner: S) -> Wrapped<S, T> {
        Wrapped {
            inner,
            wrap: self.0.clone(),
        }
    }
}

/// The service a [`WrapLayer`] installs: the rest of the stack and the layer's state.
#[derive(Clone)]
pub struct Wrapped<S, T> {
    inner: S,
    wrap: T,
}

impl<S, T> Service<Request<Body>> for Wrapped<S, T>
where
    S: Inner<T::Error> + Clone + Send + 'static,
    T: Wrap,
{
    type Response = Response<Body>;
    type Error = T::Error;
    type Future = Answer<T::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.wrap.wrap(&mut self.inner, req)
    }
}
