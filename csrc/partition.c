/* partition.c -- Kafka's default key partitioner (murmur2, as in the Java
 * client's Utils.murmur2), byte for byte, so keyed records land on the same
 * partition numbers as on a Kafka cluster. */
#include "pylog.h"

int32_t pl_murmur2(const char *key, size_t len)
{
    const uint8_t *data = (const uint8_t *)key;
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)len;
    size_t n4 = len / 4;
    for (size_t i = 0; i < n4; i++) {
        const uint8_t *p = data + 4 * i;
        uint32_t k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const uint8_t *tail = data + (len & ~(size_t)3);
    switch (len % 4) {
    case 3: h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1: h ^= tail[0];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

int32_t pl_partition_for_key(const char *key, size_t len, int32_t num_partitions)
{
    if (num_partitions <= 0)
        return PL_EARG;
    return (int32_t)(((uint32_t)pl_murmur2(key, len) & 0x7fffffffu) % (uint32_t)num_partitions);
}

int pl_partition_many(int32_t n, const char *keys, const int64_t *key_lens,
                      int32_t num_partitions, int32_t keyless, int32_t *out)
{
    if (num_partitions <= 0)
        return PL_EARG;
    const char *k = keys;
    for (int32_t i = 0; i < n; i++) {
        int64_t kl = key_lens[i];
        if (kl < 0) {
            out[i] = keyless;
            continue;
        }
        out[i] = pl_partition_for_key(k, (size_t)kl, num_partitions);
        k += kl;
    }
    return PL_OK;
}
