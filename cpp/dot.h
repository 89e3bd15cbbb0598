// Dot-product kernels for the heads' vocabulary projection: one weight row against M activation vectors.
//
// The projection is the heads' hot loop (49,152 x 576 for SmolLM2: as many multiply-adds as a fifth of a backbone
// token), so each row is read once for all M heads that share it. AVX2/F16C paths where the compiler targets them,
// a scalar fallback elsewhere; the scalar code is also the reference the tests compare against through numpy.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MEDUSA_AVX2 1
#endif

namespace medusa {

static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

#ifdef MEDUSA_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline int32_t hsum256_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#endif

// out[m] = sum_i w[i] * x[m][i] for m < M; x rows are contiguous with stride n.
template <int M>
static inline void dot_f32(const float* w, const float* x, int n, float* out) {
    int i = 0;
#ifdef MEDUSA_AVX2
    __m256 acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 wv = _mm256_loadu_ps(w + i);
        for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)m * n + i), acc[m]);
    }
    for (int m = 0; m < M; m++) out[m] = hsum256(acc[m]);
#else
    for (int m = 0; m < M; m++) out[m] = 0.0f;
#endif
    for (; i < n; i++)
        for (int m = 0; m < M; m++) out[m] += w[i] * x[(size_t)m * n + i];
}

template <int M>
static inline void dot_f16(const uint16_t* w, const float* x, int n, float* out) {
    int i = 0;
#if defined(MEDUSA_AVX2) && defined(__F16C__)
    __m256 acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + i)));
        for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)m * n + i), acc[m]);
    }
    for (int m = 0; m < M; m++) out[m] = hsum256(acc[m]);
#else
    for (int m = 0; m < M; m++) out[m] = 0.0f;
#endif
    for (; i < n; i++) {
        const float wf = fp16_to_fp32(w[i]);
        for (int m = 0; m < M; m++) out[m] += wf * x[(size_t)m * n + i];
    }
}

// int8 weights against int8 activations: exact int32 sums (the caller applies row scale x activation scale).
template <int M>
static inline void dot_i8(const int8_t* w, const int8_t* x, int n, int32_t* out) {
    int i = 0;
#ifdef MEDUSA_AVX2
    __m256i acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (; i + 32 <= n; i += 32) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + i));
        // maddubs wants unsigned x signed: move the activation's sign onto the weight (llama.cpp's trick).
        for (int m = 0; m < M; m++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i*)(x + (size_t)m * n + i));
            const __m256i ax = _mm256_sign_epi8(xv, xv);
            const __m256i sw = _mm256_sign_epi8(wv, xv);
            acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones));
        }
    }
    for (int m = 0; m < M; m++) out[m] = hsum256_i32(acc[m]);
#else
    for (int m = 0; m < M; m++) out[m] = 0;
#endif
    for (; i < n; i++)
        for (int m = 0; m < M; m++) out[m] += (int32_t)w[i] * (int32_t)x[(size_t)m * n + i];
}

}  // namespace medusa
