// pybind11 bindings of the fused CPU kernels (module cliptbp_kernels._C_cpu).
//
// Python allocates every buffer with torch and passes raw data pointers, sizes and strides;
// the kernels run without the GIL.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/losses.h"
#include "cpu/pool.h"
#include "cliptbp/common.h"
#include "convert.h"

namespace py = pybind11;
using namespace cliptbp;
using bind::options_from;
using bind::ptr;
using bind::view_from;

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
      "Forward of L_clip / L_boun into caller-allocated buffers (see csrc/cpu/losses.h). "
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

  m.def("pool_threads", &cpu::pool_threads,
        "Helper threads the kernels have started in this process (a call with n threads uses "
        "the calling thread and at most n - 1 helpers).");

  m.def("pool_peak", &cpu::pool_peak, py::arg("reset") = false,
        "The most threads (the caller included) one parallel job of the kernels used since the "
        "last reset; reset=True starts a new count.");

  m.def("pool_backoff_stats", &cpu::pool_backoff_stats,
        "(busy looks, stragglers, serial jobs): how often a calling thread found itself waiting "
        "for a CPU, how often it waited long for a helper that had lost its core, and how many "
        "jobs ran on the calling thread alone while backing off after either.");

  m.def("set_pool_backoff", &cpu::set_pool_backoff, py::arg("on"),
        "Turn the pool's back-off on busy machines on (default) or off; returns the previous "
        "setting. Off, every job with work for them uses the helper threads (for tests).");

  m.def("pool_back_off_for", &cpu::pool_back_off_for, py::arg("ms"),
        "Start a back-off period of `ms` milliseconds now: jobs run on the calling thread "
        "alone until it ends (for tests).");

  m.def("simd_level", &cpu::simd_level,
        "Instruction set the similarity tiles were dispatched to on this machine.");
}
