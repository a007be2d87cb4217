"""Producer: confluent_kafka.Producer's API over a store directory.

produce() encodes the record straight into a C batch builder for its
partition (one cffi call).  A batch is written when it is full (batch.size,
batch.num.messages), when linger.ms has passed (a sender thread), or on
poll()/flush().  Writing goes through Partition.append, which runs Kafka's
producer-id/sequence checks under the partition lock, so a batch re-sent
after an unknown outcome is recognised and not written twice.

Sequence numbers are stamped when a batch is written, not when it is
filled, so purging unwritten batches leaves no gap.

Delivery reports (on_delivery(err, msg)) fire from poll(), flush() and
commit_transaction(), in the calling thread, as in confluent-kafka.
"""
import collections
import random
import threading
import time

from . import compression, config
from ._bridge import Builder
from ._native import ffi, lib
from .codec import encode_headers, seal
from .errors import KafkaError, KafkaException, StorageError
from .message import Message, TIMESTAMP_CREATE_TIME
from .store import Store

PARTITION_UA = -1
SEQ_MODULO = 0x80000000         # base sequence wraps from 2^31-1 to 0
_BATCH_OVERHEAD = 61 + 10       # header plus one record's worst-case framing


class _Batch:
    """Records for one partition, accumulating in a C builder."""

    __slots__ = ("topic", "partition", "builder", "msgs", "bytes", "deadline", "closed")

    def __init__(self, topic, partition, deadline):
        self.topic = topic
        self.partition = partition
        self.builder = Builder()
        self.msgs = []              # (callback, key, value, timestamp, headers) per record
        self.bytes = 0
        self.deadline = deadline    # monotonic time linger.ms ends
        self.closed = False


def _as_bytes(obj, what):
    if obj is None or isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError("%s must be bytes, str or None, not %s" % (what, type(obj).__name__))


class Producer:
    """A producer writing to a pylog store (bootstrap.servers = file:///dir).

    With a bootstrap.servers that is not a file: URL, Producer(conf) returns
    a confluent_kafka.Producer, so one program runs on a store or a cluster."""

    def __new__(cls, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        servers = conf.get("bootstrap.servers") or conf.get("metadata.broker.list")
        if isinstance(servers, str) and servers and not servers.startswith("file:"):
            return _kafka_client("Producer", conf)
        return super().__new__(cls)

    def __init__(self, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        self._conf = c = config.parse(conf, "producer")
        path = config.store_path(c)
        self._transactional_id = c["transactional.id"]
        self._idempotent = c["enable.idempotence"] or self._transactional_id is not None
        if self._idempotent and c["acks"] != "all" and c["acks"] != "-1":
            raise config.invalid("`acks` must be set to `all` when `enable.idempotence` is true")
        if self._idempotent and c["max.in.flight.requests.per.connection"] > 5 \
                and "max.in.flight.requests.per.connection" in conf:
            raise config.invalid("`max.in.flight` must be set <= 5 when `enable.idempotence` is true")
        self._store = Store.acquire(path, c)
        self._closed = False
        self._fsync = c["pylog.fsync"]
        self._linger = c["linger.ms"] / 1000.0
        self._batch_size = c["batch.size"]
        self._batch_msgs = c["batch.num.messages"]
        self._max_msg = c["message.max.bytes"]
        self._max_queue_msgs = c["queue.buffering.max.messages"]
        self._max_queue_bytes = c["queue.buffering.max.kbytes"] * 1024
        self._codec = compression.codec_id(c["compression.type"])
        self._default_cb = c["on_delivery"] or c["dr_msg_cb"]
        self._dr_only_error = c["delivery.report.only.error"]
        self._producer_id, self._producer_epoch = -1, -1
        if self._idempotent and self._transactional_id is None:
            meta = self._store.meta
            self._producer_id = meta.update(meta.next_producer_id)
            self._producer_epoch = 0
        self._fatal = None
        self._lock = threading.RLock()            # accumulator, counters
        self._send_lock = threading.Lock()        # keeps each partition's batches in order
        self._acc = {}                            # (topic, partition) -> open _Batch
        self._ready = collections.deque()         # closed batches in write order
        self._reports = collections.deque()       # (callback, err, msg)
        self._report_cv = threading.Condition(threading.Lock())
        self._queued_msgs = 0                     # produced, report not yet served
        self._queued_bytes = 0
        self._seq = {}                            # (topic, partition) -> next base sequence
        self._parts = {}                          # topic -> partition count
        self._sticky = {}                         # topic -> sticky partition for keyless records
        self._sender = None
        self._wake = threading.Event()
        self._txn = None                          # set by init_transactions (txn.py)

    # ---- producing ----
    def produce(self, topic, value=None, key=None, partition=PARTITION_UA, on_delivery=None,
                timestamp=0, headers=None, callback=None):
        """Queue one record; raises BufferError when the local queue is full
        and KafkaException for oversized records and unknown partitions."""
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        if self._closed:
            raise KafkaException(KafkaError(KafkaError._STATE, "Producer is closed"))
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        if type(partition) is not int:
            raise TypeError("partition must be int, not %s" % type(partition).__name__)
        if type(timestamp) is not int:
            raise TypeError("timestamp must be int (milliseconds), not %s" % type(timestamp).__name__)
        cb = on_delivery or callback or self._default_cb
        if cb is not None and not callable(cb):
            raise TypeError("on_delivery must be callable")
        if headers:
            hbytes, hcount = encode_headers(headers)
            headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        else:
            hbytes, hcount, headers = b"", 0, None
        nparts = self._parts.get(topic) or self._topic_partitions(topic)
        if partition == PARTITION_UA:
            if key is not None:
                partition = lib.pl_partition_for_key(key, len(key), nparts)
            else:
                partition = self._sticky.get(topic)
                if partition is None or partition >= nparts:
                    partition = self._sticky[topic] = random.randrange(nparts)
        elif not 0 <= partition < nparts:
            raise KafkaException(KafkaError(
                KafkaError._UNKNOWN_PARTITION,
                "Topic %s has partitions 0..%d, not %d" % (topic, nparts - 1, partition)))
        size = (0 if key is None else len(key)) + (0 if value is None else len(value)) + len(hbytes) + 24
        if size > self._max_msg:
            raise KafkaException(KafkaError(
                KafkaError.MSG_SIZE_TOO_LARGE,
                "Message size %d exceeds message.max.bytes %d" % (size, self._max_msg)))
        if timestamp <= 0:
            timestamp = time.time_ns() // 1000000
        with self._lock:
            if self._queued_msgs >= self._max_queue_msgs or \
                    self._queued_bytes + size > self._max_queue_bytes:
                raise BufferError("Local: Queue full")
            if self._txn is not None and self._txn.state != _IN_TXN:
                raise self._txn.not_in_txn("produce")
            b = self._acc.get((topic, partition))
            if b is not None and (len(b.msgs) >= self._batch_msgs or b.bytes + size > self._batch_size):
                self._close_batch(b)
                b = None
            if b is None:
                b = self._acc[(topic, partition)] = _Batch(topic, partition, time.monotonic() + self._linger)
                if self._sender is None:
                    self._start_sender()
                if len(self._acc) == 1:
                    self._wake.set()
            rc = lib.pl_builder_append(b.builder._b, timestamp, key if key is not None else ffi.NULL,
                                       -1 if key is None else len(key),
                                       value if value is not None else ffi.NULL,
                                       -1 if value is None else len(value), hbytes, len(hbytes), hcount)
            if rc:
                from ._bridge import raise_for
                raise_for(rc, "produce")
            b.msgs.append((cb, key, value, timestamp, headers))
            b.bytes += size
            self._queued_msgs += 1
            self._queued_bytes += size
        if self._ready and not self._send_lock.locked():
            self._send_ready()

    def _close_batch(self, b):
        """Move b from the accumulator to the ready queue (caller holds _lock)."""
        del self._acc[(b.topic, b.partition)]
        b.closed = True
        self._ready.append(b)
        if self._sticky.get(b.topic) == b.partition:
            n = self._parts.get(b.topic, 1)
            self._sticky[b.topic] = random.randrange(n) if n > 1 else 0

    def _topic_partitions(self, topic):
        desc = self._store.ensure_topic(topic)
        n = self._parts[topic] = desc["partitions"]
        return n

    # ---- writing ----
    def _start_sender(self):
        self._sender = threading.Thread(target=self._sender_loop, name="pylog-producer-linger",
                                        daemon=True)
        self._sender.start()

    def _sender_loop(self):
        """Writes batches whose linger.ms ran out, like librdkafka's broker thread."""
        while not self._closed:
            with self._lock:
                deadline = min((b.deadline for b in self._acc.values()), default=None)
            if deadline is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 1.0))
                continue
            try:
                self._flush_due(time.monotonic())
            except Exception:                      # reported through delivery reports
                pass

    def _flush_due(self, now, everything=False):
        with self._lock:
            for b in list(self._acc.values()):
                if everything or b.deadline <= now:
                    self._close_batch(b)
        self._send_ready()

    def _send_ready(self):
        """Write every ready batch, in order, one append per partition."""
        with self._send_lock:
            with self._lock:
                batches = list(self._ready)
                self._ready.clear()
            if not batches:
                return
            by_part = collections.OrderedDict()
            for b in batches:
                by_part.setdefault((b.topic, b.partition), []).append(b)
            if self._txn is not None:
                err = self._txn.add_partitions(list(by_part))
                if err is not None:
                    for b in batches:
                        self._report(b, -1001, err)
                    return
            for (topic, partition), group in by_part.items():
                self._write_partition(topic, partition, group)

    def _write_partition(self, topic, partition, group):
        key = (topic, partition)
        first_seq = self._seq.get(key, 0)
        err, results, raw, seq = None, None, [], first_seq
        try:
            part = self._store.partition(topic, partition)
            for b in group:
                raw.append(self._seal(b, seq))
                seq = (seq + len(b.msgs)) % SEQ_MODULO if self._idempotent else -1
            results = part.append(raw, sync=self._fsync)
        except KafkaException as e:
            err = e.args[0]
            if self._idempotent and isinstance(e, StorageError):
                # The outcome is unknown (the bytes may be on disk): reusing
                # these sequence numbers could pair them with other records.
                self._set_fatal(err)
        next_seq = first_seq
        for i, b in enumerate(group):
            r = results[i] if results is not None else None
            e = err if r is None else r.error
            if e is None and next_seq is not None:
                next_seq = (next_seq + len(b.msgs)) % SEQ_MODULO
            else:
                if next_seq is not None and self._idempotent:
                    self._seq[key] = next_seq
                next_seq = None
                if self._txn is not None and e.code() in (
                        KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED):
                    e = KafkaError(KafkaError._FENCED, "Producer fenced by a newer instance: %s"
                                   % e.str(), fatal=True)
                if self._idempotent and e.code() in (
                        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.INVALID_PRODUCER_EPOCH,
                        KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError._FENCED):
                    self._set_fatal(e)
                elif self._txn is not None:
                    self._txn.set_abortable(e)
            self._report(b, r.base_offset if r is not None and e is None else -1001, e)
        if next_seq is not None and self._idempotent:
            self._seq[key] = next_seq

    def _seal(self, b, seq):
        transactional = self._txn is not None
        return seal(b.builder, self._producer_id, self._producer_epoch,
                    seq if self._idempotent else -1, transactional, self._codec)

    def _set_fatal(self, err):
        if self._fatal is None:
            if err.fatal():
                self._fatal = err
            else:
                self._fatal = KafkaError(KafkaError._FATAL, "Fatal error: %s: %s" % (
                    err.name(), err.str()), fatal=True)
            if self._txn is not None:
                self._txn.state = _FATAL

    def _report(self, b, base_offset, err):
        reports = []
        for i, (cb, key, value, ts, headers) in enumerate(b.msgs):
            if cb is None or (self._dr_only_error and err is None):
                continue
            reports.append((cb, err, Message(b.topic, b.partition,
                                             base_offset + i if err is None else -1001,
                                             key, value, headers, ts, err, TIMESTAMP_CREATE_TIME)))
        with self._report_cv:
            self._reports.extend(reports)
            self._pending_done(len(b.msgs), b.bytes, len(reports))
            self._report_cv.notify_all()

    def _pending_done(self, nmsgs, nbytes, nreports):
        # Messages without a callback leave the queue now; the others when served.
        with self._lock:
            self._queued_msgs -= nmsgs - nreports
            self._queued_bytes -= nbytes

    # ---- transactions ----
    def init_transactions(self, timeout=None):
        """Get this transactional.id's producer id and a new epoch, finishing
        or aborting whatever a previous instance left (and fencing it)."""
        if self._transactional_id is None:
            raise KafkaException(KafkaError(KafkaError._NOT_CONFIGURED,
                                            "The Transactional API requires transactional.id to be configured"))
        self._raise_fatal()
        if self._txn is not None and self._txn.state != _INIT:
            raise KafkaException(KafkaError(KafkaError._STATE, "init_transactions() was already called"))
        coord = self._store.coordinator
        try:
            pid, epoch = coord.init_producer(self._transactional_id, self._conf["transaction.timeout.ms"])
        except KafkaException as e:
            raise KafkaException(_with_flags(e.args[0], retriable=e.args[0].retriable()))
        self._producer_id, self._producer_epoch = pid, epoch
        self._seq.clear()
        self._txn = _Txn(self, coord)
        self._txn.state = _READY

    def begin_transaction(self):
        self._raise_fatal()
        if self._txn is None or self._txn.state != _READY:
            raise KafkaException(KafkaError(KafkaError._STATE, "begin_transaction() needs the ready "
                                            "state (call init_transactions() first, and end the "
                                            "current transaction)"))
        self._txn.begin()

    def send_offsets_to_transaction(self, positions, group_metadata, timeout=None):
        """Stage the consumer's positions in the transaction: they become the
        group's committed offsets if and only if the transaction commits."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (_IN_TXN, _ABORTABLE):
            raise self._txn.not_in_txn("send_offsets_to_transaction") if self._txn else \
                KafkaException(KafkaError(KafkaError._STATE, "no transaction"))
        self._txn.raise_abortable()
        group = getattr(group_metadata, "group_id", None)
        if not group:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG,
                                            "group_metadata must come from consumer_group_metadata()"))
        offsets = [(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in positions
                   if tp.offset >= 0]
        if offsets:
            self._txn.call(lambda c, pid, ep: c.add_offsets(self._transactional_id, pid, ep, group, offsets))

    def commit_transaction(self, timeout=None):
        """Flush, then commit atomically: the records, on every partition,
        and any offsets sent to the transaction."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (_IN_TXN, _ABORTABLE):
            raise KafkaException(KafkaError(KafkaError._STATE, "commit_transaction() needs an open transaction"))
        self._txn.raise_abortable()
        left = self.flush(timeout)
        if left:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            "%d messages still queued at the timeout" % left, retriable=True))
        self._raise_fatal()
        self._txn.raise_abortable()
        self._txn.end(commit=True)

    def abort_transaction(self, timeout=None):
        """Drop what is not yet written, then abort: nothing of the
        transaction becomes visible to read_committed consumers."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (_IN_TXN, _ABORTABLE):
            raise KafkaException(KafkaError(KafkaError._STATE, "abort_transaction() needs an open transaction"))
        self.purge()
        self._serve()
        self._txn.end(commit=False)

    def _raise_fatal(self):
        if self._fatal is not None:
            raise KafkaException(self._fatal)

    # ---- serving delivery reports ----
    def poll(self, timeout=None):
        """Write due batches and serve delivery reports; returns how many were served."""
        self._flush_due(time.monotonic())
        served = self._serve()
        if served or timeout == 0:
            return served
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while len(self) and not served:
            with self._lock:
                nxt = min((b.deadline for b in self._acc.values()), default=None)
            wait = 0.05 if nxt is None else max(nxt - time.monotonic(), 0)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            with self._report_cv:
                if not self._reports:
                    self._report_cv.wait(wait)
            self._flush_due(time.monotonic())
            served = self._serve()
        return served

    def _serve(self):
        served = 0
        while True:
            with self._report_cv:
                if not self._reports:
                    return served
                cb, err, msg = self._reports.popleft()
            with self._lock:
                self._queued_msgs -= 1
            served += 1
            cb(err, msg)

    def flush(self, timeout=None):
        """Write everything queued and serve all delivery reports; returns the
        number of messages still queued (0 unless timeout ran out)."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        self._flush_due(0, everything=True)
        while True:
            self._serve()
            if not len(self):
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                return len(self)
            self._flush_due(0, everything=True)
            with self._report_cv:
                if not self._reports:
                    self._report_cv.wait(0.01)

    def __len__(self):
        return self._queued_msgs

    def __bool__(self):
        return True

    def purge(self, in_queue=True, in_flight=True, blocking=True):
        """Drop queued, unwritten messages; their delivery reports carry _PURGE_QUEUE."""
        if not in_queue:
            return
        with self._send_lock:
            with self._lock:
                batches = list(self._ready) + list(self._acc.values())
                self._ready.clear()
                self._acc.clear()
            err = KafkaError(KafkaError._PURGE_QUEUE, "Local: Purged in queue")
            for b in batches:
                self._report(b, -1001, err)

    def list_topics(self, topic=None, timeout=-1):
        from .admin import cluster_metadata
        return cluster_metadata(self._store, topic)

    def close(self, timeout=None):
        """Flush, then release the store.  Not in confluent-kafka (which uses
        garbage collection); idempotent."""
        if self._closed:
            return 0
        left = self.flush(timeout)
        self._closed = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(2.0)
        self._store.release()
        return left

    def __del__(self):
        try:
            if not getattr(self, "_closed", True):
                self._closed = True
                self._wake.set()
        except Exception:
            pass


_INIT, _READY, _IN_TXN, _ABORTABLE, _FATAL = "Init", "Ready", "InTransaction", "AbortableError", "FatalError"


def _with_flags(err, **flags):
    return KafkaError(err.code(), err.str(), fatal=flags.get("fatal", err.fatal()),
                      retriable=flags.get("retriable", err.retriable()),
                      txn_requires_abort=flags.get("txn_requires_abort", err.txn_requires_abort()))


class _Txn:
    """The producer side of a transactional.id: state and partitions added."""

    def __init__(self, producer, coordinator):
        self.p = producer
        self.coord = coordinator
        self.state = _INIT
        self.added = set()
        self.error = None

    def not_in_txn(self, what):
        return KafkaException(KafkaError(KafkaError._STATE, "%s() is not allowed in state %s: "
                                         "a transactional producer writes only inside a "
                                         "transaction" % (what, self.state)))

    def begin(self):
        self.state = _IN_TXN
        self.added.clear()
        self.error = None

    def set_abortable(self, err):
        if self.state == _IN_TXN:
            self.state = _ABORTABLE
            self.error = err

    def raise_abortable(self):
        if self.state == _ABORTABLE:
            raise KafkaException(KafkaError(
                KafkaError.TRANSACTION_ABORTABLE if self.error is None else self.error.code(),
                "The transaction must be aborted: %s" % (self.error.str() if self.error else ""),
                txn_requires_abort=True))

    def call(self, fn):
        """Run a coordinator call; fencing makes the producer fatal."""
        p = self.p
        try:
            return fn(self.coord, p._producer_id, p._producer_epoch)
        except KafkaException as e:
            err = e.args[0]
            if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
                p._set_fatal(err)
                raise KafkaException(p._fatal) from None
            raise

    def add_partitions(self, parts):
        """Register parts with the coordinator before writing to them;
        returns the error to report, or None."""
        new = [tp for tp in parts if tp not in self.added]
        if not new:
            return None
        try:
            self.call(lambda c, pid, ep: c.add_partitions(self.p._transactional_id, pid, ep, new))
        except KafkaException as e:
            if not e.args[0].fatal():
                self.set_abortable(e.args[0])
            return e.args[0]
        self.added.update(new)
        return None

    def in_transaction(self):
        return self.state in (_IN_TXN, _ABORTABLE)

    def end(self, commit):
        p = self.p
        epoch = self.call(lambda c, pid, ep: c.end_txn(p._transactional_id, pid, ep, commit))
        p._producer_epoch = epoch           # KIP-890: every end bumps the epoch
        p._seq.clear()
        self.state = _READY
        self.added.clear()
        self.error = None


def _kafka_client(kind, conf):
    try:
        import confluent_kafka
    except ImportError:
        raise config.invalid(
            "bootstrap.servers %r names a Kafka cluster: install confluent-kafka to use one, "
            "or use file:///path for a pylog store" % conf.get("bootstrap.servers")) from None
    clean = {k: v for k, v in conf.items() if not k.startswith("pylog.")}
    return getattr(confluent_kafka, kind)(clean)
