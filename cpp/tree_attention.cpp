#include "tree_attention.h"

#include <algorithm>
#include <cmath>

#include "dot.h"

namespace medusa {
namespace {

// Scores of committed slots [0, n) for up to four queries Q [mc, hd] at once: two K rows by MC queries per pass, so
// a row is loaded once for all of them and eight chains hide the multiply-add latency. Each (slot, query) keeps
// its own accumulator in dot_f32's order: the same value as dot_f32<1> alone.
template <int MC>
void prefix_scores(const float* K, size_t stride, int n, const float* Q, int hd, float* S, size_t lds) {
    int p = 0;
    for (; p + 2 <= n; p += 2) dot_block<2, MC>(K + (size_t)p * stride, stride, Q, hd, hd, S + p, lds);
    if (p < n) dot_block<1, MC>(K + (size_t)p * stride, stride, Q, hd, hd, S + p, lds);
}

// Scores of batch slots slots[0 .. n) for up to four queries of one node (the same slots): contiguous pairs of
// slots two rows at a time, as prefix_scores (a prompt's batch is one run; a tree's chains are runs too).
template <int MC>
void batch_scores(const float* K, size_t stride, const int* slots, int n, const float* Q, int hd, float* S,
                  size_t lds) {
    int t = 0;
    while (t < n) {
        if (t + 1 < n && slots[t + 1] == slots[t] + 1) {
            dot_block<2, MC>(K + (size_t)slots[t] * stride, stride, Q, hd, hd, S + t, lds);
            t += 2;
        } else {
            dot_block<1, MC>(K + (size_t)slots[t] * stride, stride, Q, hd, hd, S + t, lds);
            t += 1;
        }
    }
}

// o += sum over t of w[t] * V[slot(t)], one fused multiply-add per element and slot, in t order; the slots are
// first + t (first >= 0) or slots[t].
inline void accumulate(float* o, const float* V, size_t stride, int first, const int* slots, const float* w, int cnt,
                       int hd) {
    int e = 0;
#ifdef MEDUSA_AVX2
    for (; e + 32 <= hd; e += 32) {
        __m256 a0 = _mm256_loadu_ps(o + e), a1 = _mm256_loadu_ps(o + e + 8), a2 = _mm256_loadu_ps(o + e + 16),
               a3 = _mm256_loadu_ps(o + e + 24);
        for (int t = 0; t < cnt; ++t) {
            const float* v = V + (size_t)(first >= 0 ? first + t : slots[t]) * stride + e;
            const __m256 wv = _mm256_set1_ps(w[t]);
            a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(o + e, a0);
        _mm256_storeu_ps(o + e + 8, a1);
        _mm256_storeu_ps(o + e + 16, a2);
        _mm256_storeu_ps(o + e + 24, a3);
    }
#endif
    for (; e < hd; ++e)
        for (int t = 0; t < cnt; ++t) {
            const float v = V[(size_t)(first >= 0 ? first + t : slots[t]) * stride + e];
            o[e] = std::fma(w[t], v, o[e]);
        }
}

constexpr int V_BLOCK = 64;  // committed V rows per pass over the queries: 64 x 128 floats stay in L1

}  // namespace

void attend_shared(int nq, const float* const* q, float* const* o, const int* node, const uint32_t* anc, int words,
                   const float* K, const float* V, size_t stride, int n_prefix, int n_batch, int hd, float scale,
                   std::vector<float>& s) {
    const int n = n_prefix + n_batch;
    s.resize((size_t)nq * n + (size_t)nq * hd);
    float* S = s.data();  // [nq][n]: query j's scores, then its weights, in its slot order
    float* Q = S + (size_t)nq * n;  // the queries side by side
    thread_local std::vector<int> tail;  // [nq][n_batch]: the batch slots each query attends to, in slot order
    tail.resize((size_t)nq * n_batch);
    int tails[ATTEND_QUERIES];
    auto tail_of = [&](int j) { return tail.data() + (size_t)j * n_batch; };
    for (int j = 0; j < nq; ++j) {
        std::copy(q[j], q[j] + hd, Q + (size_t)j * hd);
        tails[j] = 0;
        for (int b = 0; b < n_batch; ++b)
            if ((anc[(size_t)node[j] * words + b / 32] >> (b % 32)) & 1u) tail_of(j)[tails[j]++] = n_prefix + b;
    }
    for (int m0 = 0; m0 < nq; m0 += 4)
        with_width(std::min(4, nq - m0), [&](auto mc) {
            prefix_scores<decltype(mc)::value>(K, stride, n_prefix, Q + (size_t)m0 * hd, hd, S + (size_t)m0 * n, n);
        });
    for (int j0 = 0; j0 < nq;) {  // queries of one node side by side: they see the same batch slots
        int mc = 1;
        while (j0 + mc < nq && mc < 4 && node[j0 + mc] == node[j0]) ++mc;
        with_width(mc, [&](auto m) {
            batch_scores<decltype(m)::value>(K, stride, tail_of(j0), tails[j0], Q + (size_t)j0 * hd, hd,
                                             S + (size_t)j0 * n + n_prefix, n);
        });
        j0 += mc;
    }
    for (int j = 0; j < nq; ++j) {
        float* sj = S + (size_t)j * n;
        const int len = n_prefix + tails[j];
        for (int p = 0; p < len; ++p) sj[p] *= scale;
        const float mx = *std::max_element(sj, sj + len);
        float sum = 0.f;
        for (int p = 0; p < len; ++p) {
            const float z = sj[p] - mx;
            sum += (sj[p] = z < -104.f ? 0.f : std::exp(z));  // expf is 0 there too, without its errno path
        }
        for (int p = 0; p < len; ++p) sj[p] /= sum;
        std::fill(o[j], o[j] + hd, 0.f);
    }
    for (int p0 = 0; p0 < n_prefix; p0 += V_BLOCK)
        for (int j = 0; j < nq; ++j)
            accumulate(o[j], V, stride, p0, nullptr, S + (size_t)j * n + p0, std::min(V_BLOCK, n_prefix - p0), hd);
    for (int j = 0; j < nq; ++j)
        accumulate(o[j], V, stride, -1, tail_of(j), S + (size_t)j * n + n_prefix, tails[j], hd);
}

void ancestor_bits(const int32_t* parents, int T, std::vector<uint32_t>& anc) {
    const int words = (T + 31) / 32;
    anc.assign((size_t)T * words, 0u);
    for (int i = 0; i < T; ++i)
        for (int j = i; j >= 0; j = parents[j]) anc[(size_t)i * words + j / 32] |= 1u << (j % 32);
}

void attend_all(const float* q, size_t q_stride, float* out, const uint32_t* anc, int T, int n_head, int n_head_kv,
                int hd, const float* K, const float* V, size_t head_stride, size_t row_stride, int n_prefix,
                float scale, ThreadPool& pool) {
    const int G = n_head / n_head_kv, per_head = T * G, blocks = (per_head + ATTEND_QUERIES - 1) / ATTEND_QUERIES;
    const int words = (T + 31) / 32;
    pool.run(n_head_kv * blocks, [&](int task) {
        const int hk = task / blocks, j0 = (task % blocks) * ATTEND_QUERIES,
                  nq = std::min(ATTEND_QUERIES, per_head - j0);
        thread_local std::vector<float> s;
        const float* qs[ATTEND_QUERIES];
        float* os[ATTEND_QUERIES];
        int node[ATTEND_QUERIES];
        for (int j = 0; j < nq; ++j) {  // query j0 + j: node (j0 + j) / G, head hk * G + (j0 + j) % G
            const int i = (j0 + j) / G, h = hk * G + (j0 + j) % G;
            qs[j] = q + (size_t)i * q_stride + (size_t)h * hd;
            os[j] = out + (size_t)i * q_stride + (size_t)h * hd;
            node[j] = i;
        }
        attend_shared(nq, qs, os, node, anc, words, K + (size_t)hk * head_stride, V + (size_t)hk * head_stride,
                      row_stride, n_prefix, T, hd, scale, s);
    });
}

void tree_attention(const float* q, const float* K, const float* V, const uint32_t* anc, float* out, int T,
                    int n_head, int n_head_kv, int hd, int L, float scale, ThreadPool& pool) {
    attend_all(q, (size_t)n_head * hd, out, anc, T, n_head, n_head_kv, hd, K, V, hd, (size_t)n_head_kv * hd, L - T,
               scale, pool);
}

}  // namespace medusa
