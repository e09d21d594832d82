//! Polling (`wait_until`, `poll`) and a small HTTP/1.x client (`http_get`, `exchange`, ...).
use super::*;

/// Polls `f` every 20 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(POLL);
    }
}

/// Polls `f` every 20 ms until it returns Ok; panics with `what` and the last Err after
/// `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    poll_every(POLL, timeout, what, f)
}

/// Polls `f` every `every` until it returns Ok; panics with `what` and the last Err after
/// `timeout`.
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}\nlast seen: {last}");
        }
        thread::sleep(every);
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of header `name` (case-insensitive) in raw header lines.
pub fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// An address nothing listens on: connecting is refused.
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:port; returns (status, headers, body). 5 s timeout.
pub fn http_get(port: u16, path: &str) -> io::Result<(u16, String, String)> {
    http_request(port, "GET", path, "")
}

/// One HTTP/1.0 request to 127.0.0.1:port (Content-Length sent when `body` is non-empty or the
/// method is POST/PUT); returns (status, headers, body). Headers are the raw header lines after
/// the status line. 5 s timeout for connect, write and the whole read.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<(u16, String, String)> {
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ngx-hc-test\r\n"
    );
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    parse_response(&exchange(port, req.as_bytes(), false)?)
}

/// Writes `raw` to 127.0.0.1:port and reads until the server closes; 5 s timeout for connect,
/// write and the whole read. With `keep_on_reset`, a connection reset after part of the answer
/// came ends the read with what came (nginx may close with unread request body bytes, the 413
/// path) instead of failing.
pub fn exchange(port: u16, raw: &[u8], keep_on_reset: bool) -> io::Result<Vec<u8>> {
    let timeout = Duration::from_secs(5);
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(raw)?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response not complete after 5 s",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if keep_on_reset
                    && !resp.is_empty()
                    && e.kind() == io::ErrorKind::ConnectionReset =>
            {
                break
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resp)
}

/// Splits an HTTP answer into (status, header lines after the status line, body).
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, String, String)> {
    let bad = |msg: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{msg}: {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of response headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head.as_str(), ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    Ok((status, headers.to_string(), body))
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
