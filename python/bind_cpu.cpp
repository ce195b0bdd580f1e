// pybind11 bindings of the fused CPU kernels (module cliptbp_kernels._C_cpu).
//
// Python allocates every buffer with torch and passes raw data pointers, sizes and strides;
// the kernels run without the GIL.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../csrc/cpu/clip_boundary_cpu.h"
#include "cliptbp/common.h"

namespace py = pybind11;
using namespace cliptbp;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

EmbView make_view(uintptr_t data, int dtype, int64_t B, int64_t T, int64_t D, int64_t sb,
                  int64_t st, int64_t sd) {
  if (dtype < kFloat16 || dtype > kFloat64) throw py::value_error("unknown dtype code");
  if (B < 0 || T < 0 || D < 1) throw py::value_error("invalid embedding shape");
  EmbView v;
  v.data = reinterpret_cast<const void*>(data);
  v.dtype = dtype;
  v.B = B;
  v.T = T;
  v.D = D;
  v.sb = sb;
  v.st = st;
  v.sd = sd;
  return v;
}

LossOptions make_options(int64_t k, double tau, int positives, int negatives, int64_t radius,
                         double margin_max, double margin_base, double margin_scale,
                         bool want_clip, bool want_boun) {
  if (k < 0) throw py::value_error("k must be >= 0");
  if (!(tau > 0)) throw py::value_error("tau must be > 0");
  if (radius < 1) throw py::value_error("radius must be >= 1");
  if (positives != kPositivesAny && positives != kPositivesSame)
    throw py::value_error("unknown positives code");
  if (negatives != kNegativesCross && negatives != kNegativesAll)
    throw py::value_error("unknown negatives code");
  LossOptions o;
  o.k = k;
  o.tau = tau;
  o.positives = positives;
  o.negatives = negatives;
  o.radius = radius;
  o.margin_max = margin_max;
  o.margin_base = margin_base;
  o.margin_scale = margin_scale;
  o.want_clip = want_clip;
  o.want_boun = want_boun;
  return o;
}

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "Fused CPU kernels of cliptbp_kernels (L_clip and L_boun, forward and backward)";

  m.def(
      "forward",
      [](uintptr_t emb, int dtype, int64_t B, int64_t T, int64_t D, int64_t sb, int64_t st,
         int64_t sd, uintptr_t labels, int64_t k, double tau, int positives, int negatives,
         int64_t radius, double margin_max, double margin_base, double margin_scale,
         bool want_clip, bool want_boun, uintptr_t loss_clip, uintptr_t has_clip,
         uintptr_t loss_boun, uintptr_t has_boun, uintptr_t lse_pos, uintptr_t neg_sum,
         uintptr_t pairs, int64_t kcap, uintptr_t inv_norm, int num_threads) {
        const EmbView v = make_view(emb, dtype, B, T, D, sb, st, sd);
        const LossOptions o = make_options(k, tau, positives, negatives, radius, margin_max,
                                           margin_base, margin_scale, want_clip, want_boun);
        if (kcap < 0) throw py::value_error("kcap must be >= 0");
        cpu::ForwardOutputs out{ptr<double>(loss_clip), ptr<uint8_t>(has_clip),
                                ptr<double>(loss_boun), ptr<uint8_t>(has_boun),
                                ptr<double>(lse_pos),   ptr<double>(neg_sum),
                                ptr<int64_t>(pairs),    kcap,
                                ptr<double>(inv_norm)};
        py::gil_scoped_release release;
        cpu::forward(v, ptr<const int64_t>(labels), o, out, num_threads);
      },
      py::arg("emb"), py::arg("dtype"), py::arg("B"), py::arg("T"), py::arg("D"), py::arg("sb"),
      py::arg("st"), py::arg("sd"), py::arg("labels"), py::arg("k"), py::arg("tau"),
      py::arg("positives"), py::arg("negatives"), py::arg("radius"), py::arg("margin_max"),
      py::arg("margin_base"), py::arg("margin_scale"), py::arg("want_clip"),
      py::arg("want_boun"), py::arg("loss_clip"), py::arg("has_clip"), py::arg("loss_boun"),
      py::arg("has_boun"), py::arg("lse_pos"), py::arg("neg_sum"), py::arg("pairs"),
      py::arg("kcap"), py::arg("inv_norm"), py::arg("num_threads"),
      "Forward of L_clip / L_boun into caller-allocated buffers (see clip_boundary_cpu.h).");

  m.def(
      "backward",
      [](uintptr_t emb, int dtype, int64_t B, int64_t T, int64_t D, int64_t sb, int64_t st,
         int64_t sd, uintptr_t labels, int64_t k, double tau, int positives, int negatives,
         int64_t radius, double margin_max, double margin_base, double margin_scale,
         bool want_clip, bool want_boun, uintptr_t grad_clip, uintptr_t grad_boun,
         uintptr_t has_clip, uintptr_t has_boun, uintptr_t lse_pos, uintptr_t neg_sum,
         uintptr_t pairs, int64_t kcap, uintptr_t inv_norm, uintptr_t grad, int num_threads) {
        const EmbView v = make_view(emb, dtype, B, T, D, sb, st, sd);
        const LossOptions o = make_options(k, tau, positives, negatives, radius, margin_max,
                                           margin_base, margin_scale, want_clip, want_boun);
        if (kcap < 0) throw py::value_error("kcap must be >= 0");
        cpu::BackwardInputs in{ptr<const double>(grad_clip), ptr<const double>(grad_boun),
                               ptr<const uint8_t>(has_clip), ptr<const uint8_t>(has_boun),
                               ptr<const double>(lse_pos),   ptr<const double>(neg_sum),
                               ptr<const int64_t>(pairs),    kcap,
                               ptr<const double>(inv_norm)};
        py::gil_scoped_release release;
        cpu::backward(v, ptr<const int64_t>(labels), o, in, reinterpret_cast<void*>(grad),
                      num_threads);
      },
      py::arg("emb"), py::arg("dtype"), py::arg("B"), py::arg("T"), py::arg("D"), py::arg("sb"),
      py::arg("st"), py::arg("sd"), py::arg("labels"), py::arg("k"), py::arg("tau"),
      py::arg("positives"), py::arg("negatives"), py::arg("radius"), py::arg("margin_max"),
      py::arg("margin_base"), py::arg("margin_scale"), py::arg("want_clip"),
      py::arg("want_boun"), py::arg("grad_clip"), py::arg("grad_boun"), py::arg("has_clip"),
      py::arg("has_boun"), py::arg("lse_pos"), py::arg("neg_sum"), py::arg("pairs"),
      py::arg("kcap"), py::arg("inv_norm"), py::arg("grad"), py::arg("num_threads"),
      "Backward of L_clip / L_boun: writes d loss / d emb into a contiguous [B, T, D] buffer "
      "of the compute dtype.");

  m.def("simd_level", &cpu::simd_level,
        "Instruction set the similarity tiles were dispatched to on this machine.");
}
