// Index sets of L_boun (docs/losses.md, section 2) for one ground-truth window.
#pragma once

#include <cstdint>

#include "cliptbp/common.h"

namespace cliptbp {

struct Window {
  int64_t label;  // window id (>= 1)
  int64_t js;     // first clip
  int64_t je;     // last clip
  int64_t c;      // centre: element floor((|S_w| - 1) / 2) of the sorted clips
};

CLIPTBP_HD int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

// Is clip i (with label li) in I_pos of window w?
CLIPTBP_HD bool in_pos_set(const Window& w, int64_t i, int64_t li, int64_t r) {
  if (li != w.label || i == w.c) return false;
  int64_t d = abs64(i - w.js);
  const int64_t dc = abs64(i - w.c), de = abs64(i - w.je);
  if (dc < d) d = dc;
  if (de < d) d = de;
  return d <= r;
}

// Visit I_pos of window w in increasing clip order: f(i). `labels` is the sample's row.
template <typename F>
CLIPTBP_HD void for_each_pos(const Window& w, const int64_t* labels, int64_t r, F&& f) {
  // I_pos lies within [js, js+r] u [c-r, c+r] u [je-r, je], clipped to [js, je].
  int64_t next = w.js;
  const int64_t lo[3] = {w.js, w.c - r, w.je - r};
  const int64_t hi[3] = {w.js + r, w.c + r, w.je};
  for (int s = 0; s < 3; ++s) {
    int64_t a = lo[s] > next ? lo[s] : next;
    const int64_t b = hi[s] < w.je ? hi[s] : w.je;
    for (int64_t i = a; i <= b; ++i) {
      if (in_pos_set(w, i, labels[i], r)) f(i);
    }
    if (b + 1 > next) next = b + 1;
  }
}

// Visit I_neg of window w in increasing clip order: valid background clips within r
// outside the window's ends.
template <typename F>
CLIPTBP_HD void for_each_neg(const Window& w, const int64_t* labels, int64_t T, int64_t r, F&& f) {
  const int64_t a0 = w.js - r < 0 ? 0 : w.js - r;
  for (int64_t i = a0; i < w.js; ++i) {
    if (labels[i] == 0) f(i);
  }
  const int64_t b1 = w.je + r > T - 1 ? T - 1 : w.je + r;
  for (int64_t i = w.je + 1; i <= b1; ++i) {
    if (labels[i] == 0) f(i);
  }
}

// Margin delta (docs/losses.md, section 2) of a window spanning [js, je], n valid clips.
CLIPTBP_HD double boundary_delta(const Window& w, int64_t n_valid, double margin_max,
                                 double margin_base, double margin_scale) {
  const double d = margin_base + margin_scale * static_cast<double>(w.je - w.js) /
                                     static_cast<double>(n_valid);
  return d < margin_max ? d : margin_max;
}

}  // namespace cliptbp
