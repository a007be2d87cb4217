"""LMDB handled as its documentation requires, across threads and processes.

The map grows on MapFullError (the whole write retried) and other processes
adopt a grown map on MapResizedError; a forked child gets an environment of
its own (LMDB forbids using the parent's after fork()); stale reader slots of
dead processes are cleared on open (reader_check); a write transaction is
always closed, whatever fn raises.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pylog import codec, meta as meta_mod
from pylog.meta import Meta
from pylog.store import Store

SMALL_MAP = 256 << 10


@pytest.fixture
def small_map(monkeypatch):
    monkeypatch.setattr(meta_mod, "INITIAL_MAP_SIZE", SMALL_MAP)


@pytest.fixture
def meta_path(tmp_path):
    return str(tmp_path / "meta")


def fill(m, prefix, count, size=4096):
    """Write count topics with size-byte configs, one update each."""
    for i in range(count):
        name = "%s-%05d" % (prefix, i)
        m.update(lambda txn, name=name: m.put_topic(txn, name, {"pad": "x" * size}))


def map_size(m):
    return m.env.info()["map_size"]


def run_python(code, **kw):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, **kw)


# ---------------------------------------------------------------------------
# Map size
# ---------------------------------------------------------------------------

def test_map_grows_when_full(small_map, meta_path):
    m = Meta(meta_path)
    assert map_size(m) == SMALL_MAP
    fill(m, "t", 400)                              # ~1.6 MB into a 256 KiB map

    assert map_size(m) >= 2 << 20
    topics = m.view(m.topics)
    assert len(topics) == 400 and all(len(d["pad"]) == 4096 for d in topics.values())
    m.close()


def test_write_that_fills_the_map_is_retried_whole(small_map, meta_path):
    m = Meta(meta_path)
    runs = []

    def big(txn):
        runs.append(1)
        for i in range(300):
            m.put_topic(txn, "big-%d" % i, {"pad": "y" * 4096})
        return "done"

    assert m.update(big) == "done"
    assert len(runs) > 1                            # MapFullError, grow, run again
    assert len(m.view(m.topics)) == 300            # nothing half-applied or doubled
    m.close()


def test_grown_map_survives_reopen(small_map, meta_path):
    m = Meta(meta_path)
    fill(m, "t", 200)
    grown = map_size(m)
    m.close()
    m = Meta(meta_path)                             # opens with the small initial size...
    assert len(m.view(m.topics)) == 200             # ...and LMDB takes the file's size
    fill(m, "u", 10)
    assert map_size(m) >= grown
    m.close()


def test_other_process_adopts_the_grown_map(small_map, meta_path, monkeypatch):
    m = Meta(meta_path)
    m.update(lambda txn: m.put_topic(txn, "mine", {"p": 1}))
    assert map_size(m) == SMALL_MAP
    adopted = []
    real_adopt = Meta._adopt_size
    monkeypatch.setattr(Meta, "_adopt_size", lambda self, e: (adopted.append(1), real_adopt(self, e)))

    proc = run_python("""
        import pylog.meta as mm
        mm.INITIAL_MAP_SIZE = %d
        m = mm.Meta(%r)
        for i in range(400):
            m.update(lambda txn, i=i: m.put_topic(txn, "child-%%d" %% i, {"pad": "z" * 4096}))
        print(m.env.info()["map_size"])
        m.close()
    """ % (SMALL_MAP, meta_path))
    assert proc.returncode == 0, proc.stderr
    child_size = int(proc.stdout)
    assert child_size > SMALL_MAP

    topics = m.view(m.topics)                       # MapResizedError: adopt, retry
    assert len(topics) == 401
    assert adopted and map_size(m) >= child_size
    m.update(lambda txn: m.put_topic(txn, "after", {"p": 2}))
    assert m.view(lambda txn: m.get_topic(txn, "after")) == {"p": 2}
    m.close()


def test_resize_waits_for_transactions_in_other_threads(small_map, meta_path):
    """py-lmdb's set_mapsize invalidates every open transaction of the
    process: a read in another thread must not be cut off by a resize."""
    m = Meta(meta_path)
    m.update(lambda txn: m.put_topic(txn, "steady", {"v": 1}))
    stop, errors, reads = threading.Event(), [], [0]

    def reader():
        def slow_read(txn):
            first = m.get_topic(txn, "steady")
            time.sleep(0.002)
            return first, m.get_topic(txn, "steady")
        while not stop.is_set():
            try:
                assert m.view(slow_read) == ({"v": 1}, {"v": 1})
                reads[0] += 1
            except Exception as e:                  # lmdb.Error before the fix
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        fill(m, "grow", 300)                        # several resizes under the readers
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert reads[0] > 0 and map_size(m) > SMALL_MAP
    m.close()


# ---------------------------------------------------------------------------
# Write transactions are always closed
# ---------------------------------------------------------------------------

def test_failed_update_aborts_its_write_transaction(meta_path):
    m = Meta(meta_path)

    def half_then_fail(txn):
        m.put_topic(txn, "half", {"p": 1})
        raise ValueError("boom")

    with pytest.raises(ValueError):
        m.update(half_then_fail)
    assert m.view(lambda txn: m.get_topic(txn, "half")) is None
    done = []
    t = threading.Thread(target=lambda: done.append(m.update(lambda txn: m.put_topic(txn, "x", {}))))
    t.start()
    t.join(5)
    assert not t.is_alive(), "the writer lock was left held"
    proc = run_python("""
        import pylog.meta as mm
        m = mm.Meta(%r)
        m.update(lambda txn: m.put_topic(txn, "from-child", {}))
        m.close()
    """ % meta_path)
    assert proc.returncode == 0, proc.stderr
    m.close()


# ---------------------------------------------------------------------------
# fork(): the child gets an environment of its own
# ---------------------------------------------------------------------------

def _in_child(fn):
    """Run fn() in a forked child; return its exit status and output."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            msg = fn() or ""
        except BaseException as e:
            msg, code = "%s: %s" % (type(e).__name__, e), 1
        os.write(w, str(msg).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_meta_opened_in_parent_works_in_forked_child(meta_path):
    m = Meta(meta_path)
    m.update(lambda txn: m.put_topic(txn, "parent", {"p": 1}))
    m.view(lambda txn: m.get_topic(txn, "parent"))  # leaves py-lmdb's cached reader

    def child():
        assert m.view(lambda txn: m.get_topic(txn, "parent")) == {"p": 1}
        m.update(lambda txn: m.put_topic(txn, "child", {"pid": os.getpid()}))
        assert m._e.pid == os.getpid()              # reopened, not the parent's env
        other = Meta(meta_path + "-other")          # and new environments open fine
        other.close()
        return "ok"

    code, out = _in_child(child)
    assert (code, out) == (0, "ok")
    assert m.view(lambda txn: m.get_topic(txn, "child"))["pid"] != os.getpid()
    assert m.view(lambda txn: m.get_topic(txn, "parent")) == {"p": 1}
    m.update(lambda txn: m.put_topic(txn, "parent-again", {}))
    m.close()


def test_threads_of_a_forked_child_share_one_reopened_environment(meta_path):
    m = Meta(meta_path)
    m.update(lambda txn: m.put_topic(txn, "a", {"p": 1}))
    other = Meta(meta_path)                         # a second client on the same store

    def child():
        got, errors = [], []
        barrier = threading.Barrier(6)

        def use(meta):
            barrier.wait()
            try:
                got.append(meta.view(lambda txn: meta.get_topic(txn, "a")))
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=use, args=(m if i % 2 else other,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == [] and got == [{"p": 1}] * 6, errors
        assert m._e is other._e                     # one environment per process
        return "ok"

    assert _in_child(child) == (0, "ok")
    other.close()
    m.close()


def test_store_in_forked_child_appends_to_the_parents_partition(tmp_path):
    path = str(tmp_path / "store")
    s = Store.acquire(path)
    s.create_topic("t", 1)
    part = s.partition("t", 0)
    rec = [(int(time.time() * 1000), None, b"parent", None)]
    part.append([codec.encode_batch(rec, producer_id=1, producer_epoch=0, base_sequence=0)])

    def child():
        assert s.topic("t")["partitions"] == 1       # the parent's Store, through a new env
        cs = Store.acquire(path)                     # this process's own Store
        assert cs is not s
        [r] = cs.partition("t", 0).append([codec.encode_batch(
            [(int(time.time() * 1000), None, b"child", None)],
            producer_id=2, producer_epoch=0, base_sequence=0)])
        assert r.appended and r.base_offset == 1, r
        # The parent's producer 1 is known here too: its batch is a duplicate.
        [d] = cs.partition("t", 0).append([codec.encode_batch(
            rec, producer_id=1, producer_epoch=0, base_sequence=0)])
        assert not d.appended and d.base_offset == 0, d
        cs.release()
        return "ok"

    code, out = _in_child(child)
    assert (code, out) == (0, "ok")
    assert part.refresh() == 2
    s.create_topic("after-fork", 1)
    s.release()


def test_fork_waits_for_transactions_open_in_other_threads(meta_path):
    """A child must not close an inherited environment while the parent has a
    transaction open: that would free the parent's reader slot."""
    m = Meta(meta_path)
    m.update(lambda txn: m.put_topic(txn, "a", {"p": 1}))
    inside, ended = threading.Event(), []

    def slow(txn):
        inside.set()
        time.sleep(0.3)
        value = m.get_topic(txn, "a")
        ended.append(time.monotonic())
        return value

    got = []
    t = threading.Thread(target=lambda: got.append(m.view(slow)))
    t.start()
    inside.wait(5)
    code, out = _in_child(lambda: m.view(lambda txn: m.get_topic(txn, "a")))
    forked_at = time.monotonic()
    t.join(5)
    assert (code, out) == (0, "{'p': 1}")
    assert got == [{"p": 1}]
    assert ended and ended[0] <= forked_at
    m.close()


# ---------------------------------------------------------------------------
# reader_check on open
# ---------------------------------------------------------------------------

def test_open_clears_reader_slots_of_dead_processes(meta_path):
    Meta(meta_path).close()
    # A live process keeps the environment open, so the next opener is not
    # the first and LMDB does not reset the reader table by itself.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, lmdb
        env = lmdb.open(%r, max_dbs=16, max_readers=1024)
        print("ready", flush=True)
        sys.stdin.read()
    """ % meta_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    victim = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time, lmdb
        env = lmdb.open(%r, max_dbs=16, max_readers=1024)
        txn = env.begin()
        txn.get(b"x")
        print("reading", flush=True)
        time.sleep(60)
    """ % meta_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert victim.stdout.readline().strip() == "reading"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        peek = run_python("""
            import lmdb
            print(lmdb.open(%r, max_dbs=16, max_readers=1024).readers())
        """ % meta_path)
        assert str(victim.pid) in peek.stdout        # the dead reader still holds a slot

        m = Meta(meta_path)                           # reader_check on open
        assert str(victim.pid) not in m.env.readers()
        m.close()
    finally:
        holder.stdin.close()
        holder.wait(10)
        if victim.poll() is None:
            victim.kill()
