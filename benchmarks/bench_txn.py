"""Transactions and read_committed consumption (issue 4), ratios from one run.

    python3 benchmarks/bench_txn.py            # full run, prints a report
    python3 benchmarks/bench_txn.py --quick    # fewer rounds
    python3 -m pytest benchmarks/bench_txn.py -s   # the same report under pytest

Measures, in one process run so the ratios compare like with like:

- fdatasync: median of 4 KiB append + fdatasync on a file in the store's
  filesystem (the unit the commit target is expressed in);
- transactions per second for transactions of 1, 10 and 1,000 100-byte
  records, pylog.fsync=always and never, and the median commit_transaction()
  latency; target with fsync=always: commit <= 3 fdatasyncs at the median;
- consume() in read_committed of 100-byte records with 30% of transactions
  aborted, against a py-lmdb cursor iterating the same committed records
  (target >= 1.5x), and poll() (target >= 1 M records/s);
- the wake-up latency of a consumer blocked in poll() in another process when
  this process commits (target median < 5 ms with pylog.fsync=never), from
  the commit's marker write (the notifier bump) to the record in hand, and
  from the commit_transaction() call.
"""
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import lmdb

from pylog import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from pylog.admin import AdminClient, NewTopic

CTX = multiprocessing.get_context("spawn")
VALUE = b"v" * 100
TARGET_COMMIT_FDATASYNCS = 3.0
TARGET_CONSUME_VS_LMDB = 1.5
TARGET_POLL_PER_S = 1e6
TARGET_WAKEUP_S = 0.005


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _store(base, name, topics):
    path = os.path.join(base, name)
    conf = {"bootstrap.servers": "file://" + path}
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic(t, num_partitions=n) for t, n in topics.items()]).values():
        f.result()
    admin.close()
    return conf


# ---- fdatasync ----

def fdatasync_latency(directory, rounds=300):
    """Median seconds of a 4 KiB append followed by fdatasync."""
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        block = b"\0" * 4096
        for _ in range(10):                       # allocate, warm up
            os.write(fd, block)
            os.fdatasync(fd)
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)
    finally:
        os.close(fd)
        os.unlink(path)


# ---- transactions per second ----

def transactions(base, fsync, size, count):
    """(transactions/s, median commit_transaction() s, median whole-transaction s,
    partition-log fsyncs per transaction).  LMDB's own fdatasyncs (one per
    metadata commit) happen in C and are not counted here."""
    from pylog import failpoints
    conf = _store(base, "txn-%s-%d" % (fsync, size), {"t": 1})
    p = Producer({**conf, "transactional.id": "bench-%s-%d" % (fsync, size),
                  "pylog.fsync": fsync})
    p.init_transactions()
    for _ in range(3):                            # warm up: topic queue, partition, LMDB pages
        p.begin_transaction()
        p.produce("t", value=VALUE, partition=0)
        p.commit_transaction()
    commit_s, txn_s = [], []
    produce = p.produce
    failpoints.set("fsync.before", "sleep:0", at=1 << 62)     # never fires; counts the calls
    t_start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        p.begin_transaction()
        for _ in range(size):
            produce("t", VALUE)
        t1 = time.perf_counter()
        p.commit_transaction()
        t2 = time.perf_counter()
        commit_s.append(t2 - t1)
        txn_s.append(t2 - t0)
    elapsed = time.perf_counter() - t_start
    log_fsyncs = failpoints.hits("fsync.before") / count
    failpoints.clear("fsync.before")
    p.close()
    return count / elapsed, statistics.median(commit_s), statistics.median(txn_s), log_fsyncs


# ---- read_committed consumption vs py-lmdb ----

def fill_mixed(base, n_txns, per_txn, abort_ratio=0.3, seed=1):
    """A partition of 100-byte records in transactions, abort_ratio of them
    aborted (their records written first); returns (conf, committed count)."""
    conf = _store(base, "consume", {"t": 1})
    rng = random.Random(seed)
    p = Producer({**conf, "transactional.id": "filler", "linger.ms": 1000})
    p.init_transactions()
    committed = 0
    aborted = set(rng.sample(range(n_txns), int(n_txns * abort_ratio)))
    for n in range(n_txns):
        p.begin_transaction()
        for _ in range(per_txn):
            p.produce("t", VALUE)
        p.flush()
        if n in aborted:
            p.abort_transaction()
        else:
            p.commit_transaction()
            committed += per_txn
    p.close()
    return conf, committed


def _reader(conf, group):
    c = Consumer({**conf, "group.id": group, "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    return c


def consume_rate(conf, expected, rounds=3):
    best = 0.0
    for r in range(rounds):
        c = _reader(conf, "consume-%d" % r)
        c.consume(1, 5.0)                         # open the partition, decode the first batch
        n = 1
        t = time.perf_counter()
        consume = c.consume
        while n < expected:
            msgs = consume(100000, 1.0)
            if not msgs:
                break
            n += len(msgs)
        elapsed = time.perf_counter() - t
        c.close()
        assert n == expected, (n, expected)
        best = max(best, (n - 1) / elapsed)
    return best


def poll_rate(conf, expected, rounds=3):
    best = 0.0
    for r in range(rounds):
        c = _reader(conf, "poll-%d" % r)
        assert c.poll(5.0) is not None
        n = 1
        poll = c.poll
        t = time.perf_counter()
        while n < expected:
            m = poll(1.0)
            if m is None:
                break
            n += 1
        elapsed = time.perf_counter() - t
        c.close()
        assert n == expected, (n, expected)
        best = max(best, (n - 1) / elapsed)
    return best


def lmdb_rate(base, conf, expected, rounds=3):
    """A py-lmdb cursor over the same committed records (key: offset), bare,
    and building one pylog Message per record (what consume() hands out):
    (bare records/s, with-Message records/s)."""
    from pylog import Message
    c = _reader(conf, "lmdb-copy")
    records = []
    while len(records) < expected:
        msgs = c.consume(100000, 1.0)
        if not msgs:
            break
        records.extend((m.offset(), m.value()) for m in msgs)
    c.close()
    path = os.path.join(base, "lmdb-peer")
    env = lmdb.open(path, map_size=1 << 30, sync=False)
    with env.begin(write=True) as txn:
        for off, v in records:
            txn.put(off.to_bytes(8, "big"), v, append=True)
    best = best_msg = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        with env.begin() as txn:
            cur = txn.cursor()
            n = 0
            for _k, _v in cur:
                n += 1
        elapsed = time.perf_counter() - t
        assert n == expected
        best = max(best, n / elapsed)
        t = time.perf_counter()
        with env.begin() as txn:
            out = [Message("t", 0, int.from_bytes(k, "big"), None, v) for k, v in txn.cursor()]
        elapsed = time.perf_counter() - t
        assert len(out) == expected
        best_msg = max(best_msg, expected / elapsed)
    env.close()
    return best, best_msg


# ---- wake-up latency ----

def waiting_consumer_main(conf, conn, trials):
    """Block in poll(5.0) once per trial; report when each record arrived."""
    c = Consumer({**conf, "group.id": "waiter", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.assign([TopicPartition("wake", 0)])
    c.poll(0.2)
    try:
        for _ in range(trials):
            conn.send(("ready", None))
            m = c.poll(5.0)
            t = now()
            conn.send(("got", (None if m is None else m.value(), t)))
    finally:
        c.close()


def measure_wakeup(conf, trials=50, settle=0.01):
    """Per trial: seconds from the commit's last notifier bump (the marker
    write) and from the commit_transaction() call to a consumer blocked in
    poll() in another process holding the record."""
    p = Producer({**conf, "transactional.id": "waker", "linger.ms": 0})
    p.init_transactions()
    notifier = p._store.notifier                  # peek: when did the commit wake readers?
    bumps = []
    real_bump = notifier.bump

    def bump():
        real_bump()
        bumps.append(now())
    notifier.bump = bump
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=waiting_consumer_main, args=(conf, child, trials), daemon=True)
    proc.start()
    from_bump, from_call = [], []
    try:
        for i in range(trials):
            p.begin_transaction()
            p.produce("wake", value=b"%d" % i, partition=0)
            p.flush()
            if not parent.poll(30):
                raise RuntimeError("waiter never got ready")
            parent.recv()
            time.sleep(settle)
            del bumps[:]
            t0 = now()
            p.commit_transaction()
            if not parent.poll(30):
                raise RuntimeError("waiter never got record %d" % i)
            _, (value, t2) = parent.recv()
            if value != b"%d" % i:
                raise RuntimeError("waiter got %r, expected %d" % (value, i))
            marker = max(b for b in bumps if b <= t2) if any(b <= t2 for b in bumps) else t0
            from_bump.append(t2 - marker)
            from_call.append(t2 - t0)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        notifier.bump = real_bump
        p.close()
    return from_bump, from_call


# ---- report ----

def run(quick=False, base=None):
    own = base is None
    base = base or tempfile.mkdtemp(prefix="pylog-bench-txn-")
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)
    try:
        out("pylog transactions benchmark (%s, %d CPUs, store in %s)" % (
            "quick" if quick else "full", os.cpu_count(), base))
        # fdatasync is measured before each group of transaction runs and the
        # median of the medians is the unit (the device's latency drifts).
        fds_samples = [fdatasync_latency(base, 100 if quick else 300)]
        out("%-7s %6s %10s %12s %13s %17s %15s" % ("fsync", "size", "txn/s", "records/s",
                                                   "commit med", "commit/fdatasync", "log fsyncs/txn"))
        verdicts = {}
        rows = []
        for fsync in ("always", "never"):
            for size, count in ((1, 500), (10, 500), (1000, 50)):
                if quick:
                    count = max(10, count // 5)
                rows.append((fsync, size) + transactions(base, fsync, size, count))
                fds_samples.append(fdatasync_latency(base, 100 if quick else 300))
        fds = statistics.median(fds_samples)
        for fsync, size, tps, commit, _, log_fsyncs in rows:
            ratio = commit / fds
            out("%-7s %6d %10.0f %12.0f %10.3f ms %17.2f %15.2f" % (
                fsync, size, tps, tps * size, commit * 1e3, ratio, log_fsyncs))
            if fsync == "always":
                verdicts["commit/fdatasync (fsync=always, %d rec)" % size] = (
                    ratio, "<= %.0f" % TARGET_COMMIT_FDATASYNCS, ratio <= TARGET_COMMIT_FDATASYNCS)
        out("fdatasync (4 KiB append + fdatasync): median %.3f ms (per-group medians %s ms); "
            "LMDB adds one fdatasync per metadata commit, not counted in 'log fsyncs/txn'"
            % (fds * 1e3, " ".join("%.3f" % (x * 1e3) for x in fds_samples)))
        out()
        n_txns, per_txn = (200, 100) if quick else (1000, 100)
        conf, committed = fill_mixed(base, n_txns, per_txn)
        c_rate = consume_rate(conf, committed, 2 if quick else 3)
        p_rate = poll_rate(conf, committed, 2 if quick else 3)
        l_rate, l_msg_rate = lmdb_rate(base, conf, committed, 2 if quick else 3)
        out("read_committed, 100-byte records, 30%% of %d transactions aborted, %d committed records:"
            % (n_txns, committed))
        out("  consume(): %12.0f records/s" % c_rate)
        out("  poll():    %12.0f records/s" % p_rate)
        out("  py-lmdb cursor over the same records: %12.0f records/s" % l_rate)
        out("  py-lmdb cursor building a pylog Message per record: %12.0f records/s" % l_msg_rate)
        verdicts["consume() / py-lmdb cursor"] = (c_rate / l_rate, ">= %.1f" % TARGET_CONSUME_VS_LMDB,
                                                  c_rate / l_rate >= TARGET_CONSUME_VS_LMDB)
        verdicts["poll() M records/s"] = (p_rate / 1e6, ">= 1.0", p_rate >= TARGET_POLL_PER_S)
        out()
        wconf = _store(base, "wake", {"wake": 1})
        wconf["pylog.fsync"] = "never"
        from_bump, from_call = measure_wakeup(wconf, 20 if quick else 50)
        med_bump, med_call = statistics.median(from_bump), statistics.median(from_call)
        out("wake-up across processes (pylog.fsync=never, %d trials): median %.3f ms from the "
            "marker write, %.3f ms from the commit_transaction() call; p90 %.3f / %.3f ms" % (
                len(from_bump), med_bump * 1e3, med_call * 1e3,
                sorted(from_bump)[int(len(from_bump) * 0.9)] * 1e3,
                sorted(from_call)[int(len(from_call) * 0.9)] * 1e3))
        verdicts["wake-up median ms (from marker write)"] = (med_bump * 1e3, "< 5",
                                                            med_bump < TARGET_WAKEUP_S)
        verdicts["wake-up median ms (from commit call)"] = (med_call * 1e3, "< 5",
                                                           med_call < TARGET_WAKEUP_S)
        out()
        out("%-45s %10s %8s  %s" % ("ratio", "measured", "target", "verdict"))
        for name, (value, target, ok) in verdicts.items():
            out("%-45s %10.2f %8s  %s" % (name, value, target, "met" if ok else "MISSED"))
        return verdicts
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


def test_txn_report(tmp_path):
    """The whole report under pytest (quick mode); reports, never fails on a target."""
    run(quick=True, base=str(tmp_path))


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
