//! cliniko-gateway: an authenticating reverse proxy in front of the Cliniko API.
//!
//! A request's journey is assembled in [`stack`]; start reading there.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod body;
pub mod config;
pub mod error;
pub mod upstream;
