/* pylog.h -- the only header cffi reads: structs, PL_E* codes, prototypes.
 *
 * The C side is policy-free: it encodes, validates and decodes bytes in
 * caller-owned buffers and answers with an int (0 or a negative PL_E* code).
 * Files, fsync, LMDB and locks belong to Python.
 *
 * Record batch v2 header (big-endian, 61 bytes):
 *
 *   | off | size | field                | note                                  |
 *   |   0 |    8 | baseOffset           | assigned by the log at append         |
 *   |   8 |    4 | batchLength          | whole batch size minus 12             |
 *   |  12 |    4 | partitionLeaderEpoch | outside the CRC                       |
 *   |  16 |    1 | magic = 2            |                                       |
 *   |  17 |    4 | crc (uint32)         | CRC-32C of bytes 21 .. end of batch   |
 *   |  21 |    2 | attributes           | 0-2 codec, 3 ts type, 4 txn, 5 ctrl   |
 *   |  23 |    4 | lastOffsetDelta      |                                       |
 *   |  27 |    8 | baseTimestamp        |                                       |
 *   |  35 |    8 | maxTimestamp         |                                       |
 *   |  43 |    8 | producerId           | -1 = none                             |
 *   |  51 |    2 | producerEpoch        |                                       |
 *   |  53 |    4 | baseSequence         | -1 = none                             |
 *   |  57 |    4 | recordsCount         |                                       |
 *   |  61 |   .. | records              | one compressed blob if codec != 0     |
 */
#include <stdint.h>
#include <stddef.h>

#define PL_HEADER_SIZE      61
#define PL_LOG_OVERHEAD     12   /* baseOffset + batchLength precede the counted bytes */
#define PL_CRC_START        21
#define PL_MAGIC            2
/* Smallest legal record: length, attributes, timestampDelta, offsetDelta,
 * keyLength, valueLength and headerCount varints of one byte each. */
#define PL_MIN_RECORD_SIZE  7

#define PL_ATTR_CODEC_MASK     0x07
#define PL_ATTR_LOG_APPEND_TS  0x08
#define PL_ATTR_TRANSACTIONAL  0x10
#define PL_ATTR_CONTROL        0x20
#define PL_ATTR_DELETE_HORIZON 0x40

/* Private error range, below LMDB's (-30600..-30799) and BerkeleyDB's. */
#define PL_OK          0
#define PL_ETORN       -31001  /* buffer ends inside a header or a batch */
#define PL_ECRC        -31002  /* stored CRC-32C differs from the computed one */
#define PL_EMAGIC      -31003  /* magic byte is not 2 */
#define PL_ELENGTH     -31004  /* batchLength below the header size or above the limit */
#define PL_ECORRUPT    -31005  /* header or record fields contradict each other */
#define PL_EOFFSET     -31006  /* baseOffset is not the expected next offset */
#define PL_EFULL       -31007  /* caller's output array is full; call again */
#define PL_ENOMEM      -31008
#define PL_EARG        -31009  /* invalid argument from the caller */
#define PL_ETOOLARGE   -31010  /* record or batch exceeds the configured limit */
/* dedup verdicts (see dedup.c) */
#define PL_EDUPLICATE  -31020  /* batch already appended: not an error for callers */
#define PL_EOUTOFORDER -31021
#define PL_EFENCED     -31022  /* epoch lower than the stored one */
#define PL_ETXNSTATE   -31023  /* non-transactional batch during an open transaction */

typedef struct {
    int64_t  base_offset;
    int32_t  batch_length;
    int32_t  partition_leader_epoch;
    int8_t   magic;
    uint32_t crc;
    int16_t  attributes;
    int32_t  last_offset_delta;
    int64_t  base_timestamp;
    int64_t  max_timestamp;
    int64_t  producer_id;
    int16_t  producer_epoch;
    int32_t  base_sequence;
    int32_t  records_count;
} pl_batch_hdr;

/* One batch found by pl_scan: its header and where it sits in the buffer. */
typedef struct {
    pl_batch_hdr h;
    uint64_t position;
    uint32_t size;          /* batch_length + 12 */
} pl_batch_info;

/* ---- CRC-32C (crc32c.c) ---- */
uint32_t pl_crc32c(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t pl_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t pl_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len);
int      pl_crc32c_hw_available(void);

/* ---- batch building (batch.c) ----
 * A builder owns a growing buffer whose first 61 bytes are reserved for the
 * header; records are encoded straight after. */
typedef struct pl_builder pl_builder;

pl_builder *pl_builder_new(size_t capacity);
void     pl_builder_free(pl_builder *b);
void     pl_builder_reset(pl_builder *b);
/* key_len/value_len of -1 mean null.  headers is the already encoded header
 * list (per header: keyLength varint, key, valueLength varint, value). */
int      pl_builder_append(pl_builder *b, int64_t timestamp,
                           const char *key, int64_t key_len,
                           const char *value, int64_t value_len,
                           const char *headers, int64_t headers_len,
                           int32_t header_count);
/* Append n records in one call.  values/keys/headers are concatenations of
 * the records' fields with per-record lengths (-1 = null); keys == NULL
 * means every key is null, headers == NULL no headers, timestamps == NULL
 * every record at `timestamp`.  On error nothing of this call is kept. */
int      pl_builder_append_many(pl_builder *b, int32_t n, int64_t timestamp,
                                const int64_t *timestamps,
                                const char *keys, const int64_t *key_lens,
                                const char *values, const int64_t *value_lens,
                                const char *headers, const int64_t *headers_lens,
                                const int32_t *header_counts);
int32_t  pl_builder_count(const pl_builder *b);
size_t   pl_builder_size(const pl_builder *b);     /* bytes incl. the 61-byte header */
/* Bytes one more record would add (for batch.size / message.max.bytes checks). */
size_t   pl_record_size(int64_t key_len, int64_t value_len, int64_t headers_len,
                        int32_t header_count, int64_t ts_delta, int32_t offset_delta);
/* Writes the header (baseOffset 0) and the CRC; returns a pointer to the
 * finished batch, valid until the next builder call, and its size in *len. */
uint8_t *pl_builder_finish(pl_builder *b, int64_t producer_id, int16_t producer_epoch,
                           int32_t base_sequence, int16_t attributes, size_t *len);
/* The raw records region (for compression) of the current builder. */
uint8_t *pl_builder_records(pl_builder *b, size_t *len);
int64_t  pl_builder_base_timestamp(const pl_builder *b);
int64_t  pl_builder_max_timestamp(const pl_builder *b);

/* Fill bytes 0..60 of buf from h (batch_length, magic and crc are computed:
 * batch_length = len - 12, crc over buf[21..len)).  buf[61..len) must hold
 * the records region already. */
int      pl_batch_write_header(uint8_t *buf, size_t len, const pl_batch_hdr *h);
/* Build a transaction marker: a control batch with one record whose key is
 * (version 0, type) and value (version 0, coordinator_epoch).  out needs
 * PL_CONTROL_BATCH_SIZE bytes. */
#define PL_CONTROL_BATCH_SIZE 78
int      pl_control_batch(uint8_t *out, size_t cap, int64_t producer_id, int16_t producer_epoch,
                          int16_t type, int32_t coordinator_epoch, int64_t timestamp);

/* ---- scanning and decoding (batch.c) ---- */
int      pl_parse_header(const uint8_t *buf, size_t len, pl_batch_hdr *h);
/* Walk whole batches from buf[0], checking length, magic, field sanity and
 * (if verify_crc) CRC-32C.  When expect_offset >= 0, each batch must start at
 * the offset after the previous one, the first at expect_offset.
 * Stores up to cap infos in out, the count in *n and the end of the valid
 * prefix in *valid_end.  Returns PL_OK at the exact end of buf, PL_EFULL when
 * out filled first, else the reason the valid prefix ends. */
int      pl_scan(const uint8_t *buf, size_t len, uint32_t max_batch_size, int verify_crc,
                 int64_t expect_offset, pl_batch_info *out, size_t cap,
                 size_t *n, size_t *valid_end);

/* Fields per record written by pl_decode_records, as int64. */
#define PL_REC_FIELDS 8
/* offset, timestamp, key_pos, key_len, value_pos, value_len, headers_pos, header_count
 * (positions relative to recs; length -1 = null) */
int      pl_decode_records(const uint8_t *recs, size_t len, int32_t count,
                           int64_t base_offset, int64_t base_timestamp,
                           int64_t *out, size_t cap_records, int32_t *n);
/* Decode the header list of one record: 4 int64 per header
 * (key_pos, key_len, value_pos, value_len), positions relative to buf. */
int      pl_decode_headers(const uint8_t *buf, size_t len, int32_t count, int64_t *out);

/* Build lookup tables; call once before threads share the module. */
void     pl_init(void);

/* ---- producer state and the dedup check (dedup.c) ----
 * Per (partition, producer id): the epoch, the open transaction's first
 * offset and the metadata of the last PL_DEDUP_WINDOW batches, oldest first
 * (Kafka's ProducerStateEntry). */
#define PL_DEDUP_WINDOW 5
#define PL_NO_EPOCH     -1

typedef struct {
    int32_t first_seq;
    int32_t last_seq;
    int64_t last_offset;
    int32_t offset_delta;
    int64_t timestamp;
} pl_batch_meta;

typedef struct {
    int16_t producer_epoch;            /* PL_NO_EPOCH: no state (new or expired) */
    int32_t coordinator_epoch;
    int64_t last_timestamp;
    int64_t current_txn_first_offset;  /* -1: no open transaction */
    int64_t last_update_ms;            /* wall clock of the last write (expiration) */
    int32_t n;
    pl_batch_meta batches[PL_DEDUP_WINDOW];
} pl_pstate;

/* Verdict for a data batch from a producer whose state is s:
 *   0               append it
 *   PL_EDUPLICATE   already appended: *dup = window index of the original
 *   PL_EFENCED      epoch older than the stored one
 *   PL_EOUTOFORDER  sequence gap (same epoch) or a new epoch not starting at 0
 *   PL_ETXNSTATE    a non-transactional batch while a transaction is open */
int  pl_dedup_check(const pl_pstate *s, int16_t epoch, int32_t first_seq, int32_t last_seq,
                    int is_transactional, int *dup);
/* Record an appended data batch (after pl_dedup_check said 0). */
void pl_dedup_update(pl_pstate *s, int16_t epoch, int32_t first_seq, int32_t last_seq,
                     int64_t first_offset, int64_t last_offset, int64_t max_timestamp,
                     int is_transactional, int64_t now_ms);
/* Record a transaction marker: the transaction is closed, the epoch may rise. */
int  pl_dedup_marker(pl_pstate *s, int16_t epoch, int32_t coordinator_epoch,
                     int64_t timestamp, int64_t now_ms);
/* Big-endian serialisation for LMDB (layout in dedup.c). */
#define PL_PSTATE_MAX_SIZE 172   /* 32 + 28 * PL_DEDUP_WINDOW */
int  pl_pstate_encode(const pl_pstate *s, uint8_t *out, size_t cap);   /* bytes or <0 */
int  pl_pstate_decode(const uint8_t *in, size_t len, pl_pstate *s);

/* ---- partitioner (partition.c) ----
 * Kafka's murmur2 (seed 0x9747b28c), so a key lands where a Kafka cluster's
 * default partitioner would put it: (murmur2(key) & 0x7fffffff) % partitions. */
int32_t  pl_murmur2(const char *key, size_t len);
int32_t  pl_partition_for_key(const char *key, size_t len, int32_t num_partitions);
/* Partition of each of n keys (concatenated, lengths in key_lens; -1 = null
 * key, which gets `keyless`). */
int      pl_partition_many(int32_t n, const char *keys, const int64_t *key_lens,
                           int32_t num_partitions, int32_t keyless, int32_t *out);

/* ---- cross-process wake-up (notify.c) ----
 * A shared, mmap()ed counter: writers bump it after every append and wake
 * waiters; a consumer with nothing to read sleeps until it changes (a futex
 * on Linux, a short sleep elsewhere).  Layout: uint32 seq, uint32 waiters. */
uint32_t pl_notify_seq(uint32_t *shared);
void     pl_notify_bump(uint32_t *shared);
/* Returns 0 when woken or the counter moved, 1 on timeout. */
int      pl_notify_wait(uint32_t *shared, uint32_t seen, int64_t timeout_us);
