//! The `[log]` section: its types say all there is (no rules beyond them).

use serde::{Deserialize, Serialize};

settings! {
    /// Log output.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct LogConfig {
        /// `auto` (text on a terminal, else JSON), `json` (one object per line) or `text`.
        pub format: LogFormat = LogFormat::Auto,
        /// Filter, e.g. `info` or `cliniko_gateway=debug`; `RUST_LOG` wins when set.
        pub level: String = "info".into(),
    }
}

/// Log line format.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text when stdout is a terminal, JSON otherwise (a container, a pipe, a file).
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}
