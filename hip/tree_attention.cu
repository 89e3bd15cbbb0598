// Tree attention: flash-decoding over the KV sequence for T <= 128 tree queries with a per-query ancestor mask.
//
// Every query sees the committed prefix (positions 0 .. L-T-1) and, among the last T positions (the tree's own
// tokens, in batch order), only itself and its ancestors. The KV range is split into chunks; one block computes
// one (chunk, query, kv head) with an online softmax for the G = Hq/Hkv query heads that share the kv head (GQA:
// K and V are read once for the group), and a second kernel merges the chunks' (max, sum, acc) partials.
#include <cfloat>
#include <cstdint>

#include "api.h"
#include "common.cuh"

namespace medusa_gpu {

constexpr int TA_WARPS = 4;
constexpr int TA_MAX_G = 8;

template <int c_d>
static __global__ void __launch_bounds__(TA_WARPS * WARP)
    tree_attention_chunk(const float* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
                         const uint32_t* __restrict__ anc, float* __restrict__ part_acc, float* __restrict__ part_ml,
                         int T, int Hq, int Hkv, int L, int chunk, float scale) {
    constexpr int PER = c_d / WARP;  // head dims per lane
    static_assert(c_d % WARP == 0, "head size must be a multiple of the warp size");
    const int c = blockIdx.x, t = blockIdx.y, hk = blockIdx.z;
    const int G = Hq / Hkv, words = (T + 31) / 32, P = L - T;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int p0 = c * chunk, p1 = min(L, p0 + chunk);

    float qr[TA_MAX_G][PER], acc[TA_MAX_G][PER], mx[TA_MAX_G], sm[TA_MAX_G];
#pragma unroll
    for (int gi = 0; gi < TA_MAX_G; ++gi) {
        mx[gi] = -FLT_MAX;
        sm[gi] = 0.f;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            acc[gi][i] = 0.f;
            qr[gi][i] = gi < G ? q[((size_t)t * Hq + hk * G + gi) * c_d + lane + i * WARP] * scale : 0.f;
        }
    }
    for (int p = p0 + warp; p < p1; p += TA_WARPS) {
        if (p >= P) {  // a tree position: visible only along the query's own branch
            const int j = p - P;
            if (!((anc[(size_t)t * words + j / 32] >> (j % 32)) & 1u)) continue;
        }
        float kr[PER], vr[PER];
        const size_t base = ((size_t)p * Hkv + hk) * c_d;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            kr[i] = __half2float(k[base + lane + i * WARP]);
            vr[i] = __half2float(v[base + lane + i * WARP]);
        }
#pragma unroll
        for (int gi = 0; gi < TA_MAX_G; ++gi) {
            if (gi >= G) continue;  // (not break: the loop must stay unrollable so qr/acc stay in registers)
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < PER; ++i) s += qr[gi][i] * kr[i];
            s = warp_reduce_sum(s);
            const float nm = fmaxf(mx[gi], s);
            const float corr = __expf(mx[gi] - nm), e = __expf(s - nm);
            sm[gi] = sm[gi] * corr + e;
#pragma unroll
            for (int i = 0; i < PER; ++i) acc[gi][i] = acc[gi][i] * corr + e * vr[i];
            mx[gi] = nm;
        }
    }
    // merge the block's warps
    __shared__ float s_ml[TA_WARPS][TA_MAX_G][2];
    __shared__ float s_acc[TA_WARPS][TA_MAX_G][c_d];
    for (int gi = 0; gi < G; ++gi) {
        if (lane == 0) {
            s_ml[warp][gi][0] = mx[gi];
            s_ml[warp][gi][1] = sm[gi];
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) s_acc[warp][gi][lane + i * WARP] = acc[gi][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * c_d; idx += blockDim.x) {
        const int gi = idx / c_d, d = idx % c_d;
        float m = -FLT_MAX;
        for (int w = 0; w < TA_WARPS; ++w) m = fmaxf(m, s_ml[w][gi][0]);
        float a = 0.f, l = 0.f;
        for (int w = 0; w < TA_WARPS; ++w) {
            const float f = s_ml[w][gi][1] > 0.f ? __expf(s_ml[w][gi][0] - m) : 0.f;
            a += s_acc[w][gi][d] * f;
            l += s_ml[w][gi][1] * f;
        }
        const size_t slot = ((size_t)c * T + t) * Hq + hk * G + gi;
        part_acc[slot * c_d + d] = a;
        if (d == 0) {
            part_ml[slot * 2] = m;
            part_ml[slot * 2 + 1] = l;
        }
    }
}

static __global__ void tree_attention_merge(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                            float* __restrict__ out, int n_chunks, int T, int Hq, int D) {
    const int t = blockIdx.x, h = blockIdx.y;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float m = -FLT_MAX;
        for (int c = 0; c < n_chunks; ++c) m = fmaxf(m, part_ml[(((size_t)c * T + t) * Hq + h) * 2]);
        float a = 0.f, l = 0.f;
        for (int c = 0; c < n_chunks; ++c) {
            const size_t slot = ((size_t)c * T + t) * Hq + h;
            const float lc = part_ml[slot * 2 + 1];
            if (lc == 0.f) continue;  // a chunk the query saw nothing of
            const float f = __expf(part_ml[slot * 2] - m);
            a += part_acc[slot * D + d] * f;
            l += lc * f;
        }
        out[((size_t)t * Hq + h) * D + d] = a / l;
    }
}

size_t tree_attention_work_bytes(int T, int Hq, int D, int L, int chunk) {
    const size_t n = (size_t)ceil_div(L, chunk) * T * Hq;
    return n * D * sizeof(float) + n * 2 * sizeof(float);
}

void tree_attention(const float* q, const uint16_t* k, const uint16_t* v, const uint32_t* anc, float* out,
                    void* work, int T, int Hq, int Hkv, int D, int L, int chunk, float scale) {
    if (T < 1 || T > 128) throw std::invalid_argument("tree attention takes 1..128 queries, got " + std::to_string(T));
    if (L < T) throw std::invalid_argument("the KV sequence must hold the tree's own T positions");
    if (Hkv < 1 || Hq % Hkv != 0 || Hq / Hkv > TA_MAX_G)
        throw std::invalid_argument("query heads must be 1.." + std::to_string(TA_MAX_G) + " times the kv heads");
    if (chunk < 1) throw std::invalid_argument("chunk must be positive");
    const int n_chunks = ceil_div(L, chunk);
    float* part_acc = (float*)work;
    float* part_ml = part_acc + (size_t)n_chunks * T * Hq * D;
    const dim3 grid(n_chunks, T, Hkv);
    const auto* kh = (const __half*)k;
    const auto* vh = (const __half*)v;
    switch (D) {
        case 64: tree_attention_chunk<64><<<grid, TA_WARPS * host_warp(), 0, current_stream()>>>(q, kh, vh, anc, part_acc, part_ml, T, Hq, Hkv, L, chunk, scale); break;
        case 128: tree_attention_chunk<128><<<grid, TA_WARPS * host_warp(), 0, current_stream()>>>(q, kh, vh, anc, part_acc, part_ml, T, Hq, Hkv, L, chunk, scale); break;
        default: throw std::invalid_argument("head size must be 64 or 128, got " + std::to_string(D));
    }
    MEDUSA_CHECK_LAUNCH();
    tree_attention_merge<<<dim3(T, Hq), 128, 0, current_stream()>>>(part_acc, part_ml, out, n_chunks, T, Hq, D);
    MEDUSA_CHECK_LAUNCH();
}

}  // namespace medusa_gpu
