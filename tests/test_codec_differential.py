"""Differential tests: pylog's codec against kafka-python's record batch v2.

kafka-python's DefaultRecordBatch / DefaultRecordBatchBuilder are an
independent implementation of the same format, so each direction is checked:
batches pylog builds must validate and decode in kafka-python, and batches
kafka-python builds must scan and decode in pylog, with identical fields.

Hypothesis runs PYLOG_HYPOTHESIS_EXAMPLES examples per property (default 100,
to keep the suite fast); raise it for a longer fuzzing run.
"""
import os
import struct
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    # kafka-python loads its protocol schemas with deprecated importlib.resources calls.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import (
        ControlRecord, DefaultRecordBatch, DefaultRecordBatchBuilder)
    from kafka.record.memory_records import MemoryRecords
    from kafka.record.util import calc_crc32c

from pylog import _bridge, codec, compression
from pylog._native import lib

INT32_MAX = 0x7FFFFFFF
ALL_CODECS = {"none": compression.NONE, "gzip": compression.GZIP, "snappy": compression.SNAPPY,
              "lz4": compression.LZ4, "zstd": compression.ZSTD}
PRODUCERS = {
    "no-producer": dict(producer_id=-1, producer_epoch=-1, base_sequence=-1, transactional=False),
    "idempotent": dict(producer_id=4242, producer_epoch=7, base_sequence=1000, transactional=False),
    "transactional": dict(producer_id=(1 << 40) + 5, producer_epoch=32767, base_sequence=0,
                          transactional=True),
    "sequence-wraps": dict(producer_id=9, producer_epoch=0, base_sequence=INT32_MAX - 3,
                           transactional=True),
}
PLE = slice(12, 16)      # partitionLeaderEpoch: pylog writes -1 (Java's NO_PARTITION_LEADER_EPOCH),
                         # kafka-python 0; it is outside the CRC.


def sample_records(n=40, value_size=120):
    """Null and empty keys/values, headers with null values, out-of-order timestamps."""
    out = []
    for i in range(n):
        key = [None, b"", b"key-%d" % i][i % 3]
        value = [b"value %d " % i * (value_size // 10), None, b""][i % 7 % 3]
        headers = [[], [("trace", b"%d" % i)], [("null", None), ("", b""), ("\u00e9t\u00e9", b"\xff")]][i % 3]
        out.append((1_700_000_000_000 + (i * 37) % 11 - 5, key, value, headers))
    return out


def kafka_build(records, codec_id=compression.NONE, producer_id=-1, producer_epoch=-1,
                base_sequence=-1, transactional=False):
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec_id, is_transactional=transactional,
                                  producer_id=producer_id, producer_epoch=producer_epoch,
                                  base_sequence=base_sequence, batch_size=1 << 30)
    for i, (ts, key, value, headers) in enumerate(records):
        assert b.append(i, ts, key, value, list(headers or [])) is not None
    return bytes(b.build())


def kafka_read(buf):
    """(batch, [(offset, ts, key, value, headers)]) read by kafka-python, CRC checked."""
    batch = DefaultRecordBatch(buf)
    assert batch.validate_crc()
    return batch, [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]


def pylog_read(buf):
    infos, recs = codec.decode_all(buf)
    return infos, [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs]


def expected(records, base_offset=0):
    return [(base_offset + i, ts, k, v, list(h or [])) for i, (ts, k, v, h) in enumerate(records)]


def assert_same_header(batch, info):
    assert batch.base_offset == info.base_offset
    assert batch.last_offset_delta == info.last_offset_delta
    assert batch.first_timestamp == info.base_timestamp
    assert batch.max_timestamp == info.max_timestamp
    assert batch.producer_id == info.producer_id
    assert batch.producer_epoch == info.producer_epoch
    assert batch.base_sequence == info.base_sequence
    assert batch.last_sequence == info.last_sequence
    assert batch.is_transactional == info.is_transactional
    assert batch.is_control_batch == info.is_control
    assert batch.compression_type == info.compression
    assert batch.records_count == info.records_count
    assert batch.crc == info.crc
    assert batch.size_in_bytes == info.size


# ---- pylog -> kafka-python ----
@pytest.mark.parametrize("producer", PRODUCERS)
@pytest.mark.parametrize("codec_name", ALL_CODECS)
def test_pylog_batches_decode_in_kafka_python(codec_name, producer):
    records = sample_records()
    buf = codec.encode_batch(records, codec=ALL_CODECS[codec_name], **PRODUCERS[producer])
    batch, got = kafka_read(buf)
    assert got == expected(records)
    info = _bridge.scan(buf)[0][0]
    assert_same_header(batch, info)
    assert batch.compression_type == ALL_CODECS[codec_name]


# ---- kafka-python -> pylog ----
@pytest.mark.parametrize("producer", PRODUCERS)
@pytest.mark.parametrize("codec_name", ALL_CODECS)
def test_kafka_python_batches_decode_in_pylog(codec_name, producer):
    records = sample_records()
    p = PRODUCERS[producer]
    buf = kafka_build(records, ALL_CODECS[codec_name], p["producer_id"], p["producer_epoch"],
                      p["base_sequence"], p["transactional"])
    infos, end, rc = _bridge.scan(buf, expect_offset=0)
    assert (rc, end, len(infos)) == (lib.PL_OK, len(buf), 1)
    info = infos[0]
    # kafka-python sends uncompressed when compression does not help; these records compress.
    assert info.compression == ALL_CODECS[codec_name]
    assert pylog_read(buf)[1] == expected(records)
    assert_same_header(DefaultRecordBatch(buf), info)


def test_uncompressed_batches_are_byte_identical_to_kafka_python_except_leader_epoch():
    for producer in PRODUCERS.values():
        records = sample_records(25)
        ours = codec.encode_batch(records, **producer)
        theirs = kafka_build(records, compression.NONE, producer["producer_id"],
                             producer["producer_epoch"], producer["base_sequence"],
                             producer["transactional"])
        assert ours[:PLE.start] == theirs[:PLE.start]
        assert ours[PLE.stop:] == theirs[PLE.stop:]
        assert struct.unpack(">i", ours[PLE]) == (-1,)


# ---- producer fields ----
@pytest.mark.parametrize("base_sequence,count,last", [
    (INT32_MAX - 2, 5, 1),          # ..., MAX-1, MAX, 0, 1
    (INT32_MAX, 1, INT32_MAX),
    (INT32_MAX, 2, 0),
    (0, 3, 2),
    (-1, 3, -1),                    # no sequence
])
def test_sequence_wraps_at_int32_max(base_sequence, count, last):
    records = [(i, b"k", b"v", None) for i in range(count)]
    pid = -1 if base_sequence < 0 else 77
    epoch = -1 if base_sequence < 0 else 1
    ours = codec.encode_batch(records, producer_id=pid, producer_epoch=epoch,
                              base_sequence=base_sequence)
    theirs = kafka_build(records, producer_id=pid, producer_epoch=epoch, base_sequence=base_sequence)
    for buf in (ours, theirs):
        info = _bridge.scan(buf)[0][0]
        assert info.last_sequence == last
        assert DefaultRecordBatch(buf).last_sequence == last
        assert info.base_sequence == base_sequence


def test_transactional_flag_round_trips_both_ways():
    records = sample_records(3)
    for txn in (False, True):
        ours = codec.encode_batch(records, producer_id=5, producer_epoch=0, base_sequence=0,
                                  transactional=txn)
        assert DefaultRecordBatch(ours).is_transactional is txn
        theirs = kafka_build(records, producer_id=5, producer_epoch=0, base_sequence=0,
                             transactional=txn)
        assert _bridge.scan(theirs)[0][0].is_transactional is txn


def test_log_append_time_batches_read_the_same_in_both():
    records = sample_records(5)
    buf = bytearray(codec.encode_batch(records))
    # Re-stamp as a broker would: LogAppendTime bit and maxTimestamp, new CRC.
    info = _bridge.scan(bytes(buf))[0][0]
    _bridge.write_header(buf, 0, codec.ATTR_LOG_APPEND_TIME, info.last_offset_delta,
                         info.base_timestamp, 1_800_000_000_000, -1, -1, -1, info.records_count)
    batch, theirs = kafka_read(bytes(buf))
    assert batch.timestamp_type == 1
    ours = pylog_read(bytes(buf))[1]
    assert ours == theirs
    assert {ts for _, ts, _, _, _ in ours} == {1_800_000_000_000}


# ---- control batches ----
@pytest.mark.parametrize("commit", [True, False])
@pytest.mark.parametrize("coordinator_epoch", [0, 17, INT32_MAX, -1])
def test_pylog_control_batches_read_as_control_records_in_kafka_python(commit, coordinator_epoch):
    buf = _bridge.control_batch(31337, 12, commit, coordinator_epoch, 1_700_000_000_123)
    batch, _ = kafka_read(buf)
    assert batch.is_control_batch and batch.is_transactional
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (31337, 12, -1)
    assert_same_header(DefaultRecordBatch(buf), _bridge.scan(buf)[0][0])
    recs = list(DefaultRecordBatch(buf))
    assert len(recs) == 1
    rec = recs[0]
    assert isinstance(rec, ControlRecord)
    assert rec.version == 0
    assert rec.type == (1 if commit else 0)
    assert rec.commit is commit and rec.abort is not commit
    assert rec.timestamp == 1_700_000_000_123
    assert struct.unpack(">hi", rec.value) == (0, coordinator_epoch)


def kafka_control_batch(producer_id, producer_epoch, commit, coordinator_epoch, timestamp):
    """A marker made with kafka-python's primitives: the builder never sets the
    control bit (only brokers write markers), so set it and redo the CRC."""
    key = struct.pack(">hh", 0, 1 if commit else 0)          # version 0, type
    value = struct.pack(">hi", 0, coordinator_epoch)        # version 0, coordinator epoch
    buf = bytearray(kafka_build([(timestamp, key, value, [])], producer_id=producer_id,
                                producer_epoch=producer_epoch, base_sequence=-1,
                                transactional=True))
    attrs = struct.unpack_from(">h", buf, 21)[0] | DefaultRecordBatch.CONTROL_MASK
    struct.pack_into(">h", buf, 21, attrs)
    struct.pack_into(">I", buf, 17, calc_crc32c(memoryview(buf)[21:]))
    return bytes(buf)


@pytest.mark.parametrize("commit", [True, False])
def test_kafka_python_control_batches_decode_in_pylog_and_match_bytes(commit):
    theirs = kafka_control_batch(31337, 12, commit, 99, 5000)
    info = _bridge.scan(theirs)[0][0]
    assert info.is_control and info.is_transactional
    assert codec.decode_control(theirs, info) == (1 if commit else 0, 99)
    assert pylog_read(theirs)[1] == []          # control records are never handed out
    ours = _bridge.control_batch(31337, 12, commit, 99, 5000)
    assert ours[:PLE.start] == theirs[:PLE.start] and ours[PLE.stop:] == theirs[PLE.stop:]


# ---- whole logs ----
def with_base_offset(buf, base_offset):
    out = bytearray(buf)
    struct.pack_into(">q", out, 0, base_offset)     # outside the CRC, as the log stamps it
    return bytes(out)


def test_a_pylog_log_of_mixed_batches_reads_in_kafka_python_memory_records():
    parts, offset, want = [], 0, []
    for i, (name, c) in enumerate(ALL_CODECS.items()):
        records = sample_records(10 + i)
        parts.append(with_base_offset(codec.encode_batch(
            records, producer_id=8, producer_epoch=0, base_sequence=offset, transactional=True,
            codec=c), offset))
        want += expected(records, offset)
        offset += len(records)
    parts.append(with_base_offset(_bridge.control_batch(8, 0, True, 3, 0), offset))
    log = b"".join(parts)
    assert _bridge.scan(log, expect_offset=0)[2] == lib.PL_OK

    got, controls = [], []
    mr = MemoryRecords(log)
    while mr.has_next():
        batch = mr.next_batch()
        assert batch.validate_crc()
        for r in batch:
            (controls if isinstance(r, ControlRecord) else got).append(r)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got] == want
    assert [(c.offset, c.commit) for c in controls] == [(offset, True)]


def test_a_log_of_kafka_python_batches_scans_and_decodes_in_pylog():
    parts, offset, want = [], 0, []
    for i, c in enumerate(list(ALL_CODECS.values()) * 2):
        records = sample_records(5 + 3 * i)
        parts.append(with_base_offset(kafka_build(records, c, 8, 0, offset, True), offset))
        want += expected(records, offset)
        offset += len(records)
    parts.append(with_base_offset(kafka_control_batch(8, 0, False, 3, 0), offset))
    log = b"".join(parts)
    infos, end, rc = _bridge.scan(log, expect_offset=0)
    assert (rc, end, len(infos)) == (lib.PL_OK, len(log), len(parts))
    assert pylog_read(log)[1] == want
    assert codec.decode_control(log, infos[-1]) == (codec.CONTROL_ABORT, 3)


def test_both_reject_the_same_damaged_batches():
    buf = codec.encode_batch(sample_records(8), codec=compression.GZIP)
    for pos in range(21, len(buf), 3):
        bad = bytearray(buf)
        bad[pos] ^= 0x10
        assert DefaultRecordBatch(bytes(bad)).validate_crc() is False
        assert _bridge.scan(bytes(bad))[2] == lib.PL_ECRC


# ---- property-based round trips ----
EXAMPLES = int(os.environ.get("PYLOG_HYPOTHESIS_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

headers_st = st.lists(st.tuples(st.text(st.characters(codec="utf-8"), max_size=8),
                                st.none() | st.binary(max_size=16)), max_size=3)
record_st = st.tuples(st.integers(min_value=-(1 << 40), max_value=1 << 50),
                      st.none() | st.binary(max_size=40),
                      st.none() | st.binary(max_size=400) | st.just(b"\x00" * 3000),
                      headers_st)
records_st = st.lists(record_st, min_size=1, max_size=25)
producer_st = st.one_of(
    st.just((-1, -1, -1, False)),
    st.tuples(st.integers(0, (1 << 63) - 1), st.integers(0, 32767),
              st.integers(0, INT32_MAX), st.booleans()))


@SETTINGS
@given(records=records_st, codec_id=st.sampled_from(sorted(ALL_CODECS.values())), producer=producer_st)
def test_random_record_lists_round_trip_pylog_to_kafka_python(records, codec_id, producer):
    pid, epoch, seq, txn = producer
    buf = codec.encode_batch(records, producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                             transactional=txn, codec=codec_id)
    batch, got = kafka_read(buf)
    assert got == expected(records)
    assert_same_header(DefaultRecordBatch(buf), _bridge.scan(buf)[0][0])
    assert pylog_read(buf)[1] == got


@SETTINGS
@given(records=records_st, codec_id=st.sampled_from(sorted(ALL_CODECS.values())), producer=producer_st)
def test_random_record_lists_round_trip_kafka_python_to_pylog(records, codec_id, producer):
    pid, epoch, seq, txn = producer
    buf = kafka_build(records, codec_id, pid, epoch, seq, txn)
    infos, end, rc = _bridge.scan(buf, expect_offset=0)
    assert (rc, end) == (lib.PL_OK, len(buf))
    assert_same_header(DefaultRecordBatch(buf), infos[0])
    assert pylog_read(buf)[1] == expected(records)
