"""Appends to a partition log (issue 2), per fsync policy, 100-byte and 10-KiB records.

    python3 -m pytest benchmarks/bench_append.py

Each round appends ROUNDS pre-encoded batches to one PartitionLog through the
same path producers use (validate, stamp offsets, one write per call).
"""
import pytest

from pylog.codec import encode_batch
from pylog.log import LogConfig, PartitionLog

ROUNDS = 50


def _batches(record_size, per_batch):
    value = b"v" * record_size
    return [encode_batch([(1_700_000_000_000, None, value, None)] * per_batch) for _ in range(ROUNDS)]


@pytest.mark.parametrize("fsync", ["never", "always"])
@pytest.mark.parametrize("record_size,per_batch", [(100, 1000), (10240, 100)])
def test_append_batches(benchmark, tmp_path, fsync, record_size, per_batch):
    batches = _batches(record_size, per_batch)
    log = PartitionLog(str(tmp_path / "t-0"), LogConfig(fsync=fsync, segment_bytes=256 << 20))

    def run():
        for b in batches:
            log.append([b])

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    records = ROUNDS * per_batch
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["records_per_s"] = round(records / seconds)
    benchmark.extra_info["MB_per_s"] = round(records * record_size / seconds / 1e6, 1)
    log.close()
