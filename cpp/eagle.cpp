#include "eagle.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace medusa {

namespace {
void need(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}
}  // namespace

EagleLayer::EagleLayer(EagleConfig c, Matrix fc, std::vector<float> fc_b, Matrix qkv, std::vector<float> qkv_b,
                       Matrix o, std::vector<float> norm, Matrix gate_up, Matrix down, Matrix lm_head, int n_threads)
    : c_(c), fc_(std::move(fc)), qkv_(std::move(qkv)), o_(std::move(o)), gate_up_(std::move(gate_up)),
      down_(std::move(down)), lm_(std::move(lm_head)), fc_b_(std::move(fc_b)), qkv_b_(std::move(qkv_b)),
      norm_(std::move(norm)) {
    const int H = c.hidden, d = c.head_dim, nq = c.n_head * d, nk = c.n_kv * d;
    need(H > 0 && d > 0 && d % 2 == 0 && c.n_kv > 0 && c.n_head % c.n_kv == 0 && c.inter > 0,
         "EAGLE config: bad hidden size, head dimension or head counts");
    need(fc_.rows == H && fc_.cols == 2 * H, "EAGLE fc must be [hidden, 2 * hidden]");
    need(qkv_.rows == nq + 2 * nk && qkv_.cols == H, "EAGLE q|k|v must be [(heads + 2 kv heads) * head_dim, hidden]");
    need(o_.rows == H && o_.cols == nq, "EAGLE o_proj must be [hidden, heads * head_dim]");
    need(gate_up_.rows == 2 * c.inter && gate_up_.cols == H, "EAGLE gate|up must be [2 * intermediate, hidden]");
    need(down_.rows == H && down_.cols == c.inter, "EAGLE down_proj must be [hidden, intermediate]");
    need(lm_.cols == H && lm_.rows > 0, "EAGLE output rows must be [vocabulary, hidden]");
    need(fc_b_.empty() || (int)fc_b_.size() == H, "EAGLE fc bias must be [hidden]");
    need(qkv_b_.empty() || (int)qkv_b_.size() == nq + 2 * nk, "EAGLE q|k|v bias has the wrong length");
    need((int)norm_.size() == H, "EAGLE post-attention norm must be [hidden]");
    for (Matrix* m : {&fc_, &qkv_, &o_, &gate_up_, &down_, &lm_}) finish_matrix(*m);
    pool_ = std::make_unique<ThreadPool>(std::max(1, n_threads));
    for (int i = 0; i < d / 2; i++) inv_freq_.push_back((float)std::pow((double)c.rope_theta, -2.0 * i / d));
}

void EagleLayer::rope(float* v, int heads, int pos) const {
    const int d = c_.head_dim, half = d / 2;
    for (int i = 0; i < half; i++) {
        const double ang = (double)pos / c_.rope_scale * inv_freq_[i];
        const float cs = (float)std::cos(ang), sn = (float)std::sin(ang);
        for (int h = 0; h < heads; h++) {
            float* p = v + (size_t)h * d;
            const float a = p[i], b = p[i + half];
            p[i] = a * cs - b * sn;
            p[i + half] = b * cs + a * sn;
        }
    }
}

void EagleLayer::project_in(const float* emb, const float* feat, const int* pos, int n) {
    const int H = c_.hidden, d = c_.head_dim, nq = c_.n_head * d, nk = c_.n_kv * d, W = nq + 2 * nk;
    xin_.resize((size_t)n * 2 * H);
    for (int r = 0; r < n; r++) {
        std::copy(emb + (size_t)r * H, emb + (size_t)(r + 1) * H, xin_.begin() + (size_t)r * 2 * H);
        std::copy(feat + (size_t)r * H, feat + (size_t)(r + 1) * H, xin_.begin() + (size_t)r * 2 * H + H);
    }
    x_.resize((size_t)n * H);
    matmul_rows(fc_, xin_.data(), n, x_.data(), *pool_);
    if (!fc_b_.empty())
        for (int r = 0; r < n; r++)
            for (int i = 0; i < H; i++) x_[(size_t)r * H + i] += fc_b_[i];
    qkv_out_.resize((size_t)n * W);
    matmul_rows(qkv_, x_.data(), n, qkv_out_.data(), *pool_);
    for (int r = 0; r < n; r++) {
        float* row = qkv_out_.data() + (size_t)r * W;
        if (!qkv_b_.empty())
            for (int i = 0; i < W; i++) row[i] += qkv_b_[i];
        rope(row, c_.n_head, pos[r]);
        rope(row + nq, c_.n_kv, pos[r]);
    }
}

void EagleLayer::finish(int n, const std::vector<std::vector<int>>& scratch_rows, int cache_visible_base,
                        float* out) {
    // scratch_rows[r]: the scratch entries row r sees; cache entries [0, cache_visible_base + r] are visible
    // (extend: the cache so far plus the new rows up to r; level: the whole cache, base = n_cache - r... see callers)
    const int H = c_.hidden, d = c_.head_dim, nh = c_.n_head, nkv = c_.n_kv, group = nh / nkv;
    const int nq = nh * d, nk = nkv * d, W = nq + 2 * nk;
    const float inv_sqrt = 1.0f / std::sqrt((float)d);
    a_.assign((size_t)n * nq, 0.0f);
    pool_->run(n * nh, [&](int task) {
        const int r = task / nh, h = task % nh, g = h / group;
        const float* q = qkv_out_.data() + (size_t)r * W + (size_t)h * d;
        const int n_cache = std::min(n_cache_, cache_visible_base + r + 1);
        const auto& rows = scratch_rows[r];
        std::vector<float> s(n_cache + rows.size());
        float mx = -INFINITY;
        for (int j = 0; j < n_cache; j++) {
            const float* k = k_.data() + ((size_t)j * nkv + g) * d;
            float acc = 0.0f;
            for (int i = 0; i < d; i++) acc += q[i] * k[i];
            s[j] = acc * inv_sqrt;
            mx = std::max(mx, s[j]);
        }
        for (size_t j = 0; j < rows.size(); j++) {
            const float* k = sk_.data() + ((size_t)rows[j] * nkv + g) * d;
            float acc = 0.0f;
            for (int i = 0; i < d; i++) acc += q[i] * k[i];
            s[n_cache + j] = acc * inv_sqrt;
            mx = std::max(mx, s[n_cache + j]);
        }
        float sum = 0.0f;
        for (float& x : s) sum += (x = std::exp(x - mx));
        float* a = a_.data() + (size_t)r * nq + (size_t)h * d;
        for (int j = 0; j < (int)s.size(); j++) {
            const float w = s[j] / sum;
            const float* v = j < n_cache ? v_.data() + ((size_t)j * nkv + g) * d
                                         : sv_.data() + ((size_t)rows[j - n_cache] * nkv + g) * d;
            for (int i = 0; i < d; i++) a[i] += w * v[i];
        }
    });
    y_.resize((size_t)n * H);
    matmul_rows(o_, a_.data(), n, y_.data(), *pool_);
    for (size_t i = 0; i < y_.size(); i++) x_[i] += y_[i];  // x: the residual
    for (int r = 0; r < n; r++) {
        const float* xr = x_.data() + (size_t)r * H;
        double ss = 0.0;
        for (int i = 0; i < H; i++) ss += (double)xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt((float)(ss / H) + c_.eps);
        for (int i = 0; i < H; i++) y_[(size_t)r * H + i] = xr[i] * inv * norm_[i];
    }
    const int I = c_.inter;
    gu_.resize((size_t)n * 2 * I);
    matmul_rows(gate_up_, y_.data(), n, gu_.data(), *pool_);
    h_.resize((size_t)n * I);
    for (int r = 0; r < n; r++)
        for (int i = 0; i < I; i++) {
            const float g = gu_[(size_t)r * 2 * I + i], u = gu_[(size_t)r * 2 * I + I + i];
            h_[(size_t)r * I + i] = g / (1.0f + std::exp(-g)) * u;
        }
    matmul_rows(down_, h_.data(), n, out, *pool_);
    for (size_t i = 0; i < (size_t)n * H; i++) out[i] += x_[i];
}

void EagleLayer::extend(const float* emb, const float* feat, int m, int pos0, float* out) {
    const int d = c_.head_dim, nq = c_.n_head * d, nk = c_.n_kv * d, W = nq + 2 * nk;
    std::vector<int> pos(m);
    for (int r = 0; r < m; r++) pos[r] = pos0 + r;
    project_in(emb, feat, pos.data(), m);
    const int base = n_cache_;
    k_.resize((size_t)(base + m) * nk);
    v_.resize((size_t)(base + m) * nk);
    for (int r = 0; r < m; r++) {
        std::copy_n(qkv_out_.data() + (size_t)r * W + nq, nk, k_.data() + (size_t)(base + r) * nk);
        std::copy_n(qkv_out_.data() + (size_t)r * W + nq + nk, nk, v_.data() + (size_t)(base + r) * nk);
    }
    n_cache_ = base + m;
    clear_scratch();
    std::vector<std::vector<int>> none(m);
    finish(m, none, base, out);  // row r sees cache entries 0..base + r
}

void EagleLayer::level(const float* emb, const float* feat, const int* pos, const int* parent_entry, int n,
                       float* out) {
    const int d = c_.head_dim, nq = c_.n_head * d, nk = c_.n_kv * d, W = nq + 2 * nk;
    project_in(emb, feat, pos, n);
    const int base = n_scratch_;
    sk_.resize((size_t)(base + n) * nk);
    sv_.resize((size_t)(base + n) * nk);
    std::vector<std::vector<int>> rows(n);
    for (int r = 0; r < n; r++) {
        need(parent_entry[r] >= -1 && parent_entry[r] < base, "EAGLE level: parent entry out of range");
        std::copy_n(qkv_out_.data() + (size_t)r * W + nq, nk, sk_.data() + (size_t)(base + r) * nk);
        std::copy_n(qkv_out_.data() + (size_t)r * W + nq + nk, nk, sv_.data() + (size_t)(base + r) * nk);
        for (int a = parent_entry[r]; a >= 0; a = scratch_parent_[a]) rows[r].push_back(a);
        std::reverse(rows[r].begin(), rows[r].end());
        rows[r].push_back(base + r);
        scratch_parent_.push_back(parent_entry[r]);
    }
    n_scratch_ = base + n;
    finish(n, rows, n_cache_, out);  // the whole cache is visible to every node
}

void EagleLayer::logits(const float* x, int m, float* out) { matmul_rows(lm_, x, m, out, *pool_); }

}  // namespace medusa
