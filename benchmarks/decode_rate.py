"""Consumer decode throughput: the C Message builder (pylog._fastmsg) against
the Python loop it replaces, and a py-lmdb cursor over the same records.

    python -m benchmarks.decode_rate [--records 200000] [--size 100] [--rounds 5]

One store (idempotent Producer, pylog.fsync=never, linger.ms 5: what
benchmarks.compare's "pylog idempotent | fast" writes) and one LMDB database
(8-byte big-endian keys, put(append=True)) are written once, untimed.  Each
round then reads everything back, in an order rotated from round to round:
read_committed consume(10000) and poll() with each decode path (the path is
switched through pylog.consumer._decode_messages, so both run in one
process), and one py-lmdb cursor.  Figures are medians over the rounds.
"""
import argparse
import os
import shutil
import statistics
import struct
import tempfile

from benchmarks.compare import pylog_cases
from benchmarks.compare.common import perf, value_of


def write_pylog(path, n, size):
    p = pylog_cases._producer(path, False)
    try:
        pylog_cases.produce_all(p, value_of(size), n)
        if p.flush(300):
            raise RuntimeError("flush() left records undelivered")
    finally:
        p.close()


def write_lmdb(path, n, size):
    import lmdb
    env = lmdb.open(path, map_size=max(1 << 30, 4 * n * (size + 64)), sync=False, metasync=False)
    key, value = struct.Struct(">Q").pack, value_of(size)
    for start in range(0, n, 1000):
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + 1000)):
                txn.put(key(i), value, append=True)
    return env


def read_lmdb(env, n, size):
    t0 = perf()
    got = 0
    with env.begin() as txn:
        for _k, v in txn.cursor():
            got += 1
    seconds = perf() - t0
    if got != n or len(v) != size:
        raise RuntimeError("py-lmdb read %d records, expected %d" % (got, n))
    return n / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temp dir)")
    args = ap.parse_args(argv)

    import pylog.consumer as consumer_mod
    fast = consumer_mod._decode_messages
    paths = {"C (_fastmsg)": fast, "Python loop": None}
    if fast is None:
        print("pylog._fastmsg is not available: only the Python loop runs")
        del paths["C (_fastmsg)"]

    work = tempfile.mkdtemp(prefix="bench-decode-", dir=args.work)
    try:
        n = args.records
        store = os.path.join(work, "pylog")
        os.makedirs(store)
        write_pylog(store, n, args.size)
        env = write_lmdb(os.path.join(work, "lmdb"), n, args.size)
        jobs = []
        for name, fn in paths.items():
            jobs.append(("consume(10000)", name, fn, pylog_cases.consume_rate))
            jobs.append(("poll()", name, fn, pylog_cases.poll_rate))
        jobs.append(("cursor", "py-lmdb", None, None))
        rates = {(what, name): [] for what, name, _, _ in jobs}
        for r in range(args.rounds):
            k = r % len(jobs)
            for what, name, fn, run in jobs[k:] + jobs[:k]:
                if run is None:
                    rates[(what, name)].append(read_lmdb(env, n, args.size))
                    continue
                consumer_mod._decode_messages = fn
                try:
                    rates[(what, name)].append(run(store, n, args.size))
                finally:
                    consumer_mod._decode_messages = fast
        env.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lmdb_rate = statistics.median(rates[("cursor", "py-lmdb")])
    print("%d records of %d B, %d rounds, median records/s (min..max)" % (n, args.size, args.rounds))
    print("%-16s %-14s %12s %25s %10s" % ("read", "path", "median", "range", "vs lmdb"))
    for (what, name), xs in rates.items():
        med = statistics.median(xs)
        print("%-16s %-14s %12s %25s %9.2fx" % (
            what, name, "{:,.0f}".format(med),
            "{:,.0f}..{:,.0f}".format(min(xs), max(xs)), med / lmdb_rate))


if __name__ == "__main__":
    main()
