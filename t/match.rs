//! Response match as an operator sees it: a health endpoint that answers 200 but says it is not
//! well goes DOWN with the failing condition named in JSON, on the log line and in the
//! metrics; a hostile body against a pathological pattern cannot stall a worker.
mod common;

use common::*;
use std::fs;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);

/// The issue's JSON health check.
const JSON_OK: &str = "upstream_healthcheck_match json_ok {\n    \
     status 200-399;\n    header Content-Type ~ \"json\";\n    \
     body ~ \"\\\"status\\\"\\s*:\\s*\\\"ok\\\"\";\n}\n";

/// A backend `server {}` of the nginx under test answering `/health` with `status` and a JSON
/// `body`.
fn json_backend(port: u16, status: u16, body: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    location = /health {{\n        \
         default_type application/json;\n        return {status} '{body}';\n    }}\n}}\n"
    )
}

/// A server on `port` with the JSON status page at `/status` and the metrics at `/metrics`.
fn status_server(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    \
         location = /status {{ upstream_healthcheck_status json; }}\n    \
         location = /metrics {{ upstream_healthcheck_status prometheus; }}\n}}\n"
    )
}

#[test]
fn a_health_endpoint_that_says_it_is_not_ok_goes_down_with_the_failing_test_named() {
    let (ok, degraded, failing, status_port) = (free_port(), free_port(), free_port(), free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let conf = [
        JSON_OK.to_string(),
        json_backend(ok, 200, r#"{"status": "ok"}"#),
        json_backend(degraded, 200, r#"{"status": "degraded"}"#),
        json_backend(failing, 503, r#"{"status": "ok"}"#),
        status_server(status_port),
        upstream_block(
            "app",
            &[addr(ok), addr(degraded), addr(failing)],
            "upstream_healthcheck interval=100ms fall=2 uri=/health keepalive=10 match=json_ok;",
        ),
    ]
    .concat();
    let nginx = Nginx::start(&conf);
    let health = |port: u16| {
        let doc = strict_json(&status_page(status_port, "/status"));
        json_peer(&doc, "app", &addr(port))["health"].clone()
    };
    wait_until(SOON, "the degraded and the failing peers down", || {
        health(degraded)["status"] == "down" && health(failing)["status"] == "down"
    });

    let h = health(ok);
    assert_eq!(
        (h["status"].as_str(), h["failures"].as_u64()),
        (Some("up"), Some(0)),
        "{h}"
    );
    let h = health(degraded);
    assert_eq!(h["last_error"], "mismatch", "{h}");
    assert_eq!(
        h["last_error_detail"], r#"body ~ "\"status\"\s*:\s*\"ok\"""#,
        "{h}"
    );
    let h = health(failing);
    assert_eq!(h["last_error"], "mismatch", "{h}");
    assert_eq!(h["last_error_detail"], "status 200-399 (got 503)", "{h}");
    assert_eq!(h["last_status"], 503, "{h}");

    let log = nginx.error_log();
    let down = lines_with(
        &log,
        &format!("peer {} in upstream \"app\" is DOWN", addr(degraded)),
    );
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains(
            r#"last error: response did not match: body ~ "\"status\"\s*:\s*\"ok\"" (status 200)"#
        ),
        "{}",
        down[0]
    );
    let metrics = status_page(status_port, "/metrics");
    let mismatches = format!(
        "nginx_upstream_healthcheck_failures_total{{upstream=\"app\",peer=\"{}\",reason=\"mismatch\"}} ",
        addr(degraded)
    );
    let n: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&mismatches)?.parse().ok())
        .unwrap_or_else(|| panic!("no {mismatches} in\n{metrics}"));
    assert!(n >= 2, "{n}");
    nginx.stop();
}

#[test]
fn a_hostile_body_against_a_pathological_pattern_cannot_stall_the_worker() {
    // 1 MiB of "a" and no "b": a backtracking engine would take exponential time on
    // `(a|aa)*b`; the probes examine the whole body every 100 ms while the status page is
    // fetched from the same (single) worker.
    let data = TempPrefix::new();
    fs::write(data.path().join("health"), vec![b'a'; 1 << 20]).unwrap();
    let (backend, status_port) = (free_port(), free_port());
    let conf = [
        "upstream_healthcheck_match no_b {\n    body ~ \"(a|aa)*b\";\n    body_max 1m;\n}\n"
            .to_string(),
        format!(
            "server {{\n    listen 127.0.0.1:{backend};\n    root {};\n}}\n",
            data.path().display()
        ),
        status_server(status_port),
        upstream_block(
            "hostile",
            &[format!("127.0.0.1:{backend}")],
            "upstream_healthcheck interval=100ms timeout=2s fall=1 uri=/health keepalive=100 match=no_b;",
        ),
    ]
    .concat();
    let nginx = Nginx::start(&conf);
    let peer = format!("127.0.0.1:{backend}");
    let checks = || {
        let doc = strict_json(&status_page(status_port, "/status"));
        json_peer(&doc, "hostile", &peer)["health"]["checks"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(SOON, "the first probes", || checks() >= 2);
    let (first, mut slowest) = (checks(), Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        status_page(status_port, "/status");
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "the status page took {slowest:?} while probes matched 1 MiB bodies"
    );
    assert!(
        checks() >= first + 10,
        "probes kept running: {} -> {}",
        first,
        checks()
    );
    let doc = strict_json(&status_page(status_port, "/status"));
    let h = &json_peer(&doc, "hostile", &peer)["health"];
    assert_eq!(
        (h["status"].as_str(), h["last_error"].as_str()),
        (Some("down"), Some("mismatch")),
        "{h}"
    );
    nginx.stop();
}
