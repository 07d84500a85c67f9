//! The `[compression]` section (answers to callers) and its validation.

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};

settings! {
    /// `[compression]`: gzip, br or zstd for callers that ask (`Accept-Encoding`); needs a restart.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct CompressionConfig {
        /// Master switch; off, every answer goes out as it is (identity).
        pub enabled: bool = true,
        /// 1 (fastest) to 9 (smallest), gzip's scale; brotli gets the same number.
        // The LAN leg is fast: level 1 keeps most of the gain (JSON shrinks 5-10x) for a
        // fraction of the CPU of the higher levels.
        pub level: u32 = 1,
        /// Bodies known to be smaller than this go out uncompressed (not worth the CPU or the
        /// gzip header), unless the caller refuses identity.
        pub min_bytes: u64 = 1024,
    }
}

/// Rules the types cannot express.
pub(super) fn validate(c: &CompressionConfig) -> Result<(), ConfigError> {
    refuse_if(
        !(1..=9).contains(&c.level),
        "compression.level",
        "out of range",
        "use 1 (fastest, the default) to 9 (smallest)",
    )?;
    refuse_if(
        c.min_bytes > 1024 * 1024,
        "compression.min_bytes",
        "too large: bodies this big are exactly the ones worth compressing",
        "use a value up to 1048576; 1024 is typical (or set compression.enabled = false)",
    )
}
