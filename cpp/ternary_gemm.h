// I2_S ternary matmul on the CPU (the GPU's is hip/ternary_gemm.cu, binding ternary_gemm on both sides): bitnet.cpp's
// per-token int8 activation quantisation and the exact integer product over canonical I2_S bytes (128 weights in 32 bytes, byte p = codes of p, 32+p, 64+p, 96+p at shifts
// 6/4/2/0, code = w + 1). This is the reference the GPU kernels (hip/ternary_gemm.cu) must equal bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace medusa {

// Allocator for the quantised activations the kernels read in 32-byte pieces: 64-byte alignment keeps every piece
// inside one cache line (a std::vector's 16 bytes split every other load across two).
template <class T>
struct CacheAligned {
    using value_type = T;
    CacheAligned() = default;
    template <class U>
    CacheAligned(const CacheAligned<U>&) {}
    T* allocate(size_t n) {
        if (void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)) return static_cast<T*>(p);
        throw std::bad_alloc();
    }
    void deallocate(T* p, size_t) { std::free(p); }
    bool operator==(const CacheAligned&) const { return true; }
    bool operator!=(const CacheAligned&) const { return false; }
};

// x [M, K] -> q [M, K], scale [M] = (float)(127 / max(absmax, 1e-5)), sum [M] = row sums of q.
void quantize_acts(const float* x, int M, int K, int8_t* q, float* scale, int32_t* sum);

// sum_k code[k] * q[k] over one I2_S row of K weights (codes 0, 1, 2, i.e. w + 1): the integer core every ternary
// kernel computes; subtracting sum(q) gives sum_k w[k] * q[k].
int32_t i2s_row_codes_dot(const uint8_t* row, const int8_t* q, int K);

// Offset of the first byte of n that holds code 3 (no ternary value: a corrupt file or another layout), or n.
// One pass of 64-bit word tests, memory-bound: the engine runs it over every weight as it maps them.
size_t i2s_find_code3(const uint8_t* data, size_t n);

// y[m, n] = (float)(S - sum[m]) / scale[m] * wscale[n] with S = sum_k code[n, k] * q[m, k] in int32.
void ternary_gemm(const uint8_t* w, const float* wscale, int N, int K, const int8_t* q, const float* scale,
              const int32_t* sum, int M, float* y);

// Ternary GEMM over I2_S bytes for rows [r0, r1) and M quantised tokens: the small-M kernel (AVX2 maddubs, each
// weight byte loaded once for a tile of up to 8 tokens) with a scalar fallback. Same result as ternary_gemm.
// q_pairs: the same activations through interleave_block_pairs, where wants_block_pairs says the kernel takes them
// (VNNI's 512-bit tiles for two tokens or more); nullptr runs the 256-bit tiles.
void ternary_gemm_rows(const uint8_t* w, int K, int r0, int r1, int N, const int8_t* q, const float* qscale,
                       const int32_t* qsum, int M, float wscale, float* y, int kernel = -1,
                       const int8_t* q_pairs = nullptr);

// q [M, K] -> qp [M, K] with each 256 activations (two I2_S blocks) reordered so that code group g of both blocks
// is 64 contiguous bytes (block 2p's 32, then block 2p+1's): one 512-bit load per group. A trailing odd block
// stays as it is.
void interleave_block_pairs(const int8_t* q, int M, int K, int8_t* qp);
bool wants_block_pairs(int kernel, int M);  // kernel -1: the process's

// What a kernel reads besides q, made once per quantised input for the kernel named: VNNI's pair-interleaved copy
// (two tokens or more) and the lookup kernel's tables. The engine, the timing loop and the test entry point all
// prepare it here and run the rows through ternary_gemm_prepared.
struct KernelInputs {
    int kernel = 0;                    // the kernel these were prepared for
    const int8_t* q_pairs = nullptr;   // pairs.data() where that kernel takes them
    std::vector<int8_t, CacheAligned<int8_t>> pairs;
    std::vector<uint8_t, CacheAligned<uint8_t>> tables;
    void prepare(int kernel, const int8_t* q, int M, int K);  // kernel -1: the process's
};

// Rows [r0, r1) with the kernel `in` was prepared for: the lookup kernel over lut_w (lut_pack of w; r0 a multiple of
// its tile), any other over the I2_S bytes w. Same result as ternary_gemm_rows.
void ternary_gemm_prepared(const uint8_t* w, const uint8_t* lut_w, int K, int r0, int r1, int N, const int8_t* q,
                           const KernelInputs& in, const float* qscale, const int32_t* qsum, int M, float wscale,
                           float* y);

// The small-M kernels, each giving the same int32 sums: "scalar" (any CPU), "avx2" (maddubs), "avx512_vnni"
// (vpdpbusd on 256-bit lanes), "lut" (table lookups over re-laid weights, ternary_lut.h; ternary_gemm_rows runs
// the best multiply-add kernel in its place). Available = compiled for this build and supported by this CPU.
// kernel -1 in ternary_gemm_rows means the one set for the process (the widest multiply-add kernel until
// set_ternary_kernel).
constexpr int KERNEL_LUT = 3;
std::vector<std::string> ternary_kernels_available();
int ternary_kernel_index(const std::string& name);  // -1 when unknown or not available here
const char* ternary_kernel_name(int kernel);
int ternary_kernel();
void set_ternary_kernel(int kernel);

}  // namespace medusa
