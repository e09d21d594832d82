"""10. Cost per stream probe: 1,000 and 10,000 peers of `stream` upstreams (127.1.x.y, 100 per
upstream), interval=1s, type=tcp (a connect) and type=udp (a datagram and its answer),
worker_processes 2, against the kernel floor of the same probe measured in the same run
(floor.py). Probes counted by the checker itself (the sum of the stream peers' `checks` on the
http module's JSON status page) over a window after warm-up; worker CPU from schedstat."""

import json
import os
import subprocess
import sys
import time

from lib import Nginx, Row, cpu_ns, http_get, log, median, peer_addr
from probe_cost import BACKEND_PORT, backend, kernel_floor

UDP_PORT = 9053
STATUS_PORT = 8209
STREAM_MODULE = os.environ.get("NGX_HC_STREAM_MODULE", "")
# nginx's own stream module when it is dynamic (Debian), loaded first.
STREAM_BASE = os.environ.get("NGX_HC_STREAM_BASE", "")


def stream_loads():
    base = f"load_module {STREAM_BASE};\n" if STREAM_BASE else ""
    return f"{base}load_module {STREAM_MODULE};\n"


def udp_backend():
    """An nginx answering every datagram on 0.0.0.0:UDP_PORT (stream `return`)."""
    return Nginx("sc-udp-backend", "", workers=1, connections=20000,
                 main_extra=(f"load_module {STREAM_BASE};\n" if STREAM_BASE else "")
                 + f"stream {{\n    server {{\n        listen 0.0.0.0:{UDP_PORT} udp;\n"
                 "        return \"pong\";\n    }\n}\n")


def prober(name, n, kind):
    ups = []
    port = BACKEND_PORT if kind == "tcp" else UDP_PORT
    send = "        upstream_healthcheck_send \"ping\";\n" if kind == "udp" else ""
    for u, lo in enumerate(range(0, n, 100)):
        servers = "".join(f"        server {peer_addr(i)}:{port};\n" for i in range(lo, min(n, lo + 100)))
        ups.append(f"    upstream s{u} {{\n{servers}        upstream_healthcheck type={kind} interval=1s "
                   f"timeout=1s fall=3 rise=2;\n{send}    }}\n")
    http = (f"    server {{\n        listen 127.0.0.1:{STATUS_PORT};\n"
            "        location = /status { upstream_healthcheck_status json; }\n    }")
    return Nginx(name, http, workers=2, module=True, connections=20000,
                 main_extra=stream_loads() + "stream {\n" + "".join(ups) + "}\n")


def checks():
    _, _, body = http_get("127.0.0.1", STATUS_PORT, "/status", timeout=30.0)
    doc = json.loads(body)
    return sum(p["health"]["checks"] for u in doc["msg"]["stream_upstreams"]
               for p in u["primary"] + u["backup"])


def run_config(n, kind, warmup, window):
    ng = prober(f"sc-{kind}-{n}", n, kind)
    ng.start(wait_for=("127.0.0.1", STATUS_PORT))
    time.sleep(warmup)
    pids = ng.worker_pids

    def counted():
        """The checks so far and when they were counted (the middle of the page's fetch)."""
        a = time.monotonic()
        n = checks()
        return n, (a + time.monotonic()) / 2

    c0, t0 = counted()
    ns0 = sum(cpu_ns(p) for p in pids)
    time.sleep(window)
    ns1 = sum(cpu_ns(p) for p in pids)
    c1, t1 = counted()
    alive = ng.alive()
    with open(ng.error_log, errors="replace") as f:
        downs = sum(" is DOWN after " in line for line in f)
    ng.stop()
    if not alive:
        raise RuntimeError(f"nginx sc-{kind}-{n} died during the measurement: {ng.tail()}")
    probes = max(c1 - c0, 1)
    return {"n": n, "kind": kind, "rate": probes / (t1 - t0), "achieved": probes / (t1 - t0) / n,
            "us_per_probe": (ns1 - ns0) / 1e3 / probes, "downs": downs}


def udp_floor(count=4000, repeat=3):
    here = os.path.dirname(os.path.abspath(__file__))
    addrs = ",".join(peer_addr(i) for i in range(1000))
    runs = [json.loads(subprocess.run([sys.executable, os.path.join(here, "floor.py"), str(UDP_PORT), str(count),
                                       addrs, "udp"], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeat)]
    return median([r["udp"] for r in runs])


def run(cfg):
    if not STREAM_MODULE:
        raise RuntimeError("NGX_HC_STREAM_MODULE is not set (scripts/bench.sh exports it)")
    be = backend().start(wait_for=("127.0.0.1", BACKEND_PORT))
    ub = udp_backend().start()
    floor = {"tcp": kernel_floor()["tcp"], "udp": udp_floor()}
    log(f"  kernel floor: tcp {floor['tcp']:.1f} us, udp {floor['udp']:.1f} us system CPU per bare probe")
    results = []
    for n in cfg["st_sizes"]:
        for kind in ("tcp", "udp"):
            r = run_config(n, kind, cfg["pc_warmup"], cfg["pc_window"])
            results.append(r)
            log(f"  stream probe cost {n:5} {kind}: {r['rate']:7.0f} probes/s ({r['achieved'] * 100:.1f} %), "
                f"{r['us_per_probe']:.2f} us/probe, {r['downs']} downs")
    ub.stop()
    be.stop()
    rows = []
    for kind in ("tcp", "udp"):
        rs = [r for r in results if r["kind"] == kind]
        ratio = max(r["us_per_probe"] / floor[kind] for r in rs)
        sizes = "/".join(f"{r['n'] // 1000}k" for r in rs)
        rows.append(Row(
            f"10. CPU per stream {kind} probe, {sizes} peers "
            f"(100/upstream) [kernel floor of a bare {kind} probe, same run]",
            " / ".join(f"{r['us_per_probe']:.1f}" for r in rs) + f" µs [floor {floor[kind]:.1f} µs; "
            f"{ratio:.1f}× floor]; achieved {min(r['achieved'] for r in rs) * 100:.1f} %",
            "≤ 3× floor; ≥ 99 %", ratio <= 3.0 and min(r["achieved"] for r in rs) >= 0.99))
    details = [
        "### 10. Cost per stream probe\n",
        f"worker_processes 2, interval=1s timeout=1s, stream upstreams of 100 peers 127.1.x.y: tcp to the "
        f"http backend's port {BACKEND_PORT} (a connect is the probe), udp to an nginx answering every datagram "
        f"on port {UDP_PORT} (stream `return`; `upstream_healthcheck_send \"ping\"`, any answer passes). "
        f"Warm-up {cfg['pc_warmup']} s, window {cfg['pc_window']} s; probes = the checker's own count "
        "(JSON `checks` of the stream peers); CPU = both workers' schedstat run time. Kernel floor: floor.py, "
        "system CPU of bare nonblocking probes, 100 in flight (tcp connect+close; udp connected socket, "
        "datagram, answer, close), median of 3.\n",
        "| type | peers | achieved/s | achieved | µs/probe | DOWN lines |", "|---|---|---|---|---|---|",
    ]
    for r in results:
        details.append(f"| {r['kind']} | {r['n']:,} | {r['rate']:,.0f} | {r['achieved'] * 100:.1f} % | "
                       f"{r['us_per_probe']:.1f} | {r['downs']} |")
    details.append("")
    return rows, details
