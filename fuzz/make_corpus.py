"""Write the seed corpus for fuzz/fuzz_batch.c into fuzz/corpus/ with pylog.codec.

    python fuzz/make_corpus.py [OUT_DIR]

Seeds: valid batches (null keys and values, keys, headers, many records,
large timestamp deltas, transactional), every compression codec, COMMIT and
ABORT control batches, multi-batch streams with consecutive offsets,
truncated and bit-flipped batches, and producer-state values as LMDB stores
them.  Files are named by what they hold; the output is deterministic, so
rerunning the script leaves git clean.  regress-*.bin files (fuzzer findings)
are kept as they are.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pylog import codec, compression  # noqa: E402
from pylog.producer_state import _new_entry, encode_entry  # noqa: E402
from pylog._native import lib  # noqa: E402

TS = 1_700_000_000_000


def stamp(batch, base_offset):
    """batch (bytes from codec) with its base offset set; the CRC does not cover it."""
    b = bytearray(batch)
    struct.pack_into(">q", b, 0, base_offset)
    return bytes(b)


def seeds():
    out = {}
    out["valid-one-record"] = codec.encode_batch([(TS, None, b"v", None)])
    out["valid-null-key-null-value"] = codec.encode_batch([(TS, None, None, None)])
    out["valid-keys-values"] = codec.encode_batch(
        [(TS + i, b"key-%d" % i, b"value-%d" % i, None) for i in range(5)])
    out["valid-headers"] = codec.encode_batch(
        [(TS, b"k", b"v", [("h1", b"1"), ("h2", None), ("", b"")]),
         (TS + 1, None, b"x", {"trace": b"abc" * 10})])
    out["valid-many-records"] = codec.encode_batch(
        [(TS + (i % 7), None, bytes([i % 251]) * (i % 13), None) for i in range(300)])
    out["valid-timestamp-deltas"] = codec.encode_batch(
        [(0, None, b"a", None), (2 ** 62, None, b"b", None), (1, None, b"c", None)])
    out["valid-idempotent"] = codec.encode_batch(
        [(TS, None, b"x", None)] * 3, producer_id=1000, producer_epoch=2, base_sequence=17)
    out["valid-transactional"] = codec.encode_batch(
        [(TS, b"k", b"t", None)] * 2, producer_id=1001, producer_epoch=0, base_sequence=0,
        transactional=True)
    out["valid-large-value"] = codec.encode_batch([(TS, None, bytes(range(256)) * 40, None)])
    for name, cid in sorted(compression.NAMES.items()):
        if cid == compression.NONE:
            continue
        out["compressed-%s" % name] = codec.encode_batch(
            [(TS + i, b"k%d" % i, b"compressible " * 20, [("h", b"v")]) for i in range(20)],
            codec=cid)
    out["control-commit"] = codec.control_batch(1001, 1, True, 0, TS)
    out["control-abort"] = codec.control_batch(1001, 1, False, 7, TS)
    # A partition's bytes: data, a marker, more data, offsets consecutive.
    b0 = stamp(out["valid-transactional"], 0)
    b1 = stamp(out["control-commit"], 2)
    b2 = stamp(out["valid-keys-values"], 3)
    out["stream-three-batches"] = b0 + b1 + b2
    out["stream-offset-gap"] = b0 + stamp(out["control-commit"], 5)
    # Truncations and damage: the scanner must stop cleanly at each.
    full = out["valid-headers"]
    for cut in (11, 12, 60, 61, 62, len(full) // 2, len(full) - 1):
        out["truncated-at-%d" % cut] = full[:cut]
    out["truncated-stream"] = (b0 + b2)[:len(b0) + 30]
    flipped = bytearray(full)
    flipped[70] ^= 0x10
    out["bitflip-record"] = bytes(flipped)
    bad_magic = bytearray(full)
    bad_magic[16] = 1
    out["bad-magic"] = bytes(bad_magic)
    huge_len = bytearray(full)
    struct.pack_into(">i", huge_len, 8, 0x7FFFFFF0)
    out["batch-length-huge"] = bytes(huge_len)
    huge_count = bytearray(full)
    struct.pack_into(">i", huge_count, 57, 0x7FFFFFFF)
    out["records-count-huge"] = bytes(huge_count)
    # Producer state values (dedup.c layout), empty and with a full window.
    e = _new_entry()
    out["pstate-empty"] = encode_entry(e)
    for i in range(lib.PL_DEDUP_WINDOW):
        lib.pl_dedup_update(e, 3, i * 10, i * 10 + 9, i * 10, i * 10 + 9, TS + i, 1, TS)
    out["pstate-full-window"] = encode_entry(e)
    return out


def main(argv):
    target = argv[1] if len(argv) > 1 else os.path.join(HERE, "corpus")
    os.makedirs(target, exist_ok=True)
    items = seeds()
    for name, data in sorted(items.items()):
        with open(os.path.join(target, name + ".bin"), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(items), target))


if __name__ == "__main__":
    main(sys.argv)
