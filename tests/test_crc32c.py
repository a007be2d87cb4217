"""CRC-32C (csrc/crc32c.c via pylog._bridge) against the `crc32c` package as oracle.

The hardware path runs three interleaved streams over 8 KiB and then 256-byte
blocks and joins them with shift tables, after a byte loop up to 8-byte
alignment; the lengths and offsets below are chosen to land on every seam
(alignment prefix, 3 x 8192, 3 x 256, 8-byte tail) from both sides.
"""
import os
import random

import crc32c as oracle
import pytest

from pylog import _bridge

IMPLS = {
    "dispatch": _bridge.crc32c,
    "sw": _bridge.crc32c_sw,
    "hw": _bridge.crc32c_hw,
}

LONG_STRIPE = 3 * 8192      # one round of the long three-stream loop
SHORT_STRIPE = 3 * 256      # one round of the short three-stream loop


@pytest.fixture(scope="module")
def big():
    """1 MiB + 64 bytes of random data, shared by the big-buffer tests."""
    return os.urandom((1 << 20) + 64)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_value_of_123456789(impl):
    # The CRC-32C "check" value from the Castagnoli catalogue (RFC 3720 appendix B.4).
    assert IMPLS[impl](b"123456789") == 0xE3069283


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_input_is_zero_and_keeps_the_running_crc(impl):
    f = IMPLS[impl]
    assert f(b"") == 0
    assert f(b"", 0xDEADBEEF) == 0xDEADBEEF


@pytest.mark.parametrize("impl", IMPLS)
def test_rfc3720_vectors(impl):
    # iSCSI test vectors (RFC 3720 B.4): 32 bytes of zeros, ones, ascending, descending.
    f = IMPLS[impl]
    assert f(bytes(32)) == 0x8A9136AA
    assert f(b"\xff" * 32) == 0x62A8AB43
    assert f(bytes(range(32))) == 0x46DD794E
    assert f(bytes(range(31, -1, -1))) == 0x113FDB5C


@pytest.mark.parametrize("impl", IMPLS)
def test_every_length_0_to_300_matches_oracle(impl):
    f = IMPLS[impl]
    rng = random.Random(300)
    data = bytes(rng.getrandbits(8) for _ in range(300))
    for n in range(301):
        assert f(data[:n]) == oracle.crc32c(data[:n]), n


@pytest.mark.parametrize("impl", IMPLS)
def test_lengths_around_stream_block_seams_match_oracle(impl, big):
    f = IMPLS[impl]
    lengths = set()
    for seam in (8, SHORT_STRIPE, 2 * SHORT_STRIPE, LONG_STRIPE, 2 * LONG_STRIPE,
                 LONG_STRIPE + SHORT_STRIPE, 1 << 20):
        for d in range(-9, 10):
            if 0 <= seam + d <= len(big):
                lengths.add(seam + d)
    for n in sorted(lengths):
        assert f(big[:n]) == oracle.crc32c(big[:n]), n


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("offset", range(16))
def test_odd_alignment_offsets_match_oracle(impl, offset, big):
    # memoryview slices start at every address modulo 16, so the byte loop
    # before 8-byte alignment runs for 0..7 bytes, with and without a tail.
    f = IMPLS[impl]
    view = memoryview(big)
    for n in (1, 7, 8, 9, 255, SHORT_STRIPE + 13, LONG_STRIPE + 5, (1 << 20) - offset):
        chunk = view[offset:offset + n]
        assert f(chunk) == oracle.crc32c(bytes(chunk)), (offset, n)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_mebibyte_matches_oracle(impl, big):
    data = big[:1 << 20]
    assert IMPLS[impl](data) == oracle.crc32c(data)


@pytest.mark.parametrize("impl", IMPLS)
def test_chained_crc_equals_crc_of_concatenation(impl, big):
    f = IMPLS[impl]
    rng = random.Random(7)
    whole = oracle.crc32c(big)
    for _ in range(20):
        cut = rng.randrange(len(big) + 1)
        view = memoryview(big)
        assert f(view[cut:], f(view[:cut])) == whole, cut
    # Many small pieces, of uneven sizes, chained through the crc argument.
    crc, pos = 0, 0
    while pos < 100_000:
        step = rng.randrange(1, 3000)
        crc = f(big[pos:pos + step], crc)
        pos += step
    assert crc == oracle.crc32c(big[:pos])


@pytest.mark.parametrize("impl", IMPLS)
def test_chained_crc_argument_matches_oracle_value_argument(impl):
    f = IMPLS[impl]
    for start in (0, 1, 0xFFFFFFFF, 0xE3069283, 0x12345678):
        assert f(b"hello, kafka", start) == oracle.crc32c(b"hello, kafka", start)


def test_hardware_and_software_agree_on_random_buffers():
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randrange(0, 70_000)
        data = rng.randbytes(n)
        off = rng.randrange(0, 8)
        view = memoryview(data)[off:]
        assert _bridge.crc32c_hw(view) == _bridge.crc32c_sw(view)


def test_dispatch_uses_the_hardware_path_when_the_cpu_has_it():
    # Either way the dispatcher must agree with sw; this records which ran.
    data = os.urandom(4096)
    assert _bridge.crc32c(data) == _bridge.crc32c_sw(data)
    assert isinstance(_bridge.crc32c_hw_available(), bool)


def test_accepts_bytes_bytearray_and_memoryview():
    data = b"record batch v2"
    want = oracle.crc32c(data)
    assert _bridge.crc32c(bytearray(data)) == want
    assert _bridge.crc32c(memoryview(data)) == want
