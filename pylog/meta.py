"""The store's LMDB environment: producer state, transaction state, the
aborted-transaction index, group offsets and topic configs.

Named databases and their keys (pk = topic UTF-8 + 0x00 + int32 BE partition):

    topics      topic                          -> JSON {"partitions": n, "config": {...}}
    counters    b"producer_id"                 -> int64 BE, next producer id to hand out
    pstate      pk + int64 BE producer_id      -> producer state (dedup.c layout)
    partitions  pk                             -> int64 BE state_end_offset: producer
                                                  state reflects the log below it
    txn_open    pk + int64 BE first_offset + int64 BE producer_id -> b""
                                                  (open transactions; the smallest
                                                  first_offset is the LSO)
    aborted     pk + int64 BE last_offset + int64 BE producer_id
                                               -> int64 BE first_offset + int64 BE lso
    txns        transactional.id UTF-8         -> JSON coordinator state
    pids        int64 BE producer_id           -> transactional.id UTF-8 (its owner)
    offsets     group + 0x00 + pk              -> JSON {"offset": o, "metadata": m}
    groups      group UTF-8                    -> JSON membership (consumer groups)
    redo        transactional.id UTF-8         -> the record batches a PrepareCommit
                                                  carries (see txn.py, "Redo in
                                                  Prepare"): per batch int16 BE topic
                                                  length, topic, int32 BE partition,
                                                  int32 BE length, the batch

LMDB rules followed here (from its documentation): an environment is opened
after fork, never inherited; stale reader slots of dead processes are cleared
on open (reader_check); the map grows when full (MapFullError: grow, then
retry the whole write) and other processes adopt a grown map
(MapResizedError: set_mapsize(0), retry); a write transaction is always
committed or aborted, never left open.

Durability: the environment is opened with metasync off, so each commit costs
one fdatasync and a system crash can at worst undo the last commit, never
corrupt the tree.  Everything undone that way is also in the logs (producer
state, aborted index) or was not yet acknowledged, except what update(...,
durable=True) writes: that flushes the meta page too (one more fdatasync),
for a commit point that a caller is told has happened.
"""
import json
import os
import struct
import threading
from contextlib import contextmanager

import lmdb

from . import failpoints
from .errors import KafkaError, KafkaException, StorageError

_DBS = (b"topics", b"counters", b"pstate", b"partitions", b"txn_open", b"aborted",
        b"txns", b"pids", b"offsets", b"groups", b"redo")
_Q = struct.Struct(">q")
_QQ = struct.Struct(">qq")
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 40


def pkey(topic, partition):
    return topic.encode("utf-8") + b"\x00" + partition.to_bytes(4, "big")


_REDO_HEAD = struct.Struct(">h")
_REDO_PART = struct.Struct(">ii")


def encode_redo(batches):
    out = bytearray()
    for topic, partition, raw in batches:
        t = topic.encode("utf-8")
        out += _REDO_HEAD.pack(len(t)) + t + _REDO_PART.pack(partition, len(raw))
        out += raw
    return bytes(out)


def decode_redo(raw):
    out, pos, mv = [], 0, memoryview(raw)
    while pos < len(raw):
        (n,) = _REDO_HEAD.unpack_from(raw, pos)
        topic = bytes(mv[pos + 2:pos + 2 + n]).decode("utf-8")
        pos += 2 + n
        partition, size = _REDO_PART.unpack_from(raw, pos)
        pos += _REDO_PART.size
        out.append((topic, partition, bytes(mv[pos:pos + size])))
        pos += size
    return out


def split_pkey(key):
    topic, _, part = key[:len(key) - 4], None, key[-4:]
    return topic[:-1].decode("utf-8"), int.from_bytes(part, "big")


class _Gate:
    """Held shared by every open transaction of one environment, alone by a
    map resize and by fork().

    Why: py-lmdb's set_mapsize() invalidates every open transaction of the
    process (a read in another thread then fails with lmdb.Error "Attempt to
    operate on closed/deleted/dropped object") and refuses to run while any
    thread has a write transaction open.  And a forked child must close the
    environment it inherited before it can open its own (py-lmdb refuses a
    second open of the same files in one process); closing aborts the
    inherited transactions, which frees the parent's reader slots in the
    shared lock file, and waits forever for a write transaction whose thread
    did not survive the fork.  So resizing and forking wait until no
    transaction is open.  A transaction nested in one the same thread already
    holds does not wait (it would deadlock against a pending resize)."""

    def __init__(self):
        self._cv = threading.Condition(threading.Lock())
        self._active = 0                # open transactions, nested ones included
        self._alone = None              # thread ident holding the gate alone
        self._depth = threading.local()

    def _mine(self):
        return getattr(self._depth, "n", 0)

    @contextmanager
    def shared(self):
        mine = self._mine()
        me = threading.get_ident()
        with self._cv:
            while self._alone is not None and self._alone != me and mine == 0:
                self._cv.wait()
            self._active += 1
        self._depth.n = mine + 1
        try:
            yield
        finally:
            self._depth.n = mine
            with self._cv:
                self._active -= 1
                self._cv.notify_all()

    def acquire_alone(self):
        """Wait until no other transaction is open and keep new ones out.
        Not re-entrant."""
        mine = self._mine()
        with self._cv:
            while self._alone is not None:
                self._cv.wait()
            self._alone = threading.get_ident()
            while self._active > mine:
                self._cv.wait()

    def release_alone(self):
        with self._cv:
            self._alone = None
            self._cv.notify_all()

    @contextmanager
    def alone(self):
        self.acquire_alone()
        try:
            yield
        finally:
            self.release_alone()


class _Env:
    """The process's one lmdb.Environment for a directory, shared by every
    Meta on it: LMDB (and py-lmdb, which refuses) must not open the same
    files twice in one process (its fcntl() locks belong to the process)."""

    def __init__(self, path, sync):
        self.pid = os.getpid()
        self.refs = 0
        self.gate = _Gate()
        self.env = lmdb.open(path, map_size=INITIAL_MAP_SIZE, max_dbs=len(_DBS) + 4,
                             metasync=False, sync=sync, max_readers=1024, readahead=False)
        self.env.reader_check()         # free the slots of readers that died
        self.db = {}
        with self.env.begin(write=True) as txn:
            for name in _DBS:
                self.db[name.decode()] = self.env.open_db(name, txn=txn)


_envs = {}                              # realpath -> _Env of this process
_envs_lock = threading.Lock()


def _acquire_env(path, sync):
    with _envs_lock:
        return _acquire_env_locked(path, sync)


def _acquire_env_locked(path, sync):
    key = os.path.realpath(path)
    e = _envs.get(key)
    if e is None or e.pid != os.getpid():
        e = _envs[key] = _Env(path, sync)
    e.refs += 1
    return e


def _release_env(path, e):
    with _envs_lock:
        e.refs -= 1
        if e.refs > 0 or e.pid != os.getpid():
            return
        if _envs.get(os.path.realpath(path)) is e:
            del _envs[os.path.realpath(path)]
    with e.gate.alone():
        e.env.close()


_forking = []                           # the _Envs whose gates the forking thread holds


def _before_fork():
    # Hold _envs_lock across fork() so no environment is opened meanwhile.
    _envs_lock.acquire()
    for e in _envs.values():
        e.gate.acquire_alone()
        _forking.append(e)


def _after_fork_parent():
    for e in _forking:
        e.gate.release_alone()
    del _forking[:]
    _envs_lock.release()


def _after_fork_child():
    # LMDB: an environment must not be used after fork().  Close the inherited
    # ones (no transaction of theirs is open, see _Gate), so that py-lmdb lets
    # this process open the files again; Meta._shared() reopens on first use.
    global _envs_lock
    _envs_lock = threading.Lock()
    envs = list(_envs.values())
    _envs.clear()
    del _forking[:]
    for e in envs:
        e.gate = _Gate()
        try:
            e.env.close()
        except Exception:               # the child reopens regardless
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)


class Meta:
    """A store's LMDB environment as one client sees it.  Thread-safe.

    Every Meta on one directory in one process shares one environment
    (_Env); the first opener's sync setting applies."""

    def __init__(self, path, sync=True):
        self.path = path
        self.sync = sync
        os.makedirs(path, exist_ok=True)
        self._closed = False
        self._e = _acquire_env(path, sync)

    def _shared(self):
        e = self._e
        if e.pid != os.getpid():            # we are a forked child: LMDB forbids reuse
            with _envs_lock:
                if self._e.pid != os.getpid() and not self._closed:
                    self._e = _acquire_env_locked(self.path, self.sync)
                e = self._e
        if self._closed:
            raise KafkaException(KafkaError(KafkaError._STATE, "LMDB at %s is closed" % self.path))
        return e

    @property
    def env(self):
        return self._shared().env

    @property
    def db(self):
        return self._shared().db

    def close(self):
        with _envs_lock:
            if self._closed:
                return
            self._closed = True
        _release_env(self.path, self._e)

    # ---- transactions ----
    def update(self, fn, durable=False):
        """Run fn(txn) in a write transaction and commit; returns fn's result.

        fn may run more than once (after a map resize), so it must only act
        through txn.  durable: also flush the meta page before returning.
        A commit alone leaves it in the page cache (metasync off), so a
        system crash may undo that commit; a commit point that is
        acknowledged (a transaction's Prepare*) must not be undone."""
        for _ in range(64):
            e = self._shared()
            with e.gate.shared():
                try:
                    txn = e.env.begin(write=True)
                except lmdb.MapResizedError:
                    resize = "adopt"
                else:
                    try:
                        result = fn(txn)
                        failpoints.hit("meta.commit.before")
                        txn.commit()
                        failpoints.hit("meta.commit.after")
                        if durable and self.sync:
                            self._flush(e)
                        return result
                    except lmdb.MapFullError:
                        txn.abort()
                        resize = "grow"
                    except BaseException:
                        txn.abort()
                        raise
            # Resize with no transaction of ours open (see _Gate).
            self._adopt_size(e) if resize == "adopt" else self._grow(e)
        raise KafkaException(KafkaError(KafkaError._FS, "LMDB write kept failing at %s" % self.path))

    def make_durable(self):
        """Flush the meta page of the last commit (what update(durable=True)
        adds to a commit), for a caller that overlaps it with other work."""
        if not self.sync:
            return
        e = self._shared()
        with e.gate.shared():
            self._flush(e)

    def _flush(self, e):
        try:
            e.env.sync(True)
        except lmdb.Error as err:
            # committed, maybe not durable: say so, typed
            raise StorageError("LMDB flush after a commit failed at %s: %s"
                               % (self.path, err)) from err
        failpoints.hit("meta.durable.after")

    def view(self, fn):
        """Run fn(txn) in a read transaction; returns fn's result."""
        for _ in range(64):
            e = self._shared()
            with e.gate.shared():
                try:
                    with e.env.begin() as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    pass
            self._adopt_size(e)
        raise KafkaException(KafkaError(KafkaError._FS, "LMDB read kept failing at %s" % self.path))

    def _adopt_size(self, e):
        """Another process grew the map (MapResizedError): take its size."""
        with e.gate.alone():
            e.env.set_mapsize(0)

    def _grow(self, e):
        with e.gate.alone():
            size = e.env.info()["map_size"] * 2
            if size > MAX_MAP_SIZE:
                raise KafkaException(KafkaError(
                    KafkaError._FS, "LMDB map at %s would exceed %d bytes; "
                    "pylog.meta.MAX_MAP_SIZE is the limit" % (self.path, MAX_MAP_SIZE)))
            e.env.set_mapsize(size)

    def flush(self):
        """Force every commit so far to disk (for stores opened with sync=False)."""
        self.env.sync(True)

    # ---- topics ----
    def get_topic(self, txn, topic):
        raw = txn.get(topic.encode("utf-8"), db=self.db["topics"])
        return json.loads(raw) if raw else None

    def put_topic(self, txn, topic, desc):
        txn.put(topic.encode("utf-8"), json.dumps(desc, sort_keys=True).encode(), db=self.db["topics"])

    def delete_topic(self, txn, topic):
        txn.delete(topic.encode("utf-8"), db=self.db["topics"])

    def topics(self, txn):
        with txn.cursor(db=self.db["topics"]) as cur:
            return {k.decode("utf-8"): json.loads(v) for k, v in cur}

    # ---- producer ids ----
    def next_producer_id(self, txn):
        raw = txn.get(b"producer_id", db=self.db["counters"])
        pid = _Q.unpack(raw)[0] if raw else 1000
        txn.put(b"producer_id", _Q.pack(pid + 1), db=self.db["counters"])
        return pid

    # ---- per-partition producer state ----
    def get_pstate(self, txn, pk, producer_id):
        return txn.get(pk + _Q.pack(producer_id), db=self.db["pstate"])

    def put_pstate(self, txn, pk, producer_id, raw):
        txn.put(pk + _Q.pack(producer_id), raw, db=self.db["pstate"])

    def delete_pstate(self, txn, pk, producer_id):
        txn.delete(pk + _Q.pack(producer_id), db=self.db["pstate"])

    def pstates(self, txn, pk):
        """[(producer_id, raw state)] of one partition."""
        out = []
        with txn.cursor(db=self.db["pstate"]) as cur:
            if cur.set_range(pk):
                for k, v in cur:
                    if not k.startswith(pk) or len(k) != len(pk) + 8:
                        break
                    out.append((_Q.unpack_from(k, len(pk))[0], v))
        return out

    def get_state_end(self, txn, pk):
        raw = txn.get(pk, db=self.db["partitions"])
        return _Q.unpack(raw)[0] if raw else 0

    def put_state_end(self, txn, pk, offset):
        txn.put(pk, _Q.pack(offset), db=self.db["partitions"])

    # ---- open transactions and the LSO ----
    def add_open_txn(self, txn, pk, first_offset, producer_id):
        txn.put(pk + _QQ.pack(first_offset, producer_id), b"", db=self.db["txn_open"])

    def remove_open_txn(self, txn, pk, first_offset, producer_id):
        txn.delete(pk + _QQ.pack(first_offset, producer_id), db=self.db["txn_open"])

    def open_txns(self, txn, pk):
        """[(first_offset, producer_id)] ascending."""
        out = []
        with txn.cursor(db=self.db["txn_open"]) as cur:
            if cur.set_range(pk):
                for k in cur.iternext(values=False):
                    if not k.startswith(pk) or len(k) != len(pk) + 16:
                        break
                    out.append(_QQ.unpack_from(k, len(pk)))
        return out

    def first_open_offset(self, txn, pk):
        with txn.cursor(db=self.db["txn_open"]) as cur:
            if cur.set_range(pk):
                k = cur.key()
                if k.startswith(pk) and len(k) == len(pk) + 16:
                    return _Q.unpack_from(k, len(pk))[0]
        return None

    # ---- aborted transactions ----
    def add_aborted(self, txn, pk, producer_id, first_offset, last_offset, lso):
        txn.put(pk + _QQ.pack(last_offset, producer_id), _QQ.pack(first_offset, lso),
                db=self.db["aborted"])

    def aborted_txns(self, txn, pk, fetch_offset, upper_bound):
        """[(producer_id, first_offset, last_offset)] of aborted transactions
        with last_offset >= fetch_offset and first_offset < upper_bound."""
        out = []
        with txn.cursor(db=self.db["aborted"]) as cur:
            if cur.set_range(pk + _Q.pack(fetch_offset)):
                for k, v in cur:
                    if not k.startswith(pk) or len(k) != len(pk) + 16:
                        break
                    last, pid = _QQ.unpack_from(k, len(pk))
                    first, _ = _QQ.unpack(v)
                    if first < upper_bound:
                        out.append((pid, first, last))
        out.sort(key=lambda e: e[1])
        return out

    # ---- transactional ids ----
    def get_txn(self, txn, transactional_id):
        raw = txn.get(transactional_id.encode("utf-8"), db=self.db["txns"])
        return json.loads(raw) if raw else None

    def put_txn(self, txn, transactional_id, state, redo=None):
        """Store the coordinator state; redo: the batches its PrepareCommit
        carries ([(topic, partition, bytes)]).  A state without a "redo" key
        drops any batches stored before (Complete*, or a new transaction)."""
        key = transactional_id.encode("utf-8")
        txn.put(key, json.dumps(state, sort_keys=True).encode(), db=self.db["txns"])
        if redo is not None:
            txn.put(key, encode_redo(redo), db=self.db["redo"])
        elif "redo" not in state:
            txn.delete(key, db=self.db["redo"])

    def get_redo(self, txn, transactional_id):
        """[(topic, partition, bytes)] stored by put_txn(..., redo=...), in order."""
        raw = txn.get(transactional_id.encode("utf-8"), db=self.db["redo"])
        return decode_redo(raw) if raw else []

    def put_pid_owner(self, txn, producer_id, transactional_id):
        txn.put(_Q.pack(producer_id), transactional_id.encode("utf-8"), db=self.db["pids"])

    def get_pid_owner(self, txn, producer_id):
        raw = txn.get(_Q.pack(producer_id), db=self.db["pids"])
        return raw.decode("utf-8") if raw is not None else None

    def txn_ids(self, txn):
        with txn.cursor(db=self.db["txns"]) as cur:
            return {k.decode("utf-8"): json.loads(v) for k, v in cur}

    # ---- group offsets ----
    @staticmethod
    def _okey(group, topic, partition):
        return group.encode("utf-8") + b"\x00" + pkey(topic, partition)

    def get_offset(self, txn, group, topic, partition):
        raw = txn.get(self._okey(group, topic, partition), db=self.db["offsets"])
        return json.loads(raw) if raw else None

    def put_offset(self, txn, group, topic, partition, offset, metadata=None):
        txn.put(self._okey(group, topic, partition),
                json.dumps({"offset": offset, "metadata": metadata}).encode(), db=self.db["offsets"])

    def delete_offset(self, txn, group, topic, partition):
        txn.delete(self._okey(group, topic, partition), db=self.db["offsets"])

    def group_offsets(self, txn, group):
        """{(topic, partition): record} for one group."""
        prefix = group.encode("utf-8") + b"\x00"
        out = {}
        with txn.cursor(db=self.db["offsets"]) as cur:
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out[split_pkey(k[len(prefix):])] = json.loads(v)
        return out

    def get_group(self, txn, group):
        raw = txn.get(group.encode("utf-8"), db=self.db["groups"])
        return json.loads(raw) if raw else None

    def put_group(self, txn, group, state):
        txn.put(group.encode("utf-8"), json.dumps(state, sort_keys=True).encode(), db=self.db["groups"])

    def delete_group(self, txn, group):
        txn.delete(group.encode("utf-8"), db=self.db["groups"])

    def groups(self, txn):
        names = set()
        with txn.cursor(db=self.db["offsets"]) as cur:
            for k in cur.iternext(values=False):
                names.add(k.split(b"\x00", 1)[0].decode("utf-8"))
        return sorted(names)
