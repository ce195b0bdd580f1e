// Fused CUDA kernels of L_clip and L_boun (docs/losses.md, sections 1-2), forward and backward.
// Plain CUDA C++: only CUDA headers (through compat.h) and csrc/ headers.
//
// Forward, two launches:
//  1. prep, grid (ceil(T / 32), B): every block computes the inverse norms of 32 clips (one
//     warp per clip, float64 sums, max-scaled for float64 input); block 0 of each sample also
//     builds the sample's index lists (valid clips, GT clips, runs of equal labels), its
//     window table (js, je, centre, active; in order of js) and resets its block counter.
//  2. pairs, grid (row tiles x column splits, B): a block takes 32 rows of the row list (GT
//     clips for negatives="cross", valid clips for "all") and a range of 32-column tiles of
//     the valid list; per tile it computes the similarities from shared-memory tiles, adds
//     positives to a per-thread online log-sum-exp and offers negatives above the block's
//     current k-th best to a shared top-k list (64-bit keys of pairs.h, one bitonic sort
//     per tile that had candidates). It writes its partials (log-sum-exp, sorted keys); the
//     last block of a sample to finish (atomic counter) merges the partials in block order,
//     recomputes the chosen pairs' similarities (one warp per pair), and computes L_clip,
//     and L_boun (one warp per window).
// Backward, two launches: prep (lists only), then one block per 32 consecutive clips that
// accumulates their gradient rows in a fixed order (GT x GT positive tiles, chosen pairs in
// rank order, windows in table order: each row element is owned by one thread in each
// phase), then applies the chain rule through the normalisation. No atomics on floating
// point anywhere: every output is bitwise reproducible.
#include "compat.h"
#include "losses.h"

#include <cstdint>

#include "cliptbp/boundary.h"
#include "cliptbp/common.h"
#include "cliptbp/pairs.h"

namespace cliptbp {
namespace cuda {
namespace {

#define DEV __device__ __forceinline__

using u64 = unsigned long long;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr int kRows = static_cast<int>(kRowTile);
constexpr int kCols = static_cast<int>(kColTile);
constexpr int kSortCap = 2048;        // top-k list (<= kMaxK) + one tile of candidates
constexpr int kNormClips = 32;        // clips per block of the norm pass
constexpr int kGradRows = 32;         // clips per block of the backward
constexpr double kInvEpsLimit = 1.0 / kNormEps;
static_assert(kRows * kCols == 4 * kThreads, "a thread holds 4 similarities of a tile");
static_assert(kMaxK + kRows * kCols <= kSortCap, "top-k list plus one tile must fit");

// Element loads: `get` turns the stored value into float (16/32-bit) or double (64-bit).
struct LoadF16 {
  using T = uint16_t;
  static DEV float get(uint16_t v) { return half_bits_to_float(v); }
};
struct LoadBF16 {
  using T = uint16_t;
  static DEV float get(uint16_t v) { return bf16_bits_to_float(v); }
};
struct LoadF32 {
  using T = float;
  static DEV float get(float v) { return v; }
};
struct LoadF64 {
  using T = double;
  static DEV double get(double v) { return v; }
};

template <typename CT>
struct Chunk {  // D-chunk of a shared-memory tile
  static constexpr int value = 32;
};
template <>
struct Chunk<double> {
  static constexpr int value = 16;
};

// Tensor-core operands of 16-bit inputs (none for float32 / float64: docs/losses.md wants true
// float32 products there, no TF32). The operands are the stored values themselves, times a
// power of two: exact, so the products are exact in float and only the float accumulation
// rounds, as on the float32 path. float16 values go in unscaled (|v| <= 65504: products and
// sums stay far below float's range); bfloat16 values are scaled by 2^floor(log2(inv_norm))
// (then |v| 2^k <= 1, no overflow). The similarity is the sum times (inv 2^-k) per side.
template <typename L>
struct Mma {
  static constexpr bool value = false;
};
#if defined(CLIPTBP_CUDA_EMULATE)
namespace wm = ::cliptbp_emu::wmma;
template <>
struct Mma<LoadF16> {
  static constexpr bool value = true;
  static constexpr bool scaled = false;
  using T = float;  // holding float16 values
  static DEV T from(float x) { return round_to_half(x); }
};
template <>
struct Mma<LoadBF16> {
  static constexpr bool value = true;
  static constexpr bool scaled = true;
  using T = float;  // holding bfloat16 values
  static DEV T from(float x) { return round_to_bf16(x); }
};
#elif !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
namespace wm = nvcuda::wmma;
template <>
struct Mma<LoadF16> {
  static constexpr bool value = true;
  static constexpr bool scaled = false;
  using T = __half;
  static DEV T from(float x) { return __float2half_rn(x); }
};
template <>
struct Mma<LoadBF16> {
  static constexpr bool value = true;
  static constexpr bool scaled = true;
  using T = __nv_bfloat16;
  static DEV T from(float x) { return __float2bfloat16_rn(x); }
};
#endif

struct Params {
  EmbView e;
  const int64_t* labels;
  LossOptions opt;
  int64_t kcap;  // row length of pairs
  int64_t keff;  // length of the top-k lists (0 without L_clip)
  int64_t b0;
  int64_t splits, nblk;
  // workspace
  int* valid;
  int* gt;
  int* runs;
  int* win;
  int* meta;
  unsigned* counter;
  double* part_lse;
  int* part_cnt;
  u64* part_keys;
  // forward
  ForwardOutputs out;
  // backward
  BackwardInputs in;
  void* grad;
};

CLIPTBP_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
DEV bool is_nan(double x) { return x != x; }

template <typename L>
DEV auto load(const EmbView& e, int64_t off) {
  return L::get(static_cast<const typename L::T*>(e.data)[off]);
}

// Normalised element d of clip i (offset `base`), in the compute type.
template <typename L, typename CT>
DEV CT unit(const EmbView& e, int64_t base, int64_t d, double inv) {
  return static_cast<CT>(load<L>(e, base + d * e.sd) * inv);
}

// ---------------------------------------------------------------------------------------
// Block and warp reductions (fixed order: results do not depend on timing)
// ---------------------------------------------------------------------------------------

// Exclusive prefix sum over the block of a packed value (four 16-bit counters); `*total`
// receives the block's sum. Contains barriers: call from every thread.
DEV u64 block_scan(u64 v, u64* sh, u64* total) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {
    const u64 add = t >= off ? sh[t - off] : 0;
    __syncthreads();
    sh[t] += add;
    __syncthreads();
  }
  const u64 incl = sh[t];
  *total = sh[kThreads - 1];
  __syncthreads();
  return incl - v;
}

DEV int field16(u64 v, int f) { return static_cast<int>((v >> (16 * f)) & 0xffffu); }

// Sum of one double per thread, in a fixed tree order; every thread gets the result.
DEV double block_sum(double v, double* sh) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

DEV double block_max(double v, double* sh) {
  const int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s && sh[t + s] > sh[t]) sh[t] = sh[t + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// Merge one online log-sum-exp per thread, in a fixed tree order.
DEV OnlineLSE block_lse(OnlineLSE v, double* shm, double* shs) {
  const int t = threadIdx.x;
  shm[t] = v.m;
  shs[t] = v.sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      OnlineLSE a, o;
      a.m = shm[t];
      a.sum = shs[t];
      o.m = shm[t + s];
      o.sum = shs[t + s];
      a.merge(o);
      shm[t] = a.m;
      shs[t] = a.sum;
    }
    __syncthreads();
  }
  OnlineLSE r;
  r.m = shm[0];
  r.sum = shs[0];
  __syncthreads();
  return r;
}

// Sum over the warp of one double per lane, in lane order; every lane gets it. `sh`: 32
// doubles of this warp.
DEV double warp_sum(double v, double* sh) {
  const int lane = threadIdx.x & (kWarp - 1);
  sh[lane] = v;
  __syncwarp();
  double s = 0.0;
  for (int l = 0; l < kWarp; ++l) s += sh[l];
  __syncwarp();
  return s;
}

// s_ij = <u_i, u_j> computed by one warp (u in the compute type, products summed in double).
template <typename L, typename CT>
DEV double warp_sim(const EmbView& e, int64_t b, int64_t i, int64_t j, double inv_i,
                    double inv_j, double* sh) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t bi = e.offset(b, i), bj = e.offset(b, j);
  double acc = 0.0;
  for (int64_t d = lane; d < e.D; d += kWarp)
    acc += static_cast<double>(unit<L, CT>(e, bi, d, inv_i)) *
           static_cast<double>(unit<L, CT>(e, bj, d, inv_j));
  return warp_sum(acc, sh);
}

// ---------------------------------------------------------------------------------------
// Top-k of 64-bit keys in shared memory: keys[0, keff) is the current list, sorted
// descending (0 = empty slot; every real key is > 0); candidates are appended after it.
// ---------------------------------------------------------------------------------------

DEV void bitonic_desc(u64* a, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += kThreads) {
        const int lo = 2 * stride * (t / stride) + (t % stride);
        const int hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const u64 x = a[lo], y = a[hi];
        if ((x < y) == desc) {
          a[lo] = y;
          a[hi] = x;
        }
      }
      __syncthreads();
    }
  }
}

struct TopKShared {
  u64* keys;      // [kSortCap]
  unsigned* cnt;  // candidates appended since the last merge
  u64* thr;       // key of the current k-th best (0 while the list is not full)
  int keff;

  DEV void reset() {
    for (int n = threadIdx.x; n < keff; n += kThreads) keys[n] = 0;
    if (threadIdx.x == 0) {
      *cnt = 0;
      *thr = 0;
    }
    __syncthreads();
  }
  // Offer a key (any thread, no barrier): kept as a candidate if it beats the threshold.
  DEV void offer(u64 key) {
    if (key > *thr) {
      const unsigned slot = atomicAdd(cnt, 1u);
      keys[keff + slot] = key;
    }
  }
  // Merge the candidates into the list. Call from every thread after a barrier.
  DEV void merge() {
    const int c = static_cast<int>(*cnt);
    if (c == 0) return;
    int n2 = 1;
    while (n2 < keff + c) n2 <<= 1;
    for (int n = keff + c + threadIdx.x; n < n2; n += kThreads) keys[n] = 0;
    __syncthreads();
    bitonic_desc(keys, n2);
    if (threadIdx.x == 0) {
      *cnt = 0;
      *thr = keys[keff - 1];
    }
    __syncthreads();
  }
};

// ---------------------------------------------------------------------------------------
// Similarity tile: thread t holds s(rows[t / 8], cols[4 (t % 8) + q]) for q < 4. rows/cols
// hold clip indices, -1 for none (those entries are 0). Contains barriers.
// ---------------------------------------------------------------------------------------

// float32 / float64: products in the compute type, from shared-memory tiles.
template <typename L, typename CT>
DEV void sim_tile_simt(const EmbView& e, int64_t b, const int* rows, const int* cols,
                       const double* inv, CT acc[4]) {
  constexpr int K = Chunk<CT>::value;
  __shared__ CT As[kRows][K + 1];
  __shared__ CT Bs[kCols][K + 1];
  const int t = threadIdx.x;
  const int r = t >> 3, c0 = (t & 7) * 4;
  for (int q = 0; q < 4; ++q) acc[q] = CT(0);
  for (int64_t d0 = 0; d0 < e.D; d0 += K) {
    for (int idx = t; idx < kRows * K; idx += kThreads) {
      const int rr = idx / K, dd = idx % K;
      const int64_t d = d0 + dd;
      const int i = rows[rr], j = cols[rr];  // kRows == kCols
      As[rr][dd] = (i >= 0 && d < e.D) ? unit<L, CT>(e, e.offset(b, i), d, inv[i]) : CT(0);
      Bs[rr][dd] = (j >= 0 && d < e.D) ? unit<L, CT>(e, e.offset(b, j), d, inv[j]) : CT(0);
    }
    __syncthreads();
    for (int dd = 0; dd < K; ++dd) {
      const CT a = As[r][dd];
      for (int q = 0; q < 4; ++q) acc[q] += a * Bs[c0 + q][dd];
    }
    __syncthreads();
  }
}

// Power of two 2^k <= inv (k = floor(log2 inv)), the operand scale of Mma<L>::scaled.
DEV double pow2_below(double inv) {
  int e;
  const double m = frexp(inv, &e);  // inv = m 2^e, m in [0.5, 1)
  return m > 0.0 ? ldexp(1.0, e - 1) : 1.0;
}

// float16 / bfloat16: tensor cores (wmma 16 x 16 x 16, float accumulators), warps 0-3 one
// output quarter each.
template <typename L>
DEV void sim_tile_mma(const EmbView& e, int64_t b, const int* rows, const int* cols,
                      const double* inv, float acc[4]) {
  using M = Mma<L>;
  using T = typename M::T;
  constexpr int K = 32, LD = K + 8, LS = kCols + 4;  // ldm: multiples of 8 / 4 elements
  __shared__ __align__(32) T A[kRows][LD];
  __shared__ __align__(32) T Bt[kCols][LD];
  __shared__ __align__(32) float S[kRows][LS];
  __shared__ float a_scale[kRows], b_scale[kCols];  // 2^k of each operand row
  __shared__ double a_fac[kRows], b_fac[kCols];     // inv 2^-k of each row
  const int t = threadIdx.x, warp = t / kWarp;
  if (t < kRows) {
    const int i = rows[t], j = cols[t];
    const double si = (i >= 0 && M::scaled) ? pow2_below(inv[i]) : 1.0;
    const double sj = (j >= 0 && M::scaled) ? pow2_below(inv[j]) : 1.0;
    a_scale[t] = static_cast<float>(si);
    b_scale[t] = static_cast<float>(sj);
    a_fac[t] = i >= 0 ? inv[i] / si : 0.0;
    b_fac[t] = j >= 0 ? inv[j] / sj : 0.0;
  }
  __syncthreads();
  const int fr = (warp >> 1) * 16, fc = (warp & 1) * 16;
  wm::fragment<wm::accumulator, 16, 16, 16, float> cf;
  wm::fill_fragment(cf, 0.0f);
  for (int64_t d0 = 0; d0 < e.D; d0 += K) {
    for (int idx = t; idx < kRows * K; idx += kThreads) {
      const int rr = idx / K, dd = idx % K;
      const int64_t d = d0 + dd;
      const int i = rows[rr], j = cols[rr];  // kRows == kCols
      const float va = (i >= 0 && d < e.D) ? load<L>(e, e.offset(b, i) + d * e.sd) : 0.0f;
      const float vb = (j >= 0 && d < e.D) ? load<L>(e, e.offset(b, j) + d * e.sd) : 0.0f;
      A[rr][dd] = M::from(va * a_scale[rr]);  // exact: a power of two times a 16-bit value
      Bt[rr][dd] = M::from(vb * b_scale[rr]);
    }
    __syncthreads();
    if (warp < 4) {
      for (int k0 = 0; k0 < K; k0 += 16) {
        wm::fragment<wm::matrix_a, 16, 16, 16, T, wm::row_major> fa;
        wm::fragment<wm::matrix_b, 16, 16, 16, T, wm::col_major> fb;
        wm::load_matrix_sync(fa, &A[fr][k0], LD);
        wm::load_matrix_sync(fb, &Bt[fc][k0], LD);
        wm::mma_sync(cf, fa, fb, cf);
      }
    }
    __syncthreads();
  }
  if (warp < 4) wm::store_matrix_sync(&S[fr][fc], cf, LS, wm::mem_row_major);
  __syncthreads();
  const int r = t >> 3, c0 = (t & 7) * 4;
  for (int q = 0; q < 4; ++q)
    acc[q] = static_cast<float>(static_cast<double>(S[r][c0 + q]) * a_fac[r] * b_fac[c0 + q]);
  __syncthreads();  // S and the scales are rewritten by the next tile
}

template <typename L, typename CT>
DEV void sim_tile(const EmbView& e, int64_t b, const int* rows, const int* cols,
                  const double* inv, CT acc[4]) {
  if constexpr (Mma<L>::value)
    sim_tile_mma<L>(e, b, rows, cols, inv, acc);
  else
    sim_tile_simt<L, CT>(e, b, rows, cols, inv, acc);
}

// ---------------------------------------------------------------------------------------
// L_boun terms of one window, computed by one warp (the same code in forward and backward).
// ---------------------------------------------------------------------------------------
struct Terms {
  int64_t n_pos = 0, n_neg = 0;
  double s_pos = 0.0, s_neg = 0.0;
};

DEV Window window_at(const Params& p, int64_t b, int64_t w) {
  const int* row = p.win + (b * p.e.T + w) * 4;
  Window W;
  W.js = row[0];
  W.je = row[1];
  W.c = row[2];
  W.label = p.labels[b * p.e.T + W.js];
  return W;
}

template <typename L, typename CT>
DEV Terms window_terms(const Params& p, int64_t b, const Window& W, double* sh) {
  const int64_t T = p.e.T;
  const int64_t* lab = p.labels + b * T;
  const double* inv = p.out.inv_norm != nullptr ? p.out.inv_norm + b * T : p.in.inv_norm + b * T;
  Terms t;
  double sp = 0.0, sn = 0.0;
  for_each_pos(W, lab, p.opt.radius, [&](int64_t i) {
    sp += warp_sim<L, CT>(p.e, b, W.c, i, inv[W.c], inv[i], sh);
    ++t.n_pos;
  });
  for_each_neg(W, lab, T, p.opt.radius, [&](int64_t i) {
    sn += warp_sim<L, CT>(p.e, b, W.c, i, inv[W.c], inv[i], sh);
    ++t.n_neg;
  });
  if (t.n_pos > 0) t.s_pos = sp / static_cast<double>(t.n_pos);
  if (t.n_neg > 0) t.s_neg = sn / static_cast<double>(t.n_neg);
  return t;
}

DEV double window_hinge(const Params& p, const Window& W, const Terms& t, int64_t n_valid) {
  const double delta = boundary_delta(W, n_valid, p.opt.margin_max, p.opt.margin_base,
                                      p.opt.margin_scale);
  return t.s_neg - t.s_pos + delta;
}

// ---------------------------------------------------------------------------------------
// Kernel 1: inverse norms and index lists
// ---------------------------------------------------------------------------------------

// 1 / max(||v_i||, eps) of one clip, by one warp; NaN when the clip is not finite.
template <typename L>
DEV double warp_inv_norm(const EmbView& e, int64_t b, int64_t i, double* sh) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t base = e.offset(b, i);
  double nrm;
  bool finite;
  if (e.dtype != kFloat64) {
    // squares of 16- and 32-bit values cannot overflow a double
    double ss = 0.0;
    for (int64_t d = lane; d < e.D; d += kWarp) {
      const double v = load<L>(e, base + d * e.sd);
      ss += v * v;
    }
    ss = warp_sum(ss, sh);
    finite = ss - ss == 0.0;
    nrm = sqrt(ss);
  } else {
    double amax = 0.0, bad = 0.0;
    for (int64_t d = lane; d < e.D; d += kWarp) {
      const double a = fabs(static_cast<double>(load<L>(e, base + d * e.sd)));
      if (!(a <= 1.7976931348623157e308)) bad = 1.0;  // NaN or Inf
      if (a > amax) amax = a;
    }
    // max and "any" are order-independent; reuse the ordered sum for "any"
    sh[lane] = amax;
    __syncwarp();
    for (int l = 0; l < kWarp; ++l) amax = sh[l] > amax ? sh[l] : amax;
    __syncwarp();
    finite = warp_sum(bad, sh) == 0.0;
    nrm = 0.0;
    if (finite && amax > 0.0) {
      const double inv_amax = 1.0 / amax;
      double ss = 0.0;
      for (int64_t d = lane; d < e.D; d += kWarp) {
        const double v = static_cast<double>(load<L>(e, base + d * e.sd)) * inv_amax;
        ss += v * v;
      }
      nrm = amax * sqrt(warp_sum(ss, sh));
    }
  }
  if (!finite) return NAN;
  return 1.0 / (nrm > kNormEps ? nrm : kNormEps);
}

// Index lists and window table of sample b (one block).
DEV void build_lists(const Params& p, int64_t b, bool check_nonfinite, u64* scan_sh,
                     double* red_sh) {
  const int64_t T = p.e.T;
  const int t = threadIdx.x;
  const int64_t* lab = p.labels + b * T;
  int* valid = p.valid + b * T;
  int* gt = p.gt + b * T;
  int* runs = p.runs + b * T * 2;
  int64_t nv = 0, ng = 0, ns = 0, ne = 0;
  for (int64_t base = 0; base < T; base += kThreads) {
    const int64_t i = base + t;
    const int64_t l = i < T ? lab[i] : -1;
    const bool fv = l >= 0, fg = l >= 1;
    const bool fs = fg && (i == 0 || lab[i - 1] != l);
    const bool fe = fg && (i == T - 1 || lab[i + 1] != l);
    const u64 v = static_cast<u64>(fv) | (static_cast<u64>(fg) << 16) |
                  (static_cast<u64>(fs) << 32) | (static_cast<u64>(fe) << 48);
    u64 total;
    const u64 ex = block_scan(v, scan_sh, &total);
    if (fv) valid[nv + field16(ex, 0)] = static_cast<int>(i);
    if (fg) gt[ng + field16(ex, 1)] = static_cast<int>(i);
    if (fs) runs[(ns + field16(ex, 2)) * 2] = static_cast<int>(i);
    if (fe) runs[(ne + field16(ex, 3)) * 2 + 1] = static_cast<int>(i);
    nv += field16(total, 0);
    ng += field16(total, 1);
    ns += field16(total, 2);
    ne += field16(total, 3);
  }
  __syncthreads();  // runs[] complete
  // Windows: the first run of each label opens a window; table in order of js.
  int64_t nw = 0, na = 0;
  for (int64_t r0 = 0; r0 < ns; r0 += kThreads) {
    const int64_t r = r0 + t;
    bool first = false, active = false;
    Window W;
    if (r < ns) {
      const int64_t L = lab[runs[r * 2]];
      first = true;
      for (int64_t q = 0; q < r && first; ++q) first = lab[runs[q * 2]] != L;
      if (first) {
        int64_t n = 0;
        W.label = L;
        W.js = runs[r * 2];
        for (int64_t q = r; q < ns; ++q) {
          if (lab[runs[q * 2]] != L) continue;
          n += runs[q * 2 + 1] - runs[q * 2] + 1;
          W.je = runs[q * 2 + 1];
        }
        const int64_t m = (n - 1) / 2;
        int64_t before = 0;
        W.c = W.js;
        for (int64_t q = r; q < ns; ++q) {
          if (lab[runs[q * 2]] != L) continue;
          const int64_t len = runs[q * 2 + 1] - runs[q * 2] + 1;
          if (m < before + len) {
            W.c = runs[q * 2] + (m - before);
            break;
          }
          before += len;
        }
        bool any_pos = false, any_neg = false;
        for_each_pos(W, lab, p.opt.radius, [&](int64_t) { any_pos = true; });
        for_each_neg(W, lab, T, p.opt.radius, [&](int64_t) { any_neg = true; });
        active = any_pos && any_neg;
      }
    }
    u64 total;
    const u64 ex = block_scan(static_cast<u64>(first) | (static_cast<u64>(first && active) << 16),
                              scan_sh, &total);
    if (first) {
      int* row = p.win + (b * T + nw + field16(ex, 0)) * 4;
      row[0] = static_cast<int>(W.js);
      row[1] = static_cast<int>(W.je);
      row[2] = static_cast<int>(W.c);
      row[3] = active ? 1 : 0;
    }
    nw += field16(total, 0);
    na += field16(total, 1);
  }
  double bad = 0.0;
  if (check_nonfinite) {
    const double* inv = p.in.inv_norm + b * T;
    for (int64_t i = t; i < T; i += kThreads)
      if (lab[i] >= 0 && is_nan(inv[i])) bad = 1.0;
  }
  bad = block_sum(bad, red_sh);
  if (t == 0) {
    int* meta = p.meta + b * kMeta;
    meta[kNValid] = static_cast<int>(nv);
    meta[kNGt] = static_cast<int>(ng);
    meta[kNWin] = static_cast<int>(nw);
    meta[kNActive] = static_cast<int>(na);
    meta[kNonfinite] = bad > 0.0 ? 1 : 0;
    meta[kNRuns] = static_cast<int>(ns);
    p.counter[b] = 0;
  }
}

template <typename L>
__global__ void __launch_bounds__(kThreads) prep_kernel(Params p, int with_norms) {
  __shared__ u64 scan_sh[kThreads];
  __shared__ double red_sh[kThreads];
  __shared__ double warp_sh[kWarps][kWarp];
  const int64_t b = p.b0 + blockIdx.y;
  const int64_t T = p.e.T;
  if (with_norms) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    for (int q = warp; q < kNormClips; q += kWarps) {
      const int64_t i = static_cast<int64_t>(blockIdx.x) * kNormClips + q;
      if (i >= T) break;
      double inv = 0.0;
      if (p.labels[b * T + i] >= 0) inv = warp_inv_norm<L>(p.e, b, i, warp_sh[warp]);
      if (lane == 0) p.out.inv_norm[b * T + i] = inv;
    }
  }
  if (blockIdx.x == 0) build_lists(p, b, !with_norms, scan_sh, red_sh);
}

// ---------------------------------------------------------------------------------------
// Kernel 2: forward pairs + finalize
// ---------------------------------------------------------------------------------------

template <typename L, typename CT>
DEV void finalize(const Params& p, int64_t b, TopKShared& top, double* red_sh, double* red2_sh,
                  double (*warp_sh)[kWarp], double* zs, double* item_sh) {
  const int64_t T = p.e.T;
  const int t = threadIdx.x, warp = t / kWarp, lane = t % kWarp;
  const int64_t* lab = p.labels + b * T;
  const double* inv = p.out.inv_norm + b * T;
  const int* meta = p.meta + b * kMeta;
  const LossOptions& opt = p.opt;
  const int keff = top.keff;
  int64_t* pairs = p.out.pairs + b * p.kcap;
  for (int64_t n = t; n < p.kcap; n += kThreads) pairs[n] = -1;

  double bad = 0.0;
  for (int64_t i = t; i < T; i += kThreads)
    if (lab[i] >= 0 && is_nan(inv[i])) bad = 1.0;
  const bool nonfinite = block_sum(bad, red_sh) > 0.0;
  if (t == 0) {
    p.out.loss_clip[b] = (opt.want_clip && nonfinite) ? NAN : 0.0;
    p.out.has_clip[b] = (opt.want_clip && nonfinite) ? 1 : 0;
    p.out.loss_boun[b] = (opt.want_boun && nonfinite) ? NAN : 0.0;
    p.out.has_boun[b] = (opt.want_boun && nonfinite) ? 1 : 0;
    p.out.lse_pos[b] = 0.0;
    p.out.neg_sum[b] = 0.0;
  }
  if (nonfinite) return;
  const double inv_tau = 1.0 / opt.tau;

  if (opt.want_clip) {
    // log-sum-exp of the positives: partials merged in block order
    // blocks without work items wrote no partials
    const int64_t n_rows = opt.negatives == kNegativesAll ? meta[kNValid] : meta[kNGt];
    const int64_t n_part = imin(p.nblk, (n_rows + kRows - 1) / kRows * p.splits);
    OnlineLSE acc;
    const volatile double* pl = p.part_lse + b * p.nblk * 2;
    for (int64_t q = t; q < n_part; q += kThreads) {
      OnlineLSE o;
      o.m = pl[q * 2];
      o.sum = pl[q * 2 + 1];
      acc.merge(o);
    }
    // threads hold consecutive-stride chunks; the tree merge fixes the rest of the order
    const OnlineLSE total = block_lse(acc, red_sh, red2_sh);
    if (keff > 0) {
      top.reset();
      const volatile int* pc = p.part_cnt + b * p.nblk;
      const volatile u64* pk = p.part_keys + b * p.nblk * keff;
      for (int64_t q = 0; q < n_part; ++q) {
        const int c = pc[q];
        if (c == 0) continue;
        const bool full = static_cast<int>(*top.cnt) + c > kSortCap - keff;
        __syncthreads();  // every thread has read the count before any offer changes it
        if (full) top.merge();
        for (int n = t; n < c; n += kThreads) top.offer(pk[q * keff + n]);
        __syncthreads();
      }
      top.merge();
      for (int n = t; n < keff; n += kThreads) {
        const u64 key = top.keys[n];
        pairs[n] = key != 0 ? key64_pair(key) : -1;
      }
    }
    if (total.sum > 0.0) {
      // the chosen pairs' similarities, one warp per pair (the backward uses the same code)
      double zmax = -INFINITY;
      for (int n0 = 0; n0 < keff; n0 += kWarps) {
        const int n = n0 + warp;
        if (n < keff && top.keys[n] != 0) {
          const int64_t pr = key64_pair(top.keys[n]);
          const int64_t i = pr / T, j = pr % T;
          const double z = warp_sim<L, CT>(p.e, b, i, j, inv[i], inv[j], warp_sh[warp]) * inv_tau;
          if (lane == 0) zs[n] = z;
        }
      }
      __syncthreads();
      for (int n = t; n < keff; n += kThreads)
        if (top.keys[n] != 0 && zs[n] > zmax) zmax = zs[n];
      zmax = block_max(zmax, red_sh);
      double l = 0.0;
      if (zmax > -INFINITY) {
        double s = 0.0;
        for (int n = t; n < keff; n += kThreads)
          if (top.keys[n] != 0) s += exp(zs[n] - zmax);
        s = block_sum(s, red_sh);
        // l = softplus(lse_N - lse_P): the log1p form of docs/losses.md, finite for huge gaps
        const double x = zmax + log(s) - total.value();
        l = x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x));
      }
      if (t == 0) {
        p.out.lse_pos[b] = total.value();
        p.out.neg_sum[b] = l;
        p.out.loss_clip[b] = l;
        p.out.has_clip[b] = 1;
      }
    }
  }

  if (opt.want_boun) {
    const int64_t nw = meta[kNWin], n_valid = meta[kNValid];
    double sum = 0.0;  // thread 0's, in window order
    int64_t cnt = 0;
    for (int64_t w0 = 0; w0 < nw; w0 += kWarps) {
      const int64_t w = w0 + warp;
      if (w < nw && p.win[(b * T + w) * 4 + 3]) {
        const Window W = window_at(p, b, w);
        const Terms tm = window_terms<L, CT>(p, b, W, warp_sh[warp]);
        const double h = window_hinge(p, W, tm, n_valid);
        if (lane == 0) item_sh[warp] = h > 0.0 ? h : 0.0;
      } else if (lane == 0) {
        item_sh[warp] = -1.0;
      }
      __syncthreads();
      if (t == 0) {
        for (int q = 0; q < kWarps; ++q) {
          if (item_sh[q] < 0.0) continue;
          sum += item_sh[q];
          ++cnt;
        }
      }
      __syncthreads();
    }
    if (t == 0 && cnt > 0) {
      p.out.loss_boun[b] = sum / static_cast<double>(cnt);
      p.out.has_boun[b] = 1;
    }
  }
}

template <typename L, typename CT>
__global__ void __launch_bounds__(kThreads) forward_kernel(Params p) {
  __shared__ u64 keys[kSortCap];
  __shared__ unsigned cnt_sh;
  __shared__ u64 thr_sh;
  __shared__ int rows_sh[kRows];
  __shared__ int cols_sh[kCols];
  __shared__ double red_sh[kThreads];
  __shared__ double red2_sh[kThreads];
  __shared__ double warp_sh[kWarps][kWarp];
  __shared__ double zs[kMaxK];
  __shared__ double item_sh[kWarps];
  __shared__ int flag_sh;

  const int64_t b = p.b0 + blockIdx.y;
  const int64_t blk = blockIdx.x;
  const int64_t T = p.e.T;
  const int t = threadIdx.x;
  const int* meta = p.meta + b * kMeta;
  const int64_t* lab = p.labels + b * T;
  const double* inv = p.out.inv_norm + b * T;
  const LossOptions& opt = p.opt;
  const bool all = opt.negatives == kNegativesAll;
  const int64_t nv = meta[kNValid];
  const int64_t n_rows = all ? nv : meta[kNGt];
  const int* rows = (all ? p.valid : p.gt) + b * T;
  const int* valid = p.valid + b * T;
  const int keff = static_cast<int>(p.keff);
  const double inv_tau = 1.0 / opt.tau;

  TopKShared top{keys, &cnt_sh, &thr_sh, keff};
  OnlineLSE lse_t;
  // work items (row tile, column split) of the sample's rows, round-robin over its blocks
  const int64_t n_items = opt.want_clip ? (n_rows + kRows - 1) / kRows * p.splits : 0;
  const int64_t slot = b * p.nblk + blk;
  if (blk < n_items) {  // uniform
    if (keff > 0) top.reset();
    const int r = t >> 3, c0 = (t & 7) * 4;
    for (int64_t item = blk; item < n_items; item += p.nblk) {
      const int64_t rt = item / p.splits, sp = item % p.splits;
      const int64_t r0 = rt * kRows;
      const int64_t nr = imin(kRows, n_rows - r0);
      __syncthreads();  // the previous item is done with rows_sh
      if (t < kRows) rows_sh[t] = t < nr ? rows[r0 + t] : -1;
      // negatives="all": rows are valid clips themselves, only j > i is needed
      const int64_t c_begin = all ? r0 + 1 : 0;
      const int64_t ntiles = (nv - c_begin + kCols - 1) / kCols;
      const int64_t tps = (ntiles + p.splits - 1) / p.splits;
      const int64_t tile_end = imin(ntiles, (sp + 1) * tps);
      for (int64_t tile = sp * tps; tile < tile_end; ++tile) {
        const int64_t cs = c_begin + tile * kCols;
        const int64_t nc = imin(kCols, nv - cs);
        if (t < kCols) cols_sh[t] = t < nc ? valid[cs + t] : -1;
        __syncthreads();
        CT acc[4];
        sim_tile<L, CT>(p.e, b, rows_sh, cols_sh, inv, acc);
        const int64_t i = rows_sh[r];
        for (int q = 0; q < 4; ++q) {
          const int64_t j = cols_sh[c0 + q];
          if (i < 0 || j < 0 || j == i) continue;
          const int64_t li = lab[i], lj = lab[j];
          // each unordered pair once: from the row of its smaller clip when both are rows
          if (j < i && (all || lj >= 1)) continue;
          const int cls = classify_pair(li, lj, opt.positives, opt.negatives);
          if (cls == kPairPositive) {
            lse_t.add(static_cast<double>(acc[q]) * inv_tau);
          } else if (cls == kPairNegative && keff > 0) {
            top.offer(pack_key64(static_cast<float>(acc[q]), pair_index(i, j, T)));
          }
        }
        __syncthreads();
        if (keff > 0) top.merge();
      }
    }
    // the block's partials
    const OnlineLSE blse = block_lse(lse_t, red_sh, red2_sh);
    if (t == 0) {
      p.part_lse[slot * 2] = blse.m;
      p.part_lse[slot * 2 + 1] = blse.sum;
    }
    if (keff > 0) {
      for (int n = t; n < keff; n += kThreads) {
        const u64 key = keys[n];
        p.part_keys[slot * keff + n] = key;
        if (key != 0 && (n + 1 == keff || keys[n + 1] == 0)) p.part_cnt[slot] = n + 1;
      }
      if (t == 0 && keys[0] == 0) p.part_cnt[slot] = 0;
    } else if (t == 0) {
      p.part_cnt[slot] = 0;
    }
  }

  // the last block of the sample to finish merges the partials
  __threadfence();
  __syncthreads();
  if (t == 0) flag_sh = atomicAdd(p.counter + b, 1u) == static_cast<unsigned>(p.nblk - 1);
  __syncthreads();
  if (!flag_sh) return;
  __threadfence();
  finalize<L, CT>(p, b, top, red_sh, red2_sh, warp_sh, zs, item_sh);
}

// ---------------------------------------------------------------------------------------
// Kernel 3: backward
// ---------------------------------------------------------------------------------------

template <typename L, typename CT>
__global__ void __launch_bounds__(kThreads) backward_kernel(Params p) {
  constexpr int K = Chunk<CT>::value;
  __shared__ CT Bs[kCols][K + 1];  // columns of u staged for G += C u
  __shared__ CT Cs[kGradRows][kCols + 1];
  __shared__ int rows_sh[kGradRows];
  __shared__ int cols_sh[kCols];
  __shared__ double red_sh[kThreads];
  __shared__ double warp_sh[kWarps][kWarp];
  __shared__ double coef_sh[kWarps][2];
  __shared__ int64_t item_sh[kWarps][2];

  const int64_t b = p.b0 + blockIdx.y;
  const int64_t T = p.e.T, D = p.e.D;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kGradRows;
  const int64_t n_here = imin(kGradRows, T - i0);
  const int t = threadIdx.x, warp = t / kWarp, lane = t % kWarp;
  const int* meta = p.meta + b * kMeta;
  const int64_t* lab = p.labels + b * T;
  const double* inv = p.in.inv_norm + b * T;
  const LossOptions& opt = p.opt;
  const double inv_tau = 1.0 / opt.tau;
  CT* G = static_cast<CT*>(p.grad) + (b * T + i0) * D;
  auto in_block = [&](int64_t i) { return i >= i0 && i < i0 + n_here; };

  for (int64_t f = t; f < n_here * D; f += kThreads) G[f] = CT(0);
  if (meta[kNonfinite]) return;  // uniform: the gradient of a non-finite sample is 0
  __syncthreads();

  const bool clip = opt.want_clip && p.in.has_clip[b] && p.in.grad_clip[b] != 0.0;
  const double lse = p.in.lse_pos[b], l = p.in.neg_sum[b];

  // 1. positive pairs of the block's GT rows: d l / d z = -(1 - exp(-l)) softmax_P(z)
  double any_gt = 0.0;
  if (t < n_here && lab[i0 + t] >= 1) any_gt = 1.0;
  any_gt = block_sum(any_gt, red_sh);
  const int64_t ng = meta[kNGt];
  if (clip && l > 0.0 && ng >= 2 && any_gt > 0.0) {
    const double scale = p.in.grad_clip[b] * expm1(-l) * inv_tau;
    const int* gt = p.gt + b * T;
    if (t < kGradRows) rows_sh[t] = (t < n_here && lab[i0 + t] >= 1) ? static_cast<int>(i0 + t) : -1;
    const int r = t >> 3, c0 = (t & 7) * 4;
    for (int64_t cs = 0; cs < ng; cs += kCols) {
      if (t < kCols) cols_sh[t] = cs + t < ng ? gt[cs + t] : -1;
      __syncthreads();
      CT acc[4];
      sim_tile<L, CT>(p.e, b, rows_sh, cols_sh, inv, acc);
      const int64_t i = rows_sh[r];
      for (int q = 0; q < 4; ++q) {
        const int64_t j = cols_sh[c0 + q];
        CT coef = CT(0);
        if (i >= 0 && j >= 0 && j != i &&
            classify_pair(lab[i], lab[j], opt.positives, opt.negatives) == kPairPositive)
          coef = static_cast<CT>(scale * exp(static_cast<double>(acc[q]) * inv_tau - lse));
        Cs[r][c0 + q] = coef;
      }
      __syncthreads();
      // G[r, d] += sum_c Cs[r, c] u_c[d]; thread t owns rows t / 8 and d = t % 8 (mod 8)
      for (int64_t d0 = 0; d0 < D; d0 += K) {
        for (int idx = t; idx < kCols * K; idx += kThreads) {
          const int cc = idx / K, dd = idx % K;
          const int j = cols_sh[cc];
          const int64_t d = d0 + dd;
          Bs[cc][dd] = (j >= 0 && d < D) ? unit<L, CT>(p.e, p.e.offset(b, j), d, inv[j]) : CT(0);
        }
        __syncthreads();
        if (rows_sh[r] >= 0) {
          for (int dd = t & 7; dd < K; dd += 8) {
            if (d0 + dd >= D) break;
            CT s = CT(0);
            for (int cc = 0; cc < kCols; ++cc) s += Cs[r][cc] * Bs[cc][dd];
            G[r * D + d0 + dd] += s;
          }
        }
        __syncthreads();
      }
    }
  }
  __syncthreads();

  // Row element (i, d) of the sparse phases is owned by thread d % kThreads.
  auto apply = [&](int64_t i, int64_t j, double coef) {
    // s_ij = <u_i, u_j>: d/du_i = coef u_j, d/du_j = coef u_i
    const CT cf = static_cast<CT>(coef);
    const int64_t bi = p.e.offset(b, i), bj = p.e.offset(b, j);
    for (int64_t d = t; d < D; d += kThreads) {
      if (in_block(i)) G[(i - i0) * D + d] += cf * unit<L, CT>(p.e, bj, d, inv[j]);
      if (in_block(j)) G[(j - i0) * D + d] += cf * unit<L, CT>(p.e, bi, d, inv[i]);
    }
  };

  // 2. chosen negatives, in rank order: d l / d z_n = exp(z_n - lse_P - l)
  if (clip) {
    const double scale = p.in.grad_clip[b] * inv_tau;
    const int64_t* pairs = p.in.pairs + b * p.kcap;
    for (int64_t n0 = 0; n0 < p.kcap; n0 += kWarps) {
      const int64_t n = n0 + warp;
      int64_t i = -1, j = -1;
      if (n < p.kcap && pairs[n] >= 0) {
        i = pairs[n] / T;
        j = pairs[n] % T;
      }
      if (i >= 0 && (in_block(i) || in_block(j))) {
        const double s = warp_sim<L, CT>(p.e, b, i, j, inv[i], inv[j], warp_sh[warp]);
        if (lane == 0) {
          coef_sh[warp][0] = scale * exp(s * inv_tau - lse - l);
          item_sh[warp][0] = i;
          item_sh[warp][1] = j;
        }
      } else if (lane == 0) {
        item_sh[warp][0] = -1;
      }
      __syncthreads();
      for (int q = 0; q < kWarps; ++q)
        if (item_sh[q][0] >= 0) apply(item_sh[q][0], item_sh[q][1], coef_sh[q][0]);
      __syncthreads();
    }
  }

  // 3. boundary terms, windows in table order
  if (opt.want_boun && p.in.has_boun[b] && p.in.grad_boun[b] != 0.0) {
    const int64_t nw = meta[kNWin], n_valid = meta[kNValid];
    const int64_t na = meta[kNActive];
    const double g = p.in.grad_boun[b] / static_cast<double>(na > 1 ? na : 1);
    const int64_t r = opt.radius;
    for (int64_t w0 = 0; w0 < nw; w0 += kWarps) {
      const int64_t w = w0 + warp;
      bool use = false;
      Window W;
      if (w < nw && p.win[(b * T + w) * 4 + 3]) {
        W = window_at(p, b, w);
        use = W.js - r < i0 + n_here && W.je + r >= i0;  // I_pos, I_neg, c lie in [js-r, je+r]
      }
      if (use) {
        const Terms tm = window_terms<L, CT>(p, b, W, warp_sh[warp]);
        if (lane == 0) {
          const bool hot = window_hinge(p, W, tm, n_valid) > 0.0;  // gradient 0 at the kink
          item_sh[warp][0] = hot ? w : -1;
          coef_sh[warp][0] = -g / static_cast<double>(tm.n_pos);
          coef_sh[warp][1] = g / static_cast<double>(tm.n_neg);
        }
      } else if (lane == 0) {
        item_sh[warp][0] = -1;
      }
      __syncthreads();
      for (int q = 0; q < kWarps; ++q) {
        if (item_sh[q][0] < 0) continue;
        const Window Wq = window_at(p, b, item_sh[q][0]);
        const double cp = coef_sh[q][0], cn = coef_sh[q][1];
        for_each_pos(Wq, lab, r, [&](int64_t i) { apply(Wq.c, i, cp); });
        for_each_neg(Wq, lab, T, r, [&](int64_t i) { apply(Wq.c, i, cn); });
      }
      __syncthreads();
    }
  }
  __syncthreads();

  // 4. chain rule through u = v / max(||v||, eps), one warp per row
  for (int64_t rr = warp; rr < n_here; rr += kWarps) {
    const int64_t i = i0 + rr;
    if (lab[i] < 0) continue;
    const double invi = inv[i];
    const int64_t bi = p.e.offset(b, i);
    CT* g = G + rr * D;
    double proj = 0.0;
    for (int64_t d = lane; d < D; d += kWarp)
      proj += static_cast<double>(unit<L, CT>(p.e, bi, d, invi)) * static_cast<double>(g[d]);
    proj = warp_sum(proj, warp_sh[warp]);
    for (int64_t d = lane; d < D; d += kWarp) {
      if (invi < kInvEpsLimit)
        g[d] = static_cast<CT>((static_cast<double>(g[d]) -
                                static_cast<double>(unit<L, CT>(p.e, bi, d, invi)) * proj) *
                               invi);
      else
        g[d] = static_cast<CT>(static_cast<double>(g[d]) * invi);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

Params make_params(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
                   const Layout& L, void* workspace) {
  Params p{};
  p.e = emb;
  p.labels = labels;
  p.opt = opt;
  p.kcap = L.kcap;
  p.keff = L.keff;
  p.splits = L.splits;
  p.nblk = L.nblk;
  char* ws = static_cast<char*>(workspace);
  p.valid = reinterpret_cast<int*>(ws + L.valid);
  p.gt = reinterpret_cast<int*>(ws + L.gt);
  p.runs = reinterpret_cast<int*>(ws + L.runs);
  p.win = reinterpret_cast<int*>(ws + L.win);
  p.meta = reinterpret_cast<int*>(ws + L.meta);
  p.counter = reinterpret_cast<unsigned*>(ws + L.counter);
  p.part_lse = reinterpret_cast<double*>(ws + L.part_lse);
  p.part_cnt = reinterpret_cast<int*>(ws + L.part_cnt);
  p.part_keys = reinterpret_cast<u64*>(ws + L.part_keys);
  return p;
}

bool valid_call(const EmbView& emb, const Layout& L, const void* workspace) {
  return emb.B >= 1 && emb.T >= 1 && emb.D >= 1 && emb.T <= kMaxT && L.keff <= kMaxK &&
         L.keff >= 0 && L.kcap >= L.keff && L.B == emb.B && L.T == emb.T && workspace != nullptr &&
         emb.dtype >= kFloat16 && emb.dtype <= kFloat64;
}

// Launch `first` then `second` for every chunk of at most kMaxSamplesPerLaunch samples
// (gridDim.y); the grids' x sizes are given. Returns the first launch error.
template <typename K1, typename K2>
int launch_pair(Params p, cudaStream_t stream, K1 first, unsigned x1, int with_norms, K2 second,
                unsigned x2) {
  for (int64_t b0 = 0; b0 < p.e.B; b0 += kMaxSamplesPerLaunch) {
    const unsigned nb = static_cast<unsigned>(imin(kMaxSamplesPerLaunch, p.e.B - b0));
    p.b0 = b0;
    CLIPTBP_LAUNCH(first, dim3(x1, nb), dim3(kThreads), stream)(p, with_norms);
    int err = static_cast<int>(cudaGetLastError());
    if (err != 0) return err;
    CLIPTBP_LAUNCH(second, dim3(x2, nb), dim3(kThreads), stream)(p);
    err = static_cast<int>(cudaGetLastError());
    if (err != 0) return err;
  }
  return 0;
}

template <typename Ld, typename CT>
int launch_forward(const Params& p, cudaStream_t stream) {
  const int64_t T = p.e.T;
  return launch_pair(p, stream, &prep_kernel<Ld>,
                     static_cast<unsigned>((T + kNormClips - 1) / kNormClips), 1,
                     &forward_kernel<Ld, CT>, static_cast<unsigned>(p.nblk));
}

template <typename Ld, typename CT>
int launch_backward(const Params& p, cudaStream_t stream) {
  const int64_t T = p.e.T;
  return launch_pair(p, stream, &prep_kernel<Ld>, 1u, 0, &backward_kernel<Ld, CT>,
                     static_cast<unsigned>((T + kGradRows - 1) / kGradRows));
}

}  // namespace

int forward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
            const Layout& layout, void* workspace, const ForwardOutputs& out,
            std::uintptr_t stream) {
  if (!valid_call(emb, layout, workspace)) return static_cast<int>(cudaErrorInvalidValue);
  Params p = make_params(emb, labels, opt, layout, workspace);
  p.out = out;
  p.in = BackwardInputs{};
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (emb.dtype) {
    case kFloat16: return launch_forward<LoadF16, float>(p, s);
    case kBFloat16: return launch_forward<LoadBF16, float>(p, s);
    case kFloat32: return launch_forward<LoadF32, float>(p, s);
    default: return launch_forward<LoadF64, double>(p, s);
  }
}

int backward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
             const Layout& layout, void* workspace, const BackwardInputs& in, void* grad,
             std::uintptr_t stream) {
  if (!valid_call(emb, layout, workspace) || grad == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  Params p = make_params(emb, labels, opt, layout, workspace);
  p.out = ForwardOutputs{};
  p.in = in;
  p.grad = grad;
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (emb.dtype) {
    case kFloat16: return launch_backward<LoadF16, float>(p, s);
    case kBFloat16: return launch_backward<LoadBF16, float>(p, s);
    case kFloat32: return launch_backward<LoadF32, float>(p, s);
    default: return launch_backward<LoadF64, double>(p, s);
  }
}

}  // namespace cuda
}  // namespace cliptbp
