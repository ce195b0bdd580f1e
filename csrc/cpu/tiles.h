// Vectorised similarity tiles of the CPU kernels, dispatched at run time to the best
// instruction set of the machine (AVX-512, AVX2+FMA, or the portable baseline).
#pragma once

#include <cstdint>

namespace cliptbp {
namespace cpu {

// Columns of one tile.
constexpr int kTileCols = 16;
// Rows of a row block are padded to a multiple of this (zero rows).
constexpr int kRowPad = 8;

// S[r * kTileCols + c] = sum_d Ur[r * ldr + d] * UcT[d * kTileCols + c] for r < rows_padded
// (a multiple of kRowPad), c < kTileCols. UcT and S must be 64-byte aligned.
void sim_tile(const float* Ur, int64_t ldr, int64_t rows_padded, const float* UcT, int64_t D,
              float* S);
void sim_tile(const double* Ur, int64_t ldr, int64_t rows_padded, const double* UcT, int64_t D,
              double* S);

// GU[r * ldg + d] += sum_{c < ncols} C[r * kTileCols + c] * Uc[c * ldc + d] for r < rows.
// Terms with a zero coefficient are skipped; the order of summation is fixed.
void acc_tile(const float* C, int64_t rows, int ncols, const float* Uc, int64_t ldc, int64_t D,
              float* GU, int64_t ldg);
void acc_tile(const double* C, int64_t rows, int ncols, const double* Uc, int64_t ldc, int64_t D,
              double* GU, int64_t ldg);

// Which implementation the dispatcher picked: "avx512", "avx2" or "baseline".
const char* tile_isa();

}  // namespace cpu
}  // namespace cliptbp
