//! The tracer provider: OTLP/HTTP (protobuf), batched, parent-based ratio sampling.
//!
//! The batch processor exports from its own thread, outside any async runtime, so the HTTP
//! client owns a small current-thread runtime and blocks on each export there: exports never
//! compete with requests for the gateway's runtime, and a shutdown that blocks the gateway's
//! threads cannot deadlock the flush. TLS is rustls with aws-lc-rs and the bundled roots.

use super::Telemetry;
use crate::config::{ConfigError, TelemetryConfig};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::time::Duration;

/// How long one export may take (connect, send, read the answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read (they are tiny; a partial-success message at most).
const MAX_ANSWER: usize = 64 * 1024;

fn field_err(problem: impl Into<String>) -> ConfigError {
    ConfigError::new(
        "telemetry.otlp_endpoint",
        problem,
        "write the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318",
    )
}

/// Builds the provider when an endpoint is configured.
pub(super) fn start(cfg: &TelemetryConfig) -> Result<Option<Telemetry>, ConfigError> {
    let Some(base) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let base = base.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|_| field_err("the OTLP exporter cannot be built for this URL"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A caller's sampled flag is not trusted on its own: it arrives before authentication,
        // so anyone could force every request into the export queue. Remote parents are
        // sampled by the same ratio (by trace id, so one trace stays whole across replicas).
        .with_sampler(Sampler::TraceIdRatioBased(cfg.sample_ratio))
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("cliniko-gateway");
    tracing::info!(
        service_name = %cfg.service_name,
        sample_ratio = cfg.sample_ratio,
        "telemetry: exporting traces over OTLP/HTTP"
    );
    Ok(Some(Telemetry { provider, tracer }))
}

/// Sends OTLP requests on its own runtime (see the module docs).
#[derive(Debug)]
struct ExportClient {
    /// Always `Some` until dropped; taken so the drop never blocks (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ExportClient {
    fn new() -> Result<ExportClient, ConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| field_err("cannot start the exporter's runtime"))?;
        let tls = crate::upstream::client::tls_config(None, "telemetry.otlp_endpoint")?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        // No pooling: the runtime only runs during an export, so an idle connection could
        // not notice the collector closing it and the next export would fail on it.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(ExportClient {
            rt: Some(rt),
            client,
        })
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError> {
        let resp = self.client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Blocking on a runtime from inside another one would panic; the batch thread never
        // is inside one, so this only guards against a future change of processor.
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("telemetry: export called from an async runtime thread".into());
        }
        let rt = self
            .rt
            .as_ref()
            .ok_or("telemetry: exporter already stopped")?;
        let (parts, body) = request.into_parts();
        let req = Request::from_parts(parts, Full::new(body));
        rt.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, self.exchange(req))
                .await
                .map_err(|_| HttpError::from("telemetry: export timed out"))?
        })
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; the exporter can be dropped on an
        // async thread (e.g. when start-up fails after it was built).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
