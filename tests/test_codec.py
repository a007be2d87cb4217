"""The batch codec: Builder, scan, decode, control batches (pylog._bridge, pylog.codec).

Corruption is applied at named header offsets (the table in csrc/pylog.h).
Crafted batches get a valid CRC from _bridge.write_header, so the record
decoder itself, not the CRC, has to reject their contents.
"""
import random
import struct

import pytest

from pylog import _bridge, codec, compression
from pylog._native import lib
from pylog.errors import CorruptRecordError, KafkaError, KafkaException

from txn_support import zigzag as varint

# Header field offsets (record batch v2).
BASE_OFFSET = 0              # int64, outside the CRC
BATCH_LENGTH = 8             # int32, outside the CRC
PARTITION_LEADER_EPOCH = 12  # int32, outside the CRC
MAGIC = 16                   # int8, outside the CRC
CRC = 17                     # uint32, the CRC itself
ATTRIBUTES = 21              # first byte the CRC covers
HEADER = 61
INT32_MAX = 0x7FFFFFFF


# ---- helpers ----
def framed(body):
    """A record from its body bytes: the length varint, then the body."""
    return varint(len(body)) + body


def raw_record(key=b"k", value=b"v", headers=(), ts_delta=0, offset_delta=0,
               key_len=None, value_len=None, header_count=None, length=None, tail=b""):
    """One record's bytes; the *_len/count/length overrides write lies on purpose."""
    body = bytearray(b"\x00")
    body += varint(ts_delta) + varint(offset_delta)
    body += varint(len(key) if key_len is None and key is not None else
                   (-1 if key_len is None else key_len))
    body += key or b""
    body += varint(len(value) if value_len is None and value is not None else
                   (-1 if value_len is None else value_len))
    body += value or b""
    body += varint(len(headers) if header_count is None else header_count)
    for hk, hv in headers:
        body += varint(len(hk)) + hk
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    body += tail
    return varint(len(body) if length is None else length) + bytes(body)


def sealed(records, count, base_offset=0, attributes=0, last_offset_delta=None,
           base_timestamp=1000, max_timestamp=None, producer_id=-1, producer_epoch=-1,
           base_sequence=-1):
    """A batch around an arbitrary records region, with a correct CRC."""
    buf = bytearray(HEADER) + bytes(records)
    _bridge.write_header(
        buf, base_offset, attributes,
        max(count - 1, 0) if last_offset_delta is None else last_offset_delta,
        base_timestamp, base_timestamp if max_timestamp is None else max_timestamp,
        producer_id, producer_epoch, base_sequence, count)
    return buf


def batch(n=3, value_size=8, first_ts=1000, **kw):
    recs = [(first_ts + i, b"key-%d" % i, bytes([i % 256]) * value_size,
             [("h%d" % i, b"x"), ("null", None)]) for i in range(n)]
    return codec.encode_batch(recs, **kw)


def with_base_offset(buf, base_offset):
    out = bytearray(buf)
    struct.pack_into(">q", out, BASE_OFFSET, base_offset)   # outside the CRC
    return bytes(out)


def log_of(*counts):
    """Concatenated batches with contiguous offsets, like a segment file."""
    parts, off = [], 0
    for n in counts:
        parts.append(with_base_offset(batch(n), off))
        off += n
    return b"".join(parts), parts


def decode_crafted(buf):
    """Decode one batch whose CRC is valid but whose fields may lie.

    Goes through both entry points: decode_all (scan, then decode) and
    decode_batch on an unchecked header, which skips scan's sanity checks."""
    with pytest.raises(CorruptRecordError):
        codec.decode_all(bytes(buf))
    info = _bridge.parse_header(bytes(buf))
    with pytest.raises(CorruptRecordError):
        codec.decode_batch(bytes(buf), info)


# ---- Builder ----
class TestBuilder:
    @pytest.mark.parametrize("key_len,value_len,headers", [
        (-1, -1, []), (0, 0, []), (1, 1, [("a", b"b")]), (63, 64, []), (64, 63, []),
        (8191, 8192, [("k" * 63, None)]), (3, 100_000, [("x", b"y" * 300)] * 3),
    ])
    def test_record_size_matches_builder_growth(self, key_len, value_len, headers):
        b = _bridge.Builder()
        hbytes, hcount = codec.encode_headers(headers)
        key = None if key_len < 0 else b"k" * key_len
        value = None if value_len < 0 else b"v" * value_len
        # Timestamps and offsets grow so their varints cross size classes too.
        for i, ts_delta in enumerate([0, 1, -1, 63, 64, 70, 1 << 20, -(1 << 40), 1 << 62]):
            before = b.size
            b.append(1_000_000 + ts_delta, key, value, hbytes, hcount)
            assert b.size - before == _bridge.record_size(
                key_len, value_len, len(hbytes), hcount, ts_delta, i)

    def test_record_size_counts_offset_delta_varint_growth(self):
        b = _bridge.Builder()
        sizes = []
        for i in range(200):
            before = b.size
            b.append(5, b"k", b"v")
            sizes.append(b.size - before)
            assert sizes[-1] == _bridge.record_size(1, 1, 0, 0, 0, i)
        # zigzag: offset deltas 0..63 take 1 byte, 64.. take 2.
        assert sizes[63] + 1 == sizes[64]

    def test_size_includes_the_61_byte_header(self):
        b = _bridge.Builder()
        assert b.size == HEADER
        b.append(0, None, None)
        assert b.size == HEADER + _bridge.record_size(-1, -1)

    def test_finish_of_empty_builder_raises(self):
        b = _bridge.Builder()
        with pytest.raises(KafkaException) as ei:
            b.finish()
        assert ei.value.error.code() == KafkaError._INVALID_ARG

    def test_finish_after_reset_raises_like_empty(self):
        b = _bridge.Builder()
        b.append(1, b"k", b"v")
        b.reset()
        assert len(b) == 0 and b.size == HEADER
        with pytest.raises(KafkaException):
            b.finish()

    @pytest.mark.parametrize("codec_id", [compression.GZIP, compression.ZSTD])
    def test_seal_of_empty_builder_with_compression_raises(self, codec_id):
        with pytest.raises(KafkaException) as ei:
            codec.seal(_bridge.Builder(), -1, -1, -1, False, codec_id)
        assert ei.value.error.code() == KafkaError._INVALID_ARG

    def test_reset_reuses_the_builder_for_an_independent_batch(self):
        b = _bridge.Builder()
        for i in range(50):
            b.append(10_000 + i, b"old-%d" % i, b"x" * 1000)
        first = b.finish()
        b.reset()
        b.append(500, b"new", b"y")
        b.append(400, None, b"z")
        second = b.finish()
        infos, _, rc = _bridge.scan(second)
        assert rc == lib.PL_OK
        info = infos[0]
        assert (info.records_count, info.base_timestamp, info.max_timestamp) == (2, 500, 500)
        assert [(r.offset, r.timestamp, r.key, r.value) for r in codec.decode_batch(second, info)] \
            == [(0, 500, b"new", b"y"), (1, 400, None, b"z")]
        # The first batch was copied out by finish() and is unaffected by reuse.
        assert len(codec.decode_all(first)[1]) == 50

    def test_buffer_grows_from_the_minimum_capacity(self):
        b = _bridge.Builder(capacity=1)
        for i in range(300):
            b.append(i, b"k%d" % i, b"v" * 97)
        out = b.finish()
        assert len(out) == b.size
        assert [r.key for r in codec.decode_all(out)[1]] == [b"k%d" % i for i in range(300)]

    def test_one_mebibyte_values_round_trip(self):
        rng = random.Random(1)
        values = [rng.randbytes(1 << 20), b"\x00" * (1 << 20), rng.randbytes((1 << 20) + 1)]
        b = _bridge.Builder()
        for i, v in enumerate(values):
            b.append(i, b"big-%d" % i, v)
        out = b.finish()
        infos, end, rc = _bridge.scan(out)
        assert (rc, end, infos[0].records_count) == (lib.PL_OK, len(out), 3)
        assert [r.value for r in codec.decode_batch(out, infos[0])] == values

    def test_many_records_round_trip(self):
        n = 50_000
        b = _bridge.Builder()
        for i in range(n):
            b.append(1_600_000_000_000 + i // 7, b"%d" % i, b"value-%d" % (i * 31))
        out = b.finish(producer_id=9, producer_epoch=2, base_sequence=100)
        infos, _, rc = _bridge.scan(out)
        info = infos[0]
        assert rc == lib.PL_OK
        assert (info.records_count, info.last_offset_delta) == (n, n - 1)
        assert info.last_sequence == 100 + n - 1
        recs = codec.decode_batch(out, info)
        assert len(recs) == n
        for i in (0, 1, 63, 64, 8191, 8192, n - 1):
            r = recs[i]
            assert (r.offset, r.timestamp, r.key, r.value) == (
                i, 1_600_000_000_000 + i // 7, b"%d" % i, b"value-%d" % (i * 31))

    def test_records_region_is_the_batch_after_the_header(self):
        b = _bridge.Builder()
        b.append(7, b"a", b"b", *codec.encode_headers([("h", b"v")]))
        region = b.records()
        assert b.finish()[HEADER:] == region

    def test_timestamps_out_of_order_keep_first_as_base_and_track_max(self):
        b = _bridge.Builder()
        for ts in (5000, 4000, 9000, -1, 7000):
            b.append(ts, None, b"v")
        assert (b.base_timestamp, b.max_timestamp) == (5000, 9000)
        out = b.finish()
        infos, _, _ = _bridge.scan(out)
        assert [r.timestamp for r in codec.decode_batch(out, infos[0])] == [5000, 4000, 9000, -1, 7000]

    def test_extreme_timestamp_deltas_use_ten_byte_varlongs(self):
        b = _bridge.Builder()
        for ts in (0, (1 << 63) - 1, -(1 << 63)):
            b.append(ts, None, None)
        out = b.finish()
        infos, _, rc = _bridge.scan(out)
        assert rc == lib.PL_OK
        assert [r.timestamp for r in codec.decode_batch(out, infos[0])] == [0, (1 << 63) - 1, -(1 << 63)]

    def test_negative_header_count_is_an_invalid_argument(self):
        b = _bridge.Builder()
        with pytest.raises(KafkaException) as ei:
            b.append(0, b"k", b"v", b"", -1)
        assert ei.value.error.code() == KafkaError._INVALID_ARG
        assert len(b) == 0

    def test_finish_writes_producer_fields_and_attributes(self):
        b = _bridge.Builder()
        b.append(1, b"k", b"v")
        out = b.finish(producer_id=123456789012, producer_epoch=7, base_sequence=42,
                       attributes=codec.ATTR_TRANSACTIONAL)
        info = _bridge.scan(out)[0][0]
        assert (info.producer_id, info.producer_epoch, info.base_sequence) == (123456789012, 7, 42)
        assert info.is_transactional and not info.is_control
        assert info.partition_leader_epoch == -1 and info.base_offset == 0


# ---- encode / decode ----
class TestEncodeDecode:
    def test_encode_headers_accepts_pairs_dicts_str_and_null_values(self):
        want = varint(1) + b"a" + varint(1) + b"b" + varint(2) + b"\xc3\xa9" + varint(-1)
        assert codec.encode_headers([("a", b"b"), ("\u00e9", None)]) == (want, 2)
        assert codec.encode_headers({"a": "b", "\u00e9": None}) == (want, 2)
        assert codec.encode_headers([(b"a", bytearray(b"b")), (b"\xc3\xa9", None)]) == (want, 2)
        assert codec.encode_headers(None) == (b"", 0)
        assert codec.encode_headers([]) == (b"", 0)

    @pytest.mark.parametrize("bad", [[("k",)], [("k", 5)], [(5, b"v")], ["abc"], [None]])
    def test_encode_headers_rejects_malformed_pairs(self, bad):
        with pytest.raises(TypeError):
            codec.encode_headers(bad)

    def test_round_trip_of_null_empty_and_header_edge_cases(self):
        recs = [
            (1, None, None, None),
            (2, b"", b"", []),
            (3, b"k", None, [("", b"")]),
            (4, None, b"v", [("dup", b"1"), ("dup", b"2"), ("null", None)]),
        ]
        infos, got = codec.decode_all(codec.encode_batch(recs))
        assert len(infos) == 1
        assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in got] == [
            (0, 1, None, None, []),
            (1, 2, b"", b"", []),
            (2, 3, b"k", None, [("", b"")]),
            (3, 4, None, b"v", [("dup", b"1"), ("dup", b"2"), ("null", None)]),
        ]

    @pytest.mark.parametrize("codec_id", [compression.NONE, compression.GZIP, compression.SNAPPY,
                                          compression.LZ4, compression.ZSTD])
    def test_compressed_batches_round_trip(self, codec_id):
        recs = [(100 + i, b"k%d" % i, b"value %d " % i * 20, [("i", b"%d" % i)])
                for i in range(500)]
        buf = codec.encode_batch(recs, producer_id=3, producer_epoch=1, base_sequence=0,
                                 codec=codec_id)
        infos, got = codec.decode_all(buf)
        assert infos[0].compression == codec_id
        assert infos[0].records_count == 500
        assert [(r.timestamp, r.key, r.value, r.headers) for r in got] == \
            [(ts, k, v, h) for ts, k, v, h in recs]

    def test_log_append_time_batches_report_the_max_timestamp(self):
        region = raw_record(ts_delta=0) + raw_record(ts_delta=5, offset_delta=1)
        buf = sealed(region, 2, attributes=codec.ATTR_LOG_APPEND_TIME,
                     base_timestamp=100, max_timestamp=777)
        _, got = codec.decode_all(bytes(buf))
        assert [r.timestamp for r in got] == [777, 777]

    def test_decode_batch_refuses_a_region_over_max_decompressed(self):
        recs = [(0, None, b"\x00" * 10_000, None)] * 100
        buf = codec.encode_batch(recs, codec=compression.ZSTD)
        info = _bridge.scan(buf)[0][0]
        with pytest.raises(CorruptRecordError):
            codec.decode_batch(buf, info, max_decompressed=100_000)
        assert len(codec.decode_batch(buf, info, max_decompressed=2_000_000)) == 100

    def test_decode_batch_of_a_batch_in_the_middle_of_a_buffer(self):
        log, parts = log_of(2, 3, 4)
        infos, _, _ = _bridge.scan(log)
        recs = codec.decode_batch(log, infos[1])
        assert [r.offset for r in recs] == [2, 3, 4]
        assert [r.key for r in recs] == [b"key-0", b"key-1", b"key-2"]

    def test_decode_all_raises_on_a_damaged_buffer(self):
        log, _ = log_of(2, 2)
        with pytest.raises(CorruptRecordError):
            codec.decode_all(log[:-1])


# ---- control batches ----
class TestControlBatch:
    @pytest.mark.parametrize("commit,ctype", [(True, codec.CONTROL_COMMIT), (False, codec.CONTROL_ABORT)])
    def test_marker_layout_and_decode(self, commit, ctype):
        buf = _bridge.control_batch(77, 3, commit, 12, 1_700_000_000_000)
        assert len(buf) == _bridge.CONTROL_BATCH_SIZE == 78
        infos, end, rc = _bridge.scan(buf)
        info = infos[0]
        assert (rc, end) == (lib.PL_OK, 78)
        assert info.is_control and info.is_transactional
        assert info.attributes == 0x30 and info.compression == 0
        assert (info.producer_id, info.producer_epoch, info.base_sequence) == (77, 3, -1)
        assert (info.records_count, info.last_offset_delta) == (1, 0)
        assert info.base_timestamp == info.max_timestamp == 1_700_000_000_000
        assert codec.decode_control(buf, info) == (ctype, 12)
        rec = codec.decode_batch(buf, info)[0]
        assert rec.key == struct.pack(">hh", 0, ctype)
        assert rec.value == struct.pack(">hi", 0, 12)
        assert rec.headers == []

    def test_negative_coordinator_epoch_round_trips(self):
        buf = _bridge.control_batch(1, 0, False, -1, 0)
        assert codec.decode_control(buf, _bridge.scan(buf)[0][0]) == (codec.CONTROL_ABORT, -1)

    def test_decode_all_hands_out_no_control_records(self):
        log = batch(2) + with_base_offset(_bridge.control_batch(5, 0, True, 0, 0), 2)
        infos, recs = codec.decode_all(log)
        assert [i.is_control for i in infos] == [False, True]
        assert [r.offset for r in recs] == [0, 1]

    def test_decode_control_rejects_a_control_batch_without_a_key(self):
        buf = sealed(raw_record(key=None, value=b"\x00\x00\x00\x00\x00\x01"), 1,
                     attributes=0x30, producer_id=5, producer_epoch=0)
        info = _bridge.scan(bytes(buf))[0][0]
        with pytest.raises(CorruptRecordError):
            codec.decode_control(bytes(buf), info)


# ---- scan ----
class TestScan:
    def test_clean_buffer_reports_every_batch_and_ends_ok(self):
        log, parts = log_of(3, 1, 5)
        infos, end, rc = _bridge.scan(log, expect_offset=0)
        assert (rc, end) == (lib.PL_OK, len(log))
        assert [i.base_offset for i in infos] == [0, 3, 4]
        assert [i.next_offset for i in infos] == [3, 4, 9]
        assert [i.size for i in infos] == [len(p) for p in parts]
        assert [i.position for i in infos] == [0, len(parts[0]), len(parts[0]) + len(parts[1])]

    def test_empty_buffer_is_ok_with_no_batches(self):
        assert _bridge.scan(b"") == ([], 0, lib.PL_OK)

    def test_truncating_the_last_batch_at_every_byte_keeps_the_earlier_ones(self):
        log, parts = log_of(2, 3, 4)
        last = len(parts[0]) + len(parts[1])
        for cut in range(last + 1, len(log)):
            infos, end, rc = _bridge.scan(log[:cut], expect_offset=0)
            # A cut inside the length field itself (cut - last < 12) is torn too:
            # fewer than 12 bytes cannot even hold baseOffset + batchLength.
            assert (rc, end, len(infos)) == (lib.PL_ETORN, last, 2), cut
        assert _bridge.scan(log, expect_offset=0)[2] == lib.PL_OK

    def test_truncating_anywhere_reports_the_batches_wholly_before_the_cut(self):
        log, parts = log_of(1, 2, 1)
        bounds = [0]
        for p in parts:
            bounds.append(bounds[-1] + len(p))
        for cut in range(len(log) + 1):
            infos, end, rc = _bridge.scan(log[:cut])
            whole = max(i for i, b in enumerate(bounds) if b <= cut)
            assert (len(infos), end) == (whole, bounds[whole]), cut
            assert rc == (lib.PL_OK if cut in bounds else lib.PL_ETORN), cut

    @pytest.mark.parametrize("length", [0, 1, HEADER - 13, -1, -(1 << 31), INT32_MAX])
    def test_garbled_length_field_gives_elength(self, length):
        log, parts = log_of(2, 2)
        bad = bytearray(log)
        struct.pack_into(">i", bad, len(parts[0]) + BATCH_LENGTH, length)
        infos, end, rc = _bridge.scan(bytes(bad))
        assert (rc, end, len(infos)) == (lib.PL_ELENGTH, len(parts[0]), 1)

    def test_smallest_legal_length_is_a_bare_header(self):
        buf = sealed(b"", 0)
        infos, end, rc = _bridge.scan(bytes(buf))
        assert (rc, end, infos[0].size, infos[0].records_count) == (lib.PL_OK, HEADER, HEADER, 0)
        assert codec.decode_batch(bytes(buf), infos[0]) == []

    def test_zero_filled_tail_stops_with_elength(self):
        # A preallocated or sparse file tail reads as zeros: batchLength 0.
        log, _ = log_of(2)
        infos, end, rc = _bridge.scan(log + bytes(4096))
        assert (rc, end, len(infos)) == (lib.PL_ELENGTH, len(log), 1)

    @pytest.mark.parametrize("magic", [0, 1, 3, 0x82, 0xFF])
    def test_bad_magic_gives_emagic(self, magic):
        log, parts = log_of(2, 2)
        bad = bytearray(log)
        bad[len(parts[0]) + MAGIC] = magic
        infos, end, rc = _bridge.scan(bytes(bad))
        assert (rc, end, len(infos)) == (lib.PL_EMAGIC, len(parts[0]), 1)

    def test_bad_magic_is_reported_even_when_the_batch_is_also_torn(self):
        buf = bytearray(batch(2))
        buf[MAGIC] = 1
        assert _bridge.scan(bytes(buf[:40]))[2] == lib.PL_EMAGIC
        # With 16 bytes or fewer the magic byte is not there to read.
        assert _bridge.scan(bytes(buf[:16]))[2] == lib.PL_ETORN

    def test_first_batch_not_at_expect_offset_gives_eoffset(self):
        log, _ = log_of(2, 2)
        infos, end, rc = _bridge.scan(log, expect_offset=5)
        assert (rc, end, infos) == (lib.PL_EOFFSET, 0, [])

    def test_gap_between_batches_gives_eoffset(self):
        a = with_base_offset(batch(2), 10)
        b = with_base_offset(batch(2), 13)          # 12 expected
        infos, end, rc = _bridge.scan(a + b, expect_offset=10)
        assert (rc, end, len(infos)) == (lib.PL_EOFFSET, len(a), 1)
        # Without expect_offset, scan does not judge offsets.
        assert _bridge.scan(a + b)[2] == lib.PL_OK

    def test_overlapping_batches_give_eoffset(self):
        a = with_base_offset(batch(3), 0)
        b = with_base_offset(batch(3), 2)
        assert _bridge.scan(a + b, expect_offset=0)[2] == lib.PL_EOFFSET

    def test_batch_larger_than_max_batch_size_gives_elength(self):
        log, parts = log_of(1, 50)
        big = len(parts[1])
        infos, end, rc = _bridge.scan(log, max_batch_size=big - 1)
        assert (rc, end, len(infos)) == (lib.PL_ELENGTH, len(parts[0]), 1)
        assert _bridge.scan(log, max_batch_size=big)[2] == lib.PL_OK

    def test_more_batches_than_one_native_call_holds_are_all_reported(self):
        # The bridge's output array holds 1024 infos; scan must continue, offsets too.
        n = 2500
        one = batch(1, value_size=1)
        log = b"".join(with_base_offset(one, i) for i in range(n))
        infos, end, rc = _bridge.scan(log, expect_offset=0)
        assert (rc, end, len(infos)) == (lib.PL_OK, len(log), n)
        assert [i.base_offset for i in infos] == list(range(n))
        assert infos[-1].position == (n - 1) * len(one)
        bad = bytearray(log)
        struct.pack_into(">q", bad, 1500 * len(one), 7)
        infos, end, rc = _bridge.scan(bytes(bad), expect_offset=0)
        assert (rc, len(infos), end) == (lib.PL_EOFFSET, 1500, 1500 * len(one))

    def test_start_and_limit_scan_a_window_with_positions_relative_to_buf(self):
        log, parts = log_of(2, 3, 4)
        s1 = len(parts[0])
        s2 = s1 + len(parts[1])
        infos, end, rc = _bridge.scan(log, start=s1, limit=s2, expect_offset=2)
        assert (rc, end) == (lib.PL_OK, s2)
        assert [(i.position, i.base_offset) for i in infos] == [(s1, 2)]

    def test_crc_mismatch_gives_ecrc_unless_verification_is_off(self):
        for pos in (CRC, CRC + 3, ATTRIBUTES, -1):
            buf = bytearray(batch(2))
            buf[pos] ^= 0x01
            assert _bridge.scan(bytes(buf))[2] == lib.PL_ECRC
            assert _bridge.scan(bytes(buf), verify_crc=False)[2] == lib.PL_OK

    @pytest.mark.parametrize("field,value", [
        ("codec", 5), ("codec", 7),
        ("records_count", -1), ("records_count", 1000),
        ("last_offset_delta", -1), ("last_offset_delta", 0),
        ("base_offset", -1), ("base_offset", (1 << 63) - 2),
    ])
    def test_headers_no_writer_produces_give_ecorrupt(self, field, value):
        region = raw_record() + raw_record(offset_delta=1)
        kw = dict(count=2)
        if field == "codec":
            kw["attributes"] = value
        elif field == "records_count":
            kw["count"] = value
            kw["last_offset_delta"] = 1
        elif field == "last_offset_delta":
            kw["last_offset_delta"] = value
        else:
            kw["base_offset"] = value
        buf = bytes(sealed(region, **kw))
        infos, end, rc = _bridge.scan(buf)
        assert (rc, end, infos) == (lib.PL_ECORRUPT, 0, [])

    @pytest.mark.parametrize("start,limit", [(0, 10_000), (-1, None), (50, 40), (10_000, None)])
    def test_scan_window_outside_the_buffer_is_an_invalid_argument(self, start, limit):
        # Regression: the window went to C unchecked, which read past the buffer.
        with pytest.raises(KafkaException) as ei:
            _bridge.scan(batch(1), start=start, limit=limit)
        assert ei.value.error.code() == KafkaError._INVALID_ARG

    @pytest.mark.parametrize("position", [-10, 10_000])
    def test_parse_header_position_outside_the_buffer_is_an_invalid_argument(self, position):
        # Regression: a negative position made C read bytes before the buffer.
        with pytest.raises(KafkaException) as ei:
            _bridge.parse_header(batch(1), position)
        assert ei.value.error.code() == KafkaError._INVALID_ARG

    def test_parse_header_of_a_short_tail_is_torn(self):
        buf = batch(1)
        with pytest.raises(CorruptRecordError, match="truncated"):
            _bridge.parse_header(buf, len(buf) - 60)
        assert _bridge.parse_header(buf + buf, len(buf)).position == len(buf)

    def test_reasons_have_names(self):
        for rc in (lib.PL_OK, lib.PL_ETORN, lib.PL_ECRC, lib.PL_EMAGIC, lib.PL_ELENGTH,
                   lib.PL_ECORRUPT, lib.PL_EOFFSET):
            assert rc in _bridge.SCAN_REASONS


# ---- bit flips ----
def _expected_after_flip(bad, byte, expect_offset):
    """What scan must say about a lone batch with a bit of `byte` flipped (None = OK)."""
    if byte < BATCH_LENGTH:                         # baseOffset: outside the CRC
        if struct.unpack_from(">q", bad, BASE_OFFSET)[0] < 0:
            return lib.PL_ECORRUPT
        return lib.PL_EOFFSET if expect_offset >= 0 else None
    if byte < PARTITION_LEADER_EPOCH:               # batchLength: outside the CRC
        length = struct.unpack_from(">i", bad, BATCH_LENGTH)[0]
        if length < HEADER - 12 or length + 12 > INT32_MAX:
            return lib.PL_ELENGTH
        if length + 12 > len(bad):
            return lib.PL_ETORN
        return lib.PL_ECRC                          # shorter: CRC over the wrong range
    if byte < MAGIC:                                # partitionLeaderEpoch: not validated
        return None
    if byte == MAGIC:
        return lib.PL_EMAGIC
    return lib.PL_ECRC                              # the CRC field or the bytes it covers


class TestBitFlips:
    def test_every_single_bit_flip_of_a_small_batch_is_caught_or_harmless(self):
        buf = batch(2, value_size=4)
        want_recs = codec.decode_all(buf)[1]
        epoch = _bridge.scan(buf)[0][0].partition_leader_epoch
        assert len(buf) < 200
        for byte in range(len(buf)):
            for bit in range(8):
                bad = bytearray(buf)
                bad[byte] ^= 1 << bit
                bad = bytes(bad)
                for expect in (0, -1):
                    infos, end, rc = _bridge.scan(bad, expect_offset=expect)
                    want = _expected_after_flip(bad, byte, expect)
                    if want is None:
                        assert (rc, end) == (lib.PL_OK, len(buf)), (byte, bit)
                    else:
                        assert (rc, end, infos) == (want, 0, []), (byte, bit, expect)
                # decode_all scans without expect_offset (the last loop's setting).
                if want is not None:
                    with pytest.raises(CorruptRecordError):
                        codec.decode_all(bad)
                    continue
                # Bits outside the CRC that scan cannot judge alone: the changed
                # field is visible and nothing else moves.
                info = infos[0]
                got = codec.decode_all(bad)[1]
                if PARTITION_LEADER_EPOCH <= byte < MAGIC:
                    flipped = struct.unpack_from(">i", bad, PARTITION_LEADER_EPOCH)[0]
                    assert info.partition_leader_epoch == flipped != epoch
                    assert got == want_recs
                else:                               # baseOffset, caught by expect_offset
                    delta = 1 << (8 * (7 - byte) + bit)
                    assert info.base_offset == delta
                    assert [r.offset for r in got] == [r.offset + delta for r in want_recs]
                    assert [r.value for r in got] == [r.value for r in want_recs]

    def test_sampled_bit_flips_in_the_middle_batch_stop_the_scan_before_it(self):
        log, parts = log_of(2, 40, 2)
        start = len(parts[0])
        rng = random.Random(5)
        for _ in range(1500):
            pos = start + rng.randrange(len(parts[1]))
            bit = rng.randrange(8)
            bad = bytearray(log)
            bad[pos] ^= 1 << bit
            infos, end, rc = _bridge.scan(bytes(bad), expect_offset=0)
            if PARTITION_LEADER_EPOCH <= pos - start < MAGIC:
                assert rc == lib.PL_OK
                continue
            assert rc != lib.PL_OK, (pos - start, bit)
            assert (end, len(infos)) == (start, 1), (pos - start, bit)

    def test_every_bit_flip_in_a_compressed_batch_body_is_a_crc_error(self):
        buf = batch(30, codec=compression.ZSTD)
        for pos in range(ATTRIBUTES, len(buf)):
            for bit in range(8):
                bad = bytearray(buf)
                bad[pos] ^= 1 << bit
                assert _bridge.scan(bytes(bad))[2] == lib.PL_ECRC, (pos, bit)


# ---- decode robustness: valid CRC, insane contents ----
BAD_REGIONS = {
    "count_larger_than_bytes_allow": (raw_record(), 1000),
    "count_one_more_than_present": (raw_record() + raw_record(offset_delta=1), 3),
    "count_fewer_than_present": (raw_record() + raw_record(offset_delta=1), 1),
    "trailing_garbage_after_last_record": (raw_record() + b"\x00" * 7, 1),
    "trailing_single_byte": (raw_record() + b"\x01", 1),
    "record_length_past_end": (raw_record(length=200), 1),
    "record_length_short": (raw_record(key=b"abc", length=8), 1),
    "record_length_negative": (raw_record(length=-5), 1),
    "record_length_varint_6_bytes": (b"\x80\x80\x80\x80\x80\x00" + raw_record()[1:], 1),
    "record_length_varint_never_ends": (b"\xff" * 20, 1),
    # attributes, an 11-byte timestampDelta, then offsetDelta/key/value/headers all 0.
    "timestamp_varlong_11_bytes": (framed(b"\x00" + b"\x80" * 10 + b"\x00" + b"\x00" * 4), 1),
    "key_length_past_end": (raw_record(key=b"abc", key_len=50), 1),
    "key_length_past_record_but_inside_region": (
        raw_record(key=b"abc", key_len=10) + raw_record(offset_delta=1), 2),
    "key_length_minus_2": (raw_record(key=b"", key_len=-2), 1),
    "key_length_int32_min": (raw_record(key=b"", key_len=-(1 << 31)), 1),
    # attributes, timestampDelta, offsetDelta, then keyLength 0 spelt in 6 bytes.
    "key_length_varint_6_bytes": (framed(b"\x00\x00\x00" + b"\x80" * 5 + b"\x00" + b"\x00\x00"), 1),
    # 5 bytes, but the value (-2^34) does not fit an int32.
    "key_length_5_byte_varint_over_int32": (framed(b"\x00\x00\x00" + b"\xff" * 4 + b"\x7f" + b"\x00\x00"), 1),
    "value_length_past_end": (raw_record(value=b"v", value_len=1 << 30), 1),
    "value_length_minus_5": (raw_record(value=b"", value_len=-5), 1),
    "header_count_too_big": (raw_record(header_count=1000), 1),
    "header_count_one_more_than_present": (raw_record(headers=[(b"a", b"b")], header_count=2), 1),
    "header_count_negative": (raw_record(header_count=-1), 1),
    "header_key_null": (raw_record(header_count=1, tail=varint(-1) + varint(1) + b"v"), 1),
    "header_key_length_past_end": (raw_record(header_count=1, tail=varint(40) + b"k" + varint(0)), 1),
    "header_value_length_past_end": (raw_record(header_count=1, tail=varint(1) + b"k" + varint(40)), 1),
    "header_value_length_minus_2": (raw_record(header_count=1, tail=varint(1) + b"k" + varint(-2)), 1),
    "offset_delta_negative": (raw_record(offset_delta=-1), 1),
    # offsetDelta 2^32 in a 5-byte varint: in bounds, but not an int32.
    "offset_delta_5_byte_varint_over_int32": (
        framed(b"\x00\x00" + b"\x80\x80\x80\x80\x20" + b"\x01\x01\x00"), 1),
    "garbage_inside_record_after_headers": (raw_record(tail=b"\x00\x00"), 1),
}


class TestDecodeRobustness:
    @pytest.mark.parametrize("name", sorted(BAD_REGIONS))
    def test_crafted_batch_with_valid_crc_raises_corrupt_record(self, name):
        region, count = BAD_REGIONS[name]
        buf = sealed(region, count, last_offset_delta=max(count - 1, 0))
        decode_crafted(buf)

    def test_crafted_regions_decode_when_told_the_truth(self):
        # Sanity check of the crafting helpers: honest records decode.
        region = (raw_record(key=b"k1", value=None, headers=[(b"h", None)]) +
                  raw_record(key=None, value=b"v2", ts_delta=-3, offset_delta=1))
        _, recs = codec.decode_all(bytes(sealed(region, 2, base_timestamp=50)))
        assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs] == [
            (0, 50, b"k1", None, [("h", None)]), (1, 47, None, b"v2", [])]

    def test_huge_record_count_is_refused_before_allocating(self):
        buf = bytes(sealed(raw_record(), INT32_MAX, last_offset_delta=INT32_MAX))
        info = _bridge.parse_header(buf)
        with pytest.raises(CorruptRecordError):
            codec.decode_batch(buf, info)
        with pytest.raises(CorruptRecordError):
            _bridge.decode_records(b"\x00" * 10, INT32_MAX, 0, 0)
        with pytest.raises(CorruptRecordError):
            _bridge.decode_records(b"\x00" * 10, -1, 0, 0)

    def test_huge_header_count_is_refused_before_allocating(self):
        # Regression: decode_headers allocated 32 bytes per claimed header
        # (64 GiB for INT32_MAX) before the C side validated the count.
        with pytest.raises(CorruptRecordError):
            _bridge.decode_headers(b"\x02k\x01", INT32_MAX)
        with pytest.raises(CorruptRecordError):
            _bridge.decode_headers(b"\x02k\x01", -1)
        assert _bridge.decode_headers(b"\x02k\x01", 1) == [("k", None)]

    def test_compressed_batch_with_garbage_payload_raises(self):
        for codec_id in (1, 2, 3, 4):
            buf = sealed(b"this is not compressed at all", 1, attributes=codec_id)
            decode_crafted(buf)

    def test_compressed_batch_whose_records_lie_raises(self):
        for codec_id in (1, 2, 3, 4):
            region = compression.compress(codec_id, raw_record(header_count=50))
            decode_crafted(sealed(region, 1, attributes=codec_id))

    def test_every_bit_flip_of_the_records_with_a_fixed_crc_decodes_or_raises(self):
        # Simulates damage that slipped past the CRC (or a buggy writer): the
        # decoder may accept a different record, but must never misbehave.
        region = (raw_record(key=b"key", value=b"value", headers=[(b"h", b"1"), (b"n", None)]) +
                  raw_record(key=None, value=b"v" * 70, offset_delta=1, ts_delta=200))
        for pos in range(len(region)):
            for bit in range(8):
                bad = bytearray(region)
                bad[pos] ^= 1 << bit
                buf = bytes(sealed(bad, 2))
                try:
                    _, recs = codec.decode_all(buf)
                except CorruptRecordError:
                    continue
                assert len(recs) == 2
                for r in recs:
                    assert r.key is None or len(r.key) <= len(region)
                    assert r.value is None or len(r.value) <= len(region)

    def test_every_truncation_of_the_records_with_a_fixed_crc_raises(self):
        region = raw_record(key=b"key", value=b"value", headers=[(b"h", b"1")]) + \
            raw_record(offset_delta=1)
        for cut in range(len(region)):
            decode_crafted(sealed(region[:cut], 2))

    def test_random_garbage_regions_with_a_valid_crc_never_escape(self):
        rng = random.Random(99)
        for _ in range(3000):
            region = rng.randbytes(rng.randrange(0, 60))
            count = rng.choice([0, 1, 2, 3, rng.randrange(0, 100)])
            buf = bytes(sealed(region, count))
            try:
                codec.decode_all(buf)
            except CorruptRecordError:
                pass
