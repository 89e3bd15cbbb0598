#include "ternary_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "dot.h"

namespace medusa {

namespace {

#ifdef MEDUSA_AVX2
// c_mt tokens against one weight row: the row's 32-byte blocks are decoded to 4 code vectors once and multiplied
// (unsigned codes 0..2 by signed int8 activations, maddubs) with every token of the tile. Products of a block fit
// int16 (4 maddubs lanes: at most 4 * 2 * 2 * 128 = 2048), then widen to int32 per block: no overflow at any K.
template <int c_mt>
inline void row_tile(const uint8_t* row, int nb, const int8_t* q, int K, int32_t* out) {
    const __m256i mask = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[c_mt];
    for (int m = 0; m < c_mt; ++m) acc[m] = _mm256_setzero_si256();
    for (int b = 0; b < nb; ++b) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(row + 32 * b));
        const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(w, 6), mask);
        const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
        const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(w, 2), mask);
        const __m256i c3 = _mm256_and_si256(w, mask);
        for (int m = 0; m < c_mt; ++m) {
            const int8_t* a = q + (size_t)m * K + 128 * b;
            __m256i p = _mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i*)a));
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i*)(a + 32))));
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c2, _mm256_loadu_si256((const __m256i*)(a + 64))));
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const __m256i*)(a + 96))));
            acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(p, ones));
        }
    }
    for (int m = 0; m < c_mt; ++m) out[m] = hsum256_i32(acc[m]);
}
#endif

}  // namespace

void quantize_acts(const float* x, int M, int K, int8_t* q, float* scale, int32_t* sum) {
    for (int m = 0; m < M; ++m) {
        const float* r = x + (size_t)m * K;
        float amax = 0.f;
        for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(r[k]));
        const double mx = std::max(1e-5, (double)amax);
        const float s = (float)(127.0 / mx);
        int32_t t = 0;
        for (int k = 0; k < K; ++k) {
            const float v = r[k] * s;
            int iv = (int)std::nearbyint(v);  // default rounding mode: half to even, as bitnet.cpp's nearest_int
            iv = std::clamp(iv, -128, 127);
            q[(size_t)m * K + k] = (int8_t)iv;
            t += iv;
        }
        scale[m] = s;
        sum[m] = t;
    }
}

int32_t i2s_row_codes_dot(const uint8_t* row, const int8_t* a, int K) {
    int32_t s = 0;
    for (int b = 0; b < K / 128; ++b)
        for (int p = 0; p < 32; ++p) {
            const int byte = row[b * 32 + p];
            for (int g = 0; g < 4; ++g) s += ((byte >> (6 - 2 * g)) & 3) * a[b * 128 + 32 * g + p];
        }
    return s;
}

void ternary_gemm(const uint8_t* w, const float* wscale, int N, int K, const int8_t* q, const float* scale,
              const int32_t* sum, int M, float* y) {
    for (int n = 0; n < N; ++n) {
        const uint8_t* row = w + (size_t)n * (K / 4);
        for (int m = 0; m < M; ++m) {
            const int32_t s = i2s_row_codes_dot(row, q + (size_t)m * K, K);
            y[(size_t)m * N + n] = (float)(s - sum[m]) / scale[m] * wscale[n];
        }
    }
}

size_t i2s_find_code3(const uint8_t* data, size_t n) {
    // a 2-bit field is 3 when both its bits are set: x & (x >> 1) has its low bit set there
    const uint64_t low = 0x5555555555555555ull;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {  // eight words per test: the compiler keeps them in vector registers
        uint64_t any = 0;
        for (int j = 0; j < 8; ++j) {
            uint64_t x;
            std::memcpy(&x, data + i + 8 * j, 8);
            any |= x & (x >> 1) & low;
        }
        if (any) break;
    }
    for (; i < n; ++i)
        if (data[i] & (data[i] >> 1) & 0x55) return i;
    return n;
}

void ternary_gemm_rows(const uint8_t* w, int K, int r0, int r1, int N, const int8_t* q, const float* qscale,
                       const int32_t* qsum, int M, float wscale, float* y) {
    [[maybe_unused]] const int nb = K / 128;
    int32_t s[8];
    for (int r = r0; r < r1; ++r) {
        const uint8_t* row = w + (size_t)r * (K / 4);
        for (int m0 = 0; m0 < M; m0 += 8) {
            const int mt = std::min(8, M - m0);
            const int8_t* qa = q + (size_t)m0 * K;
#ifdef MEDUSA_AVX2
            switch (mt) {
                case 1: row_tile<1>(row, nb, qa, K, s); break;
                case 2: row_tile<2>(row, nb, qa, K, s); break;
                case 3: row_tile<3>(row, nb, qa, K, s); break;
                case 4: row_tile<4>(row, nb, qa, K, s); break;
                case 5: row_tile<5>(row, nb, qa, K, s); break;
                case 6: row_tile<6>(row, nb, qa, K, s); break;
                case 7: row_tile<7>(row, nb, qa, K, s); break;
                default: row_tile<8>(row, nb, qa, K, s); break;
            }
#else
            for (int m = 0; m < mt; ++m) s[m] = i2s_row_codes_dot(row, qa + (size_t)m * K, K);
#endif
            for (int m = 0; m < mt; ++m)
                y[(size_t)(m0 + m) * N + r] = (float)(s[m] - qsum[m0 + m]) / qscale[m0 + m] * wscale;
        }
    }
}

}  // namespace medusa
