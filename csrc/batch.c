/* batch.c -- record batch v2: build, seal, scan and decode (layout in pylog.h).
 *
 * Record (inside the records region, all varints zigzag):
 *   length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
 *   keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value |
 *   headerCount varint | per header: keyLength varint | key | valueLength varint | value
 *
 * Every length read from a buffer is checked against the bytes that remain
 * before it is used: buffers may come from a damaged file.
 */
#include "pylog.h"
#include "wire.h"
#include <stdlib.h>
#include <string.h>

/* ---- builder ---- */
struct pl_builder {
    uint8_t *buf;
    size_t   cap;
    size_t   len;       /* includes the reserved header */
    int32_t  count;
    int64_t  base_ts;
    int64_t  max_ts;
};

pl_builder *pl_builder_new(size_t capacity)
{
    pl_builder *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    if (capacity < 256)
        capacity = 256;
    b->buf = malloc(capacity);
    if (!b->buf) {
        free(b);
        return NULL;
    }
    b->cap = capacity;
    b->len = PL_HEADER_SIZE;
    return b;
}

void pl_builder_free(pl_builder *b)
{
    if (b) {
        free(b->buf);
        free(b);
    }
}

void pl_builder_reset(pl_builder *b)
{
    b->len = PL_HEADER_SIZE;
    b->count = 0;
}

int32_t pl_builder_count(const pl_builder *b) { return b->count; }
size_t pl_builder_size(const pl_builder *b) { return b->len; }
int64_t pl_builder_base_timestamp(const pl_builder *b) { return b->base_ts; }
int64_t pl_builder_max_timestamp(const pl_builder *b) { return b->max_ts; }

static size_t record_body_size(int64_t key_len, int64_t value_len, int64_t headers_len,
                               int32_t header_count, int64_t ts_delta, int32_t offset_delta)
{
    return 1 + varlong_size(ts_delta) + varlong_size(offset_delta) +
           varlong_size(key_len) + (key_len > 0 ? (size_t)key_len : 0) +
           varlong_size(value_len) + (value_len > 0 ? (size_t)value_len : 0) +
           varlong_size(header_count) + (size_t)headers_len;
}

size_t pl_record_size(int64_t key_len, int64_t value_len, int64_t headers_len,
                      int32_t header_count, int64_t ts_delta, int32_t offset_delta)
{
    size_t body = record_body_size(key_len, value_len, headers_len, header_count,
                                   ts_delta, offset_delta);
    return varlong_size((int64_t)body) + body;
}

static int reserve(pl_builder *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return PL_OK;
    size_t cap = b->cap;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return PL_ENOMEM;
        cap *= 2;
    }
    uint8_t *nb = realloc(b->buf, cap);
    if (!nb)
        return PL_ENOMEM;
    b->buf = nb;
    b->cap = cap;
    return PL_OK;
}

int pl_builder_append(pl_builder *b, int64_t timestamp,
                      const char *key, int64_t key_len,
                      const char *value, int64_t value_len,
                      const char *headers, int64_t headers_len, int32_t header_count)
{
    if (key_len < -1 || value_len < -1 || headers_len < 0 || header_count < 0 ||
        key_len > INT32_MAX || value_len > INT32_MAX || headers_len > INT32_MAX ||
        (key_len > 0 && !key) || (value_len > 0 && !value) || (headers_len > 0 && !headers))
        return PL_EARG;
    if (b->count == INT32_MAX)
        return PL_ETOOLARGE;
    if (b->count == 0)
        b->base_ts = b->max_ts = timestamp;
    int64_t ts_delta = (int64_t)((uint64_t)timestamp - (uint64_t)b->base_ts);
    int32_t offset_delta = b->count;
    size_t body = record_body_size(key_len, value_len, headers_len, header_count,
                                   ts_delta, offset_delta);
    if (body > INT32_MAX || b->len + body + 5 > INT32_MAX)
        return PL_ETOOLARGE;
    int rc = reserve(b, body + 5);
    if (rc)
        return rc;
    uint8_t *p = b->buf + b->len;
    p = put_varlong(p, (int64_t)body);
    *p++ = 0;                                   /* record attributes: unused */
    p = put_varlong(p, ts_delta);
    p = put_varlong(p, offset_delta);
    p = put_varlong(p, key_len);
    if (key_len > 0) { memcpy(p, key, (size_t)key_len); p += key_len; }
    p = put_varlong(p, value_len);
    if (value_len > 0) { memcpy(p, value, (size_t)value_len); p += value_len; }
    p = put_varlong(p, header_count);
    if (headers_len > 0) { memcpy(p, headers, (size_t)headers_len); p += headers_len; }
    b->len = (size_t)(p - b->buf);
    b->count++;
    if (timestamp > b->max_ts)
        b->max_ts = timestamp;
    return PL_OK;
}

int pl_builder_append_many(pl_builder *b, int32_t n, int64_t timestamp,
                           const int64_t *timestamps,
                           const char *keys, const int64_t *key_lens,
                           const char *values, const int64_t *value_lens,
                           const char *headers, const int64_t *headers_lens,
                           const int32_t *header_counts)
{
    size_t len0 = b->len;
    int32_t count0 = b->count;
    int64_t base0 = b->base_ts, max0 = b->max_ts;
    const char *k = keys, *v = values, *h = headers;
    for (int32_t i = 0; i < n; i++) {
        int64_t kl = keys ? key_lens[i] : -1, vl = value_lens[i];
        int64_t hl = headers ? headers_lens[i] : 0;
        int32_t hc = headers ? header_counts[i] : 0;
        int rc = pl_builder_append(b, timestamps ? timestamps[i] : timestamp,
                                   kl > 0 ? k : NULL, kl, vl > 0 ? v : NULL, vl,
                                   hl > 0 ? h : NULL, hl, hc);
        if (rc) {                       /* undo this call's records */
            b->len = len0;
            b->count = count0;
            b->base_ts = base0;
            b->max_ts = max0;
            return rc;
        }
        if (kl > 0) k += kl;
        if (vl > 0) v += vl;
        if (hl > 0) h += hl;
    }
    return PL_OK;
}

uint8_t *pl_builder_records(pl_builder *b, size_t *len)
{
    *len = b->len - PL_HEADER_SIZE;
    return b->buf + PL_HEADER_SIZE;
}

int pl_batch_write_header(uint8_t *buf, size_t len, const pl_batch_hdr *h)
{
    if (len < PL_HEADER_SIZE || len - PL_LOG_OVERHEAD > INT32_MAX)
        return PL_EARG;
    put64(buf, (uint64_t)h->base_offset);
    put32(buf + 8, (uint32_t)(len - PL_LOG_OVERHEAD));
    put32(buf + 12, (uint32_t)h->partition_leader_epoch);
    buf[16] = PL_MAGIC;
    put16(buf + 21, (uint16_t)h->attributes);
    put32(buf + 23, (uint32_t)h->last_offset_delta);
    put64(buf + 27, (uint64_t)h->base_timestamp);
    put64(buf + 35, (uint64_t)h->max_timestamp);
    put64(buf + 43, (uint64_t)h->producer_id);
    put16(buf + 51, (uint16_t)h->producer_epoch);
    put32(buf + 53, (uint32_t)h->base_sequence);
    put32(buf + 57, (uint32_t)h->records_count);
    put32(buf + 17, pl_crc32c(0, buf + PL_CRC_START, len - PL_CRC_START));
    return PL_OK;
}

uint8_t *pl_builder_finish(pl_builder *b, int64_t producer_id, int16_t producer_epoch,
                           int32_t base_sequence, int16_t attributes, size_t *len)
{
    if (b->count == 0)
        return NULL;
    pl_batch_hdr h = {
        .base_offset = 0, .partition_leader_epoch = -1, .attributes = attributes,
        .last_offset_delta = b->count - 1, .base_timestamp = b->base_ts,
        .max_timestamp = b->max_ts, .producer_id = producer_id,
        .producer_epoch = producer_epoch, .base_sequence = base_sequence,
        .records_count = b->count,
    };
    pl_batch_write_header(b->buf, b->len, &h);
    *len = b->len;
    return b->buf;
}

int pl_control_batch(uint8_t *out, size_t cap, int64_t producer_id, int16_t producer_epoch,
                     int16_t type, int32_t coordinator_epoch, int64_t timestamp)
{
    if (cap < PL_CONTROL_BATCH_SIZE || (type != 0 && type != 1))
        return PL_EARG;
    uint8_t *p = out + PL_HEADER_SIZE;
    *p++ = 2 * 16;          /* length varint: 16-byte body */
    *p++ = 0;               /* attributes */
    *p++ = 0;               /* timestampDelta */
    *p++ = 0;               /* offsetDelta */
    *p++ = 2 * 4;           /* keyLength 4: version int16 + type int16 */
    put16(p, 0); put16(p + 2, (uint16_t)type); p += 4;
    *p++ = 2 * 6;           /* valueLength 6: version int16 + coordinatorEpoch int32 */
    put16(p, 0); put32(p + 2, (uint32_t)coordinator_epoch); p += 6;
    *p++ = 0;               /* headerCount */
    pl_batch_hdr h = {
        .base_offset = 0, .partition_leader_epoch = -1,
        .attributes = PL_ATTR_TRANSACTIONAL | PL_ATTR_CONTROL,
        .last_offset_delta = 0, .base_timestamp = timestamp, .max_timestamp = timestamp,
        .producer_id = producer_id, .producer_epoch = producer_epoch,
        .base_sequence = -1, .records_count = 1,
    };
    return pl_batch_write_header(out, PL_CONTROL_BATCH_SIZE, &h);
}

/* ---- scanning ---- */
int pl_parse_header(const uint8_t *buf, size_t len, pl_batch_hdr *h)
{
    if (len < PL_HEADER_SIZE)
        return PL_ETORN;
    h->base_offset = (int64_t)get64(buf);
    h->batch_length = (int32_t)get32(buf + 8);
    h->partition_leader_epoch = (int32_t)get32(buf + 12);
    h->magic = (int8_t)buf[16];
    h->crc = get32(buf + 17);
    h->attributes = (int16_t)get16(buf + 21);
    h->last_offset_delta = (int32_t)get32(buf + 23);
    h->base_timestamp = (int64_t)get64(buf + 27);
    h->max_timestamp = (int64_t)get64(buf + 35);
    h->producer_id = (int64_t)get64(buf + 43);
    h->producer_epoch = (int16_t)get16(buf + 51);
    h->base_sequence = (int32_t)get32(buf + 53);
    h->records_count = (int32_t)get32(buf + 57);
    return PL_OK;
}

/* Checks that do not need the CRC: they reject headers no writer produces. */
static int header_sane(const pl_batch_hdr *h, uint32_t size)
{
    if (h->base_offset < 0 || h->records_count < 0 || h->last_offset_delta < 0)
        return PL_ECORRUPT;
    if (h->base_offset > INT64_MAX - h->last_offset_delta - 1)
        return PL_ECORRUPT;
    if (h->records_count > 0 && h->last_offset_delta < h->records_count - 1)
        return PL_ECORRUPT;
    if ((h->attributes & PL_ATTR_CODEC_MASK) == 0 &&
        (uint64_t)h->records_count * PL_MIN_RECORD_SIZE > size - PL_HEADER_SIZE)
        return PL_ECORRUPT;
    if ((h->attributes & PL_ATTR_CODEC_MASK) > 4)
        return PL_ECORRUPT;
    return PL_OK;
}

int pl_scan(const uint8_t *buf, size_t len, uint32_t max_batch_size, int verify_crc,
            int64_t expect_offset, pl_batch_info *out, size_t cap,
            size_t *n, size_t *valid_end)
{
    size_t pos = 0, count = 0;
    int rc = PL_OK;
    while (pos < len) {
        size_t left = len - pos;
        const uint8_t *p = buf + pos;
        if (left < PL_LOG_OVERHEAD) { rc = PL_ETORN; break; }
        int32_t blen = (int32_t)get32(p + 8);
        if (blen < PL_HEADER_SIZE - PL_LOG_OVERHEAD ||
            (uint64_t)blen + PL_LOG_OVERHEAD > max_batch_size) {
            rc = PL_ELENGTH;
            break;
        }
        uint32_t size = (uint32_t)blen + PL_LOG_OVERHEAD;
        if (left > 16 && p[16] != PL_MAGIC) { rc = PL_EMAGIC; break; }
        if (left < size) { rc = PL_ETORN; break; }
        if (count == cap) { rc = PL_EFULL; break; }
        pl_batch_info *bi = &out[count];
        pl_parse_header(p, left, &bi->h);
        if (verify_crc && pl_crc32c(0, p + PL_CRC_START, size - PL_CRC_START) != bi->h.crc) {
            rc = PL_ECRC;
            break;
        }
        if ((rc = header_sane(&bi->h, size)) != PL_OK)
            break;
        if (expect_offset >= 0) {
            if (bi->h.base_offset != expect_offset) { rc = PL_EOFFSET; break; }
            expect_offset = bi->h.base_offset + bi->h.last_offset_delta + 1;
        }
        bi->position = pos;
        bi->size = size;
        count++;
        pos += size;
    }
    *n = count;
    *valid_end = pos;
    return rc;
}

/* ---- decoding ---- */
#define NEED(cond) do { if (!(cond)) return PL_ECORRUPT; } while (0)

/* Validates one header list; stores 4 fields per header when out != NULL. */
static int walk_headers(const uint8_t *base, const uint8_t *p, const uint8_t *end,
                        int64_t count, int64_t *out, const uint8_t **next)
{
    for (int64_t i = 0; i < count; i++) {
        int64_t klen, vlen;
        size_t k = get_varint(p, end, 5, &klen);
        NEED(k && klen >= 0 && klen <= end - p - (int64_t)k);
        p += k;
        const uint8_t *key = p;
        p += klen;
        k = get_varint(p, end, 5, &vlen);
        NEED(k && vlen >= -1);
        p += k;
        NEED(vlen <= end - p);
        if (out) {
            out[4 * i] = key - base;
            out[4 * i + 1] = klen;
            out[4 * i + 2] = p - base;
            out[4 * i + 3] = vlen;
        }
        if (vlen > 0)
            p += vlen;
    }
    *next = p;
    return PL_OK;
}

int pl_decode_records(const uint8_t *recs, size_t len, int32_t count,
                      int64_t base_offset, int64_t base_timestamp,
                      int64_t *out, size_t cap_records, int32_t *n)
{
    const uint8_t *p = recs, *end = recs + len;
    *n = 0;
    NEED(count >= 0 && (uint64_t)count * PL_MIN_RECORD_SIZE <= len);
    if ((size_t)count > cap_records)
        return PL_EFULL;
    for (int32_t r = 0; r < count; r++) {
        int64_t body, ts_delta, off_delta, klen, vlen, hcount;
        size_t k = get_varint(p, end, 5, &body);
        NEED(k && body >= PL_MIN_RECORD_SIZE - 1 && body <= end - p - (int64_t)k);
        p += k;
        const uint8_t *rend = p + body;
        p++;                                    /* attributes */
        NEED((k = get_varint(p, rend, 10, &ts_delta)));
        p += k;
        NEED((k = get_varint(p, rend, 5, &off_delta)) && off_delta >= 0);
        p += k;
        NEED((k = get_varint(p, rend, 5, &klen)) && klen >= -1);
        p += k;
        NEED(klen <= rend - p);
        int64_t key_pos = p - recs;
        if (klen > 0)
            p += klen;
        NEED((k = get_varint(p, rend, 5, &vlen)) && vlen >= -1);
        p += k;
        NEED(vlen <= rend - p);
        int64_t value_pos = p - recs;
        if (vlen > 0)
            p += vlen;
        NEED((k = get_varint(p, rend, 5, &hcount)) && hcount >= 0 && hcount <= (rend - p) / 2);
        p += k;
        int64_t headers_pos = p - recs;
        const uint8_t *after;
        int rc = walk_headers(recs, p, rend, hcount, NULL, &after);
        if (rc)
            return rc;
        NEED(after == rend);
        p = rend;
        int64_t *o = out + (size_t)r * PL_REC_FIELDS;
        o[0] = (int64_t)((uint64_t)base_offset + (uint64_t)off_delta);   /* no UB on garbage */
        o[1] = (int64_t)((uint64_t)base_timestamp + (uint64_t)ts_delta);
        o[2] = key_pos;
        o[3] = klen;
        o[4] = value_pos;
        o[5] = vlen;
        o[6] = headers_pos;
        o[7] = hcount;
    }
    NEED(p == end);
    *n = count;
    return PL_OK;
}

int pl_decode_headers(const uint8_t *buf, size_t len, int32_t count, int64_t *out)
{
    const uint8_t *after;
    NEED(count >= 0 && (uint64_t)count * 2 <= len);
    return walk_headers(buf, buf, buf + len, count, out, &after);
}
