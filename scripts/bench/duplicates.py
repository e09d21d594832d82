"""6. Duplicate probes: with worker_processes 1, 2 and 4, how many probes each peer receives per
interval, counted in the access log of the backend (one nginx on 0.0.0.0 in our namespace, which
logs the address each probe was sent to). 100 peers, type=http, interval=200ms."""

import os
import time

from lib import WORK, Nginx, Row, log

BACKEND_PORT = 9600
STATUS_PORT = 8601
PEERS = [f"127.3.0.{i + 1}" for i in range(100)]
INTERVAL_S = 0.2


def backend():
    name = "dup-backend"
    logfile = os.path.join(WORK, name, "access.log")
    http = ("    log_format probes '$msec $server_addr';\n"
            f"    server {{\n        listen 0.0.0.0:{BACKEND_PORT} backlog=4096;\n"
            f"        access_log {logfile} probes buffer=64k flush=200ms;\n"
            "        location / { return 200 \"ok\\n\"; }\n    }")
    return Nginx(name, http, workers=1), logfile


def checker(workers):
    servers = "".join(f"        server {a}:{BACKEND_PORT};\n" for a in PEERS)
    http = (f"    upstream dup {{\n{servers}        upstream_healthcheck type=http interval=200ms timeout=1s;\n    }}\n"
            f"    server {{\n        listen 127.0.0.1:{STATUS_PORT};\n"
            "        location = /status { upstream_healthcheck_status; }\n    }")
    return Nginx(f"dup-{workers}", http, workers=workers, module=True)


def run(cfg):
    be, logfile = backend()
    be.start(wait_for=("127.0.0.1", BACKEND_PORT))
    window = cfg["dup_window"]
    per_interval = window / INTERVAL_S
    results = {}
    for w in cfg["dup_workers"]:
        ng = checker(w).start(wait_for=("127.0.0.1", STATUS_PORT))
        time.sleep(1.5)
        t0 = time.time()
        time.sleep(window)
        t1 = time.time()
        ng.stop()
        time.sleep(0.5)  # the backend's log buffer is flushed every 200 ms
        counts = {a: 0 for a in PEERS}
        with open(logfile) as f:
            for line in f:
                ts, addr = line.split()
                if t0 <= float(ts) < t1 and addr in counts:
                    counts[addr] += 1
        ratios = [c / per_interval for c in counts.values()]
        results[w] = (sum(ratios) / len(ratios), min(ratios), max(ratios), sum(counts.values()))
        log(f"  duplicates, {w} workers: {results[w][0]:.3f} probes/peer/interval "
            f"(peers {results[w][1]:.2f}..{results[w][2]:.2f})")
    be.stop()
    ok = all(abs(r[0] - 1) <= 0.05 for r in results.values())
    rows = [Row("6. Probes per peer per interval, worker_processes " + "/".join(map(str, results)),
                " / ".join(f"{r[0]:.3f}" for r in results.values()), "1.00 ± 0.05 each", ok)]
    details = [
        "### 6. Duplicate probes\n",
        f"100 peers, type=http interval=200ms, {window} s window after 1.5 s warm-up; probes counted per peer address "
        f"in the backend's access log ({per_interval:.0f} expected per peer).\n",
        "| worker_processes | probes | per peer per interval (mean) | lowest peer | highest peer |",
        "|---|---|---|---|---|",
    ]
    for w, (mean, lo, hi, total) in results.items():
        details.append(f"| {w} | {total:,} | {mean:.3f} | {lo:.2f} | {hi:.2f} |")
    details.append("")
    return rows, details
