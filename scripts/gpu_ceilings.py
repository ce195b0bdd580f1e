"""The two ceilings of the present GPU, measured (for the floor estimates of bench.targets):
device-to-device copy bandwidth (bytes read plus written per second) and the float32 matrix
product rate without TF32 (plain float32 FMA, what the ``input_precision="ieee"`` dots use).
Random data, CUDA events, the median of several timed repeats after warm-up.

    python scripts/gpu_ceilings.py [--out ceilings.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch


def median_ms(fn, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_ceilings.py: no CUDA GPU", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    n = 1 << 29  # 2 GiB of float32: far beyond the L2
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    copy_ms = median_ms(functools.partial(dst.copy_, src))
    del src, dst
    m = 8192
    a = torch.rand(m, m, device=dev)
    b = torch.rand(m, m, device=dev)
    flag = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        mm_ms = median_ms(lambda: torch.mm(a, b), repeats=5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
    out = dict(device=torch.cuda.get_device_name(dev),
               copy_tbps=2 * n * 4 / (copy_ms * 1e-3) / 1e12,
               fp32_tflops=2 * m ** 3 / (mm_ms * 1e-3) / 1e12)
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
