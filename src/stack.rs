//! The request's journey, outside to inside. Read top to bottom: each layer says why it sits
//! where it does.

use crate::access_log::AccessLogLayer;
use crate::audit::AuditLayer;
use crate::auth::Authenticator;
use crate::body::Body;
use crate::cache::Cache;
use crate::context::ContextLayer;
use crate::cors::Cors;
use crate::credentials::Credentials;
use crate::enrol::EnrolRoutes;
use crate::guard::GuardLayer;
use crate::inflight::InFlight;
use crate::policy::Policy;
use crate::ratelimit::RateLimits;
use crate::rescue::Rescue;
use crate::retry::Retries;
use crate::step::WrapLayer;
use crate::telemetry::{Telemetry, TraceLayer};
use crate::upstream::client::HttpClient;
use crate::upstream::forward::{self, Upstream};
use http::{Request, Response};
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

/// What stays for the life of the process (changing it needs a restart).
pub struct Fixed {
    /// Maps users to Cliniko keys (the key store reloads itself, in place).
    pub credentials: Arc<Credentials>,
    /// The cap on each user's requests in flight to Cliniko; its counts outlive reloads.
    pub inflight: Arc<InFlight>,
    /// Sends requests to Cliniko.
    pub upstream: Arc<Upstream>,
    /// Builds each request's context (knows which proxies' forwarded addresses to believe).
    pub context: ContextLayer,
    /// Set once shutdown has begun: `/readyz` fails from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// What the guard checks against.
    pub limits: Arc<crate::guard::Limits>,
    /// Request metrics, recorded where the access line is written (`None`: not recorded).
    pub metrics: Option<Arc<crate::metrics::HttpMetrics>>,
    /// Trace export (`None`: off, and the trace layer is not in the stack at all).
    pub telemetry: Option<Arc<Telemetry>>,
    /// The outbound client a new JWKS fetcher uses.
    pub http: HttpClient,
    /// Cache invalidations shared with the other replicas (idle without `[redis]`); every
    /// cache a reload builds joins it.
    pub bus: Arc<crate::cache::CacheBus>,
    /// The cache's counters, counted into by every cache a reload builds, so they carry on
    /// (even across caching off and on again).
    pub cache_stats: Arc<crate::cache::CacheStats>,
    /// Compressed answers for callers that ask (`None`: off).
    pub compression: Option<Arc<crate::compression::Compress>>,
    /// The claim value that allows a caller to enrol its own key (`enrol.grant`; `None`:
    /// self-service enrolment is off, and its routes are 404s like any non-/v1 path).
    pub enrol_grant: Option<String>,
}

/// The parts a config reload may replace.
pub struct Parts {
    /// Verifies bearer tokens.
    pub authn: Arc<Authenticator>,
    /// What each caller may do.
    pub policy: Arc<Policy>,
    /// The GET cache (`None` when disabled).
    pub cache: Option<Arc<Cache>>,
    /// Rate limits.
    pub ratelimits: Arc<RateLimits>,
    /// When a request goes to Cliniko again (`[upstream.retries]`; pauses `ratelimits`).
    pub retries: Arc<Retries>,
    /// CORS for browser apps (`None`: off).
    pub cors: Option<Cors>,
}

/// What checks a key being enrolled with Cliniko: the tail of the journey, from the in-flight
/// cap on.
fn verify(f: &Fixed, p: &Parts) -> crate::enrol::Verify {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(WrapLayer(Some(f.inflight.clone())))
            .layer(WrapLayer(Some(p.ratelimits.clone())))
            .layer(WrapLayer(Some(p.retries.clone())))
            .service(forward::service(f.upstream.clone())),
    )
}

/// The whole gateway as one cloneable service.
pub type GatewayService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Assembles the stack.
pub fn build(f: &Fixed, p: &Parts) -> GatewayService {
    let svc = ServiceBuilder::new()
        // First: the one typed record of the request's facts (the gateway's id, the caller's
        // id and address) that every layer below writes to and the logs read back; every
        // response, errors included, carries the id.
        .layer(WrapLayer(f.context.clone()))
        // Outside the rescue so it logs the status the caller really got.
        .layer(WrapLayer(AccessLogLayer(f.metrics.clone())))
        // The server span: inside the access log (it sees the request id and cache outcome),
        // outside the rescue (it records the status the caller got). Absent when off.
        .option_layer(f.telemetry.clone().map(|t| WrapLayer(TraceLayer(t))))
        // Browser apps (tower-http's CorsLayer, gated to listed origins): outside the rescue,
        // so errors carry CORS headers and a browser app can read its 401 or 429; a preflight
        // is answered here, before the audit, the guard, auth or any budget. Absent when off.
        .option_layer(p.cors.clone().map(WrapLayer))
        // Who did what, on its own target; outside the rescue so refusals are recorded too.
        .layer(WrapLayer(AuditLayer))
        // Every error below becomes one JSON response here, and nowhere else.
        .layer_fn(Rescue)
        // Compression for callers that ask: inside the rescue, so its 406 (nothing the caller
        // accepts) is rendered like any error, and before the guard, so that refusal costs
        // nothing; outside the cache, which may answer with its stored gzip copy as it is
        // (this layer records in the context that the caller takes gzip). Absent when off.
        .layer(WrapLayer(f.compression.clone()))
        // Enrolment's own routes (src/enrol/ owns them) branch off before the guard, whose
        // rules are for the proxied /v1, and check keys with Cliniko through the same in-flight
        // cap, rate limits and upstream as below. Absent when off.
        .layer(WrapLayer(f.enrol_grant.clone().map(|grant| {
            Arc::new(EnrolRoutes {
                grant,
                credentials: f.credentials.clone(),
                limits: f.limits.clone(),
                authn: p.authn.clone(),
                policy: p.policy.clone(),
                verify: verify(f, p),
            })
        })))
        // Cheap refusals before any crypto: local routes, bad targets, framing, body limit.
        .layer(WrapLayer(GuardLayer {
            limits: f.limits.clone(),
            draining: f.draining.clone(),
            authn: p.authn.clone(),
        }))
        // Who is calling (401).
        .layer(WrapLayer(Some(p.authn.clone())))
        // What they may do (403 forbidden): before any key is looked up or anything is sent.
        .layer(WrapLayer(p.policy.clone()))
        // Which Cliniko key they use (403 no_credential).
        .layer(WrapLayer(f.credentials.clone()))
        // A hit answers here: after auth (so 401/403 never touch it), before rate limits (so
        // a hit spends no Cliniko quota). Keyed by the credential, so keys never share.
        .layer(WrapLayer(p.cache.clone()))
        // A cap on each user's requests in flight to Cliniko (429 too_many_in_flight), held
        // until the answer is read: after the cache (a hit takes no slot), before the rate
        // limits (a refusal spends no budget, and a request waiting for its key slot already
        // holds one). Always on, whatever [ratelimit] says.
        .layer(WrapLayer(Some(f.inflight.clone())))
        // Only what really goes to Cliniko gets here: per-user limit, key budget (waits up to
        // max_wait).
        .layer(WrapLayer(Some(p.ratelimits.clone())))
        // Resends (connect failures, closed pooled connections, Cliniko's 429/503), whatever
        // [ratelimit] says: inside the limits, so a resend spends no budget twice, and it sees
        // each of Cliniko's answers, so a throttled key is paused.
        .layer(WrapLayer(Some(p.retries.clone())))
        // Header rewrite, pooled rustls client, link rewriting (502/504).
        .service(forward::service(f.upstream.clone()));
    BoxCloneSyncService::new(svc)
}
