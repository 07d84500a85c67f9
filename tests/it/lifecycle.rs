//! The binary as ops run it: SIGHUP reloads keys, SIGTERM drains in-flight requests,
//! `check-config` redacts secrets. Each test runs `cliniko-gateway` as a child process.

use crate::support::*;
use cliniko_gateway::credentials::ApiKey;
use cliniko_gateway::sandbox::{Fault, Sandbox, SandboxOptions};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

struct Proc {
    child: Child,
    logs: ChildLogs,
    base: String,
    dir: tempfile::TempDir,
}

impl Proc {
    /// Waits (bounded) for a log line containing `needle`.
    async fn wait_line(&mut self, needle: &str) -> String {
        self.logs.wait_line(needle).await
    }
}

async fn spawn(sb: &Sandbox, users: &[(&str, &str)]) -> Proc {
    spawn_with(sb, users, "").await
}

/// [`spawn`] with `tail` appended to the config.
async fn spawn_with(sb: &Sandbox, users: &[(&str, &str)], tail: &str) -> Proc {
    spawn_env(sb, users, tail, &[]).await
}

/// [`spawn_with`] with extra environment variables.
async fn spawn_env(sb: &Sandbox, users: &[(&str, &str)], tail: &str, env: &[(&str, &str)]) -> Proc {
    let dir = process_config_dir(
        sb,
        "shutdown_grace = \"20s\"",
        &format!("level = \"info\"\n{ALLOW_ALL_POLICY}{tail}"),
        users,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(["serve", "--config"])
        .arg(dir.path().join("gw.toml"))
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = ChildLogs::capture(&mut child);
    let mut p = Proc {
        child,
        logs,
        base: String::new(),
        dir,
    };
    let line = p.wait_line("gateway listening").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    p.base = format!("http://{}", v["local_addr"].as_str().unwrap());
    p
}

async fn get(base: &str, user: &str, path: &str) -> (u16, String) {
    let client = plain_client();
    let auth = format!("Bearer {}", token(user));
    let req = http::Request::get(format!("{base}{path}"))
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn sighup_reloads_the_key_store_without_a_restart() {
    let sb = alice_sandbox().await;
    let mut p = spawn(&sb, &[("alice", KEY_ALICE)]).await;
    assert_eq!(get(&p.base, "erin", "/v1/patients").await.0, 403);
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    add_key(
        &p.dir.path().join("keys.json"),
        &master,
        "erin",
        &ApiKey::new(KEY_ALICE.into()),
        None,
    )
    .unwrap();
    signal(&p.child, "-HUP");
    p.wait_line("key store reloaded").await;
    let (status, body) = get(&p.base, "erin", "/v1/patients?q[]=last_name:~~Lovelace%").await;
    assert_eq!(status, 200);
    assert!(body.contains("Lovelace"));
    // The access line: who, what, outcome; never the query string, a token or a key.
    // (The audit record names the user too, but has no `path`.)
    let line = p.wait_line("\"path\":\"/v1/patients\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "access");
    assert_eq!(v["path"], "/v1/patients");
    assert_eq!(v["status"], 200);
    assert_eq!(v["upstream_status"], 200);
    assert_eq!(v["shard"], "au1");
    assert!(v["bytes"].as_u64().unwrap() > 0);
    // A corrupted store on SIGHUP is refused and the old one keeps serving.
    std::fs::write(p.dir.path().join("keys.json"), "{ not json").unwrap();
    signal(&p.child, "-HUP");
    p.wait_line("reload failed").await;
    assert_eq!(get(&p.base, "erin", "/v1/patients").await.0, 200);
    signal(&p.child, "-TERM");
    p.wait_line("gateway stopped").await;
    assert!(p.child.wait().await.unwrap().success());
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{KEY_ALICE}:"),
    );
    for l in &p.logs.seen {
        for secret in [KEY_ALICE, b64.as_str(), "eyJ", "Lovelace", HMAC, MASTER] {
            assert!(!l.contains(secret), "log line leaks {secret}: {l}");
        }
    }
}

/// Ctrl-C in a terminal (SIGINT) stops the gateway as SIGTERM does: drained, exit 0.
#[tokio::test]
async fn sigint_stops_the_gateway_like_sigterm() {
    let sb = alice_sandbox().await;
    let mut p = spawn(&sb, &[("alice", KEY_ALICE)]).await;
    assert_eq!(get(&p.base, "alice", "/v1/patients").await.0, 200);
    signal(&p.child, "-INT");
    p.wait_line("gateway stopped").await;
    let exit = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let sb = alice_sandbox().await;
    sb.set_fault("/v1/patients", Fault::Delay(Duration::from_millis(1500)));
    let mut p = spawn(&sb, &[("alice", KEY_ALICE)]).await;
    let base = p.base.clone();
    let in_flight = tokio::spawn(async move { get(&base, "alice", "/v1/patients").await });
    sb.wait_for_requests(1).await;
    signal(&p.child, "-TERM");
    p.wait_line("draining").await;
    let (status, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request was cut off");
    let exit = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(p.base.strip_prefix("http://").unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(["check-config", "--config"])
        .arg(&example)
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "42s")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("42s"));
    assert!(stdout.contains("auth.hmac_secret: set, redacted"));
    assert!(
        stdout.contains("admin.token: "),
        "every secret has its line"
    );
    assert!(!stdout.contains(HMAC) && !stdout.contains(MASTER));
    // A bad config exits 64 and names the field.
    let out = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(["check-config", "--config"])
        .arg(&example)
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env("CLINIKO_GATEWAY__UPSTREAM__USER_AGENT", "curl/8")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.user_agent"));
}

#[tokio::test]
async fn old_redis_field_names_warn_at_start_on_reload_and_in_check_config() {
    let sb = alice_sandbox().await;
    let old = "[ratelimit]\nredis_prefix = \"gw-old\"\n";
    let mut p = spawn_with(&sb, &[("alice", KEY_ALICE)], old).await;
    let deprecated = "`ratelimit.redis_prefix` is deprecated";
    let at_start = p
        .logs
        .seen
        .iter()
        .filter(|l| l.contains(deprecated))
        .count();
    assert_eq!(at_start, 1, "{:?}", p.logs.seen);
    signal(&p.child, "-HUP");
    let line = p.wait_line(deprecated).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["field"], "ratelimit.redis_prefix");
    assert_eq!(v["use_instead"], "redis.prefix");
    p.wait_line("config reloaded").await;
    assert_eq!(get(&p.base, "alice", "/v1/patients").await.0, 200);
    let gw = p.dir.path().join("gw.toml");
    let check = || async {
        Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
            .args(["check-config", "--config"])
            .arg(&gw)
            .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
            .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
            .output()
            .await
            .unwrap()
    };
    let out = check().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(deprecated), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[redis]") && stdout.contains("gw-old"),
        "{stdout}"
    );
    // The same field under both names: refused, both named.
    let text = std::fs::read_to_string(&gw).unwrap();
    std::fs::write(&gw, format!("{text}[redis]\nprefix = \"gw-new\"\n")).unwrap();
    let out = check().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("ratelimit.redis_prefix") && stderr.contains("redis.prefix"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_while_a_sighup_reload_waits_on_a_silent_database() {
    let Some(pg) = crate::pg::PgServer::start() else {
        return;
    };
    let ops = crate::pgstore::ops_store(&pg).await;
    let alice = crate::pgstore::new_key("alice", KEY_ALICE);
    ops.add(alice).await.unwrap();
    let relay = crate::pgstore::Freezer::start(&pg).await;
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let env = [
        ("CLINIKO_GATEWAY__KEYSTORE__STORE", "postgres"),
        ("CLINIKO_GATEWAY_POSTGRES_URL", relay.url.as_str()),
    ];
    let mut p = spawn_env(&sb, &[], "", &env).await;
    relay.frozen.send(true).unwrap();
    signal(&p.child, "-HUP");
    signal(&p.child, "-TERM");
    // The reload waits 5 s on the database; SIGTERM is acted on before it gives up.
    p.wait_line("draining").await;
    assert!(
        !p.logs
            .seen
            .iter()
            .any(|l| l.contains("key store reload failed")),
        "SIGTERM waited for the reload"
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), p.child.wait()).await;
    assert!(exit.unwrap().unwrap().success());
}
