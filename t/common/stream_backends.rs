//! Backends for the stream tests: `LineBackend`, a Redis-like TCP server (answers `PING` with
//! `+PONG`, or with `-ERR` when told to fail; counts the other lines as client traffic), and
//! `DatagramBackend`, a DNS-like UDP server (answers a query with its first two bytes, the
//! transaction id, then a fixed tail) that can be told to stop answering.
use super::*;
use std::net::UdpSocket;

struct LineShared {
    port: u16,
    listener: Mutex<Option<TcpListener>>,
    /// Answer `PING` with `-ERR` instead of `+PONG`.
    failing: AtomicBool,
    connections: AtomicUsize,
    /// Lines other than `PING` (client traffic through nginx).
    client_lines: AtomicUsize,
    pings: AtomicUsize,
    /// Close each connection after answering a `PING` (a server with a short idle timeout).
    close_after_ping: AtomicBool,
    shutdown: AtomicBool,
}

/// A Redis-like server on 127.0.0.1: one thread per connection, line by line.
pub struct LineBackend {
    shared: Arc<LineShared>,
    acceptor: Option<JoinHandle<()>>,
}

fn bind_tcp(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                l.set_nonblocking(true).expect("set_nonblocking");
                return l;
            }
            Err(e) if Instant::now() >= deadline => panic!("cannot bind 127.0.0.1:{port}: {e}"),
            Err(_) => thread::sleep(POLL),
        }
    }
}

impl LineBackend {
    pub fn new() -> LineBackend {
        LineBackend::on_port(free_port())
    }

    /// A Redis-like server on `port`.
    pub fn on_port(port: u16) -> LineBackend {
        let shared = Arc::new(LineShared {
            port,
            listener: Mutex::new(Some(bind_tcp(port))),
            failing: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            client_lines: AtomicUsize::new(0),
            pings: AtomicUsize::new(0),
            close_after_ping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || line_accept_loop(s));
        LineBackend {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    /// Answer `PING` with `-ERR` (true) or `+PONG` (false); connections are still accepted.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Lines other than `PING` received: client traffic proxied by nginx.
    pub fn client_lines(&self) -> usize {
        self.shared.client_lines.load(Ordering::SeqCst)
    }

    /// `PING` lines received (probes).
    pub fn pings(&self) -> usize {
        self.shared.pings.load(Ordering::SeqCst)
    }

    /// Close each connection right after answering a `PING` (true), or keep it open.
    pub fn set_close_after_ping(&self, close: bool) {
        self.shared.close_after_ping.store(close, Ordering::SeqCst);
    }

    /// Accepted connections, probes and clients.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Closes the listening socket: connects are refused.
    pub fn stop(&self) {
        self.shared.listener.lock().unwrap().take();
    }

    /// Listens again on the same port.
    pub fn start(&self) {
        let mut l = self.shared.listener.lock().unwrap();
        if l.is_none() {
            *l = Some(bind_tcp(self.shared.port));
        }
    }
}

impl Default for LineBackend {
    fn default() -> Self {
        LineBackend::new()
    }
}

impl Drop for LineBackend {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.stop();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn line_accept_loop(s: Arc<LineShared>) {
    while !s.shutdown.load(Ordering::SeqCst) {
        let accepted = s.listener.lock().unwrap().as_ref().map(|l| l.accept());
        match accepted {
            Some(Ok((stream, _))) => {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = Arc::clone(&s);
                thread::spawn(move || serve_lines(s, stream));
            }
            _ => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_lines(s: Arc<LineShared>, mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 1024];
    while !s.shutdown.load(Ordering::SeqCst) {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let ping = line.starts_with(b"PING");
            let answer: &[u8] = if ping {
                s.pings.fetch_add(1, Ordering::SeqCst);
                if s.failing.load(Ordering::SeqCst) {
                    b"-ERR not ready\r\n"
                } else {
                    b"+PONG\r\n"
                }
            } else {
                s.client_lines.fetch_add(1, Ordering::SeqCst);
                b"+OK\r\n"
            };
            if stream.write_all(answer).is_err() {
                return;
            }
            if ping && s.close_after_ping.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

struct DatagramShared {
    socket: UdpSocket,
    answering: AtomicBool,
    queries: AtomicUsize,
    shutdown: AtomicBool,
}

/// A DNS-like UDP server on 127.0.0.1.
pub struct DatagramBackend {
    shared: Arc<DatagramShared>,
    thread: Option<JoinHandle<()>>,
}

/// The answer `DatagramBackend` gives to a query: its transaction id, then this.
pub const DATAGRAM_TAIL: &[u8] = b"\x81\x80";

impl DatagramBackend {
    pub fn new() -> DatagramBackend {
        DatagramBackend::on_port(free_port())
    }

    /// A DNS-like server on UDP `port`.
    pub fn on_port(port: u16) -> DatagramBackend {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("udp timeout");
        let shared = Arc::new(DatagramShared {
            socket,
            answering: AtomicBool::new(true),
            queries: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.shutdown.load(Ordering::SeqCst) {
                let Ok((n, from)) = s.socket.recv_from(&mut buf) else {
                    continue;
                };
                s.queries.fetch_add(1, Ordering::SeqCst);
                if s.answering.load(Ordering::SeqCst) && n >= 2 {
                    let answer = [&buf[..2], DATAGRAM_TAIL].concat();
                    let _ = s.socket.send_to(&answer, from);
                }
            }
        });
        DatagramBackend {
            shared,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        self.shared
            .socket
            .local_addr()
            .expect("udp addr")
            .to_string()
    }

    /// Answer queries (true) or read them silently (false).
    pub fn set_answering(&self, answering: bool) {
        self.shared.answering.store(answering, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

impl Default for DatagramBackend {
    fn default() -> Self {
        DatagramBackend::new()
    }
}

impl Drop for DatagramBackend {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
