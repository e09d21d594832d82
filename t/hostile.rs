//! Hostile conditions: backends that misbehave at the byte level (each a small std TCP server
//! scripted here), a storm of reloads under load, workers killed with SIGKILL, and a shared
//! zone too small for the peers. Verdicts are read from the JSON status
//! (`health.status`, `health.last_error`, `health.last_status`) and, per failure reason, from
//! the Prometheus status. After all the misbehaving backends have been probed many times by one
//! worker, its open file descriptors and memory must be back where they were.
//!
//! The tests here are timing-sensitive on a loaded 2-core machine, so they run one at a time
//! (`SERIAL`) with generous but bounded waits.
mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One test at a time: each starts its own nginx and depends on timing.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Scripted raw TCP servers

/// What a raw server does with each connection it accepts.
#[derive(Clone, Debug)]
enum Script {
    /// Reads the request and never answers, until the client goes away.
    Silent,
    /// Reads the request, then writes `data` one byte every `every`.
    Drip { data: Vec<u8>, every: Duration },
    /// Reads the request, waits `delay`, writes each piece (TCP_NODELAY, so each is its own
    /// segment) with `pause` between them, then closes (FIN) or keeps the connection open.
    Send {
        delay: Duration,
        pieces: Vec<Vec<u8>>,
        pause: Duration,
        then_hang: bool,
    },
    /// Reads the request, then writes `head` and `filler` bytes up to `total` with a small send
    /// buffer, counting how far it got before the client went away.
    Flood {
        head: Vec<u8>,
        total: usize,
        filler: u8,
    },
    /// Resets the connection (SO_LINGER 0, close) as soon as it is accepted.
    ResetAtOnce,
    /// Reads the request, then resets the connection (SO_LINGER 0, close).
    ResetAfterRequest,
}

impl Script {
    fn send(data: &[u8]) -> Script {
        Script::Send {
            delay: Duration::ZERO,
            pieces: vec![data.to_vec()],
            pause: Duration::ZERO,
            then_hang: false,
        }
    }
}

#[derive(Default)]
struct RawStats {
    /// Accept time of every connection.
    accepted: Mutex<Vec<Instant>>,
    /// Connections on which everything scripted was written.
    wrote_all: AtomicUsize,
    /// Connections on which a write failed because the client went away first.
    cut_short: AtomicUsize,
    /// The most bytes written on a connection that was cut short.
    max_written_cut: AtomicUsize,
}

/// A TCP server on 127.0.0.1 that plays a `Script` on every connection, one thread each.
struct Raw {
    port: u16,
    stats: Arc<RawStats>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Raw {
    fn new(script: Script) -> Raw {
        Raw::on_port(free_port(), script)
    }

    fn on_port(port: u16, script: Script) -> Raw {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => panic!("bind 127.0.0.1:{port}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let stats = Arc::new(RawStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&stats), Arc::clone(&stop));
        let acceptor = thread::Builder::new()
            .name(format!("raw-{port}"))
            .spawn(move || {
                while !sp.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            st.accepted.lock().unwrap().push(Instant::now());
                            let (st, sp, script) =
                                (Arc::clone(&st), Arc::clone(&sp), script.clone());
                            let _ = thread::Builder::new()
                                .name(format!("raw-{port}-conn"))
                                .spawn(move || play(stream, &script, &st, &sp));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
            .expect("spawn raw server");
        Raw {
            port,
            stats,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.stats.accepted.lock().unwrap().len()
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.stats.accepted.lock().unwrap().clone()
    }
}

impl Drop for Raw {
    /// Closes the listening socket (the port then refuses connections); connection threads
    /// see `stop` and end within a fraction of a second.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn setsockopt_int(stream: &TcpStream, level: i32, name: i32, value: libc::c_int) {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {level}/{name}");
}

/// Closes with SO_LINGER {on, 0}: the kernel sends RST instead of FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a linger struct of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(stream);
}

/// Reads until the end of the request head (`\r\n\r\n`), EOF, an error or 2 s.
fn read_request(stream: &mut TcpStream) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Sleeps `d` in small steps; false when the server is stopping.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    !stop.load(Ordering::SeqCst)
}

/// Waits (bounded) until the client closes, reading and discarding what it sends.
fn wait_client_close(stream: &mut TcpStream, limit: Duration, stop: &AtomicBool) {
    let end = Instant::now() + limit;
    let mut sink = [0u8; 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// FIN, then let the client close first (bounded), so our close never becomes an RST.
fn close_gracefully(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.shutdown(Shutdown::Write);
    wait_client_close(&mut stream, Duration::from_secs(1), stop);
}

fn play(mut stream: TcpStream, script: &Script, stats: &RawStats, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    match script {
        Script::ResetAtOnce => return reset(stream),
        Script::ResetAfterRequest => {
            read_request(&mut stream);
            return reset(stream);
        }
        _ => {}
    }
    if !read_request(&mut stream) {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
    match script {
        Script::Silent => wait_client_close(&mut stream, Duration::from_secs(10), stop),
        Script::Drip { data, every } => {
            for (i, b) in data.iter().enumerate() {
                if i > 0 && !nap(*every, stop) {
                    return;
                }
                if stream.write_all(std::slice::from_ref(b)).is_err() {
                    stats.cut_short.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            stats.wrote_all.fetch_add(1, Ordering::SeqCst);
            close_gracefully(stream, stop);
        }
        Script::Send {
            delay,
            pieces,
            pause,
            then_hang,
        } => {
            if !nap(*delay, stop) {
                return;
            }
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 && !nap(*pause, stop) {
                    return;
                }
                if stream.write_all(piece).is_err() {
                    stats.cut_short.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            stats.wrote_all.fetch_add(1, Ordering::SeqCst);
            if *then_hang {
                wait_client_close(&mut stream, Duration::from_secs(10), stop);
            } else {
                close_gracefully(stream, stop);
            }
        }
        Script::Flood {
            head,
            total,
            filler,
        } => {
            setsockopt_int(&stream, libc::SOL_SOCKET, libc::SO_SNDBUF, 4096);
            let mut data = head.clone();
            data.resize(*total, *filler);
            let mut written = 0;
            while written < data.len() {
                let end = (written + 16 * 1024).min(data.len());
                match stream.write(&data[written..end]) {
                    Ok(n) if n > 0 => written += n,
                    _ => {
                        stats.cut_short.fetch_add(1, Ordering::SeqCst);
                        stats.max_written_cut.fetch_max(written, Ordering::SeqCst);
                        return;
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            stats.wrote_all.fetch_add(1, Ordering::SeqCst);
            close_gracefully(stream, stop);
        }
        Script::ResetAtOnce | Script::ResetAfterRequest => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// Status pages

/// The JSON status (`location = /s { upstream_healthcheck_status json; }`).
fn json_status(port: u16) -> Value {
    let body = status_page(port, "/s");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("invalid JSON status ({e}): {body}"))
}

/// The `health` object of the first primary peer of `upstream`.
fn health<'a>(status: &'a Value, upstream: &str) -> &'a Value {
    status["msg"]["upstreams"]
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == upstream))
        .map(|u| &u["primary"][0]["health"])
        .unwrap_or_else(|| panic!("no upstream {upstream} in {status}"))
}

/// `nginx_upstream_healthcheck_failures_total` by (upstream, reason), from the Prometheus
/// status (`location = /p`).
fn failures_by_reason(port: u16) -> HashMap<(String, String), u64> {
    let body = status_page(port, "/p");
    let mut out = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("nginx_upstream_healthcheck_failures_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("sample value");
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_string()
        };
        out.insert(
            (label("upstream"), label("reason")),
            value.parse().expect("counter"),
        );
    }
    out
}

fn checks(h: &Value) -> u64 {
    h["checks"].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

fn fd_list(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Lines of /proc/<pid>/maps that are shared anonymous mappings (nginx's shared zones).
fn shared_mappings(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().filter(|l| l.contains("/dev/zero")).count())
        .unwrap_or(0)
}

fn kill9(pid: u32) {
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -KILL {pid}");
}

// ---------------------------------------------------------------------------------------------
// Misbehaving backends

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 500;
const MIB: usize = 1 << 20;

/// A misbehaving backend and the verdict it must get.
struct Case {
    name: &'static str,
    server: Raw,
    /// `Some(reason)`: down, with this `last_error`; `None`: up, last status 200.
    error: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let case = |name, script, error| Case {
        name,
        server: Raw::new(script),
        error,
    };
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    vec![
        case("silent", Script::Silent, Some("timeout")),
        case(
            "drip",
            Script::Drip {
                data: ok.to_vec(),
                every: Duration::from_secs(1),
            },
            Some("timeout"),
        ),
        case(
            "garbage",
            Script::send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe garbage\r\n\r\n"),
            Some("bad_response"),
        ),
        case(
            "split",
            Script::Send {
                delay: Duration::ZERO,
                pieces: ok.chunks(3).map(<[u8]>::to_vec).collect(),
                pause: Duration::from_millis(15),
                then_hang: false,
            },
            None,
        ),
        case(
            "big_header",
            Script::Flood {
                head: b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec(),
                total: MIB,
                filler: b'a',
            },
            None,
        ),
        case(
            "long_line",
            Script::Flood {
                head: b"HTTP/1.1 200 OK".to_vec(),
                total: MIB,
                filler: b'a',
            },
            Some("bad_response"),
        ),
        case(
            "endless_interim",
            Script::Flood {
                head: b"HTTP/1.1 103 Early Hints\r\nLink: ".to_vec(),
                total: MIB,
                filler: b'l',
            },
            Some("bad_response"),
        ),
        case("reset_at_once", Script::ResetAtOnce, Some("reset")),
        case(
            "reset_after_request",
            Script::ResetAfterRequest,
            Some("reset"),
        ),
        case(
            "close_in_status_line",
            Script::send(b"HTTP/1.1 20"),
            Some("closed"),
        ),
        case("close_silently", Script::send(b""), Some("closed")),
        case(
            "http09",
            Script::send(b"Hello, this is a body without a status line\n"),
            Some("bad_response"),
        ),
        case(
            "http2_status",
            Script::send(b"HTTP/2 200\r\n\r\n"),
            Some("bad_response"),
        ),
        case(
            "continue",
            Script::send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
            None,
        ),
        case(
            "early_hints",
            Script::Send {
                delay: Duration::ZERO,
                pieces: vec![
                    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\
                      Link: </app.js>; rel=preload\r\n\r\n"
                        .to_vec(),
                    ok.to_vec(),
                ],
                pause: Duration::from_millis(30),
                then_hang: false,
            },
            None,
        ),
        case(
            "status_then_hang",
            Script::Send {
                delay: Duration::ZERO,
                pieces: vec![b"HTTP/1.1 200 OK\r\n".to_vec()],
                pause: Duration::ZERO,
                then_hang: true,
            },
            None,
        ),
    ]
}

fn hostile_conf(cases: &[Case], port: u16) -> String {
    let mut body = String::new();
    for c in cases {
        body.push_str(&format!(
            "upstream {} {{\n    server {};\n    upstream_healthcheck interval={INTERVAL_MS}ms \
             timeout={TIMEOUT_MS}ms fall=2 rise=2 uri=/health;\n}}\n",
            c.name,
            c.server.addr()
        ));
    }
    body.push_str(&format!(
        "server {{\n    listen 127.0.0.1:{port};\n\
         \x20   location = /s {{ upstream_healthcheck_status json; }}\n\
         \x20   location = /p {{ upstream_healthcheck_status prometheus; }}\n\
         \x20   location = /admin {{ upstream_healthcheck_admin; }}\n}}\n"
    ));
    body
}

/// Every case has its verdict: (all good, what is still wrong).
fn verdicts_reached(port: u16, cases: &[Case], min_checks: u64) -> (bool, Vec<String>) {
    let status = json_status(port);
    let mut wrong = Vec::new();
    for c in cases {
        let h = health(&status, c.name);
        let good = match c.error {
            Some(e) => h["status"] == "down" && h["last_error"] == e,
            None => h["status"] == "up" && h["last_status"] == 200 && checks(h) >= min_checks,
        };
        if !good || checks(h) < min_checks {
            wrong.push(format!("{}: {h}", c.name));
        }
    }
    (wrong.is_empty(), wrong)
}

/// Checks every case precisely: state, last error, last status, failures only of the
/// expected reason.
fn assert_verdicts(port: u16, cases: &[Case], what: &str) {
    let status = json_status(port);
    let failures = failures_by_reason(port);
    for c in cases {
        let h = health(&status, c.name);
        let by_reason: Vec<(String, u64)> = failures
            .iter()
            .filter(|((u, _), n)| u == c.name && **n > 0)
            .map(|((_, r), n)| (r.clone(), *n))
            .collect();
        match c.error {
            Some(e) => {
                assert_eq!(h["status"], "down", "{what}: {}: {h}", c.name);
                assert_eq!(h["last_error"], e, "{what}: {}: {h}", c.name);
                assert!(h["last_status"].is_null(), "{what}: {}: {h}", c.name);
                assert!(
                    by_reason.len() == 1 && by_reason[0].0 == e,
                    "{what}: {} must fail with {e} only, failures by reason: {by_reason:?}; {h}",
                    c.name
                );
            }
            None => {
                assert_eq!(h["status"], "up", "{what}: {}: {h}", c.name);
                assert!(h["last_error"].is_null(), "{what}: {}: {h}", c.name);
                assert_eq!(h["last_status"], 200, "{what}: {}: {h}", c.name);
                assert_eq!(h["failures"], 0, "{what}: {}: {h}", c.name);
                assert!(by_reason.is_empty(), "{what}: {}: {by_reason:?}", c.name);
            }
        }
    }
}

/// Excludes (`a=set`) or re-includes (`a=del`) every case's upstream from checking.
fn set_exclusions(port: u16, cases: &[Case], action: &str) {
    for c in cases {
        let path = format!("/admin?t=ex&u={}&a={action}", c.name);
        let (status, _, body) = http_request(port, "POST", &path, "").expect("admin request");
        assert_eq!(status, 200, "POST {path}: {body}");
    }
}

/// The worker's fd count once no probe is in flight: every upstream excluded, in-flight
/// probes given their timeout to end, and the count stable over a few readings.
fn quiet_fd_count(port: u16, worker: u32, cases: &[Case]) -> (usize, Vec<String>) {
    set_exclusions(port, cases, "set");
    thread::sleep(Duration::from_millis(TIMEOUT_MS + 700));
    let mut last = fd_count(worker);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        thread::sleep(Duration::from_millis(150));
        let now = fd_count(worker);
        if now == last || Instant::now() >= deadline {
            return (now, fd_list(worker));
        }
        last = now;
    }
}

#[test]
fn misbehaving_backends_get_precise_verdicts_and_leak_nothing() {
    let _serial = serial();
    let cases = cases();
    let port = free_port();
    let nginx = Nginx::start(&hostile_conf(&cases, port));
    let worker = nginx.worker_pids()[0];

    // Warm-up: every case reaches its verdict (down ones after two failures of their kind).
    let mut wrong = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (done, w) = verdicts_reached(port, &cases, 4);
        if done {
            break;
        }
        wrong = w;
        assert!(
            Instant::now() < deadline,
            "verdicts not reached within 20 s:\n{}\n{}",
            wrong.join("\n"),
            nginx.error_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(wrong);
    assert_verdicts(port, &cases, "after warm-up");

    // The probe stopped reading early: a 1 MiB answer is not read to its end (the client
    // closed, so the server's write failed, before everything was sent), and the verdict came
    // fast, well within the timeout.
    let status = json_status(port);
    for name in ["big_header", "long_line", "endless_interim"] {
        let c = cases.iter().find(|c| c.name == name).unwrap();
        let st = &c.server.stats;
        let (cut, all) = (
            st.cut_short.load(Ordering::SeqCst),
            st.wrote_all.load(Ordering::SeqCst),
        );
        assert!(
            cut >= 2 && all == 0,
            "{name}: the client read the whole 1 MiB answer ({all} times) instead of closing \
             early ({cut} times)"
        );
        let max = st.max_written_cut.load(Ordering::SeqCst);
        assert!(
            max < MIB,
            "{name}: {max} bytes written before the client closed"
        );
        let ms = health(&status, name)["last_duration_ms"]
            .as_f64()
            .unwrap_or(f64::MAX);
        assert!(
            ms < 400.0,
            "{name}: the last probe took {ms} ms (timeout {TIMEOUT_MS} ms)"
        );
    }

    // Baseline of the worker's descriptors and memory, with no probe in flight.
    let (fds_before, fd_list_before) = quiet_fd_count(port, worker, &cases);
    let rss_before = rss_kib(worker);
    let probes_before: usize = cases.iter().map(|c| c.server.connections()).sum();
    set_exclusions(port, &cases, "del");

    // Many probe cycles; the verdicts hold all along.
    let run = Duration::from_secs(12);
    let t0 = Instant::now();
    while t0.elapsed() < run {
        thread::sleep(Duration::from_secs(2));
        let (_, wrong) = verdicts_reached(port, &cases, 0);
        assert!(wrong.is_empty(), "a verdict changed:\n{}", wrong.join("\n"));
    }
    assert_verdicts(port, &cases, "after the long run");
    let probes = cases.iter().map(|c| c.server.connections()).sum::<usize>() - probes_before;
    assert!(probes >= 300, "only {probes} probes in {run:?}");

    let (fds_after, fd_list_after) = quiet_fd_count(port, worker, &cases);
    let rss_after = rss_kib(worker);
    eprintln!(
        "worker {worker}: {probes} probes; fds {fds_before} -> {fds_after}; \
         VmRSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(
        fds_after, fds_before,
        "the worker's open descriptors changed after {probes} probes:\nbefore: \
         {fd_list_before:#?}\nafter: {fd_list_after:#?}"
    );
    assert!(
        rss_after <= rss_before + 1024,
        "the worker's VmRSS grew from {rss_before} to {rss_after} KiB over {probes} probes"
    );
    assert_eq!(
        nginx.worker_pids(),
        vec![worker],
        "the worker was replaced (crashed?)"
    );
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Reload storm

/// Sends requests through the proxy in a loop until stopped, 5 ms apart: Ok for a 200, the
/// failure otherwise.
fn client(port: u16) -> Looper<Result<(), String>> {
    Looper::start(move |i| {
        let answer = match http_get(port, &format!("/app?n={i}")) {
            Ok((200, _, _)) => Ok(()),
            Ok((code, h, b)) => Err(format!("{code}: {h} {b}")),
            Err(e) => Err(format!("error: {e}")),
        };
        thread::sleep(Duration::from_millis(5));
        answer
    })
}

#[test]
fn fifty_reloads_in_a_minute_under_load() {
    let _serial = serial();
    let (a, b) = (Backend::new(), Backend::new());
    let dead = dead_addr();
    // A peer whose probes hang until they time out: reloads happen with probes in flight.
    let hang = Backend::new();
    hang.set_path_mode("/health", Mode::Hang);
    let port = free_port();
    let body = format!(
        "upstream app {{\n    server {};\n    server {};\n    server {dead};\n    server {};\n    \
         upstream_healthcheck interval=200ms timeout=500ms fall=1 rise=2 uri=/health;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n\
         \x20   location = /status {{ upstream_healthcheck_status; }}\n\
         \x20   location = /s {{ upstream_healthcheck_status json; }}\n}}\n",
        a.addr(),
        b.addr(),
        hang.addr()
    );
    let mut nginx = Nginx::start(&body);
    wait_until(
        Duration::from_secs(5),
        "the dead and hanging peers DOWN",
        || {
            let page = status_page(port, "/status");
            peer_state(&page, "app", &dead) == Some("DOWN")
                && peer_state(&page, "app", &hang.addr()) == Some("DOWN")
        },
    );
    let master = nginx.master_pid();
    let (maps_before, fds_before) = (shared_mappings(master), fd_count(master));

    let client = client(port);
    wait_until(Duration::from_secs(5), "the client going", || {
        client.count_where(Result::is_ok) > 10
    });
    let storm = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut last_checks = 0;
    for i in 1..=50 {
        let took = nginx.reload();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(5),
            "reload {i}: old workers still there after {took:?}: {:?}\n{}",
            nginx.child_processes(),
            nginx.error_log()
        );
        let page = status_page(port, "/status");
        assert_eq!(
            peer_state(&page, "app", &dead),
            Some("DOWN"),
            "reload {i}: {page}"
        );
        assert_eq!(
            peer_state(&page, "app", &hang.addr()),
            Some("DOWN"),
            "reload {i}: {page}"
        );
        assert_eq!(
            peer_state(&page, "app", &a.addr()),
            Some("up"),
            "reload {i}: {page}"
        );
        assert_eq!(
            peer_state(&page, "app", &b.addr()),
            Some("up"),
            "reload {i}: {page}"
        );
        // The counters go on across reloads.
        let json: Value = serde_json::from_str(&status_page(port, "/s")).expect("json");
        let dead_checks = json["msg"]["upstreams"][0]["primary"][2]["health"]["checks"]
            .as_u64()
            .expect("checks");
        assert!(
            dead_checks >= last_checks,
            "reload {i}: checks of the dead peer went back from {last_checks} to {dead_checks}"
        );
        last_checks = dead_checks;
    }
    let storm_took = storm.elapsed();
    let results = client.finish();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    eprintln!(
        "50 reloads in {storm_took:?} (slowest {slowest:?}), {ok} proxied requests, \
         {} failed",
        failures.len()
    );
    assert!(
        storm_took < Duration::from_secs(60),
        "50 reloads took {storm_took:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} proxied requests failed during the reloads:\n{}",
        failures.len(),
        ok + failures.len(),
        failures.join("\n")
    );
    assert!(ok >= 100, "only {ok} proxied requests during the storm");

    // The master holds no more shared zones or descriptors than before the storm.
    let (maps_after, fds_after) = (shared_mappings(master), fd_count(master));
    assert_eq!(
        maps_after, maps_before,
        "the master's shared mappings went from {maps_before} to {maps_after} over 50 reloads"
    );
    assert_eq!(
        fds_after, fds_before,
        "the master's open descriptors went from {fds_before} to {fds_after} over 50 reloads"
    );

    // nginx exits promptly on QUIT, and the log has no alert or crit line.
    let t = Instant::now();
    let log = nginx.stop();
    let stop_took = t.elapsed();
    assert!(
        stop_took < Duration::from_secs(3),
        "nginx took {stop_took:?} to exit on QUIT"
    );
    assert_eq!(log.matches("(SIGHUP) received").count(), 50, "{log}");
}

// ---------------------------------------------------------------------------------------------
// Workers killed with SIGKILL

/// Largest gap between consecutive arrivals within `[from, to]`, and the arrivals there.
fn max_gap(arrivals: &[Instant], from: Instant, to: Instant) -> (Duration, usize) {
    let inside: Vec<Instant> = arrivals
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let gap = inside
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX);
    (gap, inside.len())
}

#[test]
fn killed_workers_are_replaced_and_no_peer_is_stuck() {
    let _serial = serial();
    let interval = Duration::from_millis(300);
    let ok = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    let fast: Vec<Raw> = (0..3).map(|_| Raw::new(Script::send(ok))).collect();
    // The slow peer answers after 200 ms: its probe is in flight two thirds of the time, so a
    // worker can be caught (and killed) in the middle of one.
    let slow = Raw::new(Script::Send {
        delay: Duration::from_millis(200),
        pieces: vec![ok.to_vec()],
        pause: Duration::ZERO,
        then_hang: false,
    });
    let later_port = free_port();
    let later = format!("127.0.0.1:{later_port}");
    let port = free_port();
    let mut servers = String::new();
    for r in fast.iter().chain([&slow]) {
        servers.push_str(&format!("    server {};\n", r.addr()));
    }
    let body = format!(
        "upstream u {{\n{servers}    server {later};\n    \
         upstream_healthcheck interval=300ms timeout=300ms fall=2 rise=2 uri=/health;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n\
         \x20   location = /status {{ upstream_healthcheck_status; }}\n}}\n"
    );
    let nginx = Nginx::start_with("worker_processes 2;", &body);
    let originals = nginx.worker_pids();
    assert_eq!(originals.len(), 2);
    wait_until(Duration::from_secs(5), "probes of every peer", || {
        fast.iter().chain([&slow]).all(|r| r.connections() >= 3)
    });
    wait_until(
        Duration::from_secs(5),
        "the peer with no server DOWN",
        || peer_state(&status_page(port, "/status"), "u", &later) == Some("DOWN"),
    );

    // Kill the original workers one after the other: first whichever is caught with a probe
    // of the slow peer in flight, then the other (mid-probe too if it can be caught at it
    // within 3 s); wait for each one's replacement.
    let mut kills = Vec::new();
    let mut left = originals.clone();
    while !left.is_empty() {
        let patience = if kills.is_empty() { 10 } else { 3 };
        let deadline = Instant::now() + Duration::from_secs(patience);
        let mut caught = None;
        while caught.is_none() && Instant::now() < deadline {
            caught = worker_connected_to(&left, slow.port);
            if caught.is_none() {
                thread::sleep(Duration::from_millis(2));
            }
        }
        let victim = caught.unwrap_or(left[0]);
        let at = Instant::now();
        kill9(victim);
        kills.push((victim, at, caught.is_some()));
        left.retain(|&p| p != victim);
        wait_until(Duration::from_secs(5), "a replacement worker", || {
            let now = nginx.worker_pids();
            now.len() == 2 && !now.contains(&victim)
        });
        // Let the probing settle under the new worker set before the next kill.
        thread::sleep(interval * 4);
    }
    eprintln!("kills (pid, time, caught mid-probe): {kills:?}");
    assert!(
        kills.iter().any(|k| k.2),
        "no worker was caught with a probe in flight: {kills:?}"
    );
    let replacements = nginx.worker_pids();
    assert!(replacements.iter().all(|p| !originals.contains(p)));
    let first_kill = kills[0].1;
    let last_kill = kills[1].1;
    let end = last_kill + Duration::from_secs(3);
    thread::sleep(end.saturating_duration_since(Instant::now()) + interval);

    // Probes never paused for longer than the lease of a probe lost with its worker (two
    // intervals here, timeout = interval) plus slack, and kept their rate.
    let slack = Duration::from_millis(400);
    let from = first_kill - Duration::from_secs(1);
    for r in fast.iter().chain([&slow]) {
        let arrivals = r.arrivals();
        let (gap, n) = max_gap(&arrivals, from, end);
        eprintln!(
            "{}: {n} probes around the kills, largest gap {gap:?}",
            r.addr()
        );
        assert!(
            gap <= interval * 2 + slack,
            "{}: a gap of {gap:?} between probes around the kills {kills:?}",
            r.addr()
        );
        let expected = (end - from).as_secs_f64() / interval.as_secs_f64();
        let rate = n as f64 / expected;
        assert!(
            (0.7..=1.3).contains(&rate),
            "{}: {n} probes where {expected:.1} were expected ({rate:.2} per interval)",
            r.addr()
        );
    }

    // No peer is stuck in its last state under the new workers: the dead one comes up, a
    // live one that dies goes down.
    let revived = Raw::on_port(later_port, Script::send(ok));
    wait_until(Duration::from_secs(5), "the revived peer up", || {
        peer_state(&status_page(port, "/status"), "u", &later) == Some("up")
    });
    assert!(revived.connections() >= 2);
    let victim_addr = fast[1].addr();
    drop(fast.into_iter().nth(1));
    wait_until(Duration::from_secs(5), "a killed backend DOWN", || {
        peer_state(&status_page(port, "/status"), "u", &victim_addr) == Some("DOWN")
    });
    let page = status_page(port, "/status");
    assert_eq!(peer_state(&page, "u", &slow.addr()), Some("up"), "{page}");

    let killed: Vec<String> = kills.iter().map(|k| k.0.to_string()).collect();
    let log = nginx.stop_allowing(|l| {
        (l.contains("exited on signal 9") || l.contains("was locked by"))
            && killed.iter().any(|k| l.contains(k.as_str()))
    });
    for k in &killed {
        assert!(log.contains(&format!("{k} exited on signal 9")), "{log}");
    }
}

// ---------------------------------------------------------------------------------------------
// A shared zone too small

/// An upstream of `n` peers, all the same server (listed `n` times), checked.
fn crowd(name: &str, server: &str, n: usize) -> String {
    let mut s = format!("upstream {name} {{\n");
    for _ in 0..n {
        s.push_str(&format!("    server {server};\n"));
    }
    s.push_str("    upstream_healthcheck interval=500ms timeout=400ms uri=/health;\n}\n");
    s
}

#[test]
fn zone_too_small_fails_whole_and_never_checks_part_of_the_peers() {
    let _serial = serial();
    let ok = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    let crowd_server = Raw::new(Script::send(ok));
    let n = 300;
    let port = free_port();
    let front = format!(
        "server {{\n    listen 127.0.0.1:{port};\n\
         \x20   location = /s {{ upstream_healthcheck_status json; }}\n}}\n"
    );
    let small = format!(
        "upstream_healthcheck_zone 32k;\n{}{front}",
        crowd("crowd", &crowd_server.addr(), n)
    );

    // nginx -t: one clear [emerg] naming the size needed.
    let check = nginx_test_conf("", &small);
    assert!(!check.ok, "{}", check.output);
    let emerg = check.emerg_lines();
    assert_eq!(emerg.len(), 1, "{}", check.output);
    let want =
        format!("\"upstream_healthcheck_zone\" size 32k is too small for {n} peers, at least ");
    let needed_k: usize = emerg[0]
        .split_once(&want)
        .and_then(|(_, rest)| rest.split_once("k is needed"))
        .and_then(|(k, _)| k.parse().ok())
        .unwrap_or_else(|| panic!("no size needed in: {}", check.output));
    assert!(needed_k > 32, "{}", check.output);

    // Starting it for real fails the same way, and no peer is ever probed.
    let prefix = TempPrefix::new();
    prepare_prefix(prefix.path());
    fs::write(
        prefix.path().join("nginx.conf"),
        render_conf(prefix.path(), "", &small),
    )
    .unwrap();
    let mut child = Command::new(nginx_bin())
        .args(foreground_args(prefix.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait nginx") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nginx started with a zone too small for its peers");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr.push_str(&fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default());
    assert!(!status.success(), "nginx exited with {status}");
    assert!(
        stderr.contains("[emerg]") && stderr.contains(&want),
        "stderr and error.log: {stderr}"
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(crowd_server.connections(), 0, "peers were probed");

    // A running nginx refuses the reload to it and keeps checking its old peers, all of them;
    // none of the new ones is probed.
    let (a, b) = (Raw::new(Script::send(ok)), Raw::new(Script::send(ok)));
    let old_body = format!(
        "upstream small {{\n    server {};\n    server {};\n    \
         upstream_healthcheck interval=200ms timeout=400ms uri=/health;\n}}\n{front}",
        a.addr(),
        b.addr()
    );
    let mut nginx = Nginx::start(&old_body);
    wait_until(Duration::from_secs(5), "probes of both old peers", || {
        a.connections() >= 2 && b.connections() >= 2
    });
    let workers = nginx.worker_pids();
    nginx.rewrite_conf(&format!("{small}{}", old_body.replace(&front, "")));
    nginx.reload();
    let refused = format!(
        "\"upstream_healthcheck_zone\" size 32k is too small for {} peers, at least ",
        n + 2
    );
    wait_until(Duration::from_secs(5), "the reload refused", || {
        nginx.error_log().contains(&refused)
    });
    let (na, nb) = (a.connections(), b.connections());
    thread::sleep(Duration::from_secs(1));
    assert_eq!(nginx.worker_pids(), workers, "the workers changed");
    assert!(
        a.connections() >= na + 3 && b.connections() >= nb + 3,
        "the old peers are no longer probed every 200 ms: {na} -> {}, {nb} -> {}",
        a.connections(),
        b.connections()
    );
    assert_eq!(
        crowd_server.connections(),
        0,
        "peers of the refused config were probed"
    );
    nginx.stop_allowing(|l| l.contains("[emerg]") && l.contains(&refused));

    // With the size named, nginx starts and checks every one of the peers.
    let fits = format!(
        "upstream_healthcheck_zone {needed_k}k;\n{}{front}",
        crowd("crowd", &crowd_server.addr(), n)
    );
    let nginx = Nginx::start(&fits);
    wait_until(Duration::from_secs(10), "every peer probed", || {
        let s = json_status(port);
        let peers = s["msg"]["upstreams"][0]["primary"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        peers.len() == n && peers.iter().all(|p| checks(&p["health"]) >= 1)
    });
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// Reload without a master process

/// An nginx started by the test itself (for modes the harness does not wait on), killed on
/// drop if it is still running.
struct OwnNginx {
    child: std::process::Child,
}

impl Drop for OwnNginx {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `master_process off` (nginx's development mode) takes `SIGHUP`, but the single process never
/// re-runs init_process for the new cycle and serves nothing afterwards. The module must not
/// crash on the zone the reload freed: it stops its checks, says so, and nginx exits cleanly.
#[test]
fn reload_without_a_master_process_stops_checks_without_crashing() {
    let _serial = serial();
    let ok = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    let backend = Raw::new(Script::send(ok));
    let port = free_port();
    let body = format!(
        "upstream u {{\n    server {};\n    upstream_healthcheck interval=100ms timeout=500ms \
         uri=/health;\n}}\nserver {{\n    listen 127.0.0.1:{port};\n\
         \x20   location = /status {{ upstream_healthcheck_status; }}\n}}\n",
        backend.addr()
    );
    let prefix = TempPrefix::new();
    prepare_prefix(prefix.path());
    fs::write(
        prefix.path().join("nginx.conf"),
        render_conf(prefix.path(), "master_process off;", &body),
    )
    .unwrap();
    let log_path = prefix.path().join("error.log");
    let mut nginx = OwnNginx {
        child: Command::new(nginx_bin())
            .args(foreground_args(prefix.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nginx"),
    };
    let pid = nginx.child.id();
    wait_until(
        Duration::from_secs(10),
        "probes from the single process",
        || backend.connections() >= 3 && http_get(port, "/status").is_ok(),
    );

    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    wait_until(Duration::from_secs(5), "the reload logged", || {
        fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("reconfiguring")
    });
    // A few ticks of the probe timer on the new cycle. nginx itself serves nothing after a
    // reload without a master process (it never re-runs init_process, so the new cycle has no
    // connections): the module must stop its checks cleanly instead of touching the freed zone.
    wait_until(Duration::from_secs(5), "the module's stop notice", || {
        fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("checks stopped: nginx was reloaded without a master process")
    });
    thread::sleep(Duration::from_millis(500));
    if let Some(status) = nginx.child.try_wait().expect("wait") {
        panic!(
            "nginx (master_process off) died after SIGHUP: {status}\n--- error.log ---\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let before = backend.connections();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        backend.connections(),
        before,
        "no probe after the checks stopped"
    );

    let ok = Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = nginx.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "nginx did not exit on QUIT");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "nginx exited with {status}");
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("[alert]") && !log.contains("[crit]"), "{log}");
}
