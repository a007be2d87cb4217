"""pylog.segment.Segment: one .log file plus its sparse .index/.timeindex.

Batches are appended with offsets already assigned (the PartitionLog's job),
so the helper below stamps base offsets the way the log does.
"""
import os
import random
import shutil
import struct

import pytest

from pylog import _bridge, codec, failpoints, format
from pylog.errors import KafkaError, StorageError
from pylog.segment import Segment

MAX_BATCH = 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def make_batch(n_records, ts=1000, tag="", value_size=10):
    return codec.encode_batch(
        [(ts + i, b"k%d" % i, (tag + "-%d-" % i).encode().ljust(value_size, b"x"), None)
         for i in range(n_records)])


def append(seg, batches):
    """Stamp offsets from seg.next_offset on and append the batches in one write."""
    data = bytearray(b"".join(batches))
    infos, end, rc = _bridge.scan(bytes(data))
    assert rc == 0 and end == len(data)
    nxt = seg.next_offset
    for bi in infos:
        struct.pack_into(">q", data, bi.position, nxt)
        bi.base_offset = nxt
        nxt = bi.next_offset
    seg.append(bytes(data), infos)
    return infos


def fill(seg, n_batches, seed=0, ts_of=None):
    """n_batches batches of 1..5 records of varying size; returns their
    (base_offset, last_offset, position, size, max_timestamp)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_batches):
        pos = seg.size
        ts = ts_of(i) if ts_of else 1000 + i
        b = make_batch(rng.randint(1, 5), ts=ts, tag="b%d" % i, value_size=rng.randint(1, 120))
        (bi,) = append(seg, [b])
        out.append((bi.base_offset, bi.last_offset, pos, bi.size, bi.max_timestamp))
    return out


def batch_at(batches, offset):
    return next(b for b in batches if b[0] <= offset <= b[1])


def check_lookups(seg, batches, interval):
    """Every lookup lands on a batch start at or before the offset, no
    further back than one index interval (plus a batch) from it."""
    starts = {b[2]: b for b in batches}
    for off in range(batches[0][0], batches[-1][1] + 1):
        pos = seg.lookup(off)
        assert pos in starts, "lookup(%d) = %d is not a batch start" % (off, pos)
        assert starts[pos][0] <= off
        target = batch_at(batches, off)[2]
        assert target - pos <= interval + max(b[3] for b in batches)


# ---- appending and reading ----
def test_new_segment_is_empty_at_its_base_offset(tmp_path):
    seg = Segment(str(tmp_path), 100, create=True)
    assert (seg.base_offset, seg.next_offset, seg.size) == (100, 100, 0)
    assert os.path.basename(seg.log_path) == "00000000000000000100.log"
    assert seg.lookup(100) == 0 and seg.lookup_time(0) == 100
    assert seg.first_timestamp() is None
    seg.close()


def test_create_refuses_to_overwrite_an_existing_segment(tmp_path):
    Segment(str(tmp_path), 0, create=True).close()
    with pytest.raises(FileExistsError):
        Segment(str(tmp_path), 0, create=True)


def test_append_advances_next_offset_and_size_and_scan_sees_every_batch(tmp_path):
    seg = Segment(str(tmp_path), 50, create=True)
    batches = fill(seg, 30)
    assert seg.next_offset == batches[-1][1] + 1
    assert seg.size == os.path.getsize(seg.log_path) == sum(b[3] for b in batches)
    infos, end, rc = seg.scan_from(0, 50, MAX_BATCH)
    assert rc == 0 and end == seg.size
    assert [(bi.base_offset, bi.last_offset, bi.position, bi.size) for bi in infos] == \
        [b[:4] for b in batches]
    seg.close()


def test_read_returns_the_bytes_written(tmp_path):
    seg = Segment(str(tmp_path), 0, create=True)
    (bi,) = append(seg, [make_batch(3, tag="r")])
    data = seg.read(0, bi.size)
    _, recs = codec.decode_all(data)
    assert [r.value[:4] for r in recs] == [b"r-0-", b"r-1-", b"r-2-"]
    assert [r.offset for r in recs] == [0, 1, 2]
    assert seg.read(bi.size, 100) == b""          # at EOF
    seg.close()


def test_first_timestamp_is_the_first_batch_max_timestamp_also_after_reopen(tmp_path):
    seg = Segment(str(tmp_path), 0, create=True)
    append(seg, [codec.encode_batch([(500, None, b"a", None), (700, None, b"b", None)])])
    append(seg, [make_batch(1, ts=9000)])
    assert seg.first_timestamp() == 700
    seg.close()
    again = Segment(str(tmp_path), 0)
    assert again.first_timestamp() == 700
    again.close()


def test_failed_write_leaves_the_file_unchanged_and_raises_storage_error(tmp_path):
    seg = Segment(str(tmp_path), 0, create=True)
    fill(seg, 3)
    size, nxt = seg.size, seg.next_offset
    failpoints.set("log.write", "eio")
    with pytest.raises(StorageError) as ei:
        append(seg, [make_batch(2)])
    assert ei.value.args[0].code() == KafkaError.KAFKA_STORAGE_ERROR
    assert ei.value.args[0].fatal()
    assert (seg.size, seg.next_offset) == (size, nxt)
    assert os.path.getsize(seg.log_path) == size
    seg.close()


def test_delete_removes_the_log_and_both_indexes(tmp_path):
    seg = Segment(str(tmp_path), 0, index_interval=64, create=True)
    fill(seg, 20)
    assert os.path.exists(seg.index_path) and os.path.exists(seg.timeindex_path)
    seg.delete()
    assert os.listdir(tmp_path) == []


# ---- the sparse indexes ----
@pytest.mark.parametrize("interval", [0, 1, 100, 4096])
def test_lookup_lands_on_a_batch_start_at_or_before_the_offset(tmp_path, interval):
    seg = Segment(str(tmp_path), 1000, index_interval=interval, create=True)
    batches = fill(seg, 120, seed=interval)
    check_lookups(seg, batches, interval)
    seg.close()
    # The same through a reopened segment that loads the index from disk.
    again = Segment(str(tmp_path), 1000, index_interval=interval)
    check_lookups(again, batches, interval)
    assert again.next_offset == batches[-1][1] + 1
    again.close()


def test_index_has_one_entry_per_interval_bytes_appended(tmp_path):
    interval = 300
    seg = Segment(str(tmp_path), 0, index_interval=interval, create=True)
    batches = fill(seg, 200)
    n = os.path.getsize(seg.index_path) // format.INDEX_ENTRY
    assert os.path.getsize(seg.index_path) % format.INDEX_ENTRY == 0
    biggest = max(b[3] for b in batches)
    assert seg.size // (interval + biggest) <= n <= seg.size // interval
    # Entries are (relative offset, position) of real batch starts, ascending.
    raw = open(seg.index_path, "rb").read()
    entries = list(struct.iter_unpack(">ii", raw))
    starts = {b[2]: b[0] for b in batches}
    assert entries == sorted(entries)
    for rel, pos in entries:
        assert starts[pos] == rel
    seg.close()


def test_lookup_below_the_first_index_entry_returns_the_segment_start(tmp_path):
    seg = Segment(str(tmp_path), 10, index_interval=100, create=True)
    batches = fill(seg, 30)
    assert seg.lookup(10) == 0
    assert seg.lookup(0) == 0                      # below the base offset
    assert seg.lookup(10 ** 9) == seg.lookup(batches[-1][1])
    seg.close()


@pytest.mark.parametrize("monotonic", [True, False])
def test_lookup_time_never_skips_a_record_at_or_after_the_timestamp(tmp_path, monotonic):
    rng = random.Random(3)
    ts_of = (lambda i: 1000 + 10 * i) if monotonic else (lambda i: rng.randint(0, 5000))
    seg = Segment(str(tmp_path), 0, index_interval=150, create=True)
    fill(seg, 150, ts_of=ts_of)
    infos, _, _ = seg.scan_from(0, 0, MAX_BATCH)
    whole = seg.read(0, seg.size)
    records = [r for bi in infos for r in codec.decode_batch(whole, bi)]
    for t in list(range(-1, 5200, 37)) + [r.timestamp for r in records[::7]]:
        start = seg.lookup_time(t)
        assert all(r.timestamp < t for r in records if r.offset < start), t
        # The answer, if any, is at or after start and the start is an indexed batch.
        assert start == 0 or seg.lookup(start) in {bi.position for bi in infos}
    seg.close()


def test_closed_segment_learns_its_next_offset_from_the_index(tmp_path):
    seg = Segment(str(tmp_path), 7, index_interval=100, create=True)
    batches = fill(seg, 40)
    seg.close()
    again = Segment(str(tmp_path), 7, index_interval=100)
    assert again.next_offset is None               # not known until the index loads
    again.lookup(7)
    assert again.next_offset == batches[-1][1] + 1
    again.close()


@pytest.mark.parametrize("damage", ["missing", "odd_length", "random", "past_end",
                                    "wrong_offset_last", "descending", "negative_position",
                                    "time_offsets_not_indexed", "time_offsets_all_last"])
def test_damaged_index_of_a_closed_segment_is_rebuilt_on_first_use(tmp_path, damage):
    interval = 100
    seg = Segment(str(tmp_path), 0, index_interval=interval, create=True)
    batches = fill(seg, 60)
    seg.close()
    path = seg.index_path
    raw = open(path, "rb").read()
    entries = list(struct.iter_unpack(">ii", raw))
    assert len(entries) > 3
    tentries = list(struct.iter_unpack(">qi", open(seg.timeindex_path, "rb").read()))
    assert len(tentries) > 3
    if damage == "missing":
        os.unlink(path)
        os.unlink(seg.timeindex_path)
    elif damage == "odd_length":
        raw = raw[:-3]
    elif damage == "random":
        raw = random.Random(1).randbytes(len(raw))
    elif damage == "past_end":
        raw += struct.pack(">ii", 10 ** 6, 10 ** 8)
    elif damage == "wrong_offset_last":
        rel, pos = entries[-1]
        raw = raw[:-8] + struct.pack(">ii", rel + 1, pos)
    elif damage == "descending":
        raw = b"".join(struct.pack(">ii", *e) for e in reversed(entries))
    elif damage == "negative_position":
        raw = struct.pack(">ii", entries[0][0], -5) + raw[8:]
    elif damage.startswith("time_offsets"):
        # Timestamps still ascending, offsets no longer those of indexed batches.
        rels = [e[0] for e in entries]
        bad = ([r + 1 for r in rels] if damage == "time_offsets_not_indexed"
               else [rels[-1]] * len(tentries))
        open(seg.timeindex_path, "wb").write(b"".join(
            struct.pack(">qi", t, r) for (t, _), r in zip(tentries, bad)))
    if damage != "missing":
        open(path, "wb").write(raw)
    again = Segment(str(tmp_path), 0, index_interval=interval)
    check_lookups(again, batches, interval)
    assert again.next_offset == batches[-1][1] + 1
    whole = again.read(0, again.size)
    records = [r for bi in again.scan_from(0, 0, MAX_BATCH)[0] for r in codec.decode_batch(whole, bi)]
    for t in range(1000, 1070, 3):
        start = again.lookup_time(t)
        assert all(r.timestamp < t for r in records if r.offset < start), t
    again.close()
    # The rebuilt files are whole again.
    fresh = list(struct.iter_unpack(">ii", open(path, "rb").read()))
    assert fresh == entries
    assert list(struct.iter_unpack(">qi", open(seg.timeindex_path, "rb").read())) == tentries


# ---- recovery ----
def test_recover_keeps_a_clean_segment_whole(tmp_path):
    seg = Segment(str(tmp_path), 0, index_interval=100, create=True)
    batches = fill(seg, 25)
    seg.close()
    again = Segment(str(tmp_path), 0, index_interval=100)
    assert again.recover(MAX_BATCH) == 0
    assert again.next_offset == batches[-1][1] + 1 and again.size == sum(b[3] for b in batches)
    check_lookups(again, batches, 100)
    again.close()


def test_recover_cuts_a_torn_tail_and_reports_the_bytes_removed(tmp_path):
    seg = Segment(str(tmp_path), 0, index_interval=100, create=True)
    batches = fill(seg, 10)
    seg.close()
    last = batches[-1]
    with open(seg.log_path, "r+b") as f:
        f.truncate(last[2] + last[3] - 5)
    again = Segment(str(tmp_path), 0, index_interval=100)
    assert again.recover(MAX_BATCH) == last[3] - 5
    assert again.size == last[2] == os.path.getsize(seg.log_path)
    assert again.next_offset == last[0]
    check_lookups(again, batches[:-1], 100)
    # Appends continue right after the last whole batch.
    (bi,) = append(again, [make_batch(2)])
    assert bi.base_offset == last[0]
    again.close()


def test_recover_cuts_at_a_bad_crc_and_drops_everything_after_it(tmp_path):
    seg = Segment(str(tmp_path), 0, create=True)
    batches = fill(seg, 10)
    seg.close()
    bad = batches[4]
    with open(seg.log_path, "r+b") as f:
        f.seek(bad[2] + 70)                        # inside the records, under the CRC
        byte = f.read(1)
        f.seek(bad[2] + 70)
        f.write(bytes([byte[0] ^ 0x01]))
    again = Segment(str(tmp_path), 0)
    assert again.recover(MAX_BATCH) == sum(b[3] for b in batches[4:])
    assert again.next_offset == bad[0] and again.size == bad[2]
    again.close()


def test_recover_from_a_batch_start_validates_only_the_rest(tmp_path, monkeypatch):
    seg = Segment(str(tmp_path), 0, index_interval=100, create=True)
    batches = fill(seg, 40)
    seg.close()
    scanned = []
    real = Segment.scan_from

    def counting(self, position, expect, max_size, end=None):
        stop = os.fstat(self.fd).st_size if end is None else end
        scanned.append(stop - position)
        return real(self, position, expect, max_size, end)

    monkeypatch.setattr(Segment, "scan_from", counting)
    start = batches[30]
    again = Segment(str(tmp_path), 0, index_interval=100)
    assert again.recover(MAX_BATCH, start[2], batches[29][4]) == 0
    assert sum(scanned) == again.size - start[2]
    assert again.next_offset == batches[-1][1] + 1
    check_lookups(again, batches, 100)
    again.close()


def test_recover_from_a_position_past_the_end_rescans_the_whole_file(tmp_path):
    seg = Segment(str(tmp_path), 0, create=True)
    batches = fill(seg, 10)
    seg.close()
    again = Segment(str(tmp_path), 0)
    assert again.recover(MAX_BATCH, again.size + 1000, 5) == 0
    assert again.next_offset == batches[-1][1] + 1
    again.close()


# ---- truncation ----
def test_truncate_to_removes_batches_at_or_after_the_offset(tmp_path):
    seg = Segment(str(tmp_path), 0, index_interval=100, create=True)
    batches = fill(seg, 40)
    seg.close()
    rng = random.Random(5)
    cuts = [batches[20][0], batches[20][0] + (batches[20][1] > batches[20][0]),
            batches[-1][1] + 1, batches[1][0]] + [rng.randint(1, batches[-1][1]) for _ in range(5)]
    for cut in cuts:
        work = tmp_path / ("cut%d" % cut)
        work.mkdir()
        shutil.copy(seg.log_path, work)
        s = Segment(str(work), 0, index_interval=100)
        s.truncate_to(cut)
        # A batch that starts before the cut stays whole, even if it spans it.
        kept = [b for b in batches if b[0] < cut]
        assert s.next_offset == kept[-1][1] + 1
        assert s.size == os.path.getsize(s.log_path) == kept[-1][2] + kept[-1][3]
        check_lookups(s, kept, 100)
        (bi,) = append(s, [make_batch(1)])
        assert bi.base_offset == kept[-1][1] + 1
        s.close()


def test_truncate_to_the_base_offset_empties_the_segment(tmp_path):
    seg = Segment(str(tmp_path), 5, index_interval=100, create=True)
    fill(seg, 20)
    seg.truncate_to(5)
    assert (seg.size, seg.next_offset) == (0, 5)
    assert seg.lookup(5) == 0
    assert os.path.getsize(seg.index_path) == 0
    (bi,) = append(seg, [make_batch(1, ts=777)])
    assert bi.base_offset == 5
    # The segment.ms clock starts again with the new first batch.
    assert seg.first_timestamp() == 777
    seg.close()


@pytest.mark.parametrize("step", ["write", "rename"])
def test_failure_to_save_a_rebuilt_index_does_not_fail_the_lookup(tmp_path, step):
    # Index files are hints: a full disk (or a concurrent open removing the
    # .tmp) while rebuilding one must not turn a read into an OSError.
    seg = Segment(str(tmp_path), 0, index_interval=100, create=True)
    batches = fill(seg, 40)
    seg.close()
    os.unlink(seg.index_path)
    again = Segment(str(tmp_path), 0, index_interval=100)
    failpoints.set(step, "eio!")
    try:
        check_lookups(again, batches, 100)
        assert again.next_offset == batches[-1][1] + 1
    finally:
        failpoints.clear()
    again.close()
    # Whatever is on disk now, the next open gets lookups right.
    third = Segment(str(tmp_path), 0, index_interval=100)
    check_lookups(third, batches, 100)
    third.close()
