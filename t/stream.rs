//! Stream upstreams: the stream module (ngx_stream_upstream_healthcheck_module) loads beside the
//! http module or alone, after nginx's own stream module.
mod common;

use common::*;

/// A `stream {}` body: `upstream NAME` over `servers` with `directives`, and a server on `port`
/// passing connections to it.
fn proxied_upstream(name: &str, servers: &[String], directives: &str, port: u16) -> String {
    format!(
        "{}server {{\n    listen 127.0.0.1:{port};\n    proxy_pass {name};\n}}\n",
        upstream_block(name, servers, directives)
    )
}

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
fn stream_module_loads_without_the_http_module() {
    let conf = format!(
        "{}error_log error.log info;\npid nginx.pid;\nevents {{}}\nstream {{\n{}}}\n",
        stream_load_lines(),
        proxied_upstream("db", &["127.0.0.1:9".into()], "", free_port())
    );
    let (ok, out) = nginx_test_raw(&conf);
    assert!(ok, "nginx -t failed:\n{out}\n{conf}");
}
