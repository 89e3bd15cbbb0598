// Device buffers, device queries and the timing helpers the benchmark uses (graph-captured sequences, events).
#include <algorithm>
#include <memory>
#include <cstdint>
#include <vector>

#include "api.h"
#include "common.cuh"

namespace medusa_gpu {

static __global__ void fill_random_kernel(uint32_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;  // a cheap hash: timing data only
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = x;
    }
}

Buffer::Buffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) throw std::invalid_argument("empty device buffer");
    MEDUSA_CHECK(cudaMalloc(&ptr_, bytes));
}
Buffer::~Buffer() {
    if (ptr_) (void)cudaFree(ptr_);
}

void Buffer::upload(const void* src, size_t bytes, size_t offset) {
    if (offset + bytes > bytes_) throw std::out_of_range("upload past the end of the device buffer");
    MEDUSA_CHECK(cudaMemcpy((char*)ptr_ + offset, src, bytes, cudaMemcpyHostToDevice));
}
void Buffer::download(void* dst, size_t bytes, size_t offset) const {
    if (offset + bytes > bytes_) throw std::out_of_range("download past the end of the device buffer");
    MEDUSA_CHECK(cudaDeviceSynchronize());
    MEDUSA_CHECK(cudaMemcpy(dst, (const char*)ptr_ + offset, bytes, cudaMemcpyDeviceToHost));
}
void Buffer::fill_random(uint32_t seed) {
    fill_random_kernel<<<1024, 256, 0, current_stream()>>>((uint32_t*)ptr_, bytes_ / 4, seed);
    MEDUSA_CHECK_LAUNCH();
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

std::string device_name() {
    cudaDeviceProp p;
    MEDUSA_CHECK(cudaGetDeviceProperties(&p, 0));
    return p.name;
}

static __global__ void warp_size_kernel(int* out) { *out = WARP; }
int warp_size_compiled() {
    int* d = nullptr;
    int h = 0;
    MEDUSA_CHECK(cudaMalloc(&d, 4));
    warp_size_kernel<<<1, 1, 0, current_stream()>>>(d);
    MEDUSA_CHECK_LAUNCH();
    MEDUSA_CHECK(cudaMemcpy(&h, d, 4, cudaMemcpyDeviceToHost));
    (void)cudaFree(d);
    return h;
}

static cudaStream_t g_stream = 0;
cudaStream_t current_stream() { return g_stream; }
void set_current_stream(cudaStream_t s) { g_stream = s; }

static cudaDeviceProp& props() {
    static cudaDeviceProp p = [] {
        cudaDeviceProp q{};
        int dev = 0;
        MEDUSA_CHECK(cudaGetDevice(&dev));
        MEDUSA_CHECK(cudaGetDeviceProperties(&q, dev));
        return q;
    }();
    return p;
}
int host_warp() { return props().warpSize; }
bool device_is_sm80_or_newer() {
#if defined(MEDUSA_CUDA)
    return props().major >= 8;
#else
    return false;
#endif
}

void synchronize() { MEDUSA_CHECK(cudaDeviceSynchronize()); }

// Median of reps timings of fn, with events, after two warm-up runs.
template <class F>
static double median_seconds(F fn, int reps, cudaStream_t st = 0) {
    cudaEvent_t a, b;
    MEDUSA_CHECK(cudaEventCreate(&a));
    MEDUSA_CHECK(cudaEventCreate(&b));
    fn();
    fn();
    std::vector<float> ms;
    for (int i = 0; i < reps; ++i) {
        MEDUSA_CHECK(cudaEventRecord(a, st));
        fn();
        MEDUSA_CHECK(cudaEventRecord(b, st));
        MEDUSA_CHECK(cudaEventSynchronize(b));
        float t = 0;
        MEDUSA_CHECK(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t);
    }
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1e-3;
}

double copy_bandwidth(size_t bytes, int reps) {
    Buffer src(bytes), dst(bytes);
    src.fill_random(1);
    const double s = median_seconds([&] {
        MEDUSA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice));
    }, reps);
    return 2.0 * bytes / s;  // bytes read + bytes written
}

double time_ternary_sequence(const std::vector<std::pair<int, int>>& shapes, int M, int reps, int kernel) {
    struct Op { std::unique_ptr<Buffer> w, ws, y; int N, K; };
    std::vector<Op> ops;
    int maxK = 0;
    for (auto [N, K] : shapes) {
        Op op{std::make_unique<Buffer>((size_t)N * K / 4), std::make_unique<Buffer>((size_t)N * 4),
              std::make_unique<Buffer>((size_t)N * M * 4), N, K};
        op.w->fill_random((uint32_t)ops.size() + 7);
        std::vector<float> ones(N, 1.0f);
        op.ws->upload(ones.data(), N * 4);
        ops.push_back(std::move(op));
        maxK = std::max(maxK, K);
    }
    Buffer xf((size_t)M * maxK * 4), xq((size_t)M * maxK), xs(M * 4), xsum(M * 4);
    std::vector<float> host((size_t)M * maxK);
    for (size_t i = 0; i < host.size(); ++i) host[i] = (float)((i * 2654435761u) % 2001) / 1000.f - 1.f;
    xf.upload(host.data(), host.size() * 4);
    quantize_acts((const float*)xf.data(), (int8_t*)xq.data(), (float*)xs.data(), (int32_t*)xsum.data(), M, maxK);
    synchronize();
    // The whole sequence as one graph, as a decode step would launch it: no per-kernel launch gaps.
    cudaStream_t st;
    MEDUSA_CHECK(cudaStreamCreate(&st));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    set_current_stream(st);
    try {
        MEDUSA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        for (auto& op : ops)
            ternary_gemm((const uint8_t*)op.w->data(), (const float*)op.ws->data(), (const int8_t*)xq.data(),
                         (const float*)xs.data(), (const int32_t*)xsum.data(), (float*)op.y->data(), op.N, op.K, M,
                         kernel);
        MEDUSA_CHECK(cudaStreamEndCapture(st, &graph));
    } catch (...) {
        set_current_stream(0);
        throw;
    }
    set_current_stream(0);
    MEDUSA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    const double t = median_seconds([&] { MEDUSA_CHECK(cudaGraphLaunch(exec, st)); }, reps, st);
    (void)cudaGraphExecDestroy(exec);
    (void)cudaGraphDestroy(graph);
    MEDUSA_CHECK(cudaStreamDestroy(st));
    return t;
}

}  // namespace medusa_gpu
