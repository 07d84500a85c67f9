//! Reloading the key store without downtime, from any trigger: SIGHUP, `POST /admin/reload`,
//! or a change of the key-store file seen by polling. Beside the request path: a reload swaps
//! the store atomically (requests in flight keep the one they started with).
//!
//! A file that does not load completely (bad JSON, wrong master key, tampered entry) is
//! refused: the old store keeps serving, an error line is logged and
//! `keystore_reloads_total{result="failed"}` counts it.
//!
//! Why polling and not inotify: in containers the file usually arrives through a bind mount
//! or a Kubernetes Secret volume, which is updated by swapping a symlink; inotify on the file
//! misses that, and polling one `stat` every couple of seconds is cheap and always works.

use crate::credentials::{Credentials, KeyStoreError};
use crate::metrics::{ReloadMetrics, ReloadTrigger};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Reloads the key store and records the outcome; shared by every trigger.
pub struct KeyStoreReloader {
    credentials: Arc<Credentials>,
    metrics: ReloadMetrics,
}

impl KeyStoreReloader {
    /// A reloader for `credentials`.
    pub fn new(credentials: Arc<Credentials>, metrics: ReloadMetrics) -> Arc<KeyStoreReloader> {
        metrics.set_users(credentials.current().len());
        Arc::new(KeyStoreReloader {
            credentials,
            metrics,
        })
    }

    /// Re-reads the file (off the async threads); on error the old store keeps serving.
    pub async fn reload(&self, trigger: ReloadTrigger) -> Result<usize, KeyStoreError> {
        let creds = self.credentials.clone();
        let result = tokio::task::spawn_blocking(move || creds.reload())
            .await
            .unwrap_or(Err(KeyStoreError::Crypto("the reload task failed")));
        match &result {
            Ok(n) => {
                tracing::info!(users = n, trigger = trigger.label(), "key store reloaded");
                self.metrics.record(trigger, Some(*n));
            }
            Err(e) => {
                tracing::error!(error = %e, trigger = trigger.label(), "key store reload failed; keeping the previous store");
                self.metrics.record(trigger, None);
            }
        }
        result
    }

    /// Polls the key-store file every `every` and reloads when it changed, until `shutdown`
    /// flips. A change is a different size, modification time or inode (an atomic rename).
    pub async fn watch_file(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let path = self.credentials.path().to_path_buf();
        let mut seen = signature(&path);
        let mut missing_logged = false;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = signature(&path);
            if now.is_none() {
                if !missing_logged {
                    tracing::warn!(path = %path.display(), "key-store file is missing; keeping the current store");
                    missing_logged = true;
                }
                continue;
            }
            missing_logged = false;
            if now != seen {
                // Remember it whatever the outcome: a bad file is reported once, not every poll.
                seen = now;
                let _ = self.reload(ReloadTrigger::File).await;
            }
        }
    }
}

/// What identifies one version of the file without reading it.
fn signature(path: &Path) -> Option<(u64, Option<SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_over_the_file_changes_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.json");
        assert!(signature(&p).is_none());
        std::fs::write(&p, "{}").unwrap();
        let a = signature(&p);
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "{}").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let b = signature(&p);
        assert!(a.is_some() && b.is_some());
        assert_ne!(a, b, "same size and maybe same mtime, but a new inode");
    }
}
