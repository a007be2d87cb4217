"""PartitionLog recovery: torn tails, bit flips, lost indexes, crashes, and
the cost of opening.

Each case builds a small log, damages its files at a named place (or at every
place), reopens it, and checks the one promise recovery makes: what reads
back is exactly what was written, up to a clean end the log then appends
after, or a CorruptRecordError, never altered records.
"""
import os
import random
import shutil
import struct

import pytest

from pylog import _bridge, codec, failpoints, format
from pylog.errors import CorruptRecordError, KafkaError, KafkaException
from pylog.log import LogConfig, PartitionLog
from pylog.segment import Segment

# Record batch v2 header fields (see KAFKA-FACTS.md).  Bytes 0-20 are
# outside the CRC; the log checks baseOffset against the offset sequence and
# batchLength/magic by shape, and nothing reads partitionLeaderEpoch.
BASE_OFFSET, BATCH_LENGTH, LEADER_EPOCH, MAGIC, CRC, ATTRIBUTES = 0, 8, 12, 16, 17, 21
LAST_OFFSET_DELTA, BASE_TIMESTAMP, MAX_TIMESTAMP, PRODUCER_ID = 23, 27, 35, 43
PRODUCER_EPOCH, BASE_SEQUENCE, RECORDS_COUNT, HEADER = 51, 53, 57, 61


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def batch(values, ts=1000):
    return codec.encode_batch([(ts + i, b"key", v, [("h", v[:3])]) for i, v in enumerate(values)])


def build(path, n_batches, cfg, per_batch=lambda i: 1 + i % 3, ts=lambda i: 1000 + 10 * i,
          lg=None, written=None, first=0):
    """A log of n_batches (or that many more in lg); returns the log and
    {offset: Record} of everything written."""
    lg = PartitionLog(path, cfg) if lg is None else lg
    written = {} if written is None else written
    for i in range(first, first + n_batches):
        values = [("v%d-%d" % (i, j)).encode() * (1 + j % 4) for j in range(per_batch(i))]
        (res,) = lg.append([batch(values, ts(i))])
        for k, v in enumerate(values):
            written[res.base_offset + k] = codec.Record(res.base_offset + k, ts(i) + k, b"key", v,
                                                        [("h", v[:3])])
    return lg, written


def recovery_point(path):
    """(offset, segment base, position) the recovery-point file names."""
    offset, base, pos, _, _ = struct.unpack(">qqqqI", open(
        os.path.join(path, format.RECOVERY_POINT_FILE), "rb").read())
    return offset, base, pos


def crash(lg):
    """Let go of a log the way a killed process does: no fsync, no recovery
    point, only the file descriptors (and with them the flock) released."""
    for seg in lg.segments():
        seg.close()
    os.close(lg._lock_fd)
    os.close(lg._sync_fd)
    lg._lock_fd = None


def read_records(lg, start=None):
    """Records from start to the log end; stops at CorruptRecordError and
    returns it as the second item."""
    off = lg.log_start_offset if start is None else start
    out = []
    try:
        while True:
            buf, infos = lg.read(off, 4096)
            if not infos:
                return out, None
            _, recs = codec.decode_all(buf)
            out += [r for r in recs if r.offset >= off]
            off = infos[-1].next_offset
    except CorruptRecordError as e:
        return out, e


def batch_spans(path):
    """[(segment base, position, size, base_offset, next_offset)] of every batch on disk."""
    spans = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".log"):
            data = open(os.path.join(path, name), "rb").read()
            infos, _, _ = codec.scan(data)
            spans += [(format.parse_segment_name(name), bi.position, bi.size, bi.base_offset,
                       bi.next_offset) for bi in infos]
    return spans


def log_file(path, base):
    return os.path.join(path, format.segment_name(base, format.LOG_SUFFIX))


def flip(path, pos, mask):
    """XOR the byte at pos of the file with mask."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ mask]))


def check_lookups(lg):
    """Every offset's index lookup names a batch start at or before it."""
    for seg in lg.segments():
        infos, _, rc = seg.scan_from(0, seg.base_offset, 1 << 30, seg.size)
        assert rc == 0
        starts = {bi.position: bi for bi in infos}
        end = infos[-1].next_offset if infos else seg.base_offset
        for off in range(seg.base_offset, end):
            pos = seg.lookup(off)
            assert pos in starts and starts[pos].base_offset <= off, (seg, off, pos)


# ---- torn tails ----
@pytest.mark.parametrize("shutdown", ["clean", "crash"])
def test_torn_last_batch_at_every_byte_recovers_to_the_last_whole_batch(tmp_path, shutdown):
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=100)
    pristine = str(tmp_path / "pristine")
    lg, written = build(pristine, 14, cfg)
    assert len(lg.segments()) >= 3
    crash(lg) if shutdown == "crash" else lg.close()
    spans = batch_spans(pristine)
    seg_base, pos, size, last_base, _ = spans[-1]
    for cut in range(size):
        work = str(tmp_path / ("cut%d" % cut))
        shutil.copytree(pristine, work)
        with open(log_file(work, seg_base), "r+b") as f:
            f.truncate(pos + cut)
        lg = PartitionLog(work, cfg)
        try:
            assert lg.next_offset == last_base, cut
            assert os.path.getsize(log_file(work, seg_base)) == pos
            recs, err = read_records(lg)
            assert err is None
            assert recs == [written[o] for o in range(last_base)]
            (res,) = lg.append([batch([b"after"])])
            assert res.base_offset == last_base
            assert read_records(lg, last_base)[0][0].value == b"after"
        finally:
            lg.close()
        shutil.rmtree(work)


def test_torn_batch_header_in_a_fresh_segment_recovers_to_its_base(tmp_path):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 12, cfg)
    base = lg.segments()[-1].base_offset
    crash(lg)
    for name in os.listdir(path):                 # keep only the start of the last segment
        if format.parse_segment_name(name) == base and name.endswith(".log"):
            with open(os.path.join(path, name), "r+b") as f:
                f.truncate(7)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == base and lg.segments()[-1].size == 0
        assert read_records(lg) == ([written[o] for o in range(base)], None)
        assert lg.append([batch([b"x"])])[0].base_offset == base
    finally:
        lg.close()


def test_zeroed_tail_from_a_preallocated_or_lost_page_is_cut(tmp_path):
    cfg = LogConfig()
    path = str(tmp_path)
    lg, written = build(path, 10, cfg)
    crash(lg)
    with open(log_file(path, 0), "ab") as f:
        f.write(b"\x00" * 5000)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == len(written)
        assert os.path.getsize(log_file(path, 0)) == sum(s[2] for s in batch_spans(path))
        assert read_records(lg) == ([written[o] for o in range(len(written))], None)
    finally:
        lg.close()


def test_torn_middle_segment_without_recovery_point_deletes_later_segments(tmp_path):
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=100)
    path = str(tmp_path)
    lg, written = build(path, 30, cfg)
    bases = [s.base_offset for s in lg.segments()]
    assert len(bases) >= 5
    lg.close()
    victim = bases[2]
    spans = [s for s in batch_spans(path) if s[0] == victim]
    _, pos, size, cut_base, _ = spans[-2]
    with open(log_file(path, victim), "r+b") as f:
        f.truncate(pos + size // 2)
    os.unlink(os.path.join(path, format.RECOVERY_POINT_FILE))
    lg = PartitionLog(path, cfg)
    try:
        assert [s.base_offset for s in lg.segments()] == bases[:3]
        assert lg.next_offset == cut_base
        for b in bases[3:]:
            assert not any(format.parse_segment_name(n) == b for n in os.listdir(path))
        assert read_records(lg) == ([written[o] for o in range(cut_base)], None)
        assert lg.append([batch([b"x"])])[0].base_offset == cut_base
        check_lookups(lg)
    finally:
        lg.close()


def test_missing_segment_in_the_middle_drops_the_segments_after_the_gap(tmp_path):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 30, cfg)
    bases = [s.base_offset for s in lg.segments()]
    lg.close()
    for name in os.listdir(path):
        if format.parse_segment_name(name) == bases[2]:
            os.unlink(os.path.join(path, name))
    os.unlink(os.path.join(path, format.RECOVERY_POINT_FILE))
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == bases[2]
        assert read_records(lg) == ([written[o] for o in range(bases[2])], None)
    finally:
        lg.close()


# ---- bit flips ----
def _verify_after_damage(lg, written, spans, damaged_base):
    """Reads after damage: every record returned is the one written at its
    offset; a gap is only allowed from a recovery truncation on, or across a
    segment that raised CorruptRecordError."""
    off = lg.log_start_offset
    returned = []
    raised_in = set()
    bases = [s.base_offset for s in lg.segments()]
    while off < lg.next_offset:
        recs, err = read_records(lg, off)
        returned += recs
        if err is None:
            break
        assert err.args[0].code() == KafkaError.CORRUPT_MESSAGE
        at = recs[-1].offset + 1 if recs else off
        seg_base = max(b for b in bases if b <= at)
        raised_in.add(seg_base)
        later = [b for b in bases if b > at]
        if not later:
            break
        off = later[0]
    for r in returned:
        assert r == written[r.offset], "altered record %r, wrote %r" % (r, written[r.offset])
    got = {r.offset for r in returned}
    assert len(got) == len(returned)
    missing = sorted(set(range(lg.next_offset)) - got)
    # Nothing read is missing unless a CorruptRecordError said so, from the damaged segment.
    assert not missing or raised_in == {damaged_base}
    return lg.next_offset, raised_in


def test_random_bit_flips_never_read_back_as_altered_records(tmp_path):
    cfg = LogConfig(segment_bytes=700, index_interval_bytes=120)
    pristine = str(tmp_path / "pristine")
    lg, written = build(pristine, 24, cfg)
    lg.close()
    spans = batch_spans(pristine)
    files = [(s, log_file(pristine, s)) for s in sorted({sp[0] for sp in spans})]
    rng = random.Random(20240611)
    targets = []
    for seg_base, path in files:                    # every header field of some batches
        for sp in [s for s in spans if s[0] == seg_base][:2]:
            for field in (BASE_OFFSET + 7, BATCH_LENGTH + 3, BATCH_LENGTH, MAGIC, CRC + 2,
                          ATTRIBUTES + 1, LAST_OFFSET_DELTA + 3, BASE_TIMESTAMP + 7,
                          MAX_TIMESTAMP + 7, PRODUCER_ID, PRODUCER_EPOCH, BASE_SEQUENCE + 3,
                          RECORDS_COUNT + 3, HEADER + 1, sp[2] - 1):
                targets.append((seg_base, sp[1] + field, rng.randrange(8)))
    size_of = {b: os.path.getsize(p) for b, p in files}
    for _ in range(120):                            # and anywhere at all
        seg_base = rng.choice(list(size_of))
        targets.append((seg_base, rng.randrange(size_of[seg_base]), rng.randrange(8)))
    last_base = files[-1][0]
    for n, (seg_base, pos, bit) in enumerate(targets):
        work = str(tmp_path / ("flip%d" % n))
        shutil.copytree(pristine, work)
        flip(log_file(work, seg_base), pos, 1 << bit)
        lg = PartitionLog(work, cfg)               # opening never fails on damage
        try:
            end, raised_in = _verify_after_damage(lg, written, spans, seg_base)
            if seg_base == last_base:
                # A clean close put the recovery point at the end, so opening does
                # not rescan the active segment: the damage is either cut by
                # recovery or reported on read, unless the flip hit a field
                # outside the CRC nobody relies on.
                bad = next(s for s in spans if s[0] == seg_base and s[1] <= pos < s[1] + s[2])
                assert end <= bad[3] or raised_in == {seg_base} or \
                    (pos - bad[1]) in range(LEADER_EPOCH, LEADER_EPOCH + 4)
            if end == len(written) and not raised_in:
                assert (pos - next(s[1] for s in spans if s[0] == seg_base and
                                   s[1] <= pos < s[1] + s[2])) in range(LEADER_EPOCH, LEADER_EPOCH + 4)
            lg.append([batch([b"more"])])           # still writable
        finally:
            lg.close()
        shutil.rmtree(work)


def test_flipped_crc_byte_below_the_recovery_point_raises_corrupt_message(tmp_path):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 20, cfg)
    lg.close()
    first = batch_spans(path)[3]
    assert first[0] == 0
    flip(log_file(path, 0), first[1] + CRC, 0x80)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == len(written)       # below the recovery point: not rescanned
        with pytest.raises(CorruptRecordError) as ei:
            lg.read(first[3])
        assert isinstance(ei.value, KafkaException)
        assert ei.value.args[0].code() == KafkaError.CORRUPT_MESSAGE
        # The batches before it still read back.
        recs, err = read_records(lg)
        assert recs == [written[o] for o in range(first[3])] and err is not None
    finally:
        lg.close()


def test_flipped_base_offset_below_the_recovery_point_is_not_read_as_other_offsets(tmp_path):
    # baseOffset sits outside the CRC: only the offset sequence can tell.
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=100)
    path = str(tmp_path)
    lg, written = build(path, 20, cfg)
    lg.close()
    spans = [s for s in batch_spans(path) if s[0] == 0]
    for victim in (spans[0], spans[2], spans[-1]):
        work = str(tmp_path / ("w%d" % victim[1]))
        shutil.copytree(path, work, ignore=shutil.ignore_patterns("w*"))
        with open(log_file(work, 0), "r+b") as f:
            f.seek(victim[1] + BASE_OFFSET + 5)
            f.write(b"\x01")
        lg = PartitionLog(work, cfg)
        try:
            _verify_after_damage(lg, written, batch_spans(path), 0)
        finally:
            lg.close()


@pytest.mark.parametrize("field", [BASE_OFFSET + 6, CRC + 1, HEADER + 2],
                         ids=["base_offset", "crc", "records"])
def test_damage_below_the_recovery_point_never_gives_a_wrong_time_lookup(tmp_path, field):
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=100)
    path = str(tmp_path)
    lg, written = build(path, 20, cfg)              # timestamps rise with offsets
    lg.close()
    victim = [s for s in batch_spans(path) if s[0] == 0][3]
    flip(log_file(path, 0), victim[1] + field, 0x04)
    lg = PartitionLog(path, cfg)
    try:
        t = written[victim[3]].timestamp
        # Either the right answer or an error, never a later offset.
        try:
            assert lg.offsets_for_time(t) == victim[3]
        except CorruptRecordError as e:
            assert e.args[0].code() == KafkaError.CORRUPT_MESSAGE
        # Batches before the damage are still found.
        assert lg.offsets_for_time(written[0].timestamp) == 0
        # Replaying headers never yields an offset the log does not hold there.
        for seg, bi in lg.batches(0):
            assert bi.base_offset in written and \
                written[bi.base_offset].value == codec.decode_batch(
                    seg.read(bi.position, bi.size), _at_zero(bi))[0].value
    finally:
        lg.close()


def _at_zero(bi):
    bi.position = 0
    return bi


def test_flipped_base_offset_at_a_mid_segment_recovery_point_is_caught(tmp_path):
    # A crash leaves the recovery point inside the active segment (the last
    # checkpoint); recovery must not trust the baseOffset found there.
    cfg = LogConfig(fsync="interval", fsync_interval_ms=0, checkpoint_bytes=1)
    path = str(tmp_path)
    lg, written = build(path, 12, cfg)
    crash(lg)
    spans = batch_spans(path)
    # The recovery point names the end of the last batch; append one more
    # batch past it by hand so it sits at the recovery point.
    lg = PartitionLog(path, LogConfig())
    lg.append([batch([b"tail"], 5000)])
    written[len(written)] = codec.Record(len(written), 5000, b"key", b"tail", [("h", b"tai")])
    crash(lg)
    _, _, rp_pos = recovery_point(path)
    assert rp_pos == spans[-1][1] + spans[-1][2]
    with open(log_file(path, 0), "r+b") as f:
        f.seek(rp_pos + BASE_OFFSET + 4)
        f.write(b"\x7f")
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == len(written) - 1
        assert read_records(lg) == ([written[o] for o in range(len(written) - 1)], None)
    finally:
        lg.close()


# ---- indexes ----
def _damage_indexes(path, how, rng):
    for name in sorted(os.listdir(path)):
        if not name.endswith((".index", ".timeindex")):
            continue
        p = os.path.join(path, name)
        raw = open(p, "rb").read()
        if how == "delete":
            os.unlink(p)
            continue
        if how == "random":
            raw = rng.randbytes(len(raw) or 16)
        elif how == "truncate":
            raw = raw[:len(raw) // 2 + 1]
        elif how == "zeros":
            raw = b"\x00" * (len(raw) or 16)
        elif how == "empty":
            raw = b""
        elif how == "ones":
            raw = b"\xff" * (len(raw) or 24)
        open(p, "wb").write(raw)


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
@pytest.mark.parametrize("how", ["delete", "random", "truncate", "zeros", "empty", "ones"])
def test_lost_or_garbled_indexes_are_rebuilt_and_lookups_stay_right(tmp_path, how, shutdown):
    cfg = LogConfig(segment_bytes=3000, index_interval_bytes=100)
    path = str(tmp_path)
    rng = random.Random(how)
    ts = lambda i: 1000 + (i * 7919) % 500          # noqa: E731 (shuffled timestamps)
    lg, written = build(path, 60, cfg, ts=ts)
    assert len(lg.segments()) >= 3
    if shutdown == "crash":
        # Reopening moves the recovery point to the tail; a few more batches
        # and a crash leave it inside the active segment, with index entries
        # below it that recovery keeps rather than re-derives.
        lg.close()
        lg, written = build(path, 4, cfg, ts=ts, lg=PartitionLog(path, cfg), written=written, first=60)
        active = lg.segments()[-1]
        crash(lg)
        _, base, pos = recovery_point(path)
        assert base == active.base_offset and 100 < pos < active.size
    else:
        lg.close()
    _damage_indexes(path, how, rng)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == len(written)
        check_lookups(lg)
        assert read_records(lg) == ([written[o] for o in range(len(written))], None)
        for o in range(0, len(written), 5):
            bi = lg.read(o, 1)[1][0]
            assert bi.base_offset <= o <= bi.last_offset
        for t in range(990, 1520, 13):
            assert lg.offsets_for_time(t) == min(
                (r.offset for r in written.values() if r.timestamp >= t), default=-1), t
    finally:
        lg.close()
    # Rebuilt index files are whole entries again.
    for name in os.listdir(path):
        if name.endswith(".index"):
            assert os.path.getsize(os.path.join(path, name)) % format.INDEX_ENTRY == 0


# ---- files left behind ----
def test_stray_tmp_files_and_orphan_indexes_are_removed_on_open(tmp_path):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 15, cfg)
    lg.close()
    strays = [format.RECOVERY_POINT_FILE + ".tmp", "00000000000000000000.index.tmp",
              "00000000000000000000.timeindex.tmp", "whatever.tmp"]
    orphans = [format.segment_name(10 ** 6, format.INDEX_SUFFIX),
               format.segment_name(10 ** 6, format.TIMEINDEX_SUFFIX)]
    for name in strays + orphans:
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"half-written")
    lg = PartitionLog(path, cfg)
    try:
        left = set(os.listdir(path))
        assert not left & set(strays + orphans)
        assert read_records(lg) == ([written[o] for o in range(len(written))], None)
    finally:
        lg.close()


@pytest.mark.parametrize("damage", ["garbage", "short", "empty", "bad_crc", "missing",
                                    "unknown_segment"])
def test_damaged_recovery_point_falls_back_to_a_full_recovery(tmp_path, damage):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 15, cfg)
    lg.close()
    rp = os.path.join(path, format.RECOVERY_POINT_FILE)
    raw = open(rp, "rb").read()
    unknown = struct.pack(">qqqq", 999, 999, 0, -1)      # a well-formed point, no such segment
    if damage == "missing":
        os.unlink(rp)
    else:
        raw = {"garbage": b"x" * len(raw), "short": raw[:10], "empty": b"",
               "bad_crc": raw[:-1] + bytes([raw[-1] ^ 1]),
               "unknown_segment": unknown + struct.pack(">I", _bridge.crc32c(unknown))}[damage]
        open(rp, "wb").write(raw)
    # Also tear the last batch: the fallback must still find it.
    spans = batch_spans(path)
    with open(log_file(path, spans[-1][0]), "r+b") as f:
        f.truncate(spans[-1][1] + 5)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == spans[-1][3]
        assert read_records(lg) == ([written[o] for o in range(spans[-1][3])], None)
    finally:
        lg.close()


def test_crash_right_after_a_roll_reopens_at_the_new_empty_segment(tmp_path):
    cfg = LogConfig(segment_bytes=600)
    path = str(tmp_path)
    lg, written = build(path, 6, cfg)
    count = len(lg.segments())
    while len(lg.segments()) == count:
        lg.append([batch([b"r" * 200])])
    # The last append rolled and then wrote into the new segment; cut it back to empty.
    last = lg.segments()[-1]
    crash(lg)
    with open(last.log_path, "r+b") as f:
        f.truncate(0)
    lg = PartitionLog(path, cfg)
    try:
        assert lg.next_offset == last.base_offset
        assert lg.append([batch([b"x"])])[0].base_offset == last.base_offset
    finally:
        lg.close()


# ---- the cost of opening ----
@pytest.fixture
def scanned(monkeypatch):
    """Bytes validated by Segment.scan_from, per call."""
    calls = []
    real = Segment.scan_from

    def counting(self, position, expect_offset, max_batch_size, end=None):
        stop = os.fstat(self.fd).st_size if end is None else end
        calls.append(max(stop - position, 0))
        return real(self, position, expect_offset, max_batch_size, end)

    monkeypatch.setattr(Segment, "scan_from", counting)
    return calls


def test_reopen_after_a_clean_close_scans_at_most_the_active_segment(tmp_path, scanned):
    cfg = LogConfig(segment_bytes=1500, index_interval_bytes=256)
    path = str(tmp_path)
    lg, written = build(path, 400, cfg)
    assert len(lg.segments()) > 20
    lg.close()
    total = sum(os.path.getsize(log_file(path, s[0])) for s in {(s[0],) for s in batch_spans(path)})
    active = max(b for b, *_ in batch_spans(path))
    del scanned[:]
    lg = PartitionLog(path, cfg)
    try:
        assert sum(scanned) <= os.path.getsize(log_file(path, active)) < total / 20
        assert lg.next_offset == len(written)
        # Opening cost does not grow with the store: twice the segments, same bound.
        for i in range(400):
            lg.append([batch([b"more%d" % i])])
    finally:
        lg.close()
    del scanned[:]
    lg = PartitionLog(path, cfg)
    try:
        assert sum(scanned) <= lg.segments()[-1].size
    finally:
        lg.close()


def test_reopen_after_a_crash_scans_at_most_one_segment_plus_a_checkpoint(tmp_path, scanned):
    checkpoint = 1000
    cfg = LogConfig(segment_bytes=1500, index_interval_bytes=256, checkpoint_bytes=checkpoint)
    path = str(tmp_path)
    lg, written = build(path, 400, cfg)
    assert len(lg.segments()) > 20
    crash(lg)
    del scanned[:]
    lg = PartitionLog(path, cfg)
    try:
        assert sum(scanned) <= 1500 + checkpoint
        assert lg.next_offset == len(written)
        assert read_records(lg) == ([written[o] for o in range(len(written))], None)
    finally:
        lg.close()


def test_reading_an_old_segment_after_reopen_loads_only_that_segment(tmp_path, scanned):
    cfg = LogConfig(segment_bytes=1500, index_interval_bytes=256)
    path = str(tmp_path)
    lg, written = build(path, 400, cfg)
    lg.close()
    lg = PartitionLog(path, cfg)
    try:
        del scanned[:]
        buf, infos = lg.read(100, 1)
        assert infos[0].base_offset <= 100
        assert sum(scanned) <= 1500                 # one lazy index load, not a store scan
        _, recs = codec.decode_all(buf)
        assert [r for r in recs if r.offset >= 100][0] == written[100]
    finally:
        lg.close()
