//! Watching the module the way an operator does: the Prometheus alert rules
//! (`contrib/prometheus/healthcheck-rules.yml`) pass `promtool check rules` and their unit
//! tests (`promtool test rules`), and a real Prometheus scraping nginx answers every query of
//! the Grafana dashboard (`contrib/grafana/healthcheck-dashboard.json`) with data and evaluates
//! every rule on the module's real series.
//!
//! promtool and Prometheus are Debian's (`prometheus`, installed by `scripts/setup.sh`); a
//! missing one fails the test.
mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);
const PROMTOOL_DEADLINE: Duration = Duration::from_secs(120);

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The names of the alerts in a rules file (`- alert: NAME` lines).
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Every metric name of the module (`nginx_upstream_…`, recorded names with `:` included)
/// that a text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("nginx_upstream_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

/// Runs promtool with `args` in `dir`: (success, stdout + stderr).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool("/usr/bin/promtool", "prometheus"));
    cmd.current_dir(dir).args(args);
    let what = format!("promtool {}", args.join(" "));
    let (status, out, err) = run_bounded(cmd, &what, PROMTOOL_DEADLINE);
    (status.success(), format!("{out}{err}"))
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = contrib("prometheus");
    let rules = read(&dir.join("healthcheck-rules.yml"));
    let tests = read(&dir.join("healthcheck-rules.test.yml"));

    let (ok, out) = promtool(&dir, &["check", "rules", "healthcheck-rules.yml"]);
    assert!(ok, "promtool check rules fails:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Input series -> expected alerts; promtool exits non-zero on any mismatch.
    let (ok, out) = promtool(&dir, &["test", "rules", "healthcheck-rules.test.yml"]);
    assert!(ok, "promtool test rules fails:\n{out}");
    assert!(out.contains("SUCCESS") && !out.contains("FAILED"), "{out}");

    // Every alert is tested firing and not firing, and described in the README.
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 7, "alerts in the rules file: {alerts:?}");
    for alert in &alerts {
        let cases: Vec<&str> = tests
            .split("      - eval_time:")
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "no test case where {alert} must not fire"
        );
        assert!(
            cases.iter().any(|c| !c.contains("exp_alerts: []")),
            "no test case where {alert} fires"
        );
        assert!(
            readme.contains(&format!("`{alert}`")),
            "README does not describe the alert {alert}"
        );
    }
}

/// The dashboard's template variables and panel queries.
struct Dashboard {
    json: Value,
}

impl Dashboard {
    fn load() -> Dashboard {
        let text = read(&contrib("grafana/healthcheck-dashboard.json"));
        Dashboard {
            json: strict_json(&text),
        }
    }

    /// Panels, those inside rows included.
    fn panels(&self) -> Vec<&Value> {
        let mut out = Vec::new();
        for p in self.json["panels"].as_array().expect("panels") {
            out.push(p);
            if let Some(inner) = p["panels"].as_array() {
                out.extend(inner);
            }
        }
        out
    }

    fn variable(&self, name: &str) -> &Value {
        self.json["templating"]["list"]
            .as_array()
            .expect("templating.list")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    }
}

/// Grafana's substitutions, with values that fit the site under test.
fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut s = expr.to_owned();
    // Longest names first: `$__rate_interval` before `$__interval`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in vars {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    assert!(!s.contains('$'), "a template variable is left in {s:?}");
    s
}

/// A series with a finite value in an instant-query result.
fn has_finite_value(result: &[Value]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[test]
fn every_dashboard_query_and_rule_works_on_a_real_prometheus() {
    let dash = Dashboard::load();
    let rules_path = contrib("prometheus/healthcheck-rules.yml");
    let rules = read(&rules_path);

    // The dashboard's shape: current schema, the datasource as a variable used by every
    // panel and query, an upstream variable.
    assert!(
        dash.json["schemaVersion"].as_u64() >= Some(39),
        "schemaVersion {}",
        dash.json["schemaVersion"]
    );
    let ds = dash.variable("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let upstream_var = dash.variable("upstream");
    assert_eq!(upstream_var["type"], "query");
    let panels = dash.panels();
    let mut exprs = Vec::new();
    for p in &panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let expr = t["expr"].as_str().expect("expr").to_owned();
            assert!(
                expr.contains("$upstream"),
                "panel {title} ignores the upstream variable: {expr}"
            );
            exprs.push((title.to_owned(), expr));
        }
    }

    // nginx: "backend" with a healthy peer and a closed port, "dead" with only a closed port,
    // and an unchecked upstream.
    let up = Backend::new();
    let (down, dead) = (dead_addr(), dead_addr());
    let plain = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {down};\n    \
         upstream_healthcheck interval=200ms timeout=1s fall=1 rise=1 uri=/health;\n}}\n\
         upstream dead {{\n    server {dead};\n    \
         upstream_healthcheck interval=200ms timeout=1s fall=1 rise=1 uri=/health;\n}}\n\
         upstream static {{ server {}; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /metrics {{ upstream_healthcheck_status prometheus; }}\n}}\n",
        up.addr(),
        plain.addr()
    ));
    poll(SETTLE, "the closed ports down, the healthy peer up", || {
        let doc = strict_json(&status_page(port, "/metrics?format=json"));
        let st = |u: &str, p: &str| json_peer(&doc, u, p)["health"]["status"].clone();
        if st("backend", &up.addr()) == "up"
            && st("backend", &down) == "down"
            && st("dead", &dead) == "down"
        {
            Ok(())
        } else {
            Err(doc.to_string())
        }
    });

    let job = "nginx";
    let mut prom = Prometheus::start(job, port, "/metrics", &[rules_path.as_path()]);
    prom.wait_up(job);
    let instance = format!("127.0.0.1:{port}");
    let vars = [
        ("datasource", "unused"),
        ("instance", instance.as_str()),
        ("upstream", "backend|dead"),
        ("__rate_interval", "10s"),
        ("__interval", "2s"),
        ("__range", "1m"),
    ];

    // Every panel query parses and returns data, once Prometheus has a few scrapes of it.
    let queries: Vec<(String, String)> = exprs
        .iter()
        .map(|(title, e)| (title.clone(), substitute(e, &vars)))
        .collect();
    poll(
        PROMETHEUS_DEADLINE,
        "every dashboard query returns data",
        || {
            let mut empty = Vec::new();
            for (title, q) in &queries {
                match prom.query(q) {
                    Ok(r) if has_finite_value(&r) => {}
                    Ok(r) => empty.push(format!("{title}: {q} -> {r:?}")),
                    // A query Prometheus cannot parse never will.
                    Err(e) if e.contains("bad_data") => panic!("panel {title}: {q}: {e}"),
                    Err(e) => empty.push(format!("{title}: {q} -> {e}")),
                }
            }
            if empty.is_empty() {
                Ok(())
            } else {
                Err(empty.join("\n"))
            }
        },
    );

    // The template variables' queries list the checked upstreams and the nginx.
    for (name, want, not) in [
        ("upstream", vec!["backend", "dead"], Some("static")),
        ("instance", vec![instance.as_str()], None),
    ] {
        let v = dash.variable(name);
        let q = substitute(v["query"]["query"].as_str().expect("query"), &vars);
        assert_eq!(
            v["definition"].as_str().map(|d| substitute(d, &vars)),
            Some(q.clone())
        );
        let (selector, label) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label): {q}"));
        let data = prom
            .api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                url_encode(selector.trim())
            ))
            .unwrap_or_else(|e| panic!("variable {name}: {q}: {e}"));
        let values: Vec<&str> = data
            .as_array()
            .expect("values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for w in want {
            assert!(values.contains(&w), "variable {name}: {q} -> {values:?}");
        }
        if let Some(n) = not {
            assert!(!values.contains(&n), "variable {name}: {q} -> {values:?}");
        }
    }

    // The rules load and evaluate on the real series without error, every metric they name
    // exists, and the down peer and the upstream without a peer up are caught.
    let alerts = alert_names(&rules);
    poll(
        PROMETHEUS_DEADLINE,
        "every rule evaluated without error",
        || {
            let data = prom.api("/api/v1/rules")?;
            let rules: Vec<&Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            let names: Vec<&str> = rules
                .iter()
                .filter(|r| r["type"] == "alerting")
                .filter_map(|r| r["name"].as_str())
                .collect();
            assert_eq!(names, alerts, "alerting rules loaded");
            let bad: Vec<String> = rules
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join("\n"))
            }
        },
    );
    poll(
        PROMETHEUS_DEADLINE,
        "every metric the rules name is in Prometheus",
        || {
            let names = prom.api("/api/v1/label/__name__/values")?;
            let have: BTreeSet<&str> = names
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let missing: Vec<String> = metric_names(&rules)
                .into_iter()
                .filter(|n| !have.contains(n.as_str()))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}, have {have:?}"))
            }
        },
    );
    poll(
        PROMETHEUS_DEADLINE,
        "UpstreamPeerDown for the closed port of backend, UpstreamAllPeersDown for dead",
        || {
            let r = prom.query("ALERTS")?;
            let caught = |alert: &str, label: &str, value: &str| {
                r.iter()
                    .any(|s| s["metric"]["alertname"] == alert && s["metric"][label] == value)
            };
            if caught("UpstreamPeerDown", "peer", &down)
                && caught("UpstreamPeerDown", "peer", &dead)
                && caught("UpstreamAllPeersDown", "upstream", "dead")
            {
                let wrong: Vec<&Value> = r
                    .iter()
                    .filter(|s| {
                        s["metric"]["peer"] == up.addr().as_str()
                            || s["metric"]["upstream"] == "backend"
                                && s["metric"]["alertname"] == "UpstreamAllPeersDown"
                    })
                    .collect();
                assert!(wrong.is_empty(), "alerts about healthy things: {wrong:?}");
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    prom.stop();
    nginx.stop();
}
