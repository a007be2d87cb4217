"""Shared helpers for the transaction, consumer, copier and codec tests.

Child processes are started with the "spawn" context (a fresh interpreter,
no inherited LMDB environment or locks) or with subprocess; every helper
bounds its waits and kills its child on the way out, so a wedged child fails
one test instead of hanging the suite.

The functions named *_main run inside children: they are module-level so
that spawn can import them by name.
"""
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback

from pylog import (Consumer, KafkaError, KafkaException, Producer, TopicPartition,
                   OFFSET_BEGINNING)
from pylog.admin import AdminClient, NewTopic

CTX = multiprocessing.get_context("spawn")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CALL_TIMEOUT = 30.0                  # seconds a child gets for one remote call


def conf_for(path, **extra):
    conf = {"bootstrap.servers": "file://" + str(path)}
    conf.update(extra)
    return conf


def create_topics(conf, spec):
    """spec: {name: partitions} or {name: (partitions, topic config)}."""
    admin = AdminClient(conf)
    try:
        topics = []
        for name, v in spec.items():
            parts, cfg = v if isinstance(v, tuple) else (v, None)
            topics.append(NewTopic(name, num_partitions=parts, config=cfg))
        for f in admin.create_topics(topics).values():
            f.result()
    finally:
        admin.close()


@contextlib.contextmanager
def opened_store(path):
    """The process's Store for path, released on the way out."""
    from pylog.store import Store
    s = Store.acquire(str(path))
    try:
        yield s
    finally:
        s.release()


def read_partition(conf, topic, partition):
    """(batch infos, records) of one partition, read from the files with CRCs checked."""
    from pylog import codec
    from pylog.store import Store
    s = Store.acquire(conf["bootstrap.servers"][len("file://"):])
    try:
        log = s.partition(topic, partition).log
        log.refresh()
        infos, records, off = [], [], log.log_start_offset
        while off < log.next_offset:
            buf, _ = log.read(off, 1 << 20)
            bis, recs = codec.decode_all(buf)
            infos += bis
            records += recs
            off = bis[-1].next_offset
        return infos, records
    finally:
        s.release()


def err_of(excinfo_or_exc):
    e = getattr(excinfo_or_exc, "value", excinfo_or_exc)
    return e.args[0]


def read_all(conf, tps, isolation="read_committed", group="test-reader", idle=0.3,
             deadline=30.0, **extra):
    """Every record of tps ([(topic, partition)] or [TopicPartition] with a
    start offset) from the start, read until every partition has reported
    its end (enable.partition.eof: the last stable offset, or the high
    watermark with read_uncommitted) or they are all idle for `idle`
    seconds.  Returns [Message]; other error events fail the call."""
    c = Consumer({**conf, "group.id": group, "isolation.level": isolation,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "enable.partition.eof": True, **extra})
    try:
        assign = [tp if isinstance(tp, TopicPartition) else TopicPartition(tp[0], tp[1], OFFSET_BEGINNING)
                  for tp in tps]
        c.assign(assign)
        waiting = {(tp.topic, tp.partition) for tp in assign}
        out = []
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            msgs = c.consume(10000, idle)
            if not msgs:
                return out
            for m in msgs:
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    waiting.discard((m.topic(), m.partition()))
                    continue
                assert err is None, err
                out.append(m)
            if not waiting:
                return out
        raise AssertionError("partitions %r never went idle" % (tps,))
    finally:
        c.close()


def values_of(msgs):
    return [m.value() for m in msgs]


# ---- a Producer in another process, driven call by call ----

def _flatten_error(err):
    return (err.code(), err.str(), err.fatal(), err.retriable(), err.txn_requires_abort())


def _rebuild_error(t):
    code, reason, fatal, retriable, abortable = t
    return KafkaError(code, reason, fatal=fatal, retriable=retriable, txn_requires_abort=abortable)


def producer_server_main(conn, conf):
    """Child side of RemoteProducer: run one Producer, execute calls."""
    reports = []

    def on_delivery(err, msg):
        reports.append((None if err is None else _flatten_error(err), msg.topic(), msg.partition(),
                        msg.offset(), msg.value()))
    try:
        p = Producer(conf)
    except Exception as e:              # report and quit: the parent raises it
        conn.send(("error", repr(e)))
        return
    conn.send(("ok", os.getpid()))
    while conn.poll(120):
        method, args, kwargs = conn.recv()
        try:
            if method == "__exit__":
                try:
                    p.close(5)
                except Exception:
                    pass
                conn.send(("ok", None))
                return
            if method == "produce":
                kwargs.setdefault("on_delivery", on_delivery)
                res = p.produce(*args, **kwargs)
            elif method == "reports":
                res, reports[:] = list(reports), []
            elif method == "send_offsets":
                from pylog.consumer import GroupMetadata
                offsets, group = args
                res = p.send_offsets_to_transaction(
                    [TopicPartition(t, pa, o) for t, pa, o in offsets], GroupMetadata(group))
            elif method == "failpoint":
                from pylog import failpoints
                failpoints.set(*args)
                res = None
            else:
                res = getattr(p, method)(*args, **kwargs)
            conn.send(("ok", res))
        except KafkaException as e:
            conn.send(("kafka", _flatten_error(e.args[0])))
        except BaseException as e:
            conn.send(("error", "".join(traceback.format_exception(type(e), e, e.__traceback__))))


class RemoteProducer:
    """A pylog Producer living in a spawned child.  Method calls are
    forwarded (produce, flush, init_transactions, begin_transaction,
    commit_transaction, abort_transaction, ...), plus send_offsets(
    [(topic, partition, offset)], group) and reports() (delivery reports
    since the last call: (error tuple or None, topic, partition, offset, value)).
    A KafkaException in the child is raised again here with its flags."""

    def __init__(self, conf, timeout=CALL_TIMEOUT):
        self.timeout = timeout
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=producer_server_main, args=(child, conf), daemon=True)
        self.proc.start()
        child.close()
        self.pid = self._reply()

    def _reply(self):
        if not self.conn.poll(self.timeout):
            self.kill()
            raise TimeoutError("remote producer did not answer within %.0f s" % self.timeout)
        kind, payload = self.conn.recv()
        if kind == "ok":
            return payload
        if kind == "kafka":
            raise KafkaException(_rebuild_error(payload))
        raise RuntimeError("remote producer failed:\n" + payload)

    def call(self, method, *args, **kwargs):
        try:
            self.conn.send((method, args, kwargs))
        except (BrokenPipeError, OSError):
            raise RuntimeError("remote producer is gone (exit code %r)" % self.proc.exitcode) from None
        return self._reply()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)

    def kill(self):
        """SIGKILL the child (a crash: no close, no flush)."""
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self):
        if self.proc.is_alive():
            try:
                self.conn.send(("__exit__", (), {}))
                if self.conn.poll(10):
                    self.conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
            self.proc.join(10)
        self.kill()
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def child_process(target, *args, join_timeout=60.0):
    """Start target(*args) in a spawned child; on exit join it (bounded) and
    kill it if it is still running."""
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.join(join_timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def run_python(code, *args, env=None, timeout=60.0):
    """Run `python -c code args...` with tests/ importable; returns the
    CompletedProcess (a timeout kills the child and fails)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [TESTS_DIR] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    full_env.pop("PYLOG_FAILPOINTS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], env=full_env,
                          capture_output=True, timeout=timeout)


def zigzag(v):
    """Zigzag varint of a signed int64, as a records region stores lengths and
    deltas (written here independently of csrc/batch.c)."""
    u = (v << 1) ^ (v >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def meta_view(path, fn):
    """fn(meta, txn) in a read transaction of the store's LMDB (a fresh read,
    no coordinator)."""
    from pylog.store import Store
    store = Store.acquire(str(path))
    try:
        return store.meta.view(lambda txn: fn(store.meta, txn))
    finally:
        store.release()


def txn_state(path, tid):
    """The coordinator's LMDB record for tid."""
    return meta_view(path, lambda meta, txn: meta.get_txn(txn, tid))


def control_batches(path, topic, partition):
    """[(base_offset, producer_id, producer_epoch)] of the control batches in a partition."""
    from pylog.store import Store
    store = Store.acquire(str(path))
    try:
        part = store.partition(topic, partition)
        part.refresh()
        return [(bi.base_offset, bi.producer_id, bi.producer_epoch)
                for _, bi in part.log.batches(0) if bi.is_control]
    finally:
        store.release()
