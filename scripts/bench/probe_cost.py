"""2. Cost per probe: 1,000 to 10,000 peers (127.1.x.y, all served by one backend nginx listening
on 0.0.0.0 in our network namespace), interval=1s, type=tcp and type=http, worker_processes 2.
Worker CPU per probe and probes/s counted at the backend (stub_status: `accepts` for tcp, one
connection per probe; `requests` for http, one request per probe, kept-alive or not) over a window
after warm-up. keepalive_cost.py adds the keepalive rows, measured in the same run."""

import json
import os
import re
import subprocess
import sys
import time

import keepalive_cost
from lib import (CLK_TCK, Nginx, Row, cpu_ns, cpu_ticks, fmt, http_get, largest_shared_mapping, log, median,
                 peer_addr, spawn, status_kb)

BACKEND_PORT = 9000
# The backend's TLS listener, for https probes (a self-signed certificate made at its start).
BACKEND_TLS_PORT = 9443
STATUS_PORT = 8201
INTERVAL_S = 1.0


def backend():
    ng = Nginx("pc-backend", "", workers=1, connections=20000)
    cert, key = self_signed(ng.dir)
    ng.http = (f"    server {{\n        listen 0.0.0.0:{BACKEND_PORT} backlog=8192;\n"
               f"        listen 0.0.0.0:{BACKEND_TLS_PORT} ssl backlog=8192;\n"
               f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
               "        ssl_session_cache shared:bench:10m;\n"
               "        keepalive_requests 1000000;\n"
               "        location = /bench_stub { stub_status; }\n"
               "        location / { return 200 \"ok\\n\"; }\n    }")
    return ng


def self_signed(directory):
    """A self-signed P-256 certificate and key for the backend's TLS listener: (cert, key) paths."""
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "backend.crt"), os.path.join(directory, "backend.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=bench", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def counters():
    """The backend's stub_status (accepts, requests); each call counts itself once in both."""
    _, _, body = http_get("127.0.0.1", BACKEND_PORT, "/bench_stub")
    return tuple(int(x) for x in re.search(rb"\n\s*(\d+) \d+ (\d+)", body).groups())


def accepts():
    """The backend's stub_status accepts (connections); the call counts itself."""
    return counters()[0]


def peers_http(n, per_upstream, check_type, extra=""):
    """upstream blocks u0, u1, ... of `per_upstream` peers each; `check_type` None: no checks;
    `extra`: more arguments of upstream_healthcheck (" keepalive=1000")."""
    out = []
    port = BACKEND_TLS_PORT if check_type == "https" else BACKEND_PORT
    for u, lo in enumerate(range(0, n, per_upstream)):
        servers = "".join(f"        server {peer_addr(i)}:{port};\n"
                          for i in range(lo, min(n, lo + per_upstream)))
        check = (f"        upstream_healthcheck type={check_type}{extra} interval=1s timeout=1s fall=3 rise=2;\n"
                 if check_type else "")
        out.append(f"    upstream u{u} {{\n{servers}{check}    }}\n")
    status = "        location = /status { upstream_healthcheck_status; }\n" if check_type else ""
    out.append(f"    server {{\n        listen 127.0.0.1:{STATUS_PORT};\n{status}"
               "        location / { return 200; }\n    }")
    return "".join(out)


# The longest a keepalive configuration may take to warm up (every peer on a kept connection).
WARM_MAX_S = 60


def warm_up(n, since):
    """Waits until the probes run at the configured rate on kept connections (a second with at
    least 99 % of the rate and at most 1 % of it on new connections), at most until WARM_MAX_S
    after `since`; returns the seconds from `since` to warm, None if it never was."""
    while time.monotonic() - since < WARM_MAX_S:
        a = counters()
        time.sleep(1.0)
        b = counters()
        probes, conns = b[1] - a[1] - 1, b[0] - a[0] - 1
        if probes >= 0.99 * n / INTERVAL_S and conns <= 0.01 * probes:
            return time.monotonic() - since
    return None


def downs(ng):
    """How many peers the checker marked DOWN (every backend here is healthy: each is false)."""
    try:
        with open(ng.error_log, errors="replace") as f:
            return sum(" is DOWN after " in line for line in f)
    except OSError:
        return 0


def run_config(name, n, per_upstream, check_type, warmup, window, profile_to=None, extra=""):
    """Starts nginx with n checked peers, waits `warmup` s (and, for keepalive probes, until they
    are warm: see warm_up), measures over `window` s; returns a dict."""
    ng = Nginx(name, peers_http(n, per_upstream, check_type, extra), workers=2, module=check_type is not None,
               connections=20000)
    since = time.monotonic()
    ng.start(wait_for=("127.0.0.1", STATUS_PORT))
    time.sleep(warmup)
    warm_s = warm_up(n, since) if "keepalive" in extra else None
    pids = ng.worker_pids
    c0, t0 = counters(), time.monotonic()
    ns0, tk0 = sum(cpu_ns(p) for p in pids), [cpu_ticks(p) for p in pids]
    cs0 = sum(status_kb(p, "voluntary_ctxt_switches") for p in pids)
    time.sleep(window)
    ns1, tk1 = sum(cpu_ns(p) for p in pids), [cpu_ticks(p) for p in pids]
    cs1 = sum(status_kb(p, "voluntary_ctxt_switches") for p in pids)
    user = sum(b[0] - a[0] for a, b in zip(tk0, tk1))
    system = sum(b[1] - a[1] for a, b in zip(tk0, tk1))
    c1, t1 = counters(), time.monotonic()
    counted = 1 if check_type in ("http", "https") else 0  # requests for http(s), connections for tcp
    res = {
        "n": n, "per": per_upstream, "type": check_type, "seconds": t1 - t0,
        "probes": c1[counted] - c0[counted] - 1,  # the second stub_status request counts itself
        "conns": c1[0] - c0[0] - 1,
        "cpu_ns": ns1 - ns0, "user_ticks": user, "sys_ticks": system, "wakeups": cs1 - cs0,
        "rss_kb": [status_kb(p) for p in pids],
        "rss_shmem_kb": [status_kb(p, "RssShmem") for p in pids],
        "zone_bytes": max(largest_shared_mapping(p) for p in pids),
        "warm_s": warm_s, "downs": downs(ng),
    }
    if profile_to:
        profile(pids, profile_to, window)
    alive = ng.alive() and all(os.path.exists(f"/proc/{p}") for p in pids)
    ng.stop()
    if not alive:
        raise RuntimeError(f"nginx {name} died during the measurement: {ng.tail()}")
    res["rate"] = res["probes"] / res["seconds"]
    res["configured"] = n / INTERVAL_S
    res["achieved"] = res["rate"] / res["configured"] if check_type else 0.0
    probes = max(res["probes"], 1)
    res["us_per_probe"] = res["cpu_ns"] / 1e3 / probes
    res["us_user"] = user * 1e6 / CLK_TCK / probes
    res["us_sys"] = system * 1e6 / CLK_TCK / probes
    res["cpu_pct"] = res["cpu_ns"] / 1e9 / res["seconds"] * 100
    res["wakeups_per_probe"] = res["wakeups"] / probes
    return res


def profile(pids, path, seconds):
    """perf record of the workers (call graphs) for `seconds`, report to `path`."""
    data = path + ".data"
    p = spawn(["perf", "record", "-q", "-F", "2999", "-g", "-o", data, "-p", ",".join(map(str, pids)),
               "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait()
    with open(path, "w") as f:
        for sort in ("dso", "dso,symbol"):
            r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                                "-g", "none", "--percent-limit", "0.5"], capture_output=True, text=True)
            f.write(r.stdout)
    log(f"  perf profile written to {path}")


def kernel_floor(mode=(), count=4000, repeat=3):
    """floor.py against the backend (see there), median of `repeat` runs: system µs of one bare
    probe and of one wakeup; with mode ("keepalive",), of one request on a kept-alive connection."""
    here = os.path.dirname(os.path.abspath(__file__))
    addrs = ",".join(peer_addr(i) for i in range(1000))
    runs = [json.loads(subprocess.run([sys.executable, os.path.join(here, "floor.py"), str(BACKEND_PORT), str(count),
                                       addrs, *mode], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeat)]
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def run(cfg, shared):
    be = backend().start(wait_for=("127.0.0.1", BACKEND_PORT))
    floor = kernel_floor()
    log(f"  kernel floor: tcp {floor['tcp']:.1f} us, http {floor['http']:.1f} us system CPU per bare probe, "
        f"{floor['wakeup']:.1f} us per timer wakeup")
    results = []
    plan = [(n, 100) for n in cfg["pc_sizes"]] + [(n, n) for n in cfg["pc_one_sizes"]]
    for n, per in plan:
        for t in cfg["pc_types"]:
            layout = "spread" if per < n else "one"
            r = run_config(f"pc-{layout}-{n}-{t}", n, per, t, cfg["pc_warmup"], cfg["pc_window"])
            r["layout"] = layout
            results.append(r)
            log(f"  probe cost {layout:6} {n:5} {t:4}: {r['rate']:7.0f} probes/s ({r['achieved'] * 100:.1f} %), "
                f"{r['us_per_probe']:.2f} us/probe (user {r['us_user']:.1f}, sys {r['us_sys']:.1f}), "
                f"workers {r['cpu_pct']:.1f} % CPU, {r['wakeups_per_probe']:.2f} wakeups/probe")
            if layout == "spread" and t == "http" and n == max(cfg["pc_sizes"]):
                shared["rss_checked"] = r
    ka_rows, ka_details = keepalive_cost.run(cfg, run_config,
                                             lambda: kernel_floor(("keepalive",), count=10000, repeat=1))
    if cfg.get("profile"):
        n = max(cfg["pc_one_sizes"])
        for t in cfg["pc_types"]:
            path = os.path.join(cfg["out"], f"profile-one-{n}-{t}.txt")
            run_config(f"pc-profile-{t}", n, n, t, cfg["pc_warmup"], 1, profile_to=path)
    be.stop()

    def get(layout, n, t):
        return next((r for r in results if (r["layout"], r["n"], r["type"]) == (layout, n, t)), None)

    rows = []
    limits = {"http": 10.0, "tcp": 8.0}
    sizes, big = cfg["pc_sizes"], max(cfg["pc_one_sizes"])
    for t in cfg["pc_types"]:
        spread = [get("spread", n, t) for n in sizes]
        one = get("one", big, t)
        worst = max(r["us_per_probe"] for r in spread + [one])
        rows.append(Row(f"2. CPU per {t} probe, {'/'.join(f'{n // 1000}k' for n in sizes)} peers spread "
                        f"(100/upstream); {big // 1000}k in one upstream [kernel floor of a bare {t} probe "
                        "on this machine's loopback, system CPU only]",
                        " / ".join(f"{r['us_per_probe']:.1f}" for r in spread) + f"; {one['us_per_probe']:.1f} µs "
                        f"[floor {floor[t]:.0f} µs]", f"≤ {limits[t]:.0f} µs", worst <= limits[t]))
    growth = {t: get("spread", max(sizes), t)["us_per_probe"] / get("spread", min(sizes), t)["us_per_probe"]
              for t in cfg["pc_types"]}
    min_ach = min(r["achieved"] for r in results)
    rows.append(Row(f"2. Growth {min(sizes) // 1000}k→{max(sizes) // 1000}k peers: CPU per probe ratio "
                    "(1.00 = total CPU linear in peers); lowest achieved rate of any config",
                    ", ".join(f"{t} {g:.2f}×" for t, g in growth.items()) + f"; {min_ach * 100:.1f} %",
                    "ratio ≤ 1.25; ≥ 99 %", all(g <= 1.25 for g in growth.values()) and min_ach >= 0.99))
    for t in cfg["pc_types"]:
        one = get("one", big, t)
        rows.append(Row(f"2. Achieved probe rate, {big:,} peers in one upstream @1s, {t}",
                        f"{one['achieved'] * 100:.1f} % ({fmt(one['rate'], 0)}/s)", "≥ 99 %",
                        one["achieved"] >= 0.99))

    details = [
        "### 2. Cost per probe\n",
        f"worker_processes 2, interval=1s timeout=1s, peers 127.1.x.y:{BACKEND_PORT} served by one backend nginx "
        f"(1 worker) in the benchmark's network namespace. Warm-up {cfg['pc_warmup']} s, window "
        f"{cfg['pc_window']} s. Probes counted at the backend (stub_status accepts for tcp, requests for http). CPU = both workers' "
        "run time from /proc/PID/schedstat (ns); user and sys from utime and stime of /proc/PID/stat "
        "(10 ms ticks). Wakeups = the workers' voluntary context switches (returns from a sleeping "
        "epoll_wait).\n",
        f"Kernel floor on this machine (floor.py: system CPU of bare nonblocking loopback probes to the same "
        f"backend, 100 in flight at a time, median of 3 runs): tcp connect+close {floor['tcp']:.1f} µs, http "
        f"connect+request+status line+close {floor['http']:.1f} µs ({floor['http_wakeups']:.2f} wakeups per "
        f"probe); one 1 ms epoll_wait timer wakeup {floor['wakeup']:.1f} µs. On loopback the prober's CPU also pays "
        "for the backend side's TCP processing.\n",
        "| layout | type | peers | configured/s | achieved/s | achieved | workers' CPU (% of a core) "
        "| µs/probe | of which user | of which sys | wakeups per probe | worker VmRSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        details.append(
            f"| {r['layout']} | {r['type']} | {r['n']:,} | {r['configured']:,.0f} | {r['rate']:,.0f} | "
            f"{r['achieved'] * 100:.1f} % | {r['cpu_pct']:.1f} | {r['us_per_probe']:.1f} | {r['us_user']:.1f} | "
            f"{r['us_sys']:.1f} | {r['wakeups_per_probe']:.2f} | "
            f"{' / '.join(f'{k / 1024:.1f}' for k in r['rss_kb'])} |")
    details.append("")
    rows += ka_rows
    details += ka_details
    if cfg.get("profile"):
        details.append(f"perf profiles: {cfg['out']}/profile-one-*.txt\n")
    return rows, details
