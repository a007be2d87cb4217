/* crc32c.c -- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
 *
 * pl_crc32c() picks, once, the CPU's CRC instruction (SSE4.2 crc32 on x86-64,
 * the CRC extension on ARMv8) when present, else a slicing-by-8 table loop.
 *
 * The hardware loop runs three independent streams over adjacent blocks so
 * the instruction's 3-cycle latency is hidden, then joins the streams with
 * "shift" tables: for a raw CRC register r, shift_n(r) is the register after
 * feeding n zero bytes, and crc(A || B) = shift_|B|(crc(A)) ^ crc0(B).
 * shift_n is linear over GF(2), so four 256-entry tables indexed by the
 * register's bytes give it in four lookups.
 */
#include "pylog.h"
#include <string.h>

#define POLY 0x82F63B78u
#define LONG_BLOCK  8192
#define SHORT_BLOCK 256

static uint32_t table8[8][256];
static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];
static int tables_ready;

static uint32_t sw_zeros(uint32_t reg, size_t n)
{
    while (n--)
        reg = (reg >> 8) ^ table8[0][reg & 0xff];
    return reg;
}

static void build_shift(uint32_t t[4][256], size_t n)
{
    uint32_t bit_image[32];
    for (int i = 0; i < 32; i++)
        bit_image[i] = sw_zeros(1u << i, n);
    for (int k = 0; k < 4; k++)
        for (int b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int i = 0; i < 8; i++)
                if (b & (1 << i))
                    v ^= bit_image[8 * k + i];
            t[k][b] = v;
        }
}

void pl_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table8[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table8[0][n];
        for (int k = 1; k < 8; k++) {
            c = table8[0][c & 0xff] ^ (c >> 8);
            table8[k][n] = c;
        }
    }
    build_shift(shift_long, LONG_BLOCK);
    build_shift(shift_short, SHORT_BLOCK);
    tables_ready = 1;
}

static inline uint32_t shift(uint32_t t[4][256], uint32_t reg)
{
    return t[0][reg & 0xff] ^ t[1][(reg >> 8) & 0xff] ^
           t[2][(reg >> 16) & 0xff] ^ t[3][reg >> 24];
}

static inline uint64_t load64le(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint32_t pl_crc32c_sw(uint32_t crc, const uint8_t *buf, size_t len)
{
    if (!tables_ready)
        pl_init();
    uint32_t reg = ~crc;
    while (len && ((uintptr_t)buf & 7)) {
        reg = (reg >> 8) ^ table8[0][(reg ^ *buf++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t w = load64le(buf) ^ reg;
        reg = table8[7][w & 0xff] ^ table8[6][(w >> 8) & 0xff] ^
              table8[5][(w >> 16) & 0xff] ^ table8[4][(w >> 24) & 0xff] ^
              table8[3][(w >> 32) & 0xff] ^ table8[2][(w >> 40) & 0xff] ^
              table8[1][(w >> 48) & 0xff] ^ table8[0][w >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--)
        reg = (reg >> 8) ^ table8[0][(reg ^ *buf++) & 0xff];
    return ~reg;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HW_TARGET __attribute__((target("sse4.2")))
#define CRC8(r, p)  ((uint32_t)_mm_crc32_u64((r), load64le(p)))
#define CRC1(r, b)  _mm_crc32_u8((r), (b))
static int hw_probe(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define HW_TARGET __attribute__((target("+crc")))
#define CRC8(r, p)  __crc32cd((r), load64le(p))
#define CRC1(r, b)  __crc32cb((r), (b))
static int hw_probe(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#ifdef HW_TARGET
static HW_TARGET uint32_t streams3(uint32_t reg, const uint8_t **pbuf, size_t *plen,
                                   size_t block, uint32_t t[4][256])
{
    const uint8_t *p = *pbuf;
    size_t len = *plen;
    while (len >= 3 * block) {
        uint32_t r0 = reg, r1 = 0, r2 = 0;
        const uint8_t *end = p + block;
        do {
            r0 = CRC8(r0, p);
            r1 = CRC8(r1, p + block);
            r2 = CRC8(r2, p + 2 * block);
            p += 8;
        } while (p < end);
        reg = shift(t, r0) ^ r1;
        reg = shift(t, reg) ^ r2;
        p += 2 * block;
        len -= 3 * block;
    }
    *pbuf = p;
    *plen = len;
    return reg;
}

HW_TARGET uint32_t pl_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len)
{
    if (!tables_ready)
        pl_init();
    uint32_t reg = ~crc;
    while (len && ((uintptr_t)buf & 7)) {
        reg = CRC1(reg, *buf++);
        len--;
    }
    reg = streams3(reg, &buf, &len, LONG_BLOCK, shift_long);
    reg = streams3(reg, &buf, &len, SHORT_BLOCK, shift_short);
    while (len >= 8) {
        reg = CRC8(reg, buf);
        buf += 8;
        len -= 8;
    }
    while (len--)
        reg = CRC1(reg, *buf++);
    return ~reg;
}

int pl_crc32c_hw_available(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = hw_probe();
    return cached;
}
#else
uint32_t pl_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len)
{
    return pl_crc32c_sw(crc, buf, len);
}
int pl_crc32c_hw_available(void) { return 0; }
#endif

uint32_t pl_crc32c(uint32_t crc, const uint8_t *buf, size_t len)
{
    if (pl_crc32c_hw_available())
        return pl_crc32c_hw(crc, buf, len);
    return pl_crc32c_sw(crc, buf, len);
}
