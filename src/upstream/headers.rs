//! What crosses the proxy in each direction, header by header.
//!
//! Towards Cliniko only an allowlist of caller headers survives: the caller's `Authorization`,
//! `Cookie`, `Host`, `Forwarded`/`X-Forwarded-*`, `Proxy-*` and hop-by-hop headers never reach
//! Cliniko, whatever they are called. Then the gateway sets the key's Basic auth, the configured
//! `User-Agent`, `Accept: application/json` and `Accept-Encoding: gzip` (the internet leg is the
//! slow one and Cliniko's JSON shrinks 5-10x; the forwarder decodes it to rewrite links). Towards the caller, hop-by-hop headers (and those
//! named in `Connection`) and `Set-Cookie` are dropped.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Caller headers that are forwarded to Cliniko; everything else is dropped.
pub const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::ACCEPT_LANGUAGE,
    header::CACHE_CONTROL,
];

/// W3C trace-context headers, forwarded (the first value only) so traces can span the gateway.
static TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1). Names, not
/// strings: a removal by string parses the name first, and this runs on every answer.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Builds the upstream request headers from the caller's: one pass over what the caller sent
/// (a handful of headers) rather than a lookup per allowlisted name.
pub fn upstream_request_headers(
    caller: &HeaderMap,
    user_agent: &HeaderValue,
    basic_auth: &HeaderValue,
    request_id: &HeaderValue,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(12);
    let named = connection_named(caller);
    for (name, v) in caller {
        let trace = TRACE_HEADERS.contains(name);
        if !(trace || FORWARDED_REQUEST_HEADERS.contains(name))
            || named.contains(name)
            || (trace && out.contains_key(name))
        {
            continue;
        }
        out.append(name.clone(), v.clone());
    }
    out.insert(header::AUTHORIZATION, basic_auth.clone());
    out.insert(header::USER_AGENT, user_agent.clone());
    out.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    out.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    out.insert(crate::context::REQUEST_ID, request_id.clone());
    out
}

/// Header names listed in `Connection`: hop-by-hop by declaration (RFC 9110 §7.6.1).
fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, those named in `Connection`, and `Set-Cookie` from a response.
/// Looks first: a usual answer has none of them, and then nothing is hashed or removed.
pub fn clean_response_headers(h: &mut HeaderMap) {
    let named = connection_named(h);
    let goes =
        |n: &HeaderName| HOP_BY_HOP.contains(n) || *n == header::SET_COOKIE || named.contains(n);
    let gone: Vec<HeaderName> = h.keys().filter(|n| goes(n)).cloned().collect();
    for n in gone {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_caller_headers_survive() {
        let mut caller = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Basic c3RvbGVuOg=="),
            ("cookie", "s=1"),
            ("host", "evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
            ("proxy-authorization", "x"),
            ("connection", "x-secret, if-none-match"),
            ("x-secret", "1"),
            ("content-type", "application/json"),
            ("if-none-match", "\"abc\""),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("accept", "text/html"),
            ("accept-encoding", "br;q=1, identity;q=0"),
            ("user-agent", "curl/8"),
        ] {
            caller.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_request_headers(
            &caller,
            &HeaderValue::from_static("Gw (a@b.c)"),
            &HeaderValue::from_static("Basic a2V5Og=="),
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(out["authorization"], "Basic a2V5Og==");
        assert_eq!(out["user-agent"], "Gw (a@b.c)");
        assert_eq!(out["accept"], "application/json");
        assert_eq!(out["accept-encoding"], "gzip", "ours, not the caller's");
        assert_eq!(out["content-type"], "application/json");
        assert!(
            !out.contains_key("if-none-match"),
            "named in Connection: hop-by-hop"
        );
        assert!(out.contains_key("traceparent"));
        for gone in [
            "cookie",
            "host",
            "x-forwarded-host",
            "forwarded",
            "proxy-authorization",
            "x-secret",
            "connection",
        ] {
            assert!(!out.contains_key(gone), "{gone} leaked");
        }
        assert_eq!(out.get_all("authorization").iter().count(), 1);
    }

    #[test]
    fn response_cleanup() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("set-cookie", HeaderValue::from_static("_cliniko_session=1"));
        h.insert("etag", HeaderValue::from_static("\"e\""));
        clean_response_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("etag"));
    }
}
