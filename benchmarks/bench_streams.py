"""The price of exactly-once beyond the log, measured in one run.

    python3 -m benchmarks.bench_streams [--records 50000] [--commit 1000] [--repeat 3]
                                        [--pg DSN | --no-pg]

Records/s through
  * a naive at-least-once copy loop (consume, produce, flush, consumer.commit())
    vs StreamsRunner without state, and with a running total per key
    (LMDB store + changelog in the transaction);
  * a naive SQLite loader (insert, db commit, consumer.commit()) vs
    TransactionalSink (offsets in the same SQLite transaction);
  * the same against PostgreSQL: --pg DSN (or PYLOG_PG_DSN) names a server,
    else a throwaway local cluster is started as the tests do
    (tests/conftest.py; Debian's server package, fsync=off).
Each exactly-once figure is printed with its ratio to the naive loop of the
same kind (1.0 = free).  Every loop reads the same input in the same process,
with its own consumer group, its clock started once the group is joined;
the loops run in turn --repeat times and each figure is the median.  The
store uses pylog.fsync=never, so the figures show the protocol's cost, not
the disk's; SQLite runs with its defaults (rollback journal, synchronous=FULL).
"""
import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

from pylog import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pylog.admin import AdminClient, NewTopic
from pylog.sinks import TransactionalSink
from pylog.streams import StreamsRunner

PARTS = 3


def _setup(root, n):
    conf = {"bootstrap.servers": "file://" + os.path.join(root, "store")}
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic(t, num_partitions=PARTS) for t in
                                  ("in", "out-naive", "out-eos", "out-state")]).values():
        f.result()
    admin.close()
    p = Producer({**conf, "linger.ms": 20})
    for i in range(n):
        while True:
            try:
                p.produce("in", value=b"%d" % i, key=b"k%d" % (i % 100))
                break
            except BufferError:             # more than queue.buffering.max.messages
                p.poll(0.05)
    p.flush()
    p.close()
    return conf


def _consumer(conf, group):
    return Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def _joined(c, rewind=None):
    """Wait until c owns partitions, then back to the start: every loop
    starts its clock with the group joined and nothing consumed."""
    deadline = time.monotonic() + 30
    while not c.assignment() and time.monotonic() < deadline:
        c.consume(1, 0.1)
    if rewind is not None:
        rewind()
    else:
        for tp in c.assignment():
            c.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))


def naive_copy(conf, n, commit_every, tag):
    c, p = _consumer(conf, "naive-copy" + tag), Producer(conf)
    c.subscribe(["in"])
    _joined(c)
    done, since = 0, 0
    t0 = time.perf_counter()
    while done < n:
        for m in c.consume(min(500, commit_every), 0.1):    # the runner's batches too
            p.produce("out-naive", value=b"copied:" + m.value(), key=m.key())
            done += 1
            since += 1
        if since >= commit_every or done >= n:
            p.flush()
            c.commit(asynchronous=False)
            since = 0
    dt = time.perf_counter() - t0
    c.close()
    p.close()
    return n / dt


def runner(conf, n, commit_every, stateful, tag):
    if stateful:
        def fn(m, state):
            total = state.get(m.key(), 0) + int(m.value())
            state.put(m.key(), total)
            return [("out-state", m.key(), b"%d" % total)]
    else:
        def fn(m, state):
            return [("out-eos", m.key(), b"copied:" + m.value())]
    r = StreamsRunner(conf, ["in"], ("eos-state" if stateful else "eos-copy") + tag,
                      transactional_id_prefix="bench", process_fn=fn,
                      state="totals" if stateful else None,
                      commit_records=commit_every, commit_interval_ms=1000)
    _joined(r._consumer, r._rewind_all)         # joined and restored before the clock starts
    t0 = time.perf_counter()
    done = 0
    while done < n:
        done += r.run(max_records=n - done, max_idle=2.0)
    dt = time.perf_counter() - t0
    r.close()
    return n / dt


def _db(kind, where):
    if kind == "sqlite":
        return sqlite3.connect(where, timeout=30)
    import psycopg
    return psycopg.connect(where)


def naive_db(conf, n, commit_every, kind, where, tag):
    db = _db(kind, where)
    ph = "?" if kind == "sqlite" else "%s"
    db.cursor().execute("CREATE TABLE IF NOT EXISTS naive_items (val TEXT)")
    db.commit()
    c = _consumer(conf, "naive-db-" + kind + tag)
    c.subscribe(["in"])
    _joined(c)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        msgs = c.consume(commit_every, 0.1)
        if not msgs:
            continue
        cur = db.cursor()
        cur.executemany("INSERT INTO naive_items VALUES (%s)" % ph, [(m.value().decode(),) for m in msgs])
        db.commit()
        c.commit(asynchronous=False)
        done += len(msgs)
    dt = time.perf_counter() - t0
    c.close()
    db.close()
    return n / dt


def eos_db(conf, n, commit_every, kind, where, tag):
    db = _db(kind, where)
    ph = "?" if kind == "sqlite" else "%s"
    db.cursor().execute("CREATE TABLE IF NOT EXISTS eos_items (val TEXT)")
    db.commit()
    c = _consumer(conf, "eos-db-" + kind + tag)
    sink = TransactionalSink(c, db)
    sink.subscribe(["in"])
    _joined(c, sink.rewind)

    def write(cur, msgs):
        cur.executemany("INSERT INTO eos_items VALUES (%s)" % ph, [(m.value().decode(),) for m in msgs])
    done = 0
    t0 = time.perf_counter()
    while done < n:
        done += len(sink.write(c.consume(commit_every, 0.1), write))
    dt = time.perf_counter() - t0
    c.close()
    db.close()
    return n / dt


@contextlib.contextmanager
def _postgres(args):
    """(DSN, where it came from), or (None, why there is none)."""
    if args.no_pg:
        yield None, "--no-pg"
        return
    if args.pg:
        yield args.pg, "--pg"
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from conftest import PostgresUnavailable, throwaway_postgres
    try:
        cm = throwaway_postgres()
        dsn = cm.__enter__()
    except PostgresUnavailable as e:
        yield None, str(e)
        return
    try:
        yield dsn, "a throwaway local cluster (fsync=off)"
    finally:
        cm.__exit__(None, None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--commit", type=int, default=1000, help="records per commit / transaction")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each loop; the median is shown")
    ap.add_argument("--pg", default=os.environ.get("PYLOG_PG_DSN"), help="a PostgreSQL DSN")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="pylog-bench-streams-")
    try:
        with _postgres(args) as (pg, pg_note):
            n, k = args.records, args.commit
            conf = _setup(root, n)
            dbs = [("sqlite", os.path.join(root, "bench.db"))] + ([("pg", pg)] if pg else [])
            cases = [("naive at-least-once copy loop", None,
                      lambda t: naive_copy(conf, n, k, t)),
                     ("StreamsRunner, stateless (exactly-once)", 0,
                      lambda t: runner(conf, n, k, False, t)),
                     ("StreamsRunner, running total (LMDB + changelog)", 0,
                      lambda t: runner(conf, n, k, True, t))]
            for kind, where in dbs:
                base = len(cases)
                cases.append(("naive %s loader (db commit, then offsets)" % kind, None,
                              lambda t, kind=kind, where=where:
                              naive_db(conf, n, k, kind, where, t)))
                cases.append(("TransactionalSink %s (offsets in the db txn)" % kind, base,
                              lambda t, kind=kind, where=where: eos_db(conf, n, k, kind, where, t)))
            rates = [[] for _ in cases]
            for r in range(args.repeat):        # interleaved: drift hits every case alike
                for i, (_, _, fn) in enumerate(cases):
                    rates[i].append(fn("-r%d" % r))
        med = [statistics.median(x) for x in rates]
        print("%d records, %d per commit, median of %d runs, pylog.fsync=never; PostgreSQL: %s"
              % (n, k, args.repeat, pg_note if pg else "skipped (%s)" % pg_note))
        for i, (name, ref, _) in enumerate(cases):
            ratio = "" if ref is None else "  x%.2f of naive" % (med[i] / med[ref])
            print("  %-52s %10.0f rec/s%s" % (name, med[i], ratio))
    finally:
        shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
