//! The status page in every format, the way an operator meets it: one nginx with a checked
//! upstream (a healthy peer, a peer whose port is closed, a peer marked `down` in nginx.conf and
//! a backup) and an unchecked one, served as text, JSON, Prometheus metrics and HTML, read by
//! the tools that consume them for real: a strict JSON parser, `promtool`, a Prometheus server
//! scraping nginx, and headless Chromium rendering the page.
//!
//! The external tools come from Debian packages installed by `scripts/setup.sh` (`prometheus`
//! for promtool and the server, `chromium` + `chromium-driver`); a missing one fails the test.
mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Long enough for nginx, Prometheus or Chromium on a loaded CI machine; polls end far sooner.
const SETTLE: Duration = Duration::from_secs(20);
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

const CT_TEXT: &str = "text/plain";
const CT_JSON: &str = "application/json";
const CT_PROMETHEUS: &str = "text/plain; version=0.0.4";
const CT_HTML: &str = "text/html; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// The site under test

/// nginx with `upstream backend` (checked: up, closed port, `down` in config, backup) and
/// `upstream static` (unchecked), and one status location per default format.
struct Site {
    nginx: Nginx,
    port: u16,
    /// Answers 200: up.
    up: Backend,
    /// Nothing listens there: every probe is refused.
    down_addr: String,
    /// Alive, but `server ... down;` in nginx.conf: never probed, always down.
    cfg_down: Backend,
    /// `server ... backup;`, answers 200.
    backup: Backend,
    /// The peer of the unchecked upstream.
    plain: Backend,
}

impl Site {
    fn start() -> Site {
        Site::start_with("")
    }

    /// Like `start`, with `extra` (more upstream blocks) in the http block after the two.
    fn start_with(extra: &str) -> Site {
        let (up, cfg_down, backup, plain) = (
            Backend::new(),
            Backend::new(),
            Backend::new(),
            Backend::new(),
        );
        let down_addr = dead_addr();
        let port = free_port();
        let conf = format!(
            "upstream backend {{\n\
             \x20   server {up};\n\
             \x20   server {down_addr};\n\
             \x20   server {cfg} down;\n\
             \x20   server {bk} backup;\n\
             \x20   upstream_healthcheck interval=200ms timeout=1s fall=2 rise=1 uri=/health;\n\
             }}\n\
             upstream static {{\n    server {plain};\n}}\n\
             {extra}\n\
             server {{\n\
             \x20   listen 127.0.0.1:{port};\n\
             \x20   location / {{ proxy_pass http://backend; }}\n\
             \x20   location = /status {{ upstream_healthcheck_status; }}\n\
             \x20   location = /status.json {{ upstream_healthcheck_status json; }}\n\
             \x20   location = /metrics {{ upstream_healthcheck_status prometheus; }}\n\
             \x20   location = /status.html {{ upstream_healthcheck_status html; }}\n\
             }}\n",
            up = up.addr(),
            cfg = cfg_down.addr(),
            bk = backup.addr(),
            plain = plain.addr(),
        );
        let nginx = Nginx::start(&conf);
        Site {
            nginx,
            port,
            up,
            down_addr,
            cfg_down,
            backup,
            plain,
        }
    }

    /// Waits until the probes have spoken: the healthy peer and the backup probed and up, the
    /// closed port turned down. Returns that JSON document.
    fn settle(&self) -> Value {
        poll(
            SETTLE,
            "the checked peers settle (up, down, backup up)",
            || {
                let doc = self.json("/status.json");
                let (up, down, bk) = (
                    health(&doc, "backend", &self.up.addr()),
                    health(&doc, "backend", &self.down_addr),
                    health(&doc, "backend", &self.backup.addr()),
                );
                let settled = up["status"] == "up"
                    && up["checks"].as_u64() >= Some(2)
                    && up["last_status"] == 200
                    && down["status"] == "down"
                    && down["last_error"] == "refused"
                    && bk["status"] == "up"
                    && bk["checks"].as_u64() >= Some(1)
                    && bk["last_status"] == 200;
                if settled {
                    Ok(doc)
                } else {
                    Err(doc.to_string())
                }
            },
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path`: 200 with a strictly valid JSON document.
    fn json(&self, path: &str) -> Value {
        let (status, headers, body) = get(self.port, path);
        assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
        assert_eq!(
            content_type(&headers).as_deref(),
            Some(CT_JSON),
            "GET {path}"
        );
        strict_json(&body)
    }

    /// GET `path`: 200, the body.
    fn page(&self, path: &str) -> String {
        status_page(self.port, path)
    }

    /// The text page once every peer of `backend` shows as wanted, with the up/down peers given.
    fn expected_text(&self) -> String {
        format!(
            "Upstream backend\n\
             \x20   Primary Peers\n\
             \x20       {} up\n\
             \x20       {} DOWN\n\
             \x20       {} DOWN\n\
             \x20   Backup Peers\n\
             \x20       {} up\n\
             \n\
             Upstream static (NO checkers)\n\
             \x20   Primary Peers\n\
             \x20       {} up\n\
             \x20   Backup Peers\n",
            self.up.addr(),
            self.down_addr,
            self.cfg_down.addr(),
            self.backup.addr(),
            self.plain.addr()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and JSON helpers

fn get(port: u16, path: &str) -> (u16, String, String) {
    http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

fn content_type(headers: &str) -> Option<String> {
    header(headers, "Content-Type")
}

/// Parses a whole body as one JSON value with serde_json (strict RFC 8259: no trailing text,
/// no comments, no trailing commas); the module promises pure ASCII.
fn strict_json(body: &str) -> Value {
    assert!(body.is_ascii(), "JSON body is not pure ASCII: {body}");
    common::strict_json(body)
}

fn health<'a>(doc: &'a Value, upstream: &str, addr: &str) -> &'a Value {
    &json_peer(doc, upstream, addr)["health"]
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition format

/// One sample line: metric name, labels in order, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the samples of a text exposition page (comments skipped), unescaping label values
/// (`\\`, `\"`, `\n`). Panics on a line it cannot read.
fn parse_exposition(page: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in page.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| -> ! { panic!("bad sample line ({why}): {line:?}") };
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = line[..name_end].to_owned();
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((i, '}')) if key.is_empty() => {
                            rest = &r[i + 1..];
                            break;
                        }
                        Some((_, c)) => key.push(c),
                        None => bad("unterminated labels"),
                    }
                }
                if key.is_empty() {
                    break;
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => bad("bad escape"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some((_, ',')) => {
                        if let Some(&(i, '}')) = chars.peek() {
                            rest = &r[i + 1..];
                            break;
                        }
                    }
                    Some((i, '}')) => {
                        rest = &r[i + 1..];
                        break;
                    }
                    _ => bad("expected , or }"),
                }
            }
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| bad("value"));
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the sample `name` with exactly the labels `labels` (any order).
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|s| s.value)
}

fn must_sample(samples: &[Sample], page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} on the page:\n{page}"))
}

// ---------------------------------------------------------------------------------------------
// External tools

/// Headless Chromium on `args` (a URL last), bounded to 60 s; returns its stdout.
fn chromium(dir: &Path, tag: &str, args: &[&str]) -> String {
    let bin = tool("/usr/bin/chromium", "chromium");
    let profile = dir.join(format!("profile-{tag}"));
    fs::create_dir_all(&profile).expect("create chromium profile dir");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    let out = dir.join(format!("{tag}.out"));
    let mut browser = Spawned::start(
        cmd,
        &format!("chromium ({tag})"),
        &out,
        &dir.join(format!("{tag}.log")),
    );
    let status = browser.wait(CHROMIUM_DEADLINE);
    let stdout = fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success(),
        "chromium ({tag}) failed: {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        browser.log_text()
    );
    stdout
}

// ---------------------------------------------------------------------------------------------
// The DOM as Chromium serializes it

/// Decodes the character references Chromium's serializer and the module write.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "nbsp" => '\u{a0}',
                _ => {
                    let n = if let Some(h) = ent.strip_prefix("#x").or(ent.strip_prefix("#X")) {
                        u32::from_str_radix(h, 16).ok()
                    } else {
                        ent.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    char::from_u32(n?)?
                }
            };
            Some((c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The opening tag at the start of `s` (up to the first `>` outside quotes) and the text after it.
fn split_tag(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '>' if !quoted => return (&s[..=i], &s[i + 1..]),
            _ => {}
        }
    }
    panic!("unterminated tag: {s}")
}

/// The decoded value of attribute `name` in an opening tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(decode_entities(&tag[start..start + len]))
}

/// One status table of the rendered page.
#[derive(Debug)]
struct Table {
    upstream: String,
    caption: String,
    rows: Vec<Row>,
}

/// One peer row.
#[derive(Debug)]
struct Row {
    peer: String,
    state: String,
    class: String,
    cells: Vec<String>,
}

/// The status tables of a DOM dump, in document order.
fn tables(dom: &str) -> Vec<Table> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<table") {
        let (tag, after) = split_tag(&rest[i..]);
        let end = after.find("</table>").expect("table end");
        let body = &after[..end];
        rest = &after[end..];
        let caption = body
            .split_once("<caption>")
            .and_then(|(_, c)| c.split_once("</caption>"))
            .map(|(c, _)| decode_entities(c))
            .unwrap_or_default();
        let mut rows = Vec::new();
        let mut r = body;
        while let Some(j) = r.find("<tr") {
            let (tr, after_tr) = split_tag(&r[j..]);
            let tr_end = after_tr.find("</tr>").expect("row end");
            let inner = &after_tr[..tr_end];
            r = &after_tr[tr_end..];
            let Some(peer) = attr(tr, "data-peer") else {
                continue; // the header row
            };
            let cells = inner
                .split("<td")
                .skip(1)
                .map(|c| {
                    let (_, text) = split_tag(c);
                    decode_entities(text.split("</td>").next().unwrap_or(""))
                })
                .collect();
            rows.push(Row {
                peer,
                state: attr(tr, "data-state").unwrap_or_default(),
                class: attr(tr, "class").unwrap_or_default(),
                cells,
            });
        }
        out.push(Table {
            upstream: attr(tag, "data-upstream").unwrap_or_default(),
            caption,
            rows,
        });
    }
    out
}

fn row<'a>(tables: &'a [Table], upstream: &str, peer: &str) -> &'a Row {
    tables
        .iter()
        .filter(|t| t.upstream == upstream)
        .flat_map(|t| &t.rows)
        .find(|r| r.peer == peer)
        .unwrap_or_else(|| panic!("no row for {peer} in table {upstream:?}: {tables:#?}"))
}

/// `target/artifacts` of the project.
fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts")
}

// ---------------------------------------------------------------------------------------------
// 1. Format negotiation

#[test]
fn the_directive_sets_the_default_format_and_the_query_overrides_it() {
    let site = Site::start();
    site.settle();
    let port = site.port;

    // Each location answers in its directive's format; `?format=` overrides it everywhere.
    let signature = |ct: &str, body: &str| match ct {
        CT_TEXT => body.starts_with("Upstream backend\n"),
        CT_JSON => body.starts_with("{\"status\":\"ok\",") && strict_json(body).is_object(),
        CT_PROMETHEUS => body.starts_with("# HELP nginx_upstream_status_info "),
        CT_HTML => body.starts_with("<!DOCTYPE html>") && body.ends_with("</html>\n"),
        _ => unreachable!(),
    };
    let formats = [
        ("text", CT_TEXT),
        ("json", CT_JSON),
        ("prometheus", CT_PROMETHEUS),
        ("html", CT_HTML),
    ];
    for (location, default_ct) in [
        ("/status", CT_TEXT),
        ("/status.json", CT_JSON),
        ("/metrics", CT_PROMETHEUS),
        ("/status.html", CT_HTML),
    ] {
        let (status, headers, body) = get(port, location);
        assert_eq!(status, 200, "GET {location}: {headers}\n{body}");
        assert_eq!(
            content_type(&headers).as_deref(),
            Some(default_ct),
            "GET {location}"
        );
        assert!(signature(default_ct, &body), "GET {location}:\n{body}");
        for (name, ct) in formats {
            let path = format!("{location}?format={name}");
            let (status, headers, body) = get(port, &path);
            assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
            assert_eq!(content_type(&headers).as_deref(), Some(ct), "GET {path}");
            assert!(signature(ct, &body), "GET {path}:\n{body}");
        }
    }

    // The text page, in lua-resty-upstream-healthcheck's layout, config order.
    assert_eq!(site.page("/status"), site.expected_text());
    assert_eq!(site.page("/status.json?format=text"), site.expected_text());

    // ?upstream= keeps one upstream, ?status= keeps peers in that state (config-down counts as
    // down); an upstream without a matching peer stays, with empty lists.
    assert_eq!(
        site.page("/status?upstream=static"),
        format!(
            "Upstream static (NO checkers)\n    Primary Peers\n        {} up\n    Backup Peers\n",
            site.plain.addr()
        )
    );
    assert_eq!(
        site.page("/status?status=down"),
        format!(
            "Upstream backend\n    Primary Peers\n        {} DOWN\n        {} DOWN\n    Backup Peers\n\n\
             Upstream static (NO checkers)\n    Primary Peers\n    Backup Peers\n",
            site.down_addr,
            site.cfg_down.addr()
        )
    );
    assert_eq!(
        site.page("/status?status=up&upstream=backend"),
        format!(
            "Upstream backend\n    Primary Peers\n        {} up\n    Backup Peers\n        {} up\n",
            site.up.addr(),
            site.backup.addr()
        )
    );
    assert_eq!(
        site.page("/status?upstream=static&status=down"),
        "Upstream static (NO checkers)\n    Primary Peers\n    Backup Peers\n"
    );

    // Bad requests: 400 for an unknown format or state, 404 for an unknown upstream; a short
    // text line, or lua-resty-uh's JSON error envelope when JSON was asked for.
    for (path, want_status, want_ct, want_body) in [
        (
            "/status?format=xml",
            400,
            CT_TEXT,
            "unknown format \"xml\"\n",
        ),
        (
            "/metrics?format=XML",
            400,
            CT_TEXT,
            "unknown format \"XML\"\n",
        ),
        (
            "/status.json?format=xml",
            400,
            CT_JSON,
            r#"{"status":"err","err_msg":"unknown format \"xml\"","msg":""}"#,
        ),
        (
            "/status?status=sideways",
            400,
            CT_TEXT,
            "unknown status \"sideways\"\n",
        ),
        (
            "/status?upstream=x",
            404,
            CT_TEXT,
            "unknown upstream \"x\"\n",
        ),
        (
            "/status?format=prometheus&upstream=x",
            404,
            CT_TEXT,
            "unknown upstream \"x\"\n",
        ),
        (
            "/status.html?upstream=x",
            404,
            CT_TEXT,
            "unknown upstream \"x\"\n",
        ),
        (
            "/status?format=json&upstream=x",
            404,
            CT_JSON,
            r#"{"status":"err","err_msg":"unknown upstream \"x\"","msg":""}"#,
        ),
        (
            "/status?upstream=x&format=json",
            404,
            CT_JSON,
            r#"{"status":"err","err_msg":"unknown upstream \"x\"","msg":""}"#,
        ),
        (
            "/status.json?upstream=x",
            404,
            CT_JSON,
            r#"{"status":"err","err_msg":"unknown upstream \"x\"","msg":""}"#,
        ),
        (
            "/status.json?upstream=x&format=text",
            404,
            CT_TEXT,
            "unknown upstream \"x\"\n",
        ),
        // A repeated format= names no format: the error comes in the location's own.
        (
            "/status?format=json&format=json",
            400,
            CT_TEXT,
            "parameter \"format\" is repeated\n",
        ),
        (
            "/status?format=json&format=text",
            400,
            CT_TEXT,
            "parameter \"format\" is repeated\n",
        ),
        (
            "/status.json?format=text&format=text",
            400,
            CT_JSON,
            r#"{"status":"err","err_msg":"parameter \"format\" is repeated","msg":""}"#,
        ),
    ] {
        let (status, headers, body) = get(port, path);
        assert_eq!(status, want_status, "GET {path}: {headers}\n{body}");
        assert_eq!(
            content_type(&headers).as_deref(),
            Some(want_ct),
            "GET {path}"
        );
        assert_eq!(body, want_body, "GET {path}");
        if want_ct == CT_JSON {
            let v = strict_json(&body);
            assert_eq!(v["status"], "err");
            assert_eq!(v["msg"], "");
        }
    }

    // HEAD: the headers of GET, no body. Other methods: 405.
    let text_len = site.page("/status").len().to_string();
    for (location, ct) in [
        ("/status", CT_TEXT),
        ("/status.json", CT_JSON),
        ("/metrics", CT_PROMETHEUS),
        ("/status.html", CT_HTML),
        ("/status?format=json", CT_JSON),
    ] {
        let (status, headers, body) =
            http_request(port, "HEAD", location, "").expect("HEAD request");
        assert_eq!(status, 200, "HEAD {location}: {headers}");
        assert_eq!(
            content_type(&headers).as_deref(),
            Some(ct),
            "HEAD {location}"
        );
        assert_eq!(body, "", "HEAD {location} has a body");
        if location == "/status" {
            assert_eq!(
                header(&headers, "Content-Length").as_deref(),
                Some(text_len.as_str()),
                "HEAD /status"
            );
        }
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for location in ["/status", "/status.json?format=json", "/metrics"] {
            let (status, headers, body) =
                http_request(port, method, location, "x=1").expect("request");
            assert_eq!(status, 405, "{method} {location}: {headers}");
            assert_eq!(
                header(&headers, "Allow").as_deref(),
                Some("GET, HEAD"),
                "{method} {location}: {headers}"
            );
            assert_eq!(content_type(&headers).as_deref(), Some(CT_TEXT));
            assert_eq!(body, "method not allowed, use GET or HEAD\n");
        }
    }

    // Every peer down is news, not an error of the page: still 200 in every format.
    site.up.stop();
    site.backup.stop();
    poll(SETTLE, "every peer of backend down", || {
        let page = site.page("/status?status=up&upstream=backend");
        if page == "Upstream backend\n    Primary Peers\n    Backup Peers\n" {
            Ok(())
        } else {
            Err(page)
        }
    });
    for location in ["/status", "/status.json", "/metrics", "/status.html"] {
        let (status, headers, body) = get(port, location);
        assert_eq!(
            status, 200,
            "GET {location} with every peer down: {headers}\n{body}"
        );
    }
    assert_eq!(site.json("/status.json")["status"], "ok");
    let metrics = site.page("/metrics");
    assert!(
        metrics.contains("nginx_upstream_status_info{name=\"backend\",status=\"DOWN\"} 1\n"),
        "{metrics}"
    );
    let html = site.page("/status.html");
    assert!(
        html.contains("<p id=\"summary\">4 checked peers: 0 up, 4 down</p>"),
        "{html}"
    );
    site.nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. JSON

/// Upstreams as (name, primary peers, backup peers), each peer as (id, name).
type Listing = Vec<(String, Vec<(u64, String)>, Vec<(u64, String)>)>;

#[test]
fn json_is_strict_and_complete_for_every_filter() {
    let site = Site::start();
    let start = now_secs();
    let (up, down, cfg, bk, plain) = (
        site.up.addr(),
        site.down_addr.clone(),
        site.cfg_down.addr(),
        site.backup.addr(),
        site.plain.addr(),
    );

    // While the probes run, every document is consistent: the closed port's verdict is up with
    // no last change until its one transition, then down with the time of it; the healthy peer
    // never changes.
    let mut seen_checks = 0;
    let mut transition = None;
    poll(SETTLE, "the closed port down after several checks", || {
        let doc = site.json("/status.json");
        let d = json_peer(&doc, "backend", &down);
        let h = &d["health"];
        match h["status"].as_str() {
            Some("up") => {
                assert_eq!(d["down"], false, "{d}");
                assert!(
                    h["last_change"].is_null(),
                    "changed without a transition: {d}"
                );
            }
            Some("down") => {
                assert_eq!(d["down"], true, "{d}");
                let t = h["last_change"].as_f64().unwrap_or_else(|| panic!("{d}"));
                if let Some(prev) = transition {
                    assert_eq!(t, prev, "a second transition of a dead port: {d}");
                }
                transition = Some(t);
            }
            _ => panic!("bad health.status: {d}"),
        }
        let checks = h["checks"].as_u64().expect("checks");
        assert!(checks >= seen_checks, "checks went back: {d}");
        seen_checks = checks;
        assert_eq!(
            h["failures"], h["checks"],
            "every probe of a closed port fails: {d}"
        );
        assert!(
            h["last_change"].is_null() || h["last_error"] == "refused",
            "{d}"
        );
        let u = health(&doc, "backend", &up);
        assert!(u["last_change"].is_null(), "the healthy peer changed: {u}");
        if h["status"] == "down" && checks >= 4 {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    });
    let doc = site.settle();
    let transition = transition.expect("transition seen");
    assert!(
        transition >= start - 1.0 && transition <= now_secs() + 1.0,
        "last_change {transition} not between the start {start} and now"
    );

    // The envelope.
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["err_msg"], "");
    assert_eq!(doc["msg"]["ha_mode"], "Disabled");
    let names: Vec<&str> = doc["msg"]["upstreams"]
        .as_array()
        .expect("upstreams array")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["backend", "static"], "config order");
    let ups = &doc["msg"]["upstreams"];
    assert_eq!(ups[0]["checked"], true);
    assert_eq!(ups[1]["checked"], false);

    // Every peer: nginx's own fields, `down` always; `health` for every peer of the checked
    // upstream, the config-down one included, never for the unchecked upstream.
    for u in ups.as_array().unwrap() {
        for list in ["primary", "backup"] {
            for (i, p) in u[list].as_array().expect("peer list").iter().enumerate() {
                assert_eq!(p["id"], i, "{p}");
                for field in [
                    "weight",
                    "max_fails",
                    "fail_timeout",
                    "conns",
                    "current_weight",
                    "effective_weight",
                    "fails",
                ] {
                    assert!(p[field].is_i64() || p[field].is_u64(), "{field}: {p}");
                }
                assert!(p["down"].is_boolean(), "{p}");
                assert_eq!(
                    p.get("health").is_some(),
                    u["checked"] == true,
                    "health iff checked: {p}"
                );
            }
        }
    }
    assert!(ups[1]["primary"][0].get("health").is_none());
    assert_eq!(ups[1]["primary"][0]["down"], false);

    let now = now_secs();
    let near_now = |v: &Value, what: &str| {
        let t = v
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
        assert!(
            t > now - 10.0 && t <= now + 1.0,
            "{what}: {t} is not a Unix time near now ({now})"
        );
    };
    let h = health(&doc, "backend", &up);
    assert_eq!(json_peer(&doc, "backend", &up)["down"], false);
    assert_eq!(h["status"], "up");
    assert_eq!(h["last_status"], 200);
    assert!(h["last_error"].is_null(), "{h}");
    assert!(h["last_change"].is_null(), "{h}");
    assert_eq!(h["failures"], 0);
    assert_eq!(h["manual_down"], false);
    near_now(&h["last_check"], "healthy peer last_check");
    assert!(h["last_duration_ms"].as_f64().is_some(), "{h}");

    let h = health(&doc, "backend", &down);
    assert_eq!(json_peer(&doc, "backend", &down)["down"], true);
    assert_eq!(h["status"], "down");
    assert!(h["last_status"].is_null(), "{h}");
    assert_eq!(h["last_error"], "refused");
    assert!(h["fall_count"].as_u64() >= Some(2), "{h}");
    assert_eq!(h["rise_count"], 0);
    near_now(&h["last_check"], "closed port last_check");
    assert_eq!(h["last_change"].as_f64(), Some(transition));

    let p = json_peer(&doc, "backend", &cfg);
    let h = &p["health"];
    assert_eq!(p["down"], true);
    assert_eq!(h["status"], "down", "config-down peer: {p}");
    assert_eq!(h["checks"], 0, "a config-down peer is never probed: {p}");
    assert!(h["last_check"].is_null(), "{p}");
    assert!(h["last_change"].is_null(), "{p}");
    assert_eq!(site.cfg_down.hits("/health"), 0, "config-down peer probed");

    let p = json_peer(&doc, "backend", &bk);
    assert_eq!(ups[0]["backup"][0]["name"], bk.as_str());
    assert_eq!(p["down"], false);
    assert_eq!(p["health"]["status"], "up");
    assert_eq!(p["health"]["last_status"], 200);

    // Counters and times move on.
    let before = doc;
    let grown = poll(SETTLE, "checks and last_check grow", || {
        let doc = site.json("/status.json");
        let grew = [&up, &down, &bk].iter().all(|a| {
            let (old, new) = (health(&before, "backend", a), health(&doc, "backend", a));
            new["checks"].as_u64() >= old["checks"].as_u64().map(|c| c + 2)
                && new["last_check"].as_f64() > old["last_check"].as_f64()
        });
        if grew {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    });
    assert_eq!(
        health(&grown, "backend", &down)["failures"],
        health(&grown, "backend", &down)["checks"]
    );
    assert_eq!(health(&grown, "backend", &cfg)["checks"], 0);

    // Every filter combination, through ?format=json and through the json location: the same
    // envelope, the expected upstreams and peers (ids kept from the full lists).
    type Expect<'a> = Vec<(&'a str, Vec<(usize, &'a str)>, Vec<(usize, &'a str)>)>;
    let all_backend = (
        "backend",
        vec![(0, &*up), (1, &*down), (2, &*cfg)],
        vec![(0, &*bk)],
    );
    let all_static = ("static", vec![(0, &*plain)], vec![]);
    let cases: Vec<(&str, Expect)> = vec![
        ("", vec![all_backend.clone(), all_static.clone()]),
        ("upstream=backend", vec![all_backend.clone()]),
        ("upstream=static", vec![all_static.clone()]),
        (
            "status=up",
            vec![
                ("backend", vec![(0, &*up)], vec![(0, &*bk)]),
                all_static.clone(),
            ],
        ),
        (
            "status=down",
            vec![
                ("backend", vec![(1, &*down), (2, &*cfg)], vec![]),
                ("static", vec![], vec![]),
            ],
        ),
        (
            "upstream=backend&status=down",
            vec![("backend", vec![(1, &*down), (2, &*cfg)], vec![])],
        ),
        (
            "status=up&upstream=backend",
            vec![("backend", vec![(0, &*up)], vec![(0, &*bk)])],
        ),
        (
            "upstream=static&status=down",
            vec![("static", vec![], vec![])],
        ),
        ("upstream=static&status=up", vec![all_static.clone()]),
    ];
    for (filter, want) in &cases {
        for path in [
            format!("/status?format=json&{filter}"),
            format!("/status.json?{filter}"),
            format!("/metrics?{filter}&format=json"),
        ] {
            let doc = site.json(&path);
            assert_eq!(doc["status"], "ok", "{path}");
            assert_eq!(doc["err_msg"], "", "{path}");
            assert_eq!(doc["msg"]["ha_mode"], "Disabled", "{path}");
            let got: Listing = doc["msg"]["upstreams"]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: {doc}"))
                .iter()
                .map(|u| {
                    let list = |l: &str| {
                        u[l].as_array()
                            .unwrap_or_else(|| panic!("{path}: {l} is not an array: {u}"))
                            .iter()
                            .map(|p| {
                                assert!(p["down"].is_boolean(), "{path}: {p}");
                                assert_eq!(
                                    p.get("health").is_some(),
                                    u["name"] == "backend",
                                    "{path}: {p}"
                                );
                                (
                                    p["id"].as_u64().expect("id"),
                                    p["name"].as_str().expect("name").to_owned(),
                                )
                            })
                            .collect()
                    };
                    (
                        u["name"].as_str().expect("name").to_owned(),
                        list("primary"),
                        list("backup"),
                    )
                })
                .collect();
            let want: Listing = want
                .iter()
                .map(|(n, p, b)| {
                    let own = |l: &Vec<(usize, &str)>| {
                        l.iter().map(|&(i, a)| (i as u64, a.to_owned())).collect()
                    };
                    (n.to_string(), own(p), own(b))
                })
                .collect();
            assert_eq!(got, want, "GET {path}");
            for u in doc["msg"]["upstreams"].as_array().unwrap() {
                let checked = u["name"] == "backend";
                assert_eq!(u["checked"], checked, "{path}: {u}");
            }
        }
    }

    // last_change: null while a peer never changed, then the time of its transition, then of
    // the next one.
    assert!(health(&site.json("/status.json"), "backend", &up)["last_change"].is_null());
    let before_stop = now_secs();
    site.up.stop();
    let went_down = poll(SETTLE, "the healthy peer down once its port closes", || {
        let doc = site.json("/status.json");
        let h = health(&doc, "backend", &up).clone();
        if h["status"] == "down" {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    });
    assert_eq!(went_down["last_error"], "refused");
    let t_down = went_down["last_change"]
        .as_f64()
        .unwrap_or_else(|| panic!("no last_change after going down: {went_down}"));
    assert!(
        t_down >= before_stop - 0.5 && t_down <= now_secs() + 0.5,
        "last_change {t_down} not after the stop at {before_stop}"
    );
    site.up.start();
    let came_back = poll(SETTLE, "the peer up again once its port reopens", || {
        let doc = site.json("/status.json");
        let h = health(&doc, "backend", &up).clone();
        if h["status"] == "up" {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    });
    let t_up = came_back["last_change"].as_f64().expect("last_change");
    assert!(t_up > t_down, "last_change {t_up} not after {t_down}");
    assert_eq!(came_back["last_status"], 200);
    assert!(came_back["last_error"].is_null(), "{came_back}");
    site.nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. promtool

#[test]
fn promtool_accepts_the_metrics_page() {
    tool("/usr/bin/promtool", "prometheus");
    let site = Site::start();
    site.settle();
    let (up, down, cfg, bk) = (
        site.up.addr(),
        site.down_addr.clone(),
        site.cfg_down.addr(),
        site.backup.addr(),
    );
    let (status, headers, page) = get(site.port, "/status?format=prometheus");
    assert_eq!(status, 200, "{headers}\n{page}");
    assert_eq!(content_type(&headers).as_deref(), Some(CT_PROMETHEUS));
    promtool_accepts(&page, "?format=prometheus");

    let s = parse_exposition(&page);
    let info = "nginx_upstream_status_info";
    for (addr, state, role) in [
        (&up, "UP", "PRIMARY"),
        (&down, "DOWN", "PRIMARY"),
        (&cfg, "DOWN", "PRIMARY"),
        (&bk, "UP", "BACKUP"),
    ] {
        let line = format!(
            "{info}{{name=\"backend\",endpoint=\"{addr}\",status=\"{state}\",role=\"{role}\"}} 1\n"
        );
        assert!(page.contains(&line), "missing {line}in:\n{page}");
        let other = if state == "UP" { "DOWN" } else { "UP" };
        let labels = [
            ("name", "backend"),
            ("endpoint", addr.as_str()),
            ("status", other),
            ("role", role),
        ];
        assert_eq!(must_sample(&s, &page, info, &labels), 0.0);
    }
    for (name, state, v) in [
        ("backend", "UP", 1.0),
        ("backend", "DOWN", 0.0),
        ("backend", "UNKNOWN", 0.0),
        ("static", "UP", 0.0),
        ("static", "DOWN", 0.0),
        ("static", "UNKNOWN", 1.0),
    ] {
        let labels = [("name", name), ("status", state)];
        assert_eq!(must_sample(&s, &page, info, &labels), v, "{name} {state}");
    }

    let peer_up = "nginx_upstream_healthcheck_peer_up";
    for (addr, role, v) in [
        (&up, "primary", 1.0),
        (&down, "primary", 0.0),
        (&cfg, "primary", 0.0),
        (&bk, "backup", 1.0),
    ] {
        let labels = [
            ("upstream", "backend"),
            ("peer", addr.as_str()),
            ("role", role),
        ];
        assert_eq!(
            must_sample(&s, &page, peer_up, &labels),
            v,
            "{peer_up} {addr}"
        );
    }
    assert!(
        !page.contains(&site.plain.addr()),
        "the unchecked upstream's peers have no per-peer series:\n{page}"
    );

    let checks = |addr: &str| {
        let labels = [("upstream", "backend"), ("peer", addr)];
        must_sample(
            &s,
            &page,
            "nginx_upstream_healthcheck_checks_total",
            &labels,
        )
    };
    assert!(checks(&up) >= 2.0);
    assert!(checks(&down) >= 2.0);
    assert!(checks(&bk) >= 1.0);
    assert_eq!(checks(&cfg), 0.0);
    let failures = |addr: &str, reason: &str| {
        let labels = [("upstream", "backend"), ("peer", addr), ("reason", reason)];
        must_sample(
            &s,
            &page,
            "nginx_upstream_healthcheck_failures_total",
            &labels,
        )
    };
    assert!(failures(&down, "refused") > 0.0);
    assert_eq!(failures(&down, "refused"), checks(&down));
    assert_eq!(failures(&up, "refused"), 0.0);
    for reason in ["timeout", "reset", "closed", "bad_response", "bad_status"] {
        assert_eq!(failures(&down, reason), 0.0, "{reason}");
    }
    let transitions = |addr: &str, to: &str| {
        let labels = [("upstream", "backend"), ("peer", addr), ("to", to)];
        must_sample(
            &s,
            &page,
            "nginx_upstream_healthcheck_transitions_total",
            &labels,
        )
    };
    assert_eq!(transitions(&down, "down"), 1.0);
    assert_eq!(transitions(&up, "down"), 0.0);
    let ts = must_sample(
        &s,
        &page,
        "nginx_upstream_healthcheck_last_check_timestamp_seconds",
        &[("upstream", "backend"), ("peer", up.as_str())],
    );
    assert!((ts - now_secs()).abs() < 10.0, "last check {ts}");

    // Filtered pages and the metrics location are valid exposition too.
    for path in [
        "/metrics",
        "/metrics?status=down",
        "/metrics?status=up",
        "/metrics?upstream=static",
        "/status?format=prometheus&upstream=backend&status=down",
    ] {
        let page = site.page(path);
        promtool_accepts(&page, path);
    }
    let down_only = site.page("/metrics?status=down");
    assert!(
        !down_only.contains(&format!("peer=\"{up}\"")),
        "{down_only}"
    );
    assert!(
        down_only.contains(&format!("peer=\"{down}\"")),
        "{down_only}"
    );

    // The upstream's probe duration histogram counts every probe of its peers.
    let hist = "nginx_upstream_healthcheck_probe_duration_seconds";
    let inf = must_sample(
        &s,
        &page,
        &format!("{hist}_bucket"),
        &[("upstream", "backend"), ("le", "+Inf")],
    );
    let count = must_sample(
        &s,
        &page,
        &format!("{hist}_count"),
        &[("upstream", "backend")],
    );
    let all_checks: f64 = [&up, &down, &cfg, &bk].iter().map(|a| checks(a)).sum();
    // One snapshot under the zone lock: every completed check is one observation.
    assert!(
        inf > 0.0 && inf == all_checks,
        "the probe duration histogram counts {inf} probes, the peers {all_checks} checks:\n{page}"
    );
    assert_eq!(inf, count);
    let sum = must_sample(
        &s,
        &page,
        &format!("{hist}_sum"),
        &[("upstream", "backend")],
    );
    assert!(sum >= 0.0);
    let mut prev = 0.0;
    for b in s.iter().filter(|x| x.name == format!("{hist}_bucket")) {
        assert!(b.value >= prev, "buckets not cumulative: {b:?}");
        prev = b.value;
    }
    site.nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. A real Prometheus server

#[test]
fn prometheus_scrapes_the_status_location() {
    tool("/usr/bin/prometheus", "prometheus");
    // An upstream name with every character a label value must escape, to see it come back.
    let odd = "odd \"quoted\" \\ name";
    let site =
        Site::start_with("upstream \"odd \\\"quoted\\\" \\\\ name\" { server 127.0.0.1:9; }\n");
    site.settle();
    let job = "nginx-healthcheck";
    let mut server = Prometheus::start(job, site.port, "/status", &[]);
    let value_of = |series: &[Value], label: &str, want: &str| -> Option<String> {
        series
            .iter()
            .find(|s| s["metric"][label] == want)
            .and_then(|s| s["value"][1].as_str().map(str::to_owned))
    };

    // The scrape succeeds ...
    server.wait_up(job);
    // ... and the peers' verdicts are in the time series database.
    let (up, down) = (site.up.addr(), site.down_addr.clone());
    let series = poll(
        PROMETHEUS_DEADLINE,
        "prometheus: peer_up 1 for the healthy peer and 0 for the closed port",
        || {
            let r = server.query(&format!(
                "nginx_upstream_healthcheck_peer_up{{job=\"{job}\"}}"
            ))?;
            let ok = value_of(&r, "peer", &up).as_deref() == Some("1")
                && value_of(&r, "peer", &down).as_deref() == Some("0");
            if ok {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    let healthy = series
        .iter()
        .find(|s| s["metric"]["peer"] == up.as_str())
        .expect("series of the healthy peer");
    assert_eq!(healthy["metric"]["upstream"], "backend");
    assert_eq!(healthy["metric"]["role"], "primary");
    assert_eq!(
        healthy["metric"]["instance"],
        format!("127.0.0.1:{}", site.port)
    );
    assert_eq!(
        value_of(&series, "peer", &site.backup.addr()).as_deref(),
        Some("1"),
        "{series:?}"
    );
    assert_eq!(
        value_of(&series, "peer", &site.cfg_down.addr()).as_deref(),
        Some("0"),
        "{series:?}"
    );
    let refused = server
        .query(&format!(
            "nginx_upstream_healthcheck_failures_total{{job=\"{job}\",reason=\"refused\"}}"
        ))
        .expect("query failures_total");
    let n: f64 = value_of(&refused, "peer", &down)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refused failures for {down}: {refused:?}"));
    assert!(n > 0.0, "{refused:?}");
    // The escaped upstream name comes back exactly.
    let unknown = server
        .query(&format!(
            "nginx_upstream_status_info{{job=\"{job}\",status=\"UNKNOWN\"}}"
        ))
        .expect("query status_info");
    assert_eq!(
        value_of(&unknown, "name", odd).as_deref(),
        Some("1"),
        "{unknown:?}"
    );
    assert_eq!(
        value_of(&unknown, "name", "static").as_deref(),
        Some("1"),
        "{unknown:?}"
    );

    server.stop();
    site.nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. A real browser

#[test]
fn chromium_renders_the_html_page() {
    tool("/usr/bin/chromium", "chromium");
    let site = Site::start();
    site.settle();
    let dir = TempPrefix::new();

    let dom = chromium(
        dir.path(),
        "dom",
        &["--dump-dom", &site.url("/status.html")],
    );
    assert!(dom.contains("<title>Upstream health</title>"), "{dom}");
    assert!(
        dom.contains("<p id=\"summary\">4 checked peers: 2 up, 2 down</p>"),
        "summary line:\n{dom}"
    );
    let t = tables(&dom);
    let names: Vec<&str> = t.iter().map(|t| t.upstream.as_str()).collect();
    assert_eq!(names, ["backend", "static"], "{dom}");
    assert_eq!(t[0].caption, "backend");
    assert_eq!(t[1].caption, "static (not checked)");
    assert_eq!(t[0].rows.len(), 4, "{t:#?}");
    assert_eq!(t[1].rows.len(), 1, "{t:#?}");

    let r = row(&t, "backend", &site.up.addr());
    assert_eq!(
        (r.state.as_str(), r.class.as_str()),
        ("up", "peer up"),
        "{r:?}"
    );
    assert_eq!(r.cells[1..3], ["primary", "up"], "{r:?}");
    assert!(r.cells[3].ends_with(" s ago"), "last check: {r:?}");
    assert_eq!(r.cells[4], "200", "{r:?}");

    let r = row(&t, "backend", &site.down_addr);
    assert_eq!(
        (r.state.as_str(), r.class.as_str()),
        ("down", "peer down"),
        "{r:?}"
    );
    assert_eq!(r.cells[2], "DOWN", "{r:?}");
    assert_eq!(r.cells[5], "connection refused", "{r:?}");
    let checks: u64 = r.cells[6].parse().expect("checks cell");
    let failures: u64 = r.cells[7].parse().expect("failures cell");
    assert!(checks >= 2 && failures >= 2, "{r:?}");

    let r = row(&t, "backend", &site.cfg_down.addr());
    assert_eq!(
        (r.state.as_str(), r.class.as_str()),
        ("down", "peer down"),
        "{r:?}"
    );
    assert_eq!(r.cells[2], "DOWN (config)", "{r:?}");
    assert_eq!(r.cells[3], "never", "{r:?}");

    let r = row(&t, "backend", &site.backup.addr());
    assert_eq!(
        (r.state.as_str(), r.class.as_str()),
        ("up", "peer up"),
        "{r:?}"
    );
    assert_eq!(r.cells[1], "backup", "{r:?}");

    let r = row(&t, "static", &site.plain.addr());
    assert_eq!(
        (r.state.as_str(), r.class.as_str()),
        ("unchecked", "peer unchecked"),
        "{r:?}"
    );
    assert_eq!(r.cells[2], "unchecked", "{r:?}");

    // The filters apply to the page too.
    let dom = chromium(
        dir.path(),
        "down",
        &["--dump-dom", &site.url("/status?format=html&status=down")],
    );
    let t = tables(&dom);
    assert_eq!(t.len(), 2, "{dom}");
    let rows: Vec<(&str, &str)> = t
        .iter()
        .flat_map(|t| &t.rows)
        .map(|r| (r.peer.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            (site.down_addr.as_str(), "down"),
            (&*site.cfg_down.addr(), "down")
        ],
        "{dom}"
    );

    // ?refresh=5 makes the page reload itself.
    let dom = chromium(
        dir.path(),
        "refresh",
        &[
            "--dump-dom",
            &site.url("/status.json?format=html&refresh=5"),
        ],
    );
    assert!(
        dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "no meta refresh:\n{dom}"
    );
    let plain = site.page("/status.html");
    assert!(!plain.contains("http-equiv"), "{plain}");

    // A screenshot, kept as a build artifact (and as the README's picture on request).
    let shot = dir.path().join("status-html.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(
        dir.path(),
        "screenshot",
        &[
            &shot_arg,
            "--window-size=1200,800",
            "--hide-scrollbars",
            &site.url("/status.html"),
        ],
    );
    let png =
        fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG: {} bytes",
        png.len()
    );
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 800), "screenshot size");
    assert!(
        png.len() > 10_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    let artifacts = artifacts_dir();
    fs::create_dir_all(&artifacts).expect("create target/artifacts");
    let tmp = artifacts.join(format!(".status-html.png.{}", std::process::id()));
    fs::write(&tmp, &png).expect("write screenshot artifact");
    fs::rename(&tmp, artifacts.join("status-html.png")).expect("rename screenshot artifact");
    assert!(artifacts.join("status-html.png").is_file());
    if std::env::var("UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        fs::create_dir_all(&docs).expect("create docs/");
        fs::write(docs.join("status-html.png"), &png).expect("write docs/status-html.png");
        eprintln!("updated {}", docs.join("status-html.png").display());
    }
    site.nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. Names that need escaping

/// nginx accepts almost anything as a quoted upstream name (`\"`, `\\`, `\n`, `\t` are escapes
/// of its config syntax), so the formats must escape what they print.
#[test]
fn odd_upstream_names_survive_every_format() {
    let odd = "we<b>ird</b> \"q\" & 'sq' \\ end";
    let nl = "two\nlines\tand tab";
    let conf_str = |s: &str| {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\t' => o.push_str("\\t"),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    };
    let up = Backend::new();
    let down = dead_addr();
    let other = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream {} {{\n    server {};\n    server {down};\n    \
         upstream_healthcheck interval=200ms fall=1 rise=1 uri=/health;\n}}\n\
         upstream {} {{ server {}; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /s {{ upstream_healthcheck_status json; }}\n}}\n",
        conf_str(odd),
        up.addr(),
        conf_str(nl),
        other.addr()
    ));
    let get_json = |path: &str| {
        let (status, headers, body) = get(port, path);
        assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
        strict_json(&body)
    };
    poll(SETTLE, "the odd upstream's peers probed", || {
        let doc = get_json("/s");
        let (u, d) = (health(&doc, odd, &up.addr()), health(&doc, odd, &down));
        if u["last_status"] == 200 && d["status"] == "down" {
            Ok(())
        } else {
            Err(doc.to_string())
        }
    });

    // JSON: the names come back exactly; the filter takes the percent-encoded name.
    let doc = get_json("/s");
    let names: Vec<&str> = doc["msg"]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [odd, nl]);
    for name in [odd, nl] {
        let doc = get_json(&format!("/s?upstream={}", url_encode(name)));
        assert_eq!(
            doc["msg"]["upstreams"].as_array().unwrap().len(),
            1,
            "{doc}"
        );
        assert_eq!(doc["msg"]["upstreams"][0]["name"], name);
    }
    let missing = "no \"such\" \\ <one>";
    let (status, _, body) = get(port, &format!("/s?upstream={}", url_encode(missing)));
    assert_eq!(status, 404, "{body}");
    let err = strict_json(&body);
    assert_eq!(err["status"], "err");
    assert_eq!(err["err_msg"], format!("unknown upstream {missing:?}"));

    // Prometheus: valid for promtool, label values unescape to the names.
    let page = status_page(port, "/s?format=prometheus");
    promtool_accepts(&page, "a page with odd upstream names");
    let s = parse_exposition(&page);
    let info = "nginx_upstream_status_info";
    assert_eq!(
        sample(&s, info, &[("name", odd), ("status", "UP")]),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&s, info, &[("name", nl), ("status", "UNKNOWN")]),
        Some(1.0),
        "{page}"
    );
    let labels = [
        ("upstream", odd),
        ("peer", down.as_str()),
        ("role", "primary"),
    ];
    assert_eq!(
        sample(&s, "nginx_upstream_healthcheck_peer_up", &labels),
        Some(0.0),
        "{page}"
    );
    for line in page.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("nginx_upstream_"),
            "a name broke a line: {line:?}"
        );
    }

    // error.log: the name between quotes with its quotes and backslash escaped as nginx's logs
    // escape them, so the line reads unambiguously.
    let log = nginx.error_log();
    let escaped = "we<b>ird</b> \\x22q\\x22 & 'sq' \\x5C end";
    let line = format!("peer {down} in upstream \"{escaped}\" is DOWN");
    assert!(log.contains(&line), "no line {line:?} in:\n{log}");

    // HTML, as a browser builds it: no markup injected, the names read back as written.
    tool("/usr/bin/chromium", "chromium");
    let dir = TempPrefix::new();
    let dom = chromium(
        dir.path(),
        "odd",
        &[
            "--dump-dom",
            &format!("http://127.0.0.1:{port}/s?format=html"),
        ],
    );
    assert!(
        !dom.contains("<b>"),
        "markup from an upstream name was rendered:\n{dom}"
    );
    let t = tables(&dom);
    assert_eq!(t.len(), 2, "{dom}");
    assert_eq!(t[0].upstream, odd);
    assert_eq!(t[0].caption, odd);
    assert_eq!(t[1].upstream, nl);
    assert_eq!(t[1].caption, format!("{nl} (not checked)"));
    assert_eq!(row(&t, odd, &up.addr()).state, "up");
    assert_eq!(row(&t, odd, &down).state, "down");
    assert!(
        dom.contains("<p id=\"summary\">2 checked peers: 1 up, 1 down</p>"),
        "{dom}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. Pages larger than a buffer

/// An HTTP/1.1 GET with `Connection: close`: (status, headers, body with any chunked transfer
/// encoding undone, whether it was chunked).
fn get_http11(port: u16, path: &str) -> (u16, String, String, bool) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let resp = exchange(port, raw.as_bytes(), false).expect("HTTP/1.1 request");
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let (status, headers, _) = parse_response(&resp).expect("response");
    let chunked = header(&headers, "Transfer-Encoding").as_deref() == Some("chunked");
    let mut body = resp[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    (
        status,
        headers,
        String::from_utf8(body).expect("UTF-8 body"),
        chunked,
    )
}

/// Undoes chunked transfer encoding.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16)
            .expect("hex chunk size");
        rest = &rest[eol + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "trailer after the last chunk");
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk end");
        rest = &rest[size + 2..];
    }
}

/// A fleet too large for one 64 KiB buffer: every format streams in chunks to an HTTP/1.1
/// client and to the close of the connection for HTTP/1.0, the same bytes either way; HEAD
/// announces the length GET sends; a page that fits in a buffer keeps its Content-Length.
#[test]
fn a_peer_name_that_is_not_utf8_is_checked_and_shown_with_a_replacement_character() {
    // nginx.conf is bytes: a unix socket path with a byte that is not UTF-8 comes in through an
    // included file, since a quoted string cannot spell it.
    let include = std::env::temp_dir().join(format!("ngx-hc-not-utf8-{}.conf", std::process::id()));
    let mut server = b"server unix:/nonexistent/hc-".to_vec();
    server.push(0xff);
    server.extend_from_slice(b".sock;\n");
    std::fs::write(&include, &server).expect("write the included file");
    let live = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream bytes {{\n    include {};\n    server {};\n    \
         upstream_healthcheck interval=100ms fall=1 rise=1;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /s {{ upstream_healthcheck_status json; }}\n}}\n",
        include.display(),
        live.addr()
    ));
    let shown = "unix:/nonexistent/hc-\u{fffd}.sock";
    poll(
        SETTLE,
        "the socket peer judged down, the live one up",
        || {
            let doc = strict_json(&status_page(port, "/s"));
            let (odd, ok) = (
                health(&doc, "bytes", shown),
                health(&doc, "bytes", &live.addr()),
            );
            if odd["status"] == "down" && odd["last_error"] == "refused" && ok["status"] == "up" {
                Ok(())
            } else {
                Err(doc.to_string())
            }
        },
    );
    let log = nginx.stop();
    let _ = std::fs::remove_file(&include);
    assert!(alert_lines(&log).is_empty(), "{log}");
    assert!(
        lines_with(&log, "probes give no verdict").is_empty(),
        "the peer is found among nginx's peers and probed:\n{log}"
    );
    assert!(
        log.contains(
            "peer unix:/nonexistent/hc-\\xEF\\xBF\\xBD.sock in upstream \"bytes\" is DOWN"
        ) || log.contains("peer unix:/nonexistent/hc-\\xFF.sock in upstream \"bytes\" is DOWN"),
        "the transition is logged with the name escaped:\n{log}"
    );
}

#[test]
fn pages_larger_than_a_buffer_stream_whole() {
    // Peers marked down in nginx.conf are never probed: the pages do not change between reads.
    let upstream = |name: &str, base: usize| {
        let servers: String = (0..1500)
            .map(|i| {
                format!(
                    "    server 127.0.{}.{}:80 down;\n",
                    (base + i) / 250,
                    1 + (base + i) % 250
                )
            })
            .collect();
        format!("upstream {name} {{\n{servers}    upstream_healthcheck interval=3600s;\n}}\n")
    };
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "{}{}server {{\n    listen 127.0.0.1:{port};\n    \
         location = /s {{ upstream_healthcheck_status; }}\n}}\n",
        upstream("fleet_a", 0),
        upstream("fleet_b", 1500)
    ));
    for format in ["text", "json", "prometheus", "html"] {
        let path = format!("/s?format={format}");
        let (status, headers, body, chunked) = get_http11(port, &path);
        assert_eq!(status, 200, "GET {path}: {headers}");
        assert!(
            chunked,
            "GET {path} over HTTP/1.1 is not chunked: {headers}"
        );
        assert!(body.len() > 64 * 1024, "{path}: {} bytes", body.len());
        assert_eq!(
            header(&headers, "Content-Length"),
            None,
            "{path}: {headers}"
        );
        let (status, headers10, body10) = get(port, &path);
        assert_eq!(status, 200, "GET {path} over HTTP/1.0: {headers10}");
        assert_eq!(body10, body, "{path}: HTTP/1.0 and HTTP/1.1 bodies differ");
        let (status, head, _) = http_request(port, "HEAD", &path, "").expect("HEAD");
        assert_eq!(status, 200);
        assert_eq!(
            header(&head, "Content-Length"),
            Some(body.len().to_string()),
            "HEAD {path}: {head}"
        );
        match format {
            "json" => {
                let doc = strict_json(&body);
                assert_eq!(
                    doc["msg"]["upstreams"][1]["primary"]
                        .as_array()
                        .unwrap()
                        .len(),
                    1500
                );
            }
            "prometheus" => promtool_accepts(&body, "a 3,000-peer page"),
            "text" => assert_eq!(body.lines().filter(|l| l.ends_with(" DOWN")).count(), 3000),
            _ => assert_eq!(body.matches("<tr class=\"peer down\"").count(), 3000),
        }
    }
    // One upstream's page fits in a buffer: a plain Content-Length, no chunks.
    let (status, headers, body, chunked) = get_http11(port, "/s?upstream=fleet_a&status=up");
    assert_eq!((status, chunked), (200, false), "{headers}");
    assert_eq!(
        header(&headers, "Content-Length"),
        Some(body.len().to_string())
    );
    assert_eq!(
        body,
        "Upstream fleet_a\n    Primary Peers\n    Backup Peers\n"
    );
    nginx.stop();
}

/// A scraper that stalls (a paused process, a congested link) while nginx has a page of
/// megabytes for it: rendering waits for it instead of piling the page up in memory, and
/// once it reads on, it gets the whole page, the same as a fast client.
#[test]
fn a_stalled_client_gets_the_whole_page_after_the_pause() {
    let servers: String = (0..3000)
        .map(|i| format!("    server 127.1.{}.{}:80 down;\n", i / 250, 1 + i % 250))
        .collect();
    let port = free_port();
    // A small send buffer, so nginx meets the stalled client within the first buffers.
    let nginx = Nginx::start(&format!(
        "upstream fleet {{\n{servers}    upstream_healthcheck interval=3600s;\n}}\n\
         server {{\n    listen 127.0.0.1:{port} sndbuf=16k;\n    \
         location = /s {{ upstream_healthcheck_status prometheus; }}\n}}\n"
    ));
    let (status, _, fast, chunked) = get_http11(port, "/s");
    assert_eq!((status, chunked), (200, true));
    assert!(fast.len() > 1_000_000, "{} bytes", fast.len());

    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("request");
    thread::sleep(Duration::from_millis(500)); // the stall
    slow.set_read_timeout(Some(SETTLE)).unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).expect("the whole response");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let body = String::from_utf8(dechunk(&raw[end + 4..])).expect("UTF-8");
    assert!(
        body == fast,
        "the stalled client's page differs ({} bytes, not {})",
        body.len(),
        fast.len()
    );
    nginx.stop();
}
