#include "ternary_gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "dot.h"
#include "ternary_lut.h"

namespace medusa {

namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MEDUSA_VNNI 1
#endif
#if defined(MEDUSA_VNNI) && defined(__AVX512BW__) && defined(MEDUSA_AVX2)
#define MEDUSA_VNNI512 1
#endif

#ifdef MEDUSA_AVX2
// Each row stream is prefetched this far ahead, one cache line per 64 bytes read. With a few vector operations per
// weight byte the core's window holds too few loads to cover memory latency, and the hardware prefetchers alone left
// the one-token kernel at two thirds of the read bandwidth that a bare streaming loop reaches (BENCHMARKS.md, I2_S).
// A prefetch past the matrix is harmless: it never faults.
constexpr int PREFETCH_AHEAD = 4096;

inline void prefetch_ahead(const uint8_t* p) { _mm_prefetch((const char*)p + PREFETCH_AHEAD, _MM_HINT_T0); }

// c_mt tokens against one weight row: the row's 32-byte blocks are decoded to 4 code vectors once and multiplied
// (unsigned codes 0..2 by signed int8 activations) with every token of the tile. AVX2: maddubs, whose int16 pair
// sums fit (at most 2 * 2 * 128 per lane, 4 per block), widened to int32 per block; VNNI: one vpdpbusd per 32
// codes, four products summed straight into each int32 lane. The same exact int32 sums either way.
template <int c_mt, bool vnni>
inline void row_tile(const uint8_t* row, int nb, const int8_t* q, int K, int32_t* out) {
    const __m256i mask = _mm256_set1_epi8(3);
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[c_mt];
    for (int m = 0; m < c_mt; ++m) acc[m] = _mm256_setzero_si256();
    for (int b = 0; b < nb; ++b) {
        if (!(b & 1)) prefetch_ahead(row + 32 * b);
        const __m256i w = _mm256_loadu_si256((const __m256i*)(row + 32 * b));
        const __m256i c[4] = {_mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
                              _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
                              _mm256_and_si256(_mm256_srli_epi16(w, 2), mask), _mm256_and_si256(w, mask)};
        for (int m = 0; m < c_mt; ++m) {
            const int8_t* a = q + (size_t)m * K + 128 * b;
            if constexpr (vnni) {
#ifdef MEDUSA_VNNI
                for (int g = 0; g < 4; ++g)
                    acc[m] = _mm256_dpbusd_epi32(acc[m], c[g], _mm256_loadu_si256((const __m256i*)(a + 32 * g)));
#endif
            } else {
                __m256i p = _mm256_maddubs_epi16(c[0], _mm256_loadu_si256((const __m256i*)a));
                for (int g = 1; g < 4; ++g)
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[g], _mm256_loadu_si256((const __m256i*)(a + 32 * g))));
                acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(p, ones));
            }
        }
    }
    for (int m = 0; m < c_mt; ++m) out[m] = hsum256_i32(acc[m]);
}

// A tile of mt (1..8) tokens through row_tile's instance for that width.
template <bool vnni>
void tile(int mt, const uint8_t* row, int nb, const int8_t* q, int K, int32_t* out) {
    switch (mt) {
        case 1: row_tile<1, vnni>(row, nb, q, K, out); break;
        case 2: row_tile<2, vnni>(row, nb, q, K, out); break;
        case 3: row_tile<3, vnni>(row, nb, q, K, out); break;
        case 4: row_tile<4, vnni>(row, nb, q, K, out); break;
        case 5: row_tile<5, vnni>(row, nb, q, K, out); break;
        case 6: row_tile<6, vnni>(row, nb, q, K, out); break;
        case 7: row_tile<7, vnni>(row, nb, q, K, out); break;
        default: row_tile<8, vnni>(row, nb, q, K, out); break;
    }
}

// c_rows rows against c_mt (1 to 4) tokens. One row and one token leave a single accumulator: VNNI's four
// vpdpbusd per block then form one dependency chain (latency 5, so a row ran at a fifth of the instruction's
// rate), and each row pays its horizontal sum for a few blocks. Rows side by side share each block's activation
// loads and run c_rows * c_mt independent chains. out is [c_mt][c_rows]. Integer sums: the same int32 results.
template <int c_rows, int c_mt, bool vnni>
inline void rows_tile(const uint8_t* row, size_t stride, int nb, const int8_t* q, int K, int32_t* out) {
    const __m256i mask = _mm256_set1_epi8(3);
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[c_rows][c_mt];
    for (int r = 0; r < c_rows; ++r)
        for (int m = 0; m < c_mt; ++m) acc[r][m] = _mm256_setzero_si256();
    for (int b = 0; b < nb; ++b) {
        __m256i a[c_mt][4];
        for (int m = 0; m < c_mt; ++m)
            for (int g = 0; g < 4; ++g) a[m][g] = _mm256_loadu_si256((const __m256i*)(q + (size_t)m * K + 128 * b + 32 * g));
        for (int r = 0; r < c_rows; ++r) {
            if (!(b & 1)) prefetch_ahead(row + r * stride + 32 * b);
            const __m256i w = _mm256_loadu_si256((const __m256i*)(row + r * stride + 32 * b));
            const __m256i c[4] = {_mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
                                  _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
                                  _mm256_and_si256(_mm256_srli_epi16(w, 2), mask), _mm256_and_si256(w, mask)};
            for (int m = 0; m < c_mt; ++m) {
                if constexpr (vnni) {
#ifdef MEDUSA_VNNI
                    for (int g = 0; g < 4; ++g) acc[r][m] = _mm256_dpbusd_epi32(acc[r][m], c[g], a[m][g]);
#endif
                } else {
                    __m256i p = _mm256_maddubs_epi16(c[0], a[m][0]);
                    for (int g = 1; g < 4; ++g) p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[g], a[m][g]));
                    acc[r][m] = _mm256_add_epi32(acc[r][m], _mm256_madd_epi16(p, ones));
                }
            }
        }
    }
    for (int m = 0; m < c_mt; ++m)
        for (int r = 0; r < c_rows; ++r) out[m * c_rows + r] = hsum256_i32(acc[r][m]);
}

#ifdef MEDUSA_VNNI
// One token against one row with VNNI, decoding by masks alone: w & (3 << 2j) is code * 4^j in place, so each of the
// four code groups gets its own accumulator, scaled by 4^j, and an exact arithmetic shift undoes the scale at the
// end (every lane of that accumulator is a multiple of 4^j). Four masks per 128 weights instead of three shifts and
// four masks, and with two blocks unrolled eight independent chains hide vpdpbusd's latency in a single row.
// Overflow: |code * 4^j| <= 128 and |q| <= 128, so a lane gains at most 4 * 128 * 128 = 2^16 per block: K up to
// 2^22 fits int32.
inline int32_t one_token_row_vnni(const uint8_t* row, int nb, const int8_t* q) {
    const __m256i mk[4] = {_mm256_set1_epi8((char)0xC0), _mm256_set1_epi8(0x30), _mm256_set1_epi8(0x0C),
                           _mm256_set1_epi8(0x03)};
    __m256i acc[2][4];
    for (int u = 0; u < 2; ++u)
        for (int g = 0; g < 4; ++g) acc[u][g] = _mm256_setzero_si256();
    auto block = [&](int u, int b) {
        const __m256i w = _mm256_loadu_si256((const __m256i*)(row + 32 * b));
        for (int g = 0; g < 4; ++g)
            acc[u][g] = _mm256_dpbusd_epi32(acc[u][g], _mm256_and_si256(w, mk[g]),
                                            _mm256_loadu_si256((const __m256i*)(q + 128 * b + 32 * g)));
    };
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        prefetch_ahead(row + 32 * b);
        block(0, b);
        block(1, b + 1);
    }
    if (b < nb) block(0, b);
    __m256i s = _mm256_setzero_si256();
    for (int u = 0; u < 2; ++u)
        s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_add_epi32(_mm256_srai_epi32(acc[u][0], 6),
                                                                  _mm256_srai_epi32(acc[u][1], 4)),
                                                 _mm256_add_epi32(_mm256_srai_epi32(acc[u][2], 2), acc[u][3])));
    return hsum256_i32(s);
}
#endif

#ifdef MEDUSA_VNNI512
// The four code vectors of 64 weight bytes (two blocks), group g = bits 7-6, 5-4, 3-2, 1-0 of every byte. With
// AVX-512 VBMI a byte permutation reads a code out of each byte's low six bits (vpermb), which runs beside
// vpdpbusd instead of on its port, as the shifts do; one shift brings bits 7-6 down. Without VBMI: shift and mask.
struct Decode512 {
#ifdef __AVX512VBMI__
    __m512i t[3];  // t[j][i] = (i >> 2j) & 3
    Decode512() {
        alignas(64) int8_t tb[3][64];
        for (int i = 0; i < 64; ++i)
            for (int j = 0; j < 3; ++j) tb[j][i] = (int8_t)((i >> (2 * j)) & 3);
        for (int j = 0; j < 3; ++j) t[j] = _mm512_load_si512(tb[j]);
    }
    template <int g>
    __m512i code(__m512i w) const {
        if constexpr (g == 0) return _mm512_permutexvar_epi8(_mm512_srli_epi16(w, 6), t[0]);
        else return _mm512_permutexvar_epi8(w, t[3 - g]);
    }
#else
    __m512i mask = _mm512_set1_epi8(3);
    template <int g>
    __m512i code(__m512i w) const {
        if constexpr (g == 3) return _mm512_and_si512(w, mask);
        else return _mm512_and_si512(_mm512_srli_epi16(w, 6 - 2 * g), mask);
    }
#endif
};

// Keeps v in a register: without it GCC folds the load of an activation vector shared by several rows into every
// vpdpbusd that reads it, so each is loaded once per row instead of once.
inline void in_register(__m512i& v) { asm("" : "+v"(v)); }

// c_rows rows against c_mt (1 to 8) tokens on 512-bit vectors: one load takes two blocks of a row, and the
// activations come pair-interleaved (interleave_block_pairs), so each code group's 64 activation bytes are one
// aligned load with no join. The code group is the outer loop, and within it each token's activation vector is
// loaded once and used by every row before the next: only the rows' code vectors and one activation vector are live
// beside the c_rows x c_mt accumulators, so two rows take up to eight tokens in one pass over them (six tokens as
// tiles of four and two were a fifth slower over 2B-4T's matrices). An odd last block goes through 256-bit lanes.
// The same exact int32 sums.
template <int c_rows, int c_mt>
inline void rows_tile512(const uint8_t* row, size_t stride, int nb, const int8_t* qp, int K, int32_t* out) {
    const Decode512 dec;
    __m512i acc[c_rows][c_mt];
    for (int r = 0; r < c_rows; ++r)
        for (int m = 0; m < c_mt; ++m) acc[r][m] = _mm512_setzero_si512();
    auto group = [&](auto g_tag, const __m512i* w, int b) {
        constexpr int g = decltype(g_tag)::value;
        __m512i c[c_rows];
        for (int r = 0; r < c_rows; ++r) c[r] = dec.template code<g>(w[r]);
        for (int m = 0; m < c_mt; ++m) {
            __m512i a = _mm512_loadu_si512((const void*)(qp + (size_t)m * K + 128 * b + 64 * g));
            if constexpr (c_rows > 1) in_register(a);
            for (int r = 0; r < c_rows; ++r) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], c[r], a);
        }
    };
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i w[c_rows];
        for (int r = 0; r < c_rows; ++r) {
            prefetch_ahead(row + r * stride + 32 * b);
            w[r] = _mm512_loadu_si512((const void*)(row + r * stride + 32 * b));
        }
        using std::integral_constant;
        group(integral_constant<int, 0>(), w, b);
        group(integral_constant<int, 1>(), w, b);
        group(integral_constant<int, 2>(), w, b);
        group(integral_constant<int, 3>(), w, b);
    }
    __m256i tail[c_rows][c_mt];
    for (int r = 0; r < c_rows; ++r)
        for (int m = 0; m < c_mt; ++m) tail[r][m] = _mm256_setzero_si256();
    if (b < nb) {  // the odd last block: interleave_block_pairs leaves it in place
        const __m256i m3 = _mm256_set1_epi8(3);
        for (int r = 0; r < c_rows; ++r) {
            const __m256i w = _mm256_loadu_si256((const __m256i*)(row + r * stride + 32 * b));
            const __m256i c[4] = {_mm256_and_si256(_mm256_srli_epi16(w, 6), m3),
                                  _mm256_and_si256(_mm256_srli_epi16(w, 4), m3),
                                  _mm256_and_si256(_mm256_srli_epi16(w, 2), m3), _mm256_and_si256(w, m3)};
            for (int m = 0; m < c_mt; ++m)
                for (int g = 0; g < 4; ++g)
                    tail[r][m] = _mm256_dpbusd_epi32(
                        tail[r][m], c[g], _mm256_loadu_si256((const __m256i*)(qp + (size_t)m * K + 128 * b + 32 * g)));
        }
    }
    for (int m = 0; m < c_mt; ++m)
        for (int r = 0; r < c_rows; ++r)
            out[m * c_rows + r] = hsum256_i32(_mm256_add_epi32(
                _mm256_add_epi32(_mm512_castsi512_si256(acc[r][m]), _mm512_extracti64x4_epi64(acc[r][m], 1)),
                tail[r][m]));
}

// Rows [r, rend) against mt (2 to 8) pair-interleaved tokens: two-row tiles (four for two tokens), then one row.
template <class Put>
void rows_in_tiles512(int mt, const uint8_t* w, size_t stride, int nb, const int8_t* qp, int K, int r, int rend,
                      int32_t* out, Put put) {
    auto run = [&](auto mt_tag) {
        constexpr int MT = decltype(mt_tag)::value, R = MT == 2 ? 4 : 2;
        for (; r + R <= rend; r += R) {
            rows_tile512<R, MT>(w + r * stride, stride, nb, qp, K, out);
            put(r, R);
        }
        for (; r < rend; ++r) {
            rows_tile512<1, MT>(w + r * stride, stride, nb, qp, K, out);
            put(r, 1);
        }
    };
    using std::integral_constant;
    switch (mt) {
        case 2: run(integral_constant<int, 2>()); break;
        case 3: run(integral_constant<int, 3>()); break;
        case 4: run(integral_constant<int, 4>()); break;
        case 5: run(integral_constant<int, 5>()); break;
        case 6: run(integral_constant<int, 6>()); break;
        case 7: run(integral_constant<int, 7>()); break;
        default: run(integral_constant<int, 8>()); break;
    }
}
#endif

// Rows per multi-row tile for mt tokens (1: the single-row tile; VNNI's one-token rows are one_token_row_vnni).
// VNNI builds have 32 vector registers, and vpdpbusd's latency wants about eight chains.
template <bool vnni>
constexpr int tile_rows(int mt) {
    return mt == 1 ? (vnni ? 1 : 4) : mt == 2 ? (vnni ? 4 : 2) : (vnni && mt <= 4) ? 2 : 1;
}

// Tokens per tile: 256-bit VNNI runs two-row tiles of up to four tokens (the 32 registers hold 2 x 4 accumulators
// and 16 activation vectors), so five to eight tokens pass over the row group twice while it sits in L1; the
// 512-bit tiles take eight at once (rows_tile512); AVX2's 16 registers take one row against up to eight.
template <bool vnni>
constexpr int tile_tokens() {
    return vnni ? 4 : 8;
}
constexpr int TILE_TOKENS_512 = 8;  // rows_tile512: two rows against up to eight tokens

template <bool vnni>
void multi_row_tile(int mt, const uint8_t* row, size_t stride, int nb, const int8_t* q, int K, int32_t* out) {
    switch (mt) {
        case 1: rows_tile<tile_rows<vnni>(1), 1, vnni>(row, stride, nb, q, K, out); break;
        case 2: rows_tile<tile_rows<vnni>(2), 2, vnni>(row, stride, nb, q, K, out); break;
        case 3: rows_tile<tile_rows<vnni>(3), 3, vnni>(row, stride, nb, q, K, out); break;
        default: rows_tile<tile_rows<vnni>(4), 4, vnni>(row, stride, nb, q, K, out); break;
    }
}

// Rows [r, rend) against one tile of mt tokens: multi-row tiles while they fit, then one row at a time; put(r, n)
// stores the n rows from r that out holds.
template <bool vnni, class Put>
void rows_in_tiles(int mt, const uint8_t* w, size_t stride, int nb, const int8_t* q, int K, int r, int rend,
                   int32_t* out, Put put) {
#ifdef MEDUSA_VNNI
    if (vnni && mt == 1) {
        for (; r < rend; ++r) {
            out[0] = one_token_row_vnni(w + r * stride, nb, q);
            put(r, 1);
        }
        return;
    }
#endif
    for (const int R = tile_rows<vnni>(mt); R > 1 && r + R <= rend; r += R) {
        multi_row_tile<vnni>(mt, w + r * stride, stride, nb, q, K, out);
        put(r, R);
    }
    for (; r < rend; ++r) {
        tile<vnni>(mt, w + r * stride, nb, q, K, out);
        put(r, 1);
    }
}
#endif

enum : int { KERNEL_SCALAR = 0, KERNEL_AVX2 = 1, KERNEL_VNNI = 2, N_KERNELS = 4 };
const char* const KERNEL_NAMES[N_KERNELS] = {"scalar", "avx2", "avx512_vnni", "lut"};

bool kernel_available(int k) {
    switch (k) {
        case KERNEL_SCALAR: return true;
#ifdef MEDUSA_AVX2
        case KERNEL_AVX2: return __builtin_cpu_supports("avx2");
#endif
#ifdef MEDUSA_VNNI
        case KERNEL_VNNI:
            return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")
#ifdef MEDUSA_VNNI512
                   && __builtin_cpu_supports("avx512bw")
#endif
                ;
#endif
        case KERNEL_LUT: return lut_available();
        default: return false;
    }
}

int best_kernel() {  // until a measurement says otherwise: the multiply-add kernels, widest first
    for (int k = KERNEL_VNNI; k > 0; --k)
        if (kernel_available(k)) return k;
    return KERNEL_SCALAR;
}

std::atomic<int> g_kernel{-1};

}  // namespace

std::vector<std::string> ternary_kernels_available() {
    std::vector<std::string> out;
    for (int k = 0; k < N_KERNELS; ++k)
        if (kernel_available(k)) out.push_back(KERNEL_NAMES[k]);
    return out;
}

int ternary_kernel_index(const std::string& name) {
    for (int k = 0; k < N_KERNELS; ++k)
        if (name == KERNEL_NAMES[k]) return kernel_available(k) ? k : -1;
    return -1;
}

const char* ternary_kernel_name(int kernel) { return KERNEL_NAMES[kernel]; }

int ternary_kernel() {
    int k = g_kernel.load(std::memory_order_relaxed);
    return k < 0 ? best_kernel() : k;
}

void set_ternary_kernel(int kernel) { g_kernel.store(kernel, std::memory_order_relaxed); }

void quantize_acts(const float* x, int M, int K, int8_t* q, float* scale, int32_t* sum) {
    for (int m = 0; m < M; ++m) {
        const float* r = x + (size_t)m * K;
        int8_t* qr = q + (size_t)m * K;
        float amax = 0.f;
        int k = 0;
#ifdef MEDUSA_AVX2
        // the same maximum and the same rounding (round-half-even, then the clamp) as the scalar loop, 32 at a time:
        // a tree pass quantises every node's input four times per layer, on one thread
        __m256 mx = _mm256_setzero_ps();
        const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (; k + 8 <= K; k += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(r + k), abs_mask));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        amax = _mm_cvtss_f32(m4);
#endif
        for (; k < K; ++k) amax = std::max(amax, std::fabs(r[k]));
        const double mx_d = std::max(1e-5, (double)amax);
        const float s = (float)(127.0 / mx_d);
        int32_t t = 0;
        k = 0;
#ifdef MEDUSA_AVX2
        const __m256 sv = _mm256_set1_ps(s);
        const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        __m256i tv = _mm256_setzero_si256();
        for (; k + 32 <= K; k += 32) {
            __m256i v[4];
            for (int j = 0; j < 4; ++j) {
                const __m256 f = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(r + k + 8 * j), sv),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v[j] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(f), hi), lo);
                tv = _mm256_add_epi32(tv, v[j]);
            }
            // packs interleave the 128-bit lanes; the permutation puts the 32 bytes back in order
            const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
            _mm256_storeu_si256((__m256i*)(qr + k), _mm256_permutevar8x32_epi32(b, order));
        }
        t = hsum256_i32(tv);
#endif
        for (; k < K; ++k) {
            const float v = r[k] * s;
            int iv = (int)std::nearbyint(v);  // default rounding mode: half to even, as bitnet.cpp's nearest_int
            iv = std::clamp(iv, -128, 127);
            qr[k] = (int8_t)iv;
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

void interleave_block_pairs(const int8_t* q, int M, int K, int8_t* qp) {
    for (int m = 0; m < M; ++m) {
        const int8_t* a = q + (size_t)m * K;
        int8_t* o = qp + (size_t)m * K;
        const int pairs = K / 256;
        for (int p = 0; p < pairs; ++p)
            for (int h = 0; h < 2; ++h)
                for (int g = 0; g < 4; ++g) std::memcpy(o + 256 * p + 64 * g + 32 * h, a + 256 * p + 128 * h + 32 * g, 32);
        std::memcpy(o + 256 * pairs, a + 256 * pairs, K - 256 * pairs);
    }
}

bool wants_block_pairs(int kernel, int M) {
#ifdef MEDUSA_VNNI512
    return (kernel < 0 ? ternary_kernel() : kernel) == KERNEL_VNNI && M >= 2;
#else
    (void)kernel, (void)M;
    return false;
#endif
}

void KernelInputs::prepare(int k, const int8_t* q, int M, int K) {
    kernel = k < 0 ? ternary_kernel() : k;
    q_pairs = nullptr;
    if (wants_block_pairs(kernel, M)) {
        pairs.resize((size_t)M * K);
        interleave_block_pairs(q, M, K, pairs.data());
        q_pairs = pairs.data();
    }
    if (kernel == KERNEL_LUT) {
        tables.resize(lut_table_bytes(M, K));
        lut_tables(q, M, K, tables.data());
    }
}

void ternary_gemm_prepared(const uint8_t* w, const uint8_t* lut_w, int K, int r0, int r1, int N, const int8_t* q,
                           const KernelInputs& in, const float* qscale, const int32_t* qsum, int M, float wscale,
                           float* y) {
    if (in.kernel == KERNEL_LUT)
        lut_gemm_rows(lut_w, K, r0, r1, N, in.tables.data(), qscale, qsum, M, wscale, y);
    else
        ternary_gemm_rows(w, K, r0, r1, N, q, qscale, qsum, M, wscale, y, in.kernel, in.q_pairs);
}

void ternary_gemm_rows(const uint8_t* w, int K, int r0, int r1, int N, const int8_t* q, const float* qscale,
                       const int32_t* qsum, int M, float wscale, float* y, int kernel, const int8_t* q_pairs) {
    if (kernel < 0) kernel = ternary_kernel();
    if (kernel == KERNEL_LUT) kernel = best_kernel();  // the lookup kernel reads re-laid weights: lut_gemm_rows
    [[maybe_unused]] const int nb = K / 128;
    const size_t stride = K / 4;
    int32_t s[64];
#ifdef MEDUSA_AVX2
    const int tt = kernel == KERNEL_VNNI ? (q_pairs ? TILE_TOKENS_512 : tile_tokens<true>()) : tile_tokens<false>();
#else
    const int tt = 8;
#endif
    for (int rg = r0; rg < r1; rg += 8) {  // eight rows stay in L1 while every tile of tokens passes over them
        const int rend = std::min(r1, rg + 8);
        for (int m0 = 0; m0 < M; m0 += tt) {
            const int mt = std::min(tt, M - m0);
            const int8_t* qa = q + (size_t)m0 * K;
            auto put = [&](int r, int n_rows) {  // s is [mt][n_rows]
                for (int m = 0; m < mt; ++m)
                    for (int i = 0; i < n_rows; ++i)
                        y[(size_t)(m0 + m) * N + r + i] =
                            (float)(s[m * n_rows + i] - qsum[m0 + m]) / qscale[m0 + m] * wscale;
            };
            switch (kernel) {
#ifdef MEDUSA_VNNI
                case KERNEL_VNNI:
#ifdef MEDUSA_VNNI512
                    if (q_pairs && mt >= 2) {
                        rows_in_tiles512(mt, w, stride, nb, q_pairs + (size_t)m0 * K, K, rg, rend, s, put);
                        break;
                    }
#endif
                    rows_in_tiles<true>(mt, w, stride, nb, qa, K, rg, rend, s, put);
                    break;
#endif
#ifdef MEDUSA_AVX2
                case KERNEL_AVX2: rows_in_tiles<false>(mt, w, stride, nb, qa, K, rg, rend, s, put); break;
#endif
                default:
                    for (int r = rg; r < rend; ++r) {
                        for (int m = 0; m < mt; ++m) s[m] = i2s_row_codes_dot(w + r * stride, qa + (size_t)m * K, K);
                        put(r, 1);
                    }
            }
        }
    }
}

}  // namespace medusa
