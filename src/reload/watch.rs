//! Noticing changed files without a signal: the key store, the config file and the secret and
//! key files it names are polled every `keystore.watch_interval`.
//!
//! Why polling and not inotify: in containers the files usually arrive through a bind mount
//! or a Kubernetes Secret/ConfigMap volume, which is updated by swapping a symlink; inotify on
//! the file misses that, and a few `stat`s every couple of seconds are cheap and always work.

use super::Reloader;
use crate::metrics::ReloadTrigger;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

impl Reloader {
    /// Polls the key-store file and the config's files every `every` until `shutdown`
    /// flips: a changed key store reloads the keys, a changed config file (or secret or PEM
    /// file it names) reloads the config. A change is a different size, modification time or
    /// inode (an atomic rename, a Kubernetes volume's symlink swap).
    pub async fn watch_files(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // A database store is followed by `follow_store` instead.
        let keys = self
            .fixed
            .credentials
            .backend()
            .path()
            .map(Path::to_path_buf);
        let mut config_files = self.watched_config_files();
        let mut seen_keys = keys.as_deref().and_then(signature);
        let mut seen_config = signatures(&config_files);
        let mut missing_logged = false;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = signatures(&config_files);
            // Any change counts, a deleted key file too (the new config may no longer name
            // it); only a missing config file itself waits for the file to come back.
            if now != seen_config && now.first().is_some_and(Option::is_some) {
                // Taken before the reload and kept whatever its outcome: a bad file is reported
                // once, and a write that lands during the reload is seen on the next poll.
                seen_config = now;
                let _ = self.reload_config(ReloadTrigger::File).await;
                let files = self.watched_config_files();
                if files != config_files {
                    // The new config names other files: keep the snapshot for those still
                    // watched.
                    // A newly named file starts unseen: the next poll reloads once more, which
                    // rebuilds nothing if it did not change, and misses no edit made meanwhile.
                    seen_config = files
                        .iter()
                        .map(|f| match config_files.iter().position(|o| o == f) {
                            Some(i) => seen_config[i],
                            None => None,
                        })
                        .collect();
                    config_files = files;
                }
            }
            let Some(keys) = &keys else { continue };
            let now = signature(keys);
            if now.is_none() {
                // Never there (enrolment on, before its first write): nothing is missing.
                if !missing_logged && seen_keys.is_some() {
                    tracing::warn!(path = %keys.display(), "key-store file is missing; keeping the current store");
                    missing_logged = true;
                }
                continue;
            }
            missing_logged = false;
            if now != seen_keys {
                seen_keys = now;
                let _ = self.reload_keys(ReloadTrigger::File).await;
            }
        }
    }

    /// Follows a database store (a no-op for a file): reloads when another replica's write is
    /// notified, and, as the backstop for a lost notification, when the revision polled
    /// every `every` is newer than the one serving. A change is thus served within `every`
    /// at worst, within milliseconds usually.
    pub async fn follow_store(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(pg) = self.fixed.credentials.backend().database().cloned() else {
            return;
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(pg.listen(wake.clone()));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
            match self.fixed.credentials.stale().await {
                Ok(true) => {
                    let _ = self.reload_keys(ReloadTrigger::Store).await;
                }
                Ok(false) => {}
                // Counted as a failed reload, and retried at the next poll: the follower
                // never ends while the gateway serves.
                Err(e) => {
                    tracing::warn!(error = %e, "key-store database: cannot read the revision; keeping the current store");
                    self.metrics.record(ReloadTrigger::Store, None);
                }
            }
        }
        listener.abort();
    }

    /// The config file and the secret and key files it names (empty: not from a file).
    fn watched_config_files(&self) -> Vec<PathBuf> {
        let live = self.current();
        let c = &live.config;
        let Some(source) = &c.source else {
            return Vec::new();
        };
        let mut files = vec![source.path.clone()];
        files.extend(c.auth.hmac_secret_file.clone());
        files.extend(c.auth.public_keys.iter().map(|k| k.file.clone()));
        files
    }
}

fn signatures(paths: &[PathBuf]) -> Vec<Option<(u64, Option<SystemTime>, u64)>> {
    paths.iter().map(|p| signature(p)).collect()
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
