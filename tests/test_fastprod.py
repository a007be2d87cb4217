"""pylog._fastprod (csrc/fastprod.c): produce() and the queue drain in C.

The fast lane must not change anything but speed, so most tests here are
differential: the same calls on a producer with the lane and on one without
(PYLOG_NO_FASTPROD=1 when it is created) must leave byte-identical logs (the
clock and the random sticky partitioner pinned), the same delivery reports
and the same exceptions with the same messages.  Then the C decisions one by
one (what Lane.produce queues itself and what it hands to the Python
produce()), the encoder against batch.c's builder, the cuts against
Sender._split_bare, and reference counts and memory over many calls.
"""
import collections
import gc
import glob
import os
import random
import sys
import time
import tracemalloc
import weakref

import pytest

from pylog import KafkaError, KafkaException, Producer, codec, sender as sender_mod
from pylog import producer as producer_mod
from pylog._bridge import Builder, write_header
from pylog.admin import AdminClient, NewTopic

from txn_support import read_partition

_fastprod = pytest.importorskip("pylog._fastprod", reason="pylog._fastprod is not built")

T0_NS = 1_700_000_000_123_000_000


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def new_producer(conf, fast, monkeypatch, **extra):
    """A Producer with the C lane (fast) or without: the switch is read at creation."""
    with monkeypatch.context() as m:
        if fast:
            m.delenv("PYLOG_NO_FASTPROD", raising=False)
        else:
            m.setenv("PYLOG_NO_FASTPROD", "1")
        p = Producer({**conf, **extra})
    assert (p._lane is not None) == fast
    return p


def store_conf(tmp_path, name):
    return {"bootstrap.servers": "file://" + str(tmp_path / name)}


def create_topics(conf, **parts):
    admin = AdminClient(conf)
    try:
        for name, n in parts.items():
            admin.create_topics([NewTopic(name, num_partitions=n)])[name].result()
    finally:
        admin.close()


def segment_bytes(conf):
    """{relative path: bytes} of every segment file of the store."""
    root = conf["bootstrap.servers"][len("file://"):]
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.log"), recursive=True)):
        with open(path, "rb") as f:
            out[os.path.relpath(path, root)] = f.read()
    return out


class FixedClock:
    """producer.time / sender.time with a pinned wall clock (batch timestamps)."""

    def __init__(self):
        self.ns = T0_NS

    def time_ns(self):
        return self.ns

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)
    time = staticmethod(time.time)


@pytest.fixture
def pinned(monkeypatch):
    """No sender thread (only flush()/purge() write, so batches are cut at
    the same places every run) and a fixed clock."""
    monkeypatch.setattr(sender_mod.Sender, "start", lambda self: None)
    clock = FixedClock()
    monkeypatch.setattr(producer_mod, "time", clock)
    monkeypatch.setattr(sender_mod, "time", clock)
    return clock


class Reports:
    """report (a bound method) is queued by C; the instance itself, a
    callable object, is handed to Python."""

    def __init__(self):
        self.got = []

    def __call__(self, err, msg):
        self.report(err, msg)

    def report(self, err, msg):
        self.got.append((None if err is None else (err.code(), err.str()), msg.topic(),
                         msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers(),
                         msg.timestamp()))


def outcome(fn, *args, **kwargs):
    """None, or (exception class name, str, KafkaError code if any)."""
    try:
        fn(*args, **kwargs)
    except Exception as e:          # noqa: BLE001 - the point is to compare them
        code = e.args[0].code() if isinstance(e, KafkaException) else None
        return type(e).__name__, str(e), code
    return None


def workload(p, dr, cb2):
    """Every shape of produce() call, with flush() and purge() in between;
    returns the outcome of each call."""
    out = []

    def call(*args, **kwargs):
        out.append(outcome(p.produce, *args, **kwargs))

    big = bytes(range(256)) * 300                   # 76800 bytes: over batch.size
    for i in range(40):                             # bare values, several batches
        call("a", b"v%d" % i * (i % 5))
    call("a", b"")
    call("a", big)
    for i in range(10):
        call("a", value=b"kw%d" % i)
    call(topic="a", value=b"all keywords")
    call("a", b"positional none", None, -1, None, 0, None)
    call("a", b"timestamp None", timestamp=None)
    call("a", b"timestamp False", timestamp=False)
    p.flush()
    for i in range(30):                             # keys, callbacks, partitions: tuples
        call("b", b"kv%d" % i, b"key%d" % (i % 7), on_delivery=dr.report if i % 2 else dr)
        call("b", b"p%d" % i, partition=i % 3)
        call("b", None, b"tombstone%d" % i)
        call("b", b"ts%d" % i, timestamp=1600000000000 + i, callback=cb2.report)
        call("a", b"bare between %d" % i)
    call("b", b"headers", headers=[("h", b"1"), ("g", None)], on_delivery=dr.report)
    call("b", b"empty headers", headers=[])
    call("b", "a str value", key="a str key")
    call("b", bytearray(b"a bytearray"), key=memoryview(b"a view"))
    call("a", memoryview(b"bare view"))
    # refusals
    call("b", b"x", partition=3)
    call("b", b"x", partition=-2)
    call("b", b"x", partition=True)
    call("b", b"x", partition=1.0)
    call("b", b"x", key=b"k", timestamp=None)
    call("b", b"x", timestamp=-1)
    call("b", b"x", timestamp=1.5)
    call("b", 12)
    call("b", b"x", key=12)
    call("b", b"x", on_delivery=12)
    call("b", b"x", headers="nope")
    call("a", b"y" * 200000)                        # message.max.bytes 100000
    call("b", b"y" * 60000, key=b"z" * 40000)
    call(b"a", b"bytes topic")
    call(None, b"none topic")
    call(["a"], b"unhashable topic")
    call()
    call("a", b"v", nope=1)
    call("a", b"v", value=b"twice")
    call("a", b"1", None, -1, None, 0, None, None, "ninth")
    p.flush()
    for i in range(12):
        call("b", b"purged%d" % i, key=b"k", on_delivery=dr.report)
        call("a", b"purged bare %d" % i)
    p.purge()
    p.poll(0)
    for i in range(25):
        call("a", b"after purge %d" % i)
        call("b", b"after purge %d" % i, key=b"k%d" % i, on_delivery=dr.report)
    p.flush()
    return out


def counting_produce(monkeypatch):
    """Count the calls that reach the Python Producer.produce (with the lane:
    the ones it hands over)."""
    calls = [0]
    python_produce = Producer.produce

    def produce(self, *args, **kwargs):
        calls[0] += 1
        return python_produce(self, *args, **kwargs)
    monkeypatch.setattr(Producer, "produce", produce)
    return calls


def run_workload(tmp_path, name, fast, monkeypatch, **extra):
    conf = store_conf(tmp_path, name)
    create_topics(conf, a=1, b=3)
    random.seed(20240607)
    p = new_producer(conf, fast, monkeypatch, **{"enable.idempotence": True, "linger.ms": 60000,
                                                   "batch.num.messages": 7, "batch.size": 600,
                                                   "message.max.bytes": 100000, **extra})
    dr, cb2 = Reports(), Reports()
    try:
        out = workload(p, dr, cb2)
        assert p.flush(10) == 0
        p.poll(0)
    finally:
        p.close()
    return conf, out, dr.got, cb2.got


# ---------------------------------------------------------------------------
# differential: lane on and off
# ---------------------------------------------------------------------------

def test_the_switch_selects_the_lane(tmp_path, monkeypatch):
    conf = store_conf(tmp_path, "s")
    fast = new_producer(conf, True, monkeypatch)
    slow = new_producer(conf, False, monkeypatch)
    try:
        assert fast.produce.__self__ is fast._lane and fast._lane.fast
        assert slow.produce.__func__ is Producer.produce
        fast.produce("t", b"1")
        slow.produce("t", b"1")
        assert type(fast._queues["t"]) is _fastprod.TopicQueue
        assert type(fast._queues["t"].dq) is _fastprod.Deque
        assert type(slow._queues["t"]) is sender_mod.TopicQueue
        assert type(slow._queues["t"].dq) is collections.deque
        assert fast.flush(5) == 0 and slow.flush(5) == 0
    finally:
        fast.close()
        slow.close()
    assert not fast._lane.fast                      # closed: everything goes to Python


def test_logs_reports_and_errors_are_identical_with_and_without_the_lane(
        tmp_path, monkeypatch, pinned):
    python_calls = counting_produce(monkeypatch)
    fconf, fout, fdr, fcb = run_workload(tmp_path, "fast", True, monkeypatch)
    handed_over, python_calls[0] = python_calls[0], 0
    sconf, sout, sdr, scb = run_workload(tmp_path, "slow", False, monkeypatch)
    assert python_calls[0] == len(sout) and handed_over < len(fout) // 5, handed_over   # C: most
    assert fout == sout
    assert sum(o is None for o in fout) > 250 and sum(o is not None for o in fout) == 20
    assert [o[2] for o in fout if o and o[0] == "KafkaException"] == [
        KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_PARTITION, KafkaError._INVALID_ARG,
        KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.MSG_SIZE_TOO_LARGE]
    assert fdr == sdr and fcb == scb
    assert len(fdr) == 30 + 1 + 12 + 25 and len(fcb) == 30
    assert [r[0][0] for r in fdr if r[0]] == [KafkaError._PURGE_QUEUE] * 12
    fsegs, ssegs = segment_bytes(fconf), segment_bytes(sconf)
    assert fsegs == ssegs and len(fsegs) == 4 and sum(map(len, fsegs.values())) > 80000
    infos, records = read_partition(fconf, "a", 0)
    assert len(infos) > 10 and {bi.base_timestamp for bi in infos} == {T0_NS // 1000000}
    assert records[41].value == bytes(range(256)) * 300


def test_identical_with_a_transactional_producer(tmp_path, monkeypatch, pinned):
    results = []
    for name, fast in (("fast", True), ("slow", False)):
        conf = store_conf(tmp_path, name)
        create_topics(conf, a=1, b=3)
        random.seed(7)
        p = new_producer(conf, fast, monkeypatch, **{"transactional.id": "tx", "linger.ms": 60000,
                                                       "batch.num.messages": 5})
        dr = Reports()
        out = [outcome(p.produce, "a", b"before init")]
        p.init_transactions()
        out.append(outcome(p.produce, "a", b"not in a transaction"))
        p.begin_transaction()
        for i in range(23):
            out.append(outcome(p.produce, "a", b"committed %d" % i))
            out.append(outcome(p.produce, "b", b"c%d" % i, key=b"k%d" % i, on_delivery=dr.report))
        p.commit_transaction()
        p.begin_transaction()
        for i in range(9):
            out.append(outcome(p.produce, "a", b"aborted %d" % i))
        p.abort_transaction()
        out.append(outcome(p.produce, "a", b"between transactions"))
        p.begin_transaction()
        for i in range(4):
            out.append(outcome(p.produce, "a", b"second %d" % i, on_delivery=dr.report))
        p.commit_transaction()
        p.poll(0)
        p.close()
        recs = {(t, n): [(r.offset, r.key, r.value, r.timestamp) for r in read_partition(conf, t, n)[1]]
                for t, n in (("a", 0), ("b", 0), ("b", 1), ("b", 2))}
        results.append((out, dr.got, recs))
    assert results[0] == results[1]
    out, got, recs = results[0]
    assert [o[2] for o in out if o] == [KafkaError._STATE] * 3     # before init, outside txns
    assert out.count(None) == 23 * 2 + 9 + 4
    assert len(got) == 27 and all(r[0] is None for r in got)
    assert len(recs[("a", 0)]) == 23 + 4              # abort_transaction() purged the rest


@pytest.mark.parametrize("limit", [{"queue.buffering.max.messages": 40},
                                   {"queue.buffering.max.kbytes": 1}])
def test_buffer_error_comes_at_the_same_record(tmp_path, monkeypatch, pinned, limit):
    counts = []
    for name, fast in (("fast", True), ("slow", False)):
        conf = store_conf(tmp_path, name)
        p = new_producer(conf, fast, monkeypatch, **{"linger.ms": 60000, **limit})
        try:
            got = []
            for topic in ("t", "u"):
                n = 0
                while n < 10000:
                    try:
                        p.produce(topic, b"0123456789" * 3)
                    except BufferError as e:
                        got.append((topic, n, str(e), len(p)))
                        break
                    n += 1
            assert p.flush(5) == 0
            for i in range(10000):                  # two queues: room recounted every call
                try:
                    p.produce("tu"[i % 2], b"0123456789" * 3, key=b"k" if i % 3 else None)
                except BufferError as e:
                    got.append((i, str(e), len(p), len(p._queues["t"].dq), p._queues["t"].room))
                    break
            assert p.flush(5) == 0
            with pytest.raises(KafkaException):
                p.produce("t", b"x" * 2000000)
            counts.append(got)
        finally:
            p.close()
    assert counts[0] == counts[1]
    assert counts[0][0][2] == "Local: Queue full" and counts[0][0][1] > 10


def test_threaded_sender_reads_back_the_same_records(tmp_path, monkeypatch):
    """With the sender thread writing on its own schedule.  Where a take cuts
    depends on timing, and a take writes its keyed records before its keyless
    ones (Sender._take, both lanes), so the comparison is of what that leaves
    fixed: the records, their order within each kind, gapless offsets, the
    reports against the log, and the sequence numbers."""
    results = []
    for name, fast in (("fast", True), ("slow", False)):
        conf = store_conf(tmp_path, name)
        p = new_producer(conf, fast, monkeypatch, **{"enable.idempotence": True, "linger.ms": 1,
                                                       "batch.num.messages": 100})
        dr = Reports()
        for i in range(20000):
            if i % 1000 == 999:
                p.produce("t", b"with a report %d" % i, on_delivery=dr.report)
                p.poll(0)
            elif i % 97 == 0:
                p.produce("t", b"keyed %d" % i, key=b"k%d" % i)
            else:
                p.produce("t", b"%d" % i)
        assert p.flush(30) == 0
        p.close()
        infos, records = read_partition(conf, "t", 0)
        seqs = [(bi.base_sequence, bi.records_count) for bi in infos]
        assert seqs[0][0] == 0 and all(s == a + n for (a, n), (s, _) in zip(seqs, seqs[1:]))
        assert [r.offset for r in records] == list(range(20000))
        by_offset = {r.offset: r.value for r in records}
        assert all(by_offset[off] == value for _, _, _, off, _, value, _, _ in dr.got)
        results.append(([r.value for r in records if r.key is None],
                        [(r.key, r.value) for r in records if r.key is not None],
                        [r[5] for r in dr.got]))
    assert results[0] == results[1]
    assert len(results[0][0]) == 20000 - 207 and len(results[0][1]) == 207
    assert len(results[0][2]) == 20


# ---------------------------------------------------------------------------
# Lane.produce: what C queues itself, what it hands to Python
# ---------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return "delegated"


def make_lane(nparts=3, **limits):
    queues = {}
    rec = Recorder()
    cfg = {"max_value": 1000, "max_msg": 1024, "max_queue_bytes": 1 << 20, "batch_msgs": 100,
           "batch_bytes": 1 << 20, **limits}
    lane = _fastprod.Lane(queues, rec, **cfg)
    lane.fast = True
    tq = queues["t"] = _fastprod.TopicQueue("t", nparts, 1)
    tq.room = 10000
    tq.dq.append(b"first")                      # a non-empty queue: no arming needed
    return lane, tq, rec


def cb(err, msg):
    pass


class Obj:
    def m(self, err, msg):
        pass


HANDLED_BARE = [
    ((b"v",), {}),
    ((b"v",), {"timestamp": 0}),
    ((b"v",), {"timestamp": None}),
    ((b"v",), {"timestamp": False}),
    ((b"v", None, -1, None, 0, None, None), {}),
    ((), {"value": b"v", "partition": -1, "on_delivery": None, "callback": None}),
    ((b"",), {}),
]


@pytest.mark.parametrize("args,kwargs", HANDLED_BARE)
def test_bare_calls_are_queued_as_the_value_itself(args, kwargs):
    lane, tq, rec = make_lane()
    value = kwargs.get("value", args[0] if args else None)
    assert lane.produce("t", *args, **kwargs) is None
    assert rec.calls == [] and len(tq.dq) == 2
    assert tq.dq.popmany(2)[1] is value and tq.bytes == len(value)


HANDLED_TUPLE = [
    # (args, kwargs, expected tuple with "V"/"CB" placeholders)
    ((b"v", b"k"), {}, ("V", b"k", -1, None, 0, None, b"", 0)),
    ((None, b"k"), {}, (None, b"k", -1, None, 0, None, b"", 0)),
    ((None,), {}, (None, None, -1, None, 0, None, b"", 0)),
    ((b"v",), {"partition": 2}, ("V", None, 2, None, 0, None, b"", 0)),
    ((b"v",), {"partition": 0, "timestamp": 123}, ("V", None, 0, None, 123, None, b"", 0)),
    ((b"v",), {"timestamp": 5}, ("V", None, -1, None, 5, None, b"", 0)),
    ((b"v",), {"on_delivery": cb}, ("V", None, -1, "CB", 0, None, b"", 0)),
    ((b"v",), {"callback": cb}, ("V", None, -1, "CB", 0, None, b"", 0)),
    ((b"v",), {"on_delivery": cb, "callback": print}, ("V", None, -1, "CB", 0, None, b"", 0)),
    ((b"v",), {"on_delivery": None, "callback": cb}, ("V", None, -1, "CB", 0, None, b"", 0)),
    ((b"v", b"k", 1, cb, 7, None), {}, ("V", b"k", 1, "CB", 7, None, b"", 0)),
]


@pytest.mark.parametrize("args,kwargs,expected", HANDLED_TUPLE)
def test_tuple_calls_are_queued_as_produce_slow_queues_them(args, kwargs, expected):
    lane, tq, rec = make_lane()
    assert lane.produce("t", *args, **kwargs) is None
    assert rec.calls == [] and len(tq.dq) == 2
    got = tq.dq.popmany(2)[1]
    value = args[0] if args else None
    cbk = kwargs.get("on_delivery") or kwargs.get("callback") or (args[3] if len(args) > 3 else None)
    want = tuple(value if x == "V" else cbk if x == "CB" else x for x in expected)
    assert got == want and got[0] is value and got[3] is cbk
    assert tq.bytes == (len(value) if value else 0) + (len(args[1]) if len(args) > 1 and args[1] else 0)


DELEGATED = [
    ((), {}),                                           # no topic
    (("u", b"v"), {}),                                  # unknown topic
    ((b"t", b"v"), {}),                                 # not a str
    (("t", bytearray(b"v")), {}),
    (("t", memoryview(b"v")), {}),
    (("t", "str value"), {}),
    (("t", 5), {}),
    (("t", b"v", "str key"), {}),
    (("t", b"v"), {"partition": 3}),                    # out of range
    (("t", b"v"), {"partition": -2}),
    (("t", b"v"), {"partition": True}),
    (("t", b"v"), {"partition": 1.0}),
    (("t", b"v"), {"partition": -1.0}),
    (("t", b"v"), {"partition": 2 ** 80}),
    (("t", b"v", b"k"), {"timestamp": None}),
    (("t", b"v"), {"timestamp": -1}),
    (("t", b"v"), {"timestamp": True}),
    (("t", b"v"), {"timestamp": 1.0}),
    (("t", b"v"), {"timestamp": 2 ** 80}),
    (("t", b"v"), {"on_delivery": 5}),
    (("t", b"v"), {"on_delivery": Recorder()}),         # callable, but maybe falsy: Python decides
    (("t", b"v"), {"callback": Recorder()}),
    (("t", b"v"), {"on_delivery": 0, "callback": cb}),
    (("t", b"v"), {"headers": []}),
    (("t", b"v"), {"headers": {"a": b"b"}}),
    (("t", b"v"), {"nope": 1}),
    (("t", b"v"), {"value": b"twice"}),
    (("t", b"v", None, -1, None, 0, None, None, "ninth"), {}),
    (("t", b"x" * 1001), {}),                           # over max_value
    (("t", b"x" * 1001, b"k"), {}),                     # over max_msg
    (("t", b"x" * 1000, b"k"), {}),
]


@pytest.mark.parametrize("args,kwargs", DELEGATED)
def test_everything_else_goes_to_python_untouched(args, kwargs):
    lane, tq, rec = make_lane()
    before = (len(tq.dq), tq.bytes)
    assert lane.produce(*args, **kwargs) == "delegated"
    assert rec.calls == [(args, kwargs)]
    assert (len(tq.dq), tq.bytes) == before


def test_non_interned_keyword_names_go_to_python():
    lane, tq, rec = make_lane()
    name = "".join(["val", "ue"])
    assert lane.produce("t", **{name: b"v"}) == "delegated"
    assert rec.calls == [(("t",), {"value": b"v"})]


def test_queue_states_that_need_python_are_delegated():
    lane, tq, rec = make_lane(batch_msgs=3, max_queue_bytes=100)
    tq.dq.popleft()
    assert lane.produce("t", b"v") == "delegated"                # empty: arm
    tq.dq.append(b"x")
    tq.room = 1
    assert lane.produce("t", b"v") == "delegated"                # room reached: recount
    tq.room = 100
    tq.bytes = 101
    assert lane.produce("t", b"v") == "delegated"                # over kbytes: recount
    assert lane.produce("t", b"v", b"k") == "delegated"
    tq.bytes = 95
    assert lane.produce("t", b"v") is None                       # bare checks bytes, not + size
    assert lane.produce("t", b"123456", b"k") == "delegated"     # tuple checks bytes + size
    tq.bytes = 0
    assert lane.produce("t", b"v") is None                       # 3 queued now
    assert lane.produce("t", b"v") == "delegated"                # batch.num.messages: kick
    tq.kicked = True
    assert lane.produce("t", b"v") is None                       # kicked already
    lane.fast = False
    assert lane.produce("t", b"v") == "delegated"
    lane.fast = True
    tq.dq = collections.deque([b"x"])                            # somebody else's deque
    assert lane.produce("t", b"v") == "delegated"
    del tq.dq
    assert lane.produce("t", b"v") == "delegated"
    assert len(rec.calls) == 9


def test_tuple_kick_threshold_counts_the_new_record():
    lane, tq, rec = make_lane(batch_msgs=3, batch_bytes=10)
    assert lane.produce("t", b"v", b"k") is None                 # 2 records, 2 bytes
    assert lane.produce("t", b"v", b"k") == "delegated"          # would be the 3rd
    lane, tq, rec = make_lane(batch_msgs=100, batch_bytes=10)
    assert lane.produce("t", b"1234", b"12345") is None          # 9 bytes
    assert lane.produce("t", b"v") is None                       # bare: no bytes threshold
    assert lane.produce("t", b"", b"") == "delegated"            # 10 >= batch_bytes


class FakeSender:
    def __init__(self, inflight=0, reports=()):
        self.inflight = inflight
        self.reports = collections.deque(reports)


def two_topic_lane(max_queue_msgs, sender):
    queues = {}
    rec = Recorder()
    lane = _fastprod.Lane(queues, rec, 1000, 1024, 1 << 20, 100, 1 << 20, sender, max_queue_msgs)
    lane.fast = True
    for name in ("t", "u"):
        tq = queues[name] = _fastprod.TopicQueue(name, 1)
        tq.dq.append(b"first")
    return lane, queues, rec


def test_several_topics_recount_room_as_check_room_does():
    """_check_room with two queues: room is recounted on every call, from
    every queue, the records in flight and the unserved reports."""
    sender = FakeSender(inflight=2, reports=[1, 2, 3])
    lane, queues, rec = two_topic_lane(10, sender)
    t, u = queues["t"], queues["u"]
    # len(producer) = 1 + 1 + 2 + 3 = 7: room for t = 10 - (7 - 1) = 4, kept as min(4, n + 1)
    assert lane.produce("t", b"v") is None and t.room == 2 and len(t.dq) == 2
    assert lane.produce("u", b"v", b"k") is None and u.room == 2      # 10 - (8 - 1) = 3
    assert lane.produce("t", b"v") is None and t.room == 3            # 10 - (9 - 2) = 3
    assert rec.calls == []
    assert lane.produce("t", b"v") == "delegated"                     # 10 - (10 - 3) = 3: full
    assert len(t.dq) == 3 and t.room == 3
    sender.reports.clear()                                            # reports served
    assert lane.produce("t", b"v") is None and t.room == 4


@pytest.mark.parametrize("sender", [None, FakeSender(inflight="2"), FakeSender(inflight=-1),
                                    type("NoReports", (), {"inflight": 0})(),
                                    type("ListReports", (), {"inflight": 0, "reports": []})()])
def test_recount_hands_anything_unexpected_to_python(sender):
    lane, queues, rec = two_topic_lane(100, sender)
    assert lane.produce("t", b"v") == "delegated"
    assert len(queues["t"].dq) == 1


def test_one_topic_recount_is_left_to_python():
    lane, tq, rec = make_lane()
    lane2 = _fastprod.Lane({"t": tq}, rec, 1000, 1024, 1 << 20, 100, 1 << 20, FakeSender(), 100)
    lane2.fast = True
    tq.room = 1
    assert lane2.produce("t", b"v") == "delegated"


def test_a_str_subclass_topic_and_a_bytes_subclass_value_go_to_python():
    class S(str):
        pass

    class B(bytes):
        pass
    lane, tq, rec = make_lane()
    assert lane.produce(S("t"), b"v") == "delegated"
    assert lane.produce("t", B(b"v")) == "delegated"
    assert lane.produce("t", b"v", B(b"k")) == "delegated"
    assert len(rec.calls) == 3


# ---------------------------------------------------------------------------
# Deque, take_bare and Encoder
# ---------------------------------------------------------------------------

def test_deque_behaves_as_the_deque_subset_pylog_uses():
    d = _fastprod.Deque()
    assert len(d) == 0 and not d
    with pytest.raises(IndexError, match="pop from an empty deque"):
        d.popleft()
    items = [b"%d" % i for i in range(1000)] + [("tuple",), None]
    for x in items:
        d.append(x)
    assert len(d) == 1002 and d
    assert d.popleft() is items[0]
    assert d.popmany(3) == items[1:4]
    for x in items[:500]:                   # grows with a gap at the front
        d.append(x)
    assert d.popmany(len(d)) == items[4:] + items[:500]
    for x in items[:64]:
        d.append(x)
    assert d.popmany(40) == items[:40]
    for x in items[64:104]:                 # moves the 24 left to the front first
        d.append(x)
    assert d.popmany(len(d)) == items[40:104]
    with pytest.raises(ValueError):
        d.popmany(1)
    with pytest.raises(ValueError):
        d.popmany(-1)
    d.append(b"x")
    d.clear()
    assert len(d) == 0
    with pytest.raises(TypeError):
        _fastprod.Deque(1)


def test_take_bare_leaves_the_queue_alone_when_a_record_is_not_bare():
    d = _fastprod.Deque()
    for x in (b"a", b"b", ("tuple",), b"c"):
        d.append(x)
    assert d.take_bare(4, 10, 1000) is None and len(d) == 4
    parts = d.take_bare(2, 10, 1000)
    assert [(len(p), c) for p, c in parts] == [(2, 2)] and len(d) == 2
    assert d.popmany(2)[0] == ("tuple",)
    with pytest.raises(ValueError):
        d.take_bare(1, 10, 1000)
    d.append(b"x")
    with pytest.raises(ValueError):
        d.take_bare(1, 0, 1000)             # batch_msgs must be >= 1
    assert d.take_bare(0, 1, 1) == [] and len(d) == 1


class Meddler:
    """Garbage (a cycle) whose finalizer runs `action` when a GC collects it."""

    def __init__(self, action):
        self.action = action
        self.me = self

    def __del__(self):
        self.action()


def during_next_gc(call, action, *args):
    """call(*args) with a GC due at its first allocation of a tracked object
    and a Meddler in the garbage: the GC runs `action` inside the C call."""
    gc.collect()
    old = gc.get_threshold()
    Meddler(action)
    try:
        gc.set_threshold(1)
        return call(*args)
    finally:
        gc.set_threshold(*old)
        gc.collect()


def test_a_finalizer_that_changes_the_queue_mid_take_is_caught():
    d = _fastprod.Deque()
    for i in range(100):
        d.append(b"v%d" % i)
    take_bare, popmany = d.take_bare, d.popmany
    with pytest.raises(RuntimeError, match="changed while being taken"):
        during_next_gc(take_bare, d.popleft, 100, 10, 1 << 20)
    assert len(d) == 99                                 # nothing taken by take_bare
    with pytest.raises(RuntimeError, match="changed while being taken"):
        during_next_gc(popmany, lambda: d.popmany(50), 99)
    assert len(d) == 49
    assert popmany(49) == [b"v%d" % i for i in range(51, 100)]


def test_a_finalizer_that_swaps_the_deque_mid_produce_is_caught():
    lane, tq, rec = make_lane()
    produce = lane.produce
    old_dq = tq.dq

    def swap():
        tq.dq = collections.deque([b"other"])
    assert during_next_gc(produce, swap, "t", b"v", b"k") == "delegated"   # the tuple's GC
    assert list(tq.dq) == [b"other"] and len(old_dq) == 1 and rec.calls == [
        (("t", b"v", b"k"), {})]


class Cuts:
    def __init__(self, batch_msgs, batch_bytes):
        self.batch_msgs, self.batch_bytes = batch_msgs, batch_bytes


@pytest.mark.parametrize("seed", range(12))
def test_take_bare_cuts_where_split_bare_cuts(seed):
    rnd = random.Random(seed)
    n = rnd.randrange(1, 400)
    values = [bytes(rnd.randrange(0, 3) and rnd.randrange(0, 300)) for _ in range(n)]
    if seed % 3 == 0:
        values[rnd.randrange(n)] = b"L" * 5000          # one record over batch_bytes
    batch_msgs = rnd.choice([1, 2, 7, 50, 10000])
    batch_bytes = rnd.choice([1, 100, 777, 4000, 1 << 20])
    fake = Cuts(batch_msgs, batch_bytes)
    expected = [b.recs for b in sender_mod.Sender._split_bare(fake, "t", -1, values, 0)]
    d = _fastprod.Deque()
    for v in values:
        d.append(v)
    parts = d.take_bare(n, batch_msgs, batch_bytes)
    assert len(d) == 0
    assert [c for _, c in parts] == [len(r) for r in expected]
    assert [part.popmany(len(part)) for part, _ in parts] == [list(r) for r in expected]


def builder_batch(values, ts0, pid, epoch, seq, attrs):
    """The batch the Python path writes for bare values (Sender._encode, codec.seal)."""
    b = Builder()
    for v in values:
        b.append(ts0, None, v)
    return b.finish(pid, epoch, seq, attrs, mutable=True)


@pytest.mark.parametrize("seed", range(8))
def test_encoder_writes_the_bytes_batch_c_writes(seed):
    rnd = random.Random(seed)
    sizes = [0, 1, 63, 64, 127, 128, 8191, 8192, 100, 70000]
    values = [bytes(rnd.randrange(256) for _ in range(rnd.choice(sizes[:7]))) for _ in range(150)]
    values += [b"\x00" * s for s in sizes]
    rnd.shuffle(values)
    ts0 = rnd.choice([0, 1, T0_NS // 1000000, 2 ** 62])
    pid, epoch, seq, attrs = rnd.choice([(-1, -1, -1, 0), (12345, 7, 2 ** 31 - 1, 0x10), (0, 0, 0, 0)])
    d = _fastprod.Deque()
    for v in values:
        d.append(v)
    (part, count), = d.take_bare(len(values), 100000, 1 << 30)
    enc = _fastprod.Encoder()
    buf = enc.encode(part, ts0)
    write_header(buf, 0, attrs, count - 1, ts0, ts0, pid, epoch, seq, count)
    assert buf == builder_batch(values, ts0, pid, epoch, seq, attrs)
    infos, records = codec.decode_all(bytes(buf))
    assert [r.value for r in records] == values and infos[0].records_count == len(values)


def test_encoder_reuses_its_buffer_only_when_nobody_else_holds_it():
    enc = _fastprod.Encoder()
    d = _fastprod.Deque()
    for v in (b"a" * 100, b"b" * 100, b"c" * 90, b"d" * 100):
        d.append(v)
    p1, p2, p3, p4 = [p for p, _ in d.take_bare(4, 1, 1 << 20)]
    b1 = enc.encode(p1, 0)
    copy1 = bytes(b1)
    b2 = enc.encode(p2, 0)                    # b1 is still held: a new buffer (the spare now)
    assert b2 is not b1 and bytes(b1) == copy1
    id2 = id(b2)
    del b1, b2
    b3 = enc.encode(p3, 0)                    # the spare, nobody else holds it
    write_header(b3, 0, 0, 0, 0, 0, -1, -1, -1, 1)
    assert id(b3) == id2 and b3 == builder_batch([b"c" * 90], 0, -1, -1, -1, 0)
    view = memoryview(b3)
    del b3
    b4 = enc.encode(p4, 0)                    # a view holds it: untouched
    write_header(b4, 0, 0, 0, 0, 0, -1, -1, -1, 1)
    assert id(b4) != id2 and bytes(view) == builder_batch([b"c" * 90], 0, -1, -1, -1, 0)
    assert b4 == builder_batch([b"d" * 100], 0, -1, -1, -1, 0)
    view.release()
    with pytest.raises(TypeError):
        enc.encode(b"not a deque", 0)
    bad = _fastprod.Deque()
    with pytest.raises(ValueError, match="empty batch"):
        enc.encode(bad, 0)
    bad.append("a str")
    with pytest.raises(TypeError, match="bytes"):
        enc.encode(bad, 0)


# ---------------------------------------------------------------------------
# reference counts and memory
# ---------------------------------------------------------------------------

def test_reference_counts_return_to_where_they_were(tmp_path, monkeypatch):
    conf = store_conf(tmp_path, "rc")
    create_topics(conf, t=2)
    p = new_producer(conf, True, monkeypatch, **{"linger.ms": 60000, "message.max.bytes": 1000})
    try:
        value, key = b"refcounted value %d" % id(object()), b"refcounted key %d" % id(object())
        reports = []

        def report(err, msg):
            reports.append(msg.offset())
        def refs():
            return [sys.getrefcount(x) for x in (value, key, report)]
        p.produce("t", b"arms the queue")
        base = refs()
        for i in range(3000):
            p.produce("t", value)
            p.produce("t", value, key, on_delivery=report)
            p.produce("t", None, key, partition=1, timestamp=5)
        assert refs()[:2] == [base[0] + 6000, base[1] + 6000]
        assert p.flush(10) == 0
        assert len(reports) == 3000
        del reports[:]
        gc.collect()
        assert refs() == base
        for i in range(500):
            p.produce("t", value, key, on_delivery=report)
            p.produce("t", value)
        p.purge()
        p.poll(0)
        assert len(reports) == 500
        for i in range(200):                                     # refused calls
            with pytest.raises(KafkaException):
                p.produce("t", value * 100, key)
            with pytest.raises(TypeError):
                p.produce("t", value, key, on_delivery=value)
            with pytest.raises(KafkaException):
                p.produce("t", value, partition=9)
        gc.collect()
        assert refs() == base
    finally:
        p.close()


def test_no_memory_growth_over_many_queue_cycles():
    """Deque/TopicQueue/Lane/Encoder alone (no store, whose indexes legitimately grow)."""
    queues = {}
    lane = _fastprod.Lane(queues, lambda *a, **k: None, 1000, 1024, 1 << 30, 10 ** 9, 1 << 30)
    lane.fast = True
    enc = _fastprod.Encoder()

    def cycle(i):
        tq = queues["t"] = _fastprod.TopicQueue("t", 2, 0)
        tq.room = 10 ** 9
        tq.dq.append(b"first")
        for j in range(3000):
            lane.produce("t", b"value %d" % (j % 10))
            lane.produce("t", b"v", b"k", partition=1, on_delivery=cb)
        recs = tq.dq.popmany(len(tq.dq))
        assert len(recs) == 6001
        for r in recs:
            tq.dq.append(r if type(r) is bytes else r[0])
        for part, _ in tq.dq.take_bare(len(tq.dq), 1000, 1 << 20):
            enc.encode(part, i)
    tracemalloc.start()
    try:
        for i in range(5):
            cycle(i)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            cycle(i)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


def live(kind):
    return sum(type(o) is kind for o in gc.get_objects())


def test_producer_and_lane_are_collected(tmp_path, monkeypatch):
    gc.collect()
    kinds = (_fastprod.Lane, _fastprod.TopicQueue, _fastprod.Deque)
    before = [live(k) for k in kinds]
    conf = store_conf(tmp_path, "gc")
    p = new_producer(conf, True, monkeypatch, **{"linger.ms": 60000})
    p.produce("t", b"x")
    p.produce("t", b"y", on_delivery=lambda err, msg: p)    # producer -> lane -> producer
    assert [live(k) for k in kinds[:2]] == [before[0] + 1, before[1] + 1]
    p.close()
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None
    assert [live(k) for k in kinds] == before


def test_cycles_through_queued_records_are_collected():
    gc.collect()
    kinds = (_fastprod.Lane, _fastprod.TopicQueue, _fastprod.Deque)
    before = [live(k) for k in kinds]
    queues = {}
    lane = _fastprod.Lane(queues, lambda *a, **k: None, 1000, 1024, 1 << 20, 100, 1 << 20)
    lane.fast = True
    tq = queues["t"] = _fastprod.TopicQueue("t", 1)
    tq.room = 10
    tq.dq.append(b"first")
    # lane -> queues -> tq -> dq -> queued tuple -> callback -> closure -> lane
    lane.produce("t", b"v", on_delivery=lambda err, msg: (lane, tq))
    parts = None
    tq.dq.append(b"bare")
    assert len(tq.dq) == 3
    del lane, tq, queues, parts
    gc.collect()
    assert [live(k) for k in kinds] == before
