//! Proxied traffic per peer (`upstream_healthcheck_traffic`), as an operator reads it: every
//! attempt nginx sends to a peer is counted, by response class, with the attempts nginx counts
//! as failed, in JSON, Prometheus and the HTML page; the counts match what the backends saw, they
//! survive a reload, and upstreams that do not count show nothing new.
mod common;

use common::*;
use serde_json::Value;

fn json_status(port: u16) -> Value {
    strict_json(&status_page(port, "/status?format=json"))
}

fn traffic(doc: &Value, upstream: &str, peer: &str) -> Value {
    json_peer(doc, upstream, peer)["traffic"].clone()
}

/// `GET /` through the proxy `n` times; the statuses the client got.
fn proxy(port: u16, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            http_get(port, &format!("/r{i}"))
                .unwrap_or_else(|e| panic!("GET /r{i}: {e}"))
                .0
        })
        .collect()
}

/// The value of the Prometheus sample whose line starts with `series` (labels included).
fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_attempt_is_counted_on_its_peer_as_the_backends_saw_it() {
    let ok = Backend::new();
    let failing = Backend::new();
    failing.set_mode(Mode::Status(503));
    let dead = dead_addr();
    let port = free_port();
    // Counting is on for the whole http block; "quiet" turns it off for itself.
    let conf = format!(
        "upstream_healthcheck_traffic on;\n{}{}\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location / {{ proxy_pass http://app; proxy_next_upstream error timeout; }}\n    \
         location /quiet {{ proxy_pass http://quiet; }}\n    \
         location = /status {{ upstream_healthcheck_status; }}\n}}\n",
        upstream_block("app", &[ok.addr(), failing.addr(), dead.clone()], ""),
        upstream_block("quiet", &[ok.addr()], "upstream_healthcheck_traffic off;"),
    );
    let mut nginx = Nginx::start(&conf);
    let statuses = proxy(port, 30);
    assert_eq!(http_get(port, "/quiet").map(|r| r.0).ok(), Some(200));

    // The client got 30 answers, each from a live peer; the dead peer's attempts failed over.
    let got_ok = statuses.iter().filter(|&&s| s == 200).count();
    let got_503 = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(got_ok + got_503, 30, "{statuses:?}");
    assert_eq!(ok.proxied(), got_ok + 1, "the /quiet request too");
    assert_eq!(failing.proxied(), got_503);

    let doc = json_status(port);
    let t_ok = traffic(&doc, "app", &ok.addr());
    assert_eq!(t_ok["requests"], got_ok);
    assert_eq!(t_ok["responses"]["2xx"], got_ok);
    assert_eq!(t_ok["failed_attempts"], 0);
    let t_503 = traffic(&doc, "app", &failing.addr());
    assert_eq!(t_503["requests"], got_503);
    assert_eq!(
        t_503["responses"]["5xx"], got_503,
        "a 503 is a response, not a failure"
    );
    assert_eq!(t_503["failed_attempts"], 0);
    let t_dead = traffic(&doc, "app", &dead);
    let tried = t_dead["requests"].as_u64().unwrap_or(0);
    assert!(tried >= 1, "round robin tried the dead peer: {t_dead}");
    assert_eq!(
        t_dead["failed_attempts"], tried,
        "every attempt on it failed"
    );
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        assert_eq!(t_dead["responses"][class], 0, "{t_dead}");
    }
    assert!(t_ok["response_time_ms_avg"].as_f64().is_some(), "{t_ok}");
    assert!(
        json_peer(&doc, "quiet", &ok.addr())
            .get("traffic")
            .is_none(),
        "an upstream that does not count has no traffic object"
    );

    // Prometheus says the same, for the counted upstream only.
    let page = status_page(port, "/status?format=prometheus");
    let labels = |peer: &str| format!("{{upstream=\"app\",peer=\"{peer}\"");
    let series = |metric: &str, peer: &str, extra: &str| {
        format!(
            "nginx_upstream_healthcheck_{metric}{}{extra}}}",
            labels(peer)
        )
    };
    assert_eq!(
        sample(&page, &series("peer_requests_total", &ok.addr(), "")),
        Some(got_ok as u64)
    );
    assert_eq!(
        sample(
            &page,
            &series("peer_responses_total", &failing.addr(), ",code=\"5xx\"")
        ),
        Some(got_503 as u64)
    );
    assert_eq!(
        sample(&page, &series("peer_failed_attempts_total", &dead, "")),
        Some(tried)
    );
    assert_eq!(
        sample(
            &page,
            &series("peer_response_seconds_count", &ok.addr(), "")
        ),
        Some(got_ok as u64)
    );
    assert!(!page.contains("upstream=\"quiet\""), "{page}");

    // The HTML page: requests/s and 5xx share since this worker's previous page.
    let first = status_page(port, "/status?format=html");
    assert!(first.contains("<th>Requests/s</th><th>5xx</th>"), "{first}");
    proxy(port, 10);
    let second = status_page(port, "/status?format=html");
    let row = second
        .lines()
        .find(|l| l.contains(&format!("data-peer=\"{}\"", failing.addr())))
        .unwrap_or_default();
    assert!(
        row.ends_with("<td class=\"num\">100.0%</td></tr>"),
        "only 503s: {row}"
    );

    // A reload keeps the counts.
    let before = traffic(&json_status(port), "app", &ok.addr())["requests"].clone();
    nginx.reload();
    assert_eq!(
        traffic(&json_status(port), "app", &ok.addr())["requests"],
        before
    );
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}
