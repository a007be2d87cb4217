"""The producer side of a transactional.id: its state and partitions added.

States follow librdkafka: Init (before init_transactions), Ready, InTransaction,
AbortableError (abort_transaction, rewind, begin again) and FatalError
(fenced: the producer is done).
"""
from concurrent.futures import ThreadPoolExecutor

from . import failpoints
from .errors import KafkaError, KafkaException, StorageError
from .sender import NOT_WRITTEN, SEQ_MODULO
from .txn import REDO_MAX_BYTES

INIT, READY, IN_TXN, ABORTABLE, FATAL = "Init", "Ready", "InTransaction", "AbortableError", "FatalError"


def with_flags(err, **flags):
    return KafkaError(err.code(), err.str(), fatal=flags.get("fatal", err.fatal()),
                      retriable=flags.get("retriable", err.retriable()),
                      txn_requires_abort=flags.get("txn_requires_abort", err.txn_requires_abort()))


class ProducerTxn:
    def __init__(self, producer, coordinator):
        self.p = producer
        self.coord = coordinator
        self.state = INIT
        self.added = set()
        self.error = None
        self._pending = None        # Future: the fsync of our last commit/abort's markers
        self._pool = None

    def not_in_txn(self, what):
        return KafkaException(KafkaError(KafkaError._STATE, "%s() is not allowed in state %s: "
                                         "a transactional producer writes only inside a "
                                         "transaction" % (what, self.state)))

    def set_state(self, state):
        self.state = state
        self.p._update_fast_path()

    def begin(self):
        self.added.clear()
        self.error = None
        self.set_state(IN_TXN)

    def set_abortable(self, err):
        if self.state == IN_TXN:
            self.error = err
            self.set_state(ABORTABLE)

    def raise_abortable(self):
        if self.state == ABORTABLE:
            raise KafkaException(KafkaError(
                KafkaError.TRANSACTION_ABORTABLE if self.error is None else self.error.code(),
                "The transaction must be aborted: %s" % (self.error.str() if self.error else ""),
                txn_requires_abort=True))

    def sync_markers(self):
        """Wait until our last transaction's markers are durable.  The
        coordinator records Complete* on our next call; after that nothing
        would write a lost marker again, so it must be on disk first.  An
        fsync error is raised here, on every call: the markers are not safe."""
        f = self._pending
        if f is not None:
            f.result()
            self._pending = None

    def _sync_markers_later(self, parts):
        """fsync the partitions holding our markers on a worker thread: the
        application's work until its next transactional call overlaps it,
        instead of commit_transaction() paying one more fsync."""
        if not parts:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="pylog-markers")
        store = self.p._store

        def sync():
            try:
                failpoints.hit("txn.markers.sync.before")
                for topic, partition in parts:
                    store.partition(topic, partition).log.sync(force=True)
            except OSError as e:        # typed, so the caller's KafkaException paths report it
                raise StorageError("fsync of transaction markers failed: %s" % e) from e
        self._pending = self._pool.submit(sync)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def call(self, fn):
        """Run a coordinator call (after syncing our previous markers);
        fencing makes the producer fatal."""
        p = self.p
        if self._pending is not None:
            self.sync_markers()
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

    def commit_unsent(self):
        """Commit carrying the records still queued in the PrepareCommit
        (txn.Coordinator.commit_redo), when there are some, they fit in
        REDO_MAX_BYTES and pylog.fsync is always.  Returns False when it did
        not commit: the caller then flushes and ends the usual way (anything
        taken from the queues was written the usual way meanwhile).  Their
        delivery reports are queued here; the caller serves them."""
        p = self.p
        if p._fsync != "always" or self.state != IN_TXN:
            return False
        queues = [tq for tq in list(p._queues.values()) if tq.dq]
        if not queues or sum(tq.bytes for tq in queues) > REDO_MAX_BYTES:
            return False
        s = p._sender
        with s.lock:                    # the linger thread waits: batch order is ours
            if p._fatal is not None or self.state != IN_TXN:
                return False            # the caller raises it
            batches = []
            for tq in queues:
                batches.extend(s._take(tq))
            if not batches:
                return False
            seqs, redo, total = {}, [], 0
            try:
                for b in batches:
                    key = (b.topic, b.partition)
                    seq = seqs.get(key, s.seq.get(key, 0))
                    raw = bytes(s._encode(b, seq))  # a copy: the encoder reuses its buffer
                    seqs[key] = (seq + b.n) % SEQ_MODULO
                    redo.append((b.topic, b.partition, raw))
                    total += len(raw)
            except KafkaException:
                total = None            # the usual path reports what encoding refuses
            if total is None or total > REDO_MAX_BYTES:
                s._write(batches)
                return False
            progress = {}
            try:
                (pid, epoch), results = self.call(
                    lambda c, pid, ep: c.commit_redo(p._transactional_id, pid, ep, redo, progress))
            except Exception as e:
                if not progress.get("prepared"):
                    # Nothing of it was recorded: write them the usual way
                    # (which reports what the coordinator refuses).
                    s._write(batches)
                    return False
                # Decided (PrepareCommit is in LMDB, maybe not durable yet):
                # whoever rolls it forward appends the batches.  Their outcome
                # is unknown to us: report them failed, never acknowledged.
                s.seq.update(seqs)
                self.added.update(seqs)
                err = e.args[0] if isinstance(e, KafkaException) else KafkaError(
                    KafkaError._FAIL, "commit failed after its commit point: %s" % e)
                if isinstance(e, StorageError):
                    p._set_fatal(err)
                for b in batches:
                    s._report(b, NOT_WRITTEN, err)
                raise
            s.seq.update(seqs)
            self.added.update(seqs)
            at = {}
            for b in batches:
                key = (b.topic, b.partition)
                i = at.get(key, 0)
                at[key] = i + 1
                s._report(b, results[key][i].base_offset, None)
        self._ended(pid, epoch, True)
        return True

    def end(self, commit):
        p = self.p
        # pylog.fsync=never: a system crash may lose acknowledged records, so
        # the commit point and the markers skip their flushes too (a process
        # crash loses nothing: the page cache survives it).
        durable = p._fsync != "never"
        if p._fsync == "interval":
            # The records must be on disk before the commit point that names
            # them (with "always" every append already waited for its fsync).
            for topic, partition in self.added:
                p._store.partition(topic, partition).log.sync(force=True)
        pid, epoch = self.call(lambda c, pid, ep: c.end_txn(p._transactional_id, pid, ep, commit,
                                                            durable))
        self._ended(pid, epoch, durable)

    def _ended(self, pid, epoch, durable):
        p = self.p
        if durable:
            self._sync_markers_later(list(self.added))
        # KIP-890: every end bumps the epoch (and at the int16 limit the
        # coordinator hands out a new producer id).
        p._producer_id, p._producer_epoch = pid, epoch
        p._sender.reset_sequences()
        self.added.clear()
        self.error = None
        self.set_state(READY)
