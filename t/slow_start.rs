//! Slow start as an operator sees it: a peer that comes back — its checks pass again, its manual
//! down ends, a reload adds it — gets a small share of the requests at first and its full share
//! `slow_start` later, in every worker, for round robin and `least_conn` (with and without
//! `zone`); a peer that is up when nginx starts does not ramp. Each story runs a real nginx with
//! real loopback backends and counts the requests each backend answers, or reads the JSON page.
mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deadline for things that should happen within a few probe intervals.
const SOON: Duration = Duration::from_secs(5);

/// Fast checks: a failing peer is DOWN after one failed probe, UP after one good one.
fn check(slow_start: &str) -> String {
    format!(
        "upstream_healthcheck interval=100ms timeout=500ms fall=1 rise=1 uri=/health \
         slow_start={slow_start};"
    )
}

/// A `server {}` on `port` proxying `/` to upstream `backend`, with the JSON status page and
/// the control API.
fn front(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    proxy_connect_timeout 1s;\n    \
         proxy_read_timeout 2s;\n    location / {{ proxy_pass http://backend; }}\n    \
         location = /status {{ upstream_healthcheck_status json; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n}}\n"
    )
}

fn upstream(servers: &[String], extra: &str, check: &str) -> String {
    let servers: String = servers
        .iter()
        .map(|s| format!("    server {s};\n"))
        .collect();
    format!("upstream backend {{\n{servers}    {extra}\n    {check}\n}}\n")
}

/// The JSON status page's entry for `peer` of upstream `backend`.
fn peer_json(port: u16, peer: &str) -> Value {
    let doc = strict_json(&status_page(port, "/status"));
    json_peer(&doc, "backend", peer).clone()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// POST to the control API, asserting a 200.
fn admin_post(port: u16, query: &str) {
    let path = format!("/admin?{query}");
    let (status, _, body) =
        http_request(port, "POST", &path, "").unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(status, 200, "POST {path}: {body}");
}

/// Requests through nginx at a steady pace, on their own thread: for each, when it was answered
/// (Unix seconds) and the port of the backend that answered (0 for a failure).
fn steady_requests(port: u16) -> Looper<(f64, u16)> {
    Looper::start(move |_| {
        std::thread::sleep(Duration::from_millis(4));
        let backend = match http_get(port, "/x") {
            Ok((200, headers, _)) => header(&headers, "x-backend")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        (unix_now(), backend)
    })
}

/// The share of answers from `backend` among the answers in `[from, to)`, and their number.
fn share(answers: &[(f64, u16)], backend: u16, from: f64, to: f64) -> (f64, usize) {
    let within: Vec<u16> = answers
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .map(|&(_, b)| b)
        .collect();
    let mine = within.iter().filter(|&&b| b == backend).count();
    (mine as f64 / within.len().max(1) as f64, within.len())
}

/// Two peers of weight 1; the second fails its checks, then heals while requests flow at a
/// steady pace. Over the 5 s of `slow_start` (cut in 5 buckets of a second from the moment it
/// came back, which the JSON page tells), its share grows from well below its fair half to
/// about half, and stays there after.
fn share_of_a_recovered_peer_grows_over_slow_start(extra: &str, workers: usize) {
    let steady = Backend::new();
    let healed = Backend::new();
    let port = free_port();
    let nginx = Nginx::start_with(
        &format!("worker_processes {workers};"),
        &format!(
            "{}{}",
            upstream(&[steady.addr(), healed.addr()], extra, &check("5s")),
            front(port)
        ),
    );
    healed.set_path_mode("/health", Mode::Status(500));
    poll(SOON, "the failing peer DOWN", || {
        let p = peer_json(port, &healed.addr());
        (p["health"]["status"] == "down")
            .then_some(())
            .ok_or(p.to_string())
    });

    let load = steady_requests(port);
    load.wait_more(50);
    healed.clear_path_modes();
    // When it came back: the ramp ends 5 s after that.
    let until = poll(SOON, "the healed peer UP and ramping", || {
        let p = peer_json(port, &healed.addr());
        let h = &p["health"];
        match (h["status"].as_str(), h["slow_start_until"].as_f64()) {
            (Some("up"), Some(until)) => Ok(until),
            _ => Err(p.to_string()),
        }
    });
    let back = until - 5.0;
    let p = peer_json(port, &healed.addr());
    let factor = p["health"]["slow_start_factor"].as_f64().unwrap_or(1.0);
    assert!((0.1..0.5).contains(&factor), "early in its ramp: {p}");
    assert_eq!(p["weight"], 1, "the configured weight: {p}");
    assert!(
        (until - unix_now() - 5.0).abs() < 1.5,
        "the ramp ends 5 s after the peer came back: {p}"
    );

    poll_every(
        Duration::from_millis(200),
        Duration::from_secs(5) + SOON,
        "the ramp over",
        || {
            let p = peer_json(port, &healed.addr());
            let h = &p["health"];
            (h["slow_start_factor"] == 1.0 && h["slow_start_until"].is_null())
                .then_some(())
                .ok_or(p.to_string())
        },
    );
    // Full share from then on: a few hundred more answers.
    load.wait_more(300);
    let answers = load.finish();
    let failed = answers.iter().filter(|(_, b)| *b == 0).count();
    assert_eq!(failed, 0, "every request answered");

    let buckets: Vec<(f64, usize)> = (0..5)
        .map(|k| {
            let from = back + k as f64;
            share(&answers, healed.port(), from, from + 1.0)
        })
        .collect();
    let after = share(&answers, healed.port(), back + 5.5, f64::MAX);
    let report = format!(
        "shares of the healed peer per second of its ramp (share, answers): {buckets:?}; after \
         it: {after:?}"
    );
    eprintln!("{report}");
    for &(_, n) in buckets.iter().chain([&after]) {
        assert!(n >= 40, "too few answers to judge: {report}");
    }
    let shares: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    // A tenth to about a third of its weight in the first second: 9-22 % of the answers, where
    // its fair share is 50 %.
    assert!(shares[0] < 0.30, "not at once: {report}");
    // 82-100 % of its weight in the last second: 45-50 % of the answers.
    assert!(shares[4] > 0.38, "near its fair share at the end: {report}");
    assert!(shares[4] - shares[0] > 0.2, "it grows: {report}");
    for k in 1..5 {
        assert!(
            shares[k] > shares[k - 1] - 0.1,
            "it grows steadily: {report}"
        );
    }
    assert!(
        (0.38..0.62).contains(&after.0),
        "then its fair share: {report}"
    );
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn round_robin_gives_a_recovered_peer_a_growing_share_in_every_worker() {
    share_of_a_recovered_peer_grows_over_slow_start("", 2);
}

#[test]
fn least_conn_with_a_shared_zone_gives_a_recovered_peer_a_growing_share() {
    share_of_a_recovered_peer_grows_over_slow_start("least_conn;\n    zone backend 64k;", 2);
}

#[test]
fn a_peer_released_from_a_manual_down_ramps_and_shows_its_configured_weight() {
    let light = Backend::new();
    let heavy = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "{}{}",
        upstream(
            &[light.addr(), format!("{} weight=2", heavy.addr())],
            "",
            &check("30s")
        ),
        front(port)
    ));
    // Up since nginx started: no ramp, weights as configured.
    let p = peer_json(port, &heavy.addr());
    assert_eq!(p["health"]["slow_start_factor"], 1.0, "{p}");
    assert!(p["health"]["slow_start_until"].is_null(), "{p}");
    assert_eq!(
        (p["weight"].as_i64(), p["effective_weight"].as_i64()),
        (Some(2), Some(2)),
        "{p}"
    );
    assert_eq!(peer_json(port, &light.addr())["weight"], 1);

    let heavy_peer = format!("u=backend&p={}", heavy.addr());
    admin_post(port, &format!("t=gray&{heavy_peer}&a=set"));
    assert_eq!(peer_json(port, &heavy.addr())["down"], true);
    admin_post(port, &format!("t=gray&{heavy_peer}&a=del"));
    let p = peer_json(port, &heavy.addr());
    let h = &p["health"];
    let factor = h["slow_start_factor"].as_f64().unwrap_or(1.0);
    assert!((0.1..0.2).contains(&factor), "released a moment ago: {p}");
    let until = h["slow_start_until"].as_f64().unwrap_or(0.0);
    assert!(
        (until - unix_now() - 30.0).abs() < 2.0,
        "ramps for 30 s: {p}"
    );
    assert_eq!(
        p["weight"], 2,
        "the configured weight, whatever the ramp: {p}"
    );
    assert!(p["effective_weight"].as_i64().unwrap_or(99) <= 2, "{p}");

    // Twice the weight, a tenth of it for now: it gets about 1 answer in 6, not 2 in 3.
    for _ in 0..120 {
        assert_eq!(http_get(port, "/x").map(|r| r.0).ok(), Some(200));
    }
    let (h, l) = (heavy.proxied(), light.proxied());
    assert_eq!(h + l, 120);
    assert!(h < 40, "heavy {h}, light {l}");

    // A manual down whose ttl runs out ends the same way.
    admin_post(
        port,
        &format!("t=gray&u=backend&p={}&a=set&ttl=1", light.addr()),
    );
    let p = poll(SOON, "the ttl over and the light peer ramping", || {
        let p = peer_json(port, &light.addr());
        let ramping = p["down"] == false && p["health"]["slow_start_until"].is_f64();
        ramping.then(|| p.clone()).ok_or(p.to_string())
    });
    let factor = p["health"]["slow_start_factor"].as_f64().unwrap_or(1.0);
    assert!(factor < 0.3, "{p}");
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn a_fresh_start_ramps_no_peer_but_a_peer_added_by_a_reload_ramps() {
    let a = Backend::new();
    let b = Backend::new();
    let added = Backend::new();
    let port = free_port();
    let mut nginx = Nginx::start(&format!(
        "{}{}",
        upstream(&[a.addr(), b.addr()], "", &check("30s")),
        front(port)
    ));
    wait_until(SOON, "both probed", || {
        a.hits("/health") > 0 && b.hits("/health") > 0
    });
    for peer in [a.addr(), b.addr()] {
        let p = peer_json(port, &peer);
        assert_eq!(
            p["health"]["slow_start_factor"], 1.0,
            "no outage, no ramp: {p}"
        );
        assert!(p["health"]["slow_start_until"].is_null(), "{p}");
    }
    nginx.rewrite_conf(&format!(
        "{}{}",
        upstream(&[a.addr(), b.addr(), added.addr()], "", &check("30s")),
        front(port)
    ));
    nginx.reload();
    let p = peer_json(port, &added.addr());
    let factor = p["health"]["slow_start_factor"].as_f64().unwrap_or(1.0);
    assert!(factor < 0.3, "new in service: {p}");
    let until = p["health"]["slow_start_until"].as_f64().unwrap_or(0.0);
    assert!((until - unix_now() - 30.0).abs() < 3.0, "{p}");
    for peer in [a.addr(), b.addr()] {
        let p = peer_json(port, &peer);
        assert_eq!(
            p["health"]["slow_start_factor"], 1.0,
            "kept across the reload: {p}"
        );
    }
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}
