//! The `[cache]` section (the in-memory GET cache) and its validation.

use super::validate::{ConfigError, refuse_if};
use serde::{Deserialize, Serialize};
use std::time::Duration;

settings! {
    /// The in-memory GET cache.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct CacheConfig {
        /// Master switch.
        pub enabled: bool = true,
        /// Memory the cache may hold: bodies as stored, headers, keys and bookkeeping, rounded
        /// as the allocator rounds them; 1/16 of it is kept for answers being read in.
        pub capacity_bytes: u64 = 256 * 1024 * 1024,
        /// Larger responses stream through uncached.
        pub max_entry_bytes: u64 = 1024 * 1024,
        /// Keep each answer as one gzip copy (sent as it is to callers that take gzip, decoded
        /// for the others): 4-5x more answers in the same bytes.
        pub compress: bool = true,
        /// How long past its TTL an entry with an ETag is kept for revalidation.
        #[serde(with = "humantime_serde")]
        pub revalidate_window: Duration = Duration::from_secs(600),
        /// Which paths are cached and for how long; the longest matching prefix wins, TTL 0 =
        /// never.
        pub rules: Vec<CacheRule> = default_rules(),
    }
}

/// One cache rule.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Path prefix, matched on whole segments (`/v1/patients` matches `/v1/patients/7`).
    pub prefix: String,
    /// Time to live; `0s` disables caching under this prefix.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_rules() -> Vec<CacheRule> {
    let rule = |prefix: &str, secs: u64| CacheRule {
        prefix: prefix.into(),
        ttl: Duration::from_secs(secs),
    };
    vec![
        // Reference data changes rarely: minutes.
        rule("/v1/practitioners", 300),
        rule("/v1/businesses", 300),
        rule("/v1/appointment_types", 300),
        rule("/v1/billable_items", 300),
        rule("/v1/services", 300),
        rule("/v1/settings", 300),
        // Patient and diary data changes all day: seconds.
        rule("/v1/patients", 10),
        rule("/v1/individual_appointments", 10),
        rule("/v1/appointments", 10),
    ]
}

/// The `[cache]` rules the types cannot express.
pub(super) fn validate(k: &CacheConfig) -> Result<(), ConfigError> {
    // A fill holds the answer while reading it, out of the 1/16 of the capacity kept for that.
    refuse_if(
        k.enabled && (k.max_entry_bytes == 0 || k.max_entry_bytes > k.capacity_bytes / 16),
        "cache.max_entry_bytes",
        "must be between 1 and cache.capacity_bytes / 16",
        "use e.g. 1048576 (1 MiB) with a capacity of 268435456 (256 MiB)",
    )?;
    refuse_if(
        k.max_entry_bytes > u64::from(u32::MAX),
        "cache.max_entry_bytes",
        "too large",
        "keep entries under 4 GiB (1 MiB is typical)",
    )?;
    for (i, r) in k.rules.iter().enumerate() {
        refuse_if(
            !(r.prefix == "/v1" || r.prefix.starts_with("/v1/"))
                || r.prefix.ends_with('/')
                || r.prefix.contains('?'),
            format!("cache.rules[{i}].prefix"),
            "must be a /v1/... path without a trailing slash or query",
            "write it like \"/v1/practitioners\"",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_each_rule_names_its_field() {
        assert!(validate(&CacheConfig::default()).is_ok());
        let field = |c: CacheConfig| validate(&c).unwrap_err().field;
        let big = CacheConfig {
            max_entry_bytes: 64 * 1024 * 1024,
            ..CacheConfig::default()
        };
        assert_eq!(field(big), "cache.max_entry_bytes");
        let mut slash = CacheConfig::default();
        slash.rules[1].prefix = "/v1/businesses/".into();
        assert_eq!(field(slash), "cache.rules[1].prefix");
    }
}
