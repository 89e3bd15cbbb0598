// Dot-product kernels for the heads' vocabulary projection: one weight row against M activation vectors.
//
// The projection is the heads' hot loop (49,152 x 576 for SmolLM2: as many multiply-adds as a fifth of a backbone
// token), so each row is read once for all M heads that share it. AVX2/F16C paths where the compiler targets them,
// a scalar fallback elsewhere; the scalar code is also the reference the tests compare against through numpy.
#pragma once

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // every AVX2 CPU has F16C
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

#if defined(MEDUSA_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MEDUSA_VNNI 1
// int8 weights against int8 activations stored offset by 128 as uint8 (xu = x ^ 0x80, i.e. x + 128):
// out[m] = sum_i w[i] * xu[m][i], exact in int32; the caller subtracts 128 * sum_i w[i] to get sum_i w[i] * x[i].
// VNNI multiplies u8 x s8 straight into int32 (no int16 step that could saturate), so the sign trick dot_i8 needs
// (two extra instructions per vector and step) goes away. Built only where VNNI is; dot_i8 serves elsewhere.
template <int M>
static inline void dot_u8i8(const int8_t* w, const uint8_t* xu, int n, int32_t* out) {
    int i = 0;
    __m256i acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_si256();
    for (; i + 32 <= n; i += 32) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + i));
        for (int m = 0; m < M; m++)
            acc[m] = _mm256_dpbusd_epi32(acc[m], _mm256_loadu_si256((const __m256i*)(xu + (size_t)m * n + i)), wv);
    }
    for (int m = 0; m < M; m++) out[m] = hsum256_i32(acc[m]);
    for (; i < n; i++)
        for (int m = 0; m < M; m++) out[m] += (int32_t)w[i] * (int32_t)xu[(size_t)m * n + i];
}
#endif

// Calls f(std::integral_constant<int, K>()) with K = min(m, 8): the kernels are templates over how many vectors
// they take at once (their accumulators live in registers), and callers walk their vectors 8 at a time.
template <class F>
static inline void with_width(int m, F&& f) {
    switch (std::min(m, 8)) {
        case 1: f(std::integral_constant<int, 1>()); break;
        case 2: f(std::integral_constant<int, 2>()); break;
        case 3: f(std::integral_constant<int, 3>()); break;
        case 4: f(std::integral_constant<int, 4>()); break;
        case 5: f(std::integral_constant<int, 5>()); break;
        case 6: f(std::integral_constant<int, 6>()); break;
        case 7: f(std::integral_constant<int, 7>()); break;
        default: f(std::integral_constant<int, 8>()); break;
    }
}

// out[m * ldo + r] = sum_i w[r * ldw + i] * x[m * ldx + i] for r < R weight rows and m < MC vectors: R x MC
// independent accumulators, so a batch of one still keeps the FMA units busy (one accumulator waits on its own
// latency every step), and each weight row is loaded once for all MC vectors. Every output is summed in one order
// whatever R and MC (8 lanes, then the horizontal sum, then the scalar tail), so rows evaluated together equal rows
// evaluated one at a time, bit for bit (as long as the compiler does not fuse the scalar tail's multiply-adds in
// some instances only: heads.cpp is built with -ffp-contract=off).
#ifdef MEDUSA_AVX2
static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
#endif
static inline float to_f32(float v) { return v; }
static inline float to_f32(uint16_t v) { return fp16_to_fp32(v); }

template <int R, int MC, class W>
static inline void dot_block(const W* w, size_t ldw, const float* x, size_t ldx, int n, float* out, size_t ldo) {
    int i = 0;
    float res[MC][R];
#ifdef MEDUSA_AVX2
    __m256 acc[MC][R];
    for (int m = 0; m < MC; m++)
        for (int r = 0; r < R; r++) acc[m][r] = _mm256_setzero_ps();
    constexpr int per_line = 64 / sizeof(W);  // weights per cache line: each row prefetched a line at a time
    for (; i + 8 <= n; i += 8) {
        __m256 xv[MC];
        for (int m = 0; m < MC; m++) xv[m] = _mm256_loadu_ps(x + m * ldx + i);
        for (int r = 0; r < R; r++) {
            // 4 KB ahead of the row's stream: the projections stream their weights from memory, and a batch of
            // one does too little work per byte for the core's window to cover the latency (as in ternary_gemm)
            if (i % per_line == 0) _mm_prefetch((const char*)(w + r * ldw + i) + 4096, _MM_HINT_T0);
            const __m256 wv = load8(w + r * ldw + i);
            for (int m = 0; m < MC; m++) acc[m][r] = _mm256_fmadd_ps(wv, xv[m], acc[m][r]);
        }
    }
    for (int m = 0; m < MC; m++)
        for (int r = 0; r < R; r++) res[m][r] = hsum256(acc[m][r]);
#else
    for (int m = 0; m < MC; m++)
        for (int r = 0; r < R; r++) res[m][r] = 0.0f;
#endif
    for (; i < n; i++)
        for (int r = 0; r < R; r++) {
            const float wf = to_f32(w[r * ldw + i]);
            for (int m = 0; m < MC; m++) res[m][r] += wf * x[m * ldx + i];
        }
    for (int m = 0; m < MC; m++)
        for (int r = 0; r < R; r++) out[m * ldo + r] = res[m][r];
}

// out[m] = sum_i w[i] * x[m][i] for m < M; x rows are contiguous with stride n (one weight row, M vectors).
template <int M>
static inline void dot_f32(const float* w, const float* x, int n, float* out) {
    dot_block<1, M>(w, n, x, n, n, out, 1);
}
template <int M>
static inline void dot_f16(const uint16_t* w, const float* x, int n, float* out) {
    dot_block<1, M>(w, n, x, n, n, out, 1);
}

// Y[m, r] = W[r, :] . X[m, :] for all `rows` rows of row-major W [rows, n] and `m` vectors X [m, n] (ldx apart);
// Y rows ldy apart. Vectors go MC at a time with 8 / MC weight rows per pass (at most 8 accumulators).
template <class W>
static inline void matmul_rows(const W* w, int rows, int n, const float* x, size_t ldx, int m, float* y, size_t ldy) {
    for (int m0 = 0; m0 < m; m0 += 8) {
        const float* xb = x + m0 * ldx;
        float* yb = y + m0 * ldy;
        with_width(m - m0, [&](auto mc_tag) {
            constexpr int MC = decltype(mc_tag)::value;
            constexpr int R = MC >= 8 ? 1 : 8 / MC;
            int r = 0;
            for (; r + R <= rows; r += R) dot_block<R, MC>(w + (size_t)r * n, n, xb, ldx, n, yb + r, ldy);
            for (; r < rows; r++) dot_block<1, MC>(w + (size_t)r * n, n, xb, ldx, n, yb + r, ldy);
        });
    }
}

}  // namespace medusa
