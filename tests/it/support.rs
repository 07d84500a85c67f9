//! Test harness: real Cliniko stand-ins over TLS, a real gateway on a loopback port, a real
//! HTTP client. Nothing of ours is mocked.

use bytes::Bytes;
use cliniko_gateway::Gateway;
use cliniko_gateway::config::{Env, load};
use cliniko_gateway::credentials::{self, ApiKey};
use cliniko_gateway::sandbox::{Account, Sandbox, SandboxOptions, TestPki};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretSlice};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The HMAC secret every harness uses (tests mint their own tokens with it).
pub const HMAC: &str = "test-hmac-secret-that-is-long-enough-0123456789";
/// Master key (hex, 32 bytes).
pub const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Key of user alice (au1).
pub const KEY_ALICE: &str = "alicekey0000000000000000-au1";
/// Key of user dave: another account on the au1 stand-in.
pub const KEY_DAVE: &str = "davekey00000000000000000-au1";
/// Key of user carol (uk2, another shard).
pub const KEY_CAROL: &str = "carolkey0000000000000000-uk2";

/// The harness's policy: one grant allowing everything, given to every caller, so tests that
/// are not about the policy behave as before it existed (the code default denies).
pub const ALLOW_ALL_POLICY: &str = "[policy]\nclaims = []\ndefault = [\"all\"]\n[policy.grants.all]\nmethods = [\"*\"]\npaths = [\"/v1\"]\n";

/// What to start.
pub struct Setup {
    /// shard -> accounts served by that shard's stand-in.
    pub shards: Vec<(&'static str, Vec<Account>)>,
    /// user -> API key stored for them.
    pub users: Vec<(&'static str, &'static str)>,
    /// Extra `CLINIKO_GATEWAY__…` overrides.
    pub overrides: Vec<(&'static str, String)>,
    /// Extra TOML appended to the `[auth]` section; `{jwks_url}` names the au1 stand-in's JWKS.
    pub auth_toml: String,
    /// Files written into the config directory before loading (e.g. PEM keys).
    pub files: Vec<(&'static str, String)>,
    /// JWKS the au1 stand-in serves from the start.
    pub jwks: Option<serde_json::Value>,
    /// The CA the gateway trusts (a fresh one when `None`).
    pub pki: Option<Arc<TestPki>>,
    /// The `[policy]` section (TOML); [`ALLOW_ALL_POLICY`] by default.
    pub policy_toml: String,
    /// HTTP/2 streams each stand-in allows per connection (`None`: hyper's default, 200).
    pub sandbox_max_streams: Option<u32>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            shards: vec![
                ("au1", vec![account(KEY_ALICE, "Alice")]),
                ("uk2", vec![account(KEY_CAROL, "Carol")]),
            ],
            users: vec![
                ("alice", KEY_ALICE),
                ("bob", KEY_ALICE),
                ("carol", KEY_CAROL),
            ],
            overrides: vec![],
            auth_toml: String::new(),
            files: vec![],
            jwks: None,
            pki: None,
            policy_toml: ALLOW_ALL_POLICY.into(),
            sandbox_max_streams: None,
        }
    }
}

/// A Cliniko account of the stand-in.
pub fn account(key: &str, label: &str) -> Account {
    Account {
        api_key: key.into(),
        label: label.into(),
    }
}

/// A stand-in serving Alice's account (for gateways started as processes, not by [`Harness`]).
pub async fn alice_sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        accounts: vec![account(KEY_ALICE, "Alice")],
        ..SandboxOptions::default()
    })
    .await
    .unwrap()
}

/// A running gateway in front of running stand-ins.
pub struct Harness {
    /// The gateway; dropping it stops the server.
    gw: Option<Gateway>,
    pub sandboxes: BTreeMap<&'static str, Sandbox>,
    /// Held so the key store and CA files outlive the gateway.
    _dir: tempfile::TempDir,
    pub base: String,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// A response with its body collected.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// The gateway error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    /// Starts stand-ins and a gateway per `setup`.
    pub async fn start(setup: Setup) -> Harness {
        let pki = match &setup.pki {
            Some(p) => p.clone(),
            None => Arc::new(TestPki::new().unwrap()),
        };
        let mut sandboxes = BTreeMap::new();
        for (shard, accounts) in setup.shards {
            let sb = Sandbox::start(SandboxOptions {
                accounts,
                pki: Some(pki.clone()),
                shard: shard.into(),
                max_concurrent_streams: setup.sandbox_max_streams,
                ..SandboxOptions::default()
            })
            .await
            .unwrap();
            sandboxes.insert(shard, sb);
        }
        if let (Some(j), Some(sb)) = (&setup.jwks, sandboxes.get("au1")) {
            sb.set_jwks(j.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        for (name, contents) in &setup.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let jwks_url = sandboxes
            .get("au1")
            .map(|s| {
                format!(
                    "https://localhost:{}/.well-known/jwks.json",
                    s.addr().port()
                )
            })
            .unwrap_or_default();
        let mut shards_toml = String::new();
        for (shard, sb) in &sandboxes {
            shards_toml.push_str(&format!("{shard} = \"{}\"\n", sb.base_url()));
        }
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
[auth]
hmac_algorithms = ["HS256"]
{auth}
[keystore]
path = "keys.json"
[upstream]
user_agent = "Gateway Tests (tests@example.invalid)"
ca_file = "ca.pem"
timeout = "5s"
connect_timeout = "2s"
[upstream.shards]
{shards_toml}
[log]
format = "text"
{policy}
"#,
            auth = setup.auth_toml.replace("{jwks_url}", &jwks_url),
            policy = setup.policy_toml,
        );
        let mut env: BTreeMap<String, String> = [
            ("CLINIKO_GATEWAY_HMAC_SECRET".to_string(), HMAC.to_string()),
            ("CLINIKO_GATEWAY_MASTER_KEY".to_string(), MASTER.to_string()),
        ]
        .into_iter()
        .collect();
        for (k, v) in setup.overrides {
            env.insert(k.to_string(), v);
        }
        // Loaded from a file, as `serve` does, so reloads re-read it.
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, &config_text).unwrap();
        let cfg = load(&config_path, &Env(env)).unwrap();
        // Through the configured backend: the file, or the database of a PostgreSQL setup.
        let store = credentials::Backend::open(&cfg.keystore).await.unwrap();
        for (user, key) in setup.users {
            let new = credentials::NewKey {
                user: user.into(),
                key: ApiKey::new(key.into()),
                cliniko_user: None,
                verified_at: None,
                exclusive: false,
            };
            store.add(new).await.unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Gateway::start(cfg, listener).await.unwrap();
        let client = plain_client();
        Harness {
            gw: Some(gw),
            sandboxes,
            _dir: dir,
            base: format!("http://{addr}"),
            client,
        }
    }

    /// The running gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    /// The config file the gateway was started from (rewrite it, then reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("gateway.toml")
    }

    /// Rewrites the config file with `edit` applied to its text.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }

    /// `http://<admin address>` (panics when the admin listener is off).
    pub fn admin_base(&self) -> String {
        let addr = self
            .gw
            .as_ref()
            .and_then(|g| g.admin_addr)
            .expect("admin enabled");
        format!("http://{addr}")
    }

    /// The config directory (key store, CA file).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The gateway's cache (panics when disabled).
    pub fn cache(&self) -> std::sync::Arc<cliniko_gateway::cache::Cache> {
        self.gw
            .as_ref()
            .and_then(|g| g.live().cache.clone())
            .expect("cache enabled")
    }

    /// The stand-in for `shard`.
    pub fn sandbox(&self, shard: &str) -> &Sandbox {
        &self.sandboxes[shard]
    }

    /// A valid HS256 token for `sub`, valid for an hour.
    pub fn token(&self, sub: &str) -> String {
        token(sub)
    }

    /// Sends a request through the gateway.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Got {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .client
            .request(b.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// GET with a token for `user`.
    pub async fn get_as(&self, user: &str, path: &str) -> Got {
        let auth = format!("Bearer {}", self.token(user));
        self.send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    /// GET as `user` with extra headers.
    pub async fn get_as_with(&self, user: &str, path: &str, extra: &[(&str, &str)]) -> Got {
        let auth = format!("Bearer {}", self.token(user));
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.send(Method::GET, path, &headers, Bytes::new()).await
    }

    /// GET with an explicit Authorization header value.
    pub async fn get_with_auth(&self, authorization: &str, path: &str) -> Got {
        self.send(
            Method::GET,
            path,
            &[("authorization", authorization)],
            Bytes::new(),
        )
        .await
    }

    /// Total requests received by all stand-ins on `/v1` paths.
    pub fn upstream_hits(&self) -> usize {
        self.sandboxes
            .values()
            .map(|s| {
                s.requests()
                    .iter()
                    .filter(|r| r.path_and_query.starts_with("/v1"))
                    .count()
            })
            .sum()
    }
}

/// Signs `claims` (plus `sub`, `iat`, `exp` = now + `ttl`) with the HMAC secret.
pub fn mint_hs(
    secret: &SecretSlice<u8>,
    alg: jsonwebtoken::Algorithm,
    sub: &str,
    ttl: Duration,
    claims: serde_json::Map<String, serde_json::Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.expose_secret());
    cliniko_gateway::auth::mint::mint(&key, jsonwebtoken::Header::new(alg), sub, ttl, claims)
}

/// A valid HS256 token for `sub` signed with [`HMAC`], valid for an hour.
pub fn token(sub: &str) -> String {
    mint_hs(
        &SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(3600),
        serde_json::Map::new(),
    )
    .unwrap()
}

/// Like [`token`], with a `scope` claim (for configs with a real policy, e.g. the deploy one).
pub fn token_scoped(sub: &str, scope: &str) -> String {
    let mut claims = serde_json::Map::new();
    claims.insert("scope".into(), scope.into());
    mint_hs(
        &SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(3600),
        claims,
    )
    .unwrap()
}

/// A loopback port that is certain to refuse connections while the socket is held: bound
/// (so no other test can take the port) but never listening, so a connect gets RST at once on
/// Linux. Dropping a listener instead would free the port for a parallel test.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// A plain-HTTP pooled client for talking to the gateway.
pub fn plain_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// Sends raw bytes on a fresh TCP connection and returns everything read until close/timeout.
pub async fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The first candidate that runs (`check` args succeed), for tests driving a real client
/// program; `None` after a loud SKIP when there is none outside CI. In CI (`CI` set) a missing
/// program fails the test: `.ci/run` installs it (`what` says how).
pub fn real_tool(
    candidates: &[std::path::PathBuf],
    check: &[&str],
    what: &str,
) -> Option<std::path::PathBuf> {
    let found = candidates.iter().find(|c| {
        std::process::Command::new(c)
            .args(check)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing; .ci/run must install it"
        );
        eprintln!("\n\n*** SKIPPING a real-client test: {what} is missing ***\n\n");
    }
    found.cloned()
}

/// A real `redis-server` on a free loopback port, killed on drop (ratelimit and ops tests).
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl RedisServer {
    /// Starts one; `None` (after a loud SKIP) when redis-server is not installed outside CI.
    pub fn start() -> Option<RedisServer> {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed; .ci/run must install it"
            );
            eprintln!(
                "\n\n*** SKIPPING a Redis test: redis-server is not on PATH \
                 (apt-get install redis-server) ***\n\n"
            );
            return None;
        }
        // redis-server cannot take a bound socket, so the port is free when it binds: if
        // something else took it in between, redis-server exits and another port is tried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut s = RedisServer {
                child: None,
                url: format!("redis://127.0.0.1:{port}"),
            };
            if s.run() {
                return Some(s);
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts redis-server on this server's port and waits until it answers; false when it
    /// exited instead (its port was taken).
    fn run(&mut self) -> bool {
        let port = self.url.rsplit(':').next().unwrap().to_string();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Readiness poll: the process needs a moment to bind before it answers PING.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() || !self.is_ours() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if exited {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Starts it again on the same port, empty (as a restarted Redis without persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.run(), "redis-server could not take its port again");
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("redis://");
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Whether the Redis answering on the port is our child (not another test's server that
    /// took the port first: ours then exits).
    fn is_ours(&self) -> bool {
        use std::io::{Read, Write};
        let (Some(child), Ok(mut s)) = (
            &self.child,
            std::net::TcpStream::connect(self.url.trim_start_matches("redis://")),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut info = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = s.write_all(b"INFO server\r\n");
        while let Ok(n @ 1..) = s.read(&mut buf) {
            info.extend_from_slice(&buf[..n]);
            if info.windows(11).any(|w| w == b"process_id:") && info.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let pid = format!("process_id:{}\r\n", child.id());
        String::from_utf8_lossy(&info).contains(&pid)
    }

    /// Stops it (as if Redis went down).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a child process writes to stdout and stderr, line by line, as it comes.
pub struct ChildLogs {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl ChildLogs {
    /// Takes the child's piped stdout and stderr and starts reading them.
    pub fn capture(child: &mut tokio::process::Child) -> ChildLogs {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let outs: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for out in outs {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
        ChildLogs { rx, seen: vec![] }
    }

    /// Waits (at most 20 s) for a line containing `needle`.
    pub async fn wait_line(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Ok(None) => panic!("process exited before logging {needle:?}"),
                Err(_) => panic!("no log line {needle:?} within 20s"),
            }
        }
    }

    /// Reads until the process has closed its output (it exited), at most `bound`.
    pub async fn drain(&mut self, bound: Duration) {
        while let Ok(Some(l)) = tokio::time::timeout(bound, self.rx.recv()).await {
            self.seen.push(l);
        }
    }
}

/// Sends `sig` (e.g. "-HUP") to the child with `kill`.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A config directory for running the real binary against stand-in `sb`: its CA, `gw.toml`
/// (`server_extra` lines under `[server]`, `tail` after the JSON `[log]` section) and a key
/// store holding `users`.
pub fn process_config_dir(
    sb: &Sandbox,
    server_extra: &str,
    tail: &str,
    users: &[(&str, &str)],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), sb.ca_pem()).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[auth]\n[keystore]\npath = \"keys.json\"\n\
         [upstream]\nuser_agent = \"Gateway Tests (tests@example.invalid)\"\nca_file = \"ca.pem\"\n\
         [upstream.shards]\nau1 = \"{}\"\n[log]\nformat = \"json\"\n{tail}",
        sb.base_url()
    );
    std::fs::write(dir.path().join("gw.toml"), cfg).unwrap();
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    for (user, key) in users {
        add_key(
            &dir.path().join("keys.json"),
            &master,
            user,
            &ApiKey::new(key.to_string()),
            None,
        )
        .unwrap();
    }
    dir
}

/// Runs a key-store future to completion from sync or async code alike: on a thread of its
/// own with its own runtime (a test's runtime may not be blocked on, nor nested).
fn on_own_runtime<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    })
}

/// `keys add` on the file store at `path`.
pub fn add_key(
    path: &std::path::Path,
    master: &cliniko_gateway::config::MasterKey,
    user: &str,
    key: &ApiKey,
    cliniko_user: Option<&str>,
) -> Result<credentials::AddOutcome, credentials::KeyStoreError> {
    let new = credentials::NewKey::new(user, key.clone(), cliniko_user);
    on_own_runtime(credentials::Backend::file(path.to_path_buf(), master.clone()).add(new))
}

/// `keys remove` on the file store at `path`.
pub fn remove_user(
    path: &std::path::Path,
    master: &cliniko_gateway::config::MasterKey,
    user: &str,
) -> Result<bool, credentials::KeyStoreError> {
    on_own_runtime(credentials::Backend::file(path.to_path_buf(), master.clone()).remove(user))
}

/// The file store at `path`, loaded as a gateway loads it (a missing file is an error).
pub fn load_keys(
    path: &std::path::Path,
    master: &cliniko_gateway::config::MasterKey,
) -> Result<credentials::KeyStore, credentials::KeyStoreError> {
    let store = credentials::Backend::file(path.to_path_buf(), master.clone());
    on_own_runtime(store.load(false)).map(|(store, _)| store)
}

/// The value of one Prometheus sample line `name{labels} value` (0 when absent).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// How the cache handled a response (`X-Cache`), empty when absent.
pub fn xcache(g: &Got) -> &str {
    g.headers.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

/// The admin token of [`with_admin`] setups.
pub const ADMIN_TOKEN: &str = "admin-token-of-at-least-32-characters!!";

/// `setup` with the admin listener on (loopback, [`ADMIN_TOKEN`]).
pub fn with_admin(mut setup: Setup) -> Setup {
    setup.overrides.extend([
        ("CLINIKO_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0".into()),
        ("CLINIKO_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN.into()),
    ]);
    setup
}

/// One admin request: status and JSON body (`Null` when not JSON).
pub async fn admin(
    h: &Harness,
    method: Method,
    path_and_query: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{path_and_query}", h.admin_base()));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = h
        .client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}
