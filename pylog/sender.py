"""The producer's write side: per-topic queues to batches to partition logs.

produce() only appends to a topic's deque (thread-safe, no lock): a bare
value for the common case (no key, headers, callback or timestamp), else a
tuple.  Draining a queue groups its records by partition (murmur2 for keys,
all of this round's keyless records to one sticky partition, as Kafka's
sticky partitioner does), encodes each group with one C call per batch,
stamps sequence numbers and writes through Partition.append, which runs the
producer-id/sequence checks under the partition lock.

Records queued with timestamp 0 get the time their queue last became
non-empty: at most linger.ms before the call that produced them.

Writers take the send lock and drain queues oldest record first, so each
partition's batches are written in sequence order.

With the C fast lane (pylog._fastprod, see producer.py) a TopicQueue and
its deque are C objects with the same attributes and deque methods.  A
queue of bare values is cut into batches by one C call (Deque.take_bare,
the cuts of _split_bare) and each batch is encoded by another (Encoder),
into a bytearray that _encode completes (producer id, epoch, sequence, CRC)
and the log stamps with its offset, both in place: no b"".join, no length
arrays, no copy.  Such batches are appended one per call, so the encoder's
one buffer is reused from batch to batch instead of fresh memory (page
faults) for everything taken.  With pylog.fsync=always those appends defer
their fsync (sync="defer", which also starts each one's writeback to the
device behind it) and one fsync after the last batch of a drain makes them
all durable before any is reported (group commit, Sender._append_each).
"""
import bisect
import collections
import itertools
import random
import threading
import time
from array import array

from . import compression
from ._bridge import Builder, raise_for, write_header
from ._native import ffi, lib
from .codec import ATTR_TRANSACTIONAL, seal
from .errors import KafkaError, KafkaException, StorageError
from .message import Message, TIMESTAMP_CREATE_TIME

SEQ_MODULO = 0x80000000         # base sequence wraps from 2^31-1 to 0
_BARE = {bytes}
NOT_WRITTEN = -1001
_FENCING = (KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED)
_FATAL_IDEMPOTENCE = (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.INVALID_PRODUCER_EPOCH,
                      KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError._FENCED)

try:
    from . import _fastprod
    _FastDeque = _fastprod.Deque
except ImportError:             # not built: only the Python TopicQueue below
    _fastprod = _FastDeque = None


class TopicQueue:
    """Records produced to one topic and not yet taken for writing."""

    __slots__ = ("topic", "nparts", "dq", "first_ts", "deadline", "bytes", "sticky", "kicked",
                 "room")

    def __init__(self, topic, nparts):
        self.topic = topic
        self.nparts = nparts
        self.dq = collections.deque()
        self.first_ts = 0
        self.deadline = 0.0
        self.bytes = 0
        self.sticky = random.randrange(nparts)
        self.kicked = False         # the sender was woken because the queue is full
        self.room = 0               # records this queue may take (see Producer._arm)


def fast_topic_queue(topic, nparts):
    """TopicQueue for the C fast lane: the same attributes, in C."""
    return _fastprod.TopicQueue(topic, nparts, random.randrange(nparts))


class _Batch:
    """Records of one partition on their way to the log."""

    __slots__ = ("topic", "partition", "recs", "ts0", "n", "raw")

    def __init__(self, topic, partition, recs, ts0, raw=None, n=0):
        self.topic = topic
        self.partition = partition
        # bare values, or (value, key, cb, timestamp, headers, encoded headers, header count);
        # () when raw holds the batch encoded already (bare values: no callbacks)
        self.recs = recs
        self.ts0 = ts0              # the timestamp of records queued without one
        self.raw = raw              # a Deque of n bare values from Deque.take_bare
        self.n = n if raw is not None else len(recs)


class Sender:
    def __init__(self, producer):
        self.p = producer
        c = producer._conf
        self.lock = threading.Lock()          # one writer at a time: keeps batch order
        self.reports = collections.deque()    # (callback, err, msg) for poll()
        self.report_cv = threading.Condition(threading.Lock())
        self.inflight = 0                     # records taken from queues, not yet reported
        self.seq = {}                         # (topic, partition) -> next base sequence
        self.batch_msgs = c["batch.num.messages"]
        self.batch_bytes = c["batch.size"]
        self.codec = producer._codec
        self.encoder = _fastprod.Encoder() if _fastprod is not None else None
        self.wake = threading.Event()
        self.thread = None

    def reset_sequences(self):
        self.seq.clear()

    # ---- the linger thread ----
    def start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="pylog-producer-sender", daemon=True)
            self.thread.start()

    def _loop(self):
        """Writes queues that are full or whose linger.ms ran out, like librdkafka's
        broker thread, so records reach the log without poll()."""
        p = self.p
        while not p._closed:
            now = time.monotonic()
            due, nxt = [], None
            for tq in list(p._queues.values()):
                if tq.dq:
                    if tq.deadline <= now or len(tq.dq) >= self.batch_msgs or tq.bytes >= self.batch_bytes:
                        due.append(tq)
                    elif nxt is None or tq.deadline < nxt:
                        nxt = tq.deadline
            if due:
                try:
                    self.send(due)
                except Exception:             # errors reach the delivery reports
                    pass
                continue
            self.wake.wait(1.0 if nxt is None else max(nxt - now, 0.0005))
            self.wake.clear()

    # ---- draining ----
    def send(self, queues):
        """Write everything queued in queues (a list of TopicQueue)."""
        with self.lock:
            batches = []
            for tq in queues:
                batches.extend(self._take(tq))
            if batches:
                self._write(batches)

    def _take(self, tq):
        dq = tq.dq
        n = len(dq)
        if not n:
            return []
        self.inflight += n                    # before popping: flush() must never see 0 + 0
        p = self.p
        cb0 = p._default_cb
        if dq.__class__ is _FastDeque:
            if cb0 is None and self.codec == compression.NONE:
                parts = dq.take_bare(n, self.batch_msgs, self.batch_bytes)
                if parts is not None:
                    tq.bytes = 0
                    tq.kicked = False
                    ts0 = tq.first_ts or time.time_ns() // 1000000
                    return self._stick(tq, [_Batch(tq.topic, -1, (), ts0, part, count)
                                            for part, count in parts])
            items = dq.popmany(n)
        else:
            pop = dq.popleft
            items = [pop() for _ in range(n)]
        tq.bytes = 0
        tq.kicked = False
        ts0 = tq.first_ts or time.time_ns() // 1000000
        if cb0 is None and set(map(type, items)) == _BARE:
            return self._stick(tq, self._split_bare(tq.topic, -1, items, ts0))
        recs, keys, key_lens, explicit = [], [], array("q"), []
        for it in items:
            if it.__class__ is bytes:
                recs.append((it, None, cb0, ts0, None, b"", 0))
                key_lens.append(-1)
                explicit.append(-1)
            else:
                value, key, partition, cb, ts, headers, hbytes, hcount = it
                recs.append((value, key, cb, ts or ts0, headers, hbytes, hcount))
                if key is not None and partition < 0:
                    keys.append(key)
                key_lens.append(-1 if key is None or partition >= 0 else len(key))
                explicit.append(partition)
        parts = ffi.new("int32_t[]", n)
        rc = lib.pl_partition_many(n, b"".join(keys), ffi.from_buffer("int64_t[]", key_lens),
                                   tq.nparts, -1, parts)
        if rc:
            raise_for(rc, "partitioner")
        chosen = [explicit[i] if explicit[i] >= 0 else parts[i] for i in range(n)]
        # Keyless records take the sticky partition a batch's worth at a time
        # (as _stick does), chosen before grouping, so that every partition
        # gets its records in produce() order whatever their kind.
        keyless = [i for i in range(n) if chosen[i] < 0]
        for start, stop in self._cuts([recs[i] for i in keyless]):
            for i in keyless[start:stop]:
                chosen[i] = tq.sticky
            self._rotate(tq)
        groups = collections.OrderedDict()
        for i in range(n):
            groups.setdefault(chosen[i], []).append(recs[i])
        out = []
        for part, group in groups.items():
            out.extend(self._split(tq.topic, part, group, ts0))
        return out

    def _stick(self, tq, batches):
        """Kafka's sticky partitioner: keyless records go to one partition until
        their batch is complete, then to another."""
        for b in batches:
            b.partition = tq.sticky
            self._rotate(tq)
        return batches

    @staticmethod
    def _rotate(tq):
        if tq.nparts > 1:
            tq.sticky = (tq.sticky + random.randrange(1, tq.nparts)) % tq.nparts

    def _split_bare(self, topic, partition, values, ts0):
        """_split for bare values: cut at batch.num.messages and at batch.size,
        finding the cuts with C-level running sums instead of a Python loop."""
        ends = list(itertools.accumulate(len(v) + 24 for v in values))
        out, start, base = [], 0, 0
        n = len(values)
        while start < n:
            # the first record past batch.size bytes from start (at least one record)
            stop = bisect.bisect_right(ends, base + self.batch_bytes, start + 1)
            stop = min(max(stop, start + 1), start + self.batch_msgs, n)
            out.append(_Batch(topic, partition, values[start:stop] if start or stop < n else values,
                              ts0))
            base = ends[stop - 1]
            start = stop
        return out

    def _cuts(self, recs):
        """[(start, stop)]: recs cut into batches within batch.num.messages/batch.size."""
        out, start, size = [], 0, 0
        for i, r in enumerate(recs):
            v = r if r.__class__ is bytes else r[0]
            rsize = (len(v) if v is not None else 0) + 24
            if i > start and (i - start >= self.batch_msgs or size + rsize > self.batch_bytes):
                out.append((start, i))
                start, size = i, 0
            size += rsize
        if recs:
            out.append((start, len(recs)))
        return out

    def _split(self, topic, partition, recs, ts0):
        """One partition's records as batches (see _cuts)."""
        return [_Batch(topic, partition, recs[a:b] if a or b < len(recs) else recs, ts0)
                for a, b in self._cuts(recs)]

    # ---- encoding and writing ----
    def _encode(self, b, seq):
        """The batch's bytes, with producer id, epoch and base sequence."""
        p = self.p
        recs, ts0 = b.recs, b.ts0
        if b.raw is not None:
            buf = self.encoder.encode(b.raw, ts0)
            # the header as pl_builder_finish writes it, and the CRC, in place
            write_header(buf, 0, ATTR_TRANSACTIONAL if p._txn is not None else 0, b.n - 1,
                         ts0, ts0, p._producer_id, p._producer_epoch,
                         seq if p._idempotent else -1, b.n)
            return buf
        if recs[0].__class__ is bytes:
            lens = array("q", map(len, recs))
            builder = Builder(64 + sum(lens) + 16 * len(recs))
            rc = lib.pl_builder_append_many(builder._b, len(recs), ts0, ffi.NULL, ffi.NULL, ffi.NULL,
                                            b"".join(recs), ffi.from_buffer("int64_t[]", lens),
                                            ffi.NULL, ffi.NULL, ffi.NULL)
        else:
            values = [r[0] for r in recs]
            keys = [r[1] for r in recs]
            builder = Builder(64 + 32 * len(recs) + sum(len(v) for v in values if v is not None))
            vlens = array("q", [-1 if v is None else len(v) for v in values])
            klens = array("q", [-1 if k is None else len(k) for k in keys])
            tss = array("q", [r[3] for r in recs])
            has_headers = any(r[6] for r in recs)
            hlens = array("q", [len(r[5]) for r in recs]) if has_headers else None
            hcounts = array("i", [r[6] for r in recs]) if has_headers else None
            rc = lib.pl_builder_append_many(
                builder._b, len(recs), ts0, ffi.from_buffer("int64_t[]", tss),
                b"".join(k for k in keys if k is not None), ffi.from_buffer("int64_t[]", klens),
                b"".join(v for v in values if v is not None), ffi.from_buffer("int64_t[]", vlens),
                b"".join(r[5] for r in recs) if has_headers else ffi.NULL,
                ffi.from_buffer("int64_t[]", hlens) if has_headers else ffi.NULL,
                ffi.from_buffer("int32_t[]", hcounts) if has_headers else ffi.NULL)
        if rc:
            raise_for(rc, "encode batch")
        return seal(builder, p._producer_id, p._producer_epoch, seq if p._idempotent else -1,
                    p._txn is not None, self.codec)

    def _write(self, batches):
        p = self.p
        by_part = collections.OrderedDict()
        for b in batches:
            by_part.setdefault((b.topic, b.partition), []).append(b)
        if p._txn is not None:
            err = p._txn.add_partitions(list(by_part))
            if err is not None:
                for b in batches:
                    self._report(b, NOT_WRITTEN, err)
                return
        for (topic, partition), group in by_part.items():
            self._write_partition(topic, partition, group)

    def _write_partition(self, topic, partition, group):
        p = self.p
        key = (topic, partition)
        first_seq = self.seq.get(key, 0)
        err, results, raw, seq = None, None, [], first_seq
        try:
            part = p._store.partition(topic, partition)
            if group[0].raw is not None or p._fsync == "always":
                # One batch per append (see the module docstring; with
                # fsync=always, one fsync for all of them): the same checks
                # and offsets as one append of the group; a failure leaves
                # the batches before it written and reported so.
                results = []
                self._append_each(part, group, seq, results)
            else:
                for b in group:
                    raw.append(self._encode(b, seq))
                    seq = (seq + b.n) % SEQ_MODULO
                results = part.append(raw, sync=p._fsync)
        except KafkaException as e:
            err = e.args[0]
            if p._idempotent and isinstance(e, StorageError):
                # The outcome is unknown (the bytes may be on disk): reusing
                # these sequence numbers could pair them with other records.
                p._set_fatal(err)
        next_seq = first_seq
        for i, b in enumerate(group):
            r = results[i] if results is not None and i < len(results) else None
            e = err if r is None else r.error
            if e is None and next_seq is not None:
                next_seq = (next_seq + b.n) % SEQ_MODULO
            elif e is not None:
                if next_seq is not None:
                    self.seq[key] = next_seq
                next_seq = None
                if p._txn is not None and e.code() in _FENCING:
                    e = KafkaError(KafkaError._FENCED, "Producer fenced by a newer instance: %s"
                                   % e.str(), fatal=True)
                if p._idempotent and e.code() in _FATAL_IDEMPOTENCE:
                    p._set_fatal(e)
                elif p._txn is not None:
                    p._txn.set_abortable(e)
            self._report(b, r.base_offset if r is not None and e is None else NOT_WRITTEN, e)
        if next_seq is not None:
            self.seq[key] = next_seq

    def _append_each(self, part, group, seq, results):
        """Append the batches one per call, extending results (the fast lane's
        always; the others with pylog.fsync=always: the memory of one batch's
        encoding is reused for the next instead of all of them being held).

        With pylog.fsync=always the appends do not fsync each (sync="defer"):
        one fsync after the last covers them all, before anything is
        reported.  If a batch fails, those before it are still fsynced (and
        reported written, as without fsync); if that fsync fails, none is."""
        always = self.p._fsync == "always"
        failure = None
        try:
            for b in group:
                results.extend(part.append([self._encode(b, seq)],
                                           sync="defer" if always else self.p._fsync))
                seq = (seq + b.n) % SEQ_MODULO
        except KafkaException as e:
            if not always:
                raise
            failure = e
        if always and any(r.appended for r in results):
            try:
                part.sync_deferred()
            except KafkaException as e:
                del results[:]              # not known to be durable: none counts as written
                if not isinstance(failure, StorageError):
                    failure = e             # the storage error is the one that matters
        if failure is not None:
            raise failure

    # ---- delivery reports ----
    def _report(self, b, base_offset, err):
        p = self.p
        only_error = p._dr_only_error
        reports = []
        topic, partition = b.topic, b.partition
        recs = b.recs
        if b.raw is not None or recs[0].__class__ is bytes and recs[-1].__class__ is bytes:
            recs = ()                            # bare values: no callbacks to call
        for i, r in enumerate(recs):
            if r.__class__ is bytes:
                continue                         # no callback was set
            value, key, cb, ts, headers, _, _ = r
            if cb is None or (only_error and err is None):
                continue
            reports.append((cb, err, Message(topic, partition,
                                             base_offset + i if err is None else NOT_WRITTEN,
                                             key, value, headers, ts, err, TIMESTAMP_CREATE_TIME)))
        with self.report_cv:
            self.reports.extend(reports)
            self.inflight -= b.n
            self.report_cv.notify_all()

    def serve(self):
        """Call queued delivery callbacks in this thread; returns how many."""
        served = 0
        reports = self.reports
        while True:
            try:
                cb, err, msg = reports.popleft()
            except IndexError:
                return served
            served += 1
            cb(err, msg)

    def purge(self, queues):
        """Drop everything queued; reports carry _PURGE_QUEUE."""
        with self.lock:
            err = KafkaError(KafkaError._PURGE_QUEUE, "Local: Purged in queue")
            for tq in queues:
                for b in self._take(tq):
                    self._report(b, NOT_WRITTEN, err)
