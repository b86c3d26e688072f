"""Shared test fixtures: the real-data samples in ../shared/fixtures (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(os.environ.get("SEGKD_FIXTURES", REPO.parent / "shared" / "fixtures"))

# Two cores: keep every test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """Root of the real Cityscapes/VOC/video samples; skips the test when the folder is not beside the repo."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real-data fixtures not found at {SHARED_FIXTURES} (set SEGKD_FIXTURES to their folder)")
    return SHARED_FIXTURES
