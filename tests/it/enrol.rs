//! Self-service enrolment over real sockets: a person connects their own key (checked with the
//! stand-in), the next `/v1` request uses it, a refused key stores nothing, a removed key
//! means 403 `no_credential`, bad input gets its code, two people cannot hold one key (even
//! racing), and the key is never in a log line, a response or `/metrics`.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::credentials;
use http::Method;
use std::process::Stdio;
use tokio::process::Command;

pub const API: &str = "/gateway/v1/me/cliniko-key";
/// A well-formed key the stand-in does not know.
const KEY_UNKNOWN: &str = "unknownkey00000000000000-au1";

/// Enrolment on; `scope` carries grants, `cliniko:connect` among them for enrolling.
pub const POLICY: &str = "[policy]\nclaims = [\"scope\"]\n[policy.grants.read]\nmethods = [\"GET\"]\npaths = [\"/v1\"]\n[enrol]\nenabled = true\n";

/// Alice's and dave's accounts on the au1 stand-in; nobody stored, no key-store file yet.
pub fn setup() -> Setup {
    Setup {
        shards: vec![(
            "au1",
            vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
        )],
        users: vec![],
        policy_toml: POLICY.into(),
        ..Setup::default()
    }
}

/// A token allowed to enrol and read.
pub fn connect_token(user: &str) -> String {
    token_scoped(user, "cliniko:connect read")
}

/// `method` on the enrolment API as `user`, with `body`.
pub async fn call(h: &Harness, method: Method, token: &str, body: impl Into<Bytes>) -> Got {
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    h.send(method, API, &headers, body).await
}

/// `PUT {"key": key}` as `user`.
pub async fn put_key(h: &Harness, user: &str, key: &str) -> Got {
    let body = serde_json::json!({ "key": key }).to_string();
    call(h, Method::PUT, &connect_token(user), body).await
}

async fn patients(h: &Harness, user: &str) -> Got {
    let auth = format!("Bearer {}", connect_token(user));
    h.send(
        Method::GET,
        "/v1/patients",
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
}

fn basic(key: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    format!("Basic {b64}")
}

#[tokio::test]
async fn enrol_then_the_next_request_uses_the_new_key_and_delete_means_no_credential() {
    let h = Harness::start(setup()).await;
    assert!(!h.dir().join("keys.json").exists(), "starts with no file");
    let before = patients(&h, "dave").await;
    assert_eq!(
        (before.status.as_u16(), before.code().as_str()),
        (403, "no_credential")
    );

    let put = put_key(&h, "dave", KEY_DAVE).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let v = put.json();
    assert_eq!(v["fingerprint"], credentials::fingerprint(KEY_DAVE));
    assert_eq!(v["shard"], "au1");
    assert_eq!(v["cliniko_user"], "Dave Owner");
    assert!(
        v["verified_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert!(!put.text().contains(KEY_DAVE));
    let sb = h.sandbox("au1");
    let checked = sb.requests();
    let check = checked.last().expect("the key was checked with Cliniko");
    assert_eq!(check.path(), "/v1/user");
    assert_eq!(
        check.header("authorization"),
        Some(basic(KEY_DAVE).as_str())
    );

    let after = patients(&h, "dave").await;
    assert_eq!(after.status, 200, "{}", after.text());
    let last = sb.requests().pop().unwrap();
    assert_eq!(last.path(), "/v1/patients");
    assert_eq!(last.header("authorization"), Some(basic(KEY_DAVE).as_str()));
    // Stored sealed, labelled with the Cliniko user's id (its budget), created by enrolment.
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    let store = load_keys(&h.dir().join("keys.json"), &master).unwrap();
    let rows = store.sorted();
    assert_eq!(rows.len(), 1);
    let label = rows[0].1.cliniko_user.as_deref().expect("labelled");
    assert!(
        !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
        "{label}"
    );
    let raw = std::fs::read_to_string(h.dir().join("keys.json")).unwrap();
    assert!(
        !raw.contains(KEY_DAVE) && raw.contains("verified_at"),
        "{raw}"
    );

    let got = call(&h, Method::GET, &connect_token("dave"), Bytes::new()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["fingerprint"], v["fingerprint"]);
    assert_eq!(got.json()["verified_at"], v["verified_at"]);

    let del = call(&h, Method::DELETE, &connect_token("dave"), Bytes::new()).await;
    assert_eq!(del.status, 200, "{}", del.text());
    let gone = patients(&h, "dave").await;
    assert_eq!(
        (gone.status.as_u16(), gone.code().as_str()),
        (403, "no_credential")
    );
    let none = call(&h, Method::GET, &connect_token("dave"), Bytes::new()).await;
    assert_eq!(
        (none.status.as_u16(), none.code().as_str()),
        (404, "no_credential")
    );
    let again = call(&h, Method::DELETE, &connect_token("dave"), Bytes::new()).await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn a_refused_or_malformed_key_stores_nothing_and_says_why() {
    let (_held, refusing) = refusing_port();
    let mut s = setup();
    s.overrides.push((
        "CLINIKO_GATEWAY__UPSTREAM__SHARDS__UK3",
        format!("https://127.0.0.1:{refusing}"),
    ));
    let h = Harness::start(s).await;
    let refused = put_key(&h, "dave", KEY_UNKNOWN).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code().as_str()),
        (422, "key_refused")
    );
    let down = put_key(&h, "dave", "somekey000000000000000-uk3").await;
    assert_eq!(
        (down.status.as_u16(), down.code().as_str()),
        (503, "cliniko_unreachable")
    );
    for (key, why) in [
        ("abc-", "shard suffix"),
        ("abc-xx", "shard suffix"),
        ("has space-au1", "whitespace"),
        ("", "empty"),
    ] {
        let g = put_key(&h, "dave", key).await;
        assert_eq!(
            (g.status.as_u16(), g.code().as_str()),
            (400, "invalid_key"),
            "{key}"
        );
        assert!(
            g.json()["error"]["message"].as_str().unwrap().contains(why),
            "{}",
            g.text()
        );
    }
    let dave = connect_token("dave");
    for body in [
        "",
        "{",
        "{\"key\": 7}",
        "{\"key\": \"a-au1\", \"x\": 1}",
        "[]",
    ] {
        let g = call(&h, Method::PUT, &dave, body).await;
        assert_eq!(
            (g.status.as_u16(), g.code().as_str()),
            (400, "bad_body"),
            "{body}"
        );
    }
    let big = format!("{{\"key\": \"{}\"}}", "a".repeat(5000));
    let g = call(&h, Method::PUT, &dave, big).await;
    assert_eq!(
        (g.status.as_u16(), g.code().as_str()),
        (413, "body_too_large")
    );
    let g = call(&h, Method::PUT, &token_scoped("dave", "read"), "{}").await;
    assert_eq!((g.status.as_u16(), g.code().as_str()), (403, "forbidden"));
    assert!(g.text().contains("cliniko:connect"), "{}", g.text());
    let g = h.send(Method::PUT, API, &[], Bytes::new()).await;
    assert_eq!(g.status, 401);
    let g = call(&h, Method::POST, &dave, "{}").await;
    assert_eq!(g.status, 405);
    // Nothing was stored by any of it: no file, no key.
    assert!(!h.dir().join("keys.json").exists());
    let none = call(&h, Method::GET, &dave, Bytes::new()).await;
    assert_eq!(none.status, 404);
}

#[tokio::test]
async fn a_key_someone_else_connected_is_refused_without_saying_whose_even_when_racing() {
    let h = Harness::start(setup()).await;
    // Two people paste the same key at the same moment: exactly one gets it.
    let (a, b) = tokio::join!(put_key(&h, "erin", KEY_DAVE), put_key(&h, "dave", KEY_DAVE));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text(), b.text());
    let (winner, loser) = if a.status == 200 {
        ("erin", b)
    } else {
        ("dave", a)
    };
    assert_eq!(loser.code(), "key_in_use");
    assert!(!loser.text().contains(winner), "{}", loser.text());
    // The holder may connect it again (a re-check), and still nobody else can.
    assert_eq!(put_key(&h, winner, KEY_DAVE).await.status, 200);
    let other = if winner == "erin" { "dave" } else { "erin" };
    assert_eq!(put_key(&h, other, KEY_DAVE).await.status, 409);
    assert_eq!(patients(&h, other).await.code(), "no_credential");
    // Replacing one's own key drops the old one: then it is free for its owner.
    assert_eq!(put_key(&h, winner, KEY_ALICE).await.status, 200);
    assert_eq!(put_key(&h, other, KEY_DAVE).await.status, 200);
}

#[tokio::test]
async fn the_page_is_served_with_a_hash_only_policy() {
    let h = Harness::start(setup()).await;
    let page = h
        .send(Method::GET, "/gateway/connect", &[], Bytes::new())
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(page.headers[name], value, "{name}");
    }
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(page.text().contains("<label for=\"key\">"));
    // Off (the default): the routes are 404s like any other path outside /v1.
    let off = Harness::start(Setup::default()).await;
    let g = off
        .send(Method::GET, "/gateway/connect", &[], Bytes::new())
        .await;
    assert_eq!(
        (g.status.as_u16(), g.code().as_str()),
        (404, "route_not_found")
    );
}

/// The real binary at `RUST_LOG=trace` on the config in `dir` (enrolment and the admin
/// listener on): the child, its output, its public and admin base URLs.
async fn serve_binary(dir: &std::path::Path) -> (tokio::process::Child, ChildLogs, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(["serve", "--config"])
        .arg(dir.join("gw.toml"))
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env("CLINIKO_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = ChildLogs::capture(&mut child);
    let admin_line = logs.wait_line("admin listening").await;
    let listening = logs.wait_line("gateway listening").await;
    let field = |l: &str, f: &str| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        format!("http://{}", v[f].as_str().unwrap())
    };
    let base = field(&listening, "local_addr");
    (child, logs, base, field(&admin_line, "admin_addr"))
}

/// One request; its response head and body as text.
async fn exchange(method: Method, url: String, auth: String, body: String) -> String {
    use http_body_util::BodyExt as _;
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", auth)
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let r = plain_client().request(req).await.unwrap();
    let head = format!("{:?}", r.headers());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    format!("{head}{}", String::from_utf8_lossy(&body))
}

#[tokio::test]
async fn the_key_never_appears_in_logs_responses_or_metrics() {
    let sb = cliniko_gateway::sandbox::Sandbox::start(cliniko_gateway::sandbox::SandboxOptions {
        accounts: vec![account(KEY_DAVE, "Dave")],
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let dir = process_config_dir(&sb, "", &format!("{POLICY}{admin}"), &[]);
    let (mut child, mut logs, base, admin_base) = serve_binary(dir.path()).await;
    let url = format!("{base}{API}");
    let auth = format!("Bearer {}", connect_token("dave"));
    let body = |k: &str| serde_json::json!({ "key": k }).to_string();
    let mut seen = vec![];
    for key in [KEY_DAVE, KEY_UNKNOWN, "bad key-au1", KEY_DAVE] {
        seen.push(exchange(Method::PUT, url.clone(), auth.clone(), body(key)).await);
    }
    seen.push(exchange(Method::GET, url.clone(), auth.clone(), String::new()).await);
    let patients = format!("{base}/v1/patients");
    seen.push(exchange(Method::GET, patients, auth.clone(), String::new()).await);
    let erin = format!("Bearer {}", connect_token("erin"));
    seen.push(exchange(Method::PUT, url.clone(), erin, body(KEY_DAVE)).await);
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let metrics = format!("{admin_base}/metrics");
    seen.push(exchange(Method::GET, metrics, admin_auth, String::new()).await);
    assert!(
        seen[0].contains(&credentials::fingerprint(KEY_DAVE)),
        "{}",
        seen[0]
    );
    assert!(seen[6].contains("key_in_use"), "{}", seen[6]);
    assert!(
        seen[7].contains("cliniko_gateway"),
        "metrics were read: {}",
        seen[7]
    );
    let _ = child.start_kill();
    logs.drain(std::time::Duration::from_secs(10)).await;
    let audit: Vec<_> = logs
        .seen
        .iter()
        .filter(|l| l.contains("\"cliniko_key\""))
        .collect();
    assert!(audit.len() >= 4, "every PUT is an audit record: {audit:?}");
    let b64 = basic(KEY_DAVE);
    for key in [KEY_DAVE, KEY_UNKNOWN, &b64[6..], &KEY_DAVE[..16]] {
        for s in seen.iter().chain(&logs.seen) {
            assert!(!s.contains(key), "{key} leaked: {s}");
        }
    }
}
