"""The embedded peers: py-lmdb, sqlite3, persist-queue and litequeue.

  py-lmdb        records under 8-byte big-endian offsets, put(append=True)
                 (the fast path for keys in order), a commit every 1,000;
                 fast: sync=False; durable: sync=True (an fdatasync per
                 commit).  Read: one cursor over the whole database.
  sqlite3        WAL, a table (off INTEGER PRIMARY KEY, v BLOB), executemany
                 in transactions of 1,000; synchronous NORMAL (no fsync per
                 commit) and FULL (the WAL fsynced per commit).  Read: SELECT.
  persist-queue  SQLiteQueue: put() per record, get() per record.  Durable is
                 the library's default, auto_commit=True (one commit, and with
                 sqlite's default synchronous=FULL one fsync, per put and per
                 get); fast is its batch mode, auto_commit=False with a
                 task_done() every 1,000 calls.
                 file Queue: put() per record (each rewrites the info file),
                 get() + task_done() per record.  Durable is the default
                 chunksize=100 (an fsync of the chunk every 100 puts); fast
                 is one big chunk (no fsync during the run).
                 Both use RawBytes below instead of the default pickle.
  litequeue      put() per record, pop() + done() per record.  Fast is the
                 library's own setting (WAL, synchronous NORMAL); durable sets
                 synchronous=FULL on its connection.

The queues cost tens of microseconds or more per call, so their phases are
capped at ctx.cap seconds and the rate of what was done is reported.
"""
import os
import pickle
import struct

from .common import Case, capped, perf, phase, value_of

BATCH = 1000


# ---- py-lmdb ----

def run_lmdb(ctx, size, n, durable):
    import lmdb
    path = ctx.fresh("lmdb")
    env = lmdb.open(path, map_size=max(1 << 30, 4 * n * (size + 64)), sync=durable,
                    metasync=durable)
    key, value = struct.Struct(">Q").pack, value_of(size)
    try:
        t0 = perf()
        for start in range(0, n, BATCH):
            with env.begin(write=True) as txn:
                put = txn.put
                for i in range(start, min(n, start + BATCH)):
                    put(key(i), value, append=True)
        t1 = perf()
        got = 0
        with env.begin() as txn:
            for _k, v in txn.cursor():
                got += 1
        t2 = perf()
        if got != n or len(v) != size:
            raise RuntimeError("py-lmdb read %d records, expected %d" % (got, n))
    finally:
        env.close()
    return {"write": phase(n, t1 - t0), "write_n": n, "read": phase(n, t2 - t1), "read_n": n}


# ---- sqlite3 ----

def run_sqlite(ctx, size, n, synchronous):
    import sqlite3
    path = ctx.fresh("sqlite")
    con = sqlite3.connect(os.path.join(path, "log.db"), isolation_level=None)
    value = value_of(size)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=" + synchronous)
        con.execute("CREATE TABLE log (off INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        insert = "INSERT INTO log VALUES (?, ?)"
        t0 = perf()
        for start in range(0, n, BATCH):
            con.execute("BEGIN")
            con.executemany(insert, ((i, value) for i in range(start, min(n, start + BATCH))))
            con.execute("COMMIT")
        t1 = perf()
        got = 0
        for (v,) in con.execute("SELECT v FROM log ORDER BY off"):
            got += 1
        t2 = perf()
        if got != n or len(v) != size:
            raise RuntimeError("sqlite read %d records, expected %d" % (got, n))
    finally:
        con.close()
    return {"write": phase(n, t1 - t0), "write_n": n, "read": phase(n, t2 - t1), "read_n": n}


# ---- persist-queue ----

class RawBytes:
    """persist-queue serializer that stores bytes as they are.  SQLiteQueue
    uses dumps/loads; the file Queue uses dump/load on a stream, so records
    are framed by a 4-byte length, and its own info dict (not bytes) is
    pickled with the top bit of the length set."""
    _LEN = struct.Struct(">I")
    _PICKLED = 1 << 31

    @staticmethod
    def dumps(value):
        return value

    @staticmethod
    def loads(data):
        return data

    @classmethod
    def dump(cls, value, fp):
        if isinstance(value, (bytes, bytearray)):
            fp.write(cls._LEN.pack(len(value)) + value)
        else:
            data = pickle.dumps(value)
            fp.write(cls._LEN.pack(len(data) | cls._PICKLED) + data)

    @classmethod
    def load(cls, fp):
        (length,) = cls._LEN.unpack(fp.read(4))
        data = fp.read(length & ~cls._PICKLED)
        return pickle.loads(data) if length & cls._PICKLED else data


def run_pq_sqlite(ctx, size, n, durable):
    from persistqueue import SQLiteQueue
    q = SQLiteQueue(ctx.fresh("pq-sqlite"), auto_commit=durable, serializer=RawBytes)
    value = value_of(size)

    def put(a, b):
        for i in range(a, b):
            q.put(value)
            if not durable and i % BATCH == BATCH - 1:
                q.task_done()

    def get(a, b):
        for i in range(a, b):
            if len(q.get(block=False)) != size:
                raise RuntimeError("persist-queue returned a wrong record")
            if not durable and i % BATCH == BATCH - 1:
                q.task_done()
    try:
        return _queue_phases(ctx, n, put, get, q.task_done if not durable else None)
    finally:
        q.close()


def run_pq_file(ctx, size, n, durable):
    from persistqueue import Queue
    path = ctx.fresh("pq-file")
    tmp = ctx.fresh("pq-file-tmp")              # same filesystem: its renames are atomic
    q = Queue(os.path.join(path, "q"), chunksize=100 if durable else 10 ** 9,
              tempdir=tmp, serializer=RawBytes)
    value = value_of(size)

    def put(a, b):
        for _ in range(a, b):
            q.put(value)

    def get(a, b):
        for _ in range(a, b):
            if len(q.get(block=False)) != size:
                raise RuntimeError("persist-queue returned a wrong record")
            q.task_done()
    return _queue_phases(ctx, n, put, get)


def _queue_phases(ctx, n, put, get, finish=None):
    """Write phase then read phase, each capped at ctx.cap seconds."""
    wrote, w_s = capped(n, ctx.cap, put)
    if finish:
        t0 = perf()
        finish()
        w_s += perf() - t0
    read, r_s = capped(wrote, ctx.cap, get)
    if finish:
        finish()
    return {"write": phase(wrote, w_s), "write_n": wrote, "read": phase(read, r_s),
            "read_n": read}


# ---- litequeue ----

def run_litequeue(ctx, size, n, durable):
    from litequeue import LiteQueue
    q = LiteQueue(os.path.join(ctx.fresh("litequeue"), "q.db"))
    if durable:
        q.conn.execute("PRAGMA synchronous=FULL")
    value = value_of(size)

    def put(a, b):
        for _ in range(a, b):
            q.put(value)

    def get(a, b):
        for _ in range(a, b):
            m = q.pop()
            if m is None or len(m.data) != size:
                raise RuntimeError("litequeue returned a wrong record: %r" % (m,))
            q.done(m.message_id)
    try:
        return _queue_phases(ctx, n, put, get)
    finally:
        q.close()


def _cases(group, system, fn, needs, modes):
    return [Case(group, system, mode, (lambda m: lambda c, s, n: fn(c, s, n, m))(arg), needs)
            for mode, arg in modes]


FAST_DURABLE = (("fast", False), ("durable", True))
CASES = (_cases("py-lmdb", "py-lmdb", run_lmdb, ("lmdb",), FAST_DURABLE)
         + _cases("sqlite", "sqlite3 WAL", run_sqlite, ("sqlite3",),
                  (("fast", "NORMAL"), ("durable", "FULL")))
         + _cases("persist-queue", "persist-queue SQLiteQueue", run_pq_sqlite,
                  ("persistqueue",), FAST_DURABLE)
         + _cases("persist-queue", "persist-queue file Queue", run_pq_file,
                  ("persistqueue",), FAST_DURABLE)
         + _cases("litequeue", "litequeue", run_litequeue, ("litequeue",), FAST_DURABLE))
