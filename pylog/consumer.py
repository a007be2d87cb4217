"""Consumer: confluent_kafka.Consumer's API over a store directory.

Reading.  A fetch reads whole CRC-checked batches from a partition log and
decodes each batch in C.  read_committed reads only below the last stable
offset and drops aborted transactions with Kafka's algorithm: the aborted
entries overlapping the fetch are queued by first offset; when a batch of
producer P reaches an entry's first offset, P joins the aborted set; P's
ABORT marker removes it; transactional batches of producers in the set are
skipped whole.  Control batches never reach the application.

Groups.  subscribe() makes this consumer a member of its group, shared
with members in other processes through LMDB (see pylog.group for the
rebalance protocol, liveness and fencing).
"""
import collections
import gc
import threading
import time

from . import _bridge, config
from .codec import decode_control, records_region, CONTROL_ABORT
from .errors import KafkaError, KafkaException
from .message import (Message, TopicPartition, fastmsg, OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID,
                      OFFSET_STORED, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME)
from .group import Member
from .metrics import StatsEmitter
from .store import Store

_FIELDS = _bridge.REC_FIELDS

# Message objects built in C (csrc/fastmsg.c); the Python loop in
# _decode_batches is the fallback, and runs when PYLOG_NO_FASTMSG is set.
_decode_messages = fastmsg.decode_messages if fastmsg is not None else None


class GroupMetadata:
    """What consumer_group_metadata() returns, for send_offsets_to_transaction."""

    def __init__(self, group_id, generation_id=-1, member_id="", group_instance_id=None):
        self.group_id = group_id
        self.generation_id = generation_id
        self.member_id = member_id
        self.group_instance_id = group_instance_id

    def __repr__(self):
        return "GroupMetadata(%s, generation=%d, member=%r)" % (
            self.group_id, self.generation_id, self.member_id)


class _Fetch:
    """One assigned partition: where to read next and what is decoded but not yet returned.

    Decoded messages wait in `buffer` from index `head` on: a list, so a fetch
    decodes straight into it and consume() hands out runs of it with one slice
    (or the list itself) rather than a Python step per message."""

    __slots__ = ("tp", "part", "position", "paused", "eof_sent", "buffer", "head")

    def __init__(self, tp, part, position):
        self.tp = tp
        self.part = part
        self.position = position       # next offset to hand out; OFFSET_INVALID until resolved
        self.paused = False
        self.eof_sent = False
        self.buffer = []
        self.head = 0

    def pending(self):
        return len(self.buffer) - self.head

    def pop(self):
        """The next message (pending() > 0)."""
        m = self.buffer[self.head]
        self.head += 1
        if self.head == len(self.buffer):
            self.buffer, self.head = [], 0
        return m

    def take(self, k):
        """The next k (<= pending()) messages, as a list."""
        buf, head = self.buffer, self.head
        if head == 0 and k == len(buf):
            self.buffer = []
            return buf
        self.head = head + k
        if self.head == len(buf):
            self.buffer, self.head = [], 0
        return buf[head:head + k]

    def clear(self):
        self.buffer, self.head = [], 0


class Consumer:
    """A consumer reading from a pylog store (bootstrap.servers = file:///dir)."""

    def __new__(cls, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        servers = conf.get("bootstrap.servers")
        if isinstance(servers, str) and servers and not servers.startswith("file:"):
            from .producer import _kafka_client
            return _kafka_client("Consumer", conf)
        return super().__new__(cls)

    def __init__(self, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        if not conf.get("group.id"):
            raise ValueError("Failed to create consumer: group.id must be set")
        self._conf = c = config.parse(conf, "consumer")
        if "\x00" in c["group.id"]:
            raise config.invalid("group.id must not contain NUL characters")
        self._group = c["group.id"]
        self._store = Store.acquire(config.store_path(c), c)
        self._meta = self._store.meta
        self._stats = StatsEmitter(self, "consumer", c)     # stats_cb, statistics.interval.ms
        # Every process with the store open rolls crashed commits forward and
        # enforces transaction.timeout.ms: readers too, or an LSO could stay stuck.
        self._store.coordinator
        self._committed_only = c["isolation.level"] == "read_committed"
        self._reset = {"smallest": OFFSET_BEGINNING, "earliest": OFFSET_BEGINNING,
                       "beginning": OFFSET_BEGINNING, "largest": OFFSET_END, "latest": OFFSET_END,
                       "end": OFFSET_END, "error": None}[c["auto.offset.reset"]]
        self._auto_commit = c["enable.auto.commit"]
        self._auto_commit_interval = c["auto.commit.interval.ms"] / 1000.0
        self._auto_store = c["enable.auto.offset.store"]
        self._partition_eof = c["enable.partition.eof"]
        self._max_bytes = c["max.partition.fetch.bytes"]
        self._on_commit = c["on_commit"]
        self._lock = threading.RLock()
        self._fetches = collections.OrderedDict()   # (topic, partition) -> _Fetch
        self._stored = {}                           # (topic, partition) -> offset to commit
        self._events = collections.deque()          # error/EOF Messages to hand out
        self._subscription = None                   # (topics, on_assign, on_revoke, on_lost)
        self._member = None                         # pylog.group.Member once subscribed
        self._last_poll = time.monotonic()
        self._next_auto_commit = time.monotonic() + self._auto_commit_interval
        self._rr = 0
        self._hot = None                            # the _Fetch poll() serves from first
        self._assigned_in_callback = False
        self._revoked_now = set()                   # partitions revoked during this consume()
        self._closed = False

    # ---- assignment ----
    def assign(self, partitions):
        """Read exactly these partitions (offsets: explicit, or committed / reset)."""
        self._check_open()
        self._assigned_in_callback = True
        with self._lock:
            self._hot = None
            self._fetches.clear()
            for tp in self._tps(partitions):
                self._add(tp)

    def incremental_assign(self, partitions):
        self._check_open()
        self._assigned_in_callback = True
        with self._lock:
            for tp in self._tps(partitions):
                if (tp.topic, tp.partition) in self._fetches:
                    raise KafkaException(KafkaError(KafkaError._CONFLICT,
                                                    "%s [%d] is already assigned" % (tp.topic, tp.partition)))
                self._add(tp)

    def incremental_unassign(self, partitions):
        self._check_open()
        with self._lock:
            self._hot = None
            for tp in self._tps(partitions):
                self._fetches.pop((tp.topic, tp.partition), None)

    def unassign(self):
        self._check_open()
        with self._lock:
            self._hot = None
            self._fetches.clear()

    def assignment(self):
        self._check_open()
        with self._lock:
            return [TopicPartition(t, p) for (t, p) in self._fetches]

    def _add(self, tp):
        part = self._store.partition(tp.topic, tp.partition)
        self._fetches[(tp.topic, tp.partition)] = _Fetch(
            (tp.topic, tp.partition), part, tp.offset if tp.offset >= 0 or tp.offset in (
                OFFSET_BEGINNING, OFFSET_END) else OFFSET_INVALID)

    @staticmethod
    def _tps(partitions):
        if not isinstance(partitions, (list, tuple)):
            raise TypeError("expected a list of TopicPartition")
        for tp in partitions:
            if not isinstance(tp, TopicPartition):
                raise TypeError("expected TopicPartition, got %s" % type(tp).__name__)
        return partitions

    # ---- subscription: group membership (pylog.group) ----
    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None):
        """Join the group for topics (names, or "^regex"); partitions arrive
        through poll(), with on_assign/on_revoke/on_lost as in confluent-kafka."""
        self._check_open()
        if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics):
            raise TypeError("subscribe() expects a list of topic names")
        for cb in (on_assign, on_revoke, on_lost):
            if cb is not None and not callable(cb):
                raise TypeError("rebalance callbacks must be callable")
        with self._lock:
            if self._member is not None:
                self._leave()
            self._subscription = (list(topics), on_assign, on_revoke, on_lost)
            self._member = Member(self, topics, self._conf)
            self._member.join()
            self._hot = None

    def unsubscribe(self):
        self._check_open()
        with self._lock:
            self._leave()
            self._subscription = None

    def _leave(self):
        if self._member is None:
            return
        self._on_revoke(list(self._fetches))
        self._member.leave()
        self._member = None
        self._hot = None

    def _tplist(self, parts):
        return [TopicPartition(t, p) for t, p in parts]

    def _on_revoke(self, parts):
        """Give up parts: the callback, then (enable.auto.commit) their offsets."""
        cbs = self._subscription
        if cbs and cbs[2] and parts:
            cbs[2](self, self._tplist(parts))
        if self._auto_commit:
            self._commit_stored([tuple(p) for p in parts])
        for tp in parts:
            self._fetches.pop(tuple(tp), None)
            self._revoked_now.add(tuple(tp))
        self._hot = None

    def _on_lost(self, parts):
        """Partitions taken away without a chance to commit (we were expelled)."""
        cbs = self._subscription
        cb = cbs and (cbs[3] or cbs[2])
        if cb:
            cb(self, self._tplist(parts))
        for tp in parts:
            self._fetches.pop(tuple(tp), None)
            self._revoked_now.add(tuple(tp))
        self._hot = None

    def _on_assign(self, parts, incremental):
        cbs = self._subscription
        tps = self._tplist(parts)
        if cbs and cbs[1]:
            self._assigned_in_callback = False
            cbs[1](self, tps)
            if self._assigned_in_callback:
                return                          # the callback assigned (as it chose)
        if incremental:
            for tp in tps:
                if (tp.topic, tp.partition) not in self._fetches:
                    self._add(tp)
        else:
            self.assign(tps)

    # ---- offsets ----
    def _resolve(self, f):
        """Give f a position: committed offset, else auto.offset.reset."""
        if f.position >= 0:
            return True
        if f.position == OFFSET_INVALID:
            rec = self._meta.view(lambda txn: self._meta.get_offset(txn, self._group, *f.tp))
            if rec is not None:
                f.position = rec["offset"]
                return True
            if self._reset is None:
                f.position = OFFSET_INVALID
                self._events.append(Message(f.tp[0], f.tp[1], OFFSET_INVALID, error=KafkaError(
                    KafkaError._AUTO_OFFSET_RESET,
                    "no committed offset for %s [%d] and auto.offset.reset=error" % f.tp)))
                return False
            f.position = self._reset
        log = f.part.log
        f.part.refresh()
        f.position = log.log_start_offset if f.position == OFFSET_BEGINNING else self._end_offset(f.part)
        return True

    def _end_offset(self, part):
        hw = part.refresh()
        return part.last_stable_offset() if self._committed_only else hw

    def position(self, partitions):
        self._check_open()
        out = []
        with self._lock:
            for tp in self._tps(partitions):
                f = self._fetches.get((tp.topic, tp.partition))
                pos = f.position if f is not None and f.position >= 0 else OFFSET_INVALID
                out.append(TopicPartition(tp.topic, tp.partition, pos))
        return out

    @staticmethod
    def _one_tp(tp, what):
        if not isinstance(tp, TopicPartition):
            raise TypeError("%s() expects a TopicPartition, not %s" % (what, type(tp).__name__))
        return tp

    def seek(self, partition):
        self._check_open()
        self._one_tp(partition, "seek")
        with self._lock:
            f = self._fetches.get((partition.topic, partition.partition))
            if f is None:
                raise KafkaException(KafkaError(KafkaError._STATE, "%s [%d] is not assigned"
                                                % (partition.topic, partition.partition)))
            f.position = partition.offset if partition.offset >= 0 or partition.offset in (
                OFFSET_BEGINNING, OFFSET_END) else OFFSET_INVALID
            f.clear()
            f.eof_sent = False

    def store_offsets(self, message=None, offsets=None):
        self._check_open()
        if message is not None and not isinstance(message, Message):
            raise TypeError("store_offsets(message=) expects a Message, not %s" % type(message).__name__)
        if offsets is not None:
            self._tps(offsets)
        with self._lock:
            if message is not None:
                self._stored[(message.topic(), message.partition())] = message.offset() + 1
            for tp in offsets or []:
                self._stored[(tp.topic, tp.partition)] = tp.offset

    def commit(self, message=None, offsets=None, asynchronous=True):
        """Commit offsets to the group (LMDB, durable).  Without arguments,
        commits the positions of the assigned partitions."""
        self._check_open()
        if message is not None and offsets is not None:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG,
                                            "commit() takes message or offsets, not both"))
        if message is not None:
            if not isinstance(message, Message):
                raise TypeError("commit(message=) expects a Message, not %s" % type(message).__name__)
            if message.error() is not None:
                raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "cannot commit an error message"))
            todo = [(message.topic(), message.partition(), message.offset() + 1, None)]
        elif offsets is not None:
            todo = [(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in self._tps(offsets)]
        else:
            with self._lock:
                todo = [(t, p, f.position, None) for (t, p), f in self._fetches.items() if f.position >= 0]
            if not todo:
                raise KafkaException(KafkaError(KafkaError._NO_OFFSET, "Local: No offset stored"))
        result = self._write_offsets(todo)
        return None if asynchronous else result

    def _write_offsets(self, todo):
        meta, group = self._meta, self._group
        for t, p, o, _ in todo:
            if o < 0:
                raise KafkaException(KafkaError(KafkaError._INVALID_ARG,
                                                "invalid offset %d for %s [%d]" % (o, t, p)))

        member = self._member

        def put(txn):
            if member is not None and member.member_id is not None:
                err = member.groups.check_member(txn, group, member.generation, member.member_id)
                if err is not None:
                    raise KafkaException(err)
            for t, p, o, m in todo:
                meta.put_offset(txn, group, t, p, o, m)
        meta.update(put)
        out = [TopicPartition(t, p, o, m) for t, p, o, m in todo]
        if self._on_commit:
            self._on_commit(None, out)
        return out

    def _commit_stored(self, only=None):
        with self._lock:
            if self._auto_store:
                todo = [(t, p, f.position, None) for (t, p), f in self._fetches.items() if f.position >= 0]
            else:
                todo = [(t, p, o, None) for (t, p), o in self._stored.items()]
        if only is not None:
            todo = [x for x in todo if (x[0], x[1]) in only]
        committed = self._meta.view(lambda txn: self._meta.group_offsets(txn, self._group))
        todo = [x for x in todo if committed.get((x[0], x[1]), {}).get("offset") != x[2]]
        if todo:
            self._write_offsets(todo)

    def committed(self, partitions, timeout=None, require_stable=False):
        """Committed offsets (OFFSET_INVALID where none).  With
        require_stable, partitions whose offsets a transaction has staged but
        not finished get error UNSTABLE_OFFSET_COMMIT (Kafka's KIP-447)."""
        self._check_open()
        pending = self._store.coordinator.pending_offsets(self._group) if require_stable else set()
        recs = self._meta.view(lambda txn: self._meta.group_offsets(txn, self._group))
        out = []
        for tp in self._tps(partitions):
            rec = recs.get((tp.topic, tp.partition))
            r = TopicPartition(tp.topic, tp.partition, rec["offset"] if rec else OFFSET_INVALID,
                               rec["metadata"] if rec else None)
            if (tp.topic, tp.partition) in pending:
                r.error = KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT,
                                     "a transaction has staged offsets for %s [%d]" % (tp.topic, tp.partition),
                                     retriable=True)
            out.append(r)
        return out

    def get_watermark_offsets(self, partition, timeout=None, cached=False):
        """(low, high): log start and, per isolation.level, the last stable
        offset (read_committed) or the high watermark (read_uncommitted)."""
        self._check_open()
        self._one_tp(partition, "get_watermark_offsets")
        part = self._store.partition(partition.topic, partition.partition)
        high = self._end_offset(part)
        return part.log.log_start_offset, high

    def get_last_stable_offset(self, partition):
        """The partition's last stable offset (first offset of its oldest open transaction)."""
        part = self._store.partition(partition.topic, partition.partition)
        part.refresh()
        return part.last_stable_offset()

    def offsets_for_times(self, partitions, timeout=None):
        self._check_open()
        out = []
        for tp in self._tps(partitions):
            part = self._store.partition(tp.topic, tp.partition)
            part.refresh()
            off = part.log.offsets_for_time(tp.offset)
            out.append(TopicPartition(tp.topic, tp.partition, off if off >= 0 else OFFSET_END))
        return out

    def pause(self, partitions):
        with self._lock:
            for tp in self._tps(partitions):
                f = self._fetches.get((tp.topic, tp.partition))
                if f is not None:
                    f.paused = True

    def resume(self, partitions):
        with self._lock:
            for tp in self._tps(partitions):
                f = self._fetches.get((tp.topic, tp.partition))
                if f is not None:
                    f.paused = False

    def consumer_group_metadata(self):
        m = self._member
        if m is None:                       # assign() users: no membership to fence
            return GroupMetadata(self._group, -1, "", self._conf.get("group.instance.id"))
        return GroupMetadata(self._group, m.generation, m.member_id or "", m.instance_id)

    def list_topics(self, topic=None, timeout=-1):
        from .admin import cluster_metadata
        return cluster_metadata(self._store, topic)

    # ---- polling ----
    def poll(self, timeout=None):
        """One Message (a record, or an event whose error() is set), or None."""
        f = self._hot
        now = time.monotonic()
        self._last_poll = now
        if f is not None and f.pending() and not f.paused and not (
                self._auto_commit and now >= self._next_auto_commit):
            # Short path: the next decoded record of the partition served last.
            m = f.pop()
            if m._error is None:
                f.position = m._offset + 1
                if self._auto_store:
                    self._stored[f.tp] = f.position
            return m
        msgs = self._consume(1, timeout)
        return msgs[0] if msgs else None

    def consume(self, num_messages=1, timeout=-1):
        if not isinstance(num_messages, int) or not 1 <= num_messages <= 1000000:
            raise ValueError("num_messages must be between 1 and 1000000")
        return self._consume(num_messages, timeout)

    def _consume(self, n, timeout):
        """Up to n messages: returns once it has n or timeout runs out, as
        librdkafka's consume_batch does (poll() is n = 1)."""
        self._check_open()
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        notifier = self._store.notifier
        out = []
        self._revoked_now = set()
        while True:
            seen = notifier.seq()
            if self._stats.enabled:
                self._stats.maybe_emit()
            with self._lock:
                self._last_poll = time.monotonic()
                if self._member is not None:
                    self._member.step()
                self._maybe_auto_commit()
                if self._revoked_now:
                    # a rebalance in this round revoked partitions whose records
                    # an earlier round drained: they are someone else's now (or,
                    # assigned back, fetched again from the committed offset by
                    # the drain below, whose records are kept)
                    out = [m for m in out if m._error is not None or
                           (m._topic, m._partition) not in self._revoked_now]
                    self._revoked_now = set()
                got, errored = self._drain(n - len(out))
            if out:
                out.extend(got)
            else:
                out = got
            if len(out) >= n or errored:
                return out
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return out
            if not got:
                wait = 0.1 if deadline is None else min(deadline - now, 0.1)
                notifier.wait(seen, wait)

    def _maybe_auto_commit(self):
        if self._auto_commit and time.monotonic() >= self._next_auto_commit:
            self._next_auto_commit = time.monotonic() + self._auto_commit_interval
            self._commit_stored()

    def _drain(self, n):
        """(up to n messages, whether one of them is an error event)."""
        out = []
        errored = False
        while self._events and len(out) < n:
            out.append(self._events.popleft())
            errored = True
        fetches = [f for f in self._fetches.values() if not f.paused]
        if not fetches:
            return out, errored
        k = len(fetches)
        for i in range(k):
            if len(out) >= n:
                break
            f = fetches[(self._rr + i) % k]
            if not f.pending():
                self._fill(f)
            take = min(n - len(out), f.pending())
            if not take:
                continue
            run = f.take(take)
            if out:
                out.extend(run)
            else:
                out = run
            if f.pending():
                self._hot = f
            last = run[-1]
            if last._error is None:
                f.position = last._offset + 1
                if self._auto_store:
                    self._stored[f.tp] = f.position
            else:
                errored = True
        self._rr = (self._rr + 1) % k
        return out, errored

    def _fill(self, f):
        """Decode the next batches of f into f.buffer."""
        if f.position < 0 and not self._resolve(f):
            return
        part = f.part
        hw = part.refresh()
        upper = part.last_stable_offset() if self._committed_only else hw
        log = part.log
        if f.position < log.log_start_offset or f.position > hw:
            self._out_of_range(f, hw)
            return
        while f.position < upper and not f.pending():
            data, infos = log.read(f.position, self._max_bytes, upto=upper,
                                   view=_decode_messages is not None)
            if not infos:
                break
            aborted = self._aborted(part, f.position, upper) if self._committed_only else None
            self._decode(f, data, infos, aborted)
        if not f.pending() and f.position >= upper and self._partition_eof and not f.eof_sent:
            f.eof_sent = True
            f.buffer.append(Message(f.tp[0], f.tp[1], f.position, error=KafkaError(
                KafkaError._PARTITION_EOF, "Fetch from broker 0 reached end of partition at "
                "offset %d (HighwaterMark %d)" % (f.position, hw))))
        if f.pending() and f.buffer[-1]._error is None:
            f.eof_sent = False

    def _out_of_range(self, f, hw):
        if self._reset is None:
            self._events.append(Message(f.tp[0], f.tp[1], f.position, error=KafkaError(
                KafkaError.OFFSET_OUT_OF_RANGE, "offset %d is outside [%d, %d]" % (
                    f.position, f.part.log.log_start_offset, hw))))
            f.position = OFFSET_INVALID
            return
        f.position = f.part.log.log_start_offset if self._reset == OFFSET_BEGINNING else hw

    def _aborted(self, part, start, upper):
        """Aborted transactions overlapping [start, upper), ordered by first offset."""
        entries = {}
        for pid, first, last in self._meta.view(
                lambda txn: self._meta.aborted_txns(txn, part.pk, start, upper)):
            entries[(pid, last)] = first
        with part.log._mutex:
            for pid, first, last, _ in part.state.new_aborted:
                if last >= start and first < upper:
                    entries[(pid, last)] = first
        return collections.deque(sorted((first, pid) for (pid, last), first in entries.items()))

    def _decode(self, f, data, infos, aborted):
        # The loop allocates a Message per record and no cycles: the cyclic
        # collector would only rescan them (about a quarter of the time).
        was = gc.isenabled()
        gc.disable()
        try:
            self._decode_batches(f, data, infos, aborted)
        finally:
            if was:
                gc.enable()

    def _decode_batches(self, f, data, infos, aborted):
        topic, partition = f.tp
        aborted_pids = set()
        position = f.position
        buf = f.buffer
        decode = _decode_messages               # None: the Python loop below
        for bi in infos:
            if aborted is not None and bi.producer_id >= 0:
                while aborted and aborted[0][0] <= bi.last_offset:
                    aborted_pids.add(aborted.popleft()[1])
                if bi.is_control:
                    if bi.producer_id in aborted_pids and \
                            decode_control(data, bi)[0] == CONTROL_ABORT:
                        aborted_pids.discard(bi.producer_id)
                elif bi.is_transactional and bi.producer_id in aborted_pids:
                    position = bi.next_offset
                    continue
            if bi.is_control:
                position = bi.next_offset
                continue
            if bi.compression:
                src, base = records_region(data, bi), 0
            else:                               # slice the fetched bytes directly
                src, base = data, bi.position + _bridge.HEADER_SIZE
            log_append = bi.attributes & 0x08
            tstype = TIMESTAMP_LOG_APPEND_TIME if log_append else TIMESTAMP_CREATE_TIME
            first = f.position
            if decode is not None:
                # the same records, validated the same way, as Message objects
                decode(Message, buf, src, base, len(src) if bi.compression else bi.position + bi.size,
                       bi.records_count, bi.base_offset, bi.base_timestamp, topic, partition,
                       first, tstype, bi.max_timestamp)
                position = bi.next_offset
                continue
            fields = _bridge.decode_records(
                src if bi.compression else memoryview(data)[base:bi.position + bi.size],
                bi.records_count, bi.base_offset, bi.base_timestamp)
            it = iter(fields)
            for off, ts, kp, kl, vp, vl, hp, hc in zip(it, it, it, it, it, it, it, it):
                if off < first:
                    continue
                kp += base
                vp += base
                buf.append(Message(topic, partition, off,
                                   None if kl < 0 else src[kp:kp + kl],
                                   None if vl < 0 else src[vp:vp + vl],
                                   _bridge.decode_headers(memoryview(src)[base + hp:], hc) if hc else None,
                                   bi.max_timestamp if log_append else ts, None, tstype))
            position = bi.next_offset
        if not f.pending():
            f.position = max(f.position, position)

    # ---- lifetime ----
    def _check_open(self):
        if self._closed:
            raise RuntimeError("Consumer closed")

    def close(self):
        """Commit (if enable.auto.commit), leave the group, release the store."""
        if self._closed:
            return
        try:
            with self._lock:
                if self._member is not None:
                    self._leave()
                elif self._auto_commit and self._fetches:
                    self._commit_stored()
        finally:
            self._closed = True
            self._hot = None                    # poll()'s short path must not outlive close()
            self._store.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
