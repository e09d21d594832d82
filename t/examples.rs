//! Every example in nginx-conf/ works: each passes `nginx -t` with the module, and each is run
//! for real (with its ports moved to free ones and real backends behind them) and shows what
//! its comments promise.
mod common;

use common::*;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How every example loads the module (relative to the `-p` prefix).
const MODULE_REF: &str = "modules/ngx_http_upstream_healthcheck_module.so";
const STATUS: &str = "/upstream_status";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf")
}

fn example(name: &str) -> String {
    let path = examples_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// How an example loads the stream module.
const STREAM_MODULE_REF: &str = "modules/ngx_stream_upstream_healthcheck_module.so";

/// The example with the modules under test in place of `modules/…so` (and, for the stream
/// module, nginx's own stream module loaded first where it is dynamic).
fn with_module(name: &str, text: &str) -> String {
    assert!(
        text.contains(&format!("load_module {MODULE_REF};")),
        "{name} must load the module with `load_module {MODULE_REF};`"
    );
    let stream_line = format!("load_module {STREAM_MODULE_REF};");
    text.replace(MODULE_REF, &module_path().display().to_string())
        .replace(&stream_line, stream_load_lines().trim_end())
}

/// The example ready for `Nginx::start_raw`: module under test, pid and error log at the top
/// of the prefix (where the harness looks for them).
fn runnable(name: &str, text: &str) -> String {
    let text = with_module(name, text);
    for needle in ["pid logs/nginx.pid;", "error_log logs/error.log"] {
        assert!(text.contains(needle), "{name}: expected `{needle}`");
    }
    text.replace("pid logs/nginx.pid;", "pid nginx.pid;")
        .replace("error_log logs/error.log", "error_log error.log")
}

/// Moves every `127.0.0.1:PORT` of a config to a fresh free port; returns the new text and the
/// map from old to new ports.
fn move_ports(text: &str) -> (String, HashMap<u16, u16>) {
    const HOST: &str = "127.0.0.1:";
    let mut map = HashMap::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(HOST) {
        out.push_str(&rest[..i + HOST.len()]);
        rest = &rest[i + HOST.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(old) = digits.parse::<u16>() {
            let new = *map.entry(old).or_insert_with(free_port);
            out.push_str(&new.to_string());
            rest = &rest[digits.len()..];
        }
    }
    out.push_str(rest);
    (out, map)
}

fn state(port: u16, upstream: &str, peer_port: u16) -> Option<String> {
    peer_state(
        &status_page(port, STATUS),
        upstream,
        &format!("127.0.0.1:{peer_port}"),
    )
    .map(str::to_string)
}

#[test]
fn every_example_passes_nginx_t() {
    let mut names: Vec<String> = fs::read_dir(examples_dir())
        .expect("nginx-conf/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    names.sort();
    for want in [
        "basic.conf",
        "demo.conf",
        "dynamic.conf",
        "etcd.conf",
        "fast-recheck.conf",
        "https.conf",
        "slow-start.conf",
        "panic.conf",
        "stream.conf",
        "tcp.conf",
        "zone.conf",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "nginx-conf/{want} is missing: {names:?}"
        );
    }
    for name in &names {
        // `nginx -t` binds the listen sockets too: move them off the examples' fixed ports so
        // that it never races a test that runs an example.
        let (text, _) = move_ports(&example(name));
        let (ok, out) = nginx_test_raw(&with_module(name, &text));
        assert!(
            ok && out.contains("syntax is ok") && out.contains("test is successful"),
            "nginx -t fails on nginx-conf/{name}:\n{out}"
        );
        assert!(
            !out.contains("[emerg]") && !out.contains("[alert]"),
            "{name}:\n{out}"
        );
    }
}

/// demo.conf as scripts/demo.sh runs it (proxy and status page, backends 9081 and 9082 served
/// by nginx itself, nothing on 9083), with its ports moved to free ones so the test never
/// races another process for 8080.
#[test]
fn demo_shows_the_missing_backend_down() {
    let (text, ports) = move_ports(&example("demo.conf"));
    let (front, b1, b2, dead) = (ports[&8080], ports[&9081], ports[&9082], ports[&9083]);
    let nginx = Nginx::start_raw(&runnable("demo.conf", &text));
    wait_until(
        Duration::from_secs(8),
        "the demo's third backend DOWN on its status page",
        || state(front, "backend", dead).as_deref() == Some("DOWN"),
    );
    let page = status_page(front, STATUS);
    for up in [b1, b2] {
        assert_eq!(
            peer_state(&page, "backend", &format!("127.0.0.1:{up}")),
            Some("up"),
            "{page}"
        );
    }
    // Traffic goes to the two live backends only.
    for _ in 0..6 {
        let (status, _, body) = http_get(front, "/").expect("GET / on the demo");
        assert_eq!(status, 200, "{body}");
        assert!(
            body == "hello from backend 9081\n" || body == "hello from backend 9082\n",
            "{body:?}"
        );
    }
    let log = nginx.stop();
    assert!(
        log.contains(&format!("peer 127.0.0.1:{dead} in upstream \"backend\" is DOWN after 2 failed checks, last error: connection refused")),
        "{log}"
    );
}

#[test]
fn basic_example_runs() {
    let (text, ports) = move_ports(&runnable("basic.conf", &example("basic.conf")));
    let front = ports[&8080];
    // 8081 and 8082 primary, 8083 backup; 8084 is marked down and has no backend.
    let peers: Vec<Backend> = [8081u16, 8082, 8083]
        .iter()
        .map(|p| Backend::on_port(ports[p]))
        .collect();
    for b in &peers {
        b.set_health_path("/status");
    }
    // 302 is a valid status in this example.
    peers[1].set_path_mode("/status", Mode::Status(302));
    let nginx = Nginx::start_raw(&text);
    // interval=2s: every probed peer sees its first probe (the configured request) within 2 s.
    wait_until(Duration::from_secs(5), "a probe of every peer", || {
        peers.iter().all(|b| b.hits("/status") >= 1)
    });
    let page = status_page(front, STATUS);
    assert_eq!(
        page,
        format!(
            "Upstream backend\n    Primary Peers\n        127.0.0.1:{} up\n        127.0.0.1:{} up\n        \
             127.0.0.1:{} DOWN\n    Backup Peers\n        127.0.0.1:{} up\n",
            ports[&8081], ports[&8082], ports[&8084], ports[&8083]
        )
    );
    for _ in 0..6 {
        assert_eq!(http_get(front, "/app").unwrap().0, 200);
    }
    assert!(peers[0].proxied() > 0 && peers[1].proxied() > 0);
    assert_eq!(
        peers[2].proxied(),
        0,
        "the backup took traffic while primaries are up"
    );
    nginx.stop();
}

#[test]
fn tcp_example_runs() {
    let (text, ports) = move_ports(&runnable("tcp.conf", &example("tcp.conf")));
    let front = ports[&8080];
    // 9091 accepts; nothing listens on 9092.
    let live = Backend::on_port(ports[&9091]);
    let nginx = Nginx::start_raw(&text);
    wait_until(
        Duration::from_secs(5),
        "9092 DOWN (connections refused)",
        || state(front, "app", ports[&9092]).as_deref() == Some("DOWN"),
    );
    assert_eq!(state(front, "app", ports[&9091]).as_deref(), Some("up"));
    // A TCP check connects and sends nothing.
    assert!(live.connections() >= 1);
    assert_eq!(live.hits("/"), 0);
    assert_eq!(live.hits("/health"), 0);
    assert_eq!(live.proxied(), 0);
    for _ in 0..4 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    assert_eq!(live.proxied(), 4);
    let log = nginx.stop();
    assert!(
        log.contains(&format!(
            "peer 127.0.0.1:{} in upstream \"app\" is DOWN after 2 failed checks, last error: connection refused",
            ports[&9092]
        )),
        "{log}"
    );
}

#[test]
fn zone_example_runs() {
    let (text, ports) = move_ports(&runnable("zone.conf", &example("zone.conf")));
    let front = ports[&8080];
    let peers: Vec<Backend> = [9101u16, 9102, 9103]
        .iter()
        .map(|p| Backend::on_port(ports[p]))
        .collect();
    for b in &peers {
        b.set_health_path("/healthz");
    }
    // 204 is excluded (`2xx !204`): 9103 never comes up.
    peers[2].set_path_mode("/healthz", Mode::Status(204));
    let nginx = Nginx::start_raw(&text);
    // default_down=on: everything starts DOWN.
    let page = status_page(front, STATUS);
    for p in [9101u16, 9102, 9103] {
        assert_eq!(
            peer_state(&page, "app", &format!("127.0.0.1:{}", ports[&p])),
            Some("DOWN"),
            "{page}"
        );
    }
    wait_until(
        Duration::from_secs(6),
        "9101 and 9102 up after two good probes",
        || {
            state(front, "app", ports[&9101]).as_deref() == Some("up")
                && state(front, "app", ports[&9102]).as_deref() == Some("up")
        },
    );
    wait_until(Duration::from_secs(4), "two probes of 9103", || {
        peers[2].hits("/healthz") >= 2
    });
    assert_eq!(state(front, "app", ports[&9103]).as_deref(), Some("DOWN"));
    for _ in 0..10 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    assert!(peers[0].proxied() + peers[1].proxied() == 10);
    assert_eq!(peers[2].proxied(), 0);
    // The state file appears in logs/ once the workers may write there (they run as nobody
    // under a root master).
    let logs = nginx.prefix().join("logs");
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o777)).unwrap();
    let file = logs.join("healthcheck.state");
    let down = format!("127.0.0.1:{}", ports[&9103]);
    wait_until(
        Duration::from_secs(4),
        "9103 DOWN in the state file",
        || {
            let Ok(doc) = fs::read_to_string(&file).map(|t| strict_json(&t)) else {
                return false;
            };
            doc["upstreams"][0]["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["peer"] == down.as_str() && p["up"] == false)
        },
    );
    nginx.stop();
}

#[test]
fn fast_recheck_example_runs() {
    let (text, ports) = move_ports(&runnable(
        "fast-recheck.conf",
        &example("fast-recheck.conf"),
    ));
    let front = ports[&8080];
    let good = Backend::on_port(ports[&9121]);
    let failing = Backend::on_port(ports[&9122]);
    failing.set_mode(Mode::Status(503));
    let nginx = Nginx::start_raw(&text);
    // Peers start up; the first probe of 9122 fails, the next two follow 200 ms apart.
    wait_until(Duration::from_secs(5), "9122 DOWN", || {
        state(front, "backend", ports[&9122]).as_deref() == Some("DOWN")
    });
    let first_failed = failing.arrivals("/health")[0];
    assert!(
        first_failed.elapsed() < Duration::from_millis(1500),
        "DOWN {:?} after its first failed probe (fast_interval=200ms fall=3)",
        first_failed.elapsed()
    );
    // Down, it is probed every 10 s: none of the next 2.5 s brings a probe.
    let at_down = failing.hits("/health");
    assert_eq!(at_down, 3, "fall=3 probes took it down");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(failing.hits("/health"), at_down, "down_interval=10s");
    assert_eq!(state(front, "backend", ports[&9121]).as_deref(), Some("up"));
    for _ in 0..4 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    assert_eq!((good.proxied(), failing.proxied()), (4, 0));
    nginx.stop();
}

/// keepalive.conf: both peers up, and each one's probes climb `$connection_requests` on one
/// connection in the backends' log.
#[test]
fn keepalive_example_runs() {
    let (text, ports) = move_ports(&runnable("keepalive.conf", &example("keepalive.conf")));
    let front = ports[&8080];
    let nginx = Nginx::start_raw(&text);
    let log = nginx.prefix().join("logs/backend.log");
    // (port, connection, requests on it) of every probe logged.
    let probes = || -> Vec<(u16, u64, u64)> {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                ))
            })
            .collect()
    };
    let carried = |peer: u16| probes().iter().filter(|p| p.0 == peer).map(|p| p.2).max();
    wait_until(
        Duration::from_secs(8),
        "three probes of each peer on one connection",
        || [9131, 9132].iter().all(|p| carried(ports[p]) >= Some(3)),
    );
    for p in [9131, 9132] {
        assert_eq!(state(front, "backend", ports[&p]).as_deref(), Some("up"));
        let conns: std::collections::HashSet<u64> = probes()
            .iter()
            .filter(|x| x.0 == ports[&p])
            .map(|x| x.1)
            .collect();
        // One connection; a second only if the worker keeping it was held up past the grace.
        assert!(conns.len() <= 2, "{:?}", probes());
    }
    assert_eq!(http_get(front, "/").unwrap().0, 200);
    nginx.stop();
}

/// slow-start.conf: a peer whose checks fail goes down; when they pass again it ramps, and the
/// JSON page shows for how long and how far along, with the weight as configured.
#[test]
fn slow_start_example_runs() {
    let (text, ports) = move_ports(&runnable("slow-start.conf", &example("slow-start.conf")));
    let front = ports[&8080];
    let steady = Backend::on_port(ports[&9141]);
    let back = Backend::on_port(ports[&9142]);
    let nginx = Nginx::start_raw(&text);
    let peer = |port: u16| {
        let doc = strict_json(&status_page(front, STATUS));
        json_peer(&doc, "backend", &format!("127.0.0.1:{port}")).clone()
    };
    // Up since the start: no ramp.
    let p = peer(ports[&9142]);
    assert_eq!(p["health"]["slow_start_factor"], 1.0, "{p}");
    back.set_path_mode("/health", Mode::Status(503));
    wait_until(Duration::from_secs(6), "9142 DOWN (fall=2)", || {
        peer(ports[&9142])["health"]["status"] == "down"
    });
    back.clear_path_modes();
    wait_until(Duration::from_secs(6), "9142 UP (rise=2)", || {
        peer(ports[&9142])["health"]["status"] == "up"
    });
    let p = peer(ports[&9142]);
    let h = &p["health"];
    assert!(h["slow_start_factor"].as_f64().unwrap_or(1.0) < 0.3, "{p}");
    assert!(h["slow_start_until"].is_f64(), "{p}");
    assert_eq!(p["weight"], 2, "{p}");
    assert_eq!(peer(ports[&9141])["health"]["slow_start_factor"], 1.0);
    for _ in 0..20 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    // Weight 2 at a tenth of it, against weight 1: the steady peer takes most requests.
    assert!(
        steady.proxied() > back.proxied(),
        "{} vs {}",
        steady.proxied(),
        back.proxied()
    );
    nginx.stop();
}

/// match.conf: three backends (served by nginx itself) all answer 200 on /health, but only
/// 9111 says `{"status": "ok"}` without a maintenance header: the other two go DOWN.
#[test]
fn match_example_runs() {
    let (text, ports) = move_ports(&runnable("match.conf", &example("match.conf")));
    let (front, ok, degraded, maintenance) =
        (ports[&8080], ports[&9111], ports[&9112], ports[&9113]);
    let nginx = Nginx::start_raw(&text);
    wait_until(
        Duration::from_secs(8),
        "the degraded and the maintenance backends DOWN on the status page",
        || {
            state(front, "app", degraded).as_deref() == Some("DOWN")
                && state(front, "app", maintenance).as_deref() == Some("DOWN")
        },
    );
    assert_eq!(state(front, "app", ok).as_deref(), Some("up"));
    for _ in 0..6 {
        let (status, _, body) = http_get(front, "/").expect("GET / on match.conf");
        assert_eq!(status, 200, "{body}");
        // The body names the port as written in match.conf, which move_ports leaves alone.
        assert_eq!(body, "hello from backend 9111\n");
    }
    nginx.stop();
}

/// panic.conf: three of the four primaries fail /health (their traffic is fine): the upstream
/// is in panic and all four take requests; the backup takes none.
#[test]
fn panic_example_runs() {
    let (text, ports) = move_ports(&runnable("panic.conf", &example("panic.conf")));
    let front = ports[&8080];
    let peers: Vec<Backend> = [9141u16, 9142, 9143, 9144, 9145]
        .iter()
        .map(|p| Backend::on_port(ports[p]))
        .collect();
    for failing in &peers[..3] {
        failing.set_path_mode("/health", Mode::Status(503));
    }
    let nginx = Nginx::start_raw(&text);
    wait_until(Duration::from_secs(8), "the upstream in panic", || {
        status_page(front, STATUS).starts_with("Upstream app (panic)\n")
    });
    for _ in 0..20 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    let got: Vec<usize> = peers.iter().map(Backend::proxied).collect();
    assert!(got[..4].iter().all(|&n| n > 0), "{got:?}");
    assert_eq!(got[4], 0, "the backup took traffic: {got:?}");
    let log = nginx.stop();
    assert!(
        log.contains(
            "upstream \"app\" is in panic: 1 of 4 primary peers up, below panic_threshold=50%; \
             verdicts are not applied"
        ),
        "{log}"
    );
}

/// dynamic.conf: the peers of "backend" are etcd's keys, as its comments write them: the
/// static server stops serving once etcd is read, the peer marked down takes nothing.
#[test]
fn dynamic_example_runs() {
    let (text, ports) = move_ports(&runnable("dynamic.conf", &example("dynamic.conf")));
    let etcd = Etcd::start();
    let text = text.replace(&format!("http://127.0.0.1:{}", ports[&2379]), &etcd.url());
    let front = ports[&8080];
    let [statik, two, down] = [9151u16, 9152, 9153].map(|p| Backend::on_port(ports[&p]));
    for b in [&statik, &two, &down] {
        b.set_health_path("/health");
    }
    etcd.put(
        &format!("/nginx/upstreams/backend/{}", two.addr()),
        r#"{"weight": 2}"#,
    );
    etcd.put(
        &format!("/nginx/upstreams/backend/{}", down.addr()),
        r#"{"status": "down"}"#,
    );
    let nginx = Nginx::start_raw(&text);
    wait_until(
        Duration::from_secs(8),
        "etcd's peers on the status page",
        || {
            let doc = strict_json(&status_page(front, STATUS));
            let peers = json_upstream(&doc, "backend")["primary"].clone();
            peers
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["source"] == "etcd"))
        },
    );
    statik.reset_counts();
    for _ in 0..10 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    assert_eq!(
        (statik.proxied(), two.proxied(), down.proxied()),
        (0, 10, 0)
    );
    nginx.stop();
}

#[test]
fn etcd_example_runs() {
    let (text, ports) = move_ports(&runnable("etcd.conf", &example("etcd.conf")));
    let front = ports[&8080];
    let peers: Vec<Backend> = [9151u16, 9152]
        .iter()
        .map(|p| Backend::on_port(ports[p]))
        .collect();
    let etcd = Etcd::start_on(ports[&2379]);
    let nginx = Nginx::start_raw(&text);
    wait_until(Duration::from_secs(5), "the node follows etcd", || {
        status_page(front, STATUS).starts_with("etcd: connected\n")
    });
    let gray = format!("t=gray&u=app&p=127.0.0.1:{}&a=set&ttl=600", ports[&9152]);
    let (status, _, body) = http_request(front, "POST", &format!("/hc_admin?{gray}"), "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        etcd.keys("/nginx/"),
        vec![format!(
            "/nginx/control/gray/app/127.0.0.1:{}",
            ports[&9152]
        )]
    );
    for _ in 0..6 {
        assert_eq!(http_get(front, "/x").unwrap().0, 200);
    }
    assert_eq!(peers[1].proxied(), 0, "the gray peer took traffic");
    drop(etcd);
    let (status, _, body) = http_request(front, "POST", &format!("/hc_admin?{gray}"), "").unwrap();
    assert_eq!(status, 503, "{body}");
    let log = nginx.stop();
    assert_eq!(lines_with(&log, "etcd is unreachable").len(), 1, "{log}");
}

#[test]
fn https_example_runs() {
    let (text, ports) = move_ports(&runnable("https.conf", &example("https.conf")));
    let front = ports[&8080];
    // 9443 has a certificate for the right name from a CA the system does not trust; nothing
    // listens on 9444; 9445 is the internal backend, whose certificate is not verified.
    let pki = Pki::new();
    let api = pki.leaf("api", "api.example.com");
    let internal = pki.leaf("internal", "internal.test");
    let tls = |port: u16, pair: &CertPair, body: &str| {
        format!(
            "server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
             ssl_certificate {};\n    ssl_certificate_key {};\n    \
             location / {{ return 200 \"{body}\\n\"; }}\n}}\n",
            pair.cert.display(),
            pair.key.display()
        )
    };
    let _backends = Nginx::start(&format!(
        "{}{}",
        tls(ports[&9443], &api, "api"),
        tls(ports[&9445], &internal, "internal")
    ));
    let nginx = Nginx::start_raw(&text);
    wait_until(
        Duration::from_secs(8),
        "9443 and 9444 DOWN, 9445 up",
        || {
            state(front, "api", ports[&9443]).as_deref() == Some("DOWN")
                && state(front, "api", ports[&9444]).as_deref() == Some("DOWN")
                && state(front, "internal", ports[&9445]).as_deref() == Some("up")
        },
    );
    let (status, _, body) = http_get(front, "/").expect("GET / through internal");
    assert_eq!((status, body.as_str()), (200, "internal\n"));
    let log = nginx.stop();
    assert!(
        log.contains(&format!(
            "peer 127.0.0.1:{} in upstream \"api\" is DOWN after 2 failed checks, last error: \
             certificate rejected: unable to verify the first certificate",
            ports[&9443]
        )),
        "{log}"
    );
    assert!(!log.contains("in upstream \"internal\" is DOWN"), "{log}");
}

/// passive.conf: 9151 passes its probes but fails real requests with 502: three of them take it
/// out, after which every request reaches 9150; the JSON page counts both peers' traffic.
#[test]
fn passive_example_runs() {
    let (text, ports) = move_ports(&runnable("passive.conf", &example("passive.conf")));
    let front = ports[&8080];
    let nginx = Nginx::start_raw(&text);
    wait_until(Duration::from_secs(8), "both peers up", || {
        [9150, 9151]
            .iter()
            .all(|p| state(front, "backend", ports[p]).as_deref() == Some("up"))
    });
    let statuses: Vec<u16> = (0..10)
        .map(|i| http_get(front, &format!("/r{i}")).map_or(0, |r| r.0))
        .collect();
    // The third 502 takes it out; a request another worker started in the same instant may
    // still reach it.
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    assert!((3..=4).contains(&failed), "{statuses:?}");
    assert_eq!(
        state(front, "backend", ports[&9151]).as_deref(),
        Some("DOWN")
    );
    let doc = strict_json(&status_page(front, &format!("{STATUS}?format=json")));
    let bad = json_peer(&doc, "backend", &format!("127.0.0.1:{}", ports[&9151]));
    assert!(shows_passive_ejection(bad), "{bad}");
    assert_eq!(bad["traffic"]["responses"]["5xx"], failed, "{bad}");
    let good = json_peer(&doc, "backend", &format!("127.0.0.1:{}", ports[&9150]));
    assert_eq!(good["traffic"]["responses"]["2xx"], 10 - failed, "{good}");
    let log = nginx.stop();
    assert!(
        log.contains("is DOWN after 3 failed proxied requests within 10s, last error: passive"),
        "{log}"
    );
}

#[test]
fn stream_example_runs() {
    let (text, ports) = move_ports(&runnable("stream.conf", &example("stream.conf")));
    let (front, proxy) = (ports[&8080], ports[&6000]);
    // 6379 answers PING; nothing listens on 6380; 5353 answers queries.
    let redis = LineBackend::on_port(ports[&6379]);
    let dns = DatagramBackend::on_port(ports[&5353]);
    let nginx = Nginx::start_raw(&text);
    let (down, up) = (
        format!("127.0.0.1:{}", ports[&6380]),
        format!("127.0.0.1:{}", ports[&6379]),
    );
    wait_until(Duration::from_secs(8), "the silent redis DOWN", || {
        peer_state_in(
            &status_page(front, STATUS),
            "Stream upstream ",
            "redis",
            &down,
        ) == Some("DOWN")
    });
    let page = status_page(front, STATUS);
    assert_eq!(
        peer_state_in(&page, "Stream upstream ", "redis", &up),
        Some("up"),
        "{page}"
    );
    let dns_peer = format!("127.0.0.1:{}", ports[&5353]);
    assert_eq!(
        peer_state_in(&page, "Stream upstream ", "dns", &dns_peer),
        Some("up"),
        "{page}"
    );
    wait_until(Duration::from_secs(5), "a dns probe", || dns.queries() >= 1);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy)).expect("connect to nginx");
    std::io::Write::write_all(&mut s, b"GET k\n").unwrap();
    wait_until(Duration::from_secs(5), "the session at redis", || {
        redis.client_lines() == 1
    });
    nginx.stop();
}
