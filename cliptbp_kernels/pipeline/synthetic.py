"""A synthetic moment retrieval data set in the on-disk layout of `cliptbp_kernels.pipeline.data`.

    cliptbp-synthetic --out data/synthetic/qvh --variant qvh
    cliptbp-synthetic --out data/synthetic/tacos --variant tacos --seed 1
    cliptbp-synthetic --out data/hard --knob distractor_mix=0.7 --knob crossfade=4

Layout (what `load_qvhighlights` / `load_tacos` read)::

    OUT/annotations/highlight_{train,val}_release.jsonl    variant "qvh"
    OUT/annotations/{train,val}.jsonl                      variant "tacos"
    OUT/features/slowfast_features/<vid>.npz               key "features"       [n, 64]
    OUT/features/clip_features/<vid>.npz                   key "pooler_output"  [n, 32]
    OUT/features/clip_text_features/qid<qid>.npz           key "last_hidden_state" [L, 32]
    OUT/segments/{train,val}.jsonl     per query: object, action, answer and distractor windows
    OUT/MANIFEST.json                  parameters and statistics (written last)

Content. A vocabulary of latent *objects* and *actions* (random unit vectors in a latent space)
and of *background* patterns. A query is an (object, action) pair; its token features encode
the object word, the action word and filler words, each token also carrying a little of the
whole query. A video has a scene vector shared by all its clips; the clips of an answer window
carry object + action, *distractor* segments carry the query's object with a different action
(they look like the answer but do not match the query), and background clips carry a
background pattern or an object the video's queries do not ask about. The two video feature
dirs are different random linear views of the latent clip content plus noise.

* ``qvh``: 75 clips of 2 s (a few videos 60-74 clips), 2-3 queries per video, each with 1-3
  answer windows of QVHighlights-like lengths (median about 8 clips, some single clips) and
  1-3 distractors; no two segments of a video touch. Saliency scores (0..4, 3 annotators) peak
  in the middle of a window, where its pattern is strongest.
* ``tacos``: fewer, long videos (200-700 clips), a sequence of events with float boundaries,
  one query per event (one window, a median of about 5 % of the video, some shorter than a
  clip); events sharing an object with different actions are the distractors. No saliency.

Difficulty knobs (``Knobs``, ``qvh`` only, all off by default): distractors mixed toward
the query's action, answer windows one or two clips apart with near-answer gap content,
boundary cross-fades, per-window variation of the answer's appearance, extra feature noise.

The same parameters give byte-identical files; `generate` does nothing when ``OUT/MANIFEST.json``
already records the same parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Knobs", "generate", "main"]

FORMAT_VERSION = 1
# the generator's identity in MANIFEST.json (a format name: data sets generated under it stay
# recognised whatever the module is called)
GENERATOR = "cliptbp_kernels.synthetic"
DEFAULT_SIZES = {"qvh": (1200, 300), "tacos": (300, 100)}
VIDEO_DIRS = (("slowfast_features", "features"), ("clip_features", "pooler_output"))
TEXT_DIR = ("clip_text_features", "last_hidden_state")
CLIP_LEN = 2.0
LATENT_DIM = 48

OBJECT_WORDS = {
    "qvh": ["dog", "car", "guitar", "bicycle", "camera", "ball", "laptop", "cup", "book",
            "phone", "horse", "boat", "umbrella", "pizza", "drum", "kite"],
    "tacos": ["knife", "orange", "cucumber", "plate", "bowl", "pan", "carrot", "bread", "egg",
              "onion", "lemon", "pot", "leek", "mango", "avocado", "cutting board"],
}
ACTION_WORDS = {
    "qvh": ["holds", "opens", "throws", "cleans", "paints", "carries", "rides", "drops",
            "repairs", "washes", "lifts", "pushes"],
    "tacos": ["takes out", "cuts", "peels", "washes", "slices", "puts away", "rinses", "dries",
              "places", "chops", "opens", "throws away"],
}
SUBJECTS = {"qvh": ["a person", "a man", "a woman", "someone", "a girl", "a boy"],
            "tacos": ["the person", "the man", "the woman", "she", "he"]}
TAILS = ["", "", "in the kitchen", "outside", "on a sunny day", "while talking", "in a room",
         "near the window", "with a friend", "slowly", "quickly", "at night", "again"]
N_BACKGROUND = 24
KNOB_STREAM = 7  # the knobs' random stream: SeedSequence([seed, variant, KNOB_STREAM])


@dataclass(frozen=True)
class Knobs:
    """Difficulty knobs of the ``qvh`` variant: each puts one of the failure modes that the
    ClipTBP losses address into the data. All zero (the default) writes exactly the files of
    a generator without knobs; a knob's random draws come from a stream of their own.

    Attributes:
        distractor_mix: in ``[0, 1)``: a distractor's action is mixed toward the query's,
            ``normalize((1 - m) * other + m * query_action)`` (``L_clip``'s hard negatives).
        gap_fill: in ``[0, 1]``: the answer windows of a query with two or three of them are
            placed one after another with gaps of one or two clips, and the gap clips carry
            ``gap_fill * (object + action)``, near-answer content that is not an answer
            (``L_boun``'s just-outside negatives; gap bridging).
        crossfade: clips (int ``>= 0``): every clip is a triangular-weighted mean of the
            clips within this many of it, so content (an answer's included) fades in and out
            over that many clips on each side of a boundary instead of a hard step.
        appearance: ``>= 0``: each answer window adds its own random direction of this norm
            to the answer's content, so the windows of one query differ (answer diversity).
        noise: ``>= 0``: extra Gaussian noise on every clip, of this expected norm.
    """

    distractor_mix: float = 0.0
    gap_fill: float = 0.0
    crossfade: int = 0
    appearance: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("distractor_mix", "gap_fill", "appearance", "noise"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"knob {name} must be a finite number, got {v!r}")
        if not 0.0 <= self.distractor_mix < 1.0:
            raise ValueError(f"knob distractor_mix must be in [0, 1), got {self.distractor_mix}")
        if not 0.0 <= self.gap_fill <= 1.0:
            raise ValueError(f"knob gap_fill must be in [0, 1], got {self.gap_fill}")
        if isinstance(self.crossfade, bool) or not isinstance(self.crossfade, int) \
                or self.crossfade < 0:
            raise ValueError(f"knob crossfade must be an int >= 0 (clips), got {self.crossfade!r}")
        for name in ("appearance", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"knob {name} must be >= 0, got {getattr(self, name)}")

    def active(self) -> Dict[str, float]:
        """The knobs that differ from the default, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> "Knobs":
        if d is None:
            return cls()
        if isinstance(d, Knobs):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"knobs must be a dict or Knobs, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


# ------------------------------------------------------------------------------- helpers


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez with fixed zip metadata, so equal arrays give byte-identical files."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _write_jsonl(path: Path, lines: List[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


class _World:
    """Latent vocabulary and the linear views shared by every split of one data set."""

    def __init__(self, rng: np.random.Generator, variant: str, video_dims: Sequence[int],
                 text_dim: int) -> None:
        D = LATENT_DIM
        self.variant = variant
        self.objects = _unit(rng, len(OBJECT_WORDS[variant]), D)
        self.actions = _unit(rng, len(ACTION_WORDS[variant]), D)
        self.background = _unit(rng, N_BACKGROUND, D)
        words = sorted({w for s in SUBJECTS[variant] + TAILS + ["the"] for w in s.split()})
        self.filler = {w: v for w, v in zip(words, _unit(rng, len(words), D))}
        self.video_views = [rng.standard_normal((dim, D)) / math.sqrt(D) for dim in video_dims]
        self.text_view = rng.standard_normal((text_dim, D)) / math.sqrt(D)

    def video_features(self, rng: np.random.Generator, z: np.ndarray) -> List[np.ndarray]:
        out = []
        for W in self.video_views:
            x = z @ W.T
            x = x + 0.05 * rng.standard_normal(x.shape)
            out.append(x.astype(np.float32))
        return out

    def query(self, rng: np.random.Generator, obj: int, act: int) -> Tuple[str, np.ndarray]:
        """The query string and its [L, text_dim] token features."""
        v = self.variant
        subject = SUBJECTS[v][rng.integers(len(SUBJECTS[v]))]
        tail = TAILS[rng.integers(len(TAILS))]
        obj_word, act_word = OBJECT_WORDS[v][obj], ACTION_WORDS[v][act]
        parts = [(w, "f") for w in subject.split()] + [(act_word, "a"), ("the", "f"),
                                                        (obj_word, "o")]
        parts += [(w, "f") for w in tail.split()]
        context = 0.3 * (self.objects[obj] + self.actions[act])
        tokens = []
        for word, kind in parts:
            base = (self.objects[obj] if kind == "o" else self.actions[act] if kind == "a"
                    else self.filler[word])
            tokens.append(base + context + 0.1 * rng.standard_normal(LATENT_DIM))
        x = np.stack(tokens) @ self.text_view.T
        x = x + 0.02 * rng.standard_normal(x.shape)
        text = " ".join(w for w, _ in parts)
        if v == "tacos":
            text = text[0].upper() + text[1:] + "."
        return text, x.astype(np.float32)


# ------------------------------------------------------------------------------ qvh


def _window_len(rng: np.random.Generator) -> int:
    if rng.random() < 0.1:
        return 1
    return int(np.clip(round(math.exp(rng.normal(math.log(9.0), 0.75))), 1, 40))


def _distractor_len(rng: np.random.Generator) -> int:
    return int(np.clip(round(math.exp(rng.normal(math.log(6.0), 0.6))), 2, 20))


def _bump(length: int) -> np.ndarray:
    return np.sin(math.pi * (np.arange(length) + 0.5) / length)


def _crossfade(z: np.ndarray, width: int) -> np.ndarray:
    """Knob ``crossfade``: every clip becomes a triangular-weighted mean of the clips within
    ``width`` of it (weights ``width + 1 - |d|``, renormalised at the video's ends), so every
    change of content, the answer's boundaries included, fades over about ``width`` clips on
    each side, as features of overlapping temporal windows do."""
    n = z.shape[0]
    out = np.zeros_like(z)
    total = np.zeros(n)
    for d in range(-width, width + 1):
        w = width + 1 - abs(d)
        lo, hi = max(0, -d), min(n, n - d)
        out[lo:hi] += w * z[lo + d:hi + d]
        total[lo:hi] += w
    return out / total[:, None]


def _group_answers(segs: list, krng: np.random.Generator) -> list:
    """Knob ``gap_fill``: the answer windows of a query with two or more become one group
    segment ``[q, "grp", length, action, window lengths, gap lengths]`` with gaps of 1 or 2
    clips between them (in the windows' drawn order)."""
    out, groups = [], {}
    for seg in segs:
        q, kind = seg[0], seg[1]
        if kind == "ans" and sum(1 for t in segs if t[0] == q and t[1] == "ans") > 1:
            if q not in groups:
                groups[q] = [q, "grp", 0, seg[3], [], []]
                out.append(groups[q])
            groups[q][4].append(seg[2])
        else:
            out.append(seg)
    for g in groups.values():
        g[5] = [int(x) for x in krng.integers(1, 3, size=len(g[4]) - 1)]
        g[2] = sum(g[4]) + sum(g[5])
    return out


def _shorten(seg: list) -> None:
    """One clip less: a group loses it from its longest window (or, when every window has one
    clip, from a two-clip gap)."""
    seg[2] -= 1
    if seg[1] != "grp":
        return
    wins, gaps = seg[4], seg[5]
    k = max(range(len(wins)), key=lambda i: wins[i])
    if wins[k] > 1:
        wins[k] -= 1
    else:
        gaps[gaps.index(2)] -= 1


def _qvh_video(world: _World, rng: np.random.Generator, k: int, knobs: Knobs = Knobs(),
               krng: Optional[np.random.Generator] = None):
    """One video with k queries: (n, latent [n, D], queries). ``krng`` draws what the knobs
    need (and nothing when they are all off)."""
    n = 75 if rng.random() < 0.93 else int(rng.integers(60, 75))
    n_obj, n_act = len(world.objects), len(world.actions)
    objs = rng.choice(n_obj, size=k, replace=False)
    acts = rng.integers(n_act, size=k)
    # segments: [query, kind ("ans"/"dis"), length, action]
    segs = []
    for q in range(k):
        for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.32, 0.18]))):
            segs.append([q, "ans", _window_len(rng), int(acts[q])])
        for _ in range(int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))):
            other = int(rng.integers(n_act - 1))
            segs.append([q, "dis", _distractor_len(rng), other + (other >= acts[q])])
    if knobs.gap_fill:
        segs = _group_answers(segs, krng)
    # fit: keep a gap of at least one clip between segments and 10 % of the video free, by
    # dropping extra distractors, then shortening the longest segment (every query keeps one
    # distractor where possible)
    budget = n - max(2, n // 10)
    while sum(s[2] for s in segs) + len(segs) - 1 > budget:
        spare = [i for i, s in enumerate(segs) if s[1] == "dis"
                 and sum(1 for t in segs if t[0] == s[0] and t[1] == "dis") > 1]
        if spare:
            segs.pop(spare[int(rng.integers(len(spare)))])
            continue
        longest = max(range(len(segs)), key=lambda i: segs[i][2])
        if segs[longest][2] > 2:
            _shorten(segs[longest])
        else:  # cannot happen for k <= 3 and n >= 60; kept for safety
            segs.pop(next(i for i, s in enumerate(segs) if s[1] == "dis"))
    m = len(segs)
    order = rng.permutation(m)
    free = n - sum(s[2] for s in segs) - (m - 1)
    gaps = rng.multinomial(free, rng.dirichlet(np.ones(m + 1)))
    t = int(gaps[0])
    placed = []  # (start, seg)
    for j, idx in enumerate(order):
        placed.append((t, segs[idx]))
        t += segs[idx][2] + 1 + int(gaps[j + 1])

    D = LATENT_DIM
    scene = _unit(rng, 1, D)[0]
    z = np.tile(0.7 * scene, (n, 1))
    busy = np.zeros(n, dtype=bool)
    queries = [{"obj": int(objs[q]), "act": int(acts[q]), "answer": [], "distractor": [],
                "saliency": {}} for q in range(k)]

    def answer(q: int, st: int, length: int, content: np.ndarray) -> None:
        ed = st + length
        bump = _bump(length)
        if knobs.appearance:
            content = content + knobs.appearance * _unit(krng, 1, D)[0]
        z[st:ed] += (0.6 + 0.4 * bump)[:, None] * content[None]
        busy[st:ed] = True
        queries[q]["answer"].append([st, ed])
        bias = rng.normal(0.0, 0.3, size=3)
        for i, b in zip(range(st, ed), bump):
            sc = np.clip(np.round(0.5 + 3.5 * b + bias + rng.normal(0.0, 0.5, size=3)), 0, 4)
            queries[q]["saliency"][i] = [int(x) for x in sc]

    for st, seg in placed:
        q, kind, length, act = seg[:4]
        if kind == "ans":
            answer(q, st, length, world.objects[objs[q]] + world.actions[act])
        elif kind == "grp":
            content = world.objects[objs[q]] + world.actions[act]
            t = st
            for w, win_len in enumerate(seg[4]):
                answer(q, t, win_len, content)
                t += win_len
                if w < len(seg[5]):
                    z[t:t + seg[5][w]] += knobs.gap_fill * content[None]
                    busy[t:t + seg[5][w]] = True
                    t += seg[5][w]
        else:
            ed = st + length
            action = world.actions[act]
            if knobs.distractor_mix:
                mix = knobs.distractor_mix
                action = (1.0 - mix) * action + mix * world.actions[acts[q]]
                action = action / np.linalg.norm(action)
            z[st:ed] += (0.6 + 0.4 * _bump(length))[:, None] * \
                (world.objects[objs[q]] + action)[None]
            busy[st:ed] = True
            queries[q]["distractor"].append([st, ed])
    # background: stretches of 3-10 clips, each a background pattern or an unrelated object
    others = np.setdiff1d(np.arange(n_obj), objs)
    i = 0
    while i < n:
        if busy[i]:
            i += 1
            continue
        j = i
        while j < n and not busy[j]:
            j += 1
        while i < j:
            e = min(j, i + int(rng.integers(3, 11)))
            if rng.random() < 0.5:
                pattern = world.background[rng.integers(N_BACKGROUND)]
            else:
                pattern = world.objects[others[rng.integers(len(others))]] + \
                    world.actions[rng.integers(n_act)]
            z[i:e] += pattern[None]
            i = e
    if knobs.crossfade:
        z = _crossfade(z, knobs.crossfade)
    z += (0.3 / math.sqrt(D)) * rng.standard_normal(z.shape)
    if knobs.noise:
        z += (knobs.noise / math.sqrt(D)) * krng.standard_normal(z.shape)
    return n, z, queries


def _qvh_split(world: _World, rng: np.random.Generator, split: str, num_queries: int,
               qid_start: int, knobs: Knobs = Knobs(),
               krng: Optional[np.random.Generator] = None):
    ann, seg_lines, videos = [], [], []
    qid, v = qid_start, 0
    while qid - qid_start < num_queries:
        k = min(2 if rng.random() < 0.7 else 3, num_queries - (qid - qid_start))
        n, z, queries = _qvh_video(world, rng, k, knobs, krng)
        vid = f"syn{split}{v:05d}_0.0_{2 * n:.1f}"
        videos.append((vid, world.video_features(rng, z)))
        for q in queries:
            text, tfeat = world.query(rng, q["obj"], q["act"])
            wins = sorted(q["answer"])
            ids = sorted(q["saliency"])
            ann.append({
                "qid": qid, "query": text, "duration": 2 * n, "vid": vid,
                "relevant_clip_ids": ids,
                "saliency_scores": [q["saliency"][i] for i in ids],
                "relevant_windows": [[2 * st, 2 * ed] for st, ed in wins],
            })
            seg_lines.append({
                "qid": qid, "vid": vid, "object": OBJECT_WORDS["qvh"][q["obj"]],
                "action": ACTION_WORDS["qvh"][q["act"]],
                "answer_windows": [[2 * st, 2 * ed] for st, ed in wins],
                "distractor_windows": [[2 * st, 2 * ed] for st, ed in sorted(q["distractor"])],
            })
            videos[-1] += ((qid, tfeat),)
            qid += 1
        v += 1
    return ann, seg_lines, videos


# ---------------------------------------------------------------------------- tacos


def _tacos_video(world: _World, rng: np.random.Generator):
    n = int(rng.integers(200, 701))
    duration = 2.0 * n - float(rng.uniform(0.05, 1.95))
    n_obj, n_act = len(world.objects), len(world.actions)
    objs = rng.choice(n_obj, size=5, replace=False)
    events, used = [], set()
    t = duration * float(rng.uniform(0.0, 0.03))
    while True:
        if rng.random() < 0.06:
            length = float(rng.uniform(0.6, 1.9))
        else:
            length = duration * float(np.clip(math.exp(rng.normal(math.log(0.05), 0.7)),
                                              0.004, 0.25))
        if t + length > duration:
            break
        for _ in range(20):
            pair = (int(objs[rng.integers(len(objs))]), int(rng.integers(n_act)))
            if pair not in used:
                used.add(pair)
                events.append((t, t + length, pair))
                break
        t += length + duration * float(np.clip(math.exp(rng.normal(math.log(0.012), 0.8)),
                                               0.0, 0.08))
    D = LATENT_DIM
    scene = _unit(rng, 1, D)[0]
    z = np.tile(0.7 * scene, (n, 1))
    cover = np.zeros(n)
    starts = np.arange(n) * CLIP_LEN
    for st, ed, (o, a) in events:
        overlap = np.clip(np.minimum(starts + CLIP_LEN, ed) - np.maximum(starts, st), 0, None)
        w = overlap / CLIP_LEN
        z += w[:, None] * (world.objects[o] + world.actions[a])[None]
        cover += w
    # background pattern per stretch between events
    stretch = np.searchsorted(np.array([e[0] for e in events]), starts + 0.5 * CLIP_LEN)
    patterns = world.background[rng.integers(N_BACKGROUND, size=len(events) + 1)]
    z += np.clip(1.0 - cover, 0.0, 1.0)[:, None] * patterns[stretch]
    z += (0.3 / math.sqrt(D)) * rng.standard_normal(z.shape)
    return n, duration, z, events


def _tacos_split(world: _World, rng: np.random.Generator, split: str, num_queries: int):
    ann, seg_lines, videos = [], [], []
    count, v = 0, 0
    while count < num_queries:
        n, duration, z, events = _tacos_video(world, rng)
        vid = f"s{v:02d}-{split}"
        videos.append((vid, world.video_features(rng, z)))
        for j, (st, ed, (o, a)) in enumerate(events):
            if count == num_queries:
                break
            qid = f"{vid}_{j}"
            text, tfeat = world.query(rng, o, a)
            win = [round(st, 4), round(ed, 4)]
            ann.append({"qid": qid, "query": text, "duration": round(duration, 4), "vid": vid,
                        "relevant_windows": [win]})
            seg_lines.append({
                "qid": qid, "vid": vid, "object": OBJECT_WORDS["tacos"][o],
                "action": ACTION_WORDS["tacos"][a], "answer_windows": [win],
                "distractor_windows": [[round(s, 4), round(e, 4)] for s, e, (o2, a2) in events
                                       if o2 == o and a2 != a],
            })
            videos[-1] += ((qid, tfeat),)
            count += 1
        v += 1
    return ann, seg_lines, videos


# --------------------------------------------------------------------------- generate


def _split_stats(ann: List[dict], seg_lines: List[dict], videos) -> dict:
    n_clips = {vid: int(feats[0].shape[0]) for vid, feats, *_ in videos}
    gt = [sum(ed - st for st, ed in a["relevant_windows"]) / (n_clips[a["vid"]] * CLIP_LEN)
          for a in ann]
    return {
        "queries": len(ann),
        "videos": len(videos),
        "clips_min": min(n_clips.values()),
        "clips_max": max(n_clips.values()),
        "windows_per_query": round(float(np.mean([len(a["relevant_windows"]) for a in ann])), 4),
        "gt_fraction_median": round(float(np.median(gt)), 4),
        "distractors_per_query": round(float(np.mean(
            [len(s["distractor_windows"]) for s in seg_lines])), 4),
    }


def _annotation_name(variant: str, split: str) -> str:
    return f"highlight_{split}_release.jsonl" if variant == "qvh" else f"{split}.jsonl"


def generate(out_dir: Union[str, Path], variant: str = "qvh", seed: int = 0,
             train: Optional[int] = None, val: Optional[int] = None,
             video_dims: Sequence[int] = (64, 32), text_dim: int = 32,
             knobs: Union[None, Dict, Knobs] = None) -> dict:
    """Write a synthetic data set to ``out_dir`` (see the module docstring).

    Args:
        variant: ``"qvh"`` (QVHighlights-like) or ``"tacos"`` (TACoS-like).
        seed: the same seed and parameters give byte-identical files.
        train, val: number of queries per split (defaults: qvh 1200 / 300, tacos 300 / 100).
        video_dims: widths of the two video feature dirs (slowfast_features, clip_features).
        text_dim: width of the query token features.
        knobs: difficulty knobs of the ``qvh`` variant (:class:`Knobs` or a dict of its
            fields); ``None`` or all zero gives the files of the default data set, byte for
            byte. Active knobs are recorded in the manifest's parameters.

    Returns the manifest (parameters, layout, statistics per split) with ``out_dir`` and
    ``generated`` (False when an existing data set with the same parameters was kept).
    """
    if variant not in DEFAULT_SIZES:
        raise ValueError(f"variant must be 'qvh' or 'tacos', got {variant!r}")
    d_train, d_val = DEFAULT_SIZES[variant]
    train = d_train if train is None else int(train)
    val = d_val if val is None else int(val)
    video_dims = [int(d) for d in video_dims]
    if len(video_dims) != len(VIDEO_DIRS) or min(video_dims) < 1:
        raise ValueError(f"video_dims must be {len(VIDEO_DIRS)} positive ints "
                         f"({', '.join(d for d, _ in VIDEO_DIRS)}), got {video_dims}")
    if int(text_dim) < 1 or train < 1 or val < 1:
        raise ValueError("text_dim, train and val must be >= 1")
    knobs = Knobs.from_dict(knobs)
    if knobs.active() and variant != "qvh":
        raise ValueError(f"knobs apply to the 'qvh' variant only, got variant {variant!r} with "
                         f"knobs {knobs.active()}")
    params = {"format": FORMAT_VERSION, "variant": variant, "seed": int(seed), "train": train,
              "val": val, "video_dims": video_dims, "text_dim": int(text_dim)}
    if knobs.active():
        params["knobs"] = knobs.active()
    out = Path(out_dir)
    manifest_path = out / "MANIFEST.json"
    splits = {"train": train, "val": val}

    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("generator") == GENERATOR:
            complete = all((out / "annotations" / _annotation_name(variant, s)).is_file()
                           for s in splits)
            if old.get("params") == params and complete:
                return {**old, "out_dir": str(out), "generated": False}
            manifest_path.unlink()
            for sub in ("annotations", "features", "segments"):
                shutil.rmtree(out / sub, ignore_errors=True)

    feat_root = out / "features"
    for sub in [out / "annotations", out / "segments", feat_root / TEXT_DIR[0]] + \
            [feat_root / d for d, _ in VIDEO_DIRS]:
        sub.mkdir(parents=True, exist_ok=True)

    ss = np.random.SeedSequence([int(seed), 0 if variant == "qvh" else 1])
    world_ss, train_ss, val_ss = ss.spawn(3)
    world = _World(np.random.default_rng(world_ss), variant, video_dims, int(text_dim))
    stats = {}
    qid_start = 0
    # the knobs' own stream (never drawn from when they are off)
    knob_ss = np.random.SeedSequence([int(seed), 0 if variant == "qvh" else 1, KNOB_STREAM])
    for (split, count, sseq), kseq in zip((("train", train, train_ss), ("val", val, val_ss)),
                                          knob_ss.spawn(2)):
        rng = np.random.default_rng(sseq)
        if variant == "qvh":
            ann, seg_lines, videos = _qvh_split(world, rng, split, count, qid_start, knobs,
                                                np.random.default_rng(kseq))
            qid_start += count
        else:
            ann, seg_lines, videos = _tacos_split(world, rng, split, count)
        for vid, feats, *texts in videos:
            for (d, key), x in zip(VIDEO_DIRS, feats):
                _save_npz(feat_root / d / f"{vid}.npz", **{key: x})
            for qid, tfeat in texts:
                _save_npz(feat_root / TEXT_DIR[0] / f"qid{qid}.npz", **{TEXT_DIR[1]: tfeat})
        _write_jsonl(out / "annotations" / _annotation_name(variant, split), ann)
        _write_jsonl(out / "segments" / f"{split}.jsonl", seg_lines)
        stats[split] = {"annotation_file": f"annotations/{_annotation_name(variant, split)}",
                        **_split_stats(ann, seg_lines, videos)}

    manifest = {
        "generator": GENERATOR,
        "params": params,
        "clip_len": CLIP_LEN,
        "layout": {
            "annotations": "annotations/",
            "segments": "segments/{split}.jsonl",
            "video_features": [{"dir": f"features/{d}", "key": k, "dim": dim}
                               for (d, k), dim in zip(VIDEO_DIRS, video_dims)],
            "text_feature": {"dir": f"features/{TEXT_DIR[0]}", "key": TEXT_DIR[1],
                             "dim": int(text_dim), "file": "qid<qid>.npz"},
        },
        "splits": stats,
    }
    tmp = out / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    return {**manifest, "out_dir": str(out), "generated": True}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="cliptbp-synthetic",
                                description="Write a synthetic moment retrieval data set.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variant", choices=sorted(DEFAULT_SIZES), default="qvh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=None, help="training queries")
    p.add_argument("--val", type=int, default=None, help="validation queries")
    p.add_argument("--video-dims", default="64,32",
                   help="widths of slowfast_features,clip_features (default 64,32)")
    p.add_argument("--text-dim", type=int, default=32)
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a difficulty knob of the qvh variant (distractor_mix, gap_fill, "
                        "crossfade, appearance, noise); repeatable")
    a = p.parse_args(argv)
    knobs = {}
    for item in a.knob:
        name, sep, value = item.partition("=")
        try:
            knobs[name] = json.loads(value) if sep else None
        except json.JSONDecodeError:
            knobs[name] = None
        if not sep or not isinstance(knobs[name], (int, float)):
            p.error(f"--knob expects NAME=NUMBER, got {item!r}")
    try:
        dims = [int(x) for x in a.video_dims.split(",")]
    except ValueError:
        p.error(f"--video-dims must be comma-separated ints, got {a.video_dims!r}")
    try:
        summary = generate(a.out, variant=a.variant, seed=a.seed, train=a.train, val=a.val,
                           video_dims=dims, text_dim=a.text_dim, knobs=knobs)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    state = "wrote" if summary["generated"] else "already up to date:"
    print(f"{state} {summary['out_dir']} ({a.variant}, seed {a.seed})")
    for split, s in summary["splits"].items():
        print(f"  {split}: {s['queries']} queries, {s['videos']} videos, "
              f"{s['windows_per_query']} windows/query, GT fraction median "
              f"{s['gt_fraction_median']}, {s['distractors_per_query']} distractors/query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
