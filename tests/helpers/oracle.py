"""A deliberately naive float64 evaluation of docs/losses.md, sections 1 and 2.

Plain Python loops over samples, pairs and windows, numpy only for storage. It shares no code
with the backends and is meant for small inputs (T up to about 40).
"""

import math

import numpy as np


def _as_numpy(x, dtype):
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        if dtype is np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _unit_vectors(emb_b, valid):
    """{clip: unit vector as a list of floats}, or None when a valid clip is non-finite."""
    units = {}
    for i in valid:
        v = [float(a) for a in emb_b[i]]
        if not all(math.isfinite(a) for a in v):
            return None
        norm = math.sqrt(math.fsum(a * a for a in v))
        denom = max(norm, 1e-8)
        units[i] = [a / denom for a in v]
    return units


def _dot(a, b):
    return math.fsum(x * y for x, y in zip(a, b))


def _log_sum_exp(values):
    top = max(values)
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def _pair_sets(emb_b, lab, positives, negatives):
    """(positive similarities, ranked negative candidates (s, i, j)) or None if non-finite."""
    valid = [i for i in range(len(lab)) if lab[i] >= 0]
    units = _unit_vectors(emb_b, valid)
    if units is None:
        return None
    pos, cand = [], []
    for a in range(len(valid)):
        for c in range(a + 1, len(valid)):
            i, j = valid[a], valid[c]
            s = _dot(units[i], units[j])
            in_gt_i, in_gt_j = lab[i] >= 1, lab[j] >= 1
            if positives == "any":
                is_pos = in_gt_i and in_gt_j
            elif positives == "same":
                is_pos = in_gt_i and lab[i] == lab[j]
            else:
                raise ValueError(positives)
            if is_pos:
                pos.append(s)
                continue
            if negatives == "cross":
                is_neg = in_gt_i or in_gt_j
            elif negatives == "all":
                is_neg = True
            else:
                raise ValueError(negatives)
            if is_neg:
                cand.append((s, i, j))
    cand.sort(key=lambda t: (-t[0], t[1], t[2]))
    return pos, cand


def oracle_candidates(emb, labels, positives="any", negatives="cross"):
    """Per sample, every negative candidate as (s, i, j), best first (None if non-finite)."""
    emb = _as_numpy(emb, np.float64)
    labels = _as_numpy(labels, np.int64)
    out = []
    for b in range(labels.shape[0]):
        sets = _pair_sets(emb[b], [int(a) for a in labels[b]], positives, negatives)
        out.append(None if sets is None else sets[1])
    return out


def oracle_clip(emb, labels, k, tau, positives="any", negatives="cross"):
    """Per-sample L_clip and the chosen hard negatives.

    Returns ``(losses, chosen)``: ``losses[b]`` is a float (NaN for a sample with a
    non-finite valid clip) or None (no positive pair); ``chosen[b]`` is the ranked list of
    the ``(i, j)`` of the hard negatives (None for a non-finite sample).
    """
    emb = _as_numpy(emb, np.float64)
    labels = _as_numpy(labels, np.int64)
    losses, chosen = [], []
    for b in range(labels.shape[0]):
        sets = _pair_sets(emb[b], [int(a) for a in labels[b]], positives, negatives)
        if sets is None:
            losses.append(float("nan"))
            chosen.append(None)
            continue
        pos, cand = sets
        hard = cand[:k]
        chosen.append([(i, j) for _, i, j in hard])
        if not pos:
            losses.append(None)
            continue
        lse_pos = _log_sum_exp([s / tau for s in pos])
        total = math.fsum(math.exp(s / tau - lse_pos) for s, _, _ in hard)
        losses.append(math.log1p(total))
    return losses, chosen


def oracle_boundary(emb, labels, radius=1, margin_max=0.3, margin_base=0.1, margin_scale=0.1):
    """Per-sample L_boun: a float, NaN for a non-finite sample, or None (no usable window)."""
    emb = _as_numpy(emb, np.float64)
    labels = _as_numpy(labels, np.int64)
    losses = []
    for b in range(labels.shape[0]):
        lab = [int(a) for a in labels[b]]
        T = len(lab)
        valid = [i for i in range(T) if lab[i] >= 0]
        units = _unit_vectors(emb[b], valid)
        if units is None:
            losses.append(float("nan"))
            continue
        n_valid = len(valid)
        window_ids = []
        for i in valid:
            if lab[i] >= 1 and lab[i] not in window_ids:
                window_ids.append(lab[i])
        per_window = []
        for w in window_ids:
            members = sorted(i for i in valid if lab[i] == w)
            js, je = members[0], members[-1]
            c = members[(len(members) - 1) // 2]
            i_pos = [
                i
                for i in members
                if i != c and min(abs(i - js), abs(i - c), abs(i - je)) <= radius
            ]
            i_neg = []
            for i in valid:
                if lab[i] != 0:
                    continue
                if js - radius <= i < js or je < i <= je + radius:
                    i_neg.append(i)
            if not i_pos or not i_neg:
                continue
            s_pos = math.fsum(_dot(units[c], units[i]) for i in i_pos) / len(i_pos)
            s_neg = math.fsum(_dot(units[c], units[i]) for i in i_neg) / len(i_neg)
            delta = min(margin_max, margin_base + margin_scale * (je - js) / n_valid)
            per_window.append(max(0.0, s_neg - s_pos + delta))
        if not per_window:
            losses.append(None)
        else:
            losses.append(math.fsum(per_window) / len(per_window))
    return losses
