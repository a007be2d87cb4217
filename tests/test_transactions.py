"""Transactions end to end, modelled on Kafka's TransactionsTest.

Most tests put the transactional producer in another process (a spawned
child driven through txn_support.RemoteProducer), because the store has no
broker: what one process decides must be seen, and enforced, by the others.
"""
import collections
import fcntl
import glob
import hashlib
import os
import random
import signal
import struct
import threading
import time

import pytest

from pylog import (Consumer, KafkaError, KafkaException, Producer, TopicPartition,
                   OFFSET_BEGINNING, OFFSET_INVALID)
from pylog.codec import encode_batch
from pylog.store import Store

from txn_support import (RemoteProducer, conf_for, control_batches, create_topics, err_of,
                         opened_store, read_all, run_python, txn_state, values_of, wait_until)

TS = 1_700_000_000_000


def consumer(conf, isolation="read_committed", group="g", **extra):
    return Consumer({**conf, "group.id": group, "isolation.level": isolation,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})


def lso(c, topic, partition=0):
    return c.get_last_stable_offset(TopicPartition(topic, partition))


def high(c, topic, partition=0):
    return c.get_watermark_offsets(TopicPartition(topic, partition))[1]


def assert_fatal_fenced(excinfo):
    err = err_of(excinfo)
    assert err.code() == KafkaError._FENCED, err
    assert err.fatal(), err


# ---- read_committed, read_uncommitted and the LSO ----

@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_lso_waits_for_a_transaction_open_in_another_process(tmp_path, outcome):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    plain = Producer(conf)
    for i in range(3):
        plain.produce("t", value=b"before-%d" % i, partition=0)
    plain.flush()
    rc, ru = consumer(conf), consumer(conf, "read_uncommitted", group="g2")
    tp = TopicPartition("t", 0)
    try:
        with RemoteProducer({**conf, "transactional.id": "owner"}) as owner:
            owner.init_transactions()
            owner.begin_transaction()
            for i in range(4):
                owner.produce("t", value=b"txn-%d" % i, partition=0)
            owner.flush()
            first = min(r[3] for r in owner.reports())
            assert first == 3
            for i in range(2):                      # written after the open transaction
                plain.produce("t", value=b"after-%d" % i, partition=0)
            plain.flush()
            for _ in range(5):                      # the LSO stays put while it is open
                assert lso(rc, "t") == 3
                assert rc.get_watermark_offsets(tp) == (0, 3)
                assert ru.get_watermark_offsets(tp) == (0, 9)
                time.sleep(0.05)
            assert values_of(read_all(conf, [("t", 0)])) == [b"before-%d" % i for i in range(3)]
            undecided = read_all(conf, [("t", 0)], isolation="read_uncommitted")
            assert values_of(undecided) == ([b"before-%d" % i for i in range(3)] +
                                            [b"txn-%d" % i for i in range(4)] + [b"after-0", b"after-1"])
            getattr(owner, outcome + "_transaction")()
        # the marker is offset 9: the LSO moves to the high watermark
        assert lso(rc, "t") == 10
        assert rc.get_watermark_offsets(tp) == (0, 10)
        assert ru.get_watermark_offsets(tp) == (0, 10)
    finally:
        rc.close()
        ru.close()
        plain.close()
    txn = [b"txn-%d" % i for i in range(4)] if outcome == "commit" else []
    committed = read_all(conf, [("t", 0)])
    assert values_of(committed) == [b"before-%d" % i for i in range(3)] + txn + [b"after-0", b"after-1"]
    everything = read_all(conf, [("t", 0)], isolation="read_uncommitted")
    assert [m.offset() for m in everything] == list(range(9))      # never the control record
    assert all(m.value() is not None for m in everything)


def test_read_committed_never_returns_undecided_or_aborted_records(tmp_path):
    """Many transactions, some aborted after their records were written:
    read_committed returns exactly the committed ones, read_uncommitted all."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    rng = random.Random(7)
    p = Producer({**conf, "transactional.id": "mixed"})
    p.init_transactions()
    committed, everything = [], []
    for n in range(30):
        p.begin_transaction()
        vals = [b"%d-%d" % (n, i) for i in range(rng.randint(1, 20))]
        for v in vals:
            p.produce("t", value=v, partition=0)
        p.flush()
        everything.extend(vals)
        if rng.random() < 0.4:
            p.abort_transaction()
        else:
            p.commit_transaction()
            committed.extend(vals)
    p.begin_transaction()
    p.produce("t", value=b"open", partition=0)
    p.flush()
    assert values_of(read_all(conf, [("t", 0)])) == committed
    assert values_of(read_all(conf, [("t", 0)], isolation="read_uncommitted")) == everything + [b"open"]
    p.abort_transaction()
    p.close()


def test_consumer_tailing_sees_commit_and_never_abort(tmp_path):
    """A read_committed consumer polling while another process writes."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    c = consumer(conf)
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    try:
        with RemoteProducer({**conf, "transactional.id": "tail"}) as owner:
            owner.init_transactions()
            for n, outcome in enumerate(["commit", "abort", "commit", "abort", "abort", "commit"]):
                owner.begin_transaction()
                for i in range(3):
                    owner.produce("t", value=b"%s-%d-%d" % (outcome.encode(), n, i), partition=0)
                owner.flush()
                assert c.poll(0.05) is None          # open: nothing
                getattr(owner, outcome + "_transaction")()
                got = c.consume(10, 1.0 if outcome == "commit" else 0.1)
                if outcome == "commit":
                    got += c.consume(10, 0.1)
                    assert values_of(got) == [b"commit-%d-%d" % (n, i) for i in range(3)]
                else:
                    assert got == []
    finally:
        c.close()


# ---- atomic visibility across topics ----

class _AtomicityChecker:
    """Drains one read_committed consumer per topic; after every drain that
    reached the end, each transaction must be wholly seen or not at all."""

    def __init__(self, conf, topics, per_topic):
        self.lock = threading.Lock()
        self.per_topic = per_topic
        self.consumers = {}
        for t in topics:
            c = consumer(conf, group="check-" + t)
            c.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
            self.consumers[t] = c
        self.seen = {t: collections.Counter() for t in topics}
        self.violations = []
        self.rounds = 0

    def drain(self):
        with self.lock:
            for t, c in self.consumers.items():
                while True:
                    msgs = c.consume(1000, 0)
                    if not msgs:
                        break
                    for m in msgs:
                        assert m.error() is None
                        self.seen[t][int(m.value().split(b":")[0])] += 1
                for n, k in self.seen[t].items():
                    if k != self.per_topic:
                        self.violations.append((t, n, k))
            self.rounds += 1

    def close(self):
        for c in self.consumers.values():
            c.close()


def test_transaction_across_three_topics_is_seen_whole_or_not_at_all(tmp_path):
    conf = conf_for(tmp_path)
    topics = ["t1", "t2", "t3"]
    create_topics(conf, {t: 1 for t in topics})
    k = 5
    checker = _AtomicityChecker(conf, topics, k)
    stop = threading.Event()

    def background():
        while not stop.is_set():
            checker.drain()
    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    rng = random.Random(3)
    outcomes = {}
    try:
        with RemoteProducer({**conf, "transactional.id": "three"}) as p:
            p.init_transactions()
            for n in range(25):
                p.begin_transaction()
                for t in topics:
                    for i in range(k):
                        p.produce(t, value=b"%d:%d" % (n, i), partition=0)
                p.flush()
                checker.drain()                      # the moment it is open
                with checker.lock:
                    assert all(checker.seen[t][n] == 0 for t in topics), n
                outcomes[n] = rng.random() < 0.7
                if outcomes[n]:
                    p.commit_transaction()
                else:
                    p.abort_transaction()
                checker.drain()                      # the moment after
                with checker.lock:
                    for t in topics:
                        assert checker.seen[t][n] == (k if outcomes[n] else 0), (t, n)
    finally:
        stop.set()
        thread.join(10)
        checker.close()
    assert checker.violations == []
    assert checker.rounds > 10
    for t in topics:
        assert dict(checker.seen[t]) == {n: k for n, ok in outcomes.items() if ok}


# ---- fencing ----

@pytest.mark.parametrize("where", ["produce", "produce_new_partition", "send_offsets", "commit"])
def test_init_transactions_elsewhere_fences_the_old_instance(tmp_path, where):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 2, "in": 1})
    c = consumer(conf)
    try:
        with RemoteProducer({**conf, "transactional.id": "fence-me"}) as old:
            old.init_transactions()
            old.begin_transaction()
            for i in range(3):
                old.produce("t", value=b"old-%d" % i, partition=0)
            old.flush()
            assert all(r[0] is None for r in old.reports())
            assert lso(c, "t") == 0

            new = Producer({**conf, "transactional.id": "fence-me"})
            new.init_transactions()                  # aborts old's transaction, fences it
            assert lso(c, "t") == high(c, "t") == 4
            assert read_all(conf, [("t", 0)]) == []

            if where in ("produce", "produce_new_partition"):
                old.produce("t", value=b"late", partition=0 if where == "produce" else 1)
                old.flush()
                (err, _, _, _, value), = old.reports()
                assert value == b"late" and err is not None
                assert err[0] == KafkaError._FENCED and err[2], err
                with pytest.raises(KafkaException) as ei:
                    old.commit_transaction()
            elif where == "send_offsets":
                with pytest.raises(KafkaException) as ei:
                    old.send_offsets([("in", 0, 5)], "g")
            else:
                with pytest.raises(KafkaException) as ei:
                    old.commit_transaction()
            assert_fatal_fenced(ei)
            for call in (old.begin_transaction, old.abort_transaction, old.commit_transaction,
                         lambda: old.produce("t", value=b"x")):
                with pytest.raises(KafkaException) as ei:
                    call()
                assert err_of(ei).fatal()

            new.begin_transaction()
            new.produce("t", value=b"new", partition=0)
            new.commit_transaction()
            new.close()
        assert values_of(read_all(conf, [("t", 0), ("t", 1)])) == [b"new"]
        assert c.committed([TopicPartition("in", 0)])[0].offset == OFFSET_INVALID
        assert [v for v in values_of(read_all(conf, [("t", 0), ("t", 1)], isolation="read_uncommitted"))
                if v == b"late"] == []
    finally:
        c.close()


def test_old_instance_writing_to_a_new_partition_after_fencing_is_refused(tmp_path):
    """Fencing is enforced by the coordinator too, not only by partitions
    that saw the abort marker."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    with RemoteProducer({**conf, "transactional.id": "x"}) as old:
        old.init_transactions()
        old.begin_transaction()
        old.produce("a", value=b"1", partition=0)
        old.flush()
        old.reports()
        new = Producer({**conf, "transactional.id": "x"})
        new.init_transactions()
        old.produce("b", value=b"2", partition=0)    # b never saw a marker of this producer
        old.flush()
        (err, *_), = old.reports()
        assert err[0] == KafkaError._FENCED and err[2]
        new.close()
    assert read_all(conf, [("b", 0)], isolation="read_uncommitted") == []


def _wait_aborted(c, topic, timeout):
    return wait_until(lambda: lso(c, topic) == high(c, topic, 0) and lso(c, topic) > 0,
                      timeout=timeout, what="the expired transaction to be aborted")


def test_transaction_timeout_aborts_and_fences_the_owner(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    c = consumer(conf)
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    try:
        with RemoteProducer({**conf, "transactional.id": "slow",
                             "transaction.timeout.ms": 1000}) as owner:
            owner.init_transactions()
            owner.begin_transaction()
            for i in range(3):
                owner.produce("t", value=b"slow-%d" % i, partition=0)
            owner.flush()
            owner.reports()
            t0 = time.monotonic()
            assert lso(c, "t") == 0
            time.sleep(0.5)
            assert lso(c, "t") == 0                  # not yet expired
            _wait_aborted(c, "t", 10)
            assert time.monotonic() - t0 >= 0.5
            assert lso(c, "t") == 4                  # 3 records + the ABORT marker
            assert c.consume(10, 0.2) == []
            owner.produce("t", value=b"late", partition=0)
            owner.flush()
            (err, *_), = owner.reports()
            assert err[0] == KafkaError._FENCED and err[2]
            with pytest.raises(KafkaException) as ei:
                owner.commit_transaction()
            assert_fatal_fenced(ei)
        assert txn_state(tmp_path, "slow")["state"] == "CompleteAbort"
    finally:
        c.close()
    assert read_all(conf, [("t", 0)]) == []


def test_expired_transaction_of_a_stopped_owner_is_aborted_by_another_process(tmp_path):
    """The owner is frozen (SIGSTOP), so only another process's timer can
    abort; once thawed, the owner is fenced."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    c = consumer(conf)
    try:
        with RemoteProducer({**conf, "transactional.id": "frozen",
                             "transaction.timeout.ms": 1000}) as owner, \
                RemoteProducer({**conf, "transactional.id": "bystander"}) as bystander:
            bystander.init_transactions()            # this process now runs a timer
            owner.init_transactions()
            owner.begin_transaction()
            owner.produce("t", value=b"frozen", partition=0)
            owner.flush()
            os.kill(owner.pid, signal.SIGSTOP)
            try:
                _wait_aborted(c, "t", 10)
            finally:
                os.kill(owner.pid, signal.SIGCONT)
            with pytest.raises(KafkaException) as ei:
                owner.commit_transaction()
            assert_fatal_fenced(ei)
    finally:
        c.close()
    assert read_all(conf, [("t", 0)]) == []


def test_expired_transaction_of_a_dead_owner_is_aborted_by_a_consumer_process(tmp_path):
    """No broker: a process whose only client is a read_committed Consumer
    must still enforce transaction.timeout.ms, or the LSO stays stuck."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    c = consumer(conf)
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    try:
        owner = RemoteProducer({**conf, "transactional.id": "dead", "transaction.timeout.ms": 1000})
        try:
            owner.init_transactions()
            owner.begin_transaction()
            owner.produce("t", value=b"orphan", partition=0)
            owner.flush()
        finally:
            owner.kill()
            owner.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and lso(c, "t") == 0:
            assert c.poll(0.2) is None
        assert lso(c, "t") == 2
    finally:
        c.close()


def test_transaction_timeout_counts_from_the_first_partition_added(tmp_path):
    """An idle begin_transaction() starts no clock: only the first write does."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "idle", "transaction.timeout.ms": 1000})
    try:
        p.init_transactions()
        p.begin_transaction()
        time.sleep(1.6)                          # well past the timeout, nothing added yet
        assert txn_state(tmp_path, "idle")["state"] != "CompleteAbort"
        p.produce("t", value=b"late start", partition=0)
        p.commit_transaction()
    finally:
        p.close()
    assert values_of(read_all(conf, [("t", 0)])) == [b"late start"]


def test_abort_expired_uses_the_timeout_of_each_transaction(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    short = Producer({**conf, "transactional.id": "short", "transaction.timeout.ms": 5000})
    long_ = Producer({**conf, "transactional.id": "long", "transaction.timeout.ms": 600000})
    for p in (short, long_):
        p.init_transactions()
        p.begin_transaction()
        p.produce("t", value=b"x", partition=0)
        p.flush()
    coord = Store.acquire(str(tmp_path)).coordinator
    try:
        now = int(time.time() * 1000)
        assert coord.abort_expired(now_ms=now) == []
        assert coord.abort_expired(now_ms=now + 6000) == ["short"]
        assert txn_state(tmp_path, "long")["state"] == "Ongoing"
        assert coord.abort_expired(now_ms=now + 601000) == ["long"]
        for p in (short, long_):
            with pytest.raises(KafkaException) as ei:
                p.commit_transaction()
            assert_fatal_fenced(ei)
    finally:
        short.close()
        long_.close()


# ---- roll-forward of Prepare* and abort of orphaned Ongoing transactions ----

CRASHING_OWNER = r"""
import sys
from pylog import Consumer, Producer, TopicPartition
path, decision = sys.argv[1], sys.argv[2]
conf = {"bootstrap.servers": "file://" + path}
meta = Consumer({**conf, "group.id": "copier"}).consumer_group_metadata()
p = Producer({**conf, "transactional.id": "crashy"})
p.init_transactions()
p.begin_transaction()
for t in ("a", "b"):
    for i in range(3):
        p.produce(t, value=("%s-%d" % (t, i)).encode(), partition=0)
p.send_offsets_to_transaction([TopicPartition("in", 0, 42)], meta)
p.flush()
print("flushed", flush=True)
if decision == "commit":
    p.commit_transaction()
else:
    p.abort_transaction()
print("survived", flush=True)
"""

RECOVER = r"""
import sys
from pylog.store import Store
s = Store.acquire(sys.argv[1])
s.coordinator
s.release()
print("recovered", flush=True)
"""


def _crash_owner(tmp_path, failpoint, decision):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1, "in": 1})
    r = run_python(CRASHING_OWNER, tmp_path, decision, env={"PYLOG_FAILPOINTS": failpoint + "=kill"})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert b"flushed" in r.stdout and b"survived" not in r.stdout
    return conf


def _committed_offset(conf, group="copier"):
    c = consumer(conf, group=group)
    try:
        return c.committed([TopicPartition("in", 0)])[0].offset
    finally:
        c.close()


@pytest.mark.parametrize("failpoint", ["txn.prepare.after", "txn.marker.after"])
@pytest.mark.parametrize("decision", ["commit", "abort"])
@pytest.mark.parametrize("opener", ["store", "consumer"])
def test_prepare_found_on_open_is_rolled_forward(tmp_path, failpoint, decision, opener):
    conf = _crash_owner(tmp_path, failpoint, decision)
    prepared = "PrepareCommit" if decision == "commit" else "PrepareAbort"
    st = txn_state(tmp_path, "crashy")
    assert st["state"] == prepared
    markers = sum(len(control_batches(tmp_path, t, 0)) for t in ("a", "b"))
    assert markers == (0 if failpoint == "txn.prepare.after" else 1)

    if opener == "store":                                      # a fresh process opens the store
        r = run_python(RECOVER, tmp_path)
        assert r.returncode == 0, r.stderr.decode()
    else:                                                      # a reader in this process opens it
        consumer(conf, group="opener").close()
    st = txn_state(tmp_path, "crashy")
    assert st["state"] == prepared.replace("Prepare", "Complete")
    for t in ("a", "b"):
        assert len(control_batches(tmp_path, t, 0)) == 1       # exactly one marker each
    if decision == "commit":
        assert sorted(values_of(read_all(conf, [("a", 0), ("b", 0)]))) == \
            [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1", b"b-2"]
        assert _committed_offset(conf) == 42
    else:
        assert read_all(conf, [("a", 0), ("b", 0)]) == []
        assert _committed_offset(conf) == OFFSET_INVALID
    assert len(read_all(conf, [("a", 0), ("b", 0)], isolation="read_uncommitted")) == 6


def test_prepare_is_rolled_forward_by_the_next_init_transactions(tmp_path):
    conf = _crash_owner(tmp_path, "txn.prepare.after", "commit")
    p = Producer({**conf, "transactional.id": "crashy"})
    p.init_transactions()
    p.close()
    assert sorted(values_of(read_all(conf, [("a", 0), ("b", 0)]))) == \
        [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1", b"b-2"]
    assert _committed_offset(conf) == 42


def test_crash_before_prepare_leaves_ongoing_aborted_by_next_init(tmp_path):
    conf = _crash_owner(tmp_path, "txn.prepare.before", "commit")
    assert txn_state(tmp_path, "crashy")["state"] == "Ongoing"
    r = run_python(RECOVER, tmp_path)                          # opening does not decide it
    assert r.returncode == 0, r.stderr.decode()
    assert txn_state(tmp_path, "crashy")["state"] == "Ongoing"
    c = consumer(conf)
    try:
        assert lso(c, "a") == 0 and high(c, "a") == 0
        p = Producer({**conf, "transactional.id": "crashy"})
        p.init_transactions()                                  # aborts the orphan, bumps the epoch
        assert lso(c, "a") == 4 and lso(c, "b") == 4
        p.begin_transaction()
        p.produce("a", value=b"after", partition=0)
        p.commit_transaction()
        p.close()
    finally:
        c.close()
    assert values_of(read_all(conf, [("a", 0), ("b", 0)])) == [b"after"]
    assert _committed_offset(conf) == OFFSET_INVALID
    assert [e for _, _, e in control_batches(tmp_path, "a", 0)] == sorted(
        e for _, _, e in control_batches(tmp_path, "a", 0))


# ---- durability of a commit (pylog.fsync=always) ----

DURABLE_OWNER = r"""
import os, signal, sys
from pylog import Producer
conf = {"bootstrap.servers": "file://" + sys.argv[1], "pylog.fsync": "always"}
p = Producer({**conf, "transactional.id": "durable"})
p.init_transactions()
p.begin_transaction()
for i in range(3):
    p.produce("a", value=b"a-%d" % i, partition=0)
p.commit_transaction()                  # acknowledged with fsync=always: must survive a power cut
p.begin_transaction()                   # the next transaction touches another partition only
p.produce("b", value=b"b-0", partition=0)
p.commit_transaction()
os.kill(os.getpid(), signal.SIGKILL)    # no close(): nothing is flushed on the way out
"""

_SYNC = struct.Struct(">qq?")           # pylog/log.py's .sync file: segment base, fsynced up to, failed


def lose_unsynced_bytes(path, topic, partition):
    """Simulate a power cut: cut the active segment back to the position the
    partition's last fsync covered (what the kernel may drop).  Returns the
    number of bytes lost."""
    pdir = os.path.join(str(path), "%s-%d" % (topic, partition))
    with open(os.path.join(pdir, ".sync"), "rb") as f:
        base, pos, failed = _SYNC.unpack(f.read(_SYNC.size))
    seg = os.path.join(pdir, "%020d.log" % base)
    assert not failed and sorted(glob.glob(os.path.join(pdir, "*.log")))[-1] == seg
    lost = os.path.getsize(seg) - pos
    os.truncate(seg, pos)
    return lost


def test_committed_transaction_survives_a_power_cut_after_the_next_transaction(tmp_path):
    """Regression: markers were appended unsynced and the owner's next call recorded
    Complete*, so a power cut left the committed records undecided for good (and a
    later ABORT marker of the same producer then aborted them)."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    r = run_python(DURABLE_OWNER, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert lose_unsynced_bytes(tmp_path, "a", 0) >= 0
    assert lose_unsynced_bytes(tmp_path, "b", 0) >= 0
    assert values_of(read_all(conf, [("a", 0)])) == [b"a-0", b"a-1", b"a-2"]
    assert values_of(read_all(conf, [("b", 0)])) == [b"b-0"]


def test_committed_transaction_survives_a_power_cut_right_after_commit(tmp_path):
    """Prepare* is durable and still names the partitions: a lost marker is
    written again by the roll-forward on open."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    script = DURABLE_OWNER.split("p.begin_transaction()                   #")[0] + \
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    # The markers' fsync runs on a worker thread after commit returns: hold it
    # back so the kill finds the marker unsynced.
    r = run_python(script, tmp_path, env={"PYLOG_FAILPOINTS": "txn.markers.sync.before=sleep:10000"})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    assert lose_unsynced_bytes(tmp_path, "a", 0) > 0           # the marker was not fsynced
    assert values_of(read_all(conf, [("a", 0)])) == [b"a-0", b"a-1", b"a-2"]
    assert len(control_batches(tmp_path, "a", 0)) == 1


# ---- KIP-890: every end of a transaction bumps the epoch ----

def _pid_epoch(path, tid):
    st = txn_state(path, tid)
    return st["producer_id"], st["producer_epoch"]


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_delayed_write_with_the_previous_epoch_is_refused(tmp_path, outcome):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "kip890"})
    p.init_transactions()
    pid, e0 = _pid_epoch(tmp_path, "kip890")
    p.begin_transaction()
    for i in range(5):
        p.produce("t", value=b"v%d" % i, partition=0)
    p.flush()
    getattr(p, outcome + "_transaction")()
    pid1, e1 = _pid_epoch(tmp_path, "kip890")
    assert (pid1, e1) == (pid, e0 + 1)
    assert control_batches(tmp_path, "t", 0) == [(5, pid, e0 + 1)]
    part = Store.acquire(str(tmp_path)).partition("t", 0)
    try:
        hw = part.refresh()
        for seq in (5, 0):                        # the next sequence, and a retry of the first batch
            late = encode_batch([(TS, None, b"late", None)], producer_id=pid, producer_epoch=e0,
                                base_sequence=seq, transactional=True)
            res, = part.append([late])
            assert res.error is not None and res.error.code() == KafkaError.INVALID_PRODUCER_EPOCH, res
        assert part.refresh() == hw
        # the next transaction uses the new epoch and is unaffected
        p.begin_transaction()
        p.produce("t", value=b"next", partition=0)
        p.commit_transaction()
        assert _pid_epoch(tmp_path, "kip890") == (pid, e0 + 2)
    finally:
        part.store.release()
        p.close()
    committed = [b"v%d" % i for i in range(5)] if outcome == "commit" else []
    assert values_of(read_all(conf, [("t", 0)])) == committed + [b"next"]


def test_delayed_write_cannot_join_the_next_transaction_on_an_untouched_partition(tmp_path):
    """Regression (KIP-890 part 1): an old-epoch write to a partition the previous
    transaction never touched was accepted and then committed by the next one."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"p": 1, "q": 1})
    prod = Producer({**conf, "transactional.id": "kip890-q"})
    prod.init_transactions()
    pid, e0 = _pid_epoch(tmp_path, "kip890-q")
    prod.begin_transaction()
    prod.produce("p", value=b"txn1", partition=0)      # the first transaction never touches q
    prod.commit_transaction()
    prod.begin_transaction()
    store = Store.acquire(str(tmp_path))
    try:
        late = encode_batch([(TS, None, b"delayed", None)], producer_id=pid, producer_epoch=e0,
                            base_sequence=0, transactional=True)
        res, = store.partition("q", 0).append([late])
        refused = res.error is not None and res.error.code() in (
            KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.INVALID_TXN_STATE)
    finally:
        store.release()
    prod.produce("q", value=b"txn2", partition=0)
    prod.commit_transaction()
    prod.close()
    assert values_of(read_all(conf, [("q", 0)])) == [b"txn2"]
    assert refused, res


def test_each_transaction_end_bumps_the_epoch(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "bumps"})
    p.init_transactions()
    pid, e0 = _pid_epoch(tmp_path, "bumps")
    outcomes = ["commit", "abort", "commit", "commit", "abort"]
    for o in outcomes:
        p.begin_transaction()
        p.produce("t", value=o.encode(), partition=0)
        p.flush()
        getattr(p, o + "_transaction")()
    p.begin_transaction()
    p.commit_transaction()                        # an empty transaction bumps too
    p.close()
    assert _pid_epoch(tmp_path, "bumps") == (pid, e0 + len(outcomes) + 1)
    assert [e for _, _, e in control_batches(tmp_path, "t", 0)] == \
        list(range(e0 + 1, e0 + len(outcomes) + 1))


@pytest.mark.parametrize("fsync", ["never", "always"])     # always: the commits carry the records
def test_producer_outlives_the_epoch_limit(tmp_path, fsync):
    """Regression: at epoch 32766 _prepare raised a fatal "producer epoch exhausted"
    and left the transaction Ongoing for ever (init and the timeout need a bump
    too); the coordinator now rotates the producer id, as Kafka's TV2 does."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    store = Store.acquire(str(tmp_path))
    meta = store.meta

    def aged(txn):                      # as if 32760 transactions had already run
        meta.put_txn(txn, "aged", {"producer_id": meta.next_producer_id(txn), "producer_epoch": 32760,
                                   "state": "CompleteCommit", "partitions": [], "offsets": {},
                                   "timeout_ms": 60000, "start_ms": -1, "update_ms": 0})
    meta.update(aged)
    p = Producer({**conf, "transactional.id": "aged", "pylog.fsync": fsync, "linger.ms": 1000})
    try:
        p.init_transactions()
        for i in range(10):
            p.begin_transaction()
            p.produce("t", value=b"%d" % i, partition=0)
            p.commit_transaction()
    finally:
        p.close()
        store.release()
    assert values_of(read_all(conf, [("t", 0)])) == [b"%d" % i for i in range(10)]


# ---- EndTxn is idempotent ----

@pytest.mark.parametrize("commit", [True, False])
@pytest.mark.parametrize("when", ["prepared", "complete"])
def test_repeated_end_txn_succeeds_without_a_second_marker(tmp_path, commit, when):
    """EndTxn re-sent with the transaction's epoch, either while the
    coordinator still holds Prepare* (the owner has not made another call) or
    after Complete* (recorded here by close())."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1, "u": 1})
    p = Producer({**conf, "transactional.id": "retry"})
    p.init_transactions()
    pid, epoch = _pid_epoch(tmp_path, "retry")
    p.begin_transaction()
    p.produce("t", value=b"x", partition=0)
    p.produce("u", value=b"y", partition=0)
    p.flush()
    if commit:
        p.commit_transaction()
    else:
        p.abort_transaction()
    if when == "complete":
        p.close()
    before = {t: control_batches(tmp_path, t, 0) for t in ("t", "u")}
    assert all(len(m) == 1 for m in before.values())
    st = txn_state(tmp_path, "retry")
    assert (st["producer_id"], st["producer_epoch"]) == (pid, epoch + 1)
    decided = "Commit" if commit else "Abort"
    # the owner records Complete* on its next call (here: close()); until then
    # the coordinator may still hold Prepare*, which is just as decided
    allowed = {"Complete" + decided} if when == "complete" else {"Prepare" + decided, "Complete" + decided}
    assert st["state"] in allowed
    store = Store.acquire(str(tmp_path))
    try:
        for _ in range(2):
            assert store.coordinator.end_txn("retry", pid, epoch, commit) == (pid, epoch + 1)
    finally:
        store.release()
    assert {t: control_batches(tmp_path, t, 0) for t in ("t", "u")} == before
    assert _pid_epoch(tmp_path, "retry") == (pid, epoch + 1)
    if when == "prepared":
        p.close()
    expect = [b"x", b"y"] if commit else []
    assert sorted(values_of(read_all(conf, [("t", 0), ("u", 0)]))) == expect


def test_commit_retried_after_a_failure_past_the_commit_point_completes(tmp_path):
    """The Prepare record is durable, then the call fails: retrying
    commit_transaction() finishes the same transaction (no new epoch bump)."""
    from pylog import failpoints
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "flaky"})
    p.init_transactions()
    pid, epoch = _pid_epoch(tmp_path, "flaky")
    p.begin_transaction()
    p.produce("t", value=b"once", partition=0)
    failpoints.set("txn.prepare.after", "eio")
    try:
        with pytest.raises(Exception):
            p.commit_transaction()
    finally:
        failpoints.clear()
    assert txn_state(tmp_path, "flaky")["state"] == "PrepareCommit"
    p.commit_transaction()
    assert _pid_epoch(tmp_path, "flaky") == (pid, epoch + 1)
    assert len(control_batches(tmp_path, "t", 0)) == 1
    p.begin_transaction()
    p.produce("t", value=b"twice", partition=0)
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("t", 0)])) == [b"once", b"twice"]


# ---- errors and states ----

@pytest.fixture
def txn_producer(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "states"})
    yield p
    p.close()


def _code(call):
    with pytest.raises(KafkaException) as ei:
        call()
    return err_of(ei).code()


def test_produce_without_a_transaction_is_a_state_error(txn_producer):
    p = txn_producer
    assert _code(lambda: p.produce("t", value=b"x")) == KafkaError._STATE     # before init
    p.init_transactions()
    assert _code(lambda: p.produce("t", value=b"x")) == KafkaError._STATE     # before begin
    assert _code(lambda: p.produce("t", value=b"x", key=b"k", partition=0)) == KafkaError._STATE
    p.begin_transaction()
    p.produce("t", value=b"x")
    p.commit_transaction()
    assert _code(lambda: p.produce("t", value=b"x")) == KafkaError._STATE     # after commit
    assert len(p) == 0


def test_transaction_calls_in_the_wrong_state(txn_producer):
    p = txn_producer
    assert _code(p.begin_transaction) == KafkaError._STATE
    assert _code(p.commit_transaction) == KafkaError._STATE
    p.init_transactions()
    assert _code(p.init_transactions) == KafkaError._STATE
    assert _code(p.commit_transaction) == KafkaError._STATE
    assert _code(p.abort_transaction) == KafkaError._STATE
    c = Consumer({**conf_for(p._store.path), "group.id": "g"})
    try:
        assert _code(lambda: p.send_offsets_to_transaction(
            [TopicPartition("t", 0, 1)], c.consumer_group_metadata())) == KafkaError._STATE
    finally:
        c.close()
    p.begin_transaction()
    assert _code(p.begin_transaction) == KafkaError._STATE
    assert _code(p.init_transactions) == KafkaError._STATE
    p.abort_transaction()
    p.begin_transaction()                          # usable again after abort
    p.commit_transaction()


def test_transactional_api_needs_a_transactional_id(tmp_path):
    """Regression: KafkaError._NOT_CONFIGURED did not exist (AttributeError)."""
    p = Producer(conf_for(tmp_path))
    try:
        with pytest.raises(KafkaException) as ei:
            p.init_transactions()
        assert err_of(ei).code() == KafkaError._NOT_CONFIGURED
    finally:
        p.close()


def test_non_transactional_append_during_txn_raises(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 1})
    p = Producer({**conf, "transactional.id": "mixed-writes"})
    p.init_transactions()
    p.begin_transaction()
    for i in range(3):
        p.produce("t", value=b"%d" % i, partition=0)
    p.flush()
    pid, epoch = _pid_epoch(tmp_path, "mixed-writes")
    part = Store.acquire(str(tmp_path)).partition("t", 0)
    try:
        plain = encode_batch([(TS, None, b"plain", None)], producer_id=pid, producer_epoch=epoch,
                             base_sequence=3, transactional=False)
        res, = part.append([plain])
        assert res.error is not None and res.error.code() == KafkaError.INVALID_TXN_STATE == 48, res
    finally:
        part.store.release()
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("t", 0)], isolation="read_uncommitted")) == [b"0", b"1", b"2"]


def test_abortable_error_requires_abort_then_the_producer_continues(tmp_path):
    """A write refused by a partition (record over the topic's
    max.message.bytes) makes the transaction abortable, not the producer fatal."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"small": (1, {"max.message.bytes": 2000}), "t": 1})
    reports = []
    p = Producer({**conf, "transactional.id": "abortable",
                  "on_delivery": lambda err, msg: reports.append((msg.topic(), err))})
    p.init_transactions()
    p.begin_transaction()
    p.produce("t", value=b"fine", partition=0)
    p.produce("small", value=b"x" * 5000, partition=0)
    with pytest.raises(KafkaException) as ei:
        p.commit_transaction()
    err = err_of(ei)
    assert err.txn_requires_abort() and not err.fatal()
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert sorted((t, e.code() if e else None) for t, e in reports) == \
        [("small", KafkaError.MSG_SIZE_TOO_LARGE), ("t", None)]
    c = Consumer({**conf, "group.id": "g"})
    with pytest.raises(KafkaException) as ei:                  # still abortable
        p.send_offsets_to_transaction([TopicPartition("t", 0, 1)], c.consumer_group_metadata())
    assert err_of(ei).txn_requires_abort()
    c.close()
    p.abort_transaction()
    p.begin_transaction()
    p.produce("t", value=b"next", partition=0)
    p.commit_transaction()
    p.close()
    assert values_of(read_all(conf, [("t", 0)])) == [b"next"]


@pytest.mark.parametrize("timeout_ms", [900001, 3600000])
def test_transaction_timeout_above_the_maximum_is_refused(tmp_path, timeout_ms):
    conf = conf_for(tmp_path)
    p = Producer({**conf, "transactional.id": "too-long", "transaction.timeout.ms": timeout_ms})
    try:
        with pytest.raises(KafkaException) as ei:
            p.init_transactions()
        assert err_of(ei).code() == KafkaError.INVALID_TRANSACTION_TIMEOUT
    finally:
        p.close()
    ok = Producer({**conf, "transactional.id": "max", "transaction.timeout.ms": 900000})
    ok.init_transactions()
    ok.close()


# ---- offsets inside transactions ----

@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_offsets_sent_to_a_transaction_are_visible_iff_it_commits(tmp_path, outcome):
    conf = conf_for(tmp_path)
    create_topics(conf, {"in": 3, "out": 1})
    c = consumer(conf, group="copier")
    c.commit(offsets=[TopicPartition("in", 0, 5)], asynchronous=False)
    p = Producer({**conf, "transactional.id": "offsets"})
    p.init_transactions()
    p.begin_transaction()
    p.produce("out", value=b"derived", partition=0)
    p.send_offsets_to_transaction([TopicPartition("in", 0, 10), TopicPartition("in", 1, 20)],
                                  c.consumer_group_metadata())
    tps = [TopicPartition("in", i) for i in range(3)]
    assert [tp.offset for tp in c.committed(tps)] == [5, OFFSET_INVALID, OFFSET_INVALID]
    stable = c.committed(tps, require_stable=True)
    assert [tp.error.code() if tp.error else None for tp in stable] == \
        [KafkaError.UNSTABLE_OFFSET_COMMIT, KafkaError.UNSTABLE_OFFSET_COMMIT, None]
    assert all(tp.error is None for tp in c.committed(tps))    # only when asked for stable offsets
    other = consumer(conf, group="someone-else")
    assert all(tp.error is None for tp in other.committed(tps, require_stable=True))
    other.close()
    getattr(p, outcome + "_transaction")()
    expect = [10, 20, OFFSET_INVALID] if outcome == "commit" else [5, OFFSET_INVALID, OFFSET_INVALID]
    assert [tp.offset for tp in c.committed(tps)] == expect
    assert [tp.offset for tp in c.committed(tps, require_stable=True)] == expect
    assert all(tp.error is None for tp in c.committed(tps, require_stable=True))
    p.close()
    c.close()


def test_offsets_pending_in_another_process_are_unstable(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"in": 1, "out": 1})
    c = consumer(conf, group="copier")
    tps = [TopicPartition("in", 0)]
    try:
        with RemoteProducer({**conf, "transactional.id": "remote-offsets"}) as p:
            p.init_transactions()
            p.begin_transaction()
            p.produce("out", value=b"x", partition=0)
            p.send_offsets([("in", 0, 7)], "copier")
            tp, = c.committed(tps, require_stable=True)
            assert tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT == 88
            assert c.committed(tps)[0].offset == OFFSET_INVALID
            p.send_offsets([("in", 0, 9)], "copier")          # restaging replaces the offset
            p.commit_transaction()
            tp, = c.committed(tps, require_stable=True)
            assert tp.error is None and tp.offset == 9
    finally:
        c.close()


def test_the_commit_point_is_flushed_before_commit_returns(tmp_path):
    """LMDB runs with metasync off: a plain commit's meta page may still be in
    the page cache when it returns, and a system crash would undo it.  The
    Prepare* record is what commit_transaction() reports as done, so its
    meta page is flushed before the call returns (and only that commit pays)."""
    from pylog import failpoints
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1, "b": 1})
    p = Producer({**conf, "transactional.id": "durable-prepare", "linger.ms": 0,
                  "pylog.fsync": "always"})
    p.init_transactions()
    failpoints.set("meta.durable.after", "sleep:0")
    try:
        for i in range(3):
            p.begin_transaction()
            p.produce("a", value=b"%d" % i)
            p.produce("b", value=b"%d" % i)
            p.flush()
            assert failpoints.hits("meta.durable.after") == i      # adding partitions: not flushed
            p.commit_transaction()
            assert failpoints.hits("meta.durable.after") == i + 1
        p.begin_transaction()
        p.produce("a", value=b"gone")
        p.abort_transaction()
        assert failpoints.hits("meta.durable.after") == 4
        # pylog.fsync=never gives up durability on a system crash: no flush
        fast = Producer({**conf, "transactional.id": "fast", "linger.ms": 0})
        fast.init_transactions()
        before = failpoints.hits("meta.durable.after")
        fast.begin_transaction()
        fast.produce("a", value=b"fast")
        fast.commit_transaction()
        assert failpoints.hits("meta.durable.after") == before
        fast.close()
    finally:
        failpoints.clear("meta.durable.after")
        p.close()


def _lso_and_hw_in_a_fresh_process(store_dir, topic, partition):
    from pylog.store import Store
    s = Store.acquire(store_dir)
    try:
        part = s.partition(topic, partition)
        return part.last_stable_offset(), part.high_watermark
    finally:
        s.release()


def test_a_transaction_whose_registration_was_lost_is_aborted_not_left_hanging(tmp_path):
    """A system crash can undo the LMDB commit that added a partition while
    the data written there survives.  Opening the partition must find that
    transaction, which its coordinator no longer lists, and abort it (else the
    LSO stays put forever); a transaction its coordinator does list stays."""
    from pylog import testing
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 2})
    owner = RemoteProducer({**conf, "transactional.id": "lost"})
    try:
        owner.init_transactions()
        owner.begin_transaction()
        for p in (0, 1):
            owner.produce("t", value=b"undecided-%d" % p, partition=p)
        owner.flush()
        s = Store.acquire(str(tmp_path))
        try:
            def forget_t1(txn):             # what undoing the registration leaves
                st = s.meta.get_txn(txn, "lost")
                st["partitions"] = [tp for tp in st["partitions"] if tp != ["t", 1]]
                s.meta.put_txn(txn, "lost", st)
            s.meta.update(forget_t1)
        finally:
            s.release()
    finally:
        owner.kill()
    r = testing.run_in_child(_lso_and_hw_in_a_fresh_process, str(tmp_path), "t", 1, timeout=60)
    assert r.ok, r.error
    assert r.value == (2, 2)                # data at 0, the ABORT marker at 1
    r = testing.run_in_child(_lso_and_hw_in_a_fresh_process, str(tmp_path), "t", 0, timeout=60)
    assert r.ok, r.error
    assert r.value == (0, 1)                # listed and Ongoing: left to its timeout
    assert read_all(conf, [("t", 1)]) == []
    assert values_of(read_all(conf, [("t", 1)], isolation="read_uncommitted")) == [b"undecided-1"]



def _orphan(tmp_path):
    """Transaction T1 of "tx" wrote to t-0 and t-1; a power loss undid the LMDB
    commit registering t-1 (simulated as in test_transactions'
    test_a_transaction_whose_registration_was_lost_is_aborted_not_left_hanging);
    the owner is gone.  Then a new instance of "tx" is initialised (epoch 2) in
    a fresh store: t-0 gets T1's ABORT marker, t-1 is not opened yet."""
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": 2})
    p1 = Producer({**conf, "transactional.id": "tx", "linger.ms": 0})
    p1.init_transactions()
    p1.begin_transaction()
    p1.produce("t", value=b"t1-0", partition=0)
    p1.produce("t", value=b"t1-1", partition=1)
    p1.flush()
    with opened_store(tmp_path) as s:
        def forget_t1(txn):
            st = s.meta.get_txn(txn, "tx")
            st["partitions"] = [tp for tp in st["partitions"] if tp != ["t", 1]]
            s.meta.put_txn(txn, "tx", st)
        s.meta.update(forget_t1)
    p1.close()                      # IN_TXN: close ends nothing; the store closes (refs 0)
    p2 = Producer({**conf, "transactional.id": "tx", "linger.ms": 0})
    p2.init_transactions()          # fences T1: ABORT on t-0 only
    return conf, p2


def test_abort_orphans_does_not_abort_a_live_transactions_records(tmp_path, monkeypatch):
    """abort_orphans judges and writes its marker under the partition lock: a
    live session's first write waits for it instead of joining the orphan."""
    import pylog.store as store_mod
    conf, p2 = _orphan(tmp_path)
    s = Store.acquire(str(tmp_path))
    reports = []
    go = threading.Event()
    try:
        p2.begin_transaction()
        # What the sender does first for a record to t-1: register the
        # partition (the coordinator now lists t-1, Ongoing, epoch 2).
        assert p2._txn.add_partitions([("t", 1)]) is None
        decided = threading.Event()
        real = store_mod.control_batch

        def paused(*a, **kw):                   # between abort_orphans' decision and its append
            if threading.current_thread().name == "orphan-check":
                decided.set()
                go.wait(10)
            return real(*a, **kw)
        monkeypatch.setattr(store_mod, "control_batch", paused)
        # Another thread (or process: the 30 s timer, a consumer) opens t-1 and
        # runs abort_orphans on T1's orphan.
        checker = threading.Thread(target=lambda: s.partition("t", 1), name="orphan-check")
        checker.start()
        assert decided.wait(10)
        # The live owner's sender writes its record meanwhile: it must wait.
        writer = threading.Thread(target=lambda: (
            p2.produce("t", value=b"t2-live", partition=1, on_delivery=lambda e, m: reports.append(e)),
            p2.flush()))
        writer.start()
        time.sleep(0.3)
        assert reports == []
        go.set()
        checker.join(10)
        writer.join(10)
        assert reports == [None]                # delivered
        p2.commit_transaction()                 # and committed
    finally:
        go.set()
        p2.close()
        s.release()
    assert values_of(read_all(conf, [("t", 1)])) == [b"t2-live"]


def test_an_orphan_is_never_committed_by_the_next_session(tmp_path):
    conf, p2 = _orphan(tmp_path)
    s = Store.acquire(str(tmp_path))
    lock_fd = None
    try:
        p2.begin_transaction()
        assert p2._txn.add_partitions([("t", 1)]) is None
        # Another process holds "tx"'s lock right now (its timer's recover /
        # abort_orphans, for instance): opening t-1 here skips the check.
        name = hashlib.sha1(b"tx").hexdigest() + ".lock"
        lock_fd = os.open(os.path.join(str(tmp_path), "txn-locks", name), os.O_RDWR)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        p2.produce("t", value=b"t2", partition=1)
        p2.flush()
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        # The 30 s timer's check, run now: it no longer sees an orphan.
        s.coordinator.abort_orphans(s.partition("t", 1))
        p2.commit_transaction()
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
        p2.close()
        s.release()
    assert values_of(read_all(conf, [("t", 1)])) == [b"t2"]      # never b"t1-1"


INTERVAL_OWNER = r"""
import os, signal, sys
from pylog import Producer
conf = {"bootstrap.servers": "file://" + sys.argv[1], "pylog.fsync": "interval",
        "pylog.fsync.interval.ms": 600000}
p = Producer({**conf, "transactional.id": "iv", "linger.ms": 0})
p.init_transactions()
p.begin_transaction()
for i in range(3):
    p.produce("a", value=b"a-%d" % i, partition=0)
p.commit_transaction()                  # README: returns once the records and PrepareCommit are on disk
os.kill(os.getpid(), signal.SIGKILL)
"""



def test_interval_commit_survives_a_power_cut_right_after_commit(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    r = run_python(INTERVAL_OWNER, tmp_path,
                   env={"PYLOG_FAILPOINTS": "txn.markers.sync.before=sleep:10000"})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    lose_unsynced_bytes(tmp_path, "a", 0)
    assert values_of(read_all(conf, [("a", 0)])) == [b"a-0", b"a-1", b"a-2"]


# ---------------------------------------------------------------------------
# 7. an error from the marker-fsync worker that is not a KafkaException
# ---------------------------------------------------------------------------

def test_a_marker_fsync_oserror_is_reported_not_hung(tmp_path):
    from pylog import failpoints
    conf = conf_for(tmp_path)
    create_topics(conf, {"a": 1})
    reports = []
    p = Producer({**conf, "transactional.id": "m", "linger.ms": 0, "pylog.fsync": "always"})
    failpoints.set("txn.markers.sync.before", "eio")       # the crash harness's own failpoint
    try:
        p.init_transactions()
        p.begin_transaction()
        p.produce("a", value=b"1", partition=0)
        p.commit_transaction()                # the worker's fsync of the markers fails
        p.begin_transaction()
        p.produce("a", value=b"2", partition=0, on_delivery=lambda e, m: reports.append(e))
        try:
            p.flush(3)
        except Exception:                      # an error here is fine; silence is not
            pass
        left = p.flush(3)
    finally:
        failpoints.clear("txn.markers.sync.before")
        p.close(1)
    assert left == 0 and len(reports) == 1 and reports[0] is not None
