//! The on-disk JSON document (version 2, and version 1 for `keys reseal`) and its atomic
//! replacement.
//!
//! Rejects unknown fields, other versions and malformed JSON; error messages give the position
//! and category only, because serde's own messages can quote file content. The integrity MAC
//! is checked by the store, over [`Document::canonical`].

use super::KeyStoreError;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// The version this gateway writes: version 1 plus the whole-document `mac`.
pub(super) const VERSION: u32 = 2;
/// The version before the MAC: read only so that `keys reseal` can sign it.
pub(super) const UNSIGNED_VERSION: u32 = 1;

/// The whole file. `BTreeMap`s keep the output sorted, hence stable diffs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Document {
    pub version: u32,
    #[serde(default)]
    pub keys: BTreeMap<String, KeyEntry>,
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// `hmac-sha256:<hex>` over [`Document::canonical`]; absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What the MAC covers: everything but the MAC itself.
#[derive(Serialize)]
struct Signed<'a> {
    version: u32,
    keys: &'a BTreeMap<String, KeyEntry>,
    users: &'a BTreeMap<String, String>,
}

impl Document {
    pub fn empty() -> Document {
        Document {
            version: VERSION,
            keys: BTreeMap::new(),
            users: BTreeMap::new(),
            mac: None,
        }
    }

    /// The bytes the MAC is computed over: `{"version":…,"keys":{…},"users":{…}}` as compact
    /// JSON, map keys in byte order, entry fields in declaration order, `cliniko_user` always
    /// present (`null` when absent). Being re-serialised from the parsed document, it ignores
    /// whitespace and key order in the file but covers every value the gateway uses.
    pub fn canonical(&self) -> Vec<u8> {
        let signed = Signed {
            version: self.version,
            keys: &self.keys,
            users: &self.users,
        };
        // Serialising strings, integers and maps into a Vec cannot fail.
        serde_json::to_vec(&signed).unwrap_or_default()
    }
}

/// One sealed API key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyEntry {
    pub shard: String,
    pub fingerprint: String,
    #[serde(default)]
    pub cliniko_user: Option<String>,
    pub sealed: String,
    /// When Cliniko last accepted the key (RFC 3339), for keys enrolled by their owner.
    /// Absent otherwise, and then absent from the MAC's input too, so files written before
    /// it existed keep their MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
}

/// Reads and parses the file; `Ok(None)` when it does not exist.
pub(super) fn read(path: &Path) -> Result<Option<Document>, KeyStoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    parse(path, &bytes).map(Some)
}

/// Parses a stored document (`place` names where it came from, for errors).
pub(super) fn parse(place: &Path, bytes: &[u8]) -> Result<Document, KeyStoreError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc: Document = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format_error(place, describe(e.inner(), Some(e.path()))))?;
    de.end()
        .map_err(|e| format_error(place, describe(&e, None)))?;
    if doc.version != VERSION && doc.version != UNSIGNED_VERSION {
        return Err(format_error(
            place,
            format!(
                "unsupported version {}; this gateway reads version {VERSION} (and {UNSIGNED_VERSION} for `keys reseal`)",
                doc.version
            ),
        ));
    }
    Ok(doc)
}

pub(super) fn format_error(path: &Path, problem: String) -> KeyStoreError {
    KeyStoreError::Format {
        path: path.to_path_buf(),
        problem,
    }
}

/// Position, category and field path of a parse error, without any value from the file.
fn describe(inner: &serde_json::Error, path: Option<&serde_path_to_error::Path>) -> String {
    use serde_json::error::Category;
    let msg = inner.to_string();
    let mut unknown_field = false;
    let what = match inner.classify() {
        Category::Io => "read error".to_string(),
        Category::Syntax => "malformed JSON".to_string(),
        Category::Eof => "the JSON ends early".to_string(),
        Category::Data => {
            // `missing field` names one of our own (static) field names; other messages may
            // quote values, so they are reduced to a category.
            match msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split_once('`'))
            {
                Some((field, _)) => format!("missing field `{field}`"),
                None if msg.starts_with("unknown field") => {
                    unknown_field = true;
                    "unknown field".to_string()
                }
                None => "a value has the wrong type or form".to_string(),
            }
        }
    };
    let mut out = format!("{what} at line {} column {}", inner.line(), inner.column());
    // The last segment of an unknown-field path is the unknown name itself, from the file.
    let field = path
        .map(|p| field_path(p, unknown_field))
        .unwrap_or_default();
    if !field.is_empty() {
        out.push_str(&format!(" (in `{field}`)"));
    }
    out
}

fn field_path(path: &serde_path_to_error::Path, drop_last: bool) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let n = path.iter().count().saturating_sub(usize::from(drop_last));
    for seg in path.iter().take(n) {
        let s = match seg {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } if is_safe_label(key) => key.clone(),
            Segment::Map { .. } => "<name>".to_string(),
            Segment::Enum { variant } if is_safe_label(variant) => variant.clone(),
            Segment::Enum { .. } | Segment::Unknown => "?".to_string(),
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&s);
    }
    out
}

/// Short identifier-like strings are safe to echo; anything else could be a pasted secret.
fn is_safe_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// What an edit does with the document it was given: `Some` is signed and written.
pub(super) type Edited<T> = (Option<Document>, T);

/// Runs `f` on the file's document (`None`: no file yet) under the lock file, then replaces
/// the file with the signed bytes it returns, if any.
pub(super) fn edit<T>(
    path: &Path,
    f: impl FnOnce(Option<Document>) -> Result<(Option<Vec<u8>>, T), KeyStoreError>,
) -> Result<T, KeyStoreError> {
    let _theirs = lock_file(path)?;
    let (bytes, out) = f(read(path)?)?;
    if let Some(bytes) = bytes {
        write_atomic(path, &bytes)?;
    }
    Ok(out)
}

/// An exclusive lock on `.<name>.lock` beside the store, so the gateway's enrolments and a
/// `keys` command on the same file never interleave their read and write; released on drop.
fn lock_file(path: &Path) -> Result<std::fs::File, KeyStoreError> {
    let lock = beside(path, ".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_error("create", &lock))?;
    f.lock().map_err(io_error("lock", &lock))?;
    Ok(f)
}

/// `.<file name><suffix>` beside the store file: its lock and temp files.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keystore".into());
    path.with_file_name(format!(".{name}{suffix}"))
}

/// What doing `op` on `path` failed with.
fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KeyStoreError {
    let path = path.to_path_buf();
    move |source| KeyStoreError::Io { op, path, source }
}

/// `doc` as the current version, signed under `master`, in its stored form: pretty JSON,
/// sorted keys, a final newline.
pub(super) fn signed(mut doc: Document, master: &[u8; 32]) -> Result<Vec<u8>, KeyStoreError> {
    doc.version = VERSION;
    doc.mac = Some(super::crypto::document_mac(master, &doc.canonical())?);
    // Serialising strings, integers and maps into a Vec cannot fail.
    let mut json = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    json.push(b'\n');
    Ok(json)
}

/// Replaces `path` with `json`: temp file (0600) in the same directory, fsync, rename, fsync dir.
fn write_atomic(path: &Path, json: &[u8]) -> Result<(), KeyStoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 6];
    super::crypto::random(&mut suffix)?;
    let tmp = beside(path, &format!(".tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = create_private(&tmp).map_err(io_error("create", &tmp))?;
        f.write_all(json).map_err(io_error("write", &tmp))?;
        f.sync_all().map_err(io_error("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("replace", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Makes the rename itself durable; a failure here leaves a correct file, so it is ignored.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new file only its owner may read or write (0600). Unix only, like the whole gateway
/// (signals, file modes): a branch for other systems could never be built.
fn create_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::TempDir;

    fn problem(json: &str) -> String {
        let dir = TempDir::new();
        let p = dir.path().join("ks.json");
        fs::write(&p, json).unwrap();
        match read(&p) {
            Err(KeyStoreError::Format { problem, .. }) => problem,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn format_errors_never_quote_values() {
        let p = problem(r#"{"version": 1, "keys": {}, "users": {"alice": 42}}"#);
        assert!(p.contains("wrong type") && p.contains("users.alice"), "{p}");
        let p = problem(r#"{"version": "MY-SECRET-KEY-au1"}"#);
        assert!(!p.contains("MY-SECRET"), "{p}");
        assert!(p.contains("line 1"), "{p}");
        let p = problem(r#"{"version": 1, "keys": {"k1": {"shard": "au1"}}}"#);
        assert!(p.contains("missing field `fingerprint`"), "{p}");
        let p = problem(r#"{"version": 1, "MY-SECRET": 1}"#);
        assert!(
            p.contains("unknown field") && !p.contains("MY-SECRET"),
            "{p}"
        );
        let p = problem(r#"{"version": 1, "keys": {"k1": {"SECRET": 1}}}"#);
        assert!(p.contains("(in `keys.k1`)") && !p.contains("SECRET"), "{p}");
        let p = problem(
            r#"{"version": 1, "users": {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": 1}}"#,
        );
        assert!(p.contains("users.<name>"), "{p}");
        let p = problem("{\"version\": 1,");
        assert!(p.contains("ends early"), "{p}");
        let p = problem(r#"{"version": 3}"#);
        assert!(p.contains("unsupported version 3"), "{p}");
        let p = problem(r#"{"version": 1} trailing"#);
        assert!(p.contains("malformed JSON"), "{p}");
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = TempDir::new();
        assert!(read(&dir.path().join("absent.json")).unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_is_private_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        let p = dir.path().join("ks.json");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&p, &signed(Document::empty(), &[7; 32]).unwrap()).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&p).unwrap().unwrap().version, VERSION);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
    }
}
