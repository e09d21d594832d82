//! `type=https` probes against real TLS backends: a second nginx (started by the test, with
//! certificates the test makes with the `openssl` CLI) serves every case: a valid certificate,
//! an expired one, one for another name, one from an unknown CA, client certificates, and two
//! names on one port. The checking nginx must reach the verdict and the reason each deserves,
//! and resume its TLS sessions.
mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(15);
const CHECK: &str = "upstream_healthcheck type=https interval=150ms timeout=1s fall=1 rise=1";

fn json_status(port: u16) -> Value {
    strict_json(&status_page(port, "/status?format=json"))
}

fn health(doc: &Value, upstream: &str, peer: &str) -> Value {
    json_peer(doc, upstream, peer)["health"].clone()
}

/// A TLS `server {}` of the backend nginx, answering 200 with `body` (503 when the client
/// sent the name `a.test` in SNI), logging to `log`.
fn tls_server(
    port: u16,
    names: &str,
    pair: &CertPair,
    extra: &str,
    body: &str,
    log: &Path,
) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {names};\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    access_log {} tls;\n    {extra}\n    \
         location / {{\n        if ($ssl_server_name = a.test) {{ return 503 \"{body}\\n\"; }}\n        \
         return 200 \"{body}\\n\";\n    }}\n}}\n",
        pair.cert.display(),
        pair.key.display(),
        log.display()
    )
}

/// An upstream, a peer and what its `health` object must satisfy.
type Case<'a> = (&'a str, String, &'a dyn Fn(&Value) -> bool);

/// Polls the JSON status until `ok` holds for every (upstream, peer, want) or the time is up.
fn wait_health(port: u16, cases: &[Case]) -> Value {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let doc = json_status(port);
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(u, p, ok)| {
                let h = health(&doc, u, p);
                (!ok(&h)).then(|| format!("{u} {p}: {h}"))
            })
            .collect();
        if wrong.is_empty() {
            return doc;
        }
        if std::time::Instant::now() >= deadline {
            panic!("verdicts not reached after {SOON:?}:\n{}", wrong.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn up_after(n: u64) -> impl Fn(&Value) -> bool {
    move |h: &Value| {
        h["status"] == "up" && h["last_status"] == 200 && h["checks"].as_u64().unwrap_or(0) >= n
    }
}

fn down_with(error: &'static str, detail: Option<&'static str>) -> impl Fn(&Value) -> bool {
    move |h: &Value| {
        h["status"] == "down"
            && h["last_error"] == error
            && detail.map_or(true, |d| h["last_error_detail"] == d)
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

struct Backends {
    pki: Pki,
    _nginx: Nginx,
    good: u16,
    expired: u16,
    wrong_name: u16,
    untrusted: u16,
    mtls: u16,
    sni: u16,
}

impl Backends {
    fn start() -> Backends {
        let pki = Pki::new();
        let good = pki.leaf("good", "backend.test");
        let expired = pki.expired_leaf("expired", "backend.test");
        let wrong = pki.leaf("wrong", "wrong.test");
        let untrusted = pki.untrusted_leaf("untrusted", "backend.test");
        let a = pki.leaf("a", "a.test");
        let b = pki.leaf("b", "b.test");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let log = pki.dir().join("access.log");
        let conf = format!(
            "log_format tls \"$server_port $ssl_protocol $ssl_session_reused $ssl_server_name $status $connection_requests\";\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             {}{}{}{}{}{}{}",
            tls_server(ports[0], "backend.test", &good, "", "good", &log),
            tls_server(ports[1], "backend.test", &expired, "", "expired", &log),
            tls_server(ports[2], "wrong.test", &wrong, "", "wrong", &log),
            tls_server(ports[3], "backend.test", &untrusted, "", "untrusted", &log),
            tls_server(
                ports[4],
                "backend.test",
                &good,
                &format!("ssl_client_certificate {};\n    ssl_verify_client on;", pki.ca().display()),
                "mtls",
                &log
            ),
            tls_server(ports[5], "a.test", &a, "", "a", &log),
            tls_server(ports[5], "b.test", &b, "", "b", &log),
        );
        let nginx = Nginx::start(&conf);
        Backends {
            pki,
            _nginx: nginx,
            good: ports[0],
            expired: ports[1],
            wrong_name: ports[2],
            untrusted: ports[3],
            mtls: ports[4],
            sni: ports[5],
        }
    }

    fn access_log(&self) -> String {
        read(&self.pki.dir().join("access.log"))
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn status_server(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    \
         location = /status {{ upstream_healthcheck_status; }}\n}}\n"
    )
}

#[test]
fn verification_decides_the_verdict_and_names_the_reason() {
    let b = Backends::start();
    let ca = b.pki.ca();
    let verify = format!(
        "{CHECK} host=backend.test;\n    upstream_healthcheck_ssl_verify on;\n    \
         upstream_healthcheck_ssl_trusted_certificate {};",
        ca.display()
    );
    let port = free_port();
    let mut conf = String::new();
    for (name, p) in [
        ("good", b.good),
        ("expired", b.expired),
        ("wrong_name", b.wrong_name),
        ("untrusted", b.untrusted),
    ] {
        conf.push_str(&upstream_block(name, &[addr(p)], &verify));
    }
    conf.push_str(&upstream_block(
        "noverify",
        &[
            addr(b.good),
            addr(b.expired),
            addr(b.wrong_name),
            addr(b.untrusted),
        ],
        &format!("{CHECK};"),
    ));
    conf.push_str(&status_server(port));
    let nginx = Nginx::start(&conf);

    let mut cases: Vec<Case> = Vec::new();
    let up = up_after(2);
    let expired = down_with("tls_verify", Some("certificate has expired"));
    let mismatch = down_with("tls_verify", Some("hostname mismatch"));
    // The backend sends its certificate alone, so OpenSSL cannot even find its issuer:
    // X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE (a chain with the unknown CA in it would say
    // "unable to get local issuer certificate" or "self-signed certificate in certificate chain").
    let unknown = down_with("tls_verify", Some("unable to verify the first certificate"));
    cases.push(("good", addr(b.good), &up));
    cases.push(("expired", addr(b.expired), &expired));
    cases.push(("wrong_name", addr(b.wrong_name), &mismatch));
    cases.push(("untrusted", addr(b.untrusted), &unknown));
    for p in [b.good, b.expired, b.wrong_name, b.untrusted] {
        cases.push(("noverify", addr(p), &up));
    }
    wait_health(port, &cases);

    let prom = status_page(port, "/status?format=prometheus");
    let line = prom
        .lines()
        .find(|l| {
            l.starts_with("nginx_upstream_healthcheck_failures_total")
                && l.contains("upstream=\"expired\"")
                && l.contains("reason=\"tls_verify\"")
        })
        .unwrap_or_else(|| panic!("no tls_verify failures of upstream expired:\n{prom}"));
    assert!(!line.ends_with(" 0"), "{line}");

    let log = nginx.stop();
    let down = lines_with(&log, "is DOWN");
    for (up, detail) in [
        ("expired", "certificate has expired"),
        ("wrong_name", "hostname mismatch"),
        ("untrusted", "unable to verify the first certificate"),
    ] {
        let needle = format!("upstream \"{up}\"");
        assert!(
            down.iter()
                .any(|l| l.contains(&needle) && l.contains(detail)),
            "no DOWN line for {up} with {detail:?}:\n{log}"
        );
    }
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn client_certificates_and_server_names() {
    let b = Backends::start();
    let client = b.pki.leaf("client", "client.test");
    let ca = b.pki.ca();
    let verify = format!(
        "upstream_healthcheck_ssl_verify on;\n    upstream_healthcheck_ssl_trusted_certificate {};",
        ca.display()
    );
    let port = free_port();
    let conf = format!(
        "{}{}{}{}{}",
        upstream_block(
            "mtls_none",
            &[addr(b.mtls)],
            &format!("{CHECK};\n    upstream_healthcheck_ssl_name backend.test;\n    {verify}")
        ),
        upstream_block(
            "mtls",
            &[addr(b.mtls)],
            &format!(
                "{CHECK};\n    upstream_healthcheck_ssl_name backend.test;\n    {verify}\n    \
                 upstream_healthcheck_ssl_certificate {};\n    \
                 upstream_healthcheck_ssl_certificate_key {};",
                client.cert.display(),
                client.key.display()
            )
        ),
        upstream_block(
            "sni_a",
            &[addr(b.sni)],
            &format!("{CHECK};\n    upstream_healthcheck_ssl_name a.test;\n    {verify}")
        ),
        upstream_block(
            "sni_b",
            &[addr(b.sni)],
            &format!("{CHECK};\n    upstream_healthcheck_ssl_name b.test;\n    {verify}")
        ),
        status_server(port),
    );
    let nginx = Nginx::start(&conf);
    // Without a client certificate nginx answers 400 ("No required SSL certificate was sent").
    let bad_400 = |h: &Value| {
        h["status"] == "down" && h["last_error"] == "bad_status" && h["last_status"] == 400
    };
    let bad_503 = |h: &Value| {
        h["status"] == "down" && h["last_error"] == "bad_status" && h["last_status"] == 503
    };
    let up = up_after(2);
    wait_health(
        port,
        &[
            ("mtls_none", addr(b.mtls), &bad_400),
            ("mtls", addr(b.mtls), &up),
            ("sni_a", addr(b.sni), &bad_503),
            ("sni_b", addr(b.sni), &up),
        ],
    );
    let log = b.access_log();
    let sni_names: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with(&format!("{} ", b.sni)))
        .filter_map(|l| l.split(' ').nth(3))
        .collect();
    assert!(
        sni_names.contains(&"a.test") && sni_names.contains(&"b.test"),
        "{log}"
    );
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn sessions_are_resumed_with_tls_1_2_and_1_3() {
    let b = Backends::start();
    let port = free_port();
    let conf = format!(
        "{}{}{}",
        upstream_block(
            "v13",
            &[addr(b.good)],
            &format!("{CHECK};\n    upstream_healthcheck_ssl_protocols TLSv1.3;")
        ),
        upstream_block(
            "v12",
            &[addr(b.good)],
            &format!("{CHECK};\n    upstream_healthcheck_ssl_protocols TLSv1.2;")
        ),
        status_server(port),
    );
    let nginx = Nginx::start(&conf);
    let up = up_after(6);
    wait_health(
        port,
        &[("v13", addr(b.good), &up), ("v12", addr(b.good), &up)],
    );
    let log = b.access_log();
    for proto in ["TLSv1.3", "TLSv1.2"] {
        let reused: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with(&format!("{} {proto} ", b.good)))
            .filter_map(|l| l.split(' ').nth(2))
            .collect();
        let full = reused.iter().filter(|r| **r == ".").count();
        assert!(reused.len() >= 6, "{proto}: {reused:?}\n{log}");
        assert!(
            full <= 1,
            "{proto}: only the first handshake is a full one: {reused:?}\n{log}"
        );
        assert_eq!(reused.last(), Some(&"r"), "{proto}: {reused:?}");
    }
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn plain_http_peers_fail_the_handshake_and_a_closed_port_is_refused() {
    // nginx answers a ClientHello with a 400 at once: OpenSSL says "wrong version number".
    let plain_port = free_port();
    let _plain = Nginx::start(&format!(
        "server {{\n    listen 127.0.0.1:{plain_port};\n    location / {{ return 200; }}\n}}\n"
    ));
    // The test backend waits for a whole HTTP request that never comes: a handshake timeout.
    let silent = Backend::new();
    let dead = dead_addr();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block(
            "plain",
            &[addr(plain_port), silent.addr(), dead.clone()],
            &format!("{CHECK};")
        ),
        status_server(port),
    );
    let nginx = Nginx::start(&conf);
    let wrong_version = down_with("tls_handshake", Some("wrong version number"));
    let timed_out = |h: &Value| {
        h["status"] == "down"
            && h["last_error"] == "tls_handshake"
            && h["last_error_detail"].is_null()
    };
    let refused = down_with("refused", None);
    wait_health(
        port,
        &[
            ("plain", addr(plain_port), &wrong_version),
            ("plain", silent.addr(), &timed_out),
            ("plain", dead, &refused),
        ],
    );
    let log = nginx.stop();
    assert!(
        log.contains("last error: TLS handshake failed: wrong version number"),
        "{log}"
    );
    assert!(alert_lines(&log).is_empty(), "{log}");
}

#[test]
fn reload_and_stop_with_tls_probes_in_flight_leave_nothing_behind() {
    let b = Backends::start();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block(
            "good",
            &[addr(b.good), addr(b.mtls)],
            &format!(
                "upstream_healthcheck type=https interval=50ms timeout=1s fall=1 rise=1 \
                 host=backend.test;\n    upstream_healthcheck_ssl_verify on;\n    \
                 upstream_healthcheck_ssl_trusted_certificate {};",
                b.pki.ca().display()
            )
        ),
        status_server(port),
    );
    let mut nginx = Nginx::start_with("worker_processes 2;", &conf);
    let up = up_after(3);
    let no_cert = |h: &Value| h["status"] == "down" && h["last_status"] == 400;
    wait_health(
        port,
        &[
            ("good", addr(b.good), &up),
            ("good", addr(b.mtls), &no_cert),
        ],
    );
    for _ in 0..3 {
        nginx.reload();
        // The new workers probe on (with sessions of their own: the old ones went with the
        // old workers).
        let checks = health(&json_status(port), "good", &addr(b.good))["checks"]
            .as_u64()
            .unwrap_or(0);
        let more = up_after(checks + 3);
        wait_health(
            port,
            &[
                ("good", addr(b.good), &more),
                ("good", addr(b.mtls), &no_cert),
            ],
        );
    }
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
    assert!(!log.contains("open socket"), "{log}");
}

#[test]
fn keepalive_carries_several_probes_over_one_tls_connection() {
    let b = Backends::start();
    let port = free_port();
    let conf = format!(
        "{}{}",
        upstream_block(
            "ka",
            &[addr(b.good)],
            &format!(
                "upstream_healthcheck type=https keepalive=100 interval=100ms timeout=1s fall=1 \
                 rise=1 host=backend.test;\n    upstream_healthcheck_ssl_verify on;\n    \
                 upstream_healthcheck_ssl_trusted_certificate {};",
                b.pki.ca().display()
            )
        ),
        status_server(port),
    );
    let nginx = Nginx::start(&conf);
    let up = up_after(6);
    wait_health(port, &[("ka", addr(b.good), &up)]);
    let log = b.access_log();
    let requests: Vec<u64> = log
        .lines()
        .filter(|l| l.starts_with(&format!("{} ", b.good)))
        .filter_map(|l| l.split(' ').nth(5)?.parse().ok())
        .collect();
    assert!(
        requests.iter().any(|&n| n >= 5),
        "no TLS connection carried 5 probes: {requests:?}\n{log}"
    );
    let log = nginx.stop();
    assert!(alert_lines(&log).is_empty(), "{log}");
    assert!(!log.contains("open socket"), "{log}");
}

#[test]
fn a_worker_held_up_mid_handshake_blames_itself_not_the_peers() {
    // Eight healthy TLS backends that take each handshake 300 ms after the connect: a probe
    // every 100 ms spends most of its time mid-handshake, waiting on the peer.
    let pki = Pki::new();
    let pair = pki.leaf("good", "backend.test");
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let _backends = SlowTls::start(&pair, &ports, Duration::from_millis(300));
    let port = free_port();
    let peers: Vec<String> = ports.iter().map(|&p| addr(p)).collect();
    let conf = format!(
        "{}{}",
        upstream_block(
            "u",
            &peers,
            "upstream_healthcheck type=https interval=100ms timeout=1s fall=1 rise=1;"
        ),
        status_server(port),
    );
    let nginx = Nginx::start(&conf);
    let up = up_after(3);
    let cases: Vec<Case> = peers.iter().map(|p| ("u", p.clone(), &up as _)).collect();
    wait_health(port, &cases);
    let worker = nginx.worker_pids()[0];

    // The operator's host stalls (here: the worker is stopped for longer than the timeout)
    // while handshakes are in flight. The peers' answers wait unread; when the worker runs
    // again its timeouts are long past. That is this host's doing: no verdict, no peer down.
    let local = || {
        json_upstream(&json_status(port), "u")["probe_errors"]["local"]
            .as_u64()
            .unwrap_or(0)
    };
    let blamed = || -> Vec<String> {
        let doc = json_status(port);
        peers
            .iter()
            .map(|p| health(&doc, "u", p))
            .filter(|h| h["status"] != "up" || h["failures"] != 0)
            .map(|h| h.to_string())
            .collect()
    };
    signal("STOP", worker);
    std::thread::sleep(Duration::from_millis(1500));
    signal("CONT", worker);
    // The stalled probes end as soon as the worker runs: without a verdict, or blaming peers.
    wait_until(Duration::from_secs(5), "the stalled probes end", || {
        local() > 0 || !blamed().is_empty()
    });
    let blamed = blamed();
    assert!(
        blamed.is_empty(),
        "peers blamed for this worker's stall:\n{}\n{}",
        blamed.join("\n"),
        nginx.error_log()
    );
    assert!(
        local() > 0,
        "no probe was caught mid-handshake in the stall: the test did not test anything"
    );
    let log = nginx.stop();
    assert!(!log.contains("is DOWN"), "{log}");
    assert!(
        log.contains("probes give no verdict: a probe's timeout fired"),
        "the stall is logged as this host's: {log}"
    );
    assert!(alert_lines(&log).is_empty(), "{log}");
}
