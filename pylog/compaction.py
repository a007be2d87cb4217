"""Log compaction (cleanup.policy=compact): keep the latest record per key.

What may be cleaned.  Closed segments only (never the active one), from the
log start up to the first segment that reaches past the last stable offset
or is younger than min.compaction.lag.ms.  Every transaction with data in
that range is therefore decided, and its aborted records are garbage.

What a cleaned segment keeps.  Offsets never change; records go.
  - a record whose key has a later record in the cleanable range goes;
  - a tombstone (null value) that is the latest for its key goes once its
    segment was last written more than delete.retention.ms ago (consumers
    had that long to see it; a cleaned copy keeps the original's mtime);
  - records of aborted transactions go; control batches (markers) all stay,
    so read_committed readers meet the same markers as before;
  - keyless records stay: appends to a compacted topic refuse them, as
    Kafka does (INVALID_RECORD), so only a log written before that check
    has any, and compaction does not guess what they superseded;
  - a batch that keeps any record keeps its header (base offset,
    lastOffsetDelta, producer id, epoch, sequence), and so does each
    producer's last data batch even when emptied, so producer state can
    still be rebuilt from the log (the log is the truth);
  - a run of batches left with nothing becomes one empty filler batch
    (no producer) spanning their offsets.  Segments thus stay contiguous:
    recovery, readers and the index all check that each batch starts where
    the previous one ended, and keep doing so unchanged.

Crash safety.  The cleaned copy is written to <segment>.log.cleaned,
checked (every CRC, contiguous offsets, same end offset) and fsynced; then,
under the partition's append lock, the segment's index files are removed
(hints, rebuilt from the log) and the copy renamed over the .log, and the
directory fsynced.  A crash leaves the old file or the new one, each whole;
a stale .cleaned file is removed by the next cleaner.  One cleaner per
partition at a time (flock on .cleaner.lock, across processes).

Other processes that had the segment open keep reading the old file through
their descriptor (same offsets, more records) until they reopen the store.
"""
import bisect
import fcntl
import hashlib
import logging
import os
import time

from . import _bridge, compression, failpoints, format, fsutil
from .codec import records_region
from .segment import Segment

log = logging.getLogger("pylog.compaction")

CLEANED_SUFFIX = ".cleaned"
CHECKPOINT_FILE = "cleaner-offset-checkpoint"   # offset + CRC-32C: where the last run ended
_FLUSH_BYTES = 8 << 20
_CHUNK = 8 << 20                # bytes read at a time


class CompactionResult:
    """What one compaction of a partition did."""

    __slots__ = ("segments", "bytes_before", "bytes_after", "records_removed", "end_offset")

    def __init__(self):
        self.segments = 0               # segments rewritten
        self.bytes_before = 0
        self.bytes_after = 0
        self.records_removed = 0
        self.end_offset = None          # offsets below this were considered

    def __repr__(self):
        return "CompactionResult(segments=%d, bytes %d -> %d, records_removed=%d, end=%s)" % (
            self.segments, self.bytes_before, self.bytes_after, self.records_removed,
            self.end_offset)


def cleanable_range(partition, config, now_ms):
    """[(segment, end offset)] of the closed segments compaction may rewrite."""
    lso = partition.last_stable_offset()
    lag = int(config.get("min.compaction.lag.ms", 0))
    segs = partition.log.segments()
    out = []
    for seg, nxt in zip(segs, segs[1:]):
        if nxt.base_offset > lso:
            break
        if lag and now_ms - seg.largest_timestamp() < lag:
            break
        out.append((seg, nxt.base_offset))
    return out


def dirty_ratio(partition, config, now_ms=None, segments=None):
    """Share of the cleanable bytes not cleaned since the last compaction
    (segments: cleanable_range's answer, when the caller has it)."""
    if segments is None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        segments = cleanable_range(partition, config, now_ms)
    cleaned_to = fsutil.read_offset_file(os.path.join(partition.log.path, CHECKPOINT_FILE))
    total = dirty = 0
    for seg, _ in segments:
        total += seg.size
        if seg.base_offset >= cleaned_to:
            dirty += seg.size
    return dirty / total if total else 0.0


def compact(partition, config, now_ms=None, min_dirty_ratio=None, stop=None):
    """Compact one partition.  Returns a CompactionResult, or None when
    another cleaner holds the partition or min_dirty_ratio is not reached.
    stop: a callable; when it returns true the run ends early, unharmed."""
    lg = partition.log
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    lock_fd = os.open(os.path.join(lg.path, ".cleaner.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        _remove_stale(lg.path)
        partition.refresh()
        segments = cleanable_range(partition, config, now_ms)
        if min_dirty_ratio is not None and \
                dirty_ratio(partition, config, segments=segments) < min_dirty_ratio:
            return None
        partition.snapshot()            # producer state and aborted index complete in LMDB
        result = CompactionResult()
        if not segments:
            return result
        end = segments[-1][1]
        result.end_offset = end
        aborted = _AbortedIndex(partition, segments[0][0].base_offset, end)
        cleaner = _Cleaner(lg, aborted, now_ms - int(config.get("delete.retention.ms", 86400000)))
        readable = []
        try:
            for seg, seg_end in segments:
                reader = _SegmentReader(lg, seg, seg_end)
                try:
                    if not cleaner.learn(reader, stop):
                        reader.close()
                        return result
                except _Damaged as e:   # leave it (and what follows) to verify/recovery
                    log.warning("%s: not compacting a segment that does not validate: %s",
                                reader.seg.log_path, e)
                    reader.close()
                    break
                reader.close()
                readable.append(reader)
            for reader in readable:
                if stop is not None and stop():
                    return result
                if reader.reopen():
                    try:
                        cleaner.rewrite(reader, result, stop)
                    finally:
                        reader.close()
        finally:
            for reader in readable:
                reader.close()
        if readable:
            fsutil.write_offset_file(os.path.join(lg.path, CHECKPOINT_FILE), readable[-1].end,
                                     durable=False)
        if result.segments:
            log.info("%s-%d: compacted %d segments, %d -> %d bytes, %d records removed",
                     partition.topic, partition.partition, result.segments, result.bytes_before,
                     result.bytes_after, result.records_removed)
        return result
    finally:
        os.close(lock_fd)


class _AbortedIndex:
    """Is a transactional batch part of an aborted transaction?  (pid ->
    sorted (first, last) ranges from the aborted index.)"""

    def __init__(self, partition, start, end):
        meta = partition.store.meta
        entries = meta.view(lambda txn: meta.aborted_txns(txn, partition.pk, start, end))
        self._ranges = {}
        for pid, first, last in sorted(entries, key=lambda e: e[1]):
            self._ranges.setdefault(pid, []).append((first, last))

    def __call__(self, bi):
        if not bi.is_transactional or bi.producer_id < 0:
            return False
        ranges = self._ranges.get(bi.producer_id)
        if not ranges:
            return False
        i = bisect.bisect_right(ranges, (bi.base_offset, 1 << 63)) - 1
        return i >= 0 and ranges[i][0] <= bi.base_offset <= ranges[i][1]


class _Damaged(Exception):
    pass


def _walk(read, size, base, end, max_batch_size):
    """Yield (header with position 0, bytes) of every batch in a segment file of
    size bytes, checking CRCs and contiguous offsets from base to end; raise
    _Damaged at the first batch that does not pass.  Streams in chunks: a
    segment can hold millions of small batches."""
    pos, expect, want = 0, base, _CHUNK
    while pos < size:
        chunk = read(pos, min(want, size - pos))
        infos, valid, rc = _bridge.scan(chunk, max_batch_size, True, expect)
        for bi in infos:
            data = chunk[bi.position:bi.position + bi.size]
            bi.position = 0
            yield bi, data
        if infos:
            expect = infos[-1].next_offset
        pos += valid
        want = _CHUNK
        if rc == 0:
            continue
        if rc == _bridge.lib.PL_ETORN:
            if valid:                   # a batch across the chunk's end starts the next read
                continue
            blen = int.from_bytes(chunk[8:12], "big") + 12 if len(chunk) >= 12 else 0
            if len(chunk) < blen and pos + blen <= size:
                want = blen             # one batch bigger than a chunk: read all of it
                continue
        raise _Damaged("%s at byte %d" % (_bridge.SCAN_REASONS.get(rc, rc), pos))
    if expect != end:
        raise _Damaged("ends at offset %d, not %d" % (expect, end))


class _SegmentReader:
    """A closed segment read through its own descriptor (the inode the copy
    is made from)."""

    def __init__(self, lg, seg, end):
        self.lg = lg
        self.seg = self._open(seg.base_offset)
        self.ino = os.fstat(self.seg.fd).st_ino
        self.end = end
        self.max_batch_size = lg.config.max_batch_size

    def reopen(self):
        """Open it again for the second pass (one segment open at a time, not
        all of them); False if the file is no longer the one learnt from."""
        try:
            self.seg = self._open(self.seg.base_offset)
        except OSError:
            return False                # deleted by retention meanwhile
        if os.fstat(self.seg.fd).st_ino != self.ino:
            self.seg.close()
            return False
        return True

    def _open(self, base_offset):
        return Segment(self.lg.path, base_offset, self.lg.config.index_interval_bytes)

    def batches(self):
        return _walk(self.seg.read, self.seg.size, self.seg.base_offset, self.end,
                     self.max_batch_size)

    def close(self):
        self.seg.close()


class _Cleaner:
    def __init__(self, lg, aborted, tombstone_horizon_ms):
        self.lg = lg
        self.aborted = aborted
        self.horizon = tombstone_horizon_ms
        self.latest = {}                # key id -> offset of its latest record
        self.last_data = {}             # producer id -> base offset of its last data batch

    def learn(self, reader, stop=None):
        """First pass: the latest offset of every key.  False if stopped."""
        latest = self.latest
        for h, data in reader.batches():
            if stop is not None and stop():
                return False
            if h.is_control:
                continue
            if h.producer_id >= 0:
                self.last_data[h.producer_id] = h.base_offset
            if self.aborted(h):
                continue
            recs, rows = _records(data, h)
            for off, key, _, _, _ in rows:
                if key is not None:
                    latest[_key_id(key)] = off
        return True

    def rewrite(self, reader, result, stop):
        """Second pass: write the cleaned copy of one segment and swap it in."""
        seg = reader.seg
        # A tombstone goes once its segment's last write is older than
        # delete.retention.ms: every record in it was appended before then
        # (record timestamps are the producer's and may lie in the past).
        st = os.fstat(seg.fd)
        self._segment_mtime_ms = st.st_mtime_ns // 1000000
        tmp = seg.log_path + CLEANED_SUFFIX
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        out = _Output(fd)
        removed = 0
        try:
            for h, data in reader.batches():
                if stop is not None and stop():
                    os.close(fd)
                    os.unlink(tmp)
                    return
                if h.is_control:
                    out.batch(data)
                    continue
                keep_header = h.producer_id >= 0 and self.last_data.get(h.producer_id) == h.base_offset
                if self.aborted(h):
                    recs, kept = b"", []
                else:
                    recs, rows = _records(data, h)
                    kept = [(s, e) for off, key, s, e, tombstone in rows
                            if self._keep(off, key, tombstone, h)]
                    if len(kept) == h.records_count:
                        out.batch(data)
                        continue
                removed += h.records_count - len(kept)
                if kept or keep_header:
                    out.batch(_rebuilt(h, recs, kept))
                else:
                    out.gap(h)
            out.close()
            if not removed:
                os.close(fd)
                os.unlink(tmp)
                return
            failpoints.hit("compaction.cleaned.written")
            _check_cleaned(fd, seg.base_offset, reader.end, self.lg.config.max_batch_size)
            # keep the segment's clock: cleaning must not restart delete.retention.ms
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            fsutil.fsync(fd)
            os.close(fd)
            fd = None
        except BaseException:
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if self.lg.replace_segment(seg.base_offset, tmp, reader.ino, reader.end):
            result.segments += 1
            result.bytes_before += seg.size
            result.bytes_after += out.written
            result.records_removed += removed

    def _keep(self, offset, key, tombstone, h):
        if key is None:
            return True
        if self.latest.get(_key_id(key)) != offset:
            return False
        return not (tombstone and self._segment_mtime_ms < self.horizon)


class _Output:
    """Buffered writes of whole batches, folding runs of emptied batches
    into one filler batch."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = bytearray()
        self.written = 0
        self._gap = None                # [base offset, last offset, base ts, max ts]

    def gap(self, h):
        g = self._gap
        if g is None:
            self._gap = [h.base_offset, h.last_offset, h.base_timestamp, h.max_timestamp]
        else:
            g[1] = h.last_offset
            g[3] = max(g[3], h.max_timestamp)

    def batch(self, data):
        self._close_gap()
        self.buf += data
        if len(self.buf) >= _FLUSH_BYTES:
            self._flush()

    def close(self):
        self._close_gap()
        self._flush()

    def _close_gap(self):
        g, self._gap = self._gap, None
        if g is not None:
            filler = bytearray(_bridge.HEADER_SIZE)
            _bridge.write_header(filler, g[0], 0, g[1] - g[0], g[2], g[3], -1, -1, -1, 0, 0)
            self.buf += filler

    def _flush(self):
        if self.buf:
            view = memoryview(self.buf)
            while view:
                view = view[os.write(self.fd, view):]
            self.written += len(self.buf)
            self.buf = bytearray()


def _records(data, h):
    """(records region, [(offset, key, start, end, is tombstone)]) of one batch;
    start:end spans the record's bytes in the region."""
    recs = records_region(data, h)
    fields = _bridge.decode_records(recs, h.records_count, h.base_offset, h.base_timestamp)
    rows = []
    pos = 0
    for i in range(0, len(fields), _bridge.REC_FIELDS):
        length, n = _varint(recs, pos)
        end = pos + n + length
        kp, kl, vl = fields[i + 2], fields[i + 3], fields[i + 5]
        rows.append((fields[i], None if kl < 0 else bytes(recs[kp:kp + kl]), pos, end, vl < 0))
        pos = end
    return recs, rows


def _varint(buf, pos):
    """(value, bytes used) of the zigzag varint at buf[pos] (already validated)."""
    shift = u = 0
    n = 0
    while True:
        b = buf[pos + n]
        u |= (b & 0x7F) << shift
        n += 1
        if not b & 0x80:
            return (u >> 1) ^ -(u & 1), n
        shift += 7


def _key_id(key):
    # Short keys as themselves, long ones by a 128-bit digest: bounded memory
    # per key, collisions out of reach.
    return b"k" + key if len(key) <= 32 else b"h" + hashlib.blake2b(key, digest_size=16).digest()


def _rebuilt(h, recs, kept):
    """The batch with only the kept records: same offsets, timestamps and
    producer fields, new count and CRC, recompressed with its codec."""
    body = b"".join(bytes(recs[s:e]) for s, e in kept)
    attrs = h.attributes
    if h.compression and kept:
        body = compression.compress(h.compression, body)
    elif h.compression:
        attrs &= ~0x07                  # nothing to compress
    buf = bytearray(_bridge.HEADER_SIZE) + body
    _bridge.write_header(buf, h.base_offset, attrs, h.last_offset_delta, h.base_timestamp,
                         h.max_timestamp, h.producer_id, h.producer_epoch, h.base_sequence,
                         len(kept), h.partition_leader_epoch)
    return buf


def _check_cleaned(fd, base, end, max_batch_size):
    """The cleaned copy must validate whole and end at the old segment's end."""
    try:
        for _ in _walk(lambda pos, n: fsutil.pread_exact(fd, n, pos), os.fstat(fd).st_size,
                       base, end, max_batch_size):
            pass
    except _Damaged as e:
        raise AssertionError("compaction wrote an invalid segment: %s" % e) from None


def _remove_stale(path):
    """Copies a cleaner left when it died (we hold the cleaner lock)."""
    for name in os.listdir(path):
        if name.endswith(format.LOG_SUFFIX + CLEANED_SUFFIX):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
