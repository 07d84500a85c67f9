//! Store-level tests: file round trips, sharing, tampering, reload and redaction.

use super::*;
use crate::config::{KeyStoreConfig, MasterKey};
use base64::Engine as _;
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A directory under the system temp dir, removed on drop (avoids a tempfile dependency).
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut r = [0u8; 4];
        crypto::random(&mut r).unwrap();
        let p = std::env::temp_dir().join(format!(
            "cg-creds-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            hex::encode(r)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const KEY_A: &str = "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZmdoaWprbG1ub3A-uk2";
const KEY_B: &str = "MS0yMjIyMjIyMjIyMjIyMjIyMjItenl4d3Z1dHNycXBvbm1sa2o-au1";

fn master(b: u8) -> MasterKey {
    crate::config::Secret::new(Box::new([b; 32]))
}

fn key(s: &str) -> ApiKey {
    ApiKey::new(s.to_string())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn setup() -> (TempDir, PathBuf, MasterKey) {
    let dir = TempDir::new();
    let path = dir.path().join("keys.json");
    (dir, path, master(1))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn add_then_load_round_trip() {
    let (_d, path, m) = setup();
    let out = add_key(&path, &m, "alice", &key(KEY_A), Some("dr-smith")).unwrap();
    assert!(out.created_file && !out.reused_key);
    assert_eq!(out.shard.as_str(), "uk2");
    let store = KeyStore::load(&path, &m).unwrap();
    assert_eq!(store.len(), 1);
    let c = store.get("alice").unwrap();
    assert_eq!(c.key.expose(), KEY_A);
    assert_eq!(c.shard.as_str(), "uk2");
    assert_eq!(&*c.key_id, out.key_id);
    assert_eq!(&*c.fingerprint, out.fingerprint);
    assert!(c.fingerprint.starts_with("sha256:") && c.fingerprint.len() == 7 + 16);
    assert_eq!(c.cliniko_user.as_deref(), Some("dr-smith"));
    assert!(store.get("bob").is_none());
    let v = json(&path);
    assert_eq!(v["version"], 2);
    assert!(v["mac"].as_str().unwrap().starts_with("hmac-sha256:"));
    assert_eq!(v["users"]["alice"], out.key_id.as_str());
    assert_eq!(v["keys"][&out.key_id]["shard"], "uk2");
}

#[test]
fn two_users_share_one_key_entry() {
    let (_d, path, m) = setup();
    let a = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let b = add_key(&path, &m, "bob", &key(KEY_A), None).unwrap();
    assert!(b.reused_key && !b.created_file);
    assert_eq!(a.key_id, b.key_id);
    assert_eq!(json(&path)["keys"].as_object().unwrap().len(), 1);
    let store = KeyStore::load(&path, &m).unwrap();
    assert_eq!((store.len(), store.key_count()), (2, 1));
    let (ca, cb) = (store.get("alice").unwrap(), store.get("bob").unwrap());
    assert!(Arc::ptr_eq(&ca, &cb), "shared keys share one Credential");
}

#[test]
fn wrong_master_key_is_a_decrypt_error_naming_the_key() {
    let (_d, path, m) = setup();
    let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let err = KeyStore::load(&path, &master(2)).unwrap_err();
    assert!(matches!(&err, KeyStoreError::Decrypt { key_id } if *key_id == out.key_id));
    let msg = err.to_string();
    assert!(
        msg.contains(&out.key_id) && msg.contains("CLINIKO_GATEWAY_MASTER_KEY"),
        "{msg}"
    );
    // Editing with the wrong master key must not mix master keys in one file.
    assert!(matches!(
        add_key(&path, &master(2), "bob", &key(KEY_B), None),
        Err(KeyStoreError::Decrypt { .. })
    ));
    assert!(matches!(
        remove_user(&path, &master(2), "alice"),
        Err(KeyStoreError::Decrypt { .. })
    ));
}

#[test]
fn tampered_sealed_blob_is_a_decrypt_error() {
    let (_d, path, m) = setup();
    let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let mut v = json(&path);
    let sealed = v["keys"][&out.key_id]["sealed"]
        .as_str()
        .unwrap()
        .to_string();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&sealed)
        .unwrap();
    raw[14] ^= 0x40; // a ciphertext byte
    v["keys"][&out.key_id]["sealed"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
    fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(
        KeyStore::load(&path, &m),
        Err(KeyStoreError::Decrypt { key_id }) if key_id == out.key_id
    ));
}

#[test]
fn sealed_blob_moved_to_another_id_fails() {
    let (_d, path, m) = setup();
    let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let mut v = json(&path);
    let entry = v["keys"][&out.key_id].take();
    v["keys"] = serde_json::json!({ "aaaaaaaaaaaa": entry });
    v["users"]["alice"] = "aaaaaaaaaaaa".into();
    fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(
        KeyStore::load(&path, &m),
        Err(KeyStoreError::Decrypt { key_id }) if key_id == "aaaaaaaaaaaa"
    ));
}

#[test]
fn add_refuses_bad_keys_and_user_names() {
    let (_d, path, m) = setup();
    for bad in ["abc-evil.com", "abc-", "", "abc def-au1", "abc-au1\n"] {
        assert!(
            matches!(
                add_key(&path, &m, "alice", &key(bad), None),
                Err(KeyStoreError::InvalidApiKey(_))
            ),
            "{bad:?}"
        );
    }
    let long = "x".repeat(MAX_USER_BYTES + 1);
    for bad in ["", "a\u{7}b", " alice", long.as_str()] {
        assert!(
            matches!(
                add_key(&path, &m, bad, &key(KEY_A), None),
                Err(KeyStoreError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(!path.exists(), "nothing written after refusals");
    let err = add_key(&path, &m, "alice", &key("secretvalue-evil.com"), None).unwrap_err();
    assert!(!err.to_string().contains("secretvalue"));
    add_key(&path, &m, "Alice Smith <a@b.c>", &key(KEY_A), None).unwrap();
}

#[test]
fn stored_bad_shard_fails_the_load_naming_the_key_id() {
    let (_d, path, m) = setup();
    // A hand-made entry whose key has an invalid suffix: only the id may be named.
    let bad = key("topsecret-evil.com");
    let sealed = crypto::seal(&[1; 32], "k1", &bad).unwrap();
    let doc = serde_json::json!({ "version": 1,
        "keys": { "k1": { "shard": "evil.com", "fingerprint": "x", "cliniko_user": null, "sealed": sealed } },
        "users": { "alice": "k1" } });
    fs::write(&path, doc.to_string()).unwrap();
    let err = KeyStore::load(&path, &m).unwrap_err();
    assert!(matches!(&err, KeyStoreError::BadShard { key_id } if key_id == "k1"));
    assert!(!err.to_string().contains("topsecret"));
}

#[test]
fn changing_a_user_key_drops_the_old_one_and_remove_drops_unreferenced() {
    let (_d, path, m) = setup();
    let a = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let b = add_key(&path, &m, "alice", &key(KEY_B), None).unwrap();
    assert_eq!(b.previous_key_id.as_deref(), Some(a.key_id.as_str()));
    assert_eq!(b.dropped_key_ids, vec![a.key_id.clone()]);
    add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
    add_key(&path, &m, "carol", &key(KEY_A), None).unwrap();
    assert!(remove_user(&path, &m, "alice").unwrap());
    assert_eq!(
        json(&path)["keys"].as_object().unwrap().len(),
        2,
        "bob still uses B"
    );
    assert!(remove_user(&path, &m, "carol").unwrap());
    let v = json(&path);
    assert_eq!(v["keys"].as_object().unwrap().len(), 1);
    assert!(v["keys"].get(&a.key_id).is_none());
    assert!(!remove_user(&path, &m, "nobody").unwrap());
    let rows = list(&path, &m).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].user.as_str(), rows[0].key_id.as_str()),
        ("bob", b.key_id.as_str())
    );
    assert_eq!(rows[0].shard.as_str(), "au1");
}

#[test]
fn list_is_sorted_and_relabel_applies() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "zed", &key(KEY_A), None).unwrap();
    add_key(&path, &m, "amy", &key(KEY_A), Some("owner")).unwrap();
    let rows = list(&path, &m).unwrap();
    let names: Vec<_> = rows.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(names, ["amy", "zed"]);
    assert!(
        rows.iter()
            .all(|r| r.cliniko_user.as_deref() == Some("owner"))
    );
}

fn config(path: &Path, m: &MasterKey) -> KeyStoreConfig {
    KeyStoreConfig {
        store: crate::config::StoreKind::File,
        path: path.to_path_buf(),
        master_key_file: None,
        postgres_url_file: None,
        watch_interval: std::time::Duration::ZERO,
        master_key: Some(m.clone()),
        postgres_url: None,
    }
}

/// Runs a key-store future to completion (these tests are synchronous).
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn open(cfg: &KeyStoreConfig) -> Result<Credentials, KeyStoreError> {
    run(Credentials::open(cfg, false))
}

fn reload(creds: &Credentials) -> Result<usize, KeyStoreError> {
    run(creds.reload())
}

#[test]
fn missing_file_and_missing_master_key_are_clear_errors() {
    let (_d, path, m) = setup();
    let err = open(&config(&path, &m)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KeyStoreError::NotFound { .. }));
    assert!(
        msg.contains("keys.json") && msg.contains("cliniko-gateway keys add"),
        "{msg}"
    );
    assert!(KeyStore::load_or_empty(&path, &m).unwrap().is_empty());
    let mut cfg = config(&path, &m);
    cfg.master_key = None;
    assert!(matches!(open(&cfg), Err(KeyStoreError::NoMasterKey)));
}

#[test]
fn reload_keeps_old_store_on_error_and_picks_up_valid_changes() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let creds = open(&config(&path, &m)).unwrap();
    assert_eq!(creds.lookup("alice").unwrap().key.expose(), KEY_A);
    let good = fs::read(&path).unwrap();

    fs::write(&path, b"{ not json").unwrap();
    assert!(matches!(reload(&creds), Err(KeyStoreError::Format { .. })));
    assert_eq!(creds.lookup("alice").unwrap().key.expose(), KEY_A);
    assert_eq!(creds.current().len(), 1);

    fs::write(&path, good).unwrap();
    add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
    assert!(creds.lookup("bob").is_none(), "not visible before reload");
    assert_eq!(reload(&creds).unwrap(), 2);
    assert_eq!(creds.lookup("bob").unwrap().key.expose(), KEY_B);
}

#[test]
fn hand_edited_fingerprint_or_dangling_user_is_a_format_error() {
    let (_d, path, m) = setup();
    let out = add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let original = json(&path);
    let mut v = original.clone();
    v["keys"][&out.key_id]["fingerprint"] = "sha256:0000000000000000".into();
    fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(
        KeyStore::load(&path, &m),
        Err(KeyStoreError::Format { .. })
    ));
    let mut v = original;
    v["users"]["bob"] = "nokey".into();
    fs::write(&path, v.to_string()).unwrap();
    let err = KeyStore::load(&path, &m).unwrap_err();
    assert!(err.to_string().contains("\"nokey\""), "{err}");
}

#[test]
fn debug_output_never_contains_the_key() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let creds = open(&config(&path, &m)).unwrap();
    let c = creds.lookup("alice").unwrap();
    let enc = b64(&format!("{KEY_A}:"));
    let secret_prefix = &KEY_A[..20];
    for s in [
        format!("{c:?}"),
        format!("{:?}", c.key),
        format!("{:?}", creds.current()),
        format!("{creds:?}"),
        format!("{:?}", c.basic_auth_header()),
        format!("{:?}", list(&path, &m).unwrap()),
    ] {
        assert!(!s.contains(secret_prefix) && !s.contains(&enc[..20]), "{s}");
    }
    assert_eq!(format!("{:?}", c.key), "ApiKey([REDACTED])");
    assert!(format!("{c:?}").contains(&*c.fingerprint));
}

#[test]
fn basic_auth_header_is_base64_of_key_colon_and_sensitive() {
    let c = Credential::new(key(KEY_A), "id", None).unwrap();
    let h = c.basic_auth_header();
    assert!(h.is_sensitive());
    assert_eq!(
        h.to_str().unwrap(),
        format!("Basic {}", b64(&format!("{KEY_A}:")))
    );
    assert!(Credential::new(key("x-evil.com"), "id", None).is_err());
}

#[test]
fn file_on_disk_holds_neither_the_key_nor_its_base64() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    for k in [KEY_A, KEY_B] {
        let body = &k[..k.len() - 4]; // the shard suffix alone is public
        assert!(!text.contains(body));
        assert!(!text.contains(&b64(k)[..20]));
        assert!(!text.contains(&b64(&format!("{k}:"))[..20]));
    }
}

#[test]
fn in_memory_store_serves_lookups() {
    let c = Arc::new(Credential::new(key(KEY_B), "k", Some("u".into())).unwrap());
    let store = KeyStore::from_users([("alice".to_string(), c.clone())]);
    assert!(Arc::ptr_eq(&store.get("alice").unwrap(), &c));
    assert_eq!(store.users().map(|(u, _)| u).collect::<Vec<_>>(), ["alice"]);
}

/// Writes `v` back as the attacker would: pretty JSON, MAC untouched.
fn write_json(path: &Path, v: &serde_json::Value) {
    fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

#[test]
fn editing_users_or_labels_without_the_master_key_is_refused() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
    let original = json(&path);
    let alice_id = original["users"]["alice"].clone();
    type Edit = fn(&mut serde_json::Value, &serde_json::Value);
    let edits: [(&str, Edit); 5] = [
        ("bob -> alice's key", |v, a| v["users"]["bob"] = a.clone()),
        ("new user on alice's key", |v, a| {
            v["users"]["mallory"] = a.clone()
        }),
        ("user removed", |v, _| {
            v["users"].as_object_mut().unwrap().remove("bob");
        }),
        ("label set", |v, a| {
            v["keys"][a.as_str().unwrap()]["cliniko_user"] = "owner".into()
        }),
        ("mac removed", |v, _| {
            v.as_object_mut().unwrap().remove("mac");
        }),
    ];
    for (name, edit) in edits {
        let mut v = original.clone();
        edit(&mut v, &alice_id);
        write_json(&path, &v);
        let err = KeyStore::load(&path, &m).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Tampered { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("keys reseal --accept-edits"),
            "{err}"
        );
        // Edits through the CLI refuse to launder it too.
        assert!(matches!(
            add_key(&path, &m, "carol", &key(KEY_A), None),
            Err(KeyStoreError::Tampered { .. })
        ));
        assert!(matches!(
            remove_user(&path, &m, "alice"),
            Err(KeyStoreError::Tampered { .. })
        ));
    }
    // Layout is not content: re-indented, keys reordered, the MAC still holds.
    let mut compact = original.to_string();
    compact.push_str("\n\n");
    fs::write(&path, compact).unwrap();
    assert_eq!(KeyStore::load(&path, &m).unwrap().len(), 2);
}

#[test]
fn a_version_1_file_is_refused_until_resealed() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let mut v = json(&path);
    v["version"] = 1.into();
    v.as_object_mut().unwrap().remove("mac");
    write_json(&path, &v);
    let err = KeyStore::load(&path, &m).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unsigned { .. }), "{err}");
    assert!(err.to_string().contains("keys reseal"), "{err}");
    assert!(matches!(
        add_key(&path, &m, "bob", &key(KEY_B), None),
        Err(KeyStoreError::Unsigned { .. })
    ));
    // The wrong master key cannot sign it.
    assert!(matches!(
        reseal(&path, &master(2), false),
        Err(KeyStoreError::Decrypt { .. })
    ));
    // Unsigned is not proof of unedited: signing it takes the same explicit word as an edit.
    assert!(matches!(
        reseal(&path, &m, false),
        Err(KeyStoreError::Unsigned { .. })
    ));
    assert_eq!(reseal(&path, &m, true).unwrap(), Resealed::Migrated);
    let after = json(&path);
    assert_eq!(after["version"], 2);
    assert_eq!(after["users"], v["users"]);
    assert_eq!(KeyStore::load(&path, &m).unwrap().len(), 1);
    assert_eq!(reseal(&path, &m, false).unwrap(), Resealed::AlreadySigned);
}

#[test]
fn reseal_accepts_an_edit_only_when_asked() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    let mut v = json(&path);
    v["users"]["bob"] = v["users"]["alice"].clone();
    write_json(&path, &v);
    assert!(matches!(
        reseal(&path, &m, false),
        Err(KeyStoreError::Tampered { .. })
    ));
    assert!(
        KeyStore::load(&path, &m).is_err(),
        "a refusal writes nothing"
    );
    assert_eq!(reseal(&path, &m, true).unwrap(), Resealed::AcceptedEdits);
    let store = KeyStore::load(&path, &m).unwrap();
    assert_eq!(store.get("bob").unwrap().key.expose(), KEY_A);
}

#[test]
fn reload_refuses_a_tampered_store_and_keeps_the_old_one() {
    let (_d, path, m) = setup();
    add_key(&path, &m, "alice", &key(KEY_A), None).unwrap();
    add_key(&path, &m, "bob", &key(KEY_B), None).unwrap();
    let creds = open(&config(&path, &m)).unwrap();
    let mut v = json(&path);
    v["users"]["bob"] = v["users"]["alice"].clone();
    write_json(&path, &v);
    assert!(matches!(
        reload(&creds),
        Err(KeyStoreError::Tampered { .. })
    ));
    assert_eq!(creds.lookup("bob").unwrap().key.expose(), KEY_B);
    assert!(matches!(
        open(&config(&path, &m)),
        Err(KeyStoreError::Tampered { .. })
    ));
}
