"""Moment retrieval data on disk: QVHighlights (Moment-DETR / UniVTG layout) and TACoS.

Layout read here::

    ROOT/annotations/highlight_{split}_release.jsonl    QVHighlights
    ROOT/annotations/{split}.jsonl                      TACoS
    FEATURE_ROOT/<video dir>/<vid>.npz                  one file per video and feature dir
    FEATURE_ROOT/<text dir>/qid<qid>.npz                one file per query

``FEATURE_ROOT`` defaults to ``ROOT/features``. Annotation lines (one JSON object a line):

* QVHighlights: ``qid`` (int), ``query``, ``duration`` (seconds), ``vid``,
  ``relevant_windows`` (``[[st, ed], ...]`` seconds), ``relevant_clip_ids`` (2-s clip
  indices), ``saliency_scores`` (``[[a1, a2, a3], ...]`` one row per relevant clip, 0..4).
* TACoS: ``qid`` (str), ``query``, ``duration`` (float seconds), ``vid``,
  ``relevant_windows`` (one window, float seconds); no saliency.

Video feature files hold ``[n_clips, D]`` arrays under a key (``FeatureSpec``); text feature
files hold ``[n_tokens, D]`` token features. Every video feature dir is L2-normalised per clip
(``normalize=True``) and the dirs are concatenated along the feature axis after truncating to
the shortest of them.
"""

from __future__ import annotations

import json
import math
import numbers
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..labels import windows_to_labels

__all__ = [
    "DataError",
    "FeatureSpec",
    "MomentDataset",
    "QVH_TEXT",
    "QVH_VIDEO",
    "TACOS_TEXT",
    "TACOS_VIDEO",
    "collate",
    "load_feature",
    "load_qvhighlights",
    "load_tacos",
    "qvhighlights_annotation_file",
    "read_annotations",
    "tacos_annotation_file",
]

PathLike = Union[str, Path]


class DataError(ValueError):
    """A data file exists but its content is malformed (the message names the file)."""


@dataclass(frozen=True)
class FeatureSpec:
    """One feature directory under the feature root and the npz key its arrays are stored at."""

    dir: str
    key: str


QVH_VIDEO = (FeatureSpec("slowfast_features", "features"),
             FeatureSpec("clip_features", "pooler_output"))
QVH_TEXT = FeatureSpec("clip_text_features", "last_hidden_state")
# TACoS features are usually extracted by the user; these defaults follow the QVHighlights
# names. Pass your own FeatureSpecs for other dirs or keys.
TACOS_VIDEO = QVH_VIDEO
TACOS_TEXT = QVH_TEXT


# --------------------------------------------------------------------------- annotations


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _parse_line(obj: Any, where: str) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("qid", "query", "duration", "vid"):
        if key not in obj:
            raise DataError(f"{where}: missing key {key!r}")
    qid = obj["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise DataError(f"{where}: 'qid' must be an int or a string, got {type(qid).__name__}")
    if not isinstance(obj["query"], str):
        raise DataError(f"{where}: 'query' must be a string")
    if not isinstance(obj["vid"], str) or not obj["vid"]:
        raise DataError(f"{where}: 'vid' must be a non-empty string")
    duration = obj["duration"]
    if not _is_number(duration) or not math.isfinite(duration) or duration <= 0:
        raise DataError(f"{where}: 'duration' must be a number > 0, got {duration!r}")

    windows = obj.get("relevant_windows", [])
    if not isinstance(windows, list):
        raise DataError(f"{where}: 'relevant_windows' must be a list of [start, end] pairs")
    parsed_windows = []
    for w, win in enumerate(windows):
        if (not isinstance(win, list) or len(win) != 2
                or not all(_is_number(x) and math.isfinite(x) for x in win)):
            raise DataError(f"{where}: relevant_windows[{w}] must be a [start, end] pair of "
                            f"numbers, got {win!r}")
        st, ed = float(win[0]), float(win[1])
        if ed < st or st < 0:
            raise DataError(f"{where}: relevant_windows[{w}] = {win!r} is not a valid window "
                            f"(needs 0 <= start <= end)")
        parsed_windows.append([st, ed])

    has_ids, has_scores = "relevant_clip_ids" in obj, "saliency_scores" in obj
    clip_ids = scores = None
    if has_ids != has_scores:
        present = "relevant_clip_ids" if has_ids else "saliency_scores"
        missing = "saliency_scores" if has_ids else "relevant_clip_ids"
        raise DataError(f"{where}: has {present!r} but no {missing!r}")
    if has_ids:
        clip_ids, scores = obj["relevant_clip_ids"], obj["saliency_scores"]
        if not isinstance(clip_ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in clip_ids):
            raise DataError(f"{where}: 'relevant_clip_ids' must be a list of ints >= 0")
        if not isinstance(scores, list) or len(scores) != len(clip_ids):
            raise DataError(f"{where}: 'saliency_scores' must be a list with one entry per "
                            f"relevant clip ({len(clip_ids)}), got "
                            f"{len(scores) if isinstance(scores, list) else type(scores).__name__}")
        rows = []
        for s, row in enumerate(scores):
            row = row if isinstance(row, list) else [row]
            if not row or not all(_is_number(x) and math.isfinite(x) for x in row):
                raise DataError(f"{where}: saliency_scores[{s}] must be a non-empty list of "
                                f"numbers, got {scores[s]!r}")
            rows.append([float(x) for x in row])
        scores = rows
    return {
        "qid": qid,
        "query": obj["query"],
        "vid": obj["vid"],
        "duration": float(duration),
        "windows": parsed_windows,
        "relevant_clip_ids": clip_ids,
        "saliency_scores": scores,
    }


def read_annotations(path: PathLike) -> List[Dict[str, Any]]:
    """Parse and check an annotation jsonl file (QVHighlights or TACoS lines).

    Returns one dict per non-empty line: ``qid``, ``query``, ``vid``, ``duration`` (float),
    ``windows`` (``[[st, ed], ...]`` floats; ``[]`` when the line has no
    ``relevant_windows``, e.g. an unlabelled test split), ``relevant_clip_ids`` and
    ``saliency_scores`` (``None`` when absent; scores as lists of floats).

    Raises FileNotFoundError for a missing file and DataError (a ValueError) naming the file
    and line for bad JSON, missing keys or malformed values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: bad JSON at line {n}: {e.msg} "
                                f"(column {e.colno})") from None
            out.append(_parse_line(obj, f"{path}, line {n}"))
    return out


# ------------------------------------------------------------------------------ features


def load_feature(path: PathLike, key: str) -> np.ndarray:
    """The rank-2 float32 array stored at ``key`` in the npz file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read as an npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an npz archive (np.load gave {type(z).__name__})")
    with z:
        if key not in z.files:
            raise DataError(f"{path}: npz file has no key {key!r} (keys: {sorted(z.files)})")
        try:
            arr = z[key]
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read {key!r} from the npz file ({e})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: feature {key!r} must have rank 2 [n, dim], got shape "
                        f"{tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: feature {key!r} must be numeric, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float32)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _clip_windows(windows: List[List[float]], limit: float) -> List[List[float]]:
    """Windows cut to ``[0, limit]``; those starting at or after ``limit`` are dropped."""
    out = []
    for st, ed in windows:
        if st >= limit:
            continue
        out.append([st, min(ed, limit)])
    return out


class MomentDataset(torch.utils.data.Dataset):
    """Queries of an annotation jsonl file with their video and text features.

    Args:
        annotation_file: QVHighlights or TACoS jsonl file (see the module docstring).
        feature_root: folder holding the feature dirs.
        video_features: the video FeatureSpecs; their features are concatenated (in this
            order) along the feature axis after truncation to the shortest among them.
        text_feature: the FeatureSpec of the query token features (``qid<qid>.npz``).
        clip_len: clip length in seconds (2 s for QVHighlights features).
        max_clips: keep at most this many clips of a video; ``None`` keeps every clip (e.g.
            long TACoS videos).
        max_text_len: keep at most this many query tokens.
        normalize: L2-normalise every clip of every video feature dir, and every text token.
        cache: keep every loaded video and text array in memory (items are then built from
            copies of them): every epoch after the first reads no file. The whole data set's
            features must fit in RAM (QVHighlights' SlowFast + CLIP: about 8 GB).

    Windows are cut to the span of the kept clips, ``[0, n * clip_len]``; windows starting
    past it are dropped. A query whose windows all lie past the kept clips stays in the data
    set with an empty ``windows`` list (no ground truth, all labels background).

    Item (a dict): ``qid``, ``query``, ``vid``, ``duration`` (float, as annotated),
    ``clip_len``, ``video`` (float32 ``[n, Dv]``), ``text`` (float32 ``[L, Dt]``),
    ``windows`` (``[[st, ed], ...]`` seconds), ``saliency`` (float32 ``[n]``: the mean over
    the annotators of ``saliency_scores`` at ``relevant_clip_ids``, 0 elsewhere; zeros when
    the line has none), ``has_saliency`` (bool).

    All feature files are checked to exist when the data set is built; their content is read
    (and checked) when an item is loaded.
    """

    def __init__(self, annotation_file: PathLike, feature_root: PathLike,
                 video_features: Sequence[FeatureSpec] = QVH_VIDEO,
                 text_feature: FeatureSpec = QVH_TEXT, clip_len: float = 2.0,
                 max_clips: Optional[int] = None, max_text_len: int = 32,
                 normalize: bool = True, cache: bool = False) -> None:
        super().__init__()
        # loaded (normalised) arrays by vid / qid when `cache`: later epochs read no file
        self.cache = bool(cache)
        self._videos: Dict[str, np.ndarray] = {}
        self._texts: Dict[Any, np.ndarray] = {}
        if isinstance(video_features, FeatureSpec):
            video_features = (video_features,)
        video_features = tuple(video_features)
        if not video_features:
            raise ValueError("video_features must name at least one FeatureSpec")
        for spec in (*video_features, text_feature):
            if not isinstance(spec, FeatureSpec):
                raise TypeError(f"expected a FeatureSpec, got {type(spec).__name__}")
        if isinstance(clip_len, bool) or not _is_number(clip_len) or not clip_len > 0:
            raise ValueError(f"clip_len must be a number > 0, got {clip_len!r}")
        if max_clips is not None and (not isinstance(max_clips, int) or max_clips < 1):
            raise ValueError(f"max_clips must be None or an int >= 1, got {max_clips!r}")
        if not isinstance(max_text_len, int) or max_text_len < 1:
            raise ValueError(f"max_text_len must be an int >= 1, got {max_text_len!r}")
        self.annotation_file = Path(annotation_file)
        self.feature_root = Path(feature_root)
        self.video_features = video_features
        self.text_feature = text_feature
        self.clip_len = float(clip_len)
        self.max_clips = max_clips
        self.max_text_len = max_text_len
        self.normalize = bool(normalize)
        self.annotations = read_annotations(self.annotation_file)
        if not self.feature_root.is_dir():
            raise FileNotFoundError(f"feature root not found: {self.feature_root} "
                                    f"(for {self.annotation_file})")
        self._check_files()

    # paths
    def video_path(self, vid: str, spec: FeatureSpec) -> Path:
        return self.feature_root / spec.dir / f"{vid}.npz"

    def text_path(self, qid) -> Path:
        return self.feature_root / self.text_feature.dir / f"qid{qid}.npz"

    def _check_files(self) -> None:
        vids = list(dict.fromkeys(a["vid"] for a in self.annotations))
        for spec in self.video_features:
            d = self.feature_root / spec.dir
            if not d.is_dir():
                raise FileNotFoundError(f"video feature dir {spec.dir!r} not found: {d}")
            missing = [v for v in vids if not self.video_path(v, spec).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"missing feature file for vid {missing[0]!r} in dir {spec.dir!r}: "
                    f"{self.video_path(missing[0], spec)} ({len(missing)} of {len(vids)} videos "
                    f"of {self.annotation_file} lack one)")
        d = self.feature_root / self.text_feature.dir
        if not d.is_dir():
            raise FileNotFoundError(f"text feature dir {self.text_feature.dir!r} not found: {d}")
        missing = [a["qid"] for a in self.annotations if not self.text_path(a["qid"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"text feature missing for qid {missing[0]!r} in dir {self.text_feature.dir!r}: "
                f"{self.text_path(missing[0])} ({len(missing)} of {len(self.annotations)} queries "
                f"of {self.annotation_file} lack one)")

    def __len__(self) -> int:
        return len(self.annotations)

    def load_video(self, vid: str) -> np.ndarray:
        """[n, Dv] float32: the video feature dirs, normalised, truncated and concatenated."""
        return self._cached(self._videos, vid, self._read_video)

    def _read_video(self, vid: str) -> np.ndarray:
        feats = []
        for spec in self.video_features:
            path = self.video_path(vid, spec)
            x = load_feature(path, spec.key)
            if x.shape[0] == 0:
                raise DataError(f"{path}: feature {spec.key!r} has no clips")
            feats.append(_l2_normalize(x) if self.normalize else x)
        n = min(x.shape[0] for x in feats)
        if self.max_clips is not None:
            n = min(n, self.max_clips)
        return np.concatenate([x[:n] for x in feats], axis=1)

    def load_text(self, qid) -> np.ndarray:
        """[L, Dt] float32 token features of a query, truncated to ``max_text_len``."""
        return self._cached(self._texts, qid, self._read_text)

    def _cached(self, store: Dict, key, read: Callable[[Any], np.ndarray]) -> np.ndarray:
        """`read(key)`, or with `cache` a copy of the array kept in `store` (read once)."""
        if not self.cache:
            return read(key)
        if key not in store:
            store[key] = read(key)
        return store[key].copy()

    def _read_text(self, qid) -> np.ndarray:
        path = self.text_path(qid)
        x = load_feature(path, self.text_feature.key)
        if x.shape[0] == 0:
            raise DataError(f"{path}: text feature {self.text_feature.key!r} has no tokens")
        x = x[: self.max_text_len]
        return _l2_normalize(x) if self.normalize else x

    def __getitem__(self, index: int) -> Dict[str, Any]:
        ann = self.annotations[index]
        video = self.load_video(ann["vid"])
        text = self.load_text(ann["qid"])
        n = video.shape[0]
        saliency = np.zeros(n, dtype=np.float32)
        has_saliency = ann["saliency_scores"] is not None
        if has_saliency:
            for i, row in zip(ann["relevant_clip_ids"], ann["saliency_scores"]):
                if i < n:
                    saliency[i] = sum(row) / len(row)
        return {
            "qid": ann["qid"],
            "query": ann["query"],
            "vid": ann["vid"],
            "duration": ann["duration"],
            "clip_len": self.clip_len,
            "video": torch.from_numpy(np.ascontiguousarray(video)),
            "text": torch.from_numpy(np.ascontiguousarray(text)),
            "windows": _clip_windows(ann["windows"], n * self.clip_len),
            "saliency": torch.from_numpy(saliency),
            "has_saliency": has_saliency,
        }


def collate(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch MomentDataset items.

    Returns ``video`` [B, T, Dv] (zero-padded), ``video_mask`` [B, T] bool, ``text``
    [B, L, Dt], ``text_mask`` [B, L] bool, ``labels`` [B, T] (``windows_to_labels``: -1 past
    a video's end, 0 background, 1.. merged windows), ``saliency`` [B, T], ``has_saliency``
    [B] bool, ``num_clips`` LongTensor [B], ``windows`` (list), ``meta`` (list of dicts with
    qid, query, vid, duration, clip_len).
    """
    items = list(items)
    if not items:
        raise ValueError("collate needs at least one item")
    clip_lens = {float(it["clip_len"]) for it in items}
    if len(clip_lens) != 1:
        raise ValueError(f"all items of a batch must share one clip_len, got {sorted(clip_lens)}")
    clip_len = clip_lens.pop()
    B = len(items)
    num_clips = [int(it["video"].shape[0]) for it in items]
    num_tokens = [int(it["text"].shape[0]) for it in items]
    dv = {int(it["video"].shape[1]) for it in items}
    dt = {int(it["text"].shape[1]) for it in items}
    if len(dv) != 1 or len(dt) != 1:
        raise ValueError(f"items differ in feature width (video {sorted(dv)}, text {sorted(dt)})")
    T, L = max(num_clips), max(num_tokens)
    video = torch.zeros(B, T, dv.pop())
    video_mask = torch.zeros(B, T, dtype=torch.bool)
    text = torch.zeros(B, L, dt.pop())
    text_mask = torch.zeros(B, L, dtype=torch.bool)
    saliency = torch.zeros(B, T)
    for b, it in enumerate(items):
        n, m = num_clips[b], num_tokens[b]
        video[b, :n] = it["video"]
        video_mask[b, :n] = True
        text[b, :m] = it["text"]
        text_mask[b, :m] = True
        saliency[b, :n] = it["saliency"]
    windows = [it["windows"] for it in items]
    return {
        "video": video,
        "video_mask": video_mask,
        "text": text,
        "text_mask": text_mask,
        "labels": windows_to_labels(windows, num_clips, clip_len),
        "saliency": saliency,
        "has_saliency": torch.tensor([bool(it["has_saliency"]) for it in items]),
        "num_clips": torch.tensor(num_clips, dtype=torch.long),
        "windows": windows,
        "meta": [{k: it[k] for k in ("qid", "query", "vid", "duration", "clip_len")}
                 for it in items],
    }


# ------------------------------------------------------------------------ convenience


def qvhighlights_annotation_file(root: PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"highlight_{split}_release.jsonl"


def tacos_annotation_file(root: PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"{split}.jsonl"


def load_qvhighlights(root: PathLike, split: str, feature_root: Optional[PathLike] = None,
                      **kw) -> MomentDataset:
    """QVHighlights ``split`` from ``root/annotations/highlight_{split}_release.jsonl`` with
    features under ``feature_root`` (default ``root/features``); ``kw`` go to MomentDataset
    (defaults: QVH_VIDEO, QVH_TEXT, 2-s clips)."""
    root = Path(root)
    kw.setdefault("video_features", QVH_VIDEO)
    kw.setdefault("text_feature", QVH_TEXT)
    return MomentDataset(qvhighlights_annotation_file(root, split),
                         root / "features" if feature_root is None else feature_root, **kw)


def load_tacos(root: PathLike, split: str, feature_root: Optional[PathLike] = None,
               **kw) -> MomentDataset:
    """TACoS ``split`` from ``root/annotations/{split}.jsonl`` with features under
    ``feature_root`` (default ``root/features``). Every video is kept whole unless
    ``max_clips`` is given. The default feature dirs and keys (TACOS_VIDEO, TACOS_TEXT) are
    the QVHighlights ones; TACoS features are extracted by the user, so pass your own
    ``video_features=(FeatureSpec(dir, key), ...)`` and ``text_feature=FeatureSpec(...)``."""
    root = Path(root)
    kw.setdefault("video_features", TACOS_VIDEO)
    kw.setdefault("text_feature", TACOS_TEXT)
    return MomentDataset(tacos_annotation_file(root, split),
                         root / "features" if feature_root is None else feature_root, **kw)
