//! Exhausting the gateway without a token, measured on the real binary (a child process, so
//! its resident memory is its own): stalled HTTP/2 connections, a flood of unfinished heads on
//! the admin port, and both accept loops at the file descriptor limit.
//!
//! The figures in docs/security.md come from these tests run against the release binary:
//! `GATEWAY_BIN=target/release/cliniko-gateway STALL_CONNS=1000 STALL_STREAMS=100
//! STALL_SEND_TIMEOUT_S=30 cargo test --test it hostile::exhaust -- --nocapture --test-threads 1`
//! (they print what they measure).

use super::stall::H2Stalled;
use crate::support::*;
use cliniko_gateway::sandbox::{Sandbox, SandboxOptions};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A gateway process in front of a stand-in, with the admin port on.
struct Gw {
    child: Child,
    logs: ChildLogs,
    public: String,
    admin: String,
    _dir: tempfile::TempDir,
    _sb: Sandbox,
}

impl Gw {
    /// Starts the binary (`GATEWAY_BIN`, else this build's) with `server_extra` under
    /// `[server]`; `fd_limit` runs it under `ulimit -n`.
    async fn start(server_extra: &str, fd_limit: Option<u32>) -> Gw {
        let sb = Sandbox::start(SandboxOptions {
            accounts: vec![account(KEY_ALICE, "Alice")],
            ..SandboxOptions::default()
        })
        .await
        .unwrap();
        let tail =
            format!("level = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{ALLOW_ALL_POLICY}");
        let dir = process_config_dir(&sb, server_extra, &tail, &[("alice", KEY_ALICE)]);
        let bin = std::env::var("GATEWAY_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cliniko-gateway").to_string());
        let mut cmd = match fd_limit {
            None => Command::new(&bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                c
            }
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(dir.path().join("gw.toml"))
            .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
            .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
            .env("CLINIKO_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut logs = ChildLogs::capture(&mut child);
        let line = logs.wait_line("admin listening").await;
        let admin = json_field(&line, "admin_addr");
        let line = logs.wait_line("gateway listening").await;
        let public = json_field(&line, "local_addr");
        Gw {
            child,
            logs,
            public,
            admin,
            _dir: dir,
            _sb: sb,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the gateway process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// CPU time (user + system) the gateway process has used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which is in parentheses): utime and stime are the
        // 12th and 13th, in clock ticks (100 per second on Linux).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        Duration::from_millis((f[0] + f[1]) * 10)
    }

    /// `GET /healthz` on a fresh connection, bounded: the status, or 0 when not answered.
    async fn healthz(&self, within: Duration) -> u16 {
        let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        super::raw(&self.public, req, within).await.status
    }
}

fn json_field(line: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[field].as_str().unwrap().to_string()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn stalled_http2_connections_cost_bounded_memory_and_are_cut_on_time() {
    // The bound asserted below (measured, release and debug alike: about 26 KiB per HTTP/2
    // connection and 3 KiB per stalled stream).
    const KIB_PER_CONN: u64 = 48;
    const KIB_PER_STREAM: u64 = 8;
    let conns = env_usize("STALL_CONNS", 200);
    let streams = env_usize("STALL_STREAMS", 4);
    let send_timeout = Duration::from_secs(env_usize("STALL_SEND_TIMEOUT_S", 6) as u64);
    let server = format!(
        "send_timeout = \"{}s\"\nmax_streams_per_connection = 100\nmax_connections = 20000",
        send_timeout.as_secs()
    );
    let gw = Gw::start(&server, None).await;
    assert_eq!(gw.healthz(Duration::from_secs(5)).await, 200);
    let before = gw.rss_kib();
    let started = Instant::now();
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = H2Stalled::open(&gw.public).await;
        let statuses = c.get_many("/healthz", None, streams).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        held.push(c);
    }
    let opened_in = started.elapsed();
    assert!(
        opened_in < send_timeout,
        "opening took {opened_in:?}: the first connections were cut before all were held"
    );
    let during = gw.rss_kib();
    // Everything is held now, and the port still answers.
    let t = Instant::now();
    assert_eq!(gw.healthz(Duration::from_secs(2)).await, 200);
    let healthz_ms = t.elapsed().as_millis();
    let grown = during.saturating_sub(before);
    eprintln!(
        "{conns} connections x {streams} stalled streams: RSS {before} -> {during} KiB \
         (+{grown} KiB, {} KiB per connection), opened in {opened_in:?}, \
         /healthz meanwhile in {healthz_ms} ms",
        grown / conns as u64
    );
    let bound = KIB_PER_CONN * conns as u64 + KIB_PER_STREAM * (conns * streams) as u64;
    assert!(grown <= bound + 8 * 1024, "RSS grew by {grown} KiB");
    // Each is cut send_timeout after its answers stalled.
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    for c in held {
        let ended = tokio::time::timeout(send_timeout + Duration::from_secs(10), c.ended)
            .await
            .expect("a stalled connection was kept")
            .unwrap();
        let took = ended - c.last_head;
        (first, last) = (first.min(took), last.max(took));
    }
    eprintln!(
        "each cut {first:?} to {last:?} after its last answer stalled (send_timeout {send_timeout:?}); \
         RSS after: {} KiB",
        gw.rss_kib()
    );
    assert!(last <= send_timeout + Duration::from_secs(5));
}

#[tokio::test]
async fn a_flood_of_unfinished_heads_on_the_admin_port_is_bounded() {
    let conns = env_usize("STALL_CONNS", 200).min(1000);
    let gw = Gw::start("header_read_timeout = \"2s\"", None).await;
    assert_eq!(gw.healthz(Duration::from_secs(5)).await, 200);
    let before = gw.rss_kib();
    let started = Instant::now();
    // Each sends 400 KB of a head that never ends (the admin port takes 16 KiB of it, then
    // answers 431) or 8 KB (held until header_read_timeout), and reads whatever comes back.
    let mut floods = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut s = TcpStream::connect(&gw.admin).await.unwrap();
        let size = if i % 2 == 0 { 400_000 } else { 8_000 };
        floods.push(tokio::spawn(async move {
            let head = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Fill: {}",
                "a".repeat(size)
            );
            let _ = s.write_all(head.as_bytes()).await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }));
    }
    assert_eq!(gw.healthz(Duration::from_secs(2)).await, 200);
    // 64 admin connections at a time, each cut at 16 KiB or after 2 s; the peak RSS is
    // sampled until all are done.
    let rounds = (conns / 2).div_ceil(64) as u64 + 1;
    let all_done = async {
        for f in floods {
            f.await.unwrap();
        }
    };
    tokio::pin!(all_done);
    let deadline = Instant::now() + Duration::from_secs(2 * rounds + 10);
    let mut peak = before;
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                peak = peak.max(gw.rss_kib());
                assert!(Instant::now() < deadline, "admin connections were held past the head timeout");
            }
        }
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "admin flood of {conns} unfinished heads: RSS {before} -> peak {peak} KiB (+{grown} KiB), \
         all closed after {:?}",
        started.elapsed()
    );
    assert!(grown <= 16 * 1024, "RSS grew by {grown} KiB");
    let req = format!(
        "GET /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let got = super::raw(&gw.admin, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn at_the_file_descriptor_limit_the_accept_loops_back_off_and_recover() {
    let mut gw = Gw::start("", Some(128)).await;
    // More connections than file descriptors: both ports end up failing to accept.
    let mut held = Vec::new();
    for _ in 0..160 {
        held.push(TcpStream::connect(&gw.public).await.unwrap());
    }
    for _ in 0..8 {
        held.push(TcpStream::connect(&gw.admin).await.unwrap());
    }
    gw.logs.wait_line("accept failed").await;
    // A loop that retried at once would burn a whole core here.
    let cpu = gw.cpu();
    let window = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..11 {
        every.tick().await;
    }
    let used = gw.cpu() - cpu;
    let spent = window.elapsed();
    eprintln!("at the fd limit: {used:?} of CPU in {spent:?}");
    assert!(used < spent / 5, "{used:?} of CPU in {spent:?}");
    // Freed descriptors are used again: both ports answer.
    drop(held);
    assert_eq!(gw.healthz(Duration::from_secs(5)).await, 200);
    let req = format!(
        "GET /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let got = super::raw(&gw.admin, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(got.status, 200);
}
