//! Prometheus metrics: one [`Registry`] built at start-up, handed down as small handles, and
//! rendered on the admin listener's `/metrics`. Not in the request path itself: the access-log
//! layer, the forwarder and the outbound connector record into pre-built handles.
//!
//! Label values are fixed words (`proxy`, `GET`, `connect`, …), HTTP status codes or the
//! fingerprint of a stored key Cliniko rejected, never user ids, paths, keys or anything a
//! caller controls, so the number of series stays bounded.
//! Per request: a few atomic adds, one read-locked map lookup for the request counter (labels
//! are `Copy`, nothing is allocated) and one short mutex for each histogram observation.
//! Cache, rate-limit and JWKS figures are read from their own counters at scrape time
//! (`sources`), so those paths carry no metrics code at all.

mod apps;
mod process;
mod sources;

pub use apps::{AppCounts, AppMetrics};
pub(crate) use sources::figures;
pub use sources::{Source, counter, family, gauge, metric};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Every metric name starts with this.
pub const PREFIX: &str = "cliniko_gateway";

/// The `Content-Type` of the rendered text (OpenMetrics, which Prometheus reads natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds; from sub-millisecond cache hits to the 60 s upstream timeout.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Registers each metric (a clone, sharing its values with the handle) under its name and
/// help text.
macro_rules! register {
    ($registry:expr; $($name:literal, $metric:expr, $help:literal;)+) => {
        $($registry.register($name, $help, $metric.clone());)+
    };
}
/// Which kind of route a request hit (bounded: three values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/v1` and below: proxied to Cliniko.
    Proxy,
    /// `/healthz`, `/readyz`.
    Health,
    /// Anything else (answered 404 or 400 by the guard).
    Other,
}

impl RouteClass {
    /// Classifies a request path.
    pub fn of(path: &str) -> RouteClass {
        match path {
            "/healthz" | "/readyz" => RouteClass::Health,
            p if p == "/v1" || p.starts_with("/v1/") => RouteClass::Proxy,
            _ => RouteClass::Other,
        }
    }

    /// The bounded label (`proxy`, `health`, `other`) used by metrics and spans.
    pub fn label(self) -> &'static str {
        match self {
            RouteClass::Proxy => "proxy",
            RouteClass::Health => "health",
            RouteClass::Other => "other",
        }
    }
}

/// A method as a label: Cliniko's seven, everything else `OTHER` (the guard refuses those).
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// `N` labels whose values are fixed words, e.g. `[("kind", "tls")]`.
type Words<const N: usize> = [(&'static str, &'static str); N];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the access-log layer records per request.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    /// Pre-resolved per [`RouteClass`], so observing needs no lookup.
    durations: [Histogram; 3],
    in_flight: Gauge,
}

impl HttpMetrics {
    /// A request entered the gateway.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A request's response body was sent (or abandoned) after `elapsed`.
    pub fn finished(
        &self,
        route: RouteClass,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.in_flight.dec();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.label(),
                method,
                status,
            })
            .inc();
        self.durations[route as usize].observe(elapsed.as_secs_f64());
    }
}

/// Why an exchange with Cliniko failed (bounded label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect (or DNS) failed.
    Connect,
    /// TCP + TLS did not finish within `upstream.connect_timeout`.
    ConnectTimeout,
    /// The TLS handshake failed (unknown CA, wrong name, protocol).
    Tls,
    /// No response headers within `upstream.timeout`.
    Timeout,
    /// The connection broke or spoke garbage after connecting.
    Protocol,
    /// Cliniko answered 401 to the stored key.
    CredentialRejected,
}

impl UpstreamError {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Tls => "tls",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
            UpstreamError::CredentialRejected => "credential_rejected",
        }
    }
}

/// What the forwarder records per exchange with Cliniko.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    duration: Histogram,
    errors: Family<Words<1>, Counter>,
    /// By `key_fingerprint`: a stored key's fingerprint (`sha256:` + 16 hex digits of its
    /// hash, as `keys list` prints it): not the key, and bounded by the key store's size.
    rejected: Family<[(&'static str, String); 1], Counter>,
}

impl UpstreamMetrics {
    /// Time from sending the request to Cliniko's response headers (or the failure).
    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// One failed exchange.
    pub fn error(&self, kind: UpstreamError) {
        self.errors.get_or_create(&[("kind", kind.label())]).inc();
    }

    /// Cliniko answered 401 to the stored key with this fingerprint: counted as an error and
    /// per key, so on-call can tell which key to rotate.
    pub fn credential_rejected(&self, fingerprint: &str) {
        self.error(UpstreamError::CredentialRejected);
        self.rejected
            .get_or_create(&[("key_fingerprint", fingerprint.to_owned())])
            .inc();
    }
}

/// What one listener's accept loop records: open connections, and those it closed because
/// the caller stopped taking its responses (`server.send_timeout`).
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed for making no progress.
    pub stalled: Counter,
}

/// What triggered a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
    /// A watched file (key store, config, secret, PEM key) changed on disk.
    File,
    /// The database key store changed (a notification, or a newer revision polled).
    Store,
}

impl ReloadTrigger {
    /// The label value (also used in log lines).
    pub fn label(self) -> &'static str {
        match self {
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::Admin => "admin",
            ReloadTrigger::File => "file",
            ReloadTrigger::Store => "store",
        }
    }
}

/// Key-store and config reload outcomes.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    reloads: Family<Words<2>, Counter>,
    users: Gauge,
    config_reloads: Family<Words<2>, Counter>,
    restart_pending: Gauge,
    // 0 from a refused reload until the next one succeeds: the state alerts need ("the old
    // one is still serving"), which the counters only tell for a while.
    keystore_ok: Gauge,
    config_ok: Gauge,
    integrity: Counter,
}

impl ReloadMetrics {
    /// A key-store file refused because its integrity MAC is missing or wrong (also counted
    /// as a failed reload): an edit made without the master key, worth an alert of its own.
    pub fn record_integrity_failure(&self) {
        self.integrity.inc();
    }

    /// One reload attempt; `users` is the new store's size on success.
    pub fn record(&self, trigger: ReloadTrigger, users: Option<usize>) {
        count(&self.reloads, trigger, users.is_some());
        self.keystore_ok.set(i64::from(users.is_some()));
        if let Some(n) = users {
            self.set_users(n);
        }
    }

    /// One config reload attempt; `restart_pending`: sections changed that need a restart.
    pub fn record_config(&self, trigger: ReloadTrigger, ok: bool, restart_pending: bool) {
        count(&self.config_reloads, trigger, ok);
        self.config_ok.set(i64::from(ok));
        if ok {
            self.restart_pending.set(i64::from(restart_pending));
        }
    }

    /// Sets the user count (at start-up).
    pub fn set_users(&self, n: usize) {
        self.users.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

fn count(attempts: &Family<Words<2>, Counter>, trigger: ReloadTrigger, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    attempts
        .get_or_create(&[("trigger", trigger.label()), ("result", result)])
        .inc();
}

/// The registry and every handle into it; built once in `Gateway::start`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// For the access-log layer.
    pub http: HttpMetrics,
    /// For the forwarder.
    pub upstream: UpstreamMetrics,
    /// The outbound connector bumps it for each new TLS connection.
    pub handshakes: Counter,
    /// For key-store and config reloads.
    pub reloads: ReloadMetrics,
    connections: Family<Words<1>, Gauge>,
    connections_max: Family<Words<1>, Gauge>,
    stalled: Family<Words<1>, Counter>,
    sources: Option<Arc<dyn Source>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric the gateway records itself.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let http = register_http(&mut registry);
        let (upstream, handshakes) = register_upstream(&mut registry);
        let reloads = register_reloads(&mut registry);
        process::register(&mut registry);
        let mut m = Metrics {
            registry,
            http,
            upstream,
            handshakes,
            reloads,
            connections: Family::default(),
            connections_max: Family::default(),
            stalled: Family::default(),
            sources: None,
        };
        register!(m.registry;
            "connections_open", m.connections,
            "Open inbound connections by listener (public, admin)";
            "connections_max", m.connections_max,
            "The listener's connection limit (server.max_connections, admin.max_connections): at this many open, new connections wait in the backlog";
            "connections_stalled", m.stalled,
            "Connections closed because the caller took none of a response for server.send_timeout";
        );
        m
    }

    /// Adds the figures other parts keep themselves (cache, rate limits, JWKS), read at scrape.
    pub fn add_sources<S: Source>(&mut self, sources: Arc<S>) {
        self.registry.register_collector(Box::new(sources.clone()));
        self.sources = Some(sources);
    }

    /// Handles for the accept loop of `listener` (`public` or `admin`), whose limit is `max`.
    pub fn connections(&self, listener: &'static str, max: usize) -> ConnMetrics {
        let l = [("listener", listener)];
        self.connections_max
            .get_or_create(&l)
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        ConnMetrics {
            open: self.connections.get_or_create_owned(&l),
            stalled: self.stalled.get_or_create_owned(&l),
        }
    }

    /// The text exposition (OpenMetrics); refreshes scrape-time gauges first.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        if let Some(s) = &self.sources {
            s.refresh().await;
        }
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Requests answered, their durations, and those in flight.
fn register_http(registry: &mut Registry) -> HttpMetrics {
    let durations = Family::<Words<1>, Histogram, fn() -> Histogram>::new_with_constructor(latency);
    let m = HttpMetrics {
        requests: Family::default(),
        durations: [RouteClass::Proxy, RouteClass::Health, RouteClass::Other]
            .map(|r| durations.get_or_create_owned(&[("route", r.label())])),
        in_flight: Gauge::default(),
    };
    register!(registry;
        "http_requests", m.requests,
        "Requests answered, by route class (proxy, health, other), method and status";
        "http_request_duration_seconds", durations,
        "Whole request time, until the response body was sent, by route class";
        "http_requests_in_flight", m.in_flight,
        "Requests being handled right now";
    );
    m
}

/// Exchanges with Cliniko: durations, failures, refused keys; and new TLS connections.
fn register_upstream(registry: &mut Registry) -> (UpstreamMetrics, Counter) {
    let m = UpstreamMetrics {
        duration: latency(),
        errors: Family::default(),
        rejected: Family::default(),
    };
    let handshakes = Counter::default();
    register!(registry;
        "upstream_duration_seconds", m.duration,
        "Time from sending a request to Cliniko until its response headers (or the failure)";
        "upstream_errors", m.errors,
        "Failed exchanges with Cliniko by kind (connect, connect_timeout, tls, timeout, protocol, credential_rejected)";
        "upstream_credential_rejected", m.rejected,
        "Cliniko 401s to a stored key, by the key's fingerprint (rotate that key)";
        "upstream_tls_handshakes", handshakes,
        "New outbound TLS connections (Cliniko and JWKS); low means the pool is reused";
    );
    (m, handshakes)
}

/// Config and key-store reloads, and whether the last ones succeeded.
fn register_reloads(registry: &mut Registry) -> ReloadMetrics {
    let m = ReloadMetrics::default();
    m.keystore_ok.set(1);
    m.config_ok.set(1);
    register!(registry;
        "keystore_reloads", m.reloads,
        "Key-store reload attempts by trigger (signal, admin, file) and result (ok, failed)";
        "keystore_users", m.users,
        "Users in the key store now serving";
        "config_reloads", m.config_reloads,
        "Config reload attempts by trigger (signal, admin, file) and result (ok, failed)";
        "keystore_integrity_failures", m.integrity,
        "Key-store files refused on reload because their integrity MAC is missing or wrong (changed without the master key)";
        "config_restart_pending", m.restart_pending,
        "1 when the last reloaded config changed a section that only applies after a restart";
        "keystore_last_reload_successful", m.keystore_ok,
        "0 after a refused key-store reload (the previous store keeps serving) until one succeeds";
        "config_last_reload_successful", m.config_ok,
        "0 after a refused config reload (the previous config keeps serving) until one succeeds";
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method the gateway passes has its own label (a method added to the policy's list
    /// but not here would be counted as OTHER).
    #[test]
    fn every_passed_method_is_labelled_by_name() {
        for m in crate::policy::ALL_METHODS {
            assert_eq!(method_label(&m), m.as_str());
        }
        assert_eq!(method_label(&http::Method::TRACE), "OTHER");
    }

    #[test]
    fn routes_are_classified_into_three_bounded_values() {
        assert_eq!(RouteClass::of("/v1/patients/7"), RouteClass::Proxy);
        assert_eq!(RouteClass::of("/v1"), RouteClass::Proxy);
        assert_eq!(RouteClass::of("/v1x"), RouteClass::Other);
        assert_eq!(RouteClass::of("/readyz"), RouteClass::Health);
        assert_eq!(RouteClass::of("/healthz"), RouteClass::Health);
        assert_eq!(RouteClass::of("/admin"), RouteClass::Other);
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        assert_eq!(method_label(&http::Method::TRACE), "OTHER");
    }

    #[tokio::test]
    async fn recorded_values_show_up_with_bounded_labels() {
        let m = Metrics::new();
        let h = &m.http;
        h.started();
        h.started();
        h.finished(RouteClass::Proxy, "GET", 200, Duration::from_millis(3));
        m.upstream.error(UpstreamError::Tls);
        m.upstream.observe(Duration::from_millis(2));
        m.handshakes.inc();
        m.reloads.record(ReloadTrigger::File, None);
        m.reloads.record(ReloadTrigger::Signal, Some(4));
        m.reloads.record_config(ReloadTrigger::Admin, false, false);
        m.upstream.credential_rejected("sha256:0011223344556677");
        let text = m.render().await.unwrap();
        let has = |s: &str| assert!(text.contains(s), "missing {s} in\n{text}");
        has(r#"cliniko_gateway_http_requests_total{route="proxy",method="GET",status="200"} 1"#);
        has("cliniko_gateway_http_requests_in_flight 1");
        has(r#"cliniko_gateway_http_request_duration_seconds_bucket{le="0.005",route="proxy"} 1"#);
        has(r#"cliniko_gateway_http_request_duration_seconds_count{route="health"} 0"#);
        has(r#"cliniko_gateway_upstream_errors_total{kind="tls"} 1"#);
        has("cliniko_gateway_upstream_duration_seconds_count 1");
        has("cliniko_gateway_upstream_tls_handshakes_total 1");
        has(r#"cliniko_gateway_keystore_reloads_total{trigger="file",result="failed"} 1"#);
        has(r#"cliniko_gateway_keystore_reloads_total{trigger="signal",result="ok"} 1"#);
        has("cliniko_gateway_keystore_users 4");
        // The last key-store reload succeeded, the last config reload was refused.
        has("cliniko_gateway_keystore_last_reload_successful 1");
        has("cliniko_gateway_config_last_reload_successful 0");
        has(r#"cliniko_gateway_upstream_errors_total{kind="credential_rejected"} 1"#);
        has(concat!(
            "cliniko_gateway_upstream_credential_rejected_total",
            r#"{key_fingerprint="sha256:0011223344556677"} 1"#
        ));
        has("cliniko_gateway_start_time_seconds ");
        #[cfg(target_os = "linux")]
        has("cliniko_gateway_process_resident_memory_bytes ");
    }
}
