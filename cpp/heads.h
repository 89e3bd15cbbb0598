// Medusa head evaluation on the CPU: residual blocks, then a vocabulary projection reduced to top-k on the fly.
//
// Python hands over the final-norm hidden state(s) of the backbone; only token ids and scores come back, never a
// full vocabulary of logits. Heads that share a projection (the backbone's own output matrix, "Medusa v2" style)
// are evaluated as one M-row product so the large matrix is streamed once per step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace medusa {

enum class DType : int { F32 = 0, F16 = 1, I8 = 2 };

// A [rows, cols] weight matrix. I8 rows carry one float scale each (symmetric, absmax / 127).
struct Matrix {
    int rows = 0, cols = 0;
    DType dtype = DType::F32;
    std::vector<float> f32;
    std::vector<uint16_t> f16;
    std::vector<int8_t> i8;
    std::vector<float> scale;
    std::vector<int32_t> wsum;  // I8: each row's sum (set by add_projection), for offset-uint8 activations
};

// A dense row-major weight matrix in float32, or in float16 when its values are exactly float16 (heads files
// store float16: keeping them so halves the bytes each step streams, which is what a head costs).
struct Dense {
    std::vector<float> f32;
    std::vector<uint16_t> f16;
    size_t size() const { return f16.empty() ? f32.size() : f16.size(); }
    bool empty() const { return f32.empty() && f16.empty(); }
    // As a [rows, cols] matrix W: y[r * ldy + i] = W[i, :] . x[r * ldx : r * ldx + cols] for r < m.
    void matmul(int rows, int cols, const float* x, size_t ldx, int m, float* y, size_t ldy) const;
};

// x <- x + W_out * SiLU(W_in * x + b_in). FasterDecoding/Medusa's ResBlock is the case without W_out
// (inner == hidden, identity output); MedusaBitNet's heads have W_out and no bias.
struct Block {
    int inner = 0;
    Dense w_in;                // [inner, hidden]
    std::vector<float> b_in;   // [inner] or empty
    Dense w_out;               // [hidden, inner] or empty
};

struct Head {
    std::vector<Block> blocks;
    int proj = 0;
    // Token conditioning: cond[j] is U_j [first block's inner, hidden]; U_j . e_j is added to the first block's
    // pre-activation, e_j the embedding of the j-th token after the hidden state (root, then top-1 drafts).
    std::vector<Dense> cond;
};

class ThreadPool;

// out[m, P.rows] = x[m, P.cols] . P^T, rows split over the pool (int8 matrices quantise x per row first).
void matmul_rows(const Matrix& P, const float* x, int m, float* out, ThreadPool& pool);

// The rows' sums an int8 matrix needs for offset-uint8 activations (add_projection sets them).
void finish_matrix(Matrix& m);

class HeadsEngine {
public:
    HeadsEngine(int hidden, int n_threads);

    int add_projection(Matrix m);
    void add_head(Head h);

    int hidden() const { return hidden_; }
    int n_heads() const { return (int)heads_.size(); }
    int vocab() const;
    int n_threads() const { return n_threads_; }
    void set_n_threads(int n) { n_threads_ = n < 1 ? 1 : n; }

    // Heads [h0, h1) of every row; G = h1 - h0. hidden: [n, H]. states: [n, G, H] = each head's residual output.
    // emb (optional) [n, n_emb, H]: embeddings of the tokens after each row's state, for conditioned heads (a
    // head uses the first min(n_emb, its cond count) of them).
    void head_states(const float* hidden, int n, float* states, int h0 = 0, int h1 = -1,
                     const float* emb = nullptr, int n_emb = 0) const;
    // ids/scores: [n, G, k], best first. Scores are the head's raw logits.
    void topk(const float* hidden, int n, int k, int32_t* ids, float* scores, int h0 = 0, int h1 = -1,
              const float* emb = nullptr, int n_emb = 0) const;
    // Full logits of one projection for m vectors [m, H] -> [m, V] (tests and training only).
    void project(int proj, const float* x, int m, float* logits) const;

private:
    int hidden_;
    int n_threads_;
    std::vector<Matrix> projs_;
    std::vector<Head> heads_;
};

}  // namespace medusa
