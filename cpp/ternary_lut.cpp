#include "ternary_lut.h"

#include <algorithm>
#include <cstring>

#include "dot.h"

namespace medusa {

size_t lut_packed_bytes(int N, int K) { return (size_t)(N + LUT_TILE - 1) / LUT_TILE * LUT_TILE * (K / 4); }

size_t lut_table_bytes(int M, int K) { return (size_t)M * (K / 2) * 32; }

namespace {

// code of weight k in an I2_S row (canonical layout: byte p of block b holds k = 128b + 32g + p at shift 6 - 2g)
inline int code_at(const uint8_t* row, int k) {
    const int b = k / 128, r = k % 128, g = r / 32, p = r % 32;
    return (row[32 * b + p] >> (6 - 2 * g)) & 3;
}

}  // namespace

void lut_pack(const uint8_t* i2s, int N, int K, uint8_t* packed) {
    const int quads = K / 4;
    std::memset(packed, 0, lut_packed_bytes(N, K));
    for (int n = 0; n < N; ++n) {
        const uint8_t* row = i2s + (size_t)n * (K / 4);
        uint8_t* tile = packed + (size_t)(n / LUT_TILE) * quads * LUT_TILE;
        for (int u = 0; u < quads; ++u) {
            const int i0 = code_at(row, 4 * u) | code_at(row, 4 * u + 1) << 2;
            const int i1 = code_at(row, 4 * u + 2) | code_at(row, 4 * u + 3) << 2;
            tile[(size_t)u * LUT_TILE + n % LUT_TILE] = (uint8_t)(i0 | i1 << 4);
        }
    }
}

void lut_tables(const int8_t* q, int M, int K, uint8_t* tables) {
    for (int m = 0; m < M; ++m) {
        const int8_t* a = q + (size_t)m * K;
        uint8_t* t = tables + (size_t)m * (K / 2) * 32;
        int p = 0;
#ifdef MEDUSA_AVX2
        // entry i = (i & 3) * a + (i >> 2) * b as 16 int16 lanes, then its low bytes and high bytes side by side
        const __m256i c0 = _mm256_setr_epi16(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
        const __m256i c1 = _mm256_setr_epi16(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        for (; p < K / 2; ++p) {
            const __m256i e = _mm256_add_epi16(_mm256_mullo_epi16(_mm256_set1_epi16(a[2 * p]), c0),
                                               _mm256_mullo_epi16(_mm256_set1_epi16(a[2 * p + 1]), c1));
            // per lane: 8 low bytes then 8 high bytes; the 64-bit permute puts all 16 low bytes first
            const __m256i s = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(e, split), 0xD8);
            _mm256_storeu_si256((__m256i*)(t + 32 * p), s);
        }
#endif
        for (; p < K / 2; ++p)
            for (int i = 0; i < 16; ++i) {
                const int16_t e = (int16_t)((i & 3) * a[2 * p] + (i >> 2) * a[2 * p + 1]);
                t[32 * p + i] = (uint8_t)(e & 0xff);
                t[32 * p + 16 + i] = (uint8_t)((uint16_t)e >> 8);
            }
    }
}

bool lut_available() {
#ifdef MEDUSA_AVX2
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

#ifdef MEDUSA_AVX2
namespace {

// One tile of 32 rows against c_mt tokens: per quad, the weights' two nibbles index each token's two pair tables;
// low and high halves are looked up apart and interleaved into int16 (rows 0-7 and 16-23 from the unpacklo, 8-15
// and 24-31 from the unpackhi). int16 sums hold 16 quads (|entry| <= 3 * 128 * 2 per pair, two pairs a quad, so
// 16 * 1536 < 32768) and then widen into int32.
template <int c_mt>
void lut_tile(const uint8_t* tile, int quads, const uint8_t* tables, size_t table_stride, int32_t* out) {
    const __m256i nib = _mm256_set1_epi8(0x0F);
    __m256i acc32[c_mt][4];
    for (int m = 0; m < c_mt; ++m)
        for (int j = 0; j < 4; ++j) acc32[m][j] = _mm256_setzero_si256();
    for (int u0 = 0; u0 < quads; u0 += 16) {
        __m256i lo[c_mt], hi[c_mt];
        for (int m = 0; m < c_mt; ++m) lo[m] = hi[m] = _mm256_setzero_si256();
        for (int u = u0; u < std::min(quads, u0 + 16); ++u) {
            if (!(u & 1)) _mm_prefetch((const char*)(tile + (size_t)u * LUT_TILE) + 4096, _MM_HINT_T0);
            const __m256i w = _mm256_loadu_si256((const __m256i*)(tile + (size_t)u * LUT_TILE));
            const __m256i i0 = _mm256_and_si256(w, nib), i1 = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
            for (int m = 0; m < c_mt; ++m) {
                const uint8_t* t = tables + m * table_stride + (size_t)u * 64;
                const __m256i t0l = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)t));
                const __m256i t0h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(t + 16)));
                const __m256i t1l = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(t + 32)));
                const __m256i t1h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(t + 48)));
                const __m256i l0 = _mm256_shuffle_epi8(t0l, i0), h0 = _mm256_shuffle_epi8(t0h, i0);
                const __m256i l1 = _mm256_shuffle_epi8(t1l, i1), h1 = _mm256_shuffle_epi8(t1h, i1);
                lo[m] = _mm256_add_epi16(lo[m], _mm256_add_epi16(_mm256_unpacklo_epi8(l0, h0),
                                                                 _mm256_unpacklo_epi8(l1, h1)));
                hi[m] = _mm256_add_epi16(hi[m], _mm256_add_epi16(_mm256_unpackhi_epi8(l0, h0),
                                                                 _mm256_unpackhi_epi8(l1, h1)));
            }
        }
        for (int m = 0; m < c_mt; ++m) {
            acc32[m][0] = _mm256_add_epi32(acc32[m][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[m])));
            acc32[m][1] = _mm256_add_epi32(acc32[m][1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[m], 1)));
            acc32[m][2] = _mm256_add_epi32(acc32[m][2], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[m])));
            acc32[m][3] = _mm256_add_epi32(acc32[m][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi[m], 1)));
        }
    }
    // acc32[m][0]: rows 0-7, [1]: rows 16-23, [2]: rows 8-15, [3]: rows 24-31
    for (int m = 0; m < c_mt; ++m) {
        _mm256_storeu_si256((__m256i*)(out + m * 32), acc32[m][0]);
        _mm256_storeu_si256((__m256i*)(out + m * 32 + 8), acc32[m][2]);
        _mm256_storeu_si256((__m256i*)(out + m * 32 + 16), acc32[m][1]);
        _mm256_storeu_si256((__m256i*)(out + m * 32 + 24), acc32[m][3]);
    }
}

}  // namespace
#endif

void lut_gemm_rows(const uint8_t* packed, int K, int r0, int r1, int N, const uint8_t* tables, const float* qscale,
                   const int32_t* qsum, int M, float wscale, float* y) {
#ifdef MEDUSA_AVX2
    const int quads = K / 4;
    const size_t table_stride = (size_t)(K / 2) * 32;
    int32_t s[4 * 32];
    for (int r = r0; r < r1; r += LUT_TILE) {
        const uint8_t* tile = packed + (size_t)(r / LUT_TILE) * quads * LUT_TILE;
        const int rows = std::min(LUT_TILE, N - r);
        for (int m0 = 0; m0 < M; m0 += 4) {  // four tokens: 8 int16 sums and 4 x 4 int32 sums in registers
            const int mt = std::min(4, M - m0);
            const uint8_t* tb = tables + m0 * table_stride;
            switch (mt) {
                case 1: lut_tile<1>(tile, quads, tb, table_stride, s); break;
                case 2: lut_tile<2>(tile, quads, tb, table_stride, s); break;
                case 3: lut_tile<3>(tile, quads, tb, table_stride, s); break;
                default: lut_tile<4>(tile, quads, tb, table_stride, s); break;
            }
            for (int m = 0; m < mt; ++m)
                for (int i = 0; i < rows; ++i)
                    y[(size_t)(m0 + m) * N + r + i] =
                        (float)(s[m * 32 + i] - qsum[m0 + m]) / qscale[m0 + m] * wscale;
        }
    }
#else
    (void)packed, (void)K, (void)r0, (void)r1, (void)N, (void)tables, (void)qscale, (void)qsum, (void)M, (void)wscale,
        (void)y;
#endif
}

}  // namespace medusa
