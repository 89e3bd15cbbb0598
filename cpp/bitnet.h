// The native BitNet b1.58 engine (CPU): bitnet.cpp's "bitnet-b1.58" graph over I2_S weights, for a batch of tree
// nodes in one pass. Python maps the GGUF and hands over pointers (the arrays stay alive on its side).
//
// Per layer: h = RMSNorm(x) * attn_norm; q, k, v = ternary(h) (per-token int8 activations); NEOX RoPE;
// attention over the committed cache plus the node's own ancestors in the batch; RMSNorm * attn_sub_norm;
// x += Wo a. Then h = RMSNorm(x) * ffn_norm; g = act(W_gate h) * (W_up h) with act = ReLU^2 (bitnet-b1.58) or
// SiLU (upstream "bitnet"); RMSNorm * ffn_sub_norm; x += W_down g. Finally RMSNorm * output_norm and the tied F16
// embedding (or output.weight) as the vocabulary projection.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ternary_gemm.h"
#include "threads.h"

namespace medusa {

struct TernaryWeight {
    const uint8_t* data = nullptr;  // [rows, cols/4] canonical I2_S bytes
    float scale = 1.f;
    int rows = 0, cols = 0;
    std::vector<uint8_t> lut;  // the lookup kernel's layout of data, made when that kernel first runs
};

struct BitnetLayer {
    const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
    TernaryWeight wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct BitnetConfig {
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_theta, eps;
    bool relu2;  // false: SiLU gate (upstream "bitnet")
};

class BitnetEngine {
public:
    BitnetEngine(const BitnetConfig& c, std::vector<BitnetLayer> layers, const uint16_t* tok_embd,
                 const float* output_norm, const uint16_t* output, int n_threads);

    // One pass over M nodes: tokens, positions, parents (batch index of the parent; -1 = the last committed
    // token). Nodes must come parents-first. The nodes' K/V go to cache slots n_past .. n_past+M-1 until commit().
    // hidden [M, n_embd] gets the final-norm states; logits [M, n_vocab] when non-null.
    void forward(const int32_t* tokens, const int32_t* pos, const int32_t* parents, int M, float* hidden,
                 float* logits);
    // Keeps the listed batch nodes (increasing batch indices: a root-to-leaf path) as the next committed tokens.
    void commit(const int32_t* idx, int n);
    void truncate(int n_past);
    // The vocabulary projection alone: hidden [M, n_embd] final-norm states -> logits [M, n_vocab] (a row's result
    // does not depend on M, so a prompt's last row projected alone equals that row of a full forward).
    void project(const float* hidden, int M, float* logits);
    int n_past() const { return n_past_; }
    const BitnetConfig& config() const { return c_; }
    int n_threads() const { return pool_.size(); }

private:
    // x [M, K] -> the int8 input the next ternary_linear calls share (q, k and v read the same normed input, as
    // do gate and up: quantised once).
    void quantize_input(const float* x, int M, int K);
    void ternary_linear(TernaryWeight& w, int M, float* y);
    void attention(int layer, const float* q, const uint32_t* anc, int M, float* out);
    BitnetConfig c_;
    std::vector<BitnetLayer> layers_;
    const uint16_t* tok_embd_;
    const float* output_norm_;
    const uint16_t* output_;
    ThreadPool pool_;
    int n_past_ = 0;
    // [layer][KV head][slot][head_dim]: a KV head's rows are one contiguous stream for its attention sweep
    std::vector<float> kcache_, vcache_;
    float* kv_row(std::vector<float>& cache, int layer, int hk, int slot) {
        const int hd = c_.n_embd / c_.n_head;
        return cache.data() + (((size_t)layer * c_.n_head_kv + hk) * c_.n_ctx + slot) * hd;
    }
    std::vector<int8_t, CacheAligned<int8_t>> q8_;
    KernelInputs q8_inputs_;  // what the kernel reads besides q8_ (VNNI's interleaved copy, the lookup tables)
    std::vector<float> qscale_;
    std::vector<int32_t> qsum_;
    int q_cols_ = 0;
};


}  // namespace medusa
