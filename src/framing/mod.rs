//! Inbound connection IO, below hyper: the raw HTTP/1.1 bytes before hyper parses them.
//!
//! Two things hyper cannot tell the service, so this wrapper, which follows request
//! boundaries exactly as hyper does, tells it request by request:
//! - the raw head had both `Content-Length` and `Transfer-Encoding`: hyper resolves that
//!   itself (chunked wins, the Content-Length header is removed, the connection closes after
//!   the response), so the service could not see the conflict (`ambiguous_length`);
//! - the request target held bytes `http::Uri` refuses. Each head is held back until it is
//!   complete and its target rewritten first (`target`): raw `"` `<` `>` in a query are
//!   percent-encoded and the request goes on; an unusable target is made parseable and flagged
//!   (`bad_target`), where hyper would have answered a bare 400 on its own.
//!
//! It rejects nothing itself. When it cannot follow the stream (HTTP/2, oversized or
//! malformed heads, odd chunking) it stops watching, passes bytes through, and answers
//! "nothing seen"; hyper's own RFC 9112 handling then still applies.

mod target;
mod tracker;

use crate::context::Arrival;
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracker::Tracker;

/// Wraps an inbound connection's IO; hand the wrapper to hyper and keep the watch.
///
/// `max_head_bytes` and `max_headers` should match hyper's own limits (`max_buf_size`,
/// `max_headers`): a head beyond them stops the watch rather than being buffered.
/// `on_write` is told after every write-side poll whether it is blocked (`Pending`): the
/// server's watch on callers who stop taking their responses.
pub fn watch<I, F: Fn(bool)>(
    io: I,
    max_head_bytes: usize,
    max_headers: usize,
    on_write: F,
) -> (Watched<I, F>, FramingWatch) {
    let shared = Arc::new(Mutex::default());
    let watched = Watched {
        io,
        tracker: Tracker::new(max_head_bytes, max_headers),
        shared: shared.clone(),
        out: Vec::new(),
        sent: 0,
        published: tracker::Seen::default(),
        on_write,
    };
    (watched, FramingWatch { shared })
}

/// What the tracker has seen so far, and what the service has asked about.
#[derive(Default)]
struct Shared {
    seen: tracker::Seen,
    /// Verdicts handed out so far, i.e. the index of the next request the service asks about.
    taken: u64,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Plain counters inside; a panic elsewhere cannot leave them inconsistent.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The service's side of a watched connection.
#[derive(Clone)]
pub struct FramingWatch {
    shared: Arc<Mutex<Shared>>,
}

impl FramingWatch {
    /// Called by the service exactly once per request, in arrival order: what that
    /// request's raw head showed (the peer is the caller's to fill in).
    ///
    /// hyper's HTTP/1 server hands requests to the service one at a time in order, and it has
    /// read a head (through [`Watched`]) before the service sees it, so the n-th call answers
    /// for the n-th request. Skipping a call shifts later answers; call it first thing.
    pub fn take_next(&self) -> Arrival {
        let mut shared = lock(&self.shared);
        let index = shared.taken;
        shared.taken += 1;
        Arrival {
            peer: None,
            ambiguous_length: shared.seen.ambiguous == Some(index),
            unusable_target: shared.seen.bad_target == Some(index),
        }
    }
}

pin_project! {
    /// An inbound connection whose reads are watched for request framing; writes pass through,
    /// each reported to `on_write`.
    pub struct Watched<I, F> {
        #[pin]
        io: I,
        tracker: Tracker,
        shared: Arc<Mutex<Shared>>,
        // Bytes hyper reads in place of what came off the connection, and how many of them
        // it has been given (they may not fit in one read buffer).
        out: Vec<u8>,
        sent: usize,
        // The verdicts last handed to `shared`: the lock is taken only when one is new (at
        // most twice a connection), not on every read.
        published: tracker::Seen,
        on_write: F,
    }
}

impl<I: AsyncRead, F> AsyncRead for Watched<I, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.sent < this.out.len() || buf.remaining() == 0 {
            hand_over(this.out, this.sent, buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = buf.filled().len();
            ready!(this.io.as_mut().poll_read(cx, buf))?;
            if this.tracker.is_off() {
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            *this.sent = 0;
            let read = &buf.filled()[before..];
            let changed = if read.is_empty() {
                // End of stream: a head still held back goes to hyper as it came.
                this.out.extend_from_slice(&this.tracker.stop());
                !this.out.is_empty()
            } else {
                this.tracker.feed(read, this.out)
            };
            // Visible to the service before hyper can hand it the request.
            let now = this.tracker.seen();
            if (now.ambiguous, now.bad_target)
                != (this.published.ambiguous, this.published.bad_target)
            {
                lock(this.shared).seen = now;
                *this.published = now;
            }
            if !changed {
                return Poll::Ready(Ok(()));
            }
            buf.set_filled(before);
            if this.out.is_empty() {
                // Everything read is a head still incomplete: read on (a `Ready` with
                // nothing in it would tell hyper the connection ended).
                continue;
            }
            hand_over(this.out, this.sent, buf);
            return Poll::Ready(Ok(()));
        }
    }
}

/// Gives hyper as much of `out[sent..]` as fits in `buf`.
fn hand_over(out: &[u8], sent: &mut usize, buf: &mut ReadBuf<'_>) {
    let n = buf.remaining().min(out.len() - *sent);
    buf.put_slice(&out[*sent..*sent + n]);
    *sent += n;
}

impl<I, F: Fn(bool)> Watched<I, F> {
    fn noted<T>(self: Pin<&mut Self>, poll: impl FnOnce(Pin<&mut I>) -> Poll<T>) -> Poll<T> {
        let this = self.project();
        let polled = poll(this.io);
        (this.on_write)(polled.is_pending());
        polled
    }
}

impl<I: AsyncWrite, F: Fn(bool)> AsyncWrite for Watched<I, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.noted(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.noted(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.noted(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.noted(|io| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    // The watch under hyper-util's auto (h1 + h2) server, as the gateway runs it, on loopback.
    use super::watch;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the service saw for one request.
    #[derive(Debug, PartialEq)]
    struct Seen {
        ambiguous: bool,
        has_content_length: bool,
        has_transfer_encoding: bool,
        body: Vec<u8>,
    }

    /// Serves one connection with a watched hyper server; returns its address and the log.
    async fn serve_one() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let server_log = log.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (io, watch) = watch(tcp, 16 * 1024, 100, |_| {});
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let ambiguous = watch.take_next().ambiguous_length;
                let log = server_log.clone();
                async move {
                    let has_content_length = req.headers().contains_key("content-length");
                    let has_transfer_encoding = req.headers().contains_key("transfer-encoding");
                    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                    log.lock().unwrap().push(Seen {
                        ambiguous,
                        has_content_length,
                        has_transfer_encoding,
                        body,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
        (addr, log)
    }

    /// Reads until `n` complete `ok` responses have arrived.
    async fn read_responses(tcp: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while memchr::memmem::find_iter(&got, b"\r\n\r\nok").count() < n {
            let k = tcp.read(&mut buf).await.unwrap();
            assert!(
                k > 0,
                "connection closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    fn seen(ambiguous: bool, cl: bool, te: bool, body: &[u8]) -> Seen {
        Seen {
            ambiguous,
            has_content_length: cl,
            has_transfer_encoding: te,
            body: body.to_vec(),
        }
    }

    #[tokio::test]
    async fn keep_alive_sequence_is_not_flagged() {
        let (addr, log) = serve_one().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let requests: [&[u8]; 3] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        for (i, req) in requests.iter().enumerate() {
            tcp.write_all(req).await.unwrap();
            let resp = read_responses(&mut tcp, 1).await;
            assert!(resp.starts_with(b"HTTP/1.1 200"), "request {i}");
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                seen(false, false, false, b""),
                seen(false, true, false, b"hello"),
                seen(false, false, true, b"abc"),
            ]
        );
    }

    #[tokio::test]
    async fn both_headers_are_flagged_and_hyper_strips_content_length() {
        for head in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
        ] {
            let (addr, log) = serve_one().await;
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // A pipelined plain request first, so the verdict must land on the second request.
            let req = format!(
                "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
                 POST / HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut resp = Vec::new();
            // hyper closes the connection after the ambiguous request, so this reaches EOF.
            tcp.read_to_end(&mut resp).await.unwrap();
            assert_eq!(memchr::memmem::find_iter(&resp, b"HTTP/1.1 200").count(), 2);
            // What hyper hands the service: chunked body, Content-Length header gone.
            assert_eq!(
                *log.lock().unwrap(),
                [
                    seen(false, false, false, b""),
                    seen(true, false, true, b"hello")
                ],
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn h2_prior_knowledge_passes_through_unflagged() {
        let (addr, log) = serve_one().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for body in [&b""[..], b"hello"] {
            let req = Request::post("http://x/")
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log.iter().all(|s| !s.ambiguous));
        assert_eq!(log[1].body, b"hello");
    }

    #[test]
    fn wrapper_and_watch_fit_hyper_and_tokio_tasks() {
        fn send_unpin<T: Send + Unpin + 'static>() {}
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_unpin::<super::Watched<TcpStream, fn(bool)>>();
        send_sync::<super::FramingWatch>();
    }

    /// Serves one watched connection; records each request's target and verdict.
    async fn serve_targets() -> (
        std::net::SocketAddr,
        Arc<Mutex<Vec<(String, super::Arrival)>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let server_log = log.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (io, watch) = watch(tcp, 16 * 1024, 100, |_| {});
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let verdict = watch.take_next();
                server_log
                    .lock()
                    .unwrap()
                    .push((req.uri().to_string(), verdict));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
        (addr, log)
    }

    #[tokio::test]
    async fn raw_filter_bytes_reach_the_service_encoded_even_byte_by_byte() {
        let (addr, log) = serve_targets().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req =
            b"GET /v1/p?q[]=a:>=1&q[]=b:<2&q[]=last_name:\"O'Brien\" HTTP/1.1\r\nHost: x\r\n\r\n";
        // One byte per segment, so hyper's reads end inside the head again and again.
        for b in req.chunks(1) {
            tcp.write_all(b).await.unwrap();
            tcp.flush().await.unwrap();
        }
        let resp = read_responses(&mut tcp, 1).await;
        assert!(resp.starts_with(b"HTTP/1.1 200"));
        // Then one hyper cannot parse at all, made parseable and flagged.
        tcp.write_all(b"GET /v1/a<b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_responses(&mut tcp, 1).await;
        let log = log.lock().unwrap();
        assert_eq!(
            log[0],
            (
                "/v1/p?q[]=a:%3E=1&q[]=b:%3C2&q[]=last_name:%22O'Brien%22".to_string(),
                super::Arrival::default()
            )
        );
        assert_eq!(log[1].0, "/v1/a%3Cb");
        assert!(log[1].1.unusable_target);
    }

    /// Yields its bytes one per read.
    struct Trickle(Vec<u8>, usize);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_rewritten_head_larger_than_the_read_buffer_is_handed_over_in_parts() {
        let body = b"POST /v1/p?q=<<<<<<<<<< HTTP/1.1\r\nContent-Length: 2\r\n\r\n<>";
        let want =
            b"POST /v1/p?q=%3C%3C%3C%3C%3C%3C%3C%3C%3C%3C HTTP/1.1\r\nContent-Length: 2\r\n\r\n<>";
        let (mut io, _) = watch(Trickle(body.to_vec(), 0), 1024, 10, |_| {});
        let mut got = Vec::new();
        let mut small = [0u8; 5];
        loop {
            let n = io.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want.to_vec()).unwrap()
        );
    }
}
