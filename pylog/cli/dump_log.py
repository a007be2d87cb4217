"""pylog dump-log: kafka-dump-log.sh (DumpLogSegments) for pylog files.

--files takes .log, .index and .timeindex files (several, or comma
separated as in Kafka).  A .log prints one line per batch, plus one per
record with --deep-iteration (--print-data-log adds keys and payloads and
implies it).  Batches are read by their length field, as Kafka does, so a
batch whose CRC fails is printed with isvalid: false; bytes after the last
whole batch are reported as invalid.

Index semantics differ from Kafka's in one way: a pylog .index entry names
the batch that starts at its offset (Kafka's names the batch ending
there), and a .timeindex entry (T, O) says that every record before offset
O has a timestamp <= T.  --verify-index-only checks the entries against
the log by those rules; --index-sanity-check runs the checks opening a
segment runs.

--producer-state and --aborted-index print a partition's producer state
and aborted-transaction index (from LMDB plus the log) in the shape of
Kafka's .snapshot and .txnindex dumps; they need --topic and --partition.

Mismatches and failed checks go to stderr after the dump, as in Kafka;
unlike Kafka, they also make the exit status 1.
"""
import mmap
import os
import struct
import sys

from .. import _bridge, codec, format
from .common import CliError, check_partition, open_store

_CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_IDX = struct.Struct(">ii")
_TIDX = struct.Struct(">qi")
HEADER = _bridge.HEADER_SIZE


def add_parser(sub, parents):
    p = sub.add_parser("dump-log", parents=parents, help="print segment, index and state files")
    p.add_argument("--files", nargs="+", default=[], metavar="FILE",
                   help=".log, .index or .timeindex files (also comma separated)")
    p.add_argument("--print-data-log", action="store_true", help="print keys and payloads")
    p.add_argument("--deep-iteration", action="store_true", help="print every record")
    p.add_argument("--skip-record-metadata", action="store_true")
    p.add_argument("--verify-index-only", action="store_true")
    p.add_argument("--index-sanity-check", action="store_true")
    p.add_argument("--max-bytes", type=int, default=None, help="read at most this much of each .log")
    p.add_argument("--producer-state", action="store_true", help="a partition's producer state")
    p.add_argument("--aborted-index", action="store_true", help="a partition's aborted transactions")
    p.add_argument("--topic")
    p.add_argument("--partition", type=int)
    p.set_defaults(func=run)


def run(args):
    files = [f for arg in args.files for f in arg.split(",") if f]
    if not files and not (args.producer_state or args.aborted_index):
        raise CliError("Missing required argument \"[files]\" (or --producer-state/--aborted-index)")
    if (args.producer_state or args.aborted_index) and (not args.topic or args.partition is None):
        raise CliError("--producer-state and --aborted-index need --topic and --partition")
    problems = Problems()
    for path in files:
        if not os.path.isfile(path):
            raise CliError("%s: no such file" % path)
    for path in files:
        print("Dumping %s" % path)
        if path.endswith(format.LOG_SUFFIX):
            dump_log(path, args, problems)
        elif path.endswith(format.TIMEINDEX_SUFFIX):
            dump_time_index(path, args, problems)
        elif path.endswith(format.INDEX_SUFFIX):
            dump_index(path, args, problems)
        else:
            sys.stderr.write("Ignoring unknown file %s\n" % path)
    if args.producer_state or args.aborted_index:
        dump_partition_state(args)
    problems.report()
    return 1 if problems.any() else 0


class Problems:
    """What Kafka prints to stderr after the dump: index mismatches,
    non-consecutive offsets, failed sanity checks."""

    def __init__(self):
        self.index = {}             # path -> [(index offset, log offset)]
        self.time = {}              # path -> [(index ts, log ts)]
        self.time_order = {}        # path -> [(ts, previous ts)]
        self.time_missing = {}      # path -> [(index offset, found)]
        self.gaps = {}              # path -> [(offset, next offset)]
        self.errors = []

    def any(self):
        return any((self.index, self.time, self.time_order, self.time_missing, self.gaps, self.errors))

    def report(self):
        w = sys.stderr.write
        for path, items in self.index.items():
            w("Mismatches in :%s\n" % path)
            for a, b in items:
                w("  Index offset: %d, log offset: %s\n" % (a, b))
        for path, items in self.time.items():
            w("Found timestamp mismatch in :%s\n" % path)
            for a, b in items:
                w("  Index timestamp: %d, log timestamp: %d\n" % (a, b))
        for path, items in self.time_order.items():
            w("Found out of order timestamp in :%s\n" % path)
            for a, b in items:
                w("  Index timestamp: %d, Previously indexed timestamp: %d\n" % (a, b))
        for items in self.time_missing.values():
            w("The following indexed offsets are not found in the log.\n")
            for a, b in items:
                w("Indexed offset: %d, found log offset: %d\n" % (a, b))
        for path, items in self.gaps.items():
            w("Non-consecutive offsets in %s\n" % path)
            for a, b in items:
                w("  %d is followed by %d\n" % (a, b))
        for e in self.errors:
            w(e + "\n")


# ---- .log ----
def read_batches(path, max_bytes=None):
    """(batches, file size, end of the last whole batch): batches are
    (position, BatchInfo at position 0 of raw, raw bytes, crc valid)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if max_bytes is not None:
        data = data[:max_bytes]
    out, pos = [], 0
    while pos + HEADER <= len(data):
        blen = struct.unpack_from(">i", data, pos + 8)[0]
        if blen < HEADER - 12 or pos + blen + 12 > len(data) or data[pos + 16] != 2:
            break
        raw = data[pos:pos + blen + 12]
        bi = _bridge.parse_header(raw)
        out.append((pos, bi, raw, _bridge.crc32c(memoryview(raw)[21:]) == bi.crc))
        pos += len(raw)
    return out, size, pos


def batch_line(pos, bi, valid):
    ts_type = "LogAppendTime" if bi.attributes & codec.ATTR_LOG_APPEND_TIME else "CreateTime"
    horizon = "OptionalLong[%d]" % bi.base_timestamp if bi.attributes & 0x40 else "OptionalLong.empty"
    return ("baseOffset: %d lastOffset: %d count: %d baseSequence: %d lastSequence: %d "
            "producerId: %d producerEpoch: %d partitionLeaderEpoch: %d isTransactional: %s "
            "isControl: %s deleteHorizonMs: %s position: %d %s: %d size: %d magic: 2 "
            "compresscodec: %s crc: %d isvalid: %s" % (
                bi.base_offset, bi.last_offset, bi.records_count, bi.base_sequence,
                bi.last_sequence, bi.producer_id, bi.producer_epoch, bi.partition_leader_epoch,
                _b(bi.is_transactional), _b(bi.is_control), horizon, pos, ts_type,
                bi.max_timestamp, bi.size, _CODECS.get(bi.compression, "unknown"), bi.crc,
                _b(valid)))


def _b(v):
    return "true" if v else "false"


def _text(data):
    return data.decode("utf-8", "replace")


def record_lines(bi, raw, args):
    ts_type = "LogAppendTime" if bi.attributes & codec.ATTR_LOG_APPEND_TIME else "CreateTime"
    for rec in codec.decode_batch(raw, bi):
        delta = rec.offset - bi.base_offset
        seq = -1 if bi.base_sequence < 0 else (bi.base_sequence + delta) % 0x80000000
        line = ""
        if not args.skip_record_metadata:
            line = ("| offset: %d %s: %d keySize: %d valueSize: %d sequence: %d headerKeys: [%s]"
                    % (rec.offset, ts_type, rec.timestamp, -1 if rec.key is None else len(rec.key),
                       -1 if rec.value is None else len(rec.value), seq,
                       ",".join(k for k, _ in rec.headers)))
            if bi.is_control:
                line += _control(rec)
        if args.print_data_log and not bi.is_control:
            prefix = "| " if args.skip_record_metadata else " "
            if rec.key is not None:
                line += prefix + "key: " + _text(rec.key)
                prefix = " "
            if rec.value is not None:
                line += prefix + "payload: " + _text(rec.value)
        yield rec.offset, line


def _control(rec):
    key, value = rec.key or b"", rec.value or b""
    ctype = struct.unpack_from(">h", key, 2)[0] if len(key) >= 4 else -1
    if ctype in (codec.CONTROL_ABORT, codec.CONTROL_COMMIT):
        epoch = struct.unpack_from(">i", value, 2)[0] if len(value) >= 6 else -1
        return " endTxnMarker: %s coordinatorEpoch: %d" % (
            "COMMIT" if ctype == codec.CONTROL_COMMIT else "ABORT", epoch)
    return " controlType: UNKNOWN(%d)" % ctype


def dump_log(path, args, problems):
    base = format.parse_segment_name(os.path.basename(path))
    print("Log starting offset: %d" % (base or 0))
    batches, size, end = read_batches(path, args.max_bytes)
    deep = args.deep_iteration or args.print_data_log
    last = (base or 0) - 1
    for pos, bi, raw, valid in batches:
        print(batch_line(pos, bi, valid))
        if not deep:
            continue
        try:
            for offset, line in record_lines(bi, raw, args):
                if offset != last + 1:
                    problems.gaps.setdefault(os.path.abspath(path), []).append((last, offset))
                last = offset
                print(line)
        except Exception as e:          # a damaged batch: say so, go on with the next
            problems.errors.append("%s: cannot decode the records of the batch at position %d: %s"
                                   % (path, pos, e))
    if end < size and args.max_bytes is None:
        print("Found %d invalid bytes at the end of %s" % (size - end, os.path.basename(path)))


# ---- indexes ----
def _segment_log(path):
    stem = os.path.basename(path).split(".")[0]
    base = format.parse_segment_name(stem + format.LOG_SUFFIX)
    if base is None:
        raise CliError("%s is not named by a 20-digit base offset" % path)
    log = os.path.join(os.path.dirname(os.path.abspath(path)), stem + format.LOG_SUFFIX)
    if not os.path.isfile(log):
        raise CliError("%s has no log file %s" % (path, log))
    return base, log


def _read_entries(path, entry):
    with open(path, "rb") as f:
        raw = f.read()
    return raw, [entry.unpack_from(raw, i) for i in range(0, len(raw) - len(raw) % entry.size,
                                                            entry.size)]


def _batch_starts(log):
    """{base offset: (position, max timestamp before it in the segment)}."""
    batches, _, _ = read_batches(log)
    starts, running = {}, -1
    for pos, bi, _, _ in batches:
        starts[bi.base_offset] = (pos, running)
        running = max(running, bi.max_timestamp)
    return starts, {pos: bi.base_offset for pos, bi, _, _ in batches}


def dump_index(path, args, problems):
    base, log = _segment_log(path)
    raw, entries = _read_entries(path, _IDX)
    if not entries and not raw:
        print("%s is empty." % path)
        return
    starts, by_pos = _batch_starts(log)
    if args.index_sanity_check:
        reason = _index_insane(raw, entries, base, os.path.getsize(log), by_pos)
        if reason:
            problems.errors.append("Corrupt index found, index file (%s) %s" % (path, reason))
        else:
            print("%s passed sanity check." % path)
        return
    for i, (rel, pos) in enumerate(entries):
        offset = base + rel
        if offset == base and i > 0:
            break                       # Kafka: zero-filled tail of a preallocated file
        found = by_pos.get(pos)
        if found != offset:
            problems.index.setdefault(os.path.abspath(path), []).append(
                (offset, "none" if found is None else found))
        if not args.verify_index_only:
            print("offset: %d position: %d" % (offset, pos))


def _index_insane(raw, entries, base, log_size, by_pos):
    if len(raw) % _IDX.size:
        return "has a length of %d bytes, not a multiple of %d" % (len(raw), _IDX.size)
    for i in range(1, len(entries)):
        if entries[i][0] <= entries[i - 1][0] or entries[i][1] <= entries[i - 1][1]:
            return "has entries out of order at entry %d" % i
    if entries and (entries[0][0] < 0 or entries[0][1] < 0):
        return "has a negative first entry"
    if entries and entries[-1][1] + HEADER > log_size:
        return "points past the end of the log (position %d of %d bytes)" % (entries[-1][1], log_size)
    if entries and by_pos.get(entries[-1][1]) != base + entries[-1][0]:
        return "has a last entry (offset %d) that names no batch starting there" % (base + entries[-1][0])
    return None


def dump_time_index(path, args, problems):
    base, log = _segment_log(path)
    raw, entries = _read_entries(path, _TIDX)
    if not entries and not raw:
        print("%s is empty." % path)
        return
    starts, _ = _batch_starts(log)
    if args.index_sanity_check:
        reason = None
        if len(raw) % _TIDX.size:
            reason = "has a length of %d bytes, not a multiple of %d" % (len(raw), _TIDX.size)
        elif any(entries[i][0] <= entries[i - 1][0] or entries[i][1] <= entries[i - 1][1]
                 for i in range(1, len(entries))):
            reason = "has entries out of order"
        if reason:
            problems.errors.append("Corrupt time index found, time index file (%s) %s" % (path, reason))
        else:
            print("%s passed sanity check." % path)
        return
    key = os.path.abspath(path)
    prev = -1
    for i, (ts, rel) in enumerate(entries):
        offset = base + rel
        if offset == base and i > 0:
            break
        start = starts.get(offset)
        if start is None:
            later = [o for o in starts if o >= offset]
            problems.time_missing.setdefault(key, []).append((offset, min(later) if later else -1))
        else:
            if start[1] != ts:
                problems.time.setdefault(key, []).append((ts, start[1]))
            if prev >= ts:
                problems.time_order.setdefault(key, []).append((ts, prev))
        if not args.verify_index_only:
            print("timestamp: %d offset: %d" % (ts, offset))
        prev = ts


# ---- producer state and aborted index ----
def dump_partition_state(args):
    with open_store(args) as store:
        check_partition(store, args.topic, args.partition)
        part = store.partition(args.topic, args.partition)
        part.refresh()
        meta = store.meta
        if args.producer_state:
            print("Dumping producer state of %s-%d" % (args.topic, args.partition))
            with part.log._mutex:
                entries = sorted(part.state.entries.items())
                open_txns = dict(part.state.open_txns)
            for pid, e in entries:
                first = open_txns.get(pid)
                line = ("producerId: %d producerEpoch: %d coordinatorEpoch: %d currentTxnFirstOffset: "
                        "%s lastTimestamp: %d" % (pid, e.producer_epoch, e.coordinator_epoch,
                                                  "OptionalLong.empty" if first is None
                                                  else "OptionalLong[%d]" % first, e.last_timestamp))
                if e.n:
                    b = e.batches[e.n - 1]
                    line += (" firstSequence: %d lastSequence: %d lastOffset: %d offsetDelta: %d "
                             "timestamp: %d" % (b.first_seq, b.last_seq, b.last_offset,
                                                b.offset_delta, b.timestamp))
                print(line)
        if args.aborted_index:
            print("Dumping aborted transaction index of %s-%d" % (args.topic, args.partition))
            entries = dict(meta.view(lambda txn: _aborted(meta, txn, part.pk)))
            with part.log._mutex:
                for pid, first, last, lso in part.state.new_aborted:
                    entries[(last, pid)] = (first, lso)
            for (last, pid), (first, lso) in sorted(entries.items()):
                print("version: 0 producerId: %d firstOffset: %d lastOffset: %d lastStableOffset: %d"
                      % (pid, first, last, lso))


def _aborted(meta, txn, pk):
    """[((last_offset, producer_id), (first_offset, lso))] of one partition
    (meta.aborted_txns drops the lso, which this dump shows)."""
    out = []
    with txn.cursor(db=meta.db["aborted"]) as cur:
        if cur.set_range(pk):
            for k, v in cur:
                if not k.startswith(pk) or len(k) != len(pk) + 16:
                    break
                out.append((struct.unpack_from(">qq", k, len(pk)), struct.unpack(">qq", v)))
    return out
