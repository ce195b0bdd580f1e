"""Busy neighbour processes for the contention benchmarks.

A neighbour is a single-threaded tight Python loop (no sleeps, default priority, not pinned):
another process that wants a core all the time, as a DataLoader worker, a second job or a
notebook beside a training loop would. ``BusyNeighbours(n)`` starts ``n`` of them and stops
them on every way out of its ``with`` block (normal exit, exception, KeyboardInterrupt). Each
neighbour also ends by itself when its parent process is gone (it checks its parent id about
every 10 ms, and on Linux the kernel kills it when the parent dies), so none survives a parent
that is killed outright.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import List, Optional

# The neighbour's code: spin, and leave when the parent that started it is gone.
_LOOP = """
import os, sys
parent = int(sys.argv[1])
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL (Linux)
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(0)
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    for _ in range(100000):
        pass
    if os.getppid() != parent:
        break
"""


class BusyNeighbours:
    """Context manager running ``n`` busy neighbour processes (see the module docstring).

    ``pids`` lists the running neighbours inside the block; ``stop()`` may also be called
    directly, and more than once.
    """

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int (the number of busy neighbours), got {n!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0 (the number of busy neighbours), got {n}")
        self.n = n
        self._procs: List[subprocess.Popen] = []

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self._procs if p.poll() is None]

    def start(self) -> "BusyNeighbours":
        try:
            for _ in range(self.n):
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-c", _LOOP, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, start_new_session=True))
            for p in self._procs:  # each one is spinning before the block starts
                line = p.stdout.readline() if p.stdout is not None else b""
                if line.strip() != b"ready":
                    raise RuntimeError(f"busy neighbour {p.pid} did not start "
                                       f"(exit status {p.poll()})")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
        for p in procs:
            p.wait()
            if p.stdout is not None:
                p.stdout.close()

    def __enter__(self) -> "BusyNeighbours":
        return self.start()

    def __exit__(self, *exc) -> Optional[bool]:
        self.stop()
        return None
