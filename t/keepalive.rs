//! Keepalive probes as the backend sees them: `keepalive=N` sends N probes down one connection
//! (nginx's own `$connection_requests` in a backend's access log says so), a connection the
//! backend closed while idle is not a failure, and a peer that goes down holds no connection.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

/// The access log format of `logged_backend`s: `$connection $connection_requests "$request"`.
const PROBES_LOG_FORMAT: &str =
    "log_format probes '$connection $connection_requests \"$request\"';\n";

/// A backend `server {}` of the nginx under test on `port`, answering 200 on every path and
/// logging in `PROBES_LOG_FORMAT` to `log`.
fn logged_backend(port: u16, log: &Path, extra: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    access_log {} probes;\n    {extra}\n    \
         location / {{ return 200 \"ok\\n\"; }}\n}}\n",
        log.display()
    )
}

/// A server on `port` with the JSON status page at `/status` and the control API at `/admin`.
fn status_server(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    \
         location = /status {{ upstream_healthcheck_status json; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n}}\n"
    )
}

/// The backend's access log as (connection, requests on it, request line), in order.
fn probes_logged(log: &Path) -> Vec<(u64, u64, String)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let conn = f.next()?.parse().ok()?;
            let n = f.next()?.parse().ok()?;
            Some((conn, n, f.next()?.trim_matches('"').to_string()))
        })
        .collect()
}

/// `$connection_requests` of each connection, in order: how many probes each carried.
fn probes_per_connection(logged: &[(u64, u64, String)]) -> Vec<u64> {
    let mut by_conn: BTreeMap<u64, u64> = BTreeMap::new();
    for (conn, n, _) in logged {
        let max = by_conn.entry(*conn).or_default();
        *max = (*max).max(*n);
    }
    by_conn.into_values().collect()
}

fn health(status_port: u16, upstream: &str, peer: &str) -> serde_json::Value {
    let doc = strict_json(&status_page(status_port, "/status"));
    json_peer(&doc, upstream, peer)["health"].clone()
}

#[test]
fn keepalive_sends_n_probes_down_each_connection_and_the_default_one() {
    let (kept_port, fresh_port, status_port) = (free_port(), free_port(), free_port());
    let prefix = TempPrefix::new();
    let (kept_log, fresh_log) = (
        prefix.path().join("kept.log"),
        prefix.path().join("fresh.log"),
    );
    let conf = [
        PROBES_LOG_FORMAT.to_string(),
        logged_backend(kept_port, &kept_log, ""),
        logged_backend(fresh_port, &fresh_log, ""),
        status_server(status_port),
        upstream_block(
            "kept",
            &[format!("127.0.0.1:{kept_port}")],
            "upstream_healthcheck type=http interval=100ms keepalive=3 uri=/kept;",
        ),
        upstream_block(
            "fresh",
            &[format!("127.0.0.1:{fresh_port}")],
            "upstream_healthcheck type=http interval=100ms uri=/fresh;",
        ),
    ]
    .concat();
    let mut nginx = Nginx::start(&conf);
    wait_until(SOON, "ten probes of each upstream", || {
        probes_logged(&kept_log).len() >= 10 && probes_logged(&fresh_log).len() >= 10
    });

    let kept = probes_logged(&kept_log);
    assert!(
        kept.iter().all(|(_, _, r)| r == "GET /kept HTTP/1.1"),
        "{kept:?}"
    );
    let per_conn = probes_per_connection(&kept);
    let (last, full) = per_conn.split_last().unwrap();
    assert!(
        full.iter().all(|&n| n == 3) && *last <= 3,
        "keepalive=3 carries 3 probes per connection: {per_conn:?}"
    );
    let fresh = probes_logged(&fresh_log);
    assert!(
        fresh
            .iter()
            .all(|(_, n, r)| *n == 1 && r == "GET /fresh HTTP/1.0"),
        "without keepalive every probe has its own connection: {fresh:?}"
    );
    let h = health(status_port, "kept", &format!("127.0.0.1:{kept_port}"));
    assert_eq!(
        (h["status"].as_str(), h["failures"].as_u64()),
        (Some("up"), Some(0)),
        "{h}"
    );

    // Idle probe connections hold up neither a reload nor the shutdown.
    nginx.reload();
    wait_until(SOON, "probes after the reload", || {
        probes_logged(&kept_log).len() >= kept.len() + 5
    });
    nginx.stop();
}

#[test]
fn a_connection_the_backend_closed_while_idle_is_not_a_failure() {
    // The backend's keepalive_timeout (300 ms) runs out between probes (700 ms): every probe
    // finds its kept connection closed and opens a new one, without a failure.
    let (timed_port, status_port) = (free_port(), free_port());
    // A backend that closes each connection when the third request arrives, unanswered: the
    // probe learns of the close only after sending, and reconnects within the same probe.
    let racing = Backend::new();
    racing.set_mode(Mode::KeepAlive(2));
    let prefix = TempPrefix::new();
    let timed_log = prefix.path().join("timed.log");
    let conf = [
        PROBES_LOG_FORMAT.to_string(),
        logged_backend(timed_port, &timed_log, "keepalive_timeout 300ms;"),
        status_server(status_port),
        upstream_block(
            "timed",
            &[format!("127.0.0.1:{timed_port}")],
            "upstream_healthcheck type=http interval=700ms keepalive=100 fall=1;",
        ),
        upstream_block(
            "racing",
            &[racing.addr()],
            "upstream_healthcheck type=http interval=100ms keepalive=100 fall=1;",
        ),
    ]
    .concat();
    let nginx = Nginx::start(&conf);
    let racing_checks = || health(status_port, "racing", &racing.addr())["checks"].as_u64();
    wait_until(SOON, "12 probes of the racing backend", || {
        racing_checks() >= Some(12)
    });
    wait_until(SOON, "5 probes of the timed-out backend", || {
        probes_logged(&timed_log).len() >= 5
    });

    let h = health(status_port, "racing", &racing.addr());
    assert_eq!(
        (h["status"].as_str(), h["failures"].as_u64()),
        (Some("up"), Some(0)),
        "a connection closed when the request arrived is retried, not failed: {h}"
    );
    // Each connection answers two probes; the third finds it closed and opens the next.
    let checks = h["checks"].as_u64().unwrap() as usize;
    let connections = racing.connections();
    assert!(
        (checks / 3..=checks / 2 + 2).contains(&connections),
        "{connections} connections for {checks} probes"
    );
    let h = health(status_port, "timed", &format!("127.0.0.1:{timed_port}"));
    assert_eq!(
        (h["status"].as_str(), h["failures"].as_u64()),
        (Some("up"), Some(0)),
        "{h}"
    );
    let logged = probes_logged(&timed_log);
    assert!(
        logged.iter().all(|(_, n, _)| *n == 1),
        "the backend closed every idle connection: {logged:?}"
    );
    nginx.stop();
}

#[test]
fn a_peer_that_goes_down_or_is_excluded_drops_its_connection() {
    let backend = Backend::new();
    backend.set_mode(Mode::KeepAlive(1_000_000));
    let status_port = free_port();
    let conf = [
        status_server(status_port),
        upstream_block(
            "backend",
            &[backend.addr()],
            "upstream_healthcheck type=http interval=300ms keepalive=1000 fall=2 rise=2;",
        ),
    ]
    .concat();
    let nginx = Nginx::start(&conf);
    let workers = nginx.worker_pids();
    let connected = || worker_connected_to(&workers, backend.port()).is_some();
    let state = || health(status_port, "backend", &backend.addr())["status"].clone();
    wait_until(SOON, "checks under way", || {
        health(status_port, "backend", &backend.addr())["checks"].as_u64() >= Some(2)
    });
    assert!(
        connected(),
        "an up peer keeps its probe connection between probes"
    );
    let connections = backend.connections();

    backend.set_path_mode("/", Mode::Status(500));
    wait_until(SOON, "the peer down", || state() == "down");
    wait_until(SOON, "its connection closed", || !connected());

    backend.clear_path_modes();
    wait_until(SOON, "the peer up again", || state() == "up");
    wait_until(SOON, "a connection kept again", connected);
    assert!(backend.connections() > connections);

    // An upstream excluded from checking keeps no probe connection either.
    let (status, _, body) =
        http_request(status_port, "POST", "/admin?t=ex&u=backend&a=set", "").expect("POST /admin");
    assert_eq!(status, 200, "{body}");
    wait_until(SOON, "its connection closed on exclusion", || !connected());
    nginx.stop();
}

#[test]
fn with_several_workers_a_peer_keeps_its_probes_on_one_connection() {
    // The worker that keeps a peer's idle connection probes it next: with two workers, the
    // probes of each of three peers do not alternate between two connections.
    let status_port = free_port();
    let prefix = TempPrefix::new();
    let peers: Vec<(u16, std::path::PathBuf)> = (0..3)
        .map(|i| (free_port(), prefix.path().join(format!("peer{i}.log"))))
        .collect();
    let mut conf = vec![PROBES_LOG_FORMAT.to_string(), status_server(status_port)];
    conf.extend(
        peers
            .iter()
            .map(|(port, log)| logged_backend(*port, log, "")),
    );
    let servers: Vec<String> = peers
        .iter()
        .map(|(p, _)| format!("127.0.0.1:{p}"))
        .collect();
    conf.push(upstream_block(
        "kept",
        &servers,
        "upstream_healthcheck type=http interval=100ms keepalive=1000;",
    ));
    let nginx = Nginx::start_with("worker_processes 2;", &conf.concat());
    wait_until(SOON, "30 probes of each peer", || {
        peers.iter().all(|(_, log)| probes_logged(log).len() >= 30)
    });
    // Without the rule, two workers share each peer in runs (13 + 17, 22 + 8 probes); with
    // it, one connection carries them all, or nearly (a worker held up for longer than the
    // grace hands the peer over).
    for (port, log) in &peers {
        let logged = probes_logged(log);
        let per_conn = probes_per_connection(&logged);
        let longest = per_conn.iter().copied().max().unwrap_or(0) as usize;
        assert!(
            longest * 5 >= logged.len() * 4,
            "peer {port}: {} probes over connections carrying {per_conn:?}",
            logged.len()
        );
    }
    nginx.stop();
}
