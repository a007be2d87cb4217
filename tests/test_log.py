"""pylog.log.PartitionLog: offsets, reads, roll, time lookups, fsync policy,
cross-process appends.

Recovery after damage and crashes is in test_log_recovery.py.
"""
import multiprocessing
import os
import random
import re
import time
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylog import codec, compression, failpoints, format
from pylog.errors import KafkaError, KafkaException, StorageError
from pylog.log import LogConfig, PartitionLog


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


@pytest.fixture
def opened(tmp_path):
    """open_log(**config) -> PartitionLog in tmp_path, closed at teardown."""
    logs = []

    def open_log(sub="p-0", **config):
        lg = PartitionLog(str(tmp_path / sub), LogConfig(**config))
        logs.append(lg)
        return lg

    yield open_log
    for lg in logs:
        lg.close()


def batch(values, ts=1000, key=b"k", headers=None, codec_id=compression.NONE):
    """One batch holding a record per value, timestamps ts, ts+1, ..."""
    return codec.encode_batch([(ts + i, key, v, headers) for i, v in enumerate(values)],
                              codec=codec_id)


def vals(tag, n):
    return [("%s-%d" % (tag, i)).encode() for i in range(n)]


def read_all(lg, start=None, max_bytes=1 << 20):
    """Every record from start to the log end, checking offsets are contiguous."""
    off = lg.log_start_offset if start is None else start
    out = []
    while True:
        buf, infos = lg.read(off, max_bytes)
        if not infos:
            return out
        _, recs = codec.decode_all(buf)
        recs = [r for r in recs if r.offset >= off]
        assert recs and recs[0].offset == off
        assert [r.offset for r in recs] == list(range(off, off + len(recs)))
        out += recs
        off = infos[-1].next_offset


def code_of(excinfo):
    return excinfo.value.args[0].code()


# ---- offsets ----
def test_new_log_is_empty_at_offset_zero(opened):
    lg = opened()
    assert (lg.log_start_offset, lg.next_offset, lg.size_bytes) == (0, 0, 0)
    assert lg.read(0) == (b"", [])
    assert lg.append([]) == []


def test_appends_get_contiguous_offsets(opened):
    lg = opened()
    expect = 0
    for i in range(200):
        n = i % 7 + 1
        (res,) = lg.append([batch(vals("a%d" % i, n))])
        assert (res.base_offset, res.last_offset, res.appended, res.error) == \
            (expect, expect + n - 1, True, None)
        expect += n
    assert lg.next_offset == expect
    recs = read_all(lg)
    assert [r.offset for r in recs] == list(range(expect))
    assert [r.value for r in recs] == [v for i in range(200) for v in vals("a%d" % i, i % 7 + 1)]


def test_multi_batch_append_assigns_consecutive_ranges_in_order(opened):
    lg = opened()
    lg.append([batch(vals("first", 2))])
    results = lg.append([batch(vals("x", 3)), batch(vals("y", 1)), batch(vals("z", 4))])
    assert [(r.base_offset, r.last_offset) for r in results] == [(2, 4), (5, 5), (6, 9)]
    assert lg.next_offset == 10
    assert [r.value for r in read_all(lg)] == vals("first", 2) + vals("x", 3) + vals("y", 1) + vals("z", 4)


def test_stored_batches_carry_their_offset_and_leader_epoch_zero(opened):
    lg = opened()
    lg.append([batch(vals("a", 3))])
    lg.append([batch(vals("b", 2))])
    buf, infos = lg.read(3)
    assert [(bi.base_offset, bi.last_offset, bi.partition_leader_epoch) for bi in infos] == [(3, 4, 0)]
    assert int.from_bytes(buf[0:8], "big") == 3


@pytest.mark.parametrize("bad", [b"", b"\x00" * 10, b"garbage" * 20])
def test_append_of_bytes_that_are_not_a_batch_is_refused_and_writes_nothing(opened, bad):
    lg = opened()
    lg.append([batch(vals("ok", 1))])
    with pytest.raises(KafkaException) as ei:
        lg.append([batch(vals("fine", 1)), bad])
    assert code_of(ei) in (KafkaError.CORRUPT_MESSAGE, KafkaError._INVALID_ARG)
    assert lg.next_offset == 1 and len(read_all(lg)) == 1


def test_append_refuses_two_batches_in_one_item_and_a_bad_crc(opened):
    lg = opened()
    with pytest.raises(KafkaException) as ei:
        lg.append([batch(vals("a", 1)) + batch(vals("b", 1))])
    assert code_of(ei) == KafkaError._INVALID_ARG
    damaged = bytearray(batch(vals("a", 3)))
    damaged[-1] ^= 0xFF
    with pytest.raises(KafkaException) as ei:
        lg.append([bytes(damaged)])
    assert code_of(ei) == KafkaError.CORRUPT_MESSAGE
    assert lg.next_offset == 0 and lg.size_bytes == 0


# ---- max.message.bytes ----
def test_batch_over_max_message_bytes_is_refused_and_nothing_is_written(opened):
    lg = opened(max_message_bytes=1000)
    small = batch([b"x" * 100])
    big = batch([b"y" * 3000])
    lg.append([small])
    size = lg.size_bytes
    for attempt in ([big], [small, big], [big, small]):
        with pytest.raises(KafkaException) as ei:
            lg.append(attempt)
        assert code_of(ei) == KafkaError.MSG_SIZE_TOO_LARGE
        assert "1000" in str(ei.value)
    assert lg.next_offset == 1 and lg.size_bytes == size
    assert [r.value for r in read_all(lg)] == [b"x" * 100]


def test_compressed_batch_is_measured_after_compression(opened):
    lg = opened(max_message_bytes=1000)
    (res,) = lg.append([batch([b"z" * 50000], codec_id=compression.GZIP)])
    assert res.appended
    assert read_all(lg)[0].value == b"z" * 50000


# ---- reads ----
@pytest.fixture
def sized(opened):
    """A log of 30 batches of 4 records (~200 bytes each)."""
    lg = opened(index_interval_bytes=256)
    for i in range(30):
        lg.append([batch([("%d-%d" % (i, j)).encode().ljust(30, b".") for j in range(4)])])
    return lg


def test_read_returns_whole_batches_starting_with_the_one_covering_offset(sized):
    for off in range(120):
        buf, infos = sized.read(off, 1)
        assert len(infos) == 1
        bi = infos[0]
        assert bi.base_offset == off - off % 4 and bi.last_offset == bi.base_offset + 3
        assert bi.position == 0 and len(buf) == bi.size
        infos2, recs = codec.decode_all(buf)
        assert [r.offset for r in recs] == list(range(bi.base_offset, bi.base_offset + 4))


def test_read_returns_one_batch_even_if_larger_than_max_bytes(opened):
    lg = opened()
    lg.append([batch([b"v" * 5000])])
    lg.append([batch([b"w"])])
    buf, infos = lg.read(0, max_bytes=10)
    assert [bi.base_offset for bi in infos] == [0] and len(buf) > 5000
    buf, infos = lg.read(0, max_bytes=0)
    assert [bi.base_offset for bi in infos] == [0]


def test_read_fills_up_to_max_bytes_with_whole_batches(sized):
    one = sized.read(0, 1)[1][0].size
    for k in (1, 2, 5, 29):
        buf, infos = sized.read(0, one * k + one // 2)
        assert len(infos) == k and len(buf) == sum(bi.size for bi in infos)
        assert [bi.position for bi in infos] == [i * one for i in range(k)]
    buf, infos = sized.read(8, 10 ** 9)
    assert infos[0].base_offset == 8 and infos[-1].next_offset == 120


def test_read_respects_upto(sized):
    buf, infos = sized.read(0, 10 ** 9, upto=10)
    # Batches starting before upto are whole; none starts at or after it.
    assert [bi.base_offset for bi in infos] == [0, 4, 8]
    assert sized.read(9, 10 ** 9, upto=9) == (b"", [])
    assert sized.read(9, 10 ** 9, upto=8) == (b"", [])
    buf, infos = sized.read(5, 10 ** 9, upto=9)
    assert [bi.base_offset for bi in infos] == [4, 8]


def test_read_at_next_offset_is_empty(sized):
    assert sized.next_offset == 120
    assert sized.read(120) == (b"", [])
    assert sized.read(120, 10 ** 9, upto=200) == (b"", [])


@pytest.mark.parametrize("offset", [-1, -100, 121, 10 ** 12])
def test_read_outside_the_log_raises_offset_out_of_range(sized, offset):
    with pytest.raises(KafkaException) as ei:
        sized.read(offset)
    assert code_of(ei) == KafkaError.OFFSET_OUT_OF_RANGE
    assert str(offset) in str(ei.value)


def test_read_with_small_max_bytes_walks_the_whole_log(sized):
    recs = read_all(sized, max_bytes=1)
    assert len(recs) == 120
    assert read_all(sized, start=57)[0].offset == 57


def test_reads_stop_at_a_batch_start_the_index_knows(sized, monkeypatch):
    """A read does not fetch the head of a batch only to drop it: it ends at
    an indexed batch start (every batch here is indexed).  A wrong index
    entry (not a batch start) costs only that: the reads still return the
    right records."""
    seg = sized.segments()[-1]
    starts = {bi.position for bi in sized.read(0, 10 ** 9)[1]} | {seg.size}
    lengths = []
    real = type(seg).read

    def spy(self, position, length):
        lengths.append((position, length))
        return real(self, position, length)
    monkeypatch.setattr(type(seg), "read", spy)
    one = sized.read(0, 1)[1][0].size
    for k in (1, 2, 3, 7):
        del lengths[:]
        assert len(read_all(sized, max_bytes=one * k + one // 2)) == 120
        assert all(p + n in starts for p, n in lengths), lengths
    real_stop = type(seg).batch_start_before
    monkeypatch.setattr(type(seg), "batch_start_before",    # as if an entry were off by 7
                        lambda self, limit: real_stop(self, limit) + 7)
    assert [r.offset for r in read_all(sized, max_bytes=one * 3)] == list(range(120))


# ---- roll ----
def segment_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".log"))


def test_roll_on_segment_bytes(opened):
    lg = opened(segment_bytes=2000, index_interval_bytes=100)
    sizes = []
    for i in range(100):
        b = batch(vals("s%d" % i, 1 + i % 3))
        sizes.append(len(b))
        lg.append([b])
    segs = lg.segments()
    assert len(segs) >= 5
    names = segment_files(lg.path)
    assert all(re.fullmatch(r"\d{20}\.log", n) for n in names)
    assert [format.parse_segment_name(n) for n in names] == [s.base_offset for s in segs]
    for seg, nxt in zip(segs, segs[1:]):
        assert seg.next_offset == nxt.base_offset
        assert seg.size <= 2000
        # Rolled only when the next batch would not fit.
        first_of_next = lg.read(nxt.base_offset)[1][0]
        assert seg.size + first_of_next.size > 2000
    assert segs[0].base_offset == 0 and segs[-1].next_offset == lg.next_offset
    assert len(read_all(lg)) == lg.next_offset


def test_multi_batch_append_rolls_in_the_middle(opened):
    lg = opened(segment_bytes=1000)
    results = lg.append([batch([b"m" * 150]) for _ in range(20)])
    assert [r.base_offset for r in results] == list(range(20))
    assert len(lg.segments()) > 3
    assert all(s.size <= 1000 for s in lg.segments())
    assert [r.value for r in read_all(lg)] == [b"m" * 150] * 20


def test_batch_larger_than_a_segment_is_refused_as_too_large(opened):
    lg = opened(segment_bytes=1024, max_message_bytes=1 << 20)
    with pytest.raises(KafkaException) as ei:
        lg.append([batch([b"q" * 4000])])
    # Kafka's RecordBatchTooLargeException, not a corrupt batch.
    assert code_of(ei) == KafkaError.RECORD_LIST_TOO_LARGE
    assert "1024" in str(ei.value)
    assert lg.next_offset == 0 and lg.size_bytes == 0


def test_roll_on_segment_ms_uses_batch_timestamps(opened):
    lg = opened(segment_ms=100)
    lg.append([batch([b"a"], ts=1000)])
    lg.append([batch([b"b"], ts=1050)])
    lg.append([batch([b"c"], ts=1100)])        # exactly segment.ms later: no roll
    assert len(lg.segments()) == 1
    lg.append([batch([b"d"], ts=1101)])        # more than segment.ms after the first
    assert [s.base_offset for s in lg.segments()] == [0, 3]
    lg.append([batch([b"e"], ts=5)])           # back-dated: never rolls
    lg.append([batch([b"f"], ts=1150)])
    assert [s.base_offset for s in lg.segments()] == [0, 3]
    lg.append([batch([b"g"], ts=1202)])
    assert [s.base_offset for s in lg.segments()] == [0, 3, 6]
    assert [r.value for r in read_all(lg)] == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]


def test_roll_clock_survives_reopen(tmp_path):
    cfg = LogConfig(segment_ms=100)
    lg = PartitionLog(str(tmp_path), cfg)
    lg.append([batch([b"a"], ts=1000)])
    lg.close()
    lg = PartitionLog(str(tmp_path), cfg)
    lg.append([batch([b"b"], ts=1101)])
    assert [s.base_offset for s in lg.segments()] == [0, 1]
    lg.close()


def test_reads_cross_segments_and_every_lookup_lands_on_a_batch_start(opened):
    lg = opened(segment_bytes=1500, index_interval_bytes=200)
    for i in range(150):
        lg.append([batch(vals("r%d" % i, 1 + i % 4))])
    assert len(lg.segments()) > 8
    recs = read_all(lg)
    assert len(recs) == lg.next_offset
    for seg in lg.segments():
        infos, _, rc = seg.scan_from(0, seg.base_offset, 1 << 30, seg.size)
        assert rc == 0
        starts = {bi.position: bi for bi in infos}
        for off in range(seg.base_offset, seg.next_offset):
            pos = seg.lookup(off)
            assert pos in starts and starts[pos].base_offset <= off
    # Reading from every offset gives the batch that covers it.
    for off in range(0, lg.next_offset, 3):
        bi = lg.read(off, 1)[1][0]
        assert bi.base_offset <= off <= bi.last_offset


def test_reads_cross_segments_after_reopen(tmp_path):
    cfg = LogConfig(segment_bytes=1200, index_interval_bytes=200)
    lg = PartitionLog(str(tmp_path), cfg)
    for i in range(80):
        lg.append([batch(vals("q%d" % i, 3))])
    expect = [(r.offset, r.value) for r in read_all(lg)]
    lg.close()
    lg = PartitionLog(str(tmp_path), cfg)
    try:
        assert len(lg.segments()) > 5
        for off in range(0, 240, 7):                # older segments are loaded lazily
            bi = lg.read(off, 1)[1][0]
            assert bi.base_offset <= off <= bi.last_offset
        assert [(r.offset, r.value) for r in read_all(lg)] == expect
    finally:
        lg.close()


# ---- offsets_for_time ----
def brute_offset_for_time(records, t):
    return min((r.offset for r in records if r.timestamp >= t), default=-1)


@pytest.mark.parametrize("order", ["monotonic", "shuffled"])
def test_offsets_for_time_is_the_earliest_offset_at_or_after_the_timestamp(opened, order):
    rng = random.Random(11)
    lg = opened(segment_bytes=3000, index_interval_bytes=150)
    for i in range(120):
        base = 10_000 + 100 * i if order == "monotonic" else rng.randint(0, 20_000)
        lg.append([codec.encode_batch([(base + rng.randint(-50, 50), None, b"t%d" % i, None)
                                       for _ in range(1 + i % 3)])])
    assert len(lg.segments()) > 2
    recs = read_all(lg)
    stamps = sorted({r.timestamp for r in recs})
    probes = [-1, 0, stamps[0], stamps[-1], stamps[-1] + 1, 10 ** 15] + stamps[::5] + \
        [s + 1 for s in stamps[::9]] + [rng.randint(0, 25_000) for _ in range(40)]
    for t in probes:
        assert lg.offsets_for_time(t) == brute_offset_for_time(recs, t), t


def test_offsets_for_time_finds_a_record_inside_a_batch(opened):
    lg = opened()
    lg.append([codec.encode_batch([(100, None, b"a", None), (300, None, b"b", None),
                                   (200, None, b"c", None), (400, None, b"d", None)])])
    assert lg.offsets_for_time(250) == 1
    assert lg.offsets_for_time(301) == 3
    assert lg.offsets_for_time(150) == 1
    assert lg.offsets_for_time(401) == -1


def test_offsets_for_time_on_an_empty_log_is_minus_one(opened):
    assert opened().offsets_for_time(0) == -1


# ---- batches() and truncate_to ----
def test_batches_yields_the_headers_overlapping_a_range(opened):
    lg = opened(segment_bytes=1000)
    for i in range(40):
        lg.append([batch(vals("h%d" % i, 3))])
    got = [(bi.base_offset, bi.last_offset) for _, bi in lg.batches(10, 40)]
    assert got == [(o, o + 2) for o in range(9, 40, 3)]
    assert [bi.base_offset for _, bi in lg.batches(117)] == [117]
    assert list(lg.batches(120)) == []
    for seg, bi in lg.batches(0):
        assert seg.base_offset <= bi.base_offset < seg.next_offset


@pytest.mark.parametrize("cut", [0, 1, 45, 60, 61, 119, 120])
def test_truncate_to_drops_later_batches_and_segments(opened, cut):
    lg = opened(segment_bytes=1000, index_interval_bytes=100)
    for i in range(40):
        lg.append([batch(vals("t%d" % i, 3))])
    lg.truncate_to(cut)
    keep = (cut + 2) // 3 * 3             # the batch spanning the cut stays whole
    assert lg.next_offset == keep
    assert all(s.base_offset < max(keep, 1) for s in lg.segments())
    assert len(read_all(lg)) == keep
    (res,) = lg.append([batch([b"after"])])
    assert res.base_offset == keep
    assert read_all(lg)[-1].value == b"after"


# ---- fsync policy ----
def test_fsync_always_fsyncs_once_per_append_call(opened, fsyncs):
    lg = opened(fsync="always")
    del fsyncs[:]
    for i in range(5):
        lg.append([batch(vals("a", 2))])
        assert len(fsyncs) == i + 1
    lg.append([batch(vals("b", 1)), batch(vals("c", 1)), batch(vals("d", 1))])
    assert len(fsyncs) == 6
    assert set(fsyncs) == {lg.segments()[-1].fd}


def test_fsync_never_leaves_appends_to_the_os_but_syncs_on_roll_and_close(opened, fsyncs):
    lg = opened(fsync="never", segment_bytes=1000)
    del fsyncs[:]
    for _ in range(3):
        lg.append([batch([b"n" * 100])])
    assert fsyncs == []
    while len(lg.segments()) == 1:
        lg.append([batch([b"n" * 100])])
    assert len(fsyncs) >= 1                     # the rolled segment was made durable
    del fsyncs[:]
    lg.append([batch([b"n"])])
    assert fsyncs == []
    lg.close()
    assert len(fsyncs) >= 1


def test_per_call_sync_overrides_the_policy(opened, fsyncs):
    lg = opened(fsync="never")
    del fsyncs[:]
    lg.append([batch([b"x"])], sync="always")
    assert len(fsyncs) == 1


def test_deferred_appends_are_fsynced_once_by_sync_deferred(opened, fsyncs):
    lg = opened(fsync="always")
    del fsyncs[:]
    for i in range(4):
        (r,) = lg.append([batch(vals("d%d" % i, 2))], sync="defer")
        assert r.base_offset == 2 * i
    assert fsyncs == []
    lg.sync_deferred()
    assert fsyncs == [lg.segments()[-1].fd]
    lg.sync_deferred()                          # nothing new: the .sync marker covers it
    assert len(fsyncs) == 1
    assert [r.value for r in read_all(lg)] == [v for i in range(4) for v in vals("d%d" % i, 2)]


def test_deferred_appends_across_a_roll_are_durable_after_sync_deferred(opened, fsyncs):
    lg = opened(fsync="always", segment_bytes=1000)
    del fsyncs[:]
    for i in range(6):
        lg.append([batch([b"r%d" % i * 100])], sync="defer")
    segs = lg.segments()
    assert len(segs) > 1
    # a roll fsyncs the segment it closes (and files of its own)
    assert {s.fd for s in segs[:-1]} <= set(fsyncs) and segs[-1].fd not in fsyncs
    rolled = len(fsyncs)
    lg.sync_deferred()
    assert fsyncs[rolled:] == [segs[-1].fd]
    assert len(read_all(lg)) == 6


def test_a_failed_sync_deferred_refuses_writes_and_reopening_drops_the_deferred_bytes(tmp_path):
    cfg = LogConfig(fsync="always")
    lg = PartitionLog(str(tmp_path), cfg)
    lg.append([batch(vals("ok", 3))])
    lg.append([batch([b"lost1"])], sync="defer")
    lg.append([batch([b"lost2"])], sync="defer")
    failpoints.set("fsync.before", "eio")
    with pytest.raises(StorageError):
        lg.sync_deferred()
    failpoints.clear()
    with pytest.raises(StorageError):
        lg.append([batch([b"again"])])
    with pytest.raises(StorageError):
        lg.sync_deferred()
    lg.close()
    lg = PartitionLog(str(tmp_path), cfg)
    try:
        assert [r.value for r in read_all(lg)] == vals("ok", 3)
    finally:
        lg.close()


def test_an_io_error_writing_the_sync_marker_in_sync_deferred_is_a_storage_error(opened):
    lg = opened(fsync="always")
    lg.append([batch([b"d"])], sync="defer")
    failpoints.set("log.sync_marker.before", "eio")
    with pytest.raises(StorageError):
        lg.sync_deferred()
    failpoints.clear()
    with pytest.raises(StorageError):
        lg.append([batch([b"after"])])


def test_deferred_appends_start_the_writeback_of_whole_pages(opened, monkeypatch):
    from pylog import segment
    calls = []
    monkeypatch.setattr(segment, "_sync_file_range",
                        lambda fd, start, n, flags: calls.append((start, n, flags)))
    lg = opened(fsync="always", max_message_bytes=1 << 21)
    lg.append([batch([b"n" * 300000])], sync="never")       # no writeback without defer
    assert calls == []
    for i in range(8):
        lg.append([batch([b"%d" % i * 300000])], sync="defer")
    assert calls and all(flags == 2 for _, _, flags in calls)
    assert all(start % 4096 == 0 and n % 4096 == 0 and n >= 1 << 20 for start, n, _ in calls)
    assert [start for start, _, _ in calls[1:]] == [start + n for start, n, _ in calls[:-1]]
    assert calls[-1][0] + calls[-1][1] <= lg.segments()[-1].size
    lg.sync_deferred()


def test_fsync_interval_fsyncs_only_when_the_interval_has_passed(opened, fsyncs):
    lg = opened(fsync="interval", fsync_interval_ms=400)
    del fsyncs[:]
    t0 = time.monotonic()
    for _ in range(5):
        lg.append([batch([b"i"])])
    if time.monotonic() - t0 < 0.3:             # only meaningful if the machine kept up
        assert fsyncs == []
    time.sleep(0.45)
    lg.append([batch([b"i"])])
    assert len(fsyncs) == 1
    lg.append([batch([b"i"])])
    assert len(fsyncs) == 1


def test_failed_fsync_raises_storage_error_and_refuses_every_later_append(tmp_path):
    cfg = LogConfig(fsync="always")
    lg = PartitionLog(str(tmp_path), cfg)
    for i in range(5):
        lg.append([batch(vals("ok%d" % i, 2))])
    failpoints.set("fsync.before", "eio")
    with pytest.raises(StorageError) as ei:
        lg.append([batch([b"lost"])])
    err = ei.value.args[0]
    assert isinstance(ei.value, KafkaException)
    assert err.code() == KafkaError.KAFKA_STORAGE_ERROR and err.fatal()
    failpoints.clear()
    for _ in range(3):                          # never retried and then acknowledged
        with pytest.raises(StorageError):
            lg.append([batch([b"again"])])
    with pytest.raises(StorageError):
        lg.sync()
    lg.close()
    # A reopened partition recovers from disk and takes writes again.
    lg = PartitionLog(str(tmp_path), cfg)
    try:
        assert [r.value for r in read_all(lg)] == [v for i in range(5) for v in vals("ok%d" % i, 2)]
        (res,) = lg.append([batch([b"later"])])
        assert res.base_offset == 10
    finally:
        lg.close()


def test_failed_fsync_in_another_process_stops_this_one(tmp_path):
    cfg = LogConfig(fsync="always")
    a = PartitionLog(str(tmp_path), cfg)
    b = PartitionLog(str(tmp_path), cfg)
    try:
        a.append([batch([b"a"])])
        failpoints.set("fsync.before", "eio")
        with pytest.raises(StorageError):
            a.append([batch([b"a2"])])
        failpoints.clear()
        # b shares the .sync marker: it must not acknowledge past the failed fsync.
        with pytest.raises(StorageError):
            b.append([batch([b"b"])])
    finally:
        a.close()
        b.close()


def test_failed_fsync_on_roll_stops_writes(opened):
    lg = opened(fsync="never", segment_bytes=1000)
    lg.append([batch([b"r" * 600])])
    failpoints.set("fsync.before", "eio")
    with pytest.raises(StorageError) as ei:
        lg.append([batch([b"r" * 600])])
    assert code_of(ei) == KafkaError.KAFKA_STORAGE_ERROR
    failpoints.clear()
    with pytest.raises(StorageError):
        lg.append([batch([b"r"])])


def test_log_config_rejects_bad_values():
    for kwargs in ({"fsync": "sometimes"}, {"segment_bytes": 10}, {"segment_bytes": 1 << 31},
                   {"segment_ms": 0}, {"max_message_bytes": -1}, {"index_interval_bytes": "x"}):
        with pytest.raises(KafkaException) as ei:
            LogConfig(**kwargs)
        assert code_of(ei) == KafkaError._INVALID_ARG


# ---- two processes appending, one reading ----
N_BATCHES, PER_BATCH = 400, 3


def _writer(path, tag, start, results):
    try:
        lg = PartitionLog(path, LogConfig(segment_bytes=6000, index_interval_bytes=500))
        start.wait()
        for i in range(N_BATCHES):
            lg.append([batch([("%s-%d-%d" % (tag, i, j)).encode() for j in range(PER_BATCH)])])
        lg.close()
        results.put((tag, "ok"))
    except BaseException:
        results.put((tag, traceback.format_exc()))


def _reader(path, total, start, results):
    try:
        lg = PartitionLog(path, LogConfig(segment_bytes=6000, index_interval_bytes=500))
        start.wait()
        off, deadline, seen = 0, time.monotonic() + 20, 0
        while off < total and time.monotonic() < deadline:
            buf, infos = lg.read(off, 2000)
            if not infos:
                time.sleep(0.0005)
                continue
            _, recs = codec.decode_all(buf)       # whole batches with good CRCs, or raises
            assert infos[0].position == 0 and len(buf) == sum(bi.size for bi in infos)
            recs = [r for r in recs if r.offset >= off]
            assert [r.offset for r in recs] == list(range(off, off + len(recs)))
            for r in recs:
                assert re.fullmatch(rb"[AB]-\d+-\d", r.value), r.value
            seen += len(recs)
            off = infos[-1].next_offset
        # Segments this reader picked up while they grew: its in-memory
        # indexes still send every lookup to a batch start at or before.
        for seg in lg.segments():
            whole = seg.read(0, seg.size)
            starts = {bi.position: bi for bi in codec.scan(whole)[0]}
            for o in range(seg.base_offset, seg.next_offset, 5):
                entry_offset, pos = seg.lookup_entry(o)
                assert starts[pos].base_offset == entry_offset <= o
        lg.close()
        results.put(("reader", "ok" if off == total else "stopped at %d of %d" % (off, total)))
    except BaseException:
        results.put(("reader", traceback.format_exc()))


def test_two_processes_append_concurrently_and_a_third_reads(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "p-0")
    total = 2 * N_BATCHES * PER_BATCH
    start = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, "A", start, results)),
             ctx.Process(target=_writer, args=(path, "B", start, results)),
             ctx.Process(target=_reader, args=(path, total, start, results))]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    assert outcome == {"A": "ok", "B": "ok", "reader": "ok"}

    lg = PartitionLog(path, LogConfig(segment_bytes=6000, index_interval_bytes=500))
    try:
        assert len(lg.segments()) > 3
        recs = read_all(lg)
        assert [r.offset for r in recs] == list(range(total))
        values = [r.value.decode() for r in recs]
        assert len(set(values)) == total
        for tag in "AB":
            mine = [tuple(map(int, v.split("-")[1:])) for v in values if v[0] == tag]
            assert mine == [(i, j) for i in range(N_BATCHES) for j in range(PER_BATCH)]
        # Each batch is whole and contiguous: a batch's records sit side by side.
        for k in range(0, total, PER_BATCH):
            assert len({v.rsplit("-", 1)[0] for v in values[k:k + PER_BATCH]}) == 1
        for seg in lg.segments():
            infos, _, rc = seg.scan_from(0, seg.base_offset, 1 << 30, seg.size)
            starts = {bi.position: bi for bi in infos}
            for off in range(seg.base_offset, seg.next_offset):
                pos = seg.lookup(off)
                assert pos in starts and starts[pos].base_offset <= off
    finally:
        lg.close()


# ---- round trip of arbitrary batches ----
headers_st = st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3)
record_st = st.tuples(st.integers(0, 2 ** 42), st.none() | st.binary(max_size=40),
                      st.none() | st.binary(max_size=200), headers_st)
batches_st = st.lists(st.tuples(st.lists(record_st, min_size=1, max_size=6),
                                st.integers(compression.NONE, compression.ZSTD)),
                      min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches_st)
def test_random_batches_round_trip_through_append_reopen_and_read(tmp_path_factory, batches):
    path = str(tmp_path_factory.mktemp("rt"))
    cfg = LogConfig(segment_bytes=2048, index_interval_bytes=128)
    lg = PartitionLog(path, cfg)
    expect = []
    try:
        for records, codec_id in batches:
            (res,) = lg.append([codec.encode_batch(records, codec=codec_id)])
            for k, (ts, key, value, headers) in enumerate(records):
                expect.append(codec.Record(res.base_offset + k, ts, key, value, list(headers)))
        assert read_all(lg) == expect
    finally:
        lg.close()
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == len(expect)
        assert read_all(lg) == expect
        for r in expect[::3]:
            assert lg.offsets_for_time(r.timestamp) == brute_offset_for_time(expect, r.timestamp)
    finally:
        lg.close()
