"""OpenVINO IR: export at FP32/FP16/INT8 through the command, metadata in rt_info, the runner, MACs, failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="OpenVINO not installed (pip install -e .[openvino])")
pytest.importorskip("nncf", reason="NNCF not installed (pip install -e .[openvino])")

from segkd.distill.checkpoint import save_checkpoint  # noqa: E402
from segkd.distill.models import build_model  # noqa: E402
from segkd.export.openvino_export import default_openvino_path, export_openvino  # noqa: E402
from segkd.export.pipeline import ExportOptions, export_checkpoint  # noqa: E402
from segkd.export.verify import VerificationError  # noqa: E402
from segkd.infer.macs import count_macs  # noqa: E402
from segkd.infer.meta import ModelMeta, preprocess  # noqa: E402
from segkd.infer.runtime import RunnerError, load_runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = 7
SIZE = (64, 128)
FAST = {"exporter": "torchscript", "verify_count": 2, "calib_count": 4}


def _meta() -> ModelMeta:
    """The metadata of the test checkpoints: a quarter-width PSPNet-R18 of K classes at SIZE."""
    return ModelMeta(
        arch={"name": "pspnet_r18", "num_classes": K, "width": 0.25},
        class_names=[f"c{i}" for i in range(K)],
        palette=[[30 * i, 255 - 30 * i, 7 * i] for i in range(K)],
        input_size=list(SIZE),
        extra={},
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openvino")
    torch.manual_seed(0)
    save_checkpoint(root / "m.pth", build_model("pspnet_r18", num_classes=K, width=0.25), _meta())
    rng = np.random.default_rng(1)
    (root / "frames").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "frames" / f"f{i}.png"), rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    return root


def _torch_logits(ckpt: Path, image: np.ndarray) -> np.ndarray:
    from segkd.distill.load import load_model

    model, meta = load_model(ckpt)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(preprocess([image], meta))).numpy()


@pytest.mark.slow
def test_command_writes_verified_irs_that_the_runner_reads_back(work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "export" / "to_openvino.py"), str(work / "m.pth"), "--precision", "fp32",
           "int8", "--calib-images", str(work / "frames"), "--exporter", "torchscript", "--calib-count", "4",
           "--verify-count", "2"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    image = cv2.imread(str(work / "frames" / "f0.png"))
    ref = _torch_logits(work / "m.pth", image)
    for precision in ("fp32", "int8"):
        path = default_openvino_path(work / "m.pth", precision)
        assert path.is_file() and path.with_suffix(".bin").is_file() and str(path) in r.stdout
        # f32 hint: OpenVINO's default computes in bf16 on CPUs that have it (AVX512-BF16, AMX)
        runner = load_runner(path, provider="f32")
        assert (
            runner.format == "openvino" and runner.precision == precision and runner.provider.endswith("f32")
        )
        assert runner.meta.class_names == [f"c{i}" for i in range(K)] and runner.meta.palette[2] == [
            60,
            195,
            14,
        ]
        assert runner.meta.extra["verification"] and runner.input_size == SIZE
        out = runner.predict_logits([image])
        assert out.shape == (1, K, *SIZE)
        if precision == "fp32":
            np.testing.assert_allclose(out, ref, atol=1e-4)
        else:  # a random network has tiny logit margins: a loose floor that a broken quantization misses
            assert (out.argmax(1) == ref.argmax(1)).mean() > 0.8
    assert not list(work.glob(".segkd-openvino-*")), "the staging folder was left behind"


def test_fp16_ir_and_its_macs_match_the_onnx_count(work: Path) -> None:
    opts = ExportOptions(precision="fp16", out=str(work / "h.xml"), **FAST)
    result = export_openvino(work / "m.pth", opts, log=lambda _: None)
    assert result.report is not None and result.report.passed
    onnx = export_checkpoint(
        work / "m.pth", ExportOptions(out=str(work / "m.onnx"), **FAST), log=lambda _: None
    )
    runner = load_runner(work / "h.xml")
    assert runner.precision == "fp16"
    assert runner.count_macs(SIZE) == count_macs(onnx.path, SIZE) > 0  # the PSP MatMuls included
    with pytest.raises(ValueError, match="fixed to 64x128"):  # static PSP pooling matrices fix the size
        runner.count_macs((128, 256))


def test_failed_verification_keeps_the_previous_ir(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = work / "keep.xml"
    export_openvino(work / "m.pth", ExportOptions(out=str(out), **FAST), log=lambda _: None)
    before = out.read_bytes(), out.with_suffix(".bin").read_bytes()

    import segkd.export.openvino_export as ovx

    real = ovx.OvRunner._run
    monkeypatch.setattr(ovx.OvRunner, "_run", lambda self, x: real(self, x) * np.nan)  # NaN logits
    with pytest.raises(VerificationError, match="NaN or inf"):
        export_openvino(work / "m.pth", ExportOptions(out=str(out), **FAST), log=lambda _: None)
    assert (out.read_bytes(), out.with_suffix(".bin").read_bytes()) == before


def test_runner_refuses_an_ir_without_metadata_and_a_missing_bin(work: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(export_checkpoint(
        work / "m.pth", ExportOptions(out=str(work / "plain.onnx"), **FAST), log=lambda _: None).path))  # fmt: skip
    ov.save_model(model, str(work / "plain.xml"))
    del model.get_rt_info()["framework"]  # convert_model's copy of the ONNX properties is not segkd's record
    with pytest.raises(RunnerError, match="no segkd metadata"):
        load_runner(work / "plain.xml")
    (work / "plain.bin").unlink()
    with pytest.raises(RunnerError, match="is here but its weights plain.bin are missing"):
        load_runner(work / "plain.xml")


def test_a_bin_of_another_model_is_refused(work: Path, tmp_path: Path) -> None:
    # Two exports of one architecture with other weights: .bin files of the same size, which OpenVINO would run.
    from segkd.export.openvino_export import export_openvino

    torch.manual_seed(1)
    other = save_checkpoint(
        tmp_path / "other.pth", build_model("pspnet_r18", num_classes=K, width=0.25), _meta()
    )
    opts = {"exporter": "torchscript", "verify_count": 1}
    a = export_openvino(
        work / "m.pth", ExportOptions(out=str(tmp_path / "a.xml"), **opts), log=lambda _: None
    ).path
    b = export_openvino(other, ExportOptions(out=str(tmp_path / "b.xml"), **opts), log=lambda _: None).path
    assert a.with_suffix(".bin").stat().st_size == b.with_suffix(".bin").stat().st_size
    load_runner(a).close()  # its own weights: accepted
    shutil.copy(b.with_suffix(".bin"), a.with_suffix(".bin"))
    with pytest.raises(RunnerError, match=r"a\.bin is not the weights file exported with a\.xml"):
        load_runner(a)


def test_lossy_int8_falls_back_to_accuracy_aware_quantization(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With labelled verification images, an INT8 that loses more than the bound goes through NNCF's
    accuracy-aware quantization; the bound is set below any loss here so that the path is taken."""
    import segkd.export.openvino_export as ovx
    from segkd.scenes.street import generate_demo

    root = generate_demo(tmp_path / "demo", {"train": 4, "val": 2}, size=SIZE, seed=0)  # 7 categories
    monkeypatch.setattr(ovx, "MAX_INT8_DROP", -100.0)
    lines: list[str] = []
    out = tmp_path / "aa.int8.xml"
    opts = ExportOptions(
        precision="int8", out=str(out), calib_dataset="demo", calib_root=str(root), verify_split="val", **FAST
    )
    result = export_openvino(work / "m.pth", opts, log=lines.append)
    assert any("accuracy-aware quantization" in line for line in lines), lines
    assert result.report is not None and result.report.passed and result.report.miou_exported is not None
    runner = load_runner(out)
    image = cv2.imread(str(next((root / "leftImg8bit" / "val").rglob("*.png"))))
    assert runner.predict([cv2.resize(image, SIZE[::-1])])[0].shape[-2:] == SIZE


def test_three_precisions_export_the_network_from_pytorch_once(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segkd.export.openvino_export as ov_export

    calls = []
    real = ov_export.export_model
    monkeypatch.setattr(ov_export, "export_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(
        (work / "m.pth").read_bytes()
    )  # a file of its own: the per-process graph cache starts empty
    for precision in ("fp32", "fp16", "int8"):
        opts = ExportOptions(precision=precision, out=str(tmp_path / f"m.{precision}.xml"),
                             calib_images=str(work / "frames"), **FAST)  # fmt: skip
        assert ov_export.export_openvino(ckpt, opts, log=lambda _: None).report.passed
    assert len(calls) == 1
