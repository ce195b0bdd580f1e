// Fused CPU kernels of L_clip and L_boun: forward and backward.
#pragma once

#include <cstdint>

#include "cliptbp/common.h"

namespace cliptbp {
namespace cpu {

// Outputs of the forward pass, one entry per sample unless noted. All pointers are
// contiguous and owned by the caller; every element is written.
struct ForwardOutputs {
  double* loss_clip;   // [B] L_clip per sample (0 when the sample has no loss)
  uint8_t* has_clip;   // [B] 1 when the sample has an L_clip
  double* loss_boun;   // [B] L_boun per sample
  uint8_t* has_boun;   // [B]
  double* lse_pos;     // [B] log-sum-exp of s/tau over the positives (saved for backward)
  double* neg_sum;     // [B] the negative term l = log(1 + sum_{N_k} exp(s/tau - lse_pos))
  int64_t* pairs;      // [B, kcap] chosen negative pair indices i*T+j in rank order, -1 padded
  int64_t kcap;        // row length of `pairs` (>= min(k, number of pairs))
  double* inv_norm;    // [B, T] 1 / max(||v_i||, eps); 0 for padding, NaN for non-finite clips
};

// Forward of L_clip and/or L_boun (opt.want_clip / opt.want_boun) for all samples.
// `labels` is a contiguous [B, T] int64 array.
void forward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
             const ForwardOutputs& out, int num_threads);

struct BackwardInputs {
  const double* grad_clip;  // [B] upstream gradient of each sample's L_clip
  const double* grad_boun;  // [B] upstream gradient of each sample's L_boun
  const uint8_t* has_clip;  // [B] from the forward
  const uint8_t* has_boun;  // [B]
  const double* lse_pos;    // [B]
  const double* neg_sum;    // [B]
  const int64_t* pairs;     // [B, kcap]
  int64_t kcap;
  const double* inv_norm;   // [B, T] from the forward
};

// Backward: writes d(loss)/d(emb) into `grad`, a contiguous [B, T, D] buffer of the compute
// type (float for 16- and 32-bit inputs, double for float64 inputs). Every element is written.
void backward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
              const BackwardInputs& in, void* grad, int num_threads);

// Name of the instruction set the dot-product tiles were dispatched to ("avx512", ...).
const char* simd_level();

}  // namespace cpu
}  // namespace cliptbp
