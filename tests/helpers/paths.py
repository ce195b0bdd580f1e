"""Paths the tests share: the repository root and the real annotation files, which the tests
read from ``../shared/data`` beside the repository when it is there (and skip without it)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def script_module(name):
    """Import ``scripts/<name>.py`` (not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared_records(relpath):
    """The records of ``../shared/data/<relpath>`` (one JSON object per line); skips the test
    when the folder or the file is absent."""
    import json

    import pytest

    path = SHARED_DATA / relpath
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED_DATA}")
    if not path.is_file():
        pytest.skip(f"annotation file not found: {path}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
