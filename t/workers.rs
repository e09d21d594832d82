//! Several worker processes share the probing: whatever `worker_processes` is, each peer gets
//! one probe per interval (counted at the backend); cache manager/loader processes run none;
//! every worker applies the verdicts (with and without `zone`); a worker killed with SIGKILL is
//! replaced and probing goes on, including the probe the dead worker had in flight.
mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const HEALTH: &str = "/health";

/// `upstream NAME { [extra] server ...; upstream_healthcheck PARAMS uri=/health; }`
fn upstream(name: &str, peers: &[&Backend], params: &str, extra: &str) -> String {
    let mut s = format!("upstream {name} {{\n{extra}");
    for b in peers {
        s.push_str(&format!("    server {};\n", b.addr()));
    }
    s.push_str(&format!(
        "    upstream_healthcheck {params} uri={HEALTH};\n}}\n"
    ));
    s
}

/// A server on `port` proxying `/` to upstream `u`, with the status page.
fn front(port: u16, u: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://{u}; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n"
    )
}

/// Waits until every backend has seen at least `n` probes.
fn wait_probes(backends: &[&Backend], n: usize, timeout: Duration) {
    wait_until(timeout, &format!("{n} probes at every backend"), || {
        backends.iter().all(|b| b.hits(HEALTH) >= n)
    });
}

/// Probes at `b` in `[from, from + window)` divided by the number of intervals in the window;
/// waits (bounded) until a probe arrived after the window, so the window is complete.
fn probes_per_interval(b: &Backend, from: Instant, window: Duration, interval: Duration) -> f64 {
    let end = from + window;
    wait_until(
        window + interval * 10 + Duration::from_secs(2),
        &format!("a probe at {} after the measuring window", b.addr()),
        || b.arrivals(HEALTH).last().is_some_and(|t| *t >= end),
    );
    let n = b
        .arrivals(HEALTH)
        .iter()
        .filter(|t| **t >= from && **t < end)
        .count();
    n as f64 / (window.as_secs_f64() / interval.as_secs_f64())
}

fn assert_one_probe_per_interval(
    backends: &[&Backend],
    from: Instant,
    window: Duration,
    interval: Duration,
    what: &str,
) {
    for b in backends {
        let rate = probes_per_interval(b, from, window, interval);
        let gaps: Vec<u128> = b
            .arrivals(HEALTH)
            .windows(2)
            .filter(|w| w[0] >= from && w[1] < from + window)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert!(
            (0.85..=1.15).contains(&rate),
            "{what}: {} got {rate:.2} probes per interval over {window:?} (want 1.00 ± 0.15); \
             gaps between probes (ms): {gaps:?}",
            b.addr()
        );
    }
}

/// Three healthy peers probed every 200 ms: one probe per peer per interval, measured over 3 s.
fn one_probe_per_peer_per_interval(workers: usize) {
    let interval = Duration::from_millis(200);
    let backends = [Backend::new(), Backend::new(), Backend::new()];
    let refs: Vec<&Backend> = backends.iter().collect();
    let port = free_port();
    let body = format!(
        "{}{}",
        upstream("u", &refs, "interval=200ms timeout=150ms fall=2 rise=2", ""),
        front(port, "u")
    );
    let nginx = Nginx::start_with(&format!("worker_processes {workers};"), &body);
    assert_eq!(nginx.worker_pids().len(), workers);
    // Warm-up: the first probes fall at random points of the first interval.
    wait_probes(&refs, 2, Duration::from_secs(3));
    let from = Instant::now();
    assert_one_probe_per_interval(
        &refs,
        from,
        Duration::from_secs(3),
        interval,
        &format!("worker_processes {workers}"),
    );
    let page = status_page(port, "/upstream_status");
    for b in &backends {
        assert_eq!(peer_state(&page, "u", &b.addr()), Some("up"), "{page}");
    }
    nginx.stop();
}

#[test]
fn one_worker_one_probe_per_peer_per_interval() {
    one_probe_per_peer_per_interval(1);
}

#[test]
fn two_workers_one_probe_per_peer_per_interval() {
    one_probe_per_peer_per_interval(2);
}

#[test]
fn four_workers_one_probe_per_peer_per_interval() {
    one_probe_per_peer_per_interval(4);
}

#[test]
fn cache_manager_and_loader_run_no_probes() {
    let interval = Duration::from_millis(200);
    let backends = [Backend::new(), Backend::new(), Backend::new()];
    let refs: Vec<&Backend> = backends.iter().collect();
    let port = free_port();
    let body = format!(
        "proxy_cache_path cache keys_zone=hc_cache:1m;\n{}\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location / {{ proxy_cache hc_cache; proxy_pass http://u; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        upstream("u", &refs, "interval=200ms timeout=150ms fall=2 rise=2", ""),
    );
    let nginx = Nginx::start_with("worker_processes 2;", &body);
    wait_until(
        Duration::from_secs(5),
        "cache manager and cache loader processes",
        || {
            let children = nginx.child_processes();
            children
                .iter()
                .any(|(_, c)| c.contains("cache manager process"))
                && children
                    .iter()
                    .any(|(_, c)| c.contains("cache loader process"))
        },
    );
    wait_probes(&refs, 2, Duration::from_secs(3));
    let from = Instant::now();
    assert_one_probe_per_interval(
        &refs,
        from,
        Duration::from_secs(3),
        interval,
        "2 workers + cache manager + cache loader",
    );
    // The helpers were there all along.
    let children = nginx.child_processes();
    assert!(
        children
            .iter()
            .any(|(_, c)| c.contains("cache manager process")),
        "{children:?}"
    );
    assert_eq!(http_get(port, "/x").unwrap().0, 200);
    nginx.stop();
}

/// Sends one request (its own connection, so requests spread over the workers; the listener
/// has `reuseport`) and returns (worker pid, backend port) from `X-Worker` and `X-Backend`.
fn request_via(port: u16, path: &str) -> (u32, u16) {
    let (status, headers, body) =
        http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
    let value = |name: &str| {
        header(&headers, name).unwrap_or_else(|| panic!("no {name} header in {headers}"))
    };
    (
        value("X-Worker").parse().expect("X-Worker"),
        value("X-Backend").parse().expect("X-Backend"),
    )
}

/// Sends requests to `path` until every worker in `workers` has been seen answering
/// (bounded); returns every (worker, backend) pair seen, at least `min` of them.
fn spread(port: u16, path: &str, workers: &[u32], min: usize) -> Vec<(u32, u16)> {
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(5),
        &format!("requests to {path} answered by every worker {workers:?}"),
        || {
            for _ in 0..10 {
                seen.push(request_via(port, path));
            }
            let by: HashSet<u32> = seen.iter().map(|(w, _)| *w).collect();
            seen.len() >= min && workers.iter().all(|w| by.contains(w))
        },
    );
    seen
}

/// Backend ports seen per worker.
fn by_worker(seen: &[(u32, u16)]) -> HashMap<u32, HashSet<u16>> {
    let mut m: HashMap<u32, HashSet<u16>> = HashMap::new();
    for (w, b) in seen {
        m.entry(*w).or_default().insert(*b);
    }
    m
}

#[test]
fn every_worker_applies_verdicts_with_and_without_zone() {
    // withzone: a (stays healthy), b (its health check fails for a while);
    // nozone:   c (stays healthy), d (idem).
    let (a, b, c, d) = (
        Backend::new(),
        Backend::new(),
        Backend::new(),
        Backend::new(),
    );
    let port = free_port();
    let params = "interval=100ms timeout=1s fall=2 rise=2";
    let body = format!(
        "{}{}server {{\n    listen 127.0.0.1:{port} reuseport;\n    keepalive_timeout 0;\n    \
         add_header X-Worker $pid always;\n    proxy_next_upstream off;\n    \
         location /z/ {{ proxy_pass http://withzone; }}\n    \
         location /n/ {{ proxy_pass http://nozone; }}\n    \
         location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
        upstream("withzone", &[&a, &b], params, "    zone z 64k;\n"),
        upstream("nozone", &[&c, &d], params, ""),
    );
    let nginx = Nginx::start_with("worker_processes 2;", &body);
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);
    wait_probes(&[&a, &b, &c, &d], 2, Duration::from_secs(3));

    // All up: both peers of each upstream take traffic.
    for (path, peers) in [("/z/x", [&a, &b]), ("/n/x", [&c, &d])] {
        let seen = spread(port, path, &workers, 20);
        let backends: HashSet<u16> = seen.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            backends,
            peers.iter().map(|p| p.port()).collect(),
            "{path}: {seen:?}"
        );
    }

    // b and d fail their health checks (the application is sick; the port still answers, so
    // a request sent there would be counted).
    b.set_path_mode(HEALTH, Mode::Status(503));
    d.set_path_mode(HEALTH, Mode::Status(503));
    wait_until(
        Duration::from_secs(3),
        "b and d DOWN on the status page",
        || {
            let page = status_page(port, "/upstream_status");
            peer_state(&page, "withzone", &b.addr()) == Some("DOWN")
                && peer_state(&page, "nozone", &d.addr()) == Some("DOWN")
        },
    );
    let page = status_page(port, "/upstream_status");
    assert_eq!(
        peer_state(&page, "withzone", &a.addr()),
        Some("up"),
        "{page}"
    );
    assert_eq!(peer_state(&page, "nozone", &c.addr()), Some("up"), "{page}");
    // A worker applies changed verdicts before it picks a peer (README): from the moment the
    // status page shows DOWN, no request may reach b or d, whichever worker serves it.
    b.reset_counts();
    d.reset_counts();
    for (path, live, dead) in [("/z/x", &a, &b), ("/n/x", &c, &d)] {
        let seen = spread(port, path, &workers, 60);
        assert!(
            seen.iter().all(|(_, p)| *p == live.port()),
            "{path}: a request went to the DOWN peer {}: {seen:?}",
            dead.addr()
        );
        assert_eq!(dead.proxied(), 0, "{path}: the DOWN peer was proxied to");
    }

    // They recover: back UP, and every worker sends them traffic again.
    b.clear_path_modes();
    d.clear_path_modes();
    wait_until(
        Duration::from_secs(3),
        "b and d up on the status page",
        || {
            let page = status_page(port, "/upstream_status");
            peer_state(&page, "withzone", &b.addr()) == Some("up")
                && peer_state(&page, "nozone", &d.addr()) == Some("up")
        },
    );
    for (path, back) in [("/z/x", &b), ("/n/x", &d)] {
        let mut seen = Vec::new();
        wait_until(
            Duration::from_secs(5),
            &format!("every worker proxies {path} to {} again", back.addr()),
            || {
                seen.extend(spread(port, path, &workers, 20));
                let m = by_worker(&seen);
                workers
                    .iter()
                    .all(|w| m.get(w).is_some_and(|s| s.contains(&back.port())))
            },
        );
    }
    assert!(b.proxied() > 0 && d.proxied() > 0);

    // Now b and d die outright (connections refused). With proxy_next_upstream off, a request
    // a worker still sent there would be a 502 (request_via asserts 200).
    b.stop();
    d.stop();
    wait_until(
        Duration::from_secs(3),
        "dead b and d DOWN on the status page",
        || {
            let page = status_page(port, "/upstream_status");
            peer_state(&page, "withzone", &b.addr()) == Some("DOWN")
                && peer_state(&page, "nozone", &d.addr()) == Some("DOWN")
        },
    );
    for (path, live) in [("/z/x", &a), ("/n/x", &c)] {
        let seen = spread(port, path, &workers, 40);
        assert!(
            seen.iter().all(|(_, p)| *p == live.port()),
            "{path}: {seen:?}"
        );
    }
    // They come back: UP, and traffic from every worker again.
    b.start();
    d.start();
    for (path, back) in [("/z/x", &b), ("/n/x", &d)] {
        let mut seen = Vec::new();
        wait_until(
            Duration::from_secs(5),
            &format!(
                "every worker proxies {path} to the restarted {}",
                back.addr()
            ),
            || {
                seen.extend(spread(port, path, &workers, 20));
                let m = by_worker(&seen);
                workers
                    .iter()
                    .all(|w| m.get(w).is_some_and(|s| s.contains(&back.port())))
            },
        );
    }
    let page = status_page(port, "/upstream_status");
    assert_eq!(
        peer_state(&page, "withzone", &b.addr()),
        Some("up"),
        "{page}"
    );
    assert_eq!(peer_state(&page, "nozone", &d.addr()), Some("up"), "{page}");

    let log = nginx.stop();
    for (peer, up) in [(&b, "withzone"), (&d, "nozone")] {
        let down = format!(
            "peer {} in upstream \"{up}\" is DOWN after 2 failed checks",
            peer.addr()
        );
        let upl = format!(
            "peer {} in upstream \"{up}\" is UP after 2 successful checks",
            peer.addr()
        );
        // Sick, then dead: two transitions each way.
        assert_eq!(log.matches(&down).count(), 2, "{down}\n{log}");
        assert_eq!(log.matches(&upl).count(), 2, "{upl}\n{log}");
    }
    for peer in [&a, &c] {
        assert!(!log.contains(&format!("peer {} in", peer.addr())), "{log}");
    }
}

#[test]
fn killed_worker_is_replaced_and_probing_goes_on() {
    let interval = Duration::from_millis(200);
    let (a, b, c) = (Backend::new(), Backend::new(), Backend::new());
    // h never answers its health check and the probe may last a whole interval, so there is
    // nearly always a probe of h in flight: the worker running it is the one killed.
    let h = Backend::new();
    h.set_path_mode(HEALTH, Mode::Hang);
    let h_interval = Duration::from_millis(400);
    let port = free_port();
    let body = format!(
        "{}{}{}",
        upstream(
            "u",
            &[&a, &b, &c],
            "interval=200ms timeout=150ms fall=2 rise=2",
            ""
        ),
        upstream(
            "hang",
            &[&h],
            "interval=400ms timeout=400ms fall=2 rise=2",
            ""
        ),
        front(port, "u"),
    );
    let nginx = Nginx::start_with("worker_processes 2;", &body);
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);
    wait_probes(&[&a, &b, &c, &h], 2, Duration::from_secs(3));
    wait_until(
        Duration::from_secs(3),
        "h DOWN (its probes time out)",
        || peer_state(&status_page(port, "/upstream_status"), "hang", &h.addr()) == Some("DOWN"),
    );

    let mut victim = None;
    wait_until(
        Duration::from_secs(3),
        "a worker with a probe of h in flight",
        || {
            victim = worker_connected_to(&workers, h.port());
            victim.is_some()
        },
    );
    let victim = victim.unwrap();
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // The master starts a new worker.
    wait_until(
        Duration::from_secs(5),
        "a new worker replacing the killed one",
        || {
            let now = nginx.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        },
    );

    // Every peer of u is probed again within two intervals (the other worker carries on).
    let slack = Duration::from_millis(300);
    for p in [&a, &b, &c] {
        wait_until(
            interval * 2 + slack,
            &format!("a probe of {} after the kill", p.addr()),
            || p.arrivals(HEALTH).iter().any(|t| *t > killed_at),
        );
    }
    // The probe of h the dead worker had in flight is taken over when its lease (two
    // intervals, timeout <= interval) runs out. The slack is wider than above: the takeover
    // waits for a lease that began before the kill, and on a loaded machine the other
    // worker's tick came more than 300 ms late (seen once in a local CI loop).
    wait_until(
        h_interval * 2 + slack + h_interval,
        "a new probe of h after its prober was killed",
        || h.arrivals(HEALTH).iter().any(|t| *t > killed_at),
    );
    // ... and the rate is one probe per peer per interval again.
    assert_one_probe_per_interval(
        &[&a, &b, &c],
        killed_at + interval * 2,
        Duration::from_secs(2),
        interval,
        "after a worker was killed",
    );
    // h's probes last a whole interval (timeout = interval), so a late timer is never caught
    // up: only check that exactly one worker probes it now (no second prober after the
    // takeover: at most one probe per interval) and that it keeps being probed.
    let h_rate = probes_per_interval(
        &h,
        killed_at + h_interval * 2 + slack,
        Duration::from_secs(2),
        h_interval,
    );
    assert!(
        (0.5..=1.15).contains(&h_rate),
        "h after its prober was killed: {h_rate:.2} probes per interval (want 0.5 to 1.15)"
    );

    // The status stays right: a peer that fails afterwards is detected, the others stay up.
    b.set_path_mode(HEALTH, Mode::Status(500));
    wait_until(Duration::from_secs(3), "b DOWN after the kill", || {
        peer_state(&status_page(port, "/upstream_status"), "u", &b.addr()) == Some("DOWN")
    });
    let page = status_page(port, "/upstream_status");
    assert_eq!(peer_state(&page, "u", &a.addr()), Some("up"), "{page}");
    assert_eq!(peer_state(&page, "u", &c.addr()), Some("up"), "{page}");
    assert_eq!(peer_state(&page, "hang", &h.addr()), Some("DOWN"), "{page}");
    // Requests avoid b from now on, whichever worker (old or new) serves them.
    b.reset_counts();
    for _ in 0..20 {
        assert_eq!(http_get(port, "/x").unwrap().0, 200);
    }
    assert_eq!(b.proxied(), 0);

    // h recovers: its hanging probe answers and it comes back up (the graceful exit with a
    // probe hanging is the subject of t/reload.rs).
    h.clear_path_modes();
    wait_until(Duration::from_secs(3), "h up again", || {
        peer_state(&status_page(port, "/upstream_status"), "hang", &h.addr()) == Some("up")
    });

    // The master reports the killed worker; nothing else is alarming.
    let killed = victim.to_string();
    let log = nginx.stop_allowing(|l| {
        (l.contains("exited on signal 9") || l.contains("was locked by")) && l.contains(&killed)
    });
    assert!(
        log.contains(&format!("{victim} exited on signal 9")),
        "{log}"
    );
    let down = format!("peer {} in upstream \"u\" is DOWN", b.addr());
    assert_eq!(log.matches(&down).count(), 1, "{log}");
}
