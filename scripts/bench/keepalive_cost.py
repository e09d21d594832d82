"""2. (continued) Cost of keepalive probes: `type=http keepalive=1000` against connect-per-probe
`type=http`, 1,000 and 10,000 peers spread over upstreams of 100, with the interval, backend and
layout of probe_cost.py, in alternating rounds of the same run (AB at every size, then BA, ...),
and a kept-alive floor measured after every round: floor.py's client sending the keepalive probe's
request again and again on ONE kept-alive loopback connection and reading each whole response
(system CPU per request, counted as the kernel floor of the connect-per-probe rows: the client's
own, not the backend's). Medians over the rounds; ratios of the medians."""

from collections import namedtuple

from lib import Row, log, median

Kind = namedtuple("Kind", "name check_type extra")

# The probe kinds compared in alternating rounds (https against the backend's TLS listener,
# with session reuse for the handshakes a reconnect needs). A ratio of RATIOS is reported only
# when both of its sides ran.
KINDS = [
    Kind("http", "http", ""),
    Kind("http keepalive", "http", " keepalive=1000"),
    Kind("https keepalive", "https", " keepalive=1000"),
]
FLOOR = "kept-alive floor"
# The targets, as ratios of medians: (kind, reference: a kind or FLOOR, at most).
RATIOS = [
    ("http keepalive", FLOOR, 1.3),
    ("http keepalive", "http", 0.5),
    ("https keepalive", "http keepalive", 1.5),
]


def label(name):
    """How a kind or the floor reads in the table."""
    kind = next((k for k in KINDS if k.name == name), None)
    return f"type={kind.check_type}{kind.extra}" if kind else FLOOR


def measure(cfg, run_config, floor):
    """Alternating rounds: returns ({(kind, n): [result per round]}, [floor result per round])."""
    results, floors = {}, []
    for r in range(cfg["pc_ka_rounds"]):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for n in cfg["pc_ka_sizes"]:
            for k in order:
                res = run_config(f"pc-ka-{r}-{n}-{k.name.replace(' ', '-')}", n, 100, k.check_type,
                                 cfg["pc_warmup"], cfg["pc_window"], extra=k.extra)
                res["round"], res["kind"], res["seq"] = r, k.name, sum(map(len, results.values()))
                results.setdefault((k.name, n), []).append(res)
                log(f"  keepalive round {r} {n:5} {k.name:15}: {res['us_per_probe']:.2f} us/probe "
                    f"(user {res['us_user']:.1f}, sys {res['us_sys']:.1f}), {res['achieved'] * 100:.1f} %, "
                    f"{res['conns'] / max(res['probes'], 1):.3f} connections/probe, "
                    f"{res['wakeups_per_probe']:.2f} wakeups/probe, warm after {fmt_warm(res)}, "
                    f"{res['downs']} false DOWN")
        f = floor()
        floors.append(f)
        log(f"  kept-alive floor round {r}: {f['keepalive']:.1f} us per request on one connection "
            f"({f['keepalive_wakeups']:.2f} wakeups), {f['keepalive_batch']:.1f} us on 100")
    return results, floors


def fmt_warm(res):
    """How long a keepalive configuration took to warm up, as the tables show it."""
    w = res.get("warm_s")
    return "-" if "keepalive" not in label(res["kind"]) else (f"{w:.0f} s" if w is not None else "never")


def per_round(results, floors, name, n):
    """µs per probe of `name` at n peers in each round (the floor's µs per request for FLOOR)."""
    if name == FLOOR:
        return [f["keepalive"] for f in floors]
    return [r["us_per_probe"] for r in results[(name, n)]]


def ratio_row(results, floors, sizes, kind, ref, limit):
    """The table row of one target: ratio of the medians at each size, per-round range."""
    values, ok = [], True
    for n in sizes:
        a, b = per_round(results, floors, kind, n), per_round(results, floors, ref, n)
        ratio = median(a) / median(b)
        rounds = [x / y for x, y in zip(a, b)]
        ok = ok and ratio <= limit
        values.append(f"{ratio:.2f}× ({median(a):.1f} vs {median(b):.1f} µs; per round "
                      f"{min(rounds):.2f}–{max(rounds):.2f})")
    ref_text = ("the kept-alive floor (one loopback connection, client's system CPU per request)"
                if ref == FLOOR else f"`{label(ref)}`")
    return Row(f"2. CPU per `{label(kind)}` probe vs {ref_text}, "
               f"{' / '.join(f'{n // 1000}k' for n in sizes)} peers spread (100/upstream), "
               f"median of {len(floors)} alternating rounds", " / ".join(values), f"≤ {limit}×", ok)


def details(cfg, results, floors):
    out = [
        "### 2. Cost per probe: keepalive\n",
        f"Alternating rounds in the same run ({cfg['pc_ka_rounds']}; kinds in order, then reversed), same "
        f"backend, interval and layout as above; warm-up {cfg['pc_warmup']} s, window {cfg['pc_window']} s. "
        "Rows in the order they ran. Probes = the backend's `requests`; connections/probe = its `accepts` per probe (a kept-alive "
        "probe opens none once warm). After every round the kept-alive floor: floor.py sends the "
        "keepalive probe's request (HTTP/1.1, no `Connection: close`) 10,000 times on one loopback "
        "connection, reading each whole response; its system CPU per request, and the same on 100 "
        "connections at once (wakeups amortized as at thousands of peers; for reference).\n",
        "| round | peers | kind | µs/probe | of which user | of which sys | wakeups/probe "
        "| connections/probe | achieved | warm after | false DOWNs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for rs in results.values() for r in rs), key=lambda r: r["seq"]):
        out.append(f"| {r['round']} | {r['n']:,} | `{label(r['kind'])}` | {r['us_per_probe']:.1f} | "
                   f"{r['us_user']:.1f} | {r['us_sys']:.1f} | {r['wakeups_per_probe']:.2f} | "
                   f"{r['conns'] / max(r['probes'], 1):.3f} | {r['achieved'] * 100:.1f} % | "
                   f"{fmt_warm(r)} | {r['downs']} |")
    out += ["", "| round | floor: µs per request, one connection | wakeups per request | µs per request, "
            "100 connections |", "|---|---|---|---|"]
    for i, f in enumerate(floors):
        out.append(f"| {i} | {f['keepalive']:.1f} | {f['keepalive_wakeups']:.2f} | {f['keepalive_batch']:.1f} |")
    out.append("")
    return out


def run(cfg, run_config, floor):
    """The rounds, then the rows of the targets whose both sides ran; returns (rows, details)."""
    results, floors = measure(cfg, run_config, floor)
    names = {k.name for k in KINDS} | {FLOOR}
    sizes = cfg["pc_ka_sizes"]
    rows = [ratio_row(results, floors, sizes, kind, ref, limit)
            for kind, ref, limit in RATIOS if kind in names and ref in names]
    kept = [r for k in KINDS if "keepalive" in k.extra for n in sizes for r in results[(k.name, n)]]
    worst = min(r["achieved"] for r in kept)
    rows.append(Row("2. Achieved probe rate of the keepalive probes, lowest round; connections opened "
                    "per probe, highest round",
                    f"{worst * 100:.1f} %; {max(r['conns'] / max(r['probes'], 1) for r in kept):.3f}",
                    "≥ 99 %", worst >= 0.99))
    for k in KINDS:
        if "keepalive" not in k.extra:
            continue
        for n in sizes:
            rs = results[(k.name, n)]
            warm = [r["warm_s"] for r in rs]
            slowest = "never" if None in warm else f"{max(warm):.0f} s"
            false_downs = sum(r["downs"] for r in rs)
            rows.append(Row(f"2. `{label(k.name)}` at {n:,} peers: slowest warm-up (start to every probe on a kept "
                            f"connection at the full rate); peers marked DOWN though healthy, all rounds",
                            f"{slowest}; {false_downs}", "warm; 0", None not in warm and false_downs == 0))
    rows.append(Row("2. Kept-alive floor: client's system CPU per request on one loopback connection "
                    "[on 100 connections at once], median of the rounds",
                    f"{median([f['keepalive'] for f in floors]):.1f} µs "
                    f"[{median([f['keepalive_batch'] for f in floors]):.1f} µs]", "", None))
    return rows, details(cfg, results, floors)
