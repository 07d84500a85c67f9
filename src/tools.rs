//! Operations subcommands beside the request path: `sandbox` (the Cliniko stand-in on its own,
//! for compose and manual tests) and `healthcheck` (a container probe for images without a
//! shell or curl, such as distroless).

#[cfg(feature = "sandbox")]
use crate::sandbox::{Account, DEMO_API_KEY, Sandbox, SandboxOptions, TestPki};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "sandbox")]
/// Parses `KEY:LABEL` (the label is the part after the last `:`).
fn parse_account(s: &str) -> Result<Account, String> {
    match s.rsplit_once(':') {
        Some((k, l)) if !k.is_empty() && !l.is_empty() => Ok(Account::new(k, l)),
        _ => Err("write accounts as KEY:LABEL".into()),
    }
}

/// `sandbox`'s options.
#[cfg(feature = "sandbox")]
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Where it listens.
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Write the PEM of its CA here (give it to the gateway as upstream.ca_file).
    #[arg(long)]
    ca_out: Option<std::path::PathBuf>,
    /// Accepted API keys with a data label, as KEY:LABEL,... (default: the demo key).
    #[arg(long, value_delimiter = ',', value_parser = parse_account)]
    accounts: Vec<Account>,
    /// Host names in its certificate; the first one is used in its links.
    #[arg(
        long = "name",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    names: Vec<String>,
    /// Shard name shown in its data.
    #[arg(long, default_value = "au1")]
    shard: String,
}

#[cfg(feature = "sandbox")]
/// `sandbox`: serves the stand-in on `listen` until SIGTERM/SIGINT.
pub async fn sandbox(args: SandboxArgs) -> ExitCode {
    crate::logging::init(crate::config::LogFormat::Json, "info");
    let result = async {
        let pki = std::sync::Arc::new(TestPki::new()?);
        // Written before the port opens: whoever sees the port up can read the CA.
        if let Some(path) = &args.ca_out {
            std::fs::write(path, pki.ca_pem())?;
        }
        let accounts = if args.accounts.is_empty() {
            vec![Account::new(DEMO_API_KEY, "demo")]
        } else {
            args.accounts
        };
        let sb = Sandbox::start(SandboxOptions {
            accounts,
            names: args.names,
            pki: Some(pki),
            shard: args.shard,
            listen: args.listen,
            max_concurrent_streams: None,
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(sb)
    }
    .await;
    let sb = match result {
        Ok(sb) => sb,
        Err(e) => {
            eprintln!("sandbox failed to start: {e}");
            return ExitCode::from(70);
        }
    };
    println!("{}", sb.base_url());
    tracing::info!(base_url = %sb.base_url(), addr = %sb.addr(), "sandbox listening");
    match crate::gateway::stop_signal() {
        Ok(stop) => stop.await,
        Err(e) => {
            eprintln!("signal handling failed: {e}");
            return ExitCode::from(70);
        }
    }
    sb.shutdown().await;
    ExitCode::SUCCESS
}

/// `healthcheck`'s options.
#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// Plain-http URL to GET.
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Only check that this address accepts a TCP connection (e.g. the TLS sandbox).
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `healthcheck`: exit 0 when `url` (plain http) answers 2xx, or when `tcp` accepts a
/// connection, within `timeout`; else 1 (what Docker's HEALTHCHECK expects).
pub async fn healthcheck(HealthcheckArgs { url, tcp, timeout }: HealthcheckArgs) -> ExitCode {
    let outcome = tokio::time::timeout(timeout, async {
        if let Some(addr) = tcp {
            return tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| "accepting".to_string())
                .map_err(|e| e.to_string());
        }
        probe(&url).await
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    match outcome {
        Ok(what) => {
            println!("healthy: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}

async fn probe(url: &str) -> Result<String, String> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err(
            "only http:// URLs (probe the plain listener from inside the container)".into(),
        );
    }
    let client: Client<HttpConnector, Empty<bytes::Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new());
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(resp.status().to_string())
    } else {
        Err(resp.status().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sandbox")]
    #[test]
    fn accounts_are_key_colon_label() {
        let a = parse_account("abc-def-au1:alice").unwrap();
        assert_eq!(
            (a.api_key.as_str(), a.label.as_str()),
            ("abc-def-au1", "alice")
        );
        assert!(parse_account("nolabel").is_err());
        assert!(parse_account("key:").is_err());
    }

    #[tokio::test]
    async fn healthcheck_fails_on_a_closed_port_and_passes_on_a_listening_one() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let args = |url: String, tcp| HealthcheckArgs {
            url,
            tcp,
            timeout: Duration::from_secs(2),
        };
        let ok = healthcheck(args(String::new(), Some(addr))).await;
        assert_eq!(ok, ExitCode::SUCCESS);
        // Bound but not listening: refuses for as long as it is held (a dropped listener's
        // port could be taken by a parallel test).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = closed.local_addr().unwrap();
        let bad = healthcheck(args(format!("http://{addr}/healthz"), None)).await;
        assert_eq!(bad, ExitCode::from(1));
        let bad = healthcheck(args("https://127.0.0.1:1/".into(), None)).await;
        assert_eq!(bad, ExitCode::from(1));
    }
}
