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
use crate::step::{Answer, Inner, Wrap};
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
            app = ctx.and_then(|c| c.app.get()).map(|a| &**a),
            method = self.method.as_str(),
            resource = r.kind,
            resource_id = r.id,
            sub_resource = r.sub,
            status = self.status,
            code = ctx.and_then(|c| c.error.get()).map(|c| c.as_str()),
            cache = ctx.and_then(|c| c.cache.get()).map(|c| c.as_str()),
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
mod tests {
    use super::*;
    use crate::context::{Arrival, RequestId};
    use crate::error::GatewayError;
    use http::Response;
    use std::io::Write;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[test]
    fn resources_are_parsed_from_the_path_only() {
        let r = resource("/v1/patients/7/appointments");
        assert_eq!(
            r,
            Resource {
                kind: Some("patients"),
                id: Some("7"),
                sub: Some("appointments")
            }
        );
        assert_eq!(resource("/v1/patients").kind, Some("patients"));
        assert_eq!(resource("/v1/patients").id, None);
        assert_eq!(resource("/v1"), Resource::default());
        assert_eq!(resource("/v1/"), Resource::default());
        assert_eq!(resource("/v1/patients/%41b").id, Some("?"));
        assert_eq!(
            resource(&format!("/v1/{}", "a".repeat(200))).kind,
            Some("?")
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn one(mut req: Request<Body>, resp: Response<Body>) -> Vec<serde_json::Value> {
        // The context layer (outermost) installs the context the audit reads.
        let hv = http::HeaderValue::from_static;
        let mut ctx = RequestContext::new(Arrival {
            peer: Some(([203, 0, 113, 5], 4711).into()),
            ..Arrival::default()
        });
        ctx.id = RequestId(hv("gw-1"));
        ctx.client_id = Some(RequestId(hv("rid-9")));
        req.extensions_mut().insert(Arc::new(ctx));
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        let slot = Arc::new(Mutex::new(Some(resp)));
        let svc = tower::Layer::layer(
            &crate::step::WrapLayer(AuditLayer),
            tower::service_fn(move |req: Request<Body>| {
                // What the auth layer and the rescue record.
                let claims = serde_json::json!({"azp": "billing-app", "client_id": "x"});
                let ctx = RequestContext::of(&req).unwrap();
                ctx.set_user(
                    "u-1".into(),
                    crate::auth::app_of(claims.as_object().unwrap()).map(Into::into),
                );
                let _ = ctx
                    .error
                    .set(GatewayError::Forbidden { needed: "x".into() }.error_code());
                let r = slot.lock().unwrap().take().unwrap();
                async move { Ok::<_, Infallible>(r) }
            }),
        );
        let _ = svc.oneshot(req).await;
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn one_record_with_the_stable_fields_and_no_query() {
        let req = Request::builder()
            .method("PATCH")
            .uri("/v1/patients/7?q[]=last_name:~~Zebediah%25")
            .body(Body::empty())
            .unwrap();
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = http::StatusCode::FORBIDDEN;
        let lines = one(req, resp).await;
        assert_eq!(lines.len(), 1);
        let v = &lines[0];
        assert_eq!(v["target"], "audit");
        assert_eq!(v["request_id"], "gw-1");
        assert_eq!(v["client_request_id"], "rid-9");
        assert_eq!(v["client"], "203.0.113.5");
        assert_eq!(v["user"], "u-1");
        assert_eq!(v["app"], "billing-app");
        assert_eq!(v["method"], "PATCH");
        assert_eq!(v["resource"], "patients");
        assert_eq!(v["resource_id"], "7");
        assert_eq!(v["status"], 403);
        assert_eq!(v["code"], "forbidden");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(!v.to_string().contains("Zebediah"));
    }

    #[tokio::test]
    async fn local_routes_are_not_audited() {
        let req = Request::get("/healthz").body(Body::empty()).unwrap();
        assert!(one(req, Response::new(Body::empty())).await.is_empty());
    }
}
