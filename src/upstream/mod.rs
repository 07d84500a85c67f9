//! The innermost service: shard routing, header rewrite, the pooled client, link rewriting.

pub mod body;
pub mod client;
pub mod forward;
pub mod headers;
pub mod links;
pub mod shard;

pub use client::HttpClient;
pub use shard::{Shard, ShardRouter};
