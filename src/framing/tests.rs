//! The watch under hyper-util's auto (h1 + h2) server, as the gateway runs it, on loopback.

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
        let (io, watch) = watch(tcp, 16 * 1024, 100);
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
    send_unpin::<super::Watched<TcpStream>>();
    send_sync::<super::FramingWatch>();
}

/// Serves one watched connection; records each request's target and verdict.
async fn serve_targets() -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, super::Verdict)>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_log = log.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (io, watch) = watch(tcp, 16 * 1024, 100);
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
    let req = b"GET /v1/p?q[]=a:>=1&q[]=b:<2&q[]=last_name:\"O'Brien\" HTTP/1.1\r\nHost: x\r\n\r\n";
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
            super::Verdict::default()
        )
    );
    assert_eq!(log[1].0, "/v1/a%3Cb");
    assert!(log[1].1.bad_target);
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
    let (mut io, _) = watch(Trickle(body.to_vec(), 0), 1024, 10);
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
