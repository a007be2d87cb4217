"""Several processes, one store (DESIGN.md invariant 4), with real processes.

Producers in separate processes (multiprocessing spawn, not threads) append
to one partition at once with enable.idempotence: every record lands exactly
once, offsets are contiguous and each producer's order is kept, while a
reader process tails the partition without ever waiting for the writers and
sees only whole, CRC-valid batches.  With pylog.fsync=always, producers that
flush at the same moment share fsyncs (group commit through the .sync file).
"""
import collections
import multiprocessing
import time


from pylog import codec
from pylog.admin import AdminClient, NewTopic
from pylog.store import Store

from txn_support import conf_for, read_partition

TOPIC = "mp"
NPROC = 4
PAD = b"." * 80                  # ~100-byte records


def _value(idx, i):
    return b"%d:%06d:" % (idx, i) + PAD


def _parse(value):
    idx, i, _ = value.split(b":", 2)
    return int(idx), int(i)


# ---- code run in the child processes (importable, for spawn) ----

def producer_main(path, idx, n, flush_every, fsync, start, out):
    try:
        from pylog import Producer, fsutil
        from pylog.store import Partition
        counts = collections.Counter()
        real_fsync, real_append = fsutil.fsync, Partition.append

        def counting_fsync(fd, what="file"):
            counts["fsync"] += 1
            return real_fsync(fd, what)

        def counting_append(self, batches, sync=None):
            counts["append"] += 1
            return real_append(self, batches, sync)

        fsutil.fsync = counting_fsync
        Partition.append = counting_append
        p = Producer({"bootstrap.servers": "file://" + path, "enable.idempotence": True,
                      "pylog.fsync": fsync, "linger.ms": 1, "batch.num.messages": 64})
        p._store.partition(TOPIC, 0)               # open (and recover) before the clock starts
        errors = []

        def on_delivery(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                counts["delivered"] += 1

        start.wait(30)
        counts.clear()
        t0 = time.monotonic()
        for i in range(n):
            p.produce(TOPIC, _value(idx, i), on_delivery=on_delivery)
            if (i + 1) % flush_every == 0:
                p.flush(30)
        left = p.flush(30)
        elapsed = time.monotonic() - t0
        p.close()
        out.put(("producer", idx, dict(counts), errors, left, elapsed))
    except BaseException as e:                     # report, never hang the parent
        out.put(("producer", idx, {}, ["%s: %s" % (type(e).__name__, e)], -1, 0))


def reader_main(path, total, start, out):
    try:
        s = Store.acquire(path)
        log = s.partition(TOPIC, 0).log
        start.wait(30)
        off, nrec, nbatch, slowest, problems = 0, 0, 0, 0.0, []
        deadline = time.monotonic() + 60
        while off < total and time.monotonic() < deadline:
            t0 = time.monotonic()
            buf, infos = log.read(off, 1 << 16)
            slowest = max(slowest, time.monotonic() - t0)
            if not infos:
                time.sleep(0.0005)
                continue
            batches, records = codec.decode_all(buf)    # raises on a torn or bad batch
            for bi in batches:
                if bi.producer_id < 0 or bi.base_sequence < 0:
                    problems.append("batch without producer id at %d" % bi.base_offset)
            for r in records:
                if r.offset != off:
                    problems.append("offset %d where %d was expected" % (r.offset, off))
                off = r.offset + 1
                nrec += 1
            nbatch += len(batches)
        s.release()
        out.put(("reader", off, nrec, nbatch, slowest, problems))
    except BaseException as e:
        out.put(("reader", -1, 0, 0, 0.0, ["%s: %s" % (type(e).__name__, e)]))


# ---- the tests ----

def _make_store(tmp_path):
    path = str(tmp_path / "store")
    admin = AdminClient({"bootstrap.servers": "file://" + path})
    admin.create_topics([NewTopic(TOPIC, num_partitions=1)])[TOPIC].result()
    admin.close()
    return path


def _run(ctx, procs, start, out):
    """Start the children, let them import pylog and open the partition, then
    release them together; returns their results."""
    for pr in procs:
        pr.start()
    results = []
    try:
        time.sleep(1.0)
        start.set()
        deadline = time.monotonic() + 90
        while len(results) < len(procs):
            results.append(out.get(timeout=max(deadline - time.monotonic(), 0.1)))
    finally:
        for pr in procs:
            pr.join(10)
            if pr.is_alive():
                pr.kill()
    return results


def _check_exactly_once(path, n):
    infos, records = read_partition(conf_for(path), TOPIC, 0)
    assert [r.offset for r in records] == list(range(NPROC * n))    # contiguous
    seen = collections.defaultdict(list)
    for r in records:
        idx, i = _parse(r.value)
        seen[idx].append(i)
    for idx in range(NPROC):
        assert seen[idx] == list(range(n)), "producer %d: lost, duplicated or reordered" % idx
    # Each producer's batches carry its own id and contiguous sequences.
    by_pid = collections.defaultdict(list)
    for bi in infos:
        by_pid[bi.producer_id].append((bi.base_sequence, bi.records_count))
    assert len(by_pid) == NPROC
    for seqs in by_pid.values():
        assert seqs[0][0] == 0
        assert all(s == p + c for (p, c), (s, _) in zip(seqs, seqs[1:]))
    return infos


def test_concurrent_producer_processes_write_every_record_exactly_once(tmp_path):
    path = _make_store(tmp_path)
    n, flush_every = 4000, 20                     # 200 appends per producer
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=producer_main, args=(path, idx, n, flush_every, "never", start, out))
             for idx in range(NPROC)]
    procs.append(ctx.Process(target=reader_main, args=(path, NPROC * n, start, out)))
    results = _run(ctx, procs, start, out)

    producers = [r for r in results if r[0] == "producer"]
    [reader] = [r for r in results if r[0] == "reader"]
    for _, idx, counts, errors, left, _ in producers:
        assert errors == [] and left == 0, (idx, errors)
        assert counts["delivered"] == n
    assert sum(c["append"] for _, _, c, _, _, _ in producers) >= NPROC * n // flush_every
    _check_exactly_once(path, n)

    _, reached, nrec, nbatch, slowest, problems = reader
    assert problems == []
    assert reached == nrec == NPROC * n            # the tail reader saw everything, in order
    assert nbatch > 10
    assert slowest < 1.0, "a read waited %.3fs: readers must not wait for writers" % slowest
    print("reader: %d records in %d batches, slowest read %.1f ms" % (nrec, nbatch, slowest * 1000))


def test_concurrent_flushes_share_fsyncs_group_commit(tmp_path):
    path = _make_store(tmp_path)
    n, flush_every = 600, 2                         # 300 appends, each durable, per producer
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=producer_main, args=(path, idx, n, flush_every, "always", start, out))
             for idx in range(NPROC)]
    results = _run(ctx, procs, start, out)

    appends = fsyncs = 0
    for _, idx, counts, errors, left, _ in results:
        assert errors == [] and left == 0, (idx, errors)
        assert counts["delivered"] == n
        appends += counts["append"]
        fsyncs += counts["fsync"]
    assert appends >= NPROC * n // flush_every
    # Without sharing every append costs one fsync; under contention one
    # fsync covers the bytes of every producer that wrote before it.
    assert 0 < fsyncs < appends, (fsyncs, appends)
    _check_exactly_once(path, n)
    print("group commit: %d appends, %d fsyncs (%.2f per append)" % (appends, fsyncs, fsyncs / appends))


def _append_and_snapshot_main(path, batch):
    s = Store.acquire(path)
    try:
        part = s.partition("t", 0)
        assert part.append([batch])[0].appended
        part.snapshot()
    finally:
        s.release()


def test_opening_a_partition_takes_in_appends_made_while_it_opened(tmp_path, monkeypatch, caplog):
    """Another process appends and snapshots producer state between this
    process opening the log and loading that snapshot: the snapshot is not
    ahead of the log (nothing was lost), and the batch is a duplicate here."""
    import logging
    from pylog import log as log_mod, testing
    path = str(tmp_path)
    s = Store.acquire(path)
    s.create_topic("t", 1)
    s.release()
    batch = bytes(codec.encode_batch([(1_700_000_000_000, None, b"v", None)], 777, 0, 0))
    real_init = log_mod.PartitionLog.__init__

    def init_then_other_process_appends(self, *a, **kw):
        real_init(self, *a, **kw)
        r = testing.run_in_child(_append_and_snapshot_main, path, batch, timeout=60)
        assert r.ok, r.error
    monkeypatch.setattr(log_mod.PartitionLog, "__init__", init_then_other_process_appends)
    s = Store.acquire(path)
    try:
        with caplog.at_level(logging.WARNING, logger="pylog.producer_state"):
            part = s.partition("t", 0)
        assert not [r for r in caplog.records if "ahead of the log" in r.getMessage()]
        dup = part.append([batch])[0]
        assert not dup.appended and dup.base_offset == 0
    finally:
        s.release()
