//! Operations end to end: real `cliniko-gateway serve` processes started with the very config
//! the Kubernetes ConfigMap and compose use (`deploy/kubernetes/gateway.toml`), with only the
//! environment-specific parts overridden by `CLINIKO_GATEWAY__…` variables, as a deployment
//! does. Two replicas share one key budget through a real `redis-server`; `/metrics` is read
//! from the admin port; SIGTERM fails readiness before the listener closes; a changed key-store
//! file is reloaded and a bad one refused.

use crate::support::{
    ChildLogs, HMAC, KEY_ALICE, MASTER, RedisServer, add_key, alice_sandbox, plain_client, sample,
    signal, token_scoped,
};
use bytes::Bytes;
use cliniko_gateway::credentials::ApiKey;
use cliniko_gateway::sandbox::Sandbox;
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const ADMIN_TOKEN: &str = "ops-test-admin-token-of-at-least-32-chars";

fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/gateway.toml")
}

/// Secrets and the key store as the Secret volume would hold them, plus the stand-in's CA.
fn secrets_dir(sb: &Sandbox, users: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("hmac-secret"), format!("{HMAC}\n")).unwrap();
    std::fs::write(p.join("master-key"), format!("{MASTER}\n")).unwrap();
    std::fs::write(p.join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::write(p.join("ca.pem"), sb.ca_pem()).unwrap();
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    for u in users {
        add_key(
            &p.join("keys.json"),
            &master,
            u,
            &ApiKey::new(KEY_ALICE.into()),
            None,
        )
        .unwrap();
    }
    dir
}

struct Replica {
    child: Child,
    logs: ChildLogs,
    base: String,
    admin: String,
}

impl Replica {
    async fn start(sb: &Sandbox, redis: &RedisServer, secrets: &Path) -> Replica {
        let s = |f: &str| secrets.join(f).to_string_lossy().into_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
            .args(["serve", "--config"])
            .arg(deploy_config())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // What differs from the cluster: loopback ports, file locations, the stand-in.
            .env("CLINIKO_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
            .env("CLINIKO_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
            .env("CLINIKO_GATEWAY__ADMIN__TOKEN_FILE", s("admin-token"))
            .env("CLINIKO_GATEWAY__AUTH__HMAC_SECRET_FILE", s("hmac-secret"))
            .env("CLINIKO_GATEWAY__KEYSTORE__PATH", s("keys.json"))
            .env(
                "CLINIKO_GATEWAY__KEYSTORE__MASTER_KEY_FILE",
                s("master-key"),
            )
            .env("CLINIKO_GATEWAY__UPSTREAM__CA_FILE", s("ca.pem"))
            .env("CLINIKO_GATEWAY__UPSTREAM__SHARDS__AU1", sb.base_url())
            .env("CLINIKO_GATEWAY__REDIS__URL", &redis.url)
            // A busy machine has held Redis's answer past the 100 ms default; each replica
            // then decides on its local share as well, which is not what is measured here.
            .env("CLINIKO_GATEWAY__REDIS__TIMEOUT", "5s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = ChildLogs::capture(&mut child);
        let mut r = Replica {
            child,
            logs,
            base: String::new(),
            admin: String::new(),
        };
        let line = r.wait_line("admin listening").await;
        r.admin = format!("http://{}", field(&line, "admin_addr"));
        let line = r.wait_line("gateway listening").await;
        r.base = format!("http://{}", field(&line, "local_addr"));
        r
    }

    /// Waits (bounded) for a JSON log line containing `needle`.
    async fn wait_line(&mut self, needle: &str) -> String {
        self.logs.wait_line(needle).await
    }

    fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    async fn metrics(&self) -> String {
        let (status, body) = get(&self.admin, "/metrics", Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn field(line: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[name].as_str().unwrap().to_string()
}

/// GET with an optional bearer token; (status, body).
async fn get(base: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = http::Request::get(format!("{base}{path}"));
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = plain_client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn two_replicas_on_the_deploy_config_share_one_budget_expose_metrics_and_drain() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sb = alice_sandbox().await;
    let users = ["alice", "bob", "erin"];
    let secrets = secrets_dir(&sb, &users);
    let mut a = Replica::start(&sb, &redis, secrets.path()).await;
    let mut b = Replica::start(&sb, &redis, secrets.path()).await;
    assert_eq!(get(&a.base, "/readyz", None).await.0, 200);
    assert_eq!(get(&b.base, "/readyz", None).await.0, 200);

    // Hammer one Cliniko key through both replicas at once. The deploy config keeps the
    // default key budget (190/min, burst 10, waits up to 2 s): shared, Cliniko may see at
    // most burst + rate × elapsed; two separate budgets would let twice the burst through.
    let started = std::time::Instant::now();
    // One request through each first, so both have served (which replica wins the rest of
    // a race for one budget is up to the scheduler).
    let mut ok = [0usize; 2];
    for (i, base) in [&a.base, &b.base].into_iter().enumerate() {
        let auth = format!("Bearer {}", token_scoped("alice", "cliniko:read"));
        assert_eq!(get_auth(base, "/v1/user", &auth).await, 200);
        ok[i] += 1;
    }
    let mut tasks = vec![];
    for i in 0..40 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let user = users[i % 3];
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {}", token_scoped(user, "cliniko:read"));
            (i % 2, get_auth(&base, "/v1/user", &auth).await)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (gw, 200) => ok[gw] += 1,
            (_, 429) => refused += 1,
            (_, s) => panic!("unexpected status {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let received = sb
        .requests()
        .iter()
        .filter(|r| r.path() == "/v1/user")
        .count();
    let bound = 10 + (190.0 * elapsed / 60.0).ceil() as usize;
    // Two separate budgets would pass 2 × burst = 20 at once: the bound must be below that.
    assert!(bound < 20, "the run took too long ({elapsed:.2}s) to tell");
    assert_eq!(
        received,
        ok[0] + ok[1],
        "every 200 was one request to Cliniko"
    );
    assert!(
        received <= bound,
        "Cliniko saw {received} requests in {elapsed:.2}s; one shared budget allows {bound}"
    );
    assert!(refused > 0, "the budget never bit");

    // /metrics: behind the admin token; request counters and the handshake counter.
    assert_eq!(get(&a.admin, "/metrics", None).await.0, 401);
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let ok_series =
        r#"cliniko_gateway_http_requests_total{route="proxy",method="GET",status="200"}"#;
    let refused_series =
        r#"cliniko_gateway_http_requests_total{route="proxy",method="GET",status="429"}"#;
    assert_eq!(sample(&ma, ok_series) as usize, ok[0], "{ma}");
    assert_eq!(sample(&mb, ok_series) as usize, ok[1], "{mb}");
    assert_eq!(
        (sample(&ma, refused_series) + sample(&mb, refused_series)) as usize,
        refused
    );
    let key_refusals = r#"cliniko_gateway_ratelimit_refusals_total{limit="key"}"#;
    assert_eq!(
        (sample(&ma, key_refusals) + sample(&mb, key_refusals)) as usize,
        refused
    );
    // Pooled connections: a cold burst opens one connection per request in flight at once
    // (the protocol is not known before ALPN), then waiting requests reuse them.
    let handshakes = [&ma, &mb].map(|m| sample(m, "cliniko_gateway_upstream_tls_handshakes_total"));
    for (i, h) in handshakes.iter().enumerate() {
        assert!(
            *h >= 1.0 && *h <= ok[i] as f64,
            "handshakes {h}, requests {}",
            ok[i]
        );
    }
    assert!(
        ((handshakes[0] + handshakes[1]) as usize) < received,
        "no reuse: {handshakes:?} handshakes for {received} requests"
    );
    for m in [&ma, &mb] {
        assert_eq!(sample(m, "cliniko_gateway_keystore_users"), 3.0);
        assert!(m.contains("cliniko_gateway_upstream_duration_seconds_bucket"));
        assert!(m.contains(r#"cliniko_gateway_jwks_refreshes_total{result="ok"} 0"#));
        // No user names, paths or keys in any label.
        for leak in ["alice", "/v1/user", KEY_ALICE] {
            assert!(!m.contains(leak), "metrics mention {leak}");
        }
    }

    // SIGTERM: readiness fails first while the listener still answers, then it closes.
    a.signal("-TERM");
    b.signal("-TERM");
    for r in [&mut a, &mut b] {
        r.wait_line("readiness now failing").await;
        assert_eq!(get(&r.base, "/readyz", None).await.0, 503);
        assert_eq!(get(&r.base, "/healthz", None).await.0, 200);
    }
    for r in [&mut a, &mut b] {
        r.wait_line("gateway stopped").await;
        let exit = tokio::time::timeout(Duration::from_secs(20), r.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success());
        let addr = r.base.strip_prefix("http://").unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

async fn get_auth(base: &str, path: &str, authorization: &str) -> u16 {
    let req = http::Request::get(format!("{base}{path}"))
        .header("authorization", authorization)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn a_changed_key_store_file_is_reloaded_and_a_bad_one_refused() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sb = alice_sandbox().await;
    let secrets = secrets_dir(&sb, &["alice"]);
    let mut r = Replica::start(&sb, &redis, secrets.path()).await;
    let erin = format!("Bearer {}", token_scoped("erin", "cliniko:read"));
    assert_eq!(get_auth(&r.base, "/v1/user", &erin).await, 403);

    // `keys add` writes a new file (temp + rename); no signal is sent.
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    add_key(
        &secrets.path().join("keys.json"),
        &master,
        "erin",
        &ApiKey::new(KEY_ALICE.into()),
        None,
    )
    .unwrap();
    let line = r.wait_line("key store reloaded").await;
    assert!(line.contains(r#""trigger":"file""#), "{line}");
    assert_eq!(get_auth(&r.base, "/v1/user", &erin).await, 200);

    // A broken file is refused once, with a log line and a metric; erin keeps working.
    std::fs::write(secrets.path().join("keys.json"), "{ not json").unwrap();
    let line = r.wait_line("key store reload failed").await;
    assert!(line.contains(r#""trigger":"file""#), "{line}");
    assert_eq!(get_auth(&r.base, "/v1/user", &erin).await, 200);
    let m = r.metrics().await;
    let series = |result: &str| {
        format!(r#"cliniko_gateway_keystore_reloads_total{{trigger="file",result="{result}"}}"#)
    };
    assert_eq!(sample(&m, &series("ok")), 1.0, "{m}");
    assert_eq!(sample(&m, &series("failed")), 1.0, "{m}");
    assert_eq!(sample(&m, "cliniko_gateway_keystore_users"), 2.0);
    r.signal("-TERM");
    r.wait_line("gateway stopped").await;
}
