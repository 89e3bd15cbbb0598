// Host-side API of the GPU backend. Host-only: the pybind11 module (module.cpp, built by the host C++ compiler)
// includes this and never a CUDA/HIP header, so the bindings are written once for both vendors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace medusa_gpu {

// An owned device allocation. Copies in and out are synchronous; kernels run on the default stream.
class Buffer {
public:
    explicit Buffer(size_t bytes);
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
    void upload(const void* src, size_t bytes, size_t offset = 0);
    void download(void* dst, size_t bytes, size_t offset = 0) const;
    void fill_random(uint32_t seed);  // random bytes, generated on the device (for timing only)
    void* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

int device_count();                // 0 when no device or no driver: callers skip
std::string device_name();
int warp_size_compiled();          // the constant the kernels were built with (device code)
void synchronize();

// ---- I2_S ternary GEMM (ternary_gemm.cu) --------------------------------------------------------
// w: [N, K/4] bytes, bitnet.cpp's canonical I2_S layout (128 weights in 32 bytes, code = w + 1);
// wscale: [N] per output row (a tensor's single scale repeated; fused matrices concatenate theirs).
// x: [M, K] int8 from quantize_acts, xscale [M] (= 127 / absmax), xsum [M] (= sum of the row's q).
// y[m, n] = (float)(S - xsum[m]) / xscale[m] * wscale[n], S = sum_k code[n, k] * x[m, k] (exact int32).
void quantize_acts(const float* x, int8_t* q, float* xscale, int32_t* xsum, int M, int K);
void ternary_gemm(const uint8_t* w, const float* wscale, const int8_t* x, const float* xscale,
                  const int32_t* xsum, float* y, int N, int K, int M, int kernel /* 0 auto, 1 dp4a, 2 mma */);
bool ternary_mma_available();

// ---- tree attention (tree_attention.cu) -----------------------------------------------------------
// q [T, Hq, D] f32; k, v [L, Hkv, D] f16 (the last T positions are the tree's own); anc [T, ceil(T/32)]:
// bit j of row i set when tree node j is node i or one of its ancestors. out [T, Hq, D] f32.
// Split over the KV sequence in chunks of `chunk` positions (flash-decoding), partials in `work`.
size_t tree_attention_work_bytes(int T, int Hq, int D, int L, int chunk);
void tree_attention(const float* q, const uint16_t* k, const uint16_t* v, const uint32_t* anc, float* out,
                    void* work, int T, int Hq, int Hkv, int D, int L, int chunk, float scale);

// ---- Medusa heads (heads.cu) -----------------------------------------------------------------------
// Same maths as the CPU HeadsEngine (cpp/heads.h): x <- x + W_out SiLU(W_in x + b) per block, then a
// projection (f16 on the device) reduced to top-k on the device; only ids and scores come back.
class HeadsEngine {
public:
    explicit HeadsEngine(int hidden);
    ~HeadsEngine();
    int add_projection(const uint16_t* f16, int rows, int cols);
    void add_head(const std::vector<std::vector<const float*>>& blocks, const std::vector<int>& inner,
                  const std::vector<bool>& has_bias, const std::vector<bool>& has_out, int proj);
    int hidden() const { return hidden_; }
    int n_heads() const { return (int)heads_.size(); }
    int vocab() const;
    // hidden [n, H] host -> ids/scores [n, K, k] host
    void topk(const float* hidden, int n, int k, int32_t* ids, float* scores);
    void head_states(const float* hidden, int n, float* states);

private:
    struct Blk { int inner; float* w_in; float* b_in; float* w_out; };
    struct Hd { std::vector<Blk> blocks; int proj; };
    struct Proj { uint16_t* w; int rows; };
    void ensure(int n, int k);
    void run_states(int n);
    int hidden_;
    std::vector<Proj> projs_;
    std::vector<Hd> heads_;
    // scratch, grown on demand
    int cap_n_ = 0, cap_k_ = 0;
    float *d_hidden_ = nullptr, *d_states_ = nullptr, *d_tmp_ = nullptr, *d_logits_ = nullptr, *d_scores_ = nullptr;
    int32_t* d_ids_ = nullptr;
    int max_inner_ = 0;
};

// ---- benchmark helpers (runtime.cu) ----------------------------------------------------------------
// Device-to-device copy bandwidth in bytes/s (read + written), median of `reps`.
double copy_bandwidth(size_t bytes, int reps);
// Times a sequence of ternary GEMMs captured in one graph: shapes (N, K) over distinct weight buffers of
// `copies` full sets, M tokens; returns the median seconds per replay of the whole sequence.
double time_ternary_sequence(const std::vector<std::pair<int, int>>& shapes, int M, int reps, int kernel);

}  // namespace medusa_gpu
