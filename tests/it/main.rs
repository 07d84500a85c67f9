//! One integration-test binary (one link step instead of many; it matters on 2 cores).

mod admin;
mod auth;
mod browser;
mod cache;
mod cli;
mod config;
mod docs;
mod dropin;
mod faults;
mod hostile;
mod leaks;
mod lifecycle;
mod monitoring;
mod ops;
mod pg;
mod pgstore;
mod policy;
mod props;
mod proxy;
mod ratelimit;
mod reload;
mod resilience;
mod server;
mod support;
mod targets;
mod telemetry;
