//! Faults the older suites did not cover: Cliniko closing pooled keep-alive connections, the
//! identity provider's JWKS down or answering junk (at start and later), and a key store
//! that is corrupt or sealed under another master key when the binary starts.

use crate::support::*;
use cliniko_gateway::sandbox::{Sandbox, SandboxOptions, TestPki, ec_keypair};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a hand-written HTTP/1.1 "Cliniko" treats a connection after its first answer.
#[derive(Clone, Copy)]
enum After {
    /// Answers (keep-alive, no `Connection: close`), then closes the connection at once.
    Close,
    /// Keeps it, but closes without answering when a second request arrives on it.
    DropNext,
}

/// Starts the server on loopback over TLS (ALPN http/1.1 only); returns its port and a
/// count of accepted connections.
async fn keepalive_liar(pki: &TestPki, after: After) -> (u16, Arc<AtomicUsize>) {
    let mut tls = pki.issue(&["localhost"]).unwrap().server_config().unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut answered = 0;
                loop {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    if answered == 1 {
                        // DropNext: the request arrived on a reused connection; vanish.
                        return;
                    }
                    let body = br#"{"invoices":[],"total_entries":0,"links":{}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err()
                        || s.write_all(body).await.is_err()
                        || s.flush().await.is_err()
                    {
                        return;
                    }
                    answered += 1;
                    if let After::Close = after {
                        // No close_notify, no Connection: close: the socket just goes away.
                        return;
                    }
                }
            });
        }
    });
    (port, conns)
}

async fn gateway_in_front(pki: Arc<TestPki>, port: u16) -> Harness {
    let mut s = Setup {
        pki: Some(pki),
        ..Setup::default()
    };
    s.users.push(("erin", "erinkey00000000000000000-ca1"));
    s.overrides.push((
        "CLINIKO_GATEWAY__UPSTREAM__SHARDS__CA1",
        format!("https://localhost:{port}/v1"),
    ));
    Harness::start(s).await
}

#[tokio::test]
async fn cliniko_closing_keep_alive_connections_between_requests_is_transparent() {
    let pki = Arc::new(TestPki::new().unwrap());
    let (port, conns) = keepalive_liar(&pki, After::Close).await;
    let h = gateway_in_front(pki, port).await;
    for i in 0..20 {
        let got = h.get_as("erin", &format!("/v1/invoices?n={i}")).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        20,
        "a closed connection was reused"
    );
}

#[tokio::test]
async fn a_reused_connection_dying_under_a_get_is_retried_once_on_a_fresh_one() {
    let pki = Arc::new(TestPki::new().unwrap());
    let (port, _conns) = keepalive_liar(&pki, After::DropNext).await;
    let h = gateway_in_front(pki, port).await;
    assert_eq!(h.get_as("erin", "/v1/invoices?n=1").await.status, 200);
    let started = Instant::now();
    let got = h.get_as("erin", "/v1/invoices?n=2").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A bodiless GET is safe to repeat: the gateway retries it once on a fresh connection.
    assert_eq!(got.status, 200, "{}", got.text());
    // The dead connection is gone from the pool: the next request opens a fresh one.
    assert_eq!(h.get_as("erin", "/v1/invoices?n=3").await.status, 200);
    // A POST is never sent twice: on a reused connection that dies it is a clean 502.
    let resent = h
        .gateway()
        .live()
        .retries
        .stats()
        .stale
        .load(Ordering::Relaxed);
    assert!(resent >= 1);
    let auth = format!("Bearer {}", h.token("erin"));
    let got = h
        .send(
            http::Method::POST,
            "/v1/invoices",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (502, "upstream_unavailable")
    );
    let stale = || {
        h.gateway()
            .live()
            .retries
            .stats()
            .stale
            .load(Ordering::Relaxed)
    };
    assert_eq!(stale(), resent, "the GETs' resends, not the POST's");
    assert_eq!(
        h.get_as("alice", "/v1/patients").await.status,
        200,
        "others unaffected"
    );
}

fn jwk_of(kp: &cliniko_gateway::sandbox::SigningKeyPair, kid: &str) -> serde_json::Value {
    let enc = EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn es256(kp: &cliniko_gateway::sandbox::SigningKeyPair, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &header,
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Polls `/readyz` until it answers `want` (bounded): readiness flips from a background task.
async fn wait_ready(h: &Harness, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = h
            .send(http::Method::GET, "/readyz", &[], bytes::Bytes::new())
            .await;
        if got.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn jwks_junk_at_start_then_recovery_then_down_keeps_the_last_good_set() {
    let kp = ec_keypair().unwrap();
    let s = Setup {
        auth_toml: "[auth.jwks]\nurl = \"{jwks_url}\"\nalgorithms = [\"ES256\"]\nmin_refetch_interval = \"1ms\"\ntimeout = \"1s\"\n".into(),
        // Not a key set: the first fetch fails.
        jwks: Some(json!({"keys": "nope", "html": "<h1>Gateway Timeout</h1>"})),
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let sb = h.sandbox("au1");
    let ready = h
        .send(http::Method::GET, "/readyz", &[], bytes::Bytes::new())
        .await;
    assert_eq!(ready.status, 503, "not ready without a key set");
    let es = format!("Bearer {}", es256(&kp, "k1"));
    let got = h.get_with_auth(&es, "/v1/patients").await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (503, "auth_unavailable")
    );
    assert_eq!(h.upstream_hits(), 0);
    // HMAC callers do not depend on the JWKS and are still served.
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    // The IdP recovers: the background refresher picks it up.
    sb.set_jwks(json!({"keys": [jwk_of(&kp, "k1")]}));
    wait_ready(&h, 200).await;
    assert_eq!(
        h.get_with_auth(&es, "/v1/patients?after=recovery")
            .await
            .status,
        200
    );
    // Later the IdP goes down (500 with an HTML body): a refetch forced by an unknown kid
    // fails, and the last good set keeps verifying known kids.
    sb.set_jwks_status(500);
    let before = sb.jwks_fetch_count();
    let unknown = format!("Bearer {}", es256(&kp, "k2"));
    let got = h.get_with_auth(&unknown, "/v1/patients").await;
    assert_eq!(got.status, 401);
    assert!(
        sb.jwks_fetch_count() > before,
        "the unknown kid did not trigger a refetch"
    );
    assert_eq!(
        h.get_with_auth(&es, "/v1/patients?after=outage")
            .await
            .status,
        200
    );
    wait_ready(&h, 200).await;
}

#[tokio::test]
async fn jwks_unreachable_at_start_is_503_for_its_tokens_only() {
    let pki = Arc::new(TestPki::new().unwrap());
    // A JWKS server that is down: a stand-in answering 503 with junk.
    let idp = Sandbox::start(SandboxOptions {
        pki: Some(pki.clone()),
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    idp.set_jwks_status(503);
    let kp = ec_keypair().unwrap();
    let h = Harness::start(Setup {
        pki: Some(pki),
        auth_toml: format!(
            "[auth.jwks]\nurl = \"https://localhost:{}/.well-known/jwks.json\"\nalgorithms = [\"ES256\"]\ntimeout = \"1s\"\n",
            idp.addr().port()
        ),
        ..Setup::default()
    })
    .await;
    let ready = h
        .send(http::Method::GET, "/readyz", &[], bytes::Bytes::new())
        .await;
    assert_eq!(ready.status, 503);
    let got = h
        .get_with_auth(&format!("Bearer {}", es256(&kp, "k1")), "/v1/patients")
        .await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (503, "auth_unavailable")
    );
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    assert!(idp.jwks_fetch_count() >= 1);
}

/// `serve` with a key store it cannot use: exit 64 and a message naming the problem.
#[tokio::test]
async fn a_bad_key_store_at_start_is_a_clear_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\n[keystore]\npath = \"keys.json\"\n\
         [upstream]\nuser_agent = \"Gateway Tests (tests@example.invalid)\"\n{ALLOW_ALL_POLICY}"
    );
    std::fs::write(dir.path().join("gw.toml"), cfg).unwrap();
    let store = dir.path().join("keys.json");
    let run = |master: &'static str| {
        let dir = dir.path().to_path_buf();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
                    .args(["serve", "--config"])
                    .arg(dir.join("gw.toml"))
                    .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
                    .env("CLINIKO_GATEWAY_MASTER_KEY", master)
                    .env_remove("RUST_LOG")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("serve hung instead of exiting")
            .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, err) = run(MASTER).await;
    assert_eq!(code, Some(64), "missing store: {err}");
    assert!(
        err.contains("does not exist") && err.contains("keys add"),
        "{err}"
    );

    std::fs::write(&store, "{ corrupted").unwrap();
    let (code, err) = run(MASTER).await;
    assert_eq!(code, Some(64), "corrupt store: {err}");
    assert!(
        err.contains("key store") && err.contains("not valid"),
        "{err}"
    );

    std::fs::remove_file(&store).unwrap();
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    add_key(
        &store,
        &master,
        "alice",
        &cliniko_gateway::credentials::ApiKey::new(KEY_ALICE.into()),
        None,
    )
    .unwrap();
    let other = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let (code, err) = run(other).await;
    assert_eq!(code, Some(64), "wrong master key: {err}");
    assert!(err.contains("master key does not decrypt"), "{err}");
    assert!(!err.contains(KEY_ALICE) && !err.contains(other) && !err.contains(MASTER));
}
