"""4. User-visible errors during an outage: steady wrk load through nginx (worker_processes 2) to
three backends, one killed (SIGKILL) mid-run. (A) nginx's passive checks alone (max_fails=1
fail_timeout=10s, module not loaded) vs (B) the same plus the module (interval=200ms fall=2).
`proxy_next_upstream off` in both, so every failure reaches the client. A second wrk run, started
once the module shows the peer DOWN (at the same moment for A), counts the failures after
detection; it lasts about two fail_timeouts, so the passive retries of the dead peer (one per worker
per fail_timeout) show. wrk -c16: fewer requests in flight at the kill, which fail whatever
checks run, and would drown the difference."""

import re
import time

from lib import Nginx, Row, http_get, log, median, wrk_result, wrk_start

PORT = 8401
PEERS = (9401, 9402, 9403)
VICTIM = PEERS[-1]
CONNS = 16


def backend(port):
    return Nginx(f"out-be-{port}", f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
                 "        location / { return 200 \"ok\\n\"; }\n    }", master=False)


def proxy(checked):
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in PEERS)
    check = "        upstream_healthcheck type=http interval=200ms fall=2;\n" if checked else ""
    status = "        location = /status { upstream_healthcheck_status; }\n" if checked else ""
    http = (f"    upstream out {{\n{servers}{check}    }}\n"
            f"    server {{\n        listen 127.0.0.1:{PORT} reuseport backlog=4096;\n"
            "        location / {\n            proxy_pass http://out;\n            proxy_next_upstream off;\n"
            f"        }}\n{status}    }}")
    return Nginx("out-B" if checked else "out-A", http, workers=2, module=checked)


def victim_down():
    _, _, body = http_get("127.0.0.1", PORT, "/status")
    return re.search(rf"127\.0\.0\.1:{VICTIM} DOWN".encode(), body) is not None


def one_round(checked, cfg):
    backends = {p: backend(p).start(wait_for=("127.0.0.1", p)) for p in PEERS}
    ng = proxy(checked).start(wait_for=("127.0.0.1", PORT))
    time.sleep(1.0)  # first probes (B): every peer up
    url = f"http://127.0.0.1:{PORT}/"
    w = wrk_start(url, cfg["out_phase1"], conns=CONNS)
    time.sleep(cfg["out_kill_at"])
    t_kill = time.monotonic()
    backends[VICTIM].kill()
    detected = None
    if checked:
        while time.monotonic() - t_kill < 5:
            if victim_down():
                detected = (time.monotonic() - t_kill) * 1000
                break
            time.sleep(0.01)
    p1 = wrk_result(w)
    if checked and not victim_down():
        raise RuntimeError("the killed peer is not DOWN on the status page")
    p2 = wrk_result(wrk_start(url, cfg["out_phase2"], conns=CONNS))
    ng.stop()
    for b in backends.values():
        b.stop()
    return {"p1": p1, "p2": p2, "detected_ms": detected}


def run(cfg):
    res = {"A": [], "B": []}
    for r in range(cfg["out_rounds"]):
        for k in ("AB" if r % 2 == 0 else "BA"):
            x = one_round(k == "B", cfg)
            res[k].append(x)
            log(f"  outage round {r + 1} {k}: failed {x['p1']['failed']} during + {x['p2']['failed']} after "
                f"(of {x['p1']['requests'] + x['p2']['requests']} requests)"
                + (f", DOWN after {x['detected_ms']:.0f} ms" if x["detected_ms"] else ""))
    total = {k: median([x["p1"]["failed"] + x["p2"]["failed"] for x in res[k]]) for k in "AB"}
    during = {k: median([x["p1"]["failed"] for x in res[k]]) for k in "AB"}
    after = {k: median([x["p2"]["failed"] for x in res[k]]) for k in "AB"}
    after_b_max = max(x["p2"]["failed"] for x in res["B"])
    rows = [
        Row("4. Failed responses, 1 of 3 backends killed under wrk load (proxy_next_upstream off, "
            "worker_processes 2): passive only (max_fails=1 fail_timeout=10s) vs + module (200ms, fall=2), "
            "median of rounds",
            f"{total['A']:g} ({during['A']:g} during + {after['A']:g} after) vs {total['B']:g} "
            f"({during['B']:g} + {after['B']:g})", "fewer with the module", total["B"] < total["A"]),
        Row(f"4. Failed responses after detection with the module ({cfg['out_phase2']} s wrk run started once "
            "DOWN shows), worst round", f"{after_b_max}", "0", after_b_max == 0),
    ]
    details = [
        "### 4. Errors during an outage\n",
        f"wrk -t1 -c{CONNS}, phase 1 {cfg['out_phase1']} s with the backend killed (SIGKILL) at {cfg['out_kill_at']} s, "
        f"then phase 2 {cfg['out_phase2']} s; {cfg['out_rounds']} rounds per side, alternating. Failed = non-2xx "
        "responses + socket errors as wrk reports them. Upstream connections are not kept alive. Phase 1 "
        "failures are mostly requests in flight to the backend when it was killed (reset), which no health check "
        "can save, plus the first failure in each worker (nginx's passive check takes the peer out then, in both "
        "arms); phase 2 shows nginx retrying the dead peer once per worker per fail_timeout without the module.\n",
        "| round | side | failed during (phase 1) | failed after (phase 2) | requests | DOWN on status page |",
        "|---|---|---|---|---|---|",
    ]
    for k in "AB":
        for i, x in enumerate(res[k]):
            det = f"{x['detected_ms']:.0f} ms" if x["detected_ms"] is not None else "-"
            details.append(f"| {i + 1} | {'A passive' if k == 'A' else 'B module'} | {x['p1']['failed']} | "
                           f"{x['p2']['failed']} | {x['p1']['requests'] + x['p2']['requests']:,} | {det} |")
    details.append("")
    return rows, details
