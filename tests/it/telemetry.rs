//! OpenTelemetry: trace context continues through the gateway to Cliniko and back, and spans
//! reach a real OTLP/HTTP collector (a loopback hyper server decoding what it receives).

use crate::support::{Harness, Setup};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// A minimal OTLP/HTTP collector: records the spans of every `POST /v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let store = store.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        if path == "/v1/traces" {
                            let msg = ExportTraceServiceRequest::decode(body).unwrap();
                            let mut s = store.lock().unwrap();
                            for r in msg.resource_spans {
                                for ss in r.scope_spans {
                                    s.extend(ss.spans);
                                }
                            }
                        }
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .into_owned(),
                );
            }
        });
        Collector { url, spans }
    }

    /// Waits (bounded) until at least `n` spans of `trace_id` arrived. The bound is under the
    /// exporter's 5 s batch delay, so only the flush at shutdown can satisfy it.
    async fn spans_of(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let found: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex::encode(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "collector got {} span(s) of the trace",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// (version, trace id, parent id, flags) of a `traceparent`.
fn parts(tp: &str) -> (String, String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn traced_setup(collector: &Collector) -> Setup {
    Setup {
        overrides: vec![(
            "CLINIKO_GATEWAY__TELEMETRY__OTLP_ENDPOINT",
            collector.url.clone(),
        )],
        ..Setup::default()
    }
}

#[tokio::test]
async fn trace_continues_through_the_gateway_and_reaches_the_collector() {
    let collector = Collector::start().await;
    let mut h = Harness::start(traced_setup(&collector)).await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let got = h
        .get_as_with(
            "alice",
            "/v1/patients?q=Smith",
            &[
                ("traceparent", &caller),
                ("tracestate", TRACESTATE),
                ("x-request-id", "trace-req-1"),
            ],
        )
        .await;
    assert_eq!(got.status, 200);

    // (a) Cliniko sees the same trace, parented on the gateway's client span.
    let seen = h.sandbox("au1").requests();
    let up = seen[0].headers["traceparent"].to_str().unwrap();
    let (version, trace, client_span, flags) = parts(up);
    assert_eq!((version.as_str(), trace.as_str()), ("00", TRACE_ID));
    assert_ne!(client_span, CALLER_SPAN);
    assert_eq!(flags, "01", "the caller's sampled flag is followed");
    assert_eq!(seen[0].headers["tracestate"], TRACESTATE);

    // (b) "And back": the caller learns the gateway's server span.
    let back = got.headers["traceparent"].to_str().unwrap();
    let (_, trace, server_span, _) = parts(back);
    assert_eq!(trace, TRACE_ID);
    assert_ne!(server_span, CALLER_SPAN);
    assert_ne!(server_span, client_span);

    // Health probes stay untraced.
    let health = h
        .send(http::Method::GET, "/healthz", &[], Bytes::new())
        .await;
    assert!(!health.headers.contains_key("traceparent"));

    // (c) Shutdown flushes; both spans arrive, linked as the headers said.
    h.shutdown().await;
    let spans = collector.spans_of(TRACE_ID, 2).await;
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("a client span");
    assert_eq!(hex::encode(&server.span_id), server_span);
    assert_eq!(hex::encode(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(hex::encode(&client.span_id), client_span);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.name, "HTTP GET");
    assert_eq!(
        attr(server, "http.route"),
        Some(Value::StringValue("proxy".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    // The gateway's own id, and the caller's beside it.
    assert!(
        matches!(attr(server, "cliniko_gateway.request_id"), Some(Value::StringValue(s)) if s.as_str().len() == 36)
    );
    assert_eq!(
        attr(server, "cliniko_gateway.client_request_id"),
        Some(Value::StringValue("trace-req-1".into()))
    );
    assert_eq!(
        attr(server, "cliniko_gateway.cache"),
        Some(Value::StringValue("MISS".into()))
    );
    assert_eq!(
        attr(client, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    // Nothing from the path, query string or credentials is exported.
    let dump = format!("{spans:?}");
    for leak in ["Smith", "patients", "Bearer", "Basic", "alicekey"] {
        assert!(!dump.contains(leak), "{leak} leaked into a span");
    }
}

#[tokio::test]
async fn a_broken_traceparent_starts_a_new_trace() {
    let collector = Collector::start().await;
    let mut h = Harness::start(traced_setup(&collector)).await;
    let got = h
        .get_as_with(
            "alice",
            "/v1/patients",
            &[
                ("traceparent", "00-not-a-trace-01"),
                ("tracestate", TRACESTATE),
            ],
        )
        .await;
    assert_eq!(got.status, 200);
    let seen = h.sandbox("au1").requests();
    let (_, up_trace, _, _) = parts(seen[0].headers["traceparent"].to_str().unwrap());
    let (_, back_trace, _, _) = parts(got.headers["traceparent"].to_str().unwrap());
    assert_eq!(up_trace.len(), 32);
    assert_eq!(up_trace, back_trace, "one new trace, both directions");
    assert!(
        !seen[0].headers.contains_key("tracestate"),
        "the state of a broken trace is dropped"
    );
    h.shutdown().await;
    let spans = collector.spans_of(&up_trace, 2).await;
    assert!(
        spans.iter().any(|s| s.parent_span_id.is_empty()),
        "a root span"
    );
}

#[tokio::test]
async fn telemetry_off_passes_trace_headers_through_untouched() {
    let h = Harness::start(Setup::default()).await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let got = h
        .get_as_with(
            "alice",
            "/v1/patients",
            &[("traceparent", &caller), ("tracestate", TRACESTATE)],
        )
        .await;
    assert_eq!(got.status, 200);
    let seen = h.sandbox("au1").requests();
    assert_eq!(seen[0].headers["traceparent"].as_bytes(), caller.as_bytes());
    assert_eq!(
        seen[0].headers["tracestate"].as_bytes(),
        TRACESTATE.as_bytes()
    );
    assert!(!got.headers.contains_key("traceparent"));
}
