// Medusa heads on the device: the residual blocks, the vocabulary projection (f16 weights, f32 sums) and the
// top-k, so one step copies in a hidden state and copies out K*k ids and scores. Same maths as cpp/heads.cpp.
#include <cfloat>
#include <cstdint>

#include "api.h"
#include "common.cuh"

namespace medusa_gpu {

constexpr int HEADS_TOPK_MAX = 32;

// out[m, r] = act(W[r] . x[m] + b[r]) (+ res[m, r]); a warp per row r, all n inputs per row.
// mode 0: SiLU(Wx + b) ; 1: res + Wx ; 2: res + SiLU(Wx + b) (Medusa ResBlock without an output matrix)
static __global__ void heads_matvec(const float* __restrict__ W, const float* __restrict__ b,
                                    const float* __restrict__ x, const float* __restrict__ res,
                                    float* __restrict__ out, int R, int C, int n, int mode) {
    const int r = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (r >= R) return;
    const float* w = W + (size_t)r * C;
    for (int m = 0; m < n; ++m) {
        const float* xm = x + (size_t)m * C;
        float s = 0.f;
        for (int k = lane; k < C; k += WARP) s += w[k] * xm[k];
        s = warp_reduce_sum(s);
        if (lane == 0) {
            if (b) s += b[r];
            if (mode != 1) s = s / (1.0f + expf(-s));
            if (mode != 0) s += res[(size_t)m * R + r];
            out[(size_t)m * R + r] = s;
        }
    }
}

// logits[i, v] = W[v] . states[rows[i]] for c_n inputs at a time; W is f16 [V, H], read as half2.
template <int c_n>
static __global__ void heads_project(const __half* __restrict__ W, const float* __restrict__ states,
                                     const int* __restrict__ rows, float* __restrict__ logits, int V, int H, int i0,
                                     int n) {
    const int v = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (v >= V) return;
    const __half2* w = (const __half2*)(W + (size_t)v * H);
    float acc[c_n] = {0.f};
    for (int k2 = lane; k2 < H / 2; k2 += WARP) {
        const float2 wf = __half22float2(w[k2]);
#pragma unroll
        for (int c = 0; c < c_n; ++c) {
            const int i = min(i0 + c, n - 1);
            const float2 xs = *(const float2*)(states + (size_t)rows[i] * H + 2 * k2);
            acc[c] += wf.x * xs.x + wf.y * xs.y;
        }
    }
#pragma unroll
    for (int c = 0; c < c_n; ++c) {
        const float s = warp_reduce_sum(acc[c]);
        if (lane == 0 && i0 + c < n) logits[(size_t)(i0 + c) * V + v] = s;
    }
}

// Top-k of each logits row, best first; ties go to the lower id (as the CPU engine). A thread keeps a sorted
// list of its own best k, then k rounds of a block-wide argmax over the lists' heads.
static __device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
    return a > b || (a == b && ia < ib);
}

static __global__ void heads_topk(const float* __restrict__ logits, const int* __restrict__ slots, int V, int k,
                                  int32_t* __restrict__ ids, float* __restrict__ scores) {
    const int row = blockIdx.x;
    const float* l = logits + (size_t)row * V;
    float bv[HEADS_TOPK_MAX];
    int bi[HEADS_TOPK_MAX];
    for (int i = 0; i < k; ++i) { bv[i] = -FLT_MAX; bi[i] = INT32_MAX; }
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float s = l[v];
        if (!better(s, v, bv[k - 1], bi[k - 1])) continue;
        int j = k - 1;
        while (j > 0 && better(s, v, bv[j - 1], bi[j - 1])) { bv[j] = bv[j - 1]; bi[j] = bi[j - 1]; --j; }
        bv[j] = s; bi[j] = v;
    }
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    __shared__ int s_win;
    int ptr = 0;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, nwarps = blockDim.x / WARP;
    for (int r = 0; r < k; ++r) {
        float v = ptr < k ? bv[ptr] : -FLT_MAX;
        int i = ptr < k ? bi[ptr] : INT32_MAX;
#pragma unroll
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffff, v, o, WARP);
            const int oi = __shfl_xor_sync(0xffffffff, i, o, WARP);
            if (better(ov, oi, v, i)) { v = ov; i = oi; }
        }
        if (lane == 0) { s_v[warp] = v; s_i[warp] = i; }
        __syncthreads();
        if (threadIdx.x == 0) {
            float wv = s_v[0];
            int wi = s_i[0];
            for (int w = 1; w < nwarps; ++w)
                if (better(s_v[w], s_i[w], wv, wi)) { wv = s_v[w]; wi = s_i[w]; }
            ids[(size_t)slots[row] * k + r] = wi;
            scores[(size_t)slots[row] * k + r] = wv;
            s_win = wi;
        }
        __syncthreads();
        if (ptr < k && bi[ptr] == s_win) ++ptr;  // ids are unique: only the owner advances
        __syncthreads();
    }
}

HeadsEngine::HeadsEngine(int hidden) : hidden_(hidden) {
    if (hidden <= 0 || hidden % 2) throw std::invalid_argument("hidden size must be positive and even");
}

HeadsEngine::~HeadsEngine() {
    for (auto& p : projs_) (void)cudaFree(p.w);
    for (auto& h : heads_)
        for (auto& b : h.blocks) { (void)cudaFree(b.w_in); (void)cudaFree(b.b_in); (void)cudaFree(b.w_out); }
    for (void* p : {(void*)d_hidden_, (void*)d_states_, (void*)d_tmp_, (void*)d_logits_, (void*)d_scores_,
                    (void*)d_ids_})
        (void)cudaFree(p);
}

static float* upload_f32(const float* src, size_t n) {
    if (!src) return nullptr;
    float* d = nullptr;
    MEDUSA_CHECK(cudaMalloc(&d, n * sizeof(float)));
    MEDUSA_CHECK(cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

int HeadsEngine::add_projection(const uint16_t* f16, int rows, int cols) {
    if (cols != hidden_)
        throw std::invalid_argument("projection has " + std::to_string(cols) + " columns, hidden size is " +
                                    std::to_string(hidden_));
    if (!projs_.empty() && rows != projs_[0].rows)
        throw std::invalid_argument("projections disagree on the vocabulary size");
    Proj p{nullptr, rows};
    const size_t bytes = (size_t)rows * cols * 2;
    MEDUSA_CHECK(cudaMalloc(&p.w, bytes));
    MEDUSA_CHECK(cudaMemcpy(p.w, f16, bytes, cudaMemcpyHostToDevice));
    projs_.push_back(p);
    return (int)projs_.size() - 1;
}

void HeadsEngine::add_head(const std::vector<std::vector<const float*>>& blocks, const std::vector<int>& inner,
                           const std::vector<bool>& has_bias, const std::vector<bool>& has_out, int proj) {
    if (proj < 0 || proj >= (int)projs_.size())
        throw std::invalid_argument("head refers to projection " + std::to_string(proj));
    Hd h{{}, proj};
    for (size_t i = 0; i < blocks.size(); ++i) {
        const size_t n = (size_t)inner[i] * hidden_;
        if (!has_out[i] && inner[i] != hidden_)
            throw std::invalid_argument("a block without w_out must have inner == hidden");
        h.blocks.push_back({inner[i], upload_f32(blocks[i][0], n),
                            has_bias[i] ? upload_f32(blocks[i][1], inner[i]) : nullptr,
                            has_out[i] ? upload_f32(blocks[i][2], n) : nullptr});
        max_inner_ = std::max(max_inner_, inner[i]);
    }
    heads_.push_back(std::move(h));
    cap_n_ = cap_k_ = 0;  // scratch sizes depend on the heads: regrow on next use
}

int HeadsEngine::vocab() const { return projs_.empty() ? 0 : projs_[0].rows; }

void HeadsEngine::ensure(int n, int k) {
    if (n <= cap_n_ && k <= cap_k_) return;
    for (void* p : {(void*)d_hidden_, (void*)d_states_, (void*)d_tmp_, (void*)d_logits_, (void*)d_scores_,
                    (void*)d_ids_})
        (void)cudaFree(p);
    cap_n_ = std::max(n, cap_n_);
    cap_k_ = std::max(k, cap_k_);
    const size_t K = std::max(1, n_heads()), H = hidden_, V = std::max(1, vocab());
    MEDUSA_CHECK(cudaMalloc(&d_hidden_, cap_n_ * H * 4));
    MEDUSA_CHECK(cudaMalloc(&d_states_, cap_n_ * K * H * 4));
    MEDUSA_CHECK(cudaMalloc(&d_tmp_, cap_n_ * ((size_t)max_inner_ + 2 * H) * 4));
    MEDUSA_CHECK(cudaMalloc(&d_logits_, cap_n_ * K * V * 4 + cap_n_ * K * 4 * 2));  // + row/slot index lists
    MEDUSA_CHECK(cudaMalloc(&d_scores_, cap_n_ * K * cap_k_ * 4));
    MEDUSA_CHECK(cudaMalloc(&d_ids_, cap_n_ * K * cap_k_ * 4));
}

void HeadsEngine::run_states(int n) {
    const int H = hidden_, K = n_heads();
    const int warps = 4;
    float* x = d_tmp_;                                   // [n, inner] SiLU activations
    float* cur = d_tmp_ + (size_t)cap_n_ * max_inner_;   // [n, H] the head's running state
    float* nxt = cur + (size_t)cap_n_ * H;
    for (int h = 0; h < K; ++h) {
        MEDUSA_CHECK(cudaMemcpyAsync(cur, d_hidden_, (size_t)n * H * 4, cudaMemcpyDeviceToDevice, current_stream()));
        for (const Blk& b : heads_[h].blocks) {
            if (b.w_out) {
                heads_matvec<<<ceil_div(b.inner, warps), warps * host_warp(), 0, current_stream()>>>(b.w_in, b.b_in, cur, nullptr, x, b.inner, H, n, 0);
                MEDUSA_CHECK_LAUNCH();
                heads_matvec<<<ceil_div(H, warps), warps * host_warp(), 0, current_stream()>>>(b.w_out, nullptr, x, cur, nxt, H, b.inner, n, 1);
            } else {
                heads_matvec<<<ceil_div(H, warps), warps * host_warp(), 0, current_stream()>>>(b.w_in, b.b_in, cur, cur, nxt, H, H, n, 2);
            }
            MEDUSA_CHECK_LAUNCH();
            std::swap(cur, nxt);
        }
        // states is [n, K, H]: head h's rows sit K*H apart
        MEDUSA_CHECK(cudaMemcpy2DAsync(d_states_ + (size_t)h * H, (size_t)K * H * 4, cur, (size_t)H * 4, (size_t)H * 4,
                                       n, cudaMemcpyDeviceToDevice, current_stream()));
    }
}

void HeadsEngine::head_states(const float* hidden, int n, float* states) {
    if (n < 1) throw std::invalid_argument("need at least one hidden state");
    ensure(n, 1);
    MEDUSA_CHECK(cudaMemcpy(d_hidden_, hidden, (size_t)n * hidden_ * 4, cudaMemcpyHostToDevice));
    run_states(n);
    MEDUSA_CHECK(cudaDeviceSynchronize());
    MEDUSA_CHECK(cudaMemcpy(states, d_states_, (size_t)n * n_heads() * hidden_ * 4, cudaMemcpyDeviceToHost));
}

void HeadsEngine::topk(const float* hidden, int n, int k, int32_t* ids, float* scores) {
    if (n < 1) throw std::invalid_argument("need at least one hidden state");
    if (k < 1 || k > HEADS_TOPK_MAX || k > vocab())
        throw std::invalid_argument("k must be 1.." + std::to_string(std::min(HEADS_TOPK_MAX, vocab())) +
                                    ", got " + std::to_string(k));
    if (n_heads() == 0) throw std::invalid_argument("no heads added");
    ensure(n, k);
    const int H = hidden_, K = n_heads(), V = vocab();
    MEDUSA_CHECK(cudaMemcpy(d_hidden_, hidden, (size_t)n * H * 4, cudaMemcpyHostToDevice));
    run_states(n);
    int* d_rows = (int*)(d_logits_ + (size_t)cap_n_ * K * V);
    const int warps = 4;
    for (int p = 0; p < (int)projs_.size(); ++p) {
        std::vector<int> rows;  // state rows (= output slots) that use projection p: one product for all of them
        for (int m = 0; m < n; ++m)
            for (int h = 0; h < K; ++h)
                if (heads_[h].proj == p) rows.push_back(m * K + h);
        if (rows.empty()) continue;
        const int R = (int)rows.size();
        MEDUSA_CHECK(cudaMemcpy(d_rows, rows.data(), R * 4, cudaMemcpyHostToDevice));
        for (int i0 = 0; i0 < R; i0 += 8) {
            const dim3 grid(ceil_div(V, warps));
            const auto* W = (const __half*)projs_[p].w;
            switch (std::min(8, R - i0)) {
                case 1: heads_project<1><<<grid, warps * host_warp(), 0, current_stream()>>>(W, d_states_, d_rows, d_logits_, V, H, i0, R); break;
                case 2: heads_project<2><<<grid, warps * host_warp(), 0, current_stream()>>>(W, d_states_, d_rows, d_logits_, V, H, i0, R); break;
                case 3: heads_project<3><<<grid, warps * host_warp(), 0, current_stream()>>>(W, d_states_, d_rows, d_logits_, V, H, i0, R); break;
                case 4: heads_project<4><<<grid, warps * host_warp(), 0, current_stream()>>>(W, d_states_, d_rows, d_logits_, V, H, i0, R); break;
                default: heads_project<8><<<grid, warps * host_warp(), 0, current_stream()>>>(W, d_states_, d_rows, d_logits_, V, H, i0, R); break;
            }
            MEDUSA_CHECK_LAUNCH();
        }
        heads_topk<<<R, 256, 0, current_stream()>>>(d_logits_, d_rows, V, k, d_ids_, d_scores_);
        MEDUSA_CHECK_LAUNCH();
    }
    MEDUSA_CHECK(cudaMemcpy(ids, d_ids_, (size_t)n * K * k * 4, cudaMemcpyDeviceToHost));
    MEDUSA_CHECK(cudaMemcpy(scores, d_scores_, (size_t)n * K * k * 4, cudaMemcpyDeviceToHost));
}

}  // namespace medusa_gpu
