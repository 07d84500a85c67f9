//! The parts of the stack a config reload may replace (token verification, policy, cache,
//! rate limits, CORS), held as one set behind an atomic pointer, and the service that sends each
//! request through whichever set is current when the request arrives.
//!
//! Why the whole stack is rebuilt rather than each part made swappable inside: a request then
//! sees one consistent configuration from its first layer to its last (never the old policy
//! with the new limits), and the parts themselves stay plain, immutable values. Requests in
//! flight finish on the set they started with; the old set is freed when the last one ends.

use crate::auth::Authenticator;
use crate::body::Body;
use crate::cache::Cache;
use crate::cors::Cors;
use crate::credentials::Credentials;
use crate::guard::Readiness;
use crate::metrics::HttpMetrics;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::stack::{self, GatewayService, Parts};
use crate::upstream::client::HttpClient;
use crate::upstream::forward::Upstream;
use arc_swap::ArcSwap;
use http::{Request, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tower::Service;
use tower::util::Oneshot;

/// What stays for the life of the process (changing it needs a restart).
pub struct Fixed {
    /// The key store (reloaded on its own, in place).
    pub credentials: Arc<Credentials>,
    /// The cap on each user's requests in flight to Cliniko; its counts outlive reloads.
    pub inflight: Arc<crate::inflight::InFlight>,
    /// Sends requests to Cliniko.
    pub upstream: Arc<Upstream>,
    /// What `/readyz` reports.
    pub readiness: Arc<GatewayReadiness>,
    /// Builds each request's context.
    pub context: crate::context::ContextLayer,
    /// What the guard checks against.
    pub limits: crate::guard::Limits,
    /// Request metrics.
    pub metrics: Option<Arc<HttpMetrics>>,
    /// The outbound client a new JWKS fetcher uses.
    pub http: HttpClient,
    /// Trace export (`None`: off).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// One consistent set of reloadable parts and the stack built from them.
pub struct Live {
    /// Verifies bearer tokens.
    pub authn: Arc<Authenticator>,
    /// What each caller may do.
    pub policy: Arc<Policy>,
    /// The GET cache (`None` when disabled).
    pub cache: Option<Arc<Cache>>,
    /// Rate limits (`None` when disabled).
    pub ratelimits: Option<Arc<RateLimits>>,
    /// CORS (`None` when off).
    pub cors: Option<Cors>,
    /// The in-flight cap (the same for every set; here for the metrics).
    pub inflight: Arc<crate::inflight::InFlight>,
    service: GatewayService,
}

impl Live {
    /// Builds the stack around these parts.
    pub fn assemble(
        fixed: &Fixed,
        authn: Arc<Authenticator>,
        policy: Arc<Policy>,
        (cache, ratelimits): (Option<Arc<Cache>>, Option<Arc<RateLimits>>),
        cors: Option<Cors>,
    ) -> Live {
        let service = stack::build(&Parts {
            authn: authn.clone(),
            policy: policy.clone(),
            credentials: fixed.credentials.clone(),
            cache: cache.clone(),
            ratelimits: ratelimits.clone(),
            inflight: fixed.inflight.clone(),
            upstream: fixed.upstream.clone(),
            readiness: fixed.readiness.clone(),
            context: fixed.context.clone(),
            limits: fixed.limits.clone(),
            metrics: fixed.metrics.clone(),
            telemetry: fixed.telemetry.clone(),
            cors: cors.clone(),
        });
        Live {
            authn,
            policy,
            cache,
            ratelimits,
            cors,
            inflight: fixed.inflight.clone(),
            service,
        }
    }
}

/// The current set, shared by the server, the reloader, the admin routes and the metrics.
pub type Shared = Arc<ArcSwap<Live>>;

/// The gateway as the server sees it: each request goes through the set current at arrival.
#[derive(Clone)]
pub struct Current(pub Shared);

impl Service<Request<Body>> for Current {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<GatewayService, Request<Body>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Oneshot::new(self.0.load().service.clone(), req)
    }
}

/// Ready while not draining and while the current token verifier has its keys.
pub struct GatewayReadiness {
    authn: ArcSwap<Authenticator>,
    draining: AtomicBool,
}

impl GatewayReadiness {
    /// Ready as soon as `authn` is.
    pub fn new(authn: Arc<Authenticator>) -> Arc<GatewayReadiness> {
        Arc::new(GatewayReadiness {
            authn: ArcSwap::new(authn),
            draining: AtomicBool::new(false),
        })
    }

    /// Follows a reload that replaced the token verifier.
    pub fn set_authn(&self, authn: Arc<Authenticator>) {
        self.authn.store(authn);
    }

    /// From now on `/readyz` fails (shutdown has begun).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

impl Readiness for GatewayReadiness {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.authn.load().ready()
    }
}
