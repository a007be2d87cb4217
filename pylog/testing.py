"""Crash testing for applications that embed pylog: run your code in a child
process, kill it at a named failpoint or at a random moment, then check what
the store kept.

    from pylog import testing

    def copy_orders(store):          # module-level: the child imports it by name
        ...                          # your consume-transform-produce loop

    # SIGKILL the child right after its first commit point (Prepare* is durable,
    # no marker written yet), then check that the transaction is all there:
    r = testing.run_in_child(copy_orders, "/tmp/store",
                             failpoints={"txn.prepare.after": "kill"}, timeout=30)
    assert r.killed_by == "failpoint"
    msgs = testing.read_back("/tmp/store", ["invoices"])

    # Or kill it at a random moment, 50-500 ms in:
    r = testing.random_kill(copy_orders, "/tmp/store", min_s=0.05, max_s=0.5, seed=42)

Children start with multiprocessing's "spawn" method: a fresh interpreter
that holds no LMDB environment, lock or thread of the parent.  So the
function and its arguments must be picklable (a module-level function, not a
lambda or a closure), and a script using this module needs the usual
``if __name__ == "__main__":`` guard.

Failpoints are given as {name: action}.  Actions: "kill" (SIGKILL),
"eio"/"enospc" (raise OSError once), "eio!"/"enospc!" (on every hit from
then on), "sleep:MS"; a suffix "@k" fires on the k-th hit only, e.g.
{"fsync.before": "eio@3"}.  failpoint_names() lists the names pylog has;
pylog.failpoints.CATALOGUE says which step each one marks.
The child's failpoints are those of its PYLOG_FAILPOINTS environment variable
(inherited, or set through env=) plus the ones given.

Only the child is killed, not processes it starts itself.
"""
import multiprocessing
import os
import random
import re
import signal
import time
import traceback

from . import failpoints as _failpoints

__all__ = ["ChildResult", "Child", "start_child", "run_in_child", "random_kill",
           "failpoint_names", "read_back"]

_CTX = multiprocessing.get_context("spawn")
_HIT_RE = re.compile(r"""failpoints\.hit\(\s*["']([A-Za-z0-9_.\-]+)["']\s*\)""")


class ChildResult:
    """How a child ended.

    returncode  the exit code; negative: the signal that ended it (-9 for SIGKILL)
    killed      True if SIGKILL ended it (a failpoint, the kill timer or the timeout)
    signal      the signal number that ended it, or None
    killed_by   "failpoint" (it killed itself: a kill failpoint fired), "timer"
                (kill_after ran out), "timeout" (it outlived `timeout`), None
    value       fn's return value, if fn returned
    error       the traceback (str) if fn raised, else None
    error_type  the exception's class name if fn raised, else None
    duration    seconds from start to end
    pid         the child's process id
    """

    __slots__ = ("returncode", "killed", "signal", "killed_by", "value", "error", "error_type",
                 "duration", "pid")

    def __init__(self, returncode, killed_by=None, value=None, error=None, error_type=None,
                 duration=0.0, pid=None):
        self.returncode = returncode
        self.signal = -returncode if returncode is not None and returncode < 0 else None
        self.killed = self.signal == signal.SIGKILL
        self.killed_by = killed_by
        self.value = value
        self.error = error
        self.error_type = error_type
        self.duration = duration
        self.pid = pid

    @property
    def ok(self):
        """fn returned (no exception, no signal)."""
        return self.returncode == 0 and self.error is None

    @property
    def timed_out(self):
        return self.killed_by == "timeout"

    def __repr__(self):
        what = ("killed by %s" % self.killed_by if self.killed else
                "signal %d" % self.signal if self.signal else
                "raised %s" % self.error_type if self.error else
                "returned %r" % (self.value,))
        return "ChildResult(pid=%s, returncode=%s, %s, %.3f s)" % (
            self.pid, self.returncode, what, self.duration)


def _failpoint_items(spec):
    """[(name, action, at)] from {name: "action[@k]"} or {name: (action, k)}."""
    out = []
    for name, action in (spec or {}).items():
        at = 1
        if isinstance(action, tuple):
            action, at = action
        elif "@" in action:
            action, _, k = action.partition("@")
            at = int(k)
        _failpoints._parse_action(action)           # a typo fails here, not in the child
        out.append((name, action, int(at)))
    return out


def _child_main(conn, fn, args, kwargs, fps, env):
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)    # see Child.wait
    conn.send(("ready",))            # from now on SIGUSR1 prints stacks, not kills
    os.environ.update(env)
    _failpoints.clear()
    _failpoints._load_env()
    for name, action, at in fps:
        _failpoints.set(name, action, at)
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        _send(conn, ("error", type(e).__name__, tb))
        conn.close()
        os._exit(1)
    _send(conn, ("ok", value))
    conn.close()


def _send(conn, msg):
    try:
        conn.send(msg)
    except Exception:                   # an unpicklable result: send its repr
        try:
            conn.send((msg[0], repr(msg[1:])) if msg[0] == "ok" else msg[:2] + (repr(msg[2]),))
        except Exception:
            pass


class Child:
    """A running child started by start_child().  Not thread-safe."""

    def __init__(self, fn, args, kwargs, failpoints=None, env=None):
        self._fps = _failpoint_items(failpoints)
        self._conn, child_conn = _CTX.Pipe(duplex=False)
        self._proc = _CTX.Process(target=_child_main, daemon=True, args=(
            child_conn, fn, args, kwargs, self._fps, dict(env or {})))
        self._start = time.monotonic()
        self._proc.start()
        child_conn.close()
        self.pid = self._proc.pid
        self._killed_by = None
        self._ready = False
        self._reply = None
        self._result = None

    def alive(self):
        return self._result is None and self._proc.is_alive()

    def kill(self, why="timer"):
        """SIGKILL the child now (a crash: no cleanup, no flush); a no-op once it ended."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
                if self._killed_by is None:
                    self._killed_by = why
            except ProcessLookupError:
                pass

    def _dump_stacks(self):
        """Ask a child about to be killed for a timeout to print every
        thread's stack to its stderr (faulthandler), so a hang can be read.
        Only once it said it is ready: before that SIGUSR1 would end it."""
        self._drain()
        if not self._ready:
            return
        try:
            os.kill(self.pid, signal.SIGUSR1)
            self._proc.join(0.5)
        except (ProcessLookupError, ValueError):
            pass

    def _drain(self):
        try:
            while self._reply is None and self._conn.poll():
                msg = self._conn.recv()
                if msg[0] == "ready":
                    self._ready = True
                else:
                    self._reply = msg
        except (EOFError, OSError):
            pass

    def wait(self, timeout=None):
        """Wait for the child to end (SIGKILL it after timeout seconds) and
        return its ChildResult."""
        if self._result is not None:
            return self._result
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._proc.is_alive():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                self._dump_stacks()
                self.kill("timeout")
                break
            self._drain()                # keep the pipe from filling up
            self._proc.join(left)
        self._proc.join()
        self._drain()
        duration = time.monotonic() - self._start
        rc = self._proc.exitcode
        killed_by = self._killed_by
        if killed_by is None and rc == -signal.SIGKILL and self._fps:
            killed_by = "failpoint"
        value = error = etype = None
        if self._reply is not None:
            if self._reply[0] == "ok":
                value = self._reply[1]
            else:
                etype, error = self._reply[1], self._reply[2]
        self._conn.close()
        self._proc.close()
        self._result = ChildResult(rc, killed_by, value, error, etype, duration, self.pid)
        return self._result


def start_child(fn, *args, failpoints=None, env=None, **kwargs):
    """Start fn(*args, **kwargs) in a spawned child and return a Child at once.

    Use it to kill a child at a moment of your choosing (child.kill()) while
    this process does something else; child.wait() gives the ChildResult."""
    return Child(fn, args, kwargs, failpoints, env)


def run_in_child(fn, *args, failpoints=None, kill_after=None, timeout=60.0, env=None, **kwargs):
    """Run fn(*args, **kwargs) in a spawned child and wait for it.

    failpoints  {name: action} armed in the child (see the module docstring)
    kill_after  seconds after which the child is SIGKILLed (None: never)
    timeout     seconds after which a still-running child is SIGKILLed and the
                result says killed_by == "timeout" (None: wait forever); its
                threads' stacks are printed to its stderr first (the child's
                faulthandler answers SIGUSR1)
    env         extra environment variables for the child
    Returns a ChildResult; fn's exceptions come back in .error, not raised."""
    child = Child(fn, args, kwargs, failpoints, env)
    if kill_after is not None:
        end = time.monotonic() + kill_after
        while child.alive() and time.monotonic() < end:
            child._drain()
            child._proc.join(min(0.05, max(end - time.monotonic(), 0)))
        child.kill("timer")
        if timeout is not None:
            timeout = max(timeout - kill_after, 0.0)
    return child.wait(timeout)


def random_kill(fn, *args, min_s=0.0, max_s=1.0, seed=None, rng=None, failpoints=None,
                timeout=60.0, env=None, **kwargs):
    """run_in_child, SIGKILLing the child at a uniformly random moment in
    [min_s, max_s] seconds after it starts (unless it ends first).

    seed (or rng, a random.Random) makes the moment reproducible; the moment
    chosen is the result's `duration` upper bound."""
    if not 0 <= min_s <= max_s:
        raise ValueError("need 0 <= min_s <= max_s, got %r, %r" % (min_s, max_s))
    r = rng if rng is not None else random.Random(seed)
    return run_in_child(fn, *args, failpoints=failpoints, kill_after=r.uniform(min_s, max_s),
                        timeout=timeout, env=env, **kwargs)


def failpoint_names():
    """Every failpoint name pylog's own code hits, sorted (read from its source)."""
    names = set()
    pkg = os.path.dirname(os.path.abspath(__file__))
    for root, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d not in ("torture", "__pycache__")]
        for f in files:
            if f.endswith(".py") and f != "testing.py":
                with open(os.path.join(root, f), encoding="utf-8") as fh:
                    names.update(_HIT_RE.findall(fh.read()))
    return sorted(names)


def read_back(store, topics=None, isolation="read_committed", timeout=30.0):
    """Every record of topics (default: all) that a consumer with the given
    isolation.level can read now, as [Message] sorted by (topic, partition,
    offset).  store is a directory or a bootstrap.servers "file:" URL.

    Reads each partition up to its end as of the call (the last stable offset
    for read_committed) from the log start; raises TimeoutError if that takes
    longer than timeout seconds."""
    from .consumer import Consumer
    from .message import OFFSET_BEGINNING, TopicPartition
    servers = store if str(store).startswith("file:") else "file://" + os.path.abspath(store)
    c = Consumer({"bootstrap.servers": servers, "group.id": "pylog.testing.read_back",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        meta = c.list_topics().topics
        names = sorted(meta) if topics is None else list(topics)
        tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in names
               for p in sorted(meta[t].partitions) if t in meta]
        c.assign(tps)
        ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp)[1] for tp in tps}
        out = []
        deadline = time.monotonic() + timeout
        pending = {k for k, end in ends.items() if end > 0}
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError("read_back: %s not read to their end within %.0f s"
                                   % (sorted(pending), timeout))
            for m in c.consume(10000, 0.05):
                if m.error() is None:
                    out.append(m)
            for tp in c.position([TopicPartition(t, p) for t, p in pending]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    pending.discard((tp.topic, tp.partition))
        out = [m for m in out if m.offset() < ends[(m.topic(), m.partition())]]
        out.sort(key=lambda m: (m.topic(), m.partition(), m.offset()))
        return out
    finally:
        c.close()
