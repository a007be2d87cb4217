"""Scaling curves (issue 6): throughput against record size, partition count,
producer processes and open transactions.

    python -m benchmarks.scaling                 # all four curves, ~3 minutes on 2 cores
    python -m benchmarks.scaling --only size     # one curve: size, partitions, processes, txns

Every point writes with an idempotent Producer (pylog.fsync=never, linger.ms 5),
then reads everything back with a read_committed Consumer (consume(10000));
each point runs in a fresh store and is reported as records/s and MB/s for the
write and the read.  Results: benchmarks/results/scaling.json (and .png when
matplotlib is installed).

  size        16 B .. 1 MiB values, one partition, about 64 MiB or 400k records per point
  partitions  1 .. 256 partitions, keyed records spread over all of them
  processes   1 .. 8 producer processes writing one topic at once (aggregate rate)
  txns        0 .. 64 other transactional producers each holding a transaction
              open (one record written, never committed) while the measured
              producer writes and a read_committed consumer reads up to the LSO
"""
import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time

TOPIC = "scale"


def _conf(path, **extra):
    return {"bootstrap.servers": "file://" + path, **extra}


BIG = 4 << 20                   # room for 1 MiB records: message.max.bytes, batch.size


def _topic(path, partitions):
    from pylog.admin import AdminClient, NewTopic
    a = AdminClient(_conf(path))
    a.create_topics([NewTopic(TOPIC, num_partitions=partitions,
                              config={"max.message.bytes": BIG})])[TOPIC].result()
    a.close()


def _produce(path, n, size, keyed=False, partitions=1):
    from pylog import Producer
    p = Producer(_conf(path, **{"enable.idempotence": True, "linger.ms": 5,
                                "message.max.bytes": BIG, "batch.size": BIG}))
    value = b"v" * size
    keys = [b"key-%d" % i for i in range(max(partitions * 4, 1))]
    produce, poll = p.produce, p.poll
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                if keyed:
                    produce(TOPIC, value, keys[i % len(keys)])
                else:
                    produce(TOPIC, value)
                break
            except BufferError:
                poll(0.001)
    p.flush()
    dt = time.perf_counter() - t0
    p.close()
    return dt


def _consume(path, partitions, expect):
    from pylog import Consumer, TopicPartition, OFFSET_BEGINNING
    c = Consumer(_conf(path, **{"group.id": "scale", "enable.auto.commit": False}))
    c.assign([TopicPartition(TOPIC, i, OFFSET_BEGINNING) for i in range(partitions)])
    got = 0
    t0 = time.perf_counter()
    while got < expect:
        msgs = c.consume(min(10000, expect - got), 5.0)
        if not msgs:
            break
        got += sum(1 for m in msgs if m.error() is None)
    dt = time.perf_counter() - t0
    c.close()
    return got, dt


def _point(path, n, size, partitions=1, keyed=False):
    _topic(path, partitions)
    wdt = _produce(path, n, size, keyed, partitions)
    got, rdt = _consume(path, partitions, n)
    assert got == n, (got, n)
    return {"records": n, "size": size, "write_rps": round(n / wdt), "read_rps": round(n / rdt),
            "write_MBps": round(n * size / wdt / 1e6, 1), "read_MBps": round(n * size / rdt / 1e6, 1)}


def curve_size(work):
    rows = []
    for size in (16, 100, 1024, 10240, 102400, 1 << 20):
        n = max(64, min(400000, (64 << 20) // size))
        path = _fresh(work)
        rows.append(dict(_point(path, n, size), x=size))
    return rows


def curve_partitions(work):
    rows = []
    for parts in (1, 4, 16, 64, 256):
        path = _fresh(work)
        rows.append(dict(_point(path, 200000, 100, parts, keyed=True), x=parts))
    return rows


def _producer_proc(path, n, size, out, i):
    out[i] = _produce(path, n, size)


def curve_processes(work):
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for procs in (1, 2, 4, 8):
        path = _fresh(work)
        _topic(path, 1)
        n = 400000 // procs
        with ctx.Manager() as m:
            out = m.dict()
            ps = [ctx.Process(target=_producer_proc, args=(path, n, 100, out, i)) for i in range(procs)]
            t0 = time.perf_counter()
            for p in ps:
                p.start()
            for p in ps:
                p.join()
            wall = time.perf_counter() - t0
            assert all(p.exitcode == 0 for p in ps)
            slowest = max(out.values())
        got, rdt = _consume(path, 1, n * procs)
        assert got == n * procs, (got, n * procs)
        # wall includes interpreter start-up of the children: report both
        rows.append({"x": procs, "records": n * procs, "size": 100,
                     "write_rps": round(n * procs / slowest),
                     "write_rps_wall": round(n * procs / wall), "read_rps": round(got / rdt)})
    return rows


def curve_txns(work):
    from pylog import Producer
    rows = []
    for open_txns in (0, 1, 8, 64):
        path = _fresh(work)
        _topic(path, 1)
        holders = []
        for i in range(open_txns):
            h = Producer(_conf(path, **{"transactional.id": "holder-%d" % i,
                                        "transaction.timeout.ms": 900000}))
            h.init_transactions()
            h.begin_transaction()
            h.produce(TOPIC, b"open")
            h.flush()
            holders.append(h)
        n = 200000
        wdt = _produce(path, n, 100)
        for h in holders:                       # decided, so the reader can reach the end
            h.abort_transaction()
            h.close()
        got, rdt = _consume(path, 1, n)
        assert got == n, (got, n)
        rows.append({"x": open_txns, "records": n, "size": 100, "write_rps": round(n / wdt),
                     "read_rps": round(got / rdt)})
    return rows


_counter = [0]


def _fresh(work):
    _counter[0] += 1
    path = os.path.join(work, "s%d" % _counter[0])
    shutil.rmtree(path, ignore_errors=True)
    return path


CURVES = {"size": curve_size, "partitions": curve_partitions, "processes": curve_processes,
          "txns": curve_txns}


def _chart(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(result), figsize=(4.5 * len(result), 3.6))
    axes = axes if len(result) > 1 else [axes]
    for ax, (name, rows) in zip(axes, result.items()):
        xs = [r["x"] for r in rows]
        ax.plot(xs, [r["write_rps"] for r in rows], "o-", label="write")
        ax.plot(xs, [r["read_rps"] for r in rows], "s-", label="read")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_ylabel("records/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(CURVES), action="append",
                    help="run only this curve (repeatable)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="pylog-scaling-")
    result = {}
    try:
        for name in args.only or list(CURVES):
            rows = CURVES[name](work)
            result[name] = rows
            for r in rows:
                print("%-10s x=%-8s %s" % (name, r["x"], {k: v for k, v in r.items() if k != "x"}),
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpus": os.cpu_count(),
                   "curves": result}, f, indent=1)
    png = _chart(result, os.path.join(args.out, "scaling.png"))
    print("wrote", os.path.join(args.out, "scaling.json"), png or "")


if __name__ == "__main__":
    main()
