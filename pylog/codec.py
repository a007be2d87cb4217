"""Record batches as Python sees them: encode records, decode a stored batch.

The byte layouts are in csrc/pylog.h; the work is done in C through _bridge.
"""
from . import _bridge, compression
from ._bridge import BatchInfo, Builder, HEADER_SIZE, control_batch, scan  # noqa: F401
from .errors import CorruptRecordError, KafkaError, KafkaException

ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_LOG_APPEND_TIME = 0x08
NO_PRODUCER_ID = -1
NO_SEQUENCE = -1
CONTROL_ABORT, CONTROL_COMMIT = 0, 1


class Record:
    """One decoded record. headers is a list of (str, bytes or None)."""

    __slots__ = ("offset", "timestamp", "key", "value", "headers")

    def __init__(self, offset, timestamp, key, value, headers):
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers

    def __eq__(self, other):
        return isinstance(other, Record) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        return "Record(offset=%d, timestamp=%d, key=%r, value=%r, headers=%r)" % (
            self.offset, self.timestamp, self.key, self.value, self.headers)


def encode_headers(headers):
    """Encode [(str|bytes, bytes|None)] (or a dict) as a record's header list.

    Returns (bytes, count). Keys are UTF-8; a None value is stored as null."""
    if not headers:
        return b"", 0
    items = headers.items() if isinstance(headers, dict) else headers
    out = bytearray()
    count = 0
    for item in items:
        try:
            k, v = item
        except (TypeError, ValueError):
            raise TypeError("headers must be (key, value) pairs, got %r" % (item,)) from None
        if isinstance(k, str):
            k = k.encode("utf-8")
        elif not isinstance(k, (bytes, bytearray)):
            raise TypeError("header key must be str or bytes, got %s" % type(k).__name__)
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif v is not None and not isinstance(v, (bytes, bytearray)):
            raise TypeError("header value must be bytes, str or None, got %s" % type(v).__name__)
        _put_varint(out, len(k))
        out += k
        if v is None:
            _put_varint(out, -1)
        else:
            _put_varint(out, len(v))
            out += v
        count += 1
    return bytes(out), count


def _put_varint(out, v):
    u = (v << 1) ^ (v >> 63)
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)


def encode_batch(records, producer_id=NO_PRODUCER_ID, producer_epoch=-1,
                 base_sequence=NO_SEQUENCE, transactional=False, codec=compression.NONE):
    """One batch from [(timestamp, key, value, headers)], baseOffset 0.

    headers may be None, a list of pairs or a dict."""
    b = Builder()
    for ts, key, value, headers in records:
        hbytes, hcount = encode_headers(headers)
        b.append(ts, key, value, hbytes, hcount)
    return seal(b, producer_id, producer_epoch, base_sequence, transactional, codec)


def seal(builder, producer_id, producer_epoch, base_sequence, transactional, codec):
    """Finish the builder's records as one batch (a bytearray, so the log can
    stamp its base offset in place), compressed if codec != NONE."""
    attrs = ATTR_TRANSACTIONAL if transactional else 0
    if codec == compression.NONE:
        return builder.finish(producer_id, producer_epoch, base_sequence, attrs, mutable=True)
    count = len(builder)
    if count == 0:
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "empty batch"))
    packed = compression.compress(codec, builder.records())
    buf = bytearray(HEADER_SIZE + len(packed))
    buf[HEADER_SIZE:] = packed
    _bridge.write_header(buf, 0, attrs | codec, count - 1, builder.base_timestamp,
                         builder.max_timestamp, producer_id, producer_epoch, base_sequence,
                         count)
    return buf


def records_region(buf, info, max_decompressed=compression.DEFAULT_MAX_DECOMPRESSED):
    """The batch's (decompressed) records region, given its validated header."""
    body = memoryview(buf)[info.position + HEADER_SIZE:info.position + info.size]
    codec = info.attributes & 0x07
    if codec == compression.NONE:
        return body
    return compression.decompress(codec, bytes(body), max_decompressed)


def decode_batch(buf, info, max_decompressed=compression.DEFAULT_MAX_DECOMPRESSED):
    """Records of one batch whose header (and CRC) the caller has validated."""
    recs = records_region(buf, info, max_decompressed)
    fields = _bridge.decode_records(recs, info.records_count, info.base_offset,
                                    info.base_timestamp)
    log_append = info.attributes & ATTR_LOG_APPEND_TIME
    out = []
    for i in range(0, len(fields), _bridge.REC_FIELDS):
        off, ts, kp, kl, vp, vl, hp, hc = fields[i:i + 8]
        out.append(Record(
            off, info.max_timestamp if log_append else ts,
            None if kl < 0 else bytes(recs[kp:kp + kl]),
            None if vl < 0 else bytes(recs[vp:vp + vl]),
            _bridge.decode_headers(recs[hp:], hc) if hc else []))
    return out


def decode_control(buf, info):
    """(type, coordinator_epoch) of a control batch: type 0 ABORT, 1 COMMIT."""
    recs = decode_batch(buf, info)
    if len(recs) != 1 or recs[0].key is None or len(recs[0].key) < 4:
        raise CorruptRecordError("control batch at offset %d has no valid control record"
                                 % info.base_offset)
    key, value = recs[0].key, recs[0].value or b""
    ctype = int.from_bytes(key[2:4], "big", signed=True)
    epoch = int.from_bytes(value[2:6], "big", signed=True) if len(value) >= 6 else -1
    return ctype, epoch


def decode_all(buf, max_batch_size=0x7FFFFFFF):
    """(batches, records) for a whole buffer of batches; raises on any damage."""
    infos, end, rc = scan(buf, max_batch_size)
    if rc != 0:
        raise CorruptRecordError("invalid batch at byte %d: %s" % (end, _bridge.SCAN_REASONS.get(rc, rc)))
    records = []
    for info in infos:
        if not info.is_control:
            records.extend(decode_batch(buf, info))
    return infos, records
