//! Files on disk attacked by someone who can write them but does not hold the master key: the
//! key store's user → key map edited (as `jq '.users.bob = .users.alice'` would), a store from
//! before the integrity MAC, and secret files other local users can read. Each runs the real
//! binary, as ops do.

use crate::support::*;
use cliniko_gateway::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const ADMIN: &str = "admin-token-of-at-least-32-characters!!";

/// The edit the probe made: bob (and erin, who had no key) now point at alice's key id.
/// Replaced by a rename, as `jq … > tmp && mv tmp keys.json` does (and so the file watch never
/// sees half a file).
fn give_bob_alices_key(store: &Path) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(store).unwrap()).unwrap();
    let alice = v["users"]["alice"].clone();
    v["users"]["bob"] = alice.clone();
    v["users"]["erin"] = alice;
    let tmp = store.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    std::fs::rename(&tmp, store).unwrap();
}

/// The file an older gateway wrote: version 1, no MAC.
fn make_version_1(store: &Path) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(store).unwrap()).unwrap();
    v["version"] = 1.into();
    v.as_object_mut().unwrap().remove("mac");
    std::fs::write(store, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn stand_in() -> SandboxOptions {
    SandboxOptions {
        accounts: vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
        ..SandboxOptions::default()
    }
}

/// alice and bob each with their own key; erin has none.
fn config_dir(sb: &Sandbox) -> tempfile::TempDir {
    process_config_dir(
        sb,
        "",
        &format!("level = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{ALLOW_ALL_POLICY}"),
        &[("alice", KEY_ALICE), ("bob", KEY_DAVE)],
    )
}

fn binary(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"));
    c.args(args)
        .arg("--config")
        .arg(dir.join("gw.toml"))
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env("CLINIKO_GATEWAY_ADMIN_TOKEN", ADMIN)
        .env("CLINIKO_GATEWAY__KEYSTORE__WATCH_INTERVAL", "100ms")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    c
}

/// Runs a command that must exit (within 20 s): exit code, stdout, stderr.
async fn run(mut c: Command) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), c.output())
        .await
        .expect("hung instead of exiting")
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

struct Served {
    child: Child,
    logs: ChildLogs,
    base: String,
    admin: String,
}

async fn serve(dir: &Path) -> Served {
    let mut child = binary(dir, &["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = ChildLogs::capture(&mut child);
    let addr = |line: String, field: &str| {
        let v: Value = serde_json::from_str(&line).unwrap();
        format!("http://{}", v[field].as_str().unwrap())
    };
    let admin = addr(logs.wait_line("admin listening").await, "admin_addr");
    let base = addr(logs.wait_line("gateway listening").await, "local_addr");
    Served {
        child,
        logs,
        base,
        admin,
    }
}

/// Status and body of a GET as `user`.
async fn get(base: &str, user: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {}", token(user)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of one metric line in the admin's `/metrics` (0 when absent).
async fn metric(admin: &str, name: &str) -> f64 {
    let req = http::Request::get(format!("{admin}/metrics"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    use http_body_util::BodyExt;
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Asserts bob is still served with his own key (Dave's account) and erin still has none.
async fn bob_is_still_bob(base: &str) {
    let (status, body) = get(base, "bob", "/v1/patients").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Lovelace-Dave") && !body.contains("Lovelace-Alice"),
        "bob was served alice's patients: {body}"
    );
    let (status, body) = get(base, "erin", "/v1/patients").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no_credential"), "{body}");
}

#[tokio::test]
async fn a_user_map_edited_without_the_master_key_is_refused_at_start_up() {
    let sb = Sandbox::start(stand_in()).await.unwrap();
    let dir = config_dir(&sb);
    give_bob_alices_key(&dir.path().join("keys.json"));
    let (code, _, err) = run(binary(dir.path(), &["serve"])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("fails its integrity check") && err.contains("keys reseal --accept-edits"),
        "{err}"
    );
    // The CLI will not launder the edit by the way either.
    let (code, _, err) = run(binary(dir.path(), &["keys", "list"])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("integrity"), "{err}");
    for leak in [KEY_ALICE, KEY_DAVE, MASTER] {
        assert!(!err.contains(leak));
    }
    assert_eq!(sb.request_count(), 0, "nothing reached Cliniko");
}

#[tokio::test]
async fn a_user_map_edited_while_serving_is_refused_and_the_old_store_keeps_serving() {
    let sb = Sandbox::start(stand_in()).await.unwrap();
    let dir = config_dir(&sb);
    let mut gw = serve(dir.path()).await;
    bob_is_still_bob(&gw.base).await;
    let integrity = "cliniko_gateway_keystore_integrity_failures_total";
    assert_eq!(metric(&gw.admin, integrity).await, 0.0);

    // A signed change first: proves the file watch runs (and has its baseline) before the
    // attack, so the refusal below cannot be a missed poll.
    let store = dir.path().join("keys.json");
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    let key = cliniko_gateway::credentials::ApiKey::new(KEY_ALICE.into());
    add_key(&store, &master, "frank", &key, None).unwrap();
    gw.logs.wait_line("key store reloaded").await;
    assert_eq!(get(&gw.base, "frank", "/v1/patients").await.0, 200);

    // The file watch picks the edit up, as it did in the probe.
    give_bob_alices_key(&store);
    let line = gw.logs.wait_line("key store reload failed").await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["trigger"], "file", "{line}");
    assert_eq!(v["integrity"], true, "{line}");
    assert!(
        v["error"].as_str().unwrap().contains("integrity check"),
        "{line}"
    );
    bob_is_still_bob(&gw.base).await;
    assert_eq!(metric(&gw.admin, integrity).await, 1.0);
    let failed = "cliniko_gateway_keystore_reloads_total{trigger=\"file\",result=\"failed\"}";
    assert_eq!(metric(&gw.admin, failed).await, 1.0);

    // An explicit reload is refused too (422), with the same outcome.
    let (status, body) = admin(&gw.admin, "/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    bob_is_still_bob(&gw.base).await;
    assert_eq!(metric(&gw.admin, integrity).await, 2.0);

    gw.child.kill().await.unwrap();
    gw.logs.drain(Duration::from_secs(5)).await;
    for l in &gw.logs.seen {
        for secret in [KEY_ALICE, KEY_DAVE, HMAC, MASTER, ADMIN] {
            assert!(!l.contains(secret), "log line leaks a secret: {l}");
        }
    }
}

async fn admin(base: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = http::Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn keys_reseal_migrates_a_store_written_before_the_mac() {
    let sb = Sandbox::start(stand_in()).await.unwrap();
    let dir = config_dir(&sb);
    let store = dir.path().join("keys.json");
    make_version_1(&store);
    let (code, _, err) = run(binary(dir.path(), &["serve"])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("has no integrity MAC") && err.contains("keys reseal"),
        "{err}"
    );

    // An unsigned file proves nothing: a plain reseal refuses it (a downgrade to version 1
    // must not launder an edit), the explicit word signs it.
    let (code, _, err) = run(binary(dir.path(), &["keys", "reseal"])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--accept-edits"), "{err}");
    let (code, out, err) = run(binary(dir.path(), &["keys", "reseal", "--accept-edits"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("version 1 -> 2"), "{out}");
    assert!(out.contains("alice") && out.contains("bob"), "{out}");
    let v: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert_eq!(v["version"], 2);

    let mut gw = serve(dir.path()).await;
    bob_is_still_bob(&gw.base).await;
    assert_eq!(get(&gw.base, "alice", "/v1/patients").await.0, 200);
    gw.child.kill().await.unwrap();

    // A tampered file is not a migration: reseal refuses it unless told the edit is wanted.
    give_bob_alices_key(&store);
    let (code, _, err) = run(binary(dir.path(), &["keys", "reseal"])).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--accept-edits"), "{err}");
    let (code, out, err) = run(binary(dir.path(), &["keys", "reseal", "--accept-edits"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("edits included") && out.contains("erin"),
        "{out}"
    );
}

#[tokio::test]
async fn secret_files_readable_by_others_are_named_in_a_start_up_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let sb = Sandbox::start(stand_in()).await.unwrap();
    let dir = config_dir(&sb);
    let store = dir.path().join("keys.json");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The HMAC secret from a private file: not warned about.
    let secret = dir.path().join("hmac-secret");
    std::fs::write(&secret, HMAC).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = binary(dir.path(), &["serve"]);
    c.env_remove("CLINIKO_GATEWAY_HMAC_SECRET")
        .env("CLINIKO_GATEWAY__AUTH__HMAC_SECRET_FILE", &secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut logs = ChildLogs::capture(&mut child);
    let line = logs.wait_line("readable by group or others").await;
    logs.wait_line("gateway listening").await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["field"], "keystore.path", "{line}");
    assert_eq!(v["path"], store.display().to_string(), "{line}");
    assert_eq!(v["mode"], "644", "{line}");
    assert_eq!(v["fix"], format!("chmod 600 {}", store.display()), "{line}");
    let warned: Vec<_> = logs
        .seen
        .iter()
        .filter(|l| l.contains("readable by group or others"))
        .collect();
    assert_eq!(warned.len(), 1, "only the open file: {warned:?}");
    let contents = std::fs::read_to_string(&store).unwrap();
    let sealed = contents.split("\"sealed\": \"").nth(1).unwrap();
    for l in &logs.seen {
        assert!(!l.contains(HMAC) && !l.contains(&sealed[..20]), "{l}");
    }
    // Killed on drop: a SIGTERM this early could beat the signal handlers' installation.
    drop(child);
}
