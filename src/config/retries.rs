//! The `[upstream.retries]` section: when a request goes to Cliniko again (the policy
//! `crate::retry` applies). Reloadable, unlike the rest of `[upstream]`.

use super::ConfigError;
use super::validate::refuse_if;
use serde::{Deserialize, Serialize};
use std::time::Duration;

settings! {
    /// `[upstream.retries]`: one policy for every resend, whatever `[ratelimit]` says.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RetryConfig {
        /// Resends of a bodiless request whose connection to Cliniko failed (nothing was sent).
        pub connect: u32 = 2,
        /// The wait before the first such resend; it doubles for each next one, jittered down
        /// to as little as half.
        #[serde(with = "humantime_serde")]
        pub backoff: Duration = Duration::from_millis(100),
        /// Resend a bodiless GET/HEAD once after Cliniko's 429/503, once its wait is over.
        pub throttled: bool = true,
        /// The longest wait of Cliniko's that such a GET/HEAD waits out (beyond it, Cliniko's
        /// answer is passed on); unset: `ratelimit.max_wait`.
        #[serde(default, with = "humantime_serde")]
        pub max_wait: Option<Duration> = None,
    }
}

/// The `[upstream.retries]` rules the types cannot express.
pub(super) fn validate(c: &RetryConfig) -> Result<(), ConfigError> {
    refuse_if(
        c.connect > 5,
        "upstream.retries.connect",
        "more than 5",
        "use 0 to 5 (default 2): each resend makes the caller wait longer",
    )?;
    refuse_if(
        c.backoff > Duration::from_secs(5),
        "upstream.retries.backoff",
        "longer than 5s",
        "keep it short (default \"100ms\"): callers are waiting",
    )?;
    refuse_if(
        c.max_wait.is_some_and(|w| w > Duration::from_secs(60)),
        "upstream.retries.max_wait",
        "longer than a minute",
        "keep it short (default: ratelimit.max_wait, 2s): callers are waiting",
    )
}
