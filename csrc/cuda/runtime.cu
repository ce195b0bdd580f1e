// Runtime helpers and a smoke-test kernel of the CUDA module (see runtime.h).
// Plain CUDA C++: only CUDA headers and csrc/ headers, no torch / pybind11 / Python.
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime.h"

namespace {

__global__ void fill_f32_kernel(float* __restrict__ out, std::int64_t n, float value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = value;
  }
}

}  // namespace

extern "C" {

const char* cliptbp_cuda_error_name(int code) {
  const char* s = cudaGetErrorName(static_cast<cudaError_t>(code));
  return s != nullptr ? s : "unknown CUDA error";
}

const char* cliptbp_cuda_error_string(int code) {
  const char* s = cudaGetErrorString(static_cast<cudaError_t>(code));
  return s != nullptr ? s : "unknown CUDA error";
}

int cliptbp_cuda_runtime_version(int* version) {
  *version = 0;
  return static_cast<int>(cudaRuntimeGetVersion(version));
}

int cliptbp_cuda_driver_version(int* version) {
  *version = 0;
  return static_cast<int>(cudaDriverGetVersion(version));
}

int cliptbp_cuda_device_count(int* count) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    *count = 0;
    (void)cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    return static_cast<int>(err);
  }
  *count = n;
  return 0;
}

int cliptbp_cuda_fill_f32(std::uintptr_t ptr, std::int64_t n, float value, std::uintptr_t stream) {
  if (n < 0 || (n > 0 && ptr == 0)) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0) return 0;
  constexpr int kThreads = 256;
  constexpr std::int64_t kMaxBlocks = 65535;  // grid-stride loop covers the rest
  std::int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  fill_f32_kernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                    reinterpret_cast<cudaStream_t>(stream)>>>(reinterpret_cast<float*>(ptr), n,
                                                              value);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
