//! A TLS backend slow to take each handshake (Python's `ssl` module, a thread per connection,
//! waiting before it reads the ClientHello): a probe of it spends most of its life
//! mid-handshake, waiting on the peer rather than on the CPU.
use super::*;

/// argv: cert key delay_seconds port...
const SCRIPT: &str = r#"
import socket, ssl, sys, threading, time
cert, key, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def serve(conn):
    try:
        time.sleep(delay)
        s = ctx.wrap_socket(conn, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return
            data += chunk
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        s.close()
    except Exception:
        pass
    finally:
        conn.close()
def accept(l):
    while True:
        c, _ = l.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
listeners = []
for p in sys.argv[4:]:
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", int(p)))
    l.listen(128)
    listeners.append(l)
for l in listeners[1:]:
    threading.Thread(target=accept, args=(l,), daemon=True).start()
print("ready", flush=True)
accept(listeners[0])
"#;

/// The running server; stopped (its process group ended) when dropped.
pub struct SlowTls {
    _dir: TempPrefix,
    _server: Spawned,
}

impl SlowTls {
    /// Serves `pair` on each of `ports`, each handshake taken `delay` after the connect.
    pub fn start(pair: &CertPair, ports: &[u16], delay: Duration) -> SlowTls {
        let dir = TempPrefix::new();
        let out = dir.path().join("stdout");
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg(&pair.cert)
            .arg(&pair.key)
            .arg(format!("{:.3}", delay.as_secs_f64()))
            .args(ports.iter().map(u16::to_string));
        let server = Spawned::start(cmd, "slow TLS server", &out, &dir.path().join("stderr"));
        wait_until(
            Duration::from_secs(10),
            "the slow TLS server listens",
            || fs::read_to_string(&out).is_ok_and(|s| s.contains("ready")),
        );
        SlowTls {
            _dir: dir,
            _server: server,
        }
    }
}
