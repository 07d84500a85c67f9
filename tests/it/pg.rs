//! A real PostgreSQL cluster for the database key-store tests: `initdb` into a temporary
//! directory, `postgres` listening only on a unix socket in that directory (no TCP port, so
//! none to guess or share), stopped (and the directory removed) on drop. As root it runs as the `postgres` account,
//! since PostgreSQL refuses to run as root.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster; `url` reaches it as the superuser `gateway`.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// `(uid, gid)` the server runs as (`None`: as this process).
    owner: Option<(u32, u32)>,
    /// `postgresql:///postgres?host=<socket dir>&user=gateway`.
    pub url: String,
}

impl PgServer {
    /// Starts one; `None` (after a loud SKIP) when PostgreSQL is not installed outside CI.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed; .ci/run must install it (apt-get install postgresql)"
            );
            eprintln!(
                "\n\n*** SKIPPING a PostgreSQL test: no initdb (apt-get install postgresql) ***\n\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owner = (std::fs::metadata("/proc/self").unwrap().uid() == 0).then(postgres_account);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut pg = PgServer {
            bin,
            dir,
            owner,
            url: String::new(),
        };
        pg.run("initdb", |c| {
            c.arg("-D").arg(&data);
            c.args(["-U", "gateway", "-A", "trust", "-E", "UTF8", "--no-sync"]);
        });
        let log = pg.dir.path().join("log");
        let socket_dir = pg.dir.path().to_path_buf();
        pg.run("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
            c.arg("-o")
                .arg(format!("-k {} -h '' -c fsync=off", socket_dir.display()));
        });
        pg.url = format!(
            "postgresql:///postgres?host={}&user=gateway",
            socket_dir.display()
        );
        Some(pg)
    }

    /// The cluster's data directory (the table's files, the WAL).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs SQL with `psql` and returns what it printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = self.command("psql", |c| {
            c.args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ]);
        });
        String::from_utf8_lossy(&out).into_owned()
    }

    fn run(&self, tool: &str, args: impl FnOnce(&mut Command)) {
        self.command(tool, args);
    }

    fn command(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Vec<u8> {
        let mut c = Command::new(self.bin.join(tool));
        args(&mut c);
        c.stdin(Stdio::null()).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
        out.stdout
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut c = Command::new(self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let _ = c.status();
    }
}

/// Where Debian puts the server binaries (`/usr/lib/postgresql/<version>/bin`), newest first.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|b| version(b));
    found.pop()
}

fn version(bin: &Path) -> u32 {
    bin.parent()
        .and_then(|v| v.file_name())
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `postgres` account the Debian package creates.
fn postgres_account() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "running as root needs the postgres account"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Polls `cond` every 20 ms until it holds or `within` has passed; how long it took.
pub async fn within<F, Fut>(within: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
