//! Response bodies for the misbehaving [`super::Fault`]s: streamed, stalled or broken.
//!
//! They exist to test what the gateway does when Cliniko's answer is huge, never ends or dies
//! half-way; none of them buffers a whole body.

use super::sync::stopped;
use crate::body::Body;
use bytes::Bytes;
use futures_util::stream;
use std::io;
use std::time::Duration;
use tokio::sync::watch;

/// Size of each chunk of a [`super::Fault::Large`] body.
const CHUNK: usize = 64 * 1024;

/// A valid JSON patient list of about `size` bytes, generated chunk by chunk.
pub(crate) fn large(size: usize, base_url: &str) -> Body {
    let generator = LargeGen {
        base_url: base_url.to_string(),
        budget: size,
        produced: 0,
        next: 0,
        done: false,
    };
    Body::from_stream(stream::unfold(generator, |mut g| async move {
        g.chunk().map(|c| (Ok::<_, io::Error>(c), g))
    }))
}

struct LargeGen {
    base_url: String,
    budget: usize,
    produced: usize,
    next: u64,
    done: bool,
}

impl LargeGen {
    fn record(&self, n: u64) -> String {
        let id = 936447129235883061u64 + n;
        format!(
            r#"{{"id":"{id}","first_name":"Bulk-{n}","last_name":"Record","telehealth_url":"https://bulk.cliniko.com/telehealth/{id}","links":{{"self":"{}/patients/{id}"}}}}"#,
            self.base_url
        )
    }

    fn suffix(&self) -> String {
        format!(
            r#"],"total_entries":{},"links":{{"self":"{}/patients?page=1&per_page=100"}}}}"#,
            self.next, self.base_url
        )
    }

    fn chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = String::with_capacity(CHUNK + 512);
        if self.produced == 0 {
            out.push_str(r#"{"patients":["#);
        }
        // Reserve room for the suffix so the total lands close to the budget.
        let reserve = 160 + self.base_url.len();
        loop {
            let rec = self.record(self.next);
            let used = self.produced + out.len();
            if used + rec.len() + 1 + reserve > self.budget && self.next > 0 {
                out.push_str(&self.suffix());
                self.done = true;
                break;
            }
            if self.next > 0 {
                out.push(',');
            }
            out.push_str(&rec);
            self.next += 1;
            if out.len() >= CHUNK {
                break;
            }
        }
        self.produced += out.len();
        Some(Bytes::from(out))
    }
}

/// Some JSON, a pause so it reaches the wire, then an error: hyper aborts the stream.
pub(crate) fn reset_mid_body() -> Body {
    let first = stream::once(async {
        Ok::<_, io::Error>(Bytes::from_static(
            br#"{"patients":[{"id":"836447129235883061","first_name":"Half"#,
        ))
    });
    let fail = stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "sandbox reset fault",
        ))
    });
    Body::from_stream(stream::StreamExt::chain(first, fail))
}

/// No bytes at all until the sandbox stops, then an error.
pub(crate) fn stalled(stop: watch::Receiver<bool>) -> Body {
    Body::from_stream(stream::once(async move {
        stopped(stop).await;
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "sandbox stopped",
        ))
    }))
}
