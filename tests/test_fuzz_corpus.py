"""Replay fuzz/corpus/ (the libFuzzer seeds and every finding's reproducer).

Always: through the Python-level decoders (pylog.codec and the bridge),
which must either decode or raise a KafkaException, never anything else,
never crash.  When clang with libFuzzer is installed: also through the
fuzz/fuzz_batch.c harness built with ASan and UBSan (fuzz/run.sh build),
replaying each input once (-runs=0).
"""
import os
import shutil
import struct
import subprocess

import pytest

from pylog import KafkaException, _bridge, codec, compression
from pylog.producer_state import decode_entry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
CORPUS = os.path.join(FUZZ, "corpus")
FILES = sorted(os.listdir(CORPUS)) if os.path.isdir(CORPUS) else []
MAX_DECOMPRESSED = 1 << 20


def corpus_ids():
    return [f for f in FILES if f.endswith(".bin")]


def read(name):
    with open(os.path.join(CORPUS, name), "rb") as f:
        return f.read()


def test_corpus_has_every_kind_of_seed():
    names = corpus_ids()
    for prefix in ("valid-", "compressed-gzip", "compressed-snappy", "compressed-lz4",
                   "compressed-zstd", "control-commit", "control-abort", "truncated-", "pstate-"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_corpus_is_what_make_corpus_writes(tmp_path):
    """fuzz/make_corpus.py is deterministic and its output is committed."""
    subprocess.run([os.sys.executable, os.path.join(FUZZ, "make_corpus.py"), str(tmp_path)],
                   check=True, capture_output=True)
    for name in os.listdir(tmp_path):
        assert read(name) == (tmp_path / name).read_bytes(), name


def replay(data):
    """What the harness does, through the Python API: scan with and without
    the CRC check, decode every batch found (decompressing too), decode the
    whole input as a records region, a header list and a producer state."""
    decoded = 0
    for verify in (True, False):
        infos, end, rc = _bridge.scan(data, 0x7FFFFFFF, verify)
        assert 0 <= end <= len(data)
        assert sum(bi.size for bi in infos) == end
        for bi in infos:
            try:
                if bi.is_control:
                    codec.decode_control(data, bi)
                else:
                    decoded += len(codec.decode_batch(data, bi, MAX_DECOMPRESSED))
            except KafkaException:
                pass
    if data:
        for call in (lambda: _bridge.decode_records(data[1:], data[0], 0, 0),
                     lambda: _bridge.decode_headers(data[1:], data[0])):
            try:
                call()
            except KafkaException:
                pass
    try:
        decode_entry(data)
    except KafkaException:
        pass
    return decoded


@pytest.mark.parametrize("name", corpus_ids())
def test_python_decoders_survive_corpus_input(name):
    replay(read(name))


def test_valid_seeds_decode_to_their_records():
    assert replay(read("valid-keys-values.bin")) == 2 * 5
    assert replay(read("valid-many-records.bin")) == 2 * 300
    for name in ("gzip", "snappy", "lz4", "zstd"):
        data = read("compressed-%s.bin" % name)
        info = _bridge.scan(data)[0][0]
        assert info.compression == compression.NAMES[name]
        assert len(codec.decode_batch(data, info)) == 20


def test_damaged_seeds_stop_the_scan_where_the_damage_starts():
    for name in ("truncated-at-61.bin", "bitflip-record.bin", "bad-magic.bin",
                 "batch-length-huge.bin"):
        infos, end, rc = _bridge.scan(read(name))
        assert infos == [] and end == 0 and rc != 0, name
    huge = read("records-count-huge.bin")
    info = _bridge.scan(huge, verify_crc=False)
    assert info[0] == [] or info[2] != 0      # records_count no writer produces: refused


def test_records_count_from_disk_is_bounded_before_allocation():
    data = bytearray(read("valid-one-record.bin"))
    struct.pack_into(">i", data, 57, 0x7FFFFFFF)
    recs = bytes(data[61:])
    with pytest.raises(KafkaException):
        _bridge.decode_records(recs, 0x7FFFFFFF, 0, 0)     # no 15 GiB allocation first
    with pytest.raises(KafkaException):
        _bridge.decode_headers(recs, 0x7FFFFFFF)


# ---- the libFuzzer binary ----

def _clang():
    return shutil.which(os.environ.get("CC", "clang"))


@pytest.fixture(scope="module")
def fuzz_binary():
    if not _clang():
        pytest.skip("clang is not installed: the libFuzzer replay needs clang with the libFuzzer "
                    "runtime (Debian: apt-get install clang libclang-rt-14-dev)")
    r = subprocess.run(["bash", os.path.join(FUZZ, "run.sh"), "build"], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        if "fuzzer" in r.stderr and ("cannot find" in r.stderr or "not found" in r.stderr):
            pytest.skip("clang has no libFuzzer runtime (Debian: libclang-rt-14-dev): " +
                        r.stderr.strip()[-300:])
        pytest.fail("building the fuzz harness failed:\n" + r.stderr[-2000:])
    return os.path.join(FUZZ, "build", "fuzz_batch")


def test_libfuzzer_harness_replays_the_corpus_cleanly(fuzz_binary):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")
    r = subprocess.run([fuzz_binary, "-runs=0"] + [os.path.join(CORPUS, f) for f in corpus_ids()],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERROR" not in r.stderr, r.stderr[-3000:]
