//! `nginx -s reload` (SIGHUP) keeps what the module knows: a DOWN peer stays DOWN with no gap
//! in which traffic reaches it, peers added or removed by the new config start or disappear as
//! documented, unchanged peers keep their state; old workers (and nginx on SIGQUIT) exit
//! promptly even with probes hanging; many reloads in a row leave nginx serving and right.
mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const HEALTH: &str = "/health";
const STATUS: &str = "/upstream_status";

/// `upstream NAME { server ...; upstream_healthcheck PARAMS uri=/health; }`
fn upstream(name: &str, peers: &[String], params: &str) -> String {
    let mut s = format!("upstream {name} {{\n");
    for p in peers {
        s.push_str(&format!("    server {p};\n"));
    }
    s.push_str(&format!(
        "    upstream_healthcheck {params} uri={HEALTH};\n}}\n"
    ));
    s
}

/// A server on `port` proxying `/` to upstream `u` without retrying another peer (so a request
/// sent to a dead peer is a 502 the client sees), with the status page.
fn front(port: u16, u: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    proxy_next_upstream off;\n    \
         location / {{ proxy_pass http://{u}; }}\n    \
         location = {STATUS} {{ upstream_healthcheck_status; }}\n}}\n"
    )
}

/// The `health` object of `peer` in `upstream` on the JSON status page.
fn health_json(port: u16, upstream: &str, peer: &str) -> serde_json::Value {
    let doc = strict_json(&status_page(port, &format!("{STATUS}?format=json")));
    json_peer(&doc, upstream, peer)["health"].clone()
}

fn counter(h: &serde_json::Value, name: &str) -> u64 {
    h[name]
        .as_u64()
        .unwrap_or_else(|| panic!("health.{name} is not a count: {h}"))
}

fn state(port: u16, upstream: &str, peer: &str) -> Option<String> {
    peer_state(&status_page(port, STATUS), upstream, peer).map(str::to_string)
}

fn wait_state(port: u16, upstream: &str, peer: &str, want: &str, timeout: Duration) {
    wait_until(timeout, &format!("{peer} {want} in {upstream}"), || {
        state(port, upstream, peer).as_deref() == Some(want)
    });
}

/// Sends requests through the proxy in a loop on its own thread until stopped; records every
/// answer (status, or the I/O error).
fn client(port: u16) -> Looper<Result<u16, String>> {
    Looper::start(move |i| {
        http_get(port, &format!("/r{i}"))
            .map(|(status, _, _)| status)
            .map_err(|e| e.to_string())
    })
}

#[test]
fn reload_keeps_a_down_peer_down_without_a_single_failed_request() {
    let a = Backend::new();
    let dead = dead_addr();
    let port = free_port();
    // fall=3 at 300 ms: a peer that started over would take at least 600 ms to be found dead
    // again, and with proxy_next_upstream off every request sent to it meanwhile is a 502.
    let body = format!(
        "{}{}",
        upstream(
            "u",
            &[a.addr(), dead.clone()],
            "interval=300ms timeout=200ms fall=3 rise=2"
        ),
        front(port, "u")
    );
    let mut nginx = Nginx::start_with("worker_processes 2;", &body);
    wait_state(port, "u", &dead, "DOWN", Duration::from_secs(3));
    assert_eq!(state(port, "u", &a.addr()).as_deref(), Some("up"));

    // Its counters and the time it went down, as the JSON page shows them.
    let mut before = health_json(port, "u", &dead);
    assert_eq!(before["status"], "down", "{before}");
    let went_down = before["last_change"].clone();
    assert!(went_down.is_number(), "{before}");

    let client = client(port);
    client.wait_more(20);
    let down_line = format!("peer {dead} in upstream \"u\" is DOWN after 3 failed checks");
    for i in 1..=3 {
        let old = nginx.worker_pids();
        let took = nginx.reload();
        let new = nginx.worker_pids();
        assert!(
            new.len() == 2 && new.iter().all(|p| !old.contains(p)),
            "reload {i}: workers {old:?} -> {new:?} after {took:?}"
        );
        // Right after the reload the verdict is there: carried over, not found again.
        let page = status_page(port, STATUS);
        assert_eq!(
            peer_state(&page, "u", &dead),
            Some("DOWN"),
            "reload {i}:\n{page}"
        );
        assert_eq!(
            peer_state(&page, "u", &a.addr()),
            Some("up"),
            "reload {i}:\n{page}"
        );
        // Its counters continue and it went down when it did before: the state was carried.
        let h = health_json(port, "u", &dead);
        assert_eq!(h["status"], "down", "reload {i}: {h}");
        assert_eq!(
            h["last_change"], went_down,
            "reload {i}: {h} (before: {before})"
        );
        for name in ["checks", "failures", "fall_count"] {
            assert!(
                counter(&h, name) >= counter(&before, name),
                "reload {i}: {name} went back: {h} (before: {before})"
            );
        }
        assert_eq!(counter(&h, "checks"), counter(&h, "failures"), "{h}");
        before = h;
        client.wait_more(20);
    }
    // And they go on counting after the reloads.
    let last = counter(&before, "checks");
    wait_until(
        Duration::from_secs(3),
        "more checks of the dead peer",
        || counter(&health_json(port, "u", &dead), "checks") > last,
    );
    let results = client.finish();
    let bad: Vec<(usize, &Result<u16, String>)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| **r != Ok(200))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests during 3 reloads did not get a 200: {bad:?}",
        bad.len(),
        results.len()
    );
    assert!(results.len() >= 80, "{}", results.len());

    let log = nginx.stop();
    assert_eq!(log.matches("(SIGHUP) received").count(), 3, "{log}");
    // Found dead once; the reloads carried the state over instead of finding it again.
    assert_eq!(log.matches(&down_line).count(), 1, "{down_line}\n{log}");
    assert!(
        !log.contains(&format!("peer {dead} in upstream \"u\" is UP")),
        "{log}"
    );
}

#[test]
fn old_workers_and_nginx_exit_promptly_with_probes_hanging() {
    // h accepts and never answers: its probe (timeout 1h) is always in flight. idle's probes are
    // an hour apart: a long timer always pending.
    let h = Backend::new();
    h.set_path_mode(HEALTH, Mode::Hang);
    let a = Backend::new();
    let port = free_port();
    let body = format!(
        "{}{}{}",
        upstream("slow", &[h.addr()], "interval=100ms timeout=1h fall=1"),
        upstream("idle", &[a.addr()], "interval=1h timeout=1h"),
        front(port, "idle")
    );
    let mut nginx = Nginx::start_with("worker_processes 2;", &body);
    wait_until(Duration::from_secs(3), "a hanging probe of h", || {
        h.hits(HEALTH) >= 1
    });
    assert_eq!(http_get(port, "/x").unwrap().0, 200);

    let old = nginx.worker_pids();
    let before = h.hits(HEALTH);
    let took = nginx.reload();
    let now = nginx.worker_pids();
    assert!(
        now.len() == 2 && now.iter().all(|p| !old.contains(p)),
        "old workers {old:?} still there {took:?} after the reload: {now:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "old workers took {took:?} to exit after the reload (a hanging probe must not hold them)"
    );
    assert_eq!(http_get(port, "/x").unwrap().0, 200);
    // The new workers probe h again (the old probe ended with its worker).
    wait_until(Duration::from_secs(3), "a new hanging probe of h", || {
        h.hits(HEALTH) > before
    });

    let t = Instant::now();
    let log = nginx.stop_allowing(|_| true);
    let stopped = t.elapsed();
    assert!(
        stopped < Duration::from_secs(3),
        "nginx took {stopped:?} to exit on SIGQUIT with a probe hanging"
    );
    // A worker leaving with a probe in flight closes it: nginx reports any connection still
    // open at exit ("open socket #N left in connection M", "aborting").
    let bad = alert_lines(&log);
    assert!(
        bad.is_empty(),
        "workers exiting (reload, then SIGQUIT) with a probe in flight left it open:\n{}\n--- full log ---\n{log}",
        bad.join("\n")
    );
}

#[test]
fn peers_added_removed_and_kept_by_a_reload() {
    // Peers: a healthy; b answers 503 to health checks; c healthy, removed by the reload;
    // n added by the reload, answers 503.
    let (a, b, c, n) = (
        Backend::new(),
        Backend::new(),
        Backend::new(),
        Backend::new(),
    );
    b.set_path_mode(HEALTH, Mode::Status(503));
    n.set_path_mode(HEALTH, Mode::Status(503));
    let port = free_port();
    // fall=3 at 300 ms: a peer starting fresh shows up for at least 600 ms.
    let params = "interval=300ms timeout=200ms fall=3 rise=3";
    let conf = |peers: &[String]| format!("{}{}", upstream("u", peers, params), front(port, "u"));
    let mut nginx = Nginx::start_with(
        "worker_processes 2;",
        &conf(&[a.addr(), b.addr(), c.addr()]),
    );
    wait_state(port, "u", &b.addr(), "DOWN", Duration::from_secs(3));

    nginx.rewrite_conf(&conf(&[a.addr(), b.addr(), n.addr()]));
    nginx.reload();
    let page = status_page(port, STATUS);
    // Unchanged: a stays up, b stays DOWN (a fresh b would start up).
    assert_eq!(peer_state(&page, "u", &a.addr()), Some("up"), "{page}");
    assert_eq!(peer_state(&page, "u", &b.addr()), Some("DOWN"), "{page}");
    // Removed: gone from the page.
    assert_eq!(peer_state(&page, "u", &c.addr()), None, "{page}");
    assert!(!page.contains(&c.addr()), "{page}");
    // Added, default_down off: starts up, goes DOWN after `fall` failed probes.
    assert_eq!(peer_state(&page, "u", &n.addr()), Some("up"), "{page}");
    wait_state(port, "u", &n.addr(), "DOWN", Duration::from_secs(3));
    assert!(
        n.hits(HEALTH) >= 3,
        "n DOWN after {} probes",
        n.hits(HEALTH)
    );
    assert_eq!(state(port, "u", &b.addr()).as_deref(), Some("DOWN"));

    let log = nginx.stop();
    let b_down = format!("peer {} in upstream \"u\" is DOWN", b.addr());
    assert_eq!(log.matches(&b_down).count(), 1, "{log}");
    assert!(!log.contains(&format!("peer {} in", c.addr())), "{log}");
}

#[test]
fn peers_added_by_a_reload_with_default_down_wait_for_rise_probes() {
    let (a, n) = (Backend::new(), Backend::new());
    let port = free_port();
    // rise=2 at 300 ms: a peer starting fresh stays DOWN for at least 300 ms.
    let params = "interval=300ms timeout=200ms fall=2 rise=2 default_down=on";
    let conf = |peers: &[String]| format!("{}{}", upstream("u", peers, params), front(port, "u"));
    let mut nginx = Nginx::start_with("worker_processes 2;", &conf(&[a.addr()]));
    // default_down=on: a starts DOWN and comes up after two good probes.
    wait_state(port, "u", &a.addr(), "up", Duration::from_secs(3));
    assert!(a.hits(HEALTH) >= 2);

    nginx.rewrite_conf(&conf(&[a.addr(), n.addr()]));
    nginx.reload();
    let page = status_page(port, STATUS);
    // a is known: it keeps its state (a fresh a would start DOWN).
    assert_eq!(peer_state(&page, "u", &a.addr()), Some("up"), "{page}");
    // n is new: DOWN until rise good probes, and no traffic meanwhile.
    assert_eq!(peer_state(&page, "u", &n.addr()), Some("DOWN"), "{page}");
    for _ in 0..6 {
        assert_eq!(http_get(port, "/x").unwrap().0, 200);
    }
    if n.hits(HEALTH) < 2 {
        assert_eq!(n.proxied(), 0, "n got traffic before its second probe");
    }
    wait_state(port, "u", &n.addr(), "up", Duration::from_secs(3));
    assert!(n.hits(HEALTH) >= 2, "n up after {} probes", n.hits(HEALTH));
    // And takes traffic.
    wait_until(Duration::from_secs(3), "traffic to n", || {
        let _ = http_get(port, "/x");
        n.proxied() > 0
    });

    let log = nginx.stop();
    let a_up = format!(
        "peer {} in upstream \"u\" is UP after 2 successful checks",
        a.addr()
    );
    let n_up = format!(
        "peer {} in upstream \"u\" is UP after 2 successful checks",
        n.addr()
    );
    assert_eq!(
        log.matches(&a_up).count(),
        1,
        "a came up once, before the reload\n{log}"
    );
    assert_eq!(log.matches(&n_up).count(), 1, "{log}");
}

#[test]
fn ten_quick_reloads() {
    let a = Backend::new();
    let dead = dead_addr();
    let port = free_port();
    let body = format!(
        "{}{}",
        upstream(
            "u",
            &[a.addr(), dead.clone()],
            "interval=200ms timeout=150ms fall=2 rise=2"
        ),
        front(port, "u")
    );
    let mut nginx = Nginx::start_with("worker_processes 2;", &body);
    wait_state(port, "u", &dead, "DOWN", Duration::from_secs(3));

    // Ten reloads, each as soon as the previous one is done.
    for i in 0..10 {
        let took = nginx.reload();
        assert!(took < Duration::from_secs(5), "reload {i} took {took:?}");
        assert_eq!(nginx.worker_pids().len(), 2);
    }
    // Ten more, without waiting for the previous one.
    for _ in 0..10 {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &nginx.master_pid().to_string()])
            .status()
            .expect("kill -HUP")
            .success();
        assert!(ok);
        thread::sleep(Duration::from_millis(20));
    }
    // One last reload settles everything (waits for all older workers to be gone).
    let took = nginx.reload();
    assert!(
        took < Duration::from_secs(8),
        "settling reload took {took:?}"
    );
    assert_eq!(nginx.worker_pids().len(), 2);

    let page = status_page(port, STATUS);
    assert_eq!(peer_state(&page, "u", &dead), Some("DOWN"), "{page}");
    assert_eq!(peer_state(&page, "u", &a.addr()), Some("up"), "{page}");
    // Still serving, never through the dead peer (a request sent there would be a 502).
    for _ in 0..20 {
        assert_eq!(http_get(port, "/x").unwrap().0, 200);
    }
    // Still probing at the configured rate: a's next probes keep coming.
    let before = a.hits(HEALTH);
    wait_until(Duration::from_secs(2), "a probed after the reloads", || {
        a.hits(HEALTH) >= before + 2
    });

    let log = nginx.stop();
    assert!(log.matches("(SIGHUP) received").count() >= 11, "{log}");
    let down = format!("peer {dead} in upstream \"u\" is DOWN");
    assert_eq!(log.matches(&down).count(), 1, "{log}");
}
