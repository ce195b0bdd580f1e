// Fused CPU kernels of L_clip and L_boun (docs/losses.md, sections 1-2), forward and backward.
//
// Forward, per sample: the rows that can hold a pair of interest (the GT clips for
// negatives="cross", every valid clip for negatives="all") are cut into blocks of kRowBlock
// rows, one work item each. An item normalises its rows once, then sweeps the valid clips in
// tiles of kTileCols columns: each similarity tile is classified by label into positives
// (online log-sum-exp per row) and negative candidates (a top-k heap of 128-bit keys per
// thread of the pool, csrc/cpu/pool.h: ordered similarity bits, then the complement of the
// pair index). Nothing of size T x T is stored. A finalize step merges the per-row
// log-sum-exps in row order and the heaps (the top-k of distinct keys does not depend on how
// candidates were split among threads), so every output is bitwise independent of the thread
// count.
//
// Backward, exactly sparse: the GT x GT block of positive pairs (row-blocked, each row of the
// gradient written by one item), then the chosen negatives and the boundary terms of each
// sample in a fixed order, then the chain rule through the normalisation.
#include "losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "cliptbp/boundary.h"
#include "cliptbp/common.h"
#include "cliptbp/pairs.h"
#include "pool.h"
#include "tiles.h"

namespace cliptbp {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 32;  // rows per work item; a multiple of kRowPad
static_assert(kRowBlock % kRowPad == 0, "row block must be a multiple of the row padding");

using Key = unsigned __int128;

inline Key make_key(float s, int64_t pair) {
  return (static_cast<Key>(ordered_bits(s)) << 64) | static_cast<Key>(~static_cast<uint64_t>(pair));
}
inline Key make_key(double s, int64_t pair) {
  return (static_cast<Key>(ordered_bits(s)) << 64) | static_cast<Key>(~static_cast<uint64_t>(pair));
}
inline int64_t key_pair(Key k) { return static_cast<int64_t>(~static_cast<uint64_t>(k)); }
template <typename CT>
inline CT key_value(Key k);
template <>
inline float key_value<float>(Key k) {
  return from_ordered_bits(static_cast<uint32_t>(k >> 64));
}
template <>
inline double key_value<double>(Key k) {
  return from_ordered_bits(static_cast<uint64_t>(k >> 64));
}

// Bounded min-heap keeping the `cap` largest keys seen.
struct TopK {
  std::vector<Key> heap;
  int64_t cap = 0;

  bool full() const { return static_cast<int64_t>(heap.size()) >= cap; }
  Key min() const { return heap.front(); }
  void push(Key key) {
    if (cap <= 0) return;
    if (!full()) {
      heap.push_back(key);
      std::push_heap(heap.begin(), heap.end(), std::greater<Key>());
    } else if (key > heap.front()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Key>());
      heap.back() = key;
      std::push_heap(heap.begin(), heap.end(), std::greater<Key>());
    }
  }
};

struct SampleInfo {
  int64_t n_valid = 0;
  int64_t n_gt = 0;
  int64_t n_win = 0;
  bool nonfinite = false;
};

// Per-sample index lists, laid out at offset b * T of flat arrays (O(B * T) memory).
struct Prep {
  int64_t B = 0, T = 0;
  std::vector<int64_t> valid;    // sorted valid clip indices of each sample
  std::vector<int64_t> gt;       // sorted GT clip indices
  std::vector<Window> windows;   // windows of each sample, ordered by id
  double* inv_norm = nullptr;    // [B, T] 1 / max(||v_i||, eps); NaN for a non-finite clip
  std::vector<SampleInfo> info;

  const int64_t* valid_of(int64_t b) const { return valid.data() + b * T; }
  const int64_t* gt_of(int64_t b) const { return gt.data() + b * T; }
  const Window* windows_of(int64_t b) const { return windows.data() + b * T; }
  // Rows visited for L_clip: GT clips (negatives="cross") or all valid clips ("all").
  const int64_t* rows_of(int64_t b, int negatives) const {
    return negatives == kNegativesAll ? valid_of(b) : gt_of(b);
  }
  int64_t n_rows(int64_t b, int negatives) const {
    return negatives == kNegativesAll ? info[b].n_valid : info[b].n_gt;
  }
};

// out[d * stride] = v_i[d] * inv for d < D, in the compute type.
template <typename CT>
void load_row(const EmbView& e, int64_t b, int64_t i, double inv, CT* out, int64_t stride) {
  const int64_t base = e.offset(b, i);
  const int64_t D = e.D, sd = e.sd;
  switch (e.dtype) {
    case kFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(e.data) + base;
      for (int64_t d = 0; d < D; ++d)
        out[d * stride] = static_cast<CT>(half_bits_to_float(p[d * sd]) * inv);
      break;
    }
    case kBFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(e.data) + base;
      for (int64_t d = 0; d < D; ++d)
        out[d * stride] = static_cast<CT>(bf16_bits_to_float(p[d * sd]) * inv);
      break;
    }
    case kFloat32: {
      const float* p = static_cast<const float*>(e.data) + base;
      for (int64_t d = 0; d < D; ++d) out[d * stride] = static_cast<CT>(p[d * sd] * inv);
      break;
    }
    default: {
      const double* p = static_cast<const double*>(e.data) + base;
      for (int64_t d = 0; d < D; ++d) out[d * stride] = static_cast<CT>(p[d * sd] * inv);
      break;
    }
  }
}

// Dot product of two rows, accumulated in double with four interleaved partial sums
// (a fixed order, so the result is reproducible).
template <typename A, typename B>
double dot(const A* a, const B* b, int64_t D) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t d = 0;
  for (; d + 4 <= D; d += 4)
    for (int l = 0; l < 4; ++l)
      acc[l] += static_cast<double>(a[d + l]) * static_cast<double>(b[d + l]);
  for (; d < D; ++d) acc[0] += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Norm of clip i of sample b; sets `finite` to false when the clip holds NaN or Inf.
double clip_norm(const EmbView& e, int64_t b, int64_t i, bool* finite) {
  if (e.dtype == kFloat32 && e.sd == 1) {
    // The common case without the staging row: dot() of the float row with itself forms the
    // same double products in the same order as dot() over the row converted to double below.
    const float* p = static_cast<const float*>(e.data) + e.offset(b, i);
    const double ss = dot(p, p, e.D);
    *finite = std::isfinite(ss);
    return std::sqrt(ss);
  }
  thread_local std::vector<double> row;
  row.resize(static_cast<size_t>(e.D));
  load_row(e, b, i, 1.0, row.data(), 1);
  if (e.dtype != kFloat64) {
    // 16- and 32-bit values squared cannot overflow a double.
    const double ss = dot(row.data(), row.data(), e.D);
    *finite = std::isfinite(ss);
    return std::sqrt(ss);
  }
  // float64: scale by the largest magnitude so that huge values do not overflow.
  double amax = 0.0;
  bool ok = true;
  for (int64_t d = 0; d < e.D; ++d) {
    const double a = std::fabs(row[d]);
    ok = ok && a <= std::numeric_limits<double>::max();  // false for NaN and Inf
    amax = a > amax ? a : amax;
  }
  *finite = ok;
  if (!ok) return NAN;
  if (amax == 0.0) return 0.0;
  const double inv_amax = 1.0 / amax;
  for (int64_t d = 0; d < e.D; ++d) row[d] *= inv_amax;
  return amax * std::sqrt(dot(row.data(), row.data(), e.D));
}

// Build the per-sample index lists (one pass over the labels; called by one thread).
void build_lists(const EmbView& e, const int64_t* labels, Prep& P) {
  const int64_t B = e.B, T = e.T;
  std::vector<std::pair<int64_t, int64_t>> by_label;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* lab = labels + b * T;
    int64_t* valid = P.valid.data() + b * T;
    int64_t* gt = P.gt.data() + b * T;
    SampleInfo& info = P.info[b];
    int64_t nv = 0, ng = 0;
    for (int64_t i = 0; i < T; ++i) {
      if (lab[i] >= 0) valid[nv++] = i;
      if (lab[i] >= 1) gt[ng++] = i;
    }
    info.n_valid = nv;
    info.n_gt = ng;
    // Windows: GT clips grouped by label (ids in any order), clips sorted within a window.
    by_label.resize(static_cast<size_t>(ng));
    for (int64_t g = 0; g < ng; ++g) by_label[g] = {lab[gt[g]], gt[g]};
    std::sort(by_label.begin(), by_label.end());
    Window* win = P.windows.data() + b * T;
    int64_t nw = 0;
    for (int64_t g = 0; g < ng;) {
      int64_t h = g;
      while (h < ng && by_label[h].first == by_label[g].first) ++h;
      Window w;
      w.label = by_label[g].first;
      w.js = by_label[g].second;
      w.je = by_label[h - 1].second;
      w.c = by_label[g + (h - g - 1) / 2].second;
      win[nw++] = w;
      g = h;
    }
    info.n_win = nw;
  }
}

// Inverse norms of clips [f0, f1) of the flattened [B, T] grid (0 for padding, NaN for a
// non-finite clip).
void compute_norms(const EmbView& e, const int64_t* labels, double* inv_norm, int64_t f0,
                   int64_t f1) {
  for (int64_t f = f0; f < f1; ++f) {
    if (labels[f] < 0) {
      inv_norm[f] = 0.0;
      continue;
    }
    bool ok = true;
    const double nrm = clip_norm(e, f / e.T, f % e.T, &ok);
    inv_norm[f] = ok ? 1.0 / std::max(nrm, kNormEps) : NAN;
  }
}

// A sample is non-finite when one of its valid clips is.
void mark_nonfinite(const EmbView& e, const int64_t* labels, Prep& P) {
  for (int64_t b = 0; b < e.B; ++b) {
    bool bad = false;
    for (int64_t i = 0; i < e.T; ++i) {
      const int64_t f = b * e.T + i;
      bad = bad || (labels[f] >= 0 && std::isnan(P.inv_norm[f]));
    }
    P.info[b].nonfinite = bad;
  }
}

void init_prep(const EmbView& e, Prep& P, double* inv_norm) {
  P.B = e.B;
  P.T = e.T;
  const size_t n = static_cast<size_t>(e.B * e.T);
  P.valid.assign(n, 0);
  P.gt.assign(n, 0);
  P.windows.assign(n, Window{});
  P.inv_norm = inv_norm;
  P.info.assign(static_cast<size_t>(e.B), SampleInfo{});
}

// The two means of L_boun for one window; counts are 0 where a set is empty.
struct WindowTerms {
  int64_t n_pos = 0, n_neg = 0;
  double s_pos = 0.0, s_neg = 0.0;  // means of s_ci over I_pos and I_neg
  bool active() const { return n_pos > 0 && n_neg > 0; }
};

template <typename CT>
WindowTerms window_terms(const EmbView& e, const int64_t* lab, const Prep& P, int64_t b,
                         const Window& w, int64_t radius, CT* uc, CT* ui) {
  const int64_t T = e.T, D = e.D;
  const double* inv = P.inv_norm + b * T;
  WindowTerms t;
  load_row(e, b, w.c, inv[w.c], uc, 1);
  double sp = 0.0, sn = 0.0;
  for_each_pos(w, lab, radius, [&](int64_t i) {
    load_row(e, b, i, inv[i], ui, 1);
    sp += dot(uc, ui, D);
    ++t.n_pos;
  });
  for_each_neg(w, lab, T, radius, [&](int64_t i) {
    load_row(e, b, i, inv[i], ui, 1);
    sn += dot(uc, ui, D);
    ++t.n_neg;
  });
  if (t.n_pos > 0) t.s_pos = sp / static_cast<double>(t.n_pos);
  if (t.n_neg > 0) t.s_neg = sn / static_cast<double>(t.n_neg);
  return t;
}

struct Item {
  int64_t b;
  int64_t r0;
};

// Per-thread scratch buffers of one row block and one column tile.
template <typename CT>
struct Scratch {
  std::vector<CT> Ur, UcT, Uc, S, C, GU, a, c;
  explicit Scratch(int64_t D)
      : Ur(static_cast<size_t>(kRowBlock * D), CT(0)),
        UcT(static_cast<size_t>(D * kTileCols), CT(0)),
        Uc(static_cast<size_t>(kTileCols * D), CT(0)),
        S(static_cast<size_t>(kRowBlock * kTileCols), CT(0)),
        C(static_cast<size_t>(kRowBlock * kTileCols), CT(0)),
        GU(static_cast<size_t>(kRowBlock * D), CT(0)),
        a(static_cast<size_t>(std::max<int64_t>(D, 1)), CT(0)),
        c(static_cast<size_t>(std::max<int64_t>(D, 1)), CT(0)) {}

  // Normalised rows idx[0..n) into Ur; rows n..pad are zero. Returns the padded row count.
  int64_t load_rows(const EmbView& e, const Prep& P, int64_t b, const int64_t* idx, int64_t n) {
    const int64_t D = e.D;
    const double* inv = P.inv_norm + b * e.T;
    for (int64_t r = 0; r < n; ++r) load_row(e, b, idx[r], inv[idx[r]], Ur.data() + r * D, 1);
    const int64_t padded = (n + kRowPad - 1) / kRowPad * kRowPad;
    std::fill(Ur.begin() + n * D, Ur.begin() + padded * D, CT(0));
    return padded;
  }
  // Column tile idx[0..n) into UcT (transposed) and, if `rowmajor`, into Uc.
  void load_cols(const EmbView& e, const Prep& P, int64_t b, const int64_t* idx, int n,
                 bool rowmajor) {
    const int64_t D = e.D;
    const double* inv = P.inv_norm + b * e.T;
    for (int c = 0; c < n; ++c) {
      load_row(e, b, idx[c], inv[idx[c]], UcT.data() + c, kTileCols);
      if (rowmajor) load_row(e, b, idx[c], inv[idx[c]], Uc.data() + c * D, 1);
    }
    for (int c = n; c < kTileCols; ++c)
      for (int64_t d = 0; d < D; ++d) UcT[d * kTileCols + c] = CT(0);
  }
};

// Scratch of one work-sharing slot (pool.h), created by the first chunk the slot runs.
template <typename CT>
Scratch<CT>& slot_scratch(std::vector<std::unique_ptr<Scratch<CT>>>& scratch, int slot,
                          int64_t D) {
  if (!scratch[slot]) scratch[slot].reset(new Scratch<CT>(D));
  return *scratch[slot];
}

// Rows per chunk of the row-wise passes (norms, zeroing, chain rule): about kRowWork values.
constexpr int64_t kRowWork = 16384;
inline int64_t row_grain(int64_t D) { return std::max<int64_t>(1, kRowWork / std::max<int64_t>(D, 1)); }
constexpr int64_t kWindowsPerChunk = 4;

// The negative candidates one slot has kept for sample `b` since its last flush.
struct SlotTopK {
  TopK heap;
  int64_t b = -1;
};

template <typename CT>
void forward_impl(const EmbView& e, const int64_t* labels, const LossOptions& opt,
                  const ForwardOutputs& out, int threads) {
  const int64_t B = e.B, T = e.T, D = e.D;
  const int64_t keff = std::max<int64_t>(0, std::min(opt.k, out.kcap));
  Prep P;
  init_prep(e, P, out.inv_norm);
  build_lists(e, labels, P);
  parallel_for(B * T, row_grain(D), threads, [&](int64_t f0, int64_t f1, int) {
    compute_norms(e, labels, P.inv_norm, f0, f1);
  });
  mark_nonfinite(e, labels, P);

  std::vector<Item> items;
  if (opt.want_clip) {
    for (int64_t b = 0; b < B; ++b) {
      if (P.info[b].nonfinite) continue;
      for (int64_t r0 = 0; r0 < P.n_rows(b, opt.negatives); r0 += kRowBlock)
        items.push_back({b, r0});
    }
  }
  std::vector<std::pair<int64_t, int64_t>> windows;  // (b, w) of every window
  if (opt.want_boun) {
    for (int64_t b = 0; b < B; ++b)
      if (!P.info[b].nonfinite)
        for (int64_t w = 0; w < P.info[b].n_win; ++w) windows.push_back({b, w});
  }
  std::vector<OnlineLSE> row_lse(static_cast<size_t>(B * T));
  std::vector<std::vector<Key>> sample_topk(static_cast<size_t>(B));
  std::vector<WindowTerms> terms(static_cast<size_t>(B * T));
  std::vector<std::unique_ptr<Scratch<CT>>> scratch(static_cast<size_t>(threads));
  std::vector<SlotTopK> heaps(static_cast<size_t>(threads));
  for (SlotTopK& h : heaps) h.heap.cap = keff;
  const double inv_tau = 1.0 / opt.tau;

  // Merge a slot's candidates into its sample's top-k (the top-k of distinct keys does not
  // depend on the order of the merges).
  std::mutex merge_m;
  auto flush = [&](SlotTopK& h) {
    if (h.b >= 0 && !h.heap.heap.empty()) {
      std::lock_guard<std::mutex> g(merge_m);
      TopK glob;
      glob.cap = keff;
      glob.heap.swap(sample_topk[h.b]);
      for (Key k : h.heap.heap) glob.push(k);
      glob.heap.swap(sample_topk[h.b]);
    }
    h.heap.heap.clear();
  };

  // One row block of L_clip: similarities of its rows against every valid clip, in tiles.
  auto row_block = [&](const Item& item, Scratch<CT>& sc, SlotTopK& h) {
    const int64_t b = item.b, r0 = item.r0;
    if (b != h.b) {
      flush(h);
      h.b = b;
    }
    TopK& heap = h.heap;
    const int64_t* lab = labels + b * T;
    const int64_t* rows = P.rows_of(b, opt.negatives) + r0;
    const int64_t nr = std::min(kRowBlock, P.n_rows(b, opt.negatives) - r0);
    const int64_t nv = P.info[b].n_valid;
    const int64_t* valid = P.valid_of(b);
    const bool all = opt.negatives == kNegativesAll;
    const int64_t padded = sc.load_rows(e, P, b, rows, nr);
    OnlineLSE lse[kRowBlock];
    // With negatives="all" the rows are the valid clips themselves and only j > i is
    // needed: start at the column after the block's first row.
    const int64_t c_begin = all ? r0 + 1 : 0;
    for (int64_t cs = c_begin; cs < nv; cs += kTileCols) {
      const int nc = static_cast<int>(std::min<int64_t>(kTileCols, nv - cs));
      sc.load_cols(e, P, b, valid + cs, nc, false);
      sim_tile(sc.Ur.data(), D, padded, sc.UcT.data(), D, sc.S.data());
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = rows[r];
        const int64_t li = lab[i];
        const CT* srow = sc.S.data() + r * kTileCols;
        for (int c = 0; c < nc; ++c) {
          const int64_t j = valid[cs + c];
          const int64_t lj = lab[j];
          // Each unordered pair once: from the row of its smaller clip when both are rows.
          if (j == i || (j < i && (all || lj >= 1))) continue;
          const int cls = classify_pair(li, lj, opt.positives, opt.negatives);
          const CT s = srow[c];
          if (cls == kPairPositive) {
            lse[r].add(static_cast<double>(s) * inv_tau);
          } else if (cls == kPairNegative && keff > 0) {
            if (heap.full() && s < key_value<CT>(heap.min())) continue;
            heap.push(make_key(s, pair_index(i, j, T)));
          }
        }
      }
    }
    for (int64_t r = 0; r < nr; ++r) row_lse[b * T + r0 + r] = lse[r];
  };

  // One job for the row blocks of L_clip, then the boundary sums around each window's
  // centre in groups of kWindowsPerChunk: both need only the norms and the index lists.
  const int64_t n_items = static_cast<int64_t>(items.size());
  const int64_t n_windows = static_cast<int64_t>(windows.size());
  const int64_t n_groups = (n_windows + kWindowsPerChunk - 1) / kWindowsPerChunk;
  parallel_for(n_items + n_groups, 1, threads, [&](int64_t u0, int64_t u1, int slot) {
    Scratch<CT>& sc = slot_scratch(scratch, slot, D);
    for (int64_t u = u0; u < u1; ++u) {
      if (u < n_items) {
        row_block(items[u], sc, heaps[slot]);
        continue;
      }
      const int64_t w0 = (u - n_items) * kWindowsPerChunk;
      for (int64_t f = w0; f < std::min(n_windows, w0 + kWindowsPerChunk); ++f) {
        const int64_t b = windows[f].first, w = windows[f].second;
        terms[b * T + w] = window_terms(e, labels + b * T, P, b, P.windows_of(b)[w],
                                        opt.radius, sc.a.data(), sc.c.data());
      }
    }
  });
  for (SlotTopK& h : heaps) flush(h);

  // Finalize per sample.
  parallel_for(B, 1, threads, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      const SampleInfo& info = P.info[b];
      int64_t* pairs = out.pairs + b * out.kcap;
      std::fill(pairs, pairs + out.kcap, int64_t(-1));
      out.loss_clip[b] = 0.0;
      out.has_clip[b] = 0;
      out.lse_pos[b] = 0.0;
      out.neg_sum[b] = 0.0;
      out.loss_boun[b] = 0.0;
      out.has_boun[b] = 0;
      if (info.nonfinite) {
        if (opt.want_clip) {
          out.loss_clip[b] = NAN;
          out.has_clip[b] = 1;
        }
        if (opt.want_boun) {
          out.loss_boun[b] = NAN;
          out.has_boun[b] = 1;
        }
        continue;
      }
      if (opt.want_clip) {
        OnlineLSE total;
        const int64_t nr = P.n_rows(b, opt.negatives);
        for (int64_t r = 0; r < nr; ++r) total.merge(row_lse[b * T + r]);
        std::vector<Key>& keys = sample_topk[b];
        std::sort(keys.begin(), keys.end(), std::greater<Key>());
        for (size_t n = 0; n < keys.size(); ++n) pairs[n] = key_pair(keys[n]);
        if (!total.empty()) {
          // l = log(1 + sum_n exp(z_n - lse_P)) = softplus(lse_N - lse_P), with lse_N the
          // log-sum-exp of the chosen negatives: precise when l is tiny (the log1p form of
          // docs/losses.md) and finite when a negative lies hundreds of tau above the positives.
          const double lse = total.value();
          double l = 0.0;
          if (!keys.empty()) {
            const double m = static_cast<double>(key_value<CT>(keys.front())) * inv_tau;
            double sn = 0.0;
            for (Key k : keys) sn += std::exp(static_cast<double>(key_value<CT>(k)) * inv_tau - m);
            const double x = m + std::log(sn) - lse;
            l = x > 0.0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
          }
          out.lse_pos[b] = lse;
          out.neg_sum[b] = l;
          out.loss_clip[b] = l;
          out.has_clip[b] = 1;
        }
      }
      if (opt.want_boun) {
        const Window* win = P.windows_of(b);
        double sum = 0.0;
        int64_t cnt = 0;
        for (int64_t w = 0; w < info.n_win; ++w) {
          const WindowTerms& t = terms[b * T + w];
          if (!t.active()) continue;
          const double delta = boundary_delta(win[w], info.n_valid, opt.margin_max,
                                              opt.margin_base, opt.margin_scale);
          sum += std::max(0.0, t.s_neg - t.s_pos + delta);
          ++cnt;
        }
        if (cnt > 0) {
          out.loss_boun[b] = sum / static_cast<double>(cnt);
          out.has_boun[b] = 1;
        }
      }
    }
  });
}

template <typename CT>
void backward_impl(const EmbView& e, const int64_t* labels, const LossOptions& opt,
                   const BackwardInputs& in, CT* grad, int threads) {
  const int64_t B = e.B, T = e.T, D = e.D;
  Prep P;
  init_prep(e, P, const_cast<double*>(in.inv_norm));  // read only in the backward
  build_lists(e, labels, P);
  mark_nonfinite(e, labels, P);
  std::vector<Item> items;
  for (int64_t b = 0; b < B; ++b) {
    const bool pos_grad = opt.want_clip && in.has_clip[b] && !P.info[b].nonfinite &&
                          in.grad_clip[b] != 0.0 && in.neg_sum[b] > 0.0 && P.info[b].n_gt >= 2;
    if (!pos_grad) continue;
    for (int64_t r0 = 0; r0 < P.info[b].n_gt; r0 += kRowBlock) items.push_back({b, r0});
  }
  const double inv_tau = 1.0 / opt.tau;
  const int64_t rg = row_grain(D);
  std::vector<std::unique_ptr<Scratch<CT>>> scratch(static_cast<size_t>(threads));
  // Rows of `grad` that passes 1 and 2 add to (1 byte each: each row is written by one chunk
  // at a time). Pass 3 visits only these: every other row is still exactly zero.
  std::vector<uint8_t> touched(static_cast<size_t>(B * T), 0);

  parallel_for(B * T, rg, threads, [&](int64_t r0, int64_t r1, int) {
    std::fill(grad + r0 * D, grad + r1 * D, CT(0));
  });

  // 1. Positive pairs: row i of the GT x GT block, d l / d u_i = sum_j c_ij u_j.
  parallel_for(static_cast<int64_t>(items.size()), 1, threads, [&](int64_t i0, int64_t i1,
                                                                   int slot) {
    Scratch<CT>& sc = slot_scratch(scratch, slot, D);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = items[it].b, r0 = items[it].r0;
      const int64_t* lab = labels + b * T;
      const int64_t* gt = P.gt_of(b);
      const int64_t ng = P.info[b].n_gt;
      const int64_t nr = std::min(kRowBlock, ng - r0);
      // d l / d z_p = -(A / (1 + A)) softmax_P(z_p), with A / (1 + A) = 1 - exp(-l)
      const double l = in.neg_sum[b], lse = in.lse_pos[b];
      const double scale = in.grad_clip[b] * std::expm1(-l) * inv_tau;
      const int64_t padded = sc.load_rows(e, P, b, gt + r0, nr);
      std::fill(sc.GU.begin(), sc.GU.begin() + nr * D, CT(0));
      for (int64_t cs = 0; cs < ng; cs += kTileCols) {
        const int nc = static_cast<int>(std::min<int64_t>(kTileCols, ng - cs));
        sc.load_cols(e, P, b, gt + cs, nc, true);
        sim_tile(sc.Ur.data(), D, padded, sc.UcT.data(), D, sc.S.data());
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = gt[r0 + r];
          for (int c = 0; c < kTileCols; ++c) {
            CT coef = CT(0);
            if (c < nc) {
              const int64_t j = gt[cs + c];
              if (j != i && classify_pair(lab[i], lab[j], opt.positives, opt.negatives) ==
                                kPairPositive) {
                const double z = static_cast<double>(sc.S[r * kTileCols + c]) * inv_tau;
                coef = static_cast<CT>(scale * std::exp(z - lse));
              }
            }
            sc.C[r * kTileCols + c] = coef;
          }
        }
        acc_tile(sc.C.data(), nr, nc, sc.Uc.data(), D, D, sc.GU.data(), D);
      }
      for (int64_t r = 0; r < nr; ++r) {
        CT* g = grad + (b * T + gt[r0 + r]) * D;
        const CT* src = sc.GU.data() + r * D;
        for (int64_t d = 0; d < D; ++d) g[d] += src[d];
        touched[b * T + gt[r0 + r]] = 1;
      }
    }
  });

  // 2. Chosen negatives and boundary terms, per sample in a fixed order.
  parallel_for(B, 1, threads, [&](int64_t b0, int64_t b1, int slot) {
    Scratch<CT>& sc = slot_scratch(scratch, slot, D);
    CT* ua = sc.a.data();
    CT* ub = sc.c.data();
    for (int64_t b = b0; b < b1; ++b) {
      if (P.info[b].nonfinite) continue;
      const int64_t* lab = labels + b * T;
      const double* inv = P.inv_norm + b * T;
      CT* gb = grad + b * T * D;
      // s_ij = <u_i, u_j>: d/du_i = coef * u_j, d/du_j = coef * u_i, with u_i in ua, u_j in ub.
      auto apply = [&](int64_t i, int64_t j, double coef) {
        CT* gi = gb + i * D;
        CT* gj = gb + j * D;
        const CT cf = static_cast<CT>(coef);
        for (int64_t d = 0; d < D; ++d) {
          gi[d] += cf * ub[d];
          gj[d] += cf * ua[d];
        }
        touched[b * T + i] = 1;
        touched[b * T + j] = 1;
      };
      auto load_apply = [&](int64_t i, int64_t j, double coef) {
        load_row(e, b, i, inv[i], ua, 1);
        load_row(e, b, j, inv[j], ub, 1);
        apply(i, j, coef);
      };
      if (opt.want_clip && in.has_clip[b] && in.grad_clip[b] != 0.0) {
        // d l / d z_n = exp(z_n - lse_P) / (1 + A) = exp(z_n - lse_P - l)
        const double l = in.neg_sum[b], lse = in.lse_pos[b];
        const double scale = in.grad_clip[b] * inv_tau;
        const int64_t* pairs = in.pairs + b * in.kcap;
        for (int64_t n = 0; n < in.kcap && pairs[n] >= 0; ++n) {
          const int64_t i = pairs[n] / T, j = pairs[n] % T;
          load_row(e, b, i, inv[i], ua, 1);
          load_row(e, b, j, inv[j], ub, 1);
          apply(i, j, scale * std::exp(dot(ua, ub, D) * inv_tau - lse - l));
        }
      }
      if (opt.want_boun && in.has_boun[b] && in.grad_boun[b] != 0.0) {
        const Window* win = P.windows_of(b);
        const int64_t nw = P.info[b].n_win;
        std::vector<WindowTerms> t(static_cast<size_t>(nw));
        int64_t cnt = 0;
        for (int64_t w = 0; w < nw; ++w) {
          t[w] = window_terms(e, lab, P, b, win[w], opt.radius, ua, ub);
          cnt += t[w].active() ? 1 : 0;
        }
        const double g = in.grad_boun[b] / static_cast<double>(std::max<int64_t>(cnt, 1));
        for (int64_t w = 0; w < nw; ++w) {
          if (!t[w].active()) continue;
          const double delta = boundary_delta(win[w], P.info[b].n_valid, opt.margin_max,
                                              opt.margin_base, opt.margin_scale);
          if (!(t[w].s_neg - t[w].s_pos + delta > 0.0)) continue;  // gradient 0 at the kink
          const double cp = -g / static_cast<double>(t[w].n_pos);
          const double cn = g / static_cast<double>(t[w].n_neg);
          for_each_pos(win[w], lab, opt.radius, [&](int64_t i) { load_apply(win[w].c, i, cp); });
          for_each_neg(win[w], lab, T, opt.radius,
                       [&](int64_t i) { load_apply(win[w].c, i, cn); });
        }
      }
    }
  });

  // 3. Chain rule through u = v / max(||v||, eps).
  parallel_for(B * T, rg, threads, [&](int64_t f0, int64_t f1, int slot) {
    Scratch<CT>& sc = slot_scratch(scratch, slot, D);
    CT* uw = sc.a.data();
    for (int64_t f = f0; f < f1; ++f) {
      const int64_t b = f / T, i = f % T;
      // Rows no pass added to (padding, untouched clips, non-finite samples) stay zero. A
      // touched row whose sum is exactly zero comes out as +0, as it went in.
      if (!touched[f] || labels[f] < 0) continue;
      CT* g = grad + f * D;
      const double inv = P.inv_norm[f];
      if (inv < 1.0 / kNormEps) {
        load_row(e, b, i, inv, uw, 1);
        const double proj = dot(uw, g, D);
        for (int64_t d = 0; d < D; ++d)
          g[d] = static_cast<CT>((static_cast<double>(g[d]) - static_cast<double>(uw[d]) * proj) *
                                 inv);
      } else {
        for (int64_t d = 0; d < D; ++d) g[d] = static_cast<CT>(static_cast<double>(g[d]) * inv);
      }
    }
  });
}

// Threads a call may use: `num_threads` (torch.get_num_threads() on the Python side), at
// least 1, at most kMaxThreads.
constexpr int kMaxThreads = 256;
inline int clamp_threads(int num_threads) { return std::min(std::max(num_threads, 1), kMaxThreads); }

}  // namespace

void forward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
             const ForwardOutputs& out, int num_threads) {
  const int threads = clamp_threads(num_threads);
  if (emb.dtype == kFloat64)
    forward_impl<double>(emb, labels, opt, out, threads);
  else
    forward_impl<float>(emb, labels, opt, out, threads);
}

void backward(const EmbView& emb, const int64_t* labels, const LossOptions& opt,
              const BackwardInputs& in, void* grad, int num_threads) {
  const int threads = clamp_threads(num_threads);
  if (emb.dtype == kFloat64)
    backward_impl<double>(emb, labels, opt, in, static_cast<double*>(grad), threads);
  else
    backward_impl<float>(emb, labels, opt, in, static_cast<float*>(grad), threads);
}

const char* simd_level() { return tile_isa(); }

}  // namespace cpu
}  // namespace cliptbp
