"""ONNX export: every student at FP32/FP16/INT8 through ONNX Runtime, metadata, shapes, verification, errors, CLI."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from segkd.distill.checkpoint import CheckpointError, save_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import STUDENTS, build_model
from segkd.export.calib import CalibrationError, CalibrationReader, synthetic_samples
from segkd.export.formats import EXTRA_KEYS, PRECISIONS, default_onnx_path
from segkd.export.onnx_export import ExportError, read_metadata, torch_to_onnx
from segkd.export.pipeline import ExportOptions, export_checkpoint, export_model
from segkd.export.quantize import quantize_int8
from segkd.export.verify import VerificationError, VerifyReport, apply_gates
from segkd.infer import __version__
from segkd.infer.fileio import sha256_file
from segkd.infer.meta import ModelMeta, preprocess

REPO = Path(__file__).resolve().parents[1]
K = 19
SIZE = (64, 128)
FAST = {"exporter": "torchscript", "verify_count": 2, "calib_count": 2, "calib_method": "minmax"}


def _meta(name: str, size: tuple[int, int] = SIZE, **arch: object) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": K, "width": 0.25, **arch},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(K)],
        input_size=list(size),
        extra={"trained_on": "nothing"},
    )


def _checkpoint(folder: Path, name: str, size: tuple[int, int] = SIZE) -> Path:
    torch.manual_seed(0)
    model = build_model(name, num_classes=K, width=0.25)
    return save_checkpoint(folder / f"{name}.pth", model, _meta(name, size))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one tiny checkpoint per student and a folder of calibration frames."""
    root = tmp_path_factory.mktemp("export")
    for name in STUDENTS:
        _checkpoint(root, name)
    (root / "frames").mkdir()
    for i, s in enumerate(synthetic_samples(3, (80, 150), seed=3)):
        cv2.imwrite(str(root / "frames" / f"f{i}.png"), s.image)
    return root


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _torch_logits(ckpt: Path, images: list[np.ndarray], meta: ModelMeta) -> np.ndarray:
    from segkd.distill.load import load_model

    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(torch.from_numpy(preprocess(images, meta))).numpy()


# --------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("name", STUDENTS)
def test_every_student_round_trips_through_onnxruntime(work: Path, name: str, precision: str) -> None:
    ckpt = work / f"{name}.pth"
    opts = ExportOptions(precision=precision, calib_images=str(work / "frames"), **FAST)
    result = export_checkpoint(ckpt, opts, log=lambda _: None)

    assert result.path == default_onnx_path(ckpt, precision) and result.path.is_file()
    assert result.report is not None and result.report.passed, result.report
    sess = _session(result.path)
    dtype = np.float16 if precision == "fp16" else np.float32
    assert sess.get_inputs()[0].type == ("tensor(float16)" if precision == "fp16" else "tensor(float)")
    assert sess.get_inputs()[0].shape == [1, 3, *SIZE]
    image = synthetic_samples(1, SIZE, seed=9)[0].image
    meta = read_metadata(result.path)
    out = sess.run(None, {"input": preprocess([image], meta).astype(dtype)})[0]
    assert out.shape == (1, K, *SIZE) and out.dtype == dtype
    ref = _torch_logits(ckpt, [image], meta)
    agreement = (out.argmax(1) == ref.argmax(1)).mean()
    # Untrained weights leave top-2 logit margins of ~0.1: INT8 noise flips more pixels than on a trained model.
    assert agreement >= {"fp32": 0.999, "fp16": 0.995, "int8": 0.8}[precision]
    if precision == "fp32":
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_int8_graph_is_what_tensorrt_accepts(work: Path) -> None:
    """Symmetric (zero point 0) Q/DQ, per-channel weights on axis 0, float biases, only Conv/MatMul/Gemm quantized."""
    opts = ExportOptions(
        precision="int8", calib_images=str(work / "frames"), out=str(work / "q.onnx"), **FAST
    )
    path = export_checkpoint(work / "deeplabv3_r18.pth", opts, log=lambda _: None).path
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(not inits[n.input[2]].any() for n in dq if len(n.input) > 2 and n.input[2] in inits)
    assert all(v.dtype != np.int32 for v in inits.values()), "an INT32 (bias) initializer is quantized"
    weight_dq = [n for n in dq if n.input[0] in inits]
    assert weight_dq and all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in weight_dq)
    quantized = {"Conv", "MatMul", "Gemm"}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        src = producer.get(q.input[0])
        users = {c.op_type for d in consumers[q.output[0]] for c in consumers.get(d.output[0], [])}
        # The output of a quantized op or an input of one (possibly shared, e.g. with a residual Add): no Q/DQ
        # pair exists just for a Relu, Concat or Resize.
        assert (src is not None and src.op_type in quantized) or users & quantized, (q.name, users)


# --------------------------------------------------------------------------------------------- metadata
def test_metadata_reads_back(work: Path) -> None:
    ckpt = work / "pspnet_mbv2.pth"
    opts = ExportOptions(out=str(work / "meta.onnx"), height=64, width=96, **FAST)
    result = export_checkpoint(ckpt, opts, log=lambda _: None)
    meta = read_metadata(result.path)
    want = _meta("pspnet_mbv2")
    assert (meta.arch, meta.class_names, meta.palette) == (want.arch, want.class_names, want.palette)
    assert (meta.mean, meta.std, meta.channel_order) == (want.mean, want.std, want.channel_order)
    assert meta.input_size == [64, 96]  # the export size; the training crop is kept apart
    extra = meta.extra
    assert extra["train_input_size"] == "64x128" and extra["trained_on"] == "nothing"
    assert (
        extra["precision"] == "fp32" and extra["output"] == "logits" and extra["fused_preprocess"] == "false"
    )
    assert extra["input_layout"] == "NCHW" and extra["input_dtype"] == "float32" and extra["dynamic"] == ""
    assert extra["source"] == "pspnet_mbv2.pth" and extra["source_sha256"] == sha256_file(ckpt)
    assert extra["toolkit_version"] == __version__ and extra["exporter"] == "torchscript"
    assert int(extra["params"]) == sum(
        p.numel() for p in build_model("pspnet_mbv2", num_classes=K, width=0.25).parameters()
    )
    verification = json.loads(extra["verification"])
    assert verification["passed"] and verification["agreement"] == result.report.agreement
    assert set(extra) - {"trained_on", "label_dtype"} <= set(EXTRA_KEYS)


def test_fused_preprocess_and_argmax_take_raw_frames_and_give_labels(work: Path) -> None:
    ckpt = work / "deeplabv3_mbv2.pth"
    opts = ExportOptions(
        fuse_preprocess=True, argmax=True, dynamic="all", out=str(work / "fused.onnx"), **FAST
    )
    path = export_checkpoint(ckpt, opts, log=lambda _: None).path
    meta = read_metadata(path)
    assert meta.extra["input_layout"] == "NHWC" and meta.extra["fused_preprocess"] == "true"
    assert meta.extra["output"] == "labels" and meta.extra["label_dtype"] == "uint8"
    sess = _session(path)
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_inputs()[0].shape[-1] == 3
    assert sess.get_outputs()[0].type == "tensor(uint8)"
    for n, size in ((1, (64, 128)), (2, (72, 88))):
        images = [s.image for s in synthetic_samples(n, size, seed=n)]
        labels = sess.run(None, {"input": np.stack(images)})[0]  # (n, H, W) from raw BGR frames
        assert labels.shape == (n, *size) and labels.dtype == np.uint8
        ref = _torch_logits(ckpt, images, meta).argmax(1)
        assert (labels == ref).mean() >= 0.999


def test_fp16_fused_labels_int32(work: Path) -> None:
    opts = ExportOptions(
        precision="fp16",
        fuse_preprocess=True,
        argmax=True,
        label_dtype="int32",
        out=str(work / "h.onnx"),
        **FAST,
    )
    path = export_checkpoint(work / "pspnet_r18.pth", opts, log=lambda _: None).path
    sess = _session(path)
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_outputs()[0].type == "tensor(int32)"
    assert read_metadata(path).extra["input_dtype"] == "uint8"


# --------------------------------------------------------------------------------------------- shapes
def test_pspnet_exports_exactly_at_sizes_not_multiple_of_six(work: Path) -> None:
    ckpt = _checkpoint(work, "pspnet_r18", size=(70, 94))
    path = export_checkpoint(
        ckpt, ExportOptions(out=str(work / "psp70.onnx"), **FAST), log=lambda _: None
    ).path
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "GlobalAveragePool" not in ops and ops.count("Gather") <= 4, (
        "pyramid pooling exploded into gathers"
    )
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 70, 94]
    images = [s.image for s in synthetic_samples(2, (70, 94), seed=4)]
    meta = read_metadata(path)
    sess = _session(path)
    for image in images:
        out = sess.run(None, {"input": preprocess([image], meta)})[0]
        np.testing.assert_allclose(out, _torch_logits(ckpt, [image], meta), atol=1e-4)


def test_deeplabv3_one_dynamic_export_runs_at_three_sizes(work: Path) -> None:
    ckpt = work / "deeplabv3_r18.pth"
    path = export_checkpoint(
        ckpt, ExportOptions(dynamic="all", out=str(work / "dyn.onnx"), **FAST), lambda _: None
    ).path
    assert read_metadata(path).extra["dynamic"] == "batch,height,width"
    sess = _session(path)
    assert [isinstance(d, str) for d in sess.get_inputs()[0].shape] == [True, False, True, True]
    meta = read_metadata(path)
    for n, size in ((1, (64, 128)), (2, (96, 80)), (1, (40, 200))):
        images = [s.image for s in synthetic_samples(n, size, seed=7)]
        x = preprocess(images, meta)
        out = sess.run(None, {"input": x})[0]
        assert out.shape == (n, K, *size)
        np.testing.assert_allclose(out, _torch_logits(ckpt, images, meta), atol=1e-4)


class _ShapeBaker(nn.Module):
    """Turns the traced width into a constant: right at the export size, broken at any other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = int(x.shape[-1])
        return self.conv(x) + torch.arange(w, dtype=x.dtype) * 0.0


def test_dynamic_export_that_specialised_a_shape_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "baked.onnx"
    opts = ExportOptions(dynamic="all", **FAST)
    with pytest.raises(ExportError, match="dynamic"):
        export_model(_ShapeBaker(), _meta("baker"), out, opts, log=lambda _: None)
    assert not out.exists()


def test_dynamo_exporter_dynamic_deeplab(work: Path) -> None:
    # onnxscript is in the test extra: torch 2.13's default exporter is tested, never skipped
    opts = ExportOptions(dynamic="all", exporter="dynamo", verify_count=2, out=str(work / "dynamo.onnx"))
    result = export_checkpoint(work / "deeplabv3_r18.pth", opts, log=lambda _: None)
    assert result.exporter == "dynamo" and result.report.passed


def test_auto_exporter_is_dynamo_and_its_file_runs_at_two_sizes(work: Path) -> None:
    from segkd.infer.runtime import load_runner

    opts = ExportOptions(dynamic="all", verify_count=2, out=str(work / "auto.onnx"))
    result = export_checkpoint(work / "deeplabv3_mbv2.pth", opts, log=lambda _: None)
    assert result.exporter == "dynamo" and read_metadata(result.path).extra["exporter"] == "dynamo"
    model, meta = load_model(work / "deeplabv3_mbv2.pth")
    with load_runner(result.path) as runner:
        for hw in [(64, 128), (96, 160)]:
            image = synthetic_samples(1, hw, seed=3)[0].image
            with torch.no_grad():
                want = model(torch.from_numpy(preprocess([image], meta))).numpy()  # (1, K, H, W)
            got = runner.predict_logits([image])
            assert got.shape == want.shape
            assert (got.argmax(1) == want.argmax(1)).mean() > 0.99


# --------------------------------------------------------------------------------------------- calibration data
def test_int8_on_labelled_dataset_reports_miou(work: Path, shared_fixtures: Path) -> None:
    """Real Cityscapes frame (val only): calibrate and verify on it; the mIoU gate is applied."""
    opts = ExportOptions(
        precision="int8",
        calib_dataset="cityscapes",
        calib_root=str(shared_fixtures / "cityscapes"),
        calib_split="val",
        out=str(work / "city.int8.onnx"),
        **FAST,
    )
    result = export_checkpoint(work / "deeplabv3_mbv2.pth", opts, log=lambda _: None)
    r = result.report
    assert r.source == "cityscapes:val" and r.images == 1
    assert r.miou_torch is not None and abs(r.miou_torch - r.miou_exported) <= 1.0
    assert "mIoU within 1.0 point of PyTorch" in r.gate


def test_entropy_calibration_differs_from_minmax(tmp_path: Path) -> None:
    """With its default 128/128 bins ONNX Runtime's entropy equals min-max; ours clips (scales <= min-max)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    net = nn.Sequential(net, nn.Conv2d(8, K, 1)).eval()
    meta = _meta("tiny", size=(32, 48))
    torch_to_onnx(net, meta, tmp_path / "f.onnx", size=(32, 48), exporter="torchscript", log=lambda _: None)
    samples = synthetic_samples(4, (32, 48), seed=5)
    scales = {}
    for method in ("minmax", "entropy"):
        reader = CalibrationReader(samples, meta, "input", batch=1, fused=False)
        quantize_int8(
            tmp_path / "f.onnx", tmp_path / f"{method}.onnx", reader, method=method, log=lambda _: None
        )
        m = onnx.load(str(tmp_path / f"{method}.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        q_scales = {n.input[1] for n in m.graph.node if n.op_type == "QuantizeLinear"}
        scales[method] = {k: float(inits[k]) for k in q_scales}  # per-tensor activation scales
    assert scales["minmax"].keys() == scales["entropy"].keys() and len(scales["minmax"]) >= 3
    diffs = [scales["minmax"][k] - scales["entropy"][k] for k in scales["minmax"]]
    assert min(diffs) >= -1e-9 and max(diffs) > 0


# --------------------------------------------------------------------------------------------- verification gates
@pytest.mark.parametrize(
    ("precision", "agreement", "mious", "passed"),
    [
        ("fp32", 99.95, None, True),
        ("fp32", 99.85, None, False),
        ("fp16", 99.4, None, True),
        ("fp16", 98.9, None, False),
        ("fp16", 99.9, (60.0, 59.95), True),
        ("fp16", 99.9, (60.0, 59.85), False),  # agreement alone would pass: the mIoU gate catches it
        ("int8", 97.0, (60.0, 59.2), True),
        ("int8", 97.0, (60.0, 58.9), False),
        ("int8", 95.0, None, True),  # no labels: only the agreement floor
        ("int8", 85.0, None, False),
    ],
)
def test_gates(precision: str, agreement: float, mious: tuple[float, float] | None, passed: bool) -> None:
    mt, mo = mious or (None, None)
    report = apply_gates(VerifyReport(precision, "x", 1, [8, 8], agreement, miou_torch=mt, miou_exported=mo))
    assert report.passed is passed and bool(report.failures) is not passed


def test_failed_verification_writes_nothing_and_keeps_the_old_file(work: Path, monkeypatch) -> None:
    out = work / "kept.onnx"
    out.write_bytes(b"previous")

    def failing(*a, **k) -> VerifyReport:
        return apply_gates(VerifyReport("fp32", "x", 1, [64, 128], 97.0))

    monkeypatch.setattr("segkd.export.pipeline.verify_onnx", failing)
    with pytest.raises(VerificationError, match="agreement 97.000% < 99.9%"):
        export_checkpoint(work / "pspnet_mbv2.pth", ExportOptions(out=str(out), **FAST), log=lambda _: None)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in work.glob(".kept.onnx*")] == []


# --------------------------------------------------------------------------------------------- bad input
def test_missing_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.pth", ExportOptions(**FAST))
    torch.save(build_model("pspnet_mbv2", num_classes=K, width=0.25).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="not a segkd-checkpoint"):
        export_checkpoint(tmp_path / "bare.pth", ExportOptions(**FAST))
    assert not list(tmp_path.glob("*.onnx"))


def test_option_problems_are_reported_together(work: Path) -> None:
    opts = ExportOptions(precision="int4", height=16, calib_dataset="cityscapes", calib_images="x", **FAST)
    with pytest.raises(ExportError) as info:
        export_checkpoint(work / "pspnet_mbv2.pth", opts, log=lambda _: None)
    msg = str(info.value)
    assert "precision 'int4'" in msg and "too small" in msg and "not both" in msg and "--calib-root" in msg
    with pytest.raises(ExportError, match="int8 needs calibration images"):
        export_checkpoint(
            work / "pspnet_mbv2.pth", ExportOptions(precision="int8", **FAST), log=lambda _: None
        )


def test_precision_the_model_does_not_support(tmp_path: Path) -> None:
    model = build_model("pspnet_mbv2", num_classes=K, width=0.25)
    model.export_precisions = ("fp32", "fp16")
    with pytest.raises(ExportError, match="does not support int8"):
        export_model(
            model,
            _meta("pspnet_mbv2"),
            tmp_path / "m.onnx",
            ExportOptions(precision="int8", calib_images="x"),
        )


def test_calibration_folder_without_images(work: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no frames here")
    out = tmp_path / "q.onnx"
    opts = ExportOptions(precision="int8", calib_images=str(tmp_path), out=str(out), **FAST)
    with pytest.raises(CalibrationError, match="no images"):
        export_checkpoint(work / "pspnet_mbv2.pth", opts, log=lambda _: None)
    opts.calib_images = str(tmp_path / "missing")
    with pytest.raises(CalibrationError, match="does not exist"):
        export_checkpoint(work / "pspnet_mbv2.pth", opts, log=lambda _: None)
    assert not out.exists()


# --------------------------------------------------------------------------------------------- command line
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


def test_cli_to_onnx_end_to_end(work: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "cli.pth"
    ckpt.write_bytes((work / "pspnet_mbv2.pth").read_bytes())
    run = _cli(
        "export/to_onnx.py", str(ckpt), "--precision", "fp32", "int8", "--height", "64", "--width", "96",
        "--calib-images", str(work / "frames"), "--calib-count", "2", "--calib-method", "minmax",
        "--verify-count", "2", "--exporter", "torchscript",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for precision in ("fp32", "int8"):
        path = default_onnx_path(ckpt, precision)
        assert f"wrote {path}" in run.stdout and path.is_file()
        assert read_metadata(path).extra["precision"] == precision
    assert run.stdout.count("verified:") == 2

    bad = _cli("export/to_onnx.py", str(tmp_path / "missing.pth"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_to_trt_without_tensorrt_stops_after_the_onnx(work: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed: the engine would be built")
    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes((work / "deeplabv3_mbv2.pth").read_bytes())
    run = _cli(
        "export/to_trt.py", str(ckpt), "--precision", "fp16", "--shapes", "1x3x64x96:1x3x64x128:2x3x96x128",
        "--verify-count", "2", "--exporter", "torchscript",
    )  # fmt: skip
    assert run.returncode == 2, run.stderr  # no engine: a chained script must not read this as success
    onnx_path = tmp_path / "t.fp16.onnx"
    assert onnx_path.is_file() and "pip install -e .[trt]" in run.stdout
    meta = read_metadata(onnx_path)
    assert meta.extra["dynamic"] == "batch,height,width" and meta.input_size == [64, 128]  # opt shape
    assert not list(tmp_path.glob("*.engine"))
    again = _cli("export/to_trt.py", str(onnx_path))  # an ONNX input has nothing to fall back to
    assert again.returncode == 2 and "pip install -e .[trt]" in again.stderr


def test_fp16_export_survives_a_batchnorm_variance_beyond_float16(tmp_path: Path) -> None:
    """A BatchNorm reading large Conv outputs (PIDNet-L's first one: variance 1.4e5) has a running variance above
    float16's 65504: a half copy turns it into inf and zeroes the channels. The FP16 export computes each
    BatchNorm's scale and shift in float32 first, so the file stays within float16's rounding of the model."""
    from segkd.distill.load import half_safe

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, K, 1)
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(300.0)
        model[1].running_var.uniform_(1e5, 2e5)
        model[1].running_mean.uniform_(-50.0, 50.0)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        ref = model(x)
        naive = copy.deepcopy(model).half()(x.half()).float()
        assert torch.allclose(half_safe(model)(x), ref, rtol=1e-5, atol=1e-5)  # the same function
    scale = ref.abs().max().item()
    assert (naive - ref).abs().max().item() > 0.2 * scale  # what a plain half copy computes
    path = tmp_path / "bn.fp16.onnx"
    torch_to_onnx(model, _meta("deeplabv3_r18"), path, size=SIZE, dtype="float16", exporter="torchscript",
                  log=lambda _: None)  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.half().numpy()})[0].astype(np.float32)
    assert np.abs(out - ref.numpy()).max() < 0.01 * scale
