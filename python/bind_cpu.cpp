// pybind11 bindings of the fused CPU kernels (module cliptbp_kernels._C_cpu).
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "Fused CPU kernels of cliptbp_kernels";
}
