//! The audit trail: one record per request addressed to the API (`/v1...`), on its own
//! tracing target `audit`, so ops can route it apart from the access log.
//!
//! Sits just inside the access log, outside the rescue, so it records the status the caller
//! really got, refusals included (401, 403 and 400 are what a reviewer looks for). Written when
//! the response head is ready (or with 499 if the caller went away first). Fields: `time`,
//! `request_id` (the gateway's own), `client_request_id` (the caller's, when it sent one),
//! `client` (the address), `user`, `app` (`azp`, else `client_id`), `method`, `resource`,
//! `resource_id`, `sub_resource`, `status`, `code` (the gateway's error code) and `cache`,
//! all but the head and status read from the request's context. Never the query
//! string, a body, a token or a key; path segments that are not plain words become `?`.

use crate::body::Body;
use crate::context::{Context as RequestContext, plain};
use crate::metrics::RouteClass;
use crate::step::{Answer, Inner, Wrap, Wrapped};
use http::{Method, Request};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

/// The tracing target of audit records.
pub const TARGET: &str = "audit";

/// The resource a `/v1` path names: `/v1/patients/7/appointments` → `patients`, `7`,
/// `appointments`.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Resource<'a> {
    /// Resource type, e.g. `patients`.
    pub kind: Option<&'a str>,
    /// Record id, e.g. `7`.
    pub id: Option<&'a str>,
    /// Nested collection or action, e.g. `appointments`.
    pub sub: Option<&'a str>,
}

/// Parses the resource out of a path (never the query); odd segments become `?`.
pub fn resource(path: &str) -> Resource<'_> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Resource::default();
    };
    let mut segs = rest.split('/').filter(|s| !s.is_empty()).map(plain);
    Resource {
        kind: segs.next(),
        id: segs.next(),
        sub: segs.next(),
    }
}

/// Writes one audit record per API request.
#[derive(Clone, Copy, Default)]
pub struct AuditLayer;

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Wrapped<S, AuditLayer>;
    fn layer(&self, inner: S) -> Self::Service {
        Wrapped::new(inner, *self)
    }
}

struct Record {
    method: Method,
    path: String,
    ctx: Option<Arc<RequestContext>>,
    status: u16,
}

impl Drop for Record {
    fn drop(&mut self) {
        let r = resource(&self.path);
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let ctx = self.ctx.as_deref();
        tracing::info!(
            target: TARGET,
            time = time.as_str(),
            request_id = ctx.map(|c| c.id.as_str()),
            client_request_id = ctx.and_then(|c| c.client_id.as_ref()).map(|i| i.as_str()),
            client = ctx.and_then(|c| c.client_addr).map(tracing::field::display),
            user = ctx.and_then(|c| c.user()),
            app = ctx.and_then(|c| c.app()),
            method = self.method.as_str(),
            resource = r.kind,
            resource_id = r.id,
            sub_resource = r.sub,
            status = self.status,
            code = ctx.and_then(|c| c.error()).map(|c| c.as_str()),
            cache = ctx.and_then(|c| c.cache()).map(|c| c.as_str()),
        );
    }
}

impl Wrap for AuditLayer {
    type Error = Infallible;

    fn wrap<S: Inner<Infallible>>(&self, inner: &mut S, req: Request<Body>) -> Answer<Infallible> {
        // No record (no path copy, no context clone, no clock read) when nobody collects them.
        if RouteClass::of(req.uri().path()) != RouteClass::Proxy
            || !tracing::enabled!(target: TARGET, tracing::Level::INFO)
        {
            return Box::pin(inner.call(req));
        }
        let path = req.uri().path().to_string();
        // Built before awaiting so a caller that goes away still leaves a record (499).
        let mut record = Record {
            method: req.method().clone(),
            path,
            ctx: RequestContext::of(&req).cloned(),
            status: 499,
        };
        let fut = inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            record.status = resp.status().as_u16();
            drop(record);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests;
