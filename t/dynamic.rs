//! A fleet whose membership lives in etcd (`upstream_healthcheck_dynamic`): two nginx nodes of
//! two workers each follow `<prefix>upstreams/<upstream>/<host:port>` keys without a reload.
//! Adding, re-weighting, marking down and deleting a key changes what every worker of both
//! nodes sends to the backends; a bad value keeps its peer with the defaults and touches no
//! other; keys past `max_peers` are refused and counted; a reload keeps what etcd said; a
//! restart while etcd is down serves the static servers until etcd answers, or, with a state
//! file, the membership etcd last gave, with its peers' state.
mod common;

use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const PREFIX: &str = "/fleet/";
const HEALTH: &str = "/health";

/// How long every worker of every node may take to follow a change of etcd (the issue's
/// bound; the bench row measures the actual time).
const FOLLOW: Duration = Duration::from_secs(1);

/// The checks of the stories: a verdict within a couple of probes of 100 ms.
const FAST_CHECKS: &str = "interval=100ms fall=1 rise=1";
/// Checks that decide nothing within a story: a first probe somewhere in the first hour, and
/// three results to change a verdict.
const SLOW_CHECKS: &str = "interval=1h fall=3 rise=3";

/// The membership key of `b` in upstream `backend`.
fn key(b: &Backend) -> String {
    format!("{PREFIX}upstreams/backend/{}", b.addr())
}

/// One nginx node of the fleet: `backend` with `statics` as its static servers and
/// `max_peers` (0: not following etcd), a front on `port` that says which worker answered and
/// which backend served.
fn node_conf(etcd: &Etcd, port: u16, statics: &[&Backend], max_peers: usize) -> String {
    node_conf_with(etcd, port, statics, max_peers, "")
}

/// `node_conf` with `extra` directives in the upstream (a balancer).
fn node_conf_with(
    etcd: &Etcd,
    port: u16,
    statics: &[&Backend],
    max_peers: usize,
    extra: &str,
) -> String {
    node_conf_full(etcd, port, statics, max_peers, extra, FAST_CHECKS)
}

/// `node_conf` with the upstream's checks `checks`.
fn node_conf_checked(
    etcd: &Etcd,
    port: u16,
    statics: &[&Backend],
    max_peers: usize,
    checks: &str,
) -> String {
    node_conf_full(etcd, port, statics, max_peers, "", checks)
}

/// `node_conf` with `extra` directives in the upstream and its checks `checks`.
fn node_conf_full(
    etcd: &Etcd,
    port: u16,
    statics: &[&Backend],
    max_peers: usize,
    extra: &str,
    checks: &str,
) -> String {
    let mut servers: String = extra.to_string();
    for b in statics {
        servers.push_str(&format!("    server {};\n", b.addr()));
    }
    if max_peers > 0 {
        servers.push_str(&format!(
            "    upstream_healthcheck_dynamic max_peers={max_peers};\n"
        ));
    }
    format!(
        "upstream_healthcheck_etcd {} prefix={PREFIX};\n\
         upstream backend {{\n    zone backend 256k;\n{servers}    \
         upstream_healthcheck {checks} uri={HEALTH};\n}}\n\
         server {{\n    listen 127.0.0.1:{port} reuseport;\n    keepalive_timeout 0;\n    \
         add_header X-Worker $pid always;\n    proxy_next_upstream off;\n    \
         location / {{ proxy_pass http://backend; }}\n    \
         location = /status {{ upstream_healthcheck_status json; }}\n    \
         location = /metrics {{ upstream_healthcheck_status prometheus; }}\n    \
         location = /control {{ upstream_healthcheck_admin; }}\n}}\n",
        etcd.url()
    )
}

struct Node {
    nginx: Nginx,
    port: u16,
}

impl Node {
    fn start(etcd: &Etcd, statics: &[&Backend], max_peers: usize) -> Node {
        Node::start_with(etcd, statics, max_peers, "")
    }

    fn start_with(etcd: &Etcd, statics: &[&Backend], max_peers: usize, extra: &str) -> Node {
        let port = free_port();
        let nginx = Nginx::start_with(
            "worker_processes 2;",
            &node_conf_with(etcd, port, statics, max_peers, extra),
        );
        Node { nginx, port }
    }

    fn status(&self) -> Value {
        strict_json(&status_page(self.port, "/status"))
    }

    /// One request on its own connection: (worker pid, backend port), or `None` for an answer
    /// that no backend gave (a 502 when there is no peer).
    fn request(&self) -> Option<(u32, u16)> {
        let (status, headers, _) = http_get(self.port, "/x").ok()?;
        let worker = header(&headers, "X-Worker")?.parse().ok()?;
        let backend = header(&headers, "X-Backend").and_then(|b| b.parse().ok());
        match (status, backend) {
            (200, Some(b)) => Some((worker, b)),
            _ => None,
        }
    }

    /// Backends each worker sent a batch of requests to (None: answered without a backend).
    fn routes(&self, batch: usize) -> HashMap<u32, HashSet<Option<u16>>> {
        let mut by: HashMap<u32, HashSet<Option<u16>>> = HashMap::new();
        for _ in 0..batch {
            if let Ok((_, headers, _)) = http_get(self.port, "/x") {
                let Some(w) = header(&headers, "X-Worker").and_then(|w| w.parse().ok()) else {
                    continue;
                };
                let b = header(&headers, "X-Backend").and_then(|b| b.parse().ok());
                by.entry(w).or_default().insert(b);
            }
        }
        by
    }
}

/// Waits (up to `within`) until every worker of every node sends requests to exactly `want`
/// (`None`: no backend, a 502).
fn wait_routes(nodes: &[&Node], want: &[Option<u16>], within: Duration) {
    let want: HashSet<Option<u16>> = want.iter().copied().collect();
    for node in nodes {
        let workers = node.nginx.worker_pids();
        let what = format!(
            "every worker {workers:?} of node :{} sends to {want:?}",
            node.port
        );
        poll_every(Duration::from_millis(10), within, &what, || {
            let seen = node.routes(12 * want.len().max(1));
            if workers.iter().all(|w| seen.get(w) == Some(&want)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        });
    }
}

/// A backend whose health checks pass.
fn backend() -> Backend {
    let b = Backend::new();
    b.set_health_path(HEALTH);
    b
}

fn peers(status: &Value) -> Vec<Value> {
    json_upstream(status, "backend")["primary"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn names(status: &Value) -> Vec<String> {
    let mut n: Vec<String> = peers(status)
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn keys_add_reweight_mark_down_and_remove_peers_on_every_worker_of_two_nodes() {
    let etcd = Etcd::start();
    let (s, a, b, c) = (backend(), backend(), backend(), backend());
    etcd.put(&key(&a), "{}");
    etcd.put(&key(&b), "");
    let one = Node::start(&etcd, &[&s], 8);
    let two = Node::start(&etcd, &[&s], 8);
    let nodes = [&one, &two];
    let p = |b: &Backend| Some(b.port());

    // etcd's peers replace the static one on every worker.
    wait_routes(&nodes, &[p(&a), p(&b)], Duration::from_secs(5));
    for node in nodes {
        let st = node.status();
        assert_eq!(names(&st), {
            let mut v = vec![a.addr(), b.addr()];
            v.sort();
            v
        });
        let pa = json_peer(&st, "backend", &a.addr());
        assert_eq!(pa["source"], "etcd");
        assert_eq!(pa["etcd_error"], Value::Null);
    }

    // Added with weight 3: every worker of both nodes sends it three times a's share.
    etcd.put(&key(&c), r#"{"weight": 3}"#);
    wait_routes(&nodes, &[p(&a), p(&b), p(&c)], FOLLOW);
    for b in [&a, &b, &c] {
        b.reset_counts();
    }
    for node in nodes {
        for _ in 0..50 {
            assert!(node.request().is_some());
        }
    }
    assert_eq!(a.proxied() + b.proxied() + c.proxied(), 100);
    assert_eq!(
        c.proxied(),
        60,
        "weight 3 of 5 (a {}, b {})",
        a.proxied(),
        b.proxied()
    );
    assert_eq!(json_peer(&one.status(), "backend", &c.addr())["weight"], 3);

    // Marked down: a manual down without a ttl; nothing reaches it.
    etcd.put(&key(&b), r#"{"status": "down"}"#);
    wait_routes(&nodes, &[p(&a), p(&c)], FOLLOW);
    for node in nodes {
        let st = node.status();
        let pb = json_peer(&st, "backend", &b.addr());
        assert_eq!(pb["down"], true);
        assert_eq!(pb["health"]["manual_down"], true);
        assert_eq!(pb["health"]["manual_down_ttl"], Value::Null);
        let text = status_page(node.port, "/status?format=text");
        assert!(
            text.contains(&format!("{} DOWN (manual)", b.addr())),
            "{text}"
        );
    }

    // Deleted: gone from the pages, and no new request reaches it.
    etcd.del(&key(&a));
    wait_routes(&nodes, &[p(&c)], FOLLOW);
    a.reset_counts();
    for node in nodes {
        for _ in 0..20 {
            assert_eq!(node.request().map(|(_, b)| b), p(&c));
        }
        assert!(!names(&node.status()).contains(&a.addr()));
    }
    assert_eq!(a.proxied(), 0);

    // Back up, then every key deleted: no peer at all, 502s, not the static server.
    etcd.put(&key(&b), "{}");
    wait_routes(&nodes, &[p(&b), p(&c)], FOLLOW);
    etcd.del(&key(&b));
    etcd.del(&key(&c));
    wait_routes(&nodes, &[None], FOLLOW);
    assert_eq!(
        s.proxied(),
        0,
        "the static server is never used once etcd was read"
    );
    for node in nodes {
        assert!(names(&node.status()).is_empty());
        let log = node.nginx.error_log();
        assert!(!log.contains("is read again from the shared zone"), "{log}");
    }
}

#[test]
fn a_bad_value_keeps_its_peer_with_the_defaults_and_no_other_is_affected() {
    let etcd = Etcd::start();
    let (s, a, b) = (backend(), backend(), backend());
    etcd.put(&key(&a), "{weight: 3");
    etcd.put(&key(&b), r#"{"weight": 2, "check_url": "/health"}"#);
    let node = Node::start(&etcd, &[&s], 4);
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a), p(&b)], Duration::from_secs(5));
    let st = node.status();
    let pa = json_peer(&st, "backend", &a.addr());
    assert_eq!(pa["etcd_error"], "the value is not valid JSON");
    assert_eq!(pa["weight"], 1);
    let pb = json_peer(&st, "backend", &b.addr());
    assert_eq!(pb["etcd_error"], Value::Null);
    assert_eq!(pb["weight"], 2);

    // A field of the wrong type: reported, defaults; then fixed.
    etcd.put(&key(&b), r#"{"weight": "heavy"}"#);
    wait_until(Duration::from_secs(5), "b's bad weight reported", || {
        json_peer(&node.status(), "backend", &b.addr())["etcd_error"]
            == "\"weight\" is not an integer from 1 to 10000"
    });
    wait_routes(&[&node], &[p(&a), p(&b)], FOLLOW);
    etcd.put(&key(&a), r#"{"weight": 4}"#);
    wait_until(Duration::from_secs(5), "a's value fixed", || {
        let st = node.status();
        let pa = json_peer(&st, "backend", &a.addr());
        pa["etcd_error"] == Value::Null && pa["weight"] == 4
    });
    // A key that names a host, not an address: ignored, said once, the others untouched.
    etcd.put(&format!("{PREFIX}upstreams/backend/localhost:8080"), "{}");
    wait_until(Duration::from_secs(5), "the hostname key reported", || {
        node.nginx.error_log().contains(
            "upstreams/backend/localhost:8080\" is ignored: not an IP address with a port",
        )
    });
    wait_routes(&[&node], &[p(&a), p(&b)], FOLLOW);
    let log = node.nginx.error_log();
    assert_eq!(
        lines_with(
            &log,
            &format!(
                "upstreams/backend/{}\": the value is not valid JSON",
                a.addr()
            )
        )
        .len(),
        1,
        "{log}"
    );
}

#[test]
fn keys_past_max_peers_are_refused_counted_and_admitted_when_room_is_made() {
    let etcd = Etcd::start();
    let s = backend();
    let mut bs: Vec<Backend> = (0..3).map(|_| backend()).collect();
    // etcd's key order within the upstream is the order of the addresses' text.
    bs.sort_by_key(|b| b.addr());
    for b in &bs {
        etcd.put(&key(b), "{}");
    }
    let node = Node::start(&etcd, &[&s], 2);
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&bs[0]), p(&bs[1])], Duration::from_secs(5));
    let gauge = |node: &Node| {
        let page = status_page(node.port, "/metrics");
        page.lines()
            .find(|l| l.starts_with("nginx_upstream_healthcheck_etcd_refused_keys "))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no refused-keys gauge in\n{page}"))
    };
    assert_eq!(gauge(&node), "1");
    assert_eq!(node.status()["msg"]["etcd"]["refused_keys"], 1);
    promtool_accepts(
        &status_page(node.port, "/metrics"),
        "the page of a dynamic upstream",
    );
    assert!(!names(&node.status()).contains(&bs[2].addr()));
    let log = node.nginx.error_log();
    assert_eq!(
        lines_with(&log, "etcd key(s) refused, past max_peers=2").len(),
        1,
        "{log}"
    );

    // A fourth key while full: refused too, logged once.
    let d = backend();
    etcd.put(&key(&d), "{}");
    wait_until(Duration::from_secs(5), "two keys refused", || {
        gauge(&node) == "2"
    });
    // Room is made: the first refused key in key order takes it.
    etcd.del(&key(&bs[0]));
    let mut next = [&bs[2], &d];
    next.sort_by_key(|b| b.addr());
    wait_routes(&[&node], &[p(&bs[1]), p(next[0])], FOLLOW);
    assert_eq!(gauge(&node), "1");
    let log = node.nginx.error_log();
    assert_eq!(alert_lines(&log), Vec::<&str>::new());
    assert!(
        !log.contains("is read again from the shared zone"),
        "the holder's roster went astray:\n{log}"
    );
}

#[test]
fn a_reload_keeps_the_membership_learned_from_etcd() {
    let mut etcd = Etcd::start();
    let (s, a) = (backend(), backend());
    etcd.put(&key(&a), "{}");
    let mut node = Node::start(&etcd, &[&s], 4);
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    // etcd is away during the reload: the new workers keep what the zone knows.
    etcd.stop();
    node.nginx.reload();
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    assert_eq!(
        json_peer(&node.status(), "backend", &a.addr())["source"],
        "etcd"
    );
    s.reset_counts();
    for _ in 0..20 {
        assert_eq!(node.request().map(|(_, b)| b), p(&a));
    }
    assert_eq!(s.proxied(), 0);
    // etcd back: changes are followed again.
    etcd.restart();
    let b = backend();
    etcd.put(&key(&b), "{}");
    wait_routes(&[&node], &[p(&a), p(&b)], Duration::from_secs(10));
    // A reload without upstream_healthcheck_dynamic: the static server is the peer again.
    node.nginx
        .rewrite_conf(&node_conf(&etcd, node.port, &[&s], 0));
    node.nginx.reload();
    wait_routes(&[&node], &[p(&s)], Duration::from_secs(5));
    assert_eq!(names(&node.status()), vec![s.addr()]);
}

#[test]
fn a_restart_while_etcd_is_down_serves_the_static_servers_until_etcd_answers() {
    let mut etcd = Etcd::start();
    let (s, a) = (backend(), backend());
    etcd.put(&key(&a), "{}");
    let node = Node::start(&etcd, &[&s], 4);
    let port = node.port;
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    // Without a state file, nothing of etcd's membership outlives nginx.
    etcd.stop();
    let node = Node {
        nginx: node.nginx.restart("TERM", Duration::ZERO),
        port,
    };
    wait_routes(&[&node], &[p(&s)], Duration::from_secs(5));
    assert_eq!(
        json_peer(&node.status(), "backend", &s.addr())["source"],
        "config"
    );
    etcd.restart();
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(10));
    assert!(!names(&node.status()).contains(&s.addr()));
}

#[test]
fn a_restart_while_etcd_is_down_serves_the_membership_of_the_state_file_until_etcd_answers() {
    let mut etcd = Etcd::start();
    let (s, a, b, c) = (backend(), backend(), backend(), backend());
    // b is found DOWN by its checks.
    b.stop();
    etcd.put(&key(&a), r#"{"weight": 2}"#);
    etcd.put(&key(&b), "{}");
    let dir = state_dir();
    let file = dir.path().join("hc.state");
    let port = free_port();
    let with_file = |checks: &str| {
        format!(
            "upstream_healthcheck_state_file {};\n{}",
            file.display(),
            node_conf_checked(&etcd, port, &[&s], 4, checks)
        )
    };
    let (fast, slow) = (with_file(FAST_CHECKS), with_file(SLOW_CHECKS));
    let node = Node {
        nginx: Nginx::start_with("worker_processes 2;", &fast),
        port,
    };
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    let status_of = |node: &Node, b: &Backend| {
        json_peer(&node.status(), "backend", &b.addr())["health"]["status"].clone()
    };
    wait_until(Duration::from_secs(5), "b found down", || {
        status_of(&node, &b) == "down"
    });
    let checks_of = |node: &Node, b: &Backend| {
        json_peer(&node.status(), "backend", &b.addr())["health"]["checks"]
            .as_u64()
            .unwrap_or(0)
    };
    let a_checks = checks_of(&node, &a);
    assert!(a_checks > 0);
    // The writer keeps etcd's peers in the file, b DOWN, and not the static server.
    let doc = wait_file(&file, "etcd's peers in the state file", |doc| {
        let members = &doc["membership"]["upstreams"][0]["members"];
        let of = |b: &Backend| {
            members
                .as_array()
                .and_then(|m| m.iter().find(|p| p["peer"] == b.addr().as_str()))
                .cloned()
        };
        of(&a).is_some_and(|m| m["value"]["weight"] == 2)
            && of(&b).is_some_and(|m| m["up"] == false)
    });
    assert_eq!(
        doc["membership"]["upstreams"][0]["members"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // nginx -s stop, etcd down, start: no probe can decide within the story from now on, so
    // what shows comes from the file the master wrote at exit.
    let Node { mut nginx, port } = node;
    nginx.rewrite_conf(&slow);
    etcd.stop();
    let node = Node {
        nginx: nginx.restart("TERM", Duration::ZERO),
        port,
    };
    let st = node.status();
    let mut want = vec![a.addr(), b.addr()];
    want.sort();
    assert_eq!(names(&st), want, "etcd's peers, not the static server");
    let pa = json_peer(&st, "backend", &a.addr());
    assert_eq!((&pa["source"], &pa["weight"]), (&"etcd".into(), &2.into()));
    assert_eq!(status_of(&node, &b), "down", "b starts DOWN");
    assert!(checks_of(&node, &a) >= a_checks, "a's counters kept");
    // Every worker sends to a alone from the first request.
    s.reset_counts();
    a.reset_counts();
    wait_routes(&[&node], &[p(&a)], Duration::ZERO);
    for _ in 0..20 {
        assert_eq!(node.request().map(|(_, b)| b), p(&a));
    }
    assert_eq!(s.proxied(), 0, "the static server is not used");
    assert!(a.proxied() >= 20);
    let log = node.nginx.error_log();
    assert_eq!(
        lines_with(&log, "membership of 1 upstream(s) taken from").len(),
        1,
        "{log}"
    );

    // etcd answers with another membership: the node follows it; a kept its state.
    etcd.restart();
    etcd.del(&key(&b));
    etcd.put(&key(&c), "{}");
    wait_routes(&[&node], &[p(&a), p(&c)], Duration::from_secs(10));
    assert!(!names(&node.status()).contains(&b.addr()));
    assert!(checks_of(&node, &a) >= a_checks, "a's counters kept");
    assert_eq!(s.proxied(), 0);
}

#[test]
fn a_peer_from_etcd_forced_down_through_one_nodes_control_api_is_down_on_both() {
    let etcd = Etcd::start();
    let (s, a, b) = (backend(), backend(), backend());
    etcd.put(&key(&a), "{}");
    etcd.put(&key(&b), "{}");
    let one = Node::start(&etcd, &[&s], 4);
    let two = Node::start(&etcd, &[&s], 4);
    let nodes = [&one, &two];
    let p = |b: &Backend| Some(b.port());
    wait_routes(&nodes, &[p(&a), p(&b)], Duration::from_secs(5));
    // The control API names it by its address, as for a static server.
    let q = format!("/control?t=gray&u=backend&p={}&a=set", a.addr());
    let (status, _, body) = http_request(one.port, "POST", &q, "").expect("control");
    assert_eq!(status, 200, "{body}");
    wait_routes(&nodes, &[p(&b)], FOLLOW);
    assert_eq!(
        json_peer(&two.status(), "backend", &a.addr())["health"]["manual_down"],
        true
    );
    let q = format!("/control?t=gray&u=backend&p={}&a=del", a.addr());
    assert_eq!(
        http_request(two.port, "POST", &q, "").expect("control").0,
        200
    );
    wait_routes(&nodes, &[p(&a), p(&b)], FOLLOW);
}

#[test]
fn a_deleted_peer_takes_no_new_request_and_its_requests_in_flight_finish() {
    let etcd = Etcd::start();
    let (s, a, b) = (backend(), backend(), backend());
    etcd.put(&key(&a), "{}");
    let node = Node::start(&etcd, &[&s], 2);
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    a.set_path_mode("/slow", Mode::Hang);
    let port = node.port;
    let in_flight = std::thread::spawn(move || http_get(port, "/slow"));
    wait_until(Duration::from_secs(5), "the slow request at a", || {
        a.hits("/slow") == 1
    });
    etcd.put(&key(&b), "{}");
    etcd.del(&key(&a));
    wait_routes(&[&node], &[p(&b)], FOLLOW);
    a.set_path_mode("/slow", Mode::Status(200));
    let (status, headers, _) = in_flight.join().expect("thread").expect("the slow request");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "X-Backend"), Some(a.port().to_string()));
    // Nor is it probed any more (one probe may have been in flight): b's probes keep time.
    let (a0, b0) = (a.hits(HEALTH), b.hits(HEALTH));
    wait_until(Duration::from_secs(5), "five more probes of b", || {
        b.hits(HEALTH) >= b0 + 5
    });
    assert!(
        a.hits(HEALTH) <= a0 + 1,
        "{} probes of a after its delete",
        a.hits(HEALTH) - a0
    );
}

#[test]
fn least_conn_follows_etcd_too() {
    let etcd = Etcd::start();
    let (s, a, b) = (backend(), backend(), backend());
    etcd.put(&key(&a), "{}");
    let node = Node::start_with(&etcd, &[&s], 4, "    least_conn;\n");
    let p = |b: &Backend| Some(b.port());
    wait_routes(&[&node], &[p(&a)], Duration::from_secs(5));
    etcd.put(&key(&b), "{}");
    wait_routes(&[&node], &[p(&a), p(&b)], FOLLOW);
    etcd.del(&key(&a));
    wait_routes(&[&node], &[p(&b)], FOLLOW);
    assert_eq!(s.proxied(), 0);
}

#[test]
fn a_values_check_url_and_slow_start_apply_to_its_peer() {
    let etcd = Etcd::start();
    let (s, a, b) = (backend(), backend(), backend());
    // a is probed on /other, which fails; b ramps over 30 s once added.
    a.set_path_mode("/other", Mode::Status(503));
    etcd.put(&key(&a), r#"{"checkurl": "/other"}"#);
    let node = Node::start(&etcd, &[&s], 4);
    let p = |b: &Backend| Some(b.port());
    wait_until(Duration::from_secs(5), "a DOWN by its check_url", || {
        json_peer(&node.status(), "backend", &a.addr())["health"]["status"] == "down"
    });
    assert!(a.hits("/other") > 0);
    assert_eq!(a.hits(HEALTH), 0, "the upstream's uri is not a's");
    etcd.put(&key(&b), r#"{"slow_start": 30}"#);
    wait_routes(&[&node], &[p(&b)], FOLLOW);
    let st = node.status();
    let h = &json_peer(&st, "backend", &b.addr())["health"];
    assert!(
        h["slow_start_factor"].as_f64().is_some_and(|f| f < 0.5),
        "{h}"
    );
    assert!(h["slow_start_until"].is_f64(), "{h}");
}
