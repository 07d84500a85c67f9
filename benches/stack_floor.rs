//! The floor of the chosen stack, for `benches/compare.sh`: a proxy built from the same hyper,
//! hyper-util, hyper-rustls, rustls (aws-lc-rs), tokio and jemalloc as the gateway, doing
//! nothing but what nginx does in the benchmark (set Authorization, User-Agent and Accept,
//! forward over pooled TLS, answer with the collected body). No token, key store, policy,
//! limits, cache, logs, metrics or link rewriting.
//!
//! Why it exists: it measures what the stack itself costs per request on this machine, so the
//! gateway's own cost is the difference, and a target below the floor is seen as such.
//!
//!   stack_floor <listen addr> <upstream base URL, e.g. https://localhost:19443/v1> <CA file>

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, base, ca] = &args[..] else {
        return Err("usage: stack_floor <listen addr> <upstream base URL> <CA file>".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(https);
    let base: Arc<str> = base.trim_end_matches("/v1").into();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| forward(client.clone(), base.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

/// What nginx's `proxy_pass` does in the benchmark, and nothing more.
async fn forward(
    client: Upstream,
    base: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{base}{target}").parse::<http::Uri>() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut up = Request::new(Full::new(Bytes::new()));
    *up.uri_mut() = uri;
    let h = up.headers_mut();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic YmVuY2hrZXk6"),
    );
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("Gateway Bench (bench@example.invalid)"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let Ok(resp) = client.request(up).await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(b) => Ok(Response::from_parts(parts, Full::new(b.to_bytes()))),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}
