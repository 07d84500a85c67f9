//! Rate limits over real sockets: a real stand-in whose receive timestamps are the measure, one
//! or two real gateways, and real `redis-server` processes these tests start themselves on
//! free loopback ports (CI installs the binary; locally, without it, the Redis tests say so
//! loudly and skip).
//!
//! Some tests send bursts and then read the stand-in's timestamps: the only waiting they do is
//! for time windows to pass, which is what is being measured. Synchronisation is done with
//! `wait_for_requests` and `RateLimits::wait_for_pauses`, never with sleeps.

use crate::support::{
    HMAC, KEY_ALICE, KEY_DAVE, MASTER, RedisServer, account, add_key, mint_hs, plain_client, token,
};
use bytes::Bytes;
use cliniko_gateway::Gateway;
use cliniko_gateway::config::{Env, load_str};
use cliniko_gateway::credentials::ApiKey;
use cliniko_gateway::ratelimit::RateLimits;
use cliniko_gateway::sandbox::{Fault, Recorded, Sandbox, SandboxOptions, TestPki};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY_ERIN: &str = "erinkey00000000000000000-au1";
const KEY_FRANK: &str = "frankkey0000000000000000-au1";

/// A stand-in on au1 and `n` gateways in front of it, sharing one key store.
pub(crate) struct Rig {
    pub(crate) sb: Sandbox,
    pub(crate) gws: Vec<Gateway>,
    bases: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

pub(crate) struct Reply {
    /// Unix seconds when the answer arrived.
    at_unix: f64,
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn header(&self, n: &str) -> &str {
        self.headers.get(n).map_or("", |v| v.to_str().unwrap())
    }
}

/// Users and the key each one uses (with an optional `cliniko_user` label).
pub(crate) type Users = Vec<(&'static str, &'static str, Option<&'static str>)>;

pub(crate) fn default_users() -> Users {
    vec![
        ("alice", KEY_ALICE, None),
        ("bob", KEY_ALICE, None),
        ("dave", KEY_DAVE, None),
        ("etl", KEY_ALICE, None),
        ("erin", KEY_ERIN, Some("jo")),
        ("frank", KEY_FRANK, Some("jo")),
    ]
}

impl Rig {
    async fn start(gateways: usize, ratelimit_toml: &str, extra_toml: &str) -> Rig {
        Rig::start_with(gateways, ratelimit_toml, extra_toml, default_users()).await
    }

    async fn start_with(
        gateways: usize,
        ratelimit_toml: &str,
        extra_toml: &str,
        users: Users,
    ) -> Rig {
        Rig::start_env(gateways, ratelimit_toml, extra_toml, users, &[]).await
    }

    /// [`Rig::start_with`] plus `CLINIKO_GATEWAY__…` overrides.
    pub(crate) async fn start_env(
        gateways: usize,
        ratelimit_toml: &str,
        extra_toml: &str,
        users: Users,
        extra_env: &[(&str, &str)],
    ) -> Rig {
        let pki = Arc::new(TestPki::new().unwrap());
        let sb = Sandbox::start(SandboxOptions {
            accounts: vec![
                account(KEY_ALICE, "Alice"),
                account(KEY_DAVE, "Dave"),
                account(KEY_ERIN, "Erin"),
                account(KEY_FRANK, "Frank"),
            ],
            pki: Some(pki.clone()),
            shard: "au1".into(),
            ..SandboxOptions::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[auth]
hmac_algorithms = ["HS256"]
[keystore]
path = "keys.json"
[upstream]
user_agent = "Gateway Tests (tests@example.invalid)"
ca_file = "ca.pem"
timeout = "5s"
connect_timeout = "2s"
[upstream.shards]
au1 = "{au1}"
{extra_toml}
[log]
format = "text"
{policy}
[ratelimit]
{ratelimit_toml}
"#,
            au1 = sb.base_url(),
            policy = crate::support::ALLOW_ALL_POLICY,
        );
        let mut env = Env(BTreeMap::from([
            ("CLINIKO_GATEWAY_HMAC_SECRET".to_string(), HMAC.to_string()),
            ("CLINIKO_GATEWAY_MASTER_KEY".to_string(), MASTER.to_string()),
        ]));
        env.0.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut gws = vec![];
        let mut bases = vec![];
        for i in 0..gateways {
            let cfg = load_str(&text, dir.path(), &env).unwrap();
            if i == 0 {
                let master = cfg.keystore.master_key.as_ref().unwrap();
                for (user, key, label) in &users {
                    add_key(
                        &cfg.keystore.path,
                        master,
                        user,
                        &ApiKey::new((*key).into()),
                        *label,
                    )
                    .unwrap();
                }
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bases.push(format!("http://{}", listener.local_addr().unwrap()));
            gws.push(Gateway::start(cfg, listener).await.unwrap());
        }
        Rig {
            sb,
            gws,
            bases,
            client: plain_client(),
            _dir: dir,
        }
    }

    pub(crate) fn limits(&self, i: usize) -> Arc<RateLimits> {
        self.gws[i].live().ratelimits.clone()
    }

    pub(crate) async fn send(
        &self,
        gw: usize,
        method: Method,
        path: &str,
        auth: &str,
        body: &str,
    ) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.bases[gw]))
            .header("authorization", auth)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            at_unix: unix_now(),
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, gw: usize, user: &str, path: &str) -> Reply {
        let auth = format!("Bearer {}", token(user));
        self.send(gw, Method::GET, path, &auth, "").await
    }

    /// Stand-in arrivals on `path`.
    fn arrivals(&self, path: &str) -> Vec<Recorded> {
        self.sb
            .requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }
}

fn token_with_groups(sub: &str, groups: &[&str]) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("groups".into(), serde_json::json!(groups));
    mint_hs(
        &secrecy::SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(3600),
        claims,
    )
    .unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Our 429 for `limit`, with every documented header.
fn assert_our_429(r: &Reply, limit: &str, quota: u32, window: u64) {
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["error"]["code"], "rate_limited");
    assert_eq!(j["error"]["limit"], limit);
    assert!(
        j["error"]["message"].as_str().unwrap().contains(limit),
        "the message names the limit"
    );
    assert_eq!(r.header("x-gateway-error"), "rate_limited");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(
        r.header("ratelimit-policy"),
        format!("\"{limit}\";q={quota};w={window}")
    );
    assert_eq!(r.header("ratelimit"), format!("\"{limit}\";r=0;t={retry}"));
    assert_eq!(r.header("x-ratelimit-limit"), quota.to_string());
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    let reset: f64 = r.header("x-ratelimit-reset").parse().unwrap();
    assert!(reset >= r.at_unix.floor() && reset <= r.at_unix + retry as f64 + 1.0);
}

/// For every arrival t: arrivals in [t, t + 1 s) stay within `most`, and the total within
/// `burst + rate · span` (+ `slack` for scheduling noise on a loaded 2-core machine).
fn assert_within_budget(at: &[Instant], rate: f64, burst: usize, slack: usize) {
    let mut at = at.to_vec();
    at.sort();
    let most = burst + rate as usize + slack;
    for (i, t) in at.iter().enumerate() {
        let n = at[i..]
            .iter()
            .take_while(|x| x.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(n <= most, "{n} arrivals within one second (budget {most})");
    }
    if let (Some(first), Some(last)) = (at.first(), at.last()) {
        let span = last.duration_since(*first).as_secs_f64();
        let allowed = burst as f64 + rate * span + slack as f64;
        assert!(
            at.len() as f64 <= allowed,
            "{} arrivals in {span:.2}s (allowed {allowed:.1})",
            at.len()
        );
    }
}

/// A `redis-server` of our own on a free loopback port; killed on drop.
/// Open-loop load: `n` GETs on `path`, one every `every`, each on its own task (so waiting
/// ones do not hold the others back), alternating users of one key and the gateways. Returns
/// every reply with the gateway that gave it. The schedule only spreads load over time; it
/// synchronises nothing.
async fn spread(
    rig: &Arc<Rig>,
    n: usize,
    every: Duration,
    path: &'static str,
) -> Vec<(usize, Reply)> {
    let start = tokio::time::Instant::now();
    let mut tasks = vec![];
    for i in 0..n {
        let rig = rig.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + every * i as u32).await;
            let gw = i % rig.gws.len();
            let user = if (i / 2) % 2 == 0 { "alice" } else { "bob" };
            (gw, rig.get(gw, user, path).await)
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all
}

const BUDGET_10_PER_S: &str = r#"
max_wait = "500ms"
[ratelimit.key]
rate = 10
period = "1s"
burst = 5
[ratelimit.user]
enabled = false
"#;

#[tokio::test]
async fn two_hundred_requests_on_one_key_reach_cliniko_within_the_budget() {
    let rig = Arc::new(Rig::start(1, BUDGET_10_PER_S, "").await);
    let replies = spread(&rig, 200, Duration::from_millis(15), "/v1/user").await;
    assert_eq!(replies.len(), 200);
    let ok = replies.iter().filter(|(_, r)| r.status == 200).count();
    for (_, r) in replies.iter().filter(|(_, r)| r.status != 200) {
        assert_our_429(r, "key", 10, 1);
    }
    let arrivals: Vec<Instant> = rig.arrivals("/v1/user").iter().map(|r| r.at).collect();
    assert_eq!(
        arrivals.len(),
        ok,
        "every 200 went upstream once, no 429 did"
    );
    assert_within_budget(&arrivals, 10.0, 5, 2);
    // About 5 + 10/s over 3 s: the budget is used, not just enforced.
    assert!(ok >= 15, "only {ok} got through");
    let shaped = rig.limits(0).stats().shaped.load(Ordering::Relaxed);
    assert!(
        shaped > 0,
        "some requests waited for their slot instead of a 429"
    );
}

const NO_WAIT_3_PER_MIN: &str = r#"
max_wait = "0s"
[ratelimit.key]
rate = 1
period = "60s"
burst = 3
[ratelimit.user]
enabled = false
"#;

#[tokio::test]
async fn users_of_one_key_share_it_keys_are_independent_and_labelled_keys_share() {
    let rig = Rig::start(1, NO_WAIT_3_PER_MIN, "").await;
    let path = "/v1/user";
    assert_eq!(rig.get(0, "alice", path).await.status, 200);
    assert_eq!(rig.get(0, "alice", path).await.status, 200);
    assert_eq!(rig.get(0, "bob", path).await.status, 200);
    assert_our_429(&rig.get(0, "bob", path).await, "key", 1, 60);
    assert_our_429(&rig.get(0, "alice", path).await, "key", 1, 60);
    // Dave's key has its own budget.
    for _ in 0..3 {
        assert_eq!(rig.get(0, "dave", path).await.status, 200);
    }
    assert_eq!(rig.get(0, "dave", path).await.status, 429);
    // Erin's and Frank's keys belong to one Cliniko user ("jo"): one budget.
    assert_eq!(rig.get(0, "erin", path).await.status, 200);
    assert_eq!(rig.get(0, "frank", path).await.status, 200);
    assert_eq!(rig.get(0, "erin", path).await.status, 200);
    assert_our_429(&rig.get(0, "frank", path).await, "key", 1, 60);
    assert_eq!(rig.arrivals(path).len(), 9);
}

#[tokio::test]
async fn a_lower_user_limit_trips_before_the_key_limit() {
    let toml = r#"
max_wait = "0s"
[ratelimit.key]
rate = 1
period = "60s"
burst = 30
[ratelimit.user]
default = { rate = 2, period = "60s", burst = 2 }
groups = { sync = { rate = 4, period = "60s", burst = 4 } }
users = { etl = { rate = 6, period = "60s", burst = 6 } }
"#;
    let rig = Rig::start(1, toml, "").await;
    let path = "/v1/user";
    assert_eq!(rig.get(0, "alice", path).await.status, 200);
    assert_eq!(rig.get(0, "alice", path).await.status, 200);
    assert_our_429(&rig.get(0, "alice", path).await, "user", 2, 60);
    // Bob shares alice's key, whose budget is far from spent.
    let sync = format!("Bearer {}", token_with_groups("bob", &["other", "sync"]));
    for _ in 0..4 {
        assert_eq!(rig.send(0, Method::GET, path, &sync, "").await.status, 200);
    }
    assert_our_429(
        &rig.send(0, Method::GET, path, &sync, "").await,
        "user",
        4,
        60,
    );
    for _ in 0..6 {
        assert_eq!(rig.get(0, "etl", path).await.status, 200);
    }
    assert_our_429(&rig.get(0, "etl", path).await, "user", 6, 60);
    assert_eq!(rig.arrivals(path).len(), 12);
}

#[tokio::test]
async fn cache_hits_401s_and_403s_spend_no_key_budget() {
    let toml = r#"
max_wait = "0s"
[ratelimit.key]
rate = 1
period = "60s"
burst = 2
"#;
    let rig = Rig::start(1, toml, "").await;
    for _ in 0..5 {
        let r = rig
            .send(0, Method::GET, "/v1/user", "Bearer nope", "")
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(rig.get(0, "mallory", "/v1/user").await.status, 403);
    }
    for _ in 0..5 {
        // One miss (spends one), then hits.
        assert_eq!(rig.get(0, "alice", "/v1/practitioners").await.status, 200);
    }
    assert_eq!(rig.get(0, "bob", "/v1/user").await.status, 200);
    assert_our_429(&rig.get(0, "bob", "/v1/user").await, "key", 1, 60);
    assert_eq!(rig.sb.requests().len(), 2);
}

const PATIENTS: &str = "/v1/patients";

#[tokio::test]
async fn clinikos_429_with_a_reset_pauses_the_key_and_a_get_is_retried() {
    let toml = r#"
max_wait = "3s"
[ratelimit.key]
rate = 10
period = "1s"
burst = 5
"#;
    let rig = Arc::new(Rig::start(1, toml, "").await);
    // Whole seconds on the wire: at least 1.2 s ahead whatever the fraction of now.
    let reset = (unix_now() + 1.2).ceil() as u64;
    rig.sb.set_fault(
        PATIENTS,
        Fault::WithHeaders(
            429,
            vec![("x-ratelimit-reset".into(), reset.to_string())],
            "Too Many Requests".into(),
        ),
    );
    let a = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.get(0, "alice", PATIENTS).await })
    };
    tokio::time::timeout(Duration::from_secs(5), rig.sb.wait_for_requests(1))
        .await
        .unwrap();
    rig.sb.clear_fault(PATIENTS);
    tokio::time::timeout(Duration::from_secs(5), rig.limits(0).wait_for_pauses(1))
        .await
        .unwrap();
    // Another key is not paused; bob, on alice's key, waits for the pause.
    assert_eq!(rig.get(0, "dave", "/v1/user").await.status, 200);
    let b = rig.get(0, "bob", "/v1/user").await;
    assert_eq!(b.status, 200);
    let a = a.await.unwrap();
    assert_eq!(a.status, 200, "the GET was retried and succeeded");
    assert!(a.json()["patients"].is_array());

    let seen = rig.sb.requests();
    let first = &seen[0];
    assert_eq!(first.path(), PATIENTS);
    let retry = seen.iter().skip(1).find(|r| r.path() == PATIENTS).unwrap();
    assert!(retry.at.duration_since(first.at) >= Duration::from_secs(1));
    let dave = seen.iter().find(|r| r.path() == "/v1/user").unwrap();
    assert!(dave.at < retry.at, "dave's key went during alice's pause");
    let bob = seen.iter().rev().find(|r| r.path() == "/v1/user").unwrap();
    assert!(
        bob.at.duration_since(first.at) >= Duration::from_secs(1),
        "bob's request waited for the pause"
    );
    let retries = rig.gws[0].live().retries.clone();
    assert_eq!(retries.stats().throttled.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn clinikos_429_with_retry_after_a_post_is_never_retried_and_a_get_is() {
    let toml = r#"
max_wait = "2s"
[ratelimit.key]
rate = 10
period = "1s"
burst = 5
"#;
    let rig = Arc::new(Rig::start(1, toml, "").await);
    rig.sb.set_fault(
        PATIENTS,
        Fault::WithHeaders(
            429,
            vec![("retry-after".into(), "1".into())],
            "Too Many Requests".into(),
        ),
    );
    let auth = format!("Bearer {}", token("alice"));
    let post = rig
        .send(0, Method::POST, PATIENTS, &auth, r#"{"first_name":"Ann"}"#)
        .await;
    assert_eq!(post.status, 429, "Cliniko's 429 is passed on");
    assert_eq!(post.header("retry-after"), "1");
    assert_eq!(post.header("x-gateway-error"), "", "it is Cliniko's answer");
    assert_eq!(rig.sb.requests().len(), 1, "the POST was not resent");

    // The POST's 429 paused the key: this GET waits for it, meets the 429 again, waits
    // Retry-After again and is retried once (the fault is gone by then).
    let a = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.get(0, "alice", PATIENTS).await })
    };
    tokio::time::timeout(Duration::from_secs(5), rig.sb.wait_for_requests(2))
        .await
        .unwrap();
    rig.sb.clear_fault(PATIENTS);
    let a = a.await.unwrap();
    assert_eq!(a.status, 200);
    let seen = rig.sb.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, "POST");
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1));
    assert!(seen[2].at.duration_since(seen[1].at) >= Duration::from_secs(1));
}

#[tokio::test]
async fn two_gateways_sharing_redis_stay_within_one_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A 5 s timeout: a busy machine has held Redis's answer past the 100 ms default, and a
    // replica deciding locally then is not the sharing measured here.
    let redis_toml = format!("[redis]\nurl = \"{}\"\ntimeout = \"5s\"\n", redis.url);
    let rig = Arc::new(Rig::start(2, BUDGET_10_PER_S, &redis_toml).await);
    let replies = spread(&rig, 200, Duration::from_millis(15), "/v1/user").await;
    let ok = replies.iter().filter(|(_, r)| r.status == 200).count();
    for (_, r) in replies.iter().filter(|(_, r)| r.status != 200) {
        assert_our_429(r, "key", 10, 1);
    }
    for gw in 0..2 {
        let served = replies
            .iter()
            .filter(|(g, r)| *g == gw && r.status == 200)
            .count();
        let limits = rig.limits(gw);
        let s = limits.stats();
        assert!(
            served > 0,
            "gateway {gw} served nothing (ok {ok}, refused {}, shaped {}, redis failures {})",
            s.refused_key.load(Ordering::Relaxed),
            s.shaped.load(Ordering::Relaxed),
            s.redis_failures.load(Ordering::Relaxed)
        );
    }
    let arrivals: Vec<Instant> = rig.arrivals("/v1/user").iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), ok);
    assert_within_budget(&arrivals, 10.0, 5, 2);
    assert!(ok >= 15, "only {ok} got through");
    let mut refused = 0;
    for i in 0..2 {
        let limits = rig.limits(i);
        let s = limits.stats();
        assert_eq!(s.redis_failures.load(Ordering::Relaxed), 0);
        refused += s.refused_key.load(Ordering::Relaxed);
    }
    // One gateway alone could send 5 + 10/s; together they were held to that too.
    assert_eq!(refused as usize, 200 - ok);
}

#[tokio::test]
async fn redis_killed_mid_run_fails_open_within_the_local_budget() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // Two replicas: while Redis is down each keeps half the budget (5/s, burst 2). A busy
    // machine has held a live Redis's answer past the 100 ms default (the warm-up then met
    // the half budget); a killed one refuses at once, so a longer timeout costs nothing.
    let redis_toml = format!(
        "[redis]\nurl = \"{}\"\nfailure = \"open\"\ntimeout = \"900ms\"\n",
        redis.url
    );
    let toml = format!(
        "replicas = 2\n{}",
        BUDGET_10_PER_S.replace("max_wait = \"500ms\"", "max_wait = \"0s\"")
    );
    let rig = Rig::start(1, &toml, &redis_toml).await;
    for _ in 0..3 {
        assert_eq!(rig.get(0, "alice", "/v1/user").await.status, 200);
    }
    redis.kill();
    rig.sb.clear();
    let started = Instant::now();
    let mut ok = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let r = rig.get(0, "alice", "/v1/user").await;
        assert!(t.elapsed() < Duration::from_secs(1), "never a hang");
        if r.status == 200 {
            ok += 1;
        } else {
            assert_our_429(&r, "key", 5, 1);
        }
    }
    let span = started.elapsed().as_secs_f64();
    assert!(ok >= 1, "kept serving");
    assert!(
        (ok as f64) <= 2.0 + 5.0 * span + 1.0,
        "{ok} in {span:.2}s is over the local budget"
    );
    let limits = rig.limits(0);
    let s = limits.stats();
    assert!(s.redis_failures.load(Ordering::Relaxed) >= 1);
    assert!(s.fail_open.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn redis_killed_mid_run_fails_closed_with_503() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let redis_toml = format!("[redis]\nurl = \"{}\"\nfailure = \"closed\"\n", redis.url);
    let rig = Rig::start(1, BUDGET_10_PER_S, &redis_toml).await;
    assert_eq!(rig.get(0, "alice", "/v1/user").await.status, 200);
    redis.kill();
    rig.sb.clear();
    for _ in 0..3 {
        let t = Instant::now();
        let r = rig.get(0, "alice", "/v1/user").await;
        assert!(t.elapsed() < Duration::from_secs(1), "never a hang");
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"]["code"], "rate_limiter_unavailable");
    }
    assert_eq!(
        rig.sb.requests().len(),
        0,
        "nothing went upstream unmetered"
    );
}

/// A shard `ca1` that accepts TCP and hangs up at once (every TLS handshake fails before a
/// request is sent), its accept count, and user `gina` whose key is on it.
async fn hang_up_shard() -> (Arc<AtomicUsize>, String, Users) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let extra = format!("ca1 = \"https://127.0.0.1:{port}/v1\"");
    let mut users = default_users();
    users.push(("gina", "ginakey00000000000000000-ca1", None));
    (accepts, extra, users)
}

#[tokio::test]
async fn connect_failures_are_retried_for_bodiless_requests_only() {
    let (accepts, extra, users) = hang_up_shard().await;
    let rig = Rig::start_with(1, "", &extra, users).await;
    let auth = format!("Bearer {}", token("gina"));
    let r = rig.send(0, Method::GET, "/v1/user", &auth, "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(accepts.load(Ordering::SeqCst), 3, "one try and two retries");
    let r = rig.send(0, Method::DELETE, "/v1/user/1", &auth, "").await;
    assert_eq!(r.status, 502);
    assert_eq!(accepts.load(Ordering::SeqCst), 6, "bodiless DELETE retried");
    let r = rig.send(0, Method::POST, "/v1/patients", &auth, "{}").await;
    assert_eq!(r.status, 502);
    assert_eq!(accepts.load(Ordering::SeqCst), 7, "a body is never resent");
    assert_eq!(
        rig.gws[0]
            .live()
            .retries
            .stats()
            .connect
            .load(Ordering::Relaxed),
        4
    );
}

/// The old name `ratelimit.connect_retries` still sets the connect resends (config.rs checks
/// its warning).
#[tokio::test]
async fn the_deprecated_connect_retries_still_sets_the_connect_resends() {
    let (accepts, extra, users) = hang_up_shard().await;
    let rig = Rig::start_with(1, "connect_retries = 1\n", &extra, users).await;
    let auth = format!("Bearer {}", token("gina"));
    let r = rig.send(0, Method::GET, "/v1/user", &auth, "").await;
    assert_eq!(r.status, 502);
    assert_eq!(accepts.load(Ordering::SeqCst), 2, "one try and one retry");
}

/// `throttled = false`: Cliniko's 429 on a GET is passed on (with its wait), not resent; the
/// key is still paused.
#[tokio::test]
async fn with_throttled_resends_off_clinikos_429_is_passed_on() {
    let extra = "[upstream.retries]\nthrottled = false\n";
    let rig = Rig::start(1, "max_wait = \"2s\"\n", extra).await;
    rig.sb.set_fault(
        PATIENTS,
        Fault::WithHeaders(
            429,
            vec![("retry-after".into(), "1".into())],
            "Too Many Requests".into(),
        ),
    );
    let r = rig.get(0, "alice", PATIENTS).await;
    assert_eq!((r.status.as_u16(), r.header("retry-after")), (429, "1"));
    assert_eq!(rig.sb.requests().len(), 1, "the GET was not resent");
    let stats = rig.limits(0);
    assert_eq!(stats.stats().upstream_throttled.load(Ordering::Relaxed), 1);
}

/// Resends are not limits: with `enabled = false` (and no wait allowed for a budget) a
/// connection failure of a bodiless request and Cliniko's 429 on a GET (wait within
/// `upstream.retries.max_wait`) are still retried as `[upstream.retries]` says.
#[tokio::test]
async fn with_limits_off_connect_failures_and_clinikos_429_are_still_retried() {
    let (accepts, extra, users) = hang_up_shard().await;
    let extra = format!(
        "{extra}\n[upstream.retries]\nconnect = 3\nbackoff = \"10ms\"\nmax_wait = \"2s\"\n"
    );
    let limits_off = "enabled = false\nmax_wait = \"0s\"\n";
    let rig = Arc::new(Rig::start_with(1, limits_off, &extra, users).await);
    let auth = format!("Bearer {}", token("gina"));
    let r = rig.send(0, Method::GET, "/v1/user", &auth, "").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        4,
        "one try and three retries"
    );

    rig.sb.set_fault(
        PATIENTS,
        Fault::WithHeaders(
            429,
            vec![("retry-after".into(), "1".into())],
            "Too Many Requests".into(),
        ),
    );
    let a = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.get(0, "alice", PATIENTS).await })
    };
    tokio::time::timeout(Duration::from_secs(5), rig.sb.wait_for_requests(1))
        .await
        .unwrap();
    rig.sb.clear_fault(PATIENTS);
    let a = a.await.unwrap();
    assert_eq!(a.status, 200, "the GET was resent after Cliniko's wait");
    let seen = rig.sb.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1));
}
