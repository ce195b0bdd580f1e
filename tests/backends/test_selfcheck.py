"""The first-use self-check (cliptbp_kernels.backends.selfcheck), the architecture check of
the CUDA module, and the `selfcheck` command."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import cliptbp_kernels as ck
from cliptbp_kernels import backends
from cliptbp_kernels.backends import REGISTRY, reference, selfcheck
from cliptbp_kernels.backends import cuda as cuda_backend

CPU = torch.device("cpu")
needs_cpu = pytest.mark.skipif("cpu" not in ck.available_backends(CPU),
                               reason="the CPU extension is not built")


@pytest.fixture
def on(monkeypatch):
    """The self-check on (the test suite turns it off, tests/conftest.py), no verdicts yet."""
    monkeypatch.setenv(selfcheck.ENV, "1")
    selfcheck.reset()
    yield
    selfcheck.reset()


class Wrapped:
    """A `FusedOps` look-alike around the real CPU backend's, with its forward outputs
    changed by `change` (a deliberately broken backend)."""

    def __init__(self, change):
        self.real = REGISTRY["cpu"].ops
        self.change = change

    def run_forward(self, emb, labels, opts):
        return self.change(self.real.run_forward(emb, labels, opts))

    def run_backward(self, *args):
        return self.real.run_backward(*args)

    def call(self, emb, labels, opts):
        return self.change(self.real.call(emb, labels, opts))


def _inject(monkeypatch, change):
    """Replace the CPU backend's ops where calls and the self-check find them."""
    wrapped = Wrapped(change)
    monkeypatch.setitem(REGISTRY, "cpu", REGISTRY["cpu"]._replace(ops=wrapped))
    monkeypatch.setitem(selfcheck.OPS, "cpu", wrapped)


def _off_by_a_bit(out):
    return out._replace(loss_clip=out.loss_clip * 1.01)


def _batch(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(3, 20, 16, generator=g, dtype=dtype)
    labels = torch.zeros(3, 20, dtype=torch.int64)
    labels[0, 3:8] = 1
    labels[1, 10:14] = 1
    labels[1, 15:18] = 2
    labels[2, 15:] = -1
    return emb, labels


@needs_cpu
def test_a_broken_backend_warns_once_and_falls_back_to_the_reference(on, monkeypatch):
    _inject(monkeypatch, _off_by_a_bit)
    emb, labels = _batch()
    e1 = emb.clone().requires_grad_(True)
    with pytest.warns(selfcheck.SelfCheckWarning, match=r"backend 'cpu' failed its "
                      r"self-check on cpu \(float32\): L_clip .* off by .*report") as rec:
        lc, lb = ck.clip_boundary_losses(e1, labels, backend="auto")
    assert len(rec) == 1
    (lc + lb).backward()
    e2 = emb.clone().requires_grad_(True)
    rc, rb = ck.clip_boundary_losses(e2, labels, backend="reference")
    (rc + rb).backward()
    assert torch.equal(lc, rc) and torch.equal(lb, rb) and torch.equal(e1.grad, e2.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning; an explicit request falls back too
        lc2 = ck.clip_pair_loss(emb, labels, backend="cpu")
        assert torch.equal(lc2, ck.clip_pair_loss(emb, labels, backend="reference"))
        assert backends.resolve("cpu", CPU, torch.float32) == "reference"


@needs_cpu
def test_a_correct_backend_is_checked_once_per_device_and_dtype(on, monkeypatch):
    calls = []
    real = selfcheck.compare
    monkeypatch.setattr(selfcheck, "compare", lambda *a, **k: calls.append(a) or real(*a, **k))
    for dtype in (torch.float32, torch.float32, torch.float64, torch.float32, torch.float64):
        emb, labels = _batch(dtype)
        ck.clip_boundary_losses(emb, labels, backend="cpu")
        ck.ClipTBPLoss(backend="auto")(emb, labels)
    assert [(a[0], a[2]) for a in calls] == [("cpu", torch.float32), ("cpu", torch.float64)]
    assert all(r.ok for r in selfcheck.verdicts().values())


@needs_cpu
@pytest.mark.parametrize("mode, expected", [("0", 0), ("always", 3)])
def test_the_environment_variable_turns_it_off_or_on_every_call(monkeypatch, mode, expected):
    selfcheck.reset()
    monkeypatch.setenv(selfcheck.ENV, mode)
    calls = []
    real = selfcheck.compare
    monkeypatch.setattr(selfcheck, "compare", lambda *a, **k: calls.append(a) or real(*a, **k))
    emb, labels = _batch()
    for _ in range(3):
        ck.clip_pair_loss(emb, labels, backend="cpu")
    assert len(calls) == expected
    selfcheck.reset()


@needs_cpu
def test_a_validated_architecture_skips_the_check(on, monkeypatch):
    monkeypatch.setattr(selfcheck, "arch", lambda device: "sm_90")
    monkeypatch.setitem(selfcheck.VALIDATED, "cpu", frozenset({"sm_90"}))
    _inject(monkeypatch, _off_by_a_bit)  # would fail, but is never checked
    assert backends.resolve("cpu", CPU, torch.float32) == "cpu"
    assert selfcheck.verdicts() == {}


@needs_cpu
def test_compiled_code_keeps_working_and_is_checked_on_its_first_real_call(on):
    emb, labels = _batch()

    def f(e):
        lc, lb = ck.clip_boundary_losses(e, labels, backend="cpu", check_labels=False)
        return lc + lb

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(emb)
    assert torch.allclose(got, f(emb))
    assert [k[:2] for k in selfcheck.verdicts()] == [("cpu", "cpu")]


@needs_cpu
def test_compiled_code_raises_instead_of_a_wrong_answer(on, monkeypatch):
    """A function compiled before any eager call meets a failing backend in its custom op,
    which cannot switch backends inside the graph: it raises."""
    monkeypatch.setattr(selfcheck, "compare", lambda name, device, dtype, ops=None:
                        selfcheck.Result(False, "L_clip off (injected)", 0.0))
    emb, labels = _batch()

    def g(e):
        return ck.clip_pair_loss(e, labels, backend="cpu", check_labels=False)

    with pytest.warns(selfcheck.SelfCheckWarning), \
            pytest.raises(RuntimeError, match="failed its self-check.*cannot switch"):
        torch.compile(g, fullgraph=True, backend="aot_eager")(emb)


def test_the_check_input_has_ties_padding_and_k_beyond_the_candidates():
    emb, labels = selfcheck.check_input(CPU, torch.float64)
    lab, valid, gt, _, sim = reference._prepare(emb, labels)
    assert (labels == -1).any(dim=1).tolist() == [False, True, False, True]
    assert labels.max(dim=1).values.tolist() == [3, 2, 3, 0]
    _, neg = reference._pair_masks(lab, valid, gt, "any", "cross")
    # sample 0: more negatives tied at the top similarity (exactly 1) than k = 3
    top = (sim[0] == 1) & neg[0]
    assert int(top.sum()) > 3 and set(sim[0][neg[0]].unique().tolist()) <= {0.0, 1.0}
    # k = 200 exceeds every sample's candidates, even with negatives="all"
    _, neg_all = reference._pair_masks(lab, valid, gt, "same", "all")
    assert int(neg_all.flatten(1).sum(1).max()) < 200
    # samples 1 and 2: candidate similarities at least 1e-4 apart, far beyond float32's
    # rounding of them (about 1e-7), so float32 and float64 rank them alike
    for b in (1, 2):
        s = sim[b][neg_all[b]].sort().values
        assert float((s[1:] - s[:-1]).min()) > 1e-4


@needs_cpu
def test_a_broken_tie_rule_is_caught():
    """Ties must go to the smaller i, then j: a backend that lists tied pairs in the other
    order is caught, although its losses are the same."""
    def reverse_ties(out):
        p = out.pairs.clone()
        n = int((p[0] >= 0).sum())
        p[0, :n] = p[0, :n].flip(0)  # sample 0's chosen pairs are all tied
        return out._replace(pairs=p)

    res = selfcheck.compare("cpu", CPU, torch.float32, ops=Wrapped(reverse_ties))
    assert not res.ok and "chosen pairs of sample(s) [0]" in res.worst
    assert selfcheck.compare("cpu", CPU, torch.float32).ok


@pytest.mark.parametrize("name", [b for b in ("cpu", "triton", "cuda")
                                  if b in ck.available_backends(CPU)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_every_backend_passes_on_this_machine(name, dtype):
    res = selfcheck.compare(name, CPU, dtype)
    assert res.ok, res.worst


@pytest.mark.parametrize("entries, cap, runs", [
    (("80", "90"), (8, 0), True), (("80", "90"), (8, 9), True), (("80", "90"), (7, 5), False),
    (("80", "90"), (12, 0), True),             # PTX compute_90 serves newer GPUs
    (("80-real", "90-real"), (12, 0), False),  # without PTX it does not
    (("80-real", "90-real", "90-virtual"), (10, 0), True),
    (("90a",), (9, 0), True), (("90a",), (10, 0), False), (("native",), (7, 0), None)])
def test_architecture_support_rule(entries, cap, runs):
    assert cuda_backend.arch_support(entries, cap) is runs


def test_why_not_names_the_architecture_and_how_to_rebuild(monkeypatch):
    class FakeModule:
        ARCHS = "80,90"

    monkeypatch.setattr(cuda_backend, "_ext", FakeModule())
    monkeypatch.setattr(cuda_backend, "_arch_reason", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    reason = cuda_backend.why_not(torch.device("cuda", 0))
    assert "sm_75" in reason and 'CLIPTBP_CUDA_ARCH="75"' in reason
    assert "sm_80, sm_90 and PTX compute_80, compute_90" in reason
    monkeypatch.setattr(cuda_backend, "_arch_reason", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (12, 0))
    assert cuda_backend.why_not(torch.device("cuda", 0)) is None


def test_the_selfcheck_command_writes_a_json_report(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "cliptbp_kernels.selfcheck", "--json",
                           str(out), "--repeats", "1"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["versions"]["torch"] == torch.__version__
    names = {(c["backend"], c["dtype"]) for c in report["checks"]}
    for b in ck.available_backends(CPU):
        if b != "reference":
            assert (b, "float32") in names and (b, "bfloat16") in names
    assert {r["backend"] for r in report["backends"]} == set(REGISTRY)
    timed = report["timings"]
    assert {t["shape"] for t in timed} == {"qvh", "tacos", "long4k"}
    if "cpu" in ck.available_backends(CPU):
        assert all(t["cpu_ms"] > 0 for t in timed)
    assert "self-checks" in proc.stdout and "report written" in proc.stdout
