//! Scriptable HTTP backends: a small threaded HTTP/1.x server whose answers a test switches at runtime.
use super::*;

/// How a `Backend` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reads the request and answers with this status, a short body naming the port
    /// (`backend <port> status <code>`), header `X-Backend: <port>` and `Connection: close`.
    Status(u16),
    /// Reads the request and never answers, until the mode changes (then answers per the new
    /// mode) or the backend is stopped/dropped (then closes).
    Hang,
    /// Reads the request (at most 1 s), then closes cleanly (FIN) without answering.
    Close,
    /// Waits for the request, then closes with the request still unread, so Linux sends RST.
    Reset,
    /// Answers on a kept-alive connection (HTTP/1.1, no `Connection: close`) to this many
    /// requests, then reads the next one and closes without answering: a backend whose
    /// keepalive timeout ran out just as a request arrived. Answers 200, or the status a
    /// path is switched to (`set_path_mode(path, Mode::Status(code))`).
    KeepAlive(usize),
}

struct BackendShared {
    /// The loopback address it listens on: 127.0.0.1 unless made with `on_addr`.
    ip: [u8; 4],
    port: u16,
    mode: Mutex<Mode>,
    path_modes: Mutex<HashMap<String, Mode>>,
    health_path: Mutex<String>,
    /// Arrival time of every request, by path (query string removed).
    arrivals: Mutex<HashMap<String, Vec<Instant>>>,
    proxied: AtomicUsize,
    connections: AtomicUsize,
    listener: Mutex<Option<TcpListener>>,
    /// Bumped by stop()/drop: hanging connections of an older generation close.
    generation: AtomicU64,
    shutdown: AtomicBool,
    changed: Condvar,
    changed_lock: Mutex<()>,
}

/// A small threaded HTTP/1.x server on 127.0.0.1 whose behaviour can be switched at runtime; one
/// request per connection. Counts requests per path and records their arrival times.
pub struct Backend {
    shared: Arc<BackendShared>,
    acceptor: Option<JoinHandle<()>>,
}

fn bind_retry(ip: [u8; 4], port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind((std::net::Ipv4Addr::from(ip), port)) {
            Ok(l) => {
                l.set_nonblocking(true).expect("set_nonblocking");
                return l;
            }
            Err(e) if Instant::now() >= deadline => {
                panic!("backend cannot bind {}:{port}: {e}", dotted(ip))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

impl Backend {
    /// A backend on a fresh `free_port()`, answering `Mode::Status(200)`.
    pub fn new() -> Backend {
        Backend::on_port(free_port())
    }

    /// A backend on `port`, answering `Mode::Status(200)`.
    pub fn on_port(port: u16) -> Backend {
        Backend::on_addr([127, 0, 0, 1], port)
    }

    /// A backend on another loopback address (`127.x.y.z`, all local on Linux) and `port`, so
    /// that peers told apart by address can share ports (`upstream_healthcheck port=`).
    pub fn on_addr(ip: [u8; 4], port: u16) -> Backend {
        let shared = Arc::new(BackendShared {
            ip,
            port,
            mode: Mutex::new(Mode::Status(200)),
            path_modes: Mutex::new(HashMap::new()),
            health_path: Mutex::new("/health".to_string()),
            arrivals: Mutex::new(HashMap::new()),
            proxied: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            listener: Mutex::new(Some(bind_retry(ip, port))),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            changed: Condvar::new(),
            changed_lock: Mutex::new(()),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("backend-{port}"))
            .spawn(move || accept_loop(s))
            .expect("spawn backend thread");
        Backend {
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `127.0.0.1:<port>` (its own address), as used in `server` lines of an upstream block.
    pub fn addr(&self) -> String {
        format!("{}:{}", dotted(self.shared.ip), self.shared.port)
    }

    /// Switches the behaviour for every path without a per-path mode.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.notify();
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode.lock().unwrap().clone()
    }

    /// Overrides the behaviour for one path (e.g. fail `/health` while proxied traffic works).
    pub fn set_path_mode(&self, path: &str, mode: Mode) {
        self.shared
            .path_modes
            .lock()
            .unwrap()
            .insert(path.to_string(), mode);
        self.shared.notify();
    }

    pub fn clear_path_modes(&self) {
        self.shared.path_modes.lock().unwrap().clear();
        self.shared.notify();
    }

    /// The path counted as health probes (default `/health`); all others count as `proxied()`.
    pub fn set_health_path(&self, path: &str) {
        *self.shared.health_path.lock().unwrap() = path.to_string();
    }

    /// Requests seen for `path` (query string ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .arrivals
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |v| v.len())
    }

    /// Arrival time of every request for `path`, in order.
    pub fn arrivals(&self, path: &str) -> Vec<Instant> {
        self.shared
            .arrivals
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests whose path is not the health path.
    pub fn proxied(&self) -> usize {
        self.shared.proxied.load(Ordering::SeqCst)
    }

    /// Accepted TCP connections (including ones that never sent a request).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Forgets all counts and arrival times.
    pub fn reset_counts(&self) {
        self.shared.arrivals.lock().unwrap().clear();
        self.shared.proxied.store(0, Ordering::SeqCst);
        self.shared.connections.store(0, Ordering::SeqCst);
    }

    /// Closes the listening socket (the port then refuses connections) and closes hanging
    /// connections.
    pub fn stop(&self) {
        *self.shared.listener.lock().unwrap() = None;
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.notify();
    }

    /// Reopens the listening socket on the same port.
    pub fn start(&self) {
        let mut l = self.shared.listener.lock().unwrap();
        if l.is_none() {
            *l = Some(bind_retry(self.shared.ip, self.shared.port));
        }
    }

    pub fn is_listening(&self) -> bool {
        self.shared.listener.lock().unwrap().is_some()
    }
}

/// `a.b.c.d`
fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

impl Default for Backend {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.stop();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

impl BackendShared {
    fn notify(&self) {
        let _g = self.changed_lock.lock().unwrap();
        self.changed.notify_all();
    }

    fn mode_for(&self, path: &str) -> Mode {
        if let Some(m) = self.path_modes.lock().unwrap().get(path) {
            return m.clone();
        }
        self.mode.lock().unwrap().clone()
    }

    fn record(&self, path: &str) {
        self.arrivals
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push(Instant::now());
        if path != *self.health_path.lock().unwrap() {
            self.proxied.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn accept_loop(s: Arc<BackendShared>) {
    while !s.shutdown.load(Ordering::SeqCst) {
        let accepted = match s.listener.lock().unwrap().as_ref() {
            Some(l) => l.accept().ok(),
            None => None,
        };
        match accepted {
            Some((stream, _)) => {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = Arc::clone(&s);
                let _ = thread::Builder::new()
                    .name(format!("backend-{}-conn", s.port))
                    .spawn(move || {
                        let _ = handle_conn(&s2, stream);
                    });
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A request head seen on a connection.
struct Head {
    path: String,
    version: String,
    /// Bytes of head plus body (Content-Length) to consume.
    len: usize,
}

/// Waits (peeking, nothing consumed) until the request head has arrived; None when the peer
/// closes first, sends no complete head within `timeout`, or sends more than 16 KiB of head.
fn peek_head(stream: &TcpStream, timeout: Duration) -> io::Result<Option<Head>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.peek(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut parts = head.lines().next().unwrap_or("").split_whitespace();
            let _method = parts.next();
            let path = parts
                .next()
                .unwrap_or("/")
                .split('?')
                .next()
                .unwrap_or("/")
                .to_string();
            let version = parts.next().unwrap_or("HTTP/1.0").to_string();
            let body = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            return Ok(Some(Head {
                path,
                version,
                len: end + 4 + body,
            }));
        }
        if n == buf.len() {
            return Ok(None);
        }
        // Incomplete head: peek returns at once while data is pending, so wait a little.
        thread::sleep(Duration::from_millis(2));
    }
}

/// Consumes `len` bytes (the request) so that closing later sends FIN, not RST.
fn consume(stream: &mut TcpStream, mut len: usize) -> io::Result<()> {
    let mut buf = [0u8; 8192];
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    while len > 0 {
        let n = stream.read(&mut buf[..len.min(8192)])?;
        if n == 0 {
            break;
        }
        len -= n;
    }
    Ok(())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn handle_conn(s: &BackendShared, mut stream: TcpStream) -> io::Result<()> {
    let gen = s.generation.load(Ordering::SeqCst);
    let wait = if s.mode_for("") == Mode::Close {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let Some(head) = peek_head(&stream, wait)? else {
        return Ok(());
    };
    s.record(&head.path);
    let mut mode = s.mode_for(&head.path);
    if mode == Mode::Reset {
        // Close with the request still unread: Linux answers with RST.
        drop(stream);
        return Ok(());
    }
    if let Mode::KeepAlive(answers) = mode {
        return serve_kept(s, stream, head, answers);
    }
    consume(&mut stream, head.len)?;
    while mode == Mode::Hang {
        if s.shutdown.load(Ordering::SeqCst) || s.generation.load(Ordering::SeqCst) != gen {
            return Ok(());
        }
        let g = s.changed_lock.lock().unwrap();
        let _ = s
            .changed
            .wait_timeout(g, Duration::from_millis(50))
            .unwrap();
        mode = s.mode_for(&head.path);
    }
    match mode {
        Mode::Status(code) => {
            let body = format!("backend {} status {}\n", s.port, code);
            let version = if head.version.starts_with("HTTP/1.") {
                head.version.as_str()
            } else {
                "HTTP/1.0"
            };
            let resp = format!(
                "{version} {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {}\r\nConnection: close\r\n\r\n{body}",
                reason(code),
                body.len(),
                s.port
            );
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(resp.as_bytes())?;
            stream.flush()?;
        }
        Mode::Reset => {
            // Switched from Hang to Reset after the request was consumed: abort abruptly.
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        Mode::Close | Mode::Hang | Mode::KeepAlive(_) => {}
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Let the peer close first (bounded), so our close never turns into an RST.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// `Mode::KeepAlive(answers)` on one connection whose first request is `head`.
fn serve_kept(
    s: &BackendShared,
    mut stream: TcpStream,
    head: Head,
    answers: usize,
) -> io::Result<()> {
    let mut head = Some(head);
    for _ in 0..answers {
        let Some(h) = head.take() else { break };
        consume(&mut stream, h.len)?;
        // A path switched to a status answers it, still on the kept connection.
        let code = match s.mode_for(&h.path) {
            Mode::Status(code) => code,
            _ => 200,
        };
        let body = format!("backend {} kept\n", s.port);
        let resp = format!(
            "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nX-Backend: {}\r\n\r\n{body}",
            reason(code),
            body.len(),
            s.port
        );
        stream.write_all(resp.as_bytes())?;
        head = peek_head(&stream, Duration::from_secs(10))?;
        if let Some(h) = &head {
            s.record(&h.path);
        }
    }
    if let Some(h) = head {
        consume(&mut stream, h.len)?;
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}
