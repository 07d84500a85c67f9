//! The one body type used on both sides of the proxy.
//!
//! `axum_core::body::Body` is a boxed, streaming body that tower-governor can also produce,
//! so every layer (ours and governor's) speaks the same type.

/// Request and response body throughout the gateway.
pub type Body = axum_core::body::Body;
