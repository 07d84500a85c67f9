//! One request through the sandbox: record it, apply a fault, check auth and User-Agent,
//! then answer like Cliniko.
//!
//! Rejects (in this order, after any fault): a `/v1/...` request with no known key (401), one
//! without a `Name (email@host)` User-Agent (403), and anything it does not route (404).

use super::data::{AccountStore, Invalid, RESOURCES};
use super::state::State;
use super::sync::{lock, stopped};
use super::{Fault, Recorded, fault};
use crate::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::watch;

const JSON: &str = "application/json; charset=utf-8";
const CACHE_CONTROL: &str = "max-age=0, private, must-revalidate";

/// Answers one request; never fails (broken answers are made on purpose, by faults).
pub(crate) async fn handle(
    state: Arc<State>,
    hijack: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let Ok(collected) = incoming.collect().await else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        ));
    };
    let body = collected.to_bytes();
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    {
        let mut requests = lock(&state.requests);
        requests.push(Recorded {
            method: parts.method.to_string(),
            path_and_query,
            headers: parts.headers.clone(),
            body: body.clone(),
            at: Instant::now(),
            version: parts.version,
        });
        state.arrived.send_replace(requests.len());
    }
    let path = parts.uri.path();
    let fault = lock(&state.faults).get(path).cloned();
    match fault {
        None => {}
        Some(Fault::Status(s, text)) => return Ok(plain(status(s), &text)),
        Some(Fault::Json(s, v)) => return Ok(json_response(status(s), &v, None)),
        Some(Fault::WithHeaders(s, headers, text)) => {
            let mut resp = plain(status(s), &text);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    resp.headers_mut().insert(k, v);
                }
            }
            return Ok(resp);
        }
        Some(Fault::Raw(s, headers, bytes)) => {
            // `transfer-encoding: chunked` asked: the body goes as a stream with no length (a
            // server compressing on the fly answers so); the framing is hyper's to write.
            let chunked = headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
            });
            let body = match chunked {
                true => Body::from_stream(futures_util::stream::iter([Ok::<_, Infallible>(bytes)])),
                false => Body::from(bytes),
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status(s);
            for (k, v) in headers
                .into_iter()
                .filter(|(k, _)| !chunked || k != "transfer-encoding")
            {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    resp.headers_mut().append(k, v);
                }
            }
            return Ok(resp);
        }
        Some(Fault::Stall) => {
            stopped(stop).await;
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "sandbox stopped"));
        }
        Some(Fault::StallAfterHeaders) => {
            return Ok(with_json_type(StatusCode::OK, fault::stalled(stop)));
        }
        Some(Fault::ResetMidBody) => {
            return Ok(with_json_type(StatusCode::OK, fault::reset_mid_body()));
        }
        Some(Fault::Garbage) => {
            hijack.store(true, Ordering::SeqCst);
            return Ok(plain(StatusCode::OK, ""));
        }
        Some(Fault::Large(n)) => {
            let base = format!("{}/v1", state.origin);
            return Ok(with_json_type(StatusCode::OK, fault::large(n, &base)));
        }
        Some(Fault::Delay(d)) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stopped(stop) => {
                    return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "sandbox stopped"));
                }
            }
        }
    }
    if path == "/.well-known/jwks.json" {
        state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let (s, doc) = lock(&state.jwks).clone();
        return Ok(if s == 200 {
            json_response(StatusCode::OK, &doc, None)
        } else {
            let mut r = plain(status(s), "<html><body>upstream IdP exploded</body></html>");
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        });
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Ok(not_found());
    };
    let Some(account) = authenticate(&state, &parts.headers) else {
        let mut r = plain(StatusCode::UNAUTHORIZED, "HTTP Basic: Access denied.\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Application\""),
        );
        return Ok(r);
    };
    if !user_agent_ok(&parts.headers) {
        return Ok(plain(StatusCode::FORBIDDEN, "Requires a user agent"));
    }
    let ctx = Ctx {
        state: &state,
        account,
        req_headers: &parts.headers,
        query: parts.uri.query().unwrap_or(""),
    };
    let resp = route(&ctx, &parts.method, rest, body);
    Ok(gzip_if_asked(&state, &parts.headers, resp).await)
}

/// Like Cliniko behind its CDN: a JSON answer is gzipped for a client that asks for gzip.
async fn gzip_if_asked(state: &State, req: &HeaderMap, resp: Response<Body>) -> Response<Body> {
    use std::io::Write;
    let asked = req
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| {
            let mut it = t.split(';');
            it.next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"))
                && !it.any(|p| {
                    p.trim().starts_with("q=0") && !p.contains(|c| ('1'..='9').contains(&c))
                })
        });
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !asked || !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let plain = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(&plain);
    let gz = gz.finish().unwrap_or_default();
    state.gzipped.fetch_add(1, Ordering::SeqCst);
    state.gzipped_bytes.fetch_add(gz.len(), Ordering::SeqCst);
    let h = &mut parts.headers;
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(gz.len()));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, Body::from(gz))
}

struct Ctx<'a> {
    state: &'a State,
    account: &'a AccountStore,
    req_headers: &'a HeaderMap,
    query: &'a str,
}

fn route(ctx: &Ctx<'_>, method: &Method, rest: &str, body: Bytes) -> Response<Body> {
    let segs: Vec<&str> = rest.split('/').collect();
    let acct = ctx.account;
    let inm = Some(ctx.req_headers);
    let known = |r: &str| RESOURCES.contains(&r);
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["echo"]) => echo(ctx.req_headers, body),
        ("GET", ["user"]) => json_response(StatusCode::OK, &acct.user, inm),
        ("GET", [res]) if known(res) => list(ctx, res),
        ("POST", [res]) if known(res) => match acct.create(res, &body) {
            Ok((id, rec)) => {
                let mut r = json_response(StatusCode::CREATED, &rec, None);
                // Cliniko has been seen sending Location without /v1; the gateway must cope.
                let loc = format!("{}/{res}/{id}", ctx.state.origin);
                if let Ok(v) = HeaderValue::try_from(loc) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Err(Invalid(e)) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &e, None),
        },
        ("GET", [res, id]) if known(res) => match acct.get(res, id) {
            Some(rec) => json_response(StatusCode::OK, &rec, inm),
            None => not_found(),
        },
        ("PATCH" | "PUT", [res, id]) if known(res) => match acct.update(res, id, &body) {
            Some(Ok(rec)) => json_response(StatusCode::OK, &rec, None),
            Some(Err(Invalid(e))) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &e, None),
            None => not_found(),
        },
        ("DELETE", [res, id]) if known(res) => no_content(acct.delete(res, id)),
        ("POST", [res, id, "archive"]) if known(res) => {
            no_content(acct.set_archived(res, id, true))
        }
        ("POST", [res, id, "unarchive"]) if known(res) => {
            no_content(acct.set_archived(res, id, false))
        }
        ("PATCH", [res, id, "cancel"]) if known(res) => {
            no_content(acct.set_archived(res, id, true))
        }
        _ => not_found(),
    }
}

fn list(ctx: &Ctx<'_>, res: &str) -> Response<Body> {
    let mut page = 1usize;
    let mut per_page = 50usize;
    for pair in ctx.query.split('&') {
        match pair.split_once('=') {
            Some(("page", v)) => page = v.parse().unwrap_or(1).max(1),
            Some(("per_page", v)) => per_page = v.parse().unwrap_or(50).clamp(1, 100),
            _ => {}
        }
    }
    let (items, total) = ctx.account.list(res, page, per_page);
    let base = format!("{}/v1/{res}", ctx.state.origin);
    let link = |p: usize| format!("{base}?page={p}&per_page={per_page}");
    let mut links = json!({"self": link(page)});
    if page.saturating_mul(per_page) < total {
        links["next"] = json!(link(page + 1));
    }
    if page > 1 {
        links["previous"] = json!(link(page - 1));
    }
    let doc = json!({res: items, "total_entries": total, "links": links});
    json_response(StatusCode::OK, &doc, Some(ctx.req_headers))
}

fn echo(headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    r
}

fn authenticate<'a>(state: &'a State, headers: &HeaderMap) -> Option<&'a AccountStore> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let username = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    state.accounts.iter().find(|a| a.accepts(username))
}

/// `Name (email@host)`: some name, then an email in parentheses at the end.
fn user_agent_ok(headers: &HeaderMap) -> bool {
    let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((name, rest)) = ua.rsplit_once(" (") else {
        return false;
    };
    let Some(email) = rest.strip_suffix(')') else {
        return false;
    };
    let parts = email.split_once('@');
    !name.trim().is_empty()
        && parts.is_some_and(|(u, h)| !u.is_empty() && !h.is_empty() && !email.contains(' '))
}

fn status(s: u16) -> StatusCode {
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn plain(s: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(text.to_string()));
    *r.status_mut() = s;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn with_json_type(s: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = s;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

fn not_found() -> Response<Body> {
    json_response(StatusCode::NOT_FOUND, &json!({"errors": "Not found"}), None)
}

fn no_content(found: bool) -> Response<Body> {
    if !found {
        return not_found();
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A JSON answer with Rails-like caching headers; answers 304 when `If-None-Match` matches.
fn json_response(s: StatusCode, v: &Value, conditional: Option<&HeaderMap>) -> Response<Body> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let etag = format!("W/\"{}\"", hex::encode(&digest.as_ref()[..16]));
    let matched = conditional
        .and_then(|h| h.get(header::IF_NONE_MATCH))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if matched {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        with_json_type(s, Body::from(bytes))
    };
    if let Ok(v) = HeaderValue::try_from(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    r
}
