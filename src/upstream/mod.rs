//! The innermost service (shard routing, header rewrite, the pooled client, link rewriting) and
//! the retry layer just above it.

pub mod body;
pub mod client;
pub mod forward;
pub mod headers;
pub mod links;
pub mod shard;

pub use client::HttpClient;
pub use shard::{Shard, ShardRouter};
