"""Redo in Prepare: a commit whose last records are still queued carries them
in the PrepareCommit (pylog/txn.py, Coordinator.commit_redo).

The crash points: between the LMDB commit of the Prepare and the appends,
between the appends of two partitions, between the appends and the markers,
in the middle of a roll-forward; a power loss (log tails lost, LMDB's last
unflushed commit undone); a roll-forward racing the owner; read_committed
readers in other processes while such a Prepare is pending; the cap; a
retried commit; and a failure before the commit point.
"""
import os
import signal
import time

import pytest

from pylog import Consumer, KafkaException, Producer, failpoints
from pylog.store import Store
from pylog.torture import powerloss
from pylog.txn import REDO_MAX_BYTES

from txn_support import (conf_for, control_batches, create_topics, meta_view, read_all,
                         run_python, txn_state, values_of, wait_until)


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear()
    yield
    failpoints.clear()


def _producer(conf, tid="redo", **extra):
    return Producer({**conf, "transactional.id": tid, "pylog.fsync": "always", "linger.ms": 1000,
                     **extra})


def _stored_batches(path, tid):
    return meta_view(path, lambda meta, txn: meta.get_redo(txn, tid))


def _read_with_offsets(conf, tps, isolation="read_committed"):
    return [(m.topic(), m.partition(), m.offset(), m.value())
            for m in read_all(conf, tps, isolation=isolation)]


def _counting(*names):
    for n in names:
        failpoints.set(n, "sleep:0")


# ---- the path is taken, and only when it should be ----

def test_a_small_commit_carries_its_records_in_the_prepare(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 2})
    reports = []
    p = _producer(conf)
    p.init_transactions()
    _counting("txn.redo.committed", "txn.add_partitions.after", "meta.durable.after",
              "txn.redo.append.after")
    p.begin_transaction()
    p.produce("a", value=b"a0", on_delivery=lambda e, m: reports.append((e, m)))
    p.produce("b", value=b"b0", key=b"k", headers=[("h", b"1")], partition=1,
              on_delivery=lambda e, m: reports.append((e, m)))
    p.produce("a", value=b"a1", on_delivery=lambda e, m: reports.append((e, m)))
    p.commit_transaction()
    assert failpoints.hits("txn.redo.committed") == 1
    assert failpoints.hits("txn.add_partitions.after") == 0       # registered by the Prepare
    assert failpoints.hits("meta.durable.after") == 1
    assert failpoints.hits("txn.redo.append.after") == 2
    st = txn_state(tmp_path, "redo")
    assert st["state"] == "PrepareCommit"
    assert sorted(map(tuple, st["partitions"])) == [("a", 0), ("b", 1)]
    assert len(_stored_batches(tmp_path, "redo")) == 2          # until Complete*
    # delivery reports carry the offsets the records are read at
    assert all(e is None for e, _ in reports) and len(reports) == 3
    reported = sorted((m.topic(), m.partition(), m.offset(), m.value()) for _, m in reports)
    assert reported == sorted(_read_with_offsets(conf, [("a", 0), ("b", 1)]))
    # the next transaction records Complete*, which drops the stored batches
    p.begin_transaction()
    p.produce("a", value=b"a2")
    p.commit_transaction()
    p.close()
    assert txn_state(tmp_path, "redo")["state"] == "CompleteCommit"
    assert _stored_batches(tmp_path, "redo") == []
    assert values_of(read_all(conf, [("a", 0)])) == [b"a0", b"a1", b"a2"]
    assert len(control_batches(tmp_path, "a", 0)) == 2


def test_records_written_earlier_and_records_carried_share_one_sequence(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    p = _producer(conf)
    p.init_transactions()
    for round_ in range(3):
        p.begin_transaction()
        for i in range(5):
            p.produce("a", value=b"%d-early-%d" % (round_, i))
        p.flush()                                   # written the usual way, registered
        for i in range(3):
            p.produce("a", value=b"%d-late-%d" % (round_, i))
        _counting("txn.redo.committed")
        p.commit_transaction()
        assert failpoints.hits("txn.redo.committed") == 1
        failpoints.clear()
    p.close()
    expect = [b"%d-%s-%d" % (r, w, i) for r in range(3) for w, n in ((b"early", 5), (b"late", 3))
              for i in range(n)]
    assert values_of(read_all(conf, [("a", 0)])) == expect


@pytest.mark.parametrize("fsync", ["never", "interval"])
def test_other_fsync_policies_keep_the_usual_path(tmp_path, fsync):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    p = _producer(conf, **{"pylog.fsync": fsync})
    p.init_transactions()
    _counting("txn.redo.committed")
    p.begin_transaction()
    p.produce("a", value=b"x")
    p.commit_transaction()
    p.close()
    assert failpoints.hits("txn.redo.committed") == 0
    assert values_of(read_all(conf, [("a", 0)])) == [b"x"]


def test_above_the_cap_the_records_are_flushed_the_usual_way(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    p = _producer(conf, **{"batch.size": 300 << 10})
    p.init_transactions()
    value = b"v" * (100 << 10)
    _counting("txn.redo.committed", "txn.add_partitions.after")
    p.begin_transaction()
    for _ in range(REDO_MAX_BYTES // len(value) + 1):        # just past the cap
        p.produce("a", value=value)
    p.commit_transaction()
    assert failpoints.hits("txn.redo.committed") == 0
    assert failpoints.hits("txn.add_partitions.after") == 1
    p.begin_transaction()
    for _ in range(REDO_MAX_BYTES // len(value) - 1):        # below it
        p.produce("a", value=value)
    p.commit_transaction()
    assert failpoints.hits("txn.redo.committed") == 1
    assert failpoints.hits("txn.add_partitions.after") == 1
    p.close()
    assert len(read_all(conf, [("a", 0)])) == 2 * (REDO_MAX_BYTES // len(value))


def test_the_encoded_size_is_checked_against_the_cap_too(tmp_path, monkeypatch):
    """The queued bytes are under the cap, the encoded batches over it: the
    records taken are written the usual way, nothing is lost or doubled."""
    import pylog.producer_txn as pt
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    p = _producer(conf)
    p.init_transactions()
    monkeypatch.setattr(pt, "REDO_MAX_BYTES", 1000)
    _counting("txn.redo.committed", "txn.add_partitions.after")
    p.begin_transaction()
    for i in range(9):
        p.produce("a", value=b"%03d" % i + b"x" * 97)          # 900 bytes queued, more encoded
    p.commit_transaction()
    p.close()
    assert failpoints.hits("txn.redo.committed") == 0
    assert failpoints.hits("txn.add_partitions.after") == 1
    assert values_of(read_all(conf, [("a", 0)])) == [b"%03d" % i + b"x" * 97 for i in range(9)]


# ---- failures on the owner's path ----

def test_a_failure_before_the_commit_point_falls_back_to_the_usual_path(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    reports = []
    p = _producer(conf)
    p.init_transactions()
    p.begin_transaction()
    p.produce("a", value=b"x", on_delivery=lambda e, m: reports.append(e))
    failpoints.set("txn.prepare.before", "eio")               # once: the retry passes
    p.commit_transaction()
    assert reports == [None]
    assert failpoints.hits("txn.prepare.before") == 2
    p.close()
    assert values_of(read_all(conf, [("a", 0)])) == [b"x"]
    assert _stored_batches(tmp_path, "redo") == []


def test_a_fenced_commit_carries_nothing_and_writes_nothing(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    reports = []
    p = _producer(conf)
    p.init_transactions()
    p.begin_transaction()
    p.produce("a", value=b"zombie", on_delivery=lambda e, m: reports.append(e))
    newer = _producer(conf)
    newer.init_transactions()                                 # fences p
    with pytest.raises(KafkaException) as ei:
        p.commit_transaction()
    assert ei.value.args[0].fatal()
    assert len(reports) == 1 and reports[0] is not None
    newer.close()
    p.close()
    assert read_all(conf, [("a", 0)], isolation="read_uncommitted") == []


def test_a_commit_failing_after_its_commit_point_is_retried_to_completion(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    reports = []
    p = _producer(conf)
    p.init_transactions()
    p.begin_transaction()
    p.produce("a", value=b"a", on_delivery=lambda e, m: reports.append(e))
    p.produce("b", value=b"b", on_delivery=lambda e, m: reports.append(e))
    failpoints.set("txn.redo.append.after", "eio")            # after the first partition
    with pytest.raises(Exception):
        p.commit_transaction()
    failpoints.clear()
    p.poll(0)
    # decided, the outcome unknown to the producer: reported failed, not acknowledged
    assert len(reports) == 2 and all(e is not None for e in reports)
    assert txn_state(tmp_path, "redo")["state"] == "PrepareCommit"
    p.commit_transaction()                                    # the retry finishes it
    assert txn_state(tmp_path, "redo")["state"] == "PrepareCommit"
    for t in ("a", "b"):
        assert len(control_batches(tmp_path, t, 0)) == 1
    p.begin_transaction()
    p.produce("a", value=b"next")
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("a", 0)])) == [b"a", b"next"]
    assert values_of(read_all(conf, [("b", 0)])) == [b"b"]
    assert len(read_all(conf, [("a", 0), ("b", 0)], isolation="read_uncommitted")) == 3


# ---- crashes (SIGKILL at each step), then whoever comes next rolls forward ----

OWNER = r"""
import os, sys
from pylog import Producer
from pylog.store import Store
path = sys.argv[1]
conf = {"bootstrap.servers": "file://" + path}
p = Producer({**conf, "transactional.id": "crashy", "pylog.fsync": "always", "linger.ms": 1000})
p.init_transactions()
p.begin_transaction()
p.produce("a", value=b"a-early", partition=0)
p.flush()                                   # one record written the usual way first
for t in ("a", "b"):
    for i in range(3):
        p.produce(t, value=("%s-%d" % (t, i)).encode(), partition=0)
s = Store.acquire(path)
for t in ("a", "b"):
    s.partition(t, 0)
sizes = {t: os.path.getsize(os.path.join(path, "%s-0" % t, "%020d.log" % 0)) for t in ("a", "b")}
print("sizes", sizes["a"], sizes["b"], flush=True)
p.commit_transaction()
print("committed", flush=True)
os.kill(os.getpid(), 9)
"""

RECOVER = r"""
import sys
from pylog.store import Store
s = Store.acquire(sys.argv[1])
s.coordinator
s.release()
print("recovered", flush=True)
"""

INIT = r"""
import sys
from pylog import Producer
p = Producer({"bootstrap.servers": "file://" + sys.argv[1], "transactional.id": "crashy"})
p.init_transactions()
p.close()
print("initialised", flush=True)
"""

LSO = r"""
import sys
from pylog.store import Store
s = Store.acquire(sys.argv[1])             # no coordinator: nothing is rolled forward here
out = []
for t in ("a", "b"):
    part = s.partition(t, 0)
    out.append("%s:%d/%d" % (t, part.last_stable_offset(), part.refresh()))
s.release()
print(" ".join(out), flush=True)
"""

EXPECT = {"a": [b"a-early", b"a-0", b"a-1", b"a-2"], "b": [b"b-0", b"b-1", b"b-2"]}


def _crash(tmp_path, failpoint, action="kill"):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    r = run_python(OWNER, tmp_path, env={"PYLOG_FAILPOINTS": "%s=%s" % (failpoint, action)})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    out = r.stdout.decode()
    assert "sizes" in out
    sizes = dict(zip("ab", map(int, out.split("sizes ")[1].split()[:2])))
    return conf, sizes, "committed" in out


def _check_committed_once(tmp_path, conf):
    for t in ("a", "b"):
        assert values_of(read_all(conf, [(t, 0)])) == EXPECT[t]
        assert values_of(read_all(conf, [(t, 0)], isolation="read_uncommitted")) == EXPECT[t]
        assert len(control_batches(tmp_path, t, 0)) == 1
    st = txn_state(tmp_path, "crashy")
    assert st["state"] in ("CompleteCommit", "Empty")
    assert _stored_batches(tmp_path, "crashy") == []


KILL_POINTS = ["txn.redo.committed", "txn.redo.append.after", "txn.prepare.after",
               "txn.marker.after"]
OPENERS = ["recover", "init", "consumer"]
# CI runs each kill point with one opener (rotating); PYLOG_SLOW_TESTS=1 runs all 12 pairs.
KILL_CASES = ([(f, o) for f in KILL_POINTS for o in OPENERS]
              if os.environ.get("PYLOG_SLOW_TESTS") == "1"
              else [(f, OPENERS[i % len(OPENERS)]) for i, f in enumerate(KILL_POINTS)])


@pytest.mark.parametrize("failpoint,opener", KILL_CASES)
def test_a_kill_after_the_commit_point_is_rolled_forward_exactly_once(tmp_path, failpoint, opener):
    conf, sizes, acked = _crash(tmp_path, failpoint)
    assert not acked
    st = txn_state(tmp_path, "crashy")
    assert st["state"] == "PrepareCommit" and st["redo"] == [["a", 0], ["b", 0]]
    assert len(_stored_batches(tmp_path, "crashy")) == 2
    if failpoint == "txn.redo.committed":
        # nothing of the carried batches is in any log; readers elsewhere see
        # the partitions as they were (the early record is an open transaction)
        r = run_python(LSO, tmp_path)
        assert r.stdout.decode().split() == ["a:0/1", "b:0/0"], r.stderr.decode()
    # a process opening the partitions judges their open transactions
    # (abort_orphans): the Prepare accounts for them, nothing is aborted
    r = run_python(LSO, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    if opener == "recover":
        r = run_python(RECOVER, tmp_path)
        assert r.returncode == 0, r.stderr.decode()
    elif opener == "init":
        r = run_python(INIT, tmp_path)
        assert r.returncode == 0, r.stderr.decode()
    else:                                   # a reader in this process opens the store
        c = Consumer({**conf, "group.id": "opener", "isolation.level": "read_committed"})
        c.close()
    _check_committed_once(tmp_path, conf)


def test_a_kill_in_the_middle_of_a_roll_forward_is_rolled_forward_again(tmp_path):
    conf, _, _ = _crash(tmp_path, "txn.redo.committed")
    r = run_python(RECOVER, tmp_path, env={"PYLOG_FAILPOINTS": "txn.redo.reappend.after=kill"})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert len(control_batches(tmp_path, "a", 0)) == 0
    r = run_python(RECOVER, tmp_path, env={"PYLOG_FAILPOINTS": "txn.redo.reappend.after=kill@2"})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()    # "a" was done: "b" only
    r = run_python(RECOVER, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    _check_committed_once(tmp_path, conf)


def test_a_kill_before_the_commit_point_leaves_nothing_of_the_carried_records(tmp_path):
    conf, _, _ = _crash(tmp_path, "txn.prepare.before")
    st = txn_state(tmp_path, "crashy")
    assert st["state"] == "Ongoing" and st["partitions"] == [["a", 0]]
    assert values_of(read_all(conf, [("b", 0)], isolation="read_uncommitted")) == []
    r = run_python(INIT, tmp_path)                   # aborts the early record's transaction
    assert r.returncode == 0, r.stderr.decode()
    assert read_all(conf, [("a", 0), ("b", 0)]) == []
    assert values_of(read_all(conf, [("a", 0)], isolation="read_uncommitted")) == [b"a-early"]


# ---- power loss ----

def _lose_log_tail(path, topic, size):
    seg = os.path.join(str(path), "%s-0" % topic, "%020d.log" % 0)
    os.truncate(seg, size)
    sync = os.path.join(str(path), "%s-0" % topic, ".sync")
    if os.path.exists(sync):
        os.remove(sync)                     # the group-commit marker would be past the end


def test_a_power_loss_after_the_ack_keeps_the_records_at_their_offsets(tmp_path):
    """Acknowledged: the batches were fsynced with the Prepare's flush; the
    markers were not (their fsync held back), and are written again."""
    conf, _, acked = _crash(tmp_path, "txn.markers.sync.before", "sleep:10000")
    assert acked
    from test_transactions import lose_unsynced_bytes
    for t in ("a", "b"):
        assert lose_unsynced_bytes(tmp_path, t, 0) > 0           # the marker
    assert [m[2] for m in _read_with_offsets(conf, [("a", 0)], "read_uncommitted")] == [0, 1, 2, 3]
    _check_committed_once(tmp_path, conf)
    assert [m[2] for m in _read_with_offsets(conf, [("b", 0)])] == [0, 1, 2]


@pytest.mark.parametrize("failpoint", ["txn.prepare.after", "txn.redo.append.after"])
def test_a_power_loss_of_the_appended_batches_after_the_commit_point(tmp_path, failpoint):
    """The Prepare is durable, the log tails with the carried batches are
    lost: the roll-forward appends them again."""
    conf, sizes, _ = _crash(tmp_path, failpoint)
    for t in ("a", "b"):
        _lose_log_tail(tmp_path, t, sizes[t])
    assert txn_state(tmp_path, "crashy")["state"] == "PrepareCommit"
    r = run_python(RECOVER, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    _check_committed_once(tmp_path, conf)


@pytest.mark.parametrize("failpoint", ["txn.redo.committed", "txn.redo.append.after",
                                       "txn.prepare.after"])
def test_a_power_loss_undoing_the_unflushed_prepare(tmp_path, failpoint):
    """Killed before the Prepare's meta page was surely flushed (nothing
    acknowledged), and the power loss undoes that LMDB commit: whatever of
    the carried batches reached the log is an open transaction nothing
    accounts for, and is aborted, never committed."""
    conf, sizes, acked = _crash(tmp_path, failpoint)
    assert not acked
    before = powerloss.lmdb_txnid(str(tmp_path))
    assert powerloss.undo_last_lmdb_commit(str(tmp_path), 0)
    assert powerloss.lmdb_txnid(str(tmp_path)) == before - 1
    st = txn_state(tmp_path, "crashy")
    assert st["state"] == "Ongoing" and "redo" not in st
    r = run_python(INIT, tmp_path)           # the owner comes back
    assert r.returncode == 0, r.stderr.decode()
    # "a" was registered: the init aborts it; "b" was not: abort_orphans does
    store = Store.acquire(str(tmp_path))
    try:
        wait_until(lambda: all(store.partition(t, 0).last_stable_offset() ==
                               store.partition(t, 0).refresh() for t in ("a", "b")),
                   what="no open transaction left")
    finally:
        store.release()
    assert read_all(conf, [("a", 0), ("b", 0)]) == []
    p = Producer({**conf, "transactional.id": "crashy", "pylog.fsync": "always"})
    p.init_transactions()
    p.begin_transaction()
    p.produce("b", value=b"after", partition=0)
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("a", 0), ("b", 0)])) == [b"after"]


# ---- concurrency with other processes ----

def test_a_roll_forward_elsewhere_waits_for_the_owner(tmp_path):
    """While the owner sits between its Prepare and its appends, another
    process's recover() skips the id (its lock is held), readers elsewhere
    see nothing of the transaction, and init_transactions of the same id
    waits, then finds it finished."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    from pylog import testing
    child = testing.start_child(_owner_paused, str(tmp_path),
                                failpoints={"txn.redo.committed": "sleep:8000"})
    try:
        wait_until(lambda: (txn_state(tmp_path, "crashy") or {}).get("state") == "PrepareCommit",
                   timeout=30, what="the owner's Prepare")
        r = run_python(RECOVER, tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert len(control_batches(tmp_path, "a", 0)) == 0
        r = run_python(LSO, tmp_path)
        assert r.stdout.decode().split() == ["a:0/0", "b:0/0"], r.stderr.decode()
        r = run_python(INIT, tmp_path, timeout=60)       # blocks on the id's lock, then fences
        assert r.returncode == 0, r.stderr.decode()
        res = child.wait(60)
        assert res.error is None, res.error
    finally:
        if child.alive():
            child.kill()
    for t in ("a", "b"):
        assert values_of(read_all(conf, [(t, 0)])) == EXPECT[t][-3:]
        assert len(control_batches(tmp_path, t, 0)) == 1


def _owner_paused(path):
    p = Producer({"bootstrap.servers": "file://" + path, "transactional.id": "crashy",
                  "pylog.fsync": "always", "linger.ms": 1000})
    p.init_transactions()
    p.begin_transaction()
    for t in ("a", "b"):
        for i in range(3):
            p.produce(t, value=("%s-%d" % (t, i)).encode(), partition=0)
    p.commit_transaction()
    p.close()
    return True


def test_a_delayed_write_of_the_committed_epoch_is_refused(tmp_path):
    """The exemption for carried batches ends with the Prepare: a batch of
    the committed epoch written later is fenced, like any delayed write."""
    from pylog.codec import encode_batch
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    p = _producer(conf)
    p.init_transactions()
    st = txn_state(tmp_path, "redo")
    pid, epoch = st["producer_id"], st["producer_epoch"]
    p.begin_transaction()
    p.produce("a", value=b"x")
    p.commit_transaction()
    p.begin_transaction()
    p.produce("a", value=b"y")
    p.commit_transaction()
    store = Store.acquire(str(tmp_path))
    try:
        late = encode_batch([(0, None, b"late", None)], producer_id=pid, producer_epoch=epoch,
                            base_sequence=1, transactional=True)
        res = store.partition("a", 0).append([late])[0]
        assert res.error is not None
    finally:
        store.release()
        p.close()
    assert values_of(read_all(conf, [("a", 0)])) == [b"x", b"y"]


def test_an_error_right_after_the_prepares_lmdb_commit_counts_as_decided(tmp_path):
    """LMDB committed the Prepare, then the call failed: the records are not
    written the usual way as well (the producer would be fenced by its own
    Prepare); the retry finishes the transaction."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    reports = []
    p = _producer(conf)
    p.init_transactions()
    p.begin_transaction()
    p.produce("a", value=b"x", on_delivery=lambda e, m: reports.append(e))
    failpoints.set("txn.prepare.before", "sleep:0")
    failpoints.set("meta.commit.after", "eio")
    with pytest.raises(OSError):
        p.commit_transaction()
    failpoints.clear()
    p.poll(0)
    assert len(reports) == 1 and reports[0] is not None
    assert txn_state(tmp_path, "redo")["state"] == "PrepareCommit"
    p.commit_transaction()
    p.begin_transaction()
    p.produce("a", value=b"y")
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("a", 0)])) == [b"x", b"y"]
    assert len(control_batches(tmp_path, "a", 0)) == 2


def test_producers_of_one_process_commit_concurrently(tmp_path):
    """Several transactional producers sharing the process's coordinator (and
    its flush threads) commit to the same partitions at once."""
    import threading
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 2, "b": 1})
    errors = []

    def run(n):
        try:
            p = _producer(conf, tid="conc-%d" % n)
            p.init_transactions()
            for i in range(30):
                p.begin_transaction()
                p.produce("a", value=b"%d-%d" % (n, i), partition=i % 2)
                p.produce("b", value=b"%d-%d" % (n, i))
                p.commit_transaction()
            p.close()
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    got_b = values_of(read_all(conf, [("b", 0)]))
    assert sorted(got_b) == sorted(b"%d-%d" % (n, i) for n in range(4) for i in range(30))
    for n in range(4):                  # each producer's records in its order
        mine = [v for v in got_b if v.startswith(b"%d-" % n)]
        assert mine == [b"%d-%d" % (n, i) for i in range(30)]
    assert len(read_all(conf, [("a", 0), ("a", 1)])) == 120
    for n in range(4):
        assert _stored_batches(tmp_path, "conc-%d" % n) == []


def test_a_transaction_aborted_by_its_timeout_carries_nothing(tmp_path):
    """The timeout aborts the Ongoing transaction (registered by an earlier
    write) and fences the owner: its commit, with records still queued,
    fails fatally and writes none of them."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    reports = []
    p = _producer(conf, **{"transaction.timeout.ms": 1000})
    p.init_transactions()
    p.begin_transaction()
    p.produce("a", value=b"early")
    p.flush()
    p.produce("b", value=b"late", on_delivery=lambda e, m: reports.append(e))
    store = Store.acquire(str(tmp_path))
    try:
        assert store.coordinator.abort_expired(now_ms=int(time.time() * 1000) + 5000) == ["redo"]
    finally:
        store.release()
    with pytest.raises(KafkaException) as ei:
        p.commit_transaction()
    assert ei.value.args[0].fatal()
    p.poll(0)
    assert len(reports) == 1 and reports[0] is not None
    p.close()
    assert read_all(conf, [("a", 0), ("b", 0)]) == []
    assert values_of(read_all(conf, [("b", 0)], isolation="read_uncommitted")) == []
    assert _stored_batches(tmp_path, "redo") == []
