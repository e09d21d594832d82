"""Shared helpers of the benchmark: nginx instances, process statistics, wrk, HTTP, statistics.

Everything a measurement starts goes through `Nginx` or `spawn`, which register the process so
that `cleanup()` (run on exit and on SIGINT/SIGTERM by bench.py) stops it: nginx by SIGQUIT,
then SIGKILL after a grace period; other processes by SIGTERM, then SIGKILL.
"""

import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import time

NGINX = os.environ.get("NGX_HC_NGINX", "/usr/sbin/nginx")
MODULE = os.environ.get("NGX_HC_MODULE", "")
WORK = os.environ.get("BENCH_WORK", "/tmp/ngx-hc-bench")

_live = []  # processes to stop on cleanup: (kind, object)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raise_nofile(n=65536):
    """Raises RLIMIT_NOFILE for this process and its children (10,000 peers need >1024 fds) as far
    as allowed; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), max(hard, n)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# /proc


def children(pid):
    """Pids whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        if int(st[st.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(d))
    return sorted(out)


def cpu_ns(pid):
    """CPU time a task has run, in ns (/proc/PID/schedstat: exact, unlike the 10 ms ticks of stat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_ticks(pid):
    """(utime, stime) of a process in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kb(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def largest_shared_mapping(pid):
    """Size in bytes of the largest shared anonymous mapping (nginx's shm zones are /dev/zero ones)."""
    best = 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[1].endswith("s") and "/dev/zero" in line:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                best = max(best, hi - lo)
    return best


# --------------------------------------------------------------------------------------------
# processes


def spawn(args, **kw):
    """Starts a helper process (not nginx) in its own session and registers it for cleanup."""
    p = subprocess.Popen(args, start_new_session=True, **kw)
    _live.append(("proc", p))
    return p


def stop_proc(p, grace=3.0):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup():
    """Stops everything still running, newest first."""
    while _live:
        kind, obj = _live.pop()
        try:
            if kind == "nginx":
                obj.stop()
            else:
                stop_proc(obj)
        except Exception as e:  # keep cleaning up the rest
            print(f"cleanup: {e}", flush=True)


def wait_port(host, port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


class Nginx:
    """One nginx instance with its own prefix under WORK/<name>, its master in the foreground
    (`daemon off`) as our child. `http` is the body of the http{} block."""

    def __init__(self, name, http, workers=1, module=False, master=True, connections=4096,
                 main_extra=""):
        self.name, self.http, self.workers, self.module = name, http, workers, module
        self.master, self.connections, self.main_extra = master, connections, main_extra
        self.dir = os.path.join(WORK, name)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.error_log = os.path.join(self.dir, "error.log")
        self.proc = None
        self.worker_pids = []

    def conf_text(self):
        d = self.dir
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        load = f"load_module {MODULE};\n" if self.module else ""
        temps = "".join(f"    {k}_temp_path {d}/tmp/{k};\n"
                        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (
            f"{load}"
            f"worker_processes {self.workers};\n"
            f"daemon off;\nmaster_process {'on' if self.master else 'off'};\nuser root;\n"
            f"pid {d}/nginx.pid;\nlock_file {d}/nginx.lock;\nerror_log {d}/error.log warn;\n"
            f"worker_rlimit_nofile {nofile};\n{self.main_extra}\n"
            f"events {{ worker_connections {min(self.connections, nofile - 64)}; }}\n"
            f"http {{\n    access_log off;\n    default_type text/plain;\n{temps}"
            f"{self.http}\n}}\n"
        )

    def write(self):
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(self.conf_text())

    def test(self):
        """`nginx -t` of this configuration: (ok, output)."""
        self.write()
        r = subprocess.run([NGINX, "-t", "-p", self.dir + "/", "-c", self.conf, "-e", self.error_log],
                           capture_output=True, text=True)
        return r.returncode == 0, r.stdout + r.stderr

    def start(self, wait_for=None, timeout=20.0):
        """Starts nginx and waits for its workers (and for `wait_for` = (host, port) to accept)."""
        self.write()
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w")
        self.proc = subprocess.Popen([NGINX, "-p", self.dir + "/", "-c", self.conf, "-e", self.error_log],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        _live.append(("nginx", self))
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx {self.name} exited: {self.tail()}")
            if not self.master:
                self.worker_pids = [self.proc.pid]
                break
            kids = [p for p in children(self.proc.pid) if b"worker process" in _cmdline(p)]
            if len(kids) >= self.workers:
                self.worker_pids = kids
                break
            if time.monotonic() > end:
                raise RuntimeError(f"nginx {self.name}: workers did not start: {self.tail()}")
            time.sleep(0.02)
        if wait_for:
            wait_port(*wait_for, timeout=max(1.0, end - time.monotonic()))
        return self

    def tail(self, n=15):
        out = []
        for path in (self.error_log, os.path.join(self.dir, "stderr.log")):
            try:
                with open(path) as f:
                    out += f.read().splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(out[-n:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: the listener disappears at once (for a single-process backend)."""
        if self.alive():
            for pid in [self.proc.pid] + self.worker_pids:
                _signal(pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace=5.0):
        """SIGQUIT (graceful), then SIGKILL the master and workers after `grace` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _signal(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.worker_pids:  # workers outliving a killed master
            if pid != self.proc.pid and _exists(pid):
                _signal(pid, signal.SIGKILL)
        if ("nginx", self) in _live:
            _live.remove(("nginx", self))
        self.proc = None


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _exists(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# HTTP and wrk


def http_get(host, port, path="/", timeout=3.0):
    """A one-shot HTTP/1.0 GET: (status, headers dict with lower-case names, body bytes)."""
    with socket.create_connection((host, port), timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value, unit):
    return float(value) * _UNIT[unit]


def wrk_start(url, seconds, conns=32, threads=1):
    """Starts `wrk -tT -cC -dSs --latency URL` in the background; finish with wrk_result()."""
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    p = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p.seconds = seconds
    return p


def wrk_result(p):
    out, _ = p.communicate(timeout=p.seconds + 60)
    return parse_wrk(out)


def wrk(url, seconds, conns=32, threads=1):
    """Runs wrk in the foreground and parses its report."""
    return wrk_result(wrk_start(url, seconds, conns, threads))


def alternate(sides, urls, rounds, secs, orders, label):
    """wrk through each side (`sides`: name -> Nginx with one worker, or None for a bare
    backend, the floor; `urls`: name -> URL) for `secs` seconds per round, in the order
    `orders[round % len(orders)]`, after a one-second warm-up each: {name: [wrk result with
    `us_per_req`, the worker's CPU per request (nan for the floor)]}."""
    for k in sides:
        wrk(urls[k], 1)
    res = {k: [] for k in sides}
    for r in range(rounds):
        for k in orders[r % len(orders)]:
            pid = sides[k].worker_pids[0] if sides[k] is not None else None
            c0 = cpu_ns(pid) if pid else 0
            w = wrk(urls[k], secs)
            w["us_per_req"] = (cpu_ns(pid) - c0) / 1e3 / max(w["requests"], 1) if pid else float("nan")
            res[k].append(w)
            log(f"  {label} round {r + 1}/{rounds} {k:2}: {w['rps']:.0f} req/s, p99 {w['p99']:.2f} ms, "
                f"worker {w['us_per_req']:.2f} us CPU/request, failed {w['failed']}")
    return res


def parse_wrk(out):
    r = {"raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        r[f"p{pct}"] = _ms(*m.groups()) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    r["failed"] = r["non2xx"] + r["socket_errors"]
    return r


# --------------------------------------------------------------------------------------------
# statistics and formatting


def median(xs):
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=2):
    if isinstance(x, int):
        return f"{x:,}"
    if x != x:
        return "n/a"
    return f"{x:,.{digits}f}"


def peer_addr(i):
    """The i-th of many loopback addresses: 127.1.0.1, 127.1.0.2, ... 250 per /24."""
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


class Row:
    """One line of the results table."""

    def __init__(self, measurement, value, target, met):
        self.measurement, self.value, self.target = measurement, value, target
        self.met = {True: "yes", False: "**NO**", None: "info"}[met]
