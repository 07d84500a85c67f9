//! Start-up configuration: the example parses, env overrides work, and every rejection names
//! the field and never echoes a secret.

use cliniko_gateway::config::{Env, load, load_str};
use std::path::Path;

const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SECRET: &str = "an-hmac-secret-of-at-least-thirty-two-bytes";

fn env(extra: &[(&str, &str)]) -> Env {
    let mut m: std::collections::BTreeMap<String, String> = [
        ("CLINIKO_GATEWAY_MASTER_KEY", MASTER),
        ("CLINIKO_GATEWAY_HMAC_SECRET", SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    Env(m)
}

const MINIMAL: &str = r#"
[server]
[cache]
[auth]
[keystore]
path = "keys.json"
[upstream]
user_agent = "Acme (it@acme.example)"
"#;

fn field_of(text: &str, e: &Env) -> String {
    match load_str(text, Path::new("/etc/gw"), e) {
        Ok(_) => "ok".into(),
        Err(err) => {
            let msg = err.to_string();
            assert!(
                !msg.contains(SECRET) && !msg.contains(MASTER),
                "secret echoed: {msg}"
            );
            assert!(msg.contains("fix:"), "no fix in: {msg}");
            err.field
        }
    }
}

#[test]
fn the_example_config_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.example.toml");
    let cfg = load(&p, &env(&[])).unwrap();
    assert_eq!(
        cfg.upstream.url_template,
        "https://api.{shard}.cliniko.com/v1"
    );
    assert!(cfg.auth.hmac_secret.is_some());
    assert!(cfg.keystore.path.is_absolute());
}

#[test]
fn env_overrides_any_field_with_the_documented_names() {
    let e = env(&[
        ("CLINIKO_GATEWAY__SERVER__LISTEN", "0.0.0.0:9000"),
        (
            "CLINIKO_GATEWAY__SERVER__PUBLIC_BASE_URL",
            "https://gw.example",
        ),
        ("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "7s"),
        ("CLINIKO_GATEWAY__SERVER__MAX_BODY_BYTES", "1234"),
        ("CLINIKO_GATEWAY__AUTH__AUDIENCES", "[\"a\", \"b\"]"),
        (
            "CLINIKO_GATEWAY__UPSTREAM__SHARDS__UK2",
            "https://127.0.0.1:1/v1",
        ),
    ]);
    let cfg = load_str(MINIMAL, Path::new("/etc/gw"), &e).unwrap();
    assert_eq!(cfg.server.listen.port(), 9000);
    assert_eq!(cfg.upstream.timeout.as_secs(), 7);
    assert_eq!(cfg.server.max_body_bytes, 1234);
    assert_eq!(cfg.auth.audiences, vec!["a", "b"]);
    assert_eq!(cfg.upstream.shards["uk2"], "https://127.0.0.1:1/v1");
    assert_eq!(cfg.keystore.path, Path::new("/etc/gw/keys.json"));
}

#[test]
fn each_rejection_names_its_field() {
    let e = env(&[]);
    let with = |section: &str, line: &str| {
        MINIMAL.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"))
    };
    let cases: Vec<(String, Env, &str)> = vec![
        (
            MINIMAL.replace(
                "user_agent = \"Acme (it@acme.example)\"",
                "user_agent = \"curl/8\"",
            ),
            e.clone(),
            "upstream.user_agent",
        ),
        (
            with("auth", "hmac_secret = \"inline\""),
            e.clone(),
            "auth.hmac_secret",
        ),
        (
            with("keystore", "master_key = \"inline\""),
            e.clone(),
            "keystore.master_key",
        ),
        (with("auth", "bogus = 1"), e.clone(), "auth"),
        (
            with("upstream", "timeout = \"0s\""),
            e.clone(),
            "upstream.timeout",
        ),
        (
            with("upstream", "url_template = \"https://api.cliniko.com/v1\""),
            e.clone(),
            "upstream.url_template",
        ),
        (
            with(
                "upstream",
                "url_template = \"http://api.{shard}.cliniko.com/v1\"",
            ),
            e.clone(),
            "upstream.url_template",
        ),
        (
            format!("{MINIMAL}[upstream.shards]\nEVIL = \"https://x/v1\"\n"),
            e.clone(),
            "upstream.shards.EVIL",
        ),
        (
            format!("{MINIMAL}[upstream.shards]\nau1 = \"http://127.0.0.1:1/v1\"\n"),
            e.clone(),
            "upstream.shards.au1",
        ),
        (
            with("auth", "hmac_algorithms = [\"RS256\"]"),
            e.clone(),
            "auth.hmac_algorithms",
        ),
        (
            with("auth", "hmac_algorithms = [\"none\"]"),
            e.clone(),
            "auth.hmac_algorithms",
        ),
        (
            format!("{MINIMAL}[auth.jwks]\nurl = \"http://idp/jwks\"\nalgorithms = [\"RS256\"]\n"),
            e.clone(),
            "auth.jwks.url",
        ),
        (
            format!("{MINIMAL}[auth.jwks]\nurl = \"https://idp/jwks\"\nalgorithms = [\"HS256\"]\n"),
            e.clone(),
            "auth.jwks.algorithms",
        ),
        (
            with("server", "tls_cert_file = \"c.pem\""),
            e.clone(),
            "server.tls_cert_file",
        ),
        (
            with("server", "max_header_bytes = 100"),
            e.clone(),
            "server.max_header_bytes",
        ),
        (
            with("server", "public_base_url = \"https://gw.example/api\""),
            e.clone(),
            "server.public_base_url",
        ),
        (
            with("server", "listen = \"not an address\""),
            e.clone(),
            "server.listen",
        ),
        (
            with("server", "send_timeout = \"0s\""),
            e.clone(),
            "server.send_timeout",
        ),
        (
            with("server", "max_streams_per_connection = 0"),
            e.clone(),
            "server.max_streams_per_connection",
        ),
        (
            with("upstream", "max_in_flight_per_user = 0"),
            e.clone(),
            "upstream.max_in_flight_per_user",
        ),
        (
            format!("{MINIMAL}[admin]\nmax_connections = 0\n"),
            e.clone(),
            "admin.max_connections",
        ),
        (
            format!("{MINIMAL}\n[compression]\nlevel = 0\n"),
            e.clone(),
            "compression.level",
        ),
        (
            MINIMAL.to_string(),
            env(&[("CLINIKO_GATEWAY__COMPRESSION__MIN_BYTES", "2000000")]),
            "compression.min_bytes",
        ),
        (
            MINIMAL.to_string(),
            env(&[("CLINIKO_GATEWAY_HMAC_SECRET", "short")]),
            "auth.hmac_secret",
        ),
        (
            MINIMAL.to_string(),
            env(&[("CLINIKO_GATEWAY_MASTER_KEY", "not-a-key")]),
            "CLINIKO_GATEWAY_MASTER_KEY",
        ),
        (
            MINIMAL.to_string(),
            env(&[("CLINIKO_GATEWAY__NOPE__X", "1")]),
            "nope",
        ),
        (
            MINIMAL.replace("[server]", ""),
            {
                let mut e = env(&[]);
                e.0.remove("CLINIKO_GATEWAY_HMAC_SECRET");
                e
            },
            "auth",
        ),
        (
            MINIMAL.to_string(),
            {
                let mut e = env(&[]);
                e.0.remove("CLINIKO_GATEWAY_MASTER_KEY");
                e
            },
            "keystore.master_key",
        ),
        (
            with("keystore", "postgres_url = \"postgresql://u:pw@db/gw\""),
            e.clone(),
            "keystore.postgres_url",
        ),
        (
            with("keystore", "store = \"postgres\""),
            e.clone(),
            "keystore.postgres_url",
        ),
        (
            MINIMAL.replace("path = \"keys.json\"\n", ""),
            e.clone(),
            "keystore.path",
        ),
        (
            format!("{MINIMAL}[enrol]\nenabled = true\ngrant = \"a b\"\n"),
            e.clone(),
            "enrol.grant",
        ),
        (
            format!("{MINIMAL}[upstream.retries]\nconnect = 6\n"),
            e.clone(),
            "upstream.retries.connect",
        ),
        (
            format!("{MINIMAL}[ratelimit]\nconnect_retries = 9\n"),
            e.clone(),
            "upstream.retries.connect",
        ),
        (
            format!("{MINIMAL}[upstream.retries]\nbackoff = \"6s\"\n"),
            e.clone(),
            "upstream.retries.backoff",
        ),
        (
            format!("{MINIMAL}[upstream.retries]\nmax_wait = \"2m\"\n"),
            e.clone(),
            "upstream.retries.max_wait",
        ),
    ];
    for (text, e, want) in cases {
        let got = field_of(&text, &e);
        assert!(got.starts_with(want), "want {want}, got {got} for:\n{text}");
    }
}

#[test]
fn logs_are_json_unless_stdout_is_a_terminal_by_default() {
    use cliniko_gateway::config::LogFormat;
    let e = env(&[]);
    let cfg = load_str(MINIMAL, Path::new("/etc/gw"), &e).unwrap();
    assert_eq!(cfg.log.format, LogFormat::Auto);
    for (text, want) in [
        ("json", LogFormat::Json),
        ("text", LogFormat::Text),
        ("auto", LogFormat::Auto),
    ] {
        let e = env(&[("CLINIKO_GATEWAY__LOG__FORMAT", text)]);
        assert_eq!(
            load_str(MINIMAL, Path::new("/etc/gw"), &e)
                .unwrap()
                .log
                .format,
            want
        );
    }
}

#[test]
fn old_ratelimit_redis_fields_still_load_into_redis_with_a_warning() {
    use cliniko_gateway::config::{RedisFailure, RedisUrl};
    let old = format!(
        "{MINIMAL}[ratelimit]\nreplicas = 2\nredis_url = \"redis://r:6379/0\"\nredis_failure = \"closed\"\nredis_timeout = \"250ms\"\nredis_prefix = \"gw-old\"\n"
    );
    let cfg = load_str(&old, Path::new("/etc/gw"), &env(&[])).unwrap();
    assert_eq!(cfg.redis.url, Some(RedisUrl("redis://r:6379/0".into())));
    assert_eq!(cfg.redis.failure, RedisFailure::Closed);
    assert_eq!(cfg.redis.timeout, std::time::Duration::from_millis(250));
    assert_eq!(cfg.redis.prefix, "gw-old");
    assert_eq!(cfg.ratelimit.replicas, 2);
    let warned: Vec<String> = cfg.deprecated.iter().map(|d| d.to_string()).collect();
    assert_eq!(warned.len(), 4, "{warned:?}");
    assert!(warned[0].contains("`ratelimit.redis_url`") && warned[0].contains("`redis.url`"));
    // The old environment name too (deployments set the URL that way).
    let e = env(&[("CLINIKO_GATEWAY__RATELIMIT__REDIS_URL", "redis://env:6379")]);
    let cfg = load_str(MINIMAL, Path::new("/etc/gw"), &e).unwrap();
    assert_eq!(cfg.redis.url, Some(RedisUrl("redis://env:6379".into())));
    assert_eq!(cfg.deprecated.len(), 1);
    // The new names warn about nothing.
    let new = format!("{MINIMAL}[redis]\nurl = \"redis://r:6379/0\"\n");
    let cfg = load_str(&new, Path::new("/etc/gw"), &env(&[])).unwrap();
    assert!(cfg.deprecated.is_empty() && cfg.redis.url.is_some());
    // A bad value under the old name is still refused.
    let bad = format!("{MINIMAL}[ratelimit]\nredis_url = \"http://r\"\n");
    assert_eq!(field_of(&bad, &env(&[])), "redis.url");
}

#[test]
fn old_ratelimit_connect_retries_still_loads_into_upstream_retries_with_a_warning() {
    let old = format!("{MINIMAL}[ratelimit]\nconnect_retries = 4\n");
    let cfg = load_str(&old, Path::new("/etc/gw"), &env(&[])).unwrap();
    assert_eq!(cfg.upstream.retries.connect, 4);
    let warned: Vec<String> = cfg.deprecated.iter().map(|d| d.to_string()).collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("`ratelimit.connect_retries`")
            && warned[0].contains("`upstream.retries.connect`"),
        "{warned:?}"
    );
    let e = env(&[("CLINIKO_GATEWAY__RATELIMIT__CONNECT_RETRIES", "0")]);
    let cfg = load_str(MINIMAL, Path::new("/etc/gw"), &e).unwrap();
    assert_eq!(cfg.upstream.retries.connect, 0);
    assert_eq!(cfg.deprecated.len(), 1);
    let new = format!("{MINIMAL}[upstream.retries]\nconnect = 4\n");
    let cfg = load_str(&new, Path::new("/etc/gw"), &env(&[])).unwrap();
    assert!(cfg.deprecated.is_empty() && cfg.upstream.retries.connect == 4);
    let both = format!("{new}[ratelimit]\nconnect_retries = 1\n");
    assert_eq!(field_of(&both, &env(&[])), "ratelimit.connect_retries");
}

#[test]
fn a_redis_field_set_under_both_names_is_refused_naming_both() {
    let both = format!(
        "{MINIMAL}[redis]\nurl = \"redis://new:6379\"\n[ratelimit]\nredis_url = \"redis://old:6379\"\n"
    );
    let err = load_str(&both, Path::new("/etc/gw"), &env(&[])).unwrap_err();
    assert_eq!(err.field, "ratelimit.redis_url");
    assert!(err.to_string().contains("`redis.url`"), "{err}");
    // Across file and environment alike.
    let file_new = format!("{MINIMAL}[redis]\nfailure = \"open\"\n");
    let e = env(&[("CLINIKO_GATEWAY__RATELIMIT__REDIS_FAILURE", "closed")]);
    assert_eq!(field_of(&file_new, &e), "ratelimit.redis_failure");
}

#[test]
fn the_database_url_is_a_secret_that_check_config_never_prints() {
    let url = "postgresql://gw:S3cretPw@db.internal/gateway";
    let e = env(&[("CLINIKO_GATEWAY_POSTGRES_URL", url)]);
    let text = MINIMAL.replace("[keystore]\n", "[keystore]\nstore = \"postgres\"\n");
    let cfg = load_str(&text, Path::new("/etc/gw"), &e).unwrap();
    let shown = format!("{cfg:?}{}", toml::to_string_pretty(&cfg).unwrap());
    assert!(
        !shown.contains("S3cretPw") && !shown.contains("db.internal"),
        "{shown}"
    );
    use secrecy::ExposeSecret as _;
    assert_eq!(cfg.keystore.postgres_url.unwrap().expose_secret(), url);
}
