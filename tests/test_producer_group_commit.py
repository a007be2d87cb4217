"""Group commit of the fast lane's batches with pylog.fsync=always.

Sender._append_each appends the batches of one drain one per call with
sync="defer" (the encoder reuses one buffer) and makes them durable with one
fsync (Partition.sync_deferred) before any of them is reported: every batch
still gets its own offsets and sequence numbers, a failed fsync fails all of
them, and a batch refused in the middle leaves those before it written and
durable (as without fsync).
"""
import os

import pytest

from pylog import KafkaError, Producer, failpoints, fsutil, producer_state
from pylog import sender as sender_mod
from pylog.admin import AdminClient, NewTopic
from pylog.errors import StorageError
from pylog.store import Store

from txn_support import read_partition

_fastprod = pytest.importorskip("pylog._fastprod", reason="pylog._fastprod is not built")

TOPIC = "gc"


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


@pytest.fixture
def conf(tmp_path):
    return {"bootstrap.servers": "file://" + str(tmp_path / "store")}


@pytest.fixture
def drained(monkeypatch):
    """The groups of batches Sender._write_partition is given, one list a drain."""
    groups = []
    real = sender_mod.Sender._write_partition

    def recording(self, topic, partition, group):
        groups.append(list(group))
        return real(self, topic, partition, group)

    monkeypatch.setattr(sender_mod.Sender, "_write_partition", recording)
    return groups


def durable_producer(closing, conf, topic_config=None, **extra):
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, config=topic_config or {})])[
        TOPIC].result()
    admin.close()
    p = Producer({**conf, "enable.idempotence": True, "pylog.fsync": "always",
                  "linger.ms": 60000, **extra})
    closing(p)
    assert p._lane is not None
    p.produce(TOPIC, b"first")          # opens the partition: offset 0, sequence 0
    assert p.flush(10) == 0
    return p


def raw_batches(values, batch_bytes):
    """The batches a drain of these bare values makes (Deque.take_bare's cuts)."""
    dq = _fastprod.Deque()
    for v in values:
        dq.append(v)
    parts = dq.take_bare(len(values), 10000, batch_bytes)
    return [sender_mod._Batch(TOPIC, 0, (), 1_700_000_000_000, part, n) for part, n in parts]


def write_group(p, batches, monkeypatch):
    """Sender._write_partition on batches; returns the reports (n, base offset, error)."""
    reports = []
    monkeypatch.setattr(p._sender, "_report", lambda b, off, err: reports.append((b.n, off, err)))
    with p._sender.lock:
        p._sender._write_partition(TOPIC, 0, batches)
    return reports


def test_a_drain_of_several_batches_is_fsynced_once_and_each_gets_its_offsets(
        closing, conf, fsyncs, monkeypatch):
    p = durable_producer(closing, conf)
    values = [b"%03d" % i * 100 for i in range(20)]       # 300 bytes each
    batches = raw_batches(values, 1000)
    assert len(batches) == 7 and sum(b.n for b in batches) == 20
    del fsyncs[:]
    reports = write_group(p, batches, monkeypatch)
    assert len(fsyncs) == 1                                 # one fsync for the whole drain
    offsets = [off for _, off, _ in reports]
    assert [err for _, _, err in reports] == [None] * 7
    assert [n for n, _, _ in reports] == [b.n for b in batches]
    assert offsets == [1 + sum(b.n for b in batches[:i]) for i in range(7)]
    assert p._sender.seq[(TOPIC, 0)] == 21
    infos, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first"] + values
    assert [r.offset for r in records] == list(range(21))
    assert [(bi.base_offset, bi.base_sequence) for bi in infos] == \
        [(0, 0)] + [(off, off) for off in offsets]


def test_nothing_is_reported_written_before_the_fsync(closing, conf, monkeypatch):
    p = durable_producer(closing, conf)
    events = []
    real = fsutil.fsync
    monkeypatch.setattr(fsutil, "fsync", lambda fd, what="file": (events.append("fsync"),
                                                                   real(fd, what)))
    reports = []
    monkeypatch.setattr(p._sender, "_report",
                        lambda b, off, err: (events.append("report"), reports.append(err)))
    with p._sender.lock:
        p._sender._write_partition(TOPIC, 0, raw_batches([b"x" * 400] * 10, 1000))
    assert events[0] == "fsync" and events.count("fsync") == 1
    assert events.count("report") == len(reports) and set(reports) == {None}


def test_a_failed_fsync_fails_every_batch_of_the_drain(closing, conf, monkeypatch):
    p = durable_producer(closing, conf)
    batches = raw_batches([b"y" * 400] * 10, 1000)
    failpoints.set("fsync.before", "eio")
    reports = write_group(p, batches, monkeypatch)
    failpoints.clear()
    assert len(reports) == len(batches) > 1
    for _, off, err in reports:
        assert off == sender_mod.NOT_WRITTEN
        assert err.code() == KafkaError.KAFKA_STORAGE_ERROR
    assert p._fatal is not None                 # the outcome is unknown: idempotence is lost
    with pytest.raises(StorageError):           # the state snapshot at close cannot fsync
        p.close()
    # Reopened, the partition drops what was written after the last good fsync.
    _, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first"]


def test_a_batch_refused_mid_drain_leaves_the_ones_before_it_written_and_durable(
        closing, conf, fsyncs, monkeypatch):
    p = durable_producer(closing, conf, topic_config={"max.message.bytes": "3000"})
    batches = raw_batches([b"a" * 900, b"b" * 900, b"c" * 5000, b"d" * 900], 2000)
    assert [b.n for b in batches] == [2, 1, 1]
    del fsyncs[:]
    reports = write_group(p, batches, monkeypatch)
    assert len(fsyncs) == 1
    assert reports[0] == (2, 1, None)
    for _, off, err in reports[1:]:
        assert off == sender_mod.NOT_WRITTEN and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert p._sender.seq[(TOPIC, 0)] == 3       # the refused batches' sequences are not used
    _, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first", b"a" * 900, b"b" * 900]


def test_produce_and_flush_fsync_once_per_drain(closing, conf, fsyncs, drained):
    p = durable_producer(closing, conf, **{"batch.size": 2000})
    del fsyncs[:], drained[:]
    values = [b"%04d" % i * 50 for i in range(200)]       # 200 bytes each: 9 per batch
    for v in values:
        p.produce(TOPIC, v)
    assert p.flush(10) == 0
    assert sum(map(len, drained)) >= 23 and len(fsyncs) == len(drained)
    infos, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first"] + values
    assert [r.offset for r in records] == list(range(201))
    assert all(bi.base_sequence == bi.base_offset for bi in infos)


def test_deferred_appends_take_the_state_snapshot_after_their_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(producer_state, "SNAPSHOT_BYTES", 1)
    s = Store(str(tmp_path), {"pylog.fsync": "always"})
    try:
        s.create_topic(TOPIC, 1)
        part = s.partition(TOPIC, 0)
        snapshots = []
        real = part.snapshot
        monkeypatch.setattr(part, "snapshot", lambda: (snapshots.append(part.log.next_offset),
                                                       real()))
        enc = _fastprod.Encoder()
        for b in raw_batches([b"z" * 100] * 3, 150):
            buf = enc.encode(b.raw, b.ts0)
            sender_mod.write_header(buf, 0, 0, b.n - 1, b.ts0, b.ts0, -1, -1, -1, b.n)
            part.append([buf], sync="defer")
        assert snapshots == []
        part.sync_deferred()
        assert snapshots == [3]
    finally:
        s.close()


@pytest.mark.parametrize("fast", [True, False])
def test_the_first_drain_of_a_new_topic_takes_the_bare_value_lane(conf, closing, monkeypatch, fast,
                                                                  drained):
    """_produce_slow (the first record of a topic goes there: its queue does
    not exist yet) queues a bare value as the short path does, so the drain
    it starts is not sent down the per-record Python path."""
    with monkeypatch.context() as m:
        m.setenv("PYLOG_NO_FASTPROD", "" if fast else "1")
        p = Producer({**conf, "enable.idempotence": True, "pylog.fsync": "always",
                      "linger.ms": 60000, "batch.size": 3000})
    closing(p)
    assert (p._lane is not None) == fast
    values = [b"%03d" % i * 200 for i in range(10)]
    for v in values:
        p.produce("new-topic", v)
    assert p.flush(10) == 0
    batches = [(b.raw is not None, b.recs) for g in drained for b in g]
    if fast:
        assert all(raw for raw, _ in batches)
    else:
        assert all(recs and all(r.__class__ is bytes for r in recs) for _, recs in batches)
    infos, records = read_partition(conf, "new-topic", 0)
    assert [r.value for r in records] == values
    assert [bi.base_sequence for bi in infos] == [bi.base_offset for bi in infos]


# ---- records with delivery callbacks (the Python lane) take the same path ----

def cb_batches(values, per_batch, cb):
    """Batches of records with a delivery callback, per_batch records each."""
    ts = 1_700_000_000_000
    recs = [(v, None, cb, ts, None, b"", 0) for v in values]
    return [sender_mod._Batch(TOPIC, 0, recs[i:i + per_batch], ts)
            for i in range(0, len(recs), per_batch)]


def write_and_serve(p, batches):
    p._sender.inflight += sum(b.n for b in batches)     # as _take counts them
    with p._sender.lock:
        p._sender._write_partition(TOPIC, 0, batches)
    p._sender.serve()


def test_callback_records_of_several_batches_are_fsynced_once_with_their_offsets(
        closing, conf, fsyncs):
    p = durable_producer(closing, conf)
    got = []
    values = [b"v%02d" % i for i in range(10)]
    batches = cb_batches(values, 3, lambda err, msg: got.append((err, msg.offset(), msg.value())))
    del fsyncs[:]
    write_and_serve(p, batches)
    assert len(fsyncs) == 1
    assert got == [(None, 1 + i, v) for i, v in enumerate(values)]
    assert len(p) == 0
    infos, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first"] + values
    assert [bi.base_sequence for bi in infos] == [bi.base_offset for bi in infos]


def test_callback_records_all_fail_when_the_group_fsync_fails(closing, conf):
    p = durable_producer(closing, conf)
    got = []
    batches = cb_batches([b"w%02d" % i for i in range(7)], 2,
                         lambda err, msg: got.append((err and err.code(), msg.offset())))
    failpoints.set("fsync.before", "eio")
    write_and_serve(p, batches)
    failpoints.clear()
    assert got == [(KafkaError.KAFKA_STORAGE_ERROR, sender_mod.NOT_WRITTEN)] * 7
    with pytest.raises(StorageError):
        p.close()


def test_produce_with_callbacks_and_flush_fsync_once_per_drain(closing, conf, fsyncs, drained):
    p = durable_producer(closing, conf, **{"batch.size": 2000})
    del fsyncs[:], drained[:]
    got = {}
    values = [b"%04d" % i * 50 for i in range(100)]
    for v in values:
        p.produce(TOPIC, v, on_delivery=lambda err, msg: got.setdefault(msg.value(), (err, msg.offset())))
    assert p.flush(10) == 0
    assert sum(map(len, drained)) >= 11 and len(fsyncs) == len(drained)
    assert [got[v] for v in values] == [(None, 1 + i) for i in range(100)]


def test_callback_records_refused_mid_drain_leave_the_batches_before_them_written(
        closing, conf, fsyncs):
    p = durable_producer(closing, conf, topic_config={"max.message.bytes": "3000"})
    got = []
    cb = lambda err, msg: got.append((err and err.code(), msg.offset()))    # noqa: E731
    batches = (cb_batches([b"a" * 900, b"b" * 900], 2, cb) + cb_batches([b"c" * 5000], 1, cb)
               + cb_batches([b"d" * 900], 1, cb))
    del fsyncs[:]
    write_and_serve(p, batches)
    assert len(fsyncs) == 1
    assert got == [(None, 1), (None, 2)] + [(KafkaError.MSG_SIZE_TOO_LARGE, sender_mod.NOT_WRITTEN)] * 2
    _, records = read_partition(conf, TOPIC, 0)
    assert [r.value for r in records] == [b"first", b"a" * 900, b"b" * 900]


# ---- crash safety: nothing acknowledged is lost to a power loss ----

_CHILD = r'''
import os, random, sys
from pylog.torture import powerloss
store, log, acks = sys.argv[1:4]
powerloss.install_recorder(log)
from pylog import Producer
rng = random.Random(1)
p = Producer({"bootstrap.servers": "file://" + store, "enable.idempotence": True,
              "pylog.fsync": "always", "linger.ms": 5, "batch.size": 50000})
fd = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
n = 0
while True:
    k = rng.randrange(1, 200)
    for i in range(k):
        p.produce("t", (b"%08d:" % (n + i)).ljust(rng.randrange(100, 20000), b"x"))
    assert p.flush(30) == 0
    n += k
    os.write(fd, b"%d\n" % n)
    os.fsync(fd)
'''


def test_records_flush_acknowledged_survive_a_power_loss(tmp_path):
    """A child produces bare values (the group-commit lane) with fsync=always
    and notes how many flush() acknowledged; it is SIGKILLed mid-stream and
    every file is cut back to what its fsyncs made durable (the torture
    harness's power loss, truncate mode): every acknowledged record is there."""
    import signal
    import subprocess
    import sys
    import time
    from pylog import Consumer, OFFSET_BEGINNING, TopicPartition
    from pylog.torture import powerloss
    store = str(tmp_path / "store")
    s = Store.acquire(store)
    s.create_topic("t", 1)
    s.release()
    before = powerloss.snapshot(store)
    log, acks = str(tmp_path / "fsync.log"), str(tmp_path / "acks")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, store, log, acks], env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child.poll() is None:
            if os.path.exists(acks) and os.path.getsize(acks) > 40:   # a few drains acknowledged
                break
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lines = open(acks).read().split() if os.path.exists(acks) else []
    assert lines, "the child acknowledged nothing"
    acked = int(lines[-1])
    powerloss.apply(store, powerloss.read_records(log), before, mode="truncate")
    c = Consumer({"bootstrap.servers": "file://" + store, "group.id": "check",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
        got = []
        while True:
            msgs = c.consume(10000, 0.5)
            if not msgs:
                break
            got += [int(m.value()[:8]) for m in msgs]
    finally:
        c.close()
    assert got == list(range(len(got))) and len(got) >= acked
