//! One integration-test binary (one link step instead of many; it matters on 2 cores).

mod admin;
mod auth;
mod cache;
mod cli;
mod config;
mod faults;
mod lifecycle;
mod ops;
mod proxy;
mod ratelimit;
mod server;
mod support;
mod targets;
