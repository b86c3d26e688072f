"""Accuracy-controlled INT8 (``--max-drop``): the sensitivity ranking, the search that keeps layers in float, and
the export's checks, refusal and metadata.

The module tests use a three-Conv graph whose middle Conv is damaged on purpose: the first Conv's channel 0 is
scaled by 1000 and the middle Conv's weights on that channel by 1/1000 (the same function in float), so the
middle Conv's input has a range 1000x its other channels' and per-tensor INT8 rounds them all to zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segkd.export.onnx_export import ExportError, read_metadata
from segkd.export.pipeline import ExportOptions, check_options, export_checkpoint
from segkd.export.quantize import calibrate_ranges
from segkd.export.sensitivity import quantizable_nodes, quantize_within, rank_layers
from segkd.infer.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
K = 19
FAST = {"exporter": "torchscript", "calib_count": 3, "verify_count": 2, "calib_method": "minmax"}
QUIET = {"log": lambda _: None}


class _Feeds:
    """A calibration reader over fixed feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self._i = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._i += 1
        return self.feeds[self._i - 1] if self._i <= len(self.feeds) else None

    def rewind(self) -> None:
        self._i = 0


def _damaged_graph(path: Path) -> Path:
    """input (1, 3, 16, 16) -> Conv a -> Relu -> Conv b -> Relu -> Conv c -> (1, 3, 16, 16) logits; b damaged."""
    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    wb = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    wc = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
    wa[0] *= 1000.0  # channel 0 of a's output: 1000x the others ...
    wb[:, 0] /= 1000.0  # ... and b reads it at 1/1000: the same function in float
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "wa"], ["ya"], name="a", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["ya"], ["ra"], name="relu_a"),
            helper.make_node("Conv", ["ra", "wb"], ["yb"], name="b"),
            helper.make_node("Relu", ["yb"], ["rb"], name="relu_b"),
            helper.make_node("Conv", ["rb", "wc"], ["output"], name="c"),
        ],
        "damaged",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 16])],
        [numpy_helper.from_array(w, n) for w, n in ((wa, "wa"), (wb, "wb"), (wc, "wc"))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict[str, np.ndarray]]]:
    """The damaged graph, its MinMax ranges (TensorRT form) and its 4 calibration feeds."""
    path = _damaged_graph(tmp_path_factory.mktemp("damaged") / "damaged.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    ranges = calibrate_ranges(path, _Feeds(feeds), method="minmax", progress=False, **QUIET)
    return path, ranges, feeds


def _agreement(graph: Path, feeds: list[dict[str, np.ndarray]]):  # noqa: ANN202 (an evaluate function)
    """An ``evaluate`` whose "mIoU" is the argmax agreement (percent) with the float graph: the reference is 100."""
    import onnxruntime as ort

    reference = [ort.InferenceSession(str(graph)).run(None, f)[0].argmax(1) for f in feeds]
    seen = []

    def evaluate(path: Path) -> float:
        session = ort.InferenceSession(str(path))
        labels = [session.run(None, f)[0].argmax(1) for f in feeds]
        seen.append(path)
        return 100.0 * float(np.mean([(a == b).mean() for a, b in zip(labels, reference, strict=True)]))

    evaluate.seen = seen  # type: ignore[attr-defined]
    return evaluate


def test_ranking_puts_the_damaged_layer_first(damaged) -> None:  # noqa: ANN001
    path, ranges, feeds = damaged
    assert quantizable_nodes(path) == ["a", "b", "c"]
    ranking = rank_layers(path, ranges, feeds, **QUIET)
    assert [n for n, _ in ranking][0] == "b"
    damage = dict(ranking)
    assert damage["b"] > 100 * max(damage["a"], damage["c"]), ranking


def test_search_stops_once_within_the_drop_keeping_exactly_the_damaged_layer(
    damaged,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    path, ranges, feeds = damaged
    evaluate, lines = _agreement(path, feeds), []
    result = quantize_within(path, tmp_path / "out.onnx", ranges, evaluate=evaluate, reference=100.0,
                             max_drop=5.0, inputs=feeds, log=lines.append)  # fmt: skip
    assert result.met and result.kept == ["b"]
    assert [t.kept for t in result.trials] == [0, 1]  # all-INT8 failed, one layer in float met it: stop
    assert result.trials[0].drop > 5.0 >= result.trials[1].drop == result.drop
    assert "kept 0 layers in float: mIoU" in "\n".join(lines)
    assert result.latency_ratio is not None and result.latency_ratio > 0
    # The file written has b in float (no DequantizeLinear feeding it) and a, c quantized.
    model = onnx.load(str(tmp_path / "out.onnx"))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    inputs = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Conv"}
    assert {k: produced.get(v) for k, v in inputs.items()} == {
        "a": "DequantizeLinear", "b": "Relu", "c": "DequantizeLinear"
    }  # fmt: skip
    assert evaluate(tmp_path / "out.onnx") == result.miou


def test_an_all_int8_file_within_the_drop_needs_no_ranking(damaged, tmp_path: Path) -> None:  # noqa: ANN001
    path, ranges, feeds = damaged
    lines: list[str] = []
    result = quantize_within(path, tmp_path / "out.onnx", ranges, evaluate=_agreement(path, feeds), reference=100.0,
                             max_drop=100.0, inputs=feeds, log=lines.append)  # fmt: skip
    assert result.met and result.kept == [] and [t.kept for t in result.trials] == [0]
    assert result.ranking == [] and result.latency_ratio is None and result.layers == 3
    assert not any(line.startswith("ranking") for line in lines), lines


def test_an_unreachable_drop_is_reported_with_the_numbers(damaged, tmp_path: Path) -> None:  # noqa: ANN001
    path, ranges, feeds = damaged
    ranking = rank_layers(path, ranges, feeds, **QUIET)

    def never(p: Path) -> float:  # every file 2 points below the reference, even all float
        return 98.0

    result = quantize_within(path, tmp_path / "o.onnx", ranges, evaluate=never, reference=100.0, max_drop=1.0,
                             inputs=feeds, ranking=ranking, **QUIET)  # fmt: skip
    assert not result.met and result.drop == 2.0
    assert [t.kept for t in result.trials] == [0, 1, 2, 3]
    assert result.reason == "even with all 3 ranked layers in float the drop is 2.00"
    assert "mIoU 98.00 (drop 2.00 vs 100.00, max 1)" in result.summary()
    short = quantize_within(path, tmp_path / "o.onnx", ranges, evaluate=_agreement(path, feeds), reference=100.0,
                            max_drop=0.0, inputs=feeds, ranking=[("c", 1.0), ("a", 0.5), ("b", 0.1)], budget=2,
                            **QUIET)  # fmt: skip
    assert not short.met and "budget of 2 mIoU evaluations ran out" in short.reason


# ------------------------------------------------------------------------------------------------ the export
def _meta() -> ModelMeta:
    return ModelMeta(
        arch={"name": "deeplabv3_r18", "num_classes": K, "width": 0.25},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(K)],
        input_size=[64, 128],
    )


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo teacher (a trained DeepLabV3-R18) with layer2.1.conv2 damaged as above, and 4 + 2 labelled demo
    frames of 64x128."""
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.load import load_model
    from segkd.scenes.street import generate_demo

    root = tmp_path_factory.mktemp("max-drop")
    model, meta = load_model(REPO / "assets" / "demo_teacher.pth")
    block = model.backbone.layer2[1]
    with torch.no_grad():  # relu(1000 y) = 1000 relu(y): the same function, a 1000x range into conv2
        block.bn1.weight[0] *= 1000.0
        block.bn1.bias[0] *= 1000.0
        block.conv2.weight[:, 0] /= 1000.0
    ckpt = save_checkpoint(root / "best.pth", model, meta)
    return ckpt, generate_demo(root / "demo", {"train": 4, "val": 2}, size=(64, 128), seed=0)


@pytest.mark.parametrize(
    ("target", "damaged"),
    [
        ("tensorrt", ["layer2.1/conv2"]),  # Q/DQ on Conv inputs: the damaged tensor is conv2's input
        ("cpu", ["layer2.1/conv2", "layer2.1/conv1"]),  # and, in the QOperator form, conv1's u8 output
    ],
)
def test_export_keeps_the_damaged_layer_in_float_and_records_it(
    labelled,  # noqa: ANN001
    tmp_path: Path,
    target: str,
    damaged: list[str],
) -> None:
    ckpt, data = labelled
    lines: list[str] = []
    opts = ExportOptions(precision="int8", target=target, calib_dataset="demo", calib_root=str(data),
                         max_drop=1.0, out=str(tmp_path / "m.onnx"), height=64, width=128, **FAST)  # fmt: skip
    result = export_checkpoint(ckpt, opts, log=lines.append)
    extra = read_metadata(result.path).extra
    kept = extra["float_layers"].split(",")
    assert extra["max_drop"] == "1" and kept == result.meta.extra["float_layers"].split(",")
    assert sorted(k.split("/")[-3:] for k in kept) == sorted([*d.split("/"), "Conv"] for d in damaged), kept
    text = "\n".join(lines)
    # All-INT8 misses the drop; the damaged layers in float meet it, and the search stops there.
    assert "kept 0 layers in float" in text and f"kept {len(damaged) + 1} layers" not in text, text
    assert "ONNX Runtime CPU provider" in text, text
    report = result.report
    assert report.passed and report.miou_torch - report.miou_exported <= 1.0, report.summary()


def test_export_refuses_a_drop_it_cannot_meet(
    labelled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """A budget of one evaluation: the all-INT8 file alone, whose drop is far over 0.01; nothing is written."""
    import segkd.export.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "DEFAULT_BUDGET", 1)
    ckpt, data = labelled
    opts = ExportOptions(precision="int8", calib_dataset="demo", calib_root=str(data), max_drop=0.01,
                         out=str(tmp_path / "m.onnx"), height=64, width=128, **FAST)  # fmt: skip
    with pytest.raises(
        ExportError, match=r"cannot keep INT8 within --max-drop 0.01: the budget of 1 mIoU"
    ) as e:
        export_checkpoint(ckpt, opts, **QUIET)
    assert "most layers in float tried: 0 of " in str(e.value) and "quantization-aware distillation" in str(
        e.value
    )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"precision": "fp32", "calib_dataset": "demo", "calib_root": "d"},
            "applies to --precision int8 only",
        ),
        ({"calib_dataset": "demo", "calib_root": "d", "max_drop": -0.5}, "--max-drop -0.5 is outside 0..1"),
        ({"calib_dataset": "demo", "calib_root": "d", "max_drop": 2.0}, "--max-drop 2 is outside 0..1"),
        ({"calib_images": "frames"}, "needs labelled images: --calib-dataset NAME --calib-root DIR"),
        ({"calib_dataset": "demo", "calib_root": "d", "verify": False}, "drop --no-verify"),
    ],
)
def test_options_refuse_max_drop_without_int8_labels_or_verification(options: dict, message: str) -> None:
    opts = ExportOptions(**{"precision": "int8", "max_drop": 0.5, **options})
    with pytest.raises(ExportError, match=message):
        check_options(opts, _meta())


def test_cli_refuses_max_drop_with_fp32_and_unlabelled_images(labelled, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "export/to_onnx.py"), str(labelled[0]), "--max-drop", "0.5",
         "--calib-images", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "applies to --precision int8 only" in run.stderr and "needs labelled images" in run.stderr, (
        run.stderr
    )
