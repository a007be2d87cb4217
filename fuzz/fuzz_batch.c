/* fuzz_batch.c -- libFuzzer harness for the C decoder: pl_scan,
 * pl_parse_header, pl_decode_records, pl_decode_headers, pl_pstate_decode
 * (and the CRC-32C implementations against each other).
 *
 * One input is read four ways, so a single corpus serves every entry point:
 *   1. as a stream of batches, scanned with and without the CRC check (the
 *      fuzzer rarely forges a CRC, so the no-CRC scan is what reaches the
 *      record decoder); every uncompressed batch found is decoded in full,
 *      headers included, exactly as pylog.codec.decode_batch does;
 *   2. as a bare records region (count = the first byte);
 *   3. as a bare header list (count = the first byte);
 *   4. as an LMDB producer-state value (decode, then encode must give the
 *      same bytes back);
 *   5. as a recipe for records (keys, values, headers, timestamps) that the
 *      builder encodes; the batch must then scan with its CRC and decode to
 *      exactly those records (an encoder/decoder round trip).
 * Besides the sanitizers, it aborts on broken contracts: a slice outside the
 * buffer, a scan that claims more bytes than it was given, a state that does
 * not round-trip, hardware and software CRC-32C disagreeing.
 *
 * Build and run: fuzz/run.sh [seconds]
 */
#include "pylog.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_CAP 64

#define REQUIRE(cond) do { if (!(cond)) { \
    fprintf(stderr, "fuzz_batch.c:%d: contract broken: %s\n", __LINE__, #cond); abort(); } } while (0)

static void decode_headers_checked(const uint8_t *buf, size_t len, int32_t count)
{
    if (count < 0 || (uint64_t)count * 2 > len)
        return;                       /* the bridge refuses these before calling C */
    int64_t *out = malloc(((size_t)count + 1) * 4 * sizeof(int64_t));
    if (!out)
        return;
    if (pl_decode_headers(buf, len, count, out) == PL_OK) {
        for (int32_t i = 0; i < count; i++) {
            int64_t kp = out[4 * i], kl = out[4 * i + 1], vp = out[4 * i + 2], vl = out[4 * i + 3];
            REQUIRE(kp >= 0 && kl >= 0 && (uint64_t)kp + (uint64_t)kl <= len);
            REQUIRE(vp >= 0 && vl >= -1 && (uint64_t)vp + (uint64_t)(vl > 0 ? vl : 0) <= len);
        }
    }
    free(out);
}

/* Decode one records region the way pylog.codec.decode_batch does. */
static void decode_records_checked(const uint8_t *recs, size_t len, int32_t count,
                                   int64_t base_offset, int64_t base_timestamp)
{
    /* The bridge allocates count records after checking count * 7 <= len. */
    if (count < 0 || (uint64_t)count * PL_MIN_RECORD_SIZE > len)
        return;
    size_t cap = count > 0 ? (size_t)count : 1;
    int64_t *out = malloc(cap * PL_REC_FIELDS * sizeof(int64_t));
    if (!out)
        return;
    int32_t n = -1;
    int rc = pl_decode_records(recs, len, count, base_offset, base_timestamp, out, cap, &n);
    if (rc == PL_OK) {
        REQUIRE(n == count);
        for (int32_t r = 0; r < n; r++) {
            const int64_t *o = out + (size_t)r * PL_REC_FIELDS;
            int64_t kp = o[2], kl = o[3], vp = o[4], vl = o[5], hp = o[6], hc = o[7];
            REQUIRE(kp >= 0 && kl >= -1 && (uint64_t)kp + (uint64_t)(kl > 0 ? kl : 0) <= len);
            REQUIRE(vp >= 0 && vl >= -1 && (uint64_t)vp + (uint64_t)(vl > 0 ? vl : 0) <= len);
            REQUIRE(hp >= 0 && (uint64_t)hp <= len && hc >= 0 && hc <= INT32_MAX);
            if (hc)
                decode_headers_checked(recs + hp, len - (size_t)hp, (int32_t)hc);
        }
    } else {
        REQUIRE(rc == PL_ECORRUPT);
    }
    free(out);
}

static void scan_checked(const uint8_t *data, size_t size, int verify_crc, uint32_t max_size)
{
    pl_batch_info infos[SCAN_CAP];
    size_t pos = 0;
    int64_t expect = verify_crc ? -1 : 0;
    for (int rounds = 0; rounds < 64 && pos <= size; rounds++) {
        size_t n = 0, valid = 0;
        int rc = pl_scan(data + pos, size - pos, max_size, verify_crc, expect, infos, SCAN_CAP,
                         &n, &valid);
        REQUIRE(n <= SCAN_CAP && valid <= size - pos);
        size_t covered = 0;
        for (size_t i = 0; i < n; i++) {
            const pl_batch_info *bi = &infos[i];
            REQUIRE(bi->position == covered);
            REQUIRE(bi->size >= PL_HEADER_SIZE && bi->size <= max_size);
            REQUIRE(bi->position + bi->size <= size - pos);
            covered += bi->size;
            pl_batch_hdr h;
            REQUIRE(pl_parse_header(data + pos + bi->position, bi->size, &h) == PL_OK);
            REQUIRE(h.base_offset == bi->h.base_offset && h.records_count == bi->h.records_count);
            if ((bi->h.attributes & PL_ATTR_CODEC_MASK) == 0)
                decode_records_checked(data + pos + bi->position + PL_HEADER_SIZE,
                                       bi->size - PL_HEADER_SIZE, bi->h.records_count,
                                       bi->h.base_offset, bi->h.base_timestamp);
        }
        REQUIRE(covered == valid);
        pos += valid;
        if (rc != PL_EFULL)
            break;
        if (n && expect >= 0)
            expect = infos[n - 1].h.base_offset + infos[n - 1].h.last_offset_delta + 1;
    }
}

static void pstate_checked(const uint8_t *data, size_t size)
{
    pl_pstate s;
    if (pl_pstate_decode(data, size, &s) != PL_OK)
        return;
    REQUIRE(s.n >= 0 && s.n <= PL_DEDUP_WINDOW);
    uint8_t again[PL_PSTATE_MAX_SIZE];
    int len = pl_pstate_encode(&s, again, sizeof again);
    REQUIRE(len >= 0 && (size_t)len == size && memcmp(again, data, size) == 0);
    /* The dedup check must accept any decoded state without misbehaving. */
    int dup;
    int32_t seq = s.n ? s.batches[s.n - 1].last_seq : 0;
    int rc = pl_dedup_check(&s, s.producer_epoch, seq >= 0 ? seq : 0, seq >= 0 ? seq : 0, 1, &dup);
    REQUIRE(rc != PL_EDUPLICATE || (dup >= 0 && dup < s.n));
    pl_dedup_update(&s, s.producer_epoch, 0, 0, 0, 0, 0, 1, 0);
    REQUIRE(s.n >= 1 && s.n <= PL_DEDUP_WINDOW);
}

/* ---- 5: builder round trip ---- */
#define RT_MAX_RECORDS 64
#define RT_MAX_HEADERS 3

typedef struct {
    const uint8_t *key, *value;
    int64_t klen, vlen, ts;
    uint8_t hdr[RT_MAX_HEADERS * 24 + 8];     /* encoded header list */
    size_t hlen;
    int32_t hcount;
    const uint8_t *hk[RT_MAX_HEADERS], *hv[RT_MAX_HEADERS];
    int64_t hkl[RT_MAX_HEADERS], hvl[RT_MAX_HEADERS];
} rt_record;

static size_t put_zigzag(uint8_t *p, int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (u >= 0x80) { p[n++] = (uint8_t)(u | 0x80); u >>= 7; }
    p[n++] = (uint8_t)u;
    return n;
}

/* Take up to want bytes (want from one input byte) as a field; 0xff = null. */
static const uint8_t *take(const uint8_t *data, size_t size, size_t *pos, int64_t *len)
{
    if (*pos >= size) { *len = -1; return NULL; }
    uint8_t want = data[(*pos)++];
    if (want == 0xff) { *len = -1; return NULL; }
    size_t left = size - *pos;
    size_t n = want < left ? want : left;
    const uint8_t *p = data + *pos;
    *pos += n;
    *len = (int64_t)n;
    return p;
}

static void roundtrip(const uint8_t *data, size_t size)
{
    static rt_record recs[RT_MAX_RECORDS];
    size_t pos = 0;
    int n = 0;
    int64_t ts0 = 1700000000000LL;
    while (pos < size && n < RT_MAX_RECORDS) {
        rt_record *r = &recs[n];
        uint8_t ctl = data[pos++];
        r->key = take(data, size, &pos, &r->klen);
        r->value = take(data, size, &pos, &r->vlen);
        /* Timestamps jump by up to +-2^62 so deltas need ten-byte varints. */
        r->ts = ts0 + (int64_t)((ctl >> 4) - 8) * (int64_t)(1ULL << 58);
        r->hcount = (ctl >> 2) & 3;
        r->hlen = 0;
        for (int h = 0; h < r->hcount; h++) {
            r->hk[h] = take(data, size, &pos, &r->hkl[h]);
            if (r->hkl[h] < 0) { r->hkl[h] = 0; r->hk[h] = data; }     /* keys are never null */
            if (r->hkl[h] > 8) r->hkl[h] = 8;
            r->hv[h] = take(data, size, &pos, &r->hvl[h]);
            if (r->hvl[h] > 8) r->hvl[h] = 8;
            r->hlen += put_zigzag(r->hdr + r->hlen, r->hkl[h]);
            memcpy(r->hdr + r->hlen, r->hk[h], (size_t)r->hkl[h]);
            r->hlen += (size_t)r->hkl[h];
            r->hlen += put_zigzag(r->hdr + r->hlen, r->hvl[h]);
            if (r->hvl[h] > 0) {
                memcpy(r->hdr + r->hlen, r->hv[h], (size_t)r->hvl[h]);
                r->hlen += (size_t)r->hvl[h];
            }
        }
        n++;
    }
    if (n == 0)
        return;
    pl_builder *b = pl_builder_new(64);
    REQUIRE(b != NULL);
    for (int i = 0; i < n; i++) {
        rt_record *r = &recs[i];
        REQUIRE(pl_builder_append(b, r->ts, (const char *)r->key, r->klen, (const char *)r->value,
                                  r->vlen, (const char *)r->hdr, (int64_t)r->hlen,
                                  r->hcount) == PL_OK);
    }
    size_t len = 0;
    uint8_t *batch = pl_builder_finish(b, 1000, 1, 0, PL_ATTR_TRANSACTIONAL, &len);
    REQUIRE(batch != NULL && len == pl_builder_size(b));
    pl_batch_info info;
    size_t found = 0, valid = 0;
    REQUIRE(pl_scan(batch, len, 0x7FFFFFFF, 1, 0, &info, 1, &found, &valid) == PL_OK);
    REQUIRE(found == 1 && valid == len && info.h.records_count == n);
    REQUIRE(info.h.base_timestamp == recs[0].ts);
    int64_t *out = malloc((size_t)n * PL_REC_FIELDS * sizeof(int64_t));
    REQUIRE(out != NULL);
    int32_t got = 0;
    const uint8_t *region = batch + PL_HEADER_SIZE;
    size_t rlen = len - PL_HEADER_SIZE;
    REQUIRE(pl_decode_records(region, rlen, n, 0, info.h.base_timestamp, out, (size_t)n, &got)
            == PL_OK && got == n);
    for (int i = 0; i < n; i++) {
        const int64_t *o = out + (size_t)i * PL_REC_FIELDS;
        rt_record *r = &recs[i];
        REQUIRE(o[0] == i && o[1] == r->ts);
        REQUIRE(o[3] == r->klen && (r->klen <= 0 || memcmp(region + o[2], r->key, (size_t)r->klen) == 0));
        REQUIRE(o[5] == r->vlen && (r->vlen <= 0 || memcmp(region + o[4], r->value, (size_t)r->vlen) == 0));
        REQUIRE(o[7] == r->hcount);
        if (r->hcount) {
            int64_t hs[RT_MAX_HEADERS * 4];
            REQUIRE(pl_decode_headers(region + o[6], rlen - (size_t)o[6], r->hcount, hs) == PL_OK);
            for (int h = 0; h < r->hcount; h++) {
                const uint8_t *base = region + o[6];
                REQUIRE(hs[4 * h + 1] == r->hkl[h] &&
                        memcmp(base + hs[4 * h], r->hk[h], (size_t)r->hkl[h]) == 0);
                REQUIRE(hs[4 * h + 3] == r->hvl[h] &&
                        (r->hvl[h] <= 0 || memcmp(base + hs[4 * h + 2], r->hv[h], (size_t)r->hvl[h]) == 0));
            }
        }
    }
    free(out);
    pl_builder_free(b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    pl_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    REQUIRE(pl_crc32c_sw(0, data, size) == pl_crc32c_hw(0, data, size));

    scan_checked(data, size, 1, 0x7FFFFFFF);
    scan_checked(data, size, 0, 0x7FFFFFFF);
    scan_checked(data, size, 0, 4096);

    if (size >= 1) {
        decode_records_checked(data + 1, size - 1, data[0], 0, 0);
        decode_headers_checked(data + 1, size - 1, data[0]);
    }
    pstate_checked(data, size);
    roundtrip(data, size);
    return 0;
}
