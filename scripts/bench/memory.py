"""5. Memory: shared-zone bytes per peer (the size `nginx -t` says the zone needs, at two peer
counts) and worker RSS growth at 10,000 checked peers vs the same config without the module."""

import re

from lib import Nginx, Row, log
from probe_cost import backend, peers_http, run_config


def zone_test(n, per_upstream, size_k):
    http = f"    upstream_healthcheck_zone {size_k}k;\n" + peers_http(n, per_upstream, "http")
    return Nginx(f"mem-t-{n}-{per_upstream}", http, module=True, connections=20000).test()


def zone_need(n, per_upstream):
    """Bytes of zone the module needs for n peers: `nginx -t` with the smallest zone the directive
    takes (32k) fails naming the size needed; failing that, bisect the smallest size it accepts."""
    ok, out = zone_test(n, per_upstream, 32)
    m = re.search(r"at least (\d+)k is needed", out)
    if m:
        return int(m.group(1)) * 1024, "message"
    lo, hi = 0, 32  # KiB: lo fails (or is below the minimum), hi passes
    if not ok:
        hi = 64
        while not zone_test(n, per_upstream, hi)[0]:
            lo, hi = hi, hi * 2
            if hi > 1 << 20:
                raise RuntimeError(f"nginx -t fails at any zone size for {n} peers: {out[-300:]}")
    while hi - lo > 4:
        mid = (lo + hi) // 2
        if mid >= 32 and zone_test(n, per_upstream, mid)[0]:
            hi = mid
        else:
            lo = mid
    return hi * 1024, "bisection"


def run(cfg, shared):
    found = {(n, per): zone_need(n, per) for n, per in ((1000, 100), (10000, 100), (10, 10), (10000, 10000))}
    need = {k: v[0] for k, v in found.items()}
    spread = (need[(10000, 100)] - need[(1000, 100)]) / 9000
    one = (need[(10000, 10000)] - need[(10, 10)]) / 9990
    log(f"  zone: {need}, {spread:.1f} B/peer spread, {one:.1f} B/peer one upstream")

    be = backend().start(wait_for=("127.0.0.1", 9000))
    checked = shared.get("rss_checked")
    if checked is None:
        checked = run_config("mem-checked", 10000, 100, "http", cfg["pc_warmup"], 2)
    plain = run_config("mem-plain", 10000, 100, None, cfg["pc_warmup"], 2)
    be.stop()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    growth_mb = (mean(checked["rss_kb"]) - mean(plain["rss_kb"])) / 1024
    log(f"  RSS at 10k peers: checked {checked['rss_kb']} kB, without module {plain['rss_kb']} kB")

    rows = [
        Row("5. Shared zone bytes per peer (Δ zone size 1k→10k peers, 100/upstream)",
            f"{spread:.1f} B ({one:.1f} B in one upstream)", "≤ 128 B", spread <= 128),
        Row("5. Worker RSS growth at 10,000 peers (http, 100/upstream) vs no module",
            f"{growth_mb:.2f} MB", "≤ 5 MB", growth_mb <= 5),
    ]
    details = [
        "### 5. Memory\n",
        "Zone size the module needs (from `nginx -t` with `upstream_healthcheck_zone 32k`, the smallest the "
        "directive takes, which fails naming the size needed, or else by bisecting the smallest size "
        "`nginx -t` accepts; without the directive the module allocates what it needs):\n",
        "| peers | upstreams | zone bytes | bytes per peer | found by |", "|---|---|---|---|---|",
    ]
    for (n, per), (b, how) in found.items():
        details.append(f"| {n:,} | {n // per} | {b:,} | {b / n:.1f} | {how} |")
    details += [
        "",
        f"Shared mapping seen in the workers at 10,000 peers: {checked['zone_bytes']:,} bytes "
        "(largest /dev/zero mapping in /proc/PID/maps).\n",
        f"Worker VmRSS after {cfg['pc_warmup']} s warm-up plus the measurement window, 10,000 peers in 100 upstreams, "
        "worker_processes 2: with the module and http checks at 1 s "
        f"{' / '.join(f'{k / 1024:.1f}' for k in checked['rss_kb'])} MB (of which RssShmem "
        f"{' / '.join(f'{k / 1024:.1f}' for k in checked['rss_shmem_kb'])} MB); same upstreams without the "
        f"module {' / '.join(f'{k / 1024:.1f}' for k in plain['rss_kb'])} MB.\n",
    ]
    return rows, details
