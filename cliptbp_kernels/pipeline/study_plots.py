"""Pictures of the evidence study (PNG, matplotlib's Agg backend): the mAP gain against
difficulty with intervals, training curves of every loss term, timelines of ground truth
against both models' predictions, and a 2-D projection of clip embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

__all__ = ["write_plots", "gain_vs_difficulty", "training_curves", "timelines",
           "embedding_projection"]

COLOURS = {"baseline": "tab:blue", "cliptbp": "tab:orange"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gain_vs_difficulty(path: Path, summary: Dict) -> None:
    """mAP gain (ClipTBP minus baseline, bootstrap 95 % interval) per setting against the
    baseline's difficulty (100 minus its NMS mAP), one panel per decoder."""
    plt = _plt()
    paired = summary["paired"]["cliptbp"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, dec in zip(axes, ("nms", "segments")):
        for setting, per in paired.items():
            m = per[dec]["MR-full-mAP"]
            x = 100.0 - per["nms"]["MR-full-mAP"]["baseline"]
            b = m["bootstrap"]
            adm = setting != "default" and summary["admission"][setting]["admitted"]
            ax.errorbar([x], [b["mean"]], yerr=[[b["mean"] - b["lo"]], [b["hi"] - b["mean"]]],
                        fmt="o" if adm else "s", color="tab:red" if adm else "tab:gray",
                        capsize=4)
            ax.annotate(setting, (x, b["mean"]), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(summary["delta"], color="k", lw=0.6, ls=":")
        ax.set_title(f"decoder: {dec}")
        ax.set_xlabel("difficulty: 100 - baseline mAP (NMS)")
    axes[0].set_ylabel("mAP gain, ClipTBP - baseline (95 % bootstrap)")
    fig.suptitle("Gain against difficulty (red: admitted hard setting; dotted: +delta)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(path: Path, histories: Dict[str, List[Dict]], title: str) -> None:
    """Every loss term per epoch, one panel per term, one line per run."""
    plt = _plt()
    keys = sorted({k for h in histories.values() for r in h for k in r
                   if k.startswith(("loss", "term_")) and isinstance(r[k], float)})
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, h in histories.items():
            pts = [(r["epoch"], r[key]) for r in h if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name, color=COLOURS.get(name.split()[0]))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timelines(path: Path, gt: List[Dict], segments: List[Dict], preds: Dict[str, List[Dict]],
              count: int = 6) -> None:
    """Ground-truth answer and distractor windows against each run's top-N predictions for
    the first ``count`` validation queries that have distractors and two or more answers
    (or any, if too few)."""
    plt = _plt()
    seg = {s["qid"]: s for s in segments}
    pick = [g for g in gt if seg[g["qid"]]["distractor_windows"]
            and len(g["relevant_windows"]) > 1][:count]
    pick += [g for g in gt if g not in pick][:count - len(pick)]
    by = {name: {p["qid"]: p for p in lines} for name, lines in preds.items()}
    rows = ["answer", "distractor", *preds]
    fig, axes = plt.subplots(len(pick), 1, figsize=(10, 1.1 + 0.45 * len(rows) * len(pick)),
                             squeeze=False)
    for ax, g in zip(axes[:, 0], pick):
        q = g["qid"]
        n = len(g["relevant_windows"])
        bars = {"answer": g["relevant_windows"], "distractor": seg[q]["distractor_windows"]}
        for name in preds:
            ranked = sorted(by[name][q]["pred_relevant_windows"], key=lambda w: -w[2])
            bars[name] = [w[:2] for w in ranked[:n]]
        for y, name in enumerate(rows):
            colour = {"answer": "tab:green", "distractor": "tab:gray"}.get(
                name, COLOURS.get(name.split()[0], "tab:purple"))
            ax.broken_barh([(s, e - s) for s, e in bars[name]], (y - 0.35, 0.7),
                           color=colour, alpha=0.5 if "segments" in name else 0.9)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=7)
        ax.set_xlim(0, float(g["duration"]))
        ax.set_title(f"qid {q}: {g.get('query', '')}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _clip_embeddings(run_dir: Path, qids: Sequence) -> Dict:
    """The encoder's clip embeddings of a run's checkpoint on validation queries."""
    from .train import load_run

    model, _, val_ds = load_run(run_dir)
    index = {val_ds[i]["qid"]: i for i in range(len(val_ds))}
    out = {}
    for q in qids:
        it = val_ds[index[q]]
        o = model(it["video"][None], torch.ones(1, it["video"].shape[0], dtype=torch.bool),
                  it["text"][None], torch.ones(1, it["text"].shape[0], dtype=torch.bool))
        out[q] = o["video_emb"][0].numpy()
    return out


def embedding_projection(path: Path, runs: Dict[str, Path], gt: List[Dict],
                         segments: List[Dict], count: int = 12) -> None:
    """PCA (2-D, per run) of the clip embeddings of ``count`` validation queries, each clip
    coloured answer / distractor / background for its query, after centring per query."""
    plt = _plt()
    seg = {s["qid"]: s for s in segments}
    qids = [g["qid"] for g in gt if seg[g["qid"]]["distractor_windows"]][:count]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        emb = _clip_embeddings(run, qids)
        xs, kinds = [], []
        for q in qids:
            e = emb[q] / np.linalg.norm(emb[q], axis=1, keepdims=True).clip(1e-6)
            e = e - e.mean(0)
            kind = np.zeros(len(e), dtype=int)
            for key, val in (("distractor_windows", 1), ("answer_windows", 2)):
                for s, t in seg[q][key]:
                    kind[int(s // 2):int(np.ceil(t / 2))] = val
            xs.append(e)
            kinds.append(kind)
        x = np.concatenate(xs)
        k = np.concatenate(kinds)
        _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        p = (x - x.mean(0)) @ vt[:2].T
        for val, label, colour in ((0, "background", "tab:gray"), (1, "distractor", "tab:red"),
                                   (2, "answer", "tab:green")):
            sel = k == val
            ax.scatter(p[sel, 0], p[sel, 1], s=6, alpha=0.6, color=colour, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8, markerscale=2)
    fig.suptitle(f"Clip embeddings of {len(qids)} validation queries (PCA, centred per query)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(out: Path, doc: Dict, qvh_jobs: List[Dict], runs_dir: Path) -> None:
    """All the study's pictures into ``out``."""
    from .eval import load_jsonl

    summary = doc["summary"]
    gain_vs_difficulty(out / "gain_vs_difficulty.png", summary)
    setting = "combined" if "combined" in summary["settings"] else summary["settings"][-1]
    seed = summary["seeds"][0]
    job = {(j["setting"], j["arm"], j["seed"]): j for j in qvh_jobs}
    base, clip = job[(setting, "baseline", seed)], job[(setting, "cliptbp", seed)]
    hist = {f"{arm} seed {seed}": json.loads((Path(j["cfg"]["out"]) / "summary.json")
                                             .read_text())["history"]
            for arm, j in (("baseline", base), ("cliptbp", clip))}
    training_curves(out / "training_curves.png", hist,
                    f"Training curves at '{setting}' (ClipTBP terms logged in both)")
    root = Path(base["data_root"])
    gt = load_jsonl(root / "annotations" / "highlight_val_release.jsonl")
    segs = load_jsonl(root / "segments" / "val.jsonl")
    preds = {}
    for arm, j in (("baseline", base), ("cliptbp", clip)):
        for dec, name in (("nms", "val_submission.jsonl"),
                          ("segments", "val_submission_segments.jsonl")):
            preds[f"{arm} {dec}"] = load_jsonl(Path(j["cfg"]["out"]) / name)
    timelines(out / "timelines.png", gt, segs, preds)
    embedding_projection(out / "embeddings.png",
                         {"baseline": Path(base["cfg"]["out"]),
                          "ClipTBP": Path(clip["cfg"]["out"])}, gt, segs)
