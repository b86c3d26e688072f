"""Bring your own model: a module declared here is distilled through distill/train.py and exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from segkd.distill.load import load_model
from segkd.distill.models import build_model

REPO = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """A user's network: it returns a dict and knows nothing of the toolkit's contract."""

    def __init__(self, num_classes: int = 19, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fuse = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.ReLU())
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"segmentation": self.classifier(self.fuse(self.encoder(x)))}


def build(num_classes: int = 19, width: int = 8) -> nn.Module:
    return TinyNet(num_classes, width)


OPTIONS = {
    "import_path": "test_byo_model:build",
    "kwargs": {"width": 8},
    "logits": "classifier",
    "features": {"feat": "fuse"},
}


def test_hooks_give_the_contract_without_touching_the_module() -> None:
    torch.manual_seed(0)
    model = build_model("imported", num_classes=19, **OPTIONS).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        d = model(x, return_features=True)
        raw = model.net(x)["segmentation"]
    assert model.feat_channels == 16
    assert d["logits"].shape == (2, 19, 8, 12) and d["feat"].shape == (2, 16, 8, 12)
    torch.testing.assert_close(d["logits"], raw)
    torch.testing.assert_close(model.net.classifier(d["feat"]), raw)
    assert d["out"].shape == (2, 19, 64, 96)


def test_bad_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="no module 'head'.*classifier"):
        build_model("imported", num_classes=19, **{**OPTIONS, "logits": "head"})
    with pytest.raises(ValueError, match="outputs 19 classes but 5"):
        build_model("imported", num_classes=5, **OPTIONS)
    with pytest.raises(ValueError, match="must look like"):
        build_model("imported", num_classes=19, import_path="test_byo_model.build")


@pytest.mark.slow
def test_user_module_distils_saves_its_import_path_and_exports(
    tmp_path: Path, distill_run, tiny_r101_teacher: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from segkd.export.pipeline import ExportOptions, export_checkpoint

    steps = distill_run(
        {"name": "imported", "options": OPTIONS}, tiny_r101_teacher,
        [{"name": "kd"}, {"name": "cwd", "source": "feat"}],
        aux_weight=0, pythonpath=str(Path(__file__).resolve().parent),
    )  # fmt: skip
    assert [r["iter"] for r in steps] == [1, 2] and all(r["loss/kd/cwd_feat"] > 0 for r in steps)

    ckpt = tmp_path / "run" / "last.pth"
    student, student_meta = load_model(ckpt, torch.device("cpu"))
    assert student_meta.arch["import_path"] == "test_byo_model:build"
    result = export_checkpoint(
        ckpt, ExportOptions(exporter="torchscript", verify_count=2), log=lambda _: None
    )
    assert result.report.passed and result.path.exists()
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 128)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, student.eval()(x).numpy(), atol=1e-4, rtol=1e-3)
