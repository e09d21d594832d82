"""1. Request path: wrk through nginx to a local backend, (A) with the module loaded and three
peers checked every 100 ms vs (B) the same nginx without the module, alternating. A third
instance, C, identical to B, is measured the same way as a control: B/C shows how far two
identical setups differ on this machine, the noise floor of the A/B ratios."""

import re

from lib import Nginx, Row, alternate, fmt, http_get, median

BACKEND_PORTS = (8111, 8112, 8113)
PORT_A, PORT_B, PORT_C = 8101, 8102, 8103
ORDERS = ("ABC", "CBA", "BCA", "ACB", "CAB", "BAC")  # every position for every side


def backend():
    listens = "".join(f"        listen 127.0.0.1:{p} backlog=4096;\n" for p in BACKEND_PORTS)
    return Nginx("rp-backend", f"    server {{\n{listens}"
                 "        location / { return 200 \"ok\\n\"; }\n    }", workers=1)


def proxy(name, port, checked):
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in BACKEND_PORTS)
    check = "        upstream_healthcheck type=http interval=100ms timeout=1s;\n" if checked else ""
    status = "        location = /status { upstream_healthcheck_status; }\n" if checked else ""
    http = (f"    upstream app {{\n{servers}{check}        keepalive 32;\n    }}\n"
            f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
            "        location / {\n            proxy_pass http://app;\n"
            "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
            f"        }}\n{status}    }}")
    return Nginx(name, http, workers=1, module=checked)


def run(cfg):
    rounds, secs = cfg["rp_rounds"], cfg["rp_seconds"]
    be = backend().start(wait_for=("127.0.0.1", BACKEND_PORTS[0]))
    a = proxy("rp-A", PORT_A, True).start(wait_for=("127.0.0.1", PORT_A))
    b = proxy("rp-B", PORT_B, False).start(wait_for=("127.0.0.1", PORT_B))
    c = proxy("rp-C", PORT_C, False).start(wait_for=("127.0.0.1", PORT_C))
    urls = {"A": f"http://127.0.0.1:{PORT_A}/", "B": f"http://127.0.0.1:{PORT_B}/", "C": f"http://127.0.0.1:{PORT_C}/"}
    # Warm-up (connections, caches, CPU frequency), then the rounds.
    res = alternate({"A": a, "B": b, "C": c}, urls, rounds, secs, ORDERS, "request path")
    # The module really probed meanwhile: every peer up, with checks counted.
    _, _, body = http_get("127.0.0.1", PORT_A, "/status?format=json")
    checks = [int(x) for x in re.findall(rb'"checks":(\d+)', body)]
    for n in (a, b, c, be):
        n.stop()

    rps = {k: median([w["rps"] for w in res[k]]) for k in "ABC"}
    p99 = {k: median([w["p99"] for w in res[k]]) for k in "ABC"}
    p50 = {k: median([w["p50"] for w in res[k]]) for k in "ABC"}
    cpu = {k: median([w["us_per_req"] for w in res[k]]) for k in "ABC"}
    failed = sum(w["failed"] for k in "ABC" for w in res[k])
    ctl_paired = sorted(x["rps"] / y["rps"] for x, y in zip(res["B"], res["C"]))
    ctl_paired99 = sorted(x["p99"] / y["p99"] for x, y in zip(res["B"], res["C"]))
    thr_ratio, p99_ratio = rps["A"] / rps["B"], p99["A"] / p99["B"]
    paired = sorted(x["rps"] / y["rps"] for x, y in zip(res["A"], res["B"]))
    paired99 = sorted(x["p99"] / y["p99"] for x, y in zip(res["A"], res["B"]))
    pairedcpu = sorted(x["us_per_req"] / y["us_per_req"] for x, y in zip(res["A"], res["B"]))
    rows = [
        Row("1. Request path: throughput A/B (module + 3 peers @100ms vs no module)",
            f"{thr_ratio:.3f} ({fmt(rps['A'], 0)} vs {fmt(rps['B'], 0)} req/s; per-round ratios "
            f"{paired[0]:.2f}–{paired[-1]:.2f})", "≥ 0.98", thr_ratio >= 0.98),
        Row("1. Request path: p99 latency A/B",
            f"{p99_ratio:.3f} ({p99['A']:.2f} vs {p99['B']:.2f} ms; per-round ratios "
            f"{paired99[0]:.2f}–{paired99[-1]:.2f})", "≤ 1.05", p99_ratio <= 1.05),
        Row("1. Request path, control: two identical nginx without the module (B/C), throughput; p99",
            f"{rps['B'] / rps['C']:.3f} (per-round {ctl_paired[0]:.2f}–{ctl_paired[-1]:.2f}); "
            f"{p99['B'] / p99['C']:.3f} (per-round {ctl_paired99[0]:.2f}–{ctl_paired99[-1]:.2f})",
            "(info: noise floor of the A/B ratios)", None),
        Row("1. Request path: nginx worker CPU per request A/B (less noisy than throughput on a shared machine)",
            f"{cpu['A'] / cpu['B']:.3f} ({cpu['A']:.2f} vs {cpu['B']:.2f} µs; per-round ratios "
            f"{pairedcpu[0]:.2f}–{pairedcpu[-1]:.2f})", "(info)", None),
    ]
    details = [
        f"### 1. Request path\n",
        f"wrk -t1 -c32 --latency, {rounds} rounds of {secs} s per side, A, B and control C in rotating order, "
        "worker_processes 1, keepalive 32 to a one-process nginx backend on 3 ports. "
        f"A's three peers were probed meanwhile (checks counters {checks}).\n",
        "| round | A req/s | B req/s | C req/s | A p50 ms | B p50 ms | C p50 ms | A p99 ms | B p99 ms | C p99 ms "
        "| A µs CPU/req | B µs CPU/req | C µs CPU/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (x, y, z) in enumerate(zip(res["A"], res["B"], res["C"])):
        details.append(f"| {i + 1} | {x['rps']:.0f} | {y['rps']:.0f} | {z['rps']:.0f} | {x['p50']:.3f} | {y['p50']:.3f} | "
                       f"{z['p50']:.3f} | {x['p99']:.3f} | {y['p99']:.3f} | {z['p99']:.3f} | {x['us_per_req']:.2f} | "
                       f"{y['us_per_req']:.2f} | {z['us_per_req']:.2f} |")
    details += [
        f"| median | {rps['A']:.0f} | {rps['B']:.0f} | {rps['C']:.0f} | {p50['A']:.3f} | {p50['B']:.3f} | "
        f"{p50['C']:.3f} | {p99['A']:.3f} | {p99['B']:.3f} | {p99['C']:.3f} | {cpu['A']:.2f} | {cpu['B']:.2f} | "
        f"{cpu['C']:.2f} |",
        "",
        f"Per-round ratios A/B: throughput {', '.join(f'{x:.3f}' for x in paired)}; "
        f"p99 {', '.join(f'{x:.3f}' for x in paired99)}. Failed responses over all runs: {failed}.\n",
    ]
    return rows, details
