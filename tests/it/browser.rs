//! Browser apps: CORS for the listed origins only. A real headless Chromium loads a page from
//! another loopback origin that calls the gateway with `fetch()` and a Bearer token; the
//! page writes what it could read into its DOM, which is what the test asserts on.

use crate::support::*;
use bytes::Bytes;
use http::Method;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `[cors]` for `origin`, plus a key budget of one request, so a preflight that spent any
/// budget would show.
fn cors_setup(origin: &str) -> Setup {
    Setup {
        policy_toml: format!(
            "{ALLOW_ALL_POLICY}[cors]\nallowed_origins = [\"{origin}\"]\n\
             [ratelimit]\nmax_wait = \"0s\"\n[ratelimit.key]\nrate = 1\nperiod = \"1h\"\nburst = 1\n"
        ),
        ..Setup::default()
    }
}

async fn preflight(h: &Harness, origin: &str) -> Got {
    h.send(
        Method::OPTIONS,
        "/v1/patients?per_page=2",
        &[
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
        Bytes::new(),
    )
    .await
}

async fn get_from(h: &Harness, auth: &str, origin: &str) -> Got {
    h.send(
        Method::GET,
        "/v1/patients?per_page=2",
        &[("authorization", auth), ("origin", origin)],
        Bytes::new(),
    )
    .await
}

fn cors_headers(g: &Got) -> Vec<String> {
    g.headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn preflight_is_answered_without_token_cliniko_or_budget_and_other_origins_get_nothing() {
    let app = "http://app.example:3000";
    let h = Harness::start(cors_setup(app)).await;
    for _ in 0..3 {
        let p = preflight(&h, app).await;
        assert_eq!(p.status, 200, "{}", p.text());
        assert_eq!(p.headers["access-control-allow-origin"], app);
        let methods = p.headers["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.contains("GET") && methods.contains("PATCH"),
            "{methods}"
        );
        let allowed = p.headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert_eq!(p.headers["access-control-max-age"], "600");
    }
    assert_eq!(h.upstream_hits(), 0, "a preflight never reaches Cliniko");
    // The one-request budget is still whole: the first real call spends it.
    let auth = format!("Bearer {}", h.token("alice"));
    let ok = get_from(&h, &auth, app).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.headers["access-control-allow-origin"], app);
    let exposed = ok.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    for h in [
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
        "x-cache",
        "x-request-id",
        "location",
        "etag",
    ] {
        assert!(exposed.split(',').any(|e| e.trim() == h), "{h}: {exposed}");
    }
    // Gateway errors carry CORS headers too, so the app can read its 429.
    let limited = h
        .send(
            Method::GET,
            "/v1/patients?per_page=3",
            &[("authorization", &auth), ("origin", app)],
            Bytes::new(),
        )
        .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["access-control-allow-origin"], app);
    // Another origin, a look-alike, the other scheme: no CORS header at all; its preflight
    // is an ordinary request (no token: 401).
    for other in [
        "http://evil.example:3000",
        "http://app.example:3000.evil",
        "https://app.example:3000",
    ] {
        let p = preflight(&h, other).await;
        assert_eq!(
            (p.status.as_u16(), p.code().as_str()),
            (401, "token_missing")
        );
        assert!(
            cors_headers(&p).is_empty(),
            "{other}: {:?}",
            cors_headers(&p)
        );
        let g = get_from(&h, &auth, other).await;
        assert!(
            cors_headers(&g).is_empty(),
            "{other}: {:?}",
            cors_headers(&g)
        );
        // Beside `accept-encoding` (Cliniko's, and the gateway's own compression).
        let vary: Vec<_> = g.headers.get_all("vary").iter().collect();
        assert!(vary.iter().any(|v| *v == "origin"), "{vary:?}");
    }
    assert_eq!(h.upstream_hits(), 1);
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let h = Harness::start(Setup::default()).await;
    let p = preflight(&h, "http://app.example:3000").await;
    assert_eq!(p.status, 401);
    assert!(cors_headers(&p).is_empty());
}

/// Serves `page` (HTML) at every path on `listener`, one connection at a time.
fn serve_page(listener: TcpListener, page: String) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let (status, body) = if buf.starts_with(b"GET /page ") {
                ("200 OK", page.as_str())
            } else {
                ("404 Not Found", "")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
}

/// A page that calls the gateway with a Bearer token (so the browser preflights) and writes
/// what it could read into `<pre id="out">`.
fn page(gateway: &str, token: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
fetch("{gateway}/v1/patients?per_page=20", {{headers: {{"Authorization": "Bearer {token}"}}}})
  .then(async r => {{
    const body = await r.json();
    document.getElementById("out").textContent = JSON.stringify({{
      status: r.status,
      ids: body.patients.map(p => p.id),
      request_id: r.headers.get("x-request-id"),
      x_cache: r.headers.get("x-cache"),
      vary: r.headers.get("vary"),
    }});
  }})
  .catch(e => {{ document.getElementById("out").textContent = "blocked: " + e; }});
</script></body></html>"#
    )
}

/// Runs headless Chromium on `url` and returns the text of `<pre id="out">` once the page's
/// fetch has settled (`--virtual-time-budget` holds the dump until the page is idle), and
/// Chromium's own record of the exchanges (its net log: the response heads it received).
async fn chromium_dom(chromium: &PathBuf, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let net_log = profile.path().join("net-log.json");
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-pings",
            // No name lookups at all: nothing but the loopback IP literals can be reached.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", profile.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let text = dom
        .split_once("<pre id=\"out\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(t, _)| t.to_string())
        .unwrap_or_else(|| {
            panic!(
                "no output element: {dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    (text, std::fs::read_to_string(net_log).unwrap_or_default())
}

#[tokio::test]
async fn a_real_browser_on_a_listed_origin_reads_the_data_and_exposed_headers_others_are_blocked() {
    let Some(chromium) = real_tool(
        &["chromium".into(), "chromium-browser".into()],
        &["--version"],
        "chromium (apt-get install chromium)",
    ) else {
        return;
    };
    // Two page origins on loopback, held from the start; only the first is listed.
    let listed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listed_origin = format!("http://{}", listed.local_addr().unwrap());
    let other_origin = format!("http://{}", other.local_addr().unwrap());
    let h = Harness::start(cors_setup(&listed_origin)).await;
    let html = page(&h.base, &h.token("alice"));
    serve_page(listed, html.clone());
    serve_page(other, html);

    let (got, net_log) = chromium_dom(&chromium, &format!("{listed_origin}/page")).await;
    let v: serde_json::Value =
        serde_json::from_str(&got).unwrap_or_else(|_| panic!("page wrote: {got}"));
    assert_eq!(v["status"], 200, "{got}");
    assert_eq!(v["ids"].as_array().unwrap().len(), 20, "{got}");
    // The browser asked for gzip (and br): the cache's gzip copy went out as it is, and the
    // page read the JSON out of it.
    let heads = net_log.to_ascii_lowercase();
    assert!(
        heads.contains("content-encoding: gzip"),
        "Chromium got no compressed answer; its net log: {}",
        net_log.chars().take(4000).collect::<String>()
    );
    assert!(
        v["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "exposed X-Request-Id readable: {got}"
    );
    assert_eq!(v["x_cache"], "MISS", "exposed X-Cache readable: {got}");
    assert!(
        v["vary"].is_null(),
        "a header not exposed stays hidden: {got}"
    );
    // The browser's preflight was answered by the gateway: Cliniko saw only the GET.
    assert_eq!(h.upstream_hits(), 1);

    let (blocked, _) = chromium_dom(&chromium, &format!("{other_origin}/page")).await;
    assert!(blocked.starts_with("blocked: TypeError"), "{blocked}");
    assert_eq!(
        h.upstream_hits(),
        1,
        "the unlisted page's call never got through"
    );
}
