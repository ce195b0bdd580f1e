// Conversions shared by the pybind11 bindings: Python tuples -> kernel argument structs.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "cliptbp/common.h"

namespace cliptbp {
namespace bind {

namespace py = pybind11;

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// (data_ptr, dtype code, B, T, D, stride_b, stride_t, stride_d)
inline EmbView view_from(const py::tuple& t) {
  if (t.size() != 8) throw py::value_error("emb view must have 8 entries");
  EmbView v;
  v.data = reinterpret_cast<const void*>(t[0].cast<uintptr_t>());
  v.dtype = t[1].cast<int>();
  v.B = t[2].cast<int64_t>();
  v.T = t[3].cast<int64_t>();
  v.D = t[4].cast<int64_t>();
  v.sb = t[5].cast<int64_t>();
  v.st = t[6].cast<int64_t>();
  v.sd = t[7].cast<int64_t>();
  if (v.dtype < kFloat16 || v.dtype > kFloat64) throw py::value_error("unknown dtype code");
  if (v.B < 0 || v.T < 0 || v.D < 1) throw py::value_error("invalid embedding shape");
  return v;
}

// (k, tau, positives, negatives, radius, margin_max, margin_base, margin_scale, want_clip,
//  want_boun)
inline LossOptions options_from(const py::tuple& t) {
  if (t.size() != 10) throw py::value_error("options must have 10 entries");
  LossOptions o;
  o.k = t[0].cast<int64_t>();
  o.tau = t[1].cast<double>();
  o.positives = t[2].cast<int>();
  o.negatives = t[3].cast<int>();
  o.radius = t[4].cast<int64_t>();
  o.margin_max = t[5].cast<double>();
  o.margin_base = t[6].cast<double>();
  o.margin_scale = t[7].cast<double>();
  o.want_clip = t[8].cast<bool>();
  o.want_boun = t[9].cast<bool>();
  if (o.k < 0) throw py::value_error("k must be >= 0");
  if (!(o.tau > 0)) throw py::value_error("tau must be > 0");
  if (o.radius < 1) throw py::value_error("radius must be >= 1");
  if (o.positives != kPositivesAny && o.positives != kPositivesSame)
    throw py::value_error("unknown positives code");
  if (o.negatives != kNegativesCross && o.negatives != kNegativesAll)
    throw py::value_error("unknown negatives code");
  return o;
}

}  // namespace bind
}  // namespace cliptbp
