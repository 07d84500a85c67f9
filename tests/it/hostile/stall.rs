//! Callers who stop reading: one must slow only itself, never the other callers of its Cliniko
//! shard, never hold the public port, and the admin port keeps to the same bounds. Each attack
//! runs against a gateway in this process with `server.send_timeout` = 1 s, a handful of
//! connections, and every wait bounded.

use super::{addr, raw};
use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::sandbox::Fault;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// `server.send_timeout` of the tests about holding a port.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// `server.send_timeout` of the tests about other callers: long enough that a victim stuck
/// behind the attacker would show (the harness's `upstream.timeout` is 5 s).
const LONG_SEND_TIMEOUT: Duration = Duration::from_secs(4);
/// Room for timers and scheduling on two busy cores, on top of a configured timeout.
pub const SLACK: Duration = Duration::from_secs(4);

/// alice (the attacker) and dave (the victim) on the same shard, with different keys.
pub fn setup(send_timeout: Duration, extra: &[(&'static str, &str)]) -> Setup {
    let send_timeout = format!("{}ms", send_timeout.as_millis());
    let mut overrides = vec![("CLINIKO_GATEWAY__SERVER__SEND_TIMEOUT", send_timeout)];
    overrides.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Setup {
        shards: vec![(
            "au1",
            vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
        )],
        users: vec![("alice", KEY_ALICE), ("dave", KEY_DAVE)],
        overrides,
        ..Setup::default()
    }
}

/// A metric's value from the gateway's registry (`name` includes its labels), 0 when absent.
pub async fn metric(h: &Harness, name: &str) -> f64 {
    let text = h.gateway().metrics.render().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const STALLED: &str = "cliniko_gateway_connections_stalled_total{listener=\"public\"}";
pub const HANDSHAKES: &str = "cliniko_gateway_upstream_tls_handshakes_total";

/// Polls `cond` every 10 ms until it holds; panics with `what` after `within`.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The victim: a request on the attacker's shard that the cache cannot answer. Bounded, and
/// timed: it must not have waited behind the attacker.
pub async fn victim(h: &Harness) -> u16 {
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        h.get_as_with("dave", "/v1/user", &[("cache-control", "no-cache")]),
    )
    .await
    .expect("the victim's request hung");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the victim waited {:?} behind the attacker",
        started.elapsed()
    );
    got.status.as_u16()
}

/// The victim, eight times over the attack's first 1.6 s: spaced (not back to back) so the
/// attacker's unread answers have had time to fill whatever they can, and so the victim's
/// key budget (burst 10) is not what answers.
pub async fn victims(h: &Harness) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        every.tick().await;
        let t = Instant::now();
        assert_eq!(victim(h).await, 200);
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("the victim's slowest answer during the attack: {slowest:?}");
}

/// An HTTP/2 (h2c) connection that grants every stream a window of 0: the gateway can send
/// response heads, not one body byte. It answers PINGs, as a live client would.
pub struct H2Stalled {
    addr: String,
    send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    /// Ends (with the time) once the gateway has closed the connection.
    pub ended: JoinHandle<Instant>,
    /// Responses whose bodies are never read.
    held: Vec<http::Response<Incoming>>,
    /// When the last response head arrived (its stall began a little before).
    pub last_head: Instant,
}

impl H2Stalled {
    pub async fn open(addr: &str) -> H2Stalled {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
            Instant::now()
        });
        H2Stalled {
            addr: addr.to_string(),
            send,
            ended,
            held: vec![],
            last_head: Instant::now(),
        }
    }

    /// Sends a GET and waits (bounded) for its response head only; returns the status.
    pub async fn get(&mut self, path: &str, auth: Option<&str>) -> u16 {
        self.get_many(path, auth, 1).await[0]
    }

    /// Sends `n` GETs at once and waits (bounded) for their response heads; their statuses.
    pub async fn get_many(&mut self, path: &str, auth: Option<&str>, n: usize) -> Vec<u16> {
        let sends = (0..n).map(|_| {
            let mut b = http::Request::get(format!("http://{}{path}", self.addr));
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            let mut send = self.send.clone();
            async move { send.send_request(b.body(Empty::new()).unwrap()).await }
        });
        let all = futures_util::future::join_all(sends);
        let resps = tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("no response head");
        self.last_head = Instant::now();
        let mut statuses = vec![];
        for r in resps {
            let resp = r.expect("request failed");
            statuses.push(resp.status().as_u16());
            self.held.push(resp);
        }
        statuses
    }
}

/// A TCP connection with a 4 KiB receive buffer that sends `request` and then reads nothing.
async fn h1_stalled(addr: &str, request: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr.parse().unwrap()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn an_http2_caller_who_stops_reading_stalls_only_itself() {
    let h = Harness::start(setup(LONG_SEND_TIMEOUT, &[])).await;
    h.sandbox("au1")
        .set_fault("/v1/patients", Fault::Large(4_000_000));
    // The victim's first call opens the shard's one HTTP/2 connection to Cliniko.
    assert_eq!(victim(&h).await, 200);
    let mut attacker = H2Stalled::open(&addr(&h)).await;
    let auth = format!("Bearer {}", h.token("alice"));
    // Answers left unread (beyond the 1 MB the cache reads of each): with hyper's default
    // windows (2 MiB per stream, 5 MiB per connection) three of them froze the shard's
    // connection, and every other caller of the shard waited into a 504.
    for page in 1..=3 {
        let path = format!("/v1/patients?page={page}");
        assert_eq!(attacker.get(&path, Some(&auth)).await, 200);
    }
    let held_since = Instant::now();
    victims(&h).await;
    // One TLS handshake: the victim's requests shared the attacker's connection to Cliniko.
    assert_eq!(metric(&h, HANDSHAKES).await, 1.0);
    // After send_timeout the attacker's connection is cut, and its Cliniko streams with it.
    let ended = tokio::time::timeout(LONG_SEND_TIMEOUT + SLACK, attacker.ended)
        .await
        .expect("the stalled connection was not closed")
        .unwrap();
    assert!(ended - held_since <= LONG_SEND_TIMEOUT + SLACK);
    assert_eq!(metric(&h, STALLED).await, 1.0);
    // The reset streams did not cost the shard its connection.
    assert_eq!(victim(&h).await, 200);
    assert_eq!(metric(&h, HANDSHAKES).await, 1.0);
}

#[tokio::test]
async fn an_http1_caller_who_stops_reading_stalls_only_itself() {
    let h = Harness::start(setup(LONG_SEND_TIMEOUT, &[])).await;
    // Larger than the socket buffers can absorb, so the gateway's writes block.
    const SIZE: usize = 16_000_000;
    h.sandbox("au1")
        .set_fault("/v1/patients", Fault::Large(SIZE));
    assert_eq!(victim(&h).await, 200);
    let a = addr(&h);
    let auth = format!("Bearer {}", h.token("alice"));
    let mut attackers = vec![];
    for page in 1..=4 {
        let req = format!(
            "GET /v1/patients?page={page} HTTP/1.1\r\nHost: {a}\r\nAuthorization: {auth}\r\n\r\n"
        );
        attackers.push(h1_stalled(&a, &req).await);
    }
    let sb = h.sandbox("au1");
    tokio::time::timeout(Duration::from_secs(10), sb.wait_for_requests(5))
        .await
        .expect("the attacker's requests did not reach Cliniko");
    victims(&h).await;
    assert_eq!(metric(&h, HANDSHAKES).await, 1.0);
    // Each attacker's connection is cut once its socket stayed full for send_timeout.
    wait_until(
        LONG_SEND_TIMEOUT + SLACK,
        "4 stalled connections closed",
        async || metric(&h, STALLED).await >= 4.0,
    )
    .await;
    for mut s in attackers {
        // What was queued before the close arrives, then the end: never the whole answer.
        let mut got = Vec::new();
        let read = tokio::time::timeout(SLACK, s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection is still open");
        assert!(
            got.len() < SIZE,
            "the whole response was sent: {}",
            got.len()
        );
    }
    assert_eq!(victim(&h).await, 200);
}

#[tokio::test]
async fn connections_that_take_nothing_cannot_hold_the_public_port() {
    let h = Harness::start(setup(
        SEND_TIMEOUT,
        &[("CLINIKO_GATEWAY__SERVER__MAX_CONNECTIONS", "20")],
    ))
    .await;
    let a = addr(&h);
    // Every connection slot is taken by a caller that lets no response byte through.
    let mut held = vec![];
    for _ in 0..20 {
        let mut c = H2Stalled::open(&a).await;
        assert_eq!(c.get("/healthz", None).await, 200);
        held.push(c);
    }
    let started = Instant::now();
    // The next caller is accepted once send_timeout has cut them.
    let got = tokio::time::timeout(
        SEND_TIMEOUT + SLACK,
        h.send(http::Method::GET, "/healthz", &[], Bytes::new()),
    )
    .await
    .expect("the port stayed held by connections taking nothing");
    assert_eq!(got.status, 200);
    assert!(started.elapsed() <= SEND_TIMEOUT + SLACK);
    for c in held {
        tokio::time::timeout(SLACK, c.ended)
            .await
            .expect("a stalled connection was kept")
            .unwrap();
    }
    assert_eq!(metric(&h, STALLED).await, 20.0);
}

#[tokio::test]
async fn pipelined_requests_whose_answers_are_never_read_are_cut() {
    let h = Harness::start(setup(SEND_TIMEOUT, &[])).await;
    let a = addr(&h);
    let s = h1_stalled(&a, "").await;
    let (_read_half, mut w) = s.into_split();
    let batch = format!("GET /healthz HTTP/1.1\r\nHost: {a}\r\n\r\n").repeat(100);
    let started = Instant::now();
    // Writes until the gateway stops reading (its answers fill the socket), then blocks until
    // the gateway closes the connection, which fails the write.
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while w.write_all(batch.as_bytes()).await.is_ok() {
            sent += 100;
        }
        sent
    });
    let sent = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the pipelining connection was kept open")
        .unwrap();
    assert!(sent > 0);
    assert_eq!(metric(&h, STALLED).await, 1.0);
    eprintln!(
        "pipelined: {sent} requests written, cut after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_admin_port_cuts_slow_heads_and_idle_connections_and_keeps_to_its_limit() {
    let h = Harness::start(with_admin(setup(
        SEND_TIMEOUT,
        &[
            ("CLINIKO_GATEWAY__SERVER__HEADER_READ_TIMEOUT", "1s"),
            ("CLINIKO_GATEWAY__SERVER__IDLE_TIMEOUT", "1s"),
            ("CLINIKO_GATEWAY__ADMIN__MAX_CONNECTIONS", "4"),
        ],
    )))
    .await;
    let admin_addr = h.admin_base().strip_prefix("http://").unwrap().to_string();
    let bound = Duration::from_secs(1) + SLACK;
    // A head that never ends is cut.
    let started = Instant::now();
    let got = raw(
        &admin_addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthoriz",
        bound,
    )
    .await;
    assert!(started.elapsed() < bound, "a half-sent head was held");
    assert_ne!(got.status, 200);
    // A keep-alive connection with nothing more to ask is closed once idle.
    let started = Instant::now();
    let req = format!(
        "GET /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    let got = raw(&admin_addr, req.as_bytes(), bound).await;
    assert_eq!(got.status, 200);
    assert!(started.elapsed() < bound, "an idle connection was held");

    // Twelve half-sent heads: the admin port holds at most four at a time, the public port
    // is unaffected, and the rest are served (here: cut) as slots free up.
    let gauge = "cliniko_gateway_connections_open{listener=\"admin\"}";
    let mut socks = vec![];
    for _ in 0..12 {
        let mut s = TcpStream::connect(&admin_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        socks.push(s);
    }
    let mut most = 0.0f64;
    wait_until(
        Duration::from_secs(4),
        "four admin connections held",
        async || {
            most = most.max(metric(&h, gauge).await);
            most >= 4.0
        },
    )
    .await;
    assert_eq!(
        h.send(http::Method::GET, "/healthz", &[], Bytes::new())
            .await
            .status,
        200
    );
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            })
        })
        .collect();
    let all_cut = async {
        for r in readers {
            r.await.unwrap();
        }
    };
    tokio::pin!(all_cut);
    // Three rounds of four, each cut after the head timeout; the gauge is sampled meanwhile.
    let deadline = tokio::time::Instant::now() + 3 * bound;
    loop {
        tokio::select! {
            _ = &mut all_cut => break,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                most = most.max(metric(&h, gauge).await);
                assert!(tokio::time::Instant::now() < deadline, "queued admin connections were not served");
            }
        }
    }
    assert_eq!(most, 4.0, "the admin port held more than its limit");
    wait_until(bound, "admin connections closed", async || {
        metric(&h, gauge).await == 0.0
    })
    .await;
    let (status, _) = admin(&h, http::Method::GET, "/admin/keys", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
}

/// A window of one byte (not zero) lets hyper hand the whole small body to h2's send buffer,
/// so no response timer runs and the socket never blocks: the connection looks idle, is asked
/// to close, and never finishes closing while the caller answers PINGs. The close gets
/// `send_timeout` too (found by review; held the port for over 70 s before).
#[tokio::test]
async fn a_one_byte_window_cannot_hold_the_port_through_a_graceful_close() {
    let h = Harness::start(setup(
        SEND_TIMEOUT,
        &[
            ("CLINIKO_GATEWAY__SERVER__MAX_CONNECTIONS", "2"),
            ("CLINIKO_GATEWAY__SERVER__IDLE_TIMEOUT", "1s"),
        ],
    ))
    .await;
    let a = addr(&h);
    let mut held = vec![];
    for _ in 0..2 {
        let tcp = TcpStream::connect(&a).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        let ended = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(format!("http://{a}/healthz"))
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push((send, resp, ended));
    }
    // Idle after 1 s, then at most send_timeout to leave.
    let bound = Duration::from_secs(1) + SEND_TIMEOUT + SLACK;
    let got = tokio::time::timeout(
        bound,
        h.send(http::Method::GET, "/healthz", &[], Bytes::new()),
    )
    .await
    .expect("two connections with a 1-byte window held the port");
    assert_eq!(got.status, 200);
    for (_, _, ended) in held {
        tokio::time::timeout(SLACK, ended)
            .await
            .expect("a connection stuck in its close was kept")
            .unwrap();
    }
}
