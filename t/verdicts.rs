//! Verdicts as an operator sees them: each test starts a real nginx with the module and real
//! loopback backends, breaks or heals backends, and checks what a user can observe — the status
//! page, which backends proxied requests reach, the probes the backends receive, the error log.
mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Deadline for things that should happen within a few probe intervals.
const SOON: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A `server {}` on `port` proxying `/` to upstream `backend` and serving the status page.
fn proxy_server(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    proxy_connect_timeout 1s;\n    proxy_read_timeout 1s;\n    \
         location / {{ proxy_pass http://backend; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n"
    )
}

/// The status page body (asserting a 200).
fn status_page(port: u16) -> String {
    common::status_page(port, "/upstream_status")
}

/// `up`/`DOWN` of `peer` in `upstream` on a status page; None when not listed.
fn state_on_page(page: &str, upstream: &str, peer: &str) -> Option<String> {
    common::peer_state(page, upstream, peer).map(str::to_string)
}

fn peer_state(port: u16, upstream: &str, peer: &str) -> String {
    let page = status_page(port);
    state_on_page(&page, upstream, peer)
        .unwrap_or_else(|| panic!("peer {peer} of upstream {upstream} not on the page:\n{page}"))
}

/// Polls the status page until `peer` of `upstream` shows `want` (`up` or `DOWN`).
fn wait_state(port: u16, upstream: &str, peer: &str, want: &str) {
    let deadline = Instant::now() + SOON;
    let last = loop {
        let page = status_page(port);
        if state_on_page(&page, upstream, peer).as_deref() == Some(want) {
            return;
        }
        if Instant::now() >= deadline {
            break page;
        }
        thread::sleep(Duration::from_millis(20));
    };
    panic!("peer {peer} of upstream {upstream} not {want} after {SOON:?}; last page:\n{last}");
}

/// GET through the proxy, asserting a 200; returns the port named in `X-Backend`.
fn get_200(port: u16, path: &str) -> u16 {
    let (status, headers, body) =
        http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
    header(&headers, "x-backend")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no X-Backend header: {headers}"))
}

fn down_needle(peer: &str, upstream: &str) -> String {
    format!("upstream_healthcheck: peer {peer} in upstream \"{upstream}\" is DOWN")
}

fn up_needle(peer: &str, upstream: &str) -> String {
    format!("upstream_healthcheck: peer {peer} in upstream \"{upstream}\" is UP")
}

/// Error-log lines of proxied requests that went to `peer` (nginx names the upstream URL).
fn proxy_errors_for<'a>(log: &'a str, peer: &str) -> Vec<&'a str> {
    lines_with(log, &format!("upstream: \"http://{peer}/"))
}

/// Waits until `b` has received at least `n` requests for `path` in total.
fn wait_probes(b: &Backend, path: &str, n: usize, what: &str) {
    wait_until(SOON, what, || b.hits(path) >= n);
}

/// A bare TCP server that records the raw bytes each connection sends (until the end of a
/// request head, or until the client closes), answering `HTTP/1.0 200 OK` to complete heads.
struct RawServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawServer {
    fn new() -> RawServer {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind raw server");
        listener.set_nonblocking(true).expect("nonblocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, r, s) = (
            Arc::clone(&connections),
            Arc::clone(&received),
            Arc::clone(&stop),
        );
        let acceptor = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let r = Arc::clone(&r);
                        thread::spawn(move || {
                            let bytes = raw_exchange(stream);
                            r.lock().unwrap().push(bytes);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawServer {
            port,
            connections,
            received,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The bytes of every finished connection, in completion order.
    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn raw_exchange(mut stream: TcpStream) -> Vec<u8> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if !answered && got.windows(4).any(|w| w == b"\r\n\r\n") {
            answered = true;
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            // Keep reading briefly: anything sent after the head is recorded too.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// 1. Refused connections

#[test]
fn closed_port_goes_down_after_fall_probes_and_gets_no_traffic() {
    let a = Backend::new();
    let b = Backend::new();
    let dead = Backend::new();
    dead.stop(); // connections to its port are refused from the start
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health;\n}}\n{}",
        a.addr(),
        b.addr(),
        dead.addr(),
        proxy_server(port)
    ));

    wait_state(port, "backend", &dead.addr(), "DOWN");
    assert_eq!(peer_state(port, "backend", &a.addr()), "up");
    assert_eq!(peer_state(port, "backend", &b.addr()), "up");
    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&dead.addr(), "backend"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("[warn]")
            && down[0].ends_with("is DOWN after 2 failed checks, last error: connection refused"),
        "{}",
        down[0]
    );

    let mark = log.len();
    let mut answered_by: HashMap<u16, usize> = HashMap::new();
    for i in 0..30 {
        *answered_by
            .entry(get_200(port, &format!("/app/{i}")))
            .or_default() += 1;
    }
    assert_eq!(answered_by.get(&dead.port()), None, "{answered_by:?}");
    assert_eq!(a.proxied() + b.proxied(), 30, "{answered_by:?}");
    assert!(a.proxied() > 0 && b.proxied() > 0, "{answered_by:?}");
    let log = nginx.error_log();
    let tried = proxy_errors_for(&log[mark..], &dead.addr());
    assert!(
        tried.is_empty(),
        "nginx still connected to the dead peer:\n{}",
        tried.join("\n")
    );
    assert_eq!(peer_state(port, "backend", &dead.addr()), "DOWN");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. Bad status

#[test]
fn status_outside_valid_statuses_goes_down_and_is_logged_once() {
    let good = Backend::new();
    let bad = Backend::new();
    bad.set_mode(Mode::Status(500));
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=3 rise=2 uri=/health;\n}}\n{}",
        good.addr(),
        bad.addr(),
        proxy_server(port)
    ));

    wait_state(port, "backend", &bad.addr(), "DOWN");
    // Fall probes were needed, and probing goes on while the peer is down.
    let at_down = bad.hits("/health");
    assert!(at_down >= 3, "DOWN after only {at_down} probes");
    wait_probes(
        &bad,
        "/health",
        at_down + 5,
        "five more probes of the down peer",
    );
    assert_eq!(peer_state(port, "backend", &bad.addr()), "DOWN");
    assert_eq!(peer_state(port, "backend", &good.addr()), "up");

    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&bad.addr(), "backend"));
    assert_eq!(
        down.len(),
        1,
        "the DOWN transition must be logged exactly once:\n{log}"
    );
    let line = down[0];
    assert!(line.contains("[warn]"), "{line}");
    assert!(line.contains("is DOWN after 3 failed checks"), "{line}");
    assert!(line.contains("last error: "), "{line}");
    assert!(
        line.contains("500"),
        "the last error names the status: {line}"
    );
    assert!(
        lines_with(&log, &down_needle(&good.addr(), "backend")).is_empty(),
        "{log}"
    );
    assert!(lines_with(&log, "is UP after").is_empty(), "{log}");

    for i in 0..10 {
        assert_eq!(get_200(port, &format!("/app/{i}")), good.port());
    }
    assert_eq!(bad.proxied(), 0);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. Timeout

#[test]
fn backend_that_never_answers_goes_down_by_timeout_and_gets_no_traffic() {
    let good = Backend::new();
    let hung = Backend::new();
    hung.set_mode(Mode::Hang);
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=250ms fall=2 rise=2 uri=/health;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    proxy_read_timeout 500ms;\n    \
         location / {{ proxy_pass http://backend; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        good.addr(),
        hung.addr(),
    ));

    wait_state(port, "backend", &hung.addr(), "DOWN");
    assert!(hung.hits("/health") >= 2, "probes reached the hung backend");
    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&hung.addr(), "backend"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("[warn]")
            && down[0].contains("after 2 failed checks, last error: timed out"),
        "{}",
        down[0]
    );

    let proxied_at_down = hung.proxied();
    assert_eq!(proxied_at_down, 0);
    for i in 0..20 {
        assert_eq!(get_200(port, &format!("/app/{i}")), good.port());
    }
    assert_eq!(
        hung.proxied(),
        proxied_at_down,
        "a proxied request reached the hung backend"
    );
    assert_eq!(good.proxied(), 20);

    // It answers again and comes back. (No probe is left hanging when nginx stops: that case
    // is `graceful_stop_with_a_probe_in_flight_leaves_no_open_socket`.)
    hung.set_mode(Mode::Status(200));
    wait_state(port, "backend", &hung.addr(), "up");
    nginx.stop();
}

/// nginx stopped (SIGQUIT) while a probe waits for a backend that never answers: the worker
/// must close the probe's connection, not leave it open ("open socket ... left in connection").
#[test]
fn graceful_stop_with_a_probe_in_flight_leaves_no_open_socket() {
    let hung = Backend::new();
    hung.set_mode(Mode::Hang);
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=5s fall=2 rise=2 uri=/health;\n}}\n{}",
        hung.addr(),
        proxy_server(port)
    ));
    wait_probes(&hung, "/health", 1, "a probe waiting on the hung backend");
    let log = nginx.stop();
    assert!(!log.contains("open socket"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// 4. Recovery

#[test]
fn down_peer_comes_back_up_after_rise_good_probes_and_gets_traffic_again() {
    let steady = Backend::new();
    let flaky = Backend::new();
    flaky.stop();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=3 uri=/health;\n}}\n{}",
        steady.addr(),
        flaky.addr(),
        proxy_server(port)
    ));

    wait_state(port, "backend", &flaky.addr(), "DOWN");
    for i in 0..6 {
        assert_eq!(get_200(port, &format!("/while-down/{i}")), steady.port());
    }

    // The backend comes back: rise good probes bring the peer up.
    flaky.start();
    let mut saw_up_after = None;
    wait_until(SOON, "flaky peer back up", || {
        let page = status_page(port);
        let probes = flaky.hits("/health");
        if state_on_page(&page, "backend", &flaky.addr()).as_deref() == Some("up") {
            saw_up_after = Some(probes);
            true
        } else {
            false
        }
    });
    let probes = saw_up_after.unwrap();
    assert!(probes >= 3, "UP after only {probes} good probes (rise=3)");

    // Probing goes on; the UP transition is logged once.
    wait_probes(
        &flaky,
        "/health",
        probes + 3,
        "three more probes of the recovered peer",
    );
    let log = nginx.error_log();
    let up = lines_with(&log, &up_needle(&flaky.addr(), "backend"));
    assert_eq!(
        up.len(),
        1,
        "the UP transition must be logged exactly once:\n{log}"
    );
    assert!(
        up[0].contains("[warn]") && up[0].contains("is UP after 3 successful checks"),
        "{}",
        up[0]
    );
    assert_eq!(
        lines_with(&log, &down_needle(&flaky.addr(), "backend")).len(),
        1,
        "{log}"
    );

    // It serves again.
    let mut answered_by: HashMap<u16, usize> = HashMap::new();
    for i in 0..20 {
        *answered_by
            .entry(get_200(port, &format!("/app/{i}")))
            .or_default() += 1;
    }
    assert!(
        flaky.proxied() >= 5,
        "the recovered peer got {} of 20 requests: {answered_by:?}",
        flaky.proxied()
    );
    assert_eq!(flaky.proxied() + steady.proxied(), 20 + 6);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 5. Backup peers

#[test]
fn backup_serves_only_when_every_primary_is_down() {
    let p1 = Backend::new();
    let p2 = Backend::new();
    let spare = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    server {} backup;\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health;\n}}\n{}",
        p1.addr(),
        p2.addr(),
        spare.addr(),
        proxy_server(port)
    ));

    // The backup is probed like the primaries, and stays idle while they are healthy.
    wait_probes(&spare, "/health", 2, "probes of the backup peer");
    for i in 0..20 {
        let by = get_200(port, &format!("/app/{i}"));
        assert!(by == p1.port() || by == p2.port(), "answered by {by}");
    }
    assert_eq!(spare.proxied(), 0);
    assert_eq!(p1.proxied() + p2.proxied(), 20);

    // One primary down: the other one takes everything, still not the backup.
    p1.stop();
    wait_state(port, "backend", &p1.addr(), "DOWN");
    for i in 0..6 {
        assert_eq!(get_200(port, &format!("/one-left/{i}")), p2.port());
    }
    assert_eq!(spare.proxied(), 0);

    // Every primary down: the backup answers.
    p2.stop();
    wait_state(port, "backend", &p2.addr(), "DOWN");
    assert_eq!(peer_state(port, "backend", &spare.addr()), "up");
    for i in 0..10 {
        assert_eq!(get_200(port, &format!("/backup/{i}")), spare.port());
    }
    assert_eq!(spare.proxied(), 10);

    // A primary recovers: the backup is idle again.
    p1.start();
    wait_state(port, "backend", &p1.addr(), "up");
    for i in 0..6 {
        assert_eq!(get_200(port, &format!("/back/{i}")), p1.port());
    }
    assert_eq!(spare.proxied(), 10);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. `down` in nginx.conf

#[test]
fn peer_marked_down_in_config_is_down_never_probed_and_gets_no_traffic() {
    let live = Backend::new();
    let off = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {} down;\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health;\n}}\n{}",
        live.addr(),
        off.addr(),
        proxy_server(port)
    ));

    assert_eq!(peer_state(port, "backend", &off.addr()), "DOWN");
    // Several intervals pass (the live peer is probed again and again)...
    wait_probes(&live, "/health", 5, "five probes of the live peer");
    // ...and the peer marked down was never contacted.
    assert_eq!(
        off.connections(),
        0,
        "the config-down peer was connected to"
    );
    assert_eq!(peer_state(port, "backend", &off.addr()), "DOWN");
    assert_eq!(peer_state(port, "backend", &live.addr()), "up");

    for i in 0..20 {
        assert_eq!(get_200(port, &format!("/app/{i}")), live.port());
    }
    assert_eq!(off.connections(), 0);
    let log = nginx.error_log();
    assert!(
        lines_with(&log, &format!("peer {} ", off.addr())).is_empty(),
        "{log}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. upstream_healthcheck_valid_statuses

#[test]
fn valid_statuses_lists_ranges_and_exclusions_decide_verdicts() {
    // default_down=on: a peer shows up only once its probes passed.
    let found = Backend::new(); // 302, valid with "200 302"
    found.set_mode(Mode::Status(302));
    let moved = Backend::new(); // 301, not in "200 302"
    moved.set_mode(Mode::Status(301));
    let no_content = Backend::new(); // 204, in 2xx
    no_content.set_mode(Mode::Status(204));
    let redirect = Backend::new(); // 302, not in 2xx
    redirect.set_mode(Mode::Status(302));
    // default_down=off: "!502" accepts everything but 502.
    let not_found = Backend::new();
    not_found.set_mode(Mode::Status(404));
    let error = Backend::new();
    error.set_mode(Mode::Status(500));
    let bad_gateway = Backend::new();
    bad_gateway.set_mode(Mode::Status(502));

    let hc = "upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health";
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream list {{\n    server {};\n    server {};\n    {hc} default_down=on;\n    \
         upstream_healthcheck_valid_statuses 200 302;\n}}\n\
         upstream range {{\n    server {};\n    server {};\n    {hc} default_down=on;\n    \
         upstream_healthcheck_valid_statuses 2xx;\n}}\n\
         upstream except {{\n    server {};\n    server {};\n    server {};\n    {hc};\n    \
         upstream_healthcheck_valid_statuses !502;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        found.addr(),
        moved.addr(),
        no_content.addr(),
        redirect.addr(),
        not_found.addr(),
        error.addr(),
        bad_gateway.addr(),
    ));

    wait_state(port, "list", &found.addr(), "up");
    wait_state(port, "range", &no_content.addr(), "up");
    wait_state(port, "except", &bad_gateway.addr(), "DOWN");

    // Enough probes for any verdict to have been reached: the others did not change.
    for b in [&moved, &redirect, &not_found, &error] {
        wait_probes(b, "/health", 4, "four probes");
    }
    let page = status_page(port);
    let want = [
        ("list", &found, "up"),
        ("list", &moved, "DOWN"),
        ("range", &no_content, "up"),
        ("range", &redirect, "DOWN"),
        ("except", &not_found, "up"),
        ("except", &error, "up"),
        ("except", &bad_gateway, "DOWN"),
    ];
    for (upstream, b, state) in want {
        assert_eq!(
            state_on_page(&page, upstream, &b.addr()).as_deref(),
            Some(state),
            "{upstream} {} ({:?}):\n{page}",
            b.addr(),
            b.mode()
        );
    }

    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&bad_gateway.addr(), "except"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(down[0].contains("502"), "{}", down[0]);
    for b in [&not_found, &error] {
        assert!(
            lines_with(&log, &down_needle(&b.addr(), "except")).is_empty(),
            "{log}"
        );
    }
    // Peers that started down and never passed were not "taken down": no DOWN line.
    for (b, up) in [(&moved, "list"), (&redirect, "range")] {
        assert!(
            lines_with(&log, &format!("peer {} in upstream \"{up}\"", b.addr())).is_empty(),
            "{log}"
        );
    }
    assert_eq!(
        lines_with(&log, &up_needle(&found.addr(), "list")).len(),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &up_needle(&no_content.addr(), "range")).len(),
        1,
        "{log}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 8. The probe request

#[test]
fn probe_request_is_the_default_get_or_the_configured_bytes() {
    let plain = RawServer::new();
    let custom_host = RawServer::new();
    let raw = RawServer::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream plain_up {{\n    server {};\n    upstream_healthcheck interval=100ms timeout=500ms;\n}}\n\
         upstream hosted_up {{\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=500ms uri=/probe/path?x=1 host=probe.example.com;\n}}\n\
         upstream raw_up {{\n    server {};\n    upstream_healthcheck interval=100ms timeout=500ms;\n    \
         upstream_healthcheck_request \"HEAD /status HTTP/1.1\\r\\nHost: foo.com\\r\\nX-Probe: yes\\r\\n\\r\\n\";\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        plain.addr(),
        custom_host.addr(),
        raw.addr(),
    ));

    let version = env!("CARGO_PKG_VERSION");
    let expected = [
        (
            &plain,
            format!(
                "GET / HTTP/1.0\r\nHost: plain_up\r\nUser-Agent: nginx-upstream-healthcheck/{version}\r\n\
                 Connection: close\r\n\r\n"
            ),
        ),
        (
            &custom_host,
            format!(
                "GET /probe/path?x=1 HTTP/1.0\r\nHost: probe.example.com\r\n\
                 User-Agent: nginx-upstream-healthcheck/{version}\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            &raw,
            "HEAD /status HTTP/1.1\r\nHost: foo.com\r\nX-Probe: yes\r\n\r\n".to_string(),
        ),
    ];
    for (server, want) in &expected {
        wait_until(SOON, "three probes recorded", || {
            server.received().len() >= 3
        });
        for got in server.received() {
            assert_eq!(
                String::from_utf8_lossy(&got),
                *want,
                "probe bytes received by {}",
                server.addr()
            );
        }
    }
    let page = status_page(port);
    for (upstream, server) in [
        ("plain_up", &plain),
        ("hosted_up", &custom_host),
        ("raw_up", &raw),
    ] {
        assert_eq!(
            state_on_page(&page, upstream, &server.addr()).as_deref(),
            Some("up"),
            "{page}"
        );
    }
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 9. port=N

#[test]
fn port_parameter_sends_probes_to_that_port_instead_of_the_peer_port() {
    // Peer port closed, health port serving: the peer comes up (it starts down).
    let health = Backend::new();
    let closed_peer_port = free_port();
    // Peer port serving, health port closed: the peer goes down, its own port never probed.
    let serving = Backend::new();
    let closed_health_port = free_port();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream via_health_port {{\n    server 127.0.0.1:{closed_peer_port};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health port={} default_down=on;\n}}\n\
         upstream to_closed_port {{\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health port={closed_health_port};\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        health.port(),
        serving.addr(),
    ));

    let peer = format!("127.0.0.1:{closed_peer_port}");
    wait_state(port, "via_health_port", &peer, "up");
    assert!(
        health.hits("/health") >= 2,
        "probes went to the health port"
    );
    wait_state(port, "to_closed_port", &serving.addr(), "DOWN");
    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&serving.addr(), "to_closed_port"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("last error: connection refused"),
        "{}",
        down[0]
    );
    assert_eq!(serving.connections(), 0, "the peer's own port was probed");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 10. type=tcp

#[test]
fn tcp_checks_only_connect_and_send_nothing() {
    let listening = RawServer::new();
    let closed = free_port();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream tcp_up {{\n    server {};\n    server 127.0.0.1:{closed};\n    \
         upstream_healthcheck type=tcp interval=100ms timeout=300ms fall=2 rise=2;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        listening.addr(),
    ));

    let closed_peer = format!("127.0.0.1:{closed}");
    wait_state(port, "tcp_up", &closed_peer, "DOWN");
    wait_until(SOON, "four tcp probes finished", || {
        listening.received().len() >= 4
    });
    assert_eq!(peer_state(port, "tcp_up", &listening.addr()), "up");
    assert!(listening.connections() >= 4);
    for got in listening.received() {
        assert!(
            got.is_empty(),
            "a tcp probe sent data: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&closed_peer, "tcp_up"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("last error: connection refused"),
        "{}",
        down[0]
    );
    assert!(
        lines_with(&log, &down_needle(&listening.addr(), "tcp_up")).is_empty(),
        "{log}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 11. default_down

#[test]
fn default_down_on_starts_peers_down_until_rise_good_probes() {
    let late = Backend::new();
    late.set_mode(Mode::Status(500)); // not healthy yet: keeps the peer at its initial state
    let eager = Backend::new();
    let failing = Backend::new();
    failing.set_mode(Mode::Status(500));
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream starts_down {{\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=3 uri=/health default_down=on;\n}}\n\
         upstream starts_up {{\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=300ms timeout=300ms fall=10 rise=2 uri=/health default_down=off;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        late.addr(),
        eager.addr(),
        failing.addr(),
    ));

    // default_down=off: up from the start, even a failing peer until `fall` failures.
    let page = status_page(port);
    let failing_probes = failing.hits("/health");
    assert!(
        failing_probes < 10,
        "{failing_probes} probes already (test too slow to judge)"
    );
    assert_eq!(
        state_on_page(&page, "starts_up", &eager.addr()).as_deref(),
        Some("up"),
        "{page}"
    );
    assert_eq!(
        state_on_page(&page, "starts_up", &failing.addr()).as_deref(),
        Some("up"),
        "{page}"
    );
    // default_down=on: down from the start.
    assert_eq!(
        state_on_page(&page, "starts_down", &late.addr()).as_deref(),
        Some("DOWN"),
        "{page}"
    );

    // Still down after many failed probes, and it never "went" down: it started there.
    wait_probes(&late, "/health", 4, "four probes of the default-down peer");
    assert_eq!(peer_state(port, "starts_down", &late.addr()), "DOWN");
    // The backend gets healthy: rise good probes bring the peer up.
    late.set_mode(Mode::Status(200));
    let mut probes_at_up = 0;
    wait_until(SOON, "default-down peer up", || {
        let page = status_page(port);
        probes_at_up = late.hits("/health");
        state_on_page(&page, "starts_down", &late.addr()).as_deref() == Some("up")
    });
    assert!(
        probes_at_up >= 4 + 3,
        "up after {probes_at_up} probes, rise=3"
    );

    let log = nginx.error_log();
    assert!(
        lines_with(&log, &down_needle(&late.addr(), "starts_down")).is_empty(),
        "{log}"
    );
    let up = lines_with(&log, &up_needle(&late.addr(), "starts_down"));
    assert_eq!(up.len(), 1, "{log}");
    assert!(
        up[0].contains("is UP after 3 successful checks"),
        "{}",
        up[0]
    );
    assert_eq!(peer_state(port, "starts_up", &eager.addr()), "up");
    assert!(
        lines_with(&log, &up_needle(&eager.addr(), "starts_up")).is_empty(),
        "{log}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 12. Other balancers

#[test]
fn least_conn_and_hash_upstreams_skip_dead_peers() {
    let lc1 = Backend::new();
    let lc2 = Backend::new();
    // Fails its health checks but would answer proxied requests: any leak would be counted.
    let lc_sick = Backend::new();
    lc_sick.set_path_mode("/health", Mode::Status(503));
    let h1 = Backend::new();
    let h2 = Backend::new();
    let h_dead = Backend::new();
    h_dead.stop();
    let port = free_port();
    let hc = "upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health;";
    let nginx = Nginx::start(&format!(
        "upstream lc {{\n    least_conn;\n    server {};\n    server {};\n    server {};\n    {hc}\n}}\n\
         upstream hashed {{\n    hash $request_uri;\n    server {};\n    server {};\n    server {};\n    {hc}\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    proxy_connect_timeout 1s;\n    proxy_read_timeout 1s;\n    \
         location /lc/ {{ proxy_pass http://lc; }}\n    location /hash/ {{ proxy_pass http://hashed; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        lc1.addr(),
        lc2.addr(),
        lc_sick.addr(),
        h1.addr(),
        h2.addr(),
        h_dead.addr(),
    ));

    wait_state(port, "lc", &lc_sick.addr(), "DOWN");
    wait_state(port, "hashed", &h_dead.addr(), "DOWN");
    let mark = nginx.error_log().len();

    for i in 0..30 {
        let by = get_200(port, &format!("/lc/{i}"));
        assert!(
            by == lc1.port() || by == lc2.port(),
            "least_conn answered by {by}"
        );
    }
    assert_eq!(
        lc_sick.proxied(),
        0,
        "least_conn sent requests to the down peer"
    );
    assert_eq!(lc1.proxied() + lc2.proxied(), 30);
    assert!(lc1.proxied() > 0 && lc2.proxied() > 0);

    let mut hash_by: HashMap<u16, usize> = HashMap::new();
    for i in 0..30 {
        let by = get_200(port, &format!("/hash/item-{i}?v={}", i * 7));
        assert!(by == h1.port() || by == h2.port(), "hash answered by {by}");
        *hash_by.entry(by).or_default() += 1;
    }
    assert_eq!(h1.proxied() + h2.proxied(), 30, "{hash_by:?}");
    // The same URI keeps going to the same live peer.
    let first = get_200(port, "/hash/item-3?v=21");
    for _ in 0..3 {
        assert_eq!(get_200(port, "/hash/item-3?v=21"), first);
    }
    let log = nginx.error_log();
    let tried = proxy_errors_for(&log[mark..], &h_dead.addr());
    assert!(
        tried.is_empty(),
        "hash still connected to the dead peer:\n{}",
        tried.join("\n")
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 13. The text status page

#[test]
fn text_status_page_shows_every_upstream_in_the_documented_format() {
    let a = Backend::new();
    let dead = Backend::new();
    dead.stop();
    let off = Backend::new();
    let spare = Backend::new();
    let other = Backend::new();
    let other_spare = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n    server {};\n    server {};\n    server {} down;\n    server {} backup;\n    \
         upstream_healthcheck interval=100ms timeout=300ms fall=2 rise=2 uri=/health;\n}}\n\
         upstream other {{\n    server {};\n    server {} backup;\n}}\n{}",
        a.addr(),
        dead.addr(),
        off.addr(),
        spare.addr(),
        other.addr(),
        other_spare.addr(),
        proxy_server(port)
    ));

    wait_state(port, "backend", &dead.addr(), "DOWN");
    wait_probes(&spare, "/health", 3, "probes of the backup peer");
    let (status, headers, body) = http_get(port, "/upstream_status").unwrap();
    assert_eq!(status, 200);
    let expected = format!(
        "Upstream backend\n\
         \x20   Primary Peers\n\
         \x20       {} up\n\
         \x20       {} DOWN\n\
         \x20       {} DOWN\n\
         \x20   Backup Peers\n\
         \x20       {} up\n\
         \n\
         Upstream other (NO checkers)\n\
         \x20   Primary Peers\n\
         \x20       {} up\n\
         \x20   Backup Peers\n\
         \x20       {} up\n",
        a.addr(),
        dead.addr(),
        off.addr(),
        spare.addr(),
        other.addr(),
        other_spare.addr(),
    );
    assert_eq!(body, expected);
    let content_type = header(&headers, "content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{headers}");
    assert_eq!(
        header(&headers, "content-length").as_deref(),
        Some(body.len().to_string().as_str()),
        "{headers}"
    );

    let (status, headers, head_body) =
        http_request(port, "HEAD", "/upstream_status", "").expect("HEAD");
    assert_eq!(status, 200, "{headers}");
    assert_eq!(head_body, "");
    assert!(
        header(&headers, "content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{headers}"
    );

    let (status, headers, _) = http_request(port, "POST", "/upstream_status", "x=1").expect("POST");
    assert_eq!(status, 405, "{headers}");
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 14. upstream_healthcheck off

#[test]
fn healthcheck_off_leaves_the_upstream_unchecked() {
    let unchecked = Backend::new();
    let checked = Backend::new();
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "upstream plain {{\n    server {};\n    upstream_healthcheck off;\n}}\n\
         upstream watched {{\n    server {};\n    \
         upstream_healthcheck interval=100ms timeout=300ms uri=/health;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://plain; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        unchecked.addr(),
        checked.addr(),
    ));

    wait_probes(&checked, "/health", 5, "probes of the checked upstream");
    assert_eq!(
        unchecked.connections(),
        0,
        "the unchecked upstream was probed"
    );
    let page = status_page(port);
    assert!(page.contains("Upstream plain (NO checkers)\n"), "{page}");
    assert!(page.contains("Upstream watched\n"), "{page}");
    assert_eq!(
        state_on_page(&page, "plain", &unchecked.addr()).as_deref(),
        Some("up"),
        "{page}"
    );
    assert_eq!(get_200(port, "/app"), unchecked.port());
    assert_eq!(unchecked.connections(), 1);
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 15. First probes

#[test]
fn first_probes_arrive_within_one_interval_of_start() {
    let backends: Vec<Backend> = (0..4).map(|_| Backend::new()).collect();
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {};\n", b.addr()))
        .collect();
    let port = free_port();
    let spawned = Instant::now();
    let nginx = Nginx::start(&format!(
        "upstream backend {{\n{servers}    upstream_healthcheck interval=1s timeout=500ms uri=/health;\n}}\n{}",
        proxy_server(port)
    ));
    let ready = Instant::now();

    for b in &backends {
        wait_until(Duration::from_secs(4), "two probes of every peer", || {
            b.hits("/health") >= 2
        });
    }
    let mut firsts = Vec::new();
    for b in &backends {
        let arrivals = b.arrivals("/health");
        let first = arrivals[0];
        firsts.push(first.duration_since(spawned));
        // The worker starts between `spawned` and `ready`; its first probes fall in its first
        // interval.
        assert!(
            first <= ready + Duration::from_millis(1200),
            "first probe of {} {:?} after nginx was ready",
            b.addr(),
            first.duration_since(ready)
        );
        let gap = arrivals[1].duration_since(first);
        assert!(
            gap >= Duration::from_millis(800) && gap <= Duration::from_millis(2500),
            "second probe of {} {gap:?} after the first (interval=1s)",
            b.addr()
        );
    }
    eprintln!(
        "first probes after spawn: {firsts:?} (nginx ready after {:?})",
        ready.duration_since(spawned)
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 16. fast_interval and down_interval

/// Waits for the next probe of `b`, then makes `b` answer `status`: the probes from the
/// returned index (into `b.arrivals("/health")`) on get it. The next probe is an interval (at
/// least 1 s here) away, so none slips in between.
fn answer_from_next_probe(b: &Backend, status: u16) -> usize {
    let seen = b.hits("/health");
    wait_until(SOON, "the next probe", || b.hits("/health") > seen);
    // The probe just seen is answered as before.
    thread::sleep(Duration::from_millis(100));
    b.set_mode(Mode::Status(status));
    b.hits("/health")
}

/// When probe number `i` (0-based) of `b` arrived.
fn probe_arrival(b: &Backend, i: usize) -> Instant {
    poll(SOON, &format!("probe {i} of {}", b.addr()), || {
        b.arrivals("/health")
            .get(i)
            .copied()
            .ok_or_else(|| format!("{} probes", b.hits("/health")))
    })
}

#[test]
fn fast_interval_takes_a_failing_peer_down_within_its_fall_probes_not_fall_intervals() {
    let quick = Backend::new();
    let plain = Backend::new();
    let port = free_port();
    let check = "upstream_healthcheck interval=2s timeout=500ms fall=3 rise=2 uri=/health";
    let nginx = Nginx::start(&format!(
        "{}{}{}",
        upstream_block(
            "backend",
            &[quick.addr()],
            &format!("{check} fast_interval=100ms;")
        ),
        upstream_block("plain", &[plain.addr()], &format!("{check};")),
        proxy_server(port)
    ));

    // With fast_interval=100ms, the first failed probe is followed by two more 100 ms apart:
    // the peer is DOWN about 200 ms after it, not two intervals (4 s) later.
    let first = answer_from_next_probe(&quick, 500);
    let first_failed = probe_arrival(&quick, first);
    wait_state(port, "backend", &quick.addr(), "DOWN");
    let down_after = first_failed.elapsed();
    assert!(
        down_after < Duration::from_millis(1500),
        "DOWN {down_after:?} after the first failed probe (fall=3, fast_interval=100ms)"
    );
    let arrivals = quick.arrivals("/health");
    for pair in arrivals[first..first + 3].windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap < Duration::from_millis(1000),
            "failed probes {gap:?} apart (fast_interval=100ms)"
        );
    }
    let log = nginx.error_log();
    let down = lines_with(&log, &down_needle(&quick.addr(), "backend"));
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("is DOWN after 3 failed checks"),
        "{}",
        down[0]
    );

    // The same check without fast_interval is still up at that point: its failed probes are
    // an interval apart.
    let first = answer_from_next_probe(&plain, 500);
    let first_failed = probe_arrival(&plain, first);
    thread::sleep(
        (first_failed + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(peer_state(port, "plain", &plain.addr()), "up");
    wait_state(port, "plain", &plain.addr(), "DOWN");
    assert!(
        first_failed.elapsed() >= Duration::from_millis(3500),
        "without fast_interval, DOWN two intervals after the first failed probe, not {:?}",
        first_failed.elapsed()
    );
    nginx.stop();
}

#[test]
fn down_interval_spaces_the_probes_of_a_down_peer_and_fast_interval_brings_it_back() {
    let steady = Backend::new();
    let sick = Backend::new();
    sick.set_mode(Mode::Status(500));
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "{}{}",
        upstream_block(
            "backend",
            &[steady.addr(), sick.addr()],
            "upstream_healthcheck interval=3s fast_interval=100ms down_interval=1s \
             timeout=500ms fall=2 rise=3 uri=/health;"
        ),
        proxy_server(port)
    ));

    wait_state(port, "backend", &sick.addr(), "DOWN");
    // While it is down, the peer is probed every down_interval (1s), neither at interval (3s)
    // nor at fast_interval (100ms).
    let at_down = sick.hits("/health");
    wait_until(
        Duration::from_secs(10),
        "four probes of the down peer",
        || sick.hits("/health") >= at_down + 4,
    );
    let arrivals = sick.arrivals("/health");
    for pair in arrivals[at_down - 1..at_down + 4].windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(600) && gap <= Duration::from_millis(2000),
            "probes of the down peer {gap:?} apart (down_interval=1s): {:?}",
            arrivals.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        );
    }
    assert_eq!(peer_state(port, "backend", &sick.addr()), "DOWN");

    // It answers again: after the first good probe its verdict is in doubt, so the rest of the
    // rise probes follow at fast_interval, and it is up about 200 ms later, not 2 s.
    let first = answer_from_next_probe(&sick, 200);
    let first_good = probe_arrival(&sick, first);
    wait_state(port, "backend", &sick.addr(), "up");
    let up_after = first_good.elapsed();
    assert!(
        up_after < Duration::from_millis(1200),
        "UP {up_after:?} after the first good probe (rise=3, fast_interval=100ms)"
    );
    let log = nginx.error_log();
    let up = lines_with(&log, &up_needle(&sick.addr(), "backend"));
    assert_eq!(up.len(), 1, "{log}");
    assert!(
        up[0].contains("is UP after 3 successful checks"),
        "{}",
        up[0]
    );
    nginx.stop();
}
