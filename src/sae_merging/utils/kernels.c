/* Compiled loops for the child's hot path over 16-bit entries (bf16, fp16): the archive's
 * packed form expanded and compressed, eq. 4 in float32 rounded to bf16, and the magnitude
 * counts of a threshold search. Each loop is bit-equal to the NumPy/torch code it replaces
 * (`utils/kernels.py` loads this file, compiled at first use; tests compare both). x86-64
 * gets SSSE3/AVX2 paths, chosen at run time; elsewhere, and on the tails, plain C.
 *
 * A packed tensor: a bitmask of its non-zero bit patterns, most significant bit first
 * (NumPy's packbits), and those entries' values in order. */

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define SAE_X86 1
#else
#define SAE_X86 0
#endif

/* EXPAND[m]: the byte shuffle that spreads the popcount(m) first values of a 16-byte load
 * into the 8 lanes whose bits are set in the mask byte m (lane i: bit 7 - i); 0x80 zeroes.
 * COMPRESS[m]: the shuffle that gathers the lanes whose bit i (lane i, least significant
 * first) is set in m to the front. REVERSED[m]: m's bits in the opposite order. */
static uint8_t EXPAND[256][16], COMPRESS[256][16], REVERSED[256];
static int HAS_SSSE3, HAS_AVX2;

__attribute__((constructor)) static void sae_kernels_init(void) {
    for (int m = 0; m < 256; m++) {
        int taken = 0, out = 0;
        memset(EXPAND[m], 0x80, 16);
        memset(COMPRESS[m], 0x80, 16);
        REVERSED[m] = 0;
        for (int lane = 0; lane < 8; lane++) {
            if (m & (0x80 >> lane)) {
                EXPAND[m][2 * lane] = (uint8_t)(2 * taken);
                EXPAND[m][2 * lane + 1] = (uint8_t)(2 * taken + 1);
                taken++;
            }
            if (m & (1 << lane)) {
                COMPRESS[m][2 * out] = (uint8_t)(2 * lane);
                COMPRESS[m][2 * out + 1] = (uint8_t)(2 * lane + 1);
                out++;
                REVERSED[m] |= (uint8_t)(0x80 >> lane);
            }
        }
    }
#if SAE_X86
    __builtin_cpu_init();
    HAS_SSSE3 = __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("popcnt") ? 1 : 0;
    HAS_AVX2 = __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
}

/* Which paths this CPU runs: bit 0 SSSE3 (expand, compress), bit 1 AVX2 (mixing, counting). */
int sae_simd(void) { return HAS_SSSE3 | (HAS_AVX2 << 1); }

/* ---- unpack: entries [first, first + n) of a packed tensor into out; `values` points at the
 * value of the first kept entry at or after `first`, `available` values lie from there.
 * Returns how many values were consumed (-1: the mask asks for more than are available, a
 * damaged file; nothing is read past them). */

static int64_t unpack_scalar(const uint8_t *mask, const uint16_t *values, int64_t first, int64_t n,
                             uint16_t *out, int64_t available) {
    int64_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t e = first + i;
        int bit = (mask[e >> 3] >> (7 - (e & 7))) & 1;
        if (bit && used >= available) return -1;
        out[i] = bit ? values[used] : 0;
        used += bit;
    }
    return used;
}

#if SAE_X86
__attribute__((target("ssse3,popcnt"))) static int64_t unpack_ssse3(const uint8_t *mask,
                                                                    const uint16_t *values,
                                                                    int64_t first, int64_t n,
                                                                    uint16_t *out, int64_t available) {
    int64_t i = 0, used = 0;
    int64_t head = (8 - (first & 7)) & 7; /* entries before the first whole mask byte */
    if (head > n) head = n;
    used = unpack_scalar(mask, values, first, head, out, available);
    if (used < 0) return -1;
    i = head;
    const uint8_t *byte = mask + ((first + head) >> 3);
    /* a 16-byte load of values must stay inside the `available` ones */
    for (; i + 8 <= n && used + 8 <= available; i += 8, byte++) {
        unsigned m = *byte;
        __m128i v = _mm_loadu_si128((const __m128i *)(values + used));
        v = _mm_shuffle_epi8(v, _mm_loadu_si128((const __m128i *)EXPAND[m]));
        _mm_storeu_si128((__m128i *)(out + i), v);
        used += __builtin_popcount(m);
    }
    int64_t rest = unpack_scalar(mask, values + used, first + i, n - i, out + i, available - used);
    return rest < 0 ? -1 : used + rest;
}
#endif

int64_t sae_unpack16(const uint8_t *mask, const uint16_t *values, int64_t first, int64_t n,
                     uint16_t *out, int64_t available) {
#if SAE_X86
    if (HAS_SSSE3) return unpack_ssse3(mask, values, first, n, out, available);
#endif
    return unpack_scalar(mask, values, first, n, out, available);
}

/* ---- pack: n entries (their first is entry 0 of mask byte 0) into the mask and the values
 * of the non-zero bit patterns (`capacity` values fit); the last mask byte padded with zero
 * bits. Returns how many values were written (-1: more than `capacity`). */

static int64_t pack_scalar(const uint16_t *in, int64_t n, uint8_t *mask, uint16_t *values,
                           int64_t kept, int64_t capacity) {
    for (int64_t i = 0; i < n; i += 8) {
        unsigned m = 0;
        for (int64_t j = i; j < i + 8 && j < n; j++) {
            if (in[j]) {
                if (kept >= capacity) return -1;
                values[kept++] = in[j];
                m |= 0x80u >> (j - i);
            }
        }
        mask[i >> 3] = (uint8_t)m;
    }
    return kept;
}

#if SAE_X86
__attribute__((target("ssse3,popcnt"))) static int64_t pack_ssse3(const uint16_t *in, int64_t n,
                                                                  uint8_t *mask, uint16_t *values,
                                                                  int64_t capacity) {
    int64_t i = 0, kept = 0;
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(in + i));
        __m128i zeros = _mm_packs_epi16(_mm_cmpeq_epi16(v, zero), zero);
        unsigned keep = ~(unsigned)_mm_movemask_epi8(zeros) & 0xffu; /* bit j: lane j kept */
        int count = __builtin_popcount(keep);
        if (kept + count > capacity) return -1;
        __m128i packed = _mm_shuffle_epi8(v, _mm_loadu_si128((const __m128i *)COMPRESS[keep]));
        if (kept + 8 <= capacity) {
            _mm_storeu_si128((__m128i *)(values + kept), packed);
        } else { /* near the end: only the kept values */
            uint16_t part[8];
            _mm_storeu_si128((__m128i *)part, packed);
            memcpy(values + kept, part, (size_t)count * 2);
        }
        mask[i >> 3] = REVERSED[keep];
        kept += count;
    }
    if (i < n) return pack_scalar(in + i, n - i, mask + (i >> 3), values, kept, capacity);
    return kept;
}
#endif

int64_t sae_pack16(const uint16_t *in, int64_t n, uint8_t *mask, uint16_t *values, int64_t capacity) {
#if SAE_X86
    if (HAS_SSSE3) return pack_ssse3(in, n, mask, values, capacity);
#endif
    return pack_scalar(in, n, mask, values, 0, capacity);
}

/* ---- eq. 4 on bf16: out = bf16(f32(a) * ra + f32(b) * rb), each product and the sum rounded
 * to float32 (no fused multiply-add), rounded to bf16 to the nearest even as torch rounds. A
 * NaN result's bf16 pattern is torch's choice per CPU path, so the loop stops before the block
 * of BLOCK entries that holds one, writing nothing of it (`out` may be `a`: that block's inputs
 * are intact), and returns how many entries it did; the caller does the rest with torch. */

#define BLOCK 64

static inline uint16_t bf16_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float f32_of(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* one block (at most BLOCK entries) into `part`: 1 when a result is NaN */
static int linear_block_scalar(const uint16_t *a, const uint16_t *b, int64_t n, float ra, float rb,
                               uint16_t *part) {
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float s = f32_of(a[i]) * ra + f32_of(b[i]) * rb; /* (built with -ffp-contract=off) */
        nan |= s != s;
        part[i] = bf16_of(s);
    }
    return nan;
}

#if SAE_X86
__attribute__((target("avx2"))) static int linear_block_avx2(const uint16_t *a, const uint16_t *b,
                                                             float ra, float rb, uint16_t *part) {
    const __m256 va = _mm256_set1_ps(ra), vb = _mm256_set1_ps(rb);
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    __m256 unordered = _mm256_setzero_ps();
    for (int i = 0; i < BLOCK; i += 8) {
        __m256i ia = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(a + i))), 16);
        __m256i ib = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + i))), 16);
        __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_castsi256_ps(ia), va),
                                 _mm256_mul_ps(_mm256_castsi256_ps(ib), vb));
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(s, s, _CMP_UNORD_Q));
        __m256i u = _mm256_castps_si256(s);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        r = _mm256_srli_epi32(r, 16);
        r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
        _mm_storeu_si128((__m128i *)(part + i), _mm256_castsi256_si128(r));
    }
    return _mm256_movemask_ps(unordered) != 0;
}
#endif

int64_t sae_linear_bf16(const uint16_t *a, const uint16_t *b, int64_t n, float ra, float rb, uint16_t *out) {
    uint16_t part[BLOCK];
    for (int64_t i = 0; i < n; i += BLOCK) {
        int64_t size = n - i < BLOCK ? n - i : BLOCK;
        int nan;
#if SAE_X86
        if (HAS_AVX2 && size == BLOCK)
            nan = linear_block_avx2(a + i, b + i, ra, rb, part);
        else
#endif
            nan = linear_block_scalar(a + i, b + i, size, ra, rb, part);
        if (nan) return i;
        memcpy(out + i, part, (size_t)size * 2);
    }
    return n;
}

/* ---- a threshold search's count over 16-bit keys (the bit pattern without its sign bit):
 * counts[t] += entries whose key is below thresholds[t]; with collect (low < high), the keys in
 * [low, high) appended to `collected` (room for `capacity`). Returns how many were collected
 * (-1: more than `capacity`). */

#define MAX_THRESHOLDS 32 /* (more: the plain loop) */

static int64_t count_scalar(const uint16_t *in, int64_t n, const int32_t *thresholds, int32_t count,
                            int64_t *counts, int32_t low, int32_t high, int32_t *collected,
                            int64_t found, int64_t capacity) {
    for (int32_t t = 0; t < count; t++) {
        int64_t below = 0;
        for (int64_t i = 0; i < n; i++) below += (int32_t)(in[i] & 0x7fffu) < thresholds[t];
        counts[t] += below;
    }
    if (low < high) {
        uint32_t width = (uint32_t)(high - low);
        for (int64_t i = 0; i < n; i++) {
            int32_t key = in[i] & 0x7fff;
            if ((uint32_t)(key - low) < width) { /* (one predictable branch) */
                if (found >= capacity) return -1;
                collected[found++] = key;
            }
        }
    }
    return found;
}

#if SAE_X86
__attribute__((target("avx2"))) static inline int64_t sum16(__m256i acc) {
    __m256i wide = _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); /* (counts: at most 4096 a lane) */
    __m128i half = _mm_add_epi32(_mm256_castsi256_si128(wide), _mm256_extracti128_si256(wide, 1));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0xb1));
    return _mm_cvtsi128_si32(half);
}

/* thresholds within [1, 32767] here; keys compared as signed 16-bit (they are 0..32767). Four
 * thresholds per pass over the chunk, their counts in registers (16-bit lanes, summed every
 * 4096 steps); the collecting rides along the first pass. */
__attribute__((target("avx2"))) static int64_t count_avx2(const uint16_t *in, int64_t n, const int32_t *thresholds,
                                                          int32_t count, int64_t *counts, int32_t low, int32_t high,
                                                          int32_t *collected, int64_t capacity, int64_t *done) {
    const __m256i keep = _mm256_set1_epi16(0x7fff);
    int bounded = high < 32768;
    const __m256i from = _mm256_set1_epi16((int16_t)(low - 1)); /* key > low - 1 (low >= 0) */
    const __m256i to = _mm256_set1_epi16((int16_t)(bounded ? high : 0));
    int64_t found = 0, whole = n - n % 16;
    for (int32_t group = 0; group < count || (group == 0 && low < high); group += 4) {
        int collecting = group == 0 && low < high;
        __m256i limit[4];
        for (int t = 0; t < 4; t++) /* (a missing threshold: 0, below which no key lies) */
            limit[t] = _mm256_set1_epi16((int16_t)(group + t < count ? thresholds[group + t] : 0));
        for (int64_t i = 0; i < whole;) {
            __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
            int64_t stop = i + 16 * 4096 < whole ? i + 16 * 4096 : whole;
            for (; i < stop; i += 16) {
                __m256i key = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(in + i)), keep);
                /* (-1 where below: subtracting counts it) */
                acc0 = _mm256_sub_epi16(acc0, _mm256_cmpgt_epi16(limit[0], key));
                acc1 = _mm256_sub_epi16(acc1, _mm256_cmpgt_epi16(limit[1], key));
                acc2 = _mm256_sub_epi16(acc2, _mm256_cmpgt_epi16(limit[2], key));
                acc3 = _mm256_sub_epi16(acc3, _mm256_cmpgt_epi16(limit[3], key));
                if (collecting) {
                    __m256i inside = _mm256_cmpgt_epi16(key, from);
                    if (bounded) inside = _mm256_and_si256(inside, _mm256_cmpgt_epi16(to, key));
                    /* two bits a lane; each set lane's key taken in order */
                    for (uint32_t m = (uint32_t)_mm256_movemask_epi8(inside); m; m &= m - 1, m &= m - 1) {
                        if (found >= capacity) return -1;
                        collected[found++] = in[i + __builtin_ctz(m) / 2] & 0x7fff;
                    }
                }
            }
            __m256i acc[4] = {acc0, acc1, acc2, acc3};
            for (int t = 0; t < 4 && group + t < count; t++) counts[group + t] += sum16(acc[t]);
        }
    }
    *done = whole;
    return found;
}
#endif

int64_t sae_count16(const uint16_t *in, int64_t n, const int32_t *thresholds, int32_t count,
                    int64_t *counts, int32_t low, int32_t high, int32_t *collected, int64_t capacity) {
    if (low < 0) low = 0; /* keys lie in [0, 32767] */
    if (high > 32768) high = 32768;
    if (count > MAX_THRESHOLDS) return count_scalar(in, n, thresholds, count, counts, low, high, collected, 0, capacity);
    int32_t inner[MAX_THRESHOLDS], where[MAX_THRESHOLDS], used = 0;
    int64_t inner_counts[MAX_THRESHOLDS] = {0}, done = 0, found = 0;
    for (int32_t t = 0; t < count; t++) { /* keys lie in [0, 32767]: the ends need no comparing */
        if (thresholds[t] >= 32768) counts[t] += n;
        else if (thresholds[t] > 0) where[used] = t, inner[used++] = thresholds[t];
    }
#if SAE_X86
    if (HAS_AVX2) {
        found = count_avx2(in, n, inner, used, inner_counts, low, high, collected, capacity, &done);
        if (found < 0) return -1;
    }
#endif
    found = count_scalar(in + done, n - done, inner, used, inner_counts, low, high, collected, found, capacity);
    for (int32_t t = 0; t < used; t++) counts[where[t]] += inner_counts[t];
    return found;
}
