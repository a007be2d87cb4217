"""Producer throughput against issue 3's targets, side by side in one run.

    /work/venv/bin/pytest benchmarks/bench_produce.py        # table printed, figures in extra_info
    /work/venv/bin/python benchmarks/bench_produce.py        # the same tables, no pytest

Systems, each producing N 100-byte records (PYLOG_BENCH_RECORDS, default
200,000), interleaved round by round (A B C D, then B C D A, ...) because
this shared VM varies up to 2x between runs (PEERS.md):

  confluent enqueue  confluent-kafka's bare produce(): bootstrap.servers
                     127.0.0.1:1 (unreachable), a 2M-message local queue;
                     only the produce() loop is timed, then purge().
  py-lmdb puts       raw puts of the same records under 8-byte big-endian
                     offset keys, one commit per 1,000 records, sync=False
                     (no fsync, the durability of pylog.fsync=never).
  pylog never        Producer with enable.idempotence, pylog.fsync=never,
                     linger.ms 5: the produce() loop plus flush(), so every
                     record is in the log with a delivery confirmed.
  pylog always       the same with pylog.fsync=always: flush() returns when
                     the bytes are fsynced.

Both pylog figures are end to end (produce + flush); the rate of the
produce() loop alone is shown too, for the comparison with confluent's
enqueue-only figure.  Ratios are medians of the per-round ratios.

Scaling: 1, 2, 4 and 8 producer processes (multiprocessing spawn) on one
partition, PYLOG_BENCH_MP_RECORDS records in total (default 400,000), rate =
total records / (last flush end - first produce start).
"""
import multiprocessing
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

import pytest

N = int(os.environ.get("PYLOG_BENCH_RECORDS", 200_000))
ROUNDS = int(os.environ.get("PYLOG_BENCH_ROUNDS", 5))
MP_RECORDS = int(os.environ.get("PYLOG_BENCH_MP_RECORDS", 400_000))
MP_ROUNDS = int(os.environ.get("PYLOG_BENCH_MP_ROUNDS", 3))
MP_PROCS = (1, 2, 4, 8)
VALUE = (b"0123456789abcdef" * 7)[:100]
BIG_QUEUE = {"queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_097_151}
TOPIC = "bench"

# issue 3: what each ratio must reach
TARGETS = [
    ("pylog never / confluent enqueue", "pylog never", "confluent enqueue", 2.0),
    ("pylog never / py-lmdb puts", "pylog never", "py-lmdb puts", 1.5),
]
TARGET_ALWAYS = 1_000_000          # records/s with pylog.fsync=always, linger.ms=5


# ---- one run of each system: records/s ----

def run_confluent(n, workdir):
    import confluent_kafka
    p = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0, **BIG_QUEUE})
    produce, value = p.produce, VALUE
    t0 = time.perf_counter()
    for _ in range(n):
        produce(TOPIC, value)
    t1 = time.perf_counter()
    p.purge()
    return {"rate": n / (t1 - t0)}


def run_lmdb(n, workdir):
    import lmdb
    path = os.path.join(workdir, "lmdb")
    env = lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)
    key, value = struct.Struct(">q").pack, VALUE
    try:
        t0 = time.perf_counter()
        txn = env.begin(write=True)
        put = txn.put
        for i in range(n):
            put(key(i), value)
            if i % 1000 == 999:
                txn.commit()
                txn = env.begin(write=True)
                put = txn.put
        txn.commit()
        t1 = time.perf_counter()
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    return {"rate": n / (t1 - t0)}


def _pylog_producer(path, fsync, **extra):
    from pylog import Producer
    p = Producer({"bootstrap.servers": "file://" + path, "enable.idempotence": True,
                  "pylog.fsync": fsync, "linger.ms": 5, **BIG_QUEUE, **extra})
    p.produce(TOPIC, VALUE)          # create the topic and open the partition, untimed
    p.flush()
    return p


def run_pylog(n, workdir, fsync):
    path = os.path.join(workdir, "store-" + fsync)
    p = _pylog_producer(path, fsync)
    produce, value = p.produce, VALUE
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            produce(TOPIC, value)
        t1 = time.perf_counter()
        left = p.flush(120)
        t2 = time.perf_counter()
        assert left == 0
    finally:
        p.close()
        shutil.rmtree(path, ignore_errors=True)
    return {"rate": n / (t2 - t0), "loop_rate": n / (t1 - t0)}


SYSTEMS = [
    ("confluent enqueue", run_confluent),
    ("py-lmdb puts", run_lmdb),
    ("pylog never", lambda n, w: run_pylog(n, w, "never")),
    ("pylog always", lambda n, w: run_pylog(n, w, "always")),
]


def one_round(results, round_no, n, workdir):
    """Run every system once, in an order rotated by round_no (A B C D, B C D A, ...)."""
    k = round_no % len(SYSTEMS)
    for name, fn in SYSTEMS[k:] + SYSTEMS[:k]:
        results.setdefault(name, []).append(fn(n, workdir))


def summarize(results):
    """Lines of the comparison table, and a dict of the figures."""
    med = {name: statistics.median(r["rate"] for r in runs) for name, runs in results.items()}
    lines = ["%d records of %d bytes, %d interleaved rounds (median records/s)" % (
        N, len(VALUE), len(next(iter(results.values()))))]
    figures = {}
    for name, runs in results.items():
        line = "  %-18s %12s" % (name, "{:,.0f}".format(med[name]))
        figures[name] = round(med[name])
        if "loop_rate" in runs[0]:
            loop = statistics.median(r["loop_rate"] for r in runs)
            line += "   (produce() loop alone: {:,.0f})".format(loop)
            figures[name + " loop"] = round(loop)
        lines.append(line)
    lines.append("ratios (median of per-round ratios) against issue 3:")
    for label, a, b, target in TARGETS:
        ratios = [x["rate"] / y["rate"] for x, y in zip(results[a], results[b])]
        ratio = statistics.median(ratios)
        figures[label] = round(ratio, 2)
        lines.append("  %-34s %5.2fx  target >= %.1fx  %s   (rounds: %s)" % (
            label, ratio, target, "met" if ratio >= target else "NOT MET",
            " ".join("%.2f" % r for r in ratios)))
        if "loop_rate" in results[a][0]:
            loop_ratio = statistics.median(x["loop_rate"] / y["rate"]
                                           for x, y in zip(results[a], results[b]))
            figures[label + " (loop only)"] = round(loop_ratio, 2)
            lines.append("  %-34s %5.2fx  (produce() loop alone, no flush)" % ("", loop_ratio))
    always = med["pylog always"]
    lines.append("  %-34s %s records/s  target >= 1,000,000  %s" % (
        "pylog always (fsync, linger.ms 5)", "{:,.0f}".format(always),
        "met" if always >= TARGET_ALWAYS else "NOT MET"))
    return lines, figures


# ---- several producer processes on one partition ----

def _mp_worker(path, n, fsync, ready, start, out):
    p = _pylog_producer(path, fsync)
    produce, value = p.produce, VALUE
    ready.put(os.getpid())
    start.wait(60)
    t0 = time.monotonic()            # CLOCK_MONOTONIC: one clock for all processes
    for _ in range(n):
        produce(TOPIC, value)
    left = p.flush(120)
    t1 = time.monotonic()
    p.close()
    out.put((t0, t1, left))


def run_processes(nprocs, total, workdir, fsync="never"):
    from pylog.admin import AdminClient, NewTopic
    path = os.path.join(workdir, "mp-%d" % nprocs)
    admin = AdminClient({"bootstrap.servers": "file://" + path})
    admin.create_topics([NewTopic(TOPIC, num_partitions=1)])[TOPIC].result()
    admin.close()
    ctx = multiprocessing.get_context("spawn")
    ready, out, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = total // nprocs
    procs = [ctx.Process(target=_mp_worker, args=(path, per, fsync, ready, start, out))
             for _ in range(nprocs)]
    for pr in procs:
        pr.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        start.set()
        spans = [out.get(timeout=300) for _ in procs]
    finally:
        for pr in procs:
            pr.join(30)
            if pr.is_alive():
                pr.kill()
        shutil.rmtree(path, ignore_errors=True)
    assert all(left == 0 for _, _, left in spans)
    elapsed = max(t1 for _, t1, _ in spans) - min(t0 for t0, _, _ in spans)
    return per * nprocs / elapsed


def scaling(workdir, rounds=MP_ROUNDS, total=MP_RECORDS, fsync="never"):
    rates = {k: [] for k in MP_PROCS}
    for r in range(rounds):
        order = MP_PROCS[r % len(MP_PROCS):] + MP_PROCS[:r % len(MP_PROCS)]
        for k in order:
            rates[k].append(run_processes(k, total, workdir, fsync))
    med = {k: statistics.median(v) for k, v in rates.items()}
    lines = ["%d records in total, 1 partition, pylog.fsync=%s, %d interleaved rounds "
             "(median total records/s)" % (total, fsync, rounds)]
    for k in MP_PROCS:
        lines.append("  %d process%s %12s   %.2fx the 1-process rate   (rounds: %s)" % (
            k, "es" if k > 1 else "  ", "{:,.0f}".format(med[k]), med[k] / med[1],
            " ".join("{:,.0f}".format(x) for x in rates[k])))
    return lines, {"%d procs" % k: round(v) for k, v in med.items()}


# ---- pytest-benchmark entry points ----

def _show(capsys, lines):
    with capsys.disabled():
        print()
        for line in lines:
            print(line)


def test_produce_side_by_side(benchmark, tmp_path, capsys):
    results = {}
    rounds = [0]

    def run():
        one_round(results, rounds[0], N, str(tmp_path))
        rounds[0] += 1

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    lines, figures = summarize(results)
    benchmark.extra_info.update(figures)
    _show(capsys, lines)


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_producer_processes_on_one_partition(benchmark, tmp_path, capsys, fsync):
    out = {}

    def run():
        out["lines"], out["figures"] = scaling(str(tmp_path), rounds=MP_ROUNDS, fsync=fsync)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(out["figures"])
    _show(capsys, out["lines"])


if __name__ == "__main__":
    work = tempfile.mkdtemp(prefix="pylog-bench-")
    try:
        results = {}
        for r in range(ROUNDS):
            one_round(results, r, N, work)
        for line in summarize(results)[0]:
            print(line)
        sys.stdout.flush()
        if "--no-scaling" not in sys.argv:
            for fsync in ("never", "always"):
                print()
                for line in scaling(work, fsync=fsync)[0]:
                    print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
