#!/usr/bin/env python3
"""The benchmark's driver (run by scripts/bench.sh inside a network namespace of its own):
runs each measurement, then prints the results table and writes it to OUT/results.md."""

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lib  # noqa: E402

# Durations and repetitions of the full run (~20-22 min) and the --quick smoke run (~6 min).
FULL = dict(
    rp_rounds=9, rp_seconds=5,
    pc_sizes=(1000, 5000, 10000), pc_one_sizes=(1000, 5000, 10000), pc_types=("tcp", "http"),
    pc_warmup=3, pc_window=10, pc_ka_sizes=(1000, 10000), pc_ka_rounds=4,
    det_trials=20,
    out_rounds=3, out_phase1=8, out_kill_at=2, out_phase2=21,
    dup_workers=(1, 2, 4), dup_window=12,
    sc_rate_window=10, sc_page_repeats=5, sc_page_max_s=5, sc_window=7, sc_pattern="ABBAABBA",
    sc_reload_max_s=20,
    tr_rounds=4, tr_seconds=8,
    dyn_changes=20,
    st_sizes=(1000, 10000),
)
QUICK = dict(
    rp_rounds=3, rp_seconds=2,
    pc_sizes=(1000, 10000), pc_one_sizes=(10000,), pc_types=("tcp", "http"),
    pc_warmup=2, pc_window=4, pc_ka_sizes=(1000, 10000), pc_ka_rounds=2,
    det_trials=5,
    out_rounds=1, out_phase1=5, out_kill_at=2, out_phase2=11,
    dup_workers=(1, 2, 4), dup_window=4,
    sc_rate_window=5, sc_page_repeats=3, sc_page_max_s=3, sc_window=4, sc_pattern="AB",
    sc_reload_max_s=10,
    tr_rounds=2, tr_seconds=4,
    dyn_changes=20,
    st_sizes=(1000, 10000),
)


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ver = subprocess.run([lib.NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return [
        f"- CPU: {model}, {os.cpu_count()} cores",
        f"- kernel: {platform.release()} ({platform.machine()})",
        f"- nginx: {ver.replace('nginx version: ', '')} ({lib.NGINX}), module {lib.MODULE}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average at start {load}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short smoke run (~6 min)")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="comma-separated measurements to run")
    ap.add_argument("--profile", action="store_true",
                    help="also record perf profiles of the workers at 10,000 peers (http, one upstream) "
                    "and at 100,000 (measurement 7)")
    ap.add_argument("--out", default="target/bench")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL, profile=args.profile, out=os.path.abspath(args.out))
    only = {int(x) for x in args.only.split(",") if x}

    os.makedirs(cfg["out"], exist_ok=True)
    shutil.rmtree(lib.WORK, ignore_errors=True)
    os.makedirs(lib.WORK, exist_ok=True)
    lib.raise_nofile()

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    import detection
    import dynamic
    import duplicates
    import memory
    import outage
    import probe_cost
    import request_path
    import scale
    import stream_cost
    import traffic

    started = time.monotonic()
    header = machine()
    results = {}  # measurement number -> (rows, details)
    shared = {}  # data handed from one measurement to another (worker RSS at 10,000 peers)
    plan = [(1, request_path.run), (2, probe_cost.run), (5, memory.run), (3, detection.run),
            (4, outage.run), (6, duplicates.run),
            (7, scale.run), (8, traffic.run), (9, dynamic.run), (10, stream_cost.run)]
    try:
        for num, fn in plan:
            if num not in only:
                continue
            t0 = time.monotonic()
            lib.log(f"measurement {num} ({fn.__module__}) ...")
            try:
                results[num] = fn(cfg, shared) if num in (2, 5) else fn(cfg)
            except Exception as e:
                traceback.print_exc()
                results[num] = ([lib.Row(f"{num}. {fn.__module__}", f"ERROR: {e}", "-", False)],
                                [f"### {num}. {fn.__module__}\n", "```", traceback.format_exc(), "```\n"])
            finally:
                lib.cleanup()
            lib.log(f"measurement {num} done in {time.monotonic() - t0:.0f} s")
    finally:
        lib.cleanup()

    elapsed = time.monotonic() - started
    rows = [r for n in sorted(results) for r in results[n][0]]
    table = ["| measurement | value | target | met? |", "|---|---|---|---|"]
    table += [f"| {r.measurement} | {r.value} | {r.target} | {r.met} |" for r in rows]
    missed = [r for r in rows if r.met == "**NO**"]
    kind = ("quick smoke run (--quick: shorter windows, fewer rounds and trials; its verdicts are indicative "
            "only)" if args.quick else "full run")
    summary = (f"{len(rows) - len(missed) - sum(r.met == 'info' for r in rows)} targets met, "
               f"{len(missed)} missed; {kind}, {elapsed / 60:.1f} min")
    doc = ["# ngx_http_upstream_healthcheck_module benchmark", "", *header, "", *table, "", summary, "",
           "## Details", ""]
    for n in sorted(results):
        doc += results[n][1]
    text = "\n".join(doc) + "\n"
    with open(os.path.join(cfg["out"], "results.md"), "w") as f:
        f.write(text)
    print("\n" + "\n".join(header + [""] + table + ["", summary]))
    print(f"\nfull report: {os.path.join(cfg['out'], 'results.md')}")


if __name__ == "__main__":
    main()
