"""Paths the tests share: the repository root and the real annotation files, which the tests
read from ``../shared/data`` beside the repository when it is there (and skip without it)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
