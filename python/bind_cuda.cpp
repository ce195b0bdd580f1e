// pybind11 bindings of the CUDA kernels (module cliptbp_kernels._C_cuda).
//
// Compiled by the host compiler; the kernels live in csrc/cuda/*.cu (compiled by nvcc into a
// static library, no torch or Python headers) and are reached through the C interface in
// csrc/cuda/runtime.h. Data pointers and streams are passed as Python ints.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime.h"

namespace py = pybind11;

namespace {

// Raise RuntimeError carrying the CUDA error name and string when `code` is not success.
void check_cuda(int code, const char* what) {
  if (code == 0) return;
  throw std::runtime_error(std::string("cliptbp_kernels._C_cuda.") + what + ": CUDA error " +
                           std::to_string(code) + " (" + cliptbp_cuda_error_name(code) +
                           "): " + cliptbp_cuda_error_string(code));
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "CUDA kernels of cliptbp_kernels (plain CUDA C++, no torch headers)";

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
}
