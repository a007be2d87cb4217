"""pylog._fastmsg (csrc/fastmsg.c): Message objects built in C for
Consumer._decode_batches, checked against the Python loop it replaces.

- differential: random records regions decoded by decode_messages() and by
  the Python reference (pl_decode_records through _bridge, Message(...)), and
  whole fetches decoded by Consumer._decode_batches with each path (multiple
  batches, compression, LogAppendTime, control and aborted batches);
- damage: truncated, bit-flipped and random regions are rejected exactly
  when pl_decode_records rejects them, with CorruptRecordError, leaving the
  output list as it was;
- references: refcounts of the shared objects, tracemalloc and gc object
  counts over many decodes, and every single allocation failure
  (_testcapi.set_nomemory) leaving no leak and the list unchanged;
- end to end: a store read back by a read_committed Consumer with each path.
"""
import collections
import gc
import os
import random
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pylog.consumer as consumer_mod
from pylog import _bridge, _fastmsg, compression
from pylog import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from pylog.consumer import _Fetch
from pylog.errors import CorruptRecordError, KafkaError
from pylog.message import (Message, PyMessage, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME,
                           TIMESTAMP_NOT_AVAILABLE)

from txn_support import conf_for, create_topics, zigzag as zz

decode_messages = _fastmsg.decode_messages
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EXAMPLES = int(os.environ.get("PYLOG_HYPOTHESIS_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- encoding records (independently of csrc/batch.c) ----
def encode_record(attrs, ts_delta, off_delta, key, value, headers):
    body = bytearray([attrs]) + zz(ts_delta) + zz(off_delta)
    for f in (key, value):
        body += zz(-1) if f is None else zz(len(f)) + f
    body += zz(len(headers))
    for k, v in headers:
        body += zz(len(k)) + k + (zz(-1) if v is None else zz(len(v)) + v)
    return zz(len(body)) + bytes(body)


def encode_region(records):
    return b"".join(encode_record(*r) for r in records)


# ---- the Python reference: the loop Consumer._decode_batches falls back to ----
def reference(recs, count, base_offset, base_ts, topic, partition, first, tstype, max_ts):
    fields = _bridge.decode_records(recs, count, base_offset, base_ts)
    out = []
    for i in range(0, len(fields), _bridge.REC_FIELDS):
        off, ts, kp, kl, vp, vl, hp, hc = fields[i:i + 8]
        if off < first:
            continue
        out.append(Message(topic, partition, off,
                           None if kl < 0 else bytes(recs[kp:kp + kl]),
                           None if vl < 0 else bytes(recs[vp:vp + vl]),
                           _bridge.decode_headers(memoryview(recs)[hp:], hc) if hc else None,
                           max_ts if tstype == TIMESTAMP_LOG_APPEND_TIME else ts, None, tstype))
    return out


def fields(m):
    """Everything a Message shows: every slot, the accessors, repr and len."""
    assert type(m) is Message
    assert not hasattr(m, "__dict__")
    for b in (m.key(), m.value()):
        assert b is None or type(b) is bytes
    assert type(m.offset()) is int and type(m.timestamp()[1]) is int
    if m.headers() is not None:
        assert type(m._headers) is list
        for k, v in m._headers:
            assert type(k) is str and (v is None or type(v) is bytes)
    return (tuple(getattr(m, s) for s in PyMessage.__slots__) +
            (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(),
             m.timestamp(), m.error(), m.latency(), m.leader_epoch(), len(m), repr(m)))


def outcome(fn):
    """(list of message fields, None) or (None, exception type)."""
    try:
        return [fields(m) for m in fn()], None
    except CorruptRecordError as e:
        assert e.args[0].code() == KafkaError.CORRUPT_MESSAGE
        return None, CorruptRecordError


def fast(recs, count, base_offset, base_ts, topic, partition, first, tstype, max_ts,
         pad=b"", out=None):
    """decode_messages() over recs placed inside a larger buffer, into a list
    that already holds something; checks the append-only contract."""
    buf = pad + bytes(recs) + pad[::-1]
    sentinel = object()
    out = [sentinel] if out is None else out
    before = list(out)
    try:
        n = decode_messages(Message, out, buf, len(pad), len(pad) + len(recs), count,
                            base_offset, base_ts, topic, partition, first, tstype, max_ts)
    except CorruptRecordError:
        assert out == before and all(a is b for a, b in zip(out, before))
        raise
    assert out[:len(before)] == before and len(out) == len(before) + n
    return out[len(before):]


def both(recs, count, base_offset=0, base_ts=0, first=0, tstype=TIMESTAMP_CREATE_TIME,
         max_ts=0, topic="topic", partition=3, pad=b""):
    args = (recs, count, base_offset, base_ts, topic, partition, first, tstype, max_ts)
    ref = outcome(lambda: reference(*args))
    got = outcome(lambda: fast(*args, pad=pad))
    assert got == ref
    return ref


# ---- strategies ----
int64 = st.integers(INT64_MIN, INT64_MAX)
blob = st.none() | st.just(b"") | st.binary(max_size=40)
header_key = st.binary(max_size=12) | st.sampled_from([b"\xff\xfe", b"ok\x80", b"\xc3\x28", "é".encode()])
headers_st = st.lists(st.tuples(header_key, st.none() | st.binary(max_size=16)), max_size=4)
record_st = st.tuples(st.integers(0, 255), st.one_of(st.integers(-1000, 1000), int64),
                      st.one_of(st.integers(0, 50), st.integers(0, (1 << 31) - 1)),
                      blob, blob, headers_st)
records_st = st.lists(record_st, max_size=20)


@SETTINGS
@given(records=records_st, base_offset=st.one_of(st.integers(0, 1 << 40), int64),
       base_ts=st.one_of(st.integers(-10, 1 << 41), int64), first=st.integers(-5, 60),
       log_append=st.booleans(), max_ts=st.one_of(st.integers(-3, 3), int64),
       pad=st.sampled_from([b"", b"\x00" * 3, b"\xff" * 64]))
def test_random_regions_match_the_python_loop(records, base_offset, base_ts, first, log_append,
                                              max_ts, pad):
    tstype = TIMESTAMP_LOG_APPEND_TIME if log_append else TIMESTAMP_CREATE_TIME
    msgs, err = both(encode_region(records), len(records), base_offset, base_ts,
                     base_offset + first if 0 <= base_offset < 1 << 40 else first,
                     tstype, max_ts, pad=pad)
    assert err is None                      # every encoded region is valid


def test_fields_by_hand():
    recs = encode_region([
        (0, 5, 0, None, b"v0", []),
        (0, -20, 1, b"", b"", [(b"k", b"x"), (b"\xff", None)]),
        (0, 7, 4, b"key", None, []),
    ])
    msgs = fast(recs, 3, 100, 10, "t", 2, 101, TIMESTAMP_CREATE_TIME, 0)
    assert [m.offset() for m in msgs] == [101, 104]         # 100 skipped: below first
    m1, m2 = msgs
    assert (m1.key(), m1.value(), m1.headers()) == (b"", b"", [("k", b"x"), ("\ufffd", None)])
    assert m1.timestamp() == (TIMESTAMP_NOT_AVAILABLE, -10)  # 10 - 20 < 0
    assert (m2.key(), m2.value(), m2.headers(), m2._headers) == (b"key", None, None, None)
    assert m2.timestamp() == (TIMESTAMP_CREATE_TIME, 17)
    assert (m2.topic(), m2.partition(), m2.error(), m2.latency(), m2.leader_epoch()) == ("t", 2, None, None, None)
    assert isinstance(m2, Message) and repr(m2).startswith("Message(topic='t'")
    m2.set_value(b"changed")
    assert m2.value() == b"changed" and len(m2) == 7
    la = fast(recs, 3, 100, 10, "t", 2, 0, TIMESTAMP_LOG_APPEND_TIME, 99)
    assert [m.timestamp() for m in la] == [(TIMESTAMP_LOG_APPEND_TIME, 99)] * 3
    la = fast(recs, 3, 100, 10, "t", 2, 0, TIMESTAMP_LOG_APPEND_TIME, -1)
    assert [m.timestamp() for m in la] == [(TIMESTAMP_NOT_AVAILABLE, -1)] * 3


def test_offset_and_timestamp_wrap_like_the_c_decoder():
    recs = encode_region([(0, INT64_MAX, 5, None, b"a", []), (0, INT64_MIN, 6, None, b"b", [])])
    msgs, err = both(recs, 2, INT64_MAX - 5, 1, first=INT64_MIN)
    assert err is None and [m[2] for m in msgs] == [INT64_MAX, INT64_MIN]
    assert [m[6] for m in msgs] == [INT64_MIN, INT64_MIN + 1]


def test_empty_region():
    assert both(b"", 0) == ([], None)
    assert fast(b"", 0, 0, 0, "t", 0, 0, TIMESTAMP_CREATE_TIME, 0) == []


# ---- damaged regions ----
MUTATIONS = ("truncate", "flip", "set", "insert", "delete", "count+1", "count-1")


@SETTINGS
@given(records=st.lists(record_st, min_size=1, max_size=8), data=st.data())
def test_damaged_regions_are_rejected_exactly_when_pl_decode_records_rejects_them(records, data):
    recs = bytearray(encode_region(records))
    count = len(records)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(MUTATIONS))
        i = data.draw(st.integers(0, max(len(recs) - 1, 0)))
        if op == "truncate":
            del recs[i:]
        elif op == "flip" and recs:
            recs[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and recs:
            recs[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            recs.insert(i, data.draw(st.integers(0, 255)))
        elif op == "delete" and recs:
            del recs[i]
        elif op == "count+1":
            count += 1
        elif op == "count-1":
            count -= 1
    both(bytes(recs), count, first=data.draw(st.integers(-1, 10)), pad=b"\x01\x02")


@SETTINGS
@given(recs=st.binary(max_size=200), extra=st.integers(-1, 3))
def test_random_bytes_agree_with_pl_decode_records(recs, extra):
    both(recs, len(recs) // 7 + extra if extra >= 0 else len(recs) // 9)


@pytest.mark.parametrize("seed", range(3))
def test_every_truncation_and_bit_flip(seed):
    rng = random.Random(seed)
    records = [(0, rng.randint(-5, 5), i, rng.choice([None, b"", b"k%d" % i]),
                rng.choice([None, b"", b"v" * rng.randint(1, 150)]),
                [(b"h%d" % j, rng.choice([None, b"", b"x"])) for j in range(rng.randint(0, 2))])
               for i in range(6)]
    recs = encode_region(records)
    for cut in range(len(recs)):            # every shorter region: always damage
        assert both(recs[:cut], len(records))[1] is CorruptRecordError
    rejected = 0
    for pos in range(len(recs)):
        for bit in range(8):
            bad = bytearray(recs)
            bad[pos] ^= 1 << bit
            rejected += both(bytes(bad), len(records))[1] is CorruptRecordError
    # flips in keys and values are still valid records; flips in lengths are not
    assert 0 < rejected < 8 * len(recs)
    assert both(bytes([recs[0] ^ 0x02]) + recs[1:], len(records))[1] is CorruptRecordError


def test_damage_details_and_list_left_alone():
    good = encode_region([(0, 0, 0, None, b"v", [])] * 3)
    out = ["keep"]
    with pytest.raises(CorruptRecordError, match="does not fit"):
        decode_messages(Message, out, good, 0, len(good), (1 << 31) - 1, 0, 0, "t", 0, 0, 1, 0)
    with pytest.raises(CorruptRecordError, match="does not fit"):
        decode_messages(Message, out, good, 0, len(good), -1, 0, 0, "t", 0, 0, 1, 0)
    with pytest.raises(CorruptRecordError, match="bytes left after the last record"):
        decode_messages(Message, out, good + b"\x00", 0, len(good) + 1, 3, 0, 0, "t", 0, 0, 1, 0)
    # the third record's key runs past it: two messages were built, then dropped
    assert len(good) == 24                          # 3 records of 8 bytes
    bad = good[:16] + b"\x10" + b"\x00\x00\x04\x7e" + b"\x00" * 4   # key length 63 > 4 left
    with pytest.raises(CorruptRecordError, match="record 2"):
        decode_messages(Message, out, bad, 0, len(bad), 3, 0, 0, "t", 0, 0, 1, 0)
    assert out == ["keep"]
    # a header value running past its record
    rec = bytearray(encode_record(0, 0, 0, None, b"v", [(b"k", b"abc")]))
    rec[-4] = 0x7e
    with pytest.raises(CorruptRecordError, match="header value"):
        decode_messages(Message, out, bytes(rec), 0, len(rec), 1, 0, 0, "t", 0, 0, 1, 0)
    assert out == ["keep"]


def test_the_count_caps_of_bridge_apply_to_both_paths():
    max_records = getattr(_bridge, "MAX_BATCH_RECORDS", None)
    max_headers = getattr(_bridge, "MAX_RECORD_HEADERS", None)
    # read from _bridge when _fastmsg is imported: one source for both paths
    assert _fastmsg.MAX_BATCH_RECORDS == (INT64_MAX if max_records is None else max_records)
    assert _fastmsg.MAX_RECORD_HEADERS == (INT64_MAX if max_headers is None else max_headers)
    if max_records is None or max_headers is None:
        pytest.skip("pylog._bridge has no record/header caps")
    smallest = encode_record(0, 0, 0, None, None, [])
    assert len(smallest) == 7
    recs = smallest * (max_records + 1)             # fits the bytes, over the cap
    assert both(recs, max_records + 1) == (None, CorruptRecordError)
    with pytest.raises(CorruptRecordError, match="over pylog's limit"):
        fast(recs, max_records + 1, 0, 0, "t", 0, 0, TIMESTAMP_CREATE_TIME, 0)
    many = encode_record(0, 0, 0, None, b"v", [(b"", b"")] * (max_headers + 1))
    recs = many + encode_record(0, 0, 1, None, b"w", [(b"k", None)])
    assert both(recs, 2) == (None, CorruptRecordError)
    with pytest.raises(CorruptRecordError, match="over pylog's limit"):
        fast(recs, 2, 0, 0, "t", 0, 0, TIMESTAMP_CREATE_TIME, 0)
    msgs, err = both(recs, 2, first=1)              # the record over the cap is not handed out
    assert err is None and [(m[2], m[5]) for m in msgs] == [(1, [("k", None)])]


# ---- arguments and the class ----
def test_bad_arguments():
    recs = encode_region([(0, 0, 0, None, b"v", [])])
    ok = [Message, [], recs, 0, len(recs), 1, 0, 0, "t", 0, 0, 1, 0]
    assert decode_messages(*ok) == 1

    def call(i, v, exc, **more):
        args = list(ok)
        args[i] = v
        for j, w in more.items():
            args[int(j[1:])] = w
        with pytest.raises(exc):
            decode_messages(*args)

    call(1, (), TypeError)                          # out must be a list
    call(1, collections.deque(), TypeError)
    call(2, "text", TypeError)                      # no buffer protocol
    call(3, -1, ValueError)                         # window outside the buffer
    call(4, len(recs) + 1, ValueError)
    call(3, 4, ValueError, a4=3)                    # start > end
    call(3, 1 << 70, ValueError)
    call(5, 1.0, TypeError)
    call(11, 0, ValueError)                         # tstype
    call(11, 3, ValueError)
    call(0, 5, TypeError)
    with pytest.raises(TypeError):
        decode_messages(*ok[:12])
    for buf in (bytearray(recs), memoryview(recs), memoryview(b"xx" + recs)[2:]):
        got = []
        assert decode_messages(Message, got, buf, 0, len(recs), 1, 0, 0, "t", 0, 0, 1, 0) == 1
        assert got[0].value() == b"v" and type(got[0].value()) is bytes


def test_a_bytearray_cannot_be_resized_while_decoded():
    # the buffer export is held for the whole call; afterwards it is released
    buf = bytearray(encode_region([(0, 0, 0, None, b"v", [])]))
    decode_messages(Message, [], buf, 0, len(buf), 1, 0, 0, "t", 0, 0, 1, 0)
    buf += b"more"                                  # raises BufferError if still exported


class Sub(Message):
    pass


def test_only_message_itself():
    """decode_messages() fills the C type's fields directly: a subclass (which
    could add fields of its own) or another class is refused."""
    recs = encode_region([(0, 0, 0, b"k", b"v", [])])
    out = []
    decode_messages(Message, out, recs, 0, len(recs), 1, 8, 0, "t", 0, 0, 1, 0)
    assert type(out[0]) is Message and out[0].offset() == 8
    for cls in (Sub, PyMessage, int, TopicPartition):
        with pytest.raises(TypeError):
            decode_messages(cls, out, recs, 0, len(recs), 1, 0, 0, "t", 0, 0, 1, 0)
    assert len(out) == 1


def test_messages_without_headers_are_left_to_reference_counting():
    """No cycle can pass through a message whose fields are all atoms, so the
    cyclic collector does not track it; with headers (a list) or once a
    setter has put anything in it, it is tracked."""
    recs = encode_region([(0, 0, 0, b"k", b"v", []), (0, 0, 1, None, b"w", [(b"h", b"x")])])
    out = []
    decode_messages(Message, out, recs, 0, len(recs), 2, 0, 0, "t", 0, 0, 1, 0)
    plain, with_headers = out
    assert not gc.is_tracked(plain) and gc.is_tracked(with_headers)
    one = encode_region([(0, 0, 0, b"k", b"v", [])])
    for setter in ("set_key", "set_value", "set_headers"):
        decode_messages(Message, out, one, 0, len(one), 1, 0, 0, "t", 0, 0, 1, 0)
        m = out[-1]
        assert not gc.is_tracked(m)
        cycle = [m]
        getattr(m, setter)(cycle)
        assert gc.is_tracked(m)
    # a message in a cycle through its value is collected
    out.clear()
    decode_messages(Message, out, one, 0, len(one), 1, 0, 0, "t", 0, 0, 1, 0)
    m = out.pop()
    holder = [m]
    m.set_value(holder)
    probe = [object()]
    holder.append(probe)
    import weakref

    class Flag:
        pass
    flag = Flag()
    probe.append(flag)
    ref = weakref.ref(flag)
    del m, holder, probe, flag
    gc.collect()
    assert ref() is None


# ---- references and memory ----
def _workload():
    """A region with headers, keys and nulls, a damaged copy, and the args."""
    rng = random.Random(7)
    records = [(0, rng.randint(-3, 3), i, rng.choice([None, b"", b"key"]),
                rng.choice([None, b"", b"value" * 3]),
                [(b"h\xff", rng.choice([None, b"x"]))] * rng.randint(0, 2)) for i in range(50)]
    recs = encode_region(records)
    bad = bytearray(recs)
    bad[len(bad) // 2] ^= 0x40
    return recs, bytes(bad), len(records)


def test_references_are_balanced():
    recs, bad, count = _workload()
    topic = "".join(["to", "pic"])                  # private objects: exact refcounts
    partition = int("1234567890123")
    before = [sys.getrefcount(o) for o in (topic, partition, Message)]
    out = []
    for _ in range(20):
        decode_messages(Message, out, recs, 0, len(recs), count, 1 << 40, 5, topic, partition,
                        0, 1, 0)
        with pytest.raises(CorruptRecordError):
            decode_messages(Message, out, bad, 0, len(bad), count, 0, 5, topic, partition, 0, 1, 0)
    during = [sys.getrefcount(o) for o in (topic, partition, Message)]
    assert [d - b for d, b in zip(during, before)] == [20 * count, 20 * count, 0]
    del out
    assert [sys.getrefcount(o) for o in (topic, partition, Message)] == before


def test_no_growth_over_many_decodes():
    recs, bad, count = _workload()

    def run(n):
        for i in range(n):
            out = []
            decode_messages(Message, out, recs, 0, len(recs), count, 0, 5, "t", 1, i % 60, 2, 9)
            try:
                decode_messages(Message, out, bad, 0, len(bad), count, 0, 5, "t", 1, 0, 1, 0)
            except CorruptRecordError:
                pass
            del out

    run(50)
    gc.collect()
    objects, blocks = len(gc.get_objects()), sys.getallocatedblocks()
    run(1000)                                       # ~50,000 messages
    gc.collect()
    assert len(gc.get_objects()) - objects < 100    # a leaked list a call: 1,000
    assert sys.getallocatedblocks() - blocks < 200  # a leaked int or array a call: 1,000
    tracemalloc.start()
    try:
        run(50)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        run(1000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 8 * 1024, grown                  # a leaked int a call: 32 KB, a message a call: MBs


def test_every_allocation_failure_leaves_no_trace():
    testcapi = pytest.importorskip("_testcapi")
    # multi-byte values and large numbers: no cached small ints, 1-byte bytes or latin-1 str
    recs = encode_region([(0, 0, 0, b"kk", b"vv", [(b"hh", b"xx"), (b"\xff", None)]),
                          (0, 1, 1, None, b"ww", []), (0, 300, 2, b"", None, [(b"aa", b"")])])
    gc.disable()                                    # no collection inside the failing window
    try:
        failures = _fail_each_allocation(testcapi, recs)
    finally:
        gc.enable()
    # every allocation of the call (22 on CPython 3.11: 3 messages, their offsets,
    # timestamps, keys, values, header lists, names and values, the arrays, the
    # result) fails in its turn with MemoryError; the first nth past them succeeds
    assert len(failures) >= 15 and failures == list(range(len(failures))), failures


def _fail_each_allocation(testcapi, recs):
    topic, partition = "".join(["to", "pic"]), int("98765432109876")
    before = [sys.getrefcount(o) for o in (topic, partition, Message)]
    failures = []
    for nth in range(150):
        out = ["keep"]
        testcapi.set_nomemory(nth, nth + 1)        # only the nth allocation fails
        try:
            n = decode_messages(Message, out, recs, 0, len(recs), 3, 1 << 40, 1 << 41, topic,
                                partition, 0, 1, 0)
        except MemoryError:
            n = None
        finally:
            testcapi.remove_mem_hooks()
        if n is None:
            failures.append(nth)
            assert out == ["keep"]
        else:
            assert n == 3 and [m.offset() - (1 << 40) for m in out[1:]] == [0, 1, 2]
        del out
        assert [sys.getrefcount(o) for o in (topic, partition, Message)] == before, nth
    return failures


# ---- whole fetches through Consumer._decode_batches ----
PID, OTHER = 7, 8


def data_batch(base_offset, records, codec=0, log_append=False, pid=-1, transactional=False,
               base_ts=1000, max_ts=5000):
    region = encode_region(records)
    body = compression.compress(codec, region) if codec else region
    buf = bytearray(_bridge.HEADER_SIZE + len(body))
    buf[_bridge.HEADER_SIZE:] = body
    attrs = codec | (0x08 if log_append else 0) | (0x10 if transactional else 0)
    last = max(r[2] for r in records)
    _bridge.write_header(buf, base_offset, attrs, last, base_ts, max_ts, pid, 0,
                         0 if pid >= 0 else -1, len(records))
    return bytes(buf)


def marker(base_offset, pid, commit):
    b = bytearray(_bridge.control_batch(pid, 0, commit, 0, 1234))
    b[0:8] = base_offset.to_bytes(8, "big")         # baseOffset is outside the CRC
    return bytes(b)


def decode_with(path, data, position, aborted):
    infos, end, rc = _bridge.scan(data)
    assert rc == 0 and end == len(data)
    f = _Fetch(("topic", 4), None, position)
    saved = consumer_mod._decode_messages
    consumer_mod._decode_messages = path
    err = None
    try:
        Consumer._decode_batches(None, f, data, infos,
                                 None if aborted is None else collections.deque(aborted))
    except CorruptRecordError:
        err = CorruptRecordError
    finally:
        consumer_mod._decode_messages = saved
    return [fields(m) for m in f.buffer], f.position, err


def both_paths(data, position, aborted=None):
    ref = decode_with(None, data, position, aborted)
    assert decode_with(decode_messages, data, position, aborted) == ref
    return ref


fetch_st = st.lists(st.tuples(st.lists(record_st.map(lambda r: r[:2] + (0,) + r[3:]),
                                       min_size=1, max_size=6),
                              st.lists(st.integers(1, 3), min_size=6, max_size=6),
                              st.sampled_from([0, 1, 2, 3, 4]), st.booleans(),
                              st.sampled_from(["plain", "txn", "aborted", "marker"])),
                    min_size=1, max_size=6)


@SETTINGS
@given(batches=fetch_st, skip=st.integers(0, 8), read_committed=st.booleans())
def test_whole_fetches_match_the_python_loop(batches, skip, read_committed):
    parts, aborted, offset = [], [], 100
    for records, gaps, codec, log_append, kind in batches:
        if kind == "marker":
            parts.append(marker(offset, PID, commit=False))
            offset += 1
            continue
        deltas, d = [], 0
        for g in gaps[:len(records)]:             # increasing, with gaps (compaction)
            deltas.append(d)
            d += g
        records = [r[:2] + (delta,) + r[3:] for r, delta in zip(records, deltas)]
        pid = PID if kind == "aborted" else OTHER if kind == "txn" else -1
        if kind == "aborted":
            aborted.append((offset, PID))
        parts.append(data_batch(offset, records, codec, log_append, pid, kind != "plain"))
        offset += deltas[-1] + 1
    data = b"".join(parts)
    msgs, position, err = both_paths(data, 100 + skip, aborted if read_committed else None)
    assert err is None
    assert all(m[2] >= 100 + skip for m in msgs)


def test_fetch_with_a_damaged_batch_keeps_the_batches_before_it():
    good = data_batch(0, [(0, 0, 0, None, b"a", []), (0, 0, 1, b"k", b"b", [(b"h", None)])])
    region = bytearray(encode_region([(0, 0, 0, None, b"c", [])] * 2))
    region[-1] = 5                                  # header count of the last record
    bad = bytearray(_bridge.HEADER_SIZE + len(region))
    bad[_bridge.HEADER_SIZE:] = region
    _bridge.write_header(bad, 2, 0, 1, 0, 0, -1, 0, -1, 2)   # a valid CRC over bad records
    msgs, _, err = both_paths(good + bytes(bad), 0)
    assert err is CorruptRecordError and [m[4] for m in msgs] == [b"a", b"b"]


def test_compressed_fetch_with_log_append_time():
    records = [(0, i, i, None, b"x%d" % i, [(b"n", b"%d" % i)]) for i in range(20)]
    for codec in (1, 2, 3, 4):
        msgs, _, err = both_paths(data_batch(10, records, codec, log_append=True, max_ts=777), 15)
        assert err is None and [m[2] for m in msgs] == list(range(15, 30))
        assert {m[6] for m in msgs} == {777} and {m[7] for m in msgs} == {TIMESTAMP_LOG_APPEND_TIME}


# ---- end to end ----
def read_back(conf, topic, path, use_poll=False):
    saved = consumer_mod._decode_messages
    consumer_mod._decode_messages = path
    c = Consumer({**conf, "group.id": "fm", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out = []
        while True:
            if use_poll:
                m = c.poll(0.3)
                got = [] if m is None else [m]
            else:
                got = c.consume(7, 0.3)
            if not got:
                return out
            out.extend(got)
    finally:
        c.close()
        consumer_mod._decode_messages = saved


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_store_read_back_by_both_paths(tmp_path, codec):
    conf = conf_for(tmp_path)
    create_topics(conf, {"e": 1})
    rng = random.Random(codec)
    p = Producer({**conf, "transactional.id": "fm-" + codec, "compression.type": codec,
                  "batch.num.messages": 9})
    p.init_transactions()
    sent = []
    for t in range(8):
        p.begin_transaction()
        batch = []
        for i in range(rng.randint(1, 25)):
            key = rng.choice([None, b"", b"k%d" % i])
            value = rng.choice([None, b"", b"v%d-%d" % (t, i) * rng.randint(1, 9)])
            headers = rng.choice([None, [("a", b"1")], [(b"\xff\xfe", None), ("b", b"")]])
            p.produce("e", value=value, key=key, partition=0, headers=headers)
            batch.append((key, value))
        p.flush()
        if t % 3 == 2:
            p.abort_transaction()
        else:
            p.commit_transaction()
            sent.extend(batch)
    p.close()
    ref = read_back(conf, "e", None)
    assert [(m.key(), m.value()) for m in ref] == sent
    assert any(m.headers() == [("\ufffd\ufffd", None), ("b", b"")] for m in ref)
    want = [fields(m) for m in ref]
    assert [fields(m) for m in read_back(conf, "e", decode_messages)] == want
    assert [fields(m) for m in read_back(conf, "e", decode_messages, use_poll=True)] == want


@pytest.mark.parametrize("env,expect", [("1", "None"), ("", "decode_messages"), ("0", "decode_messages")])
def test_pylog_no_fastmsg_selects_the_python_loop(env, expect):
    out = subprocess.run(
        [sys.executable, "-c", "import pylog.consumer as c; "
         "print(getattr(c._decode_messages, '__name__', None))"],
        env={**os.environ, "PYLOG_NO_FASTMSG": env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expect
