"""Training entry point of the reference moment retrieval pipeline.

    cliptbp-train                         # synthetic QVHighlights-like data
    cliptbp-train --no-cliptbp --seed 1   # the baseline alone
    cliptbp-train --config my.json --out runs/qvh --resume
    cliptbp-train --set data=synthetic-tacos --set batch_size=8
    torchrun --nproc_per_node 2 -m cliptbp_kernels.pipeline.train --out runs/ddp

The model (`cliptbp_kernels.pipeline.model.MomentModel`) trains with its own losses and, unless
`--no-cliptbp`, the ClipTBP losses of paper Eq. 8 (`ClipTBPLoss`, fused backend picked
automatically). Every `eval_every` epochs and at the end it writes its validation
predictions in the QVHighlights submission format and evaluates them
(`cliptbp_kernels.pipeline.eval`). Checkpoints go to `OUT/checkpoint.pt` after every epoch;
`--resume` continues from there.

Under `torchrun` (more than one process) it trains with DistributedDataParallel: gloo on CPUs,
NCCL on GPUs (one per process, `cuda:LOCAL_RANK`). `batch_size` is the global batch, split
across the ranks, and the batches are those of one process with the same seed; every loss
term is a mean over the global batch. Rank 0 alone writes logs, progress, checkpoints and
predictions; evaluation gathers every rank's predictions (each validation query once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..criterion import ClipTBPLoss
from . import data as mr_data
from .diagnostics import predict_segments
from .eval import evaluate, load_jsonl
from .model import (
    OFFSET_HEADS,
    SPAN_UNITS,
    MomentModel,
    basic_losses,
    clip_spans,
    normalized_spans,
    predict_windows,
    target_spans,
)

SYNTHETIC = {"synthetic-qvh": "qvh", "synthetic-tacos": "tacos"}


@dataclass
class TrainConfig:
    """Every setting of a training run (JSON-serialisable)."""

    data: str = "synthetic-qvh"  # "synthetic-qvh", "synthetic-tacos" or a data root folder
    dataset: str = "qvhighlights"  # layout of a data root: "qvhighlights" or "tacos"
    data_dir: str = "data/synthetic"  # where synthetic data sets are generated
    feature_root: Optional[str] = None  # default: <data root>/features
    video_features: List[List[str]] = field(
        default_factory=lambda: [["slowfast_features", "features"],
                                 ["clip_features", "pooler_output"]])
    text_feature: List[str] = field(
        default_factory=lambda: ["clip_text_features", "last_hidden_state"])
    clip_len: float = 2.0
    max_clips: Optional[int] = None
    train_split: str = "train"
    val_split: str = "val"
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    cliptbp: bool = True
    # the model's own span losses (model.basic_losses): unit of the L1 / IoU comparison
    # ("normalized": fractions of the video, or "clips") and their weights
    span_unit: str = "normalized"
    offset_scale: float = 1.0  # MomentModel's offsets are offset_scale * softplus(head) clips
    offset_head: str = "mlp"  # MomentModel's offset head: "mlp" (per clip) or "tcn"
    w_span: float = 1.0
    w_iou: float = 1.0
    # the foreground-threshold decoder's threshold (diagnostics.segment_windows); its metrics
    # are written beside those of the per-clip proposals with NMS
    fg_threshold: float = 0.5
    w_clip: float = 3.0
    w_boun: float = 3.0
    w_aux: float = 2.0
    aux_beta: float = 1.0  # SmoothL1 threshold of L_b_aux (spans in fractions of the video)
    # log ClipTBP's three terms (unweighted, without gradient) as term_clip, term_boun and
    # term_aux in every run, with or without ClipTBP in the loss
    log_terms: bool = False
    k: int = 20
    tau: float = 0.07
    positives: str = "any"
    negatives: str = "cross"
    radius: int = 1
    backend: str = "auto"
    eval_every: int = 4
    # DataLoader worker processes. 0 (load in the training process) by default: the items are
    # small feature arrays, and on a machine with few cores a worker only takes a core from
    # the training step's own threads (bench/README.md, "The training step", gives the
    # measurements).
    num_workers: int = 0
    # keep the loaded features in memory (MomentDataset's `cache`): later epochs read no file
    cache_features: bool = False
    device: str = "auto"
    out: str = "runs/default"
    progress: bool = True

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self) -> None:
        if (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                or self.num_workers < 0):
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.offset_head not in OFFSET_HEADS:
            raise ValueError(f"offset_head must be one of {OFFSET_HEADS}, got "
                             f"{self.offset_head!r}")
        if self.span_unit not in SPAN_UNITS:
            raise ValueError(f"span_unit must be one of {SPAN_UNITS}, got {self.span_unit!r}")
        if isinstance(self.offset_scale, bool) or \
                not isinstance(self.offset_scale, (int, float)) or not self.offset_scale > 0:
            raise ValueError(f"offset_scale must be a number > 0, got {self.offset_scale!r}")
        for name in ("w_span", "w_iou", "aux_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if isinstance(self.fg_threshold, bool) or not isinstance(self.fg_threshold, (int, float)) \
                or not 0 < self.fg_threshold < 1:
            raise ValueError(f"fg_threshold must be in (0, 1), got {self.fg_threshold!r}")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Dist:
    """This process's place in a training run: one process (`group` None) or a rank of a
    torch.distributed group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Optional[object] = None
    owns_group: bool = False  # this run initialised the group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.group is not None:
            torch.distributed.barrier(self.group)

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (one process: [obj])."""
        if self.group is None:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out


def setup_distributed(cfg: TrainConfig) -> tuple:
    """(Dist, device): several processes when torchrun's WORLD_SIZE > 1 or a process group is
    already initialised, else one. The group's backend is NCCL when the device is CUDA, gloo
    otherwise; each rank uses `cuda:LOCAL_RANK`."""
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg.device)
    if world <= 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not initialised:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dist.group.WORLD,
                not initialised), device


def global_batches(n: int, batch_size: int, seed: int) -> List[List[int]]:
    """The index batches one process draws in an epoch (`make_loader`'s order for `seed`),
    so that a distributed run splits the very same global batches."""
    index_loader = torch.utils.data.DataLoader(range(n), batch_size=batch_size, shuffle=True,
                                               generator=torch.Generator().manual_seed(seed))
    return [b.tolist() for b in index_loader]


def rank_share(batch: List[int], rank: int, world: int) -> List[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one). A batch
    smaller than the world is padded with its own samples, so every rank has one."""
    if len(batch) < world:
        batch = [batch[i % len(batch)] for i in range(world)]
    per, extra = divmod(len(batch), world)
    lo = rank * per + min(rank, extra)
    return batch[lo: lo + per + (rank < extra)]


def build_datasets(cfg: TrainConfig):
    """(train, val) datasets and the val annotation file, generating synthetic data if asked."""
    if cfg.data in SYNTHETIC:
        from .synthetic import generate

        variant = SYNTHETIC[cfg.data]
        root = Path(cfg.data_dir) / variant
        generate(root, variant=variant)
        layout = "qvhighlights" if variant == "qvh" else "tacos"
    else:
        root = Path(cfg.data)
        layout = cfg.dataset
    if layout not in ("qvhighlights", "tacos"):
        raise ValueError(f"dataset must be 'qvhighlights' or 'tacos'; got {layout!r}")
    kw = dict(
        feature_root=cfg.feature_root,
        video_features=tuple(mr_data.FeatureSpec(d, k) for d, k in cfg.video_features),
        text_feature=mr_data.FeatureSpec(*cfg.text_feature),
        clip_len=cfg.clip_len,
        max_clips=cfg.max_clips,
        cache=cfg.cache_features,
    )
    load = mr_data.load_qvhighlights if layout == "qvhighlights" else mr_data.load_tacos
    train, val = load(root, cfg.train_split, **kw), load(root, cfg.val_split, **kw)
    return train, val, layout


def make_loader(ds, cfg: TrainConfig, shuffle: bool, seed: int, dist_ctx: Optional[Dist] = None):
    """The DataLoader of a training or validation pass: `cfg.batch_size`, `cfg.num_workers`
    worker processes (each with one torch thread, the DataLoader's default), the order drawn
    from `seed` (the same batches whatever the number of workers). In a distributed run
    (`dist_ctx` with world > 1) a training pass yields this rank's share of each global
    batch, and a validation pass every world-th sample from the rank's own (no padding)."""
    if dist_ctx is None or dist_ctx.world == 1:
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle,
                                           collate_fn=mr_data.collate, generator=g,
                                           num_workers=cfg.num_workers)
    r, w = dist_ctx.rank, dist_ctx.world
    if shuffle:
        batches = [rank_share(b, r, w) for b in global_batches(len(ds), cfg.batch_size, seed)]
    else:
        mine = list(range(r, len(ds), w))
        per = max(1, cfg.batch_size // w)
        batches = [mine[i: i + per] for i in range(0, len(mine), per)]
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=mr_data.collate,
                                       num_workers=cfg.num_workers)


def _to(batch: Dict, device: torch.device) -> Dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def training_step(model, criterion, batch: Dict, clip_len: float,
                  cfg: Optional["TrainConfig"] = None,
                  monitor: Optional[ClipTBPLoss] = None,
                  process_group=None) -> Dict[str, torch.Tensor]:
    """Losses of one batch: the model's own (span unit and weights of `cfg`, default
    TrainConfig's), plus ClipTBP's when `criterion` is given. With `monitor` (a ClipTBPLoss
    with unit weights) ClipTBP's three terms are added as ``term_clip``, ``term_boun`` and
    ``term_aux``, computed without gradient (they never enter the loss). With
    `process_group`, the model's own terms are means over every rank's batch (the criterion
    and monitor carry their own group)."""
    cfg = cfg or TrainConfig()
    out = model(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
    labels = batch["labels"]
    spans_t = target_spans(labels, batch["windows"], clip_len)
    basic = basic_losses(out, labels, spans_t, batch["saliency"], span_unit=cfg.span_unit,
                         w_span=cfg.w_span, w_iou=cfg.w_iou, process_group=process_group)
    n = batch["video_mask"].sum(1)
    spans = dict(pred_spans=normalized_spans(clip_spans(out["offsets"]), n),
                 target_spans=normalized_spans(spans_t, n), span_mask=labels >= 1)
    if criterion is None:
        res = {"loss": sum(basic.values()), **basic}
    else:
        res = criterion(out["video_emb"], labels, basic=basic, **spans)
    if monitor is not None:
        with torch.no_grad():
            terms = monitor(out["video_emb"].detach(), labels,
                            **{k: v.detach() for k, v in spans.items()})
        res.update(term_clip=terms["loss_clip"], term_boun=terms["loss_boun"],
                   term_aux=terms["loss_aux"])
    return res


@torch.no_grad()
def predict(model, loader, device, fg_threshold: Optional[float] = None,
            dist_ctx: Optional[Dist] = None):
    """Validation predictions of the per-clip proposals with NMS; with `fg_threshold`, the
    pair (those, the foreground-threshold segments'). In a distributed run each rank
    predicts its share (`make_loader`) and every rank gets all lines, in the order of the
    validation set."""
    model.eval()
    lines: List[dict] = []
    segs: List[dict] = []
    for batch in loader:
        batch = _to(batch, device)
        out = model(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
        lines.extend(predict_windows(out, batch["num_clips"], batch["meta"]))
        if fg_threshold is not None:
            segs.extend(predict_segments(out, batch["num_clips"], batch["meta"], fg_threshold))
    model.train()
    if dist_ctx is not None and dist_ctx.world > 1:
        lines, segs = _interleave(dist_ctx.gather((lines, segs)))
    return lines if fg_threshold is None else (lines, segs)


def _interleave(shares: List[tuple]) -> tuple:
    """Rank r predicted samples r, r + world, ...: back to the data set's order."""
    w = len(shares)
    out = []
    for part in range(2):
        n = sum(len(s[part]) for s in shares)
        out.append([shares[i % w][part][i // w] for i in range(n)] if n else [])
    return tuple(out)


def _save_jsonl(path: Path, lines: List[dict]) -> None:
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def _format_table(rows: List[Dict], keys: List[str]) -> str:
    head = "| " + " | ".join(keys) + " |"
    sep = "|" + "|".join("---" for _ in keys) + "|"
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


HEADLINE = ["MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-R1@0.3"]


def _rng_state(device: torch.device) -> Dict:
    """This process's generator states: the CPU's, and the CUDA device's when it trains on
    one (dropout draws from the generator of the device it runs on)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of a rank's own generators (dropout): at the start, or after a resume with
    another world size at `epoch`."""
    return seed * 1_000_003 + epoch * 1_009 + rank


def _restore_rng(saved, dctx: Dist, device: torch.device, seed: int, epoch: int) -> str:
    """Restore this rank's generators from a checkpoint's `rng` (a list of per-rank states,
    or one CPU state tensor from a checkpoint of an earlier version). Returns what was done.

    Same world size: each rank gets its own states back (the CUDA one only if the checkpoint
    was written on CUDA and this run is on CUDA). Another world size: the generators are
    seeded from (seed, epoch, rank), since there are no states to give the new ranks."""
    if isinstance(saved, torch.Tensor):
        saved = [{"cpu": saved}]
    if len(saved) != dctx.world:
        torch.manual_seed(_rank_seed(seed, dctx.rank, epoch))
        return (f"checkpoint of {len(saved)} process(es), this run has {dctx.world}: "
                "generators seeded from (seed, epoch, rank), dropout draws differ from an "
                "uninterrupted run")
    mine = saved[dctx.rank]
    torch.set_rng_state(mine["cpu"].cpu())
    if device.type == "cuda":
        if "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
        else:
            torch.cuda.manual_seed(_rank_seed(seed, dctx.rank, epoch))
            return "checkpoint written without CUDA: the CUDA generator is seeded afresh"
    return "generators restored"


def train(cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> Dict:
    """Train and evaluate; returns the summary (also written to OUT/summary.json).

    `resume` continues from OUT/checkpoint.pt (model, optimiser, schedule, every rank's
    generator states and history), so an interrupted run ends exactly as an uninterrupted
    one on the same device kind and world size; the checkpoint loads on any device kind.
    `stop_after` ends this call after that many epochs (the checkpoint then allows resuming).
    Under torchrun it trains distributed (module docstring); other ranks return the summary
    without validation metrics.
    """
    dctx, device = setup_distributed(cfg)
    try:
        return _train(cfg, resume, stop_after, dctx, device)
    finally:
        if dctx.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, stop_after: Optional[int], dctx: Dist,
           device: torch.device) -> Dict:
    out_dir = Path(cfg.out)
    if dctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    if dctx.main:  # rank 0 generates synthetic data once; the others then read it
        train_ds, val_ds, layout = build_datasets(cfg)
    dctx.barrier()
    if not dctx.main:
        train_ds, val_ds, layout = build_datasets(cfg)
    sample = train_ds[0]
    model = MomentModel(sample["video"].shape[-1], sample["text"].shape[-1], cfg.hidden,
                        cfg.layers, cfg.heads, cfg.dropout, cfg.offset_scale,
                        cfg.offset_head).to(device)
    net = model
    if dctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        # each rank its own dropout stream (the initialisation above is the same everywhere)
        torch.manual_seed(_rank_seed(cfg.seed, dctx.rank))
    pg = dctx.group
    criterion = None
    if cfg.cliptbp:
        criterion = ClipTBPLoss(w_clip=cfg.w_clip, w_boun=cfg.w_boun, w_aux=cfg.w_aux, k=cfg.k,
                                tau=cfg.tau, positives=cfg.positives, negatives=cfg.negatives,
                                radius=cfg.radius, aux_beta=cfg.aux_beta, backend=cfg.backend,
                                process_group=pg)
    monitor = None
    if cfg.log_terms:
        monitor = ClipTBPLoss(w_clip=1.0, w_boun=1.0, w_aux=1.0, k=cfg.k, tau=cfg.tau,
                              positives=cfg.positives, negatives=cfg.negatives,
                              radius=cfg.radius, aux_beta=cfg.aux_beta, backend=cfg.backend,
                              process_group=pg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, (len(train_ds) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, pct_start=0.1,
                                                total_steps=cfg.epochs * steps_per_epoch)
    start_epoch, history = 0, []
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        how = _restore_rng(ckpt["rng"], dctx, device, cfg.seed, start_epoch)
        if dctx.main:
            print(f"resumed from {ckpt_path} at epoch {start_epoch} ({how})")
    if dctx.main:
        (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    gt_val = load_jsonl(val_ds.annotation_file)
    val_loader = make_loader(val_ds, cfg, shuffle=False, seed=cfg.seed, dist_ctx=dctx)
    step_times: List[float] = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    show = cfg.progress and tqdm is not None and dctx.main

    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        loader = make_loader(train_ds, cfg, shuffle=True, seed=cfg.seed * 1000 + epoch,
                             dist_ctx=dctx)
        it = loader
        if show:
            it = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stdout)
        sums: Dict[str, float] = {}
        n = 0
        for batch in it:
            batch = _to(batch, device)
            t0 = time.perf_counter()
            losses = training_step(net, criterion, batch, cfg.clip_len, cfg, monitor, pg)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step_times.append(time.perf_counter() - t0)
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if show:
                it.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            preds, segs = predict(model, val_loader, device, cfg.fg_threshold, dctx)
            if dctx.main:
                _save_jsonl(out_dir / "val_submission.jsonl", preds)
                _save_jsonl(out_dir / "val_submission_segments.jsonl", segs)
                metrics = evaluate(preds, gt_val)["brief"]
                record.update({k: metrics[k] for k in HEADLINE if k in metrics})
                (out_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
                seg_metrics = evaluate(segs, gt_val)["brief"]
                (out_dir / "val_metrics_segments.json").write_text(
                    json.dumps(seg_metrics, indent=2))
        history.append(record)
        rng = dctx.gather(_rng_state(device))
        if dctx.main:
            print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in record.items()
                if k != "epoch" and isinstance(v, float)))
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
                        "rng": rng, "world_size": dctx.world, "device": device.type,
                        "config": dataclasses.asdict(cfg)}, ckpt_path)
        dctx.barrier()  # the checkpoint is complete before any rank goes on (or stops)

    if end_epoch < cfg.epochs:
        if dctx.main:
            print(f"stopped after epoch {end_epoch}; continue with --resume")
        return {"config": dataclasses.asdict(cfg), "history": history, "val": None}
    if not dctx.main:
        return {"config": dataclasses.asdict(cfg), "history": history, "val": None}
    final = json.loads((out_dir / "val_metrics.json").read_text())
    final_segments = json.loads((out_dir / "val_metrics_segments.json").read_text())
    warm = step_times[3:] or step_times
    summary = {"config": dataclasses.asdict(cfg), "history": history, "val": final,
               "val_segments": final_segments, "world_size": dctx.world,
               "step_ms": 1000 * float(np.median(warm)) if warm else float("nan")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    keys = ["epoch", "loss"] + [k for k in HEADLINE if any(k in r for r in history)]
    print(_format_table(history, keys))
    print("final validation:",
          json.dumps({k: final[k] for k in final if k.startswith(("MR", "HL"))}))
    return summary


def load_run(run_dir) -> tuple:
    """(model in eval mode, its TrainConfig, the validation data set) of a finished run,
    rebuilt on the CPU from ``run_dir/checkpoint.pt``."""
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig.from_dict(ckpt["config"])
    _, val_ds, _ = build_datasets(cfg)
    sample = val_ds[0]
    model = MomentModel(sample["video"].shape[-1], sample["text"].shape[-1], cfg.hidden,
                        cfg.layers, cfg.heads, cfg.dropout, cfg.offset_scale,
                        cfg.offset_head)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, val_ds


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="cliptbp-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with TrainConfig fields")
    p.add_argument("--out", help="output folder (checkpoints, predictions, metrics)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--no-cliptbp", action="store_true", help="train without the ClipTBP losses")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (VALUE parsed as JSON when it can be)")
    return p.parse_args(argv)


def parse_overrides(items: List[str]) -> Dict:
    """{key: value} from KEY=VALUE strings; VALUE is parsed as JSON when it can be."""
    d: Dict = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            d[key] = json.loads(value)
        except json.JSONDecodeError:
            d[key] = value
    return d


def config_from_args(args) -> TrainConfig:
    d: Dict = {}
    if args.config:
        d.update(json.loads(Path(args.config).read_text()))
    d.update(parse_overrides(args.set))
    if args.out:
        d["out"] = args.out
    if args.seed is not None:
        d["seed"] = args.seed
    if args.epochs is not None:
        d["epochs"] = args.epochs
    if args.no_cliptbp:
        d["cliptbp"] = False
    return TrainConfig.from_dict(d)


def main(argv=None) -> None:
    args = parse_args(argv)
    train(config_from_args(args), resume=args.resume)


if __name__ == "__main__":
    main()
