// Shared device helpers: error checks, warp reductions templated on the warp width.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

#include "vendor.h"

#define MEDUSA_CHECK(call)                                                                           \
    do {                                                                                             \
        cudaError_t err_ = (call);                                                                   \
        if (err_ != cudaSuccess)                                                                     \
            throw std::runtime_error(std::string("GPU error: ") + cudaGetErrorString(err_) + " in " + \
                                     #call + " (" + __FILE__ + ":" + std::to_string(__LINE__) + ")"); \
    } while (0)

// After every launch: a bad configuration shows up here rather than as garbage later.
#define MEDUSA_CHECK_LAUNCH() MEDUSA_CHECK(cudaGetLastError())

constexpr int WARP = MEDUSA_WARP_SIZE;

template <int width = WARP>
static __device__ __forceinline__ float warp_reduce_sum(float x) {
#pragma unroll
    for (int o = width / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o, width);
    return x;
}

template <int width = WARP>
static __device__ __forceinline__ int warp_reduce_sum(int x) {
#pragma unroll
    for (int o = width / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o, width);
    return x;
}

template <int width = WARP>
static __device__ __forceinline__ float warp_reduce_max(float x) {
#pragma unroll
    for (int o = width / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o, width));
    return x;
}

namespace medusa_gpu {
// The stream every launch goes to: the default stream, or the one a graph capture is recording.
cudaStream_t current_stream();
void set_current_stream(cudaStream_t s);
// The device's warp size for host-side launch shapes (the WARP constant is only right in device code on HIP,
// where the host pass cannot know the target's wavefront size).
int host_warp();
bool device_is_sm80_or_newer();
}  // namespace medusa_gpu

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
