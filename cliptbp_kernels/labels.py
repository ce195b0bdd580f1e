"""Ground-truth windows in seconds to per-clip labels (docs/losses.md, "From windows to labels")."""

import math
import numbers
import operator

import torch

__all__ = ["windows_to_labels"]


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


def windows_to_labels(windows, num_clips, clip_len=2.0):
    """Per-clip labels from ground-truth windows.

    Args:
        windows: one entry per sample, each a (possibly empty) list of ``[start, end]`` pairs
            in seconds.
        num_clips: the number of clips of each sample (a sequence of ints), or one int for
            every sample.
        clip_len: clip length in seconds (> 0); clip ``i`` covers ``[i L, (i + 1) L)``.

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
    if isinstance(num_clips, torch.Tensor) and num_clips.dim() == 0:
        num_clips = num_clips.item()
    num_clips = to_python(num_clips)
    if isinstance(num_clips, (list, tuple)):
        if len(num_clips) != B:
            raise ValueError(
                f"num_clips must have one entry per sample ({B}), got {len(num_clips)}"
            )
        counts = [_as_count(n, f"num_clips[{b}]") for b, n in enumerate(num_clips)]
    else:
        counts = [_as_count(num_clips, "num_clips")] * B
    if isinstance(clip_len, bool) or not isinstance(clip_len, numbers.Real):
        raise TypeError(f"clip_len must be a real number, got {type(clip_len).__name__}")
    clip_len = float(clip_len)
    if not math.isfinite(clip_len) or clip_len <= 0:
        raise ValueError(f"clip_len must be a finite number > 0, got {clip_len}")

    samples = [_check_windows(sample, b) for b, sample in enumerate(windows)]
    width = max(counts, default=0)
    out = torch.full((B, width), -1, dtype=torch.long)
    for b, (sample, n) in enumerate(zip(samples, counts)):
        if n:
            out[b, :n] = torch.tensor(_sample_labels(sample, n, clip_len), dtype=torch.long)
    return out
