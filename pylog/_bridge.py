"""The only importer of the compiled module: wraps C calls, turns rc into exceptions.

Every PL_E* code the C side returns maps, in _ERRORS below, to one
KafkaError code and a message; nothing else in pylog reads C return codes.
"""
from ._native import ffi, lib
from .errors import KafkaError, KafkaException, CorruptRecordError

lib.pl_init()

HEADER_SIZE = lib.PL_HEADER_SIZE
LOG_OVERHEAD = lib.PL_LOG_OVERHEAD
CONTROL_BATCH_SIZE = lib.PL_CONTROL_BATCH_SIZE
REC_FIELDS = lib.PL_REC_FIELDS

# Why a scan stopped, as the log layer reports it.
SCAN_REASONS = {
    lib.PL_OK: "end",
    lib.PL_ETORN: "torn",
    lib.PL_ECRC: "bad crc",
    lib.PL_EMAGIC: "bad magic",
    lib.PL_ELENGTH: "length out of range",
    lib.PL_ECORRUPT: "corrupt header",
    lib.PL_EOFFSET: "offset out of sequence",
}

_ERRORS = {
    lib.PL_ETORN: (KafkaError.CORRUPT_MESSAGE, "batch is truncated"),
    lib.PL_ECRC: (KafkaError.CORRUPT_MESSAGE, "CRC-32C mismatch"),
    lib.PL_EMAGIC: (KafkaError.CORRUPT_MESSAGE, "unsupported magic byte (only record batch v2 is read)"),
    lib.PL_ELENGTH: (KafkaError.CORRUPT_MESSAGE, "batch length out of range"),
    lib.PL_ECORRUPT: (KafkaError.CORRUPT_MESSAGE, "record fields are inconsistent"),
    lib.PL_EOFFSET: (KafkaError.CORRUPT_MESSAGE, "offsets are not contiguous"),
    lib.PL_ENOMEM: (KafkaError._FAIL, "out of memory"),
    lib.PL_EARG: (KafkaError._INVALID_ARG, "invalid argument"),
    lib.PL_ETOOLARGE: (KafkaError.MSG_SIZE_TOO_LARGE, "record or batch too large"),
}


def raise_for(rc, context=""):
    """Raise the exception that PL_E* code rc stands for."""
    code, text = _ERRORS.get(rc, (KafkaError._FAIL, "native error %d" % rc))
    msg = "%s: %s" % (context, text) if context else text
    if code == KafkaError.CORRUPT_MESSAGE:
        raise CorruptRecordError(msg)
    if code == KafkaError._FAIL and rc == lib.PL_ENOMEM:
        raise MemoryError(msg)
    raise KafkaException(KafkaError(code, msg))


# ---- CRC-32C ----
def crc32c(data, crc=0):
    return lib.pl_crc32c(crc, ffi.from_buffer(data), len(data))


def crc32c_sw(data, crc=0):
    return lib.pl_crc32c_sw(crc, ffi.from_buffer(data), len(data))


def crc32c_hw(data, crc=0):
    return lib.pl_crc32c_hw(crc, ffi.from_buffer(data), len(data))


def crc32c_hw_available():
    return bool(lib.pl_crc32c_hw_available())


# ---- batch headers ----
class BatchInfo:
    """One batch's v2 header plus where it sits (position, size in bytes)."""

    __slots__ = ("base_offset", "partition_leader_epoch", "crc", "attributes",
                 "last_offset_delta", "base_timestamp", "max_timestamp", "producer_id",
                 "producer_epoch", "base_sequence", "records_count", "position", "size")

    def __init__(self, h, position, size):
        self.base_offset = h.base_offset
        self.partition_leader_epoch = h.partition_leader_epoch
        self.crc = h.crc
        self.attributes = h.attributes
        self.last_offset_delta = h.last_offset_delta
        self.base_timestamp = h.base_timestamp
        self.max_timestamp = h.max_timestamp
        self.producer_id = h.producer_id
        self.producer_epoch = h.producer_epoch
        self.base_sequence = h.base_sequence
        self.records_count = h.records_count
        self.position = position
        self.size = size

    @property
    def last_offset(self):
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self):
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self):
        return self.attributes & 0x07

    @property
    def is_transactional(self):
        return bool(self.attributes & 0x10)

    @property
    def is_control(self):
        return bool(self.attributes & 0x20)

    @property
    def last_sequence(self):
        """baseSequence + lastOffsetDelta, wrapping from 2^31-1 to 0 (-1 if none)."""
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % 0x80000000

    def __repr__(self):
        return ("BatchInfo(base_offset=%d, last_offset=%d, count=%d, position=%d, size=%d, "
                "pid=%d, epoch=%d, seq=%d, attrs=0x%x)" % (
                    self.base_offset, self.last_offset, self.records_count, self.position,
                    self.size, self.producer_id, self.producer_epoch, self.base_sequence,
                    self.attributes))


_SCAN_CAP = 1024


def scan(buf, max_batch_size=0x7FFFFFFF, verify_crc=True, expect_offset=-1, start=0, limit=None):
    """Validate whole batches in buf[start:limit].

    Returns (infos, valid_end, reason): the batches found (positions relative
    to buf), the byte position where the valid prefix ends, and a PL_* code
    saying why it ends (PL_OK means the region ended cleanly)."""
    end = len(buf) if limit is None else limit
    # C trusts the length it is given: a window past the buffer would be read.
    if not 0 <= start <= end <= len(buf):
        raise KafkaException(KafkaError(
            KafkaError._INVALID_ARG,
            "scan window [%d, %d) is outside the %d-byte buffer" % (start, end, len(buf))))
    base = ffi.from_buffer(buf)
    out = ffi.new("pl_batch_info[]", _SCAN_CAP)
    n = ffi.new("size_t *")
    valid = ffi.new("size_t *")
    infos = []
    pos = start
    while True:
        rc = lib.pl_scan(base + pos, end - pos, max_batch_size, 1 if verify_crc else 0,
                         expect_offset, out, _SCAN_CAP, n, valid)
        for i in range(n[0]):
            bi = out[i]
            infos.append(BatchInfo(bi.h, pos + bi.position, bi.size))
        pos += valid[0]
        if rc != lib.PL_EFULL:
            return infos, pos, rc
        if expect_offset >= 0 and infos:
            expect_offset = infos[-1].next_offset


def parse_header(buf, position=0):
    """Header fields of the batch at buf[position:] without checking its CRC."""
    if not 0 <= position <= len(buf):       # a negative position would read before buf
        raise KafkaException(KafkaError(
            KafkaError._INVALID_ARG,
            "header position %d is outside the %d-byte buffer" % (position, len(buf))))
    h = ffi.new("pl_batch_hdr *")
    rc = lib.pl_parse_header(ffi.from_buffer(buf) + position, len(buf) - position, h)
    if rc:
        raise_for(rc, "batch header")
    size = h.batch_length + LOG_OVERHEAD
    return BatchInfo(h, position, size)


def write_header(buf, base_offset, attributes, last_offset_delta, base_timestamp,
                 max_timestamp, producer_id, producer_epoch, base_sequence, records_count,
                 partition_leader_epoch=-1):
    """Fill the 61-byte header of bytearray buf (records already at buf[61:]) and its CRC."""
    h = ffi.new("pl_batch_hdr *", {
        "base_offset": base_offset, "partition_leader_epoch": partition_leader_epoch,
        "attributes": attributes, "last_offset_delta": last_offset_delta,
        "base_timestamp": base_timestamp, "max_timestamp": max_timestamp,
        "producer_id": producer_id, "producer_epoch": producer_epoch,
        "base_sequence": base_sequence, "records_count": records_count})
    rc = lib.pl_batch_write_header(ffi.from_buffer(buf), len(buf), h)
    if rc:
        raise_for(rc, "batch header")


def control_batch(producer_id, producer_epoch, commit, coordinator_epoch, timestamp):
    """A COMMIT (commit=True) or ABORT transaction marker batch, as bytes."""
    out = bytearray(CONTROL_BATCH_SIZE)
    rc = lib.pl_control_batch(ffi.from_buffer(out), len(out), producer_id, producer_epoch,
                              1 if commit else 0, coordinator_epoch, timestamp)
    if rc:
        raise_for(rc, "control batch")
    return bytes(out)


# ---- building ----
class Builder:
    """Encodes records into one uncompressed batch in a C-owned buffer.

    This class is not thread-safe: one builder per (producer, partition)."""

    __slots__ = ("_b", "append_raw")

    def __init__(self, capacity=16384):
        b = lib.pl_builder_new(capacity)
        if b == ffi.NULL:
            raise MemoryError("cannot allocate a batch builder")
        self._b = ffi.gc(b, lib.pl_builder_free)
        self.append_raw = lib.pl_builder_append

    def append(self, timestamp, key, value, headers=b"", header_count=0):
        """key/value: bytes or None.  headers: encoded header list (see codec)."""
        rc = lib.pl_builder_append(
            self._b, timestamp,
            ffi.NULL if key is None else key, -1 if key is None else len(key),
            ffi.NULL if value is None else value, -1 if value is None else len(value),
            headers, len(headers), header_count)
        if rc:
            raise_for(rc, "append record")

    def __len__(self):
        return lib.pl_builder_count(self._b)

    @property
    def size(self):
        return lib.pl_builder_size(self._b)

    @property
    def base_timestamp(self):
        return lib.pl_builder_base_timestamp(self._b)

    @property
    def max_timestamp(self):
        return lib.pl_builder_max_timestamp(self._b)

    def reset(self):
        lib.pl_builder_reset(self._b)

    def records(self):
        """The encoded records region (bytes), for compression."""
        n = ffi.new("size_t *")
        p = lib.pl_builder_records(self._b, n)
        return ffi.buffer(p, n[0])[:]

    def finish(self, producer_id=-1, producer_epoch=-1, base_sequence=-1, attributes=0,
               mutable=False):
        """The finished batch, bytes or (mutable) a bytearray; baseOffset 0: the log assigns it."""
        n = ffi.new("size_t *")
        p = lib.pl_builder_finish(self._b, producer_id, producer_epoch, base_sequence,
                                  attributes, n)
        if p == ffi.NULL:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "empty batch"))
        return bytearray(ffi.buffer(p, n[0])) if mutable else ffi.buffer(p, n[0])[:]


def record_size(key_len, value_len, headers_len=0, header_count=0, ts_delta=0, offset_delta=0):
    """Encoded size of one record, its length varint included."""
    return lib.pl_record_size(key_len, value_len, headers_len, header_count, ts_delta,
                              offset_delta)


# ---- decoding ----
# Most records one batch may hold, and headers one record may hold, for
# decoding.  Checked before anything is allocated for them: a count bounded
# only by the bytes (a record takes at least 7 of a records region that may
# decompress to 128 MiB) would let a few KiB of crafted zstd cost gigabytes
# (8 int64 per record, then Python objects).  pylog's producer never writes
# more records per batch (batch.num.messages is at most 1000000).
MAX_BATCH_RECORDS = 1000000
MAX_RECORD_HEADERS = 1000000


def decode_records(recs, count, base_offset, base_timestamp):
    """Flat list of REC_FIELDS ints per record (see pylog.h), after full validation."""
    if count < 0 or count * 7 > len(recs):
        raise CorruptRecordError("record count %d does not fit in %d bytes" % (count, len(recs)))
    if count > MAX_BATCH_RECORDS:
        raise CorruptRecordError("batch of %d records is over pylog's limit of %d records "
                                 "per batch" % (count, MAX_BATCH_RECORDS))
    out = ffi.new("int64_t[]", max(count, 1) * REC_FIELDS)
    n = ffi.new("int32_t *")
    rc = lib.pl_decode_records(ffi.from_buffer(recs), len(recs), count, base_offset,
                               base_timestamp, out, count, n)
    if rc:
        raise_for(rc, "decode records")
    return ffi.unpack(out, n[0] * REC_FIELDS)


def decode_headers(buf, count):
    """[(key str, value bytes or None)] from an encoded header list."""
    if count == 0:
        return []
    # Each header takes at least 2 bytes; checked before the allocation so a
    # damaged count cannot ask for gigabytes (decode_records does the same).
    if count < 0 or count * 2 > len(buf):
        raise CorruptRecordError("header count %d does not fit in %d bytes" % (count, len(buf)))
    if count > MAX_RECORD_HEADERS:
        raise CorruptRecordError("record with %d headers is over pylog's limit of %d"
                                 % (count, MAX_RECORD_HEADERS))
    out = ffi.new("int64_t[]", count * 4)
    rc = lib.pl_decode_headers(ffi.from_buffer(buf), len(buf), count, out)
    if rc:
        raise_for(rc, "decode headers")
    f = ffi.unpack(out, count * 4)
    res = []
    for i in range(0, count * 4, 4):
        kp, kl, vp, vl = f[i:i + 4]
        res.append((bytes(buf[kp:kp + kl]).decode("utf-8", "replace"),
                    None if vl < 0 else bytes(buf[vp:vp + vl])))
    return res


# ---- cross-process wake-up ----
class Notifier:
    """The store's shared wake-up counter (csrc/notify.c), in an mmap()ed file."""

    SIZE = 64

    def __init__(self, path):
        import mmap
        import os
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self._map = mmap.mmap(fd, self.SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._ptr = ffi.cast("uint32_t *", ffi.from_buffer(self._map))

    def seq(self):
        return lib.pl_notify_seq(self._ptr)

    def bump(self):
        lib.pl_notify_bump(self._ptr)

    def wait(self, seen, timeout):
        """Sleep until the counter moves from seen or timeout seconds pass."""
        return lib.pl_notify_wait(self._ptr, seen, int(timeout * 1e6)) == 0

    def close(self):
        self._ptr = None
        try:
            self._map.close()
        except BufferError:         # a cffi view is still alive; the GC unmaps it
            pass
