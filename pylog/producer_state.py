"""Producer state of one partition: the idempotence and transaction rules.

The log is the truth (DESIGN.md, invariant 2).  PartitionState is derived
from it: for each producer id the epoch, the open transaction and the last
5 batches (a C pl_pstate), the open transactions (for the LSO) and the
aborted transactions.  Every process that appends to or reads a partition
keeps one, advanced by replaying the batches it has not yet seen, its own
and other processes' alike.  LMDB holds a snapshot of it at an offset
(`state_end`, Kafka's <offset>.snapshot): opening loads the snapshot and
replays the log from there.

Appends follow Kafka's prepareUpdate/update split: before() validates each
batch against a staged copy of the entries, after() installs the copy once
the bytes are written, so a failed write leaves the state untouched.
"""
import logging
import time

from . import _bridge
from ._native import ffi, lib
from .codec import decode_control, CONTROL_COMMIT
from .errors import KafkaError
from .log import AppendResult

log = logging.getLogger("pylog.producer_state")

DEFAULT_EXPIRATION_MS = 24 * 3600 * 1000     # producer.id.expiration.ms
SNAPSHOT_BYTES = 16 << 20                    # take a snapshot after this much new log


def _now_ms():
    return int(time.time() * 1000)


def _new_entry():
    s = ffi.new("pl_pstate *")
    s.producer_epoch = lib.PL_NO_EPOCH
    s.current_txn_first_offset = -1
    return s


def _copy(entry):
    c = ffi.new("pl_pstate *")
    ffi.memmove(c, entry, ffi.sizeof("pl_pstate"))
    return c


def encode_entry(entry):
    out = ffi.new("uint8_t[]", lib.PL_PSTATE_MAX_SIZE)
    n = lib.pl_pstate_encode(entry, out, lib.PL_PSTATE_MAX_SIZE)
    if n < 0:
        _bridge.raise_for(n, "encode producer state")
    return ffi.buffer(out, n)[:]


def decode_entry(raw):
    s = ffi.new("pl_pstate *")
    rc = lib.pl_pstate_decode(ffi.from_buffer(raw), len(raw), s)
    if rc:
        _bridge.raise_for(rc, "producer state in LMDB")
    return s


def _error(code, text):
    return AppendResult(-1, -1, False, KafkaError(code, text))


class PartitionState:
    """Producer state of one partition as of offset `end`.  Not thread-safe:
    the owning Partition serialises calls."""

    def __init__(self, topic, partition, expiration_ms=DEFAULT_EXPIRATION_MS):
        self.topic = topic
        self.partition = partition
        self.expiration_ms = expiration_ms
        self.entries = {}           # producer_id -> pl_pstate*
        self.open_txns = {}         # producer_id -> first offset of its open transaction
        self.new_aborted = []       # (pid, first, last, lso) found since the snapshot
        self.end = 0                # every batch below this offset has been applied
        self.snapshot_end = 0
        self._dirty = set()
        self._bytes_since_snapshot = 0
        # verify_txn(pid, epoch) -> KafkaError or None: the coordinator's check
        # of a transaction's first write to this partition (KIP-890 part 1).
        self.verify_txn = None

    # ---- snapshot ----
    def load(self, meta, txn, pk, log_end):
        """Load the LMDB snapshot.  A snapshot ahead of the log (the log lost
        its unsynced tail in a system crash) keeps only the producers whose
        last batch is still in the log; the rest start afresh."""
        self.end = self.snapshot_end = meta.get_state_end(txn, pk)
        for pid, raw in meta.pstates(txn, pk):
            self.entries[pid] = decode_entry(raw)
        for first, pid in meta.open_txns(txn, pk):
            self.open_txns[pid] = first
        if self.end > log_end:
            log.warning("%s-%d: producer state snapshot at %d is ahead of the log end %d; "
                        "forgetting the batches written after it", self.topic, self.partition,
                        self.end, log_end)
            for pid, e in list(self.entries.items()):
                # The window is in offset order: keep the prefix still in the log.
                kept = 0
                while kept < e.n and e.batches[kept].last_offset < log_end:
                    kept += 1
                if kept != e.n:
                    self._dirty.add(pid)
                    e.n = kept
                    if e.current_txn_first_offset >= log_end:
                        e.current_txn_first_offset = -1
                    if kept == 0:
                        del self.entries[pid]
            for pid, first in list(self.open_txns.items()):
                if first >= log_end:
                    del self.open_txns[pid]
            self.end = log_end
            self.snapshot_end = -1          # force the next snapshot to rewrite

    def snapshot(self, meta, txn, pk, now_ms=None):
        """Write changed entries, open transactions, new aborted entries and
        the state end.  The caller holds the partition lock and has fsynced
        the log up to self.end."""
        self.expire(now_ms)
        for pid in self._dirty:
            e = self.entries.get(pid)
            if e is None:
                meta.delete_pstate(txn, pk, pid)
            else:
                meta.put_pstate(txn, pk, pid, encode_entry(e))
        for first, pid in meta.open_txns(txn, pk):
            if self.open_txns.get(pid) != first:
                meta.remove_open_txn(txn, pk, first, pid)
        for pid, first in self.open_txns.items():
            meta.add_open_txn(txn, pk, first, pid)
        for pid, first, last, lso in self.new_aborted:
            meta.add_aborted(txn, pk, pid, first, last, lso)
        meta.put_state_end(txn, pk, self.end)

    def snapshot_done(self):
        self._dirty.clear()
        self.new_aborted = []
        self.snapshot_end = self.end
        self._bytes_since_snapshot = 0

    def wants_snapshot(self):
        return self._bytes_since_snapshot >= SNAPSHOT_BYTES

    def expire(self, now_ms=None):
        """Forget producers idle past producer.id.expiration.ms, never one
        with an open transaction (its markers still need the state)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for pid, e in list(self.entries.items()):
            # Kafka measures idleness from the batch timestamp (the client's
            # clock); the wall clock of the last append or replay is also
            # counted, so a producer with a clock far behind is not dropped
            # while it is writing.
            last = max(e.last_timestamp, e.last_update_ms)
            if (e.current_txn_first_offset < 0 and pid not in self.open_txns
                    and now_ms - last >= self.expiration_ms):
                del self.entries[pid]
                self._dirty.add(pid)

    # ---- replay ----
    def catch_up(self, log):
        """Apply the batches of log at or after self.end (other processes'
        appends, or the tail after a snapshot)."""
        if log.next_offset <= self.end:
            return
        for seg, bi in log.batches(self.end):
            if bi.base_offset < self.end:
                continue
            marker = None
            if bi.is_control and bi.producer_id >= 0:
                marker = decode_control(seg.read(bi.position, bi.size), _bridge_rebase(bi))[0]
            self.apply(bi, marker)

    def apply(self, bi, marker=None):
        """Record one batch already in the log (no checks: the log is the truth)."""
        self.end = bi.next_offset
        self._bytes_since_snapshot += bi.size
        pid = bi.producer_id
        if pid < 0:
            return
        e = self.entries.get(pid)
        if e is None:
            e = self.entries[pid] = _new_entry()
        self._dirty.add(pid)
        if bi.is_control:
            first = self.open_txns.pop(pid, None)
            if marker != CONTROL_COMMIT and first is not None:
                self.new_aborted.append((pid, first, bi.base_offset, self.lso(bi.base_offset)))
            lib.pl_dedup_marker(e, bi.producer_epoch, 0, bi.max_timestamp, _now_ms())
            return
        lib.pl_dedup_update(e, bi.producer_epoch, bi.base_sequence, bi.last_sequence,
                            bi.base_offset, bi.last_offset, bi.max_timestamp,
                            1 if bi.is_transactional else 0, _now_ms())
        if bi.is_transactional and pid not in self.open_txns:
            self.open_txns[pid] = bi.base_offset

    # ---- transactions ----
    def lso(self, high_watermark):
        """Last stable offset: the first offset of the oldest open transaction."""
        return min(self.open_txns.values(), default=high_watermark) if self.open_txns else high_watermark

    # ---- the append hook ----
    def hook(self):
        return _AppendHook(self)


def _bridge_rebase(bi):
    """A copy of bi positioned at 0, for a buffer holding just that batch."""
    c = _bridge.BatchInfo.__new__(_bridge.BatchInfo)
    for name in _bridge.BatchInfo.__slots__:
        setattr(c, name, getattr(bi, name))
    c.position = 0
    return c


class _AppendHook:
    """Kafka's per-batch producer checks, run by PartitionLog.append under the lock."""

    def __init__(self, state):
        self.state = state
        self.staged = {}            # producer_id -> pl_pstate* with this append applied
        self.markers = {}           # predicted offset -> control type of a marker
        self.opened = set()         # producers whose transaction this append opens
        self.stale = {}             # producer_id -> (first offset, epoch) of a stale open transaction

    def before(self, log, infos, batches):
        st = self.state
        st.catch_up(log)
        nxt = log.next_offset
        verdicts = []
        dup = ffi.new("int *")
        for bi, raw in zip(infos, batches):
            pid = bi.producer_id
            if pid < 0 or bi.is_control:
                if bi.is_control and pid >= 0:
                    v = self._check_marker(bi)
                    if v is not None:
                        verdicts.append(v)
                        continue
                    self.markers[nxt] = decode_control(raw, _bridge_rebase(bi))[0]
                verdicts.append(None)
                nxt += bi.last_offset_delta + 1
                continue
            e = self.staged.get(pid) or st.entries.get(pid)
            if e is None:
                e = _new_entry()
            if bi.is_transactional and st.verify_txn is not None and pid not in self.opened \
                    and (pid not in st.open_txns or bi.producer_epoch > e.producer_epoch):
                err = st.verify_txn(pid, bi.producer_epoch)
                if err is None and pid in st.open_txns:
                    # The coordinator's current session writes here while an
                    # older session's transaction is still open: one whose
                    # registration a crash undid (a registered one gets its
                    # marker before a newer epoch exists).  Joining it would
                    # commit its records; the caller aborts it and retries.
                    self.stale[pid] = (st.open_txns[pid], e.producer_epoch)
                    err = _error(KafkaError.CONCURRENT_TRANSACTIONS,
                                 "producer %d has an older transaction open here" % pid)
                if err is not None:
                    verdicts.append(AppendResult(-1, -1, False, err))
                    continue
            rc = lib.pl_dedup_check(e, bi.producer_epoch, bi.base_sequence, bi.last_sequence,
                                    1 if bi.is_transactional else 0, dup)
            if rc == lib.PL_EDUPLICATE:
                m = e.batches[dup[0]]
                verdicts.append(AppendResult(m.last_offset - m.offset_delta, m.last_offset, False))
                continue
            if rc:
                verdicts.append(self._refusal(rc, bi, e, nxt))
                continue
            if bi.is_transactional:
                self.opened.add(pid)
            staged = self.staged[pid] = _copy(e)
            lib.pl_dedup_update(staged, bi.producer_epoch, bi.base_sequence, bi.last_sequence,
                                nxt, nxt + bi.last_offset_delta, bi.max_timestamp,
                                1 if bi.is_transactional else 0, _now_ms())
            verdicts.append(None)
            nxt += bi.last_offset_delta + 1
        return verdicts

    def _check_marker(self, bi):
        e = self.staged.get(bi.producer_id) or self.state.entries.get(bi.producer_id)
        if e is not None and e.producer_epoch != lib.PL_NO_EPOCH and bi.producer_epoch < e.producer_epoch:
            return _error(KafkaError.PRODUCER_FENCED,
                          "marker from producer %d epoch %d, but epoch %d is current" % (
                              bi.producer_id, bi.producer_epoch, e.producer_epoch))
        return None

    def _refusal(self, rc, bi, e, offset):
        pid, epoch, seq = bi.producer_id, bi.producer_epoch, bi.base_sequence
        if rc == lib.PL_EFENCED:
            return _error(KafkaError.INVALID_PRODUCER_EPOCH,
                          "Producer %d's epoch %d is older than the current epoch %d (fenced)"
                          % (pid, epoch, e.producer_epoch))
        if rc == lib.PL_EOUTOFORDER:
            last = e.batches[e.n - 1].last_seq if e.n else -1
            if epoch != e.producer_epoch:
                text = ("Invalid sequence number for new epoch of producer %d at offset %d in "
                        "partition %s-%d: %d (request epoch), %d (seq. number), %d (current end "
                        "sequence number)" % (pid, offset, self.state.topic, self.state.partition,
                                              epoch, seq, last))
            else:
                text = ("Out of order sequence number for producer %d at offset %d in partition "
                        "%s-%d: %d (incoming seq. number), %d (current end sequence number)"
                        % (pid, offset, self.state.topic, self.state.partition, seq, last))
            return _error(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, text)
        if rc == lib.PL_ETXNSTATE:
            return _error(KafkaError.INVALID_TXN_STATE,
                          "Expected transactional write from producer %d at offset %d in "
                          "partition %s-%d: it has an open transaction" % (
                              pid, offset, self.state.topic, self.state.partition))
        return _error(KafkaError.INVALID_RECORD, "batch refused: native code %d" % rc)

    def after(self, log, written):
        st = self.state
        for bi in written:
            staged = self.staged.get(bi.producer_id)
            if staged is not None and not bi.is_control:
                st.entries[bi.producer_id] = staged
                st.end = bi.next_offset
                st._dirty.add(bi.producer_id)
                st._bytes_since_snapshot += bi.size
                if bi.is_transactional and bi.producer_id not in st.open_txns:
                    st.open_txns[bi.producer_id] = bi.base_offset
            else:
                st.apply(bi, self.markers.get(bi.base_offset))
        self.staged.clear()
        self.markers.clear()
