// Attention of tree nodes over a KV cache on the CPU (the GPU's is hip/tree_attention.cu, binding tree_attention on
// both sides). A node attends to the committed prefix and to its ancestors-or-self among the tree's nodes, in slot
// order, with the same code whatever else shares the batch: a tree pass equals decoding each branch alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "threads.h"

namespace medusa {

// One query head: o = softmax(scale * K q) V over slots [0, n_prefix) and then tail[0 .. n_tail). K and V rows are
// `stride` floats apart (all KV heads of a slot); both point at this query's KV head. s: scratch.
void attend(const float* qh, const float* K, const float* V, size_t stride, int n_prefix, const int* tail, int n_tail,
            int hd, float scale, float* o, std::vector<float>& s);

// q [T, n_head, hd]; K, V [L, n_head_kv, hd] whose last T slots are the tree's nodes; anc [T, ceil(T/32)]: bit j of
// row i set when node j is an ancestor-or-self of node i. out [T, n_head, hd]. Grouped-query heads share KV heads.
void tree_attention(const float* q, const float* K, const float* V, const uint32_t* anc, float* out, int T,
                    int n_head, int n_head_kv, int hd, int L, float scale, ThreadPool& pool);

}  // namespace medusa
