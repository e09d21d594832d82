"""3. Detection: interval=200ms fall=2 rise=2 timeout=300ms, worker_processes 2. A backend is made
to refuse connections (listener closed, open connections reset) or to hang (accepts, never
answers); we measure the time until the status page shows DOWN (polled every 5 ms, several
requests at a time on fresh connections, which reuseport spreads over both workers; the X-Worker
header says which answered)
and the time until proxied traffic stops reaching it (a client sends a request every 2 ms; the
X-Upstream and X-Worker headers say where each one went). Then the backend recovers and we
measure the time until UP (rise=2) and until traffic reaches it again from every worker.
Trials alternate refused/hang; each starts at a random phase of the probe schedule."""

import asyncio
import os
import random
import re
import subprocess
import sys
import time

from lib import WORK, Nginx, Row, log, median, spawn

PORT = 8301
PEERS = (9301, 9302, 9303)
VICTIM = PEERS[-1]
INTERVAL, FALL, RISE, TIMEOUT = 200, 2, 2, 300
CLIENT_PERIOD, POLL_PERIOD, POLL_BURST = 0.002, 0.005, 4
PROXY_READ_TIMEOUT = 1.0


def nginx():
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=0;\n" for p in PEERS)
    http = (
        f"    upstream det {{\n{servers}"
        f"        upstream_healthcheck type=http interval={INTERVAL}ms fall={FALL} rise={RISE} "
        f"timeout={TIMEOUT}ms;\n    }}\n"
        f"    server {{\n        listen 127.0.0.1:{PORT} reuseport backlog=4096;\n"
        "        location / {\n            proxy_pass http://det;\n            proxy_next_upstream off;\n"
        f"            proxy_connect_timeout 1s;\n            proxy_read_timeout {PROXY_READ_TIMEOUT:.0f}s;\n"
        "            add_header X-Worker $pid always;\n            add_header X-Upstream $upstream_addr always;\n"
        "        }\n"
        "        location = /status { upstream_healthcheck_status; add_header X-Worker $pid always; }\n    }"
    )
    # max_fails=0: nginx's passive checks stay out of the way, only the module takes peers out.
    return Nginx("det", http, workers=2, module=True)


class Recorder:
    """Fires requests at nginx on a fixed schedule and keeps what came back."""

    def __init__(self):
        self.traffic = []  # (t_send, status, worker, upstream)
        self.polls = []  # (t_recv, worker, victim state 'up'/'DOWN'/None)
        self.tasks = set()

    async def request(self, path):
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT), 2)
            w.write(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            data = await asyncio.wait_for(r.read(), PROXY_READ_TIMEOUT + 2)
            w.close()
        except (OSError, asyncio.TimeoutError):
            return t, time.monotonic(), 0, {}, b""
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        return t, time.monotonic(), int(lines[0].split()[1]), hdrs, body

    async def client(self):
        t_send, status, hdrs, _ = await self._req("/")
        self.traffic.append((t_send, status, hdrs.get("x-worker"), hdrs.get("x-upstream", "")))

    async def poll(self):
        """POLL_BURST status requests at once, on fresh connections, so that every worker answers."""
        await asyncio.gather(*(self.poll_one() for _ in range(POLL_BURST)))

    async def poll_one(self):
        _, t_recv, status, hdrs, body = await self.request("/status")
        m = re.search(rf"127\.0\.0\.1:{VICTIM} (up|DOWN)".encode(), body)
        self.polls.append((t_recv, hdrs.get("x-worker"), m.group(1).decode() if m else None))

    async def _req(self, path):
        t, _, status, hdrs, body = await self.request(path)
        return t, status, hdrs, body

    async def every(self, period, fn):
        nxt = time.monotonic()
        while True:
            task = asyncio.create_task(fn())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))


class Control:
    """The backend process and its command channel."""

    def __init__(self, probe_log):
        here = os.path.dirname(os.path.abspath(__file__))
        self.p = spawn([sys.executable, os.path.join(here, "backend.py"), "--probe-log", probe_log, *map(str, PEERS)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError("backend.py did not start")

    async def set(self, mode):
        """Switches the victim; returns the time the switch took effect (after the ack)."""
        self.p.stdin.write(f"{VICTIM} {mode}\n")
        self.p.stdin.flush()
        await asyncio.get_running_loop().run_in_executor(None, self.p.stdout.readline)
        return time.monotonic()


async def wait_until(pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


def first_per_worker(polls, since, state, workers):
    out = {}
    for t, w, s in polls:
        if t >= since and s == state and w in workers and w not in out:
            out[w] = t - since
    return out


async def trial(rec, ctl, mode, workers, t_mark):
    """One outage and recovery of the victim; returns a dict of times in ms."""
    victim = f":{VICTIM}"
    # Steady state: the victim is up on every worker's status page and takes traffic.
    ok = await wait_until(lambda: len(first_per_worker(rec.polls, t_mark(), "up", workers)) == len(workers), 5)
    if not ok:
        raise RuntimeError("victim not up before the trial")
    await asyncio.sleep(random.uniform(0.25, 0.25 + INTERVAL / 1000))  # random phase vs the probes
    t0 = time.monotonic()
    await ctl.set(mode)
    await wait_until(lambda: len(first_per_worker(rec.polls, t0, "DOWN", workers)) == len(workers), 4)
    # Let requests that went to the victim come back (a hung one after proxy_read_timeout), then
    # recover at a random phase of the probe schedule (DOWN is seen right after a probe).
    await asyncio.sleep(0.4 + (PROXY_READ_TIMEOUT + 0.3 if mode == "hang" else 0))
    await asyncio.sleep(random.uniform(0, INTERVAL / 1000))
    down = first_per_worker(rec.polls, t0, "DOWN", workers)
    stop = {w: max([t - t0 for t, _, ww, up in rec.traffic if t >= t0 and ww == w and victim in up], default=0.0)
            for w in workers}

    t1 = await ctl.set("normal")

    def resumed():
        return {w: min([t - t1 for t, st, ww, up in rec.traffic if t >= t1 and ww == w and victim in up
                        and st == 200], default=None) for w in workers}

    await wait_until(lambda: len(first_per_worker(rec.polls, t1, "up", workers)) == len(workers)
                     and all(v is not None for v in resumed().values()), 4)
    up = first_per_worker(rec.polls, t1, "up", workers)
    back = resumed()
    ms = lambda d: [v * 1000 for v in d.values() if v is not None]  # noqa: E731
    res = {
        "mode": mode, "t0": t0, "t1": t1,
        "down_first": min(ms(down), default=float("nan")), "down_all": max(ms(down), default=float("nan")),
        "down_workers": len(down),
        "stop_all": max(ms(stop), default=float("nan")),
        "up_first": min(ms(up), default=float("nan")), "up_all": max(ms(up), default=float("nan")),
        "back_all": max(ms(back), default=float("nan")) if len(ms(back)) == len(workers) else float("nan"),
    }
    # Forget what the next trial does not need.
    keep = time.monotonic() - 0.05
    rec.traffic = [x for x in rec.traffic if x[0] >= keep]
    rec.polls = [x for x in rec.polls if x[0] >= keep]
    return res


def probe_phases(results, probe_log):
    """Adds to each trial, from the victim's log of probe arrivals: when the first probe that met
    the failure started (phase) and how long after it the status page showed DOWN (reaction); the
    same for the recovery. A refused probe never arrives: its start is one interval after the
    last probe that did."""
    with open(probe_log) as f:
        arrivals = [(float(t), mode) for t, port, mode in (line.split() for line in f) if int(port) == VICTIM]
    for r in results:
        t0, t1 = r["t0"], r["t1"]
        if r["mode"] == "hang":
            first = min((t for t, m in arrivals if t >= t0 and m == "hang"), default=None)
        else:
            last = max((t for t, m in arrivals if t < t0), default=None)
            first = last + INTERVAL / 1000 if last is not None else None
        ok = min((t for t, m in arrivals if t >= t1 and m == "normal"), default=None)
        nan = float("nan")
        r["fail_phase"] = (first - t0) * 1000 if first is not None else nan
        r["fail_reaction"] = r["down_first"] - r["fail_phase"]
        r["rise_phase"] = (ok - t1) * 1000 if ok is not None else nan
        r["rise_reaction"] = r["up_first"] - r["rise_phase"]


def run(cfg):
    probe_log = os.path.join(WORK, "det-probes.log")
    if os.path.exists(probe_log):
        os.remove(probe_log)
    ctl = Control(probe_log)
    ng = nginx().start(wait_for=("127.0.0.1", PORT))
    try:
        workers = {str(p) for p in ng.worker_pids}
        time.sleep(1.0)  # first probes: every peer up
        results = asyncio.run(main_async(ctl, cfg["det_trials"], workers))
    finally:
        ng.stop()
    probe_phases(results, probe_log)
    return report(results, cfg)


async def main_async(ctl, trials, workers):
    rec = Recorder()
    loops = [asyncio.create_task(rec.every(CLIENT_PERIOD, rec.client)),
             asyncio.create_task(rec.every(POLL_PERIOD, rec.poll))]
    results = []
    try:
        start = time.monotonic()
        for i in range(2 * trials):
            mode = "refuse" if i % 2 == 0 else "hang"
            r = await trial(rec, ctl, mode, workers, lambda: time.monotonic() - 0.1)
            results.append(r)
            log(f"  detection trial {i // 2 + 1}/{trials} {mode:6}: DOWN {r['down_first']:.0f}/{r['down_all']:.0f} ms, "
                f"traffic stop {r['stop_all']:.0f} ms, UP {r['up_all']:.0f} ms, traffic back {r['back_all']:.0f} ms")
        log(f"  detection: {len(results)} trials in {time.monotonic() - start:.0f} s")
    finally:
        for t in loops:
            t.cancel()
        for t in list(rec.tasks):
            t.cancel()
        await asyncio.sleep(0.05)
    return results


def report(results, cfg):
    def col(mode, key):
        return [r[key] for r in results if r["mode"] == mode]

    def summary(mode, key):
        xs = col(mode, key)
        return median(xs), max(xs)

    def fmt_ms(m):
        return f"median {m[0]:.0f} ms, max {m[1]:.0f} ms"

    rows = []
    base_med, base_max = (FALL - 0.5) * INTERVAL + 20, FALL * INTERVAL + 50
    for mode, label, extra in (("refuse", "refused", 0), ("hang", "hang", TIMEOUT)):
        med_t, max_t = base_med + extra, base_max + extra
        target = f"median ≤ {med_t:.0f} ms, max ≤ {max_t:.0f} ms"
        first, allw, stop = summary(mode, "down_first"), summary(mode, "down_all"), summary(mode, "stop_all")
        rows.append(Row(f"3. Detection ({label}): status page DOWN on every worker (first worker median "
                        f"{first[0]:.0f} ms)", fmt_ms(allw), target, allw[0] <= med_t and allw[1] <= max_t))
        rows.append(Row(f"3. Detection ({label}): proxied traffic stops reaching it, every worker",
                        fmt_ms(stop), target, stop[0] <= med_t and stop[1] <= max_t))
    rmed, rmax = (RISE - 0.5) * INTERVAL + 20, RISE * INTERVAL + 50
    up, back = summary("refuse", "up_all"), summary("refuse", "back_all")
    rows.append(Row("3. Recovery after refused (rise=2): UP on every worker; traffic back from every worker",
                    f"{fmt_ms(up)}; {fmt_ms(back)}", f"median ≤ {rmed:.0f} ms, max ≤ {rmax:.0f} ms",
                    max(up[0], back[0]) <= rmed and max(up[1], back[1]) <= rmax))
    up_h, back_h = summary("hang", "up_all"), summary("hang", "back_all")
    rows.append(Row("3. Recovery after hang (rise=2): UP on every worker; traffic back",
                    f"{fmt_ms(up_h)}; {fmt_ms(back_h)}",
                    f"(info; + timeout for the probe in flight: ≤ {rmed + TIMEOUT:.0f} / {rmax + TIMEOUT:.0f} ms)", None))

    details = [
        "### 3. Detection\n",
        f"interval={INTERVAL}ms fall={FALL} rise={RISE} timeout={TIMEOUT}ms type=http, worker_processes 2, "
        f"{cfg['det_trials']} trials per mode, alternating. Peers `max_fails=0` (passive checks off), "
        "`proxy_next_upstream off`. Times from the moment the backend refuses / hangs (or recovers). "
        f"Status polled every 5 ms, {POLL_BURST} requests at a time on fresh connections (reuseport spreads them "
        "over the workers; X-Worker says which answered); client request every 2 ms (traffic resolution ≈ 3 peers × 2 workers × 2 ms). "
        "'traffic stops' = send time of the last request routed to the peer, per worker, maximum over workers.\n",
        "'first bad probe' = when the first probe that met the failure started (from the backend's log of probe "
        "arrivals; for refused: one interval after the last probe that arrived), 'reaction' = DOWN (first worker) "
        "minus that; likewise 'first good probe' and 'reaction' for the recovery (UP minus the first probe that "
        "arrived after it).\n",
        "| trial | mode | first bad probe ms | DOWN first worker ms | reaction ms | DOWN all workers ms | "
        "traffic stops ms | first good probe ms | UP all ms | reaction ms | traffic back ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results):
        details.append(f"| {i // 2 + 1} | {r['mode']} | {r['fail_phase']:.0f} | {r['down_first']:.0f} | "
                       f"{r['fail_reaction']:.0f} | {r['down_all']:.0f} | {r['stop_all']:.0f} | "
                       f"{r['rise_phase']:.0f} | {r['up_all']:.0f} | {r['rise_reaction']:.0f} | {r['back_all']:.0f} |")
    details.append("")
    for mode in ("refuse", "hang"):
        details.append(f"Medians, {mode}: first bad probe {median(col(mode, 'fail_phase')):.0f} ms, reaction "
                       f"{median(col(mode, 'fail_reaction')):.0f} ms; recovery: first good probe "
                       f"{median(col(mode, 'rise_phase')):.0f} ms, reaction {median(col(mode, 'rise_reaction')):.0f} ms.\n")
    return rows, details
