//! The checker is never the cause of an outage: when this host runs short of connections the
//! peers are not blamed, a full cap on probes is shared fairly without spinning, a peer's cadence
//! does not slip behind refusing neighbours, a missing unix socket does not flood the log, a
//! restart of checks finds a dead peer within one round, a reload does not hang on a lock a
//! vanished process holds, and peers nginx resolves at run time are refused rather than mixed up.
mod common;

use common::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// A `server {}` on `port` proxying `/slow/` to upstream `slow` and `/` to `backend`, with the
/// status page and the control API.
fn front(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    proxy_read_timeout 30s;\n    \
         location /slow/ {{ proxy_pass http://slow; }}\n    \
         location / {{ proxy_pass http://backend; }}\n    \
         location = /status {{ upstream_healthcheck_status; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n}}\n"
    )
}

/// Starts nginx with `http_body` and `worker_connections n` (paths relative to the prefix).
fn start_with_connections(http_body: &str, n: usize) -> Nginx {
    let conf = render_conf(Path::new("."), "", http_body).replace(
        "worker_connections 1024;",
        &format!("worker_connections {n};"),
    );
    Nginx::start_raw(&conf)
}

fn json_status(port: u16) -> serde_json::Value {
    strict_json(&status_page(port, "/status?format=json"))
}

#[test]
fn a_host_short_of_connections_gives_no_verdict_and_says_so_once() {
    // Four healthy peers checked every 50 ms with fall=1, so a single false failure would show.
    let healthy: Vec<Backend> = (0..4).map(|_| Backend::new()).collect();
    let hanging = Backend::new();
    hanging.set_mode(Mode::Hang);
    let port = free_port();
    let body = format!(
        "{}{}{}",
        upstream_block(
            "backend",
            &healthy.iter().map(Backend::addr).collect::<Vec<_>>(),
            "upstream_healthcheck type=http interval=50ms timeout=1s fall=1 rise=1;"
        ),
        upstream_block("slow", &[hanging.addr()], ""),
        front(port)
    );
    // 16 connections: one for the listener, one for the master's channel, two for each
    // proxied request, so seven slow requests leave none free.
    let nginx = start_with_connections(&body, 16);
    wait_until(Duration::from_secs(5), "first probes", || {
        healthy.iter().all(|b| b.hits("/") >= 1)
    });

    // Slow requests, one at a time, until the probes find no free connection (seven held).
    // A request that arrives while a probe holds a connection fails upstream (502) and is
    // sent again.
    let short = || nginx.error_log().contains("probes give no verdict");
    let mut clients: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        if short() {
            break;
        }
        let held = hanging.hits("/slow/x");
        if held < 7 {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            if s.write_all(b"GET /slow/x HTTP/1.0\r\n\r\n").is_ok() {
                clients.push(s);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while hanging.hits("/slow/x") == held && !short() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        short(),
        "{} slow requests held, and the probes still found connections:\n{}",
        hanging.hits("/slow/x"),
        nginx.error_log()
    );
    // 1.5 s of pressure: some 120 probes cannot get a connection.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        lines_with(&nginx.error_log(), "is DOWN").is_empty(),
        "a local shortage blamed on the peers:\n{}",
        nginx.error_log()
    );

    // Relief: the slow requests end, probes run again.
    hanging.set_mode(Mode::Status(200));
    drop(clients);
    wait_until(Duration::from_secs(5), "probes give verdicts again", || {
        nginx.error_log().contains("probes give verdicts again")
    });
    let doc = json_status(port);
    let up = json_upstream(&doc, "backend");
    for b in &healthy {
        assert_eq!(
            json_peer(&doc, "backend", &b.addr())["health"]["status"],
            "up"
        );
    }
    let local = up["probe_errors"]["local"].as_u64().unwrap_or(0);
    assert!(local >= 10, "local errors are counted: {up}");
    let metrics = status_page(port, "/status?format=prometheus");
    let sample =
        "nginx_upstream_healthcheck_probe_errors_total{upstream=\"backend\",reason=\"local\"} ";
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.parse::<u64>().ok());
    assert!(
        counted.is_some_and(|n| n >= local),
        "the metrics count them too ({local} in JSON):\n{metrics}"
    );

    let log = nginx.stop_allowing(|l| l.contains("worker_connections are not enough"));
    assert!(
        lines_with(&log, "is DOWN").is_empty(),
        "a local shortage blamed on the peers:\n{log}"
    );
    let bursts = lines_with(&log, "probes give no verdict");
    assert!(
        !bursts.is_empty()
            && bursts.len() <= lines_with(&log, "probes give verdicts again").len() + 1,
        "one line per burst, not per probe ({local} local errors):\n{}",
        bursts.join("\n")
    );
    assert!(bursts.iter().all(|l| l.contains("[error]")), "{bursts:?}");
}

#[test]
fn a_full_probe_cap_serves_peers_by_due_time_and_does_not_spin() {
    // 20 peers that never answer keep the cap (an eighth of 32 connections: 4 probes) full,
    // each for its 300 ms timeout; one live peer in a later upstream must still get its turn
    // by due time, and a worker waiting for a free place must sleep rather than spin.
    let hanging = Backend::new();
    hanging.set_mode(Mode::Hang);
    let live = Backend::new();
    let port = free_port();
    let body = format!(
        "{}{}{}{}",
        upstream_block(
            "backend",
            &vec![hanging.addr(); 20],
            "upstream_healthcheck type=http interval=100ms timeout=300ms uri=/hang;"
        ),
        upstream_block(
            "slow",
            &[live.addr()],
            "upstream_healthcheck type=http interval=100ms timeout=1s uri=/live;"
        ),
        "",
        front(port)
    );
    let nginx = start_with_connections(&body, 32);
    wait_until(
        Duration::from_secs(5),
        "the cap is full of hanging probes",
        || hanging.hits("/hang") >= 4,
    );
    let worker = nginx.worker_pids()[0];
    let t0 = Instant::now();
    let (live0, switches0) = (live.hits("/live"), context_switches(worker));
    thread::sleep(Duration::from_secs(5));
    let (live1, switches1) = (live.hits("/live"), context_switches(worker));
    let secs = t0.elapsed().as_secs_f64();
    let wakeups = (switches1 - switches0) as f64 / secs;
    assert!(
        live1 - live0 >= 2,
        "the live peer was probed {} times in {secs:.1} s behind 20 hanging ones",
        live1 - live0
    );
    assert!(
        wakeups < 300.0,
        "the worker woke {wakeups:.0} times a second while the cap was full"
    );
    hanging.set_mode(Mode::Status(200));
    nginx.stop();
}

#[test]
fn a_live_peer_behind_two_hundred_refused_ones_keeps_its_cadence() {
    // Missing unix sockets are refused at once, inside the scan that starts their probes.
    let dir = TempPrefix::new();
    let live = Backend::new();
    let port = free_port();
    let mut servers: Vec<String> = (0..200)
        .map(|i| format!("unix:{}/dead-{i}.sock", dir.path().display()))
        .collect();
    servers.push(live.addr());
    let body = format!(
        "{}{}{}",
        upstream_block(
            "backend",
            &servers,
            "upstream_healthcheck type=http interval=200ms timeout=1s uri=/live;"
        ),
        upstream_block("slow", &[live.addr()], ""),
        front(port)
    );
    let nginx = Nginx::start(&body);
    wait_until(
        Duration::from_secs(10),
        "a dozen probes of the live peer",
        || live.hits("/live") >= 13,
    );
    let arrivals = live.arrivals("/live");
    let mut gaps: Vec<u128> = arrivals
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (150..=240).contains(&median),
        "probes of the live peer every {median} ms (interval 200 ms); gaps {gaps:?}"
    );
    nginx.stop();
}

#[test]
fn a_missing_unix_socket_is_refused_and_logged_once() {
    let dir = TempPrefix::new();
    let sock = dir.path().join("missing.sock");
    let port = free_port();
    let live = Backend::new();
    let body = format!(
        "{}{}{}",
        upstream_block(
            "backend",
            &[format!("unix:{}", sock.display())],
            "upstream_healthcheck type=http interval=100ms timeout=1s fall=2 rise=1;"
        ),
        upstream_block("slow", &[live.addr()], ""),
        front(port)
    );
    let nginx = Nginx::start(&body);
    let peer = format!("unix:{}", sock.display());
    poll(Duration::from_secs(5), "a dozen failed probes", || {
        let doc = json_status(port);
        let h = &json_peer(&doc, "backend", &peer)["health"];
        match h["checks"].as_u64() {
            Some(n) if n >= 12 => Ok(h.clone()),
            _ => Err(h.to_string()),
        }
    });
    let doc = json_status(port);
    let h = &json_peer(&doc, "backend", &peer)["health"];
    assert_eq!(h["status"], "down", "{h}");
    assert_eq!(h["last_error"], "refused", "{h}");
    let log = nginx.stop();
    assert!(
        lines_with(&log, "connect()").is_empty(),
        "a line per probe:\n{log}"
    );
    assert_eq!(lines_with(&log, "is DOWN").len(), 1, "{log}");
}

#[test]
fn ending_an_exclusion_probes_every_peer_of_the_upstream_at_once() {
    let peers: Vec<Backend> = (0..3).map(|_| Backend::new()).collect();
    let port = free_port();
    let body = format!(
        "{}{}{}",
        upstream_block(
            "backend",
            &peers.iter().map(Backend::addr).collect::<Vec<_>>(),
            "upstream_healthcheck type=http interval=30s timeout=1s uri=/hc;"
        ),
        upstream_block("slow", &[peers[0].addr()], ""),
        front(port)
    );
    let nginx = Nginx::start(&body);
    let post = |query: &str| {
        let (status, _, body) =
            http_request(port, "POST", &format!("/admin?{query}"), "").expect("POST /admin");
        assert_eq!(status, 200, "{query}: {body}");
    };
    post("t=ex&u=backend&a=set");
    for b in &peers {
        b.reset_counts();
    }
    let ended = Instant::now();
    post("t=ex&u=backend&a=del");
    wait_until(
        Duration::from_secs(3),
        "every peer probed right after the exclusion ended (interval 30 s)",
        || peers.iter().all(|b| b.hits("/hc") >= 1),
    );
    assert!(ended.elapsed() < Duration::from_secs(3));
    nginx.stop();
}

/// Writes `holder` as the pid holding the lock of the module's 1 MiB zone in `pid`'s memory:
/// the slab pool, and its mutex, start the zone.
fn hold_zone_lock(pid: u32, holder: u64) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let start = maps
        .lines()
        .filter(|l| l.contains("/dev/zero") || l.contains("SYSV"))
        .filter_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (b - a == 1 << 20).then_some(a)
        })
        .next()
        .unwrap_or_else(|| panic!("no 1 MiB shared mapping in {pid}:\n{maps}"));
    let mut mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open /proc/PID/mem");
    mem.seek(SeekFrom::Start(start)).expect("seek");
    mem.write_all(&holder.to_ne_bytes())
        .expect("write the lock");
}

#[test]
fn a_reload_does_not_hang_on_a_zone_lock_that_a_vanished_process_holds() {
    let b = Backend::new();
    let port = free_port();
    let body = format!(
        "upstream_healthcheck_zone 1m;\n{}{}{}",
        upstream_block(
            "backend",
            &[b.addr()],
            "upstream_healthcheck type=http interval=100ms timeout=1s;"
        ),
        upstream_block("slow", &[b.addr()], ""),
        front(port)
    );
    let nginx = Nginx::start(&body);
    wait_until(Duration::from_secs(5), "probes", || b.hits("/") >= 2);
    let old_workers = nginx.worker_pids();
    // A process that no longer exists holds the lock: nginx never force-unlocks it.
    hold_zone_lock(nginx.master_pid(), 4_194_000);
    signal("HUP", nginx.master_pid());
    let answered = poll(Duration::from_secs(8), "new workers answer", || {
        let fresh: Vec<u32> = nginx
            .worker_pids()
            .into_iter()
            .filter(|p| !old_workers.contains(p))
            .collect();
        if fresh.is_empty() {
            return Err("no new worker yet".to_string());
        }
        match http_get(port, "/status") {
            Ok((200, _, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(answered.contains("backend"), "{answered}");
    let log = nginx.error_log();
    assert!(
        log.contains("copying the state without it"),
        "the reload says why it copied without the lock:\n{log}"
    );
    // The old workers wait for the lock forever; they are killed.
    for pid in old_workers {
        signal("KILL", pid);
    }
    nginx.stop_allowing(|l| l.contains("exited on signal 9"));
}

#[test]
fn peers_resolved_at_run_time_are_refused_in_a_checked_upstream() {
    let check = nginx_test_conf(
        "",
        "resolver 127.0.0.1 valid=1s;\n\
         upstream r {\n    zone r 64k;\n    server localhost:8080 resolve;\n    \
         upstream_healthcheck;\n}\n",
    );
    if target_name() == "debian" {
        // nginx 1.22 has no `resolve` parameter in open source.
        assert!(
            check.output.contains("invalid parameter \"resolve\""),
            "{}",
            check.output
        );
    } else {
        let line = check.line_of("upstream r {");
        assert_eq!(
            check.emerg_lines(),
            vec![check.emerg_line(
                "\"upstream_healthcheck\" cannot check the peers of \"server ... resolve\" in upstream \"r\"",
                line
            )],
            "{}",
            check.output
        );
    }
}
