"""What the torture children run: producers, readers and a copier that log
every acknowledgement and every observation for the checker.

Each function here runs in a child started by pylog.testing (spawn), writes
JSON lines with os.write on an O_APPEND descriptor (nothing buffered in the
process, so a SIGKILL loses at most the line being written) and is
module-level so that spawn can import it.  Formats: pylog/torture/checker.py.
"""
import json
import logging
import os
import random
import time

from pylog import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING
from pylog.admin import AdminClient, NewTopic

LINGER_MS = 2

# pylog logs recoveries and truncations as warnings; the checker judges the
# outcome, so keep children quiet unless PYLOG_TORTURE_LOG is set.
if not os.environ.get("PYLOG_TORTURE_LOG"):
    logging.getLogger("pylog").addHandler(logging.NullHandler())
    logging.getLogger("pylog").propagate = False


class JsonLog:
    """Append-only JSON lines, one write(2) per line."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **ev):
        os.write(self.fd, (json.dumps(ev, separators=(",", ":")) + "\n").encode())

    def close(self):
        os.close(self.fd)


def conf_for(store, **extra):
    return dict({"bootstrap.servers": "file://" + store}, **extra)


def error_record(e):
    """How an exception surfaced through the API, for the harness to judge."""
    import traceback
    where = ["%s:%d %s" % (os.path.basename(f.filename), f.lineno, f.name)
             for f in traceback.extract_tb(e.__traceback__)
             if os.sep + "pylog" + os.sep in f.filename and os.sep + "torture" + os.sep not in f.filename]
    if isinstance(e, KafkaException) and e.args and hasattr(e.args[0], "code"):
        err = e.args[0]
        return {"type": type(e).__name__, "kafka": True, "code": err.code(), "name": err.name(),
                "fatal": err.fatal(), "abortable": err.txn_requires_abort(),
                "retriable": err.retriable(), "msg": err.str()[:300], "where": where[-4:]}
    return {"type": type(e).__name__, "kafka": False, "msg": str(e)[:300], "where": where[-6:]}


# ---- setup ----

def create_topics(store, spec, config=None, open_partitions=True):
    """Create topics {name: partitions} with topic config; with
    open_partitions, also create every partition's directory and first
    segment, so that later crashes happen in an existing layout."""
    conf = conf_for(store)
    admin = AdminClient(conf)
    try:
        for f in admin.create_topics([NewTopic(t, n, config=config) for t, n in spec.items()]).values():
            f.result()
    finally:
        admin.close()
    if open_partitions:
        from pylog.store import Store
        s = Store.acquire(store)
        try:
            for t, n in spec.items():
                for p in range(n):
                    s.partition(t, p)
        finally:
            s.release()


def all_tps(topics):
    return [[t, p] for t in sorted(topics) for p in range(topics[t])]


def settle(store, tids, log_path=None, check_topic=None, proc="settle"):
    """After crashes: end every transactional.id's leftover (init_transactions
    aborts an open transaction and rolls a Prepare* forward), then prove the
    store takes writes: one committed transaction to check_topic, logged."""
    conf = conf_for(store)
    for tid in tids:
        p = Producer(conf_for(store, **{"transactional.id": tid}))
        try:
            p.init_transactions()
        finally:
            p.close()
    if check_topic and log_path:
        txn_producer(store, proc, proc, log_path, {check_topic: 1}, seed=0, txns=1,
                     abort_ratio=0.0)
    # Readers roll forward too, and see the final LSO.
    c = Consumer(dict(conf, **{"group.id": "torture-settle"}))
    c.close()
    return True


# ---- producers ----

class _Sends:
    """Delivery reports -> "send" lines."""

    def __init__(self, log, proc):
        self.log = log
        self.proc = proc
        self.meta = {}                  # value -> (i, txn)
        self.errors = 0

    def __call__(self, err, msg):
        v = msg.value().decode()
        i, txn = self.meta.pop(v, (None, None))
        if err is None:
            self.log.write(op="send", proc=self.proc, i=i, value=v, topic=msg.topic(),
                           partition=msg.partition(), offset=msg.offset(), txn=txn, t=time.monotonic())
        else:
            self.errors += 1
            self.log.write(op="send_error", proc=self.proc, i=i, value=v, txn=txn,
                           code=err.code(), name=err.name())


def txn_producer(store, proc, tid, log_path, topics, seed=0, txns=None, duration=None,
                 abort_ratio=0.3, txn_size=(1, 6), fsync="never", stop_path=None,
                 txn_timeout_ms=60000, extra_conf=None, flush_ratio=0.0):
    """Transactions of txn_size random records over topics ({name: partitions}),
    abort_ratio of them aborted; until txns transactions, duration seconds,
    or stop_path exists.  flush_ratio: after each record, the chance of a
    flush(), so that commits meet both records written already (added
    partitions) and records still queued (carried by the PrepareCommit,
    txn.Coordinator.commit_redo, with pylog.fsync=always).  Returns counters."""
    rng = random.Random(seed)
    log = JsonLog(log_path)
    conf = conf_for(store, **{"transactional.id": tid, "pylog.fsync": fsync,
                              "linger.ms": LINGER_MS, "transaction.timeout.ms": txn_timeout_ms})
    conf.update(extra_conf or {})
    log.write(op="start", proc=proc, tid=tid, pid=os.getpid(), t=time.monotonic())
    p = Producer(conf)
    report = _Sends(log, proc)
    stats = {"committed": 0, "aborted": 0, "errors": 0}
    p.init_transactions()
    names = sorted(topics)
    end = None if duration is None else time.monotonic() + duration
    i = n = 0
    try:
        while (txns is None or n < txns) and (end is None or time.monotonic() < end) \
                and not (stop_path and os.path.exists(stop_path)):
            txn = "%s:%d" % (proc, n)
            p.begin_transaction()
            try:
                for j in range(rng.randint(*txn_size)):
                    topic = rng.choice(names)
                    part = rng.randrange(topics[topic])
                    v = "%s:%d:%d" % (proc, n, j)
                    i += 1
                    log.write(op="produce", proc=proc, i=i, value=v, topic=topic, partition=part,
                              txn=txn)
                    report.meta[v] = (i, txn)
                    p.produce(topic, value=v.encode(), partition=part, on_delivery=report)
                    if rng.random() < 0.3:
                        p.poll(0)
                    if flush_ratio and rng.random() < flush_ratio:
                        p.flush()
                if rng.random() < abort_ratio:
                    p.abort_transaction()
                    log.write(op="end", proc=proc, txn=txn, outcome="aborted", t=time.monotonic())
                    stats["aborted"] += 1
                else:
                    log.write(op="commit_start", proc=proc, txn=txn, t=time.monotonic())
                    p.commit_transaction()
                    log.write(op="end", proc=proc, txn=txn, outcome="committed", t=time.monotonic())
                    stats["committed"] += 1
            except KafkaException as e:
                stats["errors"] += 1
                log.write(op="api_error", proc=proc, txn=txn, **error_record(e))
                err = e.args[0]
                if err.txn_requires_abort():
                    p.abort_transaction()
                    log.write(op="end", proc=proc, txn=txn, outcome="aborted", t=time.monotonic())
                else:
                    raise
            n += 1
    finally:
        log.write(op="stop", proc=proc, t=time.monotonic(), **stats)
        _close(p)
    return stats


def _close(client):
    try:
        client.close(5) if isinstance(client, Producer) else client.close()
    except Exception:                   # the error that got us here is the one to report
        pass


def idempotent_producer(store, proc, log_path, topics, seed=0, records=None, duration=None,
                        fsync="never", stop_path=None, flush_every=5):
    """Non-transactional, idempotent writes over topics, flushed every
    flush_every records; an acknowledged write is a committed one."""
    rng = random.Random(seed)
    log = JsonLog(log_path)
    log.write(op="start", proc=proc, pid=os.getpid(), t=time.monotonic())
    p = Producer(conf_for(store, **{"enable.idempotence": True, "pylog.fsync": fsync,
                                    "linger.ms": LINGER_MS}))
    report = _Sends(log, proc)
    names = sorted(topics)
    end = None if duration is None else time.monotonic() + duration
    i = 0
    while (records is None or i < records) and (end is None or time.monotonic() < end) \
            and not (stop_path and os.path.exists(stop_path)):
        topic = rng.choice(names)
        part = rng.randrange(topics[topic])
        v = "%s:%d" % (proc, i)
        i += 1
        log.write(op="produce", proc=proc, i=i, value=v, topic=topic, partition=part, txn=None)
        report.meta[v] = (i, None)
        p.produce(topic, value=v.encode(), partition=part, on_delivery=report)
        if i % flush_every == 0:
            p.flush()
    p.flush()
    p.close()
    return {"records": i, "errors": report.errors}


# ---- readers ----

def _positions(c, tps):
    return [[tp.topic, tp.partition, tp.offset] for tp in c.position(tps)]


def reader(store, run, log_path, tps, isolation="read_committed", duration=None, stop_path=None,
           drain=False, final=False, timeout=60.0):
    """Read tps ([[topic, partition]]) from the beginning, logging every poll.

    drain: stop once every partition is read to its end offset (its LSO for
    read_committed) and log a complete end; final: the harness vouches that
    nothing can still become visible.  Otherwise read until duration or
    stop_path."""
    log = JsonLog(log_path)
    c = Consumer(conf_for(store, **{"group.id": "torture-reader", "isolation.level": isolation,
                                    "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    assign = [TopicPartition(t, p, OFFSET_BEGINNING) for t, p in tps]
    c.assign(assign)
    log.write(op="start", run=run, isolation=isolation, pid=os.getpid(),
              positions=[[t, p, 0] for t, p in tps], t=time.monotonic())
    plain = [TopicPartition(t, p) for t, p in tps]
    deadline = time.monotonic() + (duration if duration is not None else timeout)
    ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp)[1] for tp in plain} if drain else {}
    n = 0
    while True:
        t0 = time.monotonic()
        msgs = c.consume(500, 0.05)
        t1 = time.monotonic()
        batch = [[m.topic(), m.partition(), m.offset(), m.value().decode("utf-8", "replace")]
                 for m in msgs if m.error() is None]
        if batch:
            log.write(op="poll", t0=t0, t1=t1, msgs=batch)
            n += len(batch)
        if drain:
            if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in c.position(plain)):
                break
        elif stop_path and os.path.exists(stop_path):
            break
        if time.monotonic() > deadline:
            if drain:
                raise TimeoutError("reader %s: not drained in %.0f s: positions %s, ends %s" % (
                    run, timeout, _positions(c, plain), ends))
            break
    if drain:
        log.write(op="end", complete=True, final=final,
                  ends=[[t, p, o] for (t, p), o in sorted(ends.items())], t=time.monotonic())
    c.close()
    return n


# ---- the transactional copier ----

def copier(store, proc, tid, prod_log, cons_log, src, dst, group="torture-copier", seed=0,
           abort_ratio=0.3, duration=None, stop_path=None, batch=20, txn_timeout_ms=5000,
           drain=False, timeout=90.0, session_timeout_ms=2000, strategy=None):
    """Consume src (read_committed, a member of group), produce "c:" + value
    to the same partition of dst, and commit the input offsets in the same
    transaction; abort_ratio of the transactions are aborted and the input
    rewound to the committed offsets, as is any transaction the group fences
    after a rebalance.  drain: stop once this member owns every partition of
    src and has caught up with its LSO (the producers of src are done).

    The consumer log records a seek (position unknown, -1) for every
    partition assigned, revoked or lost: its next read starts wherever the
    group's committed offset is.  strategy: partition.assignment.strategy
    (None: librdkafka's default, eager)."""
    rng = random.Random(seed)
    plog, clog = JsonLog(prod_log), JsonLog(cons_log)
    conf = {"group.id": group, "isolation.level": "read_committed",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(session_timeout_ms // 10, 1)}
    if strategy:
        conf["partition.assignment.strategy"] = strategy
    c = Consumer(conf_for(store, **conf))
    owned = set()

    def moved(consumer, parts):
        """A rebalance: where these partitions are read next is not ours to know."""
        for tp in parts:
            owned.symmetric_difference_update({(tp.topic, tp.partition)})
        clog.write(op="seek", positions=[[tp.topic, tp.partition, -1] for tp in parts],
                   t=time.monotonic())
    c.subscribe([src], on_assign=moved, on_revoke=moved, on_lost=moved)
    p = Producer(conf_for(store, **{"transactional.id": tid, "linger.ms": LINGER_MS,
                                    "transaction.timeout.ms": txn_timeout_ms}))
    p.init_transactions()
    nparts = len(c.list_topics(src).topics[src].partitions)
    plog.write(op="start", proc=proc, tid=tid, pid=os.getpid(), t=time.monotonic())
    clog.write(op="start", run=proc, isolation="read_committed", pid=os.getpid(), t=time.monotonic())
    report = _Sends(plog, proc)
    end = None if duration is None else time.monotonic() + duration
    deadline = time.monotonic() + timeout
    n = i = 0

    def rewind(parts):
        moved = []
        for tp in c.committed(parts):
            pos = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            c.seek(TopicPartition(tp.topic, tp.partition, pos))
            moved.append([tp.topic, tp.partition, pos if pos >= 0 else 0])
        clog.write(op="seek", positions=moved, t=time.monotonic())

    while True:
        if stop_path and os.path.exists(stop_path) and not drain:
            break
        if end is not None and time.monotonic() > end:
            break
        t0 = time.monotonic()
        msgs = [m for m in c.consume(batch, 0.05) if m.error() is None]
        t1 = time.monotonic()
        if not msgs:
            if drain:
                if len(owned) == nparts and all(
                        tp.offset >= c.get_watermark_offsets(tp)[1]
                        for tp in c.position([TopicPartition(t, q) for t, q in sorted(owned)])):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("copier %s did not catch up in %.0f s (owns %s)"
                                       % (proc, timeout, sorted(owned)))
            continue
        clog.write(op="poll", t0=t0, t1=t1, msgs=[[m.topic(), m.partition(), m.offset(),
                                                   m.value().decode()] for m in msgs])
        txn = "%s:%d" % (proc, n)
        n += 1
        p.begin_transaction()
        try:
            for m in msgs:
                v = "c:" + m.value().decode()
                i += 1
                plog.write(op="produce", proc=proc, i=i, value=v, topic=dst,
                           partition=m.partition(), txn=txn)
                report.meta[v] = (i, txn)
                p.produce(dst, value=v.encode(), partition=m.partition(), on_delivery=report)
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata())
            if rng.random() < abort_ratio:
                raise _Abort()
            plog.write(op="commit_start", proc=proc, txn=txn, t=time.monotonic())
            p.commit_transaction()
            plog.write(op="end", proc=proc, txn=txn, outcome="committed", t=time.monotonic())
        except (_Abort, KafkaException) as e:
            if isinstance(e, KafkaException):
                plog.write(op="api_error", proc=proc, txn=txn, **error_record(e))
                if not e.args[0].txn_requires_abort():
                    raise
            p.abort_transaction()
            plog.write(op="end", proc=proc, txn=txn, outcome="aborted", t=time.monotonic())
            rewind(c.assignment())
    p.close()
    c.close()
    return n


class _Abort(Exception):
    """The copier chose to abort this transaction."""


# ---- helpers for the harness ----

def store_digest(store, topics):
    """A digest of everything readable: per partition, each record's offset,
    key, value, headers and timestamp as read_uncommitted sees them, and
    which offsets read_committed sees; plus group offsets.  Equal digests
    mean equal data."""
    import hashlib
    from pylog import testing
    h = hashlib.sha256()
    count = 0
    for isolation in ("read_uncommitted", "read_committed"):
        for m in testing.read_back(store, topics, isolation=isolation):
            count += 1
            h.update(repr((isolation, m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                           m.headers(), m.timestamp())).encode())
    from pylog.store import Store
    s = Store.acquire(store)
    try:
        offsets = s.meta.view(lambda txn: {g: s.meta.group_offsets(txn, g) for g in s.meta.groups(txn)})
    finally:
        s.release()
    h.update(repr(sorted((g, sorted(((k, v["offset"]) for k, v in o.items())))
                         for g, o in offsets.items())).encode())
    return {"digest": h.hexdigest(), "records": count}


# ---- scenario steps (one child each) ----

def verify(store, tids, logs, topics, name="final", check_topic="check"):
    """Reopen after the crashes: settle every transactional.id, write and
    commit one more transaction (the store must take writes), then read
    everything to the end, read_committed (final) and read_uncommitted."""
    settle(store, list(tids), os.path.join(logs, "p-settle-%s.jsonl" % name), check_topic,
           proc="settle-" + name)
    tps = all_tps(dict(topics, **{check_topic: 1}))
    reader(store, name + "-rc", os.path.join(logs, "c-%s-rc.jsonl" % name), tps, "read_committed",
           drain=True, final=True)
    reader(store, name + "-ru", os.path.join(logs, "c-%s-ru.jsonl" % name), tps, "read_uncommitted",
           drain=True, final=True)
    return True


def failpoint_phase(store, proc, tid, logs, topics, seed=0, txns=5, records=8, count_hits=False):
    """Scenario 2's child: open every partition through a reader (recovery,
    roll-forward), then transactions and idempotent writes with fsync=always.
    count_hits: return how often each armed failpoint was hit."""
    from pylog import failpoints
    reader(store, "r-" + proc, os.path.join(logs, "c-%s.jsonl" % proc), all_tps(topics), drain=True)
    txn_producer(store, proc, tid, os.path.join(logs, "p-%s.jsonl" % proc), topics, seed=seed,
                 txns=txns, abort_ratio=0.3, fsync="always", flush_ratio=0.3)
    idempotent_producer(store, proc + "i", os.path.join(logs, "p-%si.jsonl" % proc), topics,
                        seed=seed, records=records, fsync="always", flush_every=3)
    if count_hits:
        return {name: failpoints.hits(name) for name in failpoints.active()}
    return None


def powerloss_phase(store, proc, tid, logs, topics, fsync_log, seed=0, duration=30.0):
    """Scenario 3's child: a transactional and an idempotent producer (two
    threads, one store) with fsync=always, the fsync recorder installed;
    runs until killed."""
    import threading
    from . import powerloss
    powerloss.install_recorder(fsync_log)
    t = threading.Thread(target=txn_producer, daemon=True, args=(
        store, proc, tid, os.path.join(logs, "p-%s.jsonl" % proc), topics),
        kwargs=dict(seed=seed, duration=duration, abort_ratio=0.3, fsync="always",
                    flush_ratio=0.2))
    t.start()
    idempotent_producer(store, proc + "i", os.path.join(logs, "p-%si.jsonl" % proc), topics,
                        seed=seed + 1, duration=duration, fsync="always", flush_every=3)
    t.join()


def io_error_phase(store, proc, tid, logs, topics, fsync_log, fp, arm="start", seed=0, txns=6,
                   records=12):
    """Scenario 4's child: the scenario 2 workload with failpoint fp =
    (name, action, k) armed at the start (so opening the store meets it
    first) or once every partition is open (arm="open"), the fsync recorder
    installed.  Every exception that reaches the application is logged (op
    "api_error") and ends that step; returns how many there were."""
    from pylog import failpoints
    from . import powerloss
    powerloss.install_recorder(fsync_log)
    log = JsonLog(os.path.join(logs, "p-%s-errors.jsonl" % proc))
    name, action, k = fp
    if arm == "start":
        failpoints.set(name, action, k)
    errors = 0
    steps = [
        (reader, (store, "r-" + proc, os.path.join(logs, "c-%s.jsonl" % proc), all_tps(topics)),
         dict(drain=True)),
        (txn_producer, (store, proc, tid, os.path.join(logs, "p-%s.jsonl" % proc), topics),
         dict(seed=seed, txns=txns, abort_ratio=0.3, fsync="always", flush_ratio=0.3)),
        (idempotent_producer, (store, proc + "i", os.path.join(logs, "p-%si.jsonl" % proc), topics),
         dict(seed=seed, records=records, fsync="always", flush_every=3)),
    ]
    from pylog.store import Store
    held = Store.acquire(store) if arm == "open" else None       # keep it open between steps
    try:
        for n, (fn, args, kwargs) in enumerate(steps):
            try:
                fn(*args, **kwargs)
            except Exception as e:
                errors += 1
                log.write(op="api_error", step=fn.__name__, **error_record(e))
            if n == 0:
                # A writer in another process died mid-batch: the next append
                # under the lock cuts these bytes (PartitionLog._take_tail).
                append_garbage(store, sorted(topics)[0], 0, random.Random(seed), 29)
                if arm == "open":
                    failpoints.set(name, action, k)
    finally:
        if held is not None:
            try:
                held.release()
            except Exception as e:
                errors += 1
                log.write(op="api_error", step="close", **error_record(e))
    return errors


def append_garbage(store, topic, partition, rng, n=37):
    """Append n bytes of a half-written batch to the partition's active segment."""
    d = os.path.join(store, "%s-%d" % (topic, partition))
    last = sorted(f for f in os.listdir(d) if f.endswith(".log"))[-1]
    with open(os.path.join(d, last), "ab") as f:
        f.write(bytes(rng.getrandbits(8) for _ in range(n)))


def fail_sync_marker(store, topic, partition):
    """Leave the partition as a process whose fsync failed, and that died
    right after, leaves it: its .sync marker keeps the last good (segment,
    position) and sets the failed flag (PartitionLog.sync_to).  The next open
    cuts everything past that position.  False if there is no marker yet."""
    path = os.path.join(store, "%s-%d" % (topic, partition), ".sync")
    try:
        with open(path, "r+b") as f:
            raw = f.read(17)
            if len(raw) < 17:
                return False
            f.seek(16)
            f.write(b"\x01")
    except FileNotFoundError:
        return False
    return True


def recover(store, topics):
    """Open every partition (log recovery, producer state) and the
    coordinator (roll Prepare* forward), then close."""
    from pylog.store import Store
    s = Store.acquire(store)
    try:
        for t in sorted(topics):
            for p in range(topics[t]):
                s.partition(t, p)
        s.coordinator
    finally:
        s.release()
    return True


def recover_and_digest(store, topics, count_hits=False):
    from pylog import failpoints
    recover(store, topics)
    d = store_digest(store, sorted(topics))
    if count_hits:
        d["hits"] = {name: failpoints.hits(name) for name in failpoints.active()}
    return d
