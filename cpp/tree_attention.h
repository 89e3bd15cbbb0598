// Attention of tree nodes over a KV cache on the CPU (the GPU's is hip/tree_attention.cu, binding tree_attention on
// both sides). A node attends to the committed prefix and to its ancestors-or-self among the tree's nodes, in slot
// order, with the same code whatever else shares the batch: a tree pass equals decoding each branch alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "threads.h"

namespace medusa {

// Query heads that share one KV head, in one sweep over its cache: each K and V row is read once for all of them,
// not once per query head and node (at a 2,000-token context that re-reading had made one token cost twice a short
// context's, and a 4-node tree 2.6 tokens). Query j (vector q[j], output o[j]) attends to slots [0, n_prefix) and
// to batch slot n_prefix + b where bit b of its ancestor row anc[node[j] * words ..] is set, in slot order. K and V
// point at the KV head, rows `stride` floats apart. Each query's arithmetic (every dot product as dot_f32's, the
// softmax sum and the weighted sum of V, in slot order) is the same whatever else shares the sweep, and whether a
// slot is committed or in the batch. At most ATTEND_QUERIES queries.
constexpr int ATTEND_QUERIES = 16;
void attend_shared(int nq, const float* const* q, float* const* o, const int* node, const uint32_t* anc, int words,
                   const float* K, const float* V, size_t stride, int n_prefix, int n_batch, int hd, float scale,
                   std::vector<float>& s);

// Sets anc [T, words]: bit j of row i when node j is an ancestor-or-self of node i (parents[i] < i, -1: the prefix).
void ancestor_bits(const int32_t* parents, int T, std::vector<uint32_t>& anc);

// All heads of all nodes: tasks of up to ATTEND_QUERIES query heads that share a KV head (a node's group, then the
// next node's). q and out [T, n_head, hd], node rows q_stride floats apart; KV head hk's rows start at
// K + hk * head_stride, `row_stride` floats apart; the batch's slots follow the n_prefix committed ones.
void attend_all(const float* q, size_t q_stride, float* out, const uint32_t* anc, int T, int n_head, int n_head_kv,
                int hd, const float* K, const float* V, size_t head_stride, size_t row_stride, int n_prefix,
                float scale, ThreadPool& pool);

// q [T, n_head, hd]; K, V [L, n_head_kv, hd] whose last T slots are the tree's nodes; anc [T, ceil(T/32)]: bit j of
// row i set when node j is an ancestor-or-self of node i. out [T, n_head, hd]. Grouped-query heads share KV heads.
void tree_attention(const float* q, const float* K, const float* V, const uint32_t* anc, float* out, int T,
                    int n_head, int n_head_kv, int hd, int L, float scale, ThreadPool& pool);

}  // namespace medusa
