#include "heads.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

#include "dot.h"
#include "threads.h"

namespace medusa {

namespace {

// Runs fn(thread_index, begin, end) over [0, n) split into contiguous ranges, one per thread.
void parallel_ranges(int n, int n_threads, const std::function<void(int, int, int)>& fn) {
    n_threads = std::max(1, std::min(n_threads, n / 256 + 1));  // tiny work stays on one thread
    if (n_threads == 1) {
        fn(0, 0, n);
        return;
    }
    std::vector<std::thread> pool;
    const int chunk = (n + n_threads - 1) / n_threads;
    for (int t = 1; t < n_threads; t++) {
        const int b = std::min(n, t * chunk), e = std::min(n, (t + 1) * chunk);
        pool.emplace_back(fn, t, b, e);
    }
    fn(0, 0, std::min(n, chunk));
    for (auto& th : pool) th.join();
}

// Quantises each activation row to int8 with its own absmax scale (the I8 projection's integer path); with VNNI
// stored offset by 128 as uint8, what dot_u8i8 reads.
void quantize_rows(const float* x, int m, int n, std::vector<int8_t>& q, std::vector<float>& scale) {
    q.resize((size_t)m * n);
    scale.resize(m);
    for (int r = 0; r < m; r++) {
        const float* xr = x + (size_t)r * n;
        float amax = 0.0f;
        for (int i = 0; i < n; i++) amax = std::max(amax, std::fabs(xr[i]));
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        for (int i = 0; i < n; i++) q[(size_t)r * n + i] = (int8_t)std::lrintf(xr[i] * inv);
#ifdef MEDUSA_VNNI
        for (int i = 0; i < n; i++) q[(size_t)r * n + i] ^= (int8_t)0x80;  // as uint8: x + 128 (dot_u8i8)
#endif
        scale[r] = s;
    }
}

// Calls sink(row, vals) for rows [r0, r1), vals[j] = dot(row, x_j) for j < m, each row read once per 8 vectors.
template <int MC, class Sink>
void rows_chunk(const Matrix& P, const float* xf, const int8_t* xq, const float* xs, int j0, int r0, int r1,
                Sink& sink) {
    const int n = P.cols;
    float vals[MC];
    int32_t ivals[MC];
    for (int r = r0; r < r1; r++) {
        switch (P.dtype) {
            case DType::F32:
                dot_f32<MC>(P.f32.data() + (size_t)r * n, xf + (size_t)j0 * n, n, vals);
                break;
            case DType::F16:
                dot_f16<MC>(P.f16.data() + (size_t)r * n, xf + (size_t)j0 * n, n, vals);
                break;
            case DType::I8:
#ifdef MEDUSA_VNNI
                // xq holds the activations offset to uint8 (quantize_rows): remove the offset's share exactly
                dot_u8i8<MC>(P.i8.data() + (size_t)r * n, (const uint8_t*)xq + (size_t)j0 * n, n, ivals);
                for (int j = 0; j < MC; j++) ivals[j] -= 128 * P.wsum[r];
#else
                dot_i8<MC>(P.i8.data() + (size_t)r * n, xq + (size_t)j0 * n, n, ivals);
#endif
                for (int j = 0; j < MC; j++) vals[j] = (float)ivals[j] * P.scale[r] * xs[j0 + j];
                break;
        }
        sink(r, j0, MC, vals);
    }
}

template <class Sink>
void rows_all(const Matrix& P, const float* xf, const int8_t* xq, const float* xs, int m, int r0, int r1,
              Sink& sink) {
    for (int j0 = 0; j0 < m; j0 += 8)
        with_width(m - j0, [&](auto mc) { rows_chunk<decltype(mc)::value>(P, xf, xq, xs, j0, r0, r1, sink); });
}

// Rows [r0, r1) of out [m, P.rows] = x [m, P.cols] . P^T (xq/xs: x quantised by quantize_rows when P is int8).
void project_range(const Matrix& P, const float* x, const int8_t* xq, const float* xs, int m, int r0, int r1,
                   float* out) {
    auto sink = [&](int row, int j0, int mc, const float* vals) {
        for (int j = 0; j < mc; j++) out[(size_t)(j0 + j) * P.rows + row] = vals[j];
    };
    rows_all(P, x, xq, xs, m, r0, r1, sink);
}

// A bounded min-heap keeping the k best (score, id) pairs; ties go to the lower id, as np.argsort(-x, stable) does.
struct TopK {
    int k = 0;
    std::vector<std::pair<float, int32_t>> heap;
    static bool worse(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    }
    void push(float s, int32_t id) {
        if ((int)heap.size() < k) {
            heap.emplace_back(s, id);
            std::push_heap(heap.begin(), heap.end(), worse);
        } else if (s > heap.front().first || (s == heap.front().first && id < heap.front().second)) {
            std::pop_heap(heap.begin(), heap.end(), worse);
            heap.back() = {s, id};
            std::push_heap(heap.begin(), heap.end(), worse);
        }
    }
};

void silu_inplace(std::vector<float>& v) {
    for (float& x : v) x = x / (1.0f + std::exp(-x));
}

}  // namespace

void Dense::matmul(int rows, int cols, const float* x, size_t ldx, int m, float* y, size_t ldy) const {
    if (!f16.empty())
        matmul_rows(f16.data(), rows, cols, x, ldx, m, y, ldy);
    else
        matmul_rows(f32.data(), rows, cols, x, ldx, m, y, ldy);
}

void finish_matrix(Matrix& m) {
    if (m.dtype != DType::I8) return;
    m.wsum.assign(m.rows, 0);
    for (int r = 0; r < m.rows; r++)
        for (int i = 0; i < m.cols; i++) m.wsum[r] += m.i8[(size_t)r * m.cols + i];
}

void matmul_rows(const Matrix& P, const float* x, int m, float* out, ThreadPool& pool) {
    std::vector<int8_t> xq;
    std::vector<float> xs;
    if (P.dtype == DType::I8) quantize_rows(x, m, P.cols, xq, xs);
    const int tasks = std::max(1, std::min(pool.size(), P.rows / 64));
    const int chunk = (P.rows + tasks - 1) / tasks;
    pool.run(tasks, [&](int t) {
        project_range(P, x, xq.data(), xs.data(), m, std::min(P.rows, t * chunk), std::min(P.rows, (t + 1) * chunk),
                      out);
    });
}

HeadsEngine::HeadsEngine(int hidden, int n_threads) : hidden_(hidden), n_threads_(std::max(1, n_threads)) {
    if (hidden <= 0) throw std::invalid_argument("hidden size must be positive");
}

int HeadsEngine::add_projection(Matrix m) {
    if (m.cols != hidden_)
        throw std::invalid_argument("projection has " + std::to_string(m.cols) + " columns, hidden size is " +
                                    std::to_string(hidden_));
    if (!projs_.empty() && m.rows != projs_[0].rows)
        throw std::invalid_argument("projections disagree on the vocabulary size: " + std::to_string(m.rows) +
                                    " vs " + std::to_string(projs_[0].rows));
    const size_t n = (size_t)m.rows * m.cols;
    const bool ok = (m.dtype == DType::F32 && m.f32.size() == n) || (m.dtype == DType::F16 && m.f16.size() == n) ||
                    (m.dtype == DType::I8 && m.i8.size() == n && m.scale.size() == (size_t)m.rows);
    if (!ok) throw std::invalid_argument("projection data does not match its shape");
    finish_matrix(m);
    projs_.push_back(std::move(m));
    return (int)projs_.size() - 1;
}

void HeadsEngine::add_head(Head h) {
    if (h.proj < 0 || h.proj >= (int)projs_.size())
        throw std::invalid_argument("head refers to projection " + std::to_string(h.proj) + ", only " +
                                    std::to_string(projs_.size()) + " exist");
    for (const Block& b : h.blocks) {
        const size_t in = (size_t)b.inner * hidden_;
        if (b.inner <= 0 || b.w_in.size() != in || (!b.b_in.empty() && b.b_in.size() != (size_t)b.inner) ||
            (!b.w_out.empty() && b.w_out.size() != in) || (b.w_out.empty() && b.inner != hidden_))
            throw std::invalid_argument("residual block shapes do not fit hidden size " + std::to_string(hidden_));
    }
    for (const auto& u : h.cond)
        if (h.blocks.empty() || u.size() != (size_t)h.blocks[0].inner * hidden_)
            throw std::invalid_argument("a conditioning matrix must be [first block's inner, hidden]");
    heads_.push_back(std::move(h));
}

int HeadsEngine::vocab() const { return projs_.empty() ? 0 : projs_[0].rows; }

void HeadsEngine::head_states(const float* hidden, int n, float* states, int h0, int h1, const float* emb,
                              int n_emb) const {
    // Each weight matrix is applied to all n rows in one pass (Dense::matmul): a tree level's rows share one read
    // of the head's weights, and even one row keeps eight dot products in flight.
    const int H = hidden_;
    if (h1 < 0) h1 = (int)heads_.size();
    const int G = h1 - h0;
    std::vector<float> x((size_t)n * H), a, t;
    for (int g = 0; g < G; g++) {
        const int k = h0 + g;
        std::copy(hidden, hidden + (size_t)n * H, x.begin());
        bool first = true;
        for (const Block& b : heads_[k].blocks) {
            const int I = b.inner;
            a.resize((size_t)n * I);
            b.w_in.matmul(I, H, x.data(), H, n, a.data(), I);
            if (!b.b_in.empty())
                for (int r = 0; r < n; r++)
                    for (int i = 0; i < I; i++) a[(size_t)r * I + i] += b.b_in[i];
            if (first && emb) {
                const int J = std::min(n_emb, (int)heads_[k].cond.size());
                t.resize((size_t)n * I);
                for (int j = 0; j < J; j++) {
                    heads_[k].cond[j].matmul(I, H, emb + (size_t)j * H, (size_t)n_emb * H, n, t.data(), I);
                    for (size_t e = 0; e < (size_t)n * I; e++) a[e] += t[e];
                }
            }
            first = false;
            silu_inplace(a);
            if (b.w_out.empty()) {
                for (size_t e = 0; e < (size_t)n * H; e++) x[e] += a[e];
            } else {
                t.resize((size_t)n * H);
                b.w_out.matmul(H, I, a.data(), I, n, t.data(), H);
                for (size_t e = 0; e < (size_t)n * H; e++) x[e] += t[e];
            }
        }
        for (int r = 0; r < n; r++)
            std::copy(x.begin() + (size_t)r * H, x.begin() + (size_t)(r + 1) * H, states + ((size_t)r * G + g) * H);
    }
}

void HeadsEngine::topk(const float* hidden, int n, int k, int32_t* ids, float* scores, int h0, int h1,
                       const float* emb, int n_emb) const {
    const int H = hidden_, V = vocab();
    if (h1 < 0) h1 = (int)heads_.size();
    const int K = h1 - h0;
    if (h0 < 0 || h1 > (int)heads_.size() || K <= 0) throw std::invalid_argument("no such head range");
    if (k <= 0 || k > V) throw std::invalid_argument("top_k must be in 1.." + std::to_string(V));
    std::vector<float> states((size_t)n * K * H);
    head_states(hidden, n, states.data(), h0, h1, emb, n_emb);

    for (int p = 0; p < (int)projs_.size(); p++) {
        // Gather the states of every (row, head) that uses projection p into one [m, H] block.
        std::vector<int> slots;
        for (int r = 0; r < n; r++)
            for (int h = 0; h < K; h++)
                if (heads_[h0 + h].proj == p) slots.push_back(r * K + h);
        const int m = (int)slots.size();
        if (m == 0) continue;
        std::vector<float> x((size_t)m * H);
        for (int j = 0; j < m; j++)
            std::copy(states.begin() + (size_t)slots[j] * H, states.begin() + (size_t)(slots[j] + 1) * H,
                      x.begin() + (size_t)j * H);
        const Matrix& P = projs_[p];
        std::vector<int8_t> xq;
        std::vector<float> xs;
        if (P.dtype == DType::I8) quantize_rows(x.data(), m, H, xq, xs);

        // Threads start per call: split only when there is enough work (rows x vectors) to pay for them.
        // Measured on the 2-core CPU: 8,192 rows x 1-3 vectors and 16,384 x 1 are faster on one thread, 16,384 x 3
        // and 49,152 x 1 on two.
        const int nt = std::max(1, std::min(n_threads_, (int)((int64_t)P.rows * m / 32768) + 1));
        std::vector<std::vector<TopK>> partial(nt, std::vector<TopK>(m));
        for (auto& v : partial)
            for (auto& t : v) t.k = k;
        parallel_ranges(P.rows, nt, [&](int t, int r0, int r1) {
            auto& mine = partial[t];
            auto sink = [&](int row, int j0, int mc, const float* vals) {
                for (int j = 0; j < mc; j++) mine[j0 + j].push(vals[j], row);
            };
            rows_all(P, x.data(), xq.data(), xs.data(), m, r0, r1, sink);
        });
        for (int j = 0; j < m; j++) {
            TopK all;
            all.k = k;
            for (int t = 0; t < nt; t++)
                for (auto& e : partial[t][j].heap) all.push(e.first, e.second);
            std::sort(all.heap.begin(), all.heap.end(), TopK::worse);
            for (int i = 0; i < k; i++) {
                ids[(size_t)slots[j] * k + i] = all.heap[i].second;
                scores[(size_t)slots[j] * k + i] = all.heap[i].first;
            }
        }
    }
}

void HeadsEngine::project(int proj, const float* x, int m, float* logits) const {
    if (proj < 0 || proj >= (int)projs_.size()) throw std::invalid_argument("no such projection");
    const Matrix& P = projs_[proj];
    std::vector<int8_t> xq;
    std::vector<float> xs;
    if (P.dtype == DType::I8) quantize_rows(x, m, hidden_, xq, xs);
    parallel_ranges(P.rows, n_threads_, [&](int, int r0, int r1) {
        project_range(P, x, xq.data(), xs.data(), m, r0, r1, logits);
    });
}

}  // namespace medusa
