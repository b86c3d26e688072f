"""Training curves: drawn from metrics.jsonl, the mIoU panel marks the best evaluation, clear CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segkd.distill.curves import main, plot_curves

pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) draws the training curves")


def _metrics(path: Path) -> Path:
    records = [{"iter": 0, "event": "start"}]
    for it in range(10, 101, 10):
        records.append(
            {"iter": it, "loss/total": 3.0 / it**0.5, "loss/ce": 2.0 / it**0.5, "loss/cwd": 1.0 / it}
        )
        if it % 50 == 0:
            records.append({"iter": it, "eval/mIoU": 20.0 + it / 5, "eval/IoU": [1.0, 2.0]})
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"iter": 11')  # cut
    return path / "metrics.jsonl"


def test_curves_png_is_drawn_beside_the_metrics(tmp_path: Path) -> None:
    import cv2

    out = plot_curves(_metrics(tmp_path / "run"))
    assert out == tmp_path / "run" / "curves.png"
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0] > 300
    assert (np.abs(image.astype(int) - 255).sum(axis=2) > 60).mean() > 0.02  # more than a blank canvas
    assert plot_curves(tmp_path / "none" / "metrics.jsonl") is None  # nothing logged yet: nothing drawn


def test_curves_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _metrics(tmp_path / "run")
    assert main([str(tmp_path / "run")]) == 0 and (tmp_path / "run" / "curves.png").is_file()
    assert main([str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().out
