//! The innermost service: sends the request to the caller's shard with the stored key, and
//! turns Cliniko's answer into the caller's.
//!
//! Cliniko's own statuses pass through unchanged, except 401: that means the *stored key* is
//! wrong or revoked, which is not the caller's fault, so it becomes 502 `credential_rejected`
//! and a warning with the key's fingerprint. JSON bodies and `Location` headers have Cliniko's
//! absolute URLs rewritten onto the gateway's public base URL, streaming.

use super::body::{Coding, Inflate, decode, idle_limit, inflate, read_while};
use super::headers::{clean_response_headers, upstream_request_headers};
use super::links::LinkRewriter;
use super::shard::ShardBase;
use super::{HttpClient, ShardRouter};
use crate::body::Body;
use crate::context::Context as RequestContext;
use crate::credentials::Credential;
use crate::error::GatewayError;
use crate::metrics::{UpstreamError, UpstreamMetrics};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

/// Everything the forwarder needs, built once at start-up.
pub struct Upstream {
    /// The pooled client.
    pub client: HttpClient,
    /// Where each shard lives.
    pub router: ShardRouter,
    /// The `User-Agent` every request to Cliniko carries.
    pub user_agent: HeaderValue,
    /// Cliniko's links onto the gateway.
    pub links: LinkRewriter,
    /// Until Cliniko's response headers.
    pub timeout: Duration,
    /// Between two frames of Cliniko's body.
    pub body_timeout: Duration,
    /// The caller's body limit (named in the 413 when it trips under the exchange).
    pub max_body: u64,
    /// Latency and failures of each exchange.
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    /// An exchange that got no answer: counted, and the client span (if traced) says why.
    fn failed(&self, span: Option<&crate::telemetry::ClientSpan>, kind: UpstreamError) {
        self.metrics.error(kind);
        if let Some(s) = span {
            s.fail(kind.label());
        }
    }

    /// Forwards one authenticated request.
    pub async fn forward(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let Some(cred) = req.extensions().get::<Arc<Credential>>().cloned() else {
            tracing::error!("request reached the forwarder without a credential");
            return Err(GatewayError::Internal);
        };
        let Some(ctx) = RequestContext::of(&req).cloned() else {
            tracing::error!("request reached the forwarder without a context");
            return Err(GatewayError::Internal);
        };
        // The caller's own id when it sent one, so its traces join up with Cliniko's side.
        let rid = ctx.visible_id().0.clone();
        let base = self
            .router
            .base(&cred.shard)
            .ok_or(GatewayError::Internal)?;
        let _ = ctx.shard.set(cred.shard.name());

        let (parts, body) = req.into_parts();
        let uri = upstream_uri(&base, &parts.uri)?;
        let is_head = parts.method == Method::HEAD;
        let mut headers =
            upstream_request_headers(&parts.headers, &self.user_agent, &cred.auth_header, &rid);
        // Traced requests send Cliniko a traceparent naming this call's client span.
        let span =
            crate::telemetry::upstream_span(&parts.extensions, &parts.method, &uri, &mut headers);
        let up = (parts.method, uri, headers);
        let resp = self.exchange(up, body, span.as_ref(), &ctx).await?;
        let status = resp.status();
        if let Some(s) = &span {
            s.status(status.as_u16());
        }
        ctx.set_upstream_status(status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            // A key being enrolled: the person enrolling gets the refusal; nothing to rotate.
            if !cred.candidate {
                self.metrics.credential_rejected(&cred.fingerprint);
                tracing::warn!(
                    request_id = ctx.id.as_str(),
                    key_fingerprint = &*cred.fingerprint,
                    shard = cred.shard.as_str(),
                    "Cliniko rejected a stored API key; rotate it"
                );
            }
            return Err(GatewayError::CredentialRejected);
        }
        self.shape(resp, is_head).await
    }

    /// Sends the request once, within the upstream timeout; failures become the caller's
    /// error (whether to send it again is [`super::retry`]'s business).
    async fn exchange(
        &self,
        (method, uri, headers): (Method, Uri, http::HeaderMap),
        body: Body,
        span: Option<&crate::telemetry::ClientSpan>,
        ctx: &RequestContext,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let mut up = Request::new(body);
        *up.method_mut() = method;
        *up.uri_mut() = uri;
        // The caller may have spoken HTTP/2; the pooled client picks h2 or HTTP/1.1 per
        // connection by ALPN and refuses an h2-versioned request on an HTTP/1.1 connection.
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = headers;
        let exchange = self.client.request(up);

        let sent = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, exchange).await;
        self.metrics.observe(sent.elapsed());
        match result {
            Err(_) => {
                self.failed(span, UpstreamError::Timeout);
                Err(GatewayError::UpstreamTimeout)
            }
            Ok(Err(_)) if ctx.body_limit_tripped() => {
                if let Some(s) = span {
                    s.fail("body_too_large");
                }
                Err(GatewayError::BodyTooLarge {
                    limit: self.max_body,
                })
            }
            Ok(Err(e)) => {
                let (kind, error) = diagnose(&e);
                self.failed(span, kind);
                Err(error)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Cliniko's answer as the caller gets it: hop-by-hop headers gone, `Location` and the
    /// JSON body's links pointing at the gateway, Cliniko's compression undone (the caller's
    /// own is the compression layer's business).
    async fn shape(
        &self,
        resp: Response<hyper::body::Incoming>,
        is_head: bool,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = resp.into_parts();
        clean_response_headers(&mut parts.headers);
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            && let Some(new) = self.links.rewrite_url(loc)
            && let Ok(v) = HeaderValue::try_from(new)
        {
            parts.headers.insert(header::LOCATION, v);
        }
        let body = idle_limit(Body::new(body), self.body_timeout);
        let coding = match parts.headers.get(header::CONTENT_ENCODING) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(Coding::parse) {
                Some(c) => Some(c),
                // Stacked or unknown: nothing we can read, so it passes byte for byte.
                None => return Ok(Response::from_parts(parts, body)),
            },
        };
        let json = is_json(&parts.headers);
        if coding.is_none() && !json {
            return Ok(Response::from_parts(parts, body));
        }
        // From here the body changes (decoded, links rewritten): so do its length and coding,
        // and HEAD must agree with GET.
        parts.headers.remove(header::CONTENT_ENCODING);
        let declared = parts
            .headers
            .remove(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let body = match (is_head, json, coding) {
            (true, ..) => body,
            (false, false, Some(c)) => decode(body, c),
            (false, ..) => {
                // A page compressed on the fly usually comes chunked, with no length: it is
                // read whole too when it ends within the bound (measured: the streaming
                // decoder and rewriter cost about twice the whole-page path).
                let whole = declared.map_or(coding.is_some(), |n| n <= SMALL_BODY);
                let read = match whole {
                    true => read_while(body, |total, _| total <= SMALL_BODY)
                        .await
                        .map_err(|_| GatewayError::UpstreamUnavailable)?,
                    false => Err(body),
                };
                match read {
                    Ok(read) => {
                        let out = self.rewrite_whole(joined(read), coding)?;
                        if let Some(n) = http_body::Body::size_hint(&out).exact() {
                            parts
                                .headers
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                        }
                        out
                    }
                    Err(body) => self.links.rewrite_body(match coding {
                        Some(c) => decode(body, c),
                        None => body,
                    }),
                }
            }
        };
        Ok(Response::from_parts(parts, body))
    }

    /// A page of Cliniko JSON read whole, decoded and rewritten in one go, to be sent with a
    /// length: one write instead of chunked frames (measured: fewer syscalls per request on the
    /// miss path). Nothing has been sent yet, so a failed read is still a clean 502. A gzip
    /// that decodes past [`SMALL_BODY`] is rewritten streaming instead (no length).
    fn rewrite_whole(&self, read: Bytes, coding: Option<Coding>) -> Result<Body, GatewayError> {
        let plain = match coding.map(|c| (c, inflate(&read, c, SMALL_BODY))) {
            None => read,
            Some((_, Ok(plain))) => plain,
            Some((_, Err(Inflate::Corrupt))) => {
                tracing::warn!("Cliniko sent a compressed body that does not decode");
                return Err(GatewayError::UpstreamUnavailable);
            }
            Some((c, Err(Inflate::Stream))) => {
                return Ok(self.links.rewrite_body(decode(Body::from(read), c)));
            }
        };
        Ok(Body::from(self.links.rewrite_whole(plain)))
    }
}

/// Frames read as one buffer: the frame itself when there is only one (no copy).
fn joined(mut read: Vec<Bytes>) -> Bytes {
    match read.len() {
        1 => read.swap_remove(0),
        _ => Bytes::from(read.concat()),
    }
}

/// JSON bodies up to this size (declared by Cliniko, or read within it when compressed without
/// a length, and once decoded) are rewritten whole rather than streamed.
const SMALL_BODY: usize = 256 * 1024;

/// Only JSON carries links we rewrite; other bodies pass through byte for byte.
fn is_json(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
        })
}

/// The caller's `/v1/...` target on the shard: always the shard's scheme and authority, the
/// shard's path prefix in place of `/v1`, the query byte for byte.
pub fn upstream_uri(base: &ShardBase, caller: &Uri) -> Result<Uri, GatewayError> {
    let rest = caller.path().strip_prefix("/v1").unwrap_or("");
    let pq = match caller.query() {
        Some(q) => format!("{}{rest}?{q}", base.prefix),
        None => format!("{}{rest}", base.prefix),
    };
    Uri::builder()
        .scheme(base.scheme.clone())
        .authority(base.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadRequest {
            code: "bad_target",
            message: "the request target cannot be forwarded",
        })
}

/// A failed exchange as the metrics and the caller see it, from one walk down its causes.
///
/// The metric kind: the connect timeout or a rustls error anywhere in the chain
/// (`io::Error::source` skips its payload, so payloads are looked at directly). The caller's
/// error: the first hyper or I/O error down the chain tells a connection that the peer closed
/// (or reset) before answering, which the retry layer may resend; not a connect failure, a
/// timeout or a garbled answer, which a retry would only repeat.
fn diagnose(e: &hyper_util::client::legacy::Error) -> (UpstreamError, GatewayError) {
    use std::io::ErrorKind;
    let (mut kind, mut stale) = (None, None);
    for c in std::iter::successors(e.source(), |&c| c.source()) {
        let io = c.downcast_ref::<std::io::Error>();
        let payload = io.and_then(|io| io.get_ref());
        if c.is::<super::client::ConnectTimedOut>() {
            kind = kind.or(Some(UpstreamError::ConnectTimeout));
        } else if c.is::<rustls::Error>() || payload.is_some_and(|p| p.is::<rustls::Error>()) {
            kind = kind.or(Some(UpstreamError::Tls));
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            stale = stale.or(Some(true));
        } else if let Some(io) = io {
            let closed = matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            );
            stale = stale.or(Some(closed));
        }
    }
    let connect = e.is_connect();
    let kind = kind.unwrap_or(match connect {
        true => UpstreamError::Connect,
        false => UpstreamError::Protocol,
    });
    if !connect && stale == Some(true) {
        // Routine (Cliniko closed an idle pooled connection), hence not a warning.
        tracing::debug!(error = %e, "pooled upstream connection closed under a request");
        return (kind, GatewayError::UpstreamClosed);
    }
    let cause = e.source().map(ToString::to_string).unwrap_or_default();
    tracing::warn!(connect, error = %e, cause, "upstream request failed");
    // Nothing was sent on a failed connect: safe to resend.
    match connect {
        true => (kind, GatewayError::UpstreamConnect),
        false => (kind, GatewayError::UpstreamUnavailable),
    }
}

/// The forwarder as the service at the bottom of the tower stack.
pub fn service(up: Arc<Upstream>) -> impl crate::step::Next + Sync {
    tower::service_fn(move |req| {
        let up = up.clone();
        async move { up.forward(req).await }
    })
}
