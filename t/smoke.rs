//! Smoke test: the harness runs nginx (with the module loaded, no module directives) for the
//! current target, serves a request, checks the config, and stops cleanly.
mod common;

use common::*;
use std::time::Duration;

fn plain_server(port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    location = /hello {{ return 200 \"hello\\n\"; }}\n}}\n"
    )
}

#[test]
fn serves_return_200_with_module_loaded() {
    let port = free_port();
    let nginx = Nginx::start(&plain_server(port));
    let (status, _headers, body) = http_get(port, "/hello").expect("GET /hello");
    assert_eq!(status, 200);
    assert_eq!(body, "hello\n");
    let (status, _, _) = http_get(port, "/missing").expect("GET /missing");
    assert_eq!(status, 404);
    nginx.stop();
}

#[test]
fn config_test_succeeds() {
    let (ok, out) = nginx_test(&plain_server(free_port()));
    assert!(ok, "nginx -t failed:\n{out}");
    assert!(out.contains("syntax is ok"), "{out}");
}

#[test]
fn config_test_reports_errors() {
    let (ok, out) = nginx_test("no_such_directive on;");
    assert!(!ok, "nginx -t accepted an unknown directive:\n{out}");
    assert!(out.contains("unknown directive"), "{out}");
    let (ok, out) = nginx_test_raw(&format!(
        "{}\nevents {{}}\nlisten 80;\n",
        load_module_line()
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("not allowed here"), "{out}");
}

#[test]
fn proxies_to_backend_and_reloads() {
    let backend = Backend::new();
    let port = free_port();
    let conf = |status: u16| {
        format!(
            "upstream b {{ server {}; }}\nserver {{\n    listen 127.0.0.1:{port};\n    proxy_read_timeout 2s;\n    \
             location / {{ proxy_pass http://b; }}\n    location = /s {{ return {status}; }}\n}}\n",
            backend.addr()
        )
    };
    let mut nginx = Nginx::start_with("worker_processes 2;", &conf(204));
    assert_eq!(nginx.worker_pids().len(), 2);
    let (status, headers, body) = http_get(port, "/x?y=1").expect("GET /x");
    assert_eq!(status, 200, "{headers}\n{body}");
    assert!(
        body.contains(&format!("backend {}", backend.port())),
        "{body}"
    );
    assert_eq!(backend.hits("/x"), 1);
    assert_eq!(backend.proxied(), 1);
    http_get(backend.port(), "/health").expect("GET /health");
    assert_eq!(backend.hits("/health"), 1);
    assert_eq!(backend.proxied(), 1);

    backend.set_mode(Mode::Status(503));
    assert_eq!(http_get(port, "/x").unwrap().0, 503);
    backend.set_mode(Mode::Close);
    assert_eq!(http_get(port, "/x").unwrap().0, 502);
    backend.set_mode(Mode::Reset);
    assert_eq!(http_get(port, "/x").unwrap().0, 502);
    backend.set_mode(Mode::Status(200));
    backend.stop();
    assert_eq!(http_get(port, "/x").unwrap().0, 502);
    assert!(
        http_get(backend.port(), "/").is_err(),
        "stopped backend still accepts"
    );
    backend.start();
    assert_eq!(http_get(port, "/x").unwrap().0, 200);

    let old = nginx.worker_pids();
    assert_eq!(http_get(port, "/s").unwrap().0, 204);
    nginx.rewrite_conf(&conf(202));
    let took = nginx.reload();
    assert!(took < Duration::from_secs(10), "reload took {took:?}");
    let new = nginx.worker_pids();
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "old {old:?} new {new:?}"
    );
    assert_eq!(http_get(port, "/s").unwrap().0, 202);
    let log = nginx.stop();
    assert!(log.contains("reconfiguring"), "{log}");
}

#[test]
fn hanging_backend_times_out() {
    let backend = Backend::new();
    backend.set_mode(Mode::Hang);
    let port = free_port();
    let nginx = Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{port}; proxy_read_timeout 300ms; location / {{ proxy_pass http://{}; }} }}",
        backend.addr()
    ));
    assert_eq!(http_get(port, "/slow").unwrap().0, 504);
    wait_until(Duration::from_secs(2), "backend saw /slow", || {
        backend.hits("/slow") == 1
    });
    let t = backend.arrivals("/slow");
    assert_eq!(t.len(), 1);
    nginx.stop();
}

#[test]
fn a_debug_build_logs_the_life_of_each_probe() {
    let b = Backend::new();
    let port = free_port();
    let body = format!(
        "upstream backend {{\n    server {};\n    upstream_healthcheck type=http interval=100ms;\n}}\n{}",
        b.addr(),
        plain_server(port)
    );
    let conf = render_conf(std::path::Path::new("."), "", &body)
        .replace("error.log info;", "error.log debug;");
    let nginx = Nginx::start_raw(&conf);
    wait_until(Duration::from_secs(5), "a few probes", || b.hits("/") >= 3);
    let log = nginx.stop();
    let peer = b.addr();
    let debug_build = std::process::Command::new(nginx_bin())
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("--with-debug"))
        .unwrap_or(false);
    let lines = [
        format!("upstream_healthcheck: probe of {peer} in upstream \"backend\" starts"),
        "upstream_healthcheck: probe connected".to_string(),
        format!("upstream_healthcheck: probe of {peer} in upstream \"backend\" ended in "),
        "upstream_healthcheck: timer armed in ".to_string(),
    ];
    for needle in &lines {
        let found = log
            .lines()
            .any(|l| l.contains("[debug]") && l.contains(needle.as_str()));
        assert_eq!(
            found, debug_build,
            "debug line {needle:?} (nginx built --with-debug: {debug_build})"
        );
    }
}
