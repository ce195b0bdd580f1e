"""Ground-truth windows in seconds to per-clip labels (docs/losses.md, "From windows to labels").

``rule="center"`` is the rule of the losses' specification (a clip takes a window when its
centre lies inside; QVHighlights' own ``relevant_clip_ids``). ``"univtg"`` and ``"floor"``
reproduce the foreground that UniVTG and the floor-rule code bases (FlashVTG, lighthouse,
TD-DETR on Charades-STA / TACoS) compute themselves, so that ClipTBP's labels agree with the
baseline's own foreground head.
"""

import math
import numbers
import operator

import numpy as np
import torch

__all__ = ["LABEL_RULES", "windows_to_labels"]

LABEL_RULES = ("center", "univtg", "floor")


def to_python(x):
    """Tensors and NumPy arrays to (nested) Python lists; anything else unchanged."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if hasattr(x, "tolist") and not isinstance(x, (list, tuple)):  # numpy arrays
        return x.tolist()
    return x


def _as_count(n, where):
    if isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point():
        n = n.item()
    if isinstance(n, bool):
        raise TypeError(f"{where} must be an integer, got a bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{where} must be an integer, got {type(n).__name__}") from None
    if n < 0:
        raise ValueError(f"{where} must be >= 0, got {n}")
    return n


def _as_seconds(x, where):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{where} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{where} must be finite, got {x}")
    return x


def _check_windows(sample, b):
    sample = to_python(sample)
    if isinstance(sample, (str, bytes)) or not isinstance(sample, (list, tuple)):
        raise TypeError(
            f"windows[{b}] must be a list of [start, end] pairs, got {type(sample).__name__}"
        )
    out = []
    for w, window in enumerate(sample):
        window = to_python(window)
        if isinstance(window, (str, bytes)) or not isinstance(window, (list, tuple)):
            raise TypeError(
                f"windows[{b}][{w}] must be a [start, end] pair, got {type(window).__name__}"
            )
        if len(window) != 2:
            raise ValueError(
                f"windows[{b}][{w}] must be a [start, end] pair, got {len(window)} values"
            )
        st = _as_seconds(window[0], f"windows[{b}][{w}] start")
        ed = _as_seconds(window[1], f"windows[{b}][{w}] end")
        if ed < st:
            raise ValueError(f"windows[{b}][{w}] ends before it starts: [{st}, {ed}]")
        out.append((st, ed))
    return out


def merge_windows(windows):
    """Sort by start and merge a window that starts before the previous one ends
    (``start < previous end``): the windows the labels number 1, 2, ... as (start, end)."""
    merged = []
    for st, ed in sorted(windows, key=lambda w: w[0]):
        if merged and st < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], ed)
        else:
            merged.append([st, ed])
    return [(st, ed) for st, ed in merged]


def merged_window_id(merged, st, ed):
    """The id (1, 2, ...) of the window of ``merged`` (``merge_windows``' output) that holds
    the window ``[st, ed]``."""
    for w, (ms, me) in enumerate(merged):
        if ms <= st and ed <= me:
            return w + 1
    raise AssertionError(f"[{st}, {ed}] lies outside every merged window")  # pragma: no cover


def _clip_holding(t, clip_len):
    """The index ``i`` with ``i * clip_len <= t < (i + 1) * clip_len``."""
    i = math.floor(t / clip_len)
    while i * clip_len > t:
        i -= 1
    while (i + 1) * clip_len <= t:
        i += 1
    return i


def _sample_labels(windows, n, clip_len):
    labels = [0] * n
    merged = merge_windows(windows)
    holds_centre = []
    for w, (st, ed) in enumerate(merged):
        # clip i takes the window when its centre (i + 0.5) * L lies in [st, ed); search a
        # slightly wider index range and test the condition itself
        lo = max(0, math.floor(st / clip_len - 0.5) - 1)
        hi = max(lo, math.ceil(ed / clip_len - 0.5) + 1)
        for i in range(lo, min(n, hi)):
            if st <= (i + 0.5) * clip_len < ed:
                labels[i] = w + 1
        # whether the window holds any clip centre at all (clips past n included)
        holds_centre.append(any(st <= (i + 0.5) * clip_len < ed for i in range(lo, hi)))
    for w, (st, ed) in enumerate(merged):
        if holds_centre[w]:
            continue
        i = _clip_holding(0.5 * (st + ed), clip_len)
        if 0 <= i < n and labels[i] == 0:
            labels[i] = w + 1
    return labels


def _univtg_labels(windows, n, clip_len):
    """UniVTG's ``timestamp_window`` (``main/dataset.py``, ``DatasetMR.__getitem__``).

    Clip ``i`` has the anchor ``t_i = (i + L / 2) / n`` and window ``[st, ed]`` the span
    ``[st, ed] / (n L)``, all in float32 as UniVTG computes them; the clip is foreground when
    ``st' <= t_i <= ed'`` for some window (both ends inclusive), and takes the id of the merged
    window holding the last such window in input order (UniVTG keeps the last assignment).
    When no clip is foreground, clip ``int(st_0 / L)`` (clamped to ``[0, n - 1]``) of the
    first window in input order is.
    """
    labels = [0] * n
    if n == 0 or not windows:
        return labels
    merged = merge_windows(windows)
    f32 = np.float32
    t = (np.arange(n, dtype=np.float32) + f32(clip_len / 2)) / f32(n)
    span = f32(n * clip_len)
    for st, ed in windows:            # input order: a later window overwrites
        lo, hi = f32(st) / span, f32(ed) / span
        wid = merged_window_id(merged, st, ed)
        for i in np.nonzero((t >= lo) & (t <= hi))[0].tolist():
            labels[i] = wid
    if not any(labels):
        st, ed = windows[0]
        i = max(0, min(int(st / clip_len), n - 1))
        labels[i] = merged_window_id(merged, st, ed)
    return labels


def _floor_labels(windows, n, clip_len):
    """The floor rule of FlashVTG / lighthouse / TD-DETR for Charades-STA and TACoS.

    Window ``[st, ed]`` covers clips ``int(st / L)`` to ``max(0, min(int(ed / L), n) - 1)``
    (Python's ``int``, which truncates), and its first clip is moved down to its last when it
    lies past it, so every window covers at least one clip. The code bases apply it to the
    one window of these data sets; with several windows each is applied in start order and a
    clip keeps the first id it gets. Ids are those of the merged windows.
    """
    labels = [0] * n
    if n == 0:
        return labels
    merged = merge_windows(windows)
    for st, ed in sorted(windows, key=lambda w: w[0]):
        first = int(st / clip_len)
        last = max(0, min(int(ed / clip_len), n) - 1)
        first = min(first, last)
        wid = merged_window_id(merged, st, ed)
        for i in range(max(first, 0), last + 1):
            if labels[i] == 0:
                labels[i] = wid
    return labels


_RULES = {"center": _sample_labels, "univtg": _univtg_labels, "floor": _floor_labels}


def _per_sample(value, B, name, convert):
    """``value`` as one entry per sample: a sequence (or 1-D tensor / array) of ``B`` entries,
    or one value for every sample; each entry goes through ``convert(entry, where)``."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    value = to_python(value)
    if isinstance(value, (list, tuple)):
        if len(value) != B:
            raise ValueError(f"{name} must have one entry per sample ({B}), got {len(value)}")
        return [convert(v, f"{name}[{b}]") for b, v in enumerate(value)]
    one = convert(value, name)
    return [one] * B


def as_positive_real(x, where):
    """``x`` as a finite float > 0, else a TypeError / ValueError naming ``where``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{where} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"{where} must be a finite number > 0, got {x}")
    return x


def _clip_lengths(clip_len, B):
    """One clip length in seconds per sample, from a number or one per sample."""
    return _per_sample(clip_len, B, "clip_len", as_positive_real)


def check_rule(rule, extra=()):
    """``rule`` if it names a label rule (or one of ``extra``), else a ValueError."""
    allowed = tuple(extra) + LABEL_RULES
    if not isinstance(rule, str) or rule not in allowed:
        raise ValueError(f"rule must be one of {', '.join(repr(r) for r in allowed)}; "
                         f"got {rule!r}")
    return rule


def windows_to_labels(windows, num_clips, clip_len=2.0, *, rule="center"):
    """Per-clip labels from ground-truth windows.

    Args:
        windows: one entry per sample, each a (possibly empty) list of ``[start, end]`` pairs
            in seconds.
        num_clips: the number of clips of each sample (a sequence of ints), or one int for
            every sample.
        clip_len: clip length in seconds (> 0); clip ``i`` covers ``[i L, (i + 1) L)``. One
            number, or one per sample (a sequence or 1-D tensor), e.g. when a data set pools
            long videos to a fixed number of clips (``duration / num_clips``).
        rule: which clips a window marks (see docs/losses.md, section 6):

            * ``"center"`` (default, the specification's rule): clip ``i`` takes a window
              when its centre ``(i + 0.5) L`` lies in ``[st, ed)``; a window holding no centre
              marks the clip holding its midpoint. On QVHighlights this is the data set's
              ``relevant_clip_ids``.
            * ``"univtg"``: UniVTG's own foreground (``timestamp_window``): the anchor
              ``(i + L / 2) L`` seconds (for 2-second clips: the clip's *end*) in
              ``[st, ed]``, computed in float32 as UniVTG does.
            * ``"floor"``: the rule of FlashVTG, lighthouse and TD-DETR for Charades-STA and
              TACoS: clips ``int(st / L)`` to ``min(int(ed / L), n) - 1``, at least one.

    Returns:
        LongTensor ``[B, max(num_clips)]``: ``0`` background, ``w >= 1`` the ``w``-th merged
        window (in start order), ``-1`` past a sample's last clip.
    """
    windows = to_python(windows)
    if isinstance(windows, (str, bytes)) or not isinstance(windows, (list, tuple)):
        raise TypeError(
            f"windows must be a list with one list of [start, end] pairs per sample, got "
            f"{type(windows).__name__}"
        )
    B = len(windows)
    counts = _per_sample(num_clips, B, "num_clips", _as_count)
    lengths = _clip_lengths(clip_len, B)
    fn = _RULES[check_rule(rule)]

    samples = [_check_windows(sample, b) for b, sample in enumerate(windows)]
    width = max(counts, default=0)
    out = torch.full((B, width), -1, dtype=torch.long)
    for b, (sample, n, L) in enumerate(zip(samples, counts, lengths)):
        if n:
            out[b, :n] = torch.tensor(fn(sample, n, L), dtype=torch.long)
    return out
