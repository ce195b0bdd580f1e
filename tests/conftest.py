"""Test configuration. TRITON_INTERPRET must be set before any Triton kernel is defined, so
the Triton kernels can run on CPU tensors through the interpreter; CLIPTBP_CUDA_EMULATE=1
lets the CUDA kernels run on CPU tensors through their emulation (module _C_cuda_emu). Both
make "triton" and "cuda" fused backends of CPU tensors, so every backend test runs them.

Hypothesis profiles for tests/backends/test_properties.py (chosen with HYPOTHESIS_PROFILE,
default "ci"):

* "ci": bounded (the property file takes well under 90 s on 2 cores) and derandomized, so a
  CI run is reproducible; failures print the blob that replays them.
* "long": many more examples, random each run (the example database keeps failures):
  ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/backends/test_properties.py``
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CLIPTBP_CUDA_EMULATE", "1")
# The first-use self-check falls back to the reference when a backend disagrees with it,
# which would hide a broken backend from the tests that compare it with the spec: off here
# (tests/backends/test_selfcheck.py turns it on where it is the subject).
os.environ.setdefault("CLIPTBP_SELFCHECK", "0")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # cases, oracle, paths

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# the autouse thread-count fixture below is function scoped; it only restores a setting
_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          print_blob=True, suppress_health_check=_SUPPRESS)
settings.register_profile("long", max_examples=10000, deadline=None, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# The CPU kernels' pool runs jobs on the calling thread alone while the machine is busy
# (docs/losses.md, section 13.2), and the test command keeps the machine busy (two pytest
# processes). Off here, so that the tests of thread counts and of every option run the
# parallel paths; tests/backends/test_cpu_pool.py tests the back-off itself (in fresh
# processes, where it is on as for every user).
try:
    from cliptbp_kernels import _C_cpu as _cpu_module
except ImportError:  # the CPU extension is not built: its tests skip
    _cpu_module = None
if _cpu_module is not None:
    _cpu_module.set_pool_backoff(False)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter):
    """The example counts of the property tests, when they ran."""
    mod = sys.modules.get("test_properties")
    if mod is not None and getattr(mod, "COUNTS", None):
        terminalreporter.section("property-based tests")
        for line in mod.summary_lines():
            terminalreporter.write_line(line)
