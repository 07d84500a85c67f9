//! The pooled outbound HTTPS client (hyper-util legacy client over hyper-rustls).
//!
//! Trusts the bundled Mozilla roots plus an optional extra CA file; never falls back to plain
//! HTTP. Shared by the proxy path and the JWKS fetcher.

use crate::body::Body;
use crate::config::{ConfigError, UpstreamConfig};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;
use tower::util::BoxCloneSyncService;

/// The outbound client type.
pub type HttpClient = Client<Connector, Body>;

/// Connects to Cliniko: TCP through a read buffer, then TLS, within the connect timeout.
pub type Connector =
    BoxCloneSyncService<http::Uri, MaybeHttpsStream<TokioIo<Pin<BufferedTcp>>>, BoxError>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes read from the socket at once, below TLS.
const READ_BUFFER: usize = 32 * 1024;

/// `HttpConnector` whose connections are read through a `READ_BUFFER` buffer.
///
/// Why: rustls asks its transport for at most 4 KiB per read, so a 15 KB Cliniko page cost
/// four `recvfrom` calls (measured with `strace -c`); through the buffer it is one, and rustls
/// takes its 4 KiB pieces from memory.
pub type Buffered =
    tower::util::MapResponse<HttpConnector, fn(TokioIo<TcpStream>) -> TokioIo<Pin<BufferedTcp>>>;

/// A TCP connection read through a buffer (writes go straight through), used as
/// `Pin<BufferedTcp>`: tokio reads and writes through a `Pin` of any pointer to a reader and
/// writer, and `TokioIo` makes that hyper's, so only hyper-util's `Connection` is written here.
pub struct BufferedTcp(tokio::io::BufReader<TcpStream>);

impl std::ops::Deref for BufferedTcp {
    type Target = tokio::io::BufReader<TcpStream>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for BufferedTcp {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn buffered(tcp: TokioIo<TcpStream>) -> TokioIo<Pin<BufferedTcp>> {
    let read = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp.into_inner());
    TokioIo::new(Pin::new(BufferedTcp(read)))
}

impl Connection for Pin<BufferedTcp> {
    fn connected(&self) -> Connected {
        self.get_ref().connected()
    }
}

/// The connect did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream (TCP + TLS) timed out")]
pub struct ConnectTimedOut;

/// The outbound TLS settings: aws-lc-rs (the only provider built in), rustls's safe protocol
/// versions, the Mozilla roots plus every certificate in `ca_file`; `field` names the CA
/// setting in errors.
pub fn tls_config(
    ca_file: Option<&Path>,
    field: &str,
) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|_| {
                ConfigError::new(
                    field,
                    "cannot read PEM certificates from the file",
                    "point it at a readable PEM CA bundle",
                )
            })?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                field,
                "the file holds no certificate",
                "point it at a PEM CA bundle",
            ));
        }
        for c in certs {
            roots.add(c).map_err(|_| {
                ConfigError::new(
                    field,
                    "a certificate in the file is not a valid CA",
                    "use a PEM CA certificate",
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ConfigError::new(field, "TLS setup failed", "report this as a bug"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Cliniko may send this much of one response ahead of the caller reading it (hyper's default
/// is 2 MiB): the most a caller who stops reading leaves unread per response.
const STREAM_WINDOW: u32 = 256 * 1024;

/// The HTTP/2 maximum, so the connection-level window is never the limit. Every caller of a
/// shard shares its one HTTP/2 connection: with hyper's default 5 MiB, three callers who stop
/// reading 2 MiB answers used it up and every other response on the shard stalled. Now each
/// response can only exhaust its own [`STREAM_WINDOW`]; memory stays bounded by the stream
/// window times the streams Cliniko allows at once, and `server.send_timeout` drops the
/// response (resetting its stream) of a caller who stopped reading.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Builds the pooled client from validated upstream config, bumping `handshakes` for every
/// new (TLS) connection.
pub fn build(cfg: &UpstreamConfig, handshakes: Counter) -> Result<HttpClient, ConfigError> {
    let tls = tls_config(cfg.ca_file.as_deref(), "upstream.ca_file")?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Buffered::new(http, buffered as fn(_) -> _));
    // Bounds the whole connect: DNS, TCP *and* the TLS handshake. `HttpConnector`'s own
    // timeout covers only TCP, so a peer that stalls the handshake would otherwise hold a
    // request until the response timeout (and turn a 502 into a 504).
    let connector = tower::ServiceBuilder::new()
        .map_err(
            |e: BoxError| match e.is::<tower::timeout::error::Elapsed>() {
                true => Box::new(ConnectTimedOut),
                false => e,
            },
        )
        // Every connection is HTTPS (`https_only`), so each successful connect is one handshake.
        .map_response(move |conn| {
            handshakes.inc();
            conn
        })
        .timeout(cfg.connect_timeout)
        .service(https);
    let connector = BoxCloneSyncService::new(connector);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector))
}
