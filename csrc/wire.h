/* wire.h -- the byte-level encodings of Kafka's formats, shared by the cffi
 * module (batch.c) and the CPython extensions (fastmsg.c, fastprod.c):
 * big-endian fixed-width fields and zigzag varints.  Header-only, static
 * inline: each extension is its own shared object. */
#ifndef PYLOG_WIRE_H
#define PYLOG_WIRE_H

#include <stddef.h>
#include <stdint.h>

static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static inline size_t varlong_size(int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 1;
    while (u >= 0x80) { u >>= 7; n++; }
    return n;
}

static inline uint8_t *put_varlong(uint8_t *p, int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (u >= 0x80) { *p++ = (uint8_t)(u | 0x80); u >>= 7; }
    *p++ = (uint8_t)u;
    return p;
}

/* Reads a zigzag varint of at most max_bytes (5 for int32, 10 for int64).
 * Returns bytes consumed, 0 if it runs past end, is too long or (5 bytes)
 * leaves the int32 range. */
static inline size_t get_varint(const uint8_t *p, const uint8_t *end, size_t max_bytes, int64_t *out)
{
    if (max_bytes > 0 && p < end && !(p[0] & 0x80)) {   /* one byte: most lengths and deltas */
        *out = (int64_t)(p[0] >> 1) ^ -(int64_t)(p[0] & 1);
        return 1;
    }
    uint64_t u = 0;
    size_t i = 0;
    for (;;) {
        if (p + i >= end || i >= max_bytes)
            return 0;
        uint8_t b = p[i];
        u |= (uint64_t)(b & 0x7f) << (7 * i);
        i++;
        if (!(b & 0x80))
            break;
    }
    int64_t v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    if (max_bytes == 5 && (v > INT32_MAX || v < INT32_MIN))
        return 0;
    *out = v;
    return i;
}

#endif
