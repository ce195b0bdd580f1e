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
#define __align__(n) __attribute__((aligned(n)))

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

// Tensor-core tiles (nvcuda::wmma, 16 x 16 x 16, float accumulators). The emulated 16-bit
// operand types are floats holding values rounded to half / bfloat16 (round_to_half,
// round_to_bf16); every lane holds the whole tile and does the whole product (products of
// 16-bit values are exact in float; sums run in k order).
namespace cliptbp_emu {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float x[16 * 16];
};

template <int M, int N, int K, typename T>
void fill_fragment(fragment<accumulator, M, N, K, T>& f, float v) {
  for (float& e : f.x) e = v;
}
template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<matrix_a, M, N, K, T, row_major>& f, const float* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) f.x[r * 16 + k] = p[r * ldm + k];
}
template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<matrix_b, M, N, K, T, col_major>& f, const float* p, unsigned ldm) {
  for (int c = 0; c < 16; ++c)
    for (int k = 0; k < 16; ++k) f.x[k * 16 + c] = p[c * ldm + k];  // element (k, c)
}
template <int M, int N, int K, typename T, typename TA, typename TB>
void mma_sync(fragment<accumulator, M, N, K, T>& d, const fragment<matrix_a, M, N, K, TA, row_major>& a,
              const fragment<matrix_b, M, N, K, TB, col_major>& b,
              const fragment<accumulator, M, N, K, T>& c) {
  float out[16 * 16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float acc = c.x[r * 16 + n];
      for (int k = 0; k < 16; ++k) acc += a.x[r * 16 + k] * b.x[k * 16 + n];
      out[r * 16 + n] = acc;
    }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
}
template <int M, int N, int K, typename T>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                       layout_t) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.x[r * 16 + c];
}
}  // namespace wmma

// x rounded to nearest-even with `mant` mantissa bits, exponents >= `emin` (subnormals
// below), overflowing to infinity above `vmax`.
inline float round_to_format(float x, int mant, int emin, float vmax) {
  if (!(x == x) || x == 0.0f) return x;
  int e;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  int q = (e - 1 < emin ? emin : e - 1) - mant;  // quantum 2^q
  const float r = std::ldexp(std::nearbyint(std::ldexp(x, -q)), q);
  if (std::fabs(r) > vmax) return x > 0 ? INFINITY : -INFINITY;
  return r;
}
}  // namespace cliptbp_emu

inline float round_to_half(float x) { return ::cliptbp_emu::round_to_format(x, 10, -14, 65504.0f); }
inline float round_to_bf16(float x) {
  return ::cliptbp_emu::round_to_format(x, 7, -126, 3.3895313892515355e38f);
}

#define CLIPTBP_LAUNCH(kernel, grid, block, stream) \
  ::cliptbp_emu::make_launch((kernel), dim3(grid), dim3(block))
