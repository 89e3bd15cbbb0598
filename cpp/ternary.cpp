#include "ternary.h"

#include <algorithm>
#include <cmath>

namespace medusa {

void i2s_quantize_acts(const float* x, int M, int K, int8_t* q, float* scale, int32_t* sum) {
    for (int m = 0; m < M; ++m) {
        const float* r = x + (size_t)m * K;
        float amax = 0.f;
        for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(r[k]));
        const double mx = std::max(1e-5, (double)amax);
        const float s = (float)(127.0 / mx);
        int32_t t = 0;
        for (int k = 0; k < K; ++k) {
            const float v = r[k] * s;
            int iv = (int)std::nearbyint(v);  // default rounding mode: half to even, as bitnet.cpp's nearest_int
            iv = std::clamp(iv, -128, 127);
            q[(size_t)m * K + k] = (int8_t)iv;
            t += iv;
        }
        scale[m] = s;
        sum[m] = t;
    }
}

int32_t i2s_row_codes_dot(const uint8_t* row, const int8_t* a, int K) {
    int32_t s = 0;
    for (int b = 0; b < K / 128; ++b)
        for (int p = 0; p < 32; ++p) {
            const int byte = row[b * 32 + p];
            for (int g = 0; g < 4; ++g) s += ((byte >> (6 - 2 * g)) & 3) * a[b * 128 + 32 * g + p];
        }
    return s;
}

void i2s_gemm(const uint8_t* w, const float* wscale, int N, int K, const int8_t* q, const float* scale,
              const int32_t* sum, int M, float* y) {
    for (int n = 0; n < N; ++n) {
        const uint8_t* row = w + (size_t)n * (K / 4);
        for (int m = 0; m < M; ++m) {
            const int32_t s = i2s_row_codes_dot(row, q + (size_t)m * K, K);
            y[(size_t)m * N + n] = (float)(s - sum[m]) / scale[m] * wscale[n];
        }
    }
}

}  // namespace medusa
