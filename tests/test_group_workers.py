"""Issue 8's scenario: 3 worker processes in one consumer group run the
transactional copier over an 8-partition topic; one is SIGKILLed and one
SIGSTOPped mid-transaction.  Their partitions move within the session
timeout, the output equals the input exactly once, and the paused worker,
once resumed, is refused (fenced or its stale offsets rejected) instead of
committing.
"""
import os
import signal
import time

from pylog import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING

from txn_support import CTX, conf_for, create_topics, read_all

N_PARTITIONS = 8
N_RECORDS = 8000
TXN_SIZE = 200
GROUP = "workers"


def worker_main(conf, index, conn):
    """Copy "in" to "out" until told to stop; report commits and the error
    that ended it, if any."""
    p = Producer({**conf, "transactional.id": "worker-%d" % index,
                  "transaction.timeout.ms": 3000})
    p.init_transactions()
    c = Consumer({**conf, "group.id": GROUP, "session.timeout.ms": 2000,
                  "heartbeat.interval.ms": 200, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe(["in"])
    conn.send(("started", index, os.getpid()))
    commits = 0
    try:
        while not conn.poll(0):
            p.begin_transaction()
            msgs = c.consume(TXN_SIZE, 0.05)
            for m in msgs:
                p.produce("out", value=b"copied:" + m.value(), partition=m.partition())
            if msgs:
                p.send_offsets_to_transaction(c.position(c.assignment()),
                                              c.consumer_group_metadata())
                if index < 2:               # the workers the test breaks: hold the txn open a little
                    p.flush()
                    conn.send(("in-txn", index))
                    time.sleep(0.2)
            p.commit_transaction()
            commits += 1
            conn.send(("progress", index, commits))
    except KafkaException as e:
        err = e.args[0]
        conn.send(("error", index, err.name(), err.fatal(), err.txn_requires_abort()))
        os._exit(0)
    c.close()
    p.close()
    conn.send(("stopped", index, commits))


def _expected():
    return {p: [b"copied:%05d" % i for i in range(p, N_RECORDS, N_PARTITIONS)]
            for p in range(N_PARTITIONS)}


def test_killed_and_paused_workers_lose_their_partitions_and_cannot_commit(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"in": N_PARTITIONS, "out": N_PARTITIONS})
    prod = Producer(conf)
    for i in range(N_RECORDS):
        prod.produce("in", value=b"%05d" % i, partition=i % N_PARTITIONS)
    prod.flush()
    prod.close()

    workers = []
    for i in range(3):
        parent, child = CTX.Pipe()
        proc = CTX.Process(target=worker_main, args=(conf, i, child), daemon=True)
        proc.start()
        workers.append((proc, parent))
    events = {i: [] for i in range(3)}

    gone = set()

    def drain(timeout=0.05):
        for i, (_, conn) in enumerate(workers):
            try:
                while i not in gone and conn.poll(timeout if i == 0 else 0):
                    events[i].append(conn.recv())
            except (EOFError, OSError):             # the SIGKILLed worker's end is closed
                gone.add(i)

    try:
        deadline = time.monotonic() + 60
        # every worker has committed at least once: all three own partitions
        while time.monotonic() < deadline and not all(
                any(e[0] == "progress" for e in events[i]) for i in range(3)):
            drain()
        assert all(any(e[0] == "progress" for e in events[i]) for i in range(3)), events
        killed, paused, survivor = workers
        for i, (proc, _), sig in ((0, killed, signal.SIGKILL), (1, paused, signal.SIGSTOP)):
            events[i].clear()
            while not any(e[0] == "in-txn" for e in events[i]):   # mid-transaction, with data
                drain(0.05)
            os.kill(proc.pid, sig)
        t_fault = time.monotonic()

        # the survivor ends up with all 8 partitions and copies everything
        deadline = time.monotonic() + 60
        done = False
        while time.monotonic() < deadline and not done:
            drain(0.2)
            out = read_all(conf, [("out", p) for p in range(N_PARTITIONS)], idle=0.1)
            done = len(out) >= N_RECORDS
        moved_after = time.monotonic() - t_fault
        assert done, "the survivor did not finish the copy (%d records)" % len(out)

        os.kill(paused[0].pid, signal.SIGCONT)          # the zombie wakes up
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e[0] == "error" for e in events[1]):
            drain(0.2)
        errors = [e for e in events[1] if e[0] == "error"]
        assert errors, "the resumed worker was not refused: %s" % events[1][-3:]
        _, _, name, fatal, abortable = errors[0]
        assert fatal or abortable, errors[0]
        assert name in ("_FENCED", "PRODUCER_FENCED", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID",
                        "INVALID_PRODUCER_EPOCH", "TRANSACTION_ABORTABLE", "_FATAL"), errors[0]
        survivor[1].send("stop")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e[0] in ("stopped", "error")
                                                      for e in events[2]):
            drain(0.2)
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                proc.kill()
            proc.join(10)

    final = read_all(conf, [("out", p) for p in range(N_PARTITIONS)])
    by_part = {p: [m.value() for m in final if m.partition() == p] for p in range(N_PARTITIONS)}
    assert by_part == _expected()                       # exactly once, in order per partition
    c = Consumer({**conf, "group.id": GROUP})
    try:
        committed = c.committed([TopicPartition("in", p) for p in range(N_PARTITIONS)])
        assert [tp.offset for tp in committed] == [len(v) for v in _expected().values()]
    finally:
        c.close()
    print("partitions moved and copy finished %.1f s after the faults; the zombie got %s"
          % (moved_after, errors[0][2]))
