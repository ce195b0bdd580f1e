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

// (data_ptr, dtype code, B, T, D, stride_b, stride_t, stride_d)
EmbView view_from(const py::tuple& t) {
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
LossOptions options_from(const py::tuple& t) {
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

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "Fused CPU kernels of cliptbp_kernels (L_clip and L_boun, forward and backward)";

  m.def(
      "forward",
      [](const py::tuple& emb, uintptr_t labels, const py::tuple& options, uintptr_t loss_clip,
         uintptr_t has_clip, uintptr_t loss_boun, uintptr_t has_boun, uintptr_t lse_pos,
         uintptr_t neg_sum, uintptr_t pairs, int64_t kcap, uintptr_t inv_norm,
         int num_threads) {
        const EmbView v = view_from(emb);
        const LossOptions o = options_from(options);
        if (kcap < 0) throw py::value_error("kcap must be >= 0");
        cpu::ForwardOutputs out{ptr<double>(loss_clip), ptr<uint8_t>(has_clip),
                                ptr<double>(loss_boun), ptr<uint8_t>(has_boun),
                                ptr<double>(lse_pos),   ptr<double>(neg_sum),
                                ptr<int64_t>(pairs),    kcap,
                                ptr<double>(inv_norm)};
        py::gil_scoped_release release;
        cpu::forward(v, ptr<const int64_t>(labels), o, out, num_threads);
      },
      py::arg("emb"), py::arg("labels"), py::arg("options"), py::arg("loss_clip"),
      py::arg("has_clip"), py::arg("loss_boun"), py::arg("has_boun"), py::arg("lse_pos"),
      py::arg("neg_sum"), py::arg("pairs"), py::arg("kcap"), py::arg("inv_norm"),
      py::arg("num_threads"),
      "Forward of L_clip / L_boun into caller-allocated buffers (see clip_boundary_cpu.h). "
      "`emb` is (data_ptr, dtype code, B, T, D, stride_b, stride_t, stride_d), `options` is "
      "(k, tau, positives, negatives, radius, margin_max, margin_base, margin_scale, "
      "want_clip, want_boun).");

  m.def(
      "backward",
      [](const py::tuple& emb, uintptr_t labels, const py::tuple& options, uintptr_t grad_clip,
         uintptr_t grad_boun, uintptr_t has_clip, uintptr_t has_boun, uintptr_t lse_pos,
         uintptr_t neg_sum, uintptr_t pairs, int64_t kcap, uintptr_t inv_norm, uintptr_t grad,
         int num_threads) {
        const EmbView v = view_from(emb);
        const LossOptions o = options_from(options);
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
      py::arg("emb"), py::arg("labels"), py::arg("options"), py::arg("grad_clip"),
      py::arg("grad_boun"), py::arg("has_clip"), py::arg("has_boun"), py::arg("lse_pos"),
      py::arg("neg_sum"), py::arg("pairs"), py::arg("kcap"), py::arg("inv_norm"),
      py::arg("grad"), py::arg("num_threads"),
      "Backward of L_clip / L_boun: writes d loss / d emb into a contiguous [B, T, D] buffer "
      "of the compute dtype (float32, or float64 for float64 input).");

  m.def("simd_level", &cpu::simd_level,
        "Instruction set the similarity tiles were dispatched to on this machine.");
}
