#include "tree_attention.h"

#include <algorithm>
#include <cmath>

#include "dot.h"

namespace medusa {

void attend(const float* qh, const float* K, const float* V, size_t stride, int n_prefix, const int* tail, int n_tail,
            int hd, float scale, float* o, std::vector<float>& s) {
    const int n = n_prefix + n_tail;
    s.resize(n);
    float mx = -INFINITY;
    for (int p = 0; p < n; ++p) {
        const int slot = p < n_prefix ? p : tail[p - n_prefix];
        float d;
        dot_f32<1>(K + (size_t)slot * stride, qh, hd, &d);  // the same code for every batch: trees stay exact
        s[p] = d * scale;
        mx = std::max(mx, s[p]);
    }
    float sum = 0.f;
    for (int p = 0; p < n; ++p) sum += (s[p] = std::exp(s[p] - mx));
    std::fill(o, o + hd, 0.f);
    for (int p = 0; p < n; ++p) {
        const int slot = p < n_prefix ? p : tail[p - n_prefix];
        const float* v = V + (size_t)slot * stride;
        const float wgt = s[p] / sum;
        for (int e = 0; e < hd; ++e) o[e] += wgt * v[e];
    }
}

void tree_attention(const float* q, const float* K, const float* V, const uint32_t* anc, float* out, int T,
                    int n_head, int n_head_kv, int hd, int L, float scale, ThreadPool& pool) {
    const int G = n_head / n_head_kv, words = (T + 31) / 32, n_prefix = L - T;
    const size_t stride = (size_t)n_head_kv * hd;
    pool.run(T * n_head, [&](int task) {
        const int i = task / n_head, h = task % n_head, hk = h / G;
        thread_local std::vector<int> tail;
        thread_local std::vector<float> s;
        tail.clear();
        for (int j = 0; j < T; ++j)
            if (anc[(size_t)i * words + j / 32] >> (j % 32) & 1u) tail.push_back(n_prefix + j);
        attend(q + ((size_t)i * n_head + h) * hd, K + hk * hd, V + hk * hd, stride, n_prefix, tail.data(),
               (int)tail.size(), hd, scale, out + ((size_t)i * n_head + h) * hd, s);
    });
}

}  // namespace medusa
