//! The hostile-input suite: each case is one request an attacker (or a broken client) might
//! send, with the status and JSON `code` it must get and proof that Cliniko's stand-in saw
//! nothing. Where hyper answers before our code runs (malformed HTTP/1.1), there is no JSON
//! body: those cases assert the status and that no `X-Gateway-Error` was made up.
//!
//! Grouped by what is attacked: [`jwt`], [`basic`] (the Basic credential form), [`framing`],
//! [`targets`], [`credentials`], [`headers`] (headers that try to reach Cliniko), [`protocol`]
//! (RFC strictness: `iss` arrays, `Host`, encoded unreserved characters), [`tamper`] (the
//! key store and secret files on disk), [`stall`]: callers who stop reading (one must slow
//! only itself; none may hold a port), [`streams`]: one caller may not take all the
//! concurrent streams Cliniko allows a shard, and [`exhaust`]: the same measured on the real
//! binary (memory, the file descriptor limit).

mod basic;
mod credentials;
mod exhaust;
mod framing;
mod headers;
mod jwt;
mod protocol;
mod stall;
mod streams;
mod tamper;
mod targets;

use crate::support::*;
use std::time::Duration;

/// A response read off a raw socket.
#[derive(Debug)]
pub struct Raw {
    /// 0 when the connection closed without a response.
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Raw {
    /// The JSON error code, or "" when the body is not the gateway's JSON error.
    pub fn code(&self) -> String {
        let (Some(a), Some(b)) = (self.body.find('{'), self.body.rfind('}')) else {
            return String::new();
        };
        serde_json::from_str::<serde_json::Value>(&self.body[a..=b])
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Sends raw bytes on a fresh connection; reads the first response (up to `wait`).
pub async fn raw(addr: &str, bytes: &[u8], wait: Duration) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A peer may close while we still write (e.g. after a 431): that is an answer too.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    parse(&String::from_utf8_lossy(&out))
}

fn parse(text: &str) -> Raw {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `host:port` of the gateway.
pub fn addr(h: &Harness) -> String {
    h.base.strip_prefix("http://").unwrap().to_string()
}

/// Asserts one raw case: status, code ("" = hyper's own answer: no gateway JSON), and that
/// nothing reached Cliniko.
pub async fn expect_raw(h: &Harness, name: &str, req: &str, status: u16, code: &str) {
    let before = h.upstream_hits();
    let auth = format!("Bearer {}", h.token("alice"));
    let req = req.replace("{host}", &addr(h)).replace("{auth}", &auth);
    let got = raw(&addr(h), req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(got.status, status, "{name}: {got:?}");
    if code.is_empty() {
        assert!(
            !got.head.to_ascii_lowercase().contains("x-gateway-error"),
            "{name}: expected hyper's answer, got ours: {got:?}"
        );
    } else {
        assert_eq!(got.code(), code, "{name}: {got:?}");
    }
    assert_eq!(h.upstream_hits(), before, "{name} reached Cliniko");
}
