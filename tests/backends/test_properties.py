"""Property-based tests: every fused backend against the float64 evaluation of docs/losses.md on
arbitrary shapes, labels, magnitudes and options (hypothesis).

What is drawn: B 1..4, T 1..320 (mostly <= 16), D 1..128 (mostly <= 8); labels with padding
anywhere (also values below -1, which count as padding with ``check_labels=False``), sparse
and unordered window ids up to 2^31 - 1, windows touching the video edges, non-contiguous
windows, one-clip windows, samples without GT and samples all in GT, int8..int64 labels;
embeddings with exact and near duplicates, clustered clips, integer-valued clips (exact ties),
zero rows and rows with norm below 1e-8, and per-sample scales 1e-30 .. 1e30 (float32 and
float64); every option (k 0..300, tau, positives, negatives, radius 1..4, margins) and
reduction.

The float64 evaluation is the PyTorch reference run in float64 on the same values (for tiny
inputs it is itself checked against the loop oracle of tests/helpers/oracle.py). The float32
*reference* is never used as the yardstick: for float32 inputs whose squares overflow or
underflow float32 it is not meant to be accurate.

Where docs/losses.md lets a backend take either side, the comparison is skipped and counted:

* ``rank_ambiguous``: the float64 gap between hard-negative ranks k and k+1 is <= 1e-6, so
  the chosen set may differ from the reference's. The backend's own set (from
  ``hard_negative_pairs``) must then be a legal top-k (every chosen pair within 1e-6 of every
  unchosen candidate), and its L_clip value and gradient are compared against the float64
  evaluation *with that set*.
* ``hinge_kink``: some window of the sample has ``|s_neg - s_pos + delta| < 1e-6``; its
  L_boun gradient may come from either side and is not compared (the value is).
* ``norm_kink``: a valid clip's norm is within a relative 1e-6 of the 1e-8 floor; that
  sample's gradients are not compared.

Profiles (tests/conftest.py): "ci" (default; bounded, derandomized) and "long"
(``HYPOTHESIS_PROFILE=long``). Every property counts the examples it ran to the end without a
mismatch, and the skips above; the counts are printed in the terminal summary and written to
``.hypothesis/property_counts-<profile>.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, note, settings
from hypothesis import strategies as st

import cliptbp_kernels as ck
import oracle
from paths import REPO

FUSED = [b for b in ck.available_backends("cpu") if b != "reference"]
pytestmark = pytest.mark.skipif(not FUSED, reason="no fused backend built")

MAX_ID = 2**31 - 1
NORM_EPS = 1e-8
GAP = 1e-6  # docs/losses.md: ranking ambiguity and hinge kink threshold
RTOL, ATOL = 1e-4, 1e-6  # docs/losses.md: float32 / float64 tolerance vs the float64 evaluation
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8)
# Smallest tau drawn. float32: an error of ~1e-7 in s becomes ~1e-7 / tau in s / tau, so the
# 1e-4 tolerance can be demanded down to tau ~ 0.003; float64 goes down to 1e-4, where a hard
# negative can lie 2 / tau = 20,000 above lse_P (exp() alone would overflow past ~709; see
# test_clip_loss_finite_with_small_tau_and_far_hard_negative).
TAU_MIN = {torch.float32: 3e-3, torch.float64: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-3}

# --------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------

COUNTS: dict = defaultdict(lambda: defaultdict(int))
_T0 = time.time()


def _count(test, **inc):
    c = COUNTS[test]
    for key, val in inc.items():
        if key.startswith("max_"):
            c[key] = max(c[key], int(val))
        else:
            c[key] += int(val)


def _profile():
    return os.environ.get("HYPOTHESIS_PROFILE", "ci")


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    if not COUNTS:
        return
    out = REPO / ".hypothesis"
    out.mkdir(exist_ok=True)
    data = {
        "profile": _profile(),
        "backends": FUSED,
        "seconds": round(time.time() - _T0, 1),
        "tests": {name: dict(c) for name, c in sorted(COUNTS.items())},
    }
    (out / f"property_counts-{_profile()}.json").write_text(json.dumps(data, indent=1))


def summary_lines():
    """Lines for the terminal summary (tests/conftest.py prints them)."""
    lines = [f"property tests, profile {_profile()!r}, backends {FUSED}:"]
    total = 0
    for name, c in sorted(COUNTS.items()):
        total += c["examples"]
        extra = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "examples")
        lines.append(f"  {name}: {c['examples']} examples without a mismatch ({extra})")
    lines.append(f"  total: {total} examples")
    return lines


# The interpreted Triton kernels are about a hundred times slower than the CPU ones: a property
# runs for them on one example in SLOW_SHARE of its budget (the examples are drawn for that
# backend, none generated and thrown away), with T up to SLOW_MAX_T. Every tiling path of the
# interpreter's block sizes is crossed there (several row tiles past T = 64); the GPU tilings
# and T > 256 have their own tests (test_triton_gpu_sizes.py, test_fused_backends.py).
# CLIPTBP_TRITON_PROPERTY_SHARE=1 gives Triton the full budget.
SLOW_SHARE = {"triton": int(os.environ.get("CLIPTBP_TRITON_PROPERTY_SHARE", "20"))}
SLOW_MAX_T = 96


def budget(backend, factor):
    """Hypothesis settings of one property on one backend: its share ``factor`` of the
    profile's max_examples (at least 5), divided by SLOW_SHARE for the interpreted backends
    (at least 3)."""
    n = max(5, int(settings.default.max_examples * factor))
    share = SLOW_SHARE.get(backend, 1)
    if share > 1:
        n = max(3, n // share)
    return settings(max_examples=n)


def max_T(backend, default):
    """The largest T a property draws on this backend."""
    return min(default, SLOW_MAX_T) if backend in SLOW_SHARE else default


# --------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------


class Case(NamedTuple):
    emb: torch.Tensor  # [B, T, D]
    labels: torch.Tensor  # [B, T]
    opts: dict  # loss options, check_labels included
    scale_exp: list  # per-sample decimal exponent of the scale applied


def _sized(draw, small, medium, large):
    bucket = draw(st.integers(0, 9))
    hi = small if bucket < 6 else medium if bucket < 9 else large
    return draw(st.integers(1, hi))


@st.composite
def label_row(draw, T, ids, pad_values):
    kind = draw(st.sampled_from(["segments", "windows", "segments", "elementwise", "windows",
                                 "one_clip", "no_gt", "all_gt", "all_gt_mixed"]))
    if kind == "elementwise" and T > 48:
        kind = "windows"
    if kind == "elementwise":
        return draw(st.lists(st.sampled_from([0, -1, 0] + ids + pad_values[1:]),
                             min_size=T, max_size=T))
    row = [0] * T
    if kind == "windows":
        for _ in range(draw(st.integers(0, 4))):
            start = draw(st.integers(0, T - 1))
            length = draw(st.integers(1, T - start))
            step = draw(st.sampled_from([1, 1, 2, 3]))
            wid = draw(st.sampled_from(ids))
            for i in range(start, start + length, step):
                row[i] = wid
    elif kind == "segments":  # contiguous windows with background around them
        i = draw(st.integers(0, 3))
        while i < T and draw(st.integers(0, 4)) > 0:
            length = draw(st.integers(1, 10))
            wid = draw(st.sampled_from(ids))
            row[i:i + length] = [wid] * len(row[i:i + length])
            i += length + draw(st.integers(1, 4))
    elif kind == "one_clip":
        step = draw(st.integers(1, 5))
        base = draw(st.one_of(st.just(1), st.integers(1, MAX_ID - T)))
        ids_here = [base + n for n in range(len(range(0, T, step)))]
        if draw(st.booleans()):
            ids_here.reverse()
        for n, i in enumerate(range(draw(st.integers(0, step - 1)) % T, T, step)):
            row[i] = ids_here[n]
    elif kind == "all_gt":
        row = [ids[0]] * T
    elif kind == "all_gt_mixed":
        cut = draw(st.integers(0, T))
        row = [ids[0]] * cut + [ids[-1]] * (T - cut)
    # padding: segments anywhere, and strided
    for _ in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, T - 1))
        length = draw(st.integers(1, max(1, min(T - start, 1 + T // 3))))
        pad = draw(st.sampled_from(pad_values))
        row[start:start + length] = [pad] * length
    if draw(st.integers(0, 5)) == 0:
        step = draw(st.integers(2, 6))
        for i in range(draw(st.integers(0, step - 1)), T, step):
            row[i] = -1
    return row


@st.composite
def label_batch(draw, B, T, low_labels=True):
    ids = draw(st.lists(st.one_of(st.integers(1, 6), st.integers(1, MAX_ID), st.just(MAX_ID)),
                        min_size=1, max_size=5, unique=True))
    pad_values = [-1]
    if low_labels and draw(st.integers(0, 3)) == 0:
        pad_values += draw(st.lists(st.sampled_from([-2, -7, -128, -(2**31), -(2**62)]),
                                    min_size=1, max_size=3, unique=True))
    rows = [draw(label_row(T, ids, pad_values)) for _ in range(B)]
    labels = torch.tensor(rows, dtype=torch.int64)
    lo, hi = int(labels.min()), int(labels.max())
    fits = [d for d in INT_DTYPES
            if torch.iinfo(d).min <= lo and hi <= torch.iinfo(d).max]
    labels = labels.to(draw(st.sampled_from(fits)))
    return labels


@st.composite
def embeddings(draw, B, T, D, dtype, max_exp=30, specials=True):
    """float64 values built from a seed plus drawn structure, then cast to ``dtype``.
    Returns (emb, per-sample scale exponents)."""
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["randn", "clustered", "integers"]))
    if kind == "randn":
        x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    elif kind == "clustered":  # a few directions plus small noise: many near-ties
        n_c = draw(st.integers(1, 4))
        centres = torch.randn(B, n_c, D, generator=g, dtype=torch.float64)
        pick = torch.randint(0, n_c, (B, T), generator=g)
        noise = 10.0 ** -draw(st.integers(1, 8))
        x = centres.gather(1, pick[..., None].expand(B, T, D))
        x = x + noise * torch.randn(B, T, D, generator=g, dtype=torch.float64)
    else:  # small integers: exact duplicates, exact zero rows
        x = torch.randint(-2, 3, (B, T, D), generator=g).to(torch.float64)
    if specials:
        for _ in range(draw(st.integers(0, 6))):  # duplicated and near-duplicated clips
            b, dst, src = (draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1)),
                           draw(st.integers(0, T - 1)))
            how = draw(st.sampled_from(["exact", "near", "scaled", "negated"]))
            v = x[b, src].clone()
            if how == "near":
                eps = 10.0 ** -draw(st.integers(3, 10))
                v = v + eps * v.norm() / math.sqrt(D) * torch.randn(D, generator=g,
                                                                    dtype=torch.float64)
            elif how == "scaled":
                v = v * draw(st.sampled_from([2.0, 2.5, 1e3, 1e-3]))
            elif how == "negated":
                v = -v
            x[b, dst] = v
        for _ in range(draw(st.integers(0, 3))):  # zero rows, rows below the 1e-8 norm floor
            b, t = draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1))
            if draw(st.booleans()):
                x[b, t] = 0.0
            else:
                n = x[b, t].norm()
                x[b, t] = x[b, t] / (n if n > 0 else 1.0) * 10.0 ** -draw(st.integers(9, 13))
    exps = [0] * B
    if max_exp and draw(st.integers(0, 2)) == 0:
        exps = [draw(st.one_of(st.just(0), st.integers(-max_exp, max_exp))) for _ in range(B)]
        x = x * torch.tensor([10.0 ** e for e in exps], dtype=torch.float64)[:, None, None]
    big = torch.finfo(dtype).max / 4  # finite in every dtype (16-bit: scaled clips overflow)
    return x.clamp(-big, big).to(dtype), exps


@st.composite
def options(draw, dtype):
    tau_min = TAU_MIN[dtype]
    return dict(
        k=draw(st.one_of(st.integers(0, 12), st.integers(0, 300))),
        tau=draw(st.one_of(st.just(0.07), st.sampled_from([tau_min, 0.01, 1.0, 10.0]),
                           st.floats(tau_min, 10.0))),
        positives=draw(st.sampled_from(["any", "same"])),
        negatives=draw(st.sampled_from(["cross", "all"])),
        radius=draw(st.integers(1, 4)),
        margin_max=draw(st.one_of(st.just(0.3), st.floats(-0.5, 1.0))),
        margin_base=draw(st.one_of(st.just(0.1), st.floats(-0.5, 1.0))),
        margin_scale=draw(st.one_of(st.just(0.1), st.floats(-1.0, 2.0))),
    )


@st.composite
def cases(draw, dtypes=(torch.float32, torch.float64), max_T=320, max_exp=30,
          low_labels=True):
    B = draw(st.integers(1, 4))
    T = _sized(draw, 16, 64, max_T)
    D = _sized(draw, 8, 32, 128)
    dtype = draw(st.sampled_from(dtypes))
    labels = draw(label_batch(B, T, low_labels=low_labels))
    emb, exps = draw(embeddings(B, T, D, dtype, max_exp=max_exp))
    opts = draw(options(dtype))
    opts["check_labels"] = bool(int(labels.min()) >= -1) if labels.numel() else True
    note(f"B={B} T={T} D={D} dtype={dtype} opts={opts} scale_exp={exps}")
    note(f"labels={labels.tolist()}")
    return Case(emb, labels, opts, exps)


# --------------------------------------------------------------------------------------
# float64 analysis of a case: candidate ranking, hinge kinks, which samples have a loss
# --------------------------------------------------------------------------------------

PAIR_KEYS = ("k", "positives", "negatives", "check_labels")


def _sub(opts, keys):
    return {k: opts[k] for k in keys if k in opts}


def pair_masks(labels, positives, negatives):
    lab = labels.long()
    valid, gt = lab >= 0, lab >= 1
    T = lab.shape[1]
    upper = torch.ones(T, T, dtype=torch.bool).triu(1)
    pair = upper & valid[:, :, None] & valid[:, None, :]
    if positives == "any":
        pos = pair & gt[:, :, None] & gt[:, None, :]
    else:
        pos = pair & gt[:, :, None] & (lab[:, :, None] == lab[:, None, :])
    neg = pair & ~pos
    if negatives == "cross":
        neg = neg & (gt[:, :, None] | gt[:, None, :])
    return pos, neg


class Analysis(NamedTuple):
    sim: torch.Tensor  # [B, T, T] float64
    has_clip: torch.Tensor  # [B] bool: P non-empty
    has_boun: torch.Tensor  # [B] bool: a usable window
    cand_flat: list  # per sample: candidate flat indices, best first (tie rule)
    cand_sim: list  # per sample: their float64 similarities
    rank_ambiguous: torch.Tensor  # [B] bool
    hinge_kink: torch.Tensor  # [B] bool
    norm_kink: torch.Tensor  # [B] bool
    norms: torch.Tensor  # [B, T] float64, 0 at padding
    pos: torch.Tensor  # [B, T, T] bool, positive pairs
    windows: list  # per sample: the usable windows as (c, I_pos, I_neg, delta)


def analyse(emb, labels, opts):
    B, T, _ = emb.shape
    x = emb.detach().double()
    lab = labels.long()
    valid = lab >= 0
    x = torch.where(valid[..., None], x, torch.zeros((), dtype=torch.float64))
    norms = x.norm(dim=-1)
    u = x / norms.clamp_min(NORM_EPS)[..., None]
    sim = u @ u.transpose(1, 2)
    norm_kink = (((norms - NORM_EPS).abs() <= NORM_EPS * 1e-6) & valid).any(1)
    pos, neg = pair_masks(lab, opts["positives"], opts["negatives"])
    k = opts["k"]
    cand_flat, cand_sim, amb = [], [], []
    for b in range(B):
        flat = neg[b].flatten().nonzero().squeeze(1)
        s = sim[b].flatten()[flat] + 0.0
        order = torch.sort(-s, stable=True).indices
        cand_flat.append(flat[order])
        cand_sim.append(s[order])
        n = len(flat)
        amb.append(bool(0 < k < n and float(s[order][k - 1] - s[order][k]) <= GAP))
    r = opts["radius"]
    mm, mb, ms = opts["margin_max"], opts["margin_base"], opts["margin_scale"]
    has_boun, kink, windows = [], [], []
    for b in range(B):
        row = lab[b].tolist()
        n_valid = sum(v >= 0 for v in row)
        members = {}
        for i, v in enumerate(row):
            if v >= 1:
                members.setdefault(v, []).append(i)
        usable, kinked, wins = False, False, []
        for mem in members.values():
            js, je = mem[0], mem[-1]
            c = mem[(len(mem) - 1) // 2]
            ipos = [i for i in mem if i != c and min(abs(i - js), abs(i - c), abs(i - je)) <= r]
            ineg = [i for i in list(range(max(0, js - r), js)) + list(range(je + 1,
                                                                            min(T, je + r + 1)))
                    if row[i] == 0]
            if not ipos or not ineg:
                continue
            usable = True
            delta = min(mm, mb + ms * (je - js) / n_valid)
            arg = float(sim[b, c, ineg].mean() - sim[b, c, ipos].mean()) + delta
            kinked |= abs(arg) < GAP
            wins.append((c, ipos, ineg, delta))
        has_boun.append(usable)
        kink.append(kinked)
        windows.append(wins)
    return Analysis(sim, pos.flatten(1).any(1), torch.tensor(has_boun, dtype=torch.bool),
                    cand_flat, cand_sim, torch.tensor(amb, dtype=torch.bool),
                    torch.tensor(kink, dtype=torch.bool), norm_kink, norms, pos, windows)


def similarity_level(A, pairs, opts):
    """Both losses evaluated once more in float64 from the similarity matrix, with the hard
    negatives fixed to ``pairs`` ([B, k, 2], -1 rows ignored), and their weighted gradients
    with respect to the similarities. Returns (L_clip, L_boun, dLc/dS, dLb/dS)."""
    B = A.sim.shape[0]
    S = A.sim.clone().requires_grad_(True)
    wc, wb = sample_weights(B)
    tau = opts["tau"]
    lc = [S.new_zeros(()) for _ in range(B)]
    lb = [S.new_zeros(()) for _ in range(B)]
    for b in range(B):
        if A.has_clip[b]:
            lse = torch.logsumexp(S[b][A.pos[b]] / tau, 0)
            p = pairs[b][pairs[b][:, 0] >= 0]
            if len(p):
                lc[b] = F.softplus(torch.logsumexp(S[b, p[:, 0], p[:, 1]] / tau - lse, 0))
        if A.windows[b]:
            lb[b] = torch.stack([
                torch.relu(S[b, c, ineg].mean() - S[b, c, ipos].mean() + delta)
                for c, ipos, ineg, delta in A.windows[b]]).mean()
    lc, lb = torch.stack(lc), torch.stack(lb)
    attach = 0.0 * S.sum()  # a graph also where no loss depends on S
    (dc,) = torch.autograd.grad((lc * wc).sum() + attach, S, retain_graph=True)
    (db,) = torch.autograd.grad((lb * wb).sum() + attach, S)
    return lc.detach(), lb.detach(), dc, db


def rounding_slack(A, dS, dtype):
    """Per-sample rounding allowance of a gradient: row i of d/dv is a sum over j of
    dL/dS_ij * u_j (|u_j| <= 1) divided by max(||v_i||, 1e-8), so its rounding error is a few
    units of the compute precision times G_i / max(||v_i||, 1e-8), G_i = sum_j |dL/dS_ij| +
    |dL/dS_ji|. For a clip below the 1e-8 norm floor the division amplifies it 1e8 times: where
    the exact sum cancels (so the exact row is ~0) the spec's absolute 1e-6 cannot be met, not
    even by the float32 reference."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    G = dS.abs().sum(2) + dS.abs().sum(1)
    row = 8 * eps * G / A.norms.clamp_min(NORM_EPS)
    return row.norm(dim=1)


def sample_weights(B):
    g = torch.Generator().manual_seed(7)
    return (torch.rand(B, generator=g, dtype=torch.float64) + 0.5,
            torch.rand(B, generator=g, dtype=torch.float64) + 0.5)


def run_split(backend, emb, labels, opts, reduction="none"):
    """(L_clip, L_boun, grad of sum_b wc_b L_clip_b, grad of sum_b wb_b L_boun_b)."""
    e = emb.detach().clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend=backend, reduction=reduction, **opts)
    wc, wb = sample_weights(labels.shape[0])
    if reduction != "none":
        wc, wb = torch.ones(()), torch.ones(())
    (gc,) = torch.autograd.grad((lc * wc.to(lc.dtype)).sum(), e, retain_graph=True)
    (gb,) = torch.autograd.grad((lb * wb.to(lb.dtype)).sum(), e)
    return lc.detach(), lb.detach(), gc, gb


def clip_with_pairs(emb, labels, pairs, samples, opts):
    """float64 L_clip values and the gradient of sum_b wc_b L_clip_b over ``samples``,
    with each sample's hard negatives fixed to ``pairs[b]`` (rows of -1 ignored)."""
    e = emb.detach().double().clone().requires_grad_(True)
    valid = labels.long() >= 0
    x = torch.where(valid[..., None], e, torch.zeros((), dtype=torch.float64))
    u = F.normalize(x, dim=-1, eps=NORM_EPS)
    pos, _ = pair_masks(labels, opts["positives"], opts["negatives"])
    wc, _ = sample_weights(labels.shape[0])
    tau = opts["tau"]
    values, total = {}, e.new_zeros(())
    for b in samples:
        s = u[b] @ u[b].T
        lse = torch.logsumexp(s[pos[b]] / tau, 0)
        p = pairs[b][pairs[b][:, 0] >= 0]
        if len(p) == 0:
            loss = e.new_zeros(()) + 0.0 * lse
        else:
            # log(1 + sum exp(.)) = softplus(logsumexp(.)): finite for any tau
            loss = F.softplus(torch.logsumexp(s[p[:, 0], p[:, 1]] / tau - lse, 0))
        values[b] = loss.detach()
        total = total + wc[b] * loss
    (grad,) = torch.autograd.grad(total, e)
    return values, grad


# --------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------


def close_values(got, ref, what):
    got, ref = got.double(), ref.double()
    err = (got - ref).abs()
    bad = ~(err <= RTOL * ref.abs() + ATOL)
    assert not bad.any(), (f"{what}: samples {bad.nonzero().flatten().tolist()} off: got "
                           f"{got[bad].tolist()} ref {ref[bad].tolist()}")


def close_grads(got, ref, what, slack=None, scale=None):
    """Per-sample Frobenius comparison within RTOL * ||ref|| + ATOL (+ the rounding slack,
    see rounding_slack). ``scale`` multiplies both sides and the slack (the absolute term
    stays ATOL). Returns how many samples needed the slack."""
    got, ref = got.double(), ref.double()
    slack = torch.zeros(got.shape[0], dtype=torch.float64) if slack is None else slack
    if scale is not None:
        got, ref, slack = got * scale[:, None, None], ref * scale[:, None, None], slack * scale
    err = (got - ref).flatten(1).norm(dim=1)
    nrm = ref.flatten(1).norm(dim=1)
    spec_ok = err <= RTOL * nrm + ATOL
    bad = ~(err <= RTOL * nrm + ATOL + slack)
    assert not bad.any(), (f"{what}: samples {bad.nonzero().flatten().tolist()} off: err "
                           f"{err[bad].tolist()} norm {nrm[bad].tolist()} "
                           f"slack {slack[bad].tolist()}")
    return int((~spec_ok).sum())


def check_pairs(got, ref, A, k, T, what):
    """Backend pairs vs the reference's: shape and padding, legal top-k by the float64
    similarities, the same set where the ranking is unambiguous, the same pair at every rank
    whose float64 value is isolated (gap > 1e-6 to both neighbours)."""
    B = got.shape[0]
    assert got.shape == (B, k, 2) and got.dtype == torch.int64, what
    n_exact = 0
    for b in range(B):
        flat, s_all = A.cand_flat[b], A.cand_sim[b]
        n = min(k, len(flat))
        assert (got[b, n:] == -1).all() and (got[b, :n] >= 0).all(), f"{what}: sample {b} count"
        gflat = got[b, :n, 0] * T + got[b, :n, 1]
        rflat = ref[b, :n, 0] * T + ref[b, :n, 1]
        assert (ref[b, n:] == -1).all()
        assert len(set(gflat.tolist())) == n, f"{what}: sample {b} repeats a pair"
        pos_in = {f: r for r, f in enumerate(flat.tolist())}
        assert all(f in pos_in for f in gflat.tolist()), f"{what}: sample {b} non-candidate"
        if n == 0:
            continue
        # the reference agrees with this file's own ranking (sanity of the analysis)
        if not A.rank_ambiguous[b]:
            assert set(rflat.tolist()) == set(flat[:n].tolist()), f"{what}: analysis"
        s_got = s_all[torch.tensor([pos_in[f] for f in gflat.tolist()])]
        assert (s_got[:-1] >= s_got[1:] - GAP).all(), f"{what}: sample {b} order"
        if n < len(flat):
            chosen = torch.zeros(len(flat), dtype=torch.bool)
            chosen[[pos_in[f] for f in gflat.tolist()]] = True
            assert s_got.min() >= s_all[~chosen].max() - GAP, f"{what}: sample {b} not top-k"
        if A.rank_ambiguous[b]:
            continue
        assert set(gflat.tolist()) == set(rflat.tolist()), (
            f"{what}: sample {b} chose {sorted(gflat.tolist())}, ref {sorted(rflat.tolist())}")
        gaps = (s_all[:-1] - s_all[1:]) > GAP
        for r in range(n):
            if (r == 0 or gaps[r - 1]) and (r + 1 >= len(flat) or gaps[r]):
                assert gflat[r] == rflat[r], f"{what}: sample {b} rank {r}"
                n_exact += 1
    return n_exact


def float64_expectations(backend, emb, labels, opts, A):
    """The float64 expectations of one case.

    Returns (values L_clip, L_boun, gradients L_clip, L_boun, slacks clip, boun, pairs of the
    backend, pairs of the reference, rank-ambiguous samples). Where the hard-negative ranking
    is ambiguous the L_clip expectation is the float64 evaluation with the backend's own
    (checked legal) set; elsewhere it is the reference's."""
    pk = _sub(opts, PAIR_KEYS)
    got_pairs = ck.hard_negative_pairs(emb, labels, backend=backend, **pk)
    ref_pairs = ck.hard_negative_pairs(emb.double(), labels, backend="reference", **pk)
    rc, rb, rgc, rgb = run_split("reference", emb.double(), labels, opts)
    amb = A.rank_ambiguous & A.has_clip
    if amb.any():
        own_val, own_grad = clip_with_pairs(emb, labels, got_pairs,
                                            amb.nonzero().flatten().tolist(), opts)
        for b, v in own_val.items():
            rc[b] = v
            rgc[b] = own_grad[b]
    use_pairs = torch.where(amb[:, None, None], got_pairs, ref_pairs)
    sc, sb, dsc, dsb = similarity_level(A, use_pairs, opts)
    # a second float64 evaluation (from the similarities, written here) agrees
    assert ((sc - rc).abs() <= 1e-9 * rc.abs() + 1e-12).all(), ("float64 L_clip", sc, rc)
    assert ((sb - rb).abs() <= 1e-9 * rb.abs() + 1e-12).all(), ("float64 L_boun", sb, rb)
    return (rc, rb, rgc, rgb, rounding_slack(A, dsc, emb.dtype),
            rounding_slack(A, dsb, emb.dtype), got_pairs, ref_pairs, amb)


def compare_with_spec(backend, case, test, low_precision=False):
    """The core comparison of one case; counts into COUNTS[test]."""
    emb, labels, opts, exps = case
    B, T, D = emb.shape
    k = opts["k"]
    lc, lb, gc, gb = run_split(backend, emb, labels, opts)
    A = analyse(emb, labels, opts)
    rc, rb, rgc, rgb, slc, slb, got_pairs, ref_pairs, amb = float64_expectations(
        backend, emb, labels, opts, A)
    out_dtype = torch.float64 if emb.dtype == torch.float64 else torch.float32
    assert lc.dtype == out_dtype and lb.dtype == out_dtype
    assert gc.dtype == emb.dtype and gb.dtype == emb.dtype and gc.shape == emb.shape
    assert torch.isfinite(lc).all() and torch.isfinite(lb).all()
    for got, exact in ((gc, rgc), (gb, rgb)):
        # finite, except a 16-bit gradient whose exact value is beyond the dtype's range
        # (a clip below the norm floor: g_u / 1e-8)
        big = exact.abs() > torch.finfo(emb.dtype).max / 2
        assert (torch.isfinite(got) | big).all()
    # samples without a loss: exactly 0 with a zero gradient
    for has, val, grad in ((A.has_clip, lc, gc), (A.has_boun, lb, gb)):
        assert (val[~has] == 0).all() and (grad[~has] == 0).all()

    # gradients are not compared across the kinks docs/losses.md lets either side take
    grad_c_ok = ~A.norm_kink
    grad_b_ok = ~A.norm_kink & ~A.hinge_kink
    relaxed = 0
    if low_precision:
        qc, qb, qgc, qgb = run_split("reference", emb, labels, opts)
        for got, low, exact, name in ((lc, qc, rc, "L_clip"), (lb, qb, rb, "L_boun")):
            err = (got.double() - exact).abs()
            bound = 2 * (low.double() - exact).abs() + 1e-3
            assert (err <= bound).all(), f"{name}: err {err.tolist()} > bound {bound.tolist()}"
        grad_c_ok &= ~amb  # the 16-bit reference's own choice is not the backend's
        for got, low, exact, ok, slack, name in ((gc, qgc, rgc, grad_c_ok, slc, "clip"),
                                                 (gb, qgb, rgb, grad_b_ok, slb, "boun")):
            e1 = (got.double() - exact).flatten(1).norm(dim=1)
            e2 = (low.double() - exact).flatten(1).norm(dim=1)
            nrm = exact.flatten(1).norm(dim=1)
            bad = ok & ~(e1 <= 2 * e2 + 1e-3 * (1 + nrm) + slack)
            assert not bad.any(), f"grad {name}: {e1[bad].tolist()} vs ref {e2[bad].tolist()}"
            relaxed += int((ok & ~(e1 <= 2 * e2 + 1e-3 * (1 + nrm))).sum())
    else:
        close_values(lc, rc, f"{backend} L_clip")
        close_values(lb, rb, f"{backend} L_boun")
        relaxed += close_grads(gc[grad_c_ok], rgc[grad_c_ok], f"{backend} grad L_clip",
                               slc[grad_c_ok])
        relaxed += close_grads(gb[grad_b_ok], rgb[grad_b_ok], f"{backend} grad L_boun",
                               slb[grad_b_ok])
        # large scales: the same comparison in units of the sample's scale, so that tiny
        # gradients (~1/scale) cannot pass on the absolute term alone
        big = torch.tensor([e > 0 for e in exps]) & grad_c_ok & grad_b_ok
        if big.any():
            c = torch.tensor([10.0 ** e for e in exps], dtype=torch.float64)[big]
            close_grads(gc[big], rgc[big], f"{backend} scaled grad L_clip", slc[big], c)
            close_grads(gb[big], rgb[big], f"{backend} scaled grad L_boun", slb[big], c)

    # the hard negatives themselves
    n_exact = check_pairs(got_pairs, ref_pairs, A, k, T, backend)

    # tiny inputs: the float64 evaluation itself against the loop oracle (which sums
    # exp(s/tau - lse_P) directly, so only where that cannot overflow: 2 / tau < 700)
    oracle_checked = 0
    if T <= 14 and D <= 16 and opts["tau"] > 2 / 700:
        ol, _ = oracle.oracle_clip(emb, labels, k, opts["tau"], opts["positives"],
                                   opts["negatives"])
        ob = oracle.oracle_boundary(emb, labels, opts["radius"], opts["margin_max"],
                                    opts["margin_base"], opts["margin_scale"])
        for b in range(B):
            if not A.rank_ambiguous[b]:
                want = 0.0 if ol[b] is None else ol[b]
                assert abs(float(rc[b]) - want) <= 1e-8 * abs(want) + 1e-10, ("oracle clip", b)
            want = 0.0 if ob[b] is None else ob[b]
            assert abs(float(rb[b]) - want) <= 1e-8 * abs(want) + 1e-10, ("oracle boun", b)
        oracle_checked = 1
    _count(test, examples=1, samples=B, rank_ambiguous=int(amb.sum()),
           hinge_kink=int((A.hinge_kink & A.has_boun).sum()), norm_kink=int(A.norm_kink.sum()),
           grad_rounding_slack_used=relaxed, pairs_rank_exact=n_exact,
           oracle_checked=oracle_checked, float64=int(emb.dtype == torch.float64),
           large_scale=int(any(e > 0 for e in exps)), small_scale=int(any(e < 0 for e in exps)),
           max_T=T, max_D=D, max_k=k, max_numel=emb.numel())


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
def test_matches_float64_spec(backend):
    """Per-sample values and gradients within docs/losses.md's tolerance of the float64
    evaluation; hard negatives equal to the reference's where the ranking is unambiguous."""

    @budget(backend, 1.0)
    @given(case=cases(max_T=max_T(backend, 320)))
    def check(case):
        compare_with_spec(backend, case, f"matches_float64_spec[{backend}]")

    check()


@st.composite
def exact_cases(draw, dtypes, max_T=200):
    """Clips whose similarities are exact in every dtype: each row has m in {0, 1, 4, 16, 64}
    entries +-2^e (all other entries 0), so every norm is a power of two (at least 2^-26,
    above the 1e-8 floor) or 0, and every similarity a multiple of 1/m; ties are exact and
    plentiful."""
    B = draw(st.integers(1, 4))
    T = _sized(draw, 16, 64, max_T)
    D = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
    dtype = draw(st.sampled_from(dtypes))
    labels = draw(label_batch(B, T))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    ms = [m for m in (0, 1, 4, 16, 64) if m <= D]
    weights = torch.tensor([1.0] + [4.0] * (len(ms) - 1))
    m = torch.tensor(ms)[torch.multinomial(weights, B * T, replacement=True, generator=g)]
    m = m.view(B, T)
    keep = torch.rand(B, T, D, generator=g).argsort(-1) < m[..., None]
    signs = torch.randint(0, 2, (B, T, D), generator=g) * 2.0 - 1.0
    # norms 2^e * sqrt(m) stay >= 2^-26 > 1e-8: below the floor u = v / 1e-8 is not exact
    lo, hi = (-8, 8) if dtype == torch.float16 else (-26, 40)
    e = torch.randint(lo, hi + 1, (B, T, 1), generator=g).double()
    emb = (keep * signs * 2.0 ** e).to(dtype)
    opts = draw(options(torch.float32))
    opts["check_labels"] = bool(int(labels.min()) >= -1)
    note(f"B={B} T={T} D={D} dtype={dtype} opts={opts}")
    note(f"labels={labels.tolist()}")
    return Case(emb, labels, opts, [0] * B)


@pytest.mark.parametrize("backend", FUSED)
def test_exact_ties_follow_the_tie_rule(backend):
    """Exact similarities: the hard negatives are exactly the reference's (tie rule: the
    smaller i, then the smaller j), for every k; values and gradients within tolerance with
    no ranking skip."""

    @budget(backend, 0.5)
    @given(case=exact_cases((torch.float32, torch.float64, torch.bfloat16, torch.float16),
                            max_T=max_T(backend, 200)))
    def check(case):
        exact_ties_case(backend, case)

    check()


def exact_ties_case(backend, case):
    emb, labels, opts, _ = case
    pk = _sub(opts, PAIR_KEYS)
    got = ck.hard_negative_pairs(emb, labels, backend=backend, **pk)
    ref = ck.hard_negative_pairs(emb.double(), labels, backend="reference", **pk)
    assert torch.equal(got, ref)
    # one more k on either side of a tie boundary
    for k2 in (max(0, opts["k"] - 1), opts["k"] + 1):
        pk2 = {**pk, "k": k2}
        assert torch.equal(ck.hard_negative_pairs(emb, labels, backend=backend, **pk2),
                           ck.hard_negative_pairs(emb.double(), labels, backend="reference",
                                                  **pk2))
    test = f"exact_ties[{backend}]"
    if emb.dtype in (torch.float32, torch.float64):
        lc, lb, gc, gb = run_split(backend, emb, labels, opts)
        rc, rb, rgc, rgb = run_split("reference", emb.double(), labels, opts)
        A = analyse(emb, labels, opts)
        _, _, dsc, dsb = similarity_level(A, ref, opts)
        close_values(lc, rc, "L_clip")
        close_values(lb, rb, "L_boun")
        # no ranking skip: the ties are exact and both sides break them the same way
        relaxed = close_grads(gc, rgc, "grad L_clip", rounding_slack(A, dsc, emb.dtype))
        ok = ~A.hinge_kink
        relaxed += close_grads(gb[ok], rgb[ok], "grad L_boun",
                               rounding_slack(A, dsb, emb.dtype)[ok])
        _count(test, hinge_kink=int((A.hinge_kink & A.has_boun).sum()),
               rank_tied=int(A.rank_ambiguous.sum()), grad_rounding_slack_used=relaxed)
    _count(test, examples=1, samples=emb.shape[0], max_T=emb.shape[1], max_D=emb.shape[2],
           max_k=opts["k"])


@pytest.mark.parametrize("backend", FUSED)
def test_low_precision_twice_reference_error(backend):
    """float16 / bfloat16: error vs the float64 evaluation at most twice the 16-bit
    reference's error plus 1e-3 (gradients: plus 1e-3 * (1 + ||ref||))."""

    @budget(backend, 0.3)
    @given(case=cases(dtypes=(torch.float16, torch.bfloat16), max_T=max_T(backend, 160),
                      max_exp=3))
    def check(case):
        compare_with_spec(backend, case, f"low_precision[{backend}]", low_precision=True)

    check()


@pytest.mark.parametrize("backend", FUSED)
def test_padding_never_influences(backend):
    """Whatever padded rows hold (NaN, +-inf, 3e38) and whatever their label below 0 (with
    check_labels=False): identical outputs, bitwise, and exactly zero gradient there."""

    @budget(backend, 0.5)
    @given(case=cases(max_T=max_T(backend, 160)),
           poison=st.sampled_from(["nan", "inf", "-inf", "huge", "mixed"]),
           relabel=st.sampled_from([None, -2, -7, -128, -(2**31)]),
           where=st.integers(0, 2**16))
    def check(case, poison, relabel, where):
        padding_case(backend, case, poison, relabel, where)

    check()


def padding_case(backend, case, poison, relabel, where):
    emb, labels, opts, _ = case
    B, T, _ = emb.shape
    labels = labels.long().clone()
    pad = labels < 0
    if not pad.any():  # make at least one padded clip
        labels[where % B, where % T] = -1
        pad = labels < 0
    opts = {**opts, "check_labels": bool(int(labels.min()) >= -1)}
    base = run_split(backend, emb, labels, opts)
    base_pairs = ck.hard_negative_pairs(emb, labels, backend=backend,
                                        **_sub(opts, PAIR_KEYS))
    poisoned = emb.clone()
    fill = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"),
            "huge": torch.finfo(emb.dtype).max}
    if poison == "mixed":
        vals = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e30],
                            dtype=torch.float64).to(emb.dtype)
        idx = torch.arange(pad.sum() * emb.shape[2]) % len(vals)
        poisoned[pad] = vals[idx].view(-1, emb.shape[2])
    else:
        poisoned[pad] = fill[poison]
    lab2 = labels.clone()
    if relabel is not None:
        lab2[pad] = relabel
    opts2 = {**opts, "check_labels": bool(int(lab2.min()) >= -1)}
    got = run_split(backend, poisoned, lab2, opts2)
    for a, b in zip(got[:2], base[:2]):
        assert torch.equal(a, b)
    for g, g0 in zip(got[2:], base[2:]):
        assert (g[pad] == 0).all()
        assert torch.equal(g[~pad], g0[~pad])
    pairs = ck.hard_negative_pairs(poisoned, lab2, backend=backend,
                                   **_sub(opts2, PAIR_KEYS))
    assert torch.equal(pairs, base_pairs)
    _count(f"padding[{backend}]", examples=1, padded_clips=int(pad.sum()),
           low_labels=int(relabel is not None))


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    """The same call twice (also with another thread count) is bitwise equal: values,
    gradients, hard negatives."""

    @budget(backend, 0.3)
    @given(case=cases(max_T=max_T(backend, 200)),
           threads=st.sampled_from([(1, 1), (2, 2), (1, 2), (2, 1)]))
    def check(case, threads):
        deterministic_case(backend, case, threads)

    check()


def deterministic_case(backend, case, threads):
    emb, labels, opts, _ = case
    pk = _sub(opts, PAIR_KEYS)
    res = []
    for n in threads:
        torch.set_num_threads(n)
        res.append((*run_split(backend, emb, labels, opts),
                    ck.hard_negative_pairs(emb, labels, backend=backend, **pk)))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    _count(f"deterministic[{backend}]", examples=1, two_thread_counts=int(threads[0] !=
                                                                            threads[1]))


@pytest.mark.parametrize("backend", FUSED)
def test_reductions_consistent(backend):
    """mean = sum / (number of samples with a loss) and sum = sum of "none", values and
    gradients; the mean of a batch without any loss is 0."""

    @budget(backend, 0.3)
    @given(case=cases(max_T=max_T(backend, 160)))
    def check(case):
        reductions_case(backend, case)

    check()


def reductions_case(backend, case):
    emb, labels, opts, _ = case
    A = analyse(emb, labels, opts)
    # rounding allowance of a gradient with upstream 1 per sample (see rounding_slack): the
    # backward runs again with another upstream gradient, so its rounding may differ
    pairs = ck.hard_negative_pairs(emb.double(), labels, backend="reference",
                                   **_sub(opts, PAIR_KEYS))
    _, _, dsc, dsb = similarity_level(A, pairs, opts)
    wc, wb = sample_weights(emb.shape[0])
    slack_c = rounding_slack(A, dsc / wc[:, None, None], emb.dtype).norm()
    slack_b = rounding_slack(A, dsb / wb[:, None, None], emb.dtype).norm()
    e = emb.detach().clone().requires_grad_(True)
    nc, nb = ck.clip_boundary_losses(e, labels, backend=backend, reduction="none", **opts)
    (gnc,) = torch.autograd.grad(nc.sum(), e, retain_graph=True)
    (gnb,) = torch.autograd.grad(nb.sum(), e)
    slack_used = 0
    for red in ("sum", "mean"):
        sc, sb, gsc, gsb = run_split(backend, emb, labels, opts, reduction=red)
        assert sc.shape == () and sb.shape == ()
        for val, per, g, gper, has, slack, name in (
                (sc, nc, gsc, gnc, A.has_clip, slack_c, "L_clip"),
                (sb, nb, gsb, gnb, A.has_boun, slack_b, "L_boun")):
            count = int(has.sum()) if red == "mean" else 1
            if red == "mean" and count == 0:
                assert val.item() == 0.0 and (g == 0).all(), name
                continue
            want = per.detach().double().sum() / count
            tol = 1e-6 * per.detach().double().abs().sum() / count + 1e-12
            assert abs(val.double() - want) <= tol, (red, name, val.item(), want.item())
            gwant = gper.double() / count
            err = (g.double() - gwant).norm()
            assert err <= RTOL * gwant.norm() + ATOL + 2 * slack / count, (red, name, "grad")
            slack_used += int(err > RTOL * gwant.norm() + ATOL)
    _count(f"reductions[{backend}]", examples=1, samples=emb.shape[0],
           samples_without_clip_loss=int((~A.has_clip).sum()),
           samples_without_boun_loss=int((~A.has_boun).sum()),
           grad_rounding_slack_used=slack_used)


# --------------------------------------------------------------------------------------
# minimal examples found by the properties above, as regular tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_loss_finite_with_small_tau_and_far_hard_negative(backend, dtype):
    # P = {(0, 1)} with s = -1; N = {(0, 2), (1, 2)}; k = 1 takes (0, 2) with s ~ 0.995:
    # L_clip = softplus((s_02 - s_01) / tau) ~ 997.5 at tau = 0.002, finite in every dtype
    labels = torch.tensor([[1, 1, 0]])
    emb = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.1]]], dtype=dtype)
    opts = dict(k=1, tau=0.002, positives="any", negatives="cross")
    e = emb.clone().requires_grad_(True)
    lc = ck.clip_pair_loss(e, labels, reduction="none", backend=backend, **opts)
    lc.sum().backward()
    r = emb.double().clone().requires_grad_(True)
    rc = ck.clip_pair_loss(r, labels, reduction="none", backend="reference", **opts)
    rc.sum().backward()
    assert math.isfinite(rc.item()) and abs(rc.item() - 997.5) < 0.1
    close_values(lc, rc.detach(), "L_clip")
    close_grads(e.grad, r.grad, "grad L_clip")


@pytest.mark.parametrize("backend", FUSED)
def test_zero_clip_gradient_with_cancelling_neighbours(backend):
    # A zero clip (norm below the 1e-8 floor) has gradient g_u / 1e-8 with g_u = sum_j c_j u_j.
    # Here the exact sum cancels (as many +1 as -1 neighbours, equal coefficients): the float64
    # row is ~1e-15, and float32 rounding of g_u (~7e-15) becomes ~7e-7 per zero clip, 1.0e-6
    # for the sample: just above docs/losses.md's absolute 1e-6, and the float32 *reference* is off
    # by exactly as much. The properties allow the rounding slack (rounding_slack) there.
    labels = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    emb = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, -1.0, -1.0, -2.0, 0.0, -2.0, -1.0]).view(1, 11, 1)
    opts = dict(k=1, tau=0.07)
    grads = {}
    for name, x in (("backend", emb), ("ref32", emb), ("ref64", emb.double())):
        e = x.clone().requires_grad_(True)
        be = backend if name == "backend" else "reference"
        ck.clip_pair_loss(e, labels, reduction="none", backend=be, **opts).sum().backward()
        grads[name] = e.grad.double()
    exact = grads["ref64"]
    err = (grads["backend"] - exact).norm().item()
    ref_err = (grads["ref32"] - exact).norm().item()
    assert exact.norm() < 1e-14 and ref_err > 5e-7
    assert err <= 2 * ref_err + 1e-6
    A = analyse(emb, labels, {**opts, "positives": "any", "negatives": "cross", "radius": 1,
                              "margin_max": 0.3, "margin_base": 0.1, "margin_scale": 0.1})
    pairs = ck.hard_negative_pairs(emb.double(), labels, k=1, backend="reference")
    _, _, dsc, _ = similarity_level(A, pairs, {**opts, "positives": "any"})
    wc, _ = sample_weights(1)
    assert err <= rounding_slack(A, dsc / wc[0], emb.dtype).item()
