"""The training pipeline in two gloo processes (DDP): the same model as one process on the
same global batches, evaluation of every validation query once, exact distributed resume, a
checkpoint resumed with another world size, and the `torchrun` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cliptbp_kernels.pipeline.eval import load_jsonl
from cliptbp_kernels.pipeline.synthetic import generate
from cliptbp_kernels.pipeline.train import (
    Dist,
    TrainConfig,
    _restore_rng,
    global_batches,
    make_loader,
    rank_share,
    train,
)

dw = pytest.importorskip("dist_workers")

# 32 training samples: 4 global batches of 8; 13 validation queries: uneven shares
TINY = dict(hidden=32, layers=1, heads=2, batch_size=8, epochs=2, eval_every=2,
            progress=False, backend="reference", k=5)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("synthetic") / "qvh"
    generate(r, variant="qvh", seed=5, train=32, val=13)
    return r


def _train_rank(rank, world, tmp, cfg, resume=False, stop_after=None):
    train(TrainConfig(**cfg), resume=resume, stop_after=stop_after)
    return rank


def _params(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=False)["model"]


def test_rank_shares_cover_each_global_batch_once():
    batches = global_batches(30, 8, seed=7)
    assert [len(b) for b in batches] == [8, 8, 8, 6]
    assert sorted(i for b in batches for i in b) == list(range(30))
    for world in (2, 3):
        for b in batches:
            shares = [rank_share(b, r, world) for r in range(world)]
            assert sum(shares, []) == b
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [rank_share([4, 9], r, 3) for r in range(3)] == [[4], [9], [4]]  # padded


def test_global_batches_are_the_single_process_batches(root):
    cfg = TrainConfig(data=str(root), batch_size=8)
    from cliptbp_kernels.pipeline.train import build_datasets

    ds, _, _ = build_datasets(cfg)
    one = [b["meta"] for b in make_loader(ds, cfg, shuffle=True, seed=3)]
    qids = [[m["qid"] for m in metas] for metas in one]
    want = [[ds.annotations[i]["qid"] for i in b] for b in global_batches(len(ds), 8, 3)]
    assert qids == want


# Directions along which the losses are constant: the attention's key bias (softmax over the
# keys ignores a term shared by all keys) and the saliency bias (the ranking loss sees only
# differences). Their gradients are rounding noise, which Adam turns into lr-sized steps, so
# one process and two ranks move them differently without changing what the model computes.
NULL_DIRECTIONS = {"encoder.layers.0.self_attn.in_proj_bias": slice(32, 64),
                   "saliency_head.bias": slice(None)}


def _without_null_directions(params):
    out = dict(params)
    for k, sl in NULL_DIRECTIONS.items():
        out[k] = params[k].clone()
        out[k][sl] = 0
    return out


def test_the_null_directions_do_not_change_the_losses(root):
    from cliptbp_kernels.pipeline.model import MomentModel, basic_losses, target_spans
    from cliptbp_kernels.pipeline.train import build_datasets

    ds, _, _ = build_datasets(TrainConfig(data=str(root)))
    batch = next(iter(make_loader(ds, TrainConfig(batch_size=8), shuffle=False, seed=0)))
    torch.manual_seed(0)
    s = ds[0]
    model = MomentModel(s["video"].shape[-1], s["text"].shape[-1], 32, 1, 2, 0.0)
    spans_t = target_spans(batch["labels"], batch["windows"], 2.0)

    def losses():
        out = model(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
        return basic_losses(out, batch["labels"], spans_t, batch["saliency"]), out

    before, out0 = losses()
    with torch.no_grad():
        for k, sl in NULL_DIRECTIONS.items():
            dict(model.named_parameters())[k][sl] += 0.5
    after, out1 = losses()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out1["video_emb"], out0["video_emb"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out1["saliency"], out0["saliency"])  # shifted, not ignored


def test_two_ranks_train_the_model_of_one_process(root, tmp_path):
    """dropout 0, 32 samples in global batches of 8, every loss term a global mean: the same
    parameters as one process after two epochs (each tensor within 1e-5 of its largest
    entry; the null directions above aside); every validation query predicted once."""
    base = dict(TINY, data=str(root), dropout=0.0)
    one = train(TrainConfig(**base, out=str(tmp_path / "one")))
    dw.spawn(_train_rank, 2, tmp_path / "spawn", dict(base, out=str(tmp_path / "two")))
    p1 = _without_null_directions(_params(tmp_path / "one"))
    p2 = _without_null_directions(_params(tmp_path / "two"))
    rel = {k: float((p1[k] - p2[k]).abs().max() / p1[k].abs().max().clamp_min(1e-12))
           for k in p1}
    worst = max(rel, key=rel.get)
    assert rel[worst] < 1e-5, (worst, rel[worst])
    for name in ("val_submission.jsonl", "val_submission_segments.jsonl"):
        a = [d["qid"] for d in load_jsonl(tmp_path / "one" / name)]
        b = [d["qid"] for d in load_jsonl(tmp_path / "two" / name)]
        assert a == b and len(set(b)) == 13
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2
    for k in ("loss", "loss_clip", "loss_boun", "loss_aux", "loss_fg"):
        assert two["history"][-1][k] == pytest.approx(one["history"][-1][k], rel=1e-4)


def test_distributed_resume_is_exact_and_another_world_size_resumes(root, tmp_path):
    """With dropout on: two ranks stopped after epoch 1 and resumed end as an uninterrupted
    two-rank run (`torchrun`, the command line); one process resumes the same checkpoint."""
    base = dict(TINY, data=str(root), dropout=0.1)
    full = tmp_path / "full"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(dict(base, out=str(full))))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "cliptbp_kernels.pipeline.train",
                           "--config", str(cfg_file)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2:") == 1  # rank 0 alone prints

    part = dict(base, out=str(tmp_path / "part"))
    dw.spawn(_train_rank, 2, tmp_path / "s1", part, False, 1)
    ck1 = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert ck1["world_size"] == 2 and len(ck1["rng"]) == 2
    assert not torch.equal(ck1["rng"][0]["cpu"], ck1["rng"][1]["cpu"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.pt").write_bytes(
        (tmp_path / "part" / "checkpoint.pt").read_bytes())
    dw.spawn(_train_rank, 2, tmp_path / "s2", part, True)
    a, b = _params(full), _params(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fa = json.loads((full / "summary.json").read_text())
    fb = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert fa["history"] == fb["history"] and fa["val"] == fb["val"]

    # one process resumes the two-rank checkpoint: it finishes, with fresh dropout draws
    res = train(TrainConfig(**dict(base, out=str(tmp_path / "other"))), resume=True)
    assert [r["epoch"] for r in res["history"]] == [1, 2]


def test_restore_rng_of_other_device_kinds_and_old_checkpoints():
    cpu = torch.device("cpu")
    torch.manual_seed(3)
    state = torch.get_rng_state()
    want = torch.rand(3)
    # a checkpoint written on CUDA (CPU and CUDA states) resumes on the CPU
    saved = [{"cpu": state.clone(), "cuda": torch.zeros(16, dtype=torch.uint8)}]
    torch.manual_seed(99)
    assert _restore_rng(saved, Dist(), cpu, 0, 1) == "generators restored"
    assert torch.equal(torch.rand(3), want)
    # a checkpoint of an earlier version holds the CPU state alone
    torch.manual_seed(99)
    _restore_rng(state.clone(), Dist(), cpu, 0, 1)
    assert torch.equal(torch.rand(3), want)
    # another world size: seeded from (seed, epoch, rank), the same on every call
    msg = _restore_rng([{"cpu": state}] * 2, Dist(), cpu, 0, 1)
    assert "seeded" in msg
    first = torch.rand(3)
    _restore_rng([{"cpu": state}] * 2, Dist(), cpu, 0, 1)
    assert torch.equal(torch.rand(3), first)
