//! The command line: `serve`, `demo`, `check-config`, `keys …`, `token mint`, `sandbox` and
//! `healthcheck`.
//!
//! Exit codes: 0 ok, 64 bad configuration or usage, 70 runtime failure.

use crate::config::{self, Config, ConfigError, Env};
use crate::credentials::{self, ApiKey};
use crate::gateway::{Gateway, StartError};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Authenticating reverse proxy for the Cliniko API.
#[derive(Parser, Debug)]
#[command(name = "cliniko-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML); env vars CLINIKO_GATEWAY__<SECTION>__<FIELD> override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    #[cfg(feature = "sandbox")]
    /// Zero-account quick start: a local Cliniko stand-in, a gateway in front, curl lines.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Validate a config and print the effective values (secrets redacted).
    CheckConfig {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage the encrypted key store.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    #[cfg(feature = "sandbox")]
    /// Run the Cliniko stand-in alone (compose, manual tests); prints its base URL.
    Sandbox(crate::tools::SandboxArgs),
    /// Container health probe: exit 0 if the URL answers 2xx (or the TCP port accepts), else 1.
    Healthcheck(crate::tools::HealthcheckArgs),
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Store a Cliniko API key for a user; the key is read from stdin (never from argv).
    Add {
        /// Config file (for the key-store path and master key).
        #[arg(long, short)]
        config: PathBuf,
        /// The user (the JWT's user claim).
        #[arg(long)]
        user: String,
        /// Label of the Cliniko user owning the key (keys of one Cliniko user share a budget).
        #[arg(long)]
        cliniko_user: Option<String>,
        /// Read the key from this file instead of stdin (for containers without a shell).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Store many keys in one write: stdin lines `user<TAB>key[<TAB>cliniko_user]`; a bad line
    /// stores nothing and names its line number (never the key).
    Import {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List users with key fingerprints and shards (never keys).
    List {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a user's mapping (and the key if no one else uses it).
    Remove {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// Sign the key store with its integrity MAC: migrates a file written by an older gateway
    /// (version 1), then lists the users it now vouches for.
    Reseal {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Sign what the file says though nothing vouches for it (a version-1 file without a
        /// MAC, or one edited without the master key): only after you have reviewed its users.
        #[arg(long)]
        accept_edits: bool,
    },
    /// Copy a file store into the configured PostgreSQL store (which must hold no users).
    Migrate {
        /// Config file (keystore.store = "postgres", and the same master key as the file).
        #[arg(long, short)]
        config: PathBuf,
        /// The key-store file to copy.
        #[arg(long)]
        from: PathBuf,
    },
    /// Print a new random master key (base64) for CLINIKO_GATEWAY_MASTER_KEY.
    GenMasterKey,
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Mint an HS-signed token with the configured HMAC secret (development only).
    Mint(Mint),
}

/// `token mint`'s options.
#[derive(clap::Args, Debug)]
struct Mint {
    /// Config file (for the HMAC secret; not needed with --signing-key).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Subject (user).
    #[arg(long)]
    sub: String,
    /// Lifetime, e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Extra claims as key=value (value parsed as JSON when possible).
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// Sign with this PEM private key instead of the HMAC secret (with --alg).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// Algorithm for --signing-key, e.g. RS256, ES256, EdDSA.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// `kid` header to set.
    #[arg(long)]
    kid: Option<String>,
    /// How many tokens to print, one per line, each with its own `jti` (for load tests).
    #[arg(long, default_value_t = 1)]
    count: u32,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(70, format!("cannot start the async runtime: {e}")),
    };
    let done = match cli.command {
        Command::Serve { config } => rt.block_on(serve(config)),
        #[cfg(feature = "sandbox")]
        Command::Demo { listen } => return rt.block_on(crate::demo::run(listen)),
        Command::CheckConfig { config } => check_config(&config),
        Command::Keys { action } => rt.block_on(keys(action)),
        Command::Token { action } => token(action),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => return rt.block_on(crate::tools::sandbox(args)),
        Command::Healthcheck(args) => return rt.block_on(crate::tools::healthcheck(args)),
    };
    done.err().unwrap_or(ExitCode::SUCCESS)
}

/// A command's outcome: `Err` holds the exit code, its reason already printed.
type Done = Result<(), ExitCode>;

/// Prints `msg` on stderr and gives the exit `code` (64 usage or configuration, 70 runtime).
fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path, &Env::from_process()).map_err(|e| fail(64, e))
}

async fn serve(path: PathBuf) -> Done {
    let cfg = load(&path)?;
    crate::logging::init(cfg.log.format, &cfg.log.level);
    let signals = crate::gateway::Signals::install()
        .map_err(|e| fail(70, format!("cannot handle signals: {e}")))?;
    let gw = Gateway::bind_and_start(cfg).await.map_err(|e| {
        let code = match e {
            StartError::Config(_) | StartError::KeyStore(_) => 64,
            StartError::Io(_) => 70,
        };
        fail(code, format!("cannot start: {e}"))
    })?;
    gw.run_until_signal(signals).await.map_err(|e| {
        tracing::error!(error = %e, "signal handling failed");
        ExitCode::from(70)
    })
}

fn check_config(path: &std::path::Path) -> Done {
    let cfg = load(path)?;
    for d in &cfg.deprecated {
        eprintln!("warning: {d}");
    }
    let s = toml::to_string_pretty(&cfg)
        .map_err(|e| fail(70, format!("cannot print the config: {e}")))?;
    println!("# effective configuration (valid)\n{s}");
    println!("# secrets (never printed)");
    for (name, set) in [
        ("auth.hmac_secret", cfg.auth.hmac_secret.is_some()),
        ("keystore.master_key", cfg.keystore.master_key.is_some()),
        ("keystore.postgres_url", cfg.keystore.postgres_url.is_some()),
        ("admin.token", cfg.admin.token.is_some()),
    ] {
        let set = if set { "set, redacted" } else { "not set" };
        println!("# {name}: {set}");
    }
    Ok(())
}

/// A key-store failure: printed, exit 64.
fn store_failed(e: credentials::KeyStoreError) -> ExitCode {
    fail(64, e)
}

/// `keys migrate`: copies the file store at `from` into the database store.
async fn migrate(store: &credentials::Backend, from: &std::path::Path) -> Done {
    if store.database().is_none() {
        let e = ConfigError::new(
            "keystore.store",
            "keys migrate copies into the database store",
            "set keystore.store = \"postgres\" (and CLINIKO_GATEWAY_POSTGRES_URL) in the config given with --config",
        );
        return Err(fail(64, e));
    }
    let n = store.import(from).await.map_err(store_failed)?;
    println!(
        "copied {n} users from {} into {}",
        from.display(),
        store.place().display()
    );
    Ok(())
}

/// `keys import`: parses every stdin line first, then stores them all in one signed write.
async fn import(store: &credentials::Backend) -> Done {
    let mut text = String::new();
    if std::io::stdin().read_to_string(&mut text).is_err() {
        return Err(fail(64, "cannot read the mappings from stdin"));
    }
    let mut rows = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut fields = line.split('\t');
        let (Some(user), Some(key), label, None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            let msg = format!("line {}: expected user<TAB>key[<TAB>cliniko_user]", n + 1);
            return Err(fail(64, msg));
        };
        let new = credentials::NewKey::new(user, ApiKey::new(key.trim().to_string()), label);
        if let Err(e) = new.check() {
            return Err(fail(64, format!("line {}: {e}; nothing was stored", n + 1)));
        }
        rows.push(new);
    }
    let done =
        (store.add_many(rows).await).map_err(|e| fail(64, format!("{e}; nothing was stored")))?;
    let new_keys = done.iter().filter(|o| !o.reused_key).count();
    println!("stored {} users ({new_keys} new keys)", done.len());
    Ok(())
}

/// The key store named by the config at `config` (file or database), with its master key.
async fn open_store(config: &std::path::Path) -> Result<credentials::Backend, ExitCode> {
    let cfg = load(config)?;
    if cfg.keystore.master_key.is_none() {
        return Err(fail(64, "no master key: set CLINIKO_GATEWAY_MASTER_KEY"));
    }
    (credentials::Backend::open(&cfg.keystore).await).map_err(store_failed)
}

async fn keys(action: KeysAction) -> Done {
    let config = match &action {
        KeysAction::GenMasterKey => {
            println!(
                "{}",
                credentials::generate_master_key().map_err(store_failed)?
            );
            return Ok(());
        }
        KeysAction::Add { config, .. }
        | KeysAction::Import { config }
        | KeysAction::List { config }
        | KeysAction::Remove { config, .. }
        | KeysAction::Reseal { config, .. }
        | KeysAction::Migrate { config, .. } => config.clone(),
    };
    keys_on(action, &open_store(&config).await?).await
}

async fn keys_on(action: KeysAction, store: &credentials::Backend) -> Done {
    match action {
        KeysAction::GenMasterKey => {}
        KeysAction::Add {
            user,
            cliniko_user,
            key_file,
            ..
        } => {
            let read = match &key_file {
                Some(p) => std::fs::read_to_string(p),
                None => std::io::read_to_string(std::io::stdin()),
            };
            let raw =
                read.map_err(|_| fail(64, "cannot read the API key from stdin or --key-file"))?;
            let key = ApiKey::new(raw.trim().to_string());
            let new = credentials::NewKey::new(&user, key, cliniko_user.as_deref());
            store.add(new).await.map_err(store_failed)?;
            println!(
                "stored a key for {user}; running gateways reload it (file watch, database notification or SIGHUP)"
            );
        }
        KeysAction::Import { .. } => import(store).await?,
        KeysAction::List { .. } => print_users(&store.load(false).await.map_err(store_failed)?.0),
        KeysAction::Reseal { accept_edits, .. } => {
            use credentials::Resealed;
            let done = store.reseal(accept_edits).await.map_err(store_failed)?;
            println!(
                "{}",
                match done {
                    Resealed::AlreadySigned => "the key store is already signed; nothing to do",
                    Resealed::Migrated => "signed the key store (version 1 -> 2)",
                    Resealed::AcceptedEdits => "signed the key store as it is, edits included",
                }
            );
            print_users(&store.load(false).await.map_err(store_failed)?.0);
        }
        KeysAction::Remove { user, .. } => {
            if store.remove(&user).await.map_err(store_failed)? {
                println!("removed {user}");
            } else {
                println!("{user} had no key");
            }
        }
        KeysAction::Migrate { from, .. } => migrate(store, &from).await?,
    }
    Ok(())
}

fn print_users(store: &credentials::KeyStore) {
    println!(
        "{:<32} {:<6} {:<26} cliniko_user",
        "user", "shard", "fingerprint"
    );
    for (user, c) in store.sorted() {
        println!(
            "{:<32} {:<6} {:<26} {}",
            user,
            c.shard,
            c.fingerprint,
            c.cliniko_user.as_deref().unwrap_or("-")
        );
    }
}

fn token(TokenAction::Mint(a): TokenAction) -> Done {
    let mut map = serde_json::Map::new();
    for c in a.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| fail(64, "--claim takes key=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        map.insert(k.into(), v);
    }
    let (key, alg) = mint_key(a.config, a.signing_key, &a.alg)?;
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = a.kid;
    let mut out = String::new();
    for i in 0..a.count {
        let mut claims = map.clone();
        if a.count > 1 {
            claims.insert("jti".into(), format!("{}-{i}", uuid::Uuid::new_v4()).into());
        }
        let t = crate::auth::mint::mint(&key, header.clone(), &a.sub, a.ttl, claims)
            .map_err(|e| fail(70, format!("cannot sign: {e}")))?;
        out.push_str(&t);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// The key `token mint` signs with: the PEM of `--signing-key` with `--alg`, else the
/// configured HMAC secret with the first configured HMAC algorithm.
fn mint_key(
    config: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    alg: &str,
) -> Result<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), ExitCode> {
    match signing_key {
        Some(path) => {
            let alg = (alg.parse::<jsonwebtoken::Algorithm>())
                .map_err(|_| fail(64, "--alg: unknown algorithm"))?;
            let key = std::fs::read(&path)
                .ok()
                .and_then(|pem| crate::auth::mint::signing_key(&pem, alg).ok());
            let key = key.ok_or_else(|| {
                let msg = format!(
                    "--signing-key: cannot read a {alg:?} private key from {}",
                    path.display()
                );
                fail(64, msg)
            })?;
            Ok((key, alg))
        }
        None => {
            let config = config.ok_or_else(|| {
                fail(
                    64,
                    "token mint needs --config (for the HMAC secret) or --signing-key",
                )
            })?;
            let cfg = load(&config)?;
            let Some(secret) = &cfg.auth.hmac_secret else {
                return Err(fail(
                    64,
                    ConfigError::new(
                        "auth.hmac_secret",
                        "token mint needs the HMAC secret (or --signing-key)",
                        "set CLINIKO_GATEWAY_HMAC_SECRET",
                    ),
                ));
            };
            let alg = cfg
                .auth
                .hmac_algorithms
                .first()
                .copied()
                .unwrap_or(jsonwebtoken::Algorithm::HS256);
            use secrecy::ExposeSecret;
            Ok((
                jsonwebtoken::EncodingKey::from_secret(secret.expose_secret()),
                alg,
            ))
        }
    }
}
