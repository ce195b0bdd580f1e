"""Record what the adapters' tests need from the baselines' own code (never run by CI).

Given local checkouts of the baselines at the commits named in docs/integrations.md, this runs
each baseline's own foreground code (the clips its saliency / classification head is trained
on) over the real annotation files and writes a digest per baseline, data set and rule to
``tests/fixtures/baseline_foreground.json``. ``tests/library/test_baseline_foreground.py``
applies the matching ``windows_to_labels`` rule to the same files (``../shared/data``) and
compares digests, without the baselines present. No baseline code is copied: the script
imports it from the checkouts.

    .venv/bin/python scripts/record_baselines.py \\
        --univtg ../UniVTG --flashvtg ../FlashVTG --lighthouse ../lighthouse \\
        --video-mamba-suite ../video-mamba-suite --moment-detr ../moment_detr \\
        --td-detr ../TD-DETR [--data ../shared/data] \\
        [--deps /path/to/extra/site-packages] [--out tests/fixtures]

Commits: UniVTG 32659ac, FlashVTG 25b9591, lighthouse d095eaa, Video Mamba Suite ec9108b,
Moment-DETR b7e553a, TD-DETR a0ce6d3 (checked, a mismatch is an error unless
``--any-commit``; then the subject of the checkout's last commit is recorded with TD-DETR's
fixtures, so a checkout put together by hand says what it is).

Dependencies beyond this project's: ``h5py``, ``nncore``, ``pandas``, ``scipy`` and
``einops`` (imported at module level by the baselines' data set, model and matcher files).
Install them anywhere and pass that folder with ``--deps`` (``pip install --target DIR h5py
nncore pandas scipy einops``, then remove the numpy it brings along if it differs from the
project's). Modules that a baseline imports but whose code the recorded functions never call
(``torchtext``, ``timm``, ``mmengine``, ``sklearn``) are replaced by stand-ins. lighthouse
needs ``pyyaml`` and ``easydict``.

Each baseline's foreground, per query, with ``n = ceil(duration / 2)`` clips of 2 s (the
features these data sets ship with):

* UniVTG: ``DatasetMR.__getitem__`` (``main/dataset.py``), ``model_inputs["timestamp_window"]``,
  on QVHighlights val and TACoS val (rule ``"univtg"``).
* FlashVTG: ``StartEndDataset.get_saliency_labels_sub_as_query`` (its Charades-STA / TACoS
  branch), the clips of ``score_array``, on TACoS val, clip length ``duration / n`` (rule
  ``"floor"``, ``clip_len_mode = "duration/n"``).
* lighthouse: ``training/dataset.py`` (fixed clip length 2) and ``training/cg_detr_dataset.py``
  (``duration / n``), the same function, on TACoS val (rule ``"floor"``).

And one batch end to end (``tests/fixtures/baseline_univtg_batch.json``): UniVTG's own
``DatasetMR``, ``start_end_collate_mr``, ``prepare_batch_inputs_mr``, model and criterion at
initialisation (``build_model`` with UniVTG's default options, seed 0) on the first 4 queries
of QVHighlights val with random features, the recipe's model change applied to a copy of the
checkout at the line the docs name: the shapes and keys, UniVTG's own losses, the tensors
``univtg_inputs`` reads, and its labels and ``L_b_aux`` (several SmoothL1 thresholds).
Requires ``scipy`` as well (UniVTG's matcher).

FlashVTG the same way (``tests/fixtures/baseline_flashvtg_{qvhighlights,tacos}_batch.json``):
its data set class, ``start_end_collate``, ``prepare_batch_inputs``, ``build_model1`` with the
options of its own training script for the data set (``nncore`` config ``data/MR.py``), its
training step, the recipe's two lines applied; recorded: shapes, its losses, the rectified
``video_emb`` against the exported pre-ReLU tokens, its own foreground
(``saliency_all_labels``), the tensors ``flashvtg_inputs`` reads, and its results.

Moment-DETR the same way (``tests/fixtures/baseline_moment_detr_batch.json``, its recipe line
at ``moment_detr/model.py:116``): its losses, the matcher's pairs, and ``L_b_aux`` of the
matched spans through ``detr_matched_spans``.

lighthouse's seven models (``tests/fixtures/baseline_lighthouse_<model>_batch.json``): its own
options (``configs/``), data set classes, collate, ``build_model`` and the training step of
``training/train.py``, the recipe's line added to every model file.

Video Mamba Suite (``tests/fixtures/baseline_vms_batch.json``): its own data set code and the
criterion of its ``build_model`` on the same 4 QVHighlights queries; its Mamba model needs
``mamba_ssm``'s CUDA kernels and never runs (a stand-in replaces the model class; the outputs
the criterion reads are drawn at random in the layout of ``model/univtg_mamba.py``). Needs
``einops``; ``timm`` and ``mmengine`` are replaced by stand-ins.

TD-DETR (``tests/fixtures/baseline_td_detr_{qvhighlights,tacos}_batch.json``, and its
foreground on every TACoS val query in ``baseline_foreground.json``): its own data set class
reading random features written as its feature files (so its loading and its pooling of
videos over ``max_v_l`` clips run, with the clip length per sample it returns),
``start_end_collate``, ``prepare_batch_inputs``, ``build_model`` with its training scripts'
options, the recipe's two lines applied (model and data set). Needs ``scipy`` (matcher).

And FlashVTG's regression targets (``tests/fixtures/baseline_flashvtg_targets.json``): for
every query of QVHighlights val and TACoS val, the points that FlashVTG's own
``BundleLoss.get_target_single`` regresses over its own ``PointGenerator``'s points (strides
1, 2, 4, 8) and which window each regresses, as a digest that the test compares with the
points ``flashvtg_inputs`` supervises.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
CLIP_LEN = 2.0
COMMITS = {"univtg": "32659ac", "flashvtg": "25b9591", "lighthouse": "d095eaa",
           "video_mamba_suite": "ec9108b", "moment_detr": "b7e553a", "td_detr": "a0ce6d3"}
VMS_ROOT = "video-mamba-suite/video-temporal-grounding"   # UniVTG's layout inside the suite
FILES = {"qvhighlights": "qvhighlights/highlight_val_release.jsonl", "tacos": "tacos/val.jsonl"}
FIRST = 5  # queries per record written out in full (for a readable failure)


def load(path: Path) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def num_clips(rec: dict) -> int:
    return math.ceil(float(rec["duration"]) / CLIP_LEN)


def digest(items: Sequence[Tuple[object, Sequence[int]]]) -> str:
    """sha256 of one line per query: ``qid<TAB>clip clip ...`` in file order (shared with the
    test, which imports it)."""
    h = hashlib.sha256()
    for qid, clips in items:
        h.update(f"{qid}\t{' '.join(str(int(c)) for c in clips)}\n".encode())
    return h.hexdigest()


def record(baseline: str, commit: str, where: str, data: str, rule: str, clip_len_mode: str,
           items: List[Tuple[object, List[int]]]) -> dict:
    return dict(baseline=baseline, commit=commit, function=where, data=data, rule=rule,
                clip_len=CLIP_LEN, clip_len_mode=clip_len_mode, num_clips="ceil(duration / 2)",
                queries=len(items), foreground_clips=sum(len(c) for _, c in items),
                sha256=digest(items), first=[[q, list(c)] for q, c in items[:FIRST]])


def dump(doc: dict) -> str:
    """JSON with one top-level key per line (small diffs, tensors on one line each)."""
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) \
        + "\n}\n"


def git_commit(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    return out.stdout.strip()


def check_commit(name: str, path: Path, any_commit: bool) -> str:
    commit = git_commit(path)
    if not commit.startswith(COMMITS[name]) and not any_commit:
        raise SystemExit(f"--{name} {path}: HEAD is {commit or 'not a git checkout'}, expected "
                         f"{COMMITS[name]} (or pass --any-commit)")
    return commit


def stub_modules(names: Sequence[str], **attrs) -> None:
    """Empty stand-ins for modules the recorded functions never use (``attrs``: names they
    import from them)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.vocab = types.SimpleNamespace()
            for k, v in attrs.items():
                setattr(mod, k, v)
            sys.modules[name] = mod


def forget(packages: Sequence[str]) -> None:
    """Drop these top-level packages (and their submodules) from sys.modules."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]


def fresh_import(root: Path, module: str):
    """Import `module` with `root` first on sys.path, forgetting other checkouts' packages of
    the same names (``utils`` exists in several baselines)."""
    forget(("utils", "main", "model", "FlashVTG", "training", "lighthouse"))
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(root))


def import_from(root, *names: str) -> list:
    """Import `names` with `root` (a folder or a list of them) first on sys.path (without
    forgetting anything)."""
    roots = [str(r) for r in (root if isinstance(root, (list, tuple)) else [root])]
    sys.path[:0] = roots
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        for r in roots:
            sys.path.remove(r)


# --------------------------------------------------------------------------------------------
# UniVTG
# --------------------------------------------------------------------------------------------

def univtg(path: Path, data: Path, commit: str, baseline: str = "UniVTG") -> List[dict]:
    """UniVTG's ``timestamp_window`` (Video Mamba Suite: the same data set code in
    ``video-mamba-suite/video-temporal-grounding``)."""
    import torch

    stub_modules(["mmengine"])       # Video Mamba Suite's feature reader, not called here
    ds_mod = fresh_import(path, "main.dataset")
    out = []
    for name, dset in (("qvhighlights", "qvhighlights"), ("tacos", "tacos")):
        recs = load(data / FILES[name])
        for r in recs:
            r["dset_name"] = dset    # Video Mamba Suite's load_data adds it to each record
        ds = ds_mod.DatasetMR.__new__(ds_mod.DatasetMR)
        ds.dset_name = dset
        ds.data_path = str(data / FILES[name])
        ds.use_video, ds.use_tef, ds.load_labels = True, False, False
        ds.clip_len, ds.max_v_l = CLIP_LEN, 10 ** 6
        ds.data = recs
        n_of: Dict[str, int] = {}   # the clips of the query being read
        ds._get_query_feat_by_qid = lambda qid: torch.zeros(1, 4)
        ds._get_video_feat_by_vid = lambda vid, n_of=n_of: torch.zeros(n_of["n"], 4)
        items = []
        for i, rec in enumerate(recs):
            n_of["n"] = num_clips(rec)
            fg = ds[i]["model_inputs"]["timestamp_window"]
            items.append((rec["qid"], torch.nonzero(fg).flatten().tolist()))
        out.append(record(baseline, commit, "main/dataset.py DatasetMR.__getitem__ "
                          "timestamp_window", FILES[name], "univtg", "fixed", items))
        print(f"{baseline} {name}: {len(items)} queries", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------
# UniVTG end to end: its dataset, collate, model and criterion, with the recipe applied
# --------------------------------------------------------------------------------------------

# The recipe's model change (docs/integrations.md): the line to add, after which line, in
# which file. Applied to a copy of the checkout; an anchor that is not where the docs say is
# an error, so the docs' line numbers are checked too.
UNIVTG_RECIPE = dict(file="model/univtg.py", after_line=141,
                     anchor="'src_vid_mask': src_vid_mask}",
                     add='        out["vid_mem"] = vid_mem')
BATCH = 4                      # queries of the recorded batch
AUX_BETAS = (1.0, 0.1, 0.05, 0.02, 0.01)


def apply_recipe(root: Path, recipe: dict) -> None:
    path = root / recipe["file"]
    lines = path.read_text().split("\n")
    at = recipe["after_line"] - 1
    if recipe["anchor"] not in lines[at]:
        raise SystemExit(f"{recipe['file']}:{recipe['after_line']} is {lines[at].strip()!r}, "
                         f"not the recipe's anchor {recipe['anchor']!r}")
    lines.insert(at + 1, recipe["add"])
    path.write_text("\n".join(lines))


def copy_checkout(path: Path) -> Path:
    import shutil
    import tempfile

    dst = Path(tempfile.mkdtemp(prefix="cliptbp-baseline-")) / path.name
    shutil.copytree(path, dst, ignore=shutil.ignore_patterns(".git"))
    return dst


def tensor_list(t, digits: int = 6):
    """A tensor as (nested) lists of rounded floats: rows of its last dimension."""
    if t.dim() > 1:
        rows = t.reshape(-1, t.shape[-1]).tolist()
        return [[round(float(x), digits) for x in row] for row in rows]
    return [round(float(x), digits) for x in t.tolist()]


def ours(adapter_out: dict, betas: Sequence[float]) -> Dict[str, float]:
    """L_b_aux of the adapter's spans for each SmoothL1 threshold."""
    import cliptbp_kernels as ck

    res = {}
    for beta in betas:
        res[str(beta)] = float(ck.boundary_aux_loss(
            adapter_out["pred_spans"].detach(), adapter_out["target_spans"],
            mask=adapter_out["span_mask"], beta=beta))
    return res


def floats(d: dict, last_layer_only: bool = False) -> Dict[str, float]:
    """A dict of losses (tensors or numbers) or weights as floats; ``last_layer_only`` drops
    the keys of DETR's auxiliary decoder layers (``loss_span_0``, ...)."""
    return {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in d.items()
            if not (last_layer_only and k[-1].isdigit())}


def shapes(d: dict) -> Dict[str, List[int]]:
    """The shape of every tensor in ``d``."""
    return {k: list(v.shape) for k, v in d.items() if hasattr(v, "shape")}


def random_features(ds, recs: List[dict], v_dim: int, t_dim: int):
    """Random features (seed 0) in place of a data set's feature files: ``num_clips`` rows of
    ``v_dim`` per video, drawn up front, and 12 tokens of ``t_dim`` per query read. The video
    loader takes a video id or a record (Video Mamba Suite passes the record). Returns the
    generator, for draws that follow."""
    import torch

    g = torch.Generator().manual_seed(0)
    feats = {r["vid"]: torch.randn(num_clips(r), v_dim, generator=g) for r in recs}
    ds._get_query_feat_by_qid = lambda qid: torch.randn(12, t_dim, generator=g)
    ds._get_video_feat_by_vid = lambda vid: feats[vid["vid"] if isinstance(vid, dict) else vid]
    return g


def build_baseline(config, build_model: Callable, argv: Sequence[str]):
    """(options, model, criterion): the baseline's own option parser with its defaults plus
    ``argv``, on the CPU, its ``build_model`` after ``torch.manual_seed(0)``, training mode."""
    import torch

    opts = config.BaseOptions()
    opts.initialize()
    args = opts.parser.parse_args(list(argv))
    args.device = torch.device("cpu")
    torch.manual_seed(0)
    model, criterion = build_model(args)
    if model is not None:
        model.train()
    criterion.train()
    return args, model, criterion


def univtg_model(path: Path, data: Path, commit: str) -> dict:
    import torch

    from cliptbp_kernels.adapters import univtg_inputs

    root = copy_checkout(path)
    apply_recipe(root, UNIVTG_RECIPE)
    config = fresh_import(root, "main.config")
    ds_mod = fresh_import(root, "main.dataset")
    (model_mod,) = import_from(root, "model.univtg")
    v_dim, t_dim = 2816, 512            # SlowFast + CLIP video, CLIP text (QVHighlights)
    args, model, criterion = build_baseline(config, model_mod.build_model, [
        "--dset_type", "mr", "--dset_name", "qvhighlights", "--clip_length", "2",
        "--train_path", str(data / FILES["qvhighlights"]), "--v_feat_dim", str(v_dim + 2),
        "--t_feat_dim", str(t_dim)])

    recs = [r for r in load(data / FILES["qvhighlights"])][:BATCH]
    ds = ds_mod.DatasetMR.__new__(ds_mod.DatasetMR)
    ds.dset_name, ds.data_path, ds.data = "qvhighlights", str(data / FILES["qvhighlights"]), recs
    ds.use_video, ds.use_tef, ds.load_labels = True, True, True
    ds.clip_len, ds.max_v_l, ds.max_windows = 2.0, args.max_v_l, 5
    ds.span_loss_type = "l1"
    ds.add_easy_negative, ds.easy_negative_only = 1, 1
    random_features(ds, recs, v_dim, t_dim)
    import random

    random.seed(0)
    batch = ds_mod.start_end_collate_mr([ds[i] for i in range(len(recs))])
    model_inputs, targets = ds_mod.prepare_batch_inputs_mr(batch[1], "cpu")
    outputs = model(**model_inputs)
    loss_dict = criterion(outputs, targets)
    weight_dict = criterion.weight_dict
    adapter = univtg_inputs(outputs, targets)
    return dict(
        baseline="UniVTG", commit=commit, data=FILES["qvhighlights"], recipe=UNIVTG_RECIPE,
        qids=[r["qid"] for r in recs], num_clips=[num_clips(r) for r in recs],
        shapes=shapes(outputs),
        target_shapes=shapes(targets),
        baseline_losses=floats(loss_dict), weights=floats(weight_dict),
        span_loss=dict(name="loss_b", what="SmoothL1 (beta 1) of timestamp + pred_spans "
                       "against span_labels_nn, normalised units",
                       value=float(loss_dict["loss_b"].detach())),
        tensors=dict(
            timestamp=tensor_list(targets["timestamp"][..., 0]),
            timestamp_mask=tensor_list(targets["timestamp_mask"]),
            timestamp_window=tensor_list(targets["timestamp_window"]),
            span_labels_nn=tensor_list(targets["span_labels_nn"]),
            pred_spans=tensor_list(outputs["pred_spans"].detach()),
        ),
        emb=dict(key="vid_mem", shape=list(outputs["vid_mem"].shape),
                 differs_from_vid_mem_proj=bool(
                     not torch.equal(outputs["vid_mem"], outputs["vid_mem_proj"]))),
        ours=dict(labels=adapter["labels"].tolist(), loss_aux=ours(adapter, AUX_BETAS),
                  unit="fraction of the video"),
    )


MOMENT_DETR_RECIPE = dict(file="moment_detr/model.py", after_line=116,
                          anchor="vid_mem = memory[:, :src_vid.shape[1]]",
                          add='        out["vid_mem"] = vid_mem')


def detr_record(outputs: dict, model_inputs: dict, targets: dict, meta: List[dict],
                criterion, loss_dict: dict, clip_len, rule: str = "center") -> dict:
    """The DETR-style recipe on one batch (``inputs_from_windows`` on ``outputs["vid_mem"]``
    with ``clip_len`` (one number, or one per sample) and ``rule``, the matcher's pairs
    through ``detr_matched_spans``) and what the tests need of it."""
    from cliptbp_kernels.adapters import detr_matched_spans, inputs_from_windows

    windows = [m["relevant_windows"] for m in meta]
    ck_in = inputs_from_windows(outputs["vid_mem"], model_inputs["src_vid_mask"], windows,
                                clip_len=clip_len, rule=rule)
    indices = criterion.matcher({k: v for k, v in outputs.items() if k != "aux_outputs"},
                                targets)
    pred, tgt = detr_matched_spans(outputs["pred_spans"], targets["span_labels"], indices)
    adapter = dict(pred_spans=pred, target_spans=tgt, span_mask=None)
    return dict(
        qids=[m["qid"] for m in meta],
        num_clips=[int(x) for x in model_inputs["src_vid_mask"].sum(1).tolist()],
        shapes=shapes(outputs),
        baseline_losses=floats(loss_dict, last_layer_only=True),
        weights=floats(criterion.weight_dict, last_layer_only=True),
        tensors=dict(pred_spans=tensor_list(outputs["pred_spans"].detach()),
                     span_labels=[tensor_list(t["spans"]) for t in targets["span_labels"]],
                     indices=[[q.tolist(), t.tolist()] for q, t in indices],
                     src_vid_mask=tensor_list(model_inputs["src_vid_mask"])),
        meta=[{"relevant_windows": w} for w in windows],
        ours=dict(labels=ck_in["labels"].tolist(), loss_aux=ours(adapter, AUX_BETAS),
                  unit="fraction of the video", matched=int(pred.shape[0])),
    )


def moment_detr_model(path: Path, data: Path, commit: str) -> dict:
    """Moment-DETR's own ``StartEndDataset``, ``start_end_collate``, ``prepare_batch_inputs``,
    model and criterion (``build_model``, its default options, seed 0) at initialisation on
    the first 4 queries of QVHighlights val with random features, the recipe's line applied;
    then the recipe: ``inputs_from_windows`` on ``outputs["vid_mem"]`` and the matcher's
    pairs through ``detr_matched_spans``."""
    import random



    root = copy_checkout(path)
    apply_recipe(root, MOMENT_DETR_RECIPE)
    config = fresh_import(root, "moment_detr.config")
    ds_mod, model_mod = import_from(root, "moment_detr.start_end_dataset", "moment_detr.model")
    v_dim, t_dim = 2816, 512
    args, model, criterion = build_baseline(config, model_mod.build_model, [
        "--dset_name", "hl", "--v_feat_dim", str(v_dim + 2), "--t_feat_dim", str(t_dim)])
    recs = load(data / FILES["qvhighlights"])[:BATCH]
    ds = ds_mod.StartEndDataset.__new__(ds_mod.StartEndDataset)
    ds.dset_name, ds.data_path, ds.data = "hl", str(data / FILES["qvhighlights"]), recs
    ds.use_video, ds.use_tef, ds.load_labels = True, True, True
    ds.max_v_l, ds.max_q_l, ds.clip_len, ds.max_windows = args.max_v_l, args.max_q_l, 2, 5
    ds.span_loss_type, ds.txt_drop_ratio = "l1", 0
    random_features(ds, recs, v_dim, t_dim)
    random.seed(0)
    batch = ds_mod.start_end_collate([ds[i] for i in range(len(recs))])
    model_inputs, targets = ds_mod.prepare_batch_inputs(batch[1], args.device)
    outputs = model(**model_inputs)
    loss_dict = criterion(outputs, targets)
    return dict(baseline="Moment-DETR", commit=commit, data=FILES["qvhighlights"],
                recipe=MOMENT_DETR_RECIPE,
                **detr_record(outputs, model_inputs, targets, batch[0], criterion, loss_dict,
                              args.clip_length))


# lighthouse: the seven moment-retrieval models and the line of each model file after which
# the recipe adds `out["vid_mem"] = vid_mem` (the line `vid_mem = memory[:, :L_vid]`)
LIGHTHOUSE_MODELS = {"moment_detr": 147, "qd_detr": 188, "eatr": 200, "cg_detr": 346,
                     "tr_detr": 314, "uvcom": 212, "taskweave": 282}
LIGHTHOUSE_CONFIG = {"taskweave": "taskweave_mr2hd"}     # configs/model/<name>.yml


def lighthouse_models(path: Path, data: Path, commit: str) -> Dict[str, dict]:
    """Each lighthouse model on the first 4 queries of QVHighlights val (features
    ``clip_slowfast``, random values, seed 0): its own options (``training/config.py``,
    ``configs/``), data set class, collate and batch function, ``build_model``, and the training
    step of ``training/train.py`` (TaskWeave's uncertainty-weighted sum, TR-DETR's extra
    losses), with the recipe's line applied; then the recipe (``inputs_from_windows`` on
    ``outputs["vid_mem"]``, the matcher's pairs through ``detr_matched_spans``)."""
    import os
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F

    # imported by the evaluation code (training/evaluate.py) and by UVCOM's CIM.py, never
    # called in a training step
    stub_modules(["sklearn", "sklearn.metrics", "sklearn.cluster"],
                 precision_recall_curve=None, KMeans=None)

    def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
        """Stand-in for torchvision.ops.sigmoid_focal_loss (RetinaNet's focal loss), which
        TR-DETR's label loss calls: torchvision's wheels do not load with this torch."""
        p = torch.sigmoid(inputs)
        ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    focal = types.SimpleNamespace(sigmoid_focal_loss=sigmoid_focal_loss)
    stub_modules(["torchvision"], ops=types.SimpleNamespace(focal_loss=focal))
    forget(("lighthouse", "training", "config", "dataset", "cg_detr_dataset", "evaluate",
            "train", "postprocessing", "standalone_eval"))
    root = copy_checkout(path)                # every model file gets its recipe line
    recipes = {}
    for name, line in LIGHTHOUSE_MODELS.items():
        recipe = dict(file=f"lighthouse/common/{name}.py", after_line=line,
                      anchor="vid_mem = ", add=None)
        src = (root / recipe["file"]).read_text().split("\n")[line - 1]
        recipe["add"] = src[:len(src) - len(src.lstrip())] + 'out["vid_mem"] = vid_mem'
        apply_recipe(root, recipe)
        recipes[name] = recipe
    cwd = os.getcwd()
    os.chdir(root)                           # lighthouse reads configs/ relative to its root
    try:
        # training/train.py runs from training/ (``from config import ...``)
        config, ds_mod, cg_ds_mod, ev_mod, tr_mod = import_from(
            [root, root / "training"], "training.config", "training.dataset",
            "training.cg_detr_dataset", "training.evaluate", "train")
    finally:
        os.chdir(cwd)
    out = {}
    for name in LIGHTHOUSE_MODELS:
        recipe = recipes[name]
        os.chdir(root)
        try:
            opts = config.BaseOptions(LIGHTHOUSE_CONFIG.get(name, name), "qvhighlight",
                                      "clip_slowfast", None, None)
            opts.parse()
            opt = opts.option
            opt.device = "cpu"
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
            model, criterion = ev_mod.build_model(opt)
        finally:
            os.chdir(cwd)
        model.train()
        criterion.train()
        cg = opt.model_name == "cg_detr"
        klass = cg_ds_mod.CGDETR_StartEndDataset if cg else ds_mod.StartEndDataset
        collate = cg_ds_mod.cg_detr_start_end_collate if cg else ds_mod.start_end_collate
        prepare = cg_ds_mod.cg_detr_prepare_batch_inputs if cg else ds_mod.prepare_batch_inputs
        ds = klass(dset_name=opt.dset_name, domain=None,
                   data_path=str(data / FILES["qvhighlights"]), ctx_mode=opt.ctx_mode,
                   v_feat_dirs=opt.v_feat_dirs, a_feat_dirs=opt.a_feat_dirs,
                   q_feat_dir=opt.t_feat_dir, q_feat_type="last_hidden_state",
                   v_feat_types=opt.v_feat_types, a_feat_types=opt.a_feat_types,
                   max_q_l=opt.max_q_l, max_v_l=opt.max_v_l, max_a_l=opt.max_a_l,
                   clip_len=opt.clip_length, max_windows=opt.max_windows,
                   span_loss_type=opt.span_loss_type, load_labels=True)
        ds.data = ds.data[:BATCH]
        v_dim = opt.v_feat_dim - (2 if "tef" in opt.ctx_mode else 0)
        random_features(ds, ds.data, v_dim, opt.t_feat_dim)
        random.seed(0)
        batch = collate([ds[i] for i in range(len(ds.data))])
        model_inputs, targets = prepare(batch[1], "cpu")
        if name == "taskweave":
            model_inputs["epoch_i"] = 0
            # taskweave_transformer.py calls .cuda() on a new tensor: a no-op on this CPU run
            to_cuda = torch.Tensor.cuda
            torch.Tensor.cuda = lambda self, *a, **k: self
            try:
                outputs, (hd_log_var, mr_log_var) = model(**model_inputs)
            finally:
                torch.Tensor.cuda = to_cuda
            loss_dict = criterion(outputs, targets)
            losses = tr_mod.calculate_taskweave_losses(loss_dict, criterion.weight_dict,
                                                       hd_log_var, mr_log_var)
        else:
            outputs = model(**model_inputs, targets=targets) if cg else model(**model_inputs)
            loss_dict = criterion(outputs, targets)
            losses = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict
                         if k in criterion.weight_dict)
            if name == "tr_detr":
                losses = losses + tr_mod.additional_trdetr_losses(model_inputs, outputs, targets,
                                                                  opt)
        out[name] = dict(baseline="lighthouse", model=name, commit=commit,
                         data=FILES["qvhighlights"], recipe=recipe,
                         exports_video_mask="video_mask" in outputs,
                         total=float(losses.detach()),
                         **detr_record(outputs, model_inputs, targets, batch[0], criterion,
                                       loss_dict, opt.clip_length))
        print(f"lighthouse {name}: losses {out[name]['baseline_losses']}", file=sys.stderr)
    return out


def vms_criterion(path: Path, data: Path, commit: str) -> dict:
    """Video Mamba Suite: its own ``DatasetMR``, collate, ``prepare_batch_inputs_mr`` and the
    criterion its ``build_model`` constructs, on the first 4 queries of QVHighlights val. Its
    model needs ``mamba_ssm``'s CUDA kernels and does not run here: ``build_model``'s model
    class is replaced by a stand-in, and the outputs the criterion reads are drawn at random
    (seed 0) in the layout of ``model/univtg_mamba.py`` (``sigmoid(.) * (-1, 1)`` spans)."""
    import random

    import torch

    from cliptbp_kernels.adapters import univtg_inputs

    root = path / VMS_ROOT
    stub_modules(["mmengine"])
    stub_modules(["timm", "timm.models", "timm.models.layers"], DropPath=torch.nn.Identity)
    config = fresh_import(root, "main.config")
    ds_mod = importlib.import_module("main.dataset")
    (model_mod,) = import_from(root, "model.univtg_mamba")
    model_mod.Model = lambda *a, **k: None          # the Mamba model: not built, never run
    v_dim, t_dim = 2816, 512
    args, _, criterion = build_baseline(config, model_mod.build_model, [
        "--dset_type", "mr", "--dset_name", "qvhighlights", "--clip_length", "2",
        "--train_path", str(data / FILES["qvhighlights"]), "--v_feat_dim", str(v_dim + 2),
        "--t_feat_dim", str(t_dim)])
    recs = load(data / FILES["qvhighlights"])[:BATCH]
    for r in recs:
        r["dset_name"] = "qvhighlights"
    ds = ds_mod.DatasetMR.__new__(ds_mod.DatasetMR)
    ds.dset_name, ds.data_path, ds.data = "qvhighlights", str(data / FILES["qvhighlights"]), recs
    ds.use_video, ds.use_tef, ds.load_labels = True, True, True
    ds.clip_len, ds.max_v_l, ds.max_windows, ds.span_loss_type = 2.0, args.max_v_l, 5, "l1"
    ds.add_easy_negative, ds.easy_negative_only = 1, 1
    g = random_features(ds, recs, v_dim, t_dim)     # the model outputs: drawn after them
    random.seed(0)
    batch = ds_mod.start_end_collate_mr([ds[i] for i in range(len(recs))])
    _, targets = ds_mod.prepare_batch_inputs_mr(batch[1], "cpu")
    B, T = targets["timestamp_mask"].shape
    D = 1024
    outputs = dict(
        pred_logits=torch.randn(B, T, 1, generator=g).sigmoid(),
        pred_spans=torch.randn(B, T, 2, generator=g).sigmoid() * torch.tensor([-1.0, 1.0]),
        src_vid_mask=targets["timestamp_mask"], saliency_scores=torch.randn(B, T, generator=g),
        vid_mem=torch.randn(B, T, D, generator=g), vid_mem_proj=torch.randn(B, T, D, generator=g),
        txt_mem_proj=torch.randn(B, 1, D, generator=g))
    loss_dict = criterion(outputs, targets)
    adapter = univtg_inputs(outputs, targets)
    return dict(
        baseline="Video Mamba Suite", commit=commit, data=FILES["qvhighlights"],
        model="not run: needs mamba_ssm's CUDA kernels; outputs drawn at random in its layout",
        qids=[r["qid"] for r in recs], num_clips=[num_clips(r) for r in recs],
        target_shapes=shapes(targets),
        baseline_losses=floats(loss_dict), weights=floats(criterion.weight_dict),
        tensors=dict(
            timestamp=tensor_list(targets["timestamp"][..., 0]),
            timestamp_mask=tensor_list(targets["timestamp_mask"]),
            timestamp_window=tensor_list(targets["timestamp_window"]),
            span_labels_nn=tensor_list(targets["span_labels_nn"]),
            pred_spans=tensor_list(outputs["pred_spans"])),
        ours=dict(labels=adapter["labels"].tolist(), loss_aux=ours(adapter, AUX_BETAS),
                  unit="fraction of the video"),
    )


# --------------------------------------------------------------------------------------------
# the floor rule: FlashVTG and lighthouse
# --------------------------------------------------------------------------------------------

def floor_items(fn: Callable, recs: List[dict], with_duration: bool) -> List[Tuple]:
    import numpy as np

    items = []
    for rec in recs:
        n = num_clips(rec)
        win = rec["relevant_windows"][0]
        if with_duration:
            res = fn(win, rec["duration"], n)
        else:
            res = fn(win, n)
        items.append((rec["qid"], np.nonzero(np.asarray(res[2]))[0].tolist()))
    return items


def flashvtg(path: Path, data: Path, commit: str) -> List[dict]:
    stub_modules(["torchtext"])
    mod = fresh_import(path, "FlashVTG.start_end_dataset")
    self = types.SimpleNamespace(dset_name="tacos")
    fn = lambda w, d, n: mod.StartEndDataset.get_saliency_labels_sub_as_query(self, w, d, n)
    items = floor_items(fn, load(data / FILES["tacos"]), True)
    print(f"FlashVTG tacos: {len(items)} queries", file=sys.stderr)
    return [record("FlashVTG", commit, "FlashVTG/start_end_dataset.py "
                   "get_saliency_labels_sub_as_query", FILES["tacos"], "floor", "duration/n",
                   items)]


# --------------------------------------------------------------------------------------------
# FlashVTG's regression targets: which points regress which window
# --------------------------------------------------------------------------------------------

FLASHVTG_STRIDES = (1, 2, 4, 8)      # data/MR.py
FLASHVTG_BUFFER = 1024


def pyramid_sizes(T: int) -> List[int]:
    """Lengths of FlashVTG's pyramid levels for T clips (ConvPyramid: a level is skipped when
    T < stride; each factor 2 is a Conv1d with kernel 2 and stride 2, floor(L / 2))."""
    sizes = []
    for s in FLASHVTG_STRIDES:
        if T < s:
            continue
        n = T
        for _ in range(int(math.log2(s))):
            n = (n - 2) // 2 + 1
        sizes.append(n)
    return sizes


def flashvtg_targets(path: Path, data: Path, commit: str) -> List[dict]:
    """For every query: the points FlashVTG's own ``BundleLoss.get_target_single`` regresses
    (``c_tgt``) and their targets (``r_tgt``, stride units), over its own ``PointGenerator``'s
    points; as a digest of ``qid<TAB>point:window ...``, ``window`` the index (in the
    annotation's order) of the window nearest to ``(point - r_tgt[0] * stride, point +
    r_tgt[1] * stride)``, the window the point regresses (shared with the test)."""
    import torch

    # blocks/ registers its classes with nncore once per process: reuse it when the model
    # step imported it already (from a copy of the same checkout)
    gen_mod, loss_mod = import_from(path, "blocks.generator", "blocks.loss")
    gen = gen_mod.PointGenerator(FLASHVTG_STRIDES, FLASHVTG_BUFFER)
    crit = loss_mod.BundleLoss.__new__(loss_mod.BundleLoss)
    crit.sample_radius = 1.5
    out = []
    for name in ("qvhighlights", "tacos"):
        items = []
        for rec in load(data / FILES[name]):
            T = num_clips(rec)
            point = gen([torch.zeros(1, n, 1) for n in pyramid_sizes(T)])
            gt = torch.tensor(rec["relevant_windows"], dtype=torch.float32) * \
                torch.tensor(1 / CLIP_LEN, dtype=torch.float32)
            c_tgt, r_tgt = crit.get_target_single(point, gt, gt.new_ones(len(gt), 1).long())
            pos = torch.nonzero(c_tgt > 0).flatten()
            st = point[pos, 0] - r_tgt[pos, 0] * point[pos, 3]
            ed = point[pos, 0] + r_tgt[pos, 1] * point[pos, 3]
            items.append((rec["qid"], point_items(pos, torch.stack((st, ed), -1), gt)))
        out.append(dict(baseline="FlashVTG", commit=commit,
                        function="blocks/loss.py BundleLoss.get_target_single over "
                                 "blocks/generator.py PointGenerator((1, 2, 4, 8), 1024)",
                        data=FILES[name], clip_len=CLIP_LEN, num_clips="ceil(duration / 2)",
                        queries=len(items), positives=sum(len(c) for _, c in items),
                        sha256=digest_strings(items),
                        first=[[q, c] for q, c in items[:FIRST]]))
        print(f"FlashVTG targets {name}: {len(items)} queries", file=sys.stderr)
    return out


def point_items(pos, windows, gt) -> List[str]:
    """``point:k`` for each regressed point, ``k`` the nearest of the annotated windows
    ``gt`` (clips) to the window it regresses."""
    near = (windows[:, None, :] - gt[None, :, :]).abs().sum(-1).argmin(dim=1)
    return [f"{int(j)}:{int(k)}" for j, k in zip(pos.tolist(), near.tolist())]


# The recipe's model change for FlashVTG (docs/integrations.md): two lines of
# FlashVTG/model.py at 25b9591, inserted after the anchors (applied bottom-up).
FLASHVTG_RECIPE = [
    dict(file="FlashVTG/model.py", after_line=221, anchor='output["video_emb"] = video_emb',
         add='                output["video_emb_pre_relu"] = video_emb_pre_relu'),
    dict(file="FlashVTG/model.py", after_line=187, anchor="video_msk = (~video_msk).int()",
         add="        video_emb_pre_relu = video_emb.clone()"),
]
# the options of FlashVTG/scripts/tacos/train.sh and FlashVTG/scripts/train_qv_slowclip.sh
FLASHVTG_ARGS = {
    "tacos": [
        "--dset_name", "tacos", "--ctx_mode", "video_tef", "--enc_layers", "3",
        "--t2v_layers", "8", "--dummy_layers", "3", "--num_dummies", "35", "--kernel_size", "5",
        "--num_conv_layers", "2", "--num_mlp_layers", "5", "--lw_reg", "1", "--lw_cls", "5",
        "--lw_sal", "0.05", "--lw_saliency", "0.8", "--label_loss_coef", "4", "--use_neg",
        "--max_v_l", "-1", "--max_q_l", "-1", "--clip_length", "2", "--t_feat_dim", "512",
        "--v_feat_dim", "2816"],
    "qvhighlights": [
        "--dset_name", "hl", "--ctx_mode", "video_tef", "--enc_layers", "3",
        "--t2v_layers", "6", "--dummy_layers", "2", "--num_dummies", "40", "--kernel_size", "5",
        "--num_conv_layers", "1", "--num_mlp_layers", "5", "--lw_reg", "1", "--lw_cls", "5",
        "--lw_sal", "0.1", "--lw_saliency", "0.8", "--label_loss_coef", "4", "--use_neg",
        "--use_SRM", "--max_v_l", "75", "--max_q_l", "40", "--clip_length", "2",
        "--t_feat_dim", "512", "--v_feat_dim", "2816"],
}


def flashvtg_model(path: Path, data: Path, commit: str, name: str) -> dict:
    """FlashVTG's own data set code, collate, model and criterion at initialisation on the
    first 4 queries of the data set's val file (random features), the recipe applied, with
    the options of FlashVTG's own training script for that data set; its training step
    (``train.py``: ``targets["label"] = batch[0]``, ``targets["fps"]``, the model, the
    criterion, the weighted sum) and ``flashvtg_inputs`` on the same outputs."""
    import random

    import nncore
    import numpy as np
    import torch

    import cliptbp_kernels as ck
    from cliptbp_kernels.adapters import flashvtg_inputs

    stub_modules(["torchtext"])
    root = copy_checkout(path)
    for recipe in FLASHVTG_RECIPE:
        apply_recipe(root, recipe)
    config = fresh_import(root, "FlashVTG.config")
    ds_mod, model_mod = import_from(root, "FlashVTG.start_end_dataset", "FlashVTG.model")
    opts = config.BaseOptions()
    opts.initialize()
    args = opts.parser.parse_args([str(root / "data" / "MR.py")] + FLASHVTG_ARGS[name])
    args.v_feat_dim += 2                                 # tef, as BaseOptions.parse adds
    args.device = torch.device("cpu")
    args.cfg = nncore.Config.from_file(str(root / "data" / "MR.py"))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model, criterion = model_mod.build_model1(args)
    model.train()
    criterion.train()

    recs = load(data / FILES[name])[:BATCH]
    ds = ds_mod.StartEndDataset.__new__(ds_mod.StartEndDataset)
    ds.dset_name, ds.data_path, ds.data = args.dset_name, str(data / FILES[name]), recs
    ds.use_glove, ds.use_video, ds.use_tef, ds.load_labels = False, True, True, True
    ds.max_v_l = args.max_v_l if args.max_v_l > 0 else 10 ** 8
    ds.max_q_l = args.max_q_l if args.max_q_l > 0 else 100
    ds.clip_len, ds.max_windows = 2, 5
    ds.span_loss_type, ds.txt_drop_ratio = "l1", 0
    random_features(ds, recs, 2816, 512)
    ds._preload_data()
    batch = ds_mod.start_end_collate([ds[i] for i in range(len(recs))])
    model_inputs, targets = ds_mod.prepare_batch_inputs(batch[1], args.device)
    targets["label"] = batch[0]
    targets["fps"] = torch.full((256,), 1 / args.clip_length)
    outputs = model(**model_inputs, targets=targets)
    criterion(batch, outputs, targets)
    loss_dict = {k: v for k, v in outputs.items() if "loss" in k}
    weight_dict = criterion.weight_dict
    adapter = flashvtg_inputs(outputs, targets, clip_len=args.clip_length)
    msk = outputs["video_msk"]
    pre, post = outputs["video_emb_pre_relu"], outputs["video_emb"]
    valid = msk.bool()
    return dict(
        baseline="FlashVTG", commit=commit, data=FILES[name], recipe=FLASHVTG_RECIPE,
        qids=[r["qid"] for r in recs], num_clips=[num_clips(r) for r in recs],
        shapes=shapes(outputs),
        baseline_losses=floats(loss_dict), weights=floats(weight_dict),
        span_loss=dict(name="loss_reg", what="L1 of out_coord against (p - st, ed - p) / "
                       "stride on the regressed points, every level",
                       value=float(loss_dict["loss_reg"].detach())),
        video_emb=dict(
            zero_fraction_video_emb=float((post[valid] == 0).float().mean()),
            zero_fraction_pre_relu=float((pre[valid] == 0).float().mean()),
            min_cosine_video_emb=float(torch.nn.functional.normalize(post[0][valid[0]], dim=-1)
                                       .matmul(torch.nn.functional.normalize(
                                           post[0][valid[0]], dim=-1).T).min()),
            equals_relu_of_pre=bool(torch.equal(post, pre.relu()))),
        own_foreground=[torch.nonzero(torch.as_tensor(x) > 0).flatten().tolist()
                        for x in targets["saliency_all_labels"]],
        tensors=dict(out_coord=tensor_list(outputs["out_coord"].detach()),
                     point=tensor_list(outputs["point"]), video_msk=tensor_list(msk.float())),
        meta=[{k: r[k] for k in ("relevant_windows", "duration", "relevant_clip_ids") if k in r}
              for r in recs],
        ours=dict(labels=adapter["labels"].tolist(),
                  positives=int(adapter["span_mask"].sum()),
                  positives_stride1=int(adapter["span_mask"][:, :msk.shape[1]].sum()),
                  loss_aux=ours(adapter, AUX_BETAS), unit="fraction of the video",
                  aux_clips_stride1=float(ck.boundary_aux_loss(
                      adapter["pred_spans"][:, :msk.shape[1]].detach()
                      * torch.tensor(valid.sum(1), dtype=torch.float32)[:, None, None],
                      adapter["target_spans"][:, :msk.shape[1]]
                      * torch.tensor(valid.sum(1), dtype=torch.float32)[:, None, None],
                      mask=adapter["span_mask"][:, :msk.shape[1]], beta=1.0))),
    )


def digest_strings(items: Sequence[Tuple[object, Sequence[str]]]) -> str:
    """sha256 of one line per query: ``qid<TAB>item item ...`` in file order."""
    h = hashlib.sha256()
    for qid, strs in items:
        h.update(f"{qid}\t{' '.join(strs)}\n".encode())
    return h.hexdigest()


def lighthouse(path: Path, data: Path, commit: str) -> List[dict]:
    out = []
    recs = load(data / FILES["tacos"])
    for module, cls, with_duration in (("training.dataset", "StartEndDataset", False),
                                       ("training.cg_detr_dataset", "CGDETR_StartEndDataset",
                                        True)):
        klass = getattr(fresh_import(path, module), cls)
        self = types.SimpleNamespace(dset_name="tacos", clip_len=CLIP_LEN)
        if with_duration:
            fn = lambda w, d, n, k=klass, s=self: k.get_saliency_labels_sub_as_query(s, w, d, n)
        else:
            fn = lambda w, n, k=klass, s=self: k.get_saliency_labels_sub_as_query(s, w, n)
        items = floor_items(fn, recs, with_duration)
        mode = "duration/n" if with_duration else "fixed"
        out.append(record("lighthouse", commit, f"training/{module.split('.')[-1]}.py "
                          "get_saliency_labels_sub_as_query", FILES["tacos"], "floor", mode,
                          items))
        print(f"lighthouse {module}: {len(items)} queries", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------
# TD-DETR: its own pooling of long videos, the clip length per sample, its floor rule
# --------------------------------------------------------------------------------------------

TD_DETR_RECIPES = (
    dict(file="td_detr/model.py", after_line=145,
         anchor="vid_mem = memory[:, :src_vid.shape[1]]", add='        out["vid_mem"] = vid_mem'),
    dict(file="td_detr/start_end_dataset.py", after_line=100,
         anchor='model_inputs["video_feat"], clip_len = self._get_video_feat_by_vid(meta["vid"])',
         add='            meta["clip_len"] = clip_len'),
)
# its own training scripts' options (td_detr/scripts/train.sh, td_detr/scripts/tacos/train_tacos.sh)
TD_DETR_OPTIONS = {
    "qvhighlights": ["--dset_name", "hl", "--max_v_l", "75"],
    "tacos": ["--dset_name", "tacos", "--max_v_l", "200", "--lw_saliency", "4",
              "--enc_layers", "3", "--dec_layers", "3", "--span_loss_coef", "10",
              "--giou_loss_coef", "1", "--set_cost_span", "10", "--set_cost_giou", "1"],
}
TD_DETR_MAX_V_L = {"qvhighlights": 75, "tacos": 200}
TD_DETR_DSET = {"qvhighlights": "hl", "tacos": "tacos"}


def td_detr_checkout_note(path: Path) -> str:
    """The subject of the checkout's last commit, recorded when it is not the named commit
    (a checkout put together from the stored files says so there)."""
    out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%s"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def td_detr_dataset(mod, name: str, recs: List[dict], v_dims: Sequence[int], t_dim: int,
                    seed: int = 0):
    """TD-DETR's own ``StartEndDataset`` over ``recs`` with random features written as the
    feature files it reads (so its own loading, L2 normalisation and pooling run): ``num_clips``
    rows per video in each of ``v_dims``' folders, 12 query tokens of ``t_dim``."""
    import tempfile

    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="cliptbp-td-detr-"))
    rng = np.random.default_rng(seed)
    v_dirs = []
    for j in range(len(v_dims)):
        (tmp / f"v{j}").mkdir()
        v_dirs.append(str(tmp / f"v{j}"))
    (tmp / "q").mkdir()
    for r in recs:
        for vd, d in zip(v_dirs, v_dims):
            path = Path(vd) / f"{r['vid']}.npz"
            if not path.exists():
                np.savez(path, features=rng.standard_normal((num_clips(r), d)).astype("f4"))
        qname = r["qid"] if name == "tacos" else f"qid{r['qid']}"
        np.savez(tmp / "q" / f"{qname}.npz",
                 last_hidden_state=rng.standard_normal((12, t_dim)).astype("f4"))
    data_path = tmp / "val.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return mod.StartEndDataset(
        dset_name=TD_DETR_DSET[name], data_path=str(data_path), v_feat_dirs=v_dirs,
        q_feat_dir=str(tmp / "q"), q_feat_type="last_hidden_state", max_q_l=32,
        max_v_l=TD_DETR_MAX_V_L[name], ctx_mode="video_tef", clip_len=2, max_windows=5,
        span_loss_type="l1", txt_drop_ratio=0)


def td_detr_foreground(path: Path, data: Path, commit: str) -> List[dict]:
    """TD-DETR's own foreground on every TACoS val query: ``StartEndDataset.__getitem__``
    (its video loader pools a video of more than ``max_v_l`` = 200 clips to 200 rows and
    returns that sample's clip length; ``get_saliency_labels_sub_as_query`` labels with it),
    the clips of ``saliency_all_labels``; one feature column per video, nothing random."""
    import random

    import torch

    root = copy_checkout(path)
    for recipe in TD_DETR_RECIPES:
        apply_recipe(root, recipe)
    (mod,) = import_from(root, "td_detr.start_end_dataset")
    recs = load(data / FILES["tacos"])
    ds = td_detr_dataset(mod, "tacos", [dict(r) for r in recs], (1,), 1)
    random.seed(0)
    items, lengths = [], []
    for i, rec in enumerate(recs):
        meta, inputs = ds[i]
        fg = torch.nonzero(torch.as_tensor(inputs["saliency_all_labels"]) > 0).flatten()
        items.append((rec["qid"], fg.tolist()))
        lengths.append(meta["clip_len"])
    pooled = sum(1 for L in lengths if L != CLIP_LEN)
    print(f"TD-DETR tacos: {len(items)} queries, {pooled} on pooled videos", file=sys.stderr)
    out = record("TD-DETR", commit, "td_detr/start_end_dataset.py StartEndDataset.__getitem__ "
                 "saliency_all_labels", FILES["tacos"], "floor", "pooled:200", items)
    out["pooled_queries"] = pooled
    if not commit.startswith(COMMITS["td_detr"]):
        out["checkout"] = td_detr_checkout_note(path)
    return [out]


def td_detr_model(path: Path, data: Path, commit: str, name: str) -> dict:
    """TD-DETR's own ``StartEndDataset`` (its loading and pooling of the feature files),
    ``start_end_collate``, ``prepare_batch_inputs``, ``build_model`` with the options of its
    training script for the data set, its training step's loss, at initialisation (seed 0),
    the recipe's two lines applied: on 4 val queries, for TACoS the first two on videos of
    more than 400 clips (pooled to 200 rows of more than 4 s) and the first two on videos of
    at most 200 clips. Then the recipe:
    ``inputs_from_windows`` with each sample's clip length (floor rule on TACoS)."""
    import random

    import torch

    root = copy_checkout(path)
    for recipe in TD_DETR_RECIPES:
        apply_recipe(root, recipe)
    config = fresh_import(root, "td_detr.config")
    ds_mod, model_mod = import_from(root, "td_detr.start_end_dataset", "td_detr.model")
    v_dims, t_dim = (2304, 512), 512
    args, model, criterion = build_baseline(config, model_mod.build_model, [
        "--v_feat_dim", str(sum(v_dims) + 2), "--t_feat_dim", str(t_dim),
        "--clip_length", "2", *TD_DETR_OPTIONS[name]])
    recs = load(data / FILES[name])
    if name == "tacos":
        long = [r for r in recs if num_clips(r) > 2 * TD_DETR_MAX_V_L[name]][:2]
        short = [r for r in recs if num_clips(r) <= TD_DETR_MAX_V_L[name]][:2]
        recs = long + short
    else:
        recs = recs[:BATCH]
    ds = td_detr_dataset(ds_mod, name, recs, v_dims, t_dim)
    random.seed(0)
    batch = ds_mod.start_end_collate([ds[i] for i in range(len(recs))])
    model_inputs, targets = ds_mod.prepare_batch_inputs(batch[1], args.device)
    outputs = model(**model_inputs)
    loss_dict = criterion(outputs, targets)
    meta = batch[0]
    rule = "floor" if name == "tacos" else "center"
    lengths = [float(m["clip_len"]) for m in meta]
    rec = detr_record(outputs, model_inputs, targets, meta, criterion, loss_dict, lengths, rule)
    rec["ours"].update(rule=rule, clip_len=lengths)
    own = targets["saliency_all_labels"] > 0
    doc = dict(baseline="TD-DETR", commit=commit, data=FILES[name], recipe=list(TD_DETR_RECIPES),
               options=TD_DETR_OPTIONS[name], **rec,
               own_foreground=[torch.nonzero(row).flatten().tolist() for row in own])
    doc["video_clips"] = [num_clips(r) for r in recs]
    if not commit.startswith(COMMITS["td_detr"]):
        doc["checkout"] = td_detr_checkout_note(path)
    return doc


def merge_records(target: Path, records: List[dict]) -> List[dict]:
    """The foreground records of ``target`` with those of the baselines recorded now put in
    place (the same baseline, data, rule and clip length mode) or appended: a run with some
    of the checkouts keeps the others' records."""
    def key(r):
        return r["baseline"], r["data"], r["rule"], r["clip_len_mode"]

    new = {key(r): r for r in records}
    old = json.loads(target.read_text())["records"] if target.is_file() else []
    merged = [new.pop(key(r), r) for r in old]
    return merged + list(new.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/record_baselines.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--univtg", type=Path, help="checkout of showlab/UniVTG")
    p.add_argument("--flashvtg", type=Path, help="checkout of Zhuo-Cao/FlashVTG")
    p.add_argument("--lighthouse", type=Path, help="checkout of line/lighthouse")
    p.add_argument("--video-mamba-suite", dest="video_mamba_suite", type=Path,
                   help="checkout of OpenGVLab/video-mamba-suite")
    p.add_argument("--moment-detr", dest="moment_detr", type=Path,
                   help="checkout of jayleicn/moment_detr")
    p.add_argument("--td-detr", dest="td_detr", type=Path,
                   help="checkout of xyangzhou/TD-DETR")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--deps", type=Path, default=None,
                   help="folder with h5py, nncore and pandas (appended to sys.path)")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    p.add_argument("--any-commit", action="store_true")
    args = p.parse_args(argv)
    if args.deps is not None:
        sys.path.append(str(args.deps))
    for name in FILES.values():
        if not (args.data / name).is_file():
            raise SystemExit(f"--data {args.data}: {name} not found")
    records: List[dict] = []
    steps: Dict[str, Callable] = {
        "univtg": univtg, "flashvtg": flashvtg, "lighthouse": lighthouse,
        "video_mamba_suite": lambda p, d, c: univtg(p / VMS_ROOT, d, c, "Video Mamba Suite"),
        "td_detr": td_detr_foreground}
    for name, fn in steps.items():
        path = getattr(args, name)
        if path is None:
            print(f"{name}: no checkout given, skipped", file=sys.stderr)
            continue
        records += fn(path.resolve(), args.data, check_commit(name, path, args.any_commit))
    if all(getattr(args, name) is None for name in COMMITS):
        raise SystemExit("no baseline checkout given (--univtg, --flashvtg, --lighthouse, "
                         "--video-mamba-suite, --moment-detr, --td-detr)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.univtg is not None:
        batch = univtg_model(args.univtg.resolve(), args.data, git_commit(args.univtg))
        (args.out / "baseline_univtg_batch.json").write_text(dump(batch))
        print(f"UniVTG batch: losses {batch['baseline_losses']}", file=sys.stderr)
    if args.moment_detr is not None:
        check_commit("moment_detr", args.moment_detr, args.any_commit)
        batch = moment_detr_model(args.moment_detr.resolve(), args.data,
                                  git_commit(args.moment_detr))
        (args.out / "baseline_moment_detr_batch.json").write_text(dump(batch))
        print(f"Moment-DETR batch: losses {batch['baseline_losses']}", file=sys.stderr)
    if args.lighthouse is not None:
        for name, batch in lighthouse_models(args.lighthouse.resolve(), args.data,
                                             git_commit(args.lighthouse)).items():
            (args.out / f"baseline_lighthouse_{name}_batch.json").write_text(dump(batch))
    if args.video_mamba_suite is not None:
        batch = vms_criterion(args.video_mamba_suite.resolve(), args.data,
                              git_commit(args.video_mamba_suite))
        (args.out / "baseline_vms_batch.json").write_text(dump(batch))
        print(f"Video Mamba Suite batch: losses {batch['baseline_losses']}", file=sys.stderr)
    if args.td_detr is not None:
        for name in ("qvhighlights", "tacos"):
            batch = td_detr_model(args.td_detr.resolve(), args.data, git_commit(args.td_detr),
                                  name)
            (args.out / f"baseline_td_detr_{name}_batch.json").write_text(dump(batch))
            print(f"TD-DETR {name} batch: losses {batch['baseline_losses']}", file=sys.stderr)
    if args.flashvtg is not None:
        commit = git_commit(args.flashvtg)
        for name in ("qvhighlights", "tacos"):
            batch = flashvtg_model(args.flashvtg.resolve(), args.data, commit, name)
            (args.out / f"baseline_flashvtg_{name}_batch.json").write_text(dump(batch))
            print(f"FlashVTG {name} batch: losses {batch['baseline_losses']}", file=sys.stderr)
        recs = flashvtg_targets(args.flashvtg.resolve(), args.data, commit)
        (args.out / "baseline_flashvtg_targets.json").write_text(
            json.dumps(dict(records=recs), indent=1) + "\n")
    target = args.out / "baseline_foreground.json"
    doc = dict(about="Each baseline's own foreground per query, recorded from its code by "
                     "scripts/record_baselines.py; compared by "
                     "tests/library/test_baseline_foreground.py",
               records=merge_records(target, records))
    target.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(records)} records ({len(doc['records'])} in all) to {target}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
