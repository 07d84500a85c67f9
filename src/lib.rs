//! cliniko-gateway: an authenticating reverse proxy in front of the Cliniko API.
//!
//! A request's journey is assembled in [`stack`]; start reading there.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod compression;
pub mod config;
pub mod context;
pub mod cors;
pub mod credentials;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod enrol;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod guard;
pub mod inflight;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod reload;
pub mod replay;
pub mod rescue;
pub mod retry;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod scrape;
pub mod server;
pub mod stack;
pub mod step;
pub mod telemetry;
pub mod tools;
pub mod upstream;

pub use gateway::{Gateway, StartError};
