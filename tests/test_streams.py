"""pylog.streams: the exactly_once_v2 runner with an LMDB + changelog state store.

The kill test: N records (keys k0..k29, values i) on a 4-partition input;
a runner keeps a running total per key and emits "i:total" per record.  It
is SIGKILLed at named crash points (between the Kafka commit and the LMDB
write, at the transaction's commit point, mid-append, with the changelog
produced but the offsets not sent), while it joins and restores, and when
its output has grown by a random number of records; sometimes its local
state is deleted too.  Each kill is planned and must happen (the harness
fails if the runner finishes or dies before a planned kill), so the number
of kills does not depend on how fast the machine is.  It is restarted each
time with the same member name until it has consumed everything.  Then: the
output (read_committed) holds every input record exactly once, each key's
emitted totals are exactly the prefix sums of its values in input order
(state and output agree across every crash), and the final state and the
changelog hold the exact totals.

The default run is CI-sized; PYLOG_SLOW_TESTS=1 runs the full proof: 50,000
records and 30 kills.
"""
import json
import os
import random
import shutil
import signal
import threading
import time

import pytest

from pylog import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pylog.streams import StateStore, StreamsFatalError, StreamsRunner

from txn_support import CTX, conf_for, create_topics, read_all

PARTS = 4
KEYS = 30
GROUP = "totals"
TID = "totals-worker-0"
PREFIX = "totals"
SLOW = os.environ.get("PYLOG_SLOW_TESTS") == "1"


def totals_fn(record, state):
    """The README's running total per key."""
    total = state.get(record.key(), 0) + int(record.value())
    state.put(record.key(), total)
    return [("out", record.key(), b"%d:%d" % (int(record.value()), total))]


def produce_input(conf, n):
    p = Producer({**conf, "linger.ms": 20})
    for i in range(n):
        k = i % KEYS
        p.produce("in", value=b"%d" % i, key=b"k%d" % k, partition=k % PARTS)
    p.flush()
    p.close()


def ends_for(n):
    return {p: sum(1 for i in range(n) if (i % KEYS) % PARTS == p) for p in range(PARTS)}


def committed_in(conf):
    c = Consumer({**{k: v for k, v in conf.items() if k != "group.instance.id"},
                  "group.id": GROUP})
    try:
        return {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition("in", p) for p in range(PARTS)])}
    finally:
        c.close()


def runner_main(conf, ends, failpoint, conn, member=None, tid=None, when_shared=None,
                work_s=0.0, deadline_s=60.0):
    """Run the totals runner until the group's committed offsets reach ends;
    send back the final state.  The output records carry the producing
    member's transactional.id in a header.  when_shared: a failpoint armed
    once this member shares the input with another (owns fewer partitions).
    work_s: the time process_fn takes per record (a slower transformation)."""
    from pylog import failpoints
    if failpoint:
        failpoints.set(*failpoint)
    me, seen = [], [0]

    def fn(record, state):
        seen[0] += 1
        if work_s:
            time.sleep(work_s)
        if when_shared and seen[0] % 50 == 0 and len(r._consumer.assignment()) < PARTS:
            failpoints.set(*when_shared)
            del when_shared[:]
        return [out + ([("member", me[0])],) for out in totals_fn(record, state)]
    when_shared = list(when_shared or ())
    if tid is not None:
        r = StreamsRunner(conf, ["in"], GROUP, tid, fn, state="totals",
                          commit_records=300, commit_interval_ms=50)
    else:
        r = StreamsRunner(conf, ["in"], GROUP, transactional_id_prefix=PREFIX, member_name=member,
                          process_fn=fn, state="totals", commit_records=300, commit_interval_ms=50)
    me.append(r.transactional_id.encode())
    conn.send(("started", r.transactional_id))
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        r.run(max_idle=0.3)
        if committed_in(conf) == ends:
            break
    else:
        os._exit(3)
    totals = {}
    for p in range(PARTS):
        totals.update({k.decode(): v for k, v in r.task_store(p).items()})
    stats = dict(r.stats)
    r.close()
    conn.send(("done", totals, stats))


def _start(conf, ends, failpoint=None, member=None, tid=None, when_shared=None, work_s=0.0):
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=runner_main, args=(conf, ends, failpoint, child, member, tid,
                                                 when_shared, work_s), daemon=True)
    proc.start()
    child.close()
    assert parent.poll(60), "the runner did not start"
    started, tid = parent.recv()
    assert started == "started"
    return proc, parent, tid


def _result(proc, conn, timeout=120):
    """What runner_main sent last ("done", totals, stats)."""
    assert conn.poll(timeout), "the runner did not finish in %d s" % timeout
    try:
        return conn.recv()
    except EOFError:
        proc.join(10)
        raise AssertionError("the runner died without a result (exit code %s)" % proc.exitcode)


def _kill(proc):
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


class OutputWatch:
    """The output's high watermark (read_uncommitted: every record any
    runner wrote, committed, open or aborted): the runner's progress."""

    def __init__(self, conf):
        self.c = Consumer({**conf, "group.id": "watch", "isolation.level": "read_uncommitted"})

    def end(self):
        return sum(self.c.get_watermark_offsets(TopicPartition("out", p))[1] for p in range(PARTS))

    def wait_for(self, proc, target, timeout=30.0):
        deadline = time.monotonic() + timeout
        while proc.is_alive() and time.monotonic() < deadline and self.end() < target:
            time.sleep(0.005)

    def close(self):
        self.c.close()


def _conf(tmp_path, **extra):
    # A SIGKILLed member stays in the group until session.timeout.ms expels it.
    return conf_for(tmp_path / "store", **{"session.timeout.ms": 1000,
                                           "heartbeat.interval.ms": 100, **extra})


def verify(conf, n, totals):
    values = [i for i in range(n)]
    expected_prefix = {}
    running = {}
    for i in values:
        k = "k%d" % (i % KEYS)
        running[k] = running.get(k, 0) + i
        expected_prefix.setdefault(k, []).append((i, running[k]))
    out = read_all(conf, [("out", p) for p in range(PARTS)])
    got = {}
    for m in out:
        i, total = (int(x) for x in m.value().split(b":"))
        got.setdefault(m.key().decode(), []).append((i, total))
    seen = sorted(i for lst in got.values() for i, _ in lst)
    assert len(seen) == n, "output has %d records for %d inputs" % (len(seen), n)
    assert seen == values, "output differs from the input (lost or duplicated records)"
    assert got == expected_prefix, "emitted totals disagree with the state"
    assert totals == running, "the final state is not the exact totals"
    changelog = read_all(conf, [("totals-totals-changelog", p) for p in range(PARTS)])
    last = {m.key().decode(): json.loads(m.value()) for m in changelog}
    assert last == running, "the changelog's last values are not the exact totals"
    assert committed_in(conf) == ends_for(n)
    return out


# Named crash points: (failpoint, action, on which hit).
CRASHES = [("streams.commit.after", "kill", 2),      # Kafka committed, LMDB not written
           ("txn.prepare.after", "kill", 3),         # the commit point, no marker yet
           ("streams.commit.before", "kill", 2),     # changelog produced, offsets not sent
           ("log.append.after_write", "kill", 20)]   # mid-append, state not recorded


def kill_plan(rng, crashes, early, progress, step):
    """The kills, in a random order: ("crash", failpoint), ("early", delay s,
    but no later than the first commit: during the join, the restore or the
    first transaction) and ("progress", output
    records to wait for (the output grows at each commit), then up to 50 ms)."""
    plan = [("crash", c) for c in crashes]
    plan += [("early", rng.uniform(0.0, 0.3)) for _ in range(early)]
    plan += [("progress", rng.randint(*step)) for _ in range(progress)]
    rng.shuffle(plan)
    return plan


def run_with_kills(tmp_path, n, plan, seed, wipe_p=0.3, extra_conf=None):
    """Kill the runner as `plan` says, then let a last runner finish; every
    planned kill must land on a live runner.  Returns the kills made."""
    t0 = time.monotonic()
    conf = _conf(tmp_path)
    runner_conf = {**conf, **(extra_conf or {})}
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, n)
    ends = ends_for(n)
    rng = random.Random(seed)
    watch = OutputWatch(conf)
    member = None if "group.instance.id" in runner_conf else "m0"   # else: from the instance
    kills, proc, tids = [], None, set()
    try:
        for kind, arg in plan:
            proc, conn, tid = _start(runner_conf, ends, arg if kind == "crash" else None,
                                     member=member)
            tids.add(tid)
            if kind == "crash":
                proc.join(60)
                assert proc.exitcode == -signal.SIGKILL, \
                    "failpoint %s did not kill the runner (exit code %s)" % (arg, proc.exitcode)
            else:
                if kind == "early":         # at most until its first commit
                    watch.wait_for(proc, watch.end() + 1, timeout=arg)
                else:
                    watch.wait_for(proc, watch.end() + arg)
                    time.sleep(rng.uniform(0.0, 0.05))     # anywhere in the next transaction
                assert proc.is_alive(), \
                    "the runner ended (exit code %s) before the planned kill %d (%s): " \
                    "the plan is too long for %d records" % (proc.exitcode, len(kills), kind, n)
                _kill(proc)
                assert proc.exitcode == -signal.SIGKILL
            kills.append(kind)
            print("kill %d (%s %s) at %.2f s, output end %d" % (len(kills), kind, arg,
                                                            time.monotonic() - t0, watch.end()))
            if rng.random() < wipe_p:       # the local state is lost too: a full restore
                shutil.rmtree(str(tmp_path / "store") + "-streams-state", ignore_errors=True)
        proc, conn, tid = _start(runner_conf, ends, member=member)
        tids.add(tid)
        result = _result(proc, conn)
        proc.join(20)
        assert proc.exitcode == 0
        aborted = watch.end() - n
    finally:
        watch.close()
        if proc is not None:
            _kill(proc)
    assert tids == {PREFIX + "-m0"}
    _, totals, stats = result
    verify(conf, n, totals)
    print("\n%d records exactly once across %d SIGKILLs (%s; %d aborted output records) in "
          "%.1f s" % (n, len(kills), ", ".join("%d %s" % (kills.count(k), k) for k in
                                               ("crash", "early", "progress")), aborted,
                      time.monotonic() - t0))
    return kills


def test_running_totals_are_exact_when_the_runner_is_killed_and_restarted(tmp_path):
    """CI-sized: static membership (group.instance.id, so the transactional
    id is "totals-m0") lets each restart take over at once."""
    rng = random.Random(7)
    plan = kill_plan(rng, CRASHES, early=2, progress=4, step=(50, 500))
    kills = run_with_kills(tmp_path, 8000, plan, seed=7,
                           extra_conf={"group.instance.id": "m0"})
    assert len(kills) == len(plan) == 10


@pytest.mark.skipif(not SLOW, reason="the full 50,000-record proof: PYLOG_SLOW_TESTS=1")
def test_running_totals_are_exact_over_50000_records_and_many_kills(tmp_path):
    rng = random.Random(11)
    plan = kill_plan(rng, CRASHES * 2, early=8, progress=14, step=(100, 2500))
    kills = run_with_kills(tmp_path, 50_000, plan, seed=11)
    assert len(kills) == len(plan) == 30


def _members_of(out):
    """{member transactional.id: (first, last) output timestamp}."""
    spans = {}
    for m in out:
        tid = dict(m.headers())["member"].decode()
        ts = m.timestamp()[1]
        lo, hi = spans.get(tid, (ts, ts))
        spans[tid] = (min(lo, ts), max(hi, ts))
    return spans


def test_members_with_a_transactional_id_prefix_work_at_once_and_a_restart_fences(tmp_path):
    """Two runner processes in one group derive their ids from one prefix
    (member slots: "totals-0", "totals-1"), so they work at once without
    fencing each other.  One is killed with its changelog records produced
    but its offsets not sent: the other, taking over its partitions, must
    wait for that transaction, which the restarted member (its slot, so its
    id, came back) aborts by fencing its predecessor, long before
    transaction.timeout.ms would.  Output exactly once, totals exact."""
    n = 8000
    conf = _conf(tmp_path)                     # transaction.timeout.ms: 60 s (the default)
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, n)
    ends = ends_for(n)
    work = 0.0003                               # ~3,000 records/s each: they overlap
    a, conn_a, tid_a = _start(conf, ends, when_shared=("streams.commit.before", "kill", 4),
                              work_s=work)
    b, conn_b, tid_b = _start(conf, ends, work_s=work)
    try:
        assert {tid_a, tid_b} == {PREFIX + "-0", PREFIX + "-1"}
        a.join(60)
        assert a.exitcode == -signal.SIGKILL, "the failpoint did not fire"
        assert b.is_alive()                     # never fenced by its peer
        before_restart = read_all(conf, [("out", p) for p in range(PARTS)])
        time.sleep(2.0)                         # b takes a's partitions and waits on its txn
        t_restart = time.monotonic()
        a, conn_a, tid_a2 = _start(conf, ends, work_s=work)
        assert tid_a2 == tid_a                  # the slot came back: same id, fences a's txn
        results = [_result(a, conn_a), _result(b, conn_b)]
        took = time.monotonic() - t_restart
    finally:
        _kill(a)
        _kill(b)
    # a's open transaction was aborted by its successor, not by its timeout
    assert took < 30, "the restart did not abort the dead member's transaction (%.1f s)" % took
    # both members committed output before the kill, during the same time span
    spans = _members_of(before_restart)
    assert set(spans) == {tid_a, tid_b}
    (a0, a1), (b0, b1) = spans[tid_a], spans[tid_b]
    assert a0 <= b1 and b0 <= a1, "the two members did not work at once: %r" % spans
    # each worker saw only its tasks: the changelog has the final totals
    changelog = read_all(conf, [("totals-totals-changelog", p) for p in range(PARTS)])
    last = {m.key().decode(): json.loads(m.value()) for m in changelog}
    out = verify(conf, n, last)
    assert set(_members_of(out)) <= {tid_a, tid_b}
    assert all(r[0] == "done" for r in results)


def test_a_prefix_derives_one_id_per_live_member_and_reuses_a_freed_slot(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    fn = lambda m, s: [("out", m.key(), m.value())]       # noqa: E731
    r0 = StreamsRunner(conf, ["in"], "copy", transactional_id_prefix="app", process_fn=fn)
    r1 = StreamsRunner(conf, ["in"], "copy", transactional_id_prefix="app", process_fn=fn)
    try:
        assert (r0.transactional_id, r1.transactional_id) == ("app-0", "app-1")
        named = StreamsRunner(conf, ["in"], "copy", transactional_id_prefix="app",
                              member_name="eu-1", process_fn=fn)
        static = StreamsRunner({**conf, "group.instance.id": "host-7"}, ["in"], "copy",
                               transactional_id_prefix="app", process_fn=fn)
        assert named.transactional_id == "app-eu-1"
        assert static.transactional_id == "app-host-7"
        named.close()
        static.close()
        r0.close()
        r2 = StreamsRunner(conf, ["in"], "copy", transactional_id_prefix="app", process_fn=fn)
        assert r2.transactional_id == "app-0"               # the lowest free slot
        r2.close()
    finally:
        r0.close()
        r1.close()
    with pytest.raises(ValueError):
        StreamsRunner(conf, ["in"], "copy", "x", fn, transactional_id_prefix="app")
    with pytest.raises(ValueError):
        StreamsRunner(conf, ["in"], "copy", process_fn=fn)
    with pytest.raises(ValueError):
        StreamsRunner({"bootstrap.servers": "localhost:9092"}, ["in"], "copy",
                      transactional_id_prefix="app", process_fn=fn)


def test_a_restarted_member_with_the_same_name_fences_its_zombie(tmp_path):
    """The zombie is alive (e.g. it hung) but a new runner with the same
    prefix and member name took over: the zombie's transaction is aborted and
    it stops with StreamsFatalError; its output never becomes visible."""
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 300)
    old = StreamsRunner(conf, ["in"], GROUP, transactional_id_prefix=PREFIX, member_name="m1",
                        process_fn=totals_fn, state="totals", commit_records=10**6,
                        commit_interval_ms=10**6)
    new = None
    try:
        deadline = time.monotonic() + 10
        while not old._in_txn and time.monotonic() < deadline:    # one step of run()'s loop
            msgs = old._consumer.consume(100, 0.5)
            old._after_callbacks()
            old._process_batch(msgs)
        assert old._in_txn and old.stats["records"] > 0     # output produced, not committed
        new = StreamsRunner(conf, ["in"], "other-group", transactional_id_prefix=PREFIX,
                            member_name="m1", process_fn=totals_fn, state="other",
                            commit_records=10**6, commit_interval_ms=10**6)
        assert new.transactional_id == old.transactional_id == PREFIX + "-m1"
        with pytest.raises(StreamsFatalError):
            old.run(max_idle=0.5)
        assert new.run(max_idle=0.5) == 300
    finally:
        old.close()
        if new is not None:
            new.close()
    assert len(read_all(conf, [("out", p) for p in range(PARTS)])) == 300     # the new one's


def test_restore_waits_for_a_transaction_left_open_on_the_changelog(tmp_path):
    """A dead member's transaction holds changelog records below records that
    later transactions committed: restoring only to the last stable offset
    would lose those.  The restore waits until the open transaction is
    decided (here: its transactional.id is taken over after a second)."""
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 120)
    r = StreamsRunner(conf, ["in"], GROUP, TID, totals_fn, state="totals", commit_records=60)
    try:
        assert r.run(max_records=60, max_idle=2.0) == 60
        dead = Producer({**conf, "transactional.id": "dead-member"})
        dead.init_transactions()
        dead.begin_transaction()
        for p in range(PARTS):
            dead.produce("totals-totals-changelog", key=b"k0", value=b"-1", partition=p)
        dead.flush()                            # never committed: its process "died"
        assert r.run(max_idle=0.5) == 60        # committed above the open transaction
        totals = {}
        for p in range(PARTS):
            totals.update({k.decode(): v for k, v in r.task_store(p).items()})
    finally:
        r.close()
    shutil.rmtree(str(tmp_path / "store") + "-streams-state")      # restore from the changelog

    def restart_dead_member():
        time.sleep(1.0)
        p = Producer({**conf, "transactional.id": "dead-member"})
        p.init_transactions()                   # fences and aborts the open transaction
        p.close()
    t = threading.Thread(target=restart_dead_member)
    t.start()
    r = StreamsRunner(conf, ["in"], GROUP, TID, totals_fn, state="totals")
    try:
        t0 = time.monotonic()
        assert r.run(max_idle=0.5) == 0
        waited = time.monotonic() - t0
        restored = {}
        for p in range(PARTS):
            restored.update({k.decode(): v for k, v in r.task_store(p).items()})
    finally:
        t.join()
        r.close()
        dead.close()
    assert restored == totals, "the restore lost what was committed after the open transaction"
    assert waited >= 0.9                        # it waited for the decision
    verify(conf, 120, totals)


def test_two_stateful_runners_in_one_process_share_the_tasks(tmp_path):
    """Like Kafka Streams' stream threads: two runners of one group in one
    process, each in its own thread; tasks move between them (they share the
    task directories, so the LMDB environments are shared in the process)."""
    conf = conf_for(tmp_path / "store", **{"session.timeout.ms": 1000,
                                           "heartbeat.interval.ms": 100})
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 3000)
    ends, errors = ends_for(3000), []

    def work(r):
        try:
            deadline = time.monotonic() + 60
            while committed_in(conf) != ends and time.monotonic() < deadline:
                r.run(max_idle=0.3)
        except Exception as e:                  # reported below
            errors.append(e)
    first = StreamsRunner(conf, ["in"], GROUP, transactional_id_prefix=PREFIX,
                          process_fn=totals_fn, state="totals", commit_records=100)
    first.run(max_records=600, max_idle=2.0)    # owns every task, then shares them
    second = StreamsRunner(conf, ["in"], GROUP, transactional_id_prefix=PREFIX,
                           process_fn=totals_fn, state="totals", commit_records=100)
    threads = [threading.Thread(target=work, args=(r,)) for r in (first, second)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not errors, errors
        assert first.stats["records"] > 600 and second.stats["records"] > 0
        totals = {}
        for r in (first, second):
            for p in r._consumer.assignment():
                totals.update({k.decode(): v for k, v in r.task_store(p.partition).items()})
    finally:
        first.close()
        second.close()
    assert {first.transactional_id, second.transactional_id} == {PREFIX + "-0", PREFIX + "-1"}
    verify(conf, 3000, totals)


def _apply_main(path, changes, checkpoint, conn):
    store = StateStore("s", 0, path)
    conn.send(store._apply(changes, checkpoint))
    store.close()


def _apply_elsewhere(path, changes, checkpoint):
    """StateStore._apply in another process (another member on this machine)."""
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_apply_main, args=(path, changes, checkpoint, child), daemon=True)
    proc.start()
    try:
        assert parent.poll(60)
        return parent.recv()
    finally:
        proc.join(10)


def test_the_local_store_checkpoint_only_moves_forward(tmp_path):
    """Members on one machine share task directories: a late write from a
    member that lost the task may not overwrite what the new owner wrote."""
    path = str(tmp_path / "0")
    old = StateStore("s", 0, path)
    try:
        assert old._apply([(b"k", b"1")], 10)
        assert _apply_elsewhere(path, [(b"k", b"2")], 20)    # the new owner, further on
        assert not old._apply([(b"k", b"1")], 15)           # the old owner, late
        assert not old._apply([(b"k", b"1")], 20)
        assert old.get(b"k") == 2 and old.checkpoint() == 20
        assert old._apply([(b"k", b"3")], 21)               # the task came back
        assert old.get(b"k") == 3
        assert not _apply_elsewhere(path, [(b"k", b"2")], 20)
    finally:
        old.close()


def test_a_fenced_runner_stops_with_a_clear_error_and_writes_nothing(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 300)
    old = StreamsRunner(conf, ["in"], GROUP, TID, totals_fn, state="totals", commit_records=10**6,
                        commit_interval_ms=10**6)
    new = None
    try:
        old._consumer.consume(1, 2.0)               # joins and restores; nothing processed yet
        new = StreamsRunner(conf, ["in"], "other-group", TID, totals_fn, state="other",
                            commit_records=10**6, commit_interval_ms=10**6)
        with pytest.raises(StreamsFatalError) as ei:
            old.run(max_idle=0.5)
        assert ei.value.args[0].fatal()
        assert TID in ei.value.args[0].str() and "stopped" in ei.value.args[0].str()
        with pytest.raises(StreamsFatalError):
            old.run(max_idle=0.1)
        assert new.run(max_idle=0.5) == 300
    finally:
        old.close()
        if new is not None:
            new.close()
    out = read_all(conf, [("out", p) for p in range(PARTS)])
    assert len(out) == 300                          # the new runner's only
    assert committed_in(conf) == {p: -1001 for p in range(PARTS)}   # the old group: nothing


def test_an_abortable_error_aborts_rewinds_and_continues(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 3000)
    r = StreamsRunner(conf, ["in"], GROUP, TID, totals_fn, state="totals", commit_records=500)
    real = r._producer.send_offsets_to_transaction
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] in (2, 5):
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "injected",
                                            txn_requires_abort=True))
        return real(*a, **k)
    r._producer.send_offsets_to_transaction = flaky
    try:
        r.run(max_idle=0.5)
        totals = {}
        for p in range(PARTS):
            totals.update({k.decode(): v for k, v in r.task_store(p).items()})
        assert r.stats["aborts"] == 2
    finally:
        r.close()
    assert len(verify(conf, 3000, totals)) == 3000


def test_process_fn_errors_abort_the_transaction_and_propagate(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 100)
    seen = []

    def boom(record, state):
        seen.append(record.offset())
        if len(seen) == 50:
            raise ValueError("bad record")
        return totals_fn(record, state)
    r = StreamsRunner(conf, ["in"], GROUP, TID, boom, state="totals", commit_records=10**6,
                      commit_interval_ms=10**6)
    try:
        with pytest.raises(ValueError):
            r.run(max_idle=0.5)
        assert r.stats["aborts"] == 1
    finally:
        r.close()
    assert read_all(conf, [("out", p) for p in range(PARTS)]) == []
    r = StreamsRunner(conf, ["in"], GROUP, TID, totals_fn, state="totals")
    try:
        r.run(max_idle=0.5)
        totals = {}
        for p in range(PARTS):
            totals.update({k.decode(): v for k, v in r.task_store(p).items()})
    finally:
        r.close()
    verify(conf, 100, totals)


def test_stateless_runner_copies_exactly_once(tmp_path):
    conf = conf_for(tmp_path / "store")
    create_topics(conf, {"in": PARTS, "out": PARTS})
    produce_input(conf, 1000)
    with StreamsRunner(conf, ["in"], "copy", "copy-0",
                       lambda m, s: [("out", m.key(), m.value())], commit_records=100) as r:
        assert r.run(max_idle=0.5) == 1000
        assert r.stats["commits"] >= 10
    out = read_all(conf, [("out", p) for p in range(PARTS)])
    assert sorted(int(m.value()) for m in out) == list(range(1000))
