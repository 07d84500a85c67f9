//! Link rewriting: the last step on the way back, between Cliniko's response and the caller.
//!
//! Cliniko answers with absolute URLs to its own host (`links.self/next/previous`, every
//! embedded relation, the `Location` of a 201). A caller that follows them must stay on the
//! gateway, so a JSON string value that *starts with* an upstream origin (any shard, the legacy
//! host, or a configured stand-in), optionally followed by `/v1`, is rewritten onto the
//! gateway's public base URL. Everything else passes byte for byte: other hosts
//! (`telehealth_url`, S3 presigned URLs), object keys, look-alike hosts
//! (`api.au1.cliniko.com.evil.example`), non-default ports, and input that is not JSON.

mod body;
mod matcher;
mod stream;
mod whole;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use stream::RewriteStream;

use matcher::{Decision, Origins};
use std::sync::Arc;

/// What every clone of a [`LinkRewriter`] shares.
#[derive(Debug)]
struct Inner {
    origins: Origins,
    /// Public base URL without trailing slash, for header values.
    public_base: String,
    /// `<public_base>/v1`, escaped for use inside a JSON string.
    json_prefix: Vec<u8>,
}

/// Rewrites upstream URLs onto the gateway's public base; built once at start-up.
#[derive(Debug, Clone)]
pub struct LinkRewriter {
    inner: Arc<Inner>,
}

impl LinkRewriter {
    /// `public_base` is e.g. `http://127.0.0.1:8080`; `extra_origins` are the per-shard
    /// override URLs (their path, minus a trailing `/v1`, becomes part of the origin).
    pub fn new(public_base: &str, extra_origins: &[String]) -> LinkRewriter {
        let public_base = public_base.trim_end_matches('/').to_string();
        let mut json_prefix = Vec::with_capacity(public_base.len() + 3);
        for &b in public_base.as_bytes() {
            match b {
                b'"' | b'\\' => json_prefix.extend_from_slice(&[b'\\', b]),
                0..=0x1F => json_prefix.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => json_prefix.push(b),
            }
        }
        json_prefix.extend_from_slice(b"/v1");
        LinkRewriter {
            inner: Arc::new(Inner {
                origins: Origins::new(extra_origins),
                public_base,
                json_prefix,
            }),
        }
    }

    /// Rewrites one URL (e.g. a `Location` header); `None` when it is not an upstream URL.
    pub fn rewrite_url(&self, s: &str) -> Option<String> {
        match self.inner.origins.classify(s.as_bytes(), true) {
            Decision::Match(n) => Some(format!("{}/v1{}", self.inner.public_base, s.get(n..)?)),
            Decision::NoMatch | Decision::NeedMore => None,
        }
    }

    /// Wraps a response body: streaming, bounded memory, chunk boundaries anywhere.
    ///
    /// The length changes, so the caller must drop any `Content-Length` it had.
    pub fn rewrite_body(&self, body: crate::body::Body) -> crate::body::Body {
        crate::body::Body::new(body::RewriteBody::new(body, self.stream()))
    }

    /// Rewrites a whole body held in memory: the fast path when it can decide, else the
    /// streaming state machine over one chunk (same output either way). A body with nothing
    /// to rewrite is returned as it is, without a copy.
    pub fn rewrite_whole(&self, body: bytes::Bytes) -> bytes::Bytes {
        match whole::rewrite(&self.inner, &body) {
            Ok(None) => body,
            Ok(Some(out)) => bytes::Bytes::from(out),
            Err(()) => self.rewrite_streaming(&body),
        }
    }

    fn rewrite_streaming(&self, body: &[u8]) -> bytes::Bytes {
        let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 64);
        let mut s = self.stream();
        s.push(body, &mut out);
        s.finish(&mut out);
        bytes::Bytes::from(out)
    }

    /// A fresh streaming rewriter for one body (for tests, benches and the body wrapper).
    pub fn stream(&self) -> RewriteStream {
        RewriteStream::new(Arc::clone(&self.inner))
    }
}
