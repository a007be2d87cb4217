"""One segment: a .log file of whole record batches plus its sparse indexes.

A segment covers offsets [base_offset, next_offset).  The .log holds batches
back to back; the indexes (layouts in format.py) are derived data: recovery
and lazy loading check them against the log and rebuild them when they do
not match, so they are never fsynced on the append path.

This class is not thread-safe: the owning PartitionLog serialises calls.
"""
import bisect
import logging
import os
import struct
from array import array

from . import _bridge, failpoints, format, fsutil
from .errors import CorruptRecordError, StorageError

log = logging.getLogger("pylog.segment")

_IDX = struct.Struct(">ii")
_TIDX = struct.Struct(">qi")
_SCAN_CHUNK = 8 << 20           # bytes read at a time when validating a segment
_WRITEBACK_MIN = 1 << 20        # bytes written before start_writeback starts a writeback
_SYNC_FILE_RANGE_WRITE = 2      # <fcntl.h>: start writeback, do not wait for it

try:                            # Linux: sync_file_range(2), which os does not wrap
    import ctypes
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    _sync_file_range.restype = ctypes.c_int
except (ImportError, OSError, AttributeError):
    _sync_file_range = None


class Segment:
    def __init__(self, dirpath, base_offset, index_interval=4096, create=False):
        self.dir = dirpath
        self.base_offset = base_offset
        self.index_interval = index_interval
        self.log_path = os.path.join(dirpath, format.segment_name(base_offset, format.LOG_SUFFIX))
        self.index_path = os.path.join(dirpath, format.segment_name(base_offset, format.INDEX_SUFFIX))
        self.timeindex_path = os.path.join(
            dirpath, format.segment_name(base_offset, format.TIMEINDEX_SUFFIX))
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(self.log_path, flags, 0o644)
        self.size = 0 if create else os.fstat(self.fd).st_size
        self.next_offset = base_offset if create else None   # None: not yet known
        self._idx_fd = self._tidx_fd = None
        self._idx_off = array("q")          # absolute offsets of indexed batches
        self._idx_pos = array("q")
        self._tidx_ts = array("q")
        self._tidx_off = array("q")
        self._index_loaded = create
        self._since_index = 0
        self.max_timestamp = -1             # largest batch timestamp appended (if known)
        self._first_timestamp = None
        self._writeback_from = self.size    # start_writeback has started it below here

    # ---- appending ----
    def append(self, data, infos):
        """Write data (whole batches, offsets assigned; bytes, or a list of
        buffers written with one writev) at the end; update indexes.

        infos: the batches' BatchInfo with positions relative to data.  On a
        failed or short write the file is cut back to its old size and
        StorageError is raised."""
        self._ensure_index()
        start = self.size
        total = len(data) if not isinstance(data, list) else sum(len(d) for d in data)
        try:
            failpoints.hit("log.write")
            n = os.write(self.fd, data) if not isinstance(data, list) else os.writev(self.fd, data)
            if n != total:
                raise OSError("short write: %d of %d bytes" % (n, total))
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise StorageError("write to %s failed: %s" % (self.log_path, e)) from e
        self.size = start + total
        self.next_offset = infos[-1].next_offset
        if self._first_timestamp is None and start == 0:
            self._first_timestamp = infos[0].max_timestamp
        self._index_batches(infos, start)

    def _index_batches(self, infos, base_position, write=True):
        """Add index entries for batches (positions relative to base_position)."""
        idx, tidx = [], []
        for bi in infos:
            if self._since_index >= self.index_interval:
                pos = base_position + bi.position
                self._idx_off.append(bi.base_offset)
                self._idx_pos.append(pos)
                idx.append(_IDX.pack(bi.base_offset - self.base_offset, pos))
                if self.max_timestamp > (self._tidx_ts[-1] if self._tidx_ts else -1):
                    self._tidx_ts.append(self.max_timestamp)
                    self._tidx_off.append(bi.base_offset)
                    tidx.append(_TIDX.pack(self.max_timestamp, bi.base_offset - self.base_offset))
                self._since_index = 0
            self._since_index += bi.size
            if bi.max_timestamp > self.max_timestamp:
                self.max_timestamp = bi.max_timestamp
        if write and idx:
            self._write_index(b"".join(idx), b"".join(tidx))

    def _write_index(self, idx, tidx):
        # Index entries are hints: a crash may lose them (rebuilt on open)
        # and a failed write here loses nothing, so errors are logged only.
        try:
            if self._idx_fd is None:
                self._open_index_files()
            failpoints.hit("index.append")
            os.write(self._idx_fd, idx)
            if tidx:
                failpoints.hit("index.append.time")
                os.write(self._tidx_fd, tidx)
        except OSError as e:
            log.warning("cannot write index of %s: %s", self.log_path, e)

    def _open_index_files(self):
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        idx_fd = os.open(self.index_path, flags, 0o644)
        try:
            tidx_fd = os.open(self.timeindex_path, flags, 0o644)
        except OSError:
            os.close(idx_fd)        # both or neither: _write_index tests _idx_fd only
            raise
        self._idx_fd, self._tidx_fd = idx_fd, tidx_fd

    # ---- reading ----
    def read(self, position, length):
        return fsutil.pread_exact(self.fd, length, position)

    def lookup(self, offset):
        """Byte position of the last indexed batch starting at or before offset."""
        return self.lookup_entry(offset)[1]

    def lookup_entry(self, offset):
        """(base offset, byte position) of the last indexed batch starting at
        or before offset, else the segment start.  baseOffset is outside the
        CRC: a reader scanning from here checks the offsets against this one."""
        self._ensure_index()
        i = bisect.bisect_right(self._idx_off, offset)
        return (self._idx_off[i - 1], self._idx_pos[i - 1]) if i else (self.base_offset, 0)

    def batch_start_before(self, limit):
        """The position of the last indexed batch starting at or before byte
        limit, else 0: where a read may stop without cutting a batch."""
        self._ensure_index()
        positions = self._idx_pos          # (truncate and reindex may replace or cut it)
        i = bisect.bisect_right(positions, limit)
        try:
            return positions[i - 1] if i else 0
        except IndexError:
            return 0

    def lookup_time(self, timestamp):
        """Offset from which to scan for the first record with ts >= timestamp.

        A time index entry (T, O) means every record before offset O has a
        timestamp <= T, so the scan may start at the last O whose T < timestamp."""
        self._ensure_index()
        i = bisect.bisect_left(self._tidx_ts, timestamp)
        return self._tidx_off[i - 1] if i else self.base_offset

    def largest_timestamp(self):
        """The largest batch timestamp in the segment (retention.ms clock).

        The time index covers the batches before its last entry; the ones
        after the last offset-index entry (at most index.interval.bytes and a
        batch) are read."""
        self._ensure_index()
        pos = self._idx_pos[-1] if self._idx_pos else 0
        infos, _, _ = self.scan_from(pos, -1, 0x7FFFFFFF, self.size)
        return max([self._tidx_ts[-1] if self._tidx_ts else -1] +
                   [bi.max_timestamp for bi in infos])

    def first_timestamp(self):
        """maxTimestamp of the first batch (the segment.ms roll clock), or None."""
        if self._first_timestamp is None and self.size >= _bridge.HEADER_SIZE:
            head = self.read(0, _bridge.HEADER_SIZE)
            if len(head) == _bridge.HEADER_SIZE:
                self._first_timestamp = _bridge.parse_header(head).max_timestamp
        return self._first_timestamp

    # ---- validation and recovery ----
    def scan_from(self, position, expect_offset, max_batch_size, end=None):
        """Validate batches from position to end (default: file size).

        Yields nothing; returns (infos with absolute positions, valid_end, rc)."""
        end = os.fstat(self.fd).st_size if end is None else end
        infos = []
        pos = position
        while pos < end:
            chunk = self.read(pos, min(_SCAN_CHUNK, end - pos))
            found, valid, rc = _bridge.scan(chunk, max_batch_size, True, expect_offset)
            for bi in found:
                bi.position += pos
            infos.extend(found)
            if found:
                expect_offset = found[-1].next_offset
            pos += valid
            if rc == 0:
                continue
            if rc == _bridge.lib.PL_ETORN and valid < len(chunk) and pos + 12 <= end:
                # The chunk cut a batch: read from its start with room for all of it.
                blen = struct.unpack_from(">i", chunk, valid + 8)[0] + 12
                if pos + blen <= end and blen > len(chunk) - valid:
                    big = self.read(pos, blen)
                    found, valid, rc = _bridge.scan(big, max_batch_size, True, expect_offset)
                    if rc == 0 and found:
                        found[0].position += pos
                        infos.append(found[0])
                        expect_offset = found[0].next_offset
                        pos += valid
                        continue
            return infos, pos, rc
        return infos, pos, 0

    def recover(self, max_batch_size, from_position=0, max_ts_before=-1, from_offset=None):
        """Validate from from_position (a batch start) to the end of the file,
        cut off the first invalid batch and all after it, and rebuild the index
        entries from from_position on.  max_ts_before is the largest timestamp
        of the batches before from_position, from_offset the offset that
        starts there (the recovery point records both).
        Returns the number of bytes removed."""
        failpoints.hit("recovery.segment")
        self._index_loaded = True
        index_ok = self._load_index()
        if from_position and from_offset is not None and \
                from_position == os.fstat(self.fd).st_size:
            expect = from_offset            # a clean tail: nothing past the recovery point
        else:
            expect = self.base_offset if from_position == 0 else self._offset_at(from_position)
        if from_offset is not None and expect != from_offset:
            # baseOffset is outside the CRC: a damaged one at the recovery
            # point would let the scan accept it and renumber the log from there.
            expect = None
        if from_position and not (index_ok and self._index_consistent()):
            # The entries below from_position are kept, not re-derived: a
            # damaged index file would go on sending lookups to wrong bytes.
            expect = None
        if expect is None:                  # the recovery point is past a shorter file
            from_position, expect, max_ts_before = 0, self.base_offset, -1
        infos, valid_end, rc = self.scan_from(from_position, expect, max_batch_size)
        removed = os.fstat(self.fd).st_size - valid_end
        if removed:
            log.warning("%s: truncating %d bytes at position %d (%s)", self.log_path,
                        removed, valid_end, _bridge.SCAN_REASONS.get(rc, rc))
            failpoints.hit("recovery.truncate")
            os.ftruncate(self.fd, valid_end)
        self.size = valid_end
        self.next_offset = infos[-1].next_offset if infos else expect
        self._rebuild_index_from(from_position, expect, infos, max_ts_before)
        return removed

    def _offset_at(self, position):
        head = self.read(position, _bridge.HEADER_SIZE)
        if len(head) < _bridge.HEADER_SIZE:
            return None
        return _bridge.parse_header(head).base_offset

    def _rebuild_index_from(self, position, offset, infos, max_ts_before):
        """Keep the index entries below position (whose batch starts at offset),
        derive the rest from infos (absolute positions) and rewrite the files."""
        failpoints.hit("index.rebuild")
        # From position 0 nothing loaded is kept (bisect needs sorted entries,
        # which a damaged file need not be).
        keep = bisect.bisect_left(self._idx_pos, position) if position else 0
        tkeep = bisect.bisect_left(self._tidx_off, offset) if position else 0
        unchanged = (not infos and keep == len(self._idx_pos) and tkeep == len(self._tidx_off))
        del self._idx_off[keep:]
        del self._idx_pos[keep:]
        del self._tidx_ts[tkeep:]
        del self._tidx_off[tkeep:]
        self.max_timestamp = max(max_ts_before, self._tidx_ts[-1] if self._tidx_ts else -1)
        # Force an entry at position unless it is the segment start (implicit).
        self._since_index = self.index_interval if position else 0
        self._index_batches(infos, 0, write=False)
        if unchanged and position:
            # A clean tail: the files already say this; rewriting them would
            # make every open cost time in proportion to the segment.
            if self._idx_fd is None:
                self._open_index_files()
            return
        self._save_index()

    def _save_index(self):
        idx = b"".join(_IDX.pack(o - self.base_offset, p)
                       for o, p in zip(self._idx_off, self._idx_pos))
        tidx = b"".join(_TIDX.pack(t, o - self.base_offset)
                        for t, o in zip(self._tidx_ts, self._tidx_off))
        for fd in (self._idx_fd, self._tidx_fd):
            if fd is not None:
                os.close(fd)
        self._idx_fd = self._tidx_fd = None
        try:
            fsutil.write_atomic(self.index_path, idx, durable=False)
            failpoints.hit("index.save.between")
            fsutil.write_atomic(self.timeindex_path, tidx, durable=False)
            self._open_index_files()
        except OSError as e:
            # The entries in memory are right and the files are hints (as in
            # _write_index): a full disk, or another process's open removing
            # our .tmp, must not fail a read.  Remove the files so the next
            # open rebuilds them instead of trusting a stale pair;
            # _write_index reopens them when it next has entries.
            log.warning("cannot save index of %s: %s", self.log_path, e)
            for path in (self.index_path, self.timeindex_path):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _ensure_index(self):
        """Load the index files on first use; rebuild them if they contradict the log."""
        if self._index_loaded:
            return
        self._index_loaded = True
        if not self._load_index() or not self._index_consistent():
            log.info("%s: rebuilding damaged index", self.index_path)
            self._reindex()
        elif self.next_offset is None:
            # A closed segment: its end offset is the last batch's.
            self.next_offset = self._last_offset_from_index()

    def _reindex(self):
        """Re-derive both indexes from the whole log (stops at the first bad batch)."""
        self._idx_off, self._idx_pos = array("q"), array("q")
        self._tidx_ts, self._tidx_off = array("q"), array("q")
        infos, _, _ = self.scan_from(0, self.base_offset, 0x7FFFFFFF, self.size)
        self._rebuild_index_from(0, self.base_offset, infos, -1)
        if self.next_offset is None:
            self.next_offset = infos[-1].next_offset if infos else self.base_offset

    def _load_index(self):
        ok = True
        for path, entry in ((self.index_path, format.INDEX_ENTRY),
                            (self.timeindex_path, format.TIMEINDEX_ENTRY)):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raw = b""
                ok = ok and self.size <= self.index_interval
            if len(raw) % entry:
                raw = raw[:len(raw) - len(raw) % entry]
                ok = False
            if entry == format.INDEX_ENTRY:
                for rel, pos in _IDX.iter_unpack(raw):
                    self._idx_off.append(self.base_offset + rel)
                    self._idx_pos.append(pos)
            else:
                for ts, rel in _TIDX.iter_unpack(raw):
                    self._tidx_ts.append(ts)
                    self._tidx_off.append(self.base_offset + rel)
        if self._tidx_ts:
            self.max_timestamp = self._tidx_ts[-1]
        return ok

    def _index_consistent(self):
        """Entries strictly increasing, inside the log, and the last one really
        names a batch starting at its offset (one header read)."""
        offs, poss = self._idx_off, self._idx_pos
        for i in range(1, len(offs)):
            if offs[i] <= offs[i - 1] or poss[i] <= poss[i - 1]:
                return False
        if any(o < self.base_offset for o in offs[:1]) or any(p < 0 for p in poss[:1]):
            return False
        if poss and poss[-1] + _bridge.HEADER_SIZE > self.size:
            return False
        if poss and self._offset_at(poss[-1]) != offs[-1]:
            return False
        ts, tos = self._tidx_ts, self._tidx_off
        if not all(ts[i] > ts[i - 1] and tos[i] > tos[i - 1] for i in range(1, len(ts))):
            return False
        # Every time index entry is written with an offset index entry for
        # the same batch, so its offset must be one the offset index knows.
        return set(tos) <= set(offs)

    def _last_offset_from_index(self):
        pos = self._idx_pos[-1] if self._idx_pos else 0
        infos, _, _ = self.scan_from(pos, -1, 0x7FFFFFFF, self.size)
        return infos[-1].next_offset if infos else self.base_offset

    def truncate_to(self, offset):
        """Remove every batch whose base offset is at or after offset."""
        self._ensure_index()
        infos, _, _ = self.scan_from(self.lookup(offset), -1, 0x7FFFFFFF, self.size)
        cut = next((bi.position for bi in infos if bi.base_offset >= offset), self.size)
        if cut == self.size:
            return
        failpoints.hit("truncate")
        os.ftruncate(self.fd, cut)
        self.size = cut
        self.next_offset = None
        # Cut to empty, the first batch is gone: a stale value would run the
        # segment.ms clock from a batch no longer here (re-read lazily).
        self._first_timestamp = None
        self._reindex()

    # ---- durability and lifetime ----
    def start_writeback(self):
        """Start writing the bytes appended since the last call to the device,
        without waiting (sync_file_range SYNC_FILE_RANGE_WRITE), once there
        are at least _WRITEBACK_MIN of them, in whole pages.  For a writer that
        fsyncs after several appends: the device works while it encodes and
        writes the next ones, and the fsync finds less left to do.  Durability
        still comes only from sync(); a failure here shows up there too, so
        errors are ignored.  A no-op where sync_file_range is missing."""
        end = self.size & ~4095
        start = min(self._writeback_from, end)      # the file may have been cut back
        if _sync_file_range is None or end - start < _WRITEBACK_MIN:
            self._writeback_from = start
            return
        self._writeback_from = end
        _sync_file_range(self.fd, start, end - start, _SYNC_FILE_RANGE_WRITE)

    def sync(self):
        try:
            fsutil.fsync(self.fd)
        except OSError as e:
            raise StorageError("fsync of %s failed: %s" % (self.log_path, e)) from e

    def close(self):
        for fd in (self.fd, self._idx_fd, self._tidx_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self._idx_fd = self._tidx_fd = None

    def delete(self):
        self.close()
        for p in (self.log_path, self.index_path, self.timeindex_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def __repr__(self):
        return "Segment(%s, size=%d, next_offset=%s)" % (self.log_path, self.size, self.next_offset)
