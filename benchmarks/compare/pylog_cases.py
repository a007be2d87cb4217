"""pylog, used as its users use it: the confluent-kafka-style API on a file store.

  idempotent   Producer with enable.idempotence: the produce() loop (a full
               local queue raises BufferError: poll(0.001) and retry) plus
               flush(), timed end to end; the loop alone is reported too.
               fast: pylog.fsync=never; durable: pylog.fsync=always, linger.ms 5.
  txn x1000    a transactional Producer, transactions of 1,000 records.
  commit       transactions of one record with pylog.fsync=always: the median
               commit_transaction() time, judged in fdatasync latencies sampled
               between the commits (a 4 KiB append + fdatasync after each).

Every store is read back by a read_committed Consumer twice: consume(10000)
(asking for no more than what is left, so the last call does not wait out
its timeout) and poll(), one record per call; assign() opens the partition
before the clock starts.  One record is written and flushed untimed before
the timed writes, so creating the topic and opening the partition are not in
the write figures (it is read back with the rest).
"""
import statistics

from .common import Case, perf, phase, value_of

TOPIC = "bench"
LINGER_MS = 5


def _conf(path, **extra):
    return {"bootstrap.servers": "file://" + path, **extra}


def _create_topic(path):
    from pylog.admin import AdminClient, NewTopic
    admin = AdminClient(_conf(path))
    admin.create_topics([NewTopic(TOPIC, num_partitions=1)])[TOPIC].result()
    admin.close()


def _producer(path, durable, **extra):
    from pylog import Producer
    _create_topic(path)
    return Producer(_conf(path, **{"enable.idempotence": True, "linger.ms": LINGER_MS,
                                   "pylog.fsync": "always" if durable else "never", **extra}))


def produce_all(p, value, n):
    """n produce() calls; on BufferError (local queue full) poll(0.001) and retry."""
    produce, poll = p.produce, p.poll
    for _ in range(n):
        try:
            produce(TOPIC, value)
        except BufferError:
            while True:
                poll(0.001)
                try:
                    produce(TOPIC, value)
                    break
                except BufferError:
                    pass


def _consumer(path, group):
    from pylog import Consumer, OFFSET_BEGINNING, TopicPartition
    c = Consumer(_conf(path, **{"group.id": group, "isolation.level": "read_committed",
                                "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    return c


def _check(msg, size):
    if msg is None or msg.error() is not None or len(msg.value()) != size:
        raise RuntimeError("pylog read back a wrong record: %r" % (msg,))


def consume_rate(path, total, size):
    """records/s of consume(10000) in read_committed over `total` records.
    assign() has opened the partition already; the clock starts before the
    first fetch, so every record is decoded inside the timed loop."""
    c = _consumer(path, "bench-consume")
    try:
        got = 0
        consume = c.consume
        msgs = []
        t0 = perf()
        while got < total:
            msgs = consume(min(10000, total - got), 10.0)
            if not msgs:
                raise RuntimeError("consume() stalled at %d of %d records" % (got, total))
            got += len(msgs)
        seconds = perf() - t0
        _check(msgs[-1], size)
        return phase(got, seconds)
    finally:
        c.close()


def poll_rate(path, total, size):
    """records/s of poll() in read_committed over `total` records."""
    c = _consumer(path, "bench-poll")
    try:
        poll = c.poll
        m = None
        t0 = perf()
        for _ in range(total):
            m = poll(10.0)
            if m is None:
                raise RuntimeError("poll() returned None before %d records" % total)
        seconds = perf() - t0
        _check(m, size)
        return phase(total, seconds)
    finally:
        c.close()


def _read_back(path, total, size, out):
    out["read"] = consume_rate(path, total, size)
    out["read_n"] = total
    out["poll"] = poll_rate(path, total, size)
    return out


def run_idempotent(ctx, size, n, durable):
    path = ctx.fresh("pylog-idem")
    value = value_of(size)
    p = _producer(path, durable)
    try:
        produce_all(p, value, 1)
        p.flush(60)                             # untimed: create, open the partition
        t0 = perf()
        produce_all(p, value, n)
        t1 = perf()
        left = p.flush(300)
        t2 = perf()
        if left:
            raise RuntimeError("flush() left %d records undelivered" % left)
    finally:
        p.close()
    out = {"write": phase(n, t2 - t0), "write_loop": phase(n, t1 - t0), "write_n": n}
    return _read_back(path, n + 1, size, out)


def run_txn(ctx, size, n, durable, per_txn=1000):
    path = ctx.fresh("pylog-txn")
    value = value_of(size)
    p = _producer(path, durable, **{"transactional.id": "bench-txn"})
    try:
        p.init_transactions()
        p.begin_transaction()                   # untimed warm-up transaction
        produce_all(p, value, 1)
        p.commit_transaction()
        t0 = perf()
        for start in range(0, n, per_txn):
            p.begin_transaction()
            produce_all(p, value, min(per_txn, n - start))
            p.commit_transaction()
        t1 = perf()
    finally:
        p.close()
    out = {"write": phase(n, t1 - t0), "write_n": n}
    return _read_back(path, n + 1, size, out)


def run_commit(ctx, size, n):
    """Transactions of one record, pylog.fsync=always: commit_transaction() latency.

    Each commit is followed by one 4 KiB append + fdatasync on a file in the
    same store directory, so the unit the target is expressed in (fdatasync
    latency) is sampled at the same moments as the commits it judges: the
    device's latency drifts by several times within a run on this VM."""
    import os
    path = ctx.fresh("pylog-commit")
    count = 50 if ctx.quick else 200
    value = value_of(size)
    p = _producer(path, True, **{"transactional.id": "bench-commit"})
    fd = os.open(os.path.join(path, "fdatasync-probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    block = b"\0" * 4096
    commits, syncs, whole = [], [], 0.0
    try:
        p.init_transactions()
        for i in range(count + 3):              # the first 3 warm up, untimed
            t0 = perf()
            p.begin_transaction()
            produce_all(p, value, 1)
            t1 = perf()
            p.commit_transaction()
            t2 = perf()
            os.write(fd, block)
            os.fdatasync(fd)
            t3 = perf()
            if i >= 3:
                commits.append(t2 - t1)
                syncs.append(t3 - t2)
                whole += t2 - t0
    finally:
        os.close(fd)
        p.close()
    return {"commit_med_s": statistics.median(commits),
            "commit_p90_s": sorted(commits)[int(len(commits) * 0.9)],
            "fdatasync_med_s": statistics.median(syncs),
            "write": phase(count, whole), "write_n": count}


NEEDS = ("pylog",)
CASES = [
    Case("pylog", "pylog idempotent", "fast", lambda c, s, n: run_idempotent(c, s, n, False), NEEDS),
    Case("pylog", "pylog idempotent", "durable", lambda c, s, n: run_idempotent(c, s, n, True), NEEDS),
    Case("pylog", "pylog txn x1000", "fast", lambda c, s, n: run_txn(c, s, n, False), NEEDS),
    Case("pylog", "pylog txn x1000", "durable", lambda c, s, n: run_txn(c, s, n, True), NEEDS),
    Case("pylog", "pylog txn x1 commit", "durable", run_commit, NEEDS, sizes=(100,)),
]
