//! The `[upstream]` section (how Cliniko is reached) and its validation.

use super::retries::RetryConfig;
use super::validate::{
    ConfigError, check_https_url, count, is_shard_name, non_zero, refuse_if, secs, valid_user_agent,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// How Cliniko is reached.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Sent as `User-Agent`; Cliniko requires `App name (contact email)`.
    pub user_agent: String,
    /// Base URL per shard; `{shard}` is replaced.
    #[serde(default = "default_url_template")]
    pub url_template: String,
    /// Per-shard base URLs that override the template (tests and the demo use loopback),
    /// checked once at load.
    #[serde(default, with = "super::validate::https_urls")]
    pub shards: BTreeMap<String, http::Uri>,
    /// Extra PEM CA bundle trusted besides the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    #[serde(default = "secs::<5>", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time until Cliniko's response headers arrive (504 beyond).
    #[serde(default = "secs::<60>", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest pause between body chunks from Cliniko before the response is cut off.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(default = "secs::<90>", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per shard.
    #[serde(default = "count::<32>")]
    pub pool_max_idle_per_host: usize,
    /// Most requests one verified user may have in flight to Cliniko at once (sent, and the
    /// answer not yet fully delivered or dropped); beyond it, 429 `too_many_in_flight`.
    // Default 16: well under the concurrent streams Cliniko allows on the shard's one HTTP/2
    // connection (typically 100-128), so one caller cannot take them all; and above what an
    // honest caller reaches under the key budget (burst 10, then about 3 a second). See
    // docs/security.md.
    #[serde(default = "count::<16>")]
    pub max_in_flight_per_user: usize,
    /// When a request goes to Cliniko again (reloadable, unlike the rest of `[upstream]`).
    #[serde(default)]
    pub retries: RetryConfig,
}

fn default_url_template() -> String {
    "https://api.{shard}.cliniko.com/v1".into()
}

/// The `[upstream]` rules the types cannot express (`[upstream.retries]` included).
pub(super) fn validate(u: &UpstreamConfig) -> Result<(), ConfigError> {
    super::retries::validate(&u.retries)?;
    non_zero(&[
        ("upstream.connect_timeout", u.connect_timeout),
        ("upstream.timeout", u.timeout),
    ])?;
    refuse_if(
        !valid_user_agent(&u.user_agent),
        "upstream.user_agent",
        "Cliniko requires `App name (contact email)`",
        "write it like \"Acme Clinic Gateway (it@acme.example)\"",
    )?;
    refuse_if(
        !u.url_template.contains("{shard}"),
        "upstream.url_template",
        "has no {shard} placeholder",
        "use https://api.{shard}.cliniko.com/v1",
    )?;
    refuse_if(
        !(1..=1000).contains(&u.max_in_flight_per_user),
        "upstream.max_in_flight_per_user",
        "out of range",
        "use 1 to 1000, well below Cliniko's concurrent streams per connection (default 16)",
    )?;
    check_https_url(
        "upstream.url_template",
        &u.url_template.replace("{shard}", "au1"),
    )?;
    match u.shards.keys().find(|s| !is_shard_name(s)) {
        Some(s) => Err(ConfigError::new(
            format!("upstream.shards.{s}"),
            "not a shard name",
            "shard names look like au1, uk2, ca1",
        )),
        None => Ok(()),
    }
}
