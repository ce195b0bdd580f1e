"""The fused CPU backend's threads: `torch.get_num_threads()` bounds the threads of a call,
results do not depend on it, and the kernels' own helper threads survive what training loops
do around them (fork()ed DataLoader workers, calls from several Python threads)."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import cliptbp_kernels as ck
from cases import PATTERNS, make_batch

pytestmark = pytest.mark.skipif("cpu" not in ck.available_backends("cpu"),
                                reason="the CPU extension is not built")

TIMEOUT = 300

# What every subprocess script below starts with: the imports, and forward + backward of both
# losses on the CPU backend (per-sample losses and the gradient).
_PRELUDE = """
import os, sys, time
import torch
import cliptbp_kernels as ck
from cliptbp_kernels import _C_cpu as C


def fwd_bwd(emb, labels, **options):
    e = emb.clone().requires_grad_(True)
    lc, lb = ck.clip_boundary_losses(e, labels, backend="cpu", reduction="none", **options)
    (lc.sum() + lb.sum()).backward()
    return lc.detach(), lb.detach(), e.grad
"""


def _run(code, neighbours=0):
    """Run `code` in a fresh Python process; with `neighbours`, the code prints "ready" and
    waits for a line on stdin, which comes once that many busy processes run beside it."""
    if not neighbours:
        proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout
    from bench.busy import BusyNeighbours

    proc = subprocess.Popen([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with BusyNeighbours(neighbours):
            out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    return out


def test_threads_of_a_call_stay_within_torch_get_num_threads():
    # a fresh process, so that the pool starts empty; B * T rows in many chunks per job
    out = _run("""
        C.set_pool_backoff(False)  # every job may use the helpers, busy machine or not

        def helpers_alive():
            names = []
            for t in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{t}/comm") as f:
                    names.append(f.read().strip())
            return names.count("cliptbp-cpu")

        torch.manual_seed(0)
        emb = torch.randn(8, 300, 32)
        labels = torch.zeros(8, 300, dtype=torch.long)
        labels[:, 20:90] = 1
        labels[:, 150:200] = 2

        results = {}
        for n in (1, 3, 2, 1):
            torch.set_num_threads(n)
            C.pool_peak(reset=True)
            for i in range(40):  # until a helper took part (it may be slow to get a core)
                results.setdefault(n, fwd_bwd(emb, labels, negatives="all", k=500))
                if i >= 2 and (n == 1 or C.pool_peak() >= 2):
                    break
            print(n, C.pool_threads(), C.pool_peak(), helpers_alive())
            assert all(torch.equal(a, b) for a, b in zip(results[n], results[1]))
    """)
    lines = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert [n for n, *_ in lines] == [1, 3, 2, 1]
    # one thread: no helper is ever started, no job uses one
    assert lines[0][1:] == (0, 0, 0)
    for n, helpers, peak, alive in lines[1:]:
        assert peak <= n, f"a call with torch.get_num_threads() = {n} used {peak} threads"
        if n > 1:
            assert peak >= 2, f"no helper ever took part with {n} threads"
        assert helpers <= 2 and alive == helpers
    assert lines[3][2] == 0, "with one thread again, no job may use a helper"


def test_kernels_run_in_a_forked_child_and_its_dataloader_workers():
    # the parent's helpers do not exist in a fork()ed child: the child forgets the parent's
    # pool and starts its own helper, also inside DataLoader workers (fork start method), and
    # nothing hangs
    _run("""
        torch.set_num_threads(2)
        torch.manual_seed(1)
        emb = torch.randn(6, 200, 16)
        labels = torch.zeros(6, 200, dtype=torch.long)
        labels[:, 30:80] = 1

        def loss(e):
            return torch.cat([t.flatten() for t in fwd_bwd(e, labels)])

        ref = loss(emb)
        pid = os.fork()
        if pid == 0:
            fresh = C.pool_threads() == 0  # the parent's helper is not here
            ok = torch.equal(loss(emb), ref)
            os._exit(0 if ok and fresh and C.pool_threads() == 1 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status

        class Data(torch.utils.data.Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                torch.set_num_threads(2)  # workers default to one thread
                return loss(emb)

        dl = torch.utils.data.DataLoader(Data(), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=120)
        assert all(torch.equal(x, ref) for x in dl)
        assert torch.equal(loss(emb), ref)
    """)


def test_concurrent_calls_from_python_threads_agree_with_serial_ones():
    # one call at a time uses the helpers; a call that finds them busy runs alone
    batches = [make_batch(4, 90, 24, list(PATTERNS), seed=s) for s in range(4)]

    def loss(emb, labels):
        e = emb.clone().requires_grad_(True)
        lc, lb = ck.clip_boundary_losses(e, labels, backend="cpu", reduction="none")
        (lc.sum() + lb.sum()).backward()
        return lc.detach(), lb.detach(), e.grad

    expected = [loss(*b) for b in batches]
    got = [[] for _ in batches]
    errors = []

    def worker(i):
        try:
            for _ in range(5):
                got[i].append(loss(*batches[i]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert errors == []
    for exp, runs in zip(expected, got):
        assert len(runs) == 5
        for res in runs:
            assert all(torch.equal(a, b) for a, b in zip(res, exp))


def test_back_off_runs_jobs_on_the_caller_alone_with_the_same_results():
    out = _run("""
        torch.set_num_threads(2)
        torch.manual_seed(2)
        emb = torch.randn(6, 300, 32)
        labels = torch.zeros(6, 300, dtype=torch.long)
        labels[:, 40:120] = 1

        def run():
            return fwd_bwd(emb, labels, negatives="all", k=300)

        assert C.set_pool_backoff(False) is True  # on by default
        parallel = run()
        C.set_pool_backoff(True)
        C.pool_back_off_for(60_000)
        C.pool_peak(reset=True)
        before = C.pool_backoff_stats()
        alone = [run() for _ in range(3)]
        after = C.pool_backoff_stats()
        assert C.pool_peak() == 0, "a job used a helper while backing off"
        assert after[2] > before[2], (before, after)
        for res in alone:
            assert all(torch.equal(a, b) for a, b in zip(res, parallel))
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.skipif((os.cpu_count() or 1) > 8, reason="needs a machine whose cores two or a few "
                    "busy processes can fill")
def test_busy_machine_is_noticed_and_jobs_run_alone():
    # as many busy neighbours as cores: the calling thread must queue for a core, which the
    # pool notices (Linux schedstat) and answers by running jobs on the caller alone
    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("the kernel does not report per-thread run-queue waits")
    out = _run("""
        torch.set_num_threads(2)
        emb = torch.randn(8, 200, 32)
        labels = torch.zeros(8, 200, dtype=torch.long)
        labels[:, 30:90] = 1
        ref = ck.clip_pair_loss(emb, labels, backend="cpu", reduction="none")
        print("ready", flush=True)
        input()  # the neighbours are running
        before = C.pool_backoff_stats()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            assert torch.equal(ck.clip_pair_loss(emb, labels, backend="cpu",
                                                 reduction="none"), ref)
        after = C.pool_backoff_stats()
        print(after[0] - before[0], after[2] - before[2])
    """, neighbours=os.cpu_count() or 1)
    busy_looks, serial_jobs = map(int, out.split()[-2:])
    assert busy_looks > 0 and serial_jobs > 0, out
