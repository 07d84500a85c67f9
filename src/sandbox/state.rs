//! What one sandbox keeps: the requests it recorded, its overrides and its accounts' data.

use super::data::AccountStore;
use super::{Fault, Recorded, SandboxOptions};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use tokio::sync::watch;

/// Shared state of one sandbox: what it recorded, its overrides and its accounts' data.
pub(crate) struct State {
    pub(crate) requests: Mutex<Vec<Recorded>>,
    pub(crate) faults: Mutex<HashMap<String, Fault>>,
    pub(crate) jwks: Mutex<(u16, serde_json::Value)>,
    pub(crate) jwks_fetches: AtomicUsize,
    /// JSON answers sent gzipped, and their compressed bytes.
    pub(crate) gzipped: AtomicUsize,
    pub(crate) gzipped_bytes: AtomicUsize,
    /// Mirrors `requests.len()` so tests can await arrivals instead of polling.
    pub(crate) arrived: watch::Sender<usize>,
    pub(crate) accounts: Vec<AccountStore>,
    /// `https://host:port`, used for the `/v1`-less `Location` header.
    pub(crate) origin: String,
    /// HTTP/2 streams allowed at once per connection (`None`: hyper's default).
    pub(crate) max_streams: Option<u32>,
}

impl State {
    pub(crate) fn new(opts: &SandboxOptions, origin: String, base_url: String) -> State {
        let accounts = opts
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| AccountStore::seed(i, a, &base_url, &opts.shard))
            .collect();
        State {
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(HashMap::new()),
            jwks: Mutex::new((200, serde_json::json!({"keys": []}))),
            jwks_fetches: AtomicUsize::new(0),
            gzipped: AtomicUsize::new(0),
            gzipped_bytes: AtomicUsize::new(0),
            arrived: watch::Sender::new(0),
            accounts,
            origin,
            max_streams: opts.max_concurrent_streams,
        }
    }
}
