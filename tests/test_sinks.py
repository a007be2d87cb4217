"""pylog.sinks: exactly-once into SQLite and PostgreSQL, and the dedup helper.

The kill tests: a loader (a TransactionalSink over a group consumer)
copies N records into a table with no unique constraint, so a duplicate
would show.  It is SIGKILLed at planned moments (while it joins and seeks,
and when the table has grown by a random number of rows, mid-transaction or
mid-commit) and restarted; each restart seeks to the offsets stored in the
database.  Every planned kill must land on a live loader, so the number of
kills does not depend on the machine's speed.  The table must equal the
input exactly once, and the offsets stored in the database its end.

The default run is CI-sized; PYLOG_SLOW_TESTS=1 runs the full proof: 50,000
records and 25 kills per database.

PostgreSQL is tested for real: tests/conftest.py starts a throwaway cluster
(installing Debian's server first if needed and possible) and the tests skip,
saying why, only when that cannot be done.
"""
import os
import random
import signal
import sqlite3
import time
import uuid

import pytest

from pylog import Consumer, Message, TopicPartition
from pylog.sinks import IdempotentConsumer, SinkFencedError, TransactionalSink, paramstyle_of

from txn_support import CTX, conf_for, create_topics

PARTS = 3
GROUP = "loader"
SLOW = os.environ.get("PYLOG_SLOW_TESTS") == "1"


def produce_input(conf, n):
    from pylog import Producer
    p = Producer({**conf, "linger.ms": 20})
    for i in range(n):
        p.produce("in", value=b"%d" % i, partition=i % PARTS)
    p.flush()
    p.close()


def ends_for(n):
    return {p: len(range(p, n, PARTS)) for p in range(PARTS)}


def connect(db, **kw):
    """db: ("sqlite", path) with SQLite's defaults (rollback journal,
    synchronous=FULL), ("sqlite-wal", path) in WAL mode with synchronous=NORMAL
    (no fsync per commit: a SIGKILL loses nothing the OS has), or ("pg", dsn)."""
    kind, where = db
    if kind.startswith("sqlite"):
        conn = sqlite3.connect(where, timeout=30)
        if kind == "sqlite-wal":
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn
    import psycopg
    return psycopg.connect(where, **kw)


def setup_table(db):
    conn = connect(db)
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS items (part INTEGER, off BIGINT, val TEXT)")
    conn.commit()
    conn.close()


class RowCount:
    """SELECT COUNT(*) FROM items on one open connection (no transaction held)."""

    def __init__(self, db):
        self.conn = connect(db, autocommit=True) if db[0] == "pg" else connect(db)

    def __call__(self):
        cur = self.conn.cursor()
        cur.execute("SELECT COUNT(*) FROM items")
        return cur.fetchone()[0]

    def wait_for(self, proc, target, timeout=30.0):
        deadline = time.monotonic() + timeout
        while proc.is_alive() and time.monotonic() < deadline and self() < target:
            time.sleep(0.005)

    def close(self):
        self.conn.close()


def loader_main(conf, db, ends, conn_out, batch_size):
    conn = connect(db)
    ph = "?" if db[0].startswith("sqlite") else "%s"
    c = Consumer({"session.timeout.ms": 1000, "heartbeat.interval.ms": 100, **conf,
                  "group.id": GROUP, "enable.auto.commit": False})
    sink = TransactionalSink(c, conn)
    sink.subscribe(["in"])
    conn_out.send("started")

    def write(cur, msgs):
        cur.executemany("INSERT INTO items (part, off, val) VALUES (%s, %s, %s)" % (ph, ph, ph),
                        [(m.partition(), m.offset(), m.value().decode()) for m in msgs])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sink.run(write, batch_size=batch_size, max_idle=0.3)
        got = sink.stored_offsets([TopicPartition("in", p) for p in range(PARTS)])
        if {tp.partition: tp.offset for tp in got} == ends:
            break
    else:
        os._exit(3)
    c.close()
    conn.close()
    conn_out.send(("done", dict(sink.stats)))


def kill_plan(rng, early, progress, step):
    """("early", delay s, but no later than the first commit: joining,
    seeking) and ("progress", rows to wait for, then up to 5 ms), in a random
    order."""
    plan = [("early", rng.uniform(0.0, 0.3)) for _ in range(early)]
    plan += [("progress", rng.randint(*step)) for _ in range(progress)]
    rng.shuffle(plan)
    return plan


def run_loader_with_kills(tmp_path, db, n, plan, seed, batch_size=10, extra_conf=None):
    """Kill the loader as `plan` says (each kill must find it alive), let a
    last one finish, check the table.  Returns the kills made."""
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS})
    produce_input(conf, n)
    setup_table(db)
    ends = ends_for(n)
    rng = random.Random(seed)
    rows = RowCount(db)
    kills, proc = [], None
    t0 = time.monotonic()

    def start():
        parent, child = CTX.Pipe()
        p = CTX.Process(target=loader_main, args=({**conf, **(extra_conf or {})}, db, ends, child,
                                                  batch_size), daemon=True)
        p.start()
        child.close()
        assert parent.poll(60) and parent.recv() == "started"
        return p, parent
    try:
        for kind, arg in plan:
            proc, _ = start()
            if kind == "early":             # at most until its first commit
                rows.wait_for(proc, rows() + 1, timeout=arg)
            else:
                rows.wait_for(proc, rows() + arg)
                time.sleep(rng.uniform(0.0, 0.005))
            assert proc.is_alive(), \
                "the loader ended (exit code %s) before the planned kill %d (%s): the plan " \
                "is too long for %d records" % (proc.exitcode, len(kills), kind, n)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            assert proc.exitcode == -signal.SIGKILL
            kills.append(kind)
            print("kill %d (%s %s) at %.2f s: %d rows" % (len(kills), kind, arg,
                                                      time.monotonic() - t0, rows()))
        proc, conn = start()
        assert conn.poll(120), "the last loader did not finish"
        assert conn.recv()[0] == "done"
        proc.join(20)
        assert proc.exitcode == 0
    finally:
        rows.close()
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(10)
    conn = connect(db)
    cur = conn.cursor()
    cur.execute("SELECT part, off, val FROM items")
    got = cur.fetchall()
    cur.execute("SELECT partition_id, next_offset FROM pylog_offsets WHERE group_id = 'loader'")
    stored = dict(cur.fetchall())
    conn.close()
    values = sorted(int(v) for _, _, v in got)
    assert len(got) == n, "the table has %d rows for %d records" % (len(got), n)
    assert values == list(range(n))
    assert sorted((p, o) for p, o, _ in got) == sorted(
        (p, o) for p in range(PARTS) for o in range(ends[p]))
    assert stored == ends
    print("\n%s: %d records exactly once across %d SIGKILLs (%d early, %d at progress) in %.1f s"
          % (db[0], n, len(kills), kills.count("early"), kills.count("progress"),
             time.monotonic() - t0))
    return kills


# CI-sized: static membership (group.instance.id) lets a restart take over at once.
CI = dict(n=6000, early=3, progress=5, step=(20, 300), batch_size=10,
          extra_conf={"group.instance.id": "loader-0"})
# The full proof: dynamic membership (a restart waits for the dead member's session).
FULL = dict(n=50_000, early=8, progress=17, step=(200, 1500), batch_size=25, extra_conf=None)


def _kill_test(tmp_path, db, size, seed):
    plan = kill_plan(random.Random(seed), size["early"], size["progress"], size["step"])
    kills = run_loader_with_kills(tmp_path, db, size["n"], plan, seed,
                                  batch_size=size["batch_size"], extra_conf=size["extra_conf"])
    assert len(kills) == len(plan) == size["early"] + size["progress"]


def test_sqlite_sink_is_exactly_once_when_killed_and_restarted(tmp_path):
    _kill_test(tmp_path, ("sqlite-wal", str(tmp_path / "app.db")), CI, seed=3)


@pytest.mark.skipif(not SLOW, reason="the full 50,000-record proof: PYLOG_SLOW_TESTS=1")
def test_sqlite_sink_is_exactly_once_over_50000_records_and_many_kills(tmp_path):
    _kill_test(tmp_path, ("sqlite", str(tmp_path / "app.db")), FULL, seed=13)


# ---- PostgreSQL: a database of the session's throwaway cluster (tests/conftest.py) ----

@pytest.fixture
def postgres(postgres_cluster):
    import psycopg
    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(postgres_cluster, autocommit=True) as c:
        c.execute("CREATE DATABASE %s" % name)
    yield postgres_cluster.replace("dbname=postgres", "dbname=" + name)
    with psycopg.connect(postgres_cluster, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def test_postgresql_sink_is_exactly_once_when_killed_and_restarted(tmp_path, postgres):
    _kill_test(tmp_path, ("pg", postgres), CI, seed=5)


@pytest.mark.skipif(not SLOW, reason="the full 50,000-record proof: PYLOG_SLOW_TESTS=1")
def test_postgresql_sink_is_exactly_once_over_50000_records_and_many_kills(tmp_path, postgres):
    _kill_test(tmp_path, ("pg", postgres), FULL, seed=17)


def test_postgresql_zombie_sink_is_fenced_by_the_offset_row(tmp_path, postgres):
    import psycopg
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": 1})
    produce_input(conf, 0)
    msgs = [Message("in", 0, o, None, b"%d" % o) for o in range(10)]
    with psycopg.connect(postgres) as c1, psycopg.connect(postgres) as c2:
        _check_zombie_is_fenced(conf, c1, c2, msgs)


def _check_zombie_is_fenced(conf, db1, db2, msgs):
    """Two sinks of one group own partition 0 in turn: the old one (a zombie
    that missed the rebalance) may not write after the new one has."""
    ca = Consumer({**conf, "group.id": GROUP})
    cb = Consumer({**conf, "group.id": GROUP})
    try:
        old, new = TransactionalSink(ca, db1), TransactionalSink(cb, db2)
        old.assign([TopicPartition("in", 0)])
        old.write(msgs[:3], lambda cur, recs: None)
        new.assign([TopicPartition("in", 0)])           # reads offset 3
        assert new.write(msgs[3:6], lambda cur, recs: None)
        with pytest.raises(SinkFencedError):
            old.write(msgs[3:5], lambda cur, recs: None)
        assert old.stats["fenced"] == 1
        assert [tp.offset for tp in old.stored_offsets([TopicPartition("in", 0)])] == [6]
        # the zombie was rewound to the database's offset and may go on from there
        assert ca.position([TopicPartition("in", 0)])[0].offset == 6
    finally:
        ca.close()
        cb.close()


def test_sqlite_zombie_sink_is_fenced_by_the_offset_row(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": 1})
    msgs = [Message("in", 0, o, None, b"%d" % o) for o in range(10)]
    path = str(tmp_path / "z.db")
    _check_zombie_is_fenced(conf, sqlite3.connect(path, timeout=10),
                            sqlite3.connect(path, timeout=10), msgs)


def test_sink_rolls_back_and_rewinds_when_the_write_fails(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": 1})
    produce_input(conf, 0)
    from pylog import Producer
    p = Producer(conf)
    for i in range(20):
        p.produce("in", value=b"%d" % i)
    p.flush()
    p.close()
    db = sqlite3.connect(str(tmp_path / "a.db"))
    db.execute("CREATE TABLE items (val TEXT)")
    db.commit()
    c = Consumer({**conf, "group.id": GROUP})
    try:
        sink = TransactionalSink(c, db)
        sink.assign([TopicPartition("in", 0)])

        def bad(cur, recs):
            cur.executemany("INSERT INTO items VALUES (?)", [(m.value().decode(),) for m in recs])
            raise RuntimeError("disk on fire")
        with pytest.raises(RuntimeError):
            sink.write(c.consume(10, 2.0), bad)
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
        assert c.consume(1, 2.0)[0].offset() == 0          # rewound to the start
        c.seek(TopicPartition("in", 0, 0))

        def good(cur, recs):
            cur.executemany("INSERT INTO items VALUES (?)", [(m.value().decode(),) for m in recs])
        assert sink.run(good, batch_size=7, max_idle=0.3) == 20
        assert [r[0] for r in db.execute("SELECT val FROM items")] == [str(i) for i in range(20)]
        # the group's offsets mirror the database's (for lag tools)
        assert c.committed([TopicPartition("in", 0)])[0].offset == 20
    finally:
        c.close()


# ---- paramstyles ----

class _FakeCursor:
    def __init__(self, log):
        self.log, self.rowcount = log, 1

    def execute(self, sql, params=()):
        self.log.append((sql, params))

    def fetchone(self):
        return None

    def close(self):
        pass


class _FakeConn:
    def __init__(self):
        self.log = []

    def cursor(self):
        return _FakeCursor(self.log)

    def commit(self):
        pass

    def rollback(self):
        pass


@pytest.mark.parametrize("style, placeholder, params_type", [
    ("qmark", "?", tuple), ("format", "%s", tuple), ("numeric", ":1", tuple),
    ("named", ":g", dict), ("pyformat", "%(g)s", dict)])
def test_offset_queries_use_the_drivers_paramstyle(tmp_path, style, placeholder, params_type):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": 1})
    fake = _FakeConn()
    c = Consumer({**conf, "group.id": GROUP})
    try:
        sink = TransactionalSink(c, fake, paramstyle=style)
        sink.stored_offsets([TopicPartition("in", 0)])
        sql, params = fake.log[-1]
        assert placeholder in sql and isinstance(params, params_type)
    finally:
        c.close()


def test_paramstyle_is_found_from_the_connection_module():
    assert paramstyle_of(sqlite3.connect(":memory:")) == "qmark"


# ---- IdempotentConsumer ----

def _msg(offset, key=None, partition=0, topic="in"):
    return Message(topic, partition, offset, key, b"v%d" % offset)


def test_idempotent_consumer_runs_each_offset_once():
    db = sqlite3.connect(":memory:")
    dedup = IdempotentConsumer(db, "mailer")
    done = []
    for o in [0, 1, 2, 1, 0, 3, 2]:                    # a replay after a rewind
        dedup.process(_msg(o), lambda m: done.append(m.offset()))
    assert done == [0, 1, 2, 3]
    assert dedup.mark(_msg(3)) is False
    assert dedup.seen(_msg(2)) and not dedup.seen(_msg(4)) and not dedup.seen(_msg(2, partition=1))


def test_idempotent_consumer_by_user_key_skips_a_resent_business_event():
    db = sqlite3.connect(":memory:")
    dedup = IdempotentConsumer(db, "payments", key_fn=lambda m: m.key())
    done = []
    for o, k in [(0, b"pay-1"), (1, b"pay-2"), (2, b"pay-1"), (3, b"pay-3")]:
        dedup.process(_msg(o, k), lambda m: done.append(m.key()))
    assert done == [b"pay-1", b"pay-2", b"pay-3"]


def test_idempotent_consumer_namespaces_are_separate():
    db = sqlite3.connect(":memory:")
    a, b = IdempotentConsumer(db, "a"), IdempotentConsumer(db, "b")
    a.mark(_msg(0))
    assert a.seen(_msg(0)) and not b.seen(_msg(0))


def test_prune_removes_only_offsets_committed_everywhere():
    db = sqlite3.connect(":memory:")
    dedup = IdempotentConsumer(db, "n")
    for p in (0, 1, 2):
        for o in range(10):
            dedup.mark(_msg(o, partition=p))
    group_a = [TopicPartition("in", 0, 8), TopicPartition("in", 1, 5), TopicPartition("in", 2, 9)]
    group_b = [TopicPartition("in", 0, 4), TopicPartition("in", 1, 7)]     # nothing for partition 2
    assert dedup.prune([group_a, group_b]) == 4 + 5
    assert not dedup.seen(_msg(3, partition=0)) and dedup.seen(_msg(4, partition=0))
    assert not dedup.seen(_msg(4, partition=1)) and dedup.seen(_msg(5, partition=1))
    assert all(dedup.seen(_msg(o, partition=2)) for o in range(10))    # not committed everywhere
    assert dedup.prune([[TopicPartition("in", 0, -1001)]]) == 0            # no committed offset
    assert dedup.prune([]) == 0
    assert dedup.count() == 30 - 9


def test_prune_keeps_user_keys_until_their_retention():
    db = sqlite3.connect(":memory:")
    dedup = IdempotentConsumer(db, "k", key_fn=lambda m: m.key())
    dedup.mark(_msg(0, b"x"))
    dedup.mark(_msg(1, b"y"))
    committed = [[TopicPartition("in", 0, 100)]]
    assert dedup.prune(committed) == 0                      # a later duplicate may still come
    now = int(time.time() * 1000)
    assert dedup.prune(committed, key_retention_ms=60_000, now_ms=now) == 0
    assert dedup.prune(committed, key_retention_ms=60_000, now_ms=now + 120_000) == 2
    assert dedup.count() == 0


def test_idempotent_consumer_after_a_crash_between_mark_and_commit_skips_the_replay(tmp_path):
    """The dedup table is durable: a new connection (the restarted process) skips what was done."""
    path = str(tmp_path / "d.db")
    d1 = IdempotentConsumer(sqlite3.connect(path), "mailer")
    assert d1.process(_msg(5), lambda m: None)
    d2 = IdempotentConsumer(sqlite3.connect(path), "mailer")
    ran = []
    assert not d2.process(_msg(5), ran.append) and ran == []
