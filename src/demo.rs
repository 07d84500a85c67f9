//! `demo`: the zero-account quick start.
//!
//! Starts the Cliniko stand-in over TLS (its own CA, made now), a gateway in front of it with a
//! throwaway key store, master key and HMAC secret in a temp dir, mints a token for a demo
//! user, prints curl lines, and runs until Ctrl-C.

use crate::auth::mint::mint;
use crate::config::{Env, LogFormat, load_str};
use crate::credentials::{self, ApiKey};
use crate::gateway::Gateway;
use crate::sandbox::{Account, Sandbox, SandboxOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The demo user's name (the JWT `sub`).
pub const DEMO_USER: &str = "demo-user";

fn random_b64(n: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr) -> ExitCode {
    crate::logging::init(LogFormat::Text, "info");
    match start(listen).await {
        Ok(demo) => match demo.print_and_run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(70),
        },
        Err(e) => {
            eprintln!("demo failed to start: {e}");
            ExitCode::from(70)
        }
    }
}

/// A running demo: the gateway, the stand-in behind it, and a token for [`DEMO_USER`].
pub struct Demo {
    /// The gateway.
    pub gateway: Gateway,
    /// The Cliniko stand-in.
    pub sandbox: Sandbox,
    /// A one-hour token for the demo user.
    pub token: String,
    /// `http://<gateway address>`.
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Starts the stand-in and a gateway in front of it.
pub async fn start(listen: SocketAddr) -> Result<Demo, Box<dyn std::error::Error>> {
    let api_key = format!("{}-au1", random_b64(24));
    let sandbox = Sandbox::start(SandboxOptions {
        accounts: vec![Account {
            api_key: api_key.clone(),
            label: "Demo".into(),
        }],
        ..SandboxOptions::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("sandbox-ca.pem");
    std::fs::write(&ca, sandbox.ca_pem())?;
    let hmac = random_b64(48);
    let master = credentials::generate_master_key()?;
    let text = format!(
        r#"
[server]
listen = "{listen}"
[auth]
hmac_algorithms = ["HS256"]
[keystore]
path = "keys.json"
[upstream]
user_agent = "cliniko-gateway demo (demo@example.invalid)"
ca_file = "sandbox-ca.pem"
[upstream.shards]
au1 = "{base}"
[log]
format = "text"
# The demo's one user may do everything; a real deployment grants by scope or role and
# refuses callers without one (the code default), see config/gateway.example.toml.
[policy]
claims = []
default = ["demo:everything"]
[policy.grants."demo:everything"]
methods = ["*"]
paths = ["/v1"]
"#,
        base = sandbox.base_url()
    );
    let env = Env([
        ("CLINIKO_GATEWAY_HMAC_SECRET".to_string(), hmac.clone()),
        ("CLINIKO_GATEWAY_MASTER_KEY".to_string(), master),
    ]
    .into_iter()
    .collect());
    let cfg = load_str(&text, dir.path(), &env)?;
    let master = cfg.keystore.master_key.clone().ok_or("no master key")?;
    let demo = credentials::NewKey::new(DEMO_USER, ApiKey::new(api_key), None);
    (credentials::Backend::file(cfg.keystore.path.clone(), master))
        .add(demo)
        .await?;
    let token = mint(
        &EncodingKey::from_secret(hmac.as_bytes()),
        Header::new(Algorithm::HS256),
        DEMO_USER,
        Duration::from_secs(3600),
        serde_json::Map::new(),
    )?;
    let gateway = Gateway::bind_and_start(cfg).await?;
    let base = format!("http://{}", gateway.local_addr);
    Ok(Demo {
        gateway,
        sandbox,
        token,
        base,
        _dir: dir,
    })
}

impl Demo {
    /// Prints the curl lines, then serves until Ctrl-C.
    pub async fn print_and_run(self) -> std::io::Result<()> {
        println!(
            r#"
cliniko-gateway demo is running at {base} (Ctrl-C to stop)
A local Cliniko stand-in is at {up}; the gateway holds its API key, you hold only a JWT.

  export TOKEN={token}

  # list patients (5 per page)
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/v1/patients?per_page=5"
  # follow the `next` link: it points back at the gateway, not at Cliniko
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/v1/patients?page=2&per_page=5"
  # one appointment
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/v1/individual_appointments/{appt}"
  # a bad token: 401 with a JSON error code
  curl -si -H "Authorization: Bearer not-a-jwt" "{base}/v1/patients"
  # readiness
  curl -s "{base}/readyz"
"#,
            base = self.base,
            token = self.token,
            up = self.sandbox.base_url(),
            appt = crate::sandbox::seeded_appointment_id(0, 1),
        );
        let signals = crate::gateway::Signals::install()?;
        self.gateway.run_until_signal(signals).await
    }
}
