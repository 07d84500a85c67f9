//! What a re-read config means beyond the parts (those are built by `live::Live::build`, as at
//! start-up): which changes wait for a restart, and whether token verification changed.

use crate::config::{Config, RetryConfig, UpstreamConfig};
use aws_lc_rs::digest;
use secrecy::ExposeSecret;

/// The sections that need a restart and differ between the running config and `new`: they
/// shape the listener, the upstream client, the key store's location and key, the admin
/// listener, enrolment, logging and telemetry, all set up once. `[upstream.retries]` is not
/// one: the retry layer is rebuilt with the stack.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    // Sections compare by value; their secrets by digest (see `config::Secret`).
    let (a, b) = (running, new);
    let upstream = |c: &Config| UpstreamConfig {
        retries: RetryConfig::default(),
        ..c.upstream.clone()
    };
    [
        ("server", a.server != b.server),
        ("upstream", upstream(a) != upstream(b)),
        ("keystore", a.keystore != b.keystore),
        ("enrol", a.enrol != b.enrol),
        ("admin", a.admin != b.admin),
        ("compression", a.compression != b.compression),
        ("log", a.log != b.log),
        ("telemetry", a.telemetry != b.telemetry),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// A digest of everything token verification depends on (reads the key files: call it off
/// the async threads): the section, the HMAC secret and
/// the PEM files' contents (a rotated key file at the same path is a change). A digest, so no
/// copy of the secret is kept to compare against.
pub fn auth_identity(c: &Config) -> Vec<u8> {
    let mut d = digest::Context::new(&digest::SHA256);
    // Debug shows every field (the secret only redacted: it is added below), and cannot fail
    // the way a serialisation could (which would make every auth section look alike).
    d.update(format!("{:?}", c.auth).as_bytes());
    if let Some(s) = &c.auth.hmac_secret {
        d.update(b"\0hmac\0");
        d.update(s.expose_secret());
    }
    for k in &c.auth.public_keys {
        d.update(b"\0pem\0");
        // Unreadable: the verifier's own load reports it with the field name.
        d.update(&std::fs::read(&k.file).unwrap_or_default());
    }
    d.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, load_str};

    fn cfg(extra: &str, secret: &str) -> Config {
        let text = format!(
            "[auth]\n[keystore]\npath = \"k.json\"\n[upstream]\nuser_agent = \"T (t@example.invalid)\"\n{extra}"
        );
        let env = Env([
            (
                "CLINIKO_GATEWAY_HMAC_SECRET".to_string(),
                secret.to_string(),
            ),
            (
                "CLINIKO_GATEWAY_MASTER_KEY".to_string(),
                "0000000000000000000000000000000000000000000000000000000000000000".into(),
            ),
        ]
        .into_iter()
        .collect());
        load_str(&text, std::path::Path::new("/tmp"), &env).unwrap()
    }

    #[test]
    fn a_new_hmac_secret_is_an_auth_change_even_with_the_same_file() {
        let a = cfg("", "a-secret-of-at-least-32-bytes-long!!");
        let b = cfg("", "another-secret-of-at-least-32-bytes!");
        assert_eq!(auth_identity(&a), auth_identity(&a));
        assert_ne!(auth_identity(&a), auth_identity(&b));
    }

    #[test]
    fn only_restart_sections_are_reported_as_needing_a_restart() {
        let s = "a-secret-of-at-least-32-bytes-long!!";
        let a = cfg("", s);
        let b = cfg(
            "[cache]\nenabled = false\n[server]\nmax_body_bytes = 1024\n[log]\nlevel = \"debug\"\n[upstream.retries]\nconnect = 0\n",
            s,
        );
        assert_eq!(restart_needed(&a, &b), vec!["server", "log"]);
        assert!(restart_needed(&a, &cfg("", s)).is_empty());
    }

    #[test]
    fn secrets_and_redis_passwords_are_compared_by_value() {
        let s = "a-secret-of-at-least-32-bytes-long!!";
        let redis = |pw: &str| {
            cfg(
                &format!("[redis]\nurl = \"redis://:{pw}@127.0.0.1:6379/0\"\n"),
                s,
            )
        };
        // Serialised, both URLs read `redis://[REDACTED]@…`: equality must still see it.
        assert!(redis("one").redis != redis("two").redis);
        assert!(redis("one").redis == redis("one").redis);
        let mut a = cfg("", s);
        a.admin.token = Some(String::from("an-admin-token-of-at-least-32-characters").into());
        let b = a.clone();
        assert!(restart_needed(&a, &b).is_empty());
        a.admin.token = Some(String::from("another-admin-token-of-32-characters!").into());
        assert_eq!(restart_needed(&b, &a), vec!["admin"]);
    }
}
