//! The docs hold together: every relative link in README.md, CONTRIBUTING.md and docs/*.md
//! names a file that exists and, for `file.md#anchor` (or `#anchor`), a heading of that file
//! under GitHub's slug rules; and the README stays a newcomer's first hour, not a manual.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The issue's target: reference belongs in docs/, not in the README.
const README_MAX_BYTES: usize = 15 * 1024;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn doc_files() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    let mut files = vec![root().join("README.md"), root().join("CONTRIBUTING.md")];
    files.extend(docs);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text outside fenced code blocks (a `](` in a shell snippet is not a link).
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's heading anchor: lower case, spaces become `-`, punctuation other than `-` and `_`
/// goes (so `A + B (c)` is `a--b-c`).
fn slug(title: &str) -> String {
    title
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every anchor a file's headings make; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose(text) {
        let level = line.len() - line.trim_start_matches('#').len();
        let Some(title) = line[level..].strip_prefix(' ') else {
            continue;
        };
        if !(1..=6).contains(&level) {
            continue;
        }
        let base = slug(title);
        let mut anchor = base.clone();
        for n in 1.. {
            if seen.insert(anchor.clone()) {
                break;
            }
            anchor = format!("{base}-{n}");
        }
    }
    seen
}

/// The targets of the inline links `[text](target)`, code spans left out.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text).join("\n");
    // Code spans may wrap across lines; odd pieces between backticks are code.
    let outside_code: String = prose.split('`').step_by(2).collect::<Vec<_>>().join(" ");
    outside_code
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter_map(|target| target.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The relative links of `file` (whose text is `text`) that do not resolve, one line each.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let dir = file.parent().expect("a file has a directory");
    let mut broken = Vec::new();
    for target in link_targets(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let linked = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        let problem = if !linked.exists() {
            "no such file"
        } else if anchor.is_empty() {
            continue;
        } else if linked.extension().is_none_or(|ext| ext != "md") {
            "an anchor into a file that is not Markdown"
        } else if !anchors(&read(&linked)).contains(anchor) {
            "no heading with that anchor"
        } else {
            continue;
        };
        let shown = file.strip_prefix(root()).unwrap_or(file);
        broken.push(format!("{}: ({target}): {problem}", shown.display()));
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = doc_files();
    assert!(
        files.len() >= 7,
        "README, CONTRIBUTING and the docs/ pages: {files:?}"
    );
    let mut links = 0;
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        links += link_targets(&text).len();
        broken.extend(broken_links(file, &text));
    }
    assert!(links > 50, "the link scanner found only {links} links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_a_missing_file_and_a_missing_heading() {
    let readme = root().join("README.md");
    let text = "[ok](docs/security.md#least-privilege) [gone](docs/nope.md) \
                [bad anchor](docs/security.md#no-such-heading) `[code](not/a/link.md)` \
                [here](#errors) [web](https://example.com/x)";
    let broken = broken_links(&readme, text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("docs/nope.md") && broken[0].contains("no such file"));
    assert!(broken[1].contains("#no-such-heading") && broken[1].contains("no heading"));
}

#[test]
fn anchors_follow_github_slugs() {
    let text = "# Tracing (OpenTelemetry)\n## Content-Length + Transfer-Encoding (x)\n\
                ### Hyper's own answers, retries\n```\n# not a heading\n```\n## Tests\n## Tests\n";
    let expected = [
        "tracing-opentelemetry",
        "content-length--transfer-encoding-x",
        "hypers-own-answers-retries",
        "tests",
        "tests-1",
    ];
    assert_eq!(
        anchors(text),
        expected.iter().map(|a| a.to_string()).collect()
    );
}

#[test]
fn the_readme_is_a_first_hour_read() {
    let size = read(&root().join("README.md")).len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes (limit {README_MAX_BYTES}): move reference to docs/ and link it"
    );
}
