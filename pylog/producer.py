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
            if self._txn is not None:
                self._txn.on_produce(topic, partition)
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
                if self._idempotent and e.code() in (
                        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.INVALID_PRODUCER_EPOCH,
                        KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID):
                    self._set_fatal(e)
            self._report(b, r.base_offset if r is not None and e is None else -1001, e)
        if next_seq is not None and self._idempotent:
            self._seq[key] = next_seq

    def _seal(self, b, seq):
        transactional = self._txn is not None and self._txn.in_transaction()
        return seal(b.builder, self._producer_id, self._producer_epoch,
                    seq if self._idempotent else -1, transactional, self._codec)

    def _set_fatal(self, err):
        if self._fatal is None:
            self._fatal = KafkaError(KafkaError._FATAL, "Fatal error: %s: %s" % (err.name(), err.str()),
                                     fatal=True)

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


def _kafka_client(kind, conf):
    try:
        import confluent_kafka
    except ImportError:
        raise config.invalid(
            "bootstrap.servers %r names a Kafka cluster: install confluent-kafka to use one, "
            "or use file:///path for a pylog store" % conf.get("bootstrap.servers")) from None
    clean = {k: v for k, v in conf.items() if not k.startswith("pylog.")}
    return getattr(confluent_kafka, kind)(clean)
