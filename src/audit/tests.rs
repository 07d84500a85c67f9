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
    let slot = Mutex::new(Some(resp));
    let svc = tower::Layer::layer(
        &AuditLayer,
        tower::service_fn(move |req: Request<Body>| {
            // What the auth layer and the rescue record.
            let claims = serde_json::json!({"azp": "billing-app", "client_id": "x"});
            let ctx = RequestContext::of(&req).unwrap();
            ctx.set_user(
                "u-1".into(),
                crate::auth::app_of(claims.as_object().unwrap()).map(Into::into),
            );
            ctx.set_error(GatewayError::Forbidden { needed: "x".into() }.error_code());
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
