"""produce() with and without the C fast lane, side by side in one run.

    python -m benchmarks.bench_fastprod [--records N] [--rounds R] [--head DIR]

Each round runs these, every one in a fresh process, in an order rotated
from round to round:

  pylog fast lane      this tree (pylog._fastprod, csrc/fastprod.c)
  pylog no fast lane   this tree with PYLOG_NO_FASTPROD=1 (the pure Python path)
  pylog DIR            only with --head DIR: pylog from DIR on PYTHONPATH, e.g. HEAD as
                       `git worktree add /tmp/wt-prod HEAD` then, in it,
                       `python setup.py build_ext --inplace`
  confluent enqueue    benchmarks.compare's confluent-kafka bare produce() loop
  py-lmdb puts         benchmarks.compare's py-lmdb fast write

The pylog case is the write phase of benchmarks.compare's "pylog idempotent |
fast" (pylog_cases.run_idempotent without the read-back): enable.idempotence,
pylog.fsync=never, linger.ms 5, produce_all() of N 100-byte records then
flush(), timed end to end ("write") and the produce() loop alone ("loop").
As in benchmarks.compare, the page cache is levelled before every run and a
ratio is the median of the per-round ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZE = 100


# ---- the child: one measurement, printed as JSON ----

def _child(kind, n, workdir):
    sys.path.append(ROOT)           # after PYTHONPATH: --head's pylog wins over this tree's
    from benchmarks.compare import embedded, limits, pylog_cases, servers
    from benchmarks.compare.common import Context, perf, phase, value_of
    ctx = Context(workdir=workdir, cap=None, quick=True)
    limits.level_page_cache(workdir, n)
    if kind == "pylog":
        import pylog
        value = value_of(SIZE)
        p = pylog_cases._producer(ctx.fresh("pylog"), False)
        try:
            pylog_cases.produce_all(p, value, 1)
            p.flush(60)
            t0 = perf()
            pylog_cases.produce_all(p, value, n)
            t1 = perf()
            left = p.flush(300)
            t2 = perf()
        finally:
            p.close()
        if left:
            raise RuntimeError("flush() left %d records" % left)
        return {"write": phase(n, t2 - t0), "loop": phase(n, t1 - t0),
                "lane": getattr(p, "_lane", None) is not None,
                "pylog": os.path.dirname(pylog.__file__)}
    if kind == "confluent":
        return {"write": servers.run_confluent_enqueue(ctx, SIZE, n)["write"]}
    if kind == "lmdb":
        return {"write": embedded.run_lmdb(ctx, SIZE, n, False)["write"]}
    raise ValueError(kind)


# ---- the parent ----

def _run(kind, n, env):
    with tempfile.TemporaryDirectory(prefix="pylog-benchfp-") as work:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind,
                              "--records", str(n), "--workdir", work],
                             env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError("%s failed: %s" % (kind, out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_fastprod",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--head", help="a pylog tree to measure too (on PYTHONPATH)")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.records, a.workdir)))
        return 0

    no_pp = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    variants = [("pylog fast lane", "pylog", {"PYLOG_NO_FASTPROD": ""}),
                ("pylog no fast lane", "pylog", {"PYLOG_NO_FASTPROD": "1"})]
    if a.head:
        variants.append(("pylog %s" % a.head, "pylog",
                         {"PYTHONPATH": os.path.abspath(a.head), "PYLOG_NO_FASTPROD": ""}))
    variants += [("confluent enqueue", "confluent", {}), ("py-lmdb puts", "lmdb", {})]
    print("produce() side by side: %d x %d B records, %d rounds, %d CPUs, load %s"
          % (a.records, SIZE, a.rounds, os.cpu_count(),
             " ".join("%.2f" % x for x in os.getloadavg())), flush=True)
    results = {name: [] for name, _, _ in variants}
    for r in range(a.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, kind, extra in order:
            m = _run(kind, a.records, dict(no_pp, **extra))
            results[name].append(m)
            print("[round %d/%d] %-28s write %11s/s%s" % (
                r + 1, a.rounds, name, format(round(m["write"]), ","),
                "   loop %s/s  (lane %s, %s)" % (format(round(m["loop"]), ","),
                                                  "on" if m["lane"] else "off", m["pylog"])
                if "loop" in m else ""), flush=True)

    def med(name, key="write"):
        return statistics.median(m[key] for m in results[name])

    def ratio(a_name, b_name, key="write"):
        rounds = [x[key] / y["write"] for x, y in zip(results[a_name], results[b_name])]
        return statistics.median(rounds), rounds

    print()
    print("%-28s %14s %14s" % ("", "write rec/s", "loop rec/s"))
    for name, kind, _ in variants:
        print("%-28s %14s %14s" % (name, format(round(med(name)), ","),
                                   format(round(med(name, "loop")), ",") if kind == "pylog" else "-"))
    print()
    summary = {}
    for name, kind, _ in variants:
        if kind != "pylog":
            continue
        for peer in ("confluent enqueue", "py-lmdb puts"):
            for key, what in (("write", "end to end"), ("loop", "loop alone")):
                value, rounds = ratio(name, peer, key)
                summary["%s / %s (%s)" % (name, peer, what)] = value
                print("%-62s %6.2fx   rounds: %s" % ("%s / %s (%s)" % (name, peer, what), value,
                                                    " ".join("%.2f" % x for x in rounds)))
    for other in [n for n, k, _ in variants if k == "pylog" and n != "pylog fast lane"]:
        value, rounds = ratio("pylog fast lane", other)
        summary["pylog fast lane / %s" % other] = value
        print("%-62s %6.2fx   rounds: %s" % ("pylog fast lane / %s (end to end)" % other, value,
                                            " ".join("%.2f" % x for x in rounds)))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": "python -m benchmarks.bench_fastprod " + " ".join(
                sys.argv[1:] if argv is None else argv), "records": a.records,
                "rounds": a.rounds, "results": results, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
