// Pair semantics of L_clip (docs/losses.md, section 1): classes, ranking keys, log-sum-exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cliptbp/common.h"

namespace cliptbp {

// Class of an unordered pair of distinct valid clips.
enum PairClass : int { kPairIgnored = 0, kPairPositive = 1, kPairNegative = 2 };

// Classify the pair of two valid clips with labels li, lj (>= 0).
CLIPTBP_HD int classify_pair(int64_t li, int64_t lj, int positives, int negatives) {
  const bool gi = li >= 1, gj = lj >= 1;
  const bool pos = (positives == kPositivesSame) ? (gi && li == lj) : (gi && gj);
  if (pos) return kPairPositive;
  if (negatives == kNegativesAll || gi || gj) return kPairNegative;
  return kPairIgnored;
}

// Order-preserving maps of floating-point bits to unsigned integers: a < b as floats
// (with -0.0 == +0.0) iff ordered(a) < ordered(b). NaN maps above +inf.
CLIPTBP_HD uint32_t ordered_bits(float v) {
  if (v == 0.0f) v = 0.0f;  // -0.0 -> +0.0
  uint32_t u;
  memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

CLIPTBP_HD uint64_t ordered_bits(double v) {
  if (v == 0.0) v = 0.0;
  uint64_t u;
  memcpy(&u, &v, 8);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

CLIPTBP_HD float from_ordered_bits(uint32_t o) {
  const uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

CLIPTBP_HD double from_ordered_bits(uint64_t o) {
  const uint64_t u = (o & 0x8000000000000000ull) ? (o & 0x7fffffffffffffffull) : ~o;
  double v;
  memcpy(&v, &u, 8);
  return v;
}

// 64-bit ranking key for float32 similarities and pair indices < 2^32:
// (ordered(s) << 32) | (2^32 - 1 - pair). Larger key = better candidate; equal values
// prefer the smaller pair index.
CLIPTBP_HD uint64_t pack_key64(float s, int64_t pair) {
  return (static_cast<uint64_t>(ordered_bits(s)) << 32) |
         (0xffffffffull - static_cast<uint64_t>(pair));
}
CLIPTBP_HD int64_t key64_pair(uint64_t key) {
  return static_cast<int64_t>(0xffffffffull - (key & 0xffffffffull));
}
CLIPTBP_HD float key64_value(uint64_t key) {
  return from_ordered_bits(static_cast<uint32_t>(key >> 32));
}

// Online log-sum-exp accumulator: value = m + log(sum).
struct OnlineLSE {
  double m = -INFINITY;
  double sum = 0.0;

  CLIPTBP_HD void add(double z) {
    if (z > m) {
      sum = sum * exp(m - z) + 1.0;
      m = z;
    } else {
      sum += exp(z - m);
    }
  }
  CLIPTBP_HD void merge(const OnlineLSE& o) {
    if (o.sum == 0.0) return;
    if (sum == 0.0) {
      *this = o;
      return;
    }
    if (o.m > m) {
      sum = sum * exp(m - o.m) + o.sum;
      m = o.m;
    } else {
      sum += o.sum * exp(o.m - m);
    }
  }
  CLIPTBP_HD bool empty() const { return sum == 0.0; }
  CLIPTBP_HD double value() const { return m + log(sum); }
};

}  // namespace cliptbp
