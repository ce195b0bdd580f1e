// pybind11 bindings of the CUDA kernels (module cliptbp_kernels._C_cuda).
//
// Compiled by the host compiler; the kernels live in csrc/cuda/*.cu (compiled by nvcc into a
// static library, no torch or Python headers) and are reached through csrc/cuda/runtime.h
// and csrc/cuda/losses.h. Data pointers and streams are passed as Python ints.
//
// With CLIPTBP_CUDA_EMULATE defined the same file builds cliptbp_kernels._C_cuda_emu: the
// loss kernels compiled for the CPU emulation (csrc/cuda_emu/emulate.h), on host pointers, for
// testing the kernels where no GPU is present. The runtime queries are left out there.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "convert.h"
#include "losses.h"
#include "runtime.h"

#ifndef CLIPTBP_MODULE_NAME
#define CLIPTBP_MODULE_NAME _C_cuda
#endif

namespace py = pybind11;
using namespace cliptbp;
using bind::options_from;
using bind::ptr;
using bind::view_from;

#if defined(CLIPTBP_CUDA_EMULATE)
extern "C" {
void cliptbp_emu_set_order(int order);
long long cliptbp_emu_switches();
}
#endif

namespace {

// Raise RuntimeError carrying the CUDA error name and string when `code` is not success.
void check_cuda(int code, const char* what) {
  if (code == 0) return;
  throw std::runtime_error(std::string("cliptbp_kernels._C_cuda.") + what + ": CUDA error " +
                           std::to_string(code) + " (" + cliptbp_cuda_error_name(code) +
                           "): " + cliptbp_cuda_error_string(code));
}

cuda::Layout layout_for(const EmbView& v, int64_t kcap, bool want_clip, int64_t col_chunk,
                        int64_t ws_bytes) {
  if (v.B < 1 || v.T < 1) throw py::value_error("the CUDA kernels need B >= 1 and T >= 1");
  if (v.T > cuda::kMaxT)
    throw py::value_error("T must be <= " + std::to_string(cuda::kMaxT));
  if (kcap < 0 || (want_clip && kcap > cuda::kMaxK))
    throw py::value_error("kcap must be in [0, " + std::to_string(cuda::kMaxK) + "]");
  const cuda::Layout L = cuda::make_layout(v.B, v.T, kcap, want_clip, col_chunk);
  if (ws_bytes >= 0 && ws_bytes < L.total)
    throw py::value_error("workspace too small: " + std::to_string(ws_bytes) + " < " +
                          std::to_string(L.total) + " bytes");
  return L;
}

}  // namespace

PYBIND11_MODULE(CLIPTBP_MODULE_NAME, m) {
  m.doc() = "CUDA kernels of cliptbp_kernels (plain CUDA C++, no torch headers)";

  m.def(
      "workspace_bytes",
      [](int64_t B, int64_t T, int64_t kcap, bool want_clip, int64_t col_chunk) {
        EmbView v;
        v.B = B;
        v.T = T;
        const cuda::Layout L = layout_for(v, kcap, want_clip, col_chunk, -1);
        return py::make_tuple(L.total, L.nblk, L.splits);
      },
      py::arg("B"), py::arg("T"), py::arg("kcap"), py::arg("want_clip"), py::arg("col_chunk"),
      "(bytes, forward blocks per sample, column splits) of the workspace of one call.");

  m.def(
      "forward",
      [](const py::tuple& emb, uintptr_t labels, const py::tuple& options, int64_t kcap,
         int64_t col_chunk, uintptr_t workspace, int64_t ws_bytes, uintptr_t loss_clip,
         uintptr_t has_clip, uintptr_t loss_boun, uintptr_t has_boun, uintptr_t lse_pos,
         uintptr_t neg_sum, uintptr_t pairs, uintptr_t inv_norm, uintptr_t stream) {
        const EmbView v = view_from(emb);
        const LossOptions o = options_from(options);
        const cuda::Layout L = layout_for(v, kcap, o.want_clip, col_chunk, ws_bytes);
        cuda::ForwardOutputs out{ptr<double>(loss_clip), ptr<uint8_t>(has_clip),
                                 ptr<double>(loss_boun), ptr<uint8_t>(has_boun),
                                 ptr<double>(lse_pos),   ptr<double>(neg_sum),
                                 ptr<int64_t>(pairs),    ptr<double>(inv_norm)};
        int code = 0;
        {
          py::gil_scoped_release no_gil;
          code = cuda::forward(v, ptr<const int64_t>(labels), o, L, ptr<void>(workspace), out,
                               stream);
        }
        check_cuda(code, "forward");
      },
      py::arg("emb"), py::arg("labels"), py::arg("options"), py::arg("kcap"),
      py::arg("col_chunk"), py::arg("workspace"), py::arg("ws_bytes"), py::arg("loss_clip"),
      py::arg("has_clip"), py::arg("loss_boun"), py::arg("has_boun"), py::arg("lse_pos"),
      py::arg("neg_sum"), py::arg("pairs"), py::arg("inv_norm"), py::arg("stream"),
      "Forward of L_clip / L_boun into caller-allocated device buffers, asynchronously on "
      "`stream` (see csrc/cuda/losses.h). Raises RuntimeError with the CUDA error string when "
      "a launch fails.");

  m.def(
      "backward",
      [](const py::tuple& emb, uintptr_t labels, const py::tuple& options, int64_t kcap,
         int64_t col_chunk, uintptr_t workspace, int64_t ws_bytes, uintptr_t grad_clip,
         uintptr_t grad_boun, uintptr_t has_clip, uintptr_t has_boun, uintptr_t lse_pos,
         uintptr_t neg_sum, uintptr_t pairs, uintptr_t inv_norm, uintptr_t grad,
         uintptr_t stream) {
        const EmbView v = view_from(emb);
        const LossOptions o = options_from(options);
        // the backward uses the index lists only: no partial top-k lists
        const cuda::Layout L = layout_for(v, kcap, false, col_chunk, ws_bytes);
        cuda::BackwardInputs in{ptr<const double>(grad_clip), ptr<const double>(grad_boun),
                                ptr<const uint8_t>(has_clip), ptr<const uint8_t>(has_boun),
                                ptr<const double>(lse_pos),   ptr<const double>(neg_sum),
                                ptr<const int64_t>(pairs),    ptr<const double>(inv_norm)};
        int code = 0;
        {
          py::gil_scoped_release no_gil;
          code = cuda::backward(v, ptr<const int64_t>(labels), o, L, ptr<void>(workspace), in,
                                ptr<void>(grad), stream);
        }
        check_cuda(code, "backward");
      },
      py::arg("emb"), py::arg("labels"), py::arg("options"), py::arg("kcap"),
      py::arg("col_chunk"), py::arg("workspace"), py::arg("ws_bytes"), py::arg("grad_clip"),
      py::arg("grad_boun"), py::arg("has_clip"), py::arg("has_boun"), py::arg("lse_pos"),
      py::arg("neg_sum"), py::arg("pairs"), py::arg("inv_norm"), py::arg("grad"),
      py::arg("stream"),
      "Backward of L_clip / L_boun: d loss / d emb into a contiguous [B, T, D] device buffer "
      "of the compute dtype, asynchronously on `stream`.");

  m.attr("MAX_T") = cuda::kMaxT;
  m.attr("MAX_K") = cuda::kMaxK;

#if defined(CLIPTBP_CUDA_EMULATE)
  m.attr("EMULATED") = true;
  m.def("set_order", &cliptbp_emu_set_order, py::arg("order"),
        "Order in which emulated threads run between barriers: 0 increasing, 1 decreasing.");
  m.def("switches", &cliptbp_emu_switches, "Fiber switches of all emulated launches so far.");
#else
  m.attr("EMULATED") = false;
  // The architectures the kernels were compiled for, as CMAKE_CUDA_ARCHITECTURES entries
  // ("80" = SASS and PTX, "90-real" = SASS, "90-virtual" = PTX), comma separated.
#ifndef CLIPTBP_CUDA_ARCHS
#define CLIPTBP_CUDA_ARCHS ""
#endif
  m.attr("ARCHS") = CLIPTBP_CUDA_ARCHS;

  m.def(
      "runtime_version",
      []() {
        int v = 0;
        check_cuda(cliptbp_cuda_runtime_version(&v), "runtime_version");
        return v;
      },
      "Version of the CUDA runtime this module was built with, e.g. 13000 for 13.0.");

  m.def(
      "driver_version",
      []() {
        int v = 0;
        cliptbp_cuda_driver_version(&v);
        return v;
      },
      "CUDA version supported by the installed driver (e.g. 13000); 0 when there is no driver.");

  m.def(
      "device_count",
      []() {
        int n = 0;
        cliptbp_cuda_device_count(&n);
        return n;
      },
      "Number of CUDA devices; 0 (never an exception) when there is no driver or no GPU.");

  m.def(
      "init_error",
      []() -> std::string {
        int n = 0;
        const int code = cliptbp_cuda_device_count(&n);
        if (code == 0) return std::string();
        return std::string(cliptbp_cuda_error_name(code)) + ": " + cliptbp_cuda_error_string(code);
      },
      "Why device_count() is 0: the CUDA error of cudaGetDeviceCount, '' when it succeeded.");

  m.def(
      "fill_f32",
      [](std::uintptr_t ptr, std::int64_t n, float value, std::uintptr_t stream) {
        if (n < 0) throw py::value_error("fill_f32: n must be >= 0, got " + std::to_string(n));
        if (n > 0 && ptr == 0) throw py::value_error("fill_f32: ptr is null");
        int code = 0;
        {
          py::gil_scoped_release no_gil;
          code = cliptbp_cuda_fill_f32(ptr, n, value, stream);
        }
        check_cuda(code, "fill_f32");
      },
      py::arg("ptr"), py::arg("n"), py::arg("value"), py::arg("stream") = 0,
      "Write `value` into the n float32 at device pointer `ptr`, asynchronously on CUDA stream "
      "`stream` (an int, e.g. torch.cuda.current_stream().cuda_stream; 0 = default stream). "
      "Raises RuntimeError with the CUDA error string when the launch fails.");
#endif
}
