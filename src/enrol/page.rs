//! The page where a person pastes their Cliniko key: plain HTML, a little inline script and
//! style allowed by their hashes in the Content-Security-Policy (nothing else may run or
//! load), no framework.
//!
//! The internal portal links to `/gateway/connect#token=<JWT>`: a URL fragment is never sent
//! to a server, and the script drops it from the address bar at once. The key goes in the
//! `PUT` body. Accessibility basics: a labelled field with its hint, focus on the field, then
//! on the result (a polite live region), visible focus rings, text contrast above 7:1.

use crate::body::Body;
use crate::error::GatewayError;
use aws_lc_rs::digest;
use base64::Engine as _;
use http::{HeaderValue, Method, Response, StatusCode, header};
use std::sync::LazyLock;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;\
padding:0 1rem;color:#1a1a1a;background:#fff;line-height:1.5}\
label{display:block;font-weight:600;margin-top:1rem}\
input{box-sizing:border-box;width:100%;font:inherit;padding:.5rem;border:2px solid #555;border-radius:4px}\
input:focus,button:focus,#result:focus{outline:3px solid #0b5394;outline-offset:2px}\
button{margin-top:1rem;font:inherit;padding:.5rem 1rem;background:#0b5394;color:#fff;border:0;border-radius:4px}\
#result{margin-top:1.5rem;padding:1rem;border-radius:4px}#result:empty{display:none}\
.ok{background:#e6f4ea;color:#0f5132}.err{background:#fdecea;color:#842029}";

const SCRIPT: &str = r#"(function () {
  var token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", location.pathname);
  var form = document.getElementById("connect");
  var key = document.getElementById("key");
  var out = document.getElementById("result");
  function show(ok, text) { out.className = ok ? "ok" : "err"; out.textContent = text; out.focus(); }
  if (!token) {
    form.hidden = true;
    show(false, "Open this page from your portal: the link brings the sign-in this page needs.");
    return;
  }
  key.focus();
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    show(true, "Checking the key with Cliniko…");
    fetch("/gateway/v1/me/cliniko-key", {
      method: "PUT",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify({ key: key.value.trim() })
    }).then(function (r) {
      return r.json().then(function (b) { return { ok: r.ok, body: b }; });
    }).then(function (a) {
      if (!a.ok) { show(false, (a.body.error && a.body.error.message) || "The key was not connected."); return; }
      key.value = "";
      var who = a.body.cliniko_user ? ", Cliniko user " + a.body.cliniko_user : "";
      show(true, "Connected. Key fingerprint: " + a.body.fingerprint + " (shard " + a.body.shard + who + ").");
    }).catch(function () { show(false, "The gateway could not be reached; nothing was stored. Try again."); });
  });
})();"#;

/// The page, and its Content-Security-Policy naming the script's and the style's hashes.
static PAGE: LazyLock<(String, HeaderValue)> = LazyLock::new(|| {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Connect your Cliniko API key</title><style>{STYLE}</style></head>
<body><main>
<h1>Connect your Cliniko API key</h1>
<p>Paste your API key from Cliniko (My Info, then Manage API keys). The gateway checks it with
Cliniko and stores it encrypted: nobody else can see it, and it is never shown again.</p>
<form id="connect">
<label for="key">Cliniko API key</label>
<input id="key" name="key" type="password" autocomplete="off" spellcheck="false" required aria-describedby="key-hint">
<p id="key-hint">It ends with your shard, for example <code>-au1</code>.</p>
<button type="submit">Connect key</button>
</form>
<div id="result" role="status" aria-live="polite" tabindex="-1"></div>
</main><script>{SCRIPT}</script></body></html>
"#
    );
    let csp = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256(SCRIPT),
        sha256(STYLE)
    );
    // Only base64 and ASCII: always a valid header value.
    let csp = HeaderValue::try_from(csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    (html, csp)
});

fn sha256(s: &str) -> String {
    let d = digest::digest(&digest::SHA256, s.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

/// `GET` (or `HEAD`) of the page.
pub(super) fn serve(method: &Method) -> Result<Response<Body>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::Refused {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "the page is read with GET".into(),
        });
    }
    let (html, csp) = &*PAGE;
    // Static, valid header values: the builder cannot fail.
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, csp.clone())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(html.clone()))
        .map_err(|_| GatewayError::Internal)
}
