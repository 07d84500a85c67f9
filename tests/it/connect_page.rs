//! The enrolment page in a real headless Chromium, driven over the DevTools protocol (a
//! WebSocket to the browser): the page loads with the token in its fragment, focus is on the
//! key field, the key is pasted (`Input.insertText`) and submitted, and the fingerprint appears
//! (focus moved to it); an invalid key shows the error text. The page's inline script only
//! runs if the hash in its Content-Security-Policy is right, so this checks that too.

use crate::enrol::{connect_token, setup};
use crate::support::*;
use cliniko_gateway::credentials;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One DevTools session on the browser's first page.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: Socket,
    next_id: u64,
}

impl Browser {
    async fn start(chromium: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-pings",
                // No name lookups: nothing but the loopback IP literals can be reached.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-address=127.0.0.1",
                // The browser picks a free port and prints it: nothing to guess.
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .env("HOME", profile.path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if let Some(rest) = l.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().to_string();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium printed its DevTools address within 60 s");
        // Keep reading stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let list = plain_client()
            .get(
                format!("http://127.0.0.1:{port}/json/list")
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        use http_body_util::BodyExt as _;
        let targets: Value =
            serde_json::from_slice(&list.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Browser {
            _child: child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Sends one command and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answered within 30 s")
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (deadline 30 s); its last value.
    async fn wait_for(&mut self, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expr).await;
            if v.as_bool() == Some(true) || v.as_str().is_some_and(|s| !s.is_empty()) {
                return v;
            }
            assert!(Instant::now() < deadline, "{expr} never held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Loads `url` afresh (via a blank page: a new fragment alone would not reload it).
    async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": "about:blank"}))
            .await;
        self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'")
            .await;
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Opens the page with `token` in the fragment, pastes `key`, submits; the result text.
    async fn connect(&mut self, page: &str, token: &str, key: &str) -> (String, Value) {
        self.open(&format!("{page}#token={token}")).await;
        self.wait_for("document.readyState === 'complete' && document.activeElement.id === 'key'")
            .await;
        assert_eq!(
            self.eval("location.hash").await,
            "",
            "the token left the address bar"
        );
        self.call("Input.insertText", json!({"text": key})).await;
        self.eval("document.querySelector('button[type=submit]').click()")
            .await;
        let done = "(function(){var r=document.getElementById('result');\
                    return r.textContent && !r.textContent.startsWith('Checking') ? r.textContent : ''})()";
        let text = self.wait_for(done).await.as_str().unwrap().to_string();
        let state = self
            .eval("[document.getElementById('result').className, document.activeElement.id, document.getElementById('key').value.length]")
            .await;
        (text, state)
    }
}

#[tokio::test]
async fn a_real_browser_pastes_a_key_and_sees_its_fingerprint_or_the_error() {
    let Some(chromium) = real_tool(
        &["chromium".into(), "chromium-browser".into()],
        &["--version"],
        "chromium (apt-get install chromium)",
    ) else {
        return;
    };
    let h = Harness::start(setup()).await;
    let page = format!("{}/gateway/connect", h.base);
    let mut b = Browser::start(&chromium).await;

    let (text, state) = b
        .connect(&page, &connect_token("dave"), "not a key-au1")
        .await;
    assert!(text.contains("whitespace"), "{text}");
    assert_eq!(
        state,
        json!(["err", "result", 13]),
        "error shown, focused, key kept to fix"
    );

    let (text, state) = b.connect(&page, &connect_token("dave"), KEY_DAVE).await;
    let fp = credentials::fingerprint(KEY_DAVE);
    assert!(text.contains(&fp) && text.contains("Dave Owner"), "{text}");
    assert_eq!(
        state,
        json!(["ok", "result", 0]),
        "result shown, focused, field cleared"
    );
    let auth = format!("Bearer {}", connect_token("dave"));
    let headers = [("authorization", auth.as_str())];
    let stored = h.send(
        http::Method::GET,
        "/v1/patients",
        &headers,
        bytes::Bytes::new(),
    );
    assert_eq!(stored.await.status, 200, "the key was stored and is used");

    // Without a token (opened directly, not from the portal) the page says what to do.
    b.open(&page).await;
    let told = b
        .wait_for("document.getElementById('result').textContent")
        .await;
    assert!(told.as_str().unwrap().contains("portal"), "{told}");
}
