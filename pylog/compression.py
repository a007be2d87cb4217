"""Batch compression codecs: gzip, snappy, lz4 and zstd, as Kafka producers write them.

Library choice: cramjam (one wheel, Rust codecs, all four formats, maintained)
does the work, except gzip, which the standard library's zlib does because it
can stop at a size limit.  cramjam cannot stop lz4 or zstd output early, so a
few dozen lines below walk the lz4 and zstd frame headers and bound the
decompressed size *before* decompressing: a crafted 10-KiB batch must not make
pylog allocate gigabytes.

Formats on the wire (per Kafka's clients):
  gzip   RFC 1952 stream
  snappy xerial framing (Java's SnappyOutputStream): 16-byte header
         0x82 "SNAPPY" 0x00, int32 version, int32 compatible; then blocks of
         int32 big-endian length + raw snappy.  Raw snappy is also accepted.
  lz4    LZ4 frame format (independent blocks)
  zstd   zstd frame format
"""
import struct
import zlib

import cramjam

from .errors import CorruptRecordError, KafkaError, KafkaException

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
NAMES = {"none": NONE, "gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD}

# Upper bound on one batch's decompressed records region.
DEFAULT_MAX_DECOMPRESSED = 128 * 1024 * 1024

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
_XERIAL_BLOCK = 32 * 1024       # Java's SnappyOutputStream default block size


def codec_id(name):
    """compression.type value -> attributes codec bits (KafkaException on unknown)."""
    try:
        return NAMES[name]
    except (KeyError, TypeError):
        raise KafkaException(KafkaError(
            KafkaError._INVALID_ARG,
            "Invalid value %r for configuration property \"compression.type\": "
            "expected one of none, gzip, snappy, lz4, zstd" % (name,)))


def compress(codec, data):
    if codec == GZIP:
        co = zlib.compressobj(6, zlib.DEFLATED, 31)
        return co.compress(data) + co.flush()
    if codec == SNAPPY:
        out = [_XERIAL_HEADER]
        for i in range(0, len(data), _XERIAL_BLOCK):
            block = bytes(cramjam.snappy.compress_raw(data[i:i + _XERIAL_BLOCK]))
            out.append(struct.pack(">i", len(block)))
            out.append(block)
        return b"".join(out)
    if codec == LZ4:
        return _lz4_frame(data)
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "unknown codec %r" % codec))


def decompress(codec, data, limit=DEFAULT_MAX_DECOMPRESSED):
    """Decompressed bytes, or CorruptRecordError if damaged or over limit."""
    try:
        if codec == GZIP:
            return _gunzip(data, limit)
        if codec == SNAPPY:
            return _unsnappy(data, limit)
        if codec == LZ4:
            _check_bound(_lz4_bound(data), limit, "lz4")
            return bytes(cramjam.lz4.decompress(data))
        if codec == ZSTD:
            _check_bound(_zstd_bound(data), limit, "zstd")
            return bytes(cramjam.zstd.decompress(data))
    except (cramjam.DecompressionError, zlib.error, struct.error, ValueError, IndexError) as e:
        raise CorruptRecordError("cannot decompress %s batch: %s" % (_name(codec), e)) from None
    raise CorruptRecordError("unknown compression codec %d in batch attributes" % codec)


def _name(codec):
    return {v: k for k, v in NAMES.items()}.get(codec, str(codec))


def _check_bound(bound, limit, what):
    if bound > limit:
        raise CorruptRecordError(
            "%s batch could decompress to %d bytes, over the limit of %d" % (what, bound, limit))


def _gunzip(data, limit):
    # Java's GZIPInputStream reads concatenated members, so a batch may hold several.
    parts, total = [], 0
    while True:
        d = zlib.decompressobj(47)      # 32 + 15: accept a gzip or zlib header
        out = d.decompress(data, limit + 1 - total)
        total += len(out)
        if total > limit:
            _check_bound(total, limit, "gzip")
        if not d.eof:
            raise CorruptRecordError("gzip batch is truncated")
        parts.append(out)
        data = d.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _unsnappy(data, limit):
    if not data.startswith(_XERIAL_MAGIC):
        _check_bound(cramjam.snappy.decompress_raw_len(data), limit, "snappy")
        return bytes(cramjam.snappy.decompress_raw(data))
    pos, total, blocks = 16, 0, []
    if len(data) < 16:
        raise CorruptRecordError("snappy batch header is truncated")
    while pos < len(data):
        if pos + 4 > len(data):
            raise CorruptRecordError("snappy block length is truncated")
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if n < 0 or pos + n > len(data):
            raise CorruptRecordError("snappy block length %d out of range" % n)
        block = data[pos:pos + n]
        pos += n
        total += cramjam.snappy.decompress_raw_len(block)
        _check_bound(total, limit, "snappy")
        blocks.append(bytes(cramjam.snappy.decompress_raw(block)))
    return b"".join(blocks)


_LZ4_MAGIC = 0x184D2204
_LZ4_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
# Frame descriptor as Kafka's Lz4BlockOutputStream writes it: FLG 0x60 (version 01,
# independent blocks, no checksums, no content size), BD 0x40 (64 KiB blocks), and
# HC 0x82 = (xxh32(FLG BD, seed 0) >> 8) & 0xff, fixed because FLG and BD are.
_LZ4_FRAME_HEADER = struct.pack("<I", _LZ4_MAGIC) + b"\x60\x40\x82"
_LZ4_BLOCK = 64 << 10
_LZ4_UNCOMPRESSED = 0x80000000


def _lz4_frame(data):
    """An LZ4 frame of independent 64 KiB blocks.

    Not cramjam.lz4.compress(): it links each block to the previous one (FLG bit 5
    clear), and Kafka's Java reader refuses such a frame outright (Lz4BlockOutputStream
    .FLG.validate: "Dependent block stream is unsupported"); it also decompresses
    every block on its own, so linked blocks could not be read anyway."""
    view = memoryview(data)
    out = [_LZ4_FRAME_HEADER]
    for i in range(0, len(view), _LZ4_BLOCK):
        chunk = view[i:i + _LZ4_BLOCK]
        block = bytes(cramjam.lz4.compress_block(chunk, store_size=False))
        if len(block) >= len(chunk):        # incompressible: store it, flagged raw
            out.append(struct.pack("<I", len(chunk) | _LZ4_UNCOMPRESSED))
            out.append(bytes(chunk))
        else:
            out.append(struct.pack("<I", len(block)))
            out.append(block)
    out.append(b"\x00\x00\x00\x00")       # EndMark
    return b"".join(out)


def _skip_skippable(data, pos):
    """Position after any skippable frames at pos (lz4 and zstd share them:
    magic 0x184D2A5?, then an int32 LE size), and the magic found there."""
    while True:
        (magic,) = struct.unpack_from("<I", data, pos)
        if magic & 0xFFFFFFF0 != 0x184D2A50:
            return pos, magic
        (size,) = struct.unpack_from("<I", data, pos + 4)
        pos += 8 + size
        if pos >= len(data):
            return pos, None


def _lz4_bound(data):
    """Most bytes the LZ4 frames in data can produce, from block headers alone."""
    pos, bound, n = 0, 0, len(data)
    while pos < n:
        pos, magic = _skip_skippable(data, pos)
        if magic is None:
            break
        if magic != _LZ4_MAGIC:
            raise ValueError("bad lz4 frame magic 0x%08x" % magic)
        flg, bd = data[pos + 4], data[pos + 5]
        if flg >> 6 != 1:
            raise ValueError("unsupported lz4 frame version")
        block_max = _LZ4_BLOCK_MAX.get((bd >> 4) & 7)
        if block_max is None:
            raise ValueError("bad lz4 block size code")
        pos += 7 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
        block_checksum = 4 if flg & 0x10 else 0
        while True:
            (size,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if size == 0:
                break
            stored = size & 0x7FFFFFFF
            bound += stored if size & 0x80000000 else block_max
            pos += stored + block_checksum
            if pos > n:
                raise ValueError("lz4 block runs past the end")
        pos += 4 if flg & 0x04 else 0
    return bound


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 128 << 10


def _zstd_bound(data):
    """Most bytes the zstd frames in data can produce, from block headers alone."""
    pos, bound, n = 0, 0, len(data)
    while pos < n:
        pos, magic = _skip_skippable(data, pos)
        if magic is None:
            break
        if magic != _ZSTD_MAGIC:
            raise ValueError("bad zstd frame magic 0x%08x" % magic)
        fhd = data[pos + 4]
        single_segment = fhd & 0x20
        pos += 5 + (0 if single_segment else 1)
        pos += (0, 1, 2, 4)[fhd & 0x03]
        fcs_flag = fhd >> 6
        pos += (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        while True:
            if pos + 3 > n:
                raise ValueError("zstd block header runs past the end")
            hdr = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            pos += 3
            last, btype, size = hdr & 1, (hdr >> 1) & 3, hdr >> 3
            if btype == 0:
                bound += size
                pos += size
            elif btype == 1:
                bound += size
                pos += 1
            elif btype == 2:
                bound += _ZSTD_BLOCK_MAX
                pos += size
            else:
                raise ValueError("reserved zstd block type")
            if pos > n:
                raise ValueError("zstd block runs past the end")
            if last:
                break
        pos += 4 if fhd & 0x04 else 0
    return bound
