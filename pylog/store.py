"""A store directory as one process sees it: topics, partitions, metadata.

Every client (Producer, Consumer, AdminClient) in a process that names the
same directory shares one Store (Store.acquire), so a process holds one
PartitionLog per partition and never flock()s against itself.
"""
import logging
import os
import threading
import time

from . import _bridge, format
from ._bridge import Notifier
from .errors import KafkaError, KafkaException
from .log import LogConfig, PartitionLog
from .meta import Meta, pkey
from .codec import control_batch
from .producer_state import PartitionState

log = logging.getLogger("pylog.txn")

# Topic configs pylog understands, with Kafka's defaults.
TOPIC_CONFIG_DEFAULTS = {
    "segment.bytes": 1 << 30,
    "segment.ms": 7 * 24 * 3600 * 1000,
    "index.interval.bytes": 4096,
    "max.message.bytes": 1048588,
    "retention.ms": 7 * 24 * 3600 * 1000,
    "retention.bytes": -1,
    "cleanup.policy": "delete",
    "delete.retention.ms": 24 * 3600 * 1000,
    "min.compaction.lag.ms": 0,
    "min.cleanable.dirty.ratio": 0.5,
    "message.timestamp.type": "CreateTime",
}
MAX_PARTITIONS = 100000
RETENTION_CHECK_S = 30          # Kafka's log.retention.check.interval.ms is 5 minutes
ROLL_FORWARD_AFTER_MS = 1000    # a Prepare* this old has no owner finishing it


class Partition:
    """One topic-partition: its log plus its producer state.  Thread-safe."""

    def __init__(self, store, topic, partition, log_config, expiration_ms):
        self.store = store
        self.topic = topic
        self.partition = partition
        self.pk = pkey(topic, partition)
        self.log = PartitionLog(os.path.join(store.path, format.partition_dir_name(topic, partition)),
                                log_config, topic, partition)
        self.state = PartitionState(topic, partition, expiration_ms)
        self.state.verify_txn = lambda pid, epoch: store.coordinator.verify_write(
            pid, epoch, topic, partition)
        with self.log.locked():
            # Another process may have appended (and snapshotted past that)
            # since the log was opened: a stale end would look like a lost tail.
            self.log.refresh()
            store.meta.view(lambda txn: self.state.load(store.meta, txn, self.pk, self.log.next_offset))
            self.state.catch_up(self.log)

    def append(self, batches, sync=None):
        """Append batches (bytes, baseOffset 0) with the producer checks.

        This is the partition-level append a retry goes through: re-sending a
        batch whose outcome was unknown returns its original offsets.
        Returns one AppendResult per batch."""
        hook = self.state.hook()
        results = self.log.append(batches, hook, sync)
        if hook.stale:
            results = self._abort_stale_and_retry(batches, results, hook.stale, sync)
        self.store.notifier.bump()
        if (sync or self.log.config.fsync) == "interval":
            self.store.start_flusher()
        if sync != "defer" and self.state.wants_snapshot():
            self.snapshot()
        return results

    def sync_deferred(self):
        """PartitionLog.sync_deferred for appends made with sync="defer",
        then the producer-state snapshot they may have made due (deferred
        too: its fsync of the log would stall the appends)."""
        self.log.sync_deferred()
        if self.state.wants_snapshot():
            self.snapshot()

    def _abort_stale_and_retry(self, batches, results, stale, sync):
        """Abort the stale transactions the append hook found in the way of a
        newer session (see _AppendHook), then append that session's refused
        batches again."""
        with self.log.locked():
            self.log.refresh()
            self.state.catch_up(self.log)
            for pid, (first, epoch) in stale.items():
                if self.state.open_txns.get(pid) == first:
                    self.abort_open_txn(pid, first, epoch, "a newer session of its producer writes")
        retry = [i for i, r in enumerate(results)
                 if r.error is not None and _bridge.parse_header(batches[i]).producer_id in stale]
        again = self.log.append([batches[i] for i in retry], self.state.hook(), sync)
        results = list(results)
        for i, r in zip(retry, again):
            results[i] = r
        return results

    def abort_open_txn(self, pid, first, epoch, why):
        """Write an ABORT marker for producer pid's transaction open since
        offset first, at that transaction's own epoch (a newer batch of the
        producer fences it).  The caller holds the partition lock and has
        checked that it is still open."""
        log.warning("%s-%d: aborting the transaction of producer %d open since offset %d: %s",
                    self.topic, self.partition, pid, first, why)
        marker = control_batch(pid, epoch, False, 0, int(time.time() * 1000))
        res = self.log.append([marker], self.state.hook(), "never")[0]
        if res.error is not None:
            raise KafkaException(res.error)

    def snapshot(self):
        """Store producer state in LMDB at the current log end (after an
        fsync, unless pylog.fsync=never)."""
        with self.log.locked():
            self.log.refresh()
            self.state.catch_up(self.log)
            if self.log.config.fsync != "never":
                # other processes' appends too.  With "never" a power loss may
                # leave the snapshot ahead of the log; load() trims it then.
                self.log.sync(force=True)
            meta = self.store.meta
            meta.update(lambda txn: self.state.snapshot(meta, txn, self.pk))
            self.state.snapshot_done()

    def refresh(self):
        """Take in other processes' appends; returns the high watermark."""
        with self.log._mutex:
            self.log.refresh()
            self.state.catch_up(self.log)
            return self.log.next_offset

    @property
    def high_watermark(self):
        return self.log.next_offset

    def last_stable_offset(self):
        with self.log._mutex:
            return self.state.lso(self.log.next_offset)

    def close(self):
        try:
            if self.state.end != self.state.snapshot_end:
                self.snapshot()
        finally:
            self.log.close()


class Store:
    """A store directory opened by this process.  Thread-safe."""

    _registry = {}
    _registry_lock = threading.Lock()

    @classmethod
    def acquire(cls, path, conf=None):
        """The process's shared Store for path, opened on first use."""
        key = (os.path.realpath(path), os.getpid())
        with cls._registry_lock:
            store = cls._registry.get(key)
            if store is None:
                store = cls._registry[key] = cls(path, conf)
            store._refs += 1
            return store

    def release(self):
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            self._registry.pop((os.path.realpath(self.path), self._pid), None)
        self.close()

    def __init__(self, path, conf=None):
        conf = conf or {}
        self.path = path
        self._pid = os.getpid()
        self._refs = 0
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise KafkaException(KafkaError(KafkaError._FS, "cannot create store %s: %s" % (path, e)))
        self.fsync = conf.get("pylog.fsync", "never")
        self.fsync_interval_ms = conf.get("pylog.fsync.interval.ms", 1000)
        self.expiration_ms = conf.get("pylog.producer.id.expiration.ms", 86400000)
        self.meta = Meta(os.path.join(path, "meta"))
        self.notifier = Notifier(os.path.join(path, "notify"))
        self._partitions = {}
        self._lock = threading.RLock()
        self._coordinator = None
        self._closed = False
        self._timer = None
        self._flusher = None
        self._cleaner = None
        self._opening_coordinator = False
        self._bare = None

    @property
    def coordinator(self):
        """The transaction coordinator; created on first use, when it also
        rolls forward any Prepare* left by a crashed owner and starts the
        transaction.timeout.ms timer."""
        if self._coordinator is None:
            with self._lock:
                if self._coordinator is None:
                    c = self._bare_coordinator()
                    self._opening_coordinator = True     # partitions opened meanwhile: below
                    try:
                        c.recover()
                        c.abort_expired()
                    finally:
                        self._opening_coordinator = False
                    self._coordinator = c
                    self._timer = threading.Thread(target=self._timer_loop, daemon=True,
                                                   name="pylog-txn-timeout")
                    self._timer.start()
                    for p in self.open_partitions():
                        if p.state.open_txns:
                            c.abort_orphans(p)
        return self._coordinator

    def _bare_coordinator(self):
        """The coordinator object without its start-up work (roll-forward,
        timeouts, timer): what judging a partition's open transactions needs.
        The same object becomes self.coordinator, so they share locks."""
        with self._lock:
            if self._bare is None:
                from .txn import Coordinator
                self._bare = Coordinator(self)
            return self._bare

    def start_flusher(self):
        """pylog.fsync=interval: fsync partitions with bytes older than the
        interval even when no further append comes to do it."""
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flusher_loop, daemon=True,
                                                     name="pylog-fsync-interval")
                    self._flusher.start()

    def _flusher_loop(self):
        import logging
        while not self._closed:
            time.sleep(max(self.fsync_interval_ms / 4000.0, 0.001))
            for p in list(self._partitions.values()):
                log = p.log
                try:
                    if log.sync_due():
                        end = log.segments()[-1]
                        log.sync_to(end, end.size)
                except Exception as e:          # StorageError: the partition refuses writes now
                    logging.getLogger("pylog.log").error("interval fsync of %s failed: %s", log.path, e)

    def _timer_loop(self):
        """Abort transactions past transaction.timeout.ms: no broker process
        exists, so every process with the store open keeps this watch."""
        next_retention = time.monotonic() + RETENTION_CHECK_S
        while not self._closed:
            time.sleep(0.5)
            if self._closed:
                return
            try:
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_CHECK_S
                    self.enforce_retention()
                    self._start_cleaner()
                    for p in self.open_partitions():
                        if p.state.open_txns:
                            self._coordinator.abort_orphans(p)
                self._coordinator.abort_expired()
                # a commit whose owner died after Prepare*: readers already
                # running must see it decided without reopening the store
                self._coordinator.recover(min_age_ms=ROLL_FORWARD_AFTER_MS)
            except Exception as e:             # keep watching; the next round retries
                import logging
                logging.getLogger("pylog.txn").warning("timeout check failed: %s", e)

    # ---- topics ----
    def create_topic(self, name, num_partitions=1, config=None):
        """Create a topic; KafkaException TOPIC_ALREADY_EXISTS if it exists."""
        format.validate_topic(name)
        if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) \
                or not 1 <= num_partitions <= MAX_PARTITIONS:
            raise KafkaException(KafkaError(
                KafkaError.INVALID_PARTITIONS,
                "num_partitions must be an integer in 1..%d, got %r" % (MAX_PARTITIONS, num_partitions)))
        cfg = validate_topic_config(config or {})

        def create(txn):
            if self.meta.get_topic(txn, name) is not None:
                raise KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS,
                                                "Topic '%s' already exists." % name))
            self.meta.put_topic(txn, name, {"partitions": num_partitions, "config": cfg,
                                            "created_ms": int(time.time() * 1000)})
        self.meta.update(create)

    def topic(self, name):
        """{"partitions": n, "config": {...}} or None."""
        try:
            format.validate_topic(name)     # no such topic can exist (and LMDB refuses empty keys)
        except KafkaException:
            return None
        return self.meta.view(lambda txn: self.meta.get_topic(txn, name))

    def topics(self):
        return self.meta.view(self.meta.topics)

    def ensure_topic(self, name):
        """The topic's descriptor, creating it with one partition if missing
        (a default Kafka broker's auto.create.topics.enable)."""
        format.validate_topic(name)
        desc = self.topic(name)
        if desc is None:
            try:
                self.create_topic(name, 1)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            desc = self.topic(name)
        return desc

    def log_config(self, desc):
        cfg = dict(TOPIC_CONFIG_DEFAULTS)
        cfg.update(desc.get("config", {}))
        return LogConfig(segment_bytes=cfg["segment.bytes"], segment_ms=cfg["segment.ms"],
                         index_interval_bytes=cfg["index.interval.bytes"],
                         max_message_bytes=cfg["max.message.bytes"], fsync=self.fsync,
                         fsync_interval_ms=self.fsync_interval_ms,
                         compacted="compact" in cfg["cleanup.policy"])

    # ---- partitions ----
    def partition(self, topic, partition):
        """The Partition object for an existing topic-partition."""
        key = (topic, partition)
        p = self._partitions.get(key)
        if p is not None:
            return p
        with self._lock:
            p = self._partitions.get(key)
            if p is not None:
                return p
            desc = self.topic(topic)
            if desc is None:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                "Unknown topic %r" % topic))
            if not isinstance(partition, int) or not 0 <= partition < desc["partitions"]:
                raise KafkaException(KafkaError(
                    KafkaError._UNKNOWN_PARTITION,
                    "Topic %r has partitions 0..%d, not %r" % (topic, desc["partitions"] - 1, partition)))
            p = Partition(self, topic, partition, self.log_config(desc), self.expiration_ms)
            self._partitions[key] = p
        if p.state.open_txns and not self._opening_coordinator:
            # Outside the store lock: the coordinator takes transactional.id
            # locks, and its own code opens partitions while holding one.
            self._bare_coordinator().abort_orphans(p)
        return p

    def open_partitions(self):
        return list(self._partitions.values())

    def enforce_retention(self, now_ms=None):
        """Apply retention.ms/retention.bytes to every partition this process
        has open; the timer thread calls it every RETENTION_CHECK_S."""
        from . import retention
        moved = {}
        for p in self.open_partitions():
            cfg = self._topic_config(p.topic)
            if cfg is None:
                continue
            before = p.log.log_start_offset
            after = retention.enforce(p, cfg, now_ms)
            if after != before:
                moved[(p.topic, p.partition)] = after
        return moved

    def _topic_config(self, topic):
        desc = self.topic(topic)
        if desc is None:
            return None
        cfg = dict(TOPIC_CONFIG_DEFAULTS)
        cfg.update(desc.get("config", {}))
        return cfg

    def compact(self, topic, partition=None):
        """Compact a cleanup.policy=compact topic now, whatever its dirty
        ratio: {partition: CompactionResult (None if another process's
        cleaner was at work on it)}."""
        from . import compaction
        cfg = self._topic_config(topic)
        if cfg is None:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Unknown topic %r" % topic))
        if "compact" not in cfg["cleanup.policy"]:
            raise KafkaException(KafkaError(
                KafkaError.INVALID_CONFIG, "topic %r has cleanup.policy=%s, not compact"
                % (topic, cfg["cleanup.policy"])))
        parts = range(self.topic(topic)["partitions"]) if partition is None else [partition]
        return {i: compaction.compact(self.partition(topic, i), cfg, stop=lambda: self._closed)
                for i in parts}

    def enforce_compaction(self, now_ms=None):
        """Compact the open partitions of compacted topics whose dirty share
        reached min.cleanable.dirty.ratio (the cleaner thread's round)."""
        from . import compaction
        done = {}
        for p in self.open_partitions():
            cfg = self._topic_config(p.topic)
            if self._closed:
                break
            if cfg is None or "compact" not in cfg["cleanup.policy"]:
                continue
            r = compaction.compact(p, cfg, now_ms, float(cfg["min.cleanable.dirty.ratio"]),
                                   stop=lambda: self._closed)
            if r is not None and r.segments:
                done[(p.topic, p.partition)] = r
        return done

    def _start_cleaner(self):
        if self._closed or self._cleaner is not None and self._cleaner.is_alive():
            return                      # closing, or a long compaction is still running

        def run():
            try:
                self.enforce_compaction()
            except Exception as e:      # the next round retries
                import logging
                logging.getLogger("pylog.compaction").warning("compaction failed: %s", e)
        self._cleaner = threading.Thread(target=run, daemon=True, name="pylog-cleaner")
        self._cleaner.start()

    def delete_records(self, topic, partition, offset):
        """Kafka's DeleteRecords: move the log start (never beyond the LSO)."""
        p = self.partition(topic, partition)
        p.refresh()
        if offset < 0:                               # -1: up to the high watermark
            offset = p.high_watermark
        offset = min(offset, p.last_stable_offset())
        p.snapshot()
        return p.log.delete_before(offset)

    def close(self):
        self._closed = True
        if self._cleaner is not None:
            self._cleaner.join()        # it stops at the next batch
        with self._lock:
            parts, self._partitions = list(self._partitions.values()), {}
        errors = []
        for p in parts:
            try:
                p.close()
            except Exception as e:          # close the others regardless
                errors.append(e)
        self.meta.close()
        self.notifier.close()
        if errors:
            raise errors[0]


def validate_topic_config(config):
    """Known topic configs with their values checked; unknown ones refused."""
    if not isinstance(config, dict):
        raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG, "topic config must be a dict"))
    out = {}
    for k, v in config.items():
        if k not in TOPIC_CONFIG_DEFAULTS:
            raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                            "Unknown topic config name: %s" % k))
        default = TOPIC_CONFIG_DEFAULTS[k]
        if isinstance(default, int):
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                                "Invalid value %r for topic config %s" % (v, k))) from None
            if v < (-1 if k == "retention.bytes" or k == "retention.ms" else 0):
                raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                                "Invalid value %r for topic config %s" % (v, k)))
        elif isinstance(default, float):
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = -1.0
            if not 0.0 <= v <= 1.0:
                raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                                "Invalid value %r for topic config %s" % (config[k], k)))
        elif k == "cleanup.policy" and v not in ("delete", "compact", "compact,delete", "delete,compact"):
            raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                            "Invalid value %r for cleanup.policy" % (v,)))
        elif k == "message.timestamp.type" and v not in ("CreateTime", "LogAppendTime"):
            raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                            "Invalid value %r for message.timestamp.type" % (v,)))
        out[k] = v
    if out.get("segment.bytes", 1 << 30) < 14 or out.get("segment.bytes", 0) > 0x7FFFFFFF:
        raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG,
                                        "segment.bytes must be in 14..2147483647"))
    return out
