//! The process's own figures: resident memory (what the container's memory limit and the
//! OOM killer look at) read from `/proc` at scrape time, and when this gateway started (its
//! changes show restarts). prometheus-client has no process collector; off Linux the memory
//! figure is simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

pub(super) fn register(r: &mut Registry) {
    let started = Gauge::<f64, AtomicU64>::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    started.set(now.as_secs_f64());
    r.register_with_unit(
        "start_time",
        "Unix time this gateway started (a change means it restarted)",
        Unit::Seconds,
        started,
    );
    r.register_collector(Box::new(Resident));
}

#[derive(Debug)]
struct Resident;

impl Collector for Resident {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(bytes) = resident_bytes() else {
            return Ok(());
        };
        let m = enc.encode_descriptor(
            "process_resident_memory",
            "Resident set size of the process (VmRSS)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(m)
    }
}

/// `VmRSS:   12345 kB` from `/proc/self/status` (kB there means KiB).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn resident_memory_is_read_from_proc() {
        // Holding a touched 32 MiB buffer, RSS is at least that much.
        let held = vec![1u8; 32 << 20];
        let rss = super::resident_bytes().expect("VmRSS on Linux");
        assert!(rss >= held.len() as u64, "rss {rss}");
        assert!(held.iter().all(|b| *b == 1));
    }
}
