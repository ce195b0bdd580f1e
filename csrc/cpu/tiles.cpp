// Vectorised similarity tiles with run-time dispatch (see tiles.h).
//
// The default compiler flags target the x86-64 baseline (SSE2). Each tile is compiled once
// per instruction set with a `target` attribute and GCC vector extensions of the native
// width, and the best one for the running CPU is picked once. Within one machine the
// choice is fixed, so results are bitwise reproducible.
#include "tiles.h"

#include <cstring>

namespace cliptbp {
namespace cpu {
namespace {

template <typename T, typename V, int NV, int MR>
__attribute__((always_inline)) inline void sim_tile_body(const T* __restrict Ur, int64_t ldr,
                                                         int64_t rows_padded,
                                                         const T* __restrict UcT, int64_t D,
                                                         T* __restrict S) {
  constexpr int kLanes = kTileCols / NV;
  static_assert(sizeof(V) == kLanes * sizeof(T), "vector width mismatch");
  for (int64_t r0 = 0; r0 < rows_padded; r0 += MR) {
    V acc[MR][NV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V{};
    const T* a = Ur + r0 * ldr;
    for (int64_t d = 0; d < D; ++d) {
      V b[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&b[v], UcT + d * kTileCols + v * kLanes, sizeof(V));
      for (int r = 0; r < MR; ++r) {
        const T x = a[r * ldr + d];
        for (int v = 0; v < NV; ++v) acc[r][v] += x * b[v];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v)
        std::memcpy(S + (r0 + r) * kTileCols + v * kLanes, &acc[r][v], sizeof(V));
  }
}

template <typename T>
__attribute__((always_inline)) inline void acc_tile_body(const T* __restrict C, int64_t rows,
                                                         int ncols, const T* __restrict Uc,
                                                         int64_t ldc, int64_t D, T* __restrict GU,
                                                         int64_t ldg) {
  for (int64_t r = 0; r < rows; ++r) {
    T* g = GU + r * ldg;
    for (int c = 0; c < ncols; ++c) {
      const T w = C[r * kTileCols + c];
      if (w == T(0)) continue;
      const T* u = Uc + c * ldc;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) g[d] += w * u[d];
    }
  }
}

typedef float v4f __attribute__((vector_size(16)));
typedef double v2d __attribute__((vector_size(16)));

void sim_f32_base(const float* Ur, int64_t ldr, int64_t n, const float* UcT, int64_t D, float* S) {
  sim_tile_body<float, v4f, 4, 2>(Ur, ldr, n, UcT, D, S);
}
void sim_f64_base(const double* Ur, int64_t ldr, int64_t n, const double* UcT, int64_t D,
                  double* S) {
  sim_tile_body<double, v2d, 8, 1>(Ur, ldr, n, UcT, D, S);
}
void acc_f32_base(const float* C, int64_t rows, int nc, const float* Uc, int64_t ldc, int64_t D,
                  float* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}
void acc_f64_base(const double* C, int64_t rows, int nc, const double* Uc, int64_t ldc,
                  int64_t D, double* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLIPTBP_X86_DISPATCH 1
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

#define CLIPTBP_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define CLIPTBP_TARGET_V4 __attribute__((target("arch=x86-64-v4")))

CLIPTBP_TARGET_V3 void sim_f32_v3(const float* Ur, int64_t ldr, int64_t n, const float* UcT,
                                  int64_t D, float* S) {
  sim_tile_body<float, v8f, 2, 4>(Ur, ldr, n, UcT, D, S);
}
CLIPTBP_TARGET_V3 void sim_f64_v3(const double* Ur, int64_t ldr, int64_t n, const double* UcT,
                                  int64_t D, double* S) {
  sim_tile_body<double, v4d, 4, 2>(Ur, ldr, n, UcT, D, S);
}
CLIPTBP_TARGET_V3 void acc_f32_v3(const float* C, int64_t rows, int nc, const float* Uc,
                                  int64_t ldc, int64_t D, float* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}
CLIPTBP_TARGET_V3 void acc_f64_v3(const double* C, int64_t rows, int nc, const double* Uc,
                                  int64_t ldc, int64_t D, double* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}
CLIPTBP_TARGET_V4 void sim_f32_v4(const float* Ur, int64_t ldr, int64_t n, const float* UcT,
                                  int64_t D, float* S) {
  sim_tile_body<float, v16f, 1, 8>(Ur, ldr, n, UcT, D, S);
}
CLIPTBP_TARGET_V4 void sim_f64_v4(const double* Ur, int64_t ldr, int64_t n, const double* UcT,
                                  int64_t D, double* S) {
  sim_tile_body<double, v8d, 2, 4>(Ur, ldr, n, UcT, D, S);
}
CLIPTBP_TARGET_V4 void acc_f32_v4(const float* C, int64_t rows, int nc, const float* Uc,
                                  int64_t ldc, int64_t D, float* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}
CLIPTBP_TARGET_V4 void acc_f64_v4(const double* C, int64_t rows, int nc, const double* Uc,
                                  int64_t ldc, int64_t D, double* GU, int64_t ldg) {
  acc_tile_body(C, rows, nc, Uc, ldc, D, GU, ldg);
}
#endif

struct Dispatch {
  decltype(&sim_f32_base) sim_f32 = sim_f32_base;
  decltype(&sim_f64_base) sim_f64 = sim_f64_base;
  decltype(&acc_f32_base) acc_f32 = acc_f32_base;
  decltype(&acc_f64_base) acc_f64 = acc_f64_base;
  const char* isa = "baseline";

  Dispatch() {
#ifdef CLIPTBP_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {
      sim_f32 = sim_f32_v4;
      sim_f64 = sim_f64_v4;
      acc_f32 = acc_f32_v4;
      acc_f64 = acc_f64_v4;
      isa = "avx512";
    } else if (__builtin_cpu_supports("x86-64-v3")) {
      sim_f32 = sim_f32_v3;
      sim_f64 = sim_f64_v3;
      acc_f32 = acc_f32_v3;
      acc_f64 = acc_f64_v3;
      isa = "avx2";
    }
#endif
  }
};

const Dispatch& dispatch() {
  static const Dispatch d;
  return d;
}

}  // namespace

void sim_tile(const float* Ur, int64_t ldr, int64_t n, const float* UcT, int64_t D, float* S) {
  dispatch().sim_f32(Ur, ldr, n, UcT, D, S);
}
void sim_tile(const double* Ur, int64_t ldr, int64_t n, const double* UcT, int64_t D, double* S) {
  dispatch().sim_f64(Ur, ldr, n, UcT, D, S);
}
void acc_tile(const float* C, int64_t rows, int nc, const float* Uc, int64_t ldc, int64_t D,
              float* GU, int64_t ldg) {
  dispatch().acc_f32(C, rows, nc, Uc, ldc, D, GU, ldg);
}
void acc_tile(const double* C, int64_t rows, int nc, const double* Uc, int64_t ldc, int64_t D,
              double* GU, int64_t ldg) {
  dispatch().acc_f64(C, rows, nc, Uc, ldc, D, GU, ldg);
}
const char* tile_isa() { return dispatch().isa; }

}  // namespace cpu
}  // namespace cliptbp
