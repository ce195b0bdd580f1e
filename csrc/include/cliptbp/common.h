// Shared definitions of the ClipTBP kernels: options, dtype codes and element loads.
// Header-only; usable from host C++ and from CUDA device code.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CLIPTBP_HD __host__ __device__ __forceinline__
#else
#define CLIPTBP_HD inline
#endif

namespace cliptbp {

// Element type of the embeddings, as passed from Python.
enum DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// Which pairs are positives (docs/losses.md, section 1).
enum Positives : int { kPositivesAny = 0, kPositivesSame = 1 };
// Which non-positive pairs are negative candidates.
enum Negatives : int { kNegativesCross = 0, kNegativesAll = 1 };

// Smallest norm used when normalising a clip embedding.
constexpr double kNormEps = 1e-8;

struct LossOptions {
  int64_t k = 20;          // number of hard negatives
  double tau = 0.07;       // temperature of L_clip
  int positives = kPositivesAny;
  int negatives = kNegativesCross;
  int64_t radius = 1;      // r of L_boun
  double margin_max = 0.3;
  double margin_base = 0.1;
  double margin_scale = 0.1;
  bool want_clip = true;   // compute L_clip
  bool want_boun = true;   // compute L_boun
};

// A strided [B, T, D] view of the embeddings.
struct EmbView {
  const void* data = nullptr;
  int dtype = kFloat32;
  int64_t B = 0, T = 0, D = 0;
  int64_t sb = 0, st = 0, sd = 0;  // strides in elements

  CLIPTBP_HD int64_t offset(int64_t b, int64_t i) const { return b * sb + i * st; }
};

CLIPTBP_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24 is exact in float32
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    uint32_t fb;
    memcpy(&fb, &f, 4);
    bits = sign | fb;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

CLIPTBP_HD float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

// Load element `off` of a buffer of dtype `dtype` as double (exact for every dtype).
CLIPTBP_HD double load_as_double(const void* base, int dtype, int64_t off) {
  switch (dtype) {
    case kFloat16:
      return half_bits_to_float(static_cast<const uint16_t*>(base)[off]);
    case kBFloat16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(base)[off]);
    case kFloat32:
      return static_cast<const float*>(base)[off];
    default:
      return static_cast<const double*>(base)[off];
  }
}

// Canonical index of the unordered pair {i, j}, i != j: min * T + max, in 64 bits.
CLIPTBP_HD int64_t pair_index(int64_t i, int64_t j, int64_t T) {
  return i < j ? i * T + j : j * T + i;
}

}  // namespace cliptbp
