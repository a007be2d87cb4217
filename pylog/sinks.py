"""Exactly-once into a database: offsets in the same database transaction.

The classic mistake: a consumer writes a record's effect to a database,
commits there, then dies before committing its offset, and writes it again
after the restart.  TransactionalSink closes that gap by keeping the
consumer's offsets in a table of the same database and writing them in the
same database transaction as the application's rows:

    db = sqlite3.connect("app.db", timeout=30)
    c = Consumer({**conf, "group.id": "loader", "enable.auto.commit": False})
    sink = TransactionalSink(c, db)              # SQLite, psycopg, any DB-API 2 module
    sink.subscribe(["orders"])                   # on assignment: seek to the stored offsets

    def write(cursor, msgs):                     # inside the sink's database transaction
        cursor.executemany("INSERT INTO orders(id, body) VALUES (?, ?)",
                           [(m.key(), m.value()) for m in msgs])
    sink.run(write, stop_event=stop)             # or: sink.write(c.consume(500, 1.0), write)

The database is the source of truth for the offsets; the group's committed
offsets in the store are only a mirror (for lag tools) written after the
database commit.  On assignment (or assign()), the sink seeks each partition
to the offset stored in the database, so whatever is killed when, a record's
effect is in the database exactly when its offset is.

Zombies.  The offset row is advanced with a compare-and-set: UPDATE ... WHERE
next_offset = <the value this sink read or last wrote>.  If another consumer
(the partition's new owner after a rebalance) advanced it meanwhile, the
update matches no row, the transaction is rolled back and SinkFencedError is
raised after the sink rewinds to the database's offsets.  The database's own
locking (SQLite's write lock, PostgreSQL's row locks: a concurrent UPDATE
waits, then re-evaluates the WHERE clause) makes that check atomic; a first
row is INSERTed and a concurrent first INSERT fails on the primary key.

Placeholders follow the DB-API module's paramstyle (qmark, numeric, named,
format, pyformat), found from the connection's module or given.

IdempotentConsumer is for effects that cannot join a database transaction
(an e-mail, an HTTP call): a dedup table records what was done, keyed by
(topic, partition, offset) or by a user key, so a redelivered record is
skipped; see its docstring for the one window that remains.
"""
import sys
import time

from .errors import KafkaError, KafkaException
from .message import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

__all__ = ["TransactionalSink", "SinkFencedError", "IdempotentConsumer", "paramstyle_of"]


class SinkFencedError(Exception):
    """Another consumer advanced a partition's offset row in the database
    since this sink last read or wrote it (this sink is a zombie of an old
    generation).  Raised by TransactionalSink.write() after the rollback and
    the rewind; the records were not written."""


def paramstyle_of(connection):
    """The DB-API paramstyle of connection's driver module (e.g. "qmark" for sqlite3)."""
    mod = type(connection).__module__
    while mod:
        m = sys.modules.get(mod)
        style = getattr(m, "paramstyle", None)
        if isinstance(style, str):
            return style
        mod = mod.rpartition(".")[0]
    raise ValueError("cannot find the paramstyle of %r: pass paramstyle=" % (connection,))


class _Sql:
    """Queries with named slots (:name) rendered in a paramstyle."""

    def __init__(self, style):
        if style not in ("qmark", "numeric", "named", "format", "pyformat"):
            raise ValueError("unknown DB-API paramstyle %r" % (style,))
        self.style = style

    def __call__(self, sql, names, values):
        """(sql with placeholders, parameters) for slot names `names` with `values`."""
        style, out, params = self.style, sql, dict(zip(names, values))
        for i, name in enumerate(names):
            ph = {"qmark": "?", "numeric": ":%d" % (i + 1), "named": ":%s" % name,
                  "format": "%s", "pyformat": "%%(%s)s" % name}[style]
            out = out.replace("{%s}" % name, ph, 1)
        if style in ("named", "pyformat"):
            return out, params
        return out, tuple(values)


def _ensure_table(conn, ddl):
    cur = conn.cursor()
    try:
        cur.execute(ddl)
        conn.commit()
    except Exception:
        conn.rollback()             # a concurrent CREATE won the race: the table is there
    finally:
        cur.close()


class TransactionalSink:
    """Writes consumed records into a database exactly once by committing
    the offsets in the same database transaction.

    consumer    a pylog Consumer (enable.auto.commit is irrelevant: offsets
                are read from the database, not from the group)
    connection  a DB-API 2 connection the sink owns transactions of
    table       the offsets table, created if missing
    mirror_offsets  also commit the offsets to the consumer group after each
                database commit (for lag tools; never read back)
    default_offset  where a partition without a database row starts
                (OFFSET_BEGINNING, or OFFSET_END)

    Not thread-safe."""

    def __init__(self, consumer, connection, table="pylog_offsets", paramstyle=None,
                 group_id=None, mirror_offsets=True, create=True, default_offset=OFFSET_BEGINNING):
        self.consumer = consumer
        self.conn = connection
        self.table = table
        self.group_id = group_id or consumer.consumer_group_metadata().group_id
        self.mirror_offsets = mirror_offsets
        self.default_offset = default_offset
        self._sql = _Sql(paramstyle or paramstyle_of(connection))
        self._expected = {}         # (topic, p) -> the next_offset the database row holds (None: no row)
        self._user_cbs = (None, None, None)
        self.stats = {"records": 0, "commits": 0, "rollbacks": 0, "fenced": 0}
        if create:
            _ensure_table(connection, "CREATE TABLE IF NOT EXISTS %s (group_id VARCHAR(255) NOT NULL, "
                          "topic VARCHAR(255) NOT NULL, partition_id INTEGER NOT NULL, "
                          "next_offset BIGINT NOT NULL, PRIMARY KEY (group_id, topic, partition_id))"
                          % table)

    # ---- offsets in the database ----
    def stored_offsets(self, partitions):
        """[TopicPartition] with the offsets stored in the database (OFFSET_INVALID where none)."""
        cur = self.conn.cursor()
        try:
            out = []
            for tp in partitions:
                sql, params = self._sql(
                    "SELECT next_offset FROM %s WHERE group_id = {g} AND topic = {t} AND "
                    "partition_id = {p}" % self.table, ("g", "t", "p"),
                    (self.group_id, tp.topic, tp.partition))
                cur.execute(sql, params)
                row = cur.fetchone()
                out.append(TopicPartition(tp.topic, tp.partition,
                                          OFFSET_INVALID if row is None else int(row[0])))
            self.conn.commit()          # end the read transaction (PostgreSQL keeps a snapshot)
            return out
        finally:
            cur.close()

    def _store_offset(self, cur, topic, partition, offset):
        key = (topic, partition)
        expected = self._expected.get(key)
        if expected is None:
            sql, params = self._sql(
                "INSERT INTO %s (group_id, topic, partition_id, next_offset) VALUES "
                "({g}, {t}, {p}, {o})" % self.table, ("g", "t", "p", "o"),
                (self.group_id, topic, partition, offset))
            cur.execute(sql, params)
            return
        sql, params = self._sql(
            "UPDATE %s SET next_offset = {o} WHERE group_id = {g} AND topic = {t} AND "
            "partition_id = {p} AND next_offset = {e}" % self.table, ("o", "g", "t", "p", "e"),
            (offset, self.group_id, topic, partition, expected))
        cur.execute(sql, params)
        if cur.rowcount != 1:
            raise SinkFencedError(
                "the offset of %s [%d] in %s is no longer %d (another consumer of group %r "
                "advanced it): this sink's records were rolled back" % (
                    topic, partition, self.table, expected, self.group_id))

    # ---- assignment ----
    def assign(self, partitions):
        """consumer.assign() at the offsets stored in the database."""
        self.consumer.assign(self._positions_for(partitions))

    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None):
        """consumer.subscribe() with callbacks that seek to the database's
        offsets on assignment (your callbacks run after the sink's)."""
        self._user_cbs = (on_assign, on_revoke, on_lost)
        self.consumer.subscribe(topics, on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_revoke)

    def _positions_for(self, partitions):
        stored = self.stored_offsets(partitions)
        for tp in stored:
            self._expected[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
            if tp.offset < 0:       # not the group's mirror: the database has no row
                tp.offset = self.default_offset
        return stored

    def on_assign(self, consumer, partitions):
        positions = self._positions_for(partitions)
        consumer.assign(positions)
        if self._user_cbs[0]:
            self._user_cbs[0](consumer, partitions)

    def on_revoke(self, consumer, partitions):
        for tp in partitions:
            self._expected.pop((tp.topic, tp.partition), None)
        cb = self._user_cbs[1]
        if cb:
            cb(consumer, partitions)

    def rewind(self):
        """Seek every assigned partition back to the database's offsets."""
        assigned = self.consumer.assignment()
        for tp in self._positions_for(assigned):
            self.consumer.seek(tp)

    # ---- writing ----
    def write(self, messages, fn):
        """Call fn(cursor, records) and store the records' offsets, in one
        database transaction.  Error events and records below the stored
        offset (redelivered after a rewind) are left out.  On any exception
        the transaction is rolled back, the consumer rewound to the stored
        offsets, and the exception raised.  Returns the records written."""
        recs, last = [], {}
        for m in messages:
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(m.error())
            key = (m.topic(), m.partition())
            floor = last.get(key, self._expected.get(key))
            if floor is not None and m.offset() < floor:
                continue
            recs.append(m)
            last[key] = m.offset() + 1
        if not recs:
            return []
        cur = self.conn.cursor()
        try:
            fn(cur, recs)
            for (t, p), off in last.items():
                self._store_offset(cur, t, p, off)
            self.conn.commit()
        except BaseException as e:
            try:
                self.conn.rollback()
            finally:
                self.stats["rollbacks"] += 1
                if isinstance(e, SinkFencedError):
                    self.stats["fenced"] += 1
                if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                    self.rewind()
            raise
        finally:
            cur.close()
        self._expected.update(last)
        self.stats["records"] += len(recs)
        self.stats["commits"] += 1
        if self.mirror_offsets:
            try:
                self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()],
                                     asynchronous=True)
            except KafkaException:
                pass                        # a mirror only: the database has the truth
        return recs

    def run(self, fn, batch_size=500, timeout=0.1, stop_event=None, max_idle=None):
        """consume() and write() until stop_event is set or nothing arrived
        for max_idle seconds; returns the number of records written."""
        done = 0
        idle_since = time.monotonic()
        while not (stop_event is not None and stop_event.is_set()):
            wrote = self.write(self.consumer.consume(batch_size, timeout), fn)
            done += len(wrote)
            now = time.monotonic()
            if wrote:
                idle_since = now
            elif max_idle is not None and now - idle_since >= max_idle:
                break
        return done


class IdempotentConsumer:
    """A dedup table for effects that cannot be transactional.

        dedup = IdempotentConsumer(db, "mailer")                 # key: (topic, partition, offset)
        dedup = IdempotentConsumer(db, "mailer", key_fn=lambda m: m.key())   # a business key
        for m in consumer.consume(100, 1.0):
            dedup.process(m, send_mail)      # skipped if done before; else send, then record
        consumer.commit()
        dedup.prune([consumer.committed(parts)])     # see prune()

    process() runs the effect, then records it (one small database
    transaction).  A crash between the effect and the record repeats that one
    effect after the restart: the window a non-transactional sink cannot
    close.  Pass the dedup key to the remote side as an idempotency key to
    close it there.  Everything else (a crash after the record, a rebalance,
    a replay from an old offset, a producer that sent the same business key
    twice with key_fn) is deduplicated.

    Not thread-safe."""

    def __init__(self, connection, namespace, key_fn=None, table="pylog_dedup", paramstyle=None,
                 create=True):
        self.conn = connection
        self.namespace = namespace
        self.key_fn = key_fn
        self.table = table
        self._sql = _Sql(paramstyle or paramstyle_of(connection))
        if create:
            _ensure_table(connection, "CREATE TABLE IF NOT EXISTS %s (namespace VARCHAR(255) NOT "
                          "NULL, dedup_key VARCHAR(1024) NOT NULL, topic VARCHAR(255) NOT NULL, "
                          "partition_id INTEGER NOT NULL, msg_offset BIGINT NOT NULL, by_key "
                          "INTEGER NOT NULL, created_ms BIGINT NOT NULL, PRIMARY KEY (namespace, "
                          "dedup_key))" % table)

    def key_of(self, msg):
        """The dedup key: "topic/partition/offset", or key_fn(msg) (bytes become hex)."""
        if self.key_fn is None:
            return "%s/%d/%d" % (msg.topic(), msg.partition(), msg.offset())
        k = self.key_fn(msg)
        if isinstance(k, (bytes, bytearray, memoryview)):
            return "k:" + bytes(k).hex()
        if k is None:
            raise ValueError("key_fn returned None for %s [%d] @%d" % (
                msg.topic(), msg.partition(), msg.offset()))
        return "k:" + str(k)

    def seen(self, msg):
        """True if msg's effect was recorded as done."""
        cur = self.conn.cursor()
        try:
            sql, params = self._sql("SELECT 1 FROM %s WHERE namespace = {n} AND dedup_key = {k}"
                                    % self.table, ("n", "k"), (self.namespace, self.key_of(msg)))
            cur.execute(sql, params)
            found = cur.fetchone() is not None
            self.conn.commit()
            return found
        finally:
            cur.close()

    def mark(self, msg):
        """Record msg's effect as done (committed).  Returns False if it already was."""
        cur = self.conn.cursor()
        try:
            sql, params = self._sql(
                "INSERT INTO %s (namespace, dedup_key, topic, partition_id, msg_offset, by_key, "
                "created_ms) VALUES ({n}, {k}, {t}, {p}, {o}, {b}, {c})" % self.table,
                ("n", "k", "t", "p", "o", "b", "c"),
                (self.namespace, self.key_of(msg), msg.topic(), msg.partition(), msg.offset(),
                 0 if self.key_fn is None else 1, int(time.time() * 1000)))
            try:
                cur.execute(sql, params)
                self.conn.commit()
                return True
            except Exception:
                self.conn.rollback()
                if self.seen(msg):
                    return False
                raise
        finally:
            cur.close()

    def process(self, msg, effect):
        """effect(msg) unless msg was done before; returns True if it ran."""
        if msg.error() is not None or self.seen(msg):
            return False
        effect(msg)
        self.mark(msg)
        return True

    def prune(self, committed, key_retention_ms=None, now_ms=None):
        """Delete entries no redelivery can need; returns how many went.

        committed: one list of TopicPartition per consumer group (or
        consumer) whose records this namespace deduplicates, e.g.
        [c1.committed(parts), c2.committed(parts)].  A partition is pruned
        only below the smallest offset committed in all of them ("committed
        everywhere"); a partition missing from one list, or without a
        committed offset, is not pruned at all.

        Offset-keyed entries below that offset can never be redelivered.
        User-keyed entries guard against a duplicate arriving at a later
        offset too, so they are kept unless key_retention_ms is given: then
        they go once below the committed offset AND older than that."""
        lists = [list(c) for c in committed]
        if not lists:
            return 0
        floor = None
        for tps in lists:
            cur_map = {(tp.topic, tp.partition): tp.offset for tp in tps
                       if tp.offset is not None and tp.offset >= 0 and
                       getattr(tp, "error", None) is None}
            floor = cur_map if floor is None else {
                k: min(v, cur_map[k]) for k, v in floor.items() if k in cur_map}
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cur = self.conn.cursor()
        deleted = 0
        try:
            for (t, p), off in sorted(floor.items()):
                sql, params = self._sql(
                    "DELETE FROM %s WHERE namespace = {n} AND topic = {t} AND partition_id = {p} "
                    "AND msg_offset < {o} AND (by_key = 0 OR created_ms < {c})" % self.table,
                    ("n", "t", "p", "o", "c"),
                    (self.namespace, t, p, off,
                     -1 if key_retention_ms is None else now_ms - key_retention_ms))
                cur.execute(sql, params)
                deleted += max(cur.rowcount, 0)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cur.close()
        return deleted

    def count(self):
        cur = self.conn.cursor()
        try:
            sql, params = self._sql("SELECT COUNT(*) FROM %s WHERE namespace = {n}" % self.table,
                                    ("n",), (self.namespace,))
            cur.execute(sql, params)
            n = cur.fetchone()[0]
            self.conn.commit()
            return n
        finally:
            cur.close()
