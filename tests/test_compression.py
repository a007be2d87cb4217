"""pylog.compression: round trips, interop with the reference libraries,
decompression bombs, truncated and garbled payloads.

Reference implementations used as oracles: python-lz4, zstandard,
python-snappy and kafka-python's kafka.codec (what Kafka clients write).
"""
import os
import random
import struct
import warnings
import zlib

import cramjam
import lz4.block
import lz4.frame
import pytest
import snappy
import zstandard

with warnings.catch_warnings():
    # kafka-python loads its protocol schemas with deprecated importlib.resources calls.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import codec as kcodec

from pylog import compression
from pylog.compression import GZIP, LZ4, NONE, SNAPPY, ZSTD
from pylog.errors import CorruptRecordError, KafkaError, KafkaException

CODECS = {"gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD}
LIMIT = 1 << 20
BOMB_SIZE = 200 << 20
XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
LZ4_MAGIC = struct.pack("<I", 0x184D2204)
ZSTD_MAGIC = struct.pack("<I", 0xFD2FB528)


def text(n, seed=0):
    """Compressible bytes that look like record batches of JSON-ish values."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += b'{"id": %d, "name": "user-%d", "ok": true}' % (rng.randrange(10**6), rng.randrange(500))
    return bytes(out[:n])


@pytest.fixture(scope="module")
def bombs():
    """200 MB of zeros per codec, produced by the reference libraries, streamed
    in 1 MiB pieces so the test never holds the 200 MB itself (raw snappy aside)."""
    chunk = bytes(1 << 20)
    n = BOMB_SIZE // len(chunk)
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    block = snappy.compress(bytes(32 << 10))
    lz = lz4.frame.LZ4FrameCompressor()
    zs = zstandard.ZstdCompressor().compressobj()
    return {
        "gzip": (GZIP, b"".join(gz.compress(chunk) for _ in range(n)) + gz.flush()),
        "snappy": (SNAPPY, XERIAL_HEADER +
                   (struct.pack(">i", len(block)) + block) * (BOMB_SIZE // (32 << 10))),
        "raw snappy": (SNAPPY, bytes(cramjam.snappy.compress_raw(bytes(BOMB_SIZE)))),
        "lz4": (LZ4, lz.begin() + b"".join(lz.compress(chunk) for _ in range(n)) + lz.flush()),
        "zstd": (ZSTD, b"".join(zs.compress(chunk) for _ in range(n)) + zs.flush()),
    }


# ---- round trips ----
@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("size", [0, 1, 100, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 1 << 20])
def test_round_trip(name, size):
    c = CODECS[name]
    for data in (text(size), os.urandom(size), bytes(size)):
        assert compression.decompress(c, compression.compress(c, data)) == data


@pytest.mark.parametrize("name", CODECS)
def test_compression_shrinks_repetitive_data(name):
    data = text(200_000)
    assert len(compression.compress(CODECS[name], data)) < len(data) // 2


@pytest.mark.parametrize("name", CODECS)
def test_compress_accepts_bytearray_and_memoryview(name):
    c = CODECS[name]
    data = text(100_000)
    assert compression.decompress(c, compression.compress(c, bytearray(data))) == data
    assert compression.decompress(c, compression.compress(c, memoryview(data))) == data


def test_codec_names_map_to_attribute_bits():
    assert [compression.codec_id(n) for n in ("none", "gzip", "snappy", "lz4", "zstd")] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", ["brotli", "GZIP", None, 3])
def test_unknown_codec_name_is_an_invalid_argument(bad):
    with pytest.raises(KafkaException) as ei:
        compression.codec_id(bad)
    assert ei.value.error.code() == KafkaError._INVALID_ARG


def test_compress_with_an_unknown_codec_is_an_invalid_argument():
    with pytest.raises(KafkaException) as ei:
        compression.compress(5, b"x")
    assert ei.value.error.code() == KafkaError._INVALID_ARG


@pytest.mark.parametrize("codec_id", [NONE, 5, 6, 7])
def test_decompress_with_an_unknown_codec_raises_corrupt_record(codec_id):
    with pytest.raises(CorruptRecordError):
        compression.decompress(codec_id, b"\x00" * 16)


# ---- interop with the reference libraries ----
@pytest.mark.parametrize("size", [10, 100_000])
def test_output_decodes_with_kafka_python_codecs(size):
    data = text(size)
    assert kcodec.gzip_decode(compression.compress(GZIP, data)) == data
    assert kcodec.snappy_decode(compression.compress(SNAPPY, data)) == data
    assert kcodec.lz4_decode(compression.compress(LZ4, data)) == data
    assert kcodec.zstd_decode(compression.compress(ZSTD, data)) == data


@pytest.mark.parametrize("size", [10, 100_000])
def test_kafka_python_codec_output_decodes(size):
    data = text(size)
    assert compression.decompress(GZIP, kcodec.gzip_encode(data)) == data
    assert compression.decompress(SNAPPY, kcodec.snappy_encode(data)) == data
    assert compression.decompress(LZ4, kcodec.lz4_encode(data)) == data
    assert compression.decompress(ZSTD, kcodec.zstd_encode(data)) == data


def test_reference_library_frames_decode():
    data = text(300_000)
    for kw in ({}, {"block_linked": False}, {"content_checksum": True},
               {"block_size": lz4.frame.BLOCKSIZE_MAX4MB}, {"store_size": False}):
        assert compression.decompress(LZ4, lz4.frame.compress(data, **kw)) == data, kw
    for kw in ({}, {"write_checksum": True}, {"write_content_size": False}, {"level": 19}):
        assert compression.decompress(ZSTD, zstandard.ZstdCompressor(**kw).compress(data)) == data, kw
    assert compression.decompress(GZIP, zlib.compress(data)) == data      # zlib header too


def test_snappy_output_uses_xerial_framing_with_32k_blocks():
    data = text(100_000)
    out = compression.compress(SNAPPY, data)
    assert out[:16] == XERIAL_HEADER
    pos, sizes = 16, []
    while pos < len(out):
        (n,) = struct.unpack_from(">i", out, pos)
        sizes.append(len(snappy.decompress(out[pos + 4:pos + 4 + n])))
        pos += 4 + n
    assert sizes == [32768, 32768, 32768, 100_000 - 3 * 32768]


@pytest.mark.parametrize("make", [
    pytest.param(lambda d: bytes(cramjam.snappy.compress_raw(d)), id="cramjam"),
    pytest.param(snappy.compress, id="python-snappy"),
    pytest.param(lambda d: kcodec.snappy_encode(d, xerial_compatible=False), id="kafka-python"),
])
@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_raw_snappy_without_xerial_framing_is_accepted(make, size):
    data = text(size)
    assert compression.decompress(SNAPPY, make(data)) == data


def _lz4_blocks(frame):
    """(flg, bd, [(compressed, payload)]) of a one-frame LZ4 stream."""
    assert frame[:4] == LZ4_MAGIC
    flg, bd = frame[4], frame[5]
    pos = 7 + (8 if flg & 0x08 else 0)
    blocks = []
    while True:
        (size,) = struct.unpack_from("<I", frame, pos)
        pos += 4
        if size == 0:
            return flg, bd, blocks
        n = size & 0x7FFFFFFF
        blocks.append((not size & 0x80000000, frame[pos:pos + n]))
        pos += n + (4 if flg & 0x10 else 0)


def test_lz4_frames_have_independent_blocks_like_kafka_java():
    # Regression: pylog wrote lz4 with cramjam.lz4.compress, whose frames link
    # each block to the previous one (FLG bit 5 clear). Kafka's Java reader
    # rejects that flag ("Dependent block stream is unsupported") and decodes
    # each block on its own, so no Java consumer could read pylog's lz4 batches.
    data = text(1 << 20) + os.urandom(100_000)
    flg, bd, blocks = _lz4_blocks(compression.compress(LZ4, data))
    assert flg & 0x20, "block independence flag must be set"
    assert flg >> 6 == 1 and (bd >> 4) & 7 == 4        # version 01, 64 KiB blocks
    out = b"".join(lz4.block.decompress(p, uncompressed_size=64 << 10) if compressed else p
                   for compressed, p in blocks)
    assert out == data
    assert any(c for c, _ in blocks) and any(not c for c, _ in blocks)   # both kinds seen
    for small in (b"", b"x", text(1000)):
        assert compression.compress(LZ4, small)[4:6] == b"\x60\x40"


def test_lz4_frame_header_checksum_is_valid():
    # python-lz4 checks the descriptor checksum (HC) that Kafka's Java reader checks too.
    assert lz4.frame.decompress(compression.compress(LZ4, b"abc" * 1000)) == b"abc" * 1000
    assert lz4.frame.decompress(compression.compress(LZ4, b"")) == b""


# ---- decompression bombs ----
@pytest.mark.parametrize("name", ["gzip", "snappy", "raw snappy", "lz4", "zstd"])
def test_200_mb_of_zeros_is_refused_over_a_small_limit(bombs, name):
    codec_id, payload = bombs[name]
    assert len(payload) < 12 << 20
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(codec_id, payload, limit=LIMIT)


@pytest.mark.parametrize("name", CODECS)
def test_payload_of_exactly_the_limit_is_accepted_and_one_more_byte_refused(name):
    c = CODECS[name]
    data = bytes(LIMIT)
    packed = compression.compress(c, data)
    assert compression.decompress(c, packed, limit=LIMIT) == data
    with pytest.raises(CorruptRecordError):
        compression.decompress(c, packed, limit=LIMIT - 1)


def _zstd_frame(blocks, fhd=0x00, extra=b"\x58"):
    """A zstd frame from (type, size, payload) blocks; fhd 0 plus a window byte."""
    out = bytearray(ZSTD_MAGIC) + bytes([fhd]) + extra
    for i, (btype, size, payload) in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out += struct.pack("<I", last | btype << 1 | size << 3)[:3] + payload
    return bytes(out)


RLE, RAW, COMPRESSED = 1, 0, 2


def test_handcrafted_zstd_rle_bomb_is_refused():
    frame = _zstd_frame([(RLE, 128 << 10, b"\x00")] * 200)        # 25 MiB from 800 bytes
    assert len(frame) < 1000
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(ZSTD, frame, limit=LIMIT)
    # The same construction under the limit is a valid frame the decoder accepts.
    small = _zstd_frame([(RLE, 128 << 10, b"\x07")] * 8)
    assert compression.decompress(ZSTD, small, limit=LIMIT) == b"\x07" * LIMIT


def test_handcrafted_zstd_frame_whose_content_size_lies_is_bounded_by_its_blocks():
    # Single-segment frame declaring 1 byte of content, then a 25 MiB RLE body.
    frame = _zstd_frame([(RLE, 128 << 10, b"\x00")] * 200, fhd=0x20, extra=b"\x01")
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(ZSTD, frame, limit=LIMIT)


def test_handcrafted_zstd_oversized_rle_block_is_refused():
    # The 21-bit block size field can claim 2 MiB, more than zstd's 128 KiB block
    # maximum: over a small limit the bound refuses it, under a large one the decoder.
    frame = _zstd_frame([(RLE, (1 << 21) - 1, b"\x00")])
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(ZSTD, frame, limit=LIMIT)
    with pytest.raises(CorruptRecordError, match="cannot decompress"):
        compression.decompress(ZSTD, frame, limit=16 << 20)


def test_zstd_frames_under_the_limit_each_but_over_it_together_are_refused():
    one = zstandard.ZstdCompressor().compress(bytes(600 << 10))
    assert compression.decompress(ZSTD, one, limit=LIMIT) == bytes(600 << 10)
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(ZSTD, one + one, limit=LIMIT)


def test_zstd_skippable_frame_does_not_hide_a_bomb():
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"junk"
    frame = _zstd_frame([(RLE, 128 << 10, b"\x00")] * 200)
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(ZSTD, skippable + frame, limit=LIMIT)
    assert compression.decompress(ZSTD, skippable + compression.compress(ZSTD, b"hi")) == b"hi"


@pytest.mark.parametrize("frame", [
    pytest.param(_zstd_frame([(3, 10, b"")]), id="reserved-block-type"),
    pytest.param(ZSTD_MAGIC + b"\x00\x58\x01", id="block-header-cut"),
    pytest.param(_zstd_frame([(RAW, 100, b"x" * 10)]), id="raw-block-past-end"),
    pytest.param(b"\x28\xb5\x2f\xfe" + b"\x00" * 10, id="bad-magic"),
    pytest.param(ZSTD_MAGIC, id="magic-only"),
])
def test_malformed_zstd_frames_raise_corrupt_record(frame):
    with pytest.raises(CorruptRecordError):
        compression.decompress(ZSTD, frame, limit=LIMIT)


def _lz4_header(block_size):
    """Magic + FLG/BD/HC of an independent-block frame with no checksums or size."""
    hdr = lz4.frame.compress(b"", block_size=block_size, block_linked=False,
                             content_checksum=False, store_size=False)
    return hdr[:7]


def test_handcrafted_lz4_bomb_with_4mb_blocks_is_refused():
    hdr = lz4.frame.compress(bytes(5 << 20), block_size=lz4.frame.BLOCKSIZE_MAX4MB,
                             block_linked=False, content_checksum=False, store_size=False)[:7]
    assert (hdr[5] >> 4) & 7 == 7
    block = lz4.block.compress(bytes(4 << 20), store_size=False)
    frame = hdr + (struct.pack("<I", len(block)) + block) * 50 + b"\x00" * 4    # 200 MiB
    assert len(frame) < 1 << 20
    with pytest.raises(CorruptRecordError, match="limit"):
        compression.decompress(LZ4, frame, limit=LIMIT)
    one = hdr + struct.pack("<I", len(block)) + block + b"\x00" * 4
    assert compression.decompress(LZ4, one, limit=4 << 20) == bytes(4 << 20)


def test_handcrafted_lz4_block_larger_than_its_frame_allows_is_refused():
    # The frame says 64 KiB blocks; one block expands to 1 MiB. The bound trusts
    # the frame descriptor, so the decoder itself must stop at the block maximum.
    hdr = _lz4_header(lz4.frame.BLOCKSIZE_MAX64KB)
    block = lz4.block.compress(bytes(1 << 20), store_size=False)
    frame = hdr + struct.pack("<I", len(block)) + block + b"\x00" * 4
    with pytest.raises(CorruptRecordError):
        compression.decompress(LZ4, frame, limit=16 << 20)


@pytest.mark.parametrize("frame", [
    pytest.param(b"\x04\x22\x4d\x19" + b"\x00" * 10, id="bad-magic"),
    pytest.param(LZ4_MAGIC + b"\x80\x40\x00" + b"\x00" * 4, id="bad-version"),
    pytest.param(LZ4_MAGIC + b"\x60\x10\x00" + b"\x00" * 4, id="bad-block-size-code"),
    pytest.param(LZ4_MAGIC + b"\x60\x40\x82" + struct.pack("<I", 500) + b"x" * 10, id="block-past-end"),
    pytest.param(LZ4_MAGIC + b"\x60\x40\x82", id="no-end-mark"),
    pytest.param(LZ4_MAGIC, id="magic-only"),
])
def test_malformed_lz4_frames_raise_corrupt_record(frame):
    with pytest.raises(CorruptRecordError):
        compression.decompress(LZ4, frame, limit=LIMIT)


def test_gzip_bomb_stops_after_limit_plus_one_bytes(bombs):
    # zlib's max_length stops inflating early: refusing costs ~limit, not 200 MB.
    with pytest.raises(CorruptRecordError, match="1001 bytes, over the limit of 1000"):
        compression.decompress(GZIP, bombs["gzip"][1], limit=1000)


@pytest.mark.parametrize("payload", [
    pytest.param(b"\x82SNAPPY\x00\x00", id="xerial-header-cut"),
    pytest.param(XERIAL_HEADER + b"\x00\x00", id="block-length-cut"),
    pytest.param(XERIAL_HEADER + struct.pack(">i", -1) + b"x", id="block-length-negative"),
    pytest.param(XERIAL_HEADER + struct.pack(">i", 100) + b"x", id="block-past-end"),
    pytest.param(XERIAL_HEADER + struct.pack(">i", 3) + b"\xff\xff\xff", id="block-garbage"),
    pytest.param(b"\xff\xff\xff\xff\xff\xff", id="raw-length-varint-garbage"),
    pytest.param(b"", id="empty"),
])
def test_malformed_snappy_raises_corrupt_record(payload):
    with pytest.raises(CorruptRecordError):
        compression.decompress(SNAPPY, payload, limit=LIMIT)


# ---- truncated and garbled payloads ----
@pytest.mark.parametrize("name", ["gzip", "lz4", "zstd"])
def test_truncation_at_every_byte_raises_corrupt_record(name):
    c = CODECS[name]
    data = text(40_000)
    packed = compression.compress(c, data)
    for cut in range(len(packed)):
        with pytest.raises(CorruptRecordError):
            compression.decompress(c, packed[:cut], limit=LIMIT)


def test_snappy_truncation_raises_except_at_block_boundaries():
    # Xerial framing has no end marker: a cut exactly between blocks yields the
    # whole blocks before it. The batch CRC, not the codec, catches that case.
    data = text(100_000)
    packed = compression.compress(SNAPPY, data)
    boundaries = {16: 0}
    pos, produced = 16, 0
    while pos < len(packed):
        (n,) = struct.unpack_from(">i", packed, pos)
        pos += 4 + n
        produced += min(32768, len(data) - produced)
        boundaries[pos] = produced
    for cut in range(len(packed)):
        if cut in boundaries:
            assert compression.decompress(SNAPPY, packed[:cut]) == data[:boundaries[cut]]
        else:
            with pytest.raises(CorruptRecordError):
                compression.decompress(SNAPPY, packed[:cut], limit=LIMIT)


@pytest.mark.parametrize("name", CODECS)
def test_garbled_payloads_raise_corrupt_record_or_decode_within_limit(name):
    c = CODECS[name]
    data = text(50_000)
    packed = compression.compress(c, data)
    rng = random.Random(name)          # str seeds are deterministic, hash() is not
    failures = 0
    for _ in range(600):
        bad = bytearray(packed)
        for _ in range(rng.choice([1, 1, 2, 8])):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        try:
            out = compression.decompress(c, bytes(bad), limit=LIMIT)
        except CorruptRecordError:
            failures += 1
            continue
        assert len(out) <= LIMIT
    # gzip and lz4 carry checksums or strict framing; snappy and zstd (no checksum
    # by default) may decode garbage, left for the batch CRC to catch.
    assert failures > 0


@pytest.mark.parametrize("name", CODECS)
def test_random_bytes_raise_nothing_but_corrupt_record(name):
    rng = random.Random(3)
    for _ in range(300):
        junk = rng.randbytes(rng.randrange(0, 200))
        try:
            compression.decompress(CODECS[name], junk, limit=LIMIT)
        except CorruptRecordError:
            pass
