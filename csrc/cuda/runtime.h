// C interface of the CUDA side of cliptbp_kernels (module cliptbp_kernels._C_cuda).
//
// This header includes no CUDA, torch, pybind11 or Python header, so the binding
// (python/bind_cuda.cpp, host compiler) and the kernels (csrc/cuda/*.cu, nvcc) share it.
// Every function returns a cudaError_t value as an int: 0 is success; turn any other value
// into a message with cliptbp_cuda_error_name / cliptbp_cuda_error_string.
// Pointers and streams travel as integers (torch's tensor.data_ptr() and
// torch.cuda.current_stream().cuda_stream); stream 0 is the legacy default stream.
#pragma once

#include <cstdint>

extern "C" {

// Name ("cudaErrorNoDevice") and description of a cudaError_t value. Never null.
const char* cliptbp_cuda_error_name(int code);
const char* cliptbp_cuda_error_string(int code);

// cudaRuntimeGetVersion: the CUDA runtime this module was built with (e.g. 13000).
int cliptbp_cuda_runtime_version(int* version);
// cudaDriverGetVersion: the installed driver's CUDA version, 0 when no driver is installed.
int cliptbp_cuda_driver_version(int* version);
// cudaGetDeviceCount. On failure (no driver, no device, driver too old) *count is 0, the
// error is returned, and the runtime's last-error state is cleared.
int cliptbp_cuda_device_count(int* count);

// Writes `value` into the n floats at device pointer `ptr`, asynchronously on `stream`.
// n == 0 launches nothing. Returns the launch error (cudaGetLastError), not errors that
// happen later while the kernel runs.
int cliptbp_cuda_fill_f32(std::uintptr_t ptr, std::int64_t n, float value, std::uintptr_t stream);

}  // extern "C"
