//! Micro-benchmarks of the per-request pieces (criterion): `cargo bench --bench hot_path`.
//! Numbers are per operation on this machine; compare runs, not absolute values.

use bytes::Bytes;
use cliniko_gateway::body::Body;
use cliniko_gateway::cache::Cache;
use cliniko_gateway::config::{Env, load_str};
use cliniko_gateway::credentials::{ApiKey, Credential};
use cliniko_gateway::step::WrapLayer;
use cliniko_gateway::upstream::headers::upstream_request_headers;
use cliniko_gateway::upstream::links::LinkRewriter;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Response};
use std::hint::black_box;
use std::sync::Arc;
use tower::{Service, ServiceExt};

const UPSTREAM: &str = "https://api.au1.cliniko.com/v1";

/// A Cliniko-style list of `n` patients with absolute links (~420 bytes each).
fn list_body(n: usize) -> Vec<u8> {
    let pts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let id = 836447129235883061u64 + i as u64;
            serde_json::json!({
                "id": id.to_string(), "first_name": format!("Ada{i}"), "last_name": "Lovelace",
                "date_of_birth": "1941-02-02", "telehealth_url": format!("https://acme.cliniko.com/t/{i}"),
                "appointments": {"links": {"self": format!("{UPSTREAM}/patients/{id}/appointments")}},
                "links": {"self": format!("{UPSTREAM}/patients/{id}")}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "patients": pts, "total_entries": 1200,
        "links": {"self": format!("{UPSTREAM}/patients?page=1"), "next": format!("{UPSTREAM}/patients?page=2")}
    }))
    .unwrap()
}

fn config() -> cliniko_gateway::config::Config {
    let text =
        "[auth]\n[keystore]\npath = \"k.json\"\n[upstream]\nuser_agent = \"Bench (b@e.x)\"\n";
    let env = Env([
        (
            "CLINIKO_GATEWAY_HMAC_SECRET".to_string(),
            "bench-hmac-secret-that-is-long-enough-0123".to_string(),
        ),
        ("CLINIKO_GATEWAY_MASTER_KEY".to_string(), "00".repeat(32)),
    ]
    .into_iter()
    .collect());
    load_str(text, std::path::Path::new("/tmp"), &env).unwrap()
}

fn links(c: &mut Criterion) {
    let rw = LinkRewriter::new("http://127.0.0.1:8080", &[]);
    for (name, n) in [("links/rewrite 15KB", 36), ("links/rewrite 1MB", 2400)] {
        let body = list_body(n);
        let mut g = c.benchmark_group(name);
        g.throughput(criterion::Throughput::Bytes(body.len() as u64));
        g.bench_function("one chunk", |b| {
            let mut out = Vec::with_capacity(body.len() + 4096);
            b.iter(|| {
                out.clear();
                let mut s = rw.stream();
                s.push(black_box(&body), &mut out);
                s.finish(&mut out);
                black_box(out.len())
            })
        });
        let whole = bytes::Bytes::from(body.clone());
        g.bench_function("whole body (fast path)", |b| {
            b.iter(|| black_box(rw.rewrite_whole(black_box(whole.clone())).len()))
        });
        g.bench_function("16 KiB chunks", |b| {
            let mut out = Vec::with_capacity(body.len() + 4096);
            b.iter(|| {
                out.clear();
                let mut s = rw.stream();
                for ch in body.chunks(16 * 1024) {
                    s.push(black_box(ch), &mut out);
                }
                s.finish(&mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

fn links_extra_origin(c: &mut Criterion) {
    // As in benches/compare.sh: links point at a configured shard override on loopback.
    let rw = LinkRewriter::new(
        "http://127.0.0.1:8080",
        &["https://localhost:19443/v1".to_string()],
    );
    let body = String::from_utf8(list_body(36))
        .unwrap()
        .replace(UPSTREAM, "https://localhost:19443/v1");
    c.bench_function("links/rewrite 15KB, extra origin", |b| {
        let mut out = Vec::with_capacity(body.len() + 4096);
        b.iter(|| {
            out.clear();
            let mut s = rw.stream();
            s.push(black_box(body.as_bytes()), &mut out);
            s.finish(&mut out);
            black_box(out.len())
        })
    });
}

fn headers(c: &mut Criterion) {
    let mut caller = HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        ("host", "gateway.internal"),
        ("user-agent", "app/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("cookie", "a=b"),
        ("x-request-id", "abc"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        caller.insert(
            http::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    let user_agent = HeaderValue::from_static("Bench (b@e.x)");
    let basic = HeaderValue::from_static("Basic a2V5LWF1MTo=");
    let rid = HeaderValue::from_static("0c6a2b8e-5b2f-4f31-9a55-0e0b7a7e8e11");
    c.bench_function("headers/rewrite request", |b| {
        b.iter(|| {
            black_box(upstream_request_headers(
                black_box(&caller),
                &user_agent,
                &basic,
                &rid,
            ))
        })
    });
}

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = config();
    let http = cliniko_gateway::upstream::client::build(&cfg.upstream, Default::default()).unwrap();
    let secret = cfg.auth.hmac_secret.clone().unwrap();
    let token = cliniko_gateway::auth::mint::mint(
        &jsonwebtoken::EncodingKey::from_secret(secrecy::ExposeSecret::expose_secret(&secret)),
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        "alice",
        std::time::Duration::from_secs(3600),
        serde_json::Map::new(),
    )
    .unwrap();
    let mut header = HeaderMap::new();
    header.insert(
        http::header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let cached = cliniko_gateway::auth::Authenticator::new(&cfg.auth, http.clone(), None).unwrap();
    let mut cold_cfg = config();
    cold_cfg.auth.token_cache_size = 0;
    let cold = cliniko_gateway::auth::Authenticator::new(&cold_cfg.auth, http, None).unwrap();
    c.bench_function("jwt/HS256 cold (verify every time)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cold.authenticate(&header).await.unwrap()) })
    });
    c.bench_function("jwt/HS256 cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cached.authenticate(&header).await.unwrap()) })
    });
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = config();
    let cache = Cache::new(&cfg.cache, Arc::default(), None).unwrap();
    let body = Bytes::from(list_body(36));
    let inner = tower::service_fn(move |_req: Request<Body>| {
        let body = body.clone();
        async move {
            let mut r = Response::new(Body::from(body));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            Ok::<_, cliniko_gateway::error::GatewayError>(r)
        }
    });
    let svc = tower::Layer::layer(&WrapLayer(Some(cache)), inner);
    let cred = Arc::new(Credential::new(ApiKey::new("benchkey-au1".into()), "k1", None).unwrap());
    let req = || {
        let mut r = Request::get("/v1/practitioners?per_page=50")
            .body(Body::empty())
            .unwrap();
        r.extensions_mut().insert(cred.clone());
        r
    };
    rt.block_on(svc.clone().oneshot(req())).unwrap();
    c.bench_function("cache/hit (lookup + response, body shared)", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            let r = req();
            async move { black_box(svc.call(r).await.unwrap()) }
        })
    });
}

criterion_group!(benches, links, links_extra_origin, headers, tokens, cache);
criterion_main!(benches);
