"""INT8 per target (TensorRT / CPU forms), bounded calibration memory, the runner's warning, the FP16 note."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.models import build_model
from segkd.export.calib import synthetic_samples
from segkd.export.formats import default_onnx_path
from segkd.export.onnx_export import read_metadata, torch_to_onnx
from segkd.export.pipeline import ExportOptions, export_checkpoint
from segkd.infer.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
K = 19
SIZE = (64, 128)
FAST = {"exporter": "torchscript", "verify_count": 2, "calib_count": 2, "calib_method": "minmax"}


def _meta(name: str, size: tuple[int, int] = SIZE) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": K, "width": 0.25},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(K)],
        input_size=list(size),
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepLabV3-R18 checkpoint, calibration frames, and its INT8 exports for both targets."""
    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    model = build_model("deeplabv3_r18", num_classes=K, width=0.25)
    save_checkpoint(root / "best.pth", model, _meta("deeplabv3_r18"))
    (root / "frames").mkdir()
    for i, s in enumerate(synthetic_samples(3, (80, 150), seed=3)):
        cv2.imwrite(str(root / "frames" / f"f{i}.png"), s.image)
    for target in ("tensorrt", "cpu"):
        opts = ExportOptions(precision="int8", target=target, calib_images=str(root / "frames"), **FAST)
        result = export_checkpoint(root / "best.pth", opts, log=lambda _: None)
        assert result.report is not None and result.report.passed, result.report
    return root


def _graph(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    model = onnx.load(str(path))
    return model, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_targets_have_their_own_file_names_and_metadata(work: Path) -> None:
    trt, cpu = (
        default_onnx_path(work / "best.pth", "int8"),
        default_onnx_path(work / "best.pth", "int8", "cpu"),
    )
    assert (trt.name, cpu.name) == ("best.int8.onnx", "best.int8-cpu.onnx")
    assert trt.is_file() and cpu.is_file()  # the second export did not overwrite the first
    assert read_metadata(trt).extra["target"] == "tensorrt"
    assert read_metadata(cpu).extra["target"] == "cpu"
    with pytest.raises(ValueError, match="unknown INT8 target 'arm'"):
        default_onnx_path(work / "best.pth", "int8", "arm")


def test_cpu_graph_has_uint8_activations_and_per_channel_int8_weights(work: Path) -> None:
    """QOperator form: every Conv is a QLinearConv with u8 activations and s8 per-channel symmetric weights."""
    model, inits = _graph(work / "best.int8-cpu.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") > 10
    for conv in (n for n in model.graph.node if n.op_type == "QLinearConv"):
        x_zp, w, w_scale, w_zp, y_zp = (inits[conv.input[i]] for i in (2, 3, 4, 5, 7))
        assert x_zp.dtype == y_zp.dtype == np.uint8  # u8 activations in and out
        assert w.dtype == np.int8 and w_scale.shape == (w.shape[0],)  # one scale per output channel
        assert w_zp.dtype == np.int8 and not w_zp.any()  # symmetric weights
    # The ops between convolutions stay in uint8 too (residual adds, the ASPP concat).
    assert "QLinearAdd" in ops and "QLinearConcat" in ops
    entry = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert entry and all(inits[n.input[2]].dtype == np.uint8 for n in entry)


def test_tensorrt_graph_keeps_signed_symmetric_activations(work: Path) -> None:
    model, inits = _graph(work / "best.int8.onnx")
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in act_q)


def test_runner_warns_when_the_tensorrt_form_runs_on_cpu(work: Path) -> None:
    from segkd.infer.runtime.ort_runner import OrtRunner

    with pytest.warns(RuntimeWarning, match="--target cpu"):
        OrtRunner(work / "best.int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU form runs where it is meant to: no warning
        OrtRunner(work / "best.int8-cpu.onnx")


def test_fp16_export_says_it_is_for_gpus(work: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    opts = ExportOptions(precision="fp16", out=str(tmp_path / "h.onnx"), **FAST)
    export_checkpoint(work / "best.pth", opts, log=lines.append)
    note = [line for line in lines if "FP16" in line]
    assert note and "slower than FP32" in note[0] and "GPUs" in note[0]
    lines.clear()
    export_checkpoint(
        work / "best.pth", ExportOptions(out=str(tmp_path / "f.onnx"), **FAST), log=lines.append
    )
    assert not [line for line in lines if "slower than FP32" in line]
    from segkd.infer.runtime.ort_runner import OrtRunner

    with pytest.warns(
        RuntimeWarning, match="FP16 is meant for GPUs"
    ):  # benchmark, predict, camera load it so
        OrtRunner(tmp_path / "h.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OrtRunner(tmp_path / "f.onnx")


# --------------------------------------------------------------------------------------------- memory
_CALIBRATE = """
import json, resource, sys
from segkd.export.calib import CalibrationReader, synthetic_samples
from segkd.export.quantize import quantize_int8
from segkd.infer.meta import ModelMeta
graph, out, method = sys.argv[1], sys.argv[2], sys.argv[3]
count, h, w = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
meta = ModelMeta(arch={"name": "deeplabv3_r18", "num_classes": 19}, class_names=[str(i) for i in range(19)],
                 palette=[[i, i, i] for i in range(19)], input_size=[h, w])
reader = CalibrationReader(synthetic_samples(count, (h, w)), meta, "input", batch=1, fused=False)
group_mb = float(sys.argv[7]) if len(sys.argv) > 7 else 1e9
quantize_int8(graph, out, reader, method=method, group_mb=group_mb, progress=False, log=lambda _: None)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child of a large pytest process would
# report the parent's size instead of its own peak.
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak}))
"""


def _peak_rss_mb(
    graph: Path, out: Path, count: int, size: tuple[int, int], method: str, group_mb: float = 1e9
) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _CALIBRATE, str(graph), str(out), method, str(count), *map(str, size)]
    args.append(str(group_mb))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


def _student_graph(tmp_path: Path, size: tuple[int, int]) -> Path:
    """A random DeepLabV3-R18 at width 1/4 exported (TorchScript) at ``size``."""
    torch.manual_seed(0)
    model = build_model("deeplabv3_r18", num_classes=K, width=0.25).eval()
    graph = tmp_path / "g.onnx"
    torch_to_onnx(
        model, _meta("deeplabv3_r18", size), graph, size=size, exporter="torchscript", log=lambda _: None
    )
    return graph


@pytest.mark.slow  # measures peak memory in subprocesses
def test_calibration_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """Peak resident memory of an entropy calibration over 2 and over 10 images (fresh processes, no torch).

    At 256x512 the calibrated tensors of one batch take ~60 MB on this model, so eight more images held until
    the end (one ``collect_data`` call over the whole reader) add ~480 MB: measured 477 -> 953 MB, failing the
    200 MB margin; fed one batch per call the two peaks are within a few MB. MinMax is not the test: ONNX
    Runtime reduces each tensor to its min/max inside the graph, so it never held whole tensors.
    """
    method = "entropy"
    size = (256, 512)
    graph = _student_graph(tmp_path, size)
    few = _peak_rss_mb(graph, tmp_path / "few.onnx", 2, size, method)
    many = _peak_rss_mb(graph, tmp_path / "many.onnx", 10, size, method)
    assert many < few + 200, (few, many)


@pytest.mark.slow  # measures peak memory in subprocesses
def test_calibration_in_groups_bounds_memory_by_the_group(tmp_path: Path) -> None:
    """Tensors calibrated in passes of 16 MB hold far less than all of one image's tensors at once.

    At 512x1024 this model's calibrated tensors take ~150 MB per image (see ``calibrated_tensor_bytes``); held
    all at once the peak carries them, in groups of 16 MB it carries one group plus the largest tensor's copies.
    """
    from segkd.export.quantize import QUANT_OP_TYPES, calibrated_tensor_bytes

    size = (512, 1024)
    graph = _student_graph(tmp_path, size)
    held = sum(calibrated_tensor_bytes(graph, QUANT_OP_TYPES, (1, 3, *size)).values()) / 2**20
    assert held > 120
    whole = _peak_rss_mb(graph, tmp_path / "whole.onnx", 1, size, "percentile")
    grouped = _peak_rss_mb(graph, tmp_path / "grouped.onnx", 1, size, "percentile", group_mb=16)
    assert grouped < whole - held / 2, (whole, grouped, held)


def _tiny_graph(path: Path) -> Path:
    """input (1, 3, h, w) -> Conv 3->4 (3x3, pad 1) -> Relu -> Conv 4->2 (1x1) -> output, h and w dynamic."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1, w2 = (
        rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        rng.normal(size=(2, 4, 1, 1)).astype(np.float32),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_calibrated_tensor_bytes_resolve_dynamic_sizes(tmp_path: Path) -> None:
    from segkd.export.quantize import calibrated_tensor_bytes

    sizes = calibrated_tensor_bytes(_tiny_graph(tmp_path / "t.onnx"), ["Conv"], (1, 3, 8, 10))
    # Conv inputs and outputs: input 3x8x10, c1 4x8x10 (output of the first Conv only: Relu is not calibrated),
    # r1 4x8x10 (input of the second), output 2x8x10; float32.
    assert sizes == {"input": 960, "c1": 1280, "r1": 1280, "output": 640}


def test_tensor_groups_pack_within_the_budget() -> None:
    from segkd.export.quantize import tensor_groups

    sizes = {"a": 600, "b": 500, "c": 400, "d": 300, "e": 100, "big": 2000, "unknown": None}
    groups = tensor_groups(sizes, 1000)
    # first-fit decreasing: big alone (over budget), a+c (600+400), b+d+e (500+300+100), unknown alone.
    assert groups == [{"big"}, {"a", "c"}, {"b", "d", "e"}, {"unknown"}]
    assert tensor_groups(sizes, 10**9) == [set(sizes) - {"unknown"}, {"unknown"}]


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calibration_in_groups_gives_the_ranges_of_one_pass(tmp_path: Path, method: str) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data

    from segkd.export.calib import CalibrationReader
    from segkd.export.quantize import _calibrate

    size = (64, 128)
    graph, meta = _student_graph(tmp_path, size), _meta("deeplabv3_r18", size)
    caches, passes = [], []
    for group_mb in (1e9, 0.25):
        reader = CalibrationReader(synthetic_samples(3, size, seed=1), meta, "input", batch=1, fused=False)
        cache = tmp_path / f"ranges-{group_mb:g}.json"
        passes.append(_calibrate(graph, reader, method, "tensorrt", cache, tmp_path, progress=False,
                                 group_mb=group_mb, log=lambda _: None))  # fmt: skip
        caches.append(load_tensors_data(cache))
    assert passes[0] == 1 and passes[1] > 3
    one, grouped = caches
    assert set(one.keys()) == set(grouped.keys()) and len(one.keys()) > 20
    for name in one:
        assert np.array_equal(one[name].range_value, grouped[name].range_value), name


def test_cli_target_reaches_the_export_options() -> None:
    from segkd.export.cli import _options, format_parser
    from segkd.export.formats import EXPORT_FORMATS

    def onnx_parser():  # noqa: ANN202
        return format_parser(EXPORT_FORMATS["onnx"])

    args = onnx_parser().parse_args(
        ["x.pth", "--precision", "int8", "--target", "cpu", "--calib-images", "f"]
    )
    assert _options(args, "int8", None).target == "cpu"
    assert _options(onnx_parser().parse_args(["x.pth"]), "int8", None).target == "tensorrt"
    with pytest.raises(SystemExit):
        onnx_parser().parse_args(["x.pth", "--target", "gpu"])


def test_to_trt_refuses_the_cpu_form(work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "export/to_trt.py"), str(work / "best.int8-cpu.onnx")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode != 0 and "export the TensorRT form" in run.stderr, run.stderr
    assert not list(work.glob("*.engine"))


@pytest.mark.slow
def test_calibration_method_table_runs_on_demo_data(tmp_path: Path) -> None:
    """benchmarks/calib_methods.py end to end on generated demo data and a 7-class checkpoint."""
    from segkd.infer.datasets import build_dataset
    from segkd.scenes.street import generate_demo

    root = generate_demo(tmp_path / "demo", {"train": 3, "val": 2}, (64, 128), seed=0)
    ds = build_dataset("demo", root, "val")
    torch.manual_seed(0)
    arch = {"name": "deeplabv3_r18", "num_classes": 7, "width": 0.125, "output_stride": 16}
    meta = ModelMeta(arch=arch, class_names=ds.class_names, palette=ds.palette, input_size=[64, 128])
    ckpt = save_checkpoint(tmp_path / "m.pth", build_model(**arch), meta)
    table = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "calib_methods.py"), str(ckpt), "--data-root", str(root),
           "--counts", "1", "3", "--methods", "minmax", "percentile", "--percentiles", "99.9",
           "--targets", "cpu", "--out", str(table)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1:-1] for line in table.read_text().splitlines() if line.startswith(f"| {ckpt}")]
    assert [r[1].strip() for r in rows] == ["–", "cpu", "cpu", "cpu", "cpu"]
    assert [r[2].strip() for r in rows[1:]] == ["minmax", "percentile 99.9"] * 2
    assert [r[3].strip() for r in rows[1:]] == ["1", "1", "3", "3"]
    assert rows[0][6].strip() == "100" and all(0 < float(r[6]) <= 100 for r in rows[1:])
    assert all(
        abs(float(r[4]) - float(rows[0][4]) - float(r[5])) < 0.011 for r in rows[1:]
    )  # Δ = INT8 - FP32
