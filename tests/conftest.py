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


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated demo scenes with the 19 Cityscapes classes: 4 train and 2 val frames of 64x128."""
    from segkd.scenes.street import generate_demo

    root = tmp_path_factory.mktemp("tiny-demo") / "demo"
    return generate_demo(root, {"train": 4, "val": 2}, size=(64, 128), seed=0, classes="cityscapes")


@pytest.fixture(scope="session")
def tiny_r101_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random DeepLabV3-R101 at width 1/8 with 19 classes, saved as a teacher checkpoint."""
    import torch

    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(1)
    arch = {"name": "deeplabv3_r101", "num_classes": 19, "width": 0.125}
    meta = ModelMeta(
        arch=arch, class_names=[f"c{i}" for i in range(19)], palette=[[i, i, i] for i in range(19)]
    )
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth", build_model(**arch), meta)


@pytest.fixture
def distill_run(tiny_demo: Path, tmp_path: Path):  # noqa: ANN201 (returns the runner below)
    """Train through ``distill/train.py`` on the tiny demo data; returns the step records of metrics.jsonl.

    Call it with the student (``{"name": ..., "options": ...}``), the teacher checkpoint and the losses; the
    run lands in ``tmp_path / "run"``; ``pythonpath`` adds folders (a user's module) to the import path.
    """
    import json
    import subprocess
    import sys

    import yaml

    def run(student: dict, teacher: Path, losses: list[dict], *, iters: int = 2, pythonpath: str = "",
            **train: object) -> list[dict]:  # fmt: skip
        cfg = {
            "data": {
                "dataset": "demo",
                "root": str(tiny_demo),
                "crop_size": [64, 128],
                "batch_size": 2,
                "num_workers": 0,
            },  # fmt: skip
            "student": student,
            "teacher": {"checkpoint": str(teacher)},
            "losses": losses,
            "optim": {"lr": 0.01},
            "train": {
                "max_iters": iters,
                "eval_every": iters,
                "log_every": 1,
                "output_dir": str(tmp_path / "run"),
                **train,
            },  # fmt: skip
        }
        config = tmp_path / "cfg.yaml"
        config.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), pythonpath) if p),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, str(REPO / "distill" / "train.py"), "--config", str(config)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if "loss/total" in r]

    return run
