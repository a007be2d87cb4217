"""Recovery time and reader memory against store size (issue 6).

    python -m benchmarks.recovery                      # 10 MB, 1 GB and 5 GB stores
    python -m benchmarks.recovery --sizes 10M,200M     # a quicker look
    python -m benchmarks.recovery --drop-caches        # cold page cache (root only)

For each size: fill one partition with 1 KiB records (1 MiB batches, appended
through the partition like a producer's).  Each round, a child process appends 8 MiB
more (below pylog.recovery.checkpoint.bytes, so the recovery point lags by
all of it) and SIGKILLs itself, and half a batch of garbage is left at the tail (a torn
write).  A fresh process then opens the store and reads the last record;
that is the time reported, with how many bytes past the recovery point it
had to validate.  Then a consumer reads the whole topic in another fresh
process while its resident memory is sampled.

The claim being checked: reopening costs time independent of the store's
size (only the tail past the recovery point is validated), and a reader's
memory stays flat however much it reads.
"""
import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

RECORD = 1024
PER_BATCH = 960                     # batches just under max.message.bytes (1 MiB)
TAIL = 8 << 20                      # appended by the process that is killed


def _parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _batch():
    from pylog.codec import encode_batch
    value = b"r" * (RECORD - 16)
    return encode_batch([(int(time.time() * 1000), None, value + b"%016d" % i, None)
                         for i in range(PER_BATCH)])


def _fill(path, nbytes):
    from pylog.store import Store
    s = Store.acquire(path)
    try:
        if s.topic("t") is None:
            s.create_topic("t", 1)
        part = s.partition("t", 0)
        batch = bytes(_batch())
        while part.log.size_bytes < nbytes:
            part.append([batch] * 8)
    finally:
        s.release()


def _append_then_die(path):
    from pylog.store import Store
    s = Store.acquire(path)
    part = s.partition("t", 0)
    batch = bytes(_batch())
    written = 0
    while written < TAIL:
        part.append([batch])
        written += len(batch)
    os.kill(os.getpid(), signal.SIGKILL)


def _tear_tail(path):
    """Half a batch at the end of the active segment: what a kill mid-write leaves."""
    pdir = os.path.join(path, "t-0")
    seg = sorted(n for n in os.listdir(pdir) if n.endswith(".log"))[-1]
    half = bytes(_batch())[: (RECORD * PER_BATCH) // 2]
    with open(os.path.join(pdir, seg), "ab") as f:
        f.write(half)
    return len(half)


def _reopen(path, out):
    from pylog.store import Store          # imported untimed: not part of recovery
    t0 = time.perf_counter()
    s = Store.acquire(path)
    part = s.partition("t", 0)
    hw = part.high_watermark
    data, infos = part.log.read(hw - 1)
    t1 = time.perf_counter()
    out["open_s"] = t1 - t0
    out["high_watermark"] = hw
    out["last_ok"] = bool(infos) and infos[-1].last_offset == hw - 1
    out["segments"] = len(part.log.segments())
    s.release()


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _read_all(path, out):
    from pylog import Consumer, TopicPartition, OFFSET_BEGINNING
    c = Consumer({"bootstrap.servers": "file://" + path, "group.id": "bench-recovery",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    hw = c.get_watermark_offsets(TopicPartition("t", 0))[1]
    got, samples, nbytes = 0, [], 0
    marks = [hw * k // 10 for k in range(1, 11)]
    t0 = time.perf_counter()
    while got < hw:
        msgs = c.consume(min(10000, hw - got), 5.0)
        if not msgs:
            break
        got += len(msgs)
        nbytes += sum(len(m.value()) for m in msgs)
        while marks and got >= marks[0]:
            marks.pop(0)
            samples.append(round(_rss_mb(), 1))
    out["read_s"] = time.perf_counter() - t0
    out["records"] = got
    out["high_watermark"] = hw
    out["MB_read"] = round(nbytes / 1e6)
    out["rss_mb_at_10pct_steps"] = samples
    c.close()


def _in_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as m:
        out = m.dict()
        p = ctx.Process(target=fn, args=args + (out,))
        p.start()
        p.join()
        return dict(out), p.exitcode


def _drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(sizes, work, drop_caches, rounds):
    rows = []
    for size in sizes:
        path = os.path.join(work, "store-%d" % size)
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        _fill(path, size)
        fill_s = time.perf_counter() - t0
        ctx = multiprocessing.get_context("spawn")
        opens = []
        for r in range(rounds):             # every round recovers from a fresh kill -9
            killer = ctx.Process(target=_append_then_die, args=(path,))
            killer.start()
            killer.join()
            assert killer.exitcode == -signal.SIGKILL, killer.exitcode
            torn = _tear_tail(path)
            if drop_caches:
                _drop_caches()
            res, code = _in_child(_reopen, path)
            assert code == 0 and res["last_ok"], res
            opens.append(res["open_s"])
        store_bytes = sum(os.path.getsize(os.path.join(path, "t-0", n))
                          for n in os.listdir(os.path.join(path, "t-0")) if n.endswith(".log"))
        if drop_caches:
            _drop_caches()
        read, code = _in_child(_read_all, path)
        assert code == 0, read
        row = {"store_MB": round(store_bytes / 1e6), "fill_s": round(fill_s, 2),
               "segments": res["segments"], "torn_bytes_cut": torn,
               "reopen_ms_median": round(statistics.median(opens) * 1000, 1),
               "reopen_ms_all": [round(x * 1000, 1) for x in opens],
               "read": read}
        rows.append(row)
        print("%6d MB  %d segments  reopen after kill -9: median %.1f ms %s  |  read %d records "
              "(%d MB) in %.1f s, RSS MB at each 10%%: %s" % (
                  row["store_MB"], row["segments"], row["reopen_ms_median"], row["reopen_ms_all"],
                  read["records"], read["MB_read"], read["read_s"], read["rss_mb_at_10pct_steps"]),
              flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10M,1G,5G", help="store sizes, e.g. 10M,1G,5G")
    ap.add_argument("--rounds", type=int, default=5, help="reopens timed per size")
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--drop-caches", action="store_true", help="cold page cache before each open")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "recovery.json"))
    args = ap.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="pylog-recovery-")
    try:
        rows = run([_parse_size(s) for s in args.sizes.split(",")], work, args.drop_caches,
                   args.rounds)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    opens = [r["reopen_ms_median"] for r in rows]
    print("reopen time, largest store / smallest: %.2fx for %.0fx the bytes" % (
        opens[-1] / opens[0], rows[-1]["store_MB"] / max(rows[0]["store_MB"], 1)))
    with open(args.out, "w") as f:
        json.dump({"command": "python -m benchmarks.recovery " + " ".join(
                       sys.argv[1:] if argv is None else argv),
                   "when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "drop_caches": args.drop_caches,
                   "rows": rows}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
