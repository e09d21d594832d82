//! The control endpoint (`upstream_healthcheck_admin`) as an operator calls it: HTTP/1.0
//! requests to the front server, the JSON answers, and the text status page's peer states.
use serde_json::{json, Value};
use std::io;

use std::time::Duration;

use super::{exchange, header, parse_response, poll, status_page, strict_json};

/// One HTTP/1.0 request to 127.0.0.1:port with extra header lines and a body; returns (status,
/// headers, body). Content-Length is sent with a body, and for PUT (nginx wants one there); an
/// empty POST goes without, as `curl -X POST URL` sends it (see
/// `post_with_an_empty_or_chunked_body` for `Content-Length: 0`).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String, String)> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    parse_response(&exchange(port, &raw, true)?)
}

/// `METHOD /admin?query` (no body): (status, raw JSON body). Asserts the JSON content type.
pub fn admin(port: u16, method: &str, query: &str) -> (u16, String) {
    let path = if query.is_empty() {
        "/admin".to_owned()
    } else {
        format!("/admin?{query}")
    };
    let (status, headers, body) = request(port, method, &path, &[], b"");
    if method != "HEAD" {
        assert_eq!(
            header(&headers, "Content-Type").as_deref(),
            Some("application/json"),
            "{method} {path}: {status}\n{headers}\n{body}"
        );
    }
    (status, body)
}

pub const SET: &str = r#"{"status":"ok","err_msg":"","msg":"Set into shm succeded"}"#;
pub const DELETED: &str = r#"{"status":"ok","err_msg":"","msg":"Delete succeded"}"#;
pub const NOT_FOUND: &str = r#"{"status":"ok","err_msg":"","msg":"not found"}"#;

/// POSTs `query` in the query string and asserts the exact answer.
pub fn post_ok(port: u16, query: &str, want: &str) {
    let (status, body) = admin(port, "POST", query);
    assert_eq!((status, body.as_str()), (200, want), "POST /admin?{query}");
}

/// `a=get` over GET: the `ttl` when found, None when not.
pub fn get_ttl(port: u16, query: &str) -> Option<u64> {
    let (status, body) = admin(port, "GET", query);
    assert_eq!(status, 200, "GET /admin?{query}: {body}");
    if body == NOT_FOUND {
        return None;
    }
    let v = strict_json(&body);
    assert_eq!(
        (&v["status"], &v["err_msg"], &v["msg"]),
        (&json!("ok"), &json!(""), &json!("found")),
        "{body}"
    );
    Some(
        v["ttl"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ttl: {body}")),
    )
}

/// GET /admin without parameters: the `msg` object (`exclusions`, `manual_downs`).
pub fn list(port: u16) -> Value {
    let (status, body) = admin(port, "GET", "");
    assert_eq!(status, 200, "{body}");
    let v = strict_json(&body);
    assert_eq!(
        (&v["status"], &v["err_msg"]),
        (&json!("ok"), &json!("")),
        "{body}"
    );
    v["msg"].clone()
}

/// `up`, `DOWN` or `DOWN (manual)`: the state of `peer` in `upstream` on a text page.
pub fn text_state<'a>(page: &'a str, upstream: &str, peer: &str) -> Option<&'a str> {
    let mut inside = false;
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("Upstream ") {
            inside = rest.strip_suffix(" (NO checkers)").unwrap_or(rest) == upstream;
            continue;
        }
        if inside {
            if let Some(state) = line
                .trim_start()
                .strip_prefix(peer)
                .and_then(|r| r.strip_prefix(' '))
            {
                return Some(state);
            }
        }
    }
    None
}

/// Waits until the text page at `/status` shows `peer` of `upstream` in `state`.
pub fn wait_text_state(port: u16, upstream: &str, peer: &str, state: &str, timeout: Duration) {
    poll(
        timeout,
        &format!("{peer} in {upstream} to be {state:?}"),
        || {
            let page = status_page(port, "/status");
            match text_state(&page, upstream, peer) {
                Some(s) if s == state => Ok(()),
                _ => Err(page),
            }
        },
    );
}
