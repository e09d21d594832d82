"""9. Membership from etcd (`upstream_healthcheck_dynamic`):

- Propagation: two nginx nodes of two workers each on one etcd (Debian's etcd-server, on
  loopback with a data dir of its own). Upstream `app` has two peers from etcd, P and Q, one of
  them marked down (`"status": "down"`). A change swaps them in one etcd transaction written to
  the gateway; the time from the write's answer to the first response from the newly up peer
  counted per worker, until every worker of both nodes has answered from it. Median and max
  over the changes.
- Request path: wrk through (A) an nginx whose upstream's three peers come from etcd
  (`max_peers=16`: nginx's round robin scans the 16 reserved peers and the replaced static one
  at each pick) and (B) the same nginx with the three as static servers (both checked every
  100 ms), alternating, with a control C identical to B (the noise floor of the A/B ratio)."""

import base64
import http.client
import json
import os
import shutil
import time

from lib import WORK, Nginx, Row, alternate, fmt, log, median, spawn, stop_proc, wait_port

ETCD = "/usr/bin/etcd"
ETCD_CLIENT, ETCD_PEER = 8190, 8191
PREFIX = "/bench/"
BACKENDS = (8181, 8182, 8183)
NODES = (8171, 8172)
PORT_A, PORT_B, PORT_C = 8174, 8175, 8176
ORDERS = ("ABC", "CBA", "BCA", "ACB", "CAB", "BAC")


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self):
        self.dir = os.path.join(WORK, "etcd")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        c, p = f"http://127.0.0.1:{ETCD_CLIENT}", f"http://127.0.0.1:{ETCD_PEER}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "w")
        self.proc = spawn([ETCD, "--name", "b", "--data-dir", os.path.join(self.dir, "data"),
                           "--listen-client-urls", c, "--advertise-client-urls", c,
                           "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                           "--initial-cluster", f"b={p}", "--logger", "zap"],
                          stdout=self.log, stderr=self.log)
        wait_port("127.0.0.1", ETCD_CLIENT, 20)
        self.conn = http.client.HTTPConnection("127.0.0.1", ETCD_CLIENT, timeout=5)
        end = time.monotonic() + 20
        while True:
            try:
                self.call("/v3/kv/range", {"key": b64("/")})
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
                self.conn = http.client.HTTPConnection("127.0.0.1", ETCD_CLIENT, timeout=5)

    def call(self, path, body):
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"etcd {path}: {r.status} {data[:200]!r}")
        return json.loads(data)

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def txn_put(self, pairs):
        """Several puts at once (one revision)."""
        ops = [{"requestPut": {"key": b64(k), "value": b64(v)}} for k, v in pairs]
        self.call("/v3/kv/txn", {"success": ops})

    def stop(self):
        stop_proc(self.proc)


def key(port):
    return f"{PREFIX}upstreams/app/127.0.0.1:{port}"


def backend():
    servers = "".join(f"    server {{\n        listen 127.0.0.1:{p} backlog=4096;\n"
                      f"        location / {{ return 200 \"{p}\"; }}\n    }}\n" for p in BACKENDS)
    return Nginx("dyn-backend", servers, workers=1)


def front(name, port, dynamic, workers):
    if dynamic:
        servers = (f"        server 127.0.0.1:{BACKENDS[0]};\n"
                   "        upstream_healthcheck_dynamic max_peers=16;\n        zone app 256k;\n")
        etcd = f"    upstream_healthcheck_etcd http://127.0.0.1:{ETCD_CLIENT} prefix={PREFIX};\n"
    else:
        servers = "".join(f"        server 127.0.0.1:{p};\n" for p in BACKENDS) + "        zone app 256k;\n"
        etcd = ""
    http = (f"{etcd}    upstream app {{\n{servers}"
            "        upstream_healthcheck type=http interval=100ms timeout=1s;\n        keepalive 32;\n    }\n"
            f"    server {{\n        listen 127.0.0.1:{port} backlog=4096 reuseport;\n"
            "        add_header X-Worker $pid always;\n"
            "        location / {\n            proxy_pass http://app;\n"
            "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
            "        }\n        location = /status { upstream_healthcheck_status json; }\n    }")
    return Nginx(name, http, workers=workers, module=True)


def answer(port):
    """(worker pid, backend port) of one request on its own connection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        c.request("GET", "/x", headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        return int(r.getheader("X-Worker", "0")), int(body or 0)
    finally:
        c.close()


def all_workers_on(nodes, want, workers, timeout=10.0):
    """Seconds until every worker of every node answered from backend `want`."""
    t0 = time.monotonic()
    pending = {(port, w) for port, ws in zip(nodes, workers) for w in ws}
    while pending:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"workers {sorted(pending)} never answered from {want}")
        for port in nodes:
            w, b = answer(port)
            if b == want:
                pending.discard((port, w))
    return time.monotonic() - t0


def propagation(cfg, etcd):
    changes = cfg.get("dyn_changes", 20)
    p, q = BACKENDS[0], BACKENDS[1]
    etcd.txn_put([(key(p), "{}"), (key(q), '{"status": "down"}')])
    nodes = [front(f"dyn-node{i}", port, True, 2).start(wait_for=("127.0.0.1", port))
             for i, port in enumerate(NODES)]
    workers = [n.worker_pids for n in nodes]
    all_workers_on(NODES, p, workers, timeout=20)
    times = []
    up, down = q, p
    for i in range(changes):
        etcd.txn_put([(key(up), "{}"), (key(down), '{"status": "down"}')])
        times.append(all_workers_on(NODES, up, workers))
        log(f"  etcd change {i + 1}/{changes}: every worker of both nodes in {times[-1] * 1000:.0f} ms")
        up, down = down, up
    for n in nodes:
        n.stop()
    return times


def request_path(cfg, etcd):
    rounds, secs = cfg["rp_rounds"], cfg["rp_seconds"]
    for port in BACKENDS:
        etcd.put(key(port), "{}")
    a = front("dyn-A", PORT_A, True, 1).start(wait_for=("127.0.0.1", PORT_A))
    b = front("dyn-B", PORT_B, False, 1).start(wait_for=("127.0.0.1", PORT_B))
    c = front("dyn-C", PORT_C, False, 1).start(wait_for=("127.0.0.1", PORT_C))
    # A serves etcd's three peers, not its static one alone.
    seen, end = set(), time.monotonic() + 20
    while len(seen) < 3:
        if time.monotonic() > end:
            raise RuntimeError(f"dynamic A answered only from {seen}")
        seen.add(answer(PORT_A)[1])
    urls = {k: f"http://127.0.0.1:{port}/" for k, port in (("A", PORT_A), ("B", PORT_B), ("C", PORT_C))}
    res = alternate({"A": a, "B": b, "C": c}, urls, rounds, secs, ORDERS, "dynamic request path")
    for n in (a, b, c):
        n.stop()
    return res


def run(cfg):
    be = backend().start(wait_for=("127.0.0.1", BACKENDS[0]))
    etcd = Etcd()
    try:
        times = propagation(cfg, etcd)
        res = request_path(cfg, etcd)
    finally:
        etcd.stop()
        be.stop()
    ms = sorted(t * 1000 for t in times)
    med, worst = median(ms), ms[-1]
    rps = {k: median([w["rps"] for w in res[k]]) for k in "ABC"}
    cpu = {k: median([w["us_per_req"] for w in res[k]]) for k in "ABC"}
    paired = sorted(x["rps"] / y["rps"] for x, y in zip(res["A"], res["B"]))
    ctl = sorted(x["rps"] / y["rps"] for x, y in zip(res["B"], res["C"]))
    ratio = rps["A"] / rps["B"]
    failed = sum(w["failed"] for k in "ABC" for w in res[k])
    rows = [
        Row("9. etcd write to the change on every worker of two nodes (2 workers each): median",
            f"{med:.0f} ms over {len(ms)} changes", "≤ 200 ms", med <= 200),
        Row("9. etcd write to the change on every worker of two nodes: max",
            f"{worst:.0f} ms", "≤ 1 s", worst <= 1000),
        Row("9. Request path: throughput of a dynamic upstream (3 peers from etcd) / a static one",
            f"{ratio:.3f} ({fmt(rps['A'], 0)} vs {fmt(rps['B'], 0)} req/s; per-round ratios "
            f"{paired[0]:.2f}–{paired[-1]:.2f})", "≥ 0.98", ratio >= 0.98),
        Row("9. Request path: nginx worker CPU per request, dynamic / static (less noisy than throughput "
            "on a shared machine)",
            f"{cpu['A'] / cpu['B']:.3f} ({cpu['A']:.2f} vs {cpu['B']:.2f} µs)", "(info)", None),
        Row("9. Request path, control: two identical static upstreams (B/C), throughput",
            f"{rps['B'] / rps['C']:.3f} (per-round {ctl[0]:.2f}–{ctl[-1]:.2f})",
            "(info: noise floor of the A/B ratio)", None),
    ]
    details = [
        "### 9. Membership from etcd\n",
        f"Propagation: {len(ms)} changes, each one etcd transaction (the gateway's /v3/kv/txn) swapping "
        "which of two peers is marked down; time from the write's answer until every worker of both "
        "nodes answered from the newly up peer (requests on fresh connections, alternating nodes). "
        f"Sorted, ms: {', '.join(f'{x:.0f}' for x in ms)}.\n",
        f"Request path: wrk -t1 -c32, {cfg['rp_rounds']} rounds of {cfg['rp_seconds']} s per side in rotating "
        "order, worker_processes 1, keepalive 32, checks every 100 ms on both. Median worker CPU per request: "
        f"A {cpu['A']:.2f} µs, B {cpu['B']:.2f} µs, C {cpu['C']:.2f} µs. Per-round A/B: "
        f"{', '.join(f'{x:.3f}' for x in paired)}. Failed responses: {failed}.\n",
    ]
    return rows, details
