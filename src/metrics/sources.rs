//! Figures other parts already keep as plain atomics (cache, rate limits, JWKS), turned into
//! metrics when Prometheus scrapes, so their hot paths carry no metrics code: the encoding
//! helpers and the [`Source`] seam (the live parts implement it, in `crate::scrape`).

use futures_util::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Counters kept elsewhere, read at each scrape.
pub trait Source: Collector {
    /// Registers the gauges it sets in [`Source::refresh`].
    fn register_gauges(&self, r: &mut Registry);
    /// Brings figures that lag (moka's sizes) up to date before encoding.
    fn refresh(&self) -> BoxFuture<'_, ()>;
}

/// Registers an `Arc`'d source as a collector.
#[derive(Debug)]
pub(super) struct Shared(pub(super) Arc<dyn Source>);

impl Collector for Shared {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(enc)
    }
}

/// One counter family with a single label.
pub fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (v, n) in values {
        let labels = [(label, *v)];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

pub fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(n).encode(m)
}

pub fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m)
}

/// A gauge whose value is read from elsewhere at scrape time (readiness, open connections).
pub(super) struct FnGauge {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for FnGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnGauge").field("name", &self.name).finish()
    }
}

impl Collector for FnGauge {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(&mut enc, self.name, self.help, (self.read)())
    }
}
