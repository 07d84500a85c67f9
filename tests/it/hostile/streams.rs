//! Cliniko's limit on concurrent HTTP/2 streams is shared by every caller of a shard (they
//! share one pooled connection): a caller who holds many unread answers must not take it all.
//! The stand-in here allows 4 streams per connection; the attacker (alice) holds answers it
//! never reads on an h2c connection with window 0, the victim (dave, another key on the same
//! shard) must still be served. `server.send_timeout` is longer than each test, so the
//! attacker holds its answers until it lets go; every wait is bounded.

use super::addr;
use super::stall::{H2Stalled, HANDSHAKES, SLACK, metric, setup, victim, victims, wait_until};
use crate::support::*;
use cliniko_gateway::sandbox::Fault;
use std::time::Duration;

/// `SETTINGS_MAX_CONCURRENT_STREAMS` of the stand-in.
const STREAMS: u32 = 4;
/// Longer than either test runs: the attacker is never cut while the victim is measured.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Far larger than what the cache (1 MiB), the upstream stream window (256 KiB) and the
/// gateway's own buffers take of it: each answer keeps its Cliniko stream open.
const LARGE: usize = 4_000_000;

const REFUSED: &str = "cliniko_gateway_upstream_in_flight_refusals_total";
const IN_FLIGHT: &str = "cliniko_gateway_upstream_in_flight";

/// The stand-in allows [`STREAMS`]; each user may have `cap` requests in flight to it.
async fn start(cap: usize, extra: &[(&'static str, &str)]) -> Harness {
    let cap = cap.to_string();
    let mut overrides = vec![("CLINIKO_GATEWAY__UPSTREAM__MAX_IN_FLIGHT_PER_USER", &*cap)];
    overrides.extend_from_slice(extra);
    let s = setup(SEND_TIMEOUT, &overrides);
    let h = Harness::start(Setup {
        sandbox_max_streams: Some(STREAMS),
        ..s
    })
    .await;
    h.sandbox("au1")
        .set_fault("/v1/patients", Fault::Large(LARGE));
    // The victim's first call opens the shard's one HTTP/2 connection to Cliniko.
    assert_eq!(victim(&h).await, 200);
    h
}

/// The attacker asks for `n` different large answers, one after another (distinct pages, so
/// the cache's single flight does not merge them), and reads none; their statuses.
async fn hold(h: &Harness, attacker: &mut H2Stalled, n: usize) -> Vec<u16> {
    let auth = format!("Bearer {}", h.token("alice"));
    let mut statuses = vec![];
    for page in 1..=n {
        let path = format!("/v1/patients?page={page}");
        statuses.push(attacker.get(&path, Some(&auth)).await);
    }
    statuses
}

/// The gap the cap closes, shown with the cap above the stand-in's streams: the attacker's
/// unread answers take every stream, and the victim waits until the attacker lets go.
#[tokio::test]
async fn without_a_cap_one_caller_takes_every_stream_of_the_shard() {
    let h = start(100, &[]).await;
    let mut attacker = H2Stalled::open(&addr(&h)).await;
    assert_eq!(hold(&h, &mut attacker, STREAMS as usize).await, [200; 4]);
    let victim = h.get_as_with("dave", "/v1/user", &[("cache-control", "no-cache")]);
    tokio::pin!(victim);
    // It cannot be answered while the attacker holds the streams: a full second of nothing
    // (the attacker holds them for send_timeout, 30 s).
    let early = tokio::time::timeout(Duration::from_secs(1), &mut victim).await;
    assert!(early.is_err(), "the victim was answered: the gap is gone");
    // The attacker goes away; its streams are reset and the victim's request goes out.
    attacker.ended.abort();
    drop(attacker);
    let got = tokio::time::timeout(SLACK, victim)
        .await
        .expect("the victim was not served once the attacker left");
    assert_eq!(got.status, 200);
    assert_eq!(metric(&h, REFUSED).await, 0.0);
}

/// With rate limits off, too: the cap is not one of them.
#[tokio::test]
async fn a_caller_is_held_to_its_cap_and_the_shard_keeps_serving_others() {
    let h = start(2, &[("CLINIKO_GATEWAY__RATELIMIT__ENABLED", "false")]).await;
    let sb = h.sandbox("au1");
    // Cached for alice before the attack: a hit never reaches Cliniko, so it takes no slot.
    assert_eq!(h.get_as("alice", "/v1/practitioners").await.status, 200);
    let mut attacker = H2Stalled::open(&addr(&h)).await;
    let statuses = hold(&h, &mut attacker, STREAMS as usize).await;
    // While the attacker holds what it got, the victim is served at once, again and again.
    victims(&h).await;
    assert_eq!(statuses, [200, 200, 429, 429], "the cap is 2");
    assert_eq!(metric(&h, HANDSHAKES).await, 1.0, "all on one connection");

    // Over the cap from any connection: refused at once with the code, nothing sent.
    let before = sb.request_count();
    let got = h
        .get_as_with(
            "alice",
            "/v1/patients?page=9",
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(got.status, 429);
    assert_eq!(got.code(), "too_many_in_flight");
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(got.json()["error"]["retry_after"], 1);
    assert_eq!(
        sb.request_count(),
        before,
        "a refused request reached Cliniko"
    );
    // A cache hit is still served.
    let hit = h.get_as("alice", "/v1/practitioners").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.headers["x-cache"], "HIT");
    assert_eq!(metric(&h, REFUSED).await, 3.0);
    assert_eq!(metric(&h, IN_FLIGHT).await, 2.0);

    // The attacker lets go: its answers are dropped unread and its slots come back.
    attacker.ended.abort();
    drop(attacker);
    wait_until(SLACK, "the attacker's slots given back", async || {
        metric(&h, IN_FLIGHT).await == 0.0
    })
    .await;
    let got = h
        .get_as_with("alice", "/v1/user", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(got.status, 200);
}
