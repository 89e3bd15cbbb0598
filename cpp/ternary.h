// I2_S ternary matmul on the CPU: bitnet.cpp's per-token int8 activation quantisation and the exact integer
// product over canonical I2_S bytes (128 weights in 32 bytes, byte p = codes of p, 32+p, 64+p, 96+p at shifts
// 6/4/2/0, code = w + 1). This is the reference the GPU kernels (hip/ternary_gemm.cu) must equal bit for bit.
#pragma once

#include <cstdint>

namespace medusa {

// x [M, K] -> q [M, K], scale [M] = (float)(127 / max(absmax, 1e-5)), sum [M] = row sums of q.
void i2s_quantize_acts(const float* x, int M, int K, int8_t* q, float* scale, int32_t* sum);

// sum_k code[k] * q[k] over one I2_S row of K weights (codes 0, 1, 2, i.e. w + 1): the integer core every ternary
// kernel computes; subtracting sum(q) gives sum_k w[k] * q[k].
int32_t i2s_row_codes_dot(const uint8_t* row, const int8_t* q, int K);

// y[m, n] = (float)(S - sum[m]) / scale[m] * wscale[n] with S = sum_k code[n, k] * q[m, k] in int32.
void i2s_gemm(const uint8_t* w, const float* wscale, int N, int K, const int8_t* q, const float* scale,
              const int32_t* sum, int M, float* y);

}  // namespace medusa
