//! The listeners: `[server]` (the public port) and `[admin]` (its own port and token, served by
//! the same code with the `[server]` timeouts), with their validation.

use super::validate::refuse_if;
use super::{ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

settings! {
    /// Inbound listener settings.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct ServerConfig {
        /// Address to listen on.
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// Base URL callers use to reach the gateway; Cliniko links are rewritten onto it.
        pub public_base_url: Option<String> = None,
        /// PEM certificate chain for inbound TLS (with `tls_key_file`); plain HTTP when absent.
        pub tls_cert_file: Option<PathBuf> = None,
        /// PEM private key for inbound TLS.
        pub tls_key_file: Option<PathBuf> = None,
        /// Largest request head (request line + headers) in bytes.
        pub max_header_bytes: usize = 16 * 1024,
        /// Most headers in one request.
        pub max_headers: usize = 100,
        /// Largest request body in bytes (413 beyond).
        pub max_body_bytes: u64 = 10 * 1024 * 1024,
        /// Time a client has to send a complete request head.
        #[serde(with = "humantime_serde")]
        pub header_read_timeout: Duration = Duration::from_secs(10),
        /// Idle keep-alive connections are closed after this long.
        #[serde(with = "humantime_serde")]
        pub idle_timeout: Duration = Duration::from_secs(60),
        /// A connection whose caller takes none of a response (socket or HTTP/2 window full)
        /// for this long is closed, and the responses it held (Cliniko's included) are dropped.
        #[serde(with = "humantime_serde")]
        pub send_timeout: Duration = Duration::from_secs(30),
        /// Most concurrent HTTP/2 streams (requests) on one connection.
        pub max_streams_per_connection: u32 = 100,
        /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
        #[serde(with = "humantime_serde")]
        pub shutdown_grace: Duration = Duration::from_secs(30),
        /// On SIGTERM/SIGINT, how long `/readyz` fails before the listener closes (lets load
        /// balancers stop sending first).
        #[serde(with = "humantime_serde")]
        pub shutdown_delay: Duration = Duration::ZERO,
        /// Most open inbound connections; beyond it the gateway stops accepting until one
        /// closes.
        pub max_connections: usize = 10_000,
        /// Proxies (CIDR, e.g. `10.0.0.0/8`; one host is `/32`) whose `X-Forwarded-For` is
        /// believed for the client address in the access log and the audit. Empty: the TCP
        /// peer.
        pub trusted_proxies: Vec<ipnet::IpNet> = Vec::new(),
    }
}

impl ServerConfig {
    /// The public base URL (no trailing slash), defaulting to the address actually bound.
    pub fn public_base(&self, bound: SocketAddr) -> String {
        match &self.public_base_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls_cert_file.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{bound}")
            }
        }
    }
}

settings! {
    /// The admin listener: separate address, own bearer token. Served by the same server code
    /// as the public port, with the `[server]` timeouts and its own connection limit.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AdminConfig {
        /// Where admin routes listen (keep it on loopback or a private network); off when unset.
        pub listen: Option<SocketAddr> = None,
        /// Most open admin connections; beyond it the admin listener stops accepting.
        // Scrapers and operators, not traffic: a small fixed pool is plenty.
        pub max_connections: usize = 64,
        /// File holding the admin bearer token (else `CLINIKO_GATEWAY_ADMIN_TOKEN`).
        pub token_file: Option<PathBuf> = None,
        /// Resolved at load. Never in the file.
        #[serde(skip)]
        pub token: Option<Secret<str>> = None,
    }
}

/// `[server]` and `[admin]`: sizes in range, TLS in pairs, no zero timeouts, two distinct ports.
pub(super) fn validate(s: &ServerConfig, admin: &AdminConfig) -> Result<(), ConfigError> {
    refuse_if(
        !(8192..=1024 * 1024).contains(&s.max_header_bytes),
        "server.max_header_bytes",
        "out of range",
        "use a value between 8192 and 1048576",
    )?;
    refuse_if(
        !(1..=1000).contains(&s.max_headers),
        "server.max_headers",
        "out of range",
        "use 1 to 1000",
    )?;
    // Port 0 means "any free port", so two zeros never collide.
    refuse_if(
        admin.listen.is_some_and(|a| a == s.listen && a.port() != 0),
        "admin.listen",
        "must differ from server.listen: the proxy port never serves admin routes",
        "use another port, e.g. 127.0.0.1:9901",
    )?;
    refuse_if(
        s.max_connections == 0,
        "server.max_connections",
        "must be at least 1",
        "use e.g. 10000",
    )?;
    refuse_if(
        admin.max_connections == 0,
        "admin.max_connections",
        "must be at least 1",
        "use e.g. 64",
    )?;
    refuse_if(
        !(1..=1000).contains(&s.max_streams_per_connection),
        "server.max_streams_per_connection",
        "out of range",
        "use 1 to 1000 (e.g. 100)",
    )?;
    refuse_if(
        s.public_base_url.is_none() && s.listen.ip().is_unspecified(),
        "server.public_base_url",
        "must be set when listening on all interfaces (links would point at 0.0.0.0)",
        "set it to the URL callers use, e.g. https://cliniko-gateway.internal",
    )?;
    refuse_if(
        s.tls_cert_file.is_some() != s.tls_key_file.is_some(),
        "server.tls_cert_file",
        "inbound TLS needs both a certificate and a key",
        "set both server.tls_cert_file and server.tls_key_file, or neither",
    )?;
    super::validate::non_zero(&[
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.send_timeout", s.send_timeout),
    ])?;
    s.public_base_url
        .as_deref()
        .map_or(Ok(()), check_public_base)
}

fn check_public_base(u: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = u.parse().map_err(|_| {
        ConfigError::new(
            "server.public_base_url",
            "not a valid URL",
            "write it as https://gateway.example",
        )
    })?;
    let ok_scheme = matches!(uri.scheme_str(), Some("http" | "https"));
    let no_path = matches!(uri.path(), "" | "/") && uri.query().is_none();
    refuse_if(
        !ok_scheme || uri.authority().is_none() || !no_path,
        "server.public_base_url",
        "must be scheme and host only",
        "write it as https://gateway.example (no path; the gateway serves /v1/...)",
    )
}
