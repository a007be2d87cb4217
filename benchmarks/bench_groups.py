"""Consumer groups (issue 8): failover time and group throughput.

    python3 benchmarks/bench_groups.py [--records N] [--trials T]

failover: two members share an 8-partition topic that a producer keeps
writing to; one member is SIGKILLed; we time from the kill until the
survivor has consumed a record written after the kill on every partition
the dead member owned (session.timeout.ms=2000, heartbeat.interval.ms=200).

throughput: 1, 2 and 4 member processes read a pre-filled 8-partition topic
(100-byte records); the rate is records / time until all were consumed.
"""
import argparse
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import tempfile
import time

from pylog import Consumer, Producer
from pylog.admin import AdminClient, NewTopic

CTX = mp.get_context("spawn")
GROUP_CONF = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 200,
              "auto.offset.reset": "earliest", "enable.auto.commit": True}


IDLE_S = 2.0


def member(conf, group, conn, stop_after=None):
    """A group member; with stop_after set it quits after IDLE_S without records."""
    c = Consumer({**conf, "group.id": group, **GROUP_CONF})
    c.subscribe(["t"])
    conn.send("ready")
    n, last = 0, time.monotonic()
    while True:
        msgs = c.consume(5000, 0.1)
        n += len(msgs)
        for m in msgs:
            if m.value().startswith(b"after:"):
                conn.send(("after", m.partition(), time.time()))
        if msgs:
            last = time.monotonic()
        if conn.poll(0) or (stop_after is not None and time.monotonic() - last > IDLE_S):
            break
    conn.send(("count", n))
    c.close()


def _topic(path, records, value=b"x" * 100):
    conf = {"bootstrap.servers": "file://" + path}
    a = AdminClient(conf)
    a.create_topics([NewTopic("t", 8)])["t"].result()
    a.close()
    p = Producer(conf)
    for i in range(records):
        try:
            p.produce("t", value, partition=i % 8)
        except BufferError:
            p.poll(0.01)
            p.produce("t", value, partition=i % 8)
    p.flush()
    p.close()
    return conf


def failover_trial():
    path = tempfile.mkdtemp()
    try:
        conf = _topic(path, 8000)
        procs = []
        for _ in range(2):
            parent, child = CTX.Pipe()
            pr = CTX.Process(target=member, args=(conf, "g", child), daemon=True)
            pr.start()
            assert parent.recv() == "ready"
            procs.append((pr, parent))
        time.sleep(3)                                  # both own 4 partitions, backlog read
        victim, survivor = procs
        os.kill(victim[0].pid, signal.SIGKILL)
        t_kill = time.time()
        p = Producer(conf)
        for part in range(8):
            p.produce("t", b"after:%d" % part, partition=part)
        p.flush()
        p.close()
        seen = set()
        deadline = time.time() + 30
        while len(seen) < 8 and time.time() < deadline:
            if survivor[1].poll(0.1):
                msg = survivor[1].recv()
                if msg[0] == "after":
                    seen.add(msg[1])
                    t_last = msg[2]
        survivor[1].send("stop")
        survivor[0].join(10)
        return (t_last - t_kill) if len(seen) == 8 else float("nan")
    finally:
        shutil.rmtree(path, ignore_errors=True)


def throughput(members, records):
    path = tempfile.mkdtemp()
    try:
        conf = _topic(path, records)
        procs = []
        for _ in range(members):
            parent, child = CTX.Pipe()
            pr = CTX.Process(target=member, args=(conf, "g", child, 0), daemon=True)
            procs.append((pr, parent))
        t0 = time.monotonic()
        for pr, conn in procs:
            pr.start()
        for pr, conn in procs:
            assert conn.recv() == "ready"
        total = 0
        for pr, conn in procs:
            while True:
                msg = conn.recv()
                if msg[0] == "count":
                    total += msg[1]
                    break
            pr.join(10)
        elapsed = time.monotonic() - t0 - IDLE_S      # members stop after IDLE_S without records
        return total, total / elapsed
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args(argv)
    times = [failover_trial() for _ in range(args.trials)]
    print("failover: kill -> partitions consumed again: median %.2f s (trials: %s)"
          % (statistics.median(times), ", ".join("%.2f" % t for t in times)))
    for n in (1, 2, 4):
        total, rate = throughput(n, args.records)
        print("throughput: %d member(s): %d records, %.0f records/s" % (n, total, rate))


if __name__ == "__main__":
    main()
