//! Per-app figures of the key budgets' fair queues: requests admitted, how long they waited,
//! requests refused. The `app` label is a name from `[ratelimit.shares.apps]` or `other`, never
//! a name straight from a token, so a caller cannot mint series.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Duration;

/// Seconds; a wait is bounded by `ratelimit.max_wait` (at most 60 s).
const WAIT_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0,
];

/// `app`: a configured app name or `other`.
type AppLabels = [(&'static str, String); 1];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// The three families; kept with the rate-limit counters, so they outlive config reloads,
/// and written at scrape time by the live parts' collector.
#[derive(Clone, Debug)]
pub struct AppMetrics {
    admitted: Family<AppLabels, Counter>,
    refused: Family<AppLabels, Counter>,
    waited: Family<AppLabels, Histogram, fn() -> Histogram>,
}

impl Default for AppMetrics {
    fn default() -> Self {
        AppMetrics {
            admitted: Family::default(),
            refused: Family::default(),
            waited: Family::new_with_constructor(wait_histogram),
        }
    }
}

impl AppMetrics {
    /// The handles of one label (a configured app, or
    /// [`OTHER_APP`](crate::config::shares::OTHER_APP)); taken once per config
    /// so a request only bumps atomics.
    pub fn app(&self, label: &str) -> AppCounts {
        let l = [("app", label.to_owned())];
        AppCounts {
            admitted: self.admitted.get_or_create_owned(&l),
            refused: self.refused.get_or_create_owned(&l),
            waited: self.waited.get_or_create_owned(&l),
        }
    }

    /// Writes the families.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        super::figures!(enc;
            metric "ratelimit_app_admitted",
                "Requests a key budget admitted, by app (configured name or other)",
                &self.admitted;
            metric "ratelimit_app_wait_seconds",
                "Time admitted requests waited for their key-budget slot, by app",
                &self.waited;
            metric "ratelimit_app_refused",
                "Requests a key budget refused with 429 (queue full, or no slot within max_wait), by app",
                &self.refused;
        );
        Ok(())
    }
}

/// One label's handles.
#[derive(Clone, Debug)]
pub struct AppCounts {
    admitted: Counter,
    refused: Counter,
    waited: Histogram,
}

impl AppCounts {
    /// A request was admitted after waiting `waited`.
    pub fn admitted(&self, waited: Duration) {
        self.admitted.inc();
        self.waited.observe(waited.as_secs_f64());
    }

    /// A request was refused (429).
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// Requests admitted so far (for tests).
    pub fn admitted_total(&self) -> u64 {
        self.admitted.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Scraped(AppMetrics);

    impl Collector for Scraped {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(&mut enc)
        }
    }

    #[test]
    fn per_app_figures_render_under_their_label() {
        let m = AppMetrics::default();
        let desk = m.app("reception");
        desk.admitted(Duration::from_millis(30));
        desk.admitted(Duration::ZERO);
        m.app(crate::config::shares::OTHER_APP).refused();
        let mut r = Registry::with_prefix(crate::metrics::PREFIX);
        r.register_collector(Box::new(Scraped(m)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            r#"cliniko_gateway_ratelimit_app_admitted_total{app="reception"} 2"#,
            r#"cliniko_gateway_ratelimit_app_wait_seconds_bucket{le="0.05",app="reception"} 2"#,
            r#"cliniko_gateway_ratelimit_app_wait_seconds_bucket{le="0.025",app="reception"} 1"#,
            r#"cliniko_gateway_ratelimit_app_refused_total{app="other"} 1"#,
            r#"cliniko_gateway_ratelimit_app_admitted_total{app="other"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
