"""Producer: confluent_kafka.Producer's API over a store directory.

produce() validates and queues; pylog.sender encodes and writes.  A topic's
queue is written when it holds batch.num.messages records or batch.size
bytes, when linger.ms has passed (a sender thread, as librdkafka's broker
thread), or on poll()/flush().  Writes go through Partition.append, which
runs Kafka's producer-id/sequence checks under the partition lock, so a
batch re-sent after an unknown outcome is recognised and not written twice.
Sequence numbers are stamped when a batch is written, not when it is
filled, so purging unwritten records leaves no gap.

Delivery reports (on_delivery(err, msg)) fire from poll(), flush() and
commit_transaction(), in the calling thread, as in confluent-kafka.

The C fast lane (csrc/fastprod.c, pylog._fastprod) replaces produce() with
a builtin bound to the producer (the instance attribute `produce`) that
queues the common shapes of record itself and hands every other call, and
every call that may raise or must arm, recount or kick a queue, to the
produce() below; the topic queues and their draining into batches are in C
too (see sender.py).  PYLOG_NO_FASTPROD=1 in the environment when a Producer
is created, or a build without the module, keeps the pure Python path.
"""
import os
import time

from . import compression, config
from .codec import encode_headers
from .errors import KafkaError, KafkaException
from .producer_txn import ABORTABLE, FATAL, IN_TXN, INIT, READY, ProducerTxn, with_flags
from .metrics import StatsEmitter
from .sender import Sender, TopicQueue, fast_topic_queue
from .store import Store

try:
    from . import _fastprod
except ImportError:             # not built: the Python path
    _fastprod = None

PARTITION_UA = -1
_RECORD_OVERHEAD = 24           # worst-case framing of one record (varints, attributes)


def fastprod_enabled():
    """Whether a Producer created now uses the C fast lane."""
    return _fastprod is not None and os.environ.get("PYLOG_NO_FASTPROD", "") in ("", "0")


def _queued(value, key, partition, cb, timestamp, headers, hbytes, hcount):
    """What _produce_slow queues: the record as a tuple, or the bare value when
    that is all it is (as the short path queues it), e.g. the first record of
    a new topic, so that the drain it is in can take the bare-value lane."""
    if (key is None and partition == PARTITION_UA and cb is None and not timestamp
            and headers is None and value.__class__ is bytes):
        return value
    return (value, key, partition, cb, timestamp, headers, hbytes, hcount)


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
    a confluent_kafka.Producer, so one program runs on a store or a cluster.
    Thread-safe, like confluent-kafka's."""

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
        if self._idempotent and c["acks"] not in ("all", "-1"):
            raise config.invalid("`acks` must be set to `all` when `enable.idempotence` is true")
        if self._idempotent and "max.in.flight.requests.per.connection" in conf \
                and c["max.in.flight.requests.per.connection"] > 5:
            raise config.invalid("`max.in.flight` must be set <= 5 when `enable.idempotence` is true")
        self._store = Store.acquire(path, c)
        self._closed = False
        self._fatal = None
        self._fsync = c["pylog.fsync"]
        self._linger = c["linger.ms"] / 1000.0
        self._max_msg = c["message.max.bytes"]
        self._max_value = self._max_msg - _RECORD_OVERHEAD
        self._max_queue_msgs = c["queue.buffering.max.messages"]
        self._max_queue_bytes = c["queue.buffering.max.kbytes"] * 1024
        self._batch_msgs = c["batch.num.messages"]
        self._batch_bytes = c["batch.size"]
        self._codec = compression.codec_id(c["compression.type"])
        self._default_cb = c["on_delivery"] or c["dr_msg_cb"]
        self._dr_only_error = c["delivery.report.only.error"]
        self._producer_id, self._producer_epoch = -1, -1
        if self._idempotent and self._transactional_id is None:
            meta = self._store.meta
            # durable: a power loss must not hand this id out again (a second
            # producer at epoch 0, sequence 0 would look like our duplicate)
            self._producer_id = meta.update(meta.next_producer_id, durable=True)
            self._producer_epoch = 0
        self._queues = {}                         # topic -> TopicQueue
        self._txn = None
        self._sender = Sender(self)
        self._stats = StatsEmitter(self, "producer", c)     # stats_cb, statistics.interval.ms
        self._fast = False
        self._lane = None
        if fastprod_enabled() and type(self).produce is Producer.produce:
            self._lane = _fastprod.Lane(self._queues, Producer.produce.__get__(self, type(self)),
                                        self._max_value, self._max_msg, self._max_queue_bytes,
                                        self._batch_msgs, self._batch_bytes, self._sender,
                                        self._max_queue_msgs)
            self.produce = self._lane.produce       # shadows the method below
        self._update_fast_path()

    def _update_fast_path(self):
        """produce() takes its short path only when nothing needs checking."""
        self._fast = (self._fatal is None and not self._closed and self._default_cb is None and
                      (self._txn is None and self._transactional_id is None or
                       self._txn is not None and self._txn.state == IN_TXN))
        if self._lane is not None:
            self._lane.fast = self._fast

    # ---- producing ----
    def produce(self, topic, value=None, key=None, partition=PARTITION_UA, on_delivery=None,
                timestamp=0, headers=None, callback=None):
        """Queue one record; raises BufferError when the local queue is full
        and KafkaException for oversized records and unknown partitions.

        (With the C fast lane, calls reach this method only through it: see
        csrc/fastprod.c for the cases it queues itself.)"""
        tq = self._queues.get(topic)
        if (key is None and value.__class__ is bytes and tq is not None and self._fast
                and partition == -1 and on_delivery is None and callback is None
                and headers is None and not timestamp):
            if len(value) > self._max_value:
                raise self._too_large(len(value) + _RECORD_OVERHEAD)
            dq = tq.dq
            n = len(dq)
            if not n:
                self._arm(tq)
            elif n >= tq.room or tq.bytes > self._max_queue_bytes:
                self._check_room(tq)
            dq.append(value)
            tq.bytes += len(value)
            if n >= self._batch_msgs and not tq.kicked:
                tq.kicked = True
                self._sender.wake.set()
            return
        self._produce_slow(topic, value, key, partition, on_delivery or callback, timestamp, headers)

    def _produce_slow(self, topic, value, key, partition, cb, timestamp, headers):
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        if self._closed:
            raise KafkaException(KafkaError(KafkaError._STATE, "Producer is closed"))
        if self._txn is not None and self._txn.state != IN_TXN or \
                self._txn is None and self._transactional_id is not None:
            raise (self._txn.not_in_txn("produce") if self._txn else KafkaException(KafkaError(
                KafkaError._STATE, "produce() before init_transactions() on a transactional producer")))
        if topic.__class__ is not str:
            raise TypeError("topic must be str, not %s" % type(topic).__name__)
        if value is not None and value.__class__ is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and key.__class__ is not bytes:
            key = _as_bytes(key, "key")
        if type(partition) is not int:
            raise TypeError("partition must be int, not %s" % type(partition).__name__)
        if type(timestamp) is not int:
            raise TypeError("timestamp must be int (milliseconds), not %s" % type(timestamp).__name__)
        if timestamp < 0:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "timestamp must be >= 0"))
        cb = cb or self._default_cb
        if cb is not None and not callable(cb):
            raise TypeError("on_delivery must be callable")
        if headers:
            hbytes, hcount = encode_headers(headers)
            headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        else:
            hbytes, hcount, headers = b"", 0, None
        tq = self._queues.get(topic) or self._queue_for(topic)
        if partition != PARTITION_UA and not 0 <= partition < tq.nparts:
            raise KafkaException(KafkaError(
                KafkaError._UNKNOWN_PARTITION,
                "Topic %s has partitions 0..%d, not %d" % (topic, tq.nparts - 1, partition)))
        size = (0 if key is None else len(key)) + (0 if value is None else len(value)) + len(hbytes)
        if size + _RECORD_OVERHEAD > self._max_msg:
            raise self._too_large(size + _RECORD_OVERHEAD)
        dq = tq.dq
        n = len(dq)
        if not n:
            self._arm(tq)                           # counts the queue (may raise BufferError)
        elif n >= tq.room or tq.bytes + size > self._max_queue_bytes:
            self._check_room(tq)
        dq.append(_queued(value, key, partition, cb, timestamp, headers, hbytes, hcount))
        tq.bytes += size
        if (len(dq) >= self._batch_msgs or tq.bytes >= self._batch_bytes) and not tq.kicked:
            tq.kicked = True
            self._sender.wake.set()

    def _too_large(self, size):
        return KafkaException(KafkaError(
            KafkaError.MSG_SIZE_TOO_LARGE,
            "Message size %d exceeds message.max.bytes %d" % (size, self._max_msg)))

    def _arm(self, tq):
        """A queue became non-empty: start its linger clock, and work out how
        many records it may take before queue.buffering.max.messages, counting
        the other topics' queues, records being written and delivery reports
        not yet served (librdkafka counts a message until its report is served).
        The short path of produce() checks against that figure; it is
        refreshed once per batch, here and by the sender."""
        self._check_room(tq)
        tq.first_ts = time.time_ns() // 1000000
        tq.deadline = time.monotonic() + self._linger
        if self._sender.thread is None:
            self._sender.start()
        self._sender.wake.set()

    def _check_room(self, tq):
        """Recount (the short path's figure may be stale) and raise BufferError if full.

        With one topic the figure can only be too small (records leave, none
        arrive elsewhere), so it is kept until reached.  With several, other
        queues grow behind its back: it then allows one record at a time."""
        n = len(tq.dq)
        room = self._max_queue_msgs - (len(self) - n)
        tq.room = room if len(self._queues) == 1 else min(room, n + 1)
        if n >= room or tq.bytes > self._max_queue_bytes:
            raise BufferError("Local: Queue full")

    def _queue_for(self, topic):
        desc = self._store.ensure_topic(topic)
        tq = self._queues.get(topic)
        if tq is None:
            tq = self._queues[topic] = (TopicQueue if self._lane is None else fast_topic_queue)(
                topic, desc["partitions"])
            for other in self._queues.values():   # several queues: see _check_room
                other.room = 0
        return tq

    def _set_fatal(self, err):
        if self._fatal is None:
            self._fatal = err if err.fatal() else KafkaError(
                KafkaError._FATAL, "Fatal error: %s: %s" % (err.name(), err.str()), fatal=True)
            if self._txn is not None:
                self._txn.state = FATAL
            self._update_fast_path()

    def _raise_fatal(self):
        if self._fatal is not None:
            raise KafkaException(self._fatal)

    # ---- transactions ----
    def init_transactions(self, timeout=None):
        """Get this transactional.id's producer id and a new epoch, finishing
        or aborting whatever a previous instance left (and fencing it)."""
        if self._transactional_id is None:
            raise KafkaException(KafkaError(KafkaError._NOT_CONFIGURED,
                                            "The Transactional API requires transactional.id to be configured"))
        self._raise_fatal()
        if self._txn is not None and self._txn.state != INIT:
            raise KafkaException(KafkaError(KafkaError._STATE, "init_transactions() was already called"))
        coord = self._store.coordinator
        try:
            pid, epoch = coord.init_producer(self._transactional_id, self._conf["transaction.timeout.ms"])
        except KafkaException as e:
            raise KafkaException(with_flags(e.args[0], retriable=e.args[0].retriable())) from None
        self._producer_id, self._producer_epoch = pid, epoch
        self._sender.reset_sequences()
        self._txn = ProducerTxn(self, coord)
        self._txn.set_state(READY)

    def begin_transaction(self):
        self._raise_fatal()
        if self._txn is None or self._txn.state != READY:
            raise KafkaException(KafkaError(KafkaError._STATE, "begin_transaction() needs the ready "
                                            "state (call init_transactions() first, and end the "
                                            "current transaction)"))
        self._txn.begin()

    def send_offsets_to_transaction(self, positions, group_metadata, timeout=None):
        """Stage the consumer's positions in the transaction: they become the
        group's committed offsets if and only if the transaction commits."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (IN_TXN, ABORTABLE):
            raise KafkaException(KafkaError(KafkaError._STATE,
                                            "send_offsets_to_transaction() needs an open transaction"))
        self._txn.raise_abortable()
        group = getattr(group_metadata, "group_id", None)
        if not group:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG,
                                            "group_metadata must come from consumer_group_metadata()"))
        offsets = [(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in positions if tp.offset >= 0]
        if offsets:
            generation = getattr(group_metadata, "generation_id", -1)
            member_id = getattr(group_metadata, "member_id", "")
            try:
                self._txn.call(lambda c, pid, ep: c.add_offsets(
                    self._transactional_id, pid, ep, group, offsets, generation, member_id))
            except KafkaException as e:
                if e.args[0].txn_requires_abort():
                    self._txn.set_abortable(e.args[0])
                raise

    def commit_transaction(self, timeout=None):
        """Flush, then commit atomically: the records, on every partition,
        and any offsets sent to the transaction."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (IN_TXN, ABORTABLE):
            raise KafkaException(KafkaError(KafkaError._STATE, "commit_transaction() needs an open transaction"))
        self._txn.raise_abortable()
        try:
            # The small-transaction case: records still queued travel in the
            # commit point itself (ProducerTxn.commit_unsent).
            if self._txn.commit_unsent():
                self.flush(timeout)                 # their delivery reports
                return
        except KafkaException as e:
            if e.args[0].txn_requires_abort():
                self._txn.set_abortable(e.args[0])
            raise
        left = self.flush(timeout)
        if left:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                            "%d messages still queued at the timeout" % left, retriable=True))
        self._raise_fatal()
        self._txn.raise_abortable()
        try:
            self._txn.end(commit=True)
        except KafkaException as e:
            if e.args[0].txn_requires_abort():      # e.g. our consumer was expelled
                self._txn.set_abortable(e.args[0])
            raise

    def abort_transaction(self, timeout=None):
        """Drop what is not yet written, then abort: nothing of the
        transaction becomes visible to read_committed consumers."""
        self._raise_fatal()
        if self._txn is None or self._txn.state not in (IN_TXN, ABORTABLE):
            raise KafkaException(KafkaError(KafkaError._STATE, "abort_transaction() needs an open transaction"))
        self.purge()
        self._sender.serve()
        self._txn.end(commit=False)

    # ---- delivery reports and flushing ----
    def _send_due(self, everything):
        now = time.monotonic()
        due = [tq for tq in list(self._queues.values())
               if tq.dq and (everything or tq.deadline <= now)]
        if due:
            self._sender.send(due)

    def poll(self, timeout=None):
        """Write due batches and serve delivery reports; returns how many were served."""
        if self._stats.enabled:
            self._stats.maybe_emit()
        self._send_due(False)
        served = self._sender.serve()
        if served or timeout == 0:
            return served
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        cv = self._sender.report_cv
        while len(self):
            wait = 0.05
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            with cv:
                if not self._sender.reports:
                    cv.wait(wait)
            self._send_due(False)
            served = self._sender.serve()
            if served:
                break
        return served

    def flush(self, timeout=None):
        """Write everything queued and serve all delivery reports; returns the
        number of messages still queued (0 unless timeout ran out)."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        if self._stats.enabled:
            self._stats.maybe_emit()
        while True:
            self._send_due(True)
            self._sender.serve()
            if not len(self):
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                return len(self)
            with self._sender.report_cv:
                if not self._sender.reports:
                    self._sender.report_cv.wait(0.01)

    def __len__(self):
        """Records queued, being written, or with a delivery report not yet served."""
        s = self._sender
        return sum(len(tq.dq) for tq in list(self._queues.values())) + s.inflight + len(s.reports)

    def __bool__(self):
        return True

    def purge(self, in_queue=True, in_flight=True, blocking=True):
        """Drop queued, unwritten records; their delivery reports carry _PURGE_QUEUE."""
        if in_queue:
            self._sender.purge(list(self._queues.values()))

    def list_topics(self, topic=None, timeout=-1):
        from .admin import cluster_metadata
        return cluster_metadata(self._store, topic)

    def close(self, timeout=None):
        """Flush, then release the store.  (confluent-kafka relies on garbage
        collection instead; pylog holds files and locks, so close explicitly.)
        Idempotent; returns the number of records left unflushed."""
        if self._closed:
            return 0
        left = self.flush(timeout)
        if self._txn is not None and self._txn.state == READY:
            try:
                self._txn.sync_markers()
                self._store.coordinator.finish(self._transactional_id, self._producer_id,
                                               self._producer_epoch)
            except KafkaException:
                pass                            # fenced meanwhile: nothing of ours to finish
        if self._txn is not None:
            self._txn.close()
        self._closed = True
        self._update_fast_path()
        self._sender.wake.set()
        if self._sender.thread is not None:
            self._sender.thread.join(2.0)
        self._store.release()
        return left

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kafka_client(kind, conf):
    try:
        import confluent_kafka
    except ImportError:
        raise config.invalid(
            "bootstrap.servers %r names a Kafka cluster: install confluent-kafka to use one, "
            "or use file:///path for a pylog store" % conf.get("bootstrap.servers")) from None
    clean = {k: v for k, v in conf.items() if not k.startswith("pylog.")}
    return getattr(confluent_kafka, kind)(clean)
