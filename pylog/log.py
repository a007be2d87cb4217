"""A partition log: ordered segments, roll, recovery, reads, durability.

Concurrency.  Several processes may open the same partition.  Appends and
recovery hold flock(<dir>/.lock) (plus a thread lock inside a process), so
exactly one writer touches the end of the log at a time and whoever holds
the lock may trust that nobody is half-way through a write: any invalid
bytes past the last valid batch were left by a writer that died, and are cut
off.  Readers take no lock: they validate (CRC) whatever another process
appended since they last looked and stop before a batch still being written.

Durability.  pylog.fsync=always fsyncs the active segment before append()
returns; interval fsyncs when the last fsync is older than the interval;
never leaves it to the OS.  append(sync="defer") leaves the fsync to a later
sync_deferred(), which covers every deferred append before it: one fsync for
a group of appends.  Rolling a segment fsyncs the old one, and new
files are followed by an fsync of the directory.  After a failed fsync the
kernel may have dropped the dirty pages, so the partition refuses all writes
(StorageError) until it is reopened and recovered from disk.

Recovery point.  The recovery-point file names a batch below which every
byte was fsynced and validated.  Opening validates only from there to the end
(bounded by pylog.recovery.checkpoint.bytes or one segment), so opening a
large store costs time independent of its size.
"""
import bisect
import fcntl
import logging
import os
import struct
import threading
import time
from contextlib import contextmanager

from . import _bridge, failpoints, format, fsutil
from .errors import CorruptRecordError, KafkaError, KafkaException, StorageError
from .segment import Segment

log = logging.getLogger("pylog.log")

FSYNC_POLICIES = ("always", "interval", "never")
_RP = struct.Struct(">qqqqI")    # offset, segment base, position, max ts before, crc32c
_SYNC = struct.Struct(">qq?")    # .sync: segment base, position fsynced up to, failed


class LogConfig:
    """Per-partition settings, with Kafka's names and defaults where Kafka has them."""

    def __init__(self, segment_bytes=1 << 30, segment_ms=7 * 24 * 3600 * 1000,
                 index_interval_bytes=4096, max_message_bytes=1048588, fsync="never",
                 fsync_interval_ms=1000, checkpoint_bytes=16 << 20, compacted=False):
        if fsync not in FSYNC_POLICIES:
            raise KafkaException(KafkaError(
                KafkaError._INVALID_ARG,
                "Invalid value %r for configuration property \"pylog.fsync\": expected one of %s"
                % (fsync, ", ".join(FSYNC_POLICIES))))
        for name, value, low in (("segment.bytes", segment_bytes, 14),
                                 ("segment.ms", segment_ms, 1),
                                 ("index.interval.bytes", index_interval_bytes, 0),
                                 ("max.message.bytes", max_message_bytes, 0),
                                 ("pylog.fsync.interval.ms", fsync_interval_ms, 0)):
            if not isinstance(value, int) or value < low:
                raise KafkaException(KafkaError(
                    KafkaError._INVALID_ARG, "%s must be an integer >= %d, got %r" % (name, low, value)))
        if segment_bytes > 0x7FFFFFFF:
            raise KafkaException(KafkaError(
                KafkaError._INVALID_ARG, "segment.bytes must be below 2 GiB (positions are int32)"))
        self.segment_bytes = segment_bytes
        self.segment_ms = segment_ms
        self.index_interval_bytes = index_interval_bytes
        self.max_message_bytes = max_message_bytes
        self.fsync = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.checkpoint_bytes = checkpoint_bytes
        self.compacted = compacted          # cleanup.policy has compact: every record needs a key

    @property
    def max_batch_size(self):
        # A stored batch may be a little over max.message.bytes (Kafka's own
        # limit counts the batch); reject only sizes no segment can hold.
        return self.segment_bytes


def _has_keyless(buf, bi):
    """True if a record of the (validated) batch bi in buf has a null key."""
    from .codec import records_region
    fields = _bridge.decode_records(records_region(buf, bi), bi.records_count, bi.base_offset,
                                    bi.base_timestamp)
    return any(kl < 0 for kl in fields[3::_bridge.REC_FIELDS])


class AppendResult:
    """What became of one batch: written at base_offset..last_offset
    (appended), found already in the log there (a duplicate: appended False),
    or refused (error, a KafkaError; offsets -1)."""

    __slots__ = ("base_offset", "last_offset", "appended", "error")

    def __init__(self, base_offset, last_offset, appended, error=None):
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.appended = appended
        self.error = error

    def __repr__(self):
        if self.error is not None:
            return "AppendResult(error=%s)" % (self.error,)
        return "AppendResult(%d..%d%s)" % (self.base_offset, self.last_offset,
                                           "" if self.appended else ", duplicate")


class PartitionLog:
    """The segments of one topic-partition directory.  Thread-safe."""

    def __init__(self, path, config=None, topic=None, partition=None):
        self.path = path
        self.config = config or LogConfig()
        self.topic = topic
        self.partition = partition
        self._mutex = threading.RLock()
        self._segments = []             # ascending base offset; the last is active
        self._bases = []
        self._failed = None             # StorageError message once writes must stop
        self._start = 0                 # log start moved by delete_before (0: none)
        self._start_stat = None         # (inode, mtime, size) of the log-start file read
        self._retired = []              # (time, segment) replaced by compaction, still open
        self._unsynced = 0              # bytes written since the last fsync
        self._last_sync = time.monotonic()
        self._since_checkpoint = 0
        self._lock_depth = 0
        self._lock_fd = self._sync_fd = None
        try:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
                # the store directory must name the new partition durably too
                fsutil.fsync_dir(os.path.dirname(os.path.abspath(path)))
            self._lock_fd = os.open(os.path.join(path, format.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
            self._sync_fd = os.open(os.path.join(path, format.SYNC_FILE), os.O_RDWR | os.O_CREAT, 0o644)
            self._sync_mutex = threading.Lock()
            with self.locked():
                self._open_segments()
                self._start = self._read_start()
                # After recovery nothing past the tail is vouched for (a reboot
                # may have left a marker naming bytes that are gone).
                self._write_sync_marker(self._segments[-1].base_offset, self._segments[-1].size, False)
        except OSError as e:
            for fd in (self._lock_fd, self._sync_fd):
                if fd is not None:
                    os.close(fd)
            for seg in self._segments:
                seg.close()
            raise StorageError("cannot open partition %s: %s" % (path, e)) from e

    # ---- locking ----
    @contextmanager
    def locked(self):
        """Hold this partition's append lock (re-entrant within a thread)."""
        with self._mutex:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ---- open and recovery ----
    def _open_segments(self):
        bases = set()
        for name in os.listdir(self.path):
            if name.endswith(format.TMP_SUFFIX):
                os.unlink(os.path.join(self.path, name))     # an interrupted atomic write
                continue
            base = format.parse_segment_name(name)
            if base is not None and name.endswith(format.LOG_SUFFIX):
                bases.add(base)
        for name in os.listdir(self.path):                   # indexes without a log
            base = format.parse_segment_name(name)
            if base is not None and base not in bases and not name.endswith(format.LOG_SUFFIX):
                os.unlink(os.path.join(self.path, name))
        if not bases:
            seg = Segment(self.path, 0, self.config.index_interval_bytes, create=True)
            fsutil.fsync_dir(self.path)
            self._segments, self._bases = [seg], [0]
            self._write_recovery_point(seg, 0, -1)
            return
        self._bases = sorted(bases)
        self._segments = [Segment(self.path, b, self.config.index_interval_bytes)
                          for b in self._bases]
        self._discard_after_failed_fsync()
        self._recover()

    def _recover(self):
        """Validate from the recovery point to the end; cut at the first bad
        batch and drop every later segment (their offsets would leave a gap)."""
        rp = self._read_recovery_point()
        start_idx, position, max_ts, rp_offset = 0, 0, -1, None
        if rp is not None:
            offset, seg_base, pos, ts = rp
            if seg_base in self._bases:
                start_idx = self._bases.index(seg_base)
                position, max_ts, rp_offset = pos, ts, offset
        for i in range(start_idx, len(self._segments)):
            seg = self._segments[i]
            removed = seg.recover(self.config.max_batch_size, position if i == start_idx else 0,
                                  max_ts if i == start_idx else -1,
                                  rp_offset if i == start_idx else None)
            expected_next = self._bases[i + 1] if i + 1 < len(self._bases) else None
            if (removed or seg.next_offset != expected_next) and expected_next is not None:
                self._drop_segments_after(i)
                break
        # Validated bytes may still sit only in the page cache (the process
        # died, the machine did not): make them durable before vouching.
        synced = self._read_sync_marker()
        try:
            self._segments[-1].sync()
        except StorageError:
            # Never retried then vouched for (fsyncgate): the next open cuts
            # back to the last successful fsync, which .sync records.  Not to
            # the recovery point: a checkpoint, it may lag the last fsync by
            # checkpoint.bytes or sit at 0, and cutting there would delete
            # committed, durable records.
            self._write_sync_marker(synced[0], synced[1], True)
            raise
        failpoints.hit("recovery.point")
        self._write_recovery_point(*self._tail_point())

    def _drop_segments_after(self, i):
        for seg in self._segments[i + 1:]:
            log.warning("%s: deleting segment %s after a truncation", self.path, seg.log_path)
            failpoints.hit("recovery.drop_segment")
            seg.delete()
        del self._segments[i + 1:]
        del self._bases[i + 1:]
        fsutil.fsync_dir(self.path)

    def _discard_after_failed_fsync(self):
        """After a failed fsync the kernel may have marked unwritten pages
        clean, so bytes past the last successful fsync can read back fine and
        still be gone after a reboot.  None of them was acknowledged as
        durable: cut the files back to the last successful fsync before
        anything is fsynced again (recovery then validates what is left)."""
        base, pos, failed = self._read_sync_marker()
        if not failed or base not in self._bases:
            return
        i = self._bases.index(base)
        log.warning("%s: an fsync failed earlier; discarding what was written after position %d "
                    "of segment %d", self.path, pos, base)
        if i + 1 < len(self._segments):
            self._drop_segments_after(i)
        seg = self._segments[i]
        failpoints.hit("recovery.discard")
        if os.fstat(seg.fd).st_size > pos:
            failpoints.hit("truncate")
            os.ftruncate(seg.fd, pos)
            seg.size = min(seg.size, pos)
        # the recovery point may name bytes that are gone now: rescan from 0
        try:
            os.unlink(os.path.join(self.path, format.RECOVERY_POINT_FILE))
        except FileNotFoundError:
            pass

    def _tail_point(self):
        seg = self._segments[-1]
        return seg, seg.size, seg.max_timestamp

    def _read_recovery_point(self):
        try:
            with open(os.path.join(self.path, format.RECOVERY_POINT_FILE), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        if len(raw) != _RP.size:
            return None
        offset, base, pos, ts, crc = _RP.unpack(raw)
        if _bridge.crc32c(raw[:-4]) != crc:
            log.warning("%s: ignoring a damaged recovery point", self.path)
            return None
        return offset, base, pos, ts

    def _write_recovery_point(self, seg, position, max_ts, offset=None):
        """Record that everything before (seg, position) is durable and valid:
        position starts offset (default: the segment's start or end) and
        max_ts is the largest timestamp before it.  Callers hold the lock
        and have fsynced the segment up to position."""
        if offset is None:
            if position not in (0, seg.size):
                return
            offset = seg.next_offset if position == seg.size else seg.base_offset
        body = struct.pack(">qqqq", offset, seg.base_offset, position, max_ts)
        fsutil.write_atomic(os.path.join(self.path, format.RECOVERY_POINT_FILE),
                            body + struct.pack(">I", _bridge.crc32c(body)))
        self._since_checkpoint = 0

    # ---- state ----
    @property
    def log_start_offset(self):
        """The first offset readers may ask for: the first segment's base, or
        later once delete_before() moved it inside that segment."""
        return max(self._segments[0].base_offset, self._start)

    def _read_start(self):
        return fsutil.read_offset_file(os.path.join(self.path, format.LOG_START_FILE))

    def _start_moved(self):
        """Whether the log-start file changed since we last read it: one
        stat on the append and tail-read paths instead of an open and read."""
        try:
            st = os.stat(os.path.join(self.path, format.LOG_START_FILE))
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._start_stat:
            return False
        self._start_stat = key
        return True

    def delete_before(self, offset):
        """Move the log start to offset (Kafka's DeleteRecords and retention):
        whole segments below it are deleted, and reads below it are refused.
        Never moves backwards or past the log end.  Returns the new start."""
        with self.locked():
            self.refresh()
            offset = min(offset, self.next_offset)
            if offset <= self.log_start_offset:
                return self.log_start_offset
            fsutil.write_offset_file(os.path.join(self.path, format.LOG_START_FILE), offset)
            self._start = offset
            while len(self._segments) > 1 and self._segments[1].base_offset <= offset:
                seg = self._segments.pop(0)
                self._bases.pop(0)
                log.info("%s: deleting segment %d (log start now %d)", self.path,
                         seg.base_offset, offset)
                seg.delete()
            fsutil.fsync_dir(self.path)
            return self.log_start_offset

    def replace_segment(self, base, cleaned_path, ino, end):
        """Swap a compacted copy (same offsets base..end, fewer records) in for
        closed segment base, if that segment is still the file (inode ino)
        the copy was made from.  Returns whether it was swapped."""
        with self.locked():
            self._check_writable()
            self.refresh()
            i = bisect.bisect_left(self._bases, base)
            old = self._segments[i] if i < len(self._bases) - 1 and self._bases[i] == base else None
            if old is None or self._bases[i + 1] != end or os.stat(old.log_path).st_ino != ino:
                try:                            # deleted by retention, or changed meanwhile
                    os.unlink(cleaned_path)
                except FileNotFoundError:
                    pass
                return False
            old._ensure_index()                 # readers in flight keep a consistent view
            # Index files first: hints rebuilt from the log, never left
            # naming positions in a file they do not describe.
            for p in (old.index_path, old.timeindex_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            failpoints.hit("compaction.swap")
            os.replace(cleaned_path, old.log_path)
            fsutil.fsync_dir(self.path)
            new = Segment(self.path, base, self.config.index_interval_bytes)
            new.next_offset = end              # its index is rebuilt on first use
            self._segments[i] = new
            # A reader may be between looking the old segment up and reading
            # it: close it only once no read can still be that old.
            now = time.monotonic()
            keep = []
            for t, seg in self._retired:
                seg.close() if now - t > 60 else keep.append((t, seg))
            self._retired = keep + [(now, old)]
            return True

    def closed_segments(self):
        """Every segment but the active one, oldest first (retention candidates)."""
        with self._mutex:
            return list(self._segments[:-1])

    @property
    def next_offset(self):
        """The log end offset (high watermark on one machine), as this process knows it."""
        return self._segments[-1].next_offset

    @property
    def size_bytes(self):
        return sum(s.size for s in self._segments)

    def segments(self):
        return list(self._segments)

    # ---- catching up with other processes ----
    def refresh(self):
        """Take in batches other processes appended since we last looked.

        Without the lock, stops quietly before an incomplete or invalid batch
        (a writer may be in the middle of it); with the lock held, such bytes
        can only come from a writer that died, and are cut off."""
        with self._mutex:
            start = self._read_start() if self._start_moved() else self._start
            if start > self._start:                 # another process deleted records
                self._start = start
                while len(self._segments) > 1 and self._segments[1].base_offset <= start:
                    self._segments.pop(0).close()
                    self._bases.pop(0)
            while True:
                seg = self._segments[-1]
                size = os.fstat(seg.fd).st_size
                if size != seg.size:
                    self._take_tail(seg, size)
                nxt = os.path.join(self.path, format.segment_name(seg.next_offset, format.LOG_SUFFIX))
                if seg.next_offset == seg.base_offset or not os.path.exists(nxt):
                    return
                new = Segment(self.path, seg.next_offset, self.config.index_interval_bytes)
                new.recover(self.config.max_batch_size) if self._lock_depth else self._peek(new)
                self._segments.append(new)
                self._bases.append(new.base_offset)

    def _peek(self, seg):
        seg.next_offset = seg.base_offset
        seg.size = 0
        seg._index_loaded = True
        seg._load_index()
        self._take_tail(seg, os.fstat(seg.fd).st_size)

    def _take_tail(self, seg, file_size):
        if file_size < seg.size:
            raise StorageError("%s shrank from %d to %d bytes under us" % (seg.log_path, seg.size, file_size))
        infos, valid_end, rc = seg.scan_from(seg.size, seg.next_offset, self.config.max_batch_size,
                                             file_size)
        if infos:
            seg._index_batches([_rebase(bi, -seg.size) for bi in infos], seg.size, write=False)
            seg.size = valid_end
            seg.next_offset = infos[-1].next_offset
        if rc and self._lock_depth:
            log.warning("%s: cutting %d bytes left by a failed writer at position %d (%s)",
                        seg.log_path, file_size - valid_end, valid_end, _bridge.SCAN_REASONS.get(rc, rc))
            failpoints.hit("truncate")
            os.ftruncate(seg.fd, valid_end)

    # ---- appending ----
    def append(self, batches, hook=None, sync=None):
        """Append whole batches (bytes with baseOffset 0) in one write.

        hook, if given, runs under the lock after catching up:
        hook.before(log, infos, batches) returns per batch None (write it) or an
        AppendResult (a duplicate or a refusal: do not write it);
        hook.after(log, written) runs after the write.  Offsets are assigned
        in order from next_offset to the batches written, so a hook can
        predict them.  sync overrides the configured pylog.fsync policy;
        sync="defer" writes without an fsync, for a caller that calls
        sync_deferred() before it acknowledges anything written.
        Returns one AppendResult per batch."""
        if not batches:
            return []
        infos = []
        for b in batches:
            # Any length the buffer holds: a batch too big for a segment is
            # refused below as too large, not as corrupt.
            found, end, rc = _bridge.scan(b, 0x7FFFFFFF, True)
            if rc or len(found) != 1 or end != len(b):
                raise KafkaException(KafkaError(
                    KafkaError.CORRUPT_MESSAGE if rc else KafkaError._INVALID_ARG,
                    "append needs exactly one valid batch per item (%s)" %
                    _bridge.SCAN_REASONS.get(rc, rc)))
            if found[0].size > self.config.max_message_bytes:      # Kafka limits the whole batch
                raise KafkaException(KafkaError(
                    KafkaError.MSG_SIZE_TOO_LARGE,
                    "batch of %d bytes is over max.message.bytes=%d" % (
                        found[0].size, self.config.max_message_bytes)))
            if found[0].size > self.config.segment_bytes:
                # Kafka's RecordBatchTooLargeException: no segment can hold it.
                raise KafkaException(KafkaError(
                    KafkaError.RECORD_LIST_TOO_LARGE,
                    "batch of %d bytes is larger than segment.bytes=%d" % (
                        found[0].size, self.config.segment_bytes)))
            if self.config.compacted and not found[0].is_control and _has_keyless(b, found[0]):
                # Kafka's LogValidator: compaction keeps the latest record per
                # key, so a record without one has no place in the topic.
                raise KafkaException(KafkaError(
                    KafkaError.INVALID_RECORD,
                    "Compacted topic cannot accept message without key in topic partition "
                    "%s-%d." % (self.topic, self.partition)))
            infos.append(found[0])
        try:
            return self._append_locked(batches, infos, hook, sync)
        except OSError as e:
            # A roll, a recovery point or cutting a dead writer's tail failed:
            # what is on disk is unknown, so this partition takes no more writes.
            self._failed = "I/O error during an append: %s" % e
            raise StorageError("partition %s: %s" % (self.path, self._failed)) from e

    def _append_locked(self, batches, infos, hook, sync):
        with self.locked():
            self._check_writable()
            self.refresh()
            verdicts = hook.before(self, infos, batches) if hook else [None] * len(infos)
            results, pending, pending_infos, all_written = [], [], [], []
            nxt = self.next_offset
            for b, bi, v in zip(batches, infos, verdicts):
                if v is not None:
                    results.append(v)
                    continue
                self._maybe_roll(sum(len(w) for w in pending) + bi.size, bi.max_timestamp,
                                 pending, pending_infos)
                buf = b if isinstance(b, bytearray) else bytearray(b)   # stamped in place
                struct.pack_into(">q", buf, 0, nxt)
                struct.pack_into(">i", buf, 12, 0)     # partitionLeaderEpoch: one leader, epoch 0
                bi.base_offset = nxt
                nxt = bi.next_offset
                results.append(AppendResult(bi.base_offset, bi.last_offset, True))
                pending.append(buf)
                pending_infos.append(bi)
                all_written.append(bi)
            self._write(pending, pending_infos)
            if (sync or self.config.fsync) == "defer":
                self._segments[-1].start_writeback()
            if hook:
                hook.after(self, all_written)
            seg = self._segments[-1]
            point = (seg, seg.size, seg.max_timestamp, seg.next_offset)
        policy = sync or self.config.fsync
        if all_written and (policy == "always" or policy == "interval" and self.sync_due()):
            self._sync_point(point)
        return results

    def _sync_point(self, point):
        """fsync up to point (segment, position, max ts, next offset: the end
        of a write), outside the append lock (group commit, see sync_to)."""
        seg = point[0]
        self.sync_to(seg, point[1])
        if self._since_checkpoint >= self.config.checkpoint_bytes:
            # Advance the recovery point to what that fsync covered, so a
            # crash costs a rescan of at most checkpoint.bytes.
            with self.locked():
                if seg is self._segments[-1]:
                    self._write_recovery_point(*point)

    def sync_deferred(self):
        """Make durable what append(sync="defer") calls wrote: one fsync of
        the active segment up to its current end (a roll fsynced the segments
        before it), shared with concurrent appenders as append's is.  Like
        pylog.fsync=always, but one fsync for a group of appends: nothing
        they wrote may be acknowledged before this returns.  Raises
        StorageError if the fsync fails (the partition then refuses writes)."""
        with self._mutex:
            self._check_writable()
            seg = self._segments[-1]
            point = (seg, seg.size, seg.max_timestamp, seg.next_offset)
        try:
            self._sync_point(point)
        except OSError as e:
            # The .sync marker or the recovery point could not be written (as
            # in append): what is durable is unknown, so no more writes.
            self._failed = "I/O error making deferred appends durable: %s" % e
            raise StorageError("partition %s: %s" % (self.path, self._failed)) from e

    def sync_due(self):
        """True when pylog.fsync=interval owes an fsync (unsynced bytes older
        than pylog.fsync.interval.ms); the store's flusher thread asks too."""
        return bool(self._unsynced) and \
            (time.monotonic() - self._last_sync) * 1000 >= self.config.fsync_interval_ms

    def _maybe_roll(self, pending_bytes, batch_ts, written, written_infos):
        seg = self._segments[-1]
        if seg.size == 0 and not written:
            return
        full = seg.size + pending_bytes > self.config.segment_bytes
        # Kafka's segment.ms clock: the incoming batch's timestamp against the
        # first batch's, so replayed or back-dated data does not roll early.
        first_ts = seg.first_timestamp()
        aged = first_ts is not None and first_ts >= 0 and batch_ts - first_ts > self.config.segment_ms
        offsets = written_infos[-1].next_offset if written_infos else self.next_offset
        too_many = offsets - seg.base_offset >= 0x7FFFFFFF - 1
        if full or aged or too_many:
            self._write(written, written_infos)
            del written[:], written_infos[:]
            self._roll()

    def _write(self, written, infos):
        if not written:
            return
        seg = self._segments[-1]
        # One write, no copy: writev for several batches (IOV_MAX is 1024).
        data = written[0] if len(written) == 1 else (
            list(written) if len(written) <= 1024 else b"".join(written))
        pos = 0
        for bi in infos:
            bi.position = pos
            pos += bi.size
        try:
            seg.append(data, infos)
        except StorageError as e:
            self._failed = str(e)
            raise
        failpoints.hit("log.append.after_write")
        self._unsynced += pos
        self._since_checkpoint += pos

    def _roll(self):
        """Close the active segment (fsynced) and start one at the next offset."""
        old = self._segments[-1]
        failpoints.hit("log.roll.before")
        self.sync(force=True)
        new = Segment(self.path, old.next_offset, self.config.index_interval_bytes, create=True)
        failpoints.hit("log.roll.created")
        fsutil.fsync_dir(self.path)
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._write_recovery_point(new, 0, -1)
        failpoints.hit("log.roll.after")
        log.info("%s: rolled to segment %d", self.path, new.base_offset)

    def _check_writable(self):
        if self._failed:
            raise StorageError("partition %s refuses writes after an earlier failure: %s"
                               % (self.path, self._failed))

    def sync_to(self, seg, end):
        """Make seg durable up to byte end, sharing fsyncs between processes.

        Group commit: appenders fsync outside the append lock, one at a time
        under the .sync flock.  The .sync file records (segment, position)
        of the last fsync; whoever finds its own end already covered returns
        without an fsync of its own, and whoever does fsync covers every byte
        written so far by anybody.

        Lock order: the append lock (self._mutex) may be held when this is
        called, never taken inside it."""
        with self._sync_mutex:
            fcntl.flock(self._sync_fd, fcntl.LOCK_EX)
            try:
                base, pos, failed = self._read_sync_marker()
                if failed:
                    self._failed = "an fsync failed in another process"
                    raise StorageError("partition %s refuses writes: %s" % (self.path, self._failed))
                if base == seg.base_offset and pos >= end:
                    return
                self._check_writable()
                size = os.fstat(seg.fd).st_size
                try:
                    seg.sync()
                except StorageError as e:
                    self._failed = str(e)
                    self._write_sync_marker(base, pos, True)
                    raise
                if seg.base_offset >= base:
                    self._write_sync_marker(seg.base_offset, size, False)
                if seg is self._segments[-1] and size >= seg.size:
                    self._unsynced = 0
                    self._last_sync = time.monotonic()
            finally:
                fcntl.flock(self._sync_fd, fcntl.LOCK_UN)

    def _read_sync_marker(self):
        raw = os.pread(self._sync_fd, _SYNC.size, 0)
        if len(raw) < _SYNC.size:
            return -1, -1, False
        return _SYNC.unpack(raw)

    def _write_sync_marker(self, base, pos, failed):
        failpoints.hit("log.sync_marker.before")
        os.pwrite(self._sync_fd, _SYNC.pack(base, pos, failed), 0)
        failpoints.hit("log.sync_marker.after")

    def sync(self, force=False):
        """fsync the active segment if this process wrote to it since its last
        fsync, or always with force (bytes other processes appended count
        too: fdatasync covers the whole file).  A failure stops all writes
        to this partition."""
        with self._mutex:
            self._check_writable()
            if not self._unsynced and not force:
                return
            seg = self._segments[-1]
            self.sync_to(seg, os.fstat(seg.fd).st_size)
            if self._since_checkpoint >= self.config.checkpoint_bytes and self._lock_depth:
                self._write_recovery_point(*self._tail_point())

    # ---- reading ----
    def _segment_for(self, offset):
        i = bisect.bisect_right(self._bases, offset) - 1
        return self._segments[max(i, 0)], max(i, 0)

    def read(self, offset, max_bytes=1 << 20, upto=None, view=False):
        """Whole batches covering offset onward, as (bytes, [BatchInfo]).

        Returns at least one batch if any exists at or after offset, even if
        it is bigger than max_bytes, and nothing at or beyond upto.
        Positions in the infos are relative to the returned bytes.  Raises
        CorruptRecordError if validated bytes no longer pass their CRC, and
        KafkaException(OFFSET_OUT_OF_RANGE) for offsets outside the log.
        view: a memoryview of the bytes read instead of a copy of the part
        holding the batches (a consumer decoding them at once needs no copy)."""
        with self._mutex:
            if offset >= self.next_offset:
                self.refresh()
            if offset < self.log_start_offset or offset > self.next_offset:
                raise KafkaException(KafkaError(
                    KafkaError.OFFSET_OUT_OF_RANGE,
                    "offset %d is outside the log [%d, %d] of %s" % (
                        offset, self.log_start_offset, self.next_offset, self.path)))
            # Segments are contiguous (recovery drops any after a gap), so the
            # base offsets alone route the read; a segment below the recovery
            # point does not know its next_offset (None) until its index loads.
            seg, i = self._segment_for(offset)
            end = seg.size
            expect, pos = seg.lookup_entry(offset)
        if upto is not None and offset >= upto:
            return b"", []
        return self._read_batches(seg, pos, end, offset, max_bytes, upto, expect, view)

    def _read_batches(self, seg, pos, end, offset, max_bytes, upto, expect, view):
        # The index entry may sit up to index.interval.bytes before offset.
        # expect: the base offset of the batch at pos.  baseOffset is outside
        # the CRC, so only the offset sequence catches a damaged one (which
        # would otherwise hand out records under offsets they never had).
        chunk = max(max_bytes, 4096) + self.config.index_interval_bytes
        bounded = True
        while pos < end:
            want = min(chunk, end - pos)
            if bounded and want < end - pos:
                # Stop at a batch start the index knows, rather than read the
                # head of a batch only to drop it (a sixth of each read with
                # ~900 KB batches and the default 1 MiB).
                stop = seg.batch_start_before(pos + want)
                if stop > pos:
                    want = stop - pos
            data = seg.read(pos, want)
            infos, valid, rc = _bridge.scan(data, self.config.max_batch_size, True, expect)
            # Bytes below seg.size were validated once: damage means they
            # changed on disk.  The whole batches before it are still served,
            # so a reader gets everything up to the damaged batch itself.
            damaged = rc not in (0, _bridge.lib.PL_ETORN) or (not infos and len(data) == end - pos)
            out, first = [], None
            for bi in infos:
                if bi.last_offset < offset:
                    continue
                if upto is not None and bi.base_offset >= upto:
                    break
                if first is None:
                    first = bi.position
                elif bi.position + bi.size - first > max_bytes:
                    break
                out.append(bi)
            if out:
                last = out[-1]
                buf = (memoryview(data) if view else data)[first:last.position + last.size]
                for bi in out:
                    bi.position -= first
                return buf, out
            if damaged:
                raise CorruptRecordError("%s: %s at position %d" % (
                    seg.log_path, _bridge.SCAN_REASONS.get(rc, rc), pos + valid))
            if infos and (upto is None or infos[-1].base_offset < upto):
                pos += valid                    # all before offset: read on
                expect = infos[-1].next_offset
                continue
            if infos:
                break
            # The chunk holds no whole batch: read the first one whole.
            chunk = struct.unpack_from(">i", data, 8)[0] + 12 if len(data) >= 12 else chunk * 2
            bounded = False
        return b"", []

    def offsets_for_time(self, timestamp):
        """Earliest offset whose record timestamp is >= timestamp, or -1."""
        from .codec import decode_batch
        with self._mutex:
            segs = list(self._segments)
        for seg in segs:
            start = seg.lookup_time(timestamp)
            expect, pos = seg.lookup_entry(start)
            # expect: offsets are checked as in read(); damage before the
            # answer must not turn into a later (wrong) answer.
            infos, end, rc = seg.scan_from(pos, expect, self.config.max_batch_size, seg.size)
            for bi in infos:
                if bi.is_control or bi.max_timestamp < timestamp:
                    continue
                data = seg.read(bi.position, bi.size)
                for rec in decode_batch(data, _rebase(bi, -bi.position)):
                    if rec.timestamp >= timestamp:
                        return rec.offset
            if rc:
                raise CorruptRecordError("%s: %s at position %d" % (
                    seg.log_path, _bridge.SCAN_REASONS.get(rc, rc), end))
        return -1

    def batches(self, start_offset, end_offset=None):
        """Headers (BatchInfo, positions within their segment) of the batches
        overlapping [start_offset, end_offset), for replaying producer state."""
        with self._mutex:
            segs = list(self._segments)
        for seg in segs:
            if seg.next_offset is not None and seg.next_offset <= start_offset:
                continue
            if end_offset is not None and seg.base_offset >= end_offset:
                break
            expect, pos = seg.lookup_entry(start_offset)
            # expect: never yield a damaged baseOffset (it is outside the CRC).
            infos, _, _ = seg.scan_from(pos, expect, self.config.max_batch_size, seg.size)
            for bi in infos:
                if bi.last_offset < start_offset:
                    continue
                if end_offset is not None and bi.base_offset >= end_offset:
                    return
                yield seg, bi

    def truncate_to(self, offset):
        """Drop every batch at or after offset (used by recovery and tests)."""
        with self.locked():
            while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
                self._segments.pop().delete()
                self._bases.pop()
            self._segments[-1].truncate_to(offset)
            self._segments[-1].sync()
            fsutil.fsync_dir(self.path)
            self._write_recovery_point(*self._tail_point())

    def close(self):
        with self._mutex:
            if self._lock_fd is None:
                return
            try:
                if not self._failed and self._unsynced:
                    with self.locked():
                        self.sync(force=True)
                        self._write_recovery_point(*self._tail_point())
            finally:
                for seg in self._segments + [seg for _, seg in self._retired]:
                    seg.close()
                os.close(self._lock_fd)
                os.close(self._sync_fd)
                self._lock_fd = None

    def __repr__(self):
        return "PartitionLog(%s, segments=%d, next_offset=%s)" % (
            self.path, len(self._segments), self.next_offset)


def _rebase(bi, delta):
    bi.position += delta
    return bi
