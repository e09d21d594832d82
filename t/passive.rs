//! Passive checks (`upstream_healthcheck_passive`), as an operator meets them: a backend that
//! passes its health checks but fails real requests is taken out after a few of them, in every
//! worker; with active checks the probes bring it back, without them it comes back after
//! `down_time` on probation and a failure then sends it back for twice as long; the last peer up
//! is never taken out.
mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

fn json_status(port: u16) -> Value {
    strict_json(&status_page(port, "/status?format=json"))
}

/// Upstream `app` of `peers` with `directives`, and a server on `port` proxying to it and
/// serving the status page.
fn app_conf(port: u16, peers: &[String], directives: &str) -> String {
    format!(
        "{}server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n    \
         location = /status {{ upstream_healthcheck_status; }}\n}}\n",
        upstream_block("app", peers, directives)
    )
}

/// `GET /` through the proxy until `backend` has seen `n` proxied requests (at most 200).
fn send_until(port: u16, backend: &Backend, n: usize) {
    for i in 0..200 {
        if backend.proxied() >= n {
            return;
        }
        let _ = http_get(port, &format!("/r{i}"));
    }
    panic!(
        "{} saw {} proxied requests, not {n}",
        backend.addr(),
        backend.proxied()
    );
}

/// A backend whose health checks pass while every other request gets a 502.
fn failing_requests() -> Backend {
    let b = Backend::new();
    b.set_mode(Mode::Status(502));
    b.set_path_mode("/health", Mode::Status(200));
    b
}

#[test]
fn failed_requests_eject_a_peer_its_probes_pass_and_the_probes_bring_it_back() {
    let good = Backend::new();
    let bad = failing_requests();
    let port = free_port();
    let conf = app_conf(
        port,
        &[good.addr(), bad.addr()],
        "upstream_healthcheck type=http interval=200ms timeout=1s fall=3 rise=2 uri=/health;\n    \
             upstream_healthcheck_passive fails=3 window=10s statuses=5xx;",
    );
    let nginx = Nginx::start_with("worker_processes 2;", &conf);
    send_until(port, &bad, 3);
    let doc = poll(SOON, "the failing peer is down", || {
        let doc = json_status(port);
        let h = json_peer(&doc, "app", &bad.addr())["health"].clone();
        if h["status"] == "down" {
            Ok(doc)
        } else {
            Err(h.to_string())
        }
    });
    let peer = json_peer(&doc, "app", &bad.addr());
    assert!(shows_passive_ejection(peer), "{peer}");
    assert_eq!(peer["passive"]["ejections"], 1, "{peer}");
    assert_eq!(
        peer["health"]["failures"], 0,
        "its probes never failed: {peer}"
    );

    // Every worker sends the next requests to the good peer only.
    let seen = bad.proxied();
    for i in 0..20 {
        assert_eq!(
            http_get(port, &format!("/after{i}")).map(|r| r.0).ok(),
            Some(200)
        );
    }
    assert_eq!(
        bad.proxied(),
        seen,
        "no worker sends requests to the ejected peer"
    );
    let text = status_page(port, "/status");
    assert_eq!(
        peer_state(&text, "app", &bad.addr()),
        Some("DOWN"),
        "{text}"
    );
    let prom = status_page(port, "/status?format=prometheus");
    let labels = format!("{{upstream=\"app\",peer=\"{}\"", bad.addr());
    for line in [
        format!("nginx_upstream_healthcheck_passive_ejections_total{labels}}} 1"),
        format!("nginx_upstream_healthcheck_failures_total{labels},reason=\"passive\"}} 1"),
    ] {
        assert!(prom.lines().any(|l| l == line), "{line} missing:\n{prom}");
    }

    // Fixed: its probes (rise=2) bring it back, and it takes requests again.
    bad.clear_path_modes();
    bad.set_mode(Mode::Status(200));
    poll(SOON, "the fixed peer is up", || {
        let h = json_peer(&json_status(port), "app", &bad.addr())["health"].clone();
        if h["status"] == "up" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    send_until(port, &bad, seen + 1);
    let log = nginx.stop();
    assert_eq!(
        lines_with(&log, "is DOWN after 3 failed proxied requests within 10s, last error: passive (out until its checks pass)").len(),
        1,
        "logged once, by the worker that ejected it:\n{log}"
    );
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn without_active_checks_an_ejected_peer_serves_its_time_then_probation_doubles_it() {
    let good = Backend::new();
    let bad = Backend::new();
    bad.set_mode(Mode::Status(502));
    let port = free_port();
    let conf = app_conf(
        port,
        &[good.addr(), bad.addr()],
        "upstream_healthcheck_passive fails=2 window=10s statuses=502 down_time=1s;",
    );
    let nginx = Nginx::start(&conf);
    let passive = |port: u16| json_peer(&json_status(port), "app", &bad.addr())["passive"].clone();
    send_until(port, &bad, 2);
    let p = passive(port);
    assert_eq!(p["ejections"], 1, "{p}");
    assert!(p["down_until"].is_number(), "{p}");
    // One second later it is back, on probation: one more failure and it is out for 2 s.
    poll(SOON, "back on probation", || {
        let p = passive(port);
        if p["probation"] == true && p["down_until"].is_null() {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    send_until(port, &bad, 3);
    let p = passive(port);
    assert_eq!(p["ejections"], 2, "{p}");
    let log = nginx.stop();
    for want in [
        "is DOWN after 2 failed proxied requests within 10s, last error: passive (out for 1s)",
        "is back after its passive down time, on probation for 10s",
        "is DOWN after a failed proxied request on probation, last error: passive (out for 2s)",
    ] {
        assert_eq!(lines_with(&log, want).len(), 1, "{want}:\n{log}");
    }
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn the_last_peer_up_is_never_ejected() {
    let bad = Backend::new();
    bad.set_mode(Mode::Status(502));
    let port = free_port();
    let conf = app_conf(
        port,
        &[bad.addr()],
        "upstream_healthcheck_passive fails=2 window=10s statuses=5xx;",
    );
    let nginx = Nginx::start(&conf);
    send_until(port, &bad, 5);
    let p = json_peer(&json_status(port), "app", &bad.addr())["passive"].clone();
    assert_eq!(p["ejections"], 0, "{p}");
    let log = nginx.stop();
    assert_eq!(
        lines_with(
            &log,
            "is not ejected after 2 failed proxied requests within 10s: it is the last peer up"
        )
        .len(),
        1,
        "said once per window:\n{log}"
    );
}
