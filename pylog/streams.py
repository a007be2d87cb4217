"""A consume-transform-produce runner with Kafka Streams' exactly_once_v2.

    runner = StreamsRunner(conf, ["payments"], group_id="totals",
                           transactional_id_prefix="totals", process_fn=add_up,
                           state="totals", commit_records=1000)
    runner.run(stop_event)          # or run(max_idle=5.0)
    runner.close()

    def add_up(record, state):      # state: the StateStore of record.partition()
        total = state.get(record.key(), 0) + int(record.value())
        state.put(record.key(), total)
        return [("totals", record.key(), b"%d" % total)]

The loop.  One transactional producer and one read_committed consumer in the
group `group_id`.  A transaction starts at the first record after the last
commit; process_fn's output records, the state changes of the transaction
(one changelog record per changed key: caching, as Kafka Streams does) and
the consumed offsets are committed together when `commit_records` records
have been processed or `commit_interval_ms` has passed.  So a record's
output, its state change and its input offset become visible all or not at
all, whatever is killed when.

The offsets sent are the runner's own "next offset to process" per
partition, never consumer.position(): a consume() call that rebalances may
have fetched (and advanced over) records the runner has not processed yet.

Members and transactional ids.  Start as many runners (processes) with the
same group_id as you like; the group shares the input partitions among them.
Each needs its own transactional.id, stable across its restarts, as in Kafka
Streams' eos-v2 (one producer per member, "<prefix>-<member>"):

  * transactional_id="app-3"            fixed by you, one per member;
  * transactional_id_prefix="app"       derived: "app-<member_name>" if given,
                                        else "app-<group.instance.id>" (static
                                        membership), else "app-<slot>" where
                                        the slot is the lowest number whose
                                        lock file (next to the store) no live
                                        process holds.

Two live runners never share an id, so they never fence each other.  A
member that restarts gets its old id back (a slot's lock dies with its
process), so its init_transactions() fences its predecessor and aborts the
transaction that predecessor left open, at once instead of after
transaction.timeout.ms; until then, a member taking over its partitions
waits (for the offsets it staged: KIP-447's require_stable; for the
changelog records it wrote: the restore, see below).  A member that
is alive but was expelled (hung past session.timeout.ms) is fenced by the
group instead: its offsets carry an old generation and are refused, so its
transaction aborts.

Rebalances (callbacks run inside consume()): on_revoke commits the open
transaction, or aborts it if it cannot commit, before the partitions go, so
the old and the new owner never both write for a partition; on_lost (we were
expelled) aborts, since a commit would be refused anyway; on_assign waits
until no unfinished transaction holds offsets for the partitions (KIP-447's
require_stable), restores their state stores and seeks to the committed
offsets.

Errors.  A fatal error (PRODUCER_FENCED: another runner started with the
same transactional.id) stops the runner with StreamsFatalError; nothing it
had not committed becomes visible.  An abortable error (e.g. the group moved
on and refused our offsets: UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION) aborts
the transaction, forgets the uncommitted state changes, rewinds every
assigned partition to its committed offset and goes on.  An exception from
process_fn aborts the transaction and propagates.

State stores: LMDB plus a changelog, not a dict.  Each task (input
partition number p, Kafka Streams' task 0_p) has an LMDB environment in
`state_dir/<p>/` (default: a "<store dir>-streams-state/<group_id>" directory
next to the store) and partition p of the compacted topic
"<group_id>-<store>-changelog".  LMDB was chosen over a dict rebuilt from
the changelog because a restart then replays only the changelog records past
the local checkpoint, not the whole history, and the state need not fit in
memory.  The rules that keep it exact:

  * puts go to an in-memory overlay; at commit they are produced to the
    changelog inside the transaction;
  * only after commit_transaction() returns are they written to LMDB, in one
    LMDB transaction together with the checkpoint: the changelog offset the
    local store now reflects (the offset after our last changelog record);
  * an abort drops the overlay, so LMDB never holds uncommitted state;
  * a kill between the two commits leaves LMDB behind, never ahead: on
    assignment the task reads its changelog partition (read_committed) from
    the checkpoint to the last stable offset and applies it, then seeks the
    input to the committed offset of the same transaction.  A checkpoint
    outside the changelog's [start, end] (a wiped or recreated store) makes
    the task start from an empty store at the changelog's start;
  * restoring first waits until every transaction that wrote to the
    changelog partition before the assignment is decided (a dead member's
    open transaction is aborted by its restart or its timeout): restoring
    only up to a last stable offset held back by it would miss state that
    later transactions committed;
  * LMDB's checkpoint only moves forward: members on one machine share the
    task directories, and a late write from a member that lost the task
    (it committed, then stalled before its LMDB write while the new owner
    restored and went on) is dropped instead of overwriting newer state.

StreamsRunner is not thread-safe: run() and close() belong to one thread
(set stop_event from another to stop run()).  Several runners may run in
one process, each in its own thread (Kafka Streams' stream threads).
"""
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time

from urllib.parse import quote

import lmdb

from . import config as _config, failpoints
from .admin import AdminClient, NewTopic
from .consumer import Consumer
from .errors import KafkaError, KafkaException
from .message import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition
from .producer import Producer

log = logging.getLogger("pylog.streams")

_CHECKPOINT = b"changelog.offset"
_LMDB_MAP_SIZE = 1 << 30          # 1 GiB of address space per task; grows on demand (MapFullError)


class StreamsFatalError(KafkaException):
    """The runner stopped and cannot go on, e.g. its transactional.id was
    fenced by a newer runner (PRODUCER_FENCED).  Nothing it had not
    committed is visible; start a new runner (which restores and resumes)."""


class StateStore:
    """The keyed state of one task (one input partition number).

    Keys are bytes (str is encoded as UTF-8); values are anything json can
    encode.  get() sees this transaction's own puts.  Not thread-safe."""

    def __init__(self, name, partition, path):
        self.name = name
        self.partition = partition
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._env_key, (self._env, self._data, self._meta, _) = _open_env(path)
        self._dirty = {}                    # key -> encoded value, or None for a delete
        self.changelog_end = None           # offset after our last changelog record of this txn

    @staticmethod
    def _key(key):
        if isinstance(key, str):
            return key.encode("utf-8")
        if isinstance(key, (bytes, bytearray, memoryview)):
            return bytes(key)
        raise TypeError("state keys must be bytes or str, not %s" % type(key).__name__)

    def get(self, key, default=None):
        k = self._key(key)
        if k in self._dirty:
            v = self._dirty[k]
        else:
            with self._env.begin(db=self._data) as txn:
                v = txn.get(k)
        return default if v is None else json.loads(v)

    def put(self, key, value):
        self._dirty[self._key(key)] = json.dumps(value, separators=(",", ":")).encode()

    def delete(self, key):
        self._dirty[self._key(key)] = None

    def items(self):
        """Every (key, value) as committed plus this transaction's changes."""
        out = {}
        with self._env.begin(db=self._data) as txn:
            for k, v in txn.cursor():
                out[bytes(k)] = v
        out.update(self._dirty)
        return [(k, json.loads(v)) for k, v in sorted(out.items()) if v is not None]

    def checkpoint(self):
        """The changelog offset the local store reflects, or None (never restored)."""
        with self._env.begin(db=self._meta) as txn:
            v = txn.get(_CHECKPOINT)
        return None if v is None else int(v)

    # ---- the runner's side ----
    def _apply(self, changes, checkpoint):
        """Write changes ([(key, encoded value or None)]) and the checkpoint in
        one LMDB txn; returns False (and writes nothing) if the store already
        reflects the changelog at or past `checkpoint` (another member wrote it)."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    cur = txn.get(_CHECKPOINT, db=self._meta)
                    if cur is not None and int(cur) > checkpoint or \
                            cur is not None and int(cur) == checkpoint and changes:
                        return False
                    for k, v in changes:
                        if v is None:
                            txn.delete(k, db=self._data)
                        else:
                            txn.put(k, v, db=self._data)
                    txn.put(_CHECKPOINT, b"%d" % checkpoint, db=self._meta)
                return True
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _wipe(self):
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._meta, delete=False)

    def _commit_local(self):
        """After the Kafka transaction committed: make LMDB reflect it."""
        if self._dirty and self.changelog_end is not None:
            if not self._apply(list(self._dirty.items()), self.changelog_end):
                log.warning("%s task %d: the local store is already past changelog offset %d "
                            "(another member restored it): not writing older state", self.name,
                            self.partition, self.changelog_end)
        self._dirty.clear()
        self.changelog_end = None

    def _discard(self):
        self._dirty.clear()
        self.changelog_end = None

    def close(self):
        if self._env_key is not None:
            _close_env(self._env_key)
            self._env_key = None


# One LMDB environment per task directory and process (LMDB allows no second
# one): runners of one group in one process (threads) share it when a task
# moves between them.
_ENVS = {}                      # realpath -> [env, data db, meta db, number of StateStores]
_ENVS_LOCK = threading.Lock()


def _open_env(path):
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            env = lmdb.open(path, max_dbs=2, map_size=_LMDB_MAP_SIZE, subdir=True)
            entry = _ENVS[key] = [env, env.open_db(b"data"), env.open_db(b"meta"), 0]
        entry[3] += 1
        return key, entry


def _close_env(key):
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None:
            entry[3] -= 1
            if entry[3] == 0:
                del _ENVS[key]
                entry[0].close()


def _split_conf(conf):
    """One dict configures both clients: keep each side's own keys (avoids
    librdkafka's 'will be ignored' warnings)."""
    prod = {k: v for k, v in conf.items() if k not in _config._CONSUMER}
    cons = {k: v for k, v in conf.items() if k not in _config._PRODUCER}
    return prod, cons


def _claim_slot(directory):
    """(n, fd): the lowest n whose lock file in `directory` no live process
    holds, locked (flock, released when fd is closed or the process dies)."""
    os.makedirs(directory, exist_ok=True)
    n = 0
    while True:
        fd = os.open(os.path.join(directory, "%d.lock" % n), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            n += 1
            continue
        return str(n), fd


class StreamsRunner:
    """Owns one consume-transform-produce loop with exactly-once output.

    conf              shared client config (bootstrap.servers, pylog.fsync,
                      session.timeout.ms, linger.ms, ...)
    input_topics      topics to subscribe to
    group_id          the consumer group, also the application id (it names
                      the changelog topics and the state directory)
    transactional_id  this runner's transactional.id; keep it stable per
                      worker (e.g. "app-worker-3") so that a restarted
                      worker fences its dead predecessor ...
    transactional_id_prefix ... or let each member derive its own:
                      "<prefix>-<member>" (see "Members and transactional ids"
                      above); the id in use is self.transactional_id
    member_name       the <member> part with a prefix (default: the conf's
                      group.instance.id, else a slot claimed next to the store)
    process_fn        process_fn(record, state) -> iterable of output records
                      (topic, key, value) or (topic, key, value, headers);
                      state is the StateStore of record.partition(), or None
    commit_records    commit after this many records ...
    commit_interval_ms ... or when the open transaction is this old
    state             None (stateless), or a store name (True means "store")
    state_dir         where the LMDB task directories live
    """

    def __init__(self, conf, input_topics, group_id, transactional_id=None, process_fn=None,
                 commit_records=1000, commit_interval_ms=100, state=None, state_dir=None,
                 batch_size=500, poll_timeout=0.1, transactional_id_prefix=None,
                 member_name=None):
        if not callable(process_fn):
            raise TypeError("process_fn must be callable")
        if commit_records < 1 or commit_interval_ms < 0:
            raise ValueError("commit_records must be >= 1 and commit_interval_ms >= 0")
        if (transactional_id is None) == (transactional_id_prefix is None):
            raise ValueError("give either transactional_id or transactional_id_prefix")
        if member_name is not None and transactional_id_prefix is None:
            raise ValueError("member_name goes with transactional_id_prefix")
        self.input_topics = list(input_topics)
        self.group_id = group_id
        self._slot_fd = None                # the member slot's locked file, with a prefix
        self.process_fn = process_fn
        self.commit_records = commit_records
        self.commit_interval = commit_interval_ms / 1000.0
        self.batch_size = max(1, min(batch_size, commit_records))
        self.poll_timeout = poll_timeout
        self.stats = {"records": 0, "commits": 0, "aborts": 0, "rebalances": 0, "restored": 0}
        self._conf = dict(conf)
        self._txn_timeout = int(conf.get("transaction.timeout.ms", 60000)) / 1000.0
        pconf, cconf = _split_conf(conf)
        self._cooperative = str(cconf.get("partition.assignment.strategy", "range")).split(",")[0] \
            .strip() == "cooperative-sticky"
        self.store_name = None if state in (None, False) else ("store" if state is True else state)
        self.changelog = None
        self._tasks = {}                    # partition number -> StateStore
        self._restorer = None
        self._watermarks = None             # read_uncommitted: the changelog's high watermark
        self._closed = False
        self._failed = None                 # the fatal KafkaError, once fenced
        self._in_txn = False
        self._txn_records = 0
        self._txn_start = 0.0
        self._offsets = {}                  # (topic, p) -> next offset, to send in this txn
        self._positions = {}                # (topic, p) -> next offset to process
        self._rewind = False                # an abort inside a callback: rewind after consume()
        self._deferred = None               # an exception raised inside a callback
        store_path = _config.store_path(_config.parse(cconf, "admin")) if str(
            cconf.get("bootstrap.servers", "")).startswith("file:") else None
        app_dir = None if store_path is None else os.path.join(
            os.path.dirname(os.path.abspath(store_path)),
            os.path.basename(os.path.abspath(store_path)) + "-streams-state", group_id)
        if transactional_id is None:
            member = member_name if member_name is not None else cconf.get("group.instance.id")
            if member is None:
                if app_dir is None:
                    raise ValueError("with a Kafka cluster, transactional_id_prefix needs "
                                     "member_name or group.instance.id (a stable member id)")
                member, self._slot_fd = _claim_slot(os.path.join(
                    app_dir, ".members", quote(transactional_id_prefix, safe="")))
            transactional_id = "%s-%s" % (transactional_id_prefix, member)
        self.transactional_id = transactional_id
        self._producer = None
        try:
            if self.store_name is not None:
                if store_path is None:
                    raise ValueError("state stores need a pylog store "
                                     "(bootstrap.servers=file:///...)")
                self.changelog = "%s-%s-changelog" % (group_id, self.store_name)
                self.state_dir = state_dir or os.path.join(app_dir, self.store_name)
                self._create_changelog(cconf)
            self._producer = Producer({**pconf, "transactional.id": transactional_id})
            self._producer.init_transactions()   # fences our predecessor, aborts what it left open
            self._consumer = Consumer({"auto.offset.reset": "earliest", **cconf,
                                       "group.id": group_id, "isolation.level": "read_committed",
                                       "enable.auto.commit": False, "enable.partition.eof": False})
        except BaseException:
            if self._producer is not None:
                self._producer.close()
            self._release_slot()
            raise
        self._consumer.subscribe(self.input_topics, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)

    # ---- setup ----
    def _create_changelog(self, cconf):
        admin = AdminClient({k: v for k, v in cconf.items() if k in _config._COMMON})
        try:
            md = admin.list_topics().topics
            parts = max([len(md[t].partitions) for t in self.input_topics if t in md] or [1])
            fut = admin.create_topics([NewTopic(self.changelog, num_partitions=parts,
                                                config={"cleanup.policy": "compact"})])
            try:
                fut[self.changelog].result()
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        finally:
            admin.close()

    # ---- the loop ----
    def run(self, stop_event=None, max_idle=None, max_records=None):
        """Process records until stop_event is set, no record arrived for
        max_idle seconds, or max_records were processed; commits what is
        open before returning.  Returns the number of records processed.
        Raises StreamsFatalError when fenced, and what process_fn raises."""
        self._check_usable()
        done = 0
        idle_since = time.monotonic()
        while not (stop_event is not None and stop_event.is_set()):
            try:
                msgs = self._consumer.consume(self.batch_size, self.poll_timeout)
                self._after_callbacks()
                if self._rewind:
                    self._rewind_all()
                    continue
                n = self._process_batch(msgs)
                done += n
                now = time.monotonic()
                if self._in_txn and (self._txn_records >= self.commit_records or
                                     now - self._txn_start >= self.commit_interval):
                    self._commit()
            except KafkaException as e:
                self._handle(e)
                continue
            if n:
                idle_since = now
            elif max_idle is not None and now - idle_since >= max_idle:
                break
            if max_records is not None and done >= max_records:
                break
        try:
            self._commit()
        except KafkaException as e:
            self._handle(e)
        return done

    def _process_batch(self, msgs):
        n = 0
        positions, offsets, fn = self._positions, self._offsets, self.process_fn
        produce = self._producer.produce
        tasks = self._tasks if self.store_name is not None else None
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._MAX_POLL_EXCEEDED:
                    log.warning("%s: %s", self.transactional_id, err.str())
                    continue
                raise KafkaException(err)
            tp = (m.topic(), m.partition())
            off = m.offset()
            pos = positions.get(tp)
            if pos is not None and off < pos:
                continue                    # already processed (re-fetched after a seek)
            if not self._in_txn:
                self._producer.begin_transaction()
                self._in_txn = True
                self._txn_records = 0
                self._txn_start = time.monotonic()
            try:
                outs = fn(m, None if tasks is None else tasks.get(tp[1]))
            except Exception:
                self._abort("process_fn raised")
                raise
            if outs:
                for out in outs:
                    if len(out) == 3:
                        try:
                            produce(out[0], out[2], out[1])
                            continue
                        except BufferError:
                            pass
                    self._produce(*out)
            positions[tp] = offsets[tp] = off + 1
            n += 1
        self._txn_records += n
        self.stats["records"] += n
        return n

    def _produce(self, topic, key, value, headers=None, partition=-1):
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       partition=partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    # ---- transactions ----
    def _commit(self):
        """Commit the open transaction: changelog, offsets, then the local stores."""
        if not self._in_txn:
            return
        for task in self._tasks.values():
            for k, v in task._dirty.items():
                self._producer.produce(self.changelog, key=k, value=v, partition=task.partition,
                                       on_delivery=self._changelog_cb(task))
        failpoints.hit("streams.commit.before")
        if self._offsets:
            self._producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()],
                self._consumer.consumer_group_metadata())
        self._producer.commit_transaction()
        self._in_txn = False
        self._offsets.clear()
        self.stats["commits"] += 1
        failpoints.hit("streams.commit.after")      # committed; the local stores lag
        for task in self._tasks.values():
            task._commit_local()

    @staticmethod
    def _changelog_cb(task):
        def cb(err, msg):
            if err is None:
                end = msg.offset() + 1
                if task.changelog_end is None or end > task.changelog_end:
                    task.changelog_end = end
        return cb

    def _abort(self, why):
        if not self._in_txn:
            return
        log.info("%s: aborting the transaction (%s)", self.transactional_id, why)
        self._in_txn = False
        self._offsets.clear()
        for task in self._tasks.values():
            task._discard()
        self.stats["aborts"] += 1
        if self._failed is None:
            try:
                self._producer.abort_transaction()
            except KafkaException as e:
                if e.args[0].fatal():
                    self._set_failed(e.args[0])
                else:
                    raise

    def _handle(self, exc):
        """A KafkaException from the loop: stop if fatal, else abort and rewind."""
        err = exc.args[0]
        if err.fatal() or self._failed is not None:
            self._set_failed(self._failed or err)
            raise StreamsFatalError(self._failed) from exc
        if not (err.txn_requires_abort() or err.retriable() or err.code() in (
                KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION)):
            self._abort(err.str())
            raise exc
        self._abort(err.str())
        if self._failed is not None:
            raise StreamsFatalError(self._failed) from exc
        self._rewind_all()

    def _set_failed(self, err):
        if self._failed is None:
            self._failed = KafkaError(
                err.code(), "StreamsRunner %r stopped: %s (another runner with the same "
                "transactional.id took over, or the producer hit a fatal error); nothing "
                "uncommitted became visible" % (self.transactional_id, err.str()), fatal=True)
            self._in_txn = False
            for task in self._tasks.values():
                task._discard()

    def _rewind_all(self):
        """Back to the committed offsets of every assigned partition."""
        self._rewind = False
        assigned = self._consumer.assignment()
        if not assigned:
            return
        for tp, off in zip(assigned, self._stable_committed(assigned)):
            self._consumer.seek(TopicPartition(tp.topic, tp.partition,
                                               off if off >= 0 else OFFSET_BEGINNING))
            self._positions[(tp.topic, tp.partition)] = off if off >= 0 else None

    def _stable_committed(self, tps, timeout=None):
        """Committed offsets once no unfinished transaction stages offsets for tps."""
        timeout = timeout if timeout is not None else self._txn_timeout + 10
        deadline = time.monotonic() + timeout
        while True:
            got = self._consumer.committed([TopicPartition(t.topic, t.partition) for t in tps],
                                           require_stable=True)
            if not any(r.error is not None for r in got) or time.monotonic() > deadline:
                return [r.offset for r in got]
            time.sleep(0.05)

    # ---- rebalance callbacks (run inside consume()) ----
    def _after_callbacks(self):
        exc, self._deferred = self._deferred, None
        if exc is not None:
            raise exc

    def _guard(self, fn, *args):
        if self._failed is not None:
            return
        try:
            fn(*args)
        except KafkaException as e:
            if e.args[0].fatal():
                self._set_failed(e.args[0])
            self._deferred = self._deferred or e
        except Exception as e:      # surfaced by run() after consume() returns
            self._deferred = self._deferred or e

    def _on_revoke(self, consumer, partitions):
        self._guard(self._revoke, partitions)

    def _on_lost(self, consumer, partitions):
        self._guard(self._lose, partitions)

    def _on_assign(self, consumer, partitions):
        self._guard(self._assign, partitions)

    def _revoke(self, partitions):
        self.stats["rebalances"] += 1
        try:
            self._commit()
        except KafkaException as e:
            if e.args[0].fatal():
                raise
            self._abort("cannot commit before the revocation: %s" % e.args[0].str())
            self._rewind = True
        self._forget(partitions)

    def _lose(self, partitions):
        self.stats["rebalances"] += 1
        self._abort("partitions lost")
        self._rewind = True
        self._forget(partitions)

    def _forget(self, partitions):
        for tp in partitions:
            self._positions.pop((tp.topic, tp.partition), None)
            self._offsets.pop((tp.topic, tp.partition), None)

    def _assign(self, partitions):
        offsets = self._stable_committed(partitions) if partitions else []
        if self.store_name is not None:
            for p in sorted({tp.partition for tp in partitions}):
                self._restore(p)
        tps = []
        for tp, off in zip(partitions, offsets):
            tps.append(TopicPartition(tp.topic, tp.partition, off if off >= 0 else OFFSET_INVALID))
            self._positions[(tp.topic, tp.partition)] = off if off >= 0 else None
        if self._cooperative:
            self._consumer.incremental_assign(tps)
        else:
            self._consumer.assign(tps)

    # ---- state restoration ----
    def task_store(self, partition):
        """The StateStore of task `partition` (opened if needed, not restored)."""
        task = self._tasks.get(partition)
        if task is None:
            task = self._tasks[partition] = StateStore(
                self.store_name, partition, os.path.join(self.state_dir, str(partition)))
        return task

    def _restore(self, partition):
        """Bring task `partition`'s LMDB store up to the changelog's last stable
        offset, once every transaction that wrote to it before now is decided."""
        task = self.task_store(partition)
        task._discard()
        tp = TopicPartition(self.changelog, partition)
        if self._restorer is None:
            _, cconf = _split_conf(self._conf)
            self._restorer = Consumer({**cconf, "group.id": self.group_id + "-restore",
                                       "isolation.level": "read_committed",
                                       "enable.auto.commit": False, "enable.partition.eof": False,
                                       "auto.offset.reset": "earliest"})
            self._watermarks = Consumer({**cconf, "group.id": self.group_id + "-restore",
                                         "isolation.level": "read_uncommitted",
                                         "enable.auto.commit": False})
        c = self._restorer
        low, high = c.get_watermark_offsets(tp)
        written = self._watermarks.get_watermark_offsets(tp)[1]
        if high < written:
            # A transaction that wrote below `written` is open (a dead member's, until its
            # restart or its timeout aborts it; a fenced zombie's): restoring only up to
            # the last stable offset would miss what transactions after it committed.
            log.info("%s task %d: waiting for the open transaction at changelog offset %d "
                     "to finish", self.store_name, partition, high)
            deadline = time.monotonic() + max(self._txn_timeout, 60.0) + 10
            while high < written:
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(
                        KafkaError._TIMED_OUT, "%s task %d: a transaction left open at changelog "
                        "offset %d was not decided in time" % (self.store_name, partition, high)))
                time.sleep(0.05)
                low, high = c.get_watermark_offsets(tp)
        start = task.checkpoint()
        if start is None or start < low or start > high:
            if start is not None:
                log.warning("%s task %d: checkpoint %d outside the changelog [%d, %d]: "
                            "restoring from scratch", self.store_name, partition, start, low, high)
            task._wipe()
            start = low
            task._apply([], start)
        if start >= high:
            return
        c.assign([TopicPartition(self.changelog, partition, start)])
        n = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            msgs = c.consume(10000, 0.05)
            pos = c.position([tp])[0].offset
            if msgs:
                task._apply([(bytes(m.key()), m.value()) for m in msgs if m.error() is None], pos)
                n += len(msgs)
            if pos >= high:
                if not msgs:
                    task._apply([], pos)
                break
        else:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "restoring %s task %d did not "
                                            "reach offset %d" % (self.store_name, partition, high)))
        c.unassign()
        self.stats["restored"] += n
        log.info("%s task %d: restored %d changelog records [%d, %d)", self.store_name,
                 partition, n, start, high)

    # ---- lifetime ----
    def _check_usable(self):
        if self._closed:
            raise RuntimeError("StreamsRunner is closed")
        if self._failed is not None:
            raise StreamsFatalError(self._failed)

    def close(self):
        """Commit what is open (unless fenced), leave the group, release everything.  Idempotent."""
        if self._closed:
            return
        try:
            if self._failed is None:
                try:
                    self._commit()
                except KafkaException as e:
                    if e.args[0].fatal():
                        self._set_failed(e.args[0])
                    else:
                        self._abort(e.args[0].str())
        finally:
            self._closed = True
            try:
                self._consumer.close()          # leaving: on_revoke has nothing left to commit
            finally:
                try:
                    self._producer.close()
                finally:
                    if self._restorer is not None:
                        self._restorer.close()
                    if self._watermarks is not None:
                        self._watermarks.close()
                    for task in self._tasks.values():
                        task.close()
                    self._tasks.clear()
                    self._release_slot()

    def _release_slot(self):
        if self._slot_fd is not None:
            os.close(self._slot_fd)         # releases the flock: a new member may take the slot
            self._slot_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wipe_state(state_dir):
    """Delete a runner's local state (it is restored from the changelog on the next assignment)."""
    shutil.rmtree(state_dir, ignore_errors=True)
