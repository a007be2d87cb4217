"""The price of exactly-once beyond the log, measured in one run.

    python3 -m benchmarks.bench_streams [--records 50000] [--commit 1000] [--pg DSN]

Records/s through
  * a naive at-least-once copy loop (consume, produce, flush, consumer.commit())
    vs StreamsRunner without state, and with a running total per key
    (LMDB store + changelog in the transaction);
  * a naive SQLite loader (insert, db commit, consumer.commit()) vs
    TransactionalSink (offsets in the same SQLite transaction);
  * the same against PostgreSQL when --pg (or PYLOG_PG_DSN) names a server.
Each exactly-once figure is printed with its ratio to the naive loop of the
same kind (1.0 = free).  The store uses pylog.fsync=never, so the figures
show the protocol's cost, not the disk's.
"""
import argparse
import os
import shutil
import sqlite3
import tempfile
import time

from pylog import Consumer, Producer
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
        p.produce("in", value=b"%d" % i, key=b"k%d" % (i % 100))
    p.flush()
    p.close()
    return conf


def _consumer(conf, group):
    return Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def naive_copy(conf, n, commit_every):
    c, p = _consumer(conf, "naive-copy"), Producer(conf)
    c.subscribe(["in"])
    done, since = 0, 0
    t0 = time.perf_counter()
    while done < n:
        for m in c.consume(500, 0.1):
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


def runner(conf, n, commit_every, stateful):
    if stateful:
        def fn(m, state):
            total = state.get(m.key(), 0) + int(m.value())
            state.put(m.key(), total)
            return [("out-state", m.key(), b"%d" % total)]
    else:
        def fn(m, state):
            return [("out-eos", m.key(), b"copied:" + m.value())]
    r = StreamsRunner(conf, ["in"], "eos-state" if stateful else "eos-copy",
                      "bench-%s" % stateful, fn, state="totals" if stateful else None,
                      commit_records=commit_every, commit_interval_ms=1000)
    r._consumer.consume(1, 0.0)             # join and restore before the clock starts
    r._rewind_all()
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


def naive_db(conf, n, commit_every, kind, where):
    db = _db(kind, where)
    ph = "?" if kind == "sqlite" else "%s"
    db.cursor().execute("CREATE TABLE IF NOT EXISTS naive_items (val TEXT)")
    db.commit()
    c = _consumer(conf, "naive-db-" + kind)
    c.subscribe(["in"])
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


def eos_db(conf, n, commit_every, kind, where):
    db = _db(kind, where)
    ph = "?" if kind == "sqlite" else "%s"
    db.cursor().execute("CREATE TABLE IF NOT EXISTS eos_items (val TEXT)")
    db.commit()
    c = _consumer(conf, "eos-db-" + kind)
    sink = TransactionalSink(c, db)
    sink.subscribe(["in"])

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--commit", type=int, default=1000, help="records per commit / transaction")
    ap.add_argument("--pg", default=os.environ.get("PYLOG_PG_DSN"), help="a PostgreSQL DSN")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="pylog-bench-streams-")
    try:
        n, k = args.records, args.commit
        conf = _setup(root, n)
        rows = []
        base = naive_copy(conf, n, k)
        rows.append(("naive at-least-once copy loop", base, None))
        rows.append(("StreamsRunner, stateless (exactly-once)", runner(conf, n, k, False), base))
        rows.append(("StreamsRunner, running total (LMDB + changelog)", runner(conf, n, k, True), base))
        dbs = [("sqlite", os.path.join(root, "bench.db"))]
        if args.pg:
            dbs.append(("pg", args.pg))
        for kind, where in dbs:
            b = naive_db(conf, n, k, kind, where)
            rows.append(("naive %s loader (db commit, then offsets)" % kind, b, None))
            rows.append(("TransactionalSink %s (offsets in the db txn)" % kind,
                         eos_db(conf, n, k, kind, where), b))
        print("%d records, %d per commit, pylog.fsync=never" % (n, k))
        for name, rate, ref in rows:
            ratio = "" if ref is None else "  x%.2f of naive" % (rate / ref)
            print("  %-52s %10.0f rec/s%s" % (name, rate, ratio))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
