"""Consume-transform-produce, exactly once (Kafka's TransactionsTest copier).

100,000 records on a 3-partition input topic are copied by a transactional
copier (read_committed consumer + transactional producer, offsets sent in
each transaction of 750 records, random aborts that rewind the consumer to
the committed offsets), while a read_committed reader in another process
tails the output.  The output must equal the input exactly once, in order
per input partition; the reader must never see a duplicate.  A second test
SIGKILLs the copier process at random moments and at named crash points and
restarts it (same transactional.id, resuming from the committed offsets).
"""
import os
import random
import signal
import time

import pytest

from pylog import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

from txn_support import CTX, conf_for, create_topics, read_all

N_RECORDS = 100_000
N_PARTITIONS = 3
TXN_SIZE = 750
GROUP = "copier-group"
TID = "copier"


def produce_input(conf, n=N_RECORDS):
    p = Producer({**conf, "linger.ms": 20})
    for i in range(n):
        p.produce("in", value=b"%06d" % i, key=b"k%d" % i, partition=i % N_PARTITIONS)
    p.flush()
    p.close()


def expected_output(n=N_RECORDS):
    return {p: [b"copied:%06d" % i for i in range(p, n, N_PARTITIONS)] for p in range(N_PARTITIONS)}


def _rewind(c):
    """After an abort: back to the group's committed offsets."""
    for tp in c.committed(c.assignment()):
        c.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))


def copier_main(conf, ends, seed, abort_rate, failpoint, conn, deadline_s=150.0):
    """Copy "in" to "out" in transactions of TXN_SIZE until the committed
    positions reach `ends` ({partition: input end offset}); exit code 0 when done."""
    if failpoint:
        from pylog import failpoints
        failpoints.set(*failpoint)
    rng = random.Random(seed)
    p = Producer({**conf, "transactional.id": TID, "linger.ms": 5})
    p.init_transactions()
    # A SIGKILLed predecessor stays in the group until session.timeout.ms
    # expels it (its partitions wait until then): keep that short.
    c = Consumer({**conf, "group.id": GROUP, "session.timeout.ms": 2000,
                  "heartbeat.interval.ms": 200, "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe(["in"])
    if conn is not None:
        conn.send("started")
    commits = aborts = 0
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        p.begin_transaction()
        n = 0
        while n < TXN_SIZE:
            msgs = c.consume(TXN_SIZE - n, 0.05)
            if not msgs:
                break
            for m in msgs:
                if m.error() is not None:
                    raise RuntimeError("consumer error: %s" % m.error())
                p.produce("out", value=b"copied:" + m.value(), key=m.key(), partition=m.partition())
            n += len(msgs)
        positions = c.position(c.assignment())
        if n:
            p.send_offsets_to_transaction(positions, c.consumer_group_metadata())
        if n and rng.random() < abort_rate:
            p.flush()                       # the aborted records reach the log first
            p.abort_transaction()
            aborts += 1
            _rewind(c)
            continue
        p.commit_transaction()
        commits += 1
        if n == 0 and len(positions) == len(ends) and \
                all(tp.offset == ends[tp.partition] for tp in positions):
            break
    else:
        os._exit(3)
    c.close()
    p.close()
    if conn is not None:
        conn.send(("done", commits, aborts))


def reader_main(conf, conn, deadline_s=170.0):
    """Tail "out" read_committed until told to stop and drained; send back
    the values per partition and any offset that went backwards."""
    c = Consumer({**conf, "group.id": "reader", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition("out", p, OFFSET_BEGINNING) for p in range(N_PARTITIONS)])
    got = {p: [] for p in range(N_PARTITIONS)}
    last = {p: -1 for p in range(N_PARTITIONS)}
    backwards = []
    stopping = False
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        msgs = c.consume(10000, 0.2)
        for m in msgs:
            if m.error() is not None:
                continue
            part = m.partition()
            if m.offset() <= last[part]:
                backwards.append((part, last[part], m.offset()))
            last[part] = m.offset()
            got[part].append(m.value())
        if stopping and not msgs:
            break
        if not stopping and conn.poll(0):
            conn.recv()
            stopping = True
    c.close()
    conn.send((got, backwards))


class _Reader:
    def __init__(self, conf):
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=reader_main, args=(conf, child), daemon=True)
        self.proc.start()
        child.close()

    def finish(self, timeout=60):
        self.conn.send("stop")
        assert self.conn.poll(timeout), "reader never finished"
        got, backwards = self.conn.recv()
        self.proc.join(10)
        return got, backwards

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)


def _start_copier(conf, ends, seed, abort_rate, failpoint=None):
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=copier_main, args=(conf, ends, seed, abort_rate, failpoint, child),
                       daemon=True)
    proc.start()
    child.close()
    return proc, parent


def _kill(proc):
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


def _setup(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"in": N_PARTITIONS, "out": N_PARTITIONS})
    produce_input(conf)
    ends = {p: N_RECORDS // N_PARTITIONS + (1 if p < N_RECORDS % N_PARTITIONS else 0)
            for p in range(N_PARTITIONS)}
    return conf, ends


def _verify(conf, reader_result):
    expected = expected_output()
    got, backwards = reader_result
    assert backwards == []
    for p in range(N_PARTITIONS):
        assert len(set(got[p])) == len(got[p]), "the concurrent reader saw duplicates"
        assert got[p] == expected[p], "the concurrent reader's partition %d differs" % p
    final = read_all(conf, [("out", p) for p in range(N_PARTITIONS)])
    by_part = {p: [m.value() for m in final if m.partition() == p] for p in range(N_PARTITIONS)}
    assert by_part == expected
    c = Consumer({**conf, "group.id": GROUP})
    try:
        committed = c.committed([TopicPartition("in", p) for p in range(N_PARTITIONS)])
        assert [tp.offset for tp in committed] == [len(expected[p]) for p in range(N_PARTITIONS)]
    finally:
        c.close()
    everything = read_all(conf, [("out", p) for p in range(N_PARTITIONS)], isolation="read_uncommitted")
    return len(everything) - N_RECORDS           # records written by aborted transactions


def test_copy_is_exactly_once_with_random_aborts(tmp_path):
    t0 = time.monotonic()
    conf, ends = _setup(tmp_path)
    reader = _Reader(conf)
    proc = None
    try:
        proc, conn = _start_copier(conf, ends, seed=1, abort_rate=0.15)
        assert conn.poll(60) and conn.recv() == "started"
        assert conn.poll(150), "copier did not finish"
        kind, commits, aborts = conn.recv()
        proc.join(30)
        assert proc.exitcode == 0
        assert aborts > 0 and commits >= N_RECORDS // TXN_SIZE
        result = reader.finish()
    finally:
        if proc is not None:
            _kill(proc)
        reader.kill()
    wasted = _verify(conf, result)
    assert wasted > 0                           # aborted output exists, and stays invisible
    print("\ncopied %d records in %d commits, %d aborts (%d aborted records) in %.1f s" % (
        N_RECORDS, commits, aborts, wasted, time.monotonic() - t0))


# Named crash points first (a deterministic hit count), then random SIGKILLs.
CRASHES = [("txn.prepare.after", "kill", 3), ("txn.marker.after", "kill", 4),
           ("log.append.after_write", "kill", 25), ("txn.prepare.before", "kill", 6),
           None, None, None, None, None]


def test_copy_is_exactly_once_when_the_copier_is_killed_and_restarted(tmp_path):
    t0 = time.monotonic()
    conf, ends = _setup(tmp_path)
    rng = random.Random(2024)
    reader = _Reader(conf)
    kills, proc = 0, None
    try:
        finished = False
        for n, crash in enumerate(CRASHES):
            proc, conn = _start_copier(conf, ends, seed=100 + n, abort_rate=0.1, failpoint=crash)
            assert conn.poll(60) and conn.recv() == "started"
            if crash is None:
                proc.join(rng.uniform(0.05, 0.6))
            else:
                proc.join(60)
            if proc.exitcode == 0:
                finished = True
                break
            _kill(proc)
            assert proc.exitcode == -signal.SIGKILL
            kills += 1
        if not finished:
            proc, conn = _start_copier(conf, ends, seed=999, abort_rate=0.1)
            proc.join(150)
            assert proc.exitcode == 0
        result = reader.finish()
    finally:
        if proc is not None:
            _kill(proc)
        reader.kill()
    assert kills >= 5
    wasted = _verify(conf, result)
    print("\ncopied %d records exactly once across %d SIGKILLs (%d aborted records) in %.1f s" % (
        N_RECORDS, kills, wasted, time.monotonic() - t0))
