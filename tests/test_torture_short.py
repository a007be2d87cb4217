"""A short run of every torture scenario (pylog.torture), asserting that the
checker finds no anomaly, plus a regression test for each bug the full runs
found (a strict xfail while the bug is open).

The full runs: python -m pylog.torture all  (see pylog/torture/__main__.py).
CI sizes here: a few dozen trials altogether, seconds per scenario.
"""
import os
import random
import time

import pytest

from pylog import testing
from pylog.torture import powerloss, scenarios, workload
from pylog.torture.harness import Trial
from pylog.torture.scenarios import workload_events

SEED = 20240611


def run(n, trials, tmp_path, **opts):
    base = dict(kills=2, hits=1, later=0, cycles=3, recovery_kills=2, duration=4.0, min_s=0.1, max_s=0.4)
    base.update(opts)
    out = scenarios.run(n, trials, SEED, str(tmp_path), scenarios.Options(**base))
    assert out.trials > 0, "scenario %s ran no trial" % n
    return out


def assert_clean(out):
    assert out.report.ok, "\n" + "\n".join(
        "%s: %d, e.g. %s" % (k, a["count"], a["example"]) for k, a in out.report.anomalies.items())


# ---- the scenarios, CI-sized ----

def test_scenario_1_kill_during_transactions(tmp_path):
    out = run(1, 3, tmp_path)
    assert_clean(out)
    assert out.notes.get("kills") == 6


def test_scenario_2_every_failpoint_first_hit(tmp_path):
    out = run(2, 0, tmp_path)
    assert_clean(out)
    crossed = len(testing.failpoint_names()) - sum(1 for k in out.notes if k.startswith("not crossed"))
    assert out.trials == crossed and out.notes.get("kills", 0) >= crossed - 2
    # Every failpoint on the crash paths the issue names is crossed.
    for name in ("log.append.after_write", "txn.prepare.after", "txn.marker.after",
                 "log.roll.before", "log.roll.after", "index.rebuild", "index.save.between",
                 "index.append", "recovery.segment", "recovery.truncate", "recovery.discard",
                 "recovery.point", "fsync.before", "fsync.after", "log.sync_marker.before",
                 "meta.commit.before", "meta.commit.after", "txn.init.before",
                 "txn.add_partitions.after", "txn.complete.before", "txn.complete.after",
                 "txn.redo.committed", "txn.redo.append.after"):
        assert "not crossed: " + name not in out.notes


def test_scenario_3_power_loss(tmp_path):
    # LMDB's last commit survives here (the file model only); undoing it is
    # the deterministic test_power_loss_* cases below, since the random draw
    # over 6 power losses would make a flaky test of the bugs it finds.
    out = run(3, 6, tmp_path, lmdb="keep")
    assert_clean(out)
    assert out.trials == 6


# Every target, small segments (I/O errors in rolls too), counted from once the
# store is open: errors while opening are test_io_error_while_opening_* and
# test_failed_recovery_fsync_* below.
IO_CASES = dict(io_arms=("open",))


def test_scenario_4_io_errors_on_the_data_path(tmp_path):
    out = run(4, 8, tmp_path, hits=3, **IO_CASES)
    assert_clean(out)
    assert out.notes.get("cases with errors", 0) >= 4


def test_scenario_5_kill_during_recovery(tmp_path):
    out = run(5, 2, tmp_path)
    assert_clean(out)
    assert out.notes.get("records digested", 0) > 0


def test_scenario_6_soak_with_copier(tmp_path):
    # Two copiers of one group, eager rebalances on every kill and restart:
    # what found the consume()-during-rebalance bugs below.
    out = run(6, 1, tmp_path, producers=2, copiers=2)
    assert_clean(out)
    assert out.notes.get("kills", 0) >= 3


def test_command_line_prints_the_scoreboard(tmp_path, capsys):
    from pylog.torture.__main__ import main
    rc = main(["1", "--trials", "1", "--kills", "1", "--seed", "3", "--dir", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "| scenario" in text and "1 kill-9 transactions" in text and "none" in text


# ---- regressions: the bugs the full runs found ----

def open_partitions_child(store, topics):
    """Open every partition through a Consumer; the exception's class, or None."""
    from pylog import Consumer, TopicPartition, KafkaException
    try:
        c = Consumer({"bootstrap.servers": "file://" + store, "group.id": "g"})
        c.assign([TopicPartition(t, p, 0) for t in topics for p in range(topics[t])])
        c.consume(100, 0.1)
        c.close()
    except KafkaException as e:
        return "KafkaException:" + e.args[0].name()
    except Exception as e:
        return type(e).__name__
    return None


@pytest.fixture
def store_with_data(tmp_path):
    t = Trial(str(tmp_path), "s")
    workload.create_topics(t.store, {"a": 1})
    workload.txn_producer(t.store, "base", "tx", t.log("p", "base"), {"a": 1}, txns=3,
                          abort_ratio=0.0)
    return t


@pytest.mark.parametrize("failpoint", ["write=eio!", "rename=eio!",
                                       "recovery.truncate=eio"])
def test_io_error_while_opening_a_partition_is_a_kafka_exception(store_with_data, failpoint):
    scenarios._torn_tail(store_with_data.store, "a", 0, random.Random(1))   # recovery truncates
    name, action = failpoint.split("=")
    r = testing.run_in_child(open_partitions_child, store_with_data.store, {"a": 1},
                             failpoints={name: action}, timeout=60)
    assert r.value == "KafkaException:KAFKA_STORAGE_ERROR"


def append_under_io_error_child(store, failpoint):
    """Open, then fail `failpoint` while produce() rolls segments (one 100-byte
    record per flush, 300-byte segments) and, for "truncate", cuts a torn
    tail a dead writer left.  Returns (what flush raised, errors reported,
    records still in flight after the last flush)."""
    from pylog import Producer, failpoints
    errors = []
    p = Producer({"bootstrap.servers": "file://" + store, "linger.ms": 0,
                  "enable.idempotence": True,
                  "on_delivery": lambda err, msg: err is not None and errors.append(err.name())})
    p.produce("r", value=b"first", partition=0)
    p.flush(10)
    if failpoint == "truncate":
        workload.append_garbage(store, "r", 0, random.Random(3))
    failpoints.set(failpoint, "eio")
    raised = None
    for i in range(6):
        try:
            p.produce("r", value=b"%03d" % i * 33, partition=0)
            p.flush(0.3)
        except Exception as e:
            raised = raised or type(e).__name__
    try:
        left = p.flush(1)
    except Exception as e:
        raised, left = raised or type(e).__name__, len(p)
    return raised, errors, left


@pytest.mark.parametrize("failpoint", ["write", "rename", "truncate"])
def test_io_error_during_an_append_reports_every_record(tmp_path, failpoint):
    store = str(tmp_path / "store")
    workload.create_topics(store, {"r": 1}, {"segment.bytes": 300})
    r = testing.run_in_child(append_under_io_error_child, store, failpoint, timeout=60)
    assert r.ok, r.error
    raised, errors, left = r.value
    assert raised in (None, "KafkaException", "StorageError")
    assert errors and left == 0


def unsynced_tail_child(store):
    """Write transactions with fsync=never and die without closing: valid
    batches past the last fsync (the .sync marker) are left for recovery."""
    from pylog import Producer
    p = Producer({"bootstrap.servers": "file://" + store, "transactional.id": "tail"})
    p.init_transactions()
    for i in range(3):
        p.begin_transaction()
        p.produce("a", value=b"tail %d" % i, partition=0)
        p.commit_transaction()
    os._exit(0)


def reopen_after_failed_recovery_fsync_child(store, fsync_log):
    powerloss.install_recorder(fsync_log)
    from pylog import failpoints
    failpoints.set("fsync.before", "eio", 1)          # the first fsync: recovery's
    first = open_partitions_child(store, {"a": 1})
    second = open_partitions_child(store, {"a": 1})
    return first, second


def test_failed_recovery_fsync_is_not_retried_on_reopen(store_with_data):
    t = store_with_data
    assert testing.run_in_child(unsynced_tail_child, t.store, timeout=60).returncode == 0
    durable = powerloss.durable_sizes(t.store)
    fsync_log = t.log("fsync", "reopen")
    r = testing.run_in_child(reopen_after_failed_recovery_fsync_child, t.store, fsync_log, timeout=60)
    assert r.value[0] == "KafkaException:KAFKA_STORAGE_ERROR"
    assert powerloss.fsync_retries(powerloss.read_records(fsync_log), durable) == []


def test_power_loss_keeps_partitions_created_by_the_first_append(tmp_path):
    t = Trial(str(tmp_path), "pl")
    topics = {"a": 2}
    workload.create_topics(t.store, topics, open_partitions=False)
    before = powerloss.snapshot(t.store)
    fsync_log = t.log("fsync", "pl")
    c = t.start(workload.powerloss_phase, t.store, "pl", "tx", t.logs, topics, fsync_log)
    time.sleep(1.0)
    c.kill()
    c.wait(10)

    class Always(random.Random):
        def random(self):
            return 0.0                          # every entry no fsync vouched for vanishes
    powerloss.apply(t.store, powerloss.read_records(fsync_log), before, Always(1),
                    mode="truncate", new_entries="vanish")
    assert testing.run_in_child(workload.verify, t.store, ["tx"], t.logs, topics, timeout=60).ok
    rep = t.check()
    assert rep.stats["acked"] > 0
    assert rep.ok, rep.summary()


def commit_then_die_child(store, log_path):
    workload.txn_producer(store, "p", "tx", log_path, {"t": 1}, txns=3, abort_ratio=0.0)


def test_running_reader_sees_a_transaction_committed_by_a_producer_that_died(tmp_path):
    from pylog import Consumer, TopicPartition
    store = str(tmp_path / "store")
    workload.create_topics(store, {"t": 1})
    c = Consumer({"bootstrap.servers": "file://" + store, "group.id": "g",
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition("t", 0, 0)])
        assert c.consume(10, 0.1) == []
        r = testing.run_in_child(commit_then_die_child, store, str(tmp_path / "p.jsonl"),
                                 failpoints={"txn.prepare.after": "kill@2"}, timeout=60)
        assert r.killed_by == "failpoint"
        # Transaction 0 committed; transaction 1 passed its commit point.
        events = workload_events(str(tmp_path / "p.jsonl"))
        want = sum(1 for e in events if e.get("op") == "produce" and e["txn"] in ("p:0", "p:1"))
        got, deadline = [], time.monotonic() + 3.0
        while len(got) < want and time.monotonic() < deadline:
            got += c.consume(100, 0.2)
        assert len(got) == want
    finally:
        c.close()


def join_group_child(store, topic, seconds):
    """A second member of group g1 whose static id sorts first, so the range
    assignor gives it the topic's only partition."""
    from pylog import Consumer
    c = Consumer({"bootstrap.servers": "file://" + store, "group.id": "g1",
                  "group.instance.id": "a-member", "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 100, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.consume(10, 0.1)
    c.close()


@pytest.mark.parametrize("outcome", ["moved", "assigned-back"])
def test_consume_returns_no_record_of_a_partition_revoked_during_the_call(tmp_path, outcome):
    """Scenario 6 found duplicate copies: consume() returned records drained
    before a rebalance in the same call revoked their partition."""
    a, b, msgs, revoked = _rebalance_during_consume(tmp_path, outcome)
    try:
        assert revoked, "no rebalance during the call"
        owned = {(tp.topic, tp.partition) for tp in a.assignment()}
        returned = [(m.partition(), m.offset()) for m in msgs]
        assert [r for r in returned if ("g", r[0]) not in owned] == []
        assert len(returned) == len(set(returned)), returned
    finally:
        a.close()
        b.wait(20)


def test_partition_assigned_back_during_consume_loses_no_record(tmp_path):
    a, b, msgs, revoked = _rebalance_during_consume(tmp_path, "assigned-back")
    try:
        assert revoked, "no rebalance during the call"
        msgs += [m for m in a.consume(100, 0.5) if m.error() is None]  # B is still a member
        assert sorted(m.offset() for m in msgs if m.partition() == 1) == [0, 1, 2, 3, 4]
    finally:
        a.close()
        b.wait(20)


def _rebalance_during_consume(tmp_path, outcome):
    """A consumer drains 5 records of its partition in consume(100, 3.0),
    then a second member joins during that call.  One partition: the new
    member (sorting first) takes it.  Two: the new member takes partition 0
    and this consumer gets partition 1, which it was reading, back at once
    (eager protocol).  Returns (consumer, other member, records, revoked)."""
    from pylog import Consumer, Producer
    store = str(tmp_path / "store")
    nparts = 1 if outcome == "moved" else 2
    workload.create_topics(store, {"g": nparts})
    revoked = []
    a = Consumer({"bootstrap.servers": "file://" + store, "group.id": "g1",
                  "group.instance.id": "z-member", "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 100, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    a.subscribe(["g"], on_revoke=lambda c, parts: revoked.extend(parts))
    deadline = time.monotonic() + 10
    while len(a.assignment()) < nparts and time.monotonic() < deadline:
        a.consume(1, 0.1)
    assert len(a.assignment()) == nparts, "never assigned"
    p = Producer({"bootstrap.servers": "file://" + store})
    for i in range(5):
        p.produce("g", value=b"%d" % i, partition=nparts - 1)
    p.flush(10)
    p.close()
    b = testing.start_child(join_group_child, store, "g", 6.0)
    msgs = [m for m in a.consume(100, 3.0) if m.error() is None]
    return a, b, msgs, revoked


def reopen_after_failed_recovery_fsync_reads_child(store):
    """The recovery fsync fails once; then open again and read everything."""
    from pylog import failpoints
    failpoints.set("fsync.before", "eio", 1)
    first = open_partitions_child(store, {"a": 1})
    return first, [m.value() for m in testing.read_back(store, ["a"])]


def test_failed_recovery_fsync_keeps_records_fsynced_before(store_with_data):
    t = store_with_data                    # 3 transactions, fsync=never, closed cleanly
    # What was committed, from the producer's log: opening the store to read
    # it would move the recovery point and hide the bug.
    before = [e["value"].encode() for e in workload_events(t.log("p", "base"))
              if e.get("op") == "send"]
    assert len(before) > 0
    r = testing.run_in_child(reopen_after_failed_recovery_fsync_reads_child, t.store, timeout=60)
    assert r.value[0] == "KafkaException:KAFKA_STORAGE_ERROR"
    assert r.value[1] == before


def test_ci_selection_of_io_errors_covers_every_target():
    """The CI run of scenario 4 draws from every I/O failpoint."""
    assert "io_targets" not in IO_CASES
    assert set(scenarios.IO_TARGETS) <= set(testing.failpoint_names())


# ---- LMDB under a power loss (scenario 3's model of meta/) ----

def test_undoing_the_last_lmdb_commit_opens_the_one_before(tmp_path):
    """powerloss.undo_last_lmdb_commit reads LMDB's meta pages as LMDB does
    (same last transaction id) and leaves a database that opens, holds the
    previous commit's data, and takes new commits."""
    import lmdb
    store = str(tmp_path / "store")
    path = os.path.join(store, "meta")
    os.makedirs(path)
    env = lmdb.open(path, metasync=False, sync=True)
    for i in range(6):
        with env.begin(write=True) as txn:
            txn.put(b"k", b"%d" % i)
            txn.put(b"big%d" % i, bytes(5000))       # overflow pages, freed and reused
            txn.delete(b"big%d" % (i - 2))
    last = env.info()["last_txnid"]
    env.close()
    assert powerloss.lmdb_txnid(store) == last
    assert not powerloss.undo_last_lmdb_commit(store, last)       # durable already
    assert not powerloss.undo_last_lmdb_commit(store, None)
    assert powerloss.undo_last_lmdb_commit(store, last - 1)
    assert powerloss.lmdb_txnid(store) == last - 1
    env = lmdb.open(path, metasync=False, sync=True)
    try:
        assert env.info()["last_txnid"] == last - 1
        with env.begin() as txn:
            assert txn.get(b"k") == b"4"
            assert txn.get(b"big4") == bytes(5000) and txn.get(b"big5") is None
        with env.begin(write=True) as txn:
            txn.put(b"k", b"again")
        with env.begin() as txn:
            assert txn.get(b"k") == b"again" and txn.get(b"big3") == bytes(5000)
    finally:
        env.close()


def test_lmdb_commit_is_undoable_only_when_nothing_made_it_durable():
    opened = {"op": "lmdb", "what": "open", "phase": "end", "sync": True, "metasync": False}
    begin = {"op": "lmdb", "what": "commit", "phase": "begin"}
    end = {"op": "lmdb", "what": "commit", "phase": "end"}
    sync = {"op": "lmdb", "what": "sync", "phase": "end"}
    assert powerloss.lmdb_undoable([opened, begin, end], 5) == 5
    assert powerloss.lmdb_undoable([opened, begin, end, sync, begin, end], 5) == 5
    assert powerloss.lmdb_undoable([opened, begin, end, begin], 5) is None   # killed mid-commit
    assert powerloss.lmdb_undoable([opened, begin, end, sync], 5) is None
    assert powerloss.lmdb_undoable([begin, end], 5) is None                  # opened unrecorded
    assert powerloss.lmdb_undoable([dict(opened, metasync=True), begin, end], 5) is None
    assert powerloss.lmdb_undoable([opened, begin, end], None) is None


def txn_then_power_cut_child(store, fsync_log, commits, then_write):
    """With the recorder on and fsync=always: `commits` committed
    transactions of one record each on t/0 (values c0, c1, ...); then, if
    then_write, one more transaction whose record ("open") is written and
    acknowledged, uncommitted.  Dies without closing anything."""
    from pylog import Producer
    powerloss.install_recorder(fsync_log)
    acked = []
    p = Producer({"bootstrap.servers": "file://" + store, "transactional.id": "cut",
                  "pylog.fsync": "always",
                  "on_delivery": lambda err, msg: err is None and acked.append(msg.value())})
    p.init_transactions()
    for i in range(commits):
        p.begin_transaction()
        p.produce("t", value=b"c%d" % i, partition=0)
        p.commit_transaction()
    if then_write:
        p.begin_transaction()
        p.produce("t", value=b"open", partition=0)
        p.flush(10)
        assert acked[-1] == b"open"
    os._exit(0)


def commit_one_child(store, value):
    from pylog import Producer
    p = Producer({"bootstrap.servers": "file://" + store, "transactional.id": "cut"})
    p.init_transactions()
    p.begin_transaction()
    p.produce("t", value=value, partition=0)
    p.commit_transaction()
    p.close()


@pytest.fixture
def power_cut_store(tmp_path):
    t = Trial(str(tmp_path), "cut")
    workload.create_topics(t.store, {"t": 1})
    return t, powerloss.snapshot(t.store), powerloss.lmdb_txnid(t.store)


# pylog opens LMDB with metasync=False: a commit's own meta page is written
# but not synced, so a power loss may undo the last commit (LMDB's documented
# MDB_NOMETASYNC behaviour).  Not every LMDB commit is derived data the logs
# can restore: PrepareCommit is the commit point that commit_transaction()
# acknowledges while the markers are still unsynced (flushed since c7d1814);
# an undone AddPartitionsToTxn leaves fsynced data of a transaction that its
# coordinator does not know (Coordinator.abort_orphans aborts it, bf5789c);
# and a producer id must not be handed out twice (flushed since bf5789c).
# Found by scenario 3 with the LMDB model (powerloss.apply(lmdb=...)).


def test_power_loss_right_after_commit_transaction_keeps_the_transaction(power_cut_store):
    t, before, lmdb_before = power_cut_store
    fsync_log = t.log("fsync", "cut")
    r = testing.run_in_child(txn_then_power_cut_child, t.store, fsync_log, 2, False, timeout=60)
    assert r.returncode == 0, r.error
    # Every file cut at its last fsync; LMDB's last commit undone unless
    # the LMDB settings make it durable.
    powerloss.apply(t.store, powerloss.read_records(fsync_log), before, random.Random(1),
                    mode="truncate", lmdb="undo", lmdb_before=lmdb_before)
    values = [m.value() for m in testing.read_back(t.store, ["t"])]
    assert values == [b"c0", b"c1"]


# commits=1: the undone AddPartitionsToTxn also recorded Complete* for the
# previous transaction (Coordinator._owned), which is Prepare* again after the
# power loss; its roll-forward must not take the orphan for its own data and
# write its COMMIT marker again (which committed the orphan until 02d959c;
# scenario 3 found it as torn-transaction, 64 in 1000 power losses).
@pytest.mark.parametrize("commits", [0, 1])
def test_power_loss_after_an_uncommitted_write_keeps_it_out_of_later_transactions(
        power_cut_store, commits):
    t, before, lmdb_before = power_cut_store
    fsync_log = t.log("fsync", "cut")
    r = testing.run_in_child(txn_then_power_cut_child, t.store, fsync_log, commits, True,
                             timeout=60)
    assert r.returncode == 0, r.error
    # Every file cut at its last fsync; LMDB's last commit undone unless
    # the LMDB settings make it durable.
    powerloss.apply(t.store, powerloss.read_records(fsync_log), before, random.Random(1),
                    mode="truncate", lmdb="undo", lmdb_before=lmdb_before)
    assert testing.run_in_child(commit_one_child, t.store, b"next", timeout=60).ok
    values = [m.value() for m in testing.read_back(t.store, ["t"], timeout=10)]
    assert values == [b"c%d" % i for i in range(commits)] + [b"next"]


def idempotent_then_power_cut_child(store, fsync_log, value):
    """With the recorder on and fsync=always: one idempotent record,
    acknowledged; then die without closing."""
    from pylog import Producer
    powerloss.install_recorder(fsync_log)
    acked = []
    p = Producer({"bootstrap.servers": "file://" + store, "enable.idempotence": True,
                  "pylog.fsync": "always",
                  "on_delivery": lambda err, msg: err is None and acked.append(msg.value())})
    p.produce("t", value=value, partition=0)
    p.flush(10)
    assert acked == [value]
    os._exit(0)


def test_power_loss_after_an_idempotent_write_does_not_hand_its_producer_id_out_again(
        power_cut_store):
    t, before, lmdb_before = power_cut_store
    fsync_log = t.log("fsync", "cut")
    r = testing.run_in_child(idempotent_then_power_cut_child, t.store, fsync_log, b"first",
                             timeout=60)
    assert r.returncode == 0, r.error
    powerloss.apply(t.store, powerloss.read_records(fsync_log), before, random.Random(1),
                    mode="truncate", lmdb="undo", lmdb_before=lmdb_before)
    # A second producer after the reboot: its first record must not be taken
    # for a duplicate of the first producer's.
    r = testing.run_in_child(idempotent_then_power_cut_child, t.store, t.log("fsync", "2"),
                             b"second", timeout=60)
    assert r.returncode == 0, r.error
    assert [m.value() for m in testing.read_back(t.store, ["t"])] == [b"first", b"second"]


# ---- scenario 4 with the .sync marker as an I/O target ----

def marker_write_fails_child(store):
    """Transactions with fsync=always.  Each append fsyncs and records it in
    the .sync marker, and so does the producer's worker thread for the
    markers of each commit (waited for before the next AddPartitionsToTxn):
    marker writes go open, data 0, markers 0, data 1, ...  The failpoint
    (armed by the caller) fails the third: the worker's, after a good fsync.
    Returns (class of what the application got, is it a KafkaException,
    hits of the failpoint)."""
    from pylog import KafkaException, Producer, failpoints
    p = Producer({"bootstrap.servers": "file://" + store, "transactional.id": "marker",
                  "pylog.fsync": "always"})
    p.init_transactions()
    got = (None, None)
    for i in range(3):
        try:
            p.begin_transaction()
            p.produce("t", value=b"%d" % i, partition=0)
            p.commit_transaction()
        except Exception as e:
            got = (type(e).__name__, isinstance(e, KafkaException))
            break
    return got + (failpoints.hits("log.sync_marker.before"),)


# Scenario 4 with the .sync marker as a target found the OSError reaching the
# application (through the markers' fsync worker; typed since de59235).
def test_failed_sync_marker_write_is_a_kafka_storage_error(tmp_path):
    store = str(tmp_path / "store")
    workload.create_topics(store, {"t": 1})
    r = testing.run_in_child(marker_write_fails_child, store, timeout=60,
                             failpoints={"log.sync_marker.before": "eio@3"})
    assert r.ok, r.error
    kind, typed, hits = r.value
    assert hits >= 3                                    # the error was injected
    assert kind is not None and typed, kind
