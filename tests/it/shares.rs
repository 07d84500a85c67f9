//! Fair shares of one key budget over real sockets: a real stand-in recording what reaches it,
//! gateways on loopback ports, and for the shared budget a real `redis-server`.
//!
//! Fairness is measured by counting who was admitted (the gateway's per-app counters, which
//! tick in admission order, and the stand-in's arrivals), not by timing. The only waits are
//! for the budget's slots to pass, polled with a deadline; the front desk's one request a
//! second is a schedule that spreads load, it synchronises nothing.

use crate::ratelimit::{Rig, default_users};
use crate::support::{HMAC, RedisServer, mint_hs};
use http::{Method, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Hundreds of requests of one user wait at once here: the per-user in-flight cap is not
/// what these tests are about.
const IN_FLIGHT: (&str, &str) = ("CLINIKO_GATEWAY__UPSTREAM__MAX_IN_FLIGHT_PER_USER", "1000");

const SHARES: &str = r#"
[ratelimit.user]
enabled = false
[ratelimit.shares]
default = { weight = 1, class = "interactive" }
[ratelimit.shares.apps]
reception = { class = "interactive" }
nightly-sync = { weight = 3, class = "batch" }
export = { weight = 1, class = "batch" }
"#;

/// A budget of `rate` per second, burst 1, that lets requests queue for up to 30 s.
fn budget(rate: u32) -> String {
    format!(
        "max_wait = \"30s\"\nmax_waiting = 1000\n[ratelimit.key]\nrate = {rate}\nperiod = \"1s\"\nburst = 1\n{SHARES}"
    )
}

/// A token of user `sub` calling as app `app` (`azp`).
fn app_token(sub: &str, app: &str) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("azp".into(), app.into());
    mint_hs(
        &secrecy::SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(3600),
        claims,
    )
    .unwrap()
}

/// `n` GETs from `app` (as `sub`, all on alice's key) through gateway `gw`, all at once;
/// each is tagged `?app=<app>` so the stand-in can tell who it came from.
fn flood(rig: &Arc<Rig>, gw: usize, sub: &str, app: &str, n: usize) -> Vec<JoinHandle<StatusCode>> {
    let auth = format!("Bearer {}", app_token(sub, app));
    let path = format!("/v1/user?app={app}");
    (0..n)
        .map(|_| {
            let (rig, auth, path) = (rig.clone(), auth.clone(), path.clone());
            tokio::spawn(async move { rig.send(gw, Method::GET, &path, &auth, "").await.status })
        })
        .collect()
}

/// Polls `ok` every 10 ms until it holds; fails after `within`.
async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn waiting(rig: &Rig, gw: usize) -> u64 {
    rig.limits(gw).stats().waiting.load(Ordering::Relaxed)
}

fn admitted(rig: &Rig, gw: usize, app: &str) -> u64 {
    rig.limits(gw).stats().apps.app(app).admitted_total()
}

/// Arrival times at the stand-in.
fn arrivals(rig: &Rig) -> Vec<Instant> {
    rig.sb.requests().iter().map(|r| r.at).collect()
}

/// Forwarding time varies by this much on a loaded 2-core machine: the gateway admits one
/// request per slot (its unit tests check the spacing on a paused clock), but the stand-in
/// may see two admitted 25 ms apart arrive together.
const JITTER: Duration = Duration::from_millis(200);

/// What reached the stand-in stays within `burst + rate · (1 s + JITTER)` in every second
/// (a flood through no budget would put hundreds there).
fn assert_within_budget(at: &[Instant], rate: f64, burst: usize) {
    let mut at = at.to_vec();
    at.sort();
    let most = burst + (rate * (1.0 + JITTER.as_secs_f64())) as usize;
    for (i, t) in at.iter().enumerate() {
        let n = at[i..]
            .iter()
            .take_while(|x| x.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(n <= most, "{n} arrivals within one second (budget {most})");
    }
}

/// Admitted (sync, export) on gateway `gw` over the next `n` slots it wins, counted from a
/// point where both apps are still backlogged.
async fn window(rig: &Rig, gw: usize, n: u64) -> (u64, u64) {
    let (s0, e0) = (
        admitted(rig, gw, "nightly-sync"),
        admitted(rig, gw, "export"),
    );
    wait_until("the window's slots", Duration::from_secs(60), || {
        admitted(rig, gw, "nightly-sync") + admitted(rig, gw, "export") >= s0 + e0 + n
    })
    .await;
    let (s1, e1) = (
        admitted(rig, gw, "nightly-sync"),
        admitted(rig, gw, "export"),
    );
    (s1 - s0, e1 - e0)
}

fn assert_three_to_one(sync: u64, export: u64, what: &str) {
    let ratio = sync as f64 / export.max(1) as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "{what}: sync {sync}, export {export}: {ratio:.2} is not within 10% of 3:1"
    );
}

fn stop(tasks: Vec<JoinHandle<StatusCode>>) {
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_flood_never_holds_up_the_front_desk() {
    // 600/min, burst 1: one slot every 100 ms.
    let rig = Arc::new(Rig::start_env(1, &budget(10), "", default_users(), &[IN_FLIGHT]).await);
    let batch = flood(&rig, 0, "etl", "nightly-sync", 300);
    wait_until("the batch flood queued", Duration::from_secs(30), || {
        waiting(&rig, 0) >= 250
    })
    .await;
    let desk = format!("Bearer {}", app_token("alice", "reception"));
    let start = tokio::time::Instant::now();
    for i in 0..5u32 {
        tokio::time::sleep_until(start + Duration::from_secs(i.into())).await;
        let before = rig.sb.requests().len();
        let sent = Instant::now();
        let tag = format!("/v1/user?desk={i}");
        let r = rig.send(0, Method::GET, &tag, &desk, "").await;
        assert_eq!(r.status, 200, "front desk request {i}");
        let seen = rig.sb.requests();
        let at = seen.iter().position(|s| s.path_and_query == tag).unwrap();
        // About one slot: the slot being handed out as it arrived, maybe one more in flight;
        // in arrival order it would have waited behind ~250 batch requests (25 s).
        assert!(
            at - before <= 3,
            "{} batch requests reached Cliniko before front desk request {i}",
            at - before
        );
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{:?}",
            sent.elapsed()
        );
    }
    assert!(waiting(&rig, 0) >= 150, "the batch app stayed backlogged");
    // The batch app got every other slot: the budget was used, and never exceeded.
    let seen = rig.sb.requests();
    let from_batch = seen
        .iter()
        .filter(|s| s.path_and_query.ends_with("app=nightly-sync"))
        .count();
    assert_eq!(from_batch + 5, seen.len(), "nobody else went upstream");
    assert_eq!(admitted(&rig, 0, "nightly-sync"), from_batch as u64);
    let at = arrivals(&rig);
    let span = at[at.len() - 1].duration_since(at[0]).as_secs_f64();
    assert!(
        at.len() as f64 >= 0.8 * (1.0 + 10.0 * span),
        "{} requests in {span:.1}s: slots went unused",
        at.len()
    );
    assert_within_budget(&at, 10.0, 1);
    let limits = rig.limits(0);
    let m = &limits.stats().apps;
    assert_eq!(
        (m.app("reception").admitted_total(), waiting(&rig, 0) > 0),
        (5, true)
    );
    stop(batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flooding_apps_share_the_budget_by_weight() {
    let rig = Arc::new(Rig::start_env(1, &budget(50), "", default_users(), &[IN_FLIGHT]).await);
    let mut tasks = flood(&rig, 0, "etl", "nightly-sync", 450);
    tasks.extend(flood(&rig, 0, "bob", "export", 300));
    // With 550 of 750 waiting, sync still has ≥ 250 queued and export ≥ 100: both stay
    // backlogged through the 200 slots counted (150 and 50 at 3:1).
    wait_until("both floods queued", Duration::from_secs(30), || {
        waiting(&rig, 0) >= 550
    })
    .await;
    let (sync, export) = window(&rig, 0, 200).await;
    assert_three_to_one(sync, export, "one gateway");
    assert_within_budget(&arrivals(&rig), 50.0, 1);
    // The same figures are on /metrics, under the configured names.
    let text = rig.gws[0].metrics.render().await.unwrap();
    for app in ["nightly-sync", "export"] {
        let series = format!("cliniko_gateway_ratelimit_app_admitted_total{{app=\"{app}\"}} ");
        assert!(text.contains(&series), "no {series} in /metrics");
    }
    assert!(text.contains("cliniko_gateway_ratelimit_app_wait_seconds_count{app=\"export\"}"));
    stop(tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_each_replica_shares_fairly_and_the_budget_holds() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // One budget of 40/s for both replicas together. A thousand requests arriving at
    // once on two busy cores have held a Redis answer past 1 s, after which a replica
    // decides locally for a while (`replicas` says with what share): a generous timeout
    // (the most `redis.timeout` allows) keeps every decision on Redis, which is what this
    // test is about.
    let toml = format!(
        "replicas = 2\n{}\n[redis]\nurl = \"{}\"\ntimeout = \"5s\"\n",
        budget(40),
        redis.url
    );
    let rig = Arc::new(Rig::start_env(2, &toml, "", default_users(), &[IN_FLIGHT]).await);
    let mut tasks = vec![];
    for gw in 0..2 {
        tasks.extend(flood(&rig, gw, "etl", "nightly-sync", 300));
        tasks.extend(flood(&rig, gw, "bob", "export", 200));
    }
    // 380 of 500 waiting on each: sync ≥ 180 and export ≥ 80 queued there, enough for the
    // 100 slots counted per replica (75 and 25).
    wait_until("the floods queued on both", Duration::from_secs(30), || {
        waiting(&rig, 0) >= 380 && waiting(&rig, 1) >= 380
    })
    .await;
    let (a, b) = tokio::join!(window(&rig, 0, 100), window(&rig, 1, 100));
    assert_three_to_one(a.0, a.1, "replica 0");
    assert_three_to_one(b.0, b.1, "replica 1");
    // The budget was Redis's: should a loaded machine still hold an answer past the
    // timeout, that replica decides on its half of the budget for a while (still within).
    for gw in 0..2 {
        let limits = rig.limits(gw);
        let s = limits.stats();
        let local = s.fail_open.load(Ordering::Relaxed);
        let all = admitted(&rig, gw, "nightly-sync") + admitted(&rig, gw, "export");
        assert!(
            local * 4 <= all,
            "replica {gw}: {local} of {all} decided without Redis"
        );
    }
    // Two pumps asking one shared budget: never more than it allows, together.
    assert_within_budget(&arrivals(&rig), 40.0, 1);
    stop(tasks);
}

#[tokio::test]
async fn queued_requests_get_503_when_redis_dies_and_the_budget_fails_closed() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // One slot a second, so the queue is still there when Redis goes.
    let toml = format!(
        "{}\n[redis]\nurl = \"{}\"\nfailure = \"closed\"\n",
        budget(1).replace("max_wait = \"30s\"", "max_wait = \"20s\""),
        redis.url
    );
    let rig = Arc::new(Rig::start_env(1, &toml, "", default_users(), &[IN_FLIGHT]).await);
    let tasks = flood(&rig, 0, "etl", "nightly-sync", 6);
    wait_until("five queued", Duration::from_secs(10), || {
        waiting(&rig, 0) >= 5
    })
    .await;
    redis.kill();
    let started = Instant::now();
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap().as_u16());
    }
    // The pump's next question fails: every waiter hears it at once, none waits out the
    // 20 s or gets a 429 (the budget may not be spent unmetered, and was not).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    statuses.sort();
    let failed = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        failed >= 4 && statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(
        rig.sb.requests().len(),
        6 - failed,
        "nothing went upstream unmetered"
    );
    assert_eq!(waiting(&rig, 0), 0);
}
