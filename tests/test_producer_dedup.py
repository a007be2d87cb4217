"""Kafka's idempotent-producer rules at the partition-level append.

Batches are built by hand (codec.encode_batch with producer_id, epoch and
base_sequence) and sent through Store.acquire(path).partition(t, p).append,
the path a retry after an unknown outcome takes.  The rules are Kafka's
(ProducerStateManager / ProducerAppendInfo): a 5-batch window per producer,
a duplicate returns the ORIGINAL offsets and writes nothing, sequence gaps
and stale epochs are refused, sequences wrap from 2^31-1 to 0.  The second
half breaks things on purpose: crashes between the log write and the LMDB
snapshot, a snapshot ahead of a truncated log, and producer id expiration.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pylog import codec, _bridge
from pylog.errors import KafkaError
from pylog.log import PartitionLog
from pylog.meta import pkey
from pylog.producer_state import encode_entry
from pylog.store import Store

TOPIC = "t"
PID = 4242
INT32_MAX = 2 ** 31 - 1


def now_ms():
    return int(time.time() * 1000)


def batch(seq, n=1, pid=PID, epoch=0, transactional=False, ts=None, tag=b"v"):
    """n records from producer pid at epoch, first sequence seq."""
    ts = now_ms() if ts is None else ts
    return codec.encode_batch([(ts, None, b"%s-%d-%d" % (tag, pid, seq + i), None)
                               for i in range(n)],
                              producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                              transactional=transactional)


def one(part, b):
    """Append a single batch, return its AppendResult."""
    [r] = part.append([b])
    return r


def span(r):
    assert r.error is None, r
    return (r.base_offset, r.last_offset)


def state_bytes(part, pid=PID):
    e = part.state.entries.get(pid)
    return None if e is None else encode_entry(e)


def read_all(part):
    """(batch infos, records) of the whole partition, CRCs checked."""
    infos, records, off = [], [], part.log.log_start_offset
    while off < part.log.next_offset:
        buf, _ = part.log.read(off, 1 << 20)
        bis, recs = codec.decode_all(buf)
        infos += bis
        records += recs
        off = bis[-1].next_offset
    return infos, records


@pytest.fixture
def store_path(tmp_path):
    path = str(tmp_path / "store")
    s = Store.acquire(path)
    s.create_topic(TOPIC, 1)
    s.release()
    return path


@pytest.fixture
def store(store_path):
    s = Store.acquire(store_path)
    yield s
    if s._refs > 0:
        s.release()


@pytest.fixture
def part(store):
    return store.partition(TOPIC, 0)


def reopen(store):
    """Close the store cleanly (state snapshot in LMDB) and open it again."""
    path = store.path
    store.release()
    s = Store.acquire(path)
    return s, s.partition(TOPIC, 0)


# ---------------------------------------------------------------------------
# The 5-batch window
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", range(5))
def test_resent_batch_returns_original_offsets_and_writes_nothing(part, which):
    sent = [batch(seq, n=2) for seq in range(0, 10, 2)]       # five batches of two
    first = [span(one(part, b)) for b in sent]
    assert first == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    end, size = part.log.next_offset, part.log.size_bytes

    r = one(part, sent[which])

    assert r.error is None and not r.appended
    assert (r.base_offset, r.last_offset) == first[which]
    assert (part.log.next_offset, part.log.size_bytes) == (end, size)
    _, records = read_all(part)
    assert len(records) == 10


def test_all_five_cached_batches_resent_in_one_call_are_duplicates(part):
    sent = [batch(seq, n=3) for seq in range(0, 15, 3)]
    first = [span(one(part, b)) for b in sent]
    end = part.log.next_offset

    results = part.append(sent)

    assert [(r.base_offset, r.last_offset, r.appended) for r in results] == \
        [(a, b, False) for a, b in first]
    assert part.log.next_offset == end


def test_sixth_oldest_batch_resent_is_out_of_order(part):
    sent = [batch(seq) for seq in range(6)]
    for b in sent:
        span(one(part, b))
    end = part.log.next_offset

    r = one(part, sent[0])          # fell out of the window when the 6th arrived

    assert r.error is not None and r.error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert part.log.next_offset == end
    assert not one(part, sent[1]).appended      # the 5 most recent still are duplicates


def test_sequence_gap_is_out_of_order_sequence_with_evidence(part):
    span(one(part, batch(0, n=3)))              # sequences 0..2 at offsets 0..2

    r = one(part, batch(5))

    assert r.error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER == 45
    assert (r.base_offset, r.last_offset, r.appended) == (-1, -1, False)
    msg = r.error.str()
    assert "producer %d" % PID in msg
    assert "at offset 3" in msg
    assert "%s-0" % TOPIC in msg
    assert "5 (incoming seq. number)" in msg
    assert "2 (current end sequence number)" in msg
    assert part.log.next_offset == 3
    assert span(one(part, batch(3))) == (3, 3)  # the gap is the producer's to fill


def test_older_epoch_is_fenced(part):
    span(one(part, batch(0, epoch=0)))
    span(one(part, batch(0, epoch=1)))

    r = one(part, batch(1, epoch=0))

    assert r.error.code() == KafkaError.INVALID_PRODUCER_EPOCH == 47
    assert "epoch 0" in r.error.str() and "epoch 1" in r.error.str()
    # A re-send of the old epoch's batch is no duplicate either: it is fenced.
    assert one(part, batch(0, epoch=0)).error.code() == KafkaError.INVALID_PRODUCER_EPOCH
    assert part.log.next_offset == 2


def test_new_epoch_must_start_at_sequence_zero(part):
    span(one(part, batch(0, n=2, epoch=0)))
    span(one(part, batch(2, n=2, epoch=0)))

    r = one(part, batch(4, n=2, epoch=1))
    assert r.error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert "new epoch" in r.error.str() and "4 (seq. number)" in r.error.str()

    assert span(one(part, batch(0, n=2, epoch=1))) == (4, 5)
    # The window was cleared: epoch 1's sequences 2..3 are new records, not a
    # duplicate of epoch 0's batch with the same sequence numbers.
    r = one(part, batch(2, n=2, epoch=1))
    assert r.appended and span(r) == (6, 7)
    assert part.state.entries[PID].n == 2
    assert not one(part, batch(0, n=2, epoch=1)).appended


def test_unknown_producer_accepts_any_sequence(part):
    assert span(one(part, batch(123456, pid=1))) == (0, 0)
    assert span(one(part, batch(7, pid=2, epoch=9))) == (1, 1)
    assert span(one(part, batch(123457, pid=1))) == (2, 2)
    assert one(part, batch(123459, pid=1)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_sequence_wraps_at_int32_max(part):
    span(one(part, batch(INT32_MAX - 2, n=3)))          # ends exactly at 2^31-1
    assert span(one(part, batch(0, n=2))) == (3, 4)      # wraps to 0
    assert not one(part, batch(0, n=2)).appended          # a duplicate after the wrap

    # A batch whose sequences cross the wrap: 2^31-2, 2^31-1, 0.
    span(one(part, batch(INT32_MAX - 1, n=3, pid=77)))
    assert one(part, batch(2, pid=77)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    r = one(part, batch(1, pid=77))
    assert r.appended and r.error is None
    dup = one(part, batch(INT32_MAX - 1, n=3, pid=77))
    assert not dup.appended and span(dup) == (5, 7)


def test_non_transactional_append_during_txn_raises(part):
    span(one(part, batch(0, transactional=True)))

    r = one(part, batch(1, transactional=False))

    assert r.error.code() == KafkaError.INVALID_TXN_STATE == 48
    assert "producer %d" % PID in r.error.str()
    assert span(one(part, batch(1, transactional=True))) == (1, 1)


def test_batches_of_one_producer_in_one_call_are_checked_in_order(part):
    results = part.append([batch(0, n=2), batch(2, n=2), batch(4, n=2)])
    assert [span(r) for r in results] == [(0, 1), (2, 3), (4, 5)]

    # The second batch is only in sequence after the first (staged) one; the
    # third repeats the second (a duplicate within the call, reported at the
    # offsets the second was given); the fourth leaves a gap.
    results = part.append([batch(6), batch(7, n=2), batch(7, n=2), batch(10)])
    assert span(results[0]) == (6, 6)
    assert span(results[1]) == (7, 8) and results[1].appended
    assert span(results[2]) == (7, 8) and not results[2].appended
    assert results[3].error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert part.log.next_offset == 9

    # Out of order within one call: the later sequence first is refused, the
    # earlier one still goes in.
    results = part.append([batch(10), batch(9)])
    assert results[0].error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert span(results[1]) == (9, 9)


def test_other_producers_batches_are_unaffected_by_a_refusal(part):
    results = part.append([batch(0, pid=1), batch(5, pid=1), batch(0, pid=2)])
    assert span(results[0]) == (0, 0)
    assert results[1].error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert span(results[2]) == (1, 1)


def test_prepare_update_does_not_mutate(part):
    span(one(part, batch(0, n=2)))
    before = state_bytes(part)
    b = batch(2, n=2)
    infos, _, rc = _bridge.scan(b)
    assert rc == 0
    hook = part.state.hook()
    with part.log.locked():
        verdicts = hook.before(part.log, infos, [b])
    assert verdicts == [None]                   # would be written...
    assert state_bytes(part) == before          # ...but nothing is installed yet
    assert hook.staged[PID].batches[hook.staged[PID].n - 1].last_seq == 3


def test_refused_batch_leaves_state_unchanged(part):
    span(one(part, batch(0, n=2)))
    span(one(part, batch(2, n=2)))
    before, end = state_bytes(part), part.log.next_offset

    refused = [batch(9), batch(3), batch(1, n=2)]       # gap, overlap, stale
    for b in refused:
        r = one(part, b)
        assert r.error is not None and r.error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert state_bytes(part) == before
        assert part.log.next_offset == end
    assert span(one(part, batch(4))) == (4, 4)


# ---------------------------------------------------------------------------
# Surviving a restart: LMDB snapshot plus replay of the log
# ---------------------------------------------------------------------------

def test_duplicates_recognised_after_close_and_reopen(store):
    part = store.partition(TOPIC, 0)
    sent = [batch(seq, n=2) for seq in range(0, 12, 2)]      # 6 batches, last 5 cached
    first = [span(one(part, b)) for b in sent]
    end = part.log.next_offset

    store, part = reopen(store)
    snap_end = store.meta.view(lambda txn: store.meta.get_state_end(txn, pkey(TOPIC, 0)))
    assert snap_end == end                       # a clean close snapshots everything

    for b, orig in zip(sent[1:], first[1:]):
        r = one(part, b)
        assert not r.appended and (r.base_offset, r.last_offset) == orig
    assert part.log.next_offset == end
    assert one(part, sent[0]).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert one(part, batch(1)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert span(one(part, batch(12))) == (end, end)
    store.release()


def test_duplicates_recognised_from_snapshot_plus_replayed_tail(store):
    """Part of the window comes from the LMDB snapshot, part from replaying
    batches another process appended after it."""
    part = store.partition(TOPIC, 0)
    sent = [batch(seq) for seq in range(5)]
    for b in sent[:3]:
        span(one(part, b))
    part.snapshot()
    path = store.path
    _run_child(path, """
        part = Store.acquire(path).partition("t", 0)
        for seq in (3, 4):
            [r] = part.append([batch(seq)])
            assert r.appended, r
        kill_self()
    """)
    store.release()

    s = Store.acquire(path)
    assert s.meta.view(lambda txn: s.meta.get_state_end(txn, pkey(TOPIC, 0))) == 3
    part = s.partition(TOPIC, 0)
    for i, b in enumerate(sent):
        r = one(part, b)
        assert not r.appended and span(r) == (i, i)
    assert span(one(part, batch(5))) == (5, 5)
    assert one(part, batch(1, n=2)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    s.release()


# ---------------------------------------------------------------------------
# Crash reconciliation (DESIGN.md invariant 2): the log is the truth
# ---------------------------------------------------------------------------

_CHILD_PRELUDE = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from pylog.store import Store
from test_producer_dedup import batch
path = {path!r}
def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _run_child(path, body, expect_killed=True):
    code = _CHILD_PRELUDE.format(tests=os.path.dirname(os.path.abspath(__file__)), path=path) \
        + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if expect_killed:
        assert proc.returncode == -9, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_crash_between_log_write_and_snapshot_is_replayed_on_open(store_path):
    _run_child(store_path, """
        part = Store.acquire(path).partition("t", 0)
        for seq in range(0, 8, 2):
            [r] = part.append([batch(seq, n=2)], sync="always")
            assert r.appended, r
        kill_self()             # no close: LMDB never hears of these batches
    """)
    s = Store.acquire(store_path)
    assert s.meta.view(lambda txn: s.meta.pstates(txn, pkey(TOPIC, 0))) == []
    part = s.partition(TOPIC, 0)
    assert part.log.next_offset == 8

    r = one(part, batch(6, n=2))                     # the last batch re-sent
    assert not r.appended and span(r) == (6, 7)
    assert one(part, batch(2, n=2)).appended is False
    assert one(part, batch(4, n=1)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert span(one(part, batch(8))) == (8, 8)       # the next sequence
    assert part.log.next_offset == 9
    s.release()


def test_crash_after_write_before_state_update_failpoint(store_path):
    """The writer dies right after its bytes reach the log, before the
    in-memory state or LMDB learn of them (failpoint log.append.after_write)."""
    _run_child(store_path, """
        from pylog import failpoints
        part = Store.acquire(path).partition("t", 0)
        [r] = part.append([batch(0, n=3)])
        failpoints.set("log.append.after_write", "kill")
        part.append([batch(3, n=3)])
        sys.exit("not killed")
    """)
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    assert part.log.next_offset == 6
    r = one(part, batch(3, n=3))
    assert not r.appended and span(r) == (3, 5)
    assert span(one(part, batch(6))) == (6, 6)
    assert one(part, batch(0, n=2)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    s.release()


def test_batches_written_behind_lmdbs_back_are_replayed(store_path):
    """Batches written with the PartitionLog alone (no producer hook, no LMDB)."""
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    span(one(part, batch(0, n=2)))
    s.release()                                   # snapshot: state_end 2

    log = PartitionLog(os.path.join(store_path, "%s-0" % TOPIC))
    log.append([batch(2, n=2), batch(4, n=2), batch(0, n=1, pid=9)])
    log.close()

    s = Store.acquire(store_path)
    assert s.meta.view(lambda txn: s.meta.get_state_end(txn, pkey(TOPIC, 0))) == 2
    part = s.partition(TOPIC, 0)
    assert not one(part, batch(4, n=2)).appended
    assert span(one(part, batch(4, n=2))) == (4, 5)
    assert not one(part, batch(0, n=1, pid=9)).appended
    assert span(one(part, batch(6, n=2))) == (7, 8)
    assert one(part, batch(1, n=1)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    s.release()


def test_torn_batch_after_crash_is_cut_and_its_resend_accepted(store_path):
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    span(one(part, batch(0, n=2)))
    seg_path = part.log.segments()[-1].log_path
    s.release()
    torn = batch(2, n=2)
    with open(seg_path, "ab") as f:               # a writer died half-way
        f.write(torn[:len(torn) // 2])

    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    assert part.log.next_offset == 2
    assert not one(part, batch(0, n=2)).appended
    r = one(part, torn)                           # never really written: accepted
    assert r.appended and span(r) == (2, 3)
    _, records = read_all(part)
    assert [rec.offset for rec in records] == [0, 1, 2, 3]
    s.release()


def test_snapshot_ahead_of_log_drops_producers_written_after_log_end(store_path):
    """The log lost its tail (not fsynced before a system crash) but LMDB
    kept a snapshot taken after it: batches past the log end are gone, so
    re-sending them must write them again, not report phantom offsets."""
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    a1, a2, b1 = batch(0, n=2, pid=1), batch(2, n=2, pid=1), batch(0, n=2, pid=2)
    assert [span(one(part, x)) for x in (a1, a2, b1)] == [(0, 1), (2, 3), (4, 5)]
    s.release()                                   # snapshot at 6
    log = PartitionLog(os.path.join(store_path, "%s-0" % TOPIC))
    log.truncate_to(4)                            # b1 is lost
    log.close()

    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    r = one(part, b1)
    assert r.appended and span(r) == (4, 5)      # written again, not a phantom duplicate
    r = one(part, a2)
    assert not r.appended and span(r) == (2, 3)  # producer 1 is still fully in the log
    assert span(one(part, batch(4, pid=1))) == (6, 6)
    s.release()
    # The corrected state was written back: a further reopen agrees.
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    assert not one(part, b1).appended and span(one(part, b1)) == (4, 5)
    s.release()


# Regression (fixed in 39dbbc3): PartitionState.load dropped every producer whose
# LAST batch was past the log end, even when earlier batches were still in the
# log, so a re-send of such a batch was written twice and a gap went unnoticed.
def test_snapshot_ahead_of_log_keeps_batches_still_in_log(store_path):
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    b1, a1, b2 = batch(0, n=2, pid=2), batch(0, n=2, pid=1), batch(2, n=2, pid=2)
    assert [span(one(part, x)) for x in (b1, a1, b2)] == [(0, 1), (2, 3), (4, 5)]
    s.release()
    log = PartitionLog(os.path.join(store_path, "%s-0" % TOPIC))
    log.truncate_to(4)                            # b2 lost, b1 still there
    log.close()

    s = Store.acquire(store_path)
    try:
        part = s.partition(TOPIC, 0)
        r = one(part, b1)
        assert not r.appended and span(r) == (0, 1)      # still in the log: a duplicate
        assert one(part, batch(4, pid=2)).error.code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    finally:
        s.release()


# ---------------------------------------------------------------------------
# producer.id.expiration.ms
# ---------------------------------------------------------------------------

def _expiring_store(path, ms):
    return Store.acquire(path, {"pylog.producer.id.expiration.ms": ms})


def test_idle_producer_state_expires_at_snapshot(store_path):
    s = _expiring_store(store_path, 200)
    part = s.partition(TOPIC, 0)
    assert part.state.expiration_ms == 200
    span(one(part, batch(0, n=3)))
    part.snapshot()                              # not idle yet: kept
    assert PID in part.state.entries
    time.sleep(0.3)

    part.snapshot()

    assert PID not in part.state.entries
    assert s.meta.view(lambda txn: s.meta.get_pstate(txn, pkey(TOPIC, 0), PID)) is None
    r = one(part, batch(1000))                   # any sequence is accepted again
    assert r.appended and span(r) == (3, 3)
    s.release()


def test_expired_producer_stays_expired_after_reopen(store_path):
    s = _expiring_store(store_path, 100)
    part = s.partition(TOPIC, 0)
    span(one(part, batch(0, n=2)))
    time.sleep(0.2)
    s.release()                                  # the closing snapshot expires it

    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    assert PID not in part.state.entries
    assert one(part, batch(77)).appended
    s.release()


def test_producer_with_open_transaction_never_expires(store_path):
    s = _expiring_store(store_path, 100)
    part = s.partition(TOPIC, 0)
    span(one(part, batch(0, n=2, transactional=True)))
    span(one(part, batch(0, pid=5)))
    time.sleep(0.2)

    part.snapshot()

    assert PID in part.state.entries and 5 not in part.state.entries
    assert one(part, batch(2, transactional=False)).error.code() == KafkaError.INVALID_TXN_STATE
    assert one(part, batch(9, transactional=True)).error.code() == \
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert not one(part, batch(0, n=2, transactional=True)).appended
    s.release()


def test_expiration_counts_from_the_last_write_not_the_batch_timestamp(store_path):
    """A client clock far behind must not expire a producer that is writing."""
    s = Store.acquire(store_path)
    part = s.partition(TOPIC, 0)
    day = 24 * 3600 * 1000
    span(one(part, batch(0, ts=now_ms() - 10 * day)))
    part.snapshot()
    assert PID in part.state.entries
    st = part.state
    st.expiration_ms = 1000
    last = st.entries[PID].last_update_ms
    st.expire(now_ms=last + 999)
    assert PID in st.entries
    st.expire(now_ms=last + 1000)
    assert PID not in st.entries
    s.release()


# Regression (fixed in 39dbbc3): Partition.snapshot relied on PartitionLog.sync(),
# which fsynced only bytes THIS process wrote, so bytes another process appended
# and never fsynced were vouched for by LMDB's state_end.
def test_snapshot_fsyncs_bytes_appended_by_other_processes(store_path, monkeypatch):
    from pylog import fsutil
    s = Store.acquire(store_path, {"pylog.fsync": "always"})    # "never" skips the fsync
    part = s.partition(TOPIC, 0)                 # open before the other process writes
    _run_child(store_path, """
        part = Store.acquire(path).partition("t", 0)
        [r] = part.append([batch(0, n=2)], sync="never")
        assert r.appended, r
        kill_self()
    """)
    synced = []
    real = fsutil.fsync
    monkeypatch.setattr(fsutil, "fsync", lambda fd, what="file": (synced.append(fd), real(fd, what)))
    try:
        part.snapshot()
        assert s.meta.view(lambda txn: s.meta.get_state_end(txn, pkey(TOPIC, 0))) == 2
        assert synced, "state_end 2 recorded without an fsync of the log"
    finally:
        s.release()


@pytest.mark.parametrize("policy,fsyncs", [("never", 0), ("always", 1)])
def test_a_snapshot_fsyncs_the_log_unless_fsync_is_never(tmp_path, policy, fsyncs):
    """pylog.fsync=never gives up durability on a power loss, so the producer
    state snapshot (every 16 MiB) does not fsync the log first: a snapshot left
    ahead of the log is trimmed on load (test_snapshot_ahead_of_log_*)."""
    from pylog import failpoints
    s = Store(str(tmp_path), {"pylog.fsync": policy})
    try:
        s.create_topic("t", 1)
        part = s.partition("t", 0)
        part.append([batch(0)], sync="never")
        failpoints.set("fsync.before", "sleep:0")
        try:
            part.snapshot()
            assert failpoints.hits("fsync.before") == fsyncs
        finally:
            failpoints.clear("fsync.before")
    finally:
        s.close()
