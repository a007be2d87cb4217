"""Codec hot paths: encode (Builder), scan (CRC-32C check), decode, raw CRC-32C.

Run explicitly (the default `pytest` run collects tests/ only):

    pytest benchmarks/bench_codec.py --benchmark-only

Each benchmark stores its throughput in extra_info (records_per_s, MB_per_s,
from the median round), shown by --benchmark-json or --benchmark-columns.
"""
import os
import random

import crc32c as crc32c_pkg
import pytest

from pylog import _bridge, codec, compression

# (name, value size, records per batch): ~100 KiB and ~1 MiB batches.
SHAPES = {
    "100B": (100, 1000),
    "10KiB": (10 * 1024, 100),
}
KEY = b"user-000000"
TIMESTAMP = 1_700_000_000_000
CRC_SIZE = 16 << 20


def values(size, n, seed=1):
    """Half random, half repeated text: realistic for compression, never all zeros."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        raw = rng.randbytes(size // 2)
        text = (b'{"seq": %d, "ok": true} ' % i) * (size // 40 + 1)
        out.append((raw + text)[:size])
    return out


def throughput(benchmark, n_records, n_bytes):
    """Attach records/s and MB/s (10^6 bytes) computed from the median round."""
    stats = getattr(benchmark, "stats", None)
    if not stats:                       # --benchmark-disable: nothing was timed
        return
    median = stats.stats.median
    benchmark.extra_info["records_per_s"] = round(n_records / median)
    benchmark.extra_info["MB_per_s"] = round(n_bytes / median / 1e6, 1)


def encode(vals, codec_id=compression.NONE):
    b = _bridge.Builder(capacity=256 << 10)
    ts = TIMESTAMP
    for i, v in enumerate(vals):
        b.append(ts + i, KEY, v)
    return codec.seal(b, 1, 0, 0, False, codec_id)


@pytest.mark.parametrize("codec_name", ["none", "zstd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_encode(benchmark, shape, codec_name):
    size, n = SHAPES[shape]
    vals = values(size, n)
    c = compression.codec_id(codec_name)
    buf = benchmark(encode, vals, c)
    assert _bridge.scan(buf)[0][0].records_count == n
    throughput(benchmark, n, n * size)


@pytest.mark.parametrize("shape", SHAPES)
def test_scan_with_crc_check(benchmark, shape):
    size, n = SHAPES[shape]
    batch = encode(values(size, n))
    log = batch * 16                    # ~1.6 MiB or ~16 MiB of back-to-back batches
    infos, end, rc = benchmark(_bridge.scan, log)
    assert (rc, end, len(infos)) == (0, len(log), 16)
    throughput(benchmark, 16 * n, len(log))


@pytest.mark.parametrize("codec_name", ["none", "zstd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_decode(benchmark, shape, codec_name):
    size, n = SHAPES[shape]
    buf = encode(values(size, n), compression.codec_id(codec_name))
    info = _bridge.scan(buf)[0][0]
    recs = benchmark(codec.decode_batch, buf, info)
    assert len(recs) == n
    throughput(benchmark, n, n * size)


@pytest.fixture(scope="module")
def crc_buffer():
    return bytearray(os.urandom(CRC_SIZE))


CRC_IMPLS = {
    "pylog-dispatch": _bridge.crc32c,
    "pylog-hw": _bridge.crc32c_hw,
    "pylog-sw": _bridge.crc32c_sw,
    "crc32c-package": crc32c_pkg.crc32c,
    "memcpy": bytes,                   # bytes(bytearray): one copy, the bandwidth ceiling
}


@pytest.mark.parametrize("impl", CRC_IMPLS)
def test_crc32c_16mib(benchmark, impl, crc_buffer):
    if impl == "pylog-hw" and not _bridge.crc32c_hw_available():
        pytest.skip("no CRC-32C instruction on this CPU")
    benchmark(CRC_IMPLS[impl], crc_buffer)
    stats = getattr(benchmark, "stats", None)
    if stats:
        benchmark.extra_info["MB_per_s"] = round(CRC_SIZE / stats.stats.median / 1e6, 1)
