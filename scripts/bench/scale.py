"""7. Scale: 100,000 peers, tcp probes at interval=10s, worker_processes 2, in two layouts (1,000
upstreams of 100, one upstream of 100,000). Per layout: the achieved probe rate, the status pages'
time against a static file of the same size, the worker RSS against the same upstreams without
the module, then flips vs no flips alternating (ABBA): 5 % of the peers change verdict every
second, by routes that make 2,500 peer addresses unreachable and 2,500 others reachable again
each second. In every window, the p99 of proxied requests, the worst delay of a paced request
loop against a `return 200` location on the same nginx (an event-loop stall shows there), the
same loop against a bare nginx (the floor), the verdict flips the module logged and the probes
that reached the backend. Last, `nginx -s reload` at 100,000 peers: time and memory.

Flips: peers are in 40 groups of 2,500 (peer i in group i % 40, group g = ten /24 blocks of
127.x.y.0). A routing rule ahead of the local table makes a group unreachable with one
`unreachable 127.x.y.0/24` route per block: the probe's connect() fails at once
(EHOSTUNREACH, a `refused` failure for the module; nginx logs `connect() ... failed`). With
fall=1 rise=1 each probe of a peer whose reachability changed is a verdict flip. 20 groups
(half the fleet) are down at any time; each second one more goes down and the oldest comes up,
so every peer changes state every 20 s and is probed twice meanwhile: 5,000 flips per second in
steady state, reached 10 s (one interval) after the flipping starts and gone 10 s after it stops.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

from lib import (Nginx, Row, WORK, _cmdline, children, cpu_ns, http_get, largest_shared_mapping, log, median, spawn,
                 status_kb)
from memory import zone_need
from probe_cost import BACKEND_PORT, accepts, backend, profile

N = 100_000
INTERVAL_S = 10
PORT = 8701  # module nginx: status pages, /pid, /static, proxied /app
STALL_PORT = 8702  # module nginx: `return 200`, reuseport so the loop's connections reach both workers
APP_PORT = 8711  # backend of the proxied requests
FLOOR_PORT = 8721  # bare nginx (no module): `return 200`, the floor of the stall loop
WRK_TIMEOUT_S = 2
BLOCK = 250  # peers per /24
GROUPS = 40
DOWN_GROUPS = 20
FLIPS_PER_S = N // GROUPS * 2  # one group goes down, one comes up, every second
SETTLE_S = INTERVAL_S + 1.5  # a change of reachability is seen by every peer's next probe (+ timeout)
RULE_PREF, TABLE = 57, 157  # routing rule ahead of the local table, and its table
LAYOUTS = (("spread", 100), ("one", N))

TRANSITION = re.compile(rb'is (?:DOWN|UP) after')

PACED_LUA = """-- paced wrk: each connection waits WRK_DELAY_MS between a response and its next request
local d = tonumber(os.getenv("WRK_DELAY_MS") or "1")
function delay() return d end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"p50":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f,'
    .. '"errors":%d,"non2xx":%d}\\n', summary.requests, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def blocks(n=N):
    return -(-n // BLOCK)


def addr(i, n=N):
    """Peer i's address: block i % blocks, host i // blocks, so a block (a /24) holds peers of
    many upstreams and the groups (i % 40) cut across every upstream."""
    b, h = i % blocks(n), i // blocks(n)
    return f"127.{1 + b // 250}.{b % 250}.{h + 1}"


def block_prefix(b):
    return f"127.{1 + b // 250}.{b % 250}.0/24"


def group_blocks(g, n=N):
    return [b for b in range(blocks(n)) if b % GROUPS == g]


# --------------------------------------------------------------------------------------------
# routes


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def routes_setup():
    """A rule ahead of the local table (which routes all of 127/8 to lo): our table's
    `unreachable` routes make a peer's connect() fail, the rest falls through to local."""
    ip("rule", "add", "pref", "100", "lookup", "local")
    ip("rule", "del", "pref", "0")
    ip("rule", "add", "pref", str(RULE_PREF), "lookup", str(TABLE))


def routes_teardown():
    ip("route", "flush", "table", str(TABLE), check=False)
    ip("rule", "del", "pref", str(RULE_PREF), check=False)
    if "lookup local" not in ip("rule", "show", "pref", "0", check=False).stdout:
        ip("rule", "add", "pref", "0", "lookup", "local", check=False)
    ip("rule", "del", "pref", "100", check=False)


def routes_clear():
    """Every peer reachable again: what a previous layout left unreachable is routed to lo."""
    ip("route", "flush", "table", str(TABLE), check=False)


def routes_apply(down, up):
    lines = [f"route replace unreachable {block_prefix(b)} table {TABLE}" for g in down for b in group_blocks(g)]
    lines += [f"route del {block_prefix(b)} table {TABLE}" for g in up for b in group_blocks(g)]
    if lines:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                       capture_output=True, check=True)


class Flipper:
    """Groups `step`..`step+19` (mod 40) are down. While flipping, each second the next group
    goes down and the oldest comes back up."""

    def __init__(self):
        self.step = 0
        self.on = threading.Event()
        self.quit = threading.Event()
        self.ticks = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def seed(self):
        routes_apply(range(DOWN_GROUPS), [])

    def start(self):
        self.thread.start()

    def loop(self):
        nxt = time.monotonic()
        while not self.quit.is_set():
            nxt += 1.0
            self.quit.wait(max(0.0, nxt - time.monotonic()))
            if self.on.is_set() and not self.quit.is_set():
                k = self.step
                routes_apply([(k + DOWN_GROUPS) % GROUPS], [k % GROUPS])
                self.step += 1
                self.ticks += 1

    def stop(self):
        self.quit.set()
        if self.thread.is_alive():
            self.thread.join(5)


# --------------------------------------------------------------------------------------------
# nginx instances


def upstreams(per, checked):
    out = []
    check = (f"        upstream_healthcheck type=tcp interval={INTERVAL_S}s timeout=1s fall=1 rise=1;\n"
             if checked else "")
    for u, lo in enumerate(range(0, N, per)):
        servers = "".join(f"        server {addr(i)}:{BACKEND_PORT};\n" for i in range(lo, min(N, lo + per)))
        out.append(f"    upstream u{u} {{\n{servers}{check}    }}\n")
    return "".join(out)


def fleet(name, per, checked):
    status = "        location = /status { upstream_healthcheck_status; }\n" if checked else ""
    http = (upstreams(per, checked)
            + f"    upstream app {{\n        server 127.0.0.1:{APP_PORT};\n        keepalive 32;\n    }}\n"
            f"    server {{\n        listen 127.0.0.1:{PORT} backlog=4096;\n{status}"
            "        location = /pid { return 200 \"$pid\\n\"; }\n"
            "        location /app {\n            proxy_pass http://app;\n            proxy_http_version 1.1;\n"
            "            proxy_set_header Connection \"\";\n        }\n"
            "        location / { return 200; }\n    }\n"
            f"    server {{\n        listen 127.0.0.1:{STALL_PORT} reuseport backlog=4096;\n"
            "        location / { return 200; }\n    }")
    return Nginx(name, http, workers=2, module=checked, connections=20000)


def app_backend():
    return Nginx("sc-app", f"    server {{\n        listen 127.0.0.1:{APP_PORT} backlog=4096;\n"
                 "        location / { return 200 \"ok\\n\"; }\n    }", workers=1)


def floor_nginx():
    """The bare nginx: the floor of the stall loop, and of the status pages (a static file of the
    page's size)."""
    ng = Nginx("sc-floor", f"    server {{\n        listen 127.0.0.1:{FLOOR_PORT} reuseport backlog=4096;\n"
               f"        location /static/ {{ alias {os.path.join(WORK, 'sc-floor', 'static')}/; }}\n"
               "        location / { return 200; }\n    }", workers=2)
    ng.static = os.path.join(ng.dir, "static")
    return ng


# --------------------------------------------------------------------------------------------
# measuring


def paced_start(url, seconds, conns, delay_ms):
    script = os.path.join(WORK, "paced.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(PACED_LUA)
    p = spawn(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s", "-s", script, url],
              stdout=subprocess.PIPE,
              stderr=subprocess.STDOUT, text=True, env=dict(os.environ, WRK_DELAY_MS=str(delay_ms)))
    p.seconds = seconds
    return p


def paced_result(p):
    out, _ = p.communicate(timeout=p.seconds + 60)
    m = re.search(r"^RESULT (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk: no result: {out[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / p.seconds
    if r["requests"] == 0:  # no answer at all: the loop was blocked for the whole window
        r.update(p50=float("inf"), p99=float("inf"), p999=float("inf"), max=float("inf"))
    elif r["errors"]:  # timed out: some request waited longer than the timeout
        r["max"] = max(r["max"], WRK_TIMEOUT_S * 1e3)
        if r["p99"] == 0:  # wrk recorded no latency for the few it answered
            r.update(p50=float("nan"), p99=float("nan"), p999=float("nan"))
    return r


def conns_per_worker(pids):
    """How many established connections to STALL_PORT each worker holds (ss -tnp)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{STALL_PORT} )"],
                         capture_output=True, text=True).stdout
    found = [int(x) for x in re.findall(r"pid=(\d+)", out)]
    return [found.count(p) for p in pids]


class Log:
    """The module nginx's error log: counts verdict transitions since the last reset; truncates
    the file so that it stays small (nginx writes with O_APPEND)."""

    def __init__(self, path):
        self.path = path

    def reset(self):
        os.truncate(self.path, 0)

    def transitions(self):
        with open(self.path, "rb") as f:
            data = f.read()
        return len(TRANSITION.findall(data)), data.count(b"connect() to ")


def curl(url, max_s):
    """(status, bytes, ms) of one GET; ms is inf when it did not end within max_s."""
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", str(max_s), "-w",
                        "%{http_code} %{size_download} %{time_total}", url],
                       capture_output=True, text=True, timeout=max_s + 30)
    code, size, total = r.stdout.split()
    return int(code), int(size), float(total) * 1e3 if r.returncode == 0 else float("inf")


def page_times(floor_ng, layout, repeats, max_s):
    """Median time of each status page, and of a static file of the same size from the bare nginx.
    A page that takes more than a second is fetched once (the module of today takes minutes)."""
    os.makedirs(floor_ng.static, exist_ok=True)
    pages = [(f, "") for f in ("text", "json", "prometheus")]
    if layout == "spread":
        pages += [(f, "&upstream=u0") for f in ("text", "json", "prometheus")]
    out = []
    for fmt_, q in pages:
        times, sizes, codes = [], [], set()
        for _ in range(repeats):
            code, size, ms = curl(f"http://127.0.0.1:{PORT}/status?format={fmt_}{q}", max_s)
            codes.add(code)
            times.append(ms)
            sizes.append(size)
            if ms > 1000:
                break
        size = max(sizes)
        name = f"{fmt_}{q.replace('&upstream=', '-')}"
        with open(os.path.join(floor_ng.static, name), "wb") as f:
            f.write(b"x" * size)
        floor = [curl(f"http://127.0.0.1:{FLOOR_PORT}/static/{name}", max_s)[2] for _ in range(repeats)]
        out.append({"format": fmt_, "one": bool(q), "bytes": size, "ms": median(times), "all_ms": times,
                    "floor_ms": median(floor), "codes": sorted(codes)})
        log(f"  {layout}: {name} page {size:,} B in {median(times):.1f} ms (static file of that size "
            f"{median(floor):.1f} ms)")
        os.unlink(os.path.join(floor_ng.static, name))
    return out


def window(ng, lg, flipper, seconds, flipping, label, profile_to=None):
    """One measurement window: proxied requests, stall loop on the module nginx and on the bare
    nginx, flips logged, probes at the backend, worker CPU."""
    lg.reset()
    ticks0, a0, t0 = flipper.ticks, accepts(), time.monotonic()
    ns0 = sum(cpu_ns(p) for p in ng.worker_pids)
    proxied = paced_start(f"http://127.0.0.1:{PORT}/app", seconds, 8, 2)
    stall = paced_start(f"http://127.0.0.1:{STALL_PORT}/", seconds, 8, 5)
    floor = paced_start(f"http://127.0.0.1:{FLOOR_PORT}/", seconds, 8, 5)
    time.sleep(0.5)
    spread = conns_per_worker(ng.worker_pids)
    if profile_to:
        profile(ng.worker_pids, profile_to, max(1, seconds - 2))
    res = {"proxied": paced_result(proxied), "stall": paced_result(stall), "floor": paced_result(floor)}
    a1, t1 = accepts(), time.monotonic()
    res["cpu_pct"] = (sum(cpu_ns(p) for p in ng.worker_pids) - ns0) / 1e9 / (t1 - t0) * 100
    flips, failed = lg.transitions()
    res.update(flipping=flipping, seconds=t1 - t0, flips_per_s=flips / (t1 - t0), failed_per_s=failed / (t1 - t0),
               reached_per_s=(a1 - a0 - 1) / (t1 - t0), steps=flipper.ticks - ticks0, spread=spread)
    log(f"  {label}: proxied p99 {res['proxied']['p99']:.2f} ms "
        f"({res['proxied']['rps']:.0f}/s); stall loop p99 {res['stall']['p99']:.2f} max {res['stall']['max']:.1f} ms "
        f"(bare nginx p99 {res['floor']['p99']:.2f} max {res['floor']['max']:.1f} ms); "
        f"{res['flips_per_s']:.0f} flips/s, {res['reached_per_s']:.0f} probes/s reached the backend, "
        f"workers {res['cpu_pct']:.0f} % CPU, loop connections per worker {spread}")
    return res


def is_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] in "ZX"
    except OSError:
        return True


def workers_of(master):
    return [p for p in children(master) if b"worker process" in _cmdline(p)]


def reload(ng, timeout):
    """SIGHUP; time until a new worker answers a new connection and until the old workers are gone;
    master and worker RSS before and after, master CPU spent."""
    master, old = ng.proc.pid, list(ng.worker_pids)
    before = {"master_kb": status_kb(master), "workers_kb": [status_kb(p) for p in old]}
    c0, t0 = cpu_ns(master), time.monotonic()
    os.kill(master, signal.SIGHUP)
    answered = gone = None
    new = []
    while time.monotonic() - t0 < timeout and (answered is None or gone is None):
        now = time.monotonic() - t0
        if answered is None:
            try:
                _, _, body = http_get("127.0.0.1", PORT, "/pid", timeout=1.0)
                if int(body) not in old:
                    answered = now
            except (OSError, ValueError):
                pass
        if gone is None and all(is_gone(p) for p in old):
            gone = now
        time.sleep(0.002)
    master_cpu_ms = (cpu_ns(master) - c0) / 1e6
    new = [p for p in workers_of(master) if p not in old]
    ng.worker_pids = new
    ng.leftover = [p for p in old if not is_gone(p)]  # old workers still running: stopped at the end
    time.sleep(1.0)
    after = {"master_kb": status_kb(master), "workers_kb": [status_kb(p) for p in new]}
    return {"answered_ms": answered * 1e3 if answered is not None else float("inf"),
            "gone_ms": gone * 1e3 if gone is not None else float("inf"),
            "master_cpu_ms": master_cpu_ms, "before": before, "after": after, "new_workers": len(new),
            "leftover": len(ng.leftover)}


def mb(kb):
    return kb / 1024


def plain(per, settle, reload_max_s):
    """The same upstreams without the module: worker RSS, and a reload (time, RSS after)."""
    ng = fleet(f"sc-plain-{per}", per, False)
    try:
        ng.start(wait_for=("127.0.0.1", PORT), timeout=120)
        time.sleep(settle)
        rss = [status_kb(p) for p in ng.worker_pids]
        rl = reload(ng, reload_max_s)
    finally:
        ng.worker_pids += getattr(ng, "leftover", [])
        ng.stop()
    return rss, rl


def profile_path(cfg, layout, what):
    """With --profile: where the perf report of the workers in this window goes."""
    return os.path.join(cfg["out"], f"profile-scale-{layout}-{what}.txt") if cfg.get("profile") else None


def run_layout(cfg, layout, per, floor_ng):
    res = {"layout": layout, "per": per}
    res["plain_rss_kb"], res["plain_reload"] = plain(per, 2, cfg["sc_reload_max_s"])
    ng = fleet(f"sc-{layout}", per, True)
    t0 = time.monotonic()
    ng.start(wait_for=("127.0.0.1", PORT), timeout=120)
    res["start_s"] = time.monotonic() - t0
    lg = Log(ng.error_log)
    flipper = Flipper()
    try:
        # Warm-up: first probes fall at random points of the first interval.
        time.sleep(INTERVAL_S + 1)
        # Every peer up, no flips: the achieved rate, and the request loops as they are without flips.
        res["steady"] = window(ng, lg, flipper, cfg["sc_rate_window"], False, f"{layout} all up",
                               profile_path(cfg, layout, "all-up"))
        res["rate"] = res["steady"]["reached_per_s"]
        res["achieved"] = res["rate"] / (N / INTERVAL_S)
        res["rss_kb"] = [status_kb(p) for p in ng.worker_pids]
        res["rss_shmem_kb"] = [status_kb(p, "RssShmem") for p in ng.worker_pids]
        res["zone_mapping"] = max(largest_shared_mapping(p) for p in ng.worker_pids)
        log(f"  {layout}: achieved {res['achieved'] * 100:.1f} % ({res['rate']:.0f} probes/s), "
            f"RSS {[round(mb(k), 1) for k in res['rss_kb']]} MB "
            f"(without the module {[round(mb(k), 1) for k in res['plain_rss_kb']]} MB), started in "
            f"{res['start_s']:.1f} s")
        res["pages"] = page_times(floor_ng, layout, cfg["sc_page_repeats"], cfg["sc_page_max_s"])
        res["rss_pages_kb"] = [status_kb(p) for p in ng.worker_pids]
        # Reload with every peer up and no flips; the settling below covers its aftermath.
        lg.reset()
        res["reload"] = reload(ng, cfg["sc_reload_max_s"])
        r = res["reload"]
        log(f"  {layout}: reload: new worker answered after {r['answered_ms']:.0f} ms, old workers gone after "
            f"{r['gone_ms']:.0f} ms, master {r['master_cpu_ms']:.0f} ms CPU; master RSS "
            f"{mb(r['before']['master_kb']):.1f} -> {mb(r['after']['master_kb']):.1f} MB, workers "
            f"{[round(mb(k), 1) for k in r['before']['workers_kb']]} -> "
            f"{[round(mb(k), 1) for k in r['after']['workers_kb']]} MB")
        # Half the fleet down, then quiet until every peer has been probed since.
        flipper.seed()
        flipper.start()
        time.sleep(SETTLE_S)
        res["windows"] = []
        state = False
        for i, flipping in enumerate(c == "B" for c in cfg["sc_pattern"]):
            if flipping != state:
                if flipping:
                    flipper.on.set()
                else:
                    flipper.on.clear()
                state = flipping
                time.sleep(SETTLE_S)
            first_flips = flipping and not any(w["flipping"] for w in res["windows"])
            res["windows"].append(window(ng, lg, flipper, cfg["sc_window"], flipping,
                                         f"{layout} {'flips' if flipping else 'quiet'}",
                                         profile_path(cfg, layout, "flips") if first_flips else None))
        flipper.on.clear()
        res["rss_end_kb"] = [status_kb(p) for p in ng.worker_pids]
        alive = ng.alive()
    finally:
        flipper.stop()
        ng.worker_pids += getattr(ng, "leftover", [])  # stop() kills what outlives the master
        ng.stop(grace=10)
    if not alive:
        raise RuntimeError(f"nginx sc-{layout} died: {ng.tail()}")
    return res


def run(cfg):
    zone = {per: zone_need(N, per)[0] for _, per in LAYOUTS}
    log(f"  zone for {N:,} peers: {zone} bytes")
    be = backend().start(wait_for=("127.0.0.1", BACKEND_PORT))
    app = app_backend().start(wait_for=("127.0.0.1", APP_PORT))
    fl = floor_nginx().start(wait_for=("127.0.0.1", FLOOR_PORT))
    routes_setup()
    try:
        results = []
        for layout, per in LAYOUTS:
            routes_clear()
            results.append(run_layout(cfg, layout, per, fl))
    finally:
        routes_teardown()
        for n in (fl, app, be):
            n.stop()
    return report(cfg, zone, results)


# --------------------------------------------------------------------------------------------
# the report


def ms(x, digits=1):
    """A time in ms for the table; inf = never answered within the limit."""
    if x == float("inf"):
        return "no answer"
    if x != x:
        return "n/a"
    return f"{x:,.{digits}f} ms"


def page_txt(p, cfg):
    if p["ms"] == float("inf"):
        return f"no answer in {cfg['sc_page_max_s']} s"
    return f"{ms(p['ms'], 0)} ({p['bytes'] / 1e6:.1f} MB) [{ms(p['floor_ms'], 0)}]"


def stall_txt(x, timeouts):
    if timeouts and x != float("inf"):
        return f"≥ {ms(x, 0)} ({timeouts:,} requests timed out)"
    return ms(x)


def summarise(r):
    w = r["windows"]
    quiet, flips = [x for x in w if not x["flipping"]], [x for x in w if x["flipping"]]
    s = {}
    s["quiet_p99"] = median([x["proxied"]["p99"] for x in quiet])
    s["flip_p99"] = median([x["proxied"]["p99"] for x in flips])
    s["ratio"] = s["flip_p99"] / s["quiet_p99"]
    # Paired in time: each flip window with the quiet window next to it (ABBA).
    s["paired"] = sorted(f["proxied"]["p99"] / q["proxied"]["p99"]
                         for q, f in zip(quiet, flips))
    s["stall_max"] = max(x["stall"]["max"] for x in flips)
    s["stall_timeouts"] = sum(x["stall"]["errors"] for x in flips)
    s["stall_timeouts_quiet"] = sum(x["stall"]["errors"] for x in quiet)
    s["steady_max"], s["steady_timeouts"] = r["steady"]["stall"]["max"], r["steady"]["stall"]["errors"]
    s["stall_p99"] = median([x["stall"]["p99"] for x in flips])
    s["stall_max_quiet"] = max(x["stall"]["max"] for x in quiet)
    s["floor_max"] = max(x["floor"]["max"] for x in flips)
    s["floor_p99"] = median([x["floor"]["p99"] for x in flips])
    s["flips_per_s"] = median([x["flips_per_s"] for x in flips])
    s["quiet_flips_per_s"] = max(x["flips_per_s"] for x in quiet)
    s["errors"] = sum(x[k]["errors"] + x[k]["non2xx"] for x in w for k in ("proxied", "stall"))
    s["cpu_quiet"] = median([x["cpu_pct"] for x in quiet])
    s["cpu_flips"] = median([x["cpu_pct"] for x in flips])
    s["reached_quiet"] = median([x["reached_per_s"] for x in quiet])
    s["reached_flips"] = median([x["reached_per_s"] for x in flips])
    return s


def report(cfg, zone, results):
    rows = []
    get = {r["layout"]: r for r in results}
    rows.append(Row("7. 100k peers, tcp @10s, 2 workers: achieved probe rate, 1,000 upstreams of 100; one of 100,000",
                    "; ".join(f"{get[k]['achieved'] * 100:.1f} % ({get[k]['rate']:,.0f}/s)" for k in ("spread", "one")),
                    "≥ 99 %", all(r["achieved"] >= 0.99 for r in results)))
    for fmt_, limit in (("text", 150), ("json", 150), ("prometheus", 400)):
        ps = [(k, next(p for p in get[k]["pages"] if p["format"] == fmt_ and not p["one"])) for k in ("spread", "one")]
        rows.append(Row(f"7. {fmt_} status page, whole fleet of 100k, 1,000×100; 1×100,000 "
                        "[static file of the same size from a bare nginx]",
                        "; ".join(page_txt(p, cfg) for _, p in ps),
                        f"≤ {limit} ms", all(p["ms"] <= limit for _, p in ps)))
    ones = [p for p in get["spread"]["pages"] if p["one"]]
    rows.append(Row("7. status page of one upstream of 100 (?upstream=u0 among 1,000), text / json / prometheus "
                    "[static file of the same size]",
                    " / ".join(ms(p["ms"]) for p in ones) + " [" + " / ".join(ms(p["floor_ms"]) for p in ones) + "]",
                    "≤ 5 ms", all(p["ms"] <= 5 for p in ones)))
    sums = {r["layout"]: summarise(r) for r in results}
    rows.append(Row("7. p99 of proxied requests with 5 % of the peers flipping per second vs the same nginx "
                    "without flips (paced wrk, ABBA windows), 1,000×100; 1×100,000",
                    "; ".join(f"{s['ratio']:.2f}× ({ms(s['flip_p99'], 2)} vs {ms(s['quiet_p99'], 2)}; "
                              f"{s['flips_per_s']:,.0f} flips/s of the {FLIPS_PER_S:,} intended, "
                              f"{s['quiet_flips_per_s']:,.0f}/s in the windows "
                              "without)" for s in (sums["spread"], sums["one"])),
                    "≤ 1.10×", all(s["ratio"] <= 1.10 for s in sums.values())))
    rows.append(Row("7. worst delay of a paced `return 200` loop on the same nginx during the flips (event-loop "
                    "stall), 1,000×100; 1×100,000 [same loop against a bare nginx in the same windows]",
                    "; ".join(f"max {stall_txt(s['stall_max'], s['stall_timeouts'])}, p99 {ms(s['stall_p99'], 2)} "
                              f"[bare {ms(s['floor_max'])} / {ms(s['floor_p99'], 2)}] (all up, no flips: max "
                              f"{stall_txt(s['steady_max'], s['steady_timeouts'])})"
                              for s in (sums["spread"], sums["one"])),
                    "≤ 10 ms", all(s["stall_max"] <= 10 for s in sums.values())))
    rows.append(Row("7. shared zone bytes per peer at 100k (zone size `nginx -t` asks for / peers), "
                    "1,000×100; 1×100,000",
                    "; ".join(f"{zone[per] / N:.1f} B" for _, per in LAYOUTS), "≤ 128 B",
                    all(zone[per] / N <= 128 for _, per in LAYOUTS)))

    def growth(r, key):
        # After a reload, against the workers of the plain nginx after its reload: both inherit
        # the master's memory, which holds the old configuration too for a while.
        base = r["plain_reload"]["after"]["workers_kb"] if key == "rss_end_kb" else r["plain_rss_kb"]
        return (sum(r[key]) / len(r[key]) - sum(base) / len(base)) / 1024

    rss_keys = ("rss_kb", "rss_pages_kb", "rss_end_kb")
    rows.append(Row("7. worker RSS growth at 100k vs the same upstreams without the module: after warm-up; "
                    "after the status pages; after reload and flips, 1,000×100 | 1×100,000",
                    " | ".join("; ".join(f"{growth(r, k):.1f}" for k in rss_keys) + " MB" for r in results),
                    "≤ 20 MB", all(growth(r, k) <= 20 for r in results for k in rss_keys)))
    def reload_txt(rl):
        return (f"{ms(rl['answered_ms'], 0)}; {ms(rl['gone_ms'], 0)}; {mb(rl['before']['master_kb']):.0f} → "
                f"{mb(rl['after']['master_kb']):.0f} MB")

    rows.append(Row("7. reload at 100k (`nginx -s reload`, every peer up): a new worker answers; the old workers are "
                    f"gone (waited up to {cfg['sc_reload_max_s']} s); master RSS before → after, "
                    "1,000×100 | 1×100,000 "
                    "[same nginx without the module]",
                    " | ".join(f"{reload_txt(r['reload'])} [{reload_txt(r['plain_reload'])}]" for r in results),
                    "(info: report)", None))

    details = [
        "### 7. Scale: 100,000 peers\n",
        f"{N:,} peers 127.x.y.z:{BACKEND_PORT}, served by one backend nginx (1 worker) listening on 0.0.0.0; "
        f"`upstream_healthcheck type=tcp interval={INTERVAL_S}s timeout=1s fall=1 rise=1`, worker_processes 2. "
        "Layouts: 1,000 upstreams of 100 (`spread`) and one upstream of 100,000 (`one`). "
        f"Achieved rate: connections the backend accepted (stub_status) over {cfg['sc_rate_window']} s after "
        f"{INTERVAL_S + 1} s of warm-up, every peer up, against {N // INTERVAL_S:,}/s configured, with the request "
        "loops described below running (window 0 of the table below).\n",
        "Status pages: curl time_total, median of "
        f"{cfg['sc_page_repeats']} fetches each, every peer up; the floor is the same curl fetching a static "
        "file of the page's size from the bare nginx (no module, 2 workers), in the same run. A page that takes "
        f"over a second is fetched once; curl gives up after {cfg['sc_page_max_s']} s (no answer).\n",
        "| layout | page | bytes | median ms | all ms | static file ms |", "|---|---|---|---|---|---|",
    ]
    for r in results:
        for p in r["pages"]:
            details.append(f"| {r['layout']} | {p['format']}{' ?upstream=u0' if p['one'] else ''} | {p['bytes']:,} | "
                           f"{p['ms']:.1f} | {', '.join(f'{x:.1f}' for x in p['all_ms'])} | {p['floor_ms']:.1f} |")
    details += [
        "",
        "Flips vs no flips: " + (__doc__.split("Flips: ", 1)[1].replace("\n", " ").strip()) + " "
        f"Windows of {cfg['sc_window']} s in the order {cfg['sc_pattern']} (A quiet, B flips), each after "
        f"{SETTLE_S:.1f} s when the state changed. In each window: proxied = `wrk -t1 -c8` to `/app` (proxy_pass "
        f"to a one-worker nginx, keepalive), paced by a Lua delay() of 2 ms per connection, so the load does not "
        "saturate the two cores and the latency is the service time; stall loop = the same paced wrk (8 "
        "connections, 5 ms delay) to a `return 200` server with `reuseport` on the module nginx (connections "
        "per worker in the table: both workers are watched), its max is the worst event-loop stall a request met; "
        "bare = the same loop against an nginx without the module (2 workers). Flips = verdict transitions the "
        "module logged (`is DOWN after` / `is UP after`) per second; reached = probes the backend accepted per "
        "second (half the fleet is unreachable, so 5,000/s is the full rate; 10,000/s in window 0). "
        "`no answer`: not one request was answered in the window; wrk gives up on a request after "
        f"{WRK_TIMEOUT_S} s.\n",
        "| layout | window | flips/s | reached/s | workers CPU % | proxied req/s | proxied p50 / p99 / p99.9 / max ms "
        "| stall loop p99 / max ms | bare p99 / max ms | loop conns per worker | failed requests (proxied + loop) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, x in enumerate([r["steady"]] + r["windows"]):
            p, s, f = x["proxied"], x["stall"], x["floor"]
            details.append(
                f"| {r['layout']} | {i} {'all up' if i == 0 else 'flips' if x['flipping'] else 'quiet'} | "
                f"{x['flips_per_s']:,.0f} | "
                f"{x['reached_per_s']:,.0f} | {x['cpu_pct']:.0f} | {p['rps']:,.0f} | {p['p50']:.2f} / {p['p99']:.2f} / "
                f"{p['p999']:.2f} / {p['max']:.1f} | {s['p99']:.2f} / {s['max']:.1f} | "
                f"{f['p99']:.2f} / {f['max']:.1f} | "
                f"{x['spread']} | {p['errors'] + p['non2xx'] + s['errors'] + s['non2xx']} |")
    details.append("")
    for r in results:
        s = sums[r["layout"]]
        details.append(
            f"`{r['layout']}`: p99 ratio flips/quiet {s['ratio']:.3f} "
            f"(pairs {', '.join(f'{x:.2f}' for x in s['paired'])}); "
            f"worst stall-loop delay {s['stall_max']:.1f} ms with flips, {s['stall_max_quiet']:.1f} ms without; "
            f"workers' CPU {s['cpu_quiet']:.0f} % quiet vs {s['cpu_flips']:.0f} % with flips (of one core, both "
            f"workers); probes reaching the backend {s['reached_quiet']:,.0f}/s quiet vs {s['reached_flips']:,.0f}/s "
            f"with flips; flips logged in quiet windows at most {s['quiet_flips_per_s']:.0f}/s.\n")
    details += ["Memory and reload:\n",
                "| layout | zone bytes (`nginx -t`) | zone mapping in the workers "
                "| worker VmRSS MB without the module (after its reload) "
                "| with, after warm-up (RssShmem) | after the status pages | new workers after the flips "
                "| master VmRSS MB before → after reload "
                "| workers before → after | reload: new worker answers / old gone / master CPU [without the module] "
                "| started in |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rl = r["reload"]
        details.append(
            f"| {r['layout']} | {zone[r['per']]:,} ({zone[r['per']] / N:.1f} B/peer) | {r['zone_mapping']:,} | "
            f"{' / '.join(f'{mb(k):.1f}' for k in r['plain_rss_kb'])} "
            f"({' / '.join(f'{mb(k):.1f}' for k in r['plain_reload']['after']['workers_kb'])}) | "
            f"{' / '.join(f'{mb(k):.1f}' for k in r['rss_kb'])} "
            f"({' / '.join(f'{mb(k):.1f}' for k in r['rss_shmem_kb'])}) | "
            f"{' / '.join(f'{mb(k):.1f}' for k in r['rss_pages_kb'])} | "
            f"{' / '.join(f'{mb(k):.1f}' for k in r['rss_end_kb'])} | "
            f"{mb(rl['before']['master_kb']):.1f} → {mb(rl['after']['master_kb']):.1f} | "
            f"{' / '.join(f'{mb(k):.1f}' for k in rl['before']['workers_kb'])} → "
            f"{' / '.join(f'{mb(k):.1f}' for k in rl['after']['workers_kb'])} | "
            f"{ms(rl['answered_ms'], 0)} / {ms(rl['gone_ms'], 0)} / {ms(rl['master_cpu_ms'], 0)} "
            f"[{ms(r['plain_reload']['answered_ms'], 0)} / {ms(r['plain_reload']['gone_ms'], 0)} / "
            f"{ms(r['plain_reload']['master_cpu_ms'], 0)}] | {r['start_s']:.1f} s |")
    details += ["", "Reload: SIGHUP to the master (what `nginx -s reload` sends) after the status pages, every peer "
                "up, no flips; answered = first new connection served by a worker that is not an old one "
                "(`/pid`); gone "
                "= every old worker exited (old workers still running when the wait ended: "
                + ", ".join(f"{r['layout']} {r['reload']['leftover']}" for r in results)
                + "; they are killed at the end of the layout). RSS of the new workers 1 s after.\n"]
    return rows, details
