"""Rank processes of the distributed tests (tests/library/test_distributed.py and
tests/pipeline/test_distributed_train.py).

`spawn(fn, world, tmp, *args)` starts `world` gloo processes that rendezvous through a file
in `tmp`; each runs `fn(rank, world, tmp, *args)` and saves what it returns to
`tmp/rank{r}.pt`; the parent gets the list of those results. A rank that fails leaves its
Python traceback in `tmp/rank{r}.err`; one that dies on a signal (a crash in native code)
leaves every thread's Python stack, and the step it had reached, in `tmp/rank{r}.fault`;
`spawn` puts both into its error.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

D_IN, D = 6, 5


def _entry(rank: int, world: int, tmp: str, fn, args) -> None:
    """One rank: run `fn`, save its result, destroy the process group, then leave through
    `os._exit` (exit status 0, or 1 after an exception, whose traceback is in rank{r}.err).

    Why not a normal interpreter shutdown: torch keeps a gloo process group that DDP or a
    functional collective has used alive after `destroy_process_group` (its worker threads
    run on), so they live into the interpreter's shutdown; a worker that drops the last
    reference to a Python-owned tensor then takes the GIL, CPython ends that thread with
    `pthread_exit`, and the unwinding through a C++ destructor aborts the whole process
    ("terminate called without an active exception", SIGABRT). That is rare (a worker that
    the scheduler held back past the rank's last lines) but real on a busy machine; with
    `os._exit` there is no shutdown to race with, and nothing is left to do by then."""
    fault = open(Path(tmp) / f"rank{rank}.fault", "w")  # open until the process ends
    faulthandler.enable(file=fault, all_threads=True)

    def step(what: str) -> None:
        fault.write(f"step: {what}\n")
        fault.flush()

    try:
        torch.set_num_threads(1)
        step("init_process_group")
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                                world_size=world)
        try:
            step(fn.__name__)
            out = fn(rank, world, tmp, *args)
            step("save")
            torch.save(out, Path(tmp) / f"rank{rank}.pt")
            status = 0
        finally:
            step("destroy_process_group")
            dist.destroy_process_group()
    except BaseException:
        status = 1
        (Path(tmp) / f"rank{rank}.err").write_text(traceback.format_exc())
    step(f"exit {status}")
    faulthandler.disable()
    fault.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def spawn(fn, world: int, tmp, *args) -> list:
    tmp = str(tmp)
    os.makedirs(tmp, exist_ok=True)
    try:
        mp.spawn(_entry, args=(world, tmp, fn, args), nprocs=world, join=True)
    except Exception as e:  # name the failing rank's traceback
        errs = "".join(f"---- {p.name}\n{p.read_text()}"
                       for p in sorted(Path(tmp).glob("rank*.err"))
                       + sorted(Path(tmp).glob("rank*.fault")))
        raise AssertionError(f"a rank failed:\n{errs}") from e
    return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ---- a small problem: a linear model of clip features, its batch and the ranks' shares ----

def problem(dtype=torch.float64):
    """(model, x [B, T, D_IN], labels [B, T], target spans [B, T, 2], span mask [B, T]).

    Samples 0-3 have windows; samples 4-5 have no positive pair (only background, or a
    one-clip window) and so neither an L_clip nor an L_boun; sample 3 is padded."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    x = torch.randn(B, T, D_IN, generator=g, dtype=dtype)
    labels = torch.tensor([
        [0, 1, 1, 1, 0, 0, 2, 2, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 0, 2, 2, 0, -1, -1],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0, -1],
    ])
    spans = torch.rand(B, T, 2, generator=g, dtype=dtype).sort(-1).values
    torch.manual_seed(1)
    model = torch.nn.Linear(D_IN, D + 2).to(dtype)
    return model, x, labels, spans, labels >= 1


# the ranks' shares of the 6 samples: uneven, and rank 1 holds no sample with a positive pair
SHARES = {1: [list(range(6))], 2: [[0, 1, 2, 3], [4, 5]]}


def forward(model, x):
    out = model(x)
    emb = out[..., :D]
    pred = out[..., D:].sigmoid().sort(-1).values
    return emb, pred


def loss_terms(rank, world, tmp, backend, ddp_kw, accumulate=False):
    """Losses and parameter gradients under DDP (`ddp_kw`), each rank on its share; with
    `accumulate`, each share in two micro-batches under `no_sync` with the step's counts."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from cliptbp_kernels import ClipTBPLoss

    model, x, labels, spans, mask = problem()
    idx = SHARES[world][rank]
    crit = ClipTBPLoss(w_basic=0.0, k=4, aux_beta=0.1, backend=backend,
                       process_group=dist.group.WORLD)
    ddp = DDP(model, **ddp_kw)
    parts = [idx[: len(idx) // 2], idx[len(idx) // 2:]] if accumulate else [idx]
    counts = None
    if accumulate:
        counts = crit.global_counts([labels[p] for p in parts], [mask[p] for p in parts])
    values = {}
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        ctx = ddp.no_sync() if not last else _null()
        with ctx:
            emb, pred = forward(ddp, x[p])
            out = crit(emb, labels[p], pred_spans=pred, target_spans=spans[p],
                       span_mask=mask[p], counts=counts)
            out["loss"].backward()
        for k, v in out.items():
            values[k] = values.get(k, 0.0) + v.detach()
    grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    return {"values": values, "grads": grads, "counts": counts}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def functional(rank, world, tmp, backend):
    """The functional losses with `process_group`: values and gradients w.r.t. emb and pred,
    each rank on its share."""
    import cliptbp_kernels as ck

    model, x, labels, spans, mask = problem()
    idx = SHARES[world][rank]
    emb, pred = forward(model, x[idx])
    emb = emb.detach().requires_grad_(True)
    pred = pred.detach().requires_grad_(True)
    pg = dist.group.WORLD
    lc = ck.clip_pair_loss(emb, labels[idx], k=4, backend=backend, process_group=pg)
    lb = ck.boundary_margin_loss(emb, labels[idx], backend=backend, process_group=pg)
    both = ck.clip_boundary_losses(emb, labels[idx], k=4, backend=backend, process_group=pg)
    la = ck.boundary_aux_loss(pred, spans[idx], mask[idx], beta=0.1, process_group=pg)
    (lc + lb + la).backward()
    return {"values": [lc.detach(), lb.detach(), *[b.detach() for b in both], la.detach()],
            "emb_grad": emb.grad, "pred_grad": pred.grad}


def compiled(rank, world, tmp, backend):
    """The criterion with `process_group` inside `torch.compile(fullgraph=True)`."""
    from cliptbp_kernels import ClipTBPLoss

    model, x, labels, spans, mask = problem(torch.float32)
    idx = SHARES[world][rank]
    crit = ClipTBPLoss(w_basic=0.0, k=4, aux_beta=0.1, backend=backend, check_labels=False,
                       process_group=dist.group.WORLD)

    def step(xb, lab, sp, m):
        emb, pred = forward(model, xb)
        return crit(emb, lab, pred_spans=pred, target_spans=sp, span_mask=m)["loss"]

    fn = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = fn(x[idx], labels[idx], spans[idx], mask[idx])
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: q.grad.clone()
                                             for n, q in model.named_parameters()}}


def compiled_ddp(rank, world, tmp, backend):
    """`torch.compile` of a whole DDP model whose loss (outside the model) all-reduces."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from cliptbp_kernels import ClipTBPLoss

    model, x, labels, spans, mask = problem(torch.float32)
    idx = SHARES[world][rank]
    crit = ClipTBPLoss(w_basic=0.0, k=4, aux_beta=0.1, backend=backend, check_labels=False,
                       process_group=dist.group.WORLD)
    net = torch.compile(DDP(model), backend="aot_eager")
    out = net(x[idx])
    emb, pred = out[..., :D], out[..., D:].sigmoid().sort(-1).values
    loss = crit(emb, labels[idx], pred_spans=pred, target_spans=spans[idx],
                span_mask=mask[idx])["loss"]
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: q.grad.clone()
                                             for n, q in model.named_parameters()}}


# ---- ranks that fail, for the tests of spawn's error ----

def fail_on(rank, world, tmp, bad_rank, how):
    """Rank `bad_rank` fails: `how` = "raise" (a Python exception) or "abort" (SIGABRT, as a
    crash in native code would); the others return their rank."""
    if rank == bad_rank:
        if how == "raise":
            raise ValueError(f"rank {rank} failed on purpose")
        os.abort()
    return rank
