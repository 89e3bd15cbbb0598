#include "bitnet.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "dot.h"
#include "ternary_gemm.h"
#include "ternary_lut.h"
#include "tree_attention.h"

namespace medusa {

namespace {

// Rows per task: enough bytes per task to amortise the pool's hand-off, enough tasks to balance two threads.
constexpr int ROWS_PER_TASK = 64;
static_assert(ROWS_PER_TASK % LUT_TILE == 0, "a task takes whole lookup tiles");


// The sum of squares in double on vector lanes: a tree pass normalises every node's vector four times per layer on
// one thread, and with the scalar loop normalising and quantising took a twentieth of a 4-node pass (2B-4T's
// shapes); the lanes halve that. Only the order of the double additions changes.
void rms_norm(const float* x, const float* w, int n, float eps, float* y) {
    double ss = 0;
    int i = 0;
#ifdef __AVX512F__
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (; i + 16 <= n; i += 16) {
        const __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), b = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        s0 = _mm512_fmadd_pd(a, a, s0);
        s1 = _mm512_fmadd_pd(b, b, s1);
    }
    ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        s0 = _mm256_fmadd_pd(a, a, s0);
        s1 = _mm256_fmadd_pd(b, b, s1);
    }
    const __m256d t = _mm256_add_pd(s0, s1);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#endif
    for (; i < n; ++i) ss += (double)x[i] * x[i];
    const float scale = 1.0f / std::sqrt((float)(ss / n) + eps);
    for (i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

// NEOX rotation: dimension i pairs with i + d/2, angle pos * theta^(-2i/d).
void rope_neox(float* v, int n_heads, int d, int pos, float theta) {
    const int half = d / 2;
    for (int i = 0; i < half; ++i) {
        const float freq = std::pow(theta, -2.0f * i / d);
        const float a = pos * freq, c = std::cos(a), s = std::sin(a);
        for (int h = 0; h < n_heads; ++h) {
            float* x = v + h * d;
            const float x0 = x[i], x1 = x[i + half];
            x[i] = x0 * c - x1 * s;
            x[i + half] = x0 * s + x1 * c;
        }
    }
}

}  // namespace

BitnetEngine::BitnetEngine(const BitnetConfig& c, std::vector<BitnetLayer> layers, const uint16_t* tok_embd,
                           const float* output_norm, const uint16_t* output, int n_threads)
    : c_(c), layers_(std::move(layers)), tok_embd_(tok_embd), output_norm_(output_norm),
      output_(output ? output : tok_embd), pool_(std::max(1, n_threads), ENGINE_SPIN) {
    if (c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv || c.n_embd % c.n_head)
        throw std::invalid_argument("head counts do not divide the embedding");
    if ((c.n_embd / c.n_head) % 2) throw std::invalid_argument("RoPE needs an even head size");
    if (c.n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    const size_t kv = (size_t)c.n_layer * c.n_ctx * (c.n_embd / c.n_head) * c.n_head_kv;
    kcache_.assign(kv, 0.f);
    vcache_.assign(kv, 0.f);
}

void BitnetEngine::quantize_input(const float* x, int M, int K) {
    q8_.resize((size_t)M * K);
    qscale_.resize(M);
    qsum_.resize(M);
    q_cols_ = K;
    quantize_acts(x, M, K, q8_.data(), qscale_.data(), qsum_.data());
    q8_inputs_.prepare(-1, q8_.data(), M, K);
}

void BitnetEngine::ternary_linear(TernaryWeight& w, int M, float* y) {
    if (w.cols != q_cols_) throw std::logic_error("ternary_linear: the quantised input does not fit the weight");
    const int tasks = (w.rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;  // ROWS_PER_TASK: whole lookup tiles
    if (q8_inputs_.kernel == KERNEL_LUT && w.lut.empty()) {  // re-laid once, the first time that kernel meets it
        w.lut.resize(lut_packed_bytes(w.rows, w.cols));
        lut_pack(w.data, w.rows, w.cols, w.lut.data());
    }
    pool_.run(tasks, [&](int t) {
        const int r0 = t * ROWS_PER_TASK, r1 = std::min(w.rows, r0 + ROWS_PER_TASK);
        ternary_gemm_prepared(w.data, w.lut.data(), w.cols, r0, r1, w.rows, q8_.data(), q8_inputs_, qscale_.data(),
                              qsum_.data(), M, w.scale, y);
    });
}

#ifdef __AVX512F__
// R F16 rows against MC vectors, 16 lanes at a time: with more than one token the projection is bound by its
// multiply-adds (a 2B-4T tree of four spent as long in it as in all the ternary matmuls), and AVX-512 doubles the
// lanes per instruction. Each output keeps one accumulator and one summation order whatever R and MC, so a node's
// logits do not depend on the batch around it.
template <int R, int MC>
inline void project_block(const uint16_t* w, size_t ldw, const float* x, size_t ldx, int n, float* out, size_t ldo) {
    __m512 acc[MC][R];
    for (int m = 0; m < MC; ++m)
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 xv[MC];
        for (int m = 0; m < MC; ++m) xv[m] = _mm512_loadu_ps(x + m * ldx + i);
        for (int r = 0; r < R; ++r) {
            if (i % 32 == 0) _mm_prefetch((const char*)(w + r * ldw + i) + 4096, _MM_HINT_T0);
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(w + r * ldw + i)));
            for (int m = 0; m < MC; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
        }
    }
    for (int m = 0; m < MC; ++m)
        for (int r = 0; r < R; ++r) {
            float v = _mm512_reduce_add_ps(acc[m][r]);
            for (int j = i; j < n; ++j) v += fp16_to_fp32(w[r * ldw + j]) * x[m * ldx + j];
            out[m * ldo + r] = v;
        }
}

template <int MC>
void project_rows(const uint16_t* w, int rows, int n, const float* x, float* y, size_t ldy) {
    constexpr int R = MC == 1 ? 8 : MC <= 4 ? 4 : 2;  // R x MC accumulators within the 32 registers
    int r = 0;
    for (; r + R <= rows; r += R) project_block<R, MC>(w + (size_t)r * n, n, x, n, n, y + r, ldy);
    for (; r < rows; ++r) project_block<1, MC>(w + (size_t)r * n, n, x, n, n, y + r, ldy);
}
#endif

void BitnetEngine::project(const float* hidden, int M, float* logits) {
    const int H = c_.n_embd, V = c_.n_vocab;
    const int tasks = (V + 255) / 256;
    pool_.run(tasks, [&](int t) {  // several rows at a time for a batch of one: independent FMA chains
        const int v0 = t * 256, rows = std::min(V, v0 + 256) - v0;
#ifdef __AVX512F__
        for (int m0 = 0; m0 < M; m0 += 8)
            with_width(M - m0, [&](auto mc) {
                project_rows<decltype(mc)::value>(output_ + (size_t)v0 * H, rows, H, hidden + (size_t)m0 * H,
                                                  logits + (size_t)m0 * V + v0, V);
            });
#else
        matmul_rows(output_ + (size_t)v0 * H, rows, H, hidden, H, M, logits + v0, V);
#endif
    });
}

// Node i attends to committed slots [0, n_past) and to its ancestors-or-self in the batch, in slot order, so its
// result does not depend on which other nodes share the batch (a tree pass equals sequential decoding). The query
// heads that share a KV head read its cache once (attend_all). anc: the batch's ancestor bits (ancestor_bits).
void BitnetEngine::attention(int layer, const float* q, const uint32_t* anc, int M, float* out) {
    const int hd = c_.n_embd / c_.n_head;
    attend_all(q, c_.n_embd, out, anc, M, c_.n_head, c_.n_head_kv, hd, kv_row(kcache_, layer, 0, 0),
               kv_row(vcache_, layer, 0, 0), (size_t)c_.n_ctx * hd, hd, n_past_, 1.0f / std::sqrt((float)hd), pool_);
}

void BitnetEngine::forward(const int32_t* tokens, const int32_t* pos, const int32_t* parents, int M, float* hidden,
                           float* logits) {
    const int H = c_.n_embd, F = c_.n_ff, hd = H / c_.n_head, kvw = c_.n_head_kv * hd;
    if (M < 1) throw std::invalid_argument("forward needs at least one token");
    if (n_past_ + M > c_.n_ctx)
        throw std::invalid_argument("context overflow: " + std::to_string(n_past_) + " cached + " +
                                    std::to_string(M) + " new tokens > n_ctx " + std::to_string(c_.n_ctx));
    for (int i = 0; i < M; ++i) {
        if (tokens[i] < 0 || tokens[i] >= c_.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
        if (parents[i] < -1 || parents[i] >= i)
            throw std::invalid_argument("node " + std::to_string(i) + " has parent " + std::to_string(parents[i]) +
                                        ": parents must come earlier in the batch (or be -1)");
        if (pos[i] < 0 || pos[i] >= c_.n_ctx) throw std::invalid_argument("position outside the context");
    }
    std::vector<float> x((size_t)M * H), h((size_t)M * H), q((size_t)M * H), k((size_t)M * kvw), v((size_t)M * kvw),
        a((size_t)M * H), t((size_t)M * H), g((size_t)M * F), u((size_t)M * F);
    std::vector<uint32_t> anc;  // which batch nodes each node attends to: the same in every layer
    ancestor_bits(parents, M, anc);
    for (int i = 0; i < M; ++i)
        for (int e = 0; e < H; ++e) x[(size_t)i * H + e] = fp16_to_fp32(tok_embd_[(size_t)tokens[i] * H + e]);
    for (int l = 0; l < c_.n_layer; ++l) {
        BitnetLayer& L = layers_[l];
        for (int i = 0; i < M; ++i) rms_norm(&x[(size_t)i * H], L.attn_norm, H, c_.eps, &h[(size_t)i * H]);
        quantize_input(h.data(), M, H);  // once for q, k and v
        ternary_linear(L.wq, M, q.data());
        ternary_linear(L.wk, M, k.data());
        ternary_linear(L.wv, M, v.data());
        for (int i = 0; i < M; ++i) {
            rope_neox(&q[(size_t)i * H], c_.n_head, hd, pos[i], c_.rope_theta);
            rope_neox(&k[(size_t)i * kvw], c_.n_head_kv, hd, pos[i], c_.rope_theta);
            for (int hk = 0; hk < c_.n_head_kv; ++hk) {
                std::copy_n(&k[(size_t)i * kvw + hk * hd], hd, kv_row(kcache_, l, hk, n_past_ + i));
                std::copy_n(&v[(size_t)i * kvw + hk * hd], hd, kv_row(vcache_, l, hk, n_past_ + i));
            }
        }
        attention(l, q.data(), anc.data(), M, a.data());
        for (int i = 0; i < M; ++i) rms_norm(&a[(size_t)i * H], L.attn_sub_norm, H, c_.eps, &t[(size_t)i * H]);
        quantize_input(t.data(), M, H);
        ternary_linear(L.wo, M, a.data());
        for (size_t e = 0; e < x.size(); ++e) x[e] += a[e];

        for (int i = 0; i < M; ++i) rms_norm(&x[(size_t)i * H], L.ffn_norm, H, c_.eps, &h[(size_t)i * H]);
        quantize_input(h.data(), M, H);  // once for gate and up
        ternary_linear(L.w_gate, M, g.data());
        ternary_linear(L.w_up, M, u.data());
        // the gate on the pool: SiLU's exp over M x n_ff values took a sixth of a tree pass on one thread
        const int chunks = (int)((g.size() + 4095) / 4096);
        pool_.run(chunks, [&](int c) {
            for (size_t e = (size_t)c * 4096; e < std::min(g.size(), (size_t)(c + 1) * 4096); ++e) {
                const float z = g[e];
                g[e] = (c_.relu2 ? (z > 0.f ? z * z : 0.f) : z / (1.0f + std::exp(-z))) * u[e];
            }
        });
        for (int i = 0; i < M; ++i) rms_norm(&g[(size_t)i * F], L.ffn_sub_norm, F, c_.eps, &u[(size_t)i * F]);
        quantize_input(u.data(), M, F);
        ternary_linear(L.w_down, M, a.data());
        for (size_t e = 0; e < x.size(); ++e) x[e] += a[e];
    }
    for (int i = 0; i < M; ++i) rms_norm(&x[(size_t)i * H], output_norm_, H, c_.eps, hidden + (size_t)i * H);
    if (logits) project(hidden, M, logits);
}

void BitnetEngine::commit(const int32_t* idx, int n) {
    const int hd = c_.n_embd / c_.n_head;
    for (int j = 0; j < n; ++j) {
        if (idx[j] < j || (j > 0 && idx[j] <= idx[j - 1]) || n_past_ + idx[j] >= c_.n_ctx)
            throw std::invalid_argument("commit takes increasing batch indices of the last forward");
    }
    for (int l = 0; l < c_.n_layer; ++l)
        for (int hk = 0; hk < c_.n_head_kv; ++hk)
            for (int j = 0; j < n; ++j) {
                if (idx[j] == j) continue;
                std::copy_n(kv_row(kcache_, l, hk, n_past_ + idx[j]), hd, kv_row(kcache_, l, hk, n_past_ + j));
                std::copy_n(kv_row(vcache_, l, hk, n_past_ + idx[j]), hd, kv_row(vcache_, l, hk, n_past_ + j));
            }
    n_past_ += n;
}

void BitnetEngine::truncate(int n_past) {
    if (n_past < 0 || n_past > n_past_) throw std::invalid_argument("truncate can only shorten the cache");
    n_past_ = n_past;
}

}  // namespace medusa
