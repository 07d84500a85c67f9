//! Reloading without downtime, from any trigger: SIGHUP, `POST /admin/reload`, or a change
//! seen by polling the files. Two things reload, each swapped atomically (requests in flight
//! keep what they started with):
//! - the key store, in place;
//! - the reloadable parts of the config (`[auth]` keys and claims, `[policy]`, `[ratelimit]`,
//!   `[redis]`, `[cache]`, `[cors]`): the config file is read and validated again and a new
//!   stack set is swapped in (see [`config`]). Other sections need a restart: a change there
//!   is logged, shown by `config_restart_pending` and in the admin reply, and otherwise
//!   ignored.
//!
//! A file that does not load completely (bad TOML, a bad field, wrong master key, tampered
//! entry or a key store failing its integrity MAC, an unreachable new JWKS) is refused: the
//! old state keeps serving, an error line is logged and `*_reloads_total{result="failed"}`
//! counts it (an integrity failure also `keystore_integrity_failures_total`).
//!
//! Files are watched by polling (`watch.rs`).

pub mod config;
mod watch;

use crate::config::{Config, ConfigError};
use crate::credentials::KeyStoreError;
use crate::live::{Live, Shared};
use crate::metrics::{ReloadMetrics, ReloadTrigger};
use crate::stack::Fixed;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Why a reload was refused (the previous state keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The key store did not load.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The config did not load, validate or build.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What a successful reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Users in the key store now serving (`None`: the key store was not reloaded).
    pub users: Option<usize>,
    /// Reloadable config sections that changed and were swapped in.
    pub changed: Vec<&'static str>,
    /// Sections that differ from the running config but only apply after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Reloads the key store and the config, and records the outcomes; shared by every trigger.
pub struct Reloader {
    live: Shared,
    /// The parts a reload keeps (the key store among them, reloaded in place).
    pub fixed: Fixed,
    /// The config the process started with, when it came from a file: the reference for
    /// restart-only sections. The lock also serialises reloads: two triggers at once would
    /// otherwise race to swap.
    started: Mutex<Option<Config>>,
    metrics: ReloadMetrics,
}

impl Reloader {
    /// A reloader for the key store and, when the config came from a file, for the config too.
    pub fn new(live: Shared, fixed: Fixed, metrics: ReloadMetrics) -> Arc<Reloader> {
        metrics.set_users(fixed.credentials.current().len());
        let started = Some(live.load().config.clone()).filter(|c| c.source.is_some());
        Arc::new(Reloader {
            live,
            fixed,
            started: Mutex::new(started),
            metrics,
        })
    }

    /// The set serving now.
    pub fn current(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Reloads the config (when it came from a file) and the key store; each part that fails
    /// keeps its previous state. The first failure is returned.
    pub async fn reload(&self, trigger: ReloadTrigger) -> Result<Reloaded, ReloadError> {
        let config = self.reload_config(trigger).await;
        let users = self.reload_keys(trigger).await;
        let mut out = config?;
        out.users = Some(users?);
        Ok(out)
    }

    /// Re-reads the key store (off the async threads); on error the old store keeps serving.
    pub async fn reload_keys(&self, trigger: ReloadTrigger) -> Result<usize, KeyStoreError> {
        let result = self.fixed.credentials.reload().await;
        match &result {
            Ok(n) => {
                tracing::info!(users = n, trigger = trigger.label(), "key store reloaded");
                self.metrics.record(trigger, Some(*n));
            }
            Err(e) => {
                let integrity = matches!(
                    e,
                    KeyStoreError::Tampered { .. } | KeyStoreError::Unsigned { .. }
                );
                tracing::error!(error = %e, trigger = trigger.label(), integrity, "key store reload failed; keeping the previous store");
                self.metrics.record(trigger, None);
                if integrity {
                    self.metrics.record_integrity_failure();
                }
            }
        }
        result
    }

    /// Re-reads the config file and swaps in what changed; a no-op when the config did not
    /// come from a file.
    pub async fn reload_config(&self, trigger: ReloadTrigger) -> Result<Reloaded, ReloadError> {
        let guard = self.started.lock().await;
        let Some(started) = guard.as_ref() else {
            return Ok(Reloaded::default());
        };
        let result = self.apply(started).await;
        match &result {
            Ok(r) => {
                tracing::info!(
                    trigger = trigger.label(),
                    changed = ?r.changed,
                    restart_needed = ?r.restart_needed,
                    "config reloaded"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(sections = ?r.restart_needed, "these config sections changed but only apply after a restart");
                }
                self.metrics
                    .record_config(trigger, true, !r.restart_needed.is_empty());
            }
            Err(e) => {
                tracing::error!(error = %e, trigger = trigger.label(), "config reload failed; keeping the previous config");
                self.metrics.record_config(trigger, false, false);
            }
        }
        result.map_err(ReloadError::from)
    }

    async fn apply(&self, started: &Config) -> Result<Reloaded, ConfigError> {
        let current = self.live.load_full();
        let Some(source) = current.config.source.clone() else {
            return Ok(Reloaded::default());
        };
        let (new, auth) = tokio::task::spawn_blocking(move || {
            source.load().map(|c| {
                let auth = config::auth_identity(&c);
                (c, auth)
            })
        })
        .await
        .map_err(|_| ConfigError::new("(reload)", "the reload task failed", "try again"))??;
        new.warn_deprecated();
        let restart_needed = config::restart_needed(started, &new);
        let (applied, changed) = Live::build(&self.fixed, &new, auth, Some(&current)).await?;
        self.live.store(Arc::new(applied));
        // Only now that the new set serves: a changed [redis] moves the bus to it.
        self.fixed.bus.configure(&new.redis);
        Ok(Reloaded {
            users: None,
            changed,
            restart_needed,
        })
    }
}
