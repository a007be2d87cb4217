"""The transaction coordinator: Kafka's transaction state machine in LMDB.

State per transactional.id (meta.txns, JSON):
    producer_id, producer_epoch, state, partitions [[topic, p]...],
    offsets {group: [[topic, p, offset, metadata]...]}, timeout_ms,
    start_ms (first partition added), update_ms

Transitions (Kafka's): Empty|Complete* -> Ongoing -> Prepare* -> Complete*.

The commit point is the durable Prepare* record (an LMDB commit whose meta
page is flushed too: Meta.update(durable=True)),
written after the transaction's data is durable and before any marker; a
commit's offsets are materialised in the same LMDB transaction, since the
outcome is decided there.  Markers then go to every partition, and
commit_transaction() returns without waiting for them to reach the disk or
for Complete*: both are re-derivable from Prepare*.  The owner's next call
(add partitions or offsets, end, close) first fsyncs those markers, then
turns its own Prepare* into Complete*; a Prepare* whose owner crashed is
rolled forward by whoever opens the store, and markers already present are
detected from the partition's producer state, so none is written twice.
So a durable commit costs the data's fsync and Prepare*'s (plus the
add-partitions record's, once per transaction).

Redo in Prepare (commit_redo): when commit_transaction() finds the
transaction's last records still unsent (the small-transaction case), the
producer encodes them as the sender would (producer id, epoch, sequence
numbers) and the PrepareCommit carries them: the partitions not registered
yet are registered by it, and the batches are stored with it (meta "redo"
database; at most REDO_MAX_BYTES).  Steps, under the id's lock:

  1. LMDB commit of PrepareCommit + registration + batches + offsets
     (one fdatasync; not yet durable: its meta page is not flushed);
  2. in parallel: the meta page flush (making 1 the durable commit point)
     and, on a worker thread that writes nothing before 1 returned, the
     appends of the batches with their fsync (the partitions' append hook
     lets these batches of a Prepare* in: verify_write);
  3. when both are done, the markers (not fsynced, as above), then return.

So the commit costs one flush, then the longer of two concurrent ones,
instead of four in a row; and nothing is acknowledged before the records
are fsynced at the offsets reported.  Crash safety: before 1 nothing of
the batches is anywhere.  After 1, LMDB holds the decision and the batches:
every roll-forward of a Prepare* (_write_markers: the owner's retried
EndTxn, recover(), init_transactions of the id, the timer) first appends
the stored batches the partition lacks (judged from the producer's
sequence numbers there at the transaction's epoch), then the marker.  A
power loss before 2 finished may undo 1 (metasync off) while some appended
batches survive: nothing was acknowledged, and the data is then an open
transaction that no coordinator state accounts for, which abort_orphans
ends (the same case as an undone add-partitions record).  Complete*, which
drops the stored batches, is recorded only after the partitions are
fsynced, as for markers.

Every end of a transaction bumps the epoch (KIP-890): markers carry the new
epoch, so a delayed write of the finished transaction is fenced by the
partition (INVALID_PRODUCER_EPOCH) instead of joining the next one.

Concurrency: every change to a transactional.id's state happens under its
lock file (flock), so an owner moving on to its next transaction and another
process rolling the same Prepare* forward never interleave (a roll-forward
writing markers after the owner began anew would end the new transaction).
"""
import fcntl
import hashlib
import logging
import os
import struct
import threading
import time
from contextlib import contextmanager

from . import failpoints
from .codec import control_batch
from .errors import KafkaError, KafkaException
from .meta import pkey

log = logging.getLogger("pylog.txn")
_SEQ = struct.Struct(">i")

EMPTY, ONGOING = "Empty", "Ongoing"
PREPARE_COMMIT, PREPARE_ABORT = "PrepareCommit", "PrepareAbort"
COMPLETE_COMMIT, COMPLETE_ABORT = "CompleteCommit", "CompleteAbort"
# Epochs are int16.  A session (one producer id and epoch) stays at or below
# MAX_SESSION_EPOCH so that the bump ending its transaction still fits; when
# that bump reaches MAX_EPOCH, the transaction's markers carry it and the next
# session gets a new producer id at epoch 0 (Kafka's TV2 rotation).
MAX_EPOCH = 32767
MAX_SESSION_EPOCH = MAX_EPOCH - 1
MAX_TIMEOUT_MS = 900000           # transaction.max.timeout.ms, Kafka's default
COORDINATOR_EPOCH = 0
REDO_MAX_BYTES = 1 << 20          # batches a PrepareCommit may carry (see commit_redo)


def _now_ms():
    return int(time.time() * 1000)


class _Carrying:
    """The gate of commit_redo's appends: opened when the PrepareCommit that
    carries the batches is committed to LMDB (ok), or will not be (not ok)."""

    def __init__(self, parts):
        self.parts = parts
        self.ok = False
        self._event = threading.Event()

    def open(self, ok):
        self.ok = ok
        self._event.set()

    def wait(self):
        self._event.wait()
        return self.ok

    @staticmethod
    def refusal():
        return KafkaError(KafkaError.INVALID_TXN_STATE,
                          "the PrepareCommit carrying this batch was not recorded")


def _quietly(future):
    try:
        future.result()
    except BaseException:
        pass


def fenced(tid, pid, epoch, state):
    return KafkaException(KafkaError(
        KafkaError._FENCED,
        "Producer fenced: transactional.id %r is now producer %d epoch %d, this producer is %d "
        "epoch %d" % (tid, state["producer_id"], state["producer_epoch"], pid, epoch), fatal=True))


class Coordinator:
    """Transaction coordinator for one store, shared by the process's producers."""

    def __init__(self, store):
        self.store = store
        self.meta = store.meta
        self._lock_dir = os.path.join(store.path, "txn-locks")
        os.makedirs(self._lock_dir, exist_ok=True)
        self._thread_locks = {}
        self._guard = threading.Lock()
        self._flusher = None            # threads for commit_redo's appends
        # (producer_id, epoch) -> _Carrying: the batches this process's
        # commit_redo appends; verify_write lets them in, without reading
        # LMDB, once the Prepare carrying them is committed
        self._carrying = {}

    # ---- locks ----
    @contextmanager
    def _tid_lock(self, tid, blocking=True):
        """flock for tid (and a thread lock, since flock is per open file)."""
        with self._guard:
            tl = self._thread_locks.setdefault(tid, threading.Lock())
        if not tl.acquire(blocking):
            yield False
            return
        name = hashlib.sha1(tid.encode("utf-8")).hexdigest() + ".lock"
        fd = os.open(os.path.join(self._lock_dir, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)
            tl.release()

    def _get(self, txn, tid):
        return self.meta.get_txn(txn, tid)

    # ---- InitProducerId ----
    def init_producer(self, tid, timeout_ms):
        """(producer_id, epoch) for a new instance of tid; finishes or aborts
        what the previous instance left, fencing it for good."""
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise KafkaException(KafkaError(
                KafkaError.INVALID_TRANSACTION_TIMEOUT,
                "transaction.timeout.ms %d is outside 1..%d (transaction.max.timeout.ms)"
                % (timeout_ms, MAX_TIMEOUT_MS)))
        with self._tid_lock(tid):
            state = self.meta.view(lambda txn: self._get(txn, tid))
            if state is not None and state["state"] == ONGOING:
                log.info("transactional.id %r: aborting the previous instance's open transaction "
                         "(producer %d epoch %d) and fencing it", tid, state["producer_id"],
                         state["producer_epoch"])
                self._prepare(tid, state["producer_id"], state["producer_epoch"], False, fence=True)
                state = self.meta.view(lambda txn: self._get(txn, tid))
            if state is not None and state["state"] in (PREPARE_COMMIT, PREPARE_ABORT):
                self._complete(tid, state)

            def bump(txn):
                st = self._get(txn, tid)
                if st is None or st["producer_epoch"] >= MAX_SESSION_EPOCH:
                    pid, epoch = self.meta.next_producer_id(txn), 0
                    self.meta.put_pid_owner(txn, pid, tid)
                else:
                    pid, epoch = st["producer_id"], st["producer_epoch"] + 1
                st = {"producer_id": pid, "producer_epoch": epoch, "state": EMPTY,
                      "partitions": [], "offsets": {}, "timeout_ms": timeout_ms,
                      "start_ms": -1, "update_ms": _now_ms()}
                self.meta.put_txn(txn, tid, st)
                return pid, epoch
            failpoints.hit("txn.init.before")
            # durable: undone by a power loss, the same (id, epoch) would be
            # handed out again and its batches taken for the old session's
            return self.meta.update(bump, durable=True)

    # ---- AddPartitionsToTxn / AddOffsetsToTxn ----
    def _owned(self, tid, st, pid, epoch):
        """st with the owner's own finished transaction (Prepare* at the
        owner's current epoch, or the rotated-to producer id at epoch 0: its
        markers are written) marked Complete*."""
        rotated = st is not None and st.get("next_producer_id") == pid and epoch == 0
        if st is None or not rotated and (st["producer_id"] != pid or st["producer_epoch"] != epoch):
            raise fenced(tid, pid, epoch, st or {"producer_id": -1, "producer_epoch": -1})
        if st["state"] in (PREPARE_COMMIT, PREPARE_ABORT):
            st["state"] = COMPLETE_COMMIT if st["state"] == PREPARE_COMMIT else COMPLETE_ABORT
            st["partitions"], st["offsets"], st["start_ms"] = [], {}, -1
            st.pop("redo", None)        # put_txn drops the stored batches with it
        if rotated:
            st["producer_id"], st["producer_epoch"] = pid, 0
            del st["next_producer_id"]
        return st

    @staticmethod
    def _session(st):
        """(producer_id, epoch) the owner uses after st's Prepare*."""
        if "next_producer_id" in st:
            return st["next_producer_id"], 0
        return st["producer_id"], st["producer_epoch"]

    def _begin_if_needed(self, st):
        if st["state"] != ONGOING:
            st["state"], st["start_ms"], st["partitions"], st["offsets"] = ONGOING, _now_ms(), [], {}
            st.pop("members", None)
            st.pop("redo", None)

    def add_partitions(self, tid, pid, epoch, partitions):
        """Record partitions before the transaction writes to them (durable),
        so an abort or a roll-forward knows where to put markers."""
        def add(txn):
            st = self._owned(tid, self._get(txn, tid), pid, epoch)
            self._begin_if_needed(st)
            have = {tuple(p) for p in st["partitions"]}
            st["partitions"].extend(list(p) for p in partitions if tuple(p) not in have)
            st["update_ms"] = _now_ms()
            self.meta.put_txn(txn, tid, st)
        with self._tid_lock(tid):
            self.meta.update(add)
            failpoints.hit("txn.add_partitions.after")

    def add_offsets(self, tid, pid, epoch, group, offsets, generation=-1, member_id=""):
        """Stage the group's offsets in the transaction: visible iff it commits.

        generation/member_id come from the consumer's group metadata: a
        member the group has since expelled, or an older generation, is
        refused (KIP-447), here and again at the commit point."""
        from .group import GroupStore
        groups = GroupStore(self.store)

        def add(txn):
            st = self._owned(tid, self._get(txn, tid), pid, epoch)
            err = groups.check_member(txn, group, generation, member_id)
            if err is not None:
                raise KafkaException(err)
            self._begin_if_needed(st)
            st.setdefault("members", {})[group] = [generation, member_id]
            staged = {(t, p): [t, p, o, m] for t, p, o, m in st["offsets"].get(group, [])}
            for t, p, o, m in offsets:
                staged[(t, p)] = [t, p, o, m]
            st["offsets"][group] = list(staged.values())
            st["update_ms"] = _now_ms()
            self.meta.put_txn(txn, tid, st)
        with self._tid_lock(tid):
            self.meta.update(add)
            failpoints.hit("txn.add_offsets.after")

    def finish(self, tid, pid, epoch):
        """Record Complete* for the owner's last transaction (on close)."""
        def done(txn):
            st = self._get(txn, tid)
            if st is not None and st["state"] in (PREPARE_COMMIT, PREPARE_ABORT) and \
                    self._session(st) == (pid, epoch):
                self.meta.put_txn(txn, tid, self._owned(tid, st, pid, epoch))
        with self._tid_lock(tid):
            self.meta.update(done)

    # ---- EndTxn ----
    def end_txn(self, tid, pid, epoch, commit, durable=True):
        """Commit or abort; returns (producer_id, epoch) for the producer's
        next transaction."""
        with self._tid_lock(tid):
            st = self.meta.view(lambda txn: self._get(txn, tid))
            want = PREPARE_COMMIT if commit else PREPARE_ABORT
            if st is not None and st["producer_id"] == pid and st["producer_epoch"] == epoch + 1 \
                    and st["state"] == want:
                # A retried EndTxn after the epoch bump: finish it, report success.
                self._write_markers(tid, st)
                return self._session(st)
            if st is not None and st["producer_id"] == pid and st["producer_epoch"] == epoch + 1 \
                    and st["state"] == (COMPLETE_COMMIT if commit else COMPLETE_ABORT):
                return pid, epoch + 1
            st = self._prepare(tid, pid, epoch, commit, durable=durable)
            self._write_markers(tid, st)
            return self._session(st)

    def commit_redo(self, tid, pid, epoch, redo, progress):
        """Commit with the transaction's unsent batches carried by the
        PrepareCommit (see the module docstring); redo: [(topic, partition,
        batch bytes)] in sequence order per partition.  Sets
        progress["prepared"] once PrepareCommit is committed to LMDB: an
        error raised before that left nothing behind.  Returns ((producer_id,
        epoch) for the next transaction, {(topic, partition): [AppendResult
        per batch]}).

        The appends run on a worker thread, started at once and held by a
        gate (_Carrying) until the LMDB commit returned; this thread then
        flushes the meta page while the worker appends and fsyncs the
        batches.  (Started early, the worker is running when the gate
        opens: a hand-off to a thread woken only then costs more than the
        time the flush and the fsync overlap.)"""
        with self._tid_lock(tid):
            gate = _Carrying({(t, p) for t, p, _ in redo})
            self._carrying[(pid, epoch)] = gate
            try:
                job = self._flush_pool().submit(self._append_redo, redo, gate)
                try:
                    st = self._prepare(tid, pid, epoch, True, durable=False, redo=redo)
                except BaseException:
                    # An error after LMDB's commit returned (a failpoint, say)
                    # still leaves the decision taken.
                    cur = self.meta.view(lambda txn: self._get(txn, tid))
                    if cur is not None and cur.get("redo") and cur["state"] == PREPARE_COMMIT \
                            and cur["producer_id"] == pid and cur["producer_epoch"] == epoch + 1:
                        progress["prepared"] = True
                    gate.open(progress.get("prepared", False))
                    _quietly(job)
                    raise
                progress["prepared"] = True
                try:
                    failpoints.hit("txn.redo.committed")
                finally:
                    gate.open(True)
                err = None
                try:
                    self.meta.make_durable()
                except BaseException as e:  # the appends must end before the lock is let go
                    err = e
                try:
                    results = job.result()
                finally:
                    if err is not None:
                        raise err       # StorageError: the commit point may not be durable
            finally:
                del self._carrying[(pid, epoch)]
            failpoints.hit("txn.prepare.after")
            self._write_markers(tid, st, redo=False)
            return self._session(st), results

    def _flush_pool(self):
        with self._guard:
            if self._flusher is None:
                from concurrent.futures import ThreadPoolExecutor
                self._flusher = ThreadPoolExecutor(4, thread_name_prefix="pylog-commit-redo")
            return self._flusher

    def _append_redo(self, redo, gate):
        """The owner's appends of the batches its PrepareCommit carries, each
        partition's fsynced (their offsets are acknowledged); on a worker
        thread, gated by gate (see commit_redo)."""
        by_part = {}
        for topic, partition, raw in redo:
            by_part.setdefault((topic, partition), []).append(raw)
        results = {}
        for (topic, partition), raws in by_part.items():
            part = self.store.partition(topic, partition)
            # Wait here, not under the partition's lock (other writers would
            # wait for our LMDB commit too).
            if not gate.wait():
                raise KafkaException(gate.refusal())
            res = part.append(raws, sync="always")
            for r in res:
                if r.error is not None:
                    raise KafkaException(r.error)
            results[(topic, partition)] = res
            failpoints.hit("txn.redo.append.after")
        return results

    def _prepare(self, tid, pid, epoch, commit, fence=False, durable=True, redo=None):
        """Write Prepare* durably (the commit point), bumping the epoch; a
        commit's offsets become the group's committed offsets here.  redo
        (a commit only): batches the PrepareCommit carries; their partitions
        are registered by it."""
        def prepare(txn):
            st = self._get(txn, tid)
            if fence:
                if st is None or st["producer_id"] != pid or st["producer_epoch"] != epoch \
                        or st["state"] != ONGOING:
                    raise fenced(tid, pid, epoch, st or {"producer_id": -1, "producer_epoch": -1})
            else:
                st = self._owned(tid, st, pid, epoch)
            if redo:
                self._begin_if_needed(st)
                have = {tuple(p) for p in st["partitions"]}
                carried = []
                for topic, partition, _ in redo:
                    if (topic, partition) not in have:
                        have.add((topic, partition))
                        st["partitions"].append([topic, partition])
                    if [topic, partition] not in carried:
                        carried.append([topic, partition])
                st["redo"] = carried
            else:
                if st["state"] != ONGOING:
                    st["partitions"], st["offsets"] = [], {}
                st.pop("redo", None)
            if st["producer_epoch"] + 1 >= MAX_EPOCH:
                st["next_producer_id"] = self.meta.next_producer_id(txn)
                self.meta.put_pid_owner(txn, st["next_producer_id"], tid)
            if commit:
                from .group import GroupStore
                groups = GroupStore(self.store)
                for group, (generation, member_id) in st.get("members", {}).items():
                    err = groups.check_member(txn, group, generation, member_id)
                    if err is not None:         # a zombie: its offsets must not land
                        raise KafkaException(err)
                for group, offs in st["offsets"].items():
                    for t, p, o, m in offs:
                        self.meta.put_offset(txn, group, t, p, o, m)
            st.pop("members", None)
            st["offsets"] = {}
            st["producer_epoch"] += 1
            st["state"] = PREPARE_COMMIT if commit else PREPARE_ABORT
            st["update_ms"] = _now_ms()
            self.meta.put_txn(txn, tid, st, redo=redo if redo and commit else None)
            return st
        if redo and not commit:
            raise ValueError("only a commit carries batches")
        failpoints.hit("txn.prepare.before")
        st = self.meta.update(prepare, durable=durable)
        if not redo:                    # commit_redo hits it once the commit point is durable
            failpoints.hit("txn.prepare.after")
        return st

    def _write_markers(self, tid, st, redo=True):
        """A marker on every partition of a Prepare* transaction that lacks one.
        Not fsynced: Prepare* is durable, so a lost marker is written again.
        Before each marker, the batches the Prepare* carries that the
        partition lacks are appended (redo: False when the caller just
        appended them itself)."""
        commit = st["state"] == PREPARE_COMMIT
        pid, epoch = st["producer_id"], st["producer_epoch"]
        marker = control_batch(pid, epoch, commit, COORDINATOR_EPOCH, _now_ms())
        stored = {}
        if redo and st.get("redo"):
            for topic, partition, raw in self.meta.view(lambda txn: self.meta.get_redo(txn, tid)):
                stored.setdefault((topic, partition), []).append(raw)
        for topic, partition in st["partitions"]:
            part = self.store.partition(topic, partition)
            if redo and self._has_marker(part, pid, epoch):
                continue                # (redo False: our own commit, no marker yet)
            batches = stored.get((topic, partition))
            if batches:
                self._reappend(part, pid, epoch - 1, batches)
                failpoints.hit("txn.redo.reappend.after")
            res = part.append([marker], sync="never")[0]
            if res.error is not None and res.error.code() != KafkaError.PRODUCER_FENCED:
                raise KafkaException(res.error)
            failpoints.hit("txn.marker.after")

    @staticmethod
    def _reappend(part, pid, epoch, batches):
        """Append those of a Prepare*'s stored batches (producer pid, data
        epoch epoch, in sequence order) that part does not hold yet.  Held:
        the producer's state there is at that epoch with a last sequence at
        or past the batch's.  (Sequences start at 0 in each epoch, and every
        transaction has its own epoch, so no wrap-around is in the way.)  The
        caller checked that no marker of the transaction is there, and holds
        the id's lock: nobody else writes this transaction meanwhile."""
        part.refresh()
        with part.log._mutex:
            e = part.state.entries.get(pid)
            last = e.batches[e.n - 1].last_seq if e is not None and e.producer_epoch == epoch \
                and e.n else -1
        missing = []
        for raw in batches:
            base_seq, = _SEQ.unpack_from(raw, 53)
            last_delta, = _SEQ.unpack_from(raw, 23)
            if base_seq + last_delta > last:
                missing.append(raw)
        if not missing:
            return
        log.info("%s-%d: appending %d batch(es) of producer %d epoch %d that its PrepareCommit "
                 "carries", part.topic, part.partition, len(missing), pid, epoch)
        for r in part.append(missing, sync="always"):
            if r.error is not None:
                raise KafkaException(r.error)

    def _complete(self, tid, st):
        """Roll a Prepare* forward: markers, then Complete* (caller holds the tid lock)."""
        self._write_markers(tid, st)
        for topic, partition in st["partitions"]:      # durable before Complete* forgets them
            self.store.partition(topic, partition).log.sync(force=True)
        pid, epoch = st["producer_id"], st["producer_epoch"]

        def complete(txn):
            cur = self._get(txn, tid)
            if cur is None or cur["producer_id"] != pid or cur["producer_epoch"] != epoch \
                    or cur["state"] != st["state"]:
                return                              # someone else completed it
            self.meta.put_txn(txn, tid, self._owned(tid, cur, pid, epoch))
        failpoints.hit("txn.complete.before")
        self.meta.update(complete)
        failpoints.hit("txn.complete.after")

    @staticmethod
    def _has_marker(part, pid, epoch):
        """True if part already holds this transaction's marker: the producer's
        state there carries the marker's epoch.  Either the marker set it, or
        a later transaction of the producer did, which it writes only after
        this marker; recovery keeps a prefix of each log, so that batch being
        there means the marker is too.  (An open transaction at that epoch is
        such a later one, e.g. one whose registration a power loss undid, and
        must not be ended by this marker.)"""
        part.refresh()
        with part.log._mutex:
            e = part.state.entries.get(pid)
            return e is not None and e.producer_epoch >= epoch

    # ---- hanging transactions ----
    def abort_orphans(self, part):
        """Abort the open transactions in part that no coordinator state
        accounts for; returns how many.

        Adding a partition commits to LMDB without flushing its meta page, so
        a system crash can undo the registration while the transaction's data,
        fsynced later, survives.  Nothing would then ever end that
        transaction (its coordinator does not know the partition) and the
        LSO would stay there for good.  An open transaction is accounted for
        when its transactional.id's state is Ongoing at the data's producer id
        and epoch and lists the partition, or Prepare* for it (the roll-forward
        writes the marker).  Judged under the id's lock, after catching up
        with the log, so a live owner is never mid-way through a change."""
        with part.log._mutex:
            candidates = dict(part.state.open_txns)
        aborted = 0
        for pid, first in candidates.items():
            tid = self.meta.view(lambda txn: self.meta.get_pid_owner(txn, pid))
            if tid is None:
                continue                # not handed out by a coordinator: not ours to judge
            with self._tid_lock(tid, blocking=False) as got:
                if not got:
                    continue            # busy: the append hook and the timer cover it
                st = self.meta.view(lambda txn: self._get(txn, tid))
                # Judge and abort under the partition lock: a live session's
                # first write must not land between the two.
                with part.log.locked():
                    part.refresh()
                    with part.log._mutex:
                        e = part.state.entries.get(pid)
                        if part.state.open_txns.get(pid) != first or e is None:
                            continue    # ended meanwhile
                        epoch = e.producer_epoch
                    if self._accounts_for(st, pid, epoch, part):
                        continue
                    part.abort_open_txn(pid, first, epoch, "transactional.id %r no longer lists "
                                        "the partition (state %s)" % (tid, st and st["state"]))
                    aborted += 1
        return aborted

    @staticmethod
    def _accounts_for(st, pid, epoch, part):
        if st is None or [part.topic, part.partition] not in st["partitions"]:
            return False
        if st["state"] == ONGOING:
            return st["producer_id"] == pid and st["producer_epoch"] == epoch
        if st["state"] in (PREPARE_COMMIT, PREPARE_ABORT):
            return st["producer_id"] == pid and st["producer_epoch"] == epoch + 1
        return False

    # ---- KIP-890 part 1: partitions check transactional writes ----
    def verify_write(self, producer_id, epoch, topic, partition):
        """None if producer_id may start writing its transaction to the
        partition, else the KafkaError refusing it: the write must come from
        the transactional.id's current session, in an Ongoing transaction
        that added this partition, or a batch its PrepareCommit carries (see
        commit_redo).  A producer id no coordinator handed out (a batch built
        by hand) is not checked."""
        carrying = self._carrying.get((producer_id, epoch))
        if carrying is not None and (topic, partition) in carrying.parts:
            # our own commit_redo's batch: in once its Prepare is committed
            return None if carrying.wait() else carrying.refusal()
        def look(txn):
            tid = self.meta.get_pid_owner(txn, producer_id)
            return tid, (self._get(txn, tid) if tid is not None else None)
        tid, st = self.meta.view(look)
        if tid is None:
            return None
        if st is not None and st.get("redo") and st["state"] == PREPARE_COMMIT \
                and st["producer_id"] == producer_id and st["producer_epoch"] == epoch + 1 \
                and [topic, partition] in st["redo"]:
            return None             # a batch its PrepareCommit carries (commit_redo)
        if st is None or st["producer_id"] != producer_id or st["producer_epoch"] != epoch:
            return KafkaError(KafkaError.INVALID_PRODUCER_EPOCH,
                              "Producer %d epoch %d is not the current session of transactional.id "
                              "%r (fenced)" % (producer_id, epoch, tid))
        if st["state"] != ONGOING or [topic, partition] not in st["partitions"]:
            return KafkaError(KafkaError.INVALID_TXN_STATE,
                              "Producer %d has no ongoing transaction that added %s-%d"
                              % (producer_id, topic, partition))
        return None

    # ---- recovery and timeouts ----
    def recover(self, min_age_ms=0):
        """Roll forward every Prepare* whose owner is not finishing it right
        now (and, with min_age_ms, that has waited at least that long: a live
        owner completes its own on its next call)."""
        states = self.meta.view(self.meta.txn_ids)
        now = _now_ms()
        for tid, st in states.items():
            if st["state"] in (PREPARE_COMMIT, PREPARE_ABORT) and \
                    now - st.get("update_ms", 0) >= min_age_ms:
                with self._tid_lock(tid, blocking=False) as got:
                    if not got:
                        continue
                    st = self.meta.view(lambda txn: self._get(txn, tid))
                    if st and st["state"] in (PREPARE_COMMIT, PREPARE_ABORT):
                        log.info("transactional.id %r: rolling %s forward", tid, st["state"])
                        self._complete(tid, st)

    def abort_expired(self, now_ms=None):
        """Abort (with an epoch bump that fences the owner) every Ongoing
        transaction older than its transaction.timeout.ms."""
        now_ms = _now_ms() if now_ms is None else now_ms
        states = self.meta.view(self.meta.txn_ids)
        aborted = []
        for tid, st in states.items():
            if st["state"] != ONGOING or now_ms - st["start_ms"] <= st["timeout_ms"]:
                continue
            with self._tid_lock(tid, blocking=False) as got:
                if not got:
                    continue
                cur = self.meta.view(lambda txn: self._get(txn, tid))
                if not cur or cur["state"] != ONGOING or now_ms - cur["start_ms"] <= cur["timeout_ms"]:
                    continue
                log.warning("transactional.id %r: transaction of producer %d epoch %d exceeded "
                            "transaction.timeout.ms=%d; aborting it and fencing the producer",
                            tid, cur["producer_id"], cur["producer_epoch"], cur["timeout_ms"])
                try:
                    self._prepare(tid, cur["producer_id"], cur["producer_epoch"], False, fence=True)
                except KafkaException:
                    continue                         # the owner moved on meanwhile
                self._complete(tid, self.meta.view(lambda txn: self._get(txn, tid)))
                aborted.append(tid)
        return aborted

    def pending_offsets(self, group):
        """{(topic, partition)} with offsets staged by an unfinished transaction
        (a commit's offsets are materialised at PrepareCommit)."""
        out = set()
        for st in self.meta.view(self.meta.txn_ids).values():
            if st["state"] == ONGOING:
                for t, p, _, _ in st["offsets"].get(group, []):
                    out.add((t, p))
        return out
