//! Runtime control and HA standby, as an operator uses them: the `upstream_healthcheck_admin`
//! endpoint (lua-resty-uh's `t`/`u`/`p`/`a`/`ttl` parameters) excluding upstreams from checking
//! and forcing peers down, with and without a ttl, across workers and reloads; its refusals; and
//! `upstream_healthcheck_ha_address`, with nginx running in a network namespace of its own.
//!
//! Every story runs a real nginx with the module, real loopback backends, and asserts on what a
//! user sees: the control API's answers, the status page (text, JSON, Prometheus), and the
//! requests that reach each backend.
mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Fast checks: a dead peer is DOWN after two refused probes, about 200 ms.
const CHECK: &str =
    "upstream_healthcheck type=http interval=100ms timeout=500ms fall=2 rise=1 uri=/health;";
const INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// HTTP

// ---------------------------------------------------------------------------------------------
// The control API

/// POST /admin with `body` as a form (or with `content_type` when given): (status, raw body).
fn admin_post_body(port: u16, content_type: Option<&str>, body: &[u8]) -> (u16, String) {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    let (status, h, b) = request(port, "POST", "/admin", &headers, body);
    assert_eq!(
        header(&h, "Content-Type").as_deref(),
        Some("application/json"),
        "{status}\n{h}\n{b}"
    );
    (status, b)
}

fn empty_list() -> Value {
    json!({"exclusions": [], "manual_downs": []})
}

/// Asserts a JSON error envelope with exactly `msg`.
fn assert_err(got: (u16, String), status: u16, msg: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(
        strict_json(&got.1),
        json!({"status": "err", "err_msg": msg, "msg": ""}),
        "{what}"
    );
}

// ---------------------------------------------------------------------------------------------
// Status pages

fn text_page(port: u16) -> String {
    status_page(port, "/status")
}

fn json_page(port: u16) -> Value {
    strict_json(&status_page(port, "/status?format=json"))
}

fn prom_page(port: u16) -> String {
    status_page(port, "/status?format=prometheus")
}

/// The `Upstream NAME...` header line of `upstream` on a text page.
fn text_header<'a>(page: &'a str, upstream: &str) -> Option<&'a str> {
    page.lines().find(|l| {
        l.strip_prefix("Upstream ")
            .map(|r| r.strip_suffix(" (NO checkers)").unwrap_or(r) == upstream)
            .unwrap_or(false)
    })
}

/// `health.checks` of a checked peer on the JSON page.
fn checks(port: u16, upstream: &str, peer: &str) -> u64 {
    let doc = json_page(port);
    json_peer(&doc, upstream, peer)["health"]["checks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no health.checks for {peer}: {doc}"))
}

/// Whether the Prometheus page has exactly this sample line.
fn has_sample(page: &str, line: &str) -> bool {
    page.lines().any(|l| l == line)
}

// ---------------------------------------------------------------------------------------------
// Configs and traffic

/// The front server: status page, control endpoint, and per upstream `/u/NAME/` (proxy, retries
/// on errors as usual) and `/strict/NAME/` (no retry, so a request sent to a dead peer is a 502).
/// Every answer names the worker (`X-Worker`); `reuseport` spreads connections over workers.
fn front(port: u16, upstreams: &[&str]) -> String {
    let mut locs = String::new();
    for u in upstreams {
        locs.push_str(&format!(
            "    location /u/{u}/ {{ proxy_pass http://{u}; }}\n    \
             location /strict/{u}/ {{ proxy_pass http://{u}; proxy_next_upstream off; }}\n"
        ));
    }
    format!(
        "server {{\n    listen 127.0.0.1:{port} reuseport;\n    keepalive_timeout 0;\n    \
         proxy_connect_timeout 1s;\n    proxy_read_timeout 3s;\n    \
         add_header X-Worker $pid always;\n    \
         location = /status {{ upstream_healthcheck_status; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n{locs}}}\n"
    )
}

/// One proxied GET: (status, answering backend port from `X-Backend`, worker pid).
fn proxied_get(port: u16, path: &str) -> (u16, Option<u16>, u32) {
    let (status, headers, _) = request(port, "GET", path, &[], b"");
    let backend = header(&headers, "X-Backend").and_then(|v| v.parse().ok());
    let worker = header(&headers, "X-Worker")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Worker: {headers}"));
    (status, backend, worker)
}

/// Sends at least `min` requests to `path`, and more until every one of `workers` workers
/// answered at least 5 (5 s deadline). Returns (status, backend, worker) of each.
fn spread_requests(
    port: u16,
    path: &str,
    min: usize,
    workers: usize,
) -> Vec<(u16, Option<u16>, u32)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    loop {
        out.push(proxied_get(port, path));
        let mut per: std::collections::HashMap<u32, usize> = Default::default();
        for (_, _, w) in &out {
            *per.entry(*w).or_default() += 1;
        }
        if out.len() >= min && per.len() >= workers && per.values().all(|&n| n >= 5) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "requests did not reach {workers} workers (5 each) within 5 s: {per:?}"
        );
    }
}

/// Arrivals of health probes at `b` after `t`.
fn probes_after(b: &Backend, t: Instant) -> usize {
    b.arrivals("/health").iter().filter(|&&a| a > t).count()
}

// ---------------------------------------------------------------------------------------------
// 1. Exclusion

#[test]
fn exclusion_stops_checks_until_deleted_then_checks_restart_fresh() {
    let live = Backend::new();
    let dead = dead_addr();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block("ex1", &[live.addr(), format!("{dead} max_fails=0")], CHECK),
        front(port, &["ex1"])
    );
    let nginx = Nginx::start(&conf);

    wait_text_state(port, "ex1", &dead, "DOWN", Duration::from_secs(3));
    poll(
        Duration::from_secs(3),
        "a few probes of the live peer",
        || {
            let n = checks(port, "ex1", &live.addr());
            if n >= 6 {
                Ok(())
            } else {
                Err(format!("checks {n}"))
            }
        },
    );
    let checks_before = checks(port, "ex1", &live.addr());
    for _ in 0..6 {
        assert_eq!(
            proxied_get(port, "/strict/ex1/x").0,
            200,
            "the DOWN peer is skipped"
        );
    }

    post_ok(port, "t=ex&u=ex1&a=set", SET);
    let excluded_at = Instant::now();

    // The upstream shows as unchecked; the dead peer is not DOWN any more.
    let page = text_page(port);
    assert_eq!(
        text_header(&page, "ex1"),
        Some("Upstream ex1 (NO checkers)"),
        "{page}"
    );
    assert_eq!(text_state(&page, "ex1", &dead), Some("up"), "{page}");
    assert_eq!(text_state(&page, "ex1", &live.addr()), Some("up"), "{page}");
    let doc = json_page(port);
    assert_eq!(json_upstream(&doc, "ex1")["checked"], json!(false), "{doc}");
    assert_eq!(json_peer(&doc, "ex1", &dead)["down"], json!(false), "{doc}");
    assert!(
        json_peer(&doc, "ex1", &dead).get("health").is_none(),
        "{doc}"
    );
    let prom = prom_page(port);
    for (status, v) in [("UP", 0), ("DOWN", 0), ("UNKNOWN", 1)] {
        let line = format!("nginx_upstream_status_info{{name=\"ex1\",status=\"{status}\"}} {v}");
        assert!(has_sample(&prom, &line), "missing {line}:\n{prom}");
    }
    assert!(
        !prom.contains("nginx_upstream_healthcheck_peer_up{upstream=\"ex1\""),
        "{prom}"
    );

    assert_eq!(get_ttl(port, "t=ex&u=ex1&a=get"), Some(0));
    assert_eq!(
        list(port),
        json!({"exclusions": [{"upstream": "ex1", "ttl": 0}], "manual_downs": []})
    );

    // The dead peer takes its share of traffic again, as without checks: without retries, the
    // requests nginx sends it fail.
    let results: Vec<u16> = (0..10)
        .map(|_| proxied_get(port, "/strict/ex1/x").0)
        .collect();
    assert!(
        results.contains(&502) && results.contains(&200),
        "{results:?}"
    );

    // No probe reaches the live backend any more (a probe already under way may still land
    // within one interval of the exclusion); watch for 10 intervals.
    thread::sleep(10 * INTERVAL);
    let late = probes_after(&live, excluded_at + INTERVAL);
    assert_eq!(
        late,
        0,
        "{late} probes reached {} after the exclusion",
        live.addr()
    );

    // Deleting the exclusion restarts the checks with fresh counters.
    post_ok(port, "t=ex&u=ex1&a=del", DELETED);
    let deleted_at = Instant::now();
    let doc = json_page(port);
    assert_eq!(json_upstream(&doc, "ex1")["checked"], json!(true), "{doc}");
    let fresh = json_peer(&doc, "ex1", &live.addr())["health"]["checks"]
        .as_u64()
        .unwrap();
    assert!(
        fresh <= 2 && fresh < checks_before,
        "checks {fresh} after restart (was {checks_before}): {doc}"
    );
    assert_eq!(get_ttl(port, "t=ex&u=ex1&a=get"), None);
    assert_eq!(list(port), empty_list());

    // The dead peer is DOWN again after `fall` (2) fresh probes.
    wait_text_state(port, "ex1", &dead, "DOWN", Duration::from_secs(3));
    let doc = json_page(port);
    let h = &json_peer(&doc, "ex1", &dead)["health"];
    assert_eq!(h["status"], json!("down"), "{doc}");
    let n = h["checks"].as_u64().unwrap();
    assert!(
        (2..=5).contains(&n),
        "dead peer DOWN after {n} checks since the restart: {doc}"
    );
    poll(
        Duration::from_secs(2),
        "probes at the live backend again",
        || {
            let n = probes_after(&live, deleted_at);
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} probes"))
            }
        },
    );
    for _ in 0..6 {
        assert_eq!(
            proxied_get(port, "/strict/ex1/x").0,
            200,
            "the DOWN peer is skipped again"
        );
    }
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. Manual down without ttl

#[test]
fn manual_down_takes_a_peer_out_of_every_worker_while_probes_continue() {
    let a = Backend::new();
    let b = Backend::new();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block("g2", &[a.addr(), b.addr()], CHECK),
        front(port, &["g2"])
    );
    let nginx = Nginx::start_with("worker_processes 2;", &conf);
    poll(Duration::from_secs(3), "first probes of both peers", || {
        let (na, nb) = (checks(port, "g2", &a.addr()), checks(port, "g2", &b.addr()));
        if na >= 1 && nb >= 1 {
            Ok(())
        } else {
            Err(format!("{na} {nb}"))
        }
    });

    let q = format!("t=gray&u=g2&p={}&a=set", b.addr());
    post_ok(port, &q, SET);
    let set_at = Instant::now();

    // From the very next request, no worker sends anything to b.
    let results = spread_requests(port, "/u/g2/x", 30, 2);
    let to_b: Vec<_> = results.iter().filter(|r| r.1 == Some(b.port())).collect();
    assert!(
        to_b.is_empty(),
        "requests reached the manually downed peer: {to_b:?}"
    );
    assert!(
        results.iter().all(|r| r.0 == 200 && r.1 == Some(a.port())),
        "{results:?}"
    );
    assert_eq!(b.proxied(), 0, "proxied requests at {}", b.addr());

    let page = text_page(port);
    assert_eq!(
        text_state(&page, "g2", &b.addr()),
        Some("DOWN (manual)"),
        "{page}"
    );
    assert_eq!(text_state(&page, "g2", &a.addr()), Some("up"), "{page}");
    assert_eq!(text_header(&page, "g2"), Some("Upstream g2"), "{page}");
    let doc = json_page(port);
    let pb = json_peer(&doc, "g2", &b.addr());
    assert_eq!(pb["down"], json!(true), "{doc}");
    assert_eq!(pb["health"]["manual_down"], json!(true), "{doc}");
    assert_eq!(pb["health"]["manual_down_ttl"], Value::Null, "{doc}");
    assert_eq!(
        pb["health"]["status"],
        json!("up"),
        "the health verdict is untouched: {doc}"
    );
    let pa = json_peer(&doc, "g2", &a.addr());
    assert_eq!(pa["health"]["manual_down"], json!(false), "{doc}");
    let prom = prom_page(port);
    for (peer, v) in [(b.addr(), 1), (a.addr(), 0)] {
        let line = format!(
            "nginx_upstream_healthcheck_peer_manual_down{{upstream=\"g2\",peer=\"{peer}\"}} {v}"
        );
        assert!(has_sample(&prom, &line), "missing {line}:\n{prom}");
    }
    assert_eq!(
        get_ttl(port, &format!("t=gray&u=g2&p={}&a=get", b.addr())),
        Some(0)
    );
    assert_eq!(
        list(port),
        json!({"exclusions": [], "manual_downs": [{"upstream": "g2", "peer": b.addr(), "ttl": 0}]})
    );

    // Probes continue to the downed peer.
    poll(
        Duration::from_secs(2),
        "probes at the manually downed peer",
        || {
            let n = probes_after(&b, set_at);
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} probes"))
            }
        },
    );

    // Released: every worker sends it traffic again.
    post_ok(port, &format!("t=gray&u=g2&p={}&a=del", b.addr()), DELETED);
    assert_eq!(
        get_ttl(port, &format!("t=gray&u=g2&p={}&a=get", b.addr())),
        None
    );
    assert_eq!(list(port), empty_list());
    let page = text_page(port);
    assert_eq!(text_state(&page, "g2", &b.addr()), Some("up"), "{page}");
    let results = spread_requests(port, "/u/g2/x", 30, 2);
    let workers_to_b: HashSet<u32> = results
        .iter()
        .filter(|r| r.1 == Some(b.port()))
        .map(|r| r.2)
        .collect();
    let workers: HashSet<u32> = results.iter().map(|r| r.2).collect();
    assert_eq!(
        workers_to_b, workers,
        "every worker sends traffic to the released peer: {results:?}"
    );
    let doc = json_page(port);
    assert_eq!(
        json_peer(&doc, "g2", &b.addr())["health"]["manual_down"],
        json!(false),
        "{doc}"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. Manual down and exclusion with ttl

#[test]
fn ttls_expire_by_themselves_even_with_hour_long_intervals() {
    let a = Backend::new();
    let b = Backend::new();
    let port = free_port();
    let check =
        "upstream_healthcheck type=http interval=1h timeout=500ms fall=2 rise=1 uri=/health;";
    let conf = format!(
        "{}{}",
        upstream_block("t3", &[a.addr(), b.addr()], check),
        front(port, &["t3"])
    );
    let nginx = Nginx::start(&conf);
    let get_b = format!("t=gray&u=t3&p={}&a=get", b.addr());

    // A manual down for 2 s.
    let before_set = Instant::now();
    post_ok(
        port,
        &format!("t=gray&u=t3&p={}&a=set&ttl=2", b.addr()),
        SET,
    );
    let ttl = get_ttl(port, &get_b).expect("manual down listed");
    assert!((1..=2).contains(&ttl), "ttl {ttl}");
    let doc = json_page(port);
    let ttl = json_peer(&doc, "t3", &b.addr())["health"]["manual_down_ttl"]
        .as_u64()
        .unwrap();
    assert!((1..=2).contains(&ttl), "manual_down_ttl {ttl}: {doc}");
    assert_eq!(
        text_state(&text_page(port), "t3", &b.addr()),
        Some("DOWN (manual)")
    );
    let results: Vec<_> = (0..6).map(|_| proxied_get(port, "/u/t3/x")).collect();
    assert!(results.iter().all(|r| r.1 == Some(a.port())), "{results:?}");

    let gone = poll(
        Duration::from_secs(5),
        "the manual down to expire",
        || match get_ttl(port, &get_b) {
            None => Ok(before_set.elapsed()),
            Some(t) => Err(format!("ttl {t}")),
        },
    );
    assert!(
        gone >= Duration::from_millis(1900) && gone <= Duration::from_millis(3200),
        "a ttl=2 manual down ended {gone:?} after it was set"
    );
    assert_eq!(list(port), empty_list());
    assert_eq!(text_state(&text_page(port), "t3", &b.addr()), Some("up"));
    poll(
        Duration::from_secs(3),
        "traffic at the expired peer",
        || {
            let r = proxied_get(port, "/u/t3/x");
            if r.1 == Some(b.port()) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );

    // An exclusion for 2 s.
    let before_set = Instant::now();
    post_ok(port, "t=ex&u=t3&a=set&ttl=2", SET);
    let ttl = get_ttl(port, "t=ex&u=t3&a=get").expect("exclusion listed");
    assert!((1..=2).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        text_header(&text_page(port), "t3"),
        Some("Upstream t3 (NO checkers)")
    );
    let l = list(port);
    let ttl = l["exclusions"][0]["ttl"].as_u64().unwrap_or(0);
    assert!(
        l["exclusions"][0]["upstream"] == "t3" && (1..=2).contains(&ttl),
        "{l}"
    );
    let gone = poll(
        Duration::from_secs(5),
        "the exclusion to expire",
        || match get_ttl(port, "t=ex&u=t3&a=get") {
            None => Ok(before_set.elapsed()),
            Some(t) => Err(format!("ttl {t}")),
        },
    );
    assert!(
        gone >= Duration::from_millis(1900) && gone <= Duration::from_millis(3200),
        "a ttl=2 exclusion ended {gone:?} after it was set"
    );
    assert_eq!(text_header(&text_page(port), "t3"), Some("Upstream t3"));
    assert_eq!(
        json_upstream(&json_page(port), "t3")["checked"],
        json!(true)
    );
    assert_eq!(list(port), empty_list());
    let log = nginx.stop();
    assert!(
        log.contains("exclusion of upstream \"t3\" expired"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Set and del only over POST

#[test]
fn set_and_del_need_post_and_forms_are_url_decoded() {
    let a = Backend::new();
    let b = Backend::new();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block("u4", &[a.addr(), b.addr()], CHECK),
        front(port, &["u4"])
    );
    let nginx = Nginx::start(&conf);
    let must_post = "a=set and a=del must come as POST";
    let peer_q = format!("t=gray&u=u4&p={}", b.addr());

    // Over GET, set and del are refused and change nothing.
    assert_eq!(list(port), empty_list());
    assert_err(
        admin(port, "GET", "t=ex&u=u4&a=set"),
        405,
        must_post,
        "GET ex set",
    );
    assert_err(
        admin(port, "GET", "t=ex&u=u4&a=set&ttl=60"),
        405,
        must_post,
        "GET ex set ttl",
    );
    assert_err(
        admin(port, "GET", &format!("{peer_q}&a=set")),
        405,
        must_post,
        "GET gray set",
    );
    assert_eq!(list(port), empty_list());
    assert_eq!(get_ttl(port, "t=ex&u=u4&a=get"), None);
    assert_eq!(get_ttl(port, &format!("{peer_q}&a=get")), None);
    let page = text_page(port);
    assert_eq!(text_header(&page, "u4"), Some("Upstream u4"), "{page}");
    assert_eq!(text_state(&page, "u4", &b.addr()), Some("up"), "{page}");

    // A POSTed form works; names and values are URL-decoded (`%75%34` is `u4`).
    let form = format!("t=gray&u=%75%34&p=127.0.0.1%3A{}&a=set", b.port());
    let got = admin_post_body(
        port,
        Some("application/x-www-form-urlencoded"),
        form.as_bytes(),
    );
    assert_eq!(got, (200, SET.to_owned()), "form {form}");
    let got = admin_post_body(
        port,
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        b"%74=ex&u=u%34&a=set&ttl=0",
    );
    assert_eq!(got, (200, SET.to_owned()));
    let state = json!({
        "exclusions": [{"upstream": "u4", "ttl": 0}],
        "manual_downs": [{"upstream": "u4", "peer": b.addr(), "ttl": 0}]
    });
    assert_eq!(list(port), state);
    let page = text_page(port);
    assert_eq!(
        text_state(&page, "u4", &b.addr()),
        Some("DOWN (manual)"),
        "{page}"
    );
    assert_eq!(
        text_header(&page, "u4"),
        Some("Upstream u4 (NO checkers)"),
        "{page}"
    );
    assert_eq!(get_ttl(port, "t=ex&u=%75%34&a=get"), Some(0));

    // del over GET: refused, nothing deleted.
    assert_err(
        admin(port, "GET", &format!("{peer_q}&a=del")),
        405,
        must_post,
        "GET gray del",
    );
    assert_err(
        admin(port, "GET", "t=ex&u=u4&a=del"),
        405,
        must_post,
        "GET ex del",
    );
    assert_eq!(list(port), state);

    // Other methods: 405 with the methods that work, nothing changed.
    for method in ["PUT", "DELETE"] {
        assert_err(
            admin(port, method, "t=ex&u=u4&a=del"),
            405,
            "method not allowed, use GET or POST",
            method,
        );
        let (_, headers, _) = request(port, method, "/admin?t=ex&u=u4&a=del", &[], b"");
        assert_eq!(
            header(&headers, "Allow").as_deref(),
            Some("GET, HEAD, POST"),
            "{method}: {headers}"
        );
    }
    let (status, headers, _) = request(port, "GET", "/admin?t=ex&u=u4&a=del", &[], b"");
    assert_eq!(status, 405);
    assert_eq!(
        header(&headers, "Allow").as_deref(),
        Some("POST"),
        "GET del: {headers}"
    );
    assert_eq!(list(port), state);
    let results: Vec<_> = (0..6).map(|_| proxied_get(port, "/u/u4/x")).collect();
    assert!(results.iter().all(|r| r.1 == Some(a.port())), "{results:?}");

    // POST del, in the query string and in a form.
    post_ok(port, &format!("{peer_q}&a=del"), DELETED);
    let got = admin_post_body(
        port,
        Some("application/x-www-form-urlencoded"),
        b"t=ex&u=u4&a=del",
    );
    assert_eq!(got, (200, DELETED.to_owned()));
    assert_eq!(list(port), empty_list());
    let page = text_page(port);
    assert_eq!(text_state(&page, "u4", &b.addr()), Some("up"), "{page}");
    assert_eq!(text_header(&page, "u4"), Some("Upstream u4"), "{page}");
    nginx.stop();
}

/// Sends `raw` to the control endpoint of a fresh nginx and asserts the answer is exactly
/// `want` (200), that the list then is `then`, and that no worker died on the way.
fn raw_post_is_answered(raw: &[u8], want: &str, setup: &str, then: impl Fn(&str) -> Value) {
    let a = Backend::new();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block("u4b", &[a.addr()], CHECK),
        front(port, &["u4b"])
    );
    let nginx = Nginx::start(&conf);
    if !setup.is_empty() {
        post_ok(port, setup, SET);
    }
    let workers = nginx.worker_pids();
    let got = exchange(port, raw, true).map(|r| String::from_utf8_lossy(&r).into_owned());
    let answer = got
        .as_deref()
        .ok()
        .and_then(|r| parse_response(r.as_bytes()).ok());
    assert_eq!(
        answer.as_ref().map(|(s, _, b)| (*s, b.as_str())),
        Some((200, want)),
        "{:?} was answered {got:?}\n--- error.log ---\n{}",
        String::from_utf8_lossy(raw),
        nginx.error_log()
    );
    assert_eq!(list(port), then(&a.addr()));
    assert_eq!(nginx.worker_pids(), workers, "a worker was replaced");
    nginx.stop();
}

/// An empty POST as `curl -d ''` and most HTTP libraries send it, with `Content-Length: 0`.
#[test]
fn post_with_content_length_0() {
    raw_post_is_answered(
        b"POST /admin?t=ex&u=u4b&a=set HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        SET,
        "",
        |_| json!({"exclusions": [{"upstream": "u4b", "ttl": 0}], "manual_downs": []}),
    );
}

/// A form streamed by an HTTP/1.1 client, `Transfer-Encoding: chunked`.
#[test]
fn post_with_a_chunked_form() {
    raw_post_is_answered(
        b"POST /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
          10\r\nt=ex&u=u4b&a=del\r\n0\r\n\r\n",
        DELETED,
        "t=ex&u=u4b&a=set",
        |_| empty_list(),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Reload

#[test]
fn exclusions_and_manual_downs_survive_a_reload() {
    let x = Backend::new();
    let g1 = Backend::new();
    let g2 = Backend::new();
    let port = free_port();
    let conf = format!(
        "{}{}{}",
        upstream_block("r5x", &[x.addr()], CHECK),
        upstream_block("r5g", &[g1.addr(), g2.addr()], CHECK),
        front(port, &["r5x", "r5g"])
    );
    let mut nginx = Nginx::start(&conf);
    post_ok(port, "t=ex&u=r5x&a=set&ttl=30", SET);
    let excluded_at = Instant::now();
    post_ok(
        port,
        &format!("t=gray&u=r5g&p={}&a=set&ttl=30", g2.addr()),
        SET,
    );
    let before = nginx.worker_pids();

    let took = nginx.reload();
    let after = nginx.worker_pids();
    assert!(
        !after.is_empty() && after.iter().all(|p| !before.contains(p)),
        "no new workers after {took:?}: {before:?} -> {after:?}"
    );
    let reloaded_at = Instant::now();

    let l = list(port);
    let ex_ttl = l["exclusions"][0]["ttl"].as_u64().unwrap_or(0);
    let md_ttl = l["manual_downs"][0]["ttl"].as_u64().unwrap_or(0);
    assert_eq!(
        l,
        json!({
            "exclusions": [{"upstream": "r5x", "ttl": ex_ttl}],
            "manual_downs": [{"upstream": "r5g", "peer": g2.addr(), "ttl": md_ttl}]
        })
    );
    assert!(
        (20..=30).contains(&ex_ttl) && (20..=30).contains(&md_ttl),
        "{l}"
    );
    poll(Duration::from_secs(3), "the ttls to count down", || {
        let l = list(port);
        let (e, m) = (
            l["exclusions"][0]["ttl"].as_u64(),
            l["manual_downs"][0]["ttl"].as_u64(),
        );
        match (e, m) {
            (Some(e), Some(m)) if e < ex_ttl && m < md_ttl && e >= 1 && m >= 1 => Ok(()),
            _ => Err(l.to_string()),
        }
    });

    // Still in effect in the new workers.
    let page = text_page(port);
    assert_eq!(
        text_header(&page, "r5x"),
        Some("Upstream r5x (NO checkers)"),
        "{page}"
    );
    assert_eq!(
        text_state(&page, "r5g", &g2.addr()),
        Some("DOWN (manual)"),
        "{page}"
    );
    assert_eq!(text_state(&page, "r5g", &g1.addr()), Some("up"), "{page}");
    let results: Vec<_> = (0..8).map(|_| proxied_get(port, "/u/r5g/x")).collect();
    assert!(
        results.iter().all(|r| r.0 == 200 && r.1 == Some(g1.port())),
        "{results:?}"
    );
    assert_eq!(g2.proxied(), 0);
    // Probes continue to the downed peer, none reach the excluded upstream.
    poll(
        Duration::from_secs(2),
        "probes at the manually downed peer",
        || {
            let n = probes_after(&g2, reloaded_at);
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} probes"))
            }
        },
    );
    // More than a second has passed since the exclusion (the ttl counted down).
    assert_eq!(
        probes_after(&x, excluded_at + INTERVAL),
        0,
        "probes reached the excluded upstream across the reload"
    );

    post_ok(port, "t=ex&u=r5x&a=del", DELETED);
    post_ok(
        port,
        &format!("t=gray&u=r5g&p={}&a=del", g2.addr()),
        DELETED,
    );
    assert_eq!(list(port), empty_list());
    poll(
        Duration::from_secs(3),
        "traffic at the released peer",
        || {
            let r = proxied_get(port, "/u/r5g/x");
            if r.1 == Some(g2.port()) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input

#[test]
fn bad_requests_are_refused_with_exact_messages_and_change_nothing() {
    let a = Backend::new();
    let b = Backend::new();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block("u6", &[a.addr(), b.addr()], CHECK),
        front(port, &["u6"])
    );
    let nginx = Nginx::start(&conf);
    post_ok(port, "t=ex&u=u6&a=set", SET);
    post_ok(port, &format!("t=gray&u=u6&p={}&a=set", b.addr()), SET);
    let state = list(port);
    assert_eq!(
        state,
        json!({
            "exclusions": [{"upstream": "u6", "ttl": 0}],
            "manual_downs": [{"upstream": "u6", "peer": b.addr(), "ttl": 0}]
        })
    );

    let ttl_msg = |v: &str| format!("invalid ttl \"{v}\", expected seconds from 0 to 2592000");
    let long = "x".repeat(1025);
    let just_fits = "x".repeat(1024);
    let cases: Vec<(&str, String, u16, String)> = vec![
        (
            "GET",
            "t=bogus&u=u6&a=get".into(),
            400,
            r#"unknown t "bogus", expected "ex" or "gray""#.into(),
        ),
        (
            "POST",
            "t=ex&u=u6&a=frob".into(),
            400,
            r#"unknown a "frob", expected "set", "del" or "get""#.into(),
        ),
        (
            "POST",
            "t=ex&a=del".into(),
            400,
            r#"missing parameter "u""#.into(),
        ),
        (
            "POST",
            "t=ex&u=&a=del".into(),
            400,
            r#"missing parameter "u""#.into(),
        ),
        (
            "POST",
            "t=gray&u=u6&a=del".into(),
            400,
            r#"missing parameter "p""#.into(),
        ),
        (
            "POST",
            "u=u6&a=del".into(),
            400,
            r#"missing parameter "t""#.into(),
        ),
        (
            "POST",
            "t=ex&u=u6".into(),
            400,
            r#"missing parameter "a""#.into(),
        ),
        (
            "POST",
            "t=ex&u=nope&a=del".into(),
            404,
            r#"unknown upstream "nope""#.into(),
        ),
        (
            "GET",
            "t=ex&u=nope&a=get".into(),
            404,
            r#"unknown upstream "nope""#.into(),
        ),
        (
            "POST",
            "t=gray&u=u6&p=127.0.0.1:1&a=del".into(),
            404,
            r#"unknown peer "127.0.0.1:1" in upstream "u6""#.into(),
        ),
        ("POST", "t=ex&u=u6&a=set&ttl=-1".into(), 400, ttl_msg("-1")),
        (
            "POST",
            "t=ex&u=u6&a=set&ttl=abc".into(),
            400,
            ttl_msg("abc"),
        ),
        (
            "POST",
            "t=ex&u=u6&a=set&ttl=2592001".into(),
            400,
            ttl_msg("2592001"),
        ),
        (
            "POST",
            "t=ex&u=u6&a=set&ttl=1.5".into(),
            400,
            ttl_msg("1.5"),
        ),
        ("POST", "t=ex&u=u6&a=set&ttl=".into(), 400, ttl_msg("")),
        (
            "POST",
            "t=ex&u=u6&a=del&ttl=5".into(),
            400,
            r#"parameter "ttl" is only allowed with a=set"#.into(),
        ),
        (
            "POST",
            "t=ex&u=a&u=b&a=del".into(),
            400,
            r#"parameter "u" is repeated"#.into(),
        ),
        (
            "POST",
            "t=ex&u=u6&a=del&force=1".into(),
            400,
            r#"unknown parameter "force""#.into(),
        ),
        (
            "POST",
            format!("t=ex&u=u6&a=del&{just_fits}=1"),
            400,
            format!("unknown parameter \"{}...\"", "x".repeat(32)),
        ),
        (
            "POST",
            format!("t=ex&p={}&u=u6&a=del", b.addr()),
            400,
            r#"parameter "p" is not allowed with t=ex"#.into(),
        ),
        (
            "POST",
            format!("t=ex&u={long}&a=del"),
            400,
            r#"the value of parameter "u" is longer than 1024 bytes"#.into(),
        ),
        (
            "POST",
            format!("t=ex&u={just_fits}&a=del"),
            404,
            format!("unknown upstream \"{just_fits}\""),
        ),
        (
            "POST",
            "t=ex&u=%FF&a=del".into(),
            400,
            r#"the value of parameter "u" is not UTF-8"#.into(),
        ),
        (
            "POST",
            "t=ex&u=%G1&a=del".into(),
            400,
            r#"bad percent-encoding in the value of parameter "u""#.into(),
        ),
        (
            "GET",
            "t=ex&u=u6%&a=get".into(),
            400,
            r#"bad percent-encoding in the value of parameter "u""#.into(),
        ),
    ];
    for (method, query, status, msg) in &cases {
        let what = format!("{method} /admin?{query}");
        assert_err(admin(port, method, query), *status, msg, &what);
        assert_eq!(list(port), state, "state changed by {what}");
    }

    // Bodies: form-encoded only, in memory, and no parameter both in the query and the body.
    let json_body = br#"{"t":"ex","u":"u6","a":"del"}"#;
    let not_form = "the body must be application/x-www-form-urlencoded";
    assert_err(
        admin_post_body(port, Some("application/json"), json_body),
        415,
        not_form,
        "JSON body",
    );
    assert_eq!(list(port), state, "state changed by a JSON body");
    assert_err(
        admin_post_body(port, None, b"t=ex&u=u6&a=del"),
        415,
        not_form,
        "body without Content-Type",
    );
    assert_eq!(
        list(port),
        state,
        "state changed by a body without Content-Type"
    );
    assert_err(
        admin_post_body(port, Some("text/plain"), b"t=ex&u=u6&a=del"),
        415,
        not_form,
        "text body",
    );
    assert_eq!(list(port), state, "state changed by a text/plain body");
    for ct in [
        "application/x-www-form-urlencodedXYZ",
        "application/x-www-form-urlencoded-v2; charset=utf-8",
    ] {
        assert_err(
            admin_post_body(port, Some(ct), b"t=ex&u=u6&a=del"),
            415,
            not_form,
            ct,
        );
        assert_eq!(list(port), state, "state changed by a {ct} body");
    }
    let (status, _, body) = request(
        port,
        "POST",
        "/admin?t=ex&u=u6",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"u=u6&a=del",
    );
    assert_err(
        (status, body),
        400,
        r#"parameter "u" is repeated"#,
        "u in query and body",
    );
    assert_eq!(
        list(port),
        state,
        "state changed by a parameter in both query and body"
    );
    let mut big = b"t=ex&u=u6&a=del&".to_vec();
    big.extend(std::iter::repeat(b'&').take(64 * 1024));
    assert_err(
        admin_post_body(port, Some("application/x-www-form-urlencoded"), &big),
        413,
        "request body too large",
        "64 KiB body",
    );
    assert_eq!(list(port), state, "state changed by a too-large body");
    nginx.stop();
}

/// An operator's script forces peers down and up while a deploy reloads nginx every 100 ms:
/// every change acknowledged with 200 holds afterwards; a worker that can no longer keep a
/// change (its zone copied by the new cycle, or shutting down) refuses it with a 503 and
/// changes nothing.
#[test]
fn changes_acknowledged_during_reloads_are_never_lost() {
    const SETS: usize = 200;
    const DELS: usize = 100;
    let peers: Vec<String> = (0..SETS + DELS)
        .map(|i| format!("127.0.0.1:{}", 20000 + i))
        .collect();
    let port = free_port();
    let conf = format!(
        "{}server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 0;\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n}}\n",
        upstream_block("u9", &peers, "")
    );
    let mut nginx = Nginx::start_with("worker_processes 2;", &conf);
    // The peers to be brought back during the race are down before it.
    for p in &peers[SETS..] {
        post_ok(port, &format!("t=gray&u=u9&p={p}&a=set"), SET);
    }

    let master = nginx.master_pid();
    let reloads = Looper::start(move |_| {
        signal("HUP", master);
        thread::sleep(INTERVAL);
    });
    // (peer, set?, answer); sets and dels interleaved, 10 ms apart, so the race spans about
    // 20 reloads.
    let mut answers = Vec::new();
    for i in 0..SETS {
        let mut send = |peer: &String, action: &str| {
            let path = format!("/admin?t=gray&u=u9&p={peer}&a={action}");
            let got = try_request(port, "POST", &path, &[], b"");
            answers.push((peer.clone(), action == "set", got));
        };
        send(&peers[i], "set");
        if i % 2 == 1 {
            send(&peers[SETS + i / 2], "del");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let reloads = reloads.finish().len();
    nginx.reload();

    let down: HashSet<String> = list(port)["manual_downs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["peer"].as_str().unwrap().to_owned())
        .collect();
    let refusal = json!({"status": "err", "err_msg": "nginx is reloading, retry", "msg": ""});
    let (mut acked, mut refused, mut lost) = (0, 0, Vec::new());
    for (peer, set, got) in &answers {
        let action = if *set { "set" } else { "del" };
        let Ok((status, _, body)) = got else {
            continue; // no answer (the connection closed under a reload): unknown outcome
        };
        match status {
            200 => {
                acked += 1;
                assert_eq!(body, if *set { SET } else { DELETED }, "{action} {peer}");
                if down.contains(peer) != *set {
                    lost.push(format!("{action} {peer}"));
                }
            }
            503 => {
                refused += 1;
                assert_eq!(strict_json(body), refusal, "{action} {peer}");
                assert_eq!(
                    down.contains(peer),
                    !*set,
                    "refused {action} {peer} took effect"
                );
            }
            _ => panic!("{action} {peer}: {status} {body}"),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged changes lost over {reloads} reloads ({refused} refused): {lost:?}",
        lost.len()
    );
    // nginx lets old workers run on for 100 ms after starting new ones: with a reload every
    // 100 ms most changes meet a superseded zone and are refused, but never all.
    assert!(acked > 0, "none acknowledged, {refused} refused");
    nginx.stop();
}

/// A reload that fails after the new cycle copied the zone (a `listen` whose port is taken)
/// leaves the old workers running: they take changes again, and the next good reload keeps them.
#[test]
fn a_failed_reload_leaves_the_control_api_working() {
    let peers: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", 20000 + i)).collect();
    let port = free_port();
    let server = |extra: &str| {
        format!(
            "{}server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 0;\n    \
             location = /admin {{ upstream_healthcheck_admin; }}\n}}\n{extra}",
            upstream_block("u10", &peers, "")
        )
    };
    let mut nginx = Nginx::start(&server(""));
    post_ok(port, &format!("t=gray&u=u10&p={}&a=set", peers[0]), SET);

    // The port is held by this test, so the new cycle fails in bind() after its zone init.
    let taken = Backend::new();
    nginx.rewrite_conf(&server(&format!(
        "server {{ listen 127.0.0.1:{}; }}\n",
        taken.port()
    )));
    nginx.reload();
    wait_until(
        Duration::from_secs(10),
        "the failed reload given up",
        || nginx.error_log().contains("still could not bind()"),
    );
    post_ok(port, &format!("t=gray&u=u10&p={}&a=set", peers[1]), SET);
    post_ok(port, &format!("t=gray&u=u10&p={}&a=del", peers[0]), DELETED);
    let want = json!({
        "exclusions": [],
        "manual_downs": [{"upstream": "u10", "peer": peers[1], "ttl": 0}]
    });
    assert_eq!(list(port), want);

    nginx.rewrite_conf(&server(""));
    nginx.reload();
    assert_eq!(list(port), want);
    post_ok(port, &format!("t=gray&u=u10&p={}&a=set", peers[2]), SET);
    taken.stop();
    nginx.stop_allowing(|l| l.contains("bind() to") || l.contains("still could not bind()"));
}

// ---------------------------------------------------------------------------------------------
// 7. HA standby, in a network namespace

/// A network namespace with `lo` up, deleted on drop.
struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> std::process::Output {
    match Command::new("ip").args(args).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("`ip` (iproute2) not found: run scripts/setup.sh, which installs it")
        }
        Err(e) => panic!("cannot run ip {args:?}: {e}"),
    }
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

impl NetNs {
    fn new() -> NetNs {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "hc-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip_ok(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics unless it succeeds.
    fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip_ok(&args);
    }

    /// Runs `f` on a thread that joined the namespace (`setns`), so plain sockets opened there
    /// reach the namespace's loopback.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd; it changes this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// nginx run as `ip netns exec NS nginx ... -g 'daemon off;'` (the master is the child
/// process, `ip` execs it), in a harness `TempPrefix`; killed on drop if still running.
struct NsNginx {
    prefix: TempPrefix,
    child: Option<Child>,
    conf: String,
}

impl NsNginx {
    fn start(ns: &NetNs, http_body: &str, status_port: u16) -> NsNginx {
        let prefix = TempPrefix::new();
        prepare_prefix(prefix.path());
        let conf = render_conf(prefix.path(), "", http_body);
        fs::write(prefix.path().join("nginx.conf"), &conf).expect("write nginx.conf");
        let log = fs::File::create(prefix.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(nginx_bin())
            .args(foreground_args(prefix.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run ip netns exec nginx: {e} (run scripts/setup.sh)")
            });
        let mut n = NsNginx {
            prefix,
            child: Some(child),
            conf,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = n.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nginx in {} exited during startup ({st}):\n{}\n{}\n{}",
                    ns.name,
                    n.stderr(),
                    n.error_log(),
                    n.conf
                );
            }
            let up = ns.run(|| {
                http_get(status_port, "/status")
                    .map(|r| r.0 == 200)
                    .unwrap_or(false)
            });
            if up && n.prefix.path().join("nginx.pid").exists() {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "nginx in {} not ready in 10 s:\n{}\n{}",
                ns.name,
                n.stderr(),
                n.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.prefix.path().join("stderr.log")).unwrap_or_default()
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default()
    }

    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.prefix.path().join(name)).unwrap_or_default()
    }

    /// SIGQUIT, waits (10 s) for the master and its workers to exit, asserts the error log has no
    /// alert/crit/emerg line; returns the log.
    fn stop(mut self) -> String {
        let graceful = self.shutdown();
        let log = self.error_log();
        assert!(
            graceful,
            "nginx did not exit within 10 s of SIGQUIT:\n{log}"
        );
        let bad = alert_lines(&log);
        assert!(
            bad.is_empty(),
            "error log has alert/crit/emerg lines:\n{}\n---\n{log}",
            bad.join("\n")
        );
        log
    }

    fn shutdown(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let master = child.id();
        let workers = child_pids(master);
        signal("QUIT", master);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut graceful = false;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                graceful = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !graceful {
            for w in child_pids(master)
                .into_iter()
                .chain(workers.iter().copied())
            {
                signal("KILL", w);
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        // Workers exit with (or right after) the master.
        let deadline = Instant::now() + Duration::from_secs(2);
        while workers
            .iter()
            .any(|w| Path::new(&format!("/proc/{w}")).exists())
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        graceful
    }
}

impl Drop for NsNginx {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[test]
fn ha_standby_probes_only_while_this_host_holds_the_address() {
    let ns = NetNs::new();
    let (front_port, live_port, dead_port) = (free_port(), free_port(), free_port());
    let live = format!("127.0.0.1:{live_port}");
    let dead = format!("127.0.0.1:{dead_port}");
    let vip = "10.77.0.1";
    let body = format!(
        "upstream_healthcheck_ha_address {vip} interval=200ms;\n{}\
         server {{\n    listen 127.0.0.1:{live_port};\n    access_log live.log;\n    \
         location / {{ return 200 \"live\\n\"; }}\n}}\n{}",
        upstream_block("ha7", &[live.clone(), format!("{dead} max_fails=0")], CHECK),
        front(front_port, &["ha7"]),
    );
    let nginx = NsNginx::start(&ns, &body, front_port);
    let text = || ns.run(|| text_page(front_port));
    let doc = || ns.run(|| json_page(front_port));
    let strict = || {
        ns.run(|| {
            (0..10)
                .map(|_| proxied_get(front_port, "/strict/ha7/x").0)
                .collect::<Vec<_>>()
        })
    };
    let probes = || {
        nginx
            .file("live.log")
            .lines()
            .filter(|l| l.contains("GET /health "))
            .count()
    };
    let ha_mode = |want: &'static str| {
        move || {
            let d = doc();
            if d["msg"]["ha_mode"] == want {
                Ok(())
            } else {
                Err(d.to_string())
            }
        }
    };

    // The address is nowhere: standby, no probes, the dead peer keeps nginx's own flag.
    let page = text();
    assert!(page.starts_with("HA Mode: Slaver\n\n"), "{page}");
    assert_eq!(text_state(&page, "ha7", &dead), Some("up"), "{page}");
    let d = doc();
    assert_eq!(d["msg"]["ha_mode"], json!("Slaver"), "{d}");
    assert_eq!(json_peer(&d, "ha7", &dead)["down"], json!(false), "{d}");
    thread::sleep(Duration::from_millis(600)); // six probe intervals
    assert_eq!(
        probes(),
        0,
        "probes ran on the standby:\n{}",
        nginx.file("live.log")
    );
    let r = strict();
    assert!(
        r.contains(&502) && r.contains(&200),
        "the dead peer should take traffic: {r:?}"
    );

    // The address arrives: Master within ~1 s, probes run, the dead peer goes DOWN.
    ns.exec(&["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    let added = Instant::now();
    poll(
        Duration::from_millis(1500),
        "ha_mode Master",
        ha_mode("Master"),
    );
    assert!(added.elapsed() <= Duration::from_millis(1500));
    assert!(text().starts_with("HA Mode: Master\n\n"));
    poll(Duration::from_secs(2), "probes on the master", || {
        let n = probes();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} probes"))
        }
    });
    poll(
        Duration::from_secs(2),
        "the dead peer DOWN on the master",
        || {
            let page = text();
            if text_state(&page, "ha7", &dead) == Some("DOWN") {
                Ok(())
            } else {
                Err(page)
            }
        },
    );
    let d = doc();
    assert_eq!(json_upstream(&d, "ha7")["checked"], json!(true), "{d}");
    assert_eq!(
        json_peer(&d, "ha7", &dead)["health"]["status"],
        json!("down"),
        "{d}"
    );
    assert!(
        json_peer(&d, "ha7", &live)["health"]["checks"]
            .as_u64()
            .unwrap()
            >= 1,
        "{d}"
    );
    assert_eq!(
        strict(),
        vec![200; 10],
        "the DOWN peer is skipped on the master"
    );

    // The address leaves: standby again, the dead peer serves again, probes stop.
    ns.exec(&["ip", "addr", "del", &format!("{vip}/32"), "dev", "lo"]);
    poll(
        Duration::from_millis(1500),
        "ha_mode Slaver",
        ha_mode("Slaver"),
    );
    let page = text();
    assert!(page.starts_with("HA Mode: Slaver\n\n"), "{page}");
    assert_eq!(text_state(&page, "ha7", &dead), Some("up"), "{page}");
    let r = strict();
    assert!(
        r.contains(&502) && r.contains(&200),
        "the dead peer should take traffic again: {r:?}"
    );
    thread::sleep(2 * INTERVAL); // a probe under way when the address left may still land
    let settled = probes();
    thread::sleep(Duration::from_millis(600));
    assert_eq!(probes(), settled, "probes continued on the standby");

    let log = nginx.stop();
    assert!(
        log.contains(&format!("HA mode is Master: {vip} is on this host")),
        "{log}"
    );
    assert!(
        log.contains(&format!("HA mode is Slaver: {vip} is not on this host")),
        "{log}"
    );
    drop(ns);
}
