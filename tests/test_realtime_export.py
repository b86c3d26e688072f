"""The real-time students (PIDNet, DDRNet, BiSeNetV2, STDC) through every verified export: ONNX FP16, INT8 for
TensorRT (s8 Q/DQ) and for CPUs (u8 QOperator), OpenVINO INT8 (NNCF), each gated against PyTorch on labelled demo
images (`segkd.export.formats.PRECISIONS`) and each with exactly one output.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_realtime_export.py

INT8's gate (mIoU within 1.0 point, agreement >= 90 %) is not a fair test of random weights, whose logits are
near-ties that any rounding flips; each student is first trained for a few steps on generated street scenes
(`_briefly_trained`), enough to give the confident, structured logits a trained model has. The smallest variant
of each family is the fast check; the other variants and OpenVINO INT8 (NNCF's bias correction takes 10-30 s
per model here) are marked slow. docs/quantization.md ("Real-time students") has the same sweep at full length.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.models import build_model
from segkd.export.calib import dataset_samples
from segkd.export.onnx_export import ExportError, other_size, size_multiple
from segkd.export.pipeline import ExportOptions, export_model
from segkd.infer.meta import IMAGENET_RGB, ModelMeta

torch.set_num_threads(1)

SIZE = (64, 128)
# The smallest variant of each family: the larger ones (pidnet_m/l, ddrnet_23, stdc2) run the same operators, and
# their numbers are measured in docs/quantization.md (PIDNet-L's FP16 misses its gate there, in PyTorch too).
FAST = ["pidnet_s", "ddrnet_23_slim", "bisenetv2", "stdc1"]
STUDENTS = FAST
# (precision, INT8 target): the ONNX forms.
ONNX_FORMS = [("fp16", "tensorrt"), ("int8", "tensorrt"), ("int8", "cpu")]
_STEPS = 25  # SGD steps of `_briefly_trained`: past the near-uniform logits of initialisation
_QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segkd.scenes.street import generate_demo

    root = tmp_path_factory.mktemp("demo")
    return generate_demo(root, {"train": 8, "val": 8}, size=SIZE, seed=0, classes="cityscapes")


def _meta(name: str) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, i, i] for i in range(19)],
        input_size=list(SIZE),
        mean=IMAGENET_RGB[0],
        std=IMAGENET_RGB[1],
        channel_order="RGB",
    )


def _batch(root: Path, meta: ModelMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo training split as one normalised RGB batch and its labels."""
    samples = dataset_samples("demo", root, "train", 8, SIZE, 19)
    bgr = torch.stack([torch.from_numpy(s.image.copy()) for s in samples])  # (N, H, W, 3) uint8
    rgb = bgr.flip(-1).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    labels = torch.stack([torch.from_numpy(s.label.astype("int64")) for s in samples])  # (N, H, W)
    return (rgb - mean) / std, labels


@lru_cache(maxsize=8)
def _briefly_trained_cached(name: str, root: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model, meta = build_model(name, num_classes=19), _meta(name)
    x, y = _batch(Path(root), meta)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(_STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y, ignore_index=255).backward()
        opt.step()
    return model.eval()


def _briefly_trained(name: str, root: Path) -> torch.nn.Module:
    """``name`` (19 classes) after a few full-batch SGD steps on the demo training split, in eval mode."""
    return _briefly_trained_cached(name, str(root))


def _opts(root: Path, **kw: object) -> ExportOptions:
    return ExportOptions(
        exporter="torchscript", slim=False, calib_dataset="demo", calib_root=str(root), calib_count=8,
        verify_split="val", verify_count=8, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("precision, target", ONNX_FORMS, ids=["fp16", "int8-tensorrt", "int8-cpu"])
@pytest.mark.parametrize("name", STUDENTS)
def test_each_onnx_form_passes_its_gate_with_one_output(
    name: str, precision: str, target: str, demo_root: Path, tmp_path: Path
) -> None:
    model = _briefly_trained(name, demo_root)
    opts = _opts(demo_root, precision=precision, target=target)
    result = export_model(model, _meta(name), tmp_path / "m.onnx", opts, **_QUIET)
    assert result.report is not None and result.report.passed, result.report
    assert result.report.miou_torch is not None  # the labelled gate (mIoU), not agreement alone
    assert len(onnx.load(str(result.path), load_external_data=False).graph.output) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_openvino_int8_passes_its_gate_with_one_output(name: str, demo_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from segkd.export.openvino_export import export_openvino

    ckpt = save_checkpoint(tmp_path / "student.pth", _briefly_trained(name, demo_root), _meta(name))
    opts = _opts(demo_root, precision="int8", out=str(tmp_path / "m.xml"))
    result = export_openvino(ckpt, opts, **_QUIET)
    assert result.report is not None and result.report.passed, result.report
    import openvino as ov

    assert len(ov.Core().read_model(str(result.path)).outputs) == 1


# ------------------------------------------------------------------ BiSeNetV2: dynamic sizes in multiples of 32
# Its aggregation upsamples the 1/32 semantic branch by a fixed 4x onto the 1/8 detail branch, so the two line up
# only when height and width are multiples of 32. The dynamic graph is right at such sizes; the exporter used to
# check it at an odd size (53x163 from 64x128), where ONNX Runtime fails on the broadcast, and refused the export.
def test_the_other_size_of_the_dynamic_check_keeps_the_models_multiple() -> None:
    assert other_size((64, 128)) == (53, 163)
    assert other_size((64, 128), 32) == (96, 192)
    assert size_multiple(build_model("bisenetv2", num_classes=19)) == 32
    assert size_multiple(build_model("pidnet_s", num_classes=19)) == 1


def test_bisenetv2_exports_with_dynamic_sizes_and_runs_like_pytorch_at_other_multiples(
    tmp_path: Path,
) -> None:
    from segkd.export.calib import network_input, synthetic_samples
    from segkd.infer.meta import preprocess
    from segkd.infer.runtime.ort_session import cpu_session

    torch.manual_seed(0)
    model, meta = build_model("bisenetv2", num_classes=19).eval(), _meta("bisenetv2")
    opts = ExportOptions(exporter="torchscript", slim=False, dynamic="all", verify_count=2)
    result = export_model(model, meta, tmp_path / "m.onnx", opts, **_QUIET)  # checks 96x192 itself
    sess = cpu_session(result.path)
    for hw in [(32, 32), (160, 96)]:
        images = [s.image for s in synthetic_samples(1, hw, seed=2)]
        got = sess.run(None, {"input": network_input(images, meta, fused=False, dtype="float32")})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(preprocess(images, meta))).numpy()  # (1, 19, H, W)
        assert got.shape == ref.shape
        assert abs(got - ref).max() < 1e-3 * abs(ref).max()


def test_an_export_size_off_the_models_multiple_is_refused_before_exporting(tmp_path: Path) -> None:
    model = build_model("bisenetv2", num_classes=19).eval()
    opts = ExportOptions(exporter="torchscript", height=80, width=128)
    with pytest.raises(ExportError, match=r"multiples of 32, not 80x128 \(e\.g\. --height 96 --width 128\)"):
        export_model(model, _meta("bisenetv2"), tmp_path / "m.onnx", opts, **_QUIET)
    assert not (tmp_path / "m.onnx").exists()
