//! The operator commands, run as the real binary: keys add/list/remove, token mint.

use crate::support::*;
use std::process::{Output, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("gw.toml");
    std::fs::write(
        &p,
        "[auth]\n[keystore]\npath = \"keys.json\"\n[upstream]\nuser_agent = \"T (t@example.invalid)\"\n",
    )
    .unwrap();
    p
}

async fn run(args: &[&str], cfg: &std::path::Path, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn keys_add_list_remove_never_show_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let add = run(
        &["keys", "add", "--user", "alice"],
        &cfg,
        &format!("{KEY_CAROL}\n"),
    )
    .await;
    assert!(add.status.success(), "{}", out(&add));
    let add = run(
        &[
            "keys",
            "add",
            "--user",
            "bob",
            "--cliniko-user",
            "front-desk",
        ],
        &cfg,
        KEY_CAROL,
    )
    .await;
    assert!(add.status.success(), "{}", out(&add));
    let list = run(&["keys", "list"], &cfg, "").await;
    let text = out(&list);
    assert!(list.status.success(), "{text}");
    assert!(text.contains("alice") && text.contains("bob") && text.contains("uk2"));
    assert!(text.contains("sha256:") && text.contains("front-desk"));
    let file = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
    for shown in [&text, &file, &out(&add)] {
        assert!(!shown.contains("carolkey"), "a key was shown: {shown}");
    }
    let rm = run(&["keys", "remove", "--user", "alice"], &cfg, "").await;
    assert!(rm.status.success());
    let list = out(&run(&["keys", "list"], &cfg, "").await);
    assert!(!list.contains("alice") && list.contains("bob"));
    // A key whose shard suffix could pick a host is refused.
    let bad = run(&["keys", "add", "--user", "eve"], &cfg, "abc-evil.example").await;
    assert_eq!(bad.status.code(), Some(64), "{}", out(&bad));
    assert!(!out(&bad).contains("abc-evil"));
}

#[tokio::test]
async fn keys_import_stores_every_line_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let lines = format!("alice\t{KEY_CAROL}\n\nbob\t{KEY_CAROL}\tfront-desk\ndan\tdankey-uk2\n");
    let import = run(&["keys", "import"], &cfg, &lines).await;
    assert!(import.status.success(), "{}", out(&import));
    assert!(
        out(&import).contains("stored 3 users (2 new keys)"),
        "{}",
        out(&import)
    );
    let list = out(&run(&["keys", "list"], &cfg, "").await);
    for user in ["alice", "bob", "dan", "front-desk"] {
        assert!(list.contains(user), "{user} missing: {list}");
    }
    // One bad line (line 2: a key with no shard) stores nothing and names the line, not the key.
    let bad = run(
        &["keys", "import"],
        &cfg,
        "erin\terinkey-uk2\nfay\tfaykeysecret-evil.example\n",
    )
    .await;
    assert_eq!(bad.status.code(), Some(64), "{}", out(&bad));
    assert!(out(&bad).contains("line 2") && !out(&bad).contains("faykeysecret"));
    // Columns swapped (key, then user): refused, the key never echoed nor stored as a name.
    let real_shape = "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZjAxMjM0NTY3ODk-uk2";
    let swapped = run(&["keys", "import"], &cfg, &format!("{real_shape}\tgus\n")).await;
    assert_eq!(swapped.status.code(), Some(64), "{}", out(&swapped));
    assert!(out(&swapped).contains("swapped") && !out(&swapped).contains("MS0x"));
    let malformed = run(&["keys", "import"], &cfg, "gus only-one-field\n").await;
    assert_eq!(malformed.status.code(), Some(64));
    let list = out(&run(&["keys", "list"], &cfg, "").await);
    assert!(
        !list.contains("erin") && !list.contains("gus") && !list.contains("MS0x"),
        "{list}"
    );
    for shown in [
        &list,
        &std::fs::read_to_string(dir.path().join("keys.json")).unwrap(),
    ] {
        assert!(
            !shown.contains("carolkey") && !shown.contains("dankey"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn token_mint_makes_a_token_the_gateway_accepts() {
    let h = Harness::start(Setup::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let minted = run(
        &[
            "token",
            "mint",
            "--sub",
            "alice",
            "--ttl",
            "5m",
            "--claim",
            "scope=cliniko:read",
        ],
        &cfg,
        "",
    )
    .await;
    assert!(minted.status.success(), "{}", out(&minted));
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let got = h
        .get_with_auth(&format!("Bearer {token}"), "/v1/patients?per_page=1")
        .await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn token_mint_signs_with_a_private_key_and_mints_many() {
    let kp = cliniko_gateway::sandbox::rsa_keypair().unwrap();
    let h = Harness::start(Setup {
        files: vec![("idp.pem", kp.public_pem.clone())],
        auth_toml: "[[auth.public_keys]]\nfile = \"idp.pem\"\nalgorithms = [\"RS256\"]\n".into(),
        ..Setup::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("idp-private.pem");
    std::fs::write(&key, &kp.private_pem).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args([
            "token",
            "mint",
            "--sub",
            "alice",
            "--alg",
            "RS256",
            "--count",
            "3",
            "--signing-key",
        ])
        .arg(&key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(
        tokens
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    for t in &tokens {
        assert_eq!(
            h.get_with_auth(&format!("Bearer {t}"), "/v1/patients?per_page=1")
                .await
                .status,
            200
        );
    }
}
