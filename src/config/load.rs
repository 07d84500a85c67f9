//! Reading the file, overlaying the environment, resolving secrets and relative paths.

use super::Config;
pub use super::validate::ConfigError;
use super::validate::refuse_if;
use base64::Engine;
use secrecy::{ExposeSecret, SecretBox};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prefix of environment variables that override config fields (`__` separates the path).
pub const ENV_PREFIX: &str = "CLINIKO_GATEWAY__";
/// Environment variable holding the JWT HMAC secret.
pub const ENV_HMAC_SECRET: &str = "CLINIKO_GATEWAY_HMAC_SECRET";
/// Environment variable holding the admin bearer token.
pub const ENV_ADMIN_TOKEN: &str = "CLINIKO_GATEWAY_ADMIN_TOKEN";
/// Environment variable holding the key-store master key (base64 or hex of 32 bytes).
pub const ENV_MASTER_KEY: &str = "CLINIKO_GATEWAY_MASTER_KEY";
/// Environment variable holding the PostgreSQL URL of the key store.
pub const ENV_POSTGRES_URL: &str = "CLINIKO_GATEWAY_POSTGRES_URL";

/// The environment the config is read against; injectable so tests never touch the process env.
#[derive(Clone, Default)]
pub struct Env(pub BTreeMap<String, String>);

// So a copy kept for reloads can live in a `SecretBox` (zeroed on drop).
impl secrecy::zeroize::Zeroize for Env {
    fn zeroize(&mut self) {
        for v in self.0.values_mut() {
            v.zeroize();
        }
        self.0.clear();
    }
}

impl secrecy::CloneableSecret for Env {}

/// Where a config was read from, so a reload reads it again the same way (`Debug` shows the
/// path; `SecretBox` prints no value of the environment).
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// The config file.
    pub path: PathBuf,
    /// Only the gateway's own variables (they include secrets), zeroed when dropped.
    env: SecretBox<Env>,
}

impl ConfigSource {
    /// Reads and validates the file again (secrets files included).
    pub fn load(&self) -> Result<Config, ConfigError> {
        load(&self.path, self.env.expose_secret())
    }
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }
}

/// Reads `path`, overlays `env`, resolves secrets and validates.
pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path.display().to_string(),
            format!("cannot read the config file ({})", e.kind()),
            "pass an existing, readable file with --config",
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut cfg = load_str(&text, base, env)?;
    let own = env
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("CLINIKO_GATEWAY"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    cfg.source = Some(ConfigSource {
        path: path.to_path_buf(),
        env: SecretBox::new(Box::new(Env(own))),
    });
    Ok(cfg)
}

/// Parses config text; relative paths inside are taken relative to `base_dir`.
pub fn load_str(text: &str, base_dir: &Path, env: &Env) -> Result<Config, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigError::new(
            "(file)",
            format!("not valid TOML: {}", e.message()),
            "check the syntax near the reported position",
        )
    })?;
    refuse_inline_secrets(&table)?;
    overlay_env(&mut table, env)?;
    let deprecated = super::deprecated::migrate_legacy(&mut table)?;
    let mut cfg: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let field = e.path().to_string();
            let msg = e.inner().message();
            match super::validate::own_parts(msg) {
                Some((problem, fix)) => ConfigError::new(field, problem, fix),
                None => ConfigError::new(
                    field,
                    without_values(msg),
                    "see config/gateway.example.toml for every field and its type",
                ),
            }
        })?;
    cfg.deprecated = deprecated;
    resolve_paths(&mut cfg, base_dir);
    resolve_secrets(&mut cfg, env)?;
    super::check(&cfg)?;
    Ok(cfg)
}

/// A serde message without the offending value, which can be a secret set by mistake.
///
/// Why rebuilt rather than filtered: the value is printed as Rust debug text (`"a\"b"`) or in
/// backticks with no escaping at all, so no scan of the quotes can know where it ends. serde
/// writes `<what>: <kind> <value>, expected <type>`: the start and the text after the last
/// `, expected ` come from the types, never from the input, so only they are kept. Field
/// names (`unknown field`, `missing field`) are keys, kept whole; anything else (a custom
/// message that may echo the value) becomes `invalid value`.
fn without_values(msg: &str) -> String {
    const NAMES: [&str; 3] = ["unknown field", "missing field", "duplicate field"];
    const GENERATED: [&str; 4] = [
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant ",
    ];
    if NAMES.iter().any(|p| msg.starts_with(p)) {
        return msg.to_string();
    }
    let (head, tail) = msg
        .rfind(", expected ")
        .map_or((msg, ""), |i| (&msg[..i], &msg[i..]));
    let generated = GENERATED.iter().any(|p| head.starts_with(p));
    match head.find(['"', '`']) {
        Some(j) if generated => {
            let quote = &head[j..=j];
            format!("{}{quote}…{quote}{tail}", &head[..j])
        }
        None if head.starts_with("invalid length ") => msg.to_string(),
        _ => format!("invalid value{tail}"),
    }
}

fn refuse_inline_secrets(t: &toml::Table) -> Result<(), ConfigError> {
    // (section, field, the variable that holds it instead, why beyond it being a secret)
    let secrets = [
        ("auth", "hmac_secret", ENV_HMAC_SECRET, ""),
        ("admin", "token", ENV_ADMIN_TOKEN, ""),
        (
            "keystore",
            "postgres_url",
            ENV_POSTGRES_URL,
            " (the URL may carry a password)",
        ),
        ("keystore", "master_key", ENV_MASTER_KEY, ""),
    ];
    for (sec, key, var, why) in secrets {
        let section = t.get(sec).and_then(|s| s.as_table());
        refuse_if(
            section.is_some_and(|s| s.contains_key(key)),
            format!("{sec}.{key}"),
            format!("secrets are never read from the config file{why}"),
            format!("set {var} or point {sec}.{key}_file at a file"),
        )?;
    }
    Ok(())
}

/// `CLINIKO_GATEWAY__UPSTREAM__TIMEOUT=30s` sets `upstream.timeout`. Values that parse as a
/// TOML value (numbers, booleans, arrays) take that type; anything else is a string.
fn overlay_env(table: &mut toml::Table, env: &Env) -> Result<(), ConfigError> {
    for (name, raw) in &env.0 {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path = rest.to_ascii_lowercase();
        refuse_if(
            path.split("__").any(str::is_empty),
            name,
            "empty path segment in the variable name",
            "name it CLINIKO_GATEWAY__<SECTION>__<FIELD>, e.g. CLINIKO_GATEWAY__SERVER__LISTEN",
        )?;
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let (parents, last) = path.rsplit_once("__").unwrap_or(("", &path));
        let parents = parents.split("__").filter(|s| !s.is_empty());
        let cur = super::deprecated::section(table, parents).map_err(|seg| {
            ConfigError::new(
                name.clone(),
                format!("`{seg}` is not a section"),
                "override a field inside a section, e.g. CLINIKO_GATEWAY__SERVER__LISTEN",
            )
        })?;
        cur.insert(last.to_string(), value);
    }
    Ok(())
}

fn resolve_paths(cfg: &mut Config, base: &Path) {
    let optional = [
        &mut cfg.server.tls_cert_file,
        &mut cfg.server.tls_key_file,
        &mut cfg.auth.hmac_secret_file,
        &mut cfg.keystore.master_key_file,
        &mut cfg.keystore.postgres_url_file,
        &mut cfg.upstream.ca_file,
        &mut cfg.admin.token_file,
    ];
    let keys = cfg.auth.public_keys.iter_mut().map(|k| &mut k.file);
    // Empty: no file store configured (validation says so when one is needed).
    let store = Some(&mut cfg.keystore.path).filter(|p| !p.as_os_str().is_empty());
    for p in optional.into_iter().flatten().chain(keys).chain(store) {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

fn read_secret(
    field: &str,
    file: Option<&Path>,
    env_name: &str,
    env: &Env,
) -> Result<Option<String>, ConfigError> {
    if let Some(path) = file {
        let s = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                field,
                format!("cannot read the secret file ({})", e.kind()),
                "point it at an existing file readable by the gateway",
            )
        })?;
        return Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(env.0.get(env_name).cloned())
}

fn resolve_secrets(cfg: &mut Config, env: &Env) -> Result<(), ConfigError> {
    if let Some(s) = read_secret(
        "auth.hmac_secret_file",
        cfg.auth.hmac_secret_file.as_deref(),
        ENV_HMAC_SECRET,
        env,
    )? {
        cfg.auth.hmac_secret = Some(s.into_bytes().into());
    }
    if cfg.admin.listen.is_some() {
        let token = read_secret("admin.token_file", cfg.admin.token_file.as_deref(), ENV_ADMIN_TOKEN, env)?
            .filter(|t| t.len() >= 32)
            .ok_or_else(|| {
                ConfigError::new(
                    "admin.token",
                    "the admin listener needs a bearer token of at least 32 characters",
                    format!("set {ENV_ADMIN_TOKEN} (or admin.token_file), e.g. from `openssl rand -base64 32`"),
                )
            })?;
        cfg.admin.token = Some(token.into());
    }
    if cfg.keystore.store == super::StoreKind::Postgres {
        let url = read_secret(
            "keystore.postgres_url_file",
            cfg.keystore.postgres_url_file.as_deref(),
            ENV_POSTGRES_URL,
            env,
        )?
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "keystore.postgres_url",
                "keystore.store = \"postgres\" needs the database URL",
                format!(
                    "set {ENV_POSTGRES_URL} (or keystore.postgres_url_file), e.g. postgresql://gateway@db.internal/gateway"
                ),
            )
        })?;
        cfg.keystore.postgres_url = Some(url.into());
    }
    let field = if cfg.keystore.master_key_file.is_some() {
        "keystore.master_key_file"
    } else {
        ENV_MASTER_KEY
    };
    let raw = read_secret(field, cfg.keystore.master_key_file.as_deref(), ENV_MASTER_KEY, env)?
        .ok_or_else(|| {
            ConfigError::new(
                "keystore.master_key",
                "no master key",
                format!(
                    "set {ENV_MASTER_KEY} (or keystore.master_key_file) to 32 random bytes, base64 or hex; `cliniko-gateway keys gen-master-key` makes one"
                ),
            )
        })?;
    let key = parse_master_key(raw.trim()).ok_or_else(|| {
        ConfigError::new(
            field,
            "the master key is not 32 bytes of base64 or hex",
            "generate one with `cliniko-gateway keys gen-master-key`",
        )
    })?;
    cfg.keystore.master_key = Some(key);
    Ok(())
}

/// Accepts 64 hex characters or standard base64 of exactly 32 bytes.
pub fn parse_master_key(s: &str) -> Option<super::MasterKey> {
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()?
    };
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(super::Secret::new(Box::new(arr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the config names is taken relative to the config file's folder.
    #[test]
    fn every_path_field_is_resolved_against_the_config_folder() {
        let mut cfg: Config = toml::from_str(
            r#"
            [server]
            tls_cert_file = "a/cert.pem"
            tls_key_file = "a/key.pem"
            [auth]
            hmac_secret_file = "a/hmac"
            public_keys = [{ file = "a/pub.pem", algorithms = ["RS256"] }]
            [keystore]
            path = "a/keys.json"
            master_key_file = "a/master"
            postgres_url_file = "a/pg"
            [upstream]
            user_agent = "Tests (tests@example.invalid)"
            ca_file = "a/ca.pem"
            [admin]
            token_file = "a/token"
            "#,
        )
        .unwrap();
        resolve_paths(&mut cfg, Path::new("/base"));
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(text.matches("\"/base/a/").count(), 9, "{text}");
        assert!(!text.contains("\"a/"), "a path left relative: {text}");
    }

    #[test]
    fn messages_lose_quoted_values() {
        assert_eq!(
            without_values("invalid type: string \"s3cr3t\", expected u64"),
            "invalid type: string \"…\", expected u64"
        );
        assert_eq!(without_values("unknown field `foo`"), "unknown field `foo`");
        assert_eq!(
            without_values("unknown variant `s3cr3t`, expected one of `json`, `text`"),
            "unknown variant `…`, expected one of `json`, `text`"
        );
        assert_eq!(
            without_values("invalid value: integer `123456`, expected u16"),
            "invalid value: integer `…`, expected u16"
        );
        assert_eq!(
            without_values("missing field `user_agent`"),
            "missing field `user_agent`"
        );
    }

    #[test]
    fn values_that_hold_quotes_or_backticks_are_elided_whole() {
        for msg in [
            "invalid type: string \"pa\\\"SECRET\", expected a duration",
            "unknown variant `pa`SECRET`, expected one of `json`, `text`",
            "invalid value: string \"5x\\\"SECRET\", expected a duration",
            "unknown time unit \"SECRET\", supported units: ns, us, ms",
            "SECRET, expected u64",
        ] {
            let out = without_values(msg);
            assert!(!out.contains("SECRET"), "{msg} -> {out}");
        }
        assert_eq!(
            without_values("unknown variant `pa`SECRET`, expected one of `json`, `text`"),
            "unknown variant `…`, expected one of `json`, `text`"
        );
    }

    #[test]
    fn a_secret_with_a_quote_in_a_typed_field_never_reaches_the_error() {
        let text = "[auth]\n[keystore]\npath = \"k.json\"\nwatch_interval = 'x\"SECRETF\"'\n[upstream]\nuser_agent = \"A (a@b.c)\"\n";
        let env = Env([(ENV_HMAC_SECRET.to_string(), "h".repeat(40))]
            .into_iter()
            .collect());
        let e = load_str(text, std::path::Path::new("/tmp"), &env).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("keystore.watch_interval"), "{shown}");
        assert!(!shown.contains("SECRETF"), "{shown}");
    }
}
