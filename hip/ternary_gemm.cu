// I2_S ternary GEMM for small M (1..64 tokens) and the per-token int8 activation quantisation in front of it.
//
// Weights stay in bitnet.cpp's canonical I2_S bytes: a 128-weight block is 32 bytes, byte p holding the codes of
// weights p, 32+p, 64+p, 96+p at shifts 6, 4, 2, 0 (code = w + 1, so 0, 1, 2). A kernel multiplies the codes
// (not w) by the int8 activations and subtracts the activation row sum afterwards: sum(c*q) - sum(q) = sum(w*q).
// Everything up to the float epilogue is int32 arithmetic, so results equal the CPU reference bit for bit.
//
// Two kernels:
//  * mma (NVIDIA sm_80+): tensor-core mma.sync m16n8k32 s8. The weights are the A operand: a thread's 8 bytes
//    of a block row hold, for each of the 4 groups, 8 codes; shifting out one group gives an A fragment with no
//    other decoding. The k order inside a fragment is permuted to match the bytes; the B operand (activations)
//    is loaded in the same permuted order, which the product does not see. Weights are read once per M-tile.
//  * dp4a (everywhere, the HIP path): a warp per row, a lane per 4-byte word, 4 dp4a per word and token.
#include <cstdint>

#include "api.h"
#include "common.cuh"

namespace medusa_gpu {

// ---------------------------------------------------------------------------------------------- quantize
// One block per token: absmax, scale = (float)(127 / max(absmax, 1e-5)) in double as bitnet.cpp's
// quantize_row_i8_s, round half to even, clamp, and the row sum the kernels subtract.
static __global__ void quantize_acts_kernel(const float* __restrict__ x, int8_t* __restrict__ q,
                                            float* __restrict__ xscale, int32_t* __restrict__ xsum, int K) {
    __shared__ float s_max[32];
    __shared__ int s_sum[32];
    const int m = blockIdx.x;
    const float* row = x + (size_t)m * K;
    float amax = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(row[k]));
    amax = warp_reduce_max(amax);
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, nwarps = blockDim.x / WARP;
    if (lane == 0) s_max[warp] = amax;
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = 0.f;
        for (int i = 0; i < nwarps; ++i) v = fmaxf(v, s_max[i]);
        s_max[0] = v;
    }
    __syncthreads();
    const double mx = fmax(1e-5, (double)s_max[0]);
    const float s = (float)(127.0 / mx);
    int sum = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        int v = __float2int_rn(__fmul_rn(row[k], s));  // no contraction: same rounding as the CPU
        v = v < -128 ? -128 : (v > 127 ? 127 : v);
        q[(size_t)m * K + k] = (int8_t)v;
        sum += v;
    }
    sum = warp_reduce_sum(sum);
    if (lane == 0) s_sum[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        int t = 0;
        for (int i = 0; i < nwarps; ++i) t += s_sum[i];
        xsum[m] = t;
        xscale[m] = s;
    }
}

void quantize_acts(const float* x, int8_t* q, float* xscale, int32_t* xsum, int M, int K) {
    quantize_acts_kernel<<<M, 256, 0, current_stream()>>>(x, q, xscale, xsum, K);
    MEDUSA_CHECK_LAUNCH();
}

static __device__ __forceinline__ float epilogue(int s, int sum, float xs, float ws) {
    return __fmul_rn(__fdiv_rn((float)(s - sum), xs), ws);
}

// ------------------------------------------------------------------------------------------------ dp4a
// c_ncols tokens per pass (1..8), a warp per weight row, lanes stride over 4-byte words of the row.
template <int c_ncols>
static __global__ void ternary_dp4a_kernel(const uint8_t* __restrict__ w, const float* __restrict__ wscale,
                                           const int8_t* __restrict__ x, const float* __restrict__ xscale,
                                           const int32_t* __restrict__ xsum, float* __restrict__ y, int N, int K,
                                           int M, int m0) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= N) return;
    const uint32_t* wr = (const uint32_t*)(w + (size_t)row * (K / 4));
    int acc[c_ncols] = {0};
    const int nwords = K / 16;  // 4 bytes = 16 weights
    for (int i = lane; i < nwords; i += WARP) {
        const uint32_t word = wr[i];
        const int kb = (i / 8) * 128 + (i % 8) * 4;  // block start + lane p of its first byte
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const int codes = (int)((word >> (6 - 2 * g)) & 0x03030303u);
#pragma unroll
            for (int c = 0; c < c_ncols; ++c) {
                const int m = min(m0 + c, M - 1);
                const int a = *(const int*)(x + (size_t)m * K + kb + 32 * g);
                acc[c] = medusa_dp4a(codes, a, acc[c]);
            }
        }
    }
#pragma unroll
    for (int c = 0; c < c_ncols; ++c) {
        const int s = warp_reduce_sum(acc[c]);
        const int m = m0 + c;
        if (lane == 0 && m < M) y[(size_t)m * N + row] = epilogue(s, xsum[m], xscale[m], wscale[row]);
    }
}

static void launch_dp4a(const uint8_t* w, const float* ws, const int8_t* x, const float* xs, const int32_t* xsum,
                        float* y, int N, int K, int M) {
    const int warps = 4;
    dim3 grid(ceil_div(N, warps)), block(warps * host_warp());
    for (int m0 = 0; m0 < M; m0 += 8) {
        switch (M - m0 >= 8 ? 8 : M - m0) {
            case 1: ternary_dp4a_kernel<1><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 2: ternary_dp4a_kernel<2><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 3: ternary_dp4a_kernel<3><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 4: ternary_dp4a_kernel<4><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 5: ternary_dp4a_kernel<5><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 6: ternary_dp4a_kernel<6><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            case 7: ternary_dp4a_kernel<7><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
            default: ternary_dp4a_kernel<8><<<grid, block, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M, m0); break;
        }
        MEDUSA_CHECK_LAUNCH();
    }
}

// ------------------------------------------------------------------------------------------------- mma
#if defined(MEDUSA_CUDA)
static __device__ __forceinline__ void mma_s8(int (&c)[4], const int (&a)[4], const int (&b)[2]) {
#if defined(MEDUSA_INT8_MMA)
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // instantiated only where the host saw sm_80+; never reached elsewhere
#endif
}

// Block = c_warps warps splitting the K blocks of the same c_mt*16 rows; c_nt*8 tokens. Warps add their int32
// tiles in shared memory (integer adds: the order cannot change the result).
template <int c_mt, int c_nt, int c_warps>
static __global__ void __launch_bounds__(c_warps * 32)
    ternary_mma_kernel(const uint8_t* __restrict__ w, const float* __restrict__ wscale,
                       const int8_t* __restrict__ x, const float* __restrict__ xscale,
                       const int32_t* __restrict__ xsum, float* __restrict__ y, int N, int K, int M) {
    constexpr int ROWS = c_mt * 16, COLS = c_nt * 8;
    __shared__ int tile[ROWS][COLS + 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * ROWS;
    for (int i = threadIdx.x; i < ROWS * (COLS + 1); i += blockDim.x) (&tile[0][0])[i] = 0;

    const size_t row_bytes = (size_t)K / 4;
    const uint8_t* wrow[c_mt][2];
#pragma unroll
    for (int mt = 0; mt < c_mt; ++mt) {
        wrow[mt][0] = w + (size_t)min(row0 + mt * 16 + g, N - 1) * row_bytes + 8 * t;
        wrow[mt][1] = w + (size_t)min(row0 + mt * 16 + g + 8, N - 1) * row_bytes + 8 * t;
    }
    const int8_t* xrow[c_nt];
#pragma unroll
    for (int nt = 0; nt < c_nt; ++nt) xrow[nt] = x + (size_t)min(nt * 8 + g, M - 1) * K + 8 * t;

    int acc[c_mt][c_nt][4];
#pragma unroll
    for (int mt = 0; mt < c_mt; ++mt)
#pragma unroll
        for (int nt = 0; nt < c_nt; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

    const int nblocks = K / 128;
    for (int kb = warp; kb < nblocks; kb += c_warps) {
        uint2 wa[c_mt][2];
#pragma unroll
        for (int mt = 0; mt < c_mt; ++mt) {
            wa[mt][0] = __ldg((const uint2*)(wrow[mt][0] + kb * 32));
            wa[mt][1] = __ldg((const uint2*)(wrow[mt][1] + kb * 32));
        }
#pragma unroll
        for (int grp = 0; grp < 4; ++grp) {
            const int sh = 6 - 2 * grp;
            int a[c_mt][4];
#pragma unroll
            for (int mt = 0; mt < c_mt; ++mt) {
                a[mt][0] = (int)((wa[mt][0].x >> sh) & 0x03030303u);  // row g,   bytes 8t..8t+3
                a[mt][1] = (int)((wa[mt][1].x >> sh) & 0x03030303u);  // row g+8, bytes 8t..8t+3
                a[mt][2] = (int)((wa[mt][0].y >> sh) & 0x03030303u);  // row g,   bytes 8t+4..8t+7
                a[mt][3] = (int)((wa[mt][1].y >> sh) & 0x03030303u);  // row g+8, bytes 8t+4..8t+7
            }
#pragma unroll
            for (int nt = 0; nt < c_nt; ++nt) {
                const uint2 xb = __ldg((const uint2*)(xrow[nt] + kb * 128 + 32 * grp));
                const int b[2] = {(int)xb.x, (int)xb.y};
#pragma unroll
                for (int mt = 0; mt < c_mt; ++mt) mma_s8(acc[mt][nt], a[mt], b);
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < c_mt; ++mt)
#pragma unroll
        for (int nt = 0; nt < c_nt; ++nt) {
            atomicAdd(&tile[mt * 16 + g][nt * 8 + 2 * t], acc[mt][nt][0]);
            atomicAdd(&tile[mt * 16 + g][nt * 8 + 2 * t + 1], acc[mt][nt][1]);
            atomicAdd(&tile[mt * 16 + g + 8][nt * 8 + 2 * t], acc[mt][nt][2]);
            atomicAdd(&tile[mt * 16 + g + 8][nt * 8 + 2 * t + 1], acc[mt][nt][3]);
        }
    __syncthreads();
    // y is [M, N]: consecutive threads take consecutive rows of one token (coalesced stores).
    for (int i = threadIdx.x; i < ROWS * COLS; i += blockDim.x) {
        const int r = i % ROWS, m = i / ROWS, n = row0 + r;
        if (n < N && m < M) y[(size_t)m * N + n] = epilogue(tile[r][m], xsum[m], xscale[m], wscale[n]);
    }
}

template <int c_mt, int c_nt>
static void launch_mma_nt(const uint8_t* w, const float* ws, const int8_t* x, const float* xs, const int32_t* xsum,
                          float* y, int N, int K, int M) {
    // More warps along K when K is long, so a row tile's bytes are in flight at once (2B-4T: K 2560 or 6912).
    const dim3 grid(ceil_div(N, c_mt * 16));
    if (K / 128 >= 32)
        ternary_mma_kernel<c_mt, c_nt, 8><<<grid, 8 * 32, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M);
    else
        ternary_mma_kernel<c_mt, c_nt, 4><<<grid, 4 * 32, 0, current_stream()>>>(w, ws, x, xs, xsum, y, N, K, M);
    MEDUSA_CHECK_LAUNCH();
}

static void launch_mma(const uint8_t* w, const float* ws, const int8_t* x, const float* xs, const int32_t* xsum,
                       float* y, int N, int K, int M) {
    switch (ceil_div(M, 8)) {  // runtime M -> compile-time token tiles
        case 1: launch_mma_nt<1, 1>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 2: launch_mma_nt<1, 2>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 3: launch_mma_nt<2, 3>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 4: launch_mma_nt<2, 4>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 5: launch_mma_nt<2, 5>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 6: launch_mma_nt<2, 6>(w, ws, x, xs, xsum, y, N, K, M); break;
        case 7: launch_mma_nt<2, 7>(w, ws, x, xs, xsum, y, N, K, M); break;
        default: launch_mma_nt<2, 8>(w, ws, x, xs, xsum, y, N, K, M); break;
    }
}
#endif

bool ternary_mma_available() { return device_is_sm80_or_newer(); }

void ternary_gemm(const uint8_t* w, const float* wscale, const int8_t* x, const float* xscale,
                  const int32_t* xsum, float* y, int N, int K, int M, int kernel) {
    if (K % 128 != 0) throw std::invalid_argument("I2_S rows must hold a multiple of 128 weights, got " + std::to_string(K));
    if (M < 1 || M > 64) throw std::invalid_argument("ternary_gemm takes 1..64 tokens, got " + std::to_string(M));
    if (N < 1) throw std::invalid_argument("ternary_gemm needs at least one weight row");
    const bool mma = ternary_mma_available();
    if (kernel == 2 && !mma) throw std::invalid_argument("the mma kernel needs an NVIDIA GPU of sm_80 or newer");
#if defined(MEDUSA_CUDA)
    if (kernel == 2 || (kernel == 0 && mma)) {
        launch_mma(w, wscale, x, xscale, xsum, y, N, K, M);
        return;
    }
#endif
    launch_dp4a(w, wscale, x, xscale, xsum, y, N, K, M);
}

}  // namespace medusa_gpu
