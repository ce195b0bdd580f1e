// CPU emulation of the small part of CUDA the kernels use (see compat.h). Host C++ only.
//
// A launch runs the blocks of the grid one after another on the calling thread. Inside a
// block every CUDA thread is a fiber (ucontext) with its own stack; a fiber runs until it
// reaches __syncthreads(), __syncwarp() or its end, then the next fiber runs. A barrier is
// released once every live thread of its scope (block or warp) waits at it; a thread that
// waits at __syncthreads() while another of its block has returned, or any other pattern no
// GPU can complete, is reported as a launch error instead of hanging.
//
// __shared__ becomes `static`: one copy per kernel instantiation, reused by every block
// (blocks never overlap). Within a phase between two barriers, fibers run in increasing or
// in decreasing thread order (cliptbp_emu_set_order): running a kernel both ways and
// comparing the results bitwise finds reads of shared memory that lack a barrier.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

typedef struct cliptbp_emu_stream* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
constexpr cudaError_t cudaErrorLaunchFailure = 719;

namespace cliptbp_emu {

// Index variables of the fiber that runs now.
extern dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;

// Run `body` once per thread of every block of the grid. Returns a cudaError_t value.
int run_grid(dim3 grid, dim3 block, const std::function<void()>& body);
void sync_block();
void sync_warp();
int last_error();  // the error of the last launch, then reset (cudaGetLastError)

template <typename Kernel>
struct Launch {
  dim3 grid, block;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args... args) const {
    run_grid(grid, block, [&]() { kernel(args...); });
  }
};

template <typename Kernel>
Launch<Kernel> make_launch(Kernel kernel, dim3 grid, dim3 block) {
  return Launch<Kernel>{grid, block, kernel};
}

}  // namespace cliptbp_emu

extern "C" {
// 0: fibers of a phase run in increasing thread order (default); 1: in decreasing order.
void cliptbp_emu_set_order(int order);
// Fiber switches of all launches so far (a measure of emulation cost).
long long cliptbp_emu_switches();
}

#define threadIdx (::cliptbp_emu::g_thread_idx)
#define blockIdx (::cliptbp_emu::g_block_idx)
#define blockDim (::cliptbp_emu::g_block_dim)
#define gridDim (::cliptbp_emu::g_grid_dim)

inline void __syncthreads() { ::cliptbp_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::cliptbp_emu::sync_warp(); }
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
inline cudaError_t cudaGetLastError() { return ::cliptbp_emu::last_error(); }

#define CLIPTBP_LAUNCH(kernel, grid, block, stream) \
  ::cliptbp_emu::make_launch((kernel), dim3(grid), dim3(block))
