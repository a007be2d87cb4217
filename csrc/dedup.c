/* dedup.c -- the idempotent-producer check, Kafka's rules:
 *
 *  - duplicate: same epoch and (first_seq, last_seq) equal to one of the last
 *    5 batches: nothing is written and the caller reports the original offsets;
 *  - older epoch: fenced;
 *  - same epoch: first_seq must be last_seq + 1, wrapping from 2^31-1 to 0
 *    ("10,11,12 then 13" is valid, "10,11,12 then 14" is not);
 *  - newer epoch: first_seq must be 0, unless no state exists;
 *  - no state (new or expired producer): any sequence is accepted;
 *  - a non-transactional batch while a transaction is open: invalid state.
 *
 * Serialised layout (big-endian), version 1:
 *   | 0     | 1  | version = 1                       |
 *   | 1     | 2  | producer_epoch                    |
 *   | 3     | 4  | coordinator_epoch                 |
 *   | 7     | 8  | last_timestamp                    |
 *   | 15    | 8  | current_txn_first_offset (-1)     |
 *   | 23    | 8  | last_update_ms                    |
 *   | 31    | 1  | n (0..5)                          |
 *   | 32+28i| 28 | first_seq 4, last_seq 4, last_offset 8, offset_delta 4, timestamp 8 |
 */
#include "pylog.h"
#include <string.h>

#define SEQ_MAX 0x7fffffff

static int in_sequence(int32_t last_seq, int32_t next_seq)
{
    return (int64_t)next_seq == (int64_t)last_seq + 1 || (next_seq == 0 && last_seq == SEQ_MAX);
}

int pl_dedup_check(const pl_pstate *s, int16_t epoch, int32_t first_seq, int32_t last_seq,
                   int is_transactional, int *dup)
{
    *dup = -1;
    if (first_seq < 0 || last_seq < 0)
        return PL_EARG;
    if (s->producer_epoch == PL_NO_EPOCH)
        return PL_OK;
    if (epoch == s->producer_epoch) {
        for (int i = 0; i < s->n && i < PL_DEDUP_WINDOW; i++)
            if (s->batches[i].first_seq == first_seq && s->batches[i].last_seq == last_seq) {
                *dup = i;
                return PL_EDUPLICATE;
            }
    }
    if (epoch < s->producer_epoch)
        return PL_EFENCED;
    if (epoch != s->producer_epoch) {
        if (first_seq != 0)
            return PL_EOUTOFORDER;
    } else {
        int32_t current_last = s->n > 0 ? s->batches[s->n - 1].last_seq : -1;
        if (!in_sequence(current_last, first_seq))
            return PL_EOUTOFORDER;
    }
    if (!is_transactional && s->current_txn_first_offset >= 0)
        return PL_ETXNSTATE;
    return PL_OK;
}

void pl_dedup_update(pl_pstate *s, int16_t epoch, int32_t first_seq, int32_t last_seq,
                     int64_t first_offset, int64_t last_offset, int64_t max_timestamp,
                     int is_transactional, int64_t now_ms)
{
    if (epoch != s->producer_epoch) {   /* a new epoch starts a new window */
        s->producer_epoch = epoch;
        s->n = 0;
    }
    if (s->n == PL_DEDUP_WINDOW) {
        memmove(&s->batches[0], &s->batches[1], sizeof(pl_batch_meta) * (PL_DEDUP_WINDOW - 1));
        s->n--;
    }
    pl_batch_meta *m = &s->batches[s->n++];
    m->first_seq = first_seq;
    m->last_seq = last_seq;
    m->last_offset = last_offset;
    m->offset_delta = (int32_t)(last_offset - first_offset);
    m->timestamp = max_timestamp;
    s->last_timestamp = max_timestamp;
    s->last_update_ms = now_ms;
    if (is_transactional && s->current_txn_first_offset < 0)
        s->current_txn_first_offset = first_offset;
}

int pl_dedup_marker(pl_pstate *s, int16_t epoch, int32_t coordinator_epoch,
                    int64_t timestamp, int64_t now_ms)
{
    if (s->producer_epoch != PL_NO_EPOCH && epoch < s->producer_epoch)
        return PL_EFENCED;
    if (epoch != s->producer_epoch) {
        s->producer_epoch = epoch;
        s->n = 0;
    }
    s->coordinator_epoch = coordinator_epoch;
    s->current_txn_first_offset = -1;
    s->last_timestamp = timestamp;
    s->last_update_ms = now_ms;
    return PL_OK;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

int pl_pstate_encode(const pl_pstate *s, uint8_t *out, size_t cap)
{
    if (s->n < 0 || s->n > PL_DEDUP_WINDOW)
        return PL_EARG;
    size_t len = 32 + 28 * (size_t)s->n;
    if (cap < len)
        return PL_EFULL;
    out[0] = 1;
    out[1] = (uint8_t)((uint16_t)s->producer_epoch >> 8);
    out[2] = (uint8_t)s->producer_epoch;
    put32(out + 3, (uint32_t)s->coordinator_epoch);
    put64(out + 7, (uint64_t)s->last_timestamp);
    put64(out + 15, (uint64_t)s->current_txn_first_offset);
    put64(out + 23, (uint64_t)s->last_update_ms);
    out[31] = (uint8_t)s->n;
    for (int i = 0; i < s->n; i++) {
        uint8_t *p = out + 32 + 28 * i;
        const pl_batch_meta *m = &s->batches[i];
        put32(p, (uint32_t)m->first_seq);
        put32(p + 4, (uint32_t)m->last_seq);
        put64(p + 8, (uint64_t)m->last_offset);
        put32(p + 16, (uint32_t)m->offset_delta);
        put64(p + 20, (uint64_t)m->timestamp);
    }
    return (int)len;
}

int pl_pstate_decode(const uint8_t *in, size_t len, pl_pstate *s)
{
    if (len < 32 || in[0] != 1 || in[31] > PL_DEDUP_WINDOW || len != 32 + 28 * (size_t)in[31])
        return PL_ECORRUPT;
    memset(s, 0, sizeof *s);
    s->producer_epoch = (int16_t)(in[1] << 8 | in[2]);
    s->coordinator_epoch = (int32_t)get32(in + 3);
    s->last_timestamp = (int64_t)get64(in + 7);
    s->current_txn_first_offset = (int64_t)get64(in + 15);
    s->last_update_ms = (int64_t)get64(in + 23);
    s->n = in[31];
    for (int i = 0; i < s->n; i++) {
        const uint8_t *p = in + 32 + 28 * i;
        pl_batch_meta *m = &s->batches[i];
        m->first_seq = (int32_t)get32(p);
        m->last_seq = (int32_t)get32(p + 4);
        m->last_offset = (int64_t)get64(p + 8);
        m->offset_delta = (int32_t)get32(p + 16);
        m->timestamp = (int64_t)get64(p + 20);
    }
    return PL_OK;
}
