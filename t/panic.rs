//! Panic mode (`panic_threshold=P%`) as an operator sees it: when the checks say that fewer than
//! P percent of an upstream's primary peers are up, nginx uses every peer again (the checker may
//! be the one that is wrong), the status pages say the upstream is in panic, and entering and
//! leaving it is logged once each. Real nginx, real backends on loopback; traffic is counted at
//! the backends.
mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// Deadline for what should happen within a few probe intervals.
const SOON: Duration = Duration::from_secs(5);

/// Probes every 100 ms, two failures take a peer down, two successes bring it back.
const CHECK: &str = "interval=100ms timeout=500ms fall=2 rise=2 uri=/health";

/// One peer of the first scenario: real traffic on `traffic`, probes on `health`, both on the
/// peer's own loopback address (so that `port=` can send every peer's probes to its own health
/// port).
struct Peer {
    traffic: Backend,
    health: Backend,
}

impl Peer {
    fn on(host: u8, traffic_port: u16, health_port: u16) -> Peer {
        Peer {
            traffic: Backend::on_addr([127, 0, 0, host], traffic_port),
            health: Backend::on_addr([127, 0, 0, host], health_port),
        }
    }

    fn addr(&self) -> String {
        self.traffic.addr()
    }
}

/// The status locations every scenario serves next to the proxy.
fn status_locations() -> &'static str {
    "    location = /status { upstream_healthcheck_status; }\n    \
     location = /status.json { upstream_healthcheck_status json; }\n    \
     location = /metrics { upstream_healthcheck_status prometheus; }\n"
}

fn json_status(port: u16) -> Value {
    strict_json(&status_page(port, "/status.json"))
}

/// `"panic"` of upstream `backend` in the JSON document.
fn json_panic(doc: &Value) -> &Value {
    &json_upstream(doc, "backend")["panic"]
}

/// GET / through nginx `n` times; every answer must be a 200 from a backend.
fn send(port: u16, n: usize) {
    for i in 0..n {
        let (status, headers, body) =
            http_get(port, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {headers}\n{body}");
    }
}

/// The value of the Prometheus sample `series` (the whole name with labels).
fn sample(metrics: &str, series: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

#[test]
fn with_fewer_than_panic_threshold_of_the_primaries_up_traffic_goes_to_every_primary() {
    let (traffic_port, health_port, port) = (free_port(), free_port(), free_port());
    // Four primaries, a backup and a peer marked down in nginx.conf, on 127.0.0.11..16.
    let primaries: Vec<Peer> = (11..=14)
        .map(|host| Peer::on(host, traffic_port, health_port))
        .collect();
    let backup = Peer::on(15, traffic_port, health_port);
    let marked_down = format!("127.0.0.16:{traffic_port}");
    let servers: String = primaries
        .iter()
        .map(|p| format!("    server {};\n", p.addr()))
        .collect();
    let nginx = Nginx::start_with(
        "worker_processes 2;",
        &format!(
            "upstream backend {{\n{servers}    server {} backup;\n    server {marked_down} down;\n    \
             upstream_healthcheck {CHECK} port={health_port} panic_threshold=50%;\n}}\n\
             server {{\n    listen 127.0.0.1:{port};\n    proxy_connect_timeout 1s;\n    \
             proxy_read_timeout 1s;\n    location / {{ proxy_pass http://backend; }}\n{}}}\n",
            backup.addr(),
            status_locations()
        ),
    );
    wait_until(SOON, "two probes of every checked peer", || {
        primaries
            .iter()
            .chain([&backup])
            .all(|p| p.health.hits("/health") >= 2)
    });
    let page = status_page(port, "/status");
    assert!(page.starts_with("Upstream backend\n"), "{page}");
    assert_eq!(json_panic(&json_status(port)), false);
    let metrics = status_page(port, "/metrics");
    let gauge = "nginx_upstream_healthcheck_upstream_panic{upstream=\"backend\"}";
    let counter = "nginx_upstream_healthcheck_panic_total{upstream=\"backend\"}";
    assert_eq!(sample(&metrics, gauge).as_deref(), Some("0"), "{metrics}");
    assert_eq!(sample(&metrics, counter).as_deref(), Some("0"), "{metrics}");
    assert!(
        metrics.contains("# TYPE nginx_upstream_healthcheck_upstream_panic gauge\n")
            && metrics.contains("# TYPE nginx_upstream_healthcheck_panic_total counter\n"),
        "{metrics}"
    );

    // Two of four fail their checks: 50% up is not fewer than 50%, so verdicts apply and the
    // two get no traffic.
    for p in &primaries[..2] {
        p.health.stop();
    }
    wait_until(SOON, "the first two primaries DOWN", || {
        let page = status_page(port, "/status");
        primaries[..2]
            .iter()
            .all(|p| peer_state(&page, "backend", &p.addr()) == Some("DOWN"))
    });
    assert!(status_page(port, "/status").starts_with("Upstream backend\n"));
    assert_eq!(json_panic(&json_status(port)), false);
    for p in primaries.iter().chain([&backup]) {
        p.traffic.reset_counts();
    }
    send(port, 20);
    let got: Vec<usize> = primaries.iter().map(|p| p.traffic.proxied()).collect();
    assert_eq!(&got[..2], [0, 0], "traffic reached a peer DOWN: {got:?}");
    assert_eq!(got[2] + got[3], 20, "{got:?}");

    // A third fails: 1 of 4 up is below 50%. The upstream is in panic and every primary takes
    // traffic again, in every worker.
    primaries[2].health.stop();
    wait_until(SOON, "the text page says panic", || {
        status_page(port, "/status").starts_with("Upstream backend (panic)\n")
    });
    let doc = json_status(port);
    assert_eq!(json_panic(&doc), true, "{doc}");
    for (i, p) in primaries.iter().enumerate() {
        let peer = json_peer(&doc, "backend", &p.addr());
        let verdict = if i < 3 { "down" } else { "up" };
        assert_eq!(peer["health"]["status"], verdict, "{peer}");
        assert_eq!(peer["down"], false, "nginx uses it: {peer}");
    }
    assert_eq!(json_peer(&doc, "backend", &marked_down)["down"], true);
    let metrics = status_page(port, "/metrics");
    assert_eq!(sample(&metrics, gauge).as_deref(), Some("1"), "{metrics}");
    assert_eq!(sample(&metrics, counter).as_deref(), Some("1"), "{metrics}");
    for p in &primaries {
        let series = format!(
            "nginx_upstream_healthcheck_peer_up{{upstream=\"backend\",peer=\"{}\",role=\"primary\"}}",
            p.addr()
        );
        assert_eq!(sample(&metrics, &series).as_deref(), Some("1"), "{metrics}");
    }
    for p in primaries.iter().chain([&backup]) {
        p.traffic.reset_counts();
    }
    let mut sent = 0;
    while sent < 200 && primaries.iter().any(|p| p.traffic.proxied() < 3) {
        send(port, 4);
        sent += 4;
    }
    let got: Vec<usize> = primaries.iter().map(|p| p.traffic.proxied()).collect();
    assert!(
        got.iter().all(|&n| n >= 3),
        "in panic every primary takes traffic; after {sent} requests: {got:?}"
    );
    assert_eq!(
        backup.traffic.proxied(),
        0,
        "the backup stays idle while primaries serve"
    );

    // The checks pass again: the second peer back makes 2 of 4, and panic ends.
    for p in &primaries[..3] {
        p.health.start();
    }
    wait_until(SOON, "every primary up and the panic over", || {
        let doc = json_status(port);
        json_panic(&doc) == false
            && primaries
                .iter()
                .all(|p| json_peer(&doc, "backend", &p.addr())["health"]["status"] == "up")
    });
    assert!(status_page(port, "/status").starts_with("Upstream backend\n"));
    let metrics = status_page(port, "/metrics");
    assert_eq!(sample(&metrics, gauge).as_deref(), Some("0"), "{metrics}");
    assert_eq!(sample(&metrics, counter).as_deref(), Some("1"), "{metrics}");

    let log = nginx.stop();
    let entered = lines_with(
        &log,
        "upstream_healthcheck: upstream \"backend\" is in panic",
    );
    assert_eq!(entered.len(), 1, "logged once, not per worker:\n{log}");
    assert!(
        entered[0].contains("[warn] ")
            && entered[0].contains(
                "upstream_healthcheck: upstream \"backend\" is in panic: 1 of 4 primary peers \
                 up, below panic_threshold=50%; verdicts are not applied"
            ),
        "{}",
        entered[0]
    );
    let left = lines_with(
        &log,
        "upstream_healthcheck: upstream \"backend\" leaves panic",
    );
    assert_eq!(left.len(), 1, "{log}");
    assert!(
        left[0].contains("[warn] ")
            && left[0].contains(
                "upstream_healthcheck: upstream \"backend\" leaves panic: 2 of 4 primary peers \
                 up, panic_threshold=50%; verdicts apply again"
            ),
        "{}",
        left[0]
    );
}

/// An upstream of three peers whose checks fail on A and B: 1 of 3 up, below 50%.
fn three_peers(a: &Backend, b: &Backend, c: &Backend, port: u16, panic: &str) -> String {
    format!(
        "upstream backend {{\n    server {};\n    server {};\n    server {};\n    \
         upstream_healthcheck {CHECK} {panic};\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    proxy_connect_timeout 1s;\n    \
         proxy_read_timeout 1s;\n    location / {{ proxy_pass http://backend; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n{}}}\n",
        a.addr(),
        b.addr(),
        c.addr(),
        status_locations()
    )
}

/// A change through the control API, which must be accepted.
fn admin(port: u16, query: &str) {
    let (status, _, body) =
        http_request(port, "POST", &format!("/admin?{query}"), "").expect("POST /admin");
    assert_eq!(status, 200, "{query}: {body}");
}

/// Resets the backends' counts, sends `n` requests, returns what each backend proxied.
fn spread(port: u16, backends: &[&Backend], n: usize) -> Vec<usize> {
    for b in backends {
        b.reset_counts();
    }
    send(port, n);
    backends.iter().map(|b| b.proxied()).collect()
}

#[test]
fn a_manual_down_holds_in_panic_and_restarts_and_reloads_judge_the_panic_afresh() {
    let (a, b, c) = (Backend::new(), Backend::new(), Backend::new());
    let port = free_port();
    for failing in [&a, &b] {
        failing.set_path_mode("/health", Mode::Status(503));
    }
    let mut nginx = Nginx::start(&three_peers(&a, &b, &c, port, "panic_threshold=50%"));
    wait_until(SOON, "the text page says panic", || {
        status_page(port, "/status").starts_with("Upstream backend (panic)\n")
    });
    let got = spread(port, &[&a, &b, &c], 30);
    assert!(
        got.iter().all(|&n| n > 0),
        "in panic all three serve: {got:?}"
    );

    // The operator takes A out: an explicit down holds in panic too.
    admin(port, &format!("t=gray&u=backend&p={}&a=set", a.addr()));
    let got = spread(port, &[&a, &b, &c], 30);
    assert!(
        got[0] == 0 && got[1] > 0 && got[2] > 0,
        "A is forced down, B serves in panic: {got:?}"
    );

    // Excluded, the upstream is unchecked and no page speaks of panic; when the exclusion ends,
    // checks restart with every peer up (3 of 3: the panic ends), and two probes later A and B
    // are down again: a second panic.
    admin(port, "t=ex&u=backend&a=set");
    assert!(status_page(port, "/status").starts_with("Upstream backend (NO checkers)\n"));
    let doc = json_status(port);
    assert!(
        json_upstream(&doc, "backend").get("panic").is_none(),
        "{doc}"
    );
    admin(port, "t=ex&u=backend&a=del");
    let panics = |port| {
        sample(
            &status_page(port, "/metrics"),
            "nginx_upstream_healthcheck_panic_total{upstream=\"backend\"}",
        )
    };
    wait_until(SOON, "a second panic after the checks restart", || {
        panics(port).as_deref() == Some("2")
    });
    assert!(status_page(port, "/status").starts_with("Upstream backend (panic)\n"));

    // A reload of the same configuration keeps the panic: not entered again, not logged again.
    nginx.reload();
    assert!(status_page(port, "/status").starts_with("Upstream backend (panic)\n"));
    assert_eq!(panics(port).as_deref(), Some("2"));
    let got = spread(port, &[&a, &b, &c], 30);
    assert!(got[0] == 0 && got[1] > 0 && got[2] > 0, "{got:?}");

    // A reload without panic_threshold ends it: the verdicts apply again at once.
    nginx.rewrite_conf(&three_peers(&a, &b, &c, port, ""));
    nginx.reload();
    let doc = json_status(port);
    assert_eq!(json_panic(&doc), false, "{doc}");
    assert_eq!(json_peer(&doc, "backend", &b.addr())["down"], true, "{doc}");
    assert!(status_page(port, "/status").starts_with("Upstream backend\n"));
    assert_eq!(spread(port, &[&a, &b, &c], 10), [0, 0, 10]);

    let log = nginx.stop();
    assert_eq!(
        lines_with(
            &log,
            "upstream \"backend\" is in panic: 1 of 3 primary peers up"
        )
        .len(),
        2,
        "{log}"
    );
    assert_eq!(
        lines_with(
            &log,
            "upstream \"backend\" leaves panic: 3 of 3 primary peers up, panic_threshold=50%"
        )
        .len(),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(
            &log,
            "upstream \"backend\" leaves panic: no panic_threshold; verdicts apply again"
        )
        .len(),
        1,
        "{log}"
    );
}
