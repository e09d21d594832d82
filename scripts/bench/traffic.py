"""8. Traffic-aware checks. (a) Request-path cost of `upstream_healthcheck_traffic on`: wrk
through nginx with the module and two checked peers, traffic counting on (T) vs off (O), and a
control O2 identical to O, in rotating order; throughput and worker CPU per request. (b) Failed
responses clients see while one of three backends answers real requests with 502 but its
health checks with 200, under load: active checks only (A) vs active + passive checks (P), in
alternating rounds (each round a fresh nginx, so each starts with every peer up)."""

from lib import Nginx, Row, alternate, fmt, log, median, wrk

BACKEND_PORTS = (8211, 8212, 8213)
PORTS = {"T": 8201, "O": 8202, "O2": 8203}
ORDERS = (("T", "O", "O2"), ("O2", "O", "T"), ("O", "O2", "T"), ("T", "O2", "O"), ("O2", "T", "O"),
          ("O", "T", "O2"))
CHECK = "        upstream_healthcheck type=http interval=100ms timeout=1s uri=/health;\n"


def backend():
    """Three ports; the third answers real requests with 502 and /health with 200 (part b)."""
    ok = "".join(f"        listen 127.0.0.1:{p} backlog=4096;\n" for p in BACKEND_PORTS[:2])
    return Nginx("tr-backend",
                 f"    server {{\n{ok}        location / {{ return 200 \"ok\\n\"; }}\n    }}\n"
                 f"    server {{\n        listen 127.0.0.1:{BACKEND_PORTS[2]} backlog=4096;\n"
                 "        location = /health { return 200 \"ok\\n\"; }\n"
                 "        location / { return 502; }\n    }", workers=1)


def proxy(name, port, extra, ports):
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in ports)
    http = (f"    upstream app {{\n{servers}{CHECK}{extra}        keepalive 32;\n    }}\n"
            f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
            "        location / {\n            proxy_pass http://app;\n"
            "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
            "        }\n        location = /status { upstream_healthcheck_status; }\n    }")
    return Nginx(name, http, workers=1, module=True)


def request_cost(cfg):
    """Part (a): per-side lists of wrk results, with the worker's CPU per request."""
    rounds, secs = cfg["rp_rounds"], cfg["rp_seconds"]
    good = BACKEND_PORTS[:2]  # two healthy peers
    sides = {k: proxy(f"tr-{k}", PORTS[k], "        upstream_healthcheck_traffic on;\n" if k == "T" else "",
                      good).start(wait_for=("127.0.0.1", PORTS[k])) for k in PORTS}
    urls = {k: f"http://127.0.0.1:{PORTS[k]}/" for k in PORTS}
    res = alternate(sides, urls, rounds, secs, ORDERS, "traffic cost")
    for n in sides.values():
        n.stop()
    return res


def failed_responses(cfg):
    """Part (b): per-side lists of (requests, failed) under load."""
    res = {"A": [], "P": []}
    passive = "        upstream_healthcheck_passive fails=3 window=10s statuses=5xx;\n"
    for r in range(cfg["tr_rounds"]):
        for k in ("AP" if r % 2 == 0 else "PA"):
            n = proxy(f"tr-{k}{r}", PORTS["T"], passive if k == "P" else "", BACKEND_PORTS)
            n.start(wait_for=("127.0.0.1", PORTS["T"]))
            w = wrk(f"http://127.0.0.1:{PORTS['T']}/", cfg["tr_seconds"])
            n.stop()
            res[k].append((w["requests"], w["failed"]))
            log(f"  failed responses round {r + 1} {k}: {w['failed']} of {w['requests']} "
                f"({w['failed'] / max(w['requests'], 1) * 100:.2f} %)")
    return res


def run(cfg):
    be = backend().start(wait_for=("127.0.0.1", BACKEND_PORTS[0]))
    try:
        cost = request_cost(cfg)
        failed = failed_responses(cfg)
    finally:
        be.stop()
    rps = {k: median([w["rps"] for w in cost[k]]) for k in cost}
    cpu = {k: median([w["us_per_req"] for w in cost[k]]) for k in cost}
    paired = sorted(x["rps"] / y["rps"] for x, y in zip(cost["T"], cost["O"]))
    pairedcpu = sorted(x["us_per_req"] / y["us_per_req"] for x, y in zip(cost["T"], cost["O"]))
    ctl = sorted(x["rps"] / y["rps"] for x, y in zip(cost["O2"], cost["O"]))
    share = {k: median([f / max(n, 1) for n, f in failed[k]]) for k in failed}
    cut = share["A"] / share["P"] if share["P"] > 0 else float("inf")
    thr, cpu_ratio = rps["T"] / rps["O"], cpu["T"] / cpu["O"]
    rows = [
        Row("8a. Request path with `upstream_healthcheck_traffic on` vs off: throughput",
            f"{thr:.3f} ({fmt(rps['T'], 0)} vs {fmt(rps['O'], 0)} req/s; per round {paired[0]:.2f}–{paired[-1]:.2f}) "
            f"[control, two identical nginx without counting: {rps['O2'] / rps['O']:.3f}, per round "
            f"{ctl[0]:.2f}–{ctl[-1]:.2f}]", "≥ 0.98", thr >= 0.98),
        Row("8a. Request path with traffic counting on vs off: nginx worker CPU per request",
            f"{cpu_ratio:.3f} ({cpu['T']:.2f} vs {cpu['O']:.2f} µs; per round "
            f"{pairedcpu[0]:.2f}–{pairedcpu[-1]:.2f})", "≤ 1.03", cpu_ratio <= 1.03),
        Row("8b. Failed responses seen by clients, one of three backends failing real requests "
            "(502) but passing its probes: active only vs active + passive (fails=3)",
            f"{share['A'] * 100:.2f} % vs {share['P'] * 100:.3f} % of requests: passive cuts them "
            f"{cut:.0f}×", "≥ 10×", cut >= 10),
    ]
    details = [
        "### 8. Traffic-aware checks\n",
        f"(a) wrk -t1 -c32, {cfg['rp_rounds']} rounds of {cfg['rp_seconds']} s per side, T (traffic on), O (off) "
        "and control O2 (off) in rotating order, worker_processes 1, keepalive 32, two checked peers "
        "(interval=100ms) on a one-process nginx backend.\n",
        "| round | T req/s | O req/s | O2 req/s | T µs CPU/req | O µs CPU/req | O2 µs CPU/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (t, o, o2) in enumerate(zip(cost["T"], cost["O"], cost["O2"])):
        details.append(f"| {i + 1} | {t['rps']:.0f} | {o['rps']:.0f} | {o2['rps']:.0f} | {t['us_per_req']:.2f} | "
                       f"{o['us_per_req']:.2f} | {o2['us_per_req']:.2f} |")
    details += [
        "",
        f"(b) wrk -t1 -c32 for {cfg['tr_seconds']} s against a fresh nginx per round; backend 3 answers `/health` "
        "200 and everything else 502; checks interval=100ms fall=3 rise=2; P adds "
        "`upstream_healthcheck_passive fails=3 window=10s statuses=5xx` (the probes bring the peer back after "
        "two passes, so it is ejected again and again: each time after 3 more failures).\n",
        "| round | A: failed / requests | P: failed / requests |",
        "|---|---|---|",
    ]
    for i, ((na, fa), (np_, fp)) in enumerate(zip(failed["A"], failed["P"])):
        details.append(f"| {i + 1} | {fa} / {na} | {fp} / {np_} |")
    details.append("")
    return rows, details
