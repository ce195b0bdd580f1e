// Interface of the fused CUDA kernels of L_clip and L_boun (csrc/cuda/losses.cu).
//
// No CUDA, torch, pybind11 or Python header here: the binding (host compiler) and the
// kernels (nvcc, or the host compiler for the CPU emulation) share it. Pointers are device
// pointers (host pointers in the emulation); every call is asynchronous on `stream` and
// returns a cudaError_t value as an int (0 = success; see runtime.h for the messages).
//
// Kernels per call, on the caller's stream:
//   forward:  prep (inverse norms, index lists, window table) + pairs/finalize
//   backward: prep (index lists, window table) + gradient
// Nothing of size T x T is allocated; the workspace holds O(B T) index lists and the
// per-block partial results of the forward (see Layout).
#pragma once

#include <cstdint>

#include "cliptbp/common.h"

namespace cliptbp {
namespace cuda {

constexpr int64_t kMaxT = 65536;    // pair indices i * T + j must fit 32 bits
constexpr int64_t kMaxK = 1024;     // top-k list lives in shared memory
constexpr int64_t kRowTile = 32;    // rows of a forward block
constexpr int64_t kColTile = 32;    // columns of a similarity tile
constexpr int64_t kMaxSamplesPerLaunch = 65535;  // gridDim.y

// Byte offsets into the workspace of one call (a caller-allocated device buffer of `total`
// bytes, 16-byte aligned; its contents need no initialisation).
struct Layout {
  int64_t B = 0, T = 0;
  int64_t kcap = 0;  // row length of the pairs output: min(k, T (T - 1) / 2)
  int64_t keff = 0;  // length of the top-k lists: kcap when L_clip is wanted, else 0
  int64_t row_tiles = 1, splits = 1, items = 1;  // forward work items per sample
  int64_t nblk = 1;                               // forward blocks per sample (<= items)
  int64_t valid = 0, gt = 0, runs = 0, win = 0, meta = 0, counter = 0;
  int64_t part_lse = 0, part_cnt = 0, part_keys = 0, total = 0;
};

// Integers per sample in the meta array.
constexpr int64_t kMeta = 8;
enum MetaField : int { kNValid = 0, kNGt = 1, kNWin = 2, kNActive = 3, kNonfinite = 4, kNRuns = 5 };

inline int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

// `col_chunk`: columns of the valid list one work item sweeps (the column split). A work item
// is (row tile, column split); a sample's `nblk` forward blocks take its items round-robin,
// at most `max_blocks / B` blocks per sample (blocks without rows exit at once).
inline Layout make_layout(int64_t B, int64_t T, int64_t kcap, bool want_clip, int64_t col_chunk,
                          int64_t max_blocks = 4096) {
  Layout L;
  L.B = B;
  L.T = T;
  L.kcap = kcap;
  L.keff = want_clip ? kcap : 0;
  if (want_clip && T > 0) {
    L.row_tiles = (T + kRowTile - 1) / kRowTile;
    const int64_t col_tiles = (T + kColTile - 1) / kColTile;
    if (col_chunk < kColTile) col_chunk = kColTile;
    int64_t splits = (T + col_chunk - 1) / col_chunk;
    if (splits > col_tiles) splits = col_tiles;
    L.splits = splits < 1 ? 1 : splits;
  }
  L.items = L.row_tiles * L.splits;
  const int64_t cap = B > 0 ? (max_blocks + B - 1) / B : 1;
  L.nblk = L.items < cap ? L.items : cap;
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += align16(bytes);
    return at;
  };
  L.valid = take(4 * B * T);
  L.gt = take(4 * B * T);
  L.runs = take(4 * 2 * B * T);
  L.win = take(4 * 4 * B * T);
  L.meta = take(4 * kMeta * B);
  L.counter = take(4 * B);
  L.part_lse = take(8 * 2 * B * L.nblk);
  L.part_cnt = take(4 * B * L.nblk);
  L.part_keys = take(8 * B * L.nblk * L.keff);
  L.total = off;
  return L;
}

struct ForwardOutputs {
  double* loss_clip;  // [B]
  uint8_t* has_clip;  // [B]
  double* loss_boun;  // [B]
  uint8_t* has_boun;  // [B]
  double* lse_pos;    // [B]
  double* neg_sum;    // [B] the sample's l (saved for the backward)
  int64_t* pairs;     // [B, kcap] chosen pair indices in rank order, -1 padded
  double* inv_norm;   // [B, T]
};

struct BackwardInputs {
  const double* grad_clip;
  const double* grad_boun;
  const uint8_t* has_clip;
  const uint8_t* has_boun;
  const double* lse_pos;
  const double* neg_sum;
  const int64_t* pairs;  // [B, kcap]
  const double* inv_norm;
};

// `labels`: contiguous [B, T] int64. `workspace`: `layout.total` bytes. `grad`: contiguous
// [B, T, D] of the compute type (float, or double for float64 input). B, T >= 1, D >= 1,
// T <= kMaxT, layout.kcap <= kMaxK (the caller checks; violations return
// cudaErrorInvalidValue).
int forward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
            const Layout& layout, void* workspace, const ForwardOutputs& out,
            std::uintptr_t stream);
int backward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
             const Layout& layout, void* workspace, const BackwardInputs& in, void* grad,
             std::uintptr_t stream);

}  // namespace cuda
}  // namespace cliptbp
