//! Figures other parts already keep as plain atomics (cache, rate limits, JWKS), turned into
//! metrics when Prometheus scrapes, so their hot paths carry no metrics code: the encoding
//! helpers and the [`Source`] seam (the live parts implement it, in `crate::scrape`).

use futures_util::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Counters kept elsewhere, read at each scrape.
pub trait Source: Collector {
    /// Brings figures that lag (moka's sizes) up to date before encoding.
    fn refresh(&self) -> BoxFuture<'_, ()>;
}

/// Writes a table of figures in order: `counter` or `gauge` with its name, help and value,
/// `family` with its name, help, label and `[(label value, value)]`, `metric` with its name,
/// help and a metric kept elsewhere.
macro_rules! figures {
    ($enc:expr; $($kind:ident $name:literal, $help:literal, $($arg:expr),+;)+) => {
        $($crate::metrics::$kind($enc, $name, $help, $($arg),+)?;)+
    };
}
pub(crate) use figures;

/// A metric kept elsewhere (e.g. a family of histograms).
pub fn metric(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
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
    metric(enc, name, help, &ConstCounter::new(n))
}

pub fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    n: u64,
) -> Result<(), std::fmt::Error> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    metric(enc, name, help, &ConstGauge::new(n))
}
