//! The key budget shared by every replica: one Lua script per decision, run atomically by
//! Redis on Redis's own clock (`TIME`), so replicas with skewed clocks still agree.
//!
//! The script is `super::gcra` line for line: one key per budget
//! (`<redis.prefix>:budget:<budget id>`) holding the TAT in µs since the Unix epoch, with an
//! expiry just past it so idle budgets vanish. Every call is bounded by `redis.timeout`; a
//! timeout or error is reported to the caller, which fails open or closed.

use super::gcra::{Decision, Gcra};
use crate::config::{ConfigError, RedisConfig, RedisUrl};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// ARGV: interval µs, burst, max wait µs, pause µs (0 = none), reserve (1/0).
/// Returns {1 if a slot was reserved else 0, wait µs}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
local reserve = ARGV[5] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local changed = false
if pause > 0 then
  local floor = now + pause + interval * (burst - 1)
  if tat < floor then
    tat = floor
    changed = true
  end
end
local base = tat
if base < now then base = now end
local new_tat = base + interval
local wait = new_tat - interval * burst - now
if wait < 0 then wait = 0 end
local admitted = 0
if reserve and wait <= max_wait then
  tat = new_tat
  changed = true
  admitted = 1
end
if changed then
  local ttl = math.floor((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl)
end
return {admitted, wait}
";

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// No answer within `redis.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connection or command failure.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// The Redis side of the key budgets (a clone shares the connection).
#[derive(Clone)]
pub struct SharedBudget {
    conn: ConnectionManager,
    script: redis::Script,
    /// `[redis]` as configured (its `failure`: what the budgets do while Redis is down).
    pub(super) cfg: RedisConfig,
}

impl SharedBudget {
    /// Prepares a lazy, self-reconnecting connection when `redis.url` is set (nothing is sent
    /// until the first request, so a Redis that is down at start-up does not stop the gateway).
    pub(super) fn of(cfg: &RedisConfig) -> Result<Option<SharedBudget>, ConfigError> {
        let Some(RedisUrl(url)) = &cfg.url else {
            return Ok(None);
        };
        let bad = || {
            ConfigError::new(
                "redis.url",
                "cannot be used",
                "write it like redis://127.0.0.1:6379/0",
            )
        };
        let client = redis::Client::open(url.as_str()).map_err(|_| bad())?;
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, mc).map_err(|_| bad())?;
        Ok(Some(SharedBudget {
            conn,
            script: redis::Script::new(SCRIPT),
            cfg: cfg.clone(),
        }))
    }

    /// One decision on budget `id` under `gcra`; see `super::gcra::Gcra::decide` and `pause`.
    pub async fn decide(
        &self,
        id: &str,
        gcra: &Gcra,
        max_wait: u64,
        pause: u64,
        reserve: bool,
    ) -> Result<Decision, SharedError> {
        let mut conn = self.conn.clone();
        let key = format!("{}:budget:{id}", self.cfg.prefix);
        let mut call = self.script.key(key);
        call.arg(gcra.interval)
            .arg(gcra.burst)
            .arg(max_wait.min(1 << 52))
            .arg(pause)
            .arg(if reserve { 1 } else { 0 });
        let run = call.invoke_async::<(i64, i64)>(&mut conn);
        let (admitted, wait) = tokio::time::timeout(self.cfg.timeout, run)
            .await
            .map_err(|_| SharedError::Timeout(self.cfg.timeout))??;
        let wait = u64::try_from(wait).unwrap_or(0);
        Ok(if admitted == 1 {
            Decision::Admit(wait)
        } else {
            Decision::Refuse(wait)
        })
    }
}
