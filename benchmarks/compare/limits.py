"""The machine's physical limits, measured in the same run as the systems.

  seq_cached_MBps   sequential 1 MiB writes to a new file, page cache only
  seq_fsync_MBps    the same bytes followed by one fdatasync (timed together)
  seq_fsync_wb_MBps the same again, each MiB's writeback started right after
                    its write (sync_file_range SYNC_FILE_RANGE_WRITE), so the
                    device works while the next MiB is written: a durable
                    writer's best case, and what pylog's deferred appends do
                    (not a target's unit: shown so a ratio against
                    seq_fsync_MBps can be read for what it is)
  fdatasync_med_s   one 4 KiB append + fdatasync, median (and _p99_s)
  crc_pylog_GBps    pylog._bridge.crc32c over a 64 MiB buffer
  crc_pkg_GBps      the crc32c package over the same buffer
  memcpy_GBps       memoryview slice assignment (one memcpy) of 64 MiB, 4 times
                    (bytearray's own slice assignment is 5x slower: not memcpy)

All in decimal units (MB = 10^6 bytes, GB = 10^9), like the table.  The write
tests run in ctx.workdir, the filesystem every store lives on.
"""
import ctypes
import os
import statistics

from .common import LARGE, perf, records_for

MiB = 1 << 20
BUF = 64 * MiB


def _sync_file_range():
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    f.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return f


def seq_write(directory, total, sync, writeback=None):
    """MB/s of writing `total` bytes in 1 MiB writes (plus one fdatasync if sync).
    writeback: sync_file_range, called with SYNC_FILE_RANGE_WRITE (2) on each
    MiB right after its write."""
    path = os.path.join(directory, "seq-write")
    chunk = b"\xa5" * MiB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = perf()
        for i in range(total // MiB):
            os.write(fd, chunk)
            if writeback is not None:
                writeback(fd, i * MiB, MiB, 2)
        if sync:
            os.fdatasync(fd)
        seconds = perf() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return total / seconds / 1e6


def level_page_cache(directory, n_small):
    """Write and delete twice the 10 KiB workload's bytes (at least 128 MiB),
    untimed, before every run.  This VM backs memory it has not touched for a
    while slowly (a first 100 MB write into the page cache ran at ~0.5 GB/s,
    the next at ~3.5 GB/s), which otherwise penalised whichever system came
    first after a stretch of small runs: pylog's fsync=never 10 KiB writes
    measured 2.3x slower than its fsync=always ones, in every round."""
    total = max(128 * MiB, 2 * records_for(LARGE, n_small) * LARGE // MiB * MiB)
    seq_write(directory, total, False)


def fdatasync_latency(directory, samples):
    """(median, p99) seconds of a 4 KiB append followed by fdatasync."""
    path = os.path.join(directory, "fdatasync")
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        for _ in range(10):                     # allocate the inode, warm the path
            os.write(fd, block)
            os.fdatasync(fd)
        times = []
        for _ in range(samples):
            t0 = perf()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(perf() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def _best_rate(fn, nbytes, repeat=3, times=1):
    """GB/s of the fastest of `repeat` runs of `times` calls of fn()."""
    best = 0.0
    for _ in range(repeat):
        t0 = perf()
        for _ in range(times):
            fn()
        best = max(best, times * nbytes / (perf() - t0) / 1e9)
    return best


def crc_and_memcpy():
    from pylog import _bridge
    src = bytes(range(256)) * (BUF // 256)
    dst = memoryview(bytearray(BUF))
    out = {"crc_pylog_GBps": _best_rate(lambda: _bridge.crc32c(src), BUF),
           "memcpy_GBps": _best_rate(lambda: dst.__setitem__(slice(None), src), BUF, times=4)}
    try:
        import crc32c
        out["crc_pkg_GBps"] = _best_rate(lambda: crc32c.crc32c(src), BUF)
    except ImportError:
        print("  limits: crc32c package not installed; its bandwidth is not measured")
    return out


def run(ctx, size, n):
    """One measurement of every limit.  The write tests move as many bytes as
    the 10 KiB workload writes (at least 64 MiB), so the fsynced bandwidth is
    the one the 10 KiB target is judged against; each runs twice, alternated,
    and the better run counts (a limit is what the machine can do)."""
    d = ctx.fresh("limits")
    total = max(64 * MiB, records_for(LARGE, n) * LARGE // MiB * MiB)
    med, p99 = fdatasync_latency(d, 100 if ctx.quick else 300)
    cached, synced, early = [], [], []
    sfr = _sync_file_range()
    for _ in range(2):                          # alternated; the best of each is the limit
        cached.append(seq_write(d, total, False))
        synced.append(seq_write(d, total, True))
        if sfr is not None:
            early.append(seq_write(d, total, True, sfr))
    out = {"seq_cached_MBps": max(cached), "seq_fsync_MBps": max(synced),
           "fdatasync_med_s": med, "fdatasync_p99_s": p99, "seq_bytes": total}
    if early:
        out["seq_fsync_wb_MBps"] = max(early)
    out.update(crc_and_memcpy())
    return out
