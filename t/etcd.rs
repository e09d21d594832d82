//! etcd as the fleet's source of truth (`upstream_healthcheck_etcd`), as an operator sees it
//! with a real etcd (Debian's `etcd-server`) on loopback: the status formats show the link
//! and the revision; an etcd outage changes nothing but the pages, is logged once and ends by
//! itself; a watch that fell behind a compaction reads everything again; and the control API
//! of one node reaches every node of the fleet through etcd, or refuses when etcd is down.
mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Fast checks: a dead peer is DOWN after two refused probes, about 200 ms.
const CHECK: &str =
    "upstream_healthcheck type=http interval=100ms timeout=500ms fall=2 rise=1 uri=/health;";
const PREFIX: &str = "/fleet/";
/// How soon a change made on one node holds on another.
const FLEET_DEADLINE: Duration = Duration::from_secs(1);
/// Long enough for the watch to come back after etcd does (backoff capped at 5 s).
const RESUME_DEADLINE: Duration = Duration::from_secs(15);

/// One node: nginx with `upstream backend` over `backends`, its status page, its control API,
/// and a proxy location; `workers` worker processes.
fn start_node(etcd: &Etcd, backends: &[&Backend], workers: u32) -> (Nginx, u16) {
    let port = free_port();
    let conf = node_conf(etcd, port, backends);
    let nginx = Nginx::start_with(&format!("worker_processes {workers};"), &conf);
    (nginx, port)
}

fn node_conf(etcd: &Etcd, port: u16, backends: &[&Backend]) -> String {
    let servers: Vec<String> = backends.iter().map(|b| b.addr()).collect();
    format!(
        "upstream_healthcheck_etcd {} prefix={PREFIX} timeout=1s;\n{}\
         server {{\n    listen 127.0.0.1:{port};\n    \
         location = /status {{ upstream_healthcheck_status; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n    \
         location / {{ proxy_pass http://backend; }}\n}}\n",
        etcd.url(),
        upstream_block("backend", &servers, CHECK)
    )
}

fn json_status(port: u16) -> Value {
    strict_json(&status_page(port, "/status?format=json"))
}

/// `msg.etcd` of the JSON status.
fn etcd_state(port: u16) -> Value {
    json_status(port)["msg"]["etcd"].clone()
}

fn wait_connected(port: u16, deadline: Duration) -> Value {
    poll(deadline, "the status says etcd is connected", || {
        let e = etcd_state(port);
        if e["connected"] == true {
            Ok(e)
        } else {
            Err(e.to_string())
        }
    })
}

/// A POST to the control API with `query` (no body): (status, JSON answer).
fn control(port: u16, query: &str) -> (u16, Value) {
    let (status, _, body) = http_request(port, "POST", &format!("/admin?{query}"), "")
        .unwrap_or_else(|e| panic!("POST /admin?{query}: {e}"));
    (status, strict_json(&body))
}

/// The control API's list of exclusions and manual downs on a node.
fn control_list(port: u16) -> Value {
    let (status, _, body) = http_get(port, "/admin").expect("GET /admin");
    assert_eq!(status, 200, "{body}");
    strict_json(&body)["msg"].clone()
}

/// Sends `n` requests through the node; the backends count what reaches them.
fn traffic(port: u16, n: usize) {
    for _ in 0..n {
        let (status, _, body) = http_get(port, "/").expect("GET /");
        assert_eq!(status, 200, "{body}");
    }
}

/// The text status page shows `peer` forced down.
fn manual_down(port: u16, peer: &str) -> bool {
    status_page(port, "/status").contains(&format!(" {peer} DOWN (manual)\n"))
}

#[test]
fn the_status_formats_show_the_link_to_etcd_and_its_revision() {
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}unrelated"), "x");
    let b = Backend::new();
    let (nginx, port) = start_node(&etcd, &[&b], 2);
    let revision = etcd.revision();
    let e = poll(
        Duration::from_secs(5),
        "the status shows the revision",
        || {
            let e = wait_connected(port, Duration::from_secs(5));
            if e["revision"].as_i64() >= Some(revision) {
                Ok(e)
            } else {
                Err(e.to_string())
            }
        },
    );
    assert_eq!(e["endpoint"], format!("127.0.0.1:{}", etcd.port()));
    assert_eq!(e["last_error"], Value::Null);
    assert!(e["since"].as_u64().unwrap() > 1_700_000_000, "{e}");

    let text = status_page(port, "/status");
    assert!(
        text.starts_with("etcd: connected\n\nUpstream backend\n"),
        "{text}"
    );
    let metrics = status_page(port, "/status?format=prometheus");
    assert!(
        metrics.contains("\nnginx_upstream_healthcheck_etcd_connected 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "\nnginx_upstream_healthcheck_etcd_revision {revision}\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("\nnginx_upstream_healthcheck_etcd_refused_keys 0\n"));
    promtool_accepts(&metrics, "the page with etcd's gauges");
    nginx.stop();
}

#[test]
fn an_etcd_outage_changes_nothing_but_the_pages_and_is_logged_once() {
    let mut etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (nginx, port) = start_node(&etcd, &[&b1, &b2], 2);
    wait_connected(port, Duration::from_secs(5));
    // A gray release from etcd: b2 takes no traffic.
    etcd.put(&format!("{PREFIX}control/gray/backend/{}", b2.addr()), "{}");
    wait_until(FLEET_DEADLINE, "b2 is forced down", || {
        manual_down(port, &b2.addr())
    });

    etcd.stop();
    let e = poll(RESUME_DEADLINE, "the status says disconnected", || {
        let e = etcd_state(port);
        (e["connected"] == false)
            .then_some(e.clone())
            .ok_or(e.to_string())
    });
    assert!(
        !e["last_error"].as_str().expect("last_error").is_empty(),
        "{e}"
    );
    // Once etcd's port refuses, the pages say so (the first error may be etcd's own goodbye).
    let refused = format!(
        "connect() to 127.0.0.1:{} failed (Connection refused)",
        etcd.port()
    );
    wait_until(
        RESUME_DEADLINE,
        "the text page names the refused connect",
        || status_page(port, "/status").starts_with(&format!("etcd: disconnected ({refused})\n\n")),
    );
    let metrics = status_page(port, "/status?format=prometheus");
    assert!(
        metrics.contains("\nnginx_upstream_healthcheck_etcd_connected 0\n"),
        "{metrics}"
    );

    // Three seconds of traffic while nginx keeps retrying: the gray release holds.
    b1.reset_counts();
    b2.reset_counts();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        traffic(port, 5);
    }
    assert!(b1.proxied() > 0);
    assert_eq!(
        b2.proxied(),
        0,
        "a forced-down peer took traffic during the outage"
    );
    assert!(manual_down(port, &b2.addr()));

    etcd.restart();
    wait_connected(port, RESUME_DEADLINE);
    // The watch resumed: a change made now applies.
    etcd.del(&format!("{PREFIX}control/gray/backend/{}", b2.addr()));
    wait_until(FLEET_DEADLINE, "b2 is back", || {
        !manual_down(port, &b2.addr())
    });
    let log = nginx.stop();
    let errors = lines_with(&log, "[error]");
    assert_eq!(errors.len(), 1, "one error line per outage:\n{log}");
    assert!(errors[0].contains("etcd is unreachable"), "{}", errors[0]);
    let notices = lines_with(&log, "etcd is reachable again");
    assert_eq!(notices.len(), 1, "one notice line when it ends:\n{log}");
    assert!(notices[0].contains("[notice]"), "{}", notices[0]);
}

#[test]
fn a_frozen_etcd_is_noticed_and_followed_again_when_it_thaws() {
    let etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (nginx, port) = start_node(&etcd, &[&b1, &b2], 2);
    wait_connected(port, Duration::from_secs(5));
    // Frozen: its connections stay open, nothing answers, nothing closes.
    etcd.signal("STOP");
    let e = poll(RESUME_DEADLINE, "the status says disconnected", || {
        let e = etcd_state(port);
        (e["connected"] == false)
            .then_some(e.clone())
            .ok_or(e.to_string())
    });
    assert_eq!(e["last_error"], "etcd did not answer in time", "{e}");
    // A change asked meanwhile waits for etcd up to `timeout`, then is refused.
    let (status, answer) = control(port, &format!("t=gray&u=backend&p={}&a=set", b1.addr()));
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        answer["err_msg"],
        "etcd cannot be written, nothing was changed: etcd did not answer in time"
    );
    assert!(!manual_down(port, &b1.addr()));
    etcd.signal("CONT");
    wait_connected(port, RESUME_DEADLINE);
    etcd.put(&format!("{PREFIX}control/gray/backend/{}", b2.addr()), "{}");
    wait_until(FLEET_DEADLINE, "the change applies", || {
        manual_down(port, &b2.addr())
    });
    let log = nginx.stop();
    assert_eq!(lines_with(&log, "etcd is unreachable").len(), 1, "{log}");
    assert_eq!(
        lines_with(&log, "etcd is reachable again").len(),
        1,
        "{log}"
    );
}

#[test]
fn a_watch_behind_a_compaction_reads_everything_again() {
    let mut etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (nginx, port) = start_node(&etcd, &[&b1, &b2], 1);
    wait_connected(port, Duration::from_secs(5));
    let gray = format!("{PREFIX}control/gray/backend/{}", b2.addr());
    let seen = etcd_state(port)["revision"].as_i64().unwrap();

    // etcd moves on where nginx cannot see it (on another port), and compacts its history.
    let port_for_nginx = etcd.port();
    etcd.restart_on(free_port());
    wait_until(RESUME_DEADLINE, "nginx sees the outage", || {
        etcd_state(port)["connected"] == false
    });
    etcd.put(&gray, "{}");
    etcd.put(&format!("{PREFIX}filler"), "1");
    let now = etcd.revision();
    etcd.compact(now);
    assert!(now > seen + 1);
    etcd.restart_on(port_for_nginx);

    let e = wait_connected(port, RESUME_DEADLINE);
    wait_until(FLEET_DEADLINE, "the key written meanwhile applies", || {
        manual_down(port, &b2.addr())
    });
    assert!(etcd_state(port)["revision"].as_i64() >= Some(now), "{e}");
    let log = nginx.stop();
    assert_eq!(
        lines_with(&log, "reading everything again").len(),
        1,
        "the compaction is noticed once:\n{log}"
    );
}

/// How soon another worker holds the watch after its holder died (the lease runs out after
/// 1.5 s, looked at every 0.5 s), with the change made meanwhile applied.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(3);

#[test]
fn the_watch_moves_to_another_worker_when_its_holder_dies_and_across_a_reload() {
    let etcd = Etcd::start();
    let backends = [Backend::new(), Backend::new(), Backend::new()];
    let refs: Vec<&Backend> = backends.iter().collect();
    let (mut nginx, port) = start_node(&etcd, &refs, 2);
    wait_connected(port, Duration::from_secs(5));
    // Each of the first two workers is killed in turn: one of them held the watch.
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 2);
    for (pid, b) in workers.iter().zip(&backends) {
        signal("KILL", *pid);
        etcd.put(&format!("{PREFIX}control/gray/backend/{}", b.addr()), "{}");
        wait_until(TAKEOVER_DEADLINE, "a worker follows etcd again", || {
            manual_down(port, &b.addr())
        });
    }
    // A reload: the new workers take the watch over, the old ones let go.
    nginx.reload();
    let b = &backends[2];
    etcd.put(&format!("{PREFIX}control/gray/backend/{}", b.addr()), "{}");
    wait_until(TAKEOVER_DEADLINE, "the reloaded node follows etcd", || {
        manual_down(port, &b.addr())
    });
    for b in &backends {
        assert!(
            manual_down(port, &b.addr()),
            "the state survives the reload"
        );
    }
    let log = nginx.stop_allowing(|l| l.contains("exited on signal 9"));
    assert!(lines_with(&log, "etcd is unreachable").is_empty(), "{log}");
}

#[test]
fn control_through_one_node_holds_on_the_other_and_survives_its_restart() {
    let etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (a, a_port) = start_node(&etcd, &[&b1, &b2], 2);
    let (b, b_port) = start_node(&etcd, &[&b1, &b2], 2);
    wait_connected(a_port, Duration::from_secs(5));
    wait_connected(b_port, Duration::from_secs(5));

    // A gray release with a ttl, and an exclusion, asked of node a.
    let started = Instant::now();
    let (status, answer) = control(
        a_port,
        &format!("t=gray&u=backend&p={}&a=set&ttl=60", b2.addr()),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["msg"], "Set into shm succeded");
    let (status, answer) = control(a_port, "t=ex&u=backend&a=set");
    assert_eq!(status, 200, "{answer}");
    // Node a applied it before answering.
    assert!(manual_down(a_port, &b2.addr()));
    // Node b within a second: its every worker routes around b2.
    wait_until(
        FLEET_DEADLINE,
        "node b has the gray release and the exclusion",
        || {
            let list = control_list(b_port);
            list["manual_downs"]
                .as_array()
                .is_some_and(|l| l.len() == 1)
                && list["exclusions"].as_array().is_some_and(|l| l.len() == 1)
        },
    );
    assert!(started.elapsed() < FLEET_DEADLINE * 2);
    b2.reset_counts();
    traffic(b_port, 20);
    assert_eq!(
        b2.proxied(),
        0,
        "node b sent traffic to the forced-down peer"
    );
    let ttl = control_list(b_port)["manual_downs"][0]["ttl"]
        .as_u64()
        .unwrap();
    assert!(
        (50..=60).contains(&ttl),
        "the ttl follows the one asked: {ttl}"
    );
    assert!(etcd
        .keys(PREFIX)
        .contains(&format!("{PREFIX}control/ex/backend")));

    // Node b restarts: it reads the state from etcd.
    let b_log = b.stop();
    assert!(
        lines_with(&b_log, "etcd is unreachable").is_empty(),
        "{b_log}"
    );
    let (b, b_port) = start_node(&etcd, &[&b1, &b2], 2);
    wait_until(
        Duration::from_secs(5),
        "node b restarted with the state",
        || {
            manual_down(b_port, &b2.addr())
                && control_list(b_port)["exclusions"][0]["upstream"] == "backend"
        },
    );

    // Deleting through node b ends it on node a.
    let (status, answer) = control(b_port, &format!("t=gray&u=backend&p={}&a=del", b2.addr()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["msg"], "Delete succeded");
    let (status, _) = control(b_port, "t=ex&u=backend&a=del");
    assert_eq!(status, 200);
    wait_until(FLEET_DEADLINE, "node a follows the deletes", || {
        let list = control_list(a_port);
        list["manual_downs"] == serde_json::json!([]) && list["exclusions"] == serde_json::json!([])
    });
    a.stop();
    b.stop();
}

#[test]
fn a_gray_release_with_a_ttl_ends_on_every_node_with_its_etcd_lease() {
    let etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (a, a_port) = start_node(&etcd, &[&b1, &b2], 1);
    let (b, b_port) = start_node(&etcd, &[&b1, &b2], 1);
    wait_connected(a_port, Duration::from_secs(5));
    wait_connected(b_port, Duration::from_secs(5));
    let (status, answer) = control(
        a_port,
        &format!("t=gray&u=backend&p={}&a=set&ttl=2", b2.addr()),
    );
    assert_eq!(status, 200, "{answer}");
    wait_until(FLEET_DEADLINE, "node b has the gray release", || {
        manual_down(b_port, &b2.addr())
    });
    // etcd drops the key with its lease; both nodes end it.
    wait_until(Duration::from_secs(6), "the key expires in etcd", || {
        etcd.keys(PREFIX).is_empty()
    });
    wait_until(FLEET_DEADLINE, "both nodes end the gray release", || {
        !manual_down(a_port, &b2.addr()) && !manual_down(b_port, &b2.addr())
    });
    a.stop();
    b.stop();
}

#[test]
fn control_is_refused_with_nothing_changed_when_etcd_cannot_be_written() {
    let mut etcd = Etcd::start();
    let (b1, b2) = (Backend::new(), Backend::new());
    let (nginx, port) = start_node(&etcd, &[&b1, &b2], 2);
    wait_connected(port, Duration::from_secs(5));
    etcd.stop();
    for query in [
        format!("t=gray&u=backend&p={}&a=set&ttl=30", b2.addr()),
        format!("t=gray&u=backend&p={}&a=set", b2.addr()),
        "t=ex&u=backend&a=set".to_owned(),
    ] {
        let (status, answer) = control(port, &query);
        assert_eq!(status, 503, "{query}: {answer}");
        assert_eq!(answer["status"], "err");
        let msg = answer["err_msg"].as_str().unwrap();
        assert!(
            msg.starts_with("etcd cannot be written, nothing was changed"),
            "{msg}"
        );
    }
    let list = control_list(port);
    assert_eq!(list["manual_downs"], serde_json::json!([]));
    assert_eq!(list["exclusions"], serde_json::json!([]));
    assert!(!manual_down(port, &b2.addr()));
    // Unknown names are still the node's own 404s, etcd or not.
    let (status, _) = control(port, "t=ex&u=nosuch&a=set");
    assert_eq!(status, 404);
    nginx.stop();
}

#[test]
fn an_etcd_url_with_a_host_name_fails_nginx_t() {
    let check = nginx_test_conf("", "upstream_healthcheck_etcd http://localhost:2379;\n");
    assert!(!check.ok, "{}", check.output);
    let line = check.line_of("upstream_healthcheck_etcd");
    assert_eq!(
        check.emerg_lines(),
        vec![check.emerg_line(
            "invalid parameter \"http://localhost:2379\" in \"upstream_healthcheck_etcd\" \
             directive, expected http://IP:port with an IP address (host names are not resolved)",
            line
        )]
    );
}
