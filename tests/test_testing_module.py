"""pylog.testing: run code in a child, kill it at a failpoint or a random
moment, then check the store, as an application's crash tests would.

The functions named *_child run in spawned children, so they live at module
level where spawn can import them.
"""
import os
import signal
import time

import pytest

from pylog import testing
from pylog.admin import AdminClient, NewTopic
from pylog.producer import Producer


# ---- children ----

def add_child(a, b=0):
    return a + b


def raise_child(msg):
    raise ValueError(msg)


def sleep_child(seconds):
    time.sleep(seconds)
    return "woke"


def env_child(name):
    return os.environ.get(name)


def unpicklable_child():
    return lambda: None


def failpoints_child():
    from pylog import failpoints
    return failpoints.active()


def exit_child(code):
    os._exit(code)


def transactions_child(store, n):
    """n committed transactions of one record each on topic t, value b"i"."""
    p = Producer({"bootstrap.servers": "file://" + store, "transactional.id": "writer"})
    p.init_transactions()
    for i in range(n):
        p.begin_transaction()
        p.produce("t", value=b"%d" % i, partition=0)
        p.commit_transaction()
    p.close()
    return n


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    admin = AdminClient({"bootstrap.servers": "file://" + path})
    for f in admin.create_topics([NewTopic("t", 1)]).values():
        f.result()
    admin.close()
    return path


# ---- run_in_child ----

def test_run_in_child_returns_the_value():
    r = testing.run_in_child(add_child, 2, b=3)
    assert r.ok and r.value == 5 and r.returncode == 0
    assert not r.killed and r.killed_by is None and r.signal is None
    assert r.pid > 0 and r.duration > 0


def test_run_in_child_reports_an_exception_with_its_traceback():
    r = testing.run_in_child(raise_child, "boom")
    assert not r.ok and r.error_type == "ValueError"
    assert "boom" in r.error and "raise_child" in r.error
    assert r.returncode == 1


def test_run_in_child_reports_a_nonzero_exit():
    r = testing.run_in_child(exit_child, 3)
    assert r.returncode == 3 and not r.ok and not r.killed


def test_kill_after_sigkills_the_child():
    r = testing.run_in_child(sleep_child, 30, kill_after=0.2)
    assert r.killed and r.killed_by == "timer" and r.signal == signal.SIGKILL
    assert r.returncode == -signal.SIGKILL and r.value is None
    assert r.duration < 10


def test_timeout_kills_a_hung_child_and_says_so():
    r = testing.run_in_child(sleep_child, 30, timeout=0.3)
    assert r.killed and r.timed_out and r.killed_by == "timeout"


def test_child_that_ends_before_kill_after_is_not_killed():
    r = testing.run_in_child(sleep_child, 0, kill_after=5)
    assert r.ok and r.value == "woke"


def test_random_kill_is_reproducible_and_within_the_window():
    a = testing.random_kill(sleep_child, 30, min_s=0.1, max_s=0.3, seed=7)
    b = testing.random_kill(sleep_child, 30, min_s=0.1, max_s=0.3, seed=7)
    assert a.killed_by == b.killed_by == "timer"
    assert 0.1 <= a.duration < 5
    with pytest.raises(ValueError):
        testing.random_kill(sleep_child, 1, min_s=0.5, max_s=0.1)


def test_env_reaches_the_child():
    r = testing.run_in_child(env_child, "PYLOG_TESTING_PROBE", env={"PYLOG_TESTING_PROBE": "yes"})
    assert r.value == "yes"


def test_unpicklable_result_comes_back_as_its_repr():
    r = testing.run_in_child(unpicklable_child)
    assert r.ok and "lambda" in str(r.value)


def test_failpoints_are_armed_in_the_child_only():
    r = testing.run_in_child(failpoints_child, failpoints={"fsync.before": "eio@3",
                                                          "log.write": ("sleep:1", 2)})
    assert r.value == {"fsync.before": ("eio", 3), "log.write": ("sleep:1", 2)}
    from pylog import failpoints
    assert "fsync.before" not in failpoints.active()


def test_failpoint_env_variable_is_honoured():
    r = testing.run_in_child(failpoints_child, env={"PYLOG_FAILPOINTS": "rename=eio!"})
    assert r.value == {"rename": ("eio!", 1)}


def test_unknown_failpoint_action_fails_in_the_parent():
    with pytest.raises(ValueError, match="unknown failpoint action"):
        testing.run_in_child(add_child, 1, failpoints={"fsync.before": "explode"})


def test_start_child_can_be_killed_while_the_parent_works():
    c = testing.start_child(sleep_child, 30)
    assert c.alive()
    c.kill()
    r = c.wait(10)
    assert r.killed and r.killed_by == "timer" and not c.alive()
    c.kill()                                  # a no-op once it ended
    assert c.wait() is r


def test_failpoint_names_lists_the_steps_pylog_marks():
    names = testing.failpoint_names()
    for name in ("fsync.before", "fsync.after", "log.append.after_write", "txn.prepare.after",
                 "txn.marker.after", "recovery.segment", "log.roll.before"):
        assert name in names
    assert names == sorted(set(names))


def test_every_failpoint_is_catalogued_with_its_step():
    from pylog import failpoints
    names = set(testing.failpoint_names())
    missing = sorted(names - set(failpoints.CATALOGUE))
    stale = sorted(set(failpoints.CATALOGUE) - names)
    assert not missing, "add these to pylog.failpoints.CATALOGUE: %s" % missing
    assert not stale, "pylog no longer hits these; drop them from CATALOGUE: %s" % stale
    assert all(isinstance(v, str) and v for v in failpoints.CATALOGUE.values())


# ---- the use case: kill at a failpoint, then check the data ----

def test_kill_at_the_commit_point_then_read_back_rolls_the_transaction_forward(store):
    r = testing.run_in_child(transactions_child, store, 5, failpoints={"txn.prepare.after": "kill@3"})
    assert r.killed and r.killed_by == "failpoint"
    # Transactions 0 and 1 committed; 2 reached its durable PrepareCommit:
    # opening the store rolls it forward.  3 and 4 never started.
    assert [m.value() for m in testing.read_back(store, ["t"])] == [b"0", b"1", b"2"]


def test_kill_before_the_commit_point_leaves_nothing_of_that_transaction(store):
    r = testing.run_in_child(transactions_child, store, 5,
                             failpoints={"txn.prepare.before": "kill@2"})
    assert r.killed_by == "failpoint"
    assert [m.value() for m in testing.read_back(store, ["t"])] == [b"0"]
    # read_uncommitted sees the open transaction's record too.
    assert [m.value() for m in testing.read_back(store, ["t"], isolation="read_uncommitted")] == \
        [b"0", b"1"]


def test_random_kill_leaves_a_prefix_of_the_transactions(store):
    r = testing.random_kill(transactions_child, store, 200, min_s=0.05, max_s=0.3, seed=3)
    values = [int(m.value()) for m in testing.read_back("file://" + store)]
    assert values == list(range(len(values)))
    if r.ok:
        assert len(values) == 200
