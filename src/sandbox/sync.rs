//! Small helpers every part of the sandbox shares.

use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// Locks a mutex, ignoring poisoning: a panicking test must not hide the sandbox's record.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the stop flag is raised or the [`super::Sandbox`] is gone.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
