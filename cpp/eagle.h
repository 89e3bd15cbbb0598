// The EAGLE draft layer on the CPU: fc(concat(e, f)), one decoder layer (no input norm, RoPE, grouped-query
// attention, post-attention RMSNorm, SwiGLU) and the draft-vocabulary projection, one call per tree level.
//
// Two kinds of KV entries: the cache (true pairs of accepted tokens, in position order, kept across steps) and the
// tree's scratch entries (dropped at the next step). A tree node attends to the whole cache, its ancestors'
// scratch entries and itself; ancestors are found through each scratch entry's parent entry.
#pragma once

#include <memory>
#include <vector>

#include "heads.h"
#include "threads.h"

namespace medusa {

struct EagleConfig {
    int hidden = 0, n_head = 0, n_kv = 0, head_dim = 0, inter = 0;
    float eps = 1e-6f, rope_theta = 10000.0f, rope_scale = 1.0f;
};

class EagleLayer {
public:
    // Matrices (int8 rows): fc [H, 2H], qkv [(nh + 2 nkv) d, H], o [H, nh d], gate_up [2I, H], down [H, I],
    // lm_head [N, H]. fc_b [H] and qkv_b [(nh + 2 nkv) d] may be empty; norm [H].
    EagleLayer(EagleConfig c, Matrix fc, std::vector<float> fc_b, Matrix qkv, std::vector<float> qkv_b, Matrix o,
               std::vector<float> norm, Matrix gate_up, Matrix down, Matrix lm_head, int n_threads);

    // Appends m true pairs at positions pos0.. to the cache (causal among themselves); out: [m, H] features.
    void extend(const float* emb, const float* feat, int m, int pos0, float* out);
    // One tree level: n entries at positions pos[n], parent_entry[i] = the scratch entry of the node's parent
    // (-1: a child of the root, which has none). Appends them to the scratch; out: [n, H] features.
    void level(const float* emb, const float* feat, const int* pos, const int* parent_entry, int n, float* out);
    // Draft-vocabulary logits of m features: [m, N].
    void logits(const float* x, int m, float* out);

    void clear_scratch() { n_scratch_ = 0; scratch_parent_.clear(); }
    void reset() { n_cache_ = 0; clear_scratch(); }
    int cache_len() const { return n_cache_; }
    int scratch_len() const { return n_scratch_; }
    int vocab() const { return lm_.rows; }
    const std::vector<float>& cache_k() const { return k_; }
    const std::vector<float>& cache_v() const { return v_; }
    const EagleConfig& config() const { return c_; }

private:
    // fc, q|k|v with biases, RoPE: x [n, H], q [n, nh d], k/v [n, nkv d].
    void project_in(const float* emb, const float* feat, const int* pos, int n);
    // Attention of q over the allowed entries, o_proj, residual, norm, MLP: out [n, H].
    void finish(int n, const std::vector<std::vector<int>>& scratch_rows, int cache_visible_base, float* out);
    void rope(float* v, int heads, int pos) const;

    EagleConfig c_;
    Matrix fc_, qkv_, o_, gate_up_, down_, lm_;
    std::vector<float> fc_b_, qkv_b_, norm_;
    std::unique_ptr<ThreadPool> pool_;
    std::vector<float> inv_freq_;
    // cache: [n_cache, nkv, d]; scratch the same
    std::vector<float> k_, v_, sk_, sv_;
    int n_cache_ = 0, n_scratch_ = 0;
    std::vector<int> scratch_parent_;
    // work buffers
    std::vector<float> xin_, x_, qkv_out_, a_, y_, gu_, h_;
};

}  // namespace medusa
