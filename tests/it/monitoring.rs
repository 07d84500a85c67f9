//! The shipped dashboard (`deploy/grafana/cliniko-gateway.json`) and alert rules
//! (`deploy/prometheus/alerts.yaml`, its unit tests and the kustomize component's copy) checked
//! against the real thing: a real gateway's `/metrics` after traffic that makes every labelled
//! series appear, and the real `promtool` for the PromQL. Renaming a metric or a label value
//! breaks this test, not an on-call night.
//!
//! promtool follows the redis-server convention (support.rs): under CI (`CI` set) a missing
//! promtool fails the test, since `.ci/run` installs it; elsewhere its checks are skipped loudly.

use crate::support::{ADMIN_TOKEN, Harness, Setup, admin, plain_client, refusing_port, with_admin};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap()
}

const DASHBOARD: &str = "deploy/grafana/cliniko-gateway.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/components/monitoring/prometheusrule.yaml";
const OPERATIONS: &str = "docs/operations.md";
const RUNBOOK_BASE: &str = "https://github.com/acme/cliniko-gateway/blob/main/docs/operations.md";

/// Labels Prometheus (or the Prometheus Operator) attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance", "pod", "namespace"];
/// Series Prometheus makes itself, per target.
const FROM_PROMETHEUS: &[&str] = &["up"];

// ---------------------------------------------------------------------------------------
// What the dashboard and the rules ask for.

/// Every PromQL expression of the dashboard, with the panel it came from; Grafana's variables
/// replaced by values Prometheus accepts.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = format!("panel {} {:?} {}", p["id"], p["title"], t["refId"]);
            out.push((title, grafana_to_promql(t["expr"].as_str().unwrap())));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            // `label_values(<selector>, <label>)`: the selector is PromQL.
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .unwrap()
                .strip_suffix(')')
                .unwrap();
            let (selector, _label) = inner.rsplit_once(',').unwrap();
            out.push((
                format!("variable {}", v["name"]),
                grafana_to_promql(selector),
            ));
        }
    }
    out
}

fn grafana_to_promql(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*");
    assert!(
        !e.contains('$'),
        "a Grafana variable this test does not know: {expr}"
    );
    e
}

/// Every rule of a rule file: (name, expr).
fn rules(groups: &Yaml) -> Vec<(String, String)> {
    let mut out = vec![];
    for g in groups.as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            out.push((name.to_string(), r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// The input series of the promtool unit tests.
fn test_series() -> Vec<String> {
    let t = yaml(ALERT_TESTS);
    let mut out = vec![];
    for case in t["tests"].as_vec().unwrap() {
        for s in case["input_series"].as_vec().unwrap() {
            out.push(s["series"].as_str().unwrap().to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// A small PromQL reader: enough to find metric selectors and grouping labels.

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Default)]
struct Refs {
    selectors: Vec<Selector>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left/right` lists.
    grouping: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Index after the string literal starting at `i`.
fn skip_string(b: &[char], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != quote {
        j += if b[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

fn string_value(b: &[char], i: usize, end: usize) -> String {
    b[i + 1..end - 1].iter().collect()
}

fn skip_ws(b: &[char], mut i: usize) -> usize {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    i
}

fn ident(b: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (b[start..i].iter().collect(), i)
}

/// `{label op "value", ...}` starting at `i` (the brace); returns the matchers and the index
/// after the closing brace.
fn matchers(b: &[char], mut i: usize, expr: &str) -> (Vec<Matcher>, usize) {
    let mut out = vec![];
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some('}') => return (out, i + 1),
            Some(',') => i += 1,
            Some(c) if is_ident_start(*c) => {
                let (label, j) = ident(b, i);
                i = skip_ws(b, j);
                let op_len = if b[i] == '=' && b[i + 1] != '~' { 1 } else { 2 };
                let op: String = b[i..i + op_len].iter().collect();
                i = skip_ws(b, i + op_len);
                let end = skip_string(b, i);
                let value = string_value(b, i, end);
                out.push(Matcher { label, op, value });
                i = end;
            }
            other => panic!("cannot read the matchers at {other:?} in {expr}"),
        }
    }
}

fn refs(expr: &str) -> Refs {
    let b: Vec<char> = expr.chars().collect();
    let mut out = Refs::default();
    let mut grouping_next = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&b, i);
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (`0.05`, `5m`, `1e3`).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let (word, j) = ident(&b, i);
            let next = skip_ws(&b, j);
            i = j;
            let w = word.as_str();
            if GROUPING.contains(&w) {
                grouping_next = true;
            } else if AGGREGATIONS.contains(&w) || b.get(next) == Some(&'(') {
                grouping_next = false;
            } else if !OPERATORS.contains(&w) {
                let mut sel = Selector {
                    name: word,
                    matchers: vec![],
                };
                if b.get(next) == Some(&'{') {
                    let (m, end) = matchers(&b, next, expr);
                    sel.matchers = m;
                    i = end;
                }
                out.selectors.push(sel);
            }
        } else if c == '(' && grouping_next {
            grouping_next = false;
            let close = i + b[i..].iter().position(|c| *c == ')').unwrap();
            let list: String = b[i + 1..close].iter().collect();
            out.grouping.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
            i = close + 1;
        } else if c == '{' {
            panic!("a selector without a metric name in {expr}");
        } else if c == '[' {
            i += b[i..].iter().position(|c| *c == ']').unwrap() + 1;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_promql_reader_finds_selectors_and_grouping_labels() {
    let r = refs(
        r#"sum without (instance, pod) (rate(a_total{x="1", y=~"a|b"}[5m] offset 30m))
        / on (job) group_left sum by (le) (b_bucket) > 0.5 unless c"#,
    );
    let names: Vec<_> = r.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b_bucket", "c"]);
    assert_eq!(r.grouping, ["instance", "pod", "job", "le"]);
    let m = &r.selectors[0].matchers;
    assert_eq!((m[1].label.as_str(), m[1].op.as_str()), ("y", "=~"));
    assert_eq!(m[0].value, "1");
}

// ---------------------------------------------------------------------------------------
// What a real gateway exposes.

/// name -> the label sets of its samples.
type Scrape = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn parse_exposition(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let b: Vec<char> = line.chars().collect();
        let (name, i) = ident(&b, 0);
        let mut labels = BTreeMap::new();
        if b.get(i) == Some(&'{') {
            let (m, _) = matchers(&b, i, line);
            labels.extend(m.into_iter().map(|m| (m.label, m.value)));
        }
        out.entry(name).or_default().push(labels);
    }
    out
}

async fn scrape(h: &Harness) -> String {
    let req = http::Request::get(format!("{}/metrics", h.admin_base()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A gateway after traffic that creates every labelled series the dashboard and the rules
/// select on: 200s, a cache hit, a per-user 429 (burst 2), a stored key Cliniko rejects (502), health
/// checks, and a config reload that succeeds and one that is refused. Its `[redis]` names a
/// port that refuses connections, so the Redis-only series (the cache bus) exist too, as on a
/// replica whose Redis is down (the key budgets fail open to the same local budget).
async fn gateway_with_traffic() -> (Harness, Scrape, String) {
    let (_held, port) = refusing_port();
    let mut s = with_admin(Setup::default());
    s.overrides.push((
        "CLINIKO_GATEWAY__REDIS__URL",
        format!("redis://127.0.0.1:{port}"),
    ));
    s.users.push(("dave", "revokedkey000000000000-au1"));
    s.overrides.extend([
        (
            "CLINIKO_GATEWAY__RATELIMIT__USER__DEFAULT__RATE",
            "1".into(),
        ),
        (
            "CLINIKO_GATEWAY__RATELIMIT__USER__DEFAULT__PERIOD",
            "1h".into(),
        ),
        (
            "CLINIKO_GATEWAY__RATELIMIT__USER__DEFAULT__BURST",
            "2".into(),
        ),
    ]);
    let h = Harness::start(s).await;
    let statuses = [
        h.get_as("alice", "/v1/patients").await.status,
        h.get_as("alice", "/v1/patients").await.status,
        h.get_as("bob", "/v1/user").await.status,
        h.get_as("bob", "/v1/user").await.status,
        h.get_as("bob", "/v1/user").await.status,
        h.get_as("dave", "/v1/patients").await.status,
        h.send(http::Method::GET, "/healthz", &[], Bytes::new())
            .await
            .status,
        h.send(http::Method::GET, "/readyz", &[], Bytes::new())
            .await
            .status,
    ];
    assert_eq!(
        statuses.map(|s| s.as_u16()),
        [200, 200, 200, 200, 429, 502, 200, 200]
    );
    h.gateway().reload().await.unwrap();
    h.edit_config(|t| t.replace("[upstream]", "[upstream]\ntimeout = \"not a duration\""));
    assert!(h.gateway().reload().await.is_err());
    let text = scrape(&h).await;
    let parsed = parse_exposition(&text);
    (h, parsed, text)
}

/// What is wrong with `sel` against the scrape (empty: nothing). `values`: check `=` values.
fn check_selector(sel: &Selector, scrape: &Scrape, values: bool) -> Vec<String> {
    if FROM_PROMETHEUS.contains(&sel.name.as_str()) {
        return vec![];
    }
    let Some(series) = scrape.get(&sel.name) else {
        return vec![format!("no metric {}", sel.name)];
    };
    let mut bad = vec![];
    for m in &sel.matchers {
        if TARGET_LABELS.contains(&m.label.as_str()) {
            continue;
        }
        if !series.iter().any(|l| l.contains_key(&m.label)) {
            bad.push(format!("{} has no label {}", sel.name, m.label));
        } else if values && m.op == "=" && !series.iter().any(|l| l.get(&m.label) == Some(&m.value))
        {
            bad.push(format!("{} has no {}=\"{}\"", sel.name, m.label, m.value));
        }
    }
    bad
}

#[tokio::test]
async fn every_metric_and_label_the_dashboard_and_the_alerts_use_exists_on_a_real_gateway() {
    let (h, scrape, text) = gateway_with_traffic().await;
    // The metrics added for on-call, with the values this traffic must have produced.
    for line in [
        "cliniko_gateway_config_last_reload_successful 0",
        "cliniko_gateway_keystore_last_reload_successful 1",
        "cliniko_gateway_ready 1",
        "cliniko_gateway_ratelimit_waiting 0",
        r#"cliniko_gateway_http_requests_total{route="proxy",method="GET",status="429"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    let (_, keys) = admin(&h, http::Method::GET, "/admin/keys", Some(ADMIN_TOKEN)).await;
    let dave = keys["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "dave");
    let fingerprint = dave.unwrap()["fingerprint"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            r#"cliniko_gateway_upstream_credential_rejected_total{{key_fingerprint="{fingerprint}"}} 1"#
        )),
        "{text}"
    );
    assert!(!text.contains("revokedkey"), "a key in the metrics");

    let mut problems = vec![];
    let mut used = BTreeSet::new();
    let exprs = dashboard_queries()
        .into_iter()
        .chain(rules(&yaml(ALERTS)["groups"]));
    for (what, expr) in exprs {
        let r = refs(&expr);
        assert!(!r.selectors.is_empty(), "{what} selects nothing: {expr}");
        for sel in &r.selectors {
            used.insert(sel.name.clone());
            problems.extend(
                check_selector(sel, &scrape, true)
                    .into_iter()
                    .map(|p| format!("{what}: {p}")),
            );
        }
        // Grouping labels: a target label, or one some selected metric carries.
        for l in &r.grouping {
            let carried = r.selectors.iter().any(|s| {
                scrape
                    .get(&s.name)
                    .is_some_and(|series| series.iter().any(|x| x.contains_key(l)))
            });
            if !carried && !TARGET_LABELS.contains(&l.as_str()) {
                problems.push(format!("{what}: no selected metric has the label {l}"));
            }
        }
    }
    // The promtool unit tests' input series are shaped like the real ones (their label
    // values are examples, so only names and label names are checked).
    for s in test_series() {
        for sel in refs(&s).selectors {
            problems.extend(
                check_selector(&sel, &scrape, false)
                    .into_iter()
                    .map(|p| format!("{ALERT_TESTS}: {p}")),
            );
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nscraped:\n{text}",
        problems.join("\n")
    );
    // The dashboard shows what the issue asked for.
    for m in [
        "cliniko_gateway_process_resident_memory_bytes",
        "cliniko_gateway_connections_open",
        "cliniko_gateway_upstream_credential_rejected_total",
        "cliniko_gateway_upstream_tls_handshakes_total",
        "cliniko_gateway_ratelimit_fail_open_total",
        "cliniko_gateway_ratelimit_waiting",
        "cliniko_gateway_ratelimit_waits_total",
        "cliniko_gateway_upstream_throttled_total",
        "cliniko_gateway_cache_weighted_bytes",
        "cliniko_gateway_config_reloads_total",
        "cliniko_gateway_cache_invalidation_subscribed",
        "cliniko_gateway_cache_invalidations_total",
        "cliniko_gateway_cache_resubscribe_clears_total",
    ] {
        assert!(used.contains(m), "nothing shows {m}");
    }
}

// ---------------------------------------------------------------------------------------
// promtool

/// promtool's path; `None` (after a loud SKIP) when it is not installed outside CI.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed; .ci/run must install it (Debian package `prometheus`)"
        );
        eprintln!(
            "\n\n*** SKIPPING promtool checks: promtool is not on PATH \
             (apt-get install prometheus) ***\n\n"
        );
    }
    found
}

fn run_promtool(promtool: &Path, args: &[&str], file: &Path) -> String {
    let out = std::process::Command::new(promtool)
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} {file:?}:\n{text}");
    text
}

#[test]
fn every_dashboard_query_parses_and_the_alert_rules_pass_their_promtool_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    // The dashboard's queries as recording rules, so promtool parses each one.
    let queries = dashboard_queries();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, &file).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let names: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, (what, _))| format!("query_{i}: {what}"))
        .collect();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        names.join("\n")
    );
    let ok = run_promtool(&promtool, &["check", "rules"], &repo(ALERTS));
    assert!(ok.contains("SUCCESS"), "{ok}");
    let tested = run_promtool(&promtool, &["test", "rules"], &repo(ALERT_TESTS));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

// ---------------------------------------------------------------------------------------
// The files agree with each other and with the docs.

/// The PrometheusRule is alerts.yaml's `groups:` under a fixed head.
fn prometheus_rule_text() -> String {
    let alerts = read(ALERTS);
    let at = alerts
        .find("\ngroups:\n")
        .expect("alerts.yaml has `groups:`")
        + 1;
    let mut out = String::from(
        "# Generated from deploy/prometheus/alerts.yaml (edit that file, then regenerate with\n\
         # `UPDATE_MONITORING=1 cargo test --test it monitoring`); a test fails when they differ.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: cliniko-gateway\nspec:\n",
    );
    for line in alerts[at..].lines() {
        if !line.is_empty() {
            out.push_str("  ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn the_kustomize_prometheus_rule_carries_exactly_the_alert_rules() {
    let want = prometheus_rule_text();
    if std::env::var_os("UPDATE_MONITORING").is_some() {
        std::fs::write(repo(PROMETHEUS_RULE), &want).unwrap();
    }
    assert!(
        read(PROMETHEUS_RULE) == want,
        "{PROMETHEUS_RULE} differs from {ALERTS}; regenerate it with \
         `UPDATE_MONITORING=1 cargo test --test it monitoring`"
    );
    let rule = yaml(PROMETHEUS_RULE);
    assert_eq!(rule["spec"]["groups"], yaml(ALERTS)["groups"]);
    let kustomization = read("deploy/kubernetes/components/monitoring/kustomization.yaml");
    for f in ["servicemonitor.yaml", "prometheusrule.yaml"] {
        assert!(
            kustomization.contains(&format!("  - {f}\n")),
            "{f} not listed"
        );
    }
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_links_to_its_own_runbook_section_that_says_what_to_do() {
    let docs = read(OPERATIONS);
    // Heading anchor -> the section's text (up to the next heading).
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = None;
    for line in docs.lines() {
        if let Some(h) = line.strip_prefix("### ").or(line.strip_prefix("## ")) {
            current = Some(anchor(h));
            sections.insert(anchor(h), String::new());
        } else if let Some(a) = &current {
            let s = sections.get_mut(a).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    let alerts = yaml(ALERTS);
    let mut seen = BTreeSet::new();
    for g in alerts["groups"].as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            let name = r["alert"].as_str().expect("only alerts in alerts.yaml");
            let a = &r["annotations"];
            for k in ["summary", "description"] {
                assert!(
                    a[k].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no {k}"
                );
            }
            let sev = r["labels"]["severity"].as_str();
            assert!(
                matches!(sev, Some("critical" | "warning" | "info")),
                "{name}: severity {sev:?}"
            );
            let url = a["runbook_url"].as_str().unwrap_or_default();
            let want = format!("{RUNBOOK_BASE}#{}", anchor(name));
            assert_eq!(url, want, "{name}: runbook_url");
            let section = sections
                .get(&anchor(name))
                .unwrap_or_else(|| panic!("{OPERATIONS} has no `### {name}` section"));
            assert!(
                section.split_whitespace().count() >= 40,
                "{name}: its runbook section says too little:\n{section}"
            );
            assert!(seen.insert(name.to_string()), "{name} twice");
        }
    }
    // The runbook says which alert fires in the dashboard, too: the tests cover each one.
    let tests = read(ALERT_TESTS);
    for name in &seen {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool test"
        );
    }
}

#[test]
fn the_dashboard_is_importable_with_the_datasource_as_a_variable() {
    let d = dashboard();
    assert!(d["id"].is_null(), "an id would clash on import");
    assert_eq!(d["uid"], "cliniko-gateway");
    assert!(
        d.get("__inputs").is_none(),
        "no import-time inputs: the datasource is a variable"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let mut ids = BTreeSet::new();
    let var_ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], var_ds, "panel {}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"], var_ds, "panel {}", p["title"]);
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], var_ds, "variable {}", v["name"]);
    }
}
