//! Stream upstreams: the stream module (ngx_stream_upstream_healthcheck_module) loads beside the
//! http module or alone, after nginx's own stream module; it checks tcp and udp peers and
//! nginx's stream balancer skips the ones found down.
mod common;

use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(10);

/// A `stream {}` body: `upstream NAME` over `servers` with `directives`, and a server on `port`
/// passing connections to it.
fn proxied_upstream(name: &str, servers: &[String], directives: &str, port: u16) -> String {
    format!(
        "{}server {{\n    listen 127.0.0.1:{port};\n    proxy_pass {name};\n}}\n",
        upstream_block(name, servers, directives)
    )
}

/// Starts nginx with `stream_body` in `stream {}` and an http server on `http_port` with the
/// status location at `/status` (text, `?format=json|prometheus`).
fn start(stream_body: &str, http_port: u16) -> Nginx {
    Nginx::start_with(
        &stream_main(stream_body),
        &format!(
            "server {{ listen 127.0.0.1:{http_port};\n\
             location = /status {{ upstream_healthcheck_status; }}\n\
             location = /control {{ upstream_healthcheck_admin; }} }}"
        ),
    )
}

/// Waits for the error-log line saying `peer` of stream upstream `upstream` went `state`
/// ("DOWN" or "UP"), the `nth` such line (1-based).
fn wait_transition(nginx: &Nginx, upstream: &str, peer: &str, state: &str, nth: usize) {
    let needle = format!("peer {peer} in stream upstream \"{upstream}\" is {state} after");
    wait_until(DEADLINE, &needle, || {
        lines_with(&nginx.error_log(), &needle).len() >= nth
    });
}

/// One client session through nginx's stream port: sends `line`, returns the answer line.
fn session(port: u16, line: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(line.as_bytes()).expect("send through nginx");
    let mut answer = Vec::new();
    let mut b = [0u8; 64];
    while !answer.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn both_modules_load_and_stream_traffic_flows() {
    let backend = Backend::new();
    let (stream_port, http_port) = (free_port(), free_port());
    let stream = stream_main(&proxied_upstream("db", &[backend.addr()], "", stream_port));
    let nginx = Nginx::start_with(
        &stream,
        &format!(
            "server {{ listen 127.0.0.1:{http_port}; location = /hello {{ return 200 \"hello\\n\"; }} }}"
        ),
    );
    let (status, _, _) = http_get(stream_port, "/").expect("GET through the stream proxy");
    assert_eq!(status, 200);
    assert_eq!(backend.hits("/"), 1, "one request proxied to the backend");
    let (status, _, body) = http_get(http_port, "/hello").expect("GET /hello");
    assert_eq!((status, body.as_str()), (200, "hello\n"));
    nginx.stop();
}

#[test]
fn the_stream_module_checks_without_the_http_module() {
    let (live, dead) = (LineBackend::new(), LineBackend::new());
    dead.stop();
    let conf = format!(
        "{}error_log error.log info;\npid nginx.pid;\nevents {{}}\nstream {{\n{}}}\n",
        stream_load_lines(),
        proxied_upstream(
            "db",
            &[live.addr(), dead.addr()],
            "upstream_healthcheck interval=100ms fall=1;",
            free_port()
        )
    );
    let (ok, out) = nginx_test_raw(&conf);
    assert!(ok, "nginx -t failed:\n{out}\n{conf}");
    let nginx = Nginx::start_raw(&conf);
    wait_transition(&nginx, "db", &dead.addr(), "DOWN", 1);
    nginx.stop();
}

#[test]
fn a_tcp_backend_that_goes_away_is_taken_out_and_comes_back() {
    let backend = LineBackend::new();
    let peer = backend.addr();
    let (stream_port, http_port) = (free_port(), free_port());
    let nginx = start(
        &proxied_upstream(
            "db",
            std::slice::from_ref(&peer),
            "upstream_healthcheck interval=100ms fall=2 rise=2;",
            stream_port,
        ),
        http_port,
    );
    backend.stop();
    wait_transition(&nginx, "db", &peer, "DOWN", 1);
    backend.start();
    wait_transition(&nginx, "db", &peer, "UP", 1);
    assert_eq!(session(stream_port, "GET\n"), "+OK\r\n");
    nginx.stop();
}

#[test]
fn redis_ping_pong_decides_and_sessions_never_reach_a_down_peer() {
    let (bad, good) = (LineBackend::new(), LineBackend::new());
    let (stream_port, http_port) = (free_port(), free_port());
    for zone in ["", "zone db 64k;"] {
        let nginx = start(
            &proxied_upstream(
                "db",
                &[bad.addr(), good.addr()],
                &format!(
                    "{zone}\n    upstream_healthcheck interval=100ms fall=1 rise=1;\n    \
                     upstream_healthcheck_send \"PING\\r\\n\";\n    \
                     upstream_healthcheck_expect \"+PONG\";"
                ),
                stream_port,
            ),
            http_port,
        );
        bad.set_failing(true);
        wait_transition(&nginx, "db", &bad.addr(), "DOWN", 1);
        let (bad_before, good_before) = (bad.client_lines(), good.client_lines());
        for _ in 0..20 {
            assert_eq!(session(stream_port, "SET k v\n"), "+OK\r\n");
        }
        assert_eq!(
            bad.client_lines(),
            bad_before,
            "a session reached the down peer ({zone})"
        );
        assert_eq!(good.client_lines() - good_before, 20);
        bad.set_failing(false);
        wait_transition(&nginx, "db", &bad.addr(), "UP", 1);
        let log = nginx.stop();
        assert!(
            log.contains("last error: the answer did not meet upstream_healthcheck_expect"),
            "{log}"
        );
    }
}

#[test]
fn udp_peers_fail_on_silence_at_the_timeout_and_on_a_closed_port_at_once() {
    let dns = DatagramBackend::new();
    let closed = format!("127.0.0.1:{}", free_port());
    let http_port = free_port();
    let nginx = start(
        &format!(
            "upstream dns {{\n    server {};\n    server {closed};\n    \
             upstream_healthcheck type=udp interval=100ms timeout=300ms fall=2 rise=2;\n    \
             upstream_healthcheck_send \"\\xab\\xcd\\x01\\x00\";\n    \
             upstream_healthcheck_expect \"\\xab\\xcd\\x81\\x80\";\n}}\n",
            dns.addr()
        ),
        http_port,
    );
    wait_transition(&nginx, "dns", &closed, "DOWN", 1);
    assert!(
        lines_with(&nginx.error_log(), "is DOWN")
            .iter()
            .all(|l| l.contains("last error: connection refused")),
        "{}",
        nginx.error_log()
    );
    let queries = dns.queries();
    wait_until(DEADLINE, "probes answered", || dns.queries() >= queries + 3);
    assert!(lines_with(&nginx.error_log(), &format!("peer {}", dns.addr())).is_empty());
    dns.set_answering(false);
    wait_transition(&nginx, "dns", &dns.addr(), "DOWN", 1);
    let log = nginx.error_log();
    let line = lines_with(&log, &format!("peer {} in stream upstream", dns.addr()))[0];
    assert!(line.contains("last error: timed out"), "{line}");
    dns.set_answering(true);
    wait_transition(&nginx, "dns", &dns.addr(), "UP", 1);
    nginx.stop();
}

#[test]
fn reload_keeps_stream_state() {
    let (bad, good) = (LineBackend::new(), LineBackend::new());
    let (stream_port, http_port) = (free_port(), free_port());
    let body = proxied_upstream(
        "db",
        &[bad.addr(), good.addr()],
        "upstream_healthcheck interval=1s fall=1 rise=1;\n    \
         upstream_healthcheck_send \"PING\\r\\n\";\n    upstream_healthcheck_expect \"+PONG\";",
        stream_port,
    );
    bad.set_failing(true);
    let mut nginx = start(&body, http_port);
    wait_transition(&nginx, "db", &bad.addr(), "DOWN", 1);
    nginx.reload();
    // Sessions right after the reload, before any new probe could judge the peer again.
    let before = bad.client_lines();
    for _ in 0..6 {
        assert_eq!(session(stream_port, "SET k v\n"), "+OK\r\n");
    }
    assert_eq!(
        bad.client_lines(),
        before,
        "the reload forgot the down peer"
    );
    assert_eq!(lines_with(&nginx.error_log(), "is UP").len(), 0);
    nginx.stop();
}

#[test]
fn stream_config_errors_name_the_directive_and_line() {
    let cases = [
        (
            "upstream_healthcheck uri=/health;",
            "upstream_healthcheck uri",
            "invalid parameter \"uri=/health\" in \"upstream_healthcheck\" directive".to_string(),
        ),
        (
            "upstream_healthcheck type=https;",
            "upstream_healthcheck type",
            "invalid parameter \"type=https\" in \"upstream_healthcheck\" directive, type must be \
             \"tcp\" or \"udp\" in a stream upstream"
                .to_string(),
        ),
        (
            "upstream_healthcheck type=udp;\n    upstream_healthcheck_expect \"x\";",
            "upstream_healthcheck_expect",
            "\"upstream_healthcheck_expect\" directive needs \"upstream_healthcheck_send\" with \
             type=udp in upstream \"db\""
                .to_string(),
        ),
        (
            "upstream_healthcheck_send \"PING\";",
            "upstream_healthcheck_send",
            "\"upstream_healthcheck_send\" directive needs \"upstream_healthcheck\" in upstream \
             \"db\""
                .to_string(),
        ),
        (
            "upstream_healthcheck;\n    upstream_healthcheck_expect ~ \"(\";",
            "upstream_healthcheck_expect",
            "invalid regular expression \"(\" in \"upstream_healthcheck_expect\" directive, \
             unclosed group"
                .to_string(),
        ),
    ];
    for (directives, needle, msg) in cases {
        let check = nginx_test_conf(
            &stream_main(&upstream_block("db", &["127.0.0.1:9".into()], directives)),
            "",
        );
        assert!(!check.ok, "accepted: {directives}\n{}", check.output);
        let want = check.emerg_line(&msg, check.line_of(needle));
        assert!(
            check.output.contains(&want),
            "want: {want}\ngot:\n{}",
            check.output
        );
    }
    // A send without expect is fine for tcp.
    let check = nginx_test_conf(
        &stream_main(&upstream_block(
            "db",
            &["127.0.0.1:9".into()],
            "upstream_healthcheck;\n    upstream_healthcheck_send \"PING\\r\\n\";",
        )),
        "",
    );
    assert!(check.ok, "{}", check.output);
}

#[test]
fn status_pages_list_stream_upstreams_after_the_http_ones() {
    let web = Backend::new();
    let (bad, good) = (LineBackend::new(), LineBackend::new());
    let (stream_port, http_port) = (free_port(), free_port());
    bad.set_failing(true);
    let nginx = Nginx::start_with(
        &stream_main(&proxied_upstream(
            "db",
            &[bad.addr(), good.addr()],
            "upstream_healthcheck interval=100ms fall=1 rise=1;\n    \
             upstream_healthcheck_send \"PING\\r\\n\";\n    upstream_healthcheck_expect \"+PONG\";",
            stream_port,
        )),
        &format!(
            "{}server {{ listen 127.0.0.1:{http_port};\n\
             location = /status {{ upstream_healthcheck_status; }} }}",
            upstream_block(
                "db",
                &[web.addr()],
                "upstream_healthcheck type=tcp interval=100ms;"
            )
        ),
    );
    wait_transition(&nginx, "db", &bad.addr(), "DOWN", 1);
    let text = status_page(http_port, "/status");
    assert_eq!(
        text,
        format!(
            "Upstream db\n    Primary Peers\n        {} up\n    Backup Peers\n\n\
             Stream upstream db\n    Primary Peers\n        {} DOWN\n        {} up\n    \
             Backup Peers\n",
            web.addr(),
            bad.addr(),
            good.addr()
        )
    );
    assert_eq!(
        peer_state_in(&text, "Stream upstream ", "db", &bad.addr()),
        Some("DOWN")
    );
    assert_eq!(peer_state(&text, "db", &web.addr()), Some("up"));

    let doc = strict_json(&status_page(http_port, "/status?format=json"));
    assert_eq!(doc["msg"]["upstreams"].as_array().map(Vec::len), Some(1));
    let stream = &doc["msg"]["stream_upstreams"][0];
    assert_eq!(stream["name"], "db");
    let peers = stream["primary"].as_array().expect("primary peers");
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0]["name"], bad.addr().as_str());
    assert_eq!(peers[0]["down"], true);
    assert_eq!(peers[1]["down"], false);
    // The same peer schema as http peers.
    let http_peer = json_peer(&doc, "db", &web.addr());
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&peers[1]), keys(http_peer));

    let metrics = status_page(http_port, "/status?format=prometheus");
    promtool_accepts(&metrics, "a page with stream upstreams");
    assert!(metrics.contains(&format!(
        "nginx_upstream_healthcheck_peer_up{{upstream=\"db\",kind=\"stream\",peer=\"{}\",role=\"primary\"}} 0\n",
        bad.addr()
    )));
    assert!(metrics.contains(&format!(
        "nginx_upstream_healthcheck_peer_up{{upstream=\"db\",peer=\"{}\",role=\"primary\"}} 1\n",
        web.addr()
    )));
    assert!(!metrics.contains(&format!("endpoint=\"{}\"", bad.addr())));
    nginx.stop();
}

/// A control request (`upstream_healthcheck_admin` at /control): (status, body).
fn control(port: u16, method: &str, query: &str) -> (u16, String) {
    let (status, _, body) =
        http_request(port, method, &format!("/control?{query}"), "").expect("control request");
    (status, body)
}

#[test]
fn the_control_api_takes_stream_peers_out_with_k_stream() {
    let web = Backend::new();
    let (a, b) = (LineBackend::new(), LineBackend::new());
    let (stream_port, http_port) = (free_port(), free_port());
    let nginx = Nginx::start_with(
        &stream_main(&proxied_upstream(
            "db",
            &[a.addr(), b.addr()],
            "upstream_healthcheck interval=200ms;",
            stream_port,
        )),
        &format!(
            "{}server {{ listen 127.0.0.1:{http_port};\n\
             location = /status {{ upstream_healthcheck_status; }}\n\
             location = /control {{ upstream_healthcheck_admin; }} }}",
            upstream_block("db", &[web.addr()], "upstream_healthcheck type=tcp;")
        ),
    );
    let set = format!("t=gray&k=stream&u=db&p={}&a=set", a.addr());
    let (status, body) = control(http_port, "POST", &set);
    assert_eq!(
        (status, &strict_json(&body)["status"]),
        (200, &serde_json::json!("ok"))
    );
    let text = status_page(http_port, "/status");
    assert!(
        text.contains(&format!(
            "Stream upstream db\n    Primary Peers\n        {} DOWN (manual)\n",
            a.addr()
        )),
        "{text}"
    );
    assert_eq!(
        peer_state(&text, "db", &web.addr()),
        Some("up"),
        "the http upstream db is another one"
    );
    let before = a.client_lines();
    for _ in 0..10 {
        assert_eq!(session(stream_port, "SET k v\n"), "+OK\r\n");
    }
    assert_eq!(
        a.client_lines(),
        before,
        "a session reached the peer taken out"
    );
    let (status, list) = control(http_port, "GET", "k=stream");
    assert_eq!(status, 200);
    let list = strict_json(&list);
    assert_eq!(list["msg"]["manual_downs"][0]["upstream"], "db");
    assert_eq!(list["msg"]["manual_downs"][0]["peer"], a.addr().as_str());
    let (status, list) = control(http_port, "GET", "");
    assert_eq!(
        (
            status,
            strict_json(&list)["msg"]["manual_downs"]
                .as_array()
                .map(Vec::len)
        ),
        (200, Some(0))
    );

    let (status, body) = control(http_port, "GET", "t=ex&k=stream&u=nope&a=get");
    assert_eq!(status, 404);
    assert_eq!(
        strict_json(&body)["err_msg"],
        "unknown stream upstream \"nope\""
    );
    let (status, body) = control(http_port, "GET", "k=mail");
    assert_eq!(status, 400);
    assert_eq!(
        strict_json(&body)["err_msg"],
        "unknown k \"mail\", expected \"http\" or \"stream\""
    );

    let del = format!("t=gray&k=stream&u=db&p={}&a=del", a.addr());
    assert_eq!(control(http_port, "POST", &del).0, 200);
    for _ in 0..10 {
        assert_eq!(session(stream_port, "SET k v\n"), "+OK\r\n");
    }
    assert!(
        a.client_lines() > before,
        "the peer put back gets sessions again"
    );
    nginx.stop();
}

#[test]
fn keepalive_carries_several_probes_per_connection_and_survives_a_peer_closing_it() {
    let redis = LineBackend::new();
    let http_port = free_port();
    let nginx = start(
        &upstream_block(
            "db",
            &[redis.addr()],
            "upstream_healthcheck interval=50ms fall=1 rise=1 keepalive=5;\n    \
             upstream_healthcheck_send \"PING\\r\\n\";\n    upstream_healthcheck_expect \"+PONG\";",
        ),
        http_port,
    );
    wait_until(DEADLINE, "20 probes", || redis.pings() >= 20);
    let (pings, connections) = (redis.pings(), redis.connections());
    assert!(
        connections <= pings / 5 + 2,
        "{connections} connections for {pings} probes with keepalive=5"
    );
    // A server that closes idle connections: the probe finds its kept connection closed and
    // connects anew, without a failure.
    redis.set_close_after_ping(true);
    let pings = redis.pings();
    wait_until(DEADLINE, "20 more probes", || redis.pings() >= pings + 20);
    assert!(
        lines_with(&nginx.error_log(), "is DOWN").is_empty(),
        "{}",
        nginx.error_log()
    );
    nginx.stop();
}

#[test]
fn four_workers_probe_each_peer_once_per_interval() {
    let redis = LineBackend::new();
    let http_port = free_port();
    let nginx = Nginx::start_with(
        &format!(
            "worker_processes 4;\n{}",
            stream_main(&upstream_block(
                "db",
                &[redis.addr()],
                "upstream_healthcheck interval=200ms;\n    \
                 upstream_healthcheck_send \"PING\\r\\n\";\n    \
                 upstream_healthcheck_expect \"+PONG\";",
            ))
        ),
        &format!("server {{ listen 127.0.0.1:{http_port}; }}"),
    );
    wait_until(DEADLINE, "the first probe", || redis.pings() >= 1);
    let (start, t0) = (redis.pings(), std::time::Instant::now());
    wait_until(DEADLINE, "2 s of probes", || {
        t0.elapsed() >= Duration::from_secs(2)
    });
    let probes = redis.pings() - start;
    let intervals = (t0.elapsed().as_millis() / 200) as usize;
    assert!(
        probes <= intervals + 2 && probes * 2 >= intervals,
        "{probes} probes in {intervals} intervals with 4 workers"
    );
    nginx.stop();
}
