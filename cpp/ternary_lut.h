// I2_S ternary matmul by table lookup (T-MAC's idea; bitnet.cpp's TL1/TL2 are its relatives), lossless: the same
// int32 sums as ternary_gemm_rows, so the same floats. Weights are re-laid as 4-bit indices, one per pair of
// weights, for tiles of 32 rows; each token gets, per pair of activations (a, b), a 16-entry table of
// c0 * a + c1 * b over the codes (c0, c1) an index names. One pshufb then looks up 32 rows' pair sums at once.
// The entries need 10 bits, so each table is kept as a low-byte and a high-byte half, looked up separately and
// interleaved into int16 lanes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace medusa {

constexpr int LUT_TILE = 32;  // rows per tile of the re-laid weights

// Bytes of the re-laid form of an [N, K] I2_S matrix: N rounded up to whole tiles, 2 bits per weight.
size_t lut_packed_bytes(int N, int K);

// I2_S rows [N, K/4] -> tiles: for tile t and quad u (weights 4u..4u+3), byte j is row 32t + j's index of pair 2u
// (low nibble) and of pair 2u + 1 (high nibble); an index is code(2p) | code(2p + 1) << 2. Rows past N are zero.
void lut_pack(const uint8_t* i2s, int N, int K, uint8_t* packed);

// Quantised activations q [M, K] -> tables [M, K/2, 32]: pair p's low bytes (16) then high bytes (16).
void lut_tables(const int8_t* q, int M, int K, uint8_t* tables);
size_t lut_table_bytes(int M, int K);

// Whether this build and CPU run the lookup kernel (AVX2's pshufb); elsewhere lut_gemm_rows is not available.
bool lut_available();

// y[m, n] for rows [r0, r1) (r0 a multiple of 32) from the packed weights and the token tables: the same result as
// ternary_gemm_rows over the I2_S bytes.
void lut_gemm_rows(const uint8_t* packed, int K, int r0, int r1, int N, const uint8_t* tables, const float* qscale,
                   const int32_t* qsum, int M, float wscale, float* y);

}  // namespace medusa
