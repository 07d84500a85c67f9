//! One cache across replicas: two real `serve` processes sharing a real `redis-server`. A
//! write or an admin purge on one replica drops the same entries on the other (the stand-in's
//! request log proves the other went to Cliniko again); Redis killed and restarted on the same
//! port makes both clear their caches when they resubscribe, so nothing stale survives the
//! outage. Cache TTLs are 5 minutes here: only the invalidations can explain a fresh answer.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::sandbox::{Fault, Sandbox, SandboxOptions, seeded_patient_id};
use http::Method;
use http_body_util::{BodyExt, Full};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const CACHE: &str = "[cache]\nrules = [{ prefix = \"/v1/patients\", ttl = \"5m\" }, \
                     { prefix = \"/v1/practitioners\", ttl = \"5m\" }]\n";

/// A `serve` process with its admin port on.
struct Replica {
    _child: Child,
    _logs: ChildLogs,
    base: String,
    admin: String,
}

fn field(line: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    format!("http://{}", v[name].as_str().unwrap())
}

impl Replica {
    async fn start(dir: &Path) -> Replica {
        let r = Replica::spawn(dir, &[]).await;
        r.until("subscribed", |m| sample(m, SUBSCRIBED) == 1.0)
            .await;
        r
    }

    /// Started and listening, subscribed or not; `env` overrides the config.
    async fn spawn(dir: &Path, env: &[(&str, &str)]) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
            .args(["serve", "--config"])
            .arg(dir.join("gw.toml"))
            .envs(env.iter().copied())
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
        let admin = field(&logs.wait_line("admin listening").await, "admin_addr");
        let base = field(&logs.wait_line("gateway listening").await, "local_addr");
        Replica {
            _child: child,
            _logs: logs,
            base,
            admin,
        }
    }

    async fn get(&self, user: &str, path: &str) -> Got {
        let auth = format!("Bearer {}", token(user));
        call(
            &self.base,
            Method::GET,
            path,
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    async fn patch(&self, user: &str, path: &str, json: &'static str) -> Got {
        let auth = format!("Bearer {}", token(user));
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        call(&self.base, Method::PATCH, path, &headers, json).await
    }

    async fn purge(&self, query: &str) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let path = format!("/admin/cache/purge?{query}");
        let r = call(
            &self.admin,
            Method::POST,
            &path,
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    async fn metrics(&self) -> String {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let r = call(
            &self.admin,
            Method::GET,
            "/metrics",
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        r.text()
    }

    /// Polls `/metrics` until `ok` holds (at most 20 s).
    async fn until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics().await;
            if ok(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const SUBSCRIBED: &str = "cliniko_gateway_cache_invalidation_subscribed";
const CLEARS: &str = "cliniko_gateway_cache_resubscribe_clears_total";
const ENTRIES: &str = "cliniko_gateway_cache_entries";

fn invalidations(event: &str) -> String {
    format!("cliniko_gateway_cache_invalidations_total{{event=\"{event}\"}}")
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Got {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = plain_client()
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A stand-in with two accounts (alice and bob share a key; dave has his own), a redis-server
/// and two replicas configured with it.
async fn two_replicas() -> Option<(RedisServer, Sandbox, tempfile::TempDir, Replica, Replica)> {
    let (redis, sb, dir) = stand_in_and_redis().await?;
    let a = Replica::start(dir.path()).await;
    let b = Replica::start(dir.path()).await;
    Some((redis, sb, dir, a, b))
}

/// The stand-in, a redis-server and the config directory of replicas using both.
async fn stand_in_and_redis() -> Option<(RedisServer, Sandbox, tempfile::TempDir)> {
    let redis = RedisServer::start()?;
    let sb = Sandbox::start(SandboxOptions {
        accounts: vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let tail = format!(
        "level = \"info\"\n{ALLOW_ALL_POLICY}{CACHE}[admin]\nlisten = \"127.0.0.1:0\"\n\
         [redis]\nurl = \"{}\"\n",
        redis.url
    );
    let users = [("alice", KEY_ALICE), ("bob", KEY_ALICE), ("dave", KEY_DAVE)];
    let dir = process_config_dir(&sb, "", &tail, &users);
    Some((redis, sb, dir))
}

/// What a [`Relay`] does with connections.
#[derive(Clone, Copy, PartialEq)]
enum Flow {
    /// Passes bytes both ways.
    Open,
    /// Holds new connections unanswered (they pass once open).
    Held,
    /// Hangs up on every connection, open ones included.
    Shut,
}

/// A TCP relay in front of Redis that the test opens, holds or shuts: one replica's view of
/// Redis fails while the other's stays up.
struct Relay {
    url: String,
    flow: tokio::sync::watch::Sender<Flow>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(redis: &RedisServer, flow: Flow) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let target = redis.url.trim_start_matches("redis://").to_string();
        let (tx, rx) = tokio::sync::watch::channel(flow);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(relay(inbound, target.clone(), rx.clone()));
            }
        });
        Relay {
            url,
            flow: tx,
            task,
        }
    }

    fn set(&self, flow: Flow) {
        self.flow.send_replace(flow);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One relayed connection: waits while held, then passes bytes until shut.
async fn relay(
    mut inbound: tokio::net::TcpStream,
    target: String,
    mut flow: tokio::sync::watch::Receiver<Flow>,
) {
    let Ok(now) = flow.wait_for(|f| *f != Flow::Held).await.map(|f| *f) else {
        return;
    };
    if now == Flow::Shut {
        return;
    }
    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = flow.wait_for(|f| *f == Flow::Shut) => {}
    }
}

/// GETs of exactly `path` the stand-in has received.
fn gets(sb: &Sandbox, path: &str) -> usize {
    sb.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path_and_query == path)
        .count()
}

/// Asks `r` for `path` as `user` until the answer passes `fresh` (at most 10 s; the TTL is
/// 5 minutes, so only an invalidation gets there); the last answer.
async fn until_fresh(r: &Replica, user: &str, path: &str, fresh: impl Fn(&Got) -> bool) -> Got {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = r.get(user, path).await;
        assert_eq!(got.status, 200);
        if fresh(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed stale: {}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_write_or_a_purge_on_one_replica_drops_the_entries_on_the_other() {
    let Some((_redis, sb, _dir, a, b)) = two_replicas().await else {
        return;
    };
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 7));
    assert_eq!(
        b.get("alice", &path).await.json()["first_name"],
        "Ada-Alice-7"
    );
    assert_eq!(xcache(&b.get("alice", &path).await), "HIT");
    assert_eq!(gets(&sb, &path), 1);

    // PATCH through A; B answers the new record once A's invalidation arrived.
    let patched = a.patch("alice", &path, r#"{"first_name":"Grace"}"#).await;
    assert_eq!(patched.status, 200);
    let written = Instant::now();
    let after = until_fresh(&b, "alice", &path, |g| g.json()["first_name"] == "Grace").await;
    eprintln!(
        "B served the new record {:?} after A's write",
        written.elapsed()
    );
    assert_eq!(xcache(&after), "MISS");
    assert_eq!(gets(&sb, &path), 2, "B went to Cliniko for it");
    let m = b.metrics().await;
    assert_eq!(sample(&m, &invalidations("received")), 1.0, "{m}");
    assert_eq!(sample(&m, &invalidations("published")), 0.0, "{m}");
    let m = a.metrics().await;
    assert_eq!(sample(&m, &invalidations("published")), 1.0, "{m}");
    assert_eq!(
        sample(&m, &invalidations("received")),
        0.0,
        "its own are skipped"
    );

    // A credential purge on A: B drops alice's key's entries (bob shares it), not dave's.
    let list = "/v1/patients?per_page=2";
    for user in ["alice", "dave", "alice", "dave"] {
        b.get(user, list).await;
    }
    assert_eq!(xcache(&b.get("bob", list).await), "HIT");
    a.purge("user=alice").await;
    b.until("the credential purge", |m| {
        sample(m, &invalidations("received")) == 2.0
    })
    .await;
    assert_eq!(xcache(&b.get("bob", list).await), "MISS");
    assert_eq!(xcache(&b.get("dave", list).await), "HIT");

    // A prefix purge, then a purge of everything: B ends up empty.
    a.purge("prefix=/v1/patients").await;
    until_fresh(&b, "dave", list, |g| xcache(g) == "MISS").await;
    b.get("dave", "/v1/practitioners").await;
    assert!(sample(&b.metrics().await, ENTRIES) >= 1.0);
    a.purge("all=true").await;
    b.until("empty", |m| sample(m, ENTRIES) == 0.0).await;
    assert_eq!(sample(&b.metrics().await, CLEARS), 0.0, "no resubscribe");
}

#[tokio::test]
async fn after_a_redis_restart_both_replicas_clear_their_caches_and_serve_nothing_stale() {
    let Some((mut redis, sb, _dir, a, b)) = two_replicas().await else {
        return;
    };
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 3));
    for r in [&a, &b, &b] {
        r.get("alice", &path).await;
    }
    assert_eq!(xcache(&b.get("alice", &path).await), "HIT");

    // Redis goes away: a write through A now reaches nobody (B may serve the old record).
    redis.kill();
    for r in [&a, &b] {
        r.until("unsubscribed", |m| sample(m, SUBSCRIBED) == 0.0)
            .await;
    }
    let patched = a.patch("alice", &path, r#"{"first_name":"Lin"}"#).await;
    assert_eq!(patched.status, 200);
    a.until("the lost publish counted", |m| {
        sample(m, &invalidations("dropped")) == 1.0
    })
    .await;

    // Back on the same port: both resubscribe, clear and count it; B answers fresh data.
    redis.restart();
    for r in [&a, &b] {
        let m = r
            .until("resubscribed", |m| sample(m, SUBSCRIBED) == 1.0)
            .await;
        assert_eq!(sample(&m, CLEARS), 1.0, "{m}");
    }
    let before = gets(&sb, &path);
    let after = b.get("alice", &path).await;
    assert_eq!(after.json()["first_name"], "Lin", "no stale answer");
    assert_eq!(xcache(&after), "MISS");
    assert_eq!(gets(&sb, &path), before + 1);
    // And the bus works again.
    a.patch("alice", &path, r#"{"first_name":"Mo"}"#).await;
    until_fresh(&b, "alice", &path, |g| g.json()["first_name"] == "Mo").await;
}

/// Polls `ok` (at most 10 s).
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, ok: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_replica_that_does_not_hold_the_purged_key_drops_its_whole_cache() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // B's store maps alice to another key, as if it had rotated already.
    let replica = |alice_key: &'static str| {
        let mut s = with_admin(Setup {
            shards: vec![(
                "au1",
                vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
            )],
            users: vec![("alice", alice_key), ("dave", KEY_DAVE)],
            ..Setup::default()
        });
        s.overrides
            .push(("CLINIKO_GATEWAY__REDIS__URL", redis.url.clone()));
        Harness::start(s)
    };
    let (a, b) = (replica(KEY_ALICE).await, replica(KEY_DAVE).await);
    for h in [&a, &b] {
        let bus = &h.gateway().cache_bus;
        eventually("subscribed", || async { bus.subscribed() == Some(true) }).await;
    }
    b.get_as("dave", "/v1/patients?per_page=1").await;
    assert_eq!(b.cache().entry_count().await, 1);
    let (status, body) = admin(
        &a,
        Method::POST,
        "/admin/cache/purge?user=alice",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cache = b.cache();
    eventually("emptied", || async { cache.entry_count().await == 0 }).await;
    let stats = b.gateway().cache_bus.stats();
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_lost_publish_is_made_good_by_one_clear_everywhere_once_redis_takes_it() {
    let Some((redis, sb, dir)) = stand_in_and_redis().await else {
        return;
    };
    // A reaches Redis through a relay the test shuts; B's subscription stays up throughout.
    let relay = Relay::start(&redis, Flow::Open).await;
    let a = Replica::spawn(dir.path(), &[("CLINIKO_GATEWAY__REDIS__URL", &relay.url)]).await;
    a.until("subscribed", |m| sample(m, SUBSCRIBED) == 1.0)
        .await;
    let b = Replica::start(dir.path()).await;
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 5));
    b.get("alice", &path).await;
    assert_eq!(xcache(&b.get("alice", &path).await), "HIT");

    relay.set(Flow::Shut);
    a.until("unsubscribed", |m| sample(m, SUBSCRIBED) == 0.0)
        .await;
    let patched = a.patch("alice", &path, r#"{"first_name":"Nell"}"#).await;
    assert_eq!(patched.status, 200);
    a.until("the lost publish counted", |m| {
        sample(m, &invalidations("dropped")) == 1.0
    })
    .await;
    let stale = b.get("alice", &path).await;
    assert_eq!(xcache(&stale), "HIT", "B never heard of the write");
    assert_ne!(stale.json()["first_name"], "Nell");

    // Redis takes A's messages again: the owed clear reaches B, which answers fresh data.
    relay.set(Flow::Open);
    until_fresh(&b, "alice", &path, |g| g.json()["first_name"] == "Nell").await;
    let m = a.metrics().await;
    assert_eq!(sample(&m, &invalidations("catch_up")), 1.0, "{m}");
    assert_eq!(sample(&m, &invalidations("published")), 0.0, "{m}");
    let m = b.metrics().await;
    assert_eq!(sample(&m, &invalidations("received")), 1.0, "{m}");
    assert_eq!(sample(&m, CLEARS), 0.0, "B's subscription never dropped");
    drop(sb);
}

#[tokio::test]
async fn a_message_this_replica_cannot_read_clears_its_cache() {
    let Some((redis, _sb, _dir, a, b)) = two_replicas().await else {
        return;
    };
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 6));
    for r in [&a, &b] {
        r.get("alice", &path).await;
        assert_eq!(xcache(&r.get("alice", &path).await), "HIT");
    }
    // A newer replica's kind of message: what it drops is unknown here, so everything goes.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let heard: i64 = redis::cmd("PUBLISH")
        .arg("cliniko-gateway:cache")
        .arg(r#"{"from":"r9","drop":"tags","tags":["patient"]}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(heard, 2, "both replicas subscribed");
    for r in [&a, &b] {
        let m = r
            .until("cleared", |m| {
                sample(m, &invalidations("unreadable")) == 1.0 && sample(m, ENTRIES) == 0.0
            })
            .await;
        assert_eq!(sample(&m, &invalidations("received")), 0.0, "{m}");
        assert_eq!(xcache(&r.get("alice", &path).await), "MISS");
    }
}

#[tokio::test]
async fn entries_filled_before_the_first_subscription_do_not_outlive_a_write_they_missed() {
    let Some((redis, _sb, dir)) = stand_in_and_redis().await else {
        return;
    };
    // A's first subscription waits at the relay (bounded by redis.timeout, 5 s here) while A
    // serves and fills, as in the moments after start-up; B is subscribed.
    let relay = Relay::start(&redis, Flow::Held).await;
    let b = Replica::start(dir.path()).await;
    let via_relay = [
        ("CLINIKO_GATEWAY__REDIS__URL", relay.url.as_str()),
        ("CLINIKO_GATEWAY__REDIS__TIMEOUT", "5s"),
        // Its key budgets would wait on the held Redis too.
        ("CLINIKO_GATEWAY__RATELIMIT__ENABLED", "false"),
    ];
    let spawned = Instant::now();
    let a = Replica::spawn(dir.path(), &via_relay).await;
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 8));
    a.get("alice", &path).await;
    assert_eq!(xcache(&a.get("alice", &path).await), "HIT");
    let patched = b.patch("alice", &path, r#"{"first_name":"Opal"}"#).await;
    assert_eq!(patched.status, 200);
    b.until("published", |m| {
        sample(m, &invalidations("published")) == 1.0
    })
    .await;

    // Within the bound, so A's first attempt is the one that subscribes (none failed).
    assert!(
        spawned.elapsed() < Duration::from_secs(5),
        "too slow to test"
    );
    relay.set(Flow::Open);
    let m = a
        .until("subscribed", |m| sample(m, SUBSCRIBED) == 1.0)
        .await;
    assert_eq!(
        sample(&m, CLEARS),
        0.0,
        "a first subscription, not a resubscribe"
    );
    let got = a.get("alice", &path).await;
    assert_eq!(
        got.json()["first_name"],
        "Opal",
        "nothing filled earlier survives"
    );
    assert_eq!(xcache(&got), "MISS");
}

#[tokio::test]
async fn a_write_to_a_prefix_no_rule_caches_keeps_fills_in_flight() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut s = Setup::default();
    s.overrides
        .push(("CLINIKO_GATEWAY__REDIS__URL", redis.url.clone()));
    let h = Harness::start(s).await;
    let bus = &h.gateway().cache_bus;
    eventually("subscribed", || async { bus.subscribed() == Some(true) }).await;
    let sb = h.sandbox("au1");
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 2));
    // The fill of a cached patient is in flight at Cliniko while an invoice is created.
    sb.set_fault(&path, Fault::Delay(Duration::from_secs(3)));
    sb.set_fault(
        "/v1/invoices",
        Fault::Json(201, serde_json::json!({"id": "1"})),
    );
    sb.clear();
    let fill = h.get_as("alice", &path);
    tokio::pin!(fill);
    tokio::select! {
        _ = &mut fill => panic!("the fill ended before the write"),
        _ = sb.wait_for_requests(1) => {}
    }
    let auth = format!("Bearer {}", h.token("alice"));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let created = h.send(Method::POST, "/v1/invoices", &headers, "{}").await;
    assert_eq!(created.status, 201);
    assert!(
        futures_util::FutureExt::now_or_never(&mut fill).is_none(),
        "the write ended while the fill was in flight"
    );
    assert_eq!(xcache(&fill.await), "MISS");
    sb.clear_fault(&path);
    assert_eq!(
        xcache(&h.get_as("alice", &path).await),
        "HIT",
        "the fill was kept"
    );

    // Both writes are published (the invoice's for replicas whose rules differ): two in all.
    let patched = h
        .send(Method::PATCH, &path, &headers, r#"{"first_name":"Ida"}"#)
        .await;
    assert_eq!(patched.status, 200);
    let published = || {
        bus.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually("published", || async { published() >= 2 }).await;
    assert_eq!(published(), 2, "one per write");
}

#[tokio::test]
async fn during_a_rollout_of_new_cache_rules_a_write_through_an_old_replica_reaches_the_new_one() {
    let Some((_redis, sb, dir)) = stand_in_and_redis().await else {
        return;
    };
    // A still runs the old rules (patients only); B already caches practitioners too.
    let old_rules = [(
        "CLINIKO_GATEWAY__CACHE__RULES",
        r#"[{ prefix = "/v1/patients", ttl = "5m" }]"#,
    )];
    let a = Replica::spawn(dir.path(), &old_rules).await;
    a.until("subscribed", |m| sample(m, SUBSCRIBED) == 1.0)
        .await;
    let b = Replica::start(dir.path()).await;
    let path = "/v1/practitioners";
    b.get("alice", path).await;
    assert_eq!(xcache(&b.get("alice", path).await), "HIT");
    a.get("alice", path).await;
    assert_ne!(
        xcache(&a.get("alice", path).await),
        "HIT",
        "A caches no practitioners"
    );

    // A write through A (Cliniko's answer faked: the stand-in keeps practitioners read-only).
    sb.set_fault(path, Fault::Json(201, serde_json::json!({"id": "1"})));
    let auth = format!("Bearer {}", token("alice"));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        call(&a.base, Method::POST, path, &headers, "{}")
            .await
            .status,
        201
    );
    sb.clear_fault(path);
    let after = until_fresh(&b, "alice", path, |g| xcache(g) == "MISS").await;
    assert_eq!(after.status, 200);
    let m = b.metrics().await;
    assert_eq!(sample(&m, &invalidations("received")), 1.0, "{m}");
}
