"""infer/benchmark.py end to end: a tiny checkpoint and its ONNX files on real fixtures and on demo data."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkd.infer.bench import (
    COLUMNS,
    BenchConfig,
    format_table,
    parse_hw,
    plot_latency_vs_miou,
    run_benchmark,
)
from segkd.infer.bench.plot import latency_vs_miou_figure
from segkd.infer.benchmark import main
from segkd.infer.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
HAS_PLOT = importlib.util.find_spec("matplotlib") is not None  # the plot extra draws latency_vs_miou.png
needs_plot = pytest.mark.skipif(not HAS_PLOT, reason="matplotlib (the plot extra) draws the benchmark plot")
K = 19
SIZE = (64, 128)


def _tiny_model(images: list[np.ndarray]):
    """A tiny student whose BatchNorm statistics come from real images, so its predictions vary."""
    import torch

    from segkd.distill.models import build_model
    from segkd.infer.meta import preprocess

    torch.manual_seed(0)
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25)
    meta = ModelMeta(
        arch={"name": "deeplabv3_mbv2", "num_classes": K, "width": 0.25},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[i * 10, 255 - i * 10, i] for i in range(K)],
        input_size=list(SIZE),
    )
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for im in images:
            im = cv2.resize(im, SIZE[::-1])
            model(torch.from_numpy(preprocess([im, np.ascontiguousarray(im[:, ::-1])], meta)))
    return model.eval(), meta


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from segkd.scenes.street import generate_demo

    return generate_demo(
        tmp_path_factory.mktemp("demo"),
        splits={"train": 2, "val": 3},
        size=SIZE,
        seed=0,
        classes="cityscapes",
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_root, shared_fixtures) -> dict[str, Path]:
    """tiny.pth, its exported ONNX files (static FP32, dynamic FP32, INT8 Q/DQ) and a corrupted copy."""
    pytest.importorskip("torch")
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.export.pipeline import ExportOptions, export_model
    from segkd.infer.datasets import build_dataset

    d = tmp_path_factory.mktemp("models")
    images = [build_dataset("demo", demo_root, "train")[i][0] for i in range(2)]
    images.append(build_dataset("cityscapes", shared_fixtures / "cityscapes", "val")[0][0])
    model, meta = _tiny_model(images)
    files = {"pth": save_checkpoint(d / "tiny.pth", model, meta)}
    quiet = {"log": lambda msg: None}
    ts = "torchscript"  # the fast exporter: these files feed the benchmark, the exporters are tested in test_export
    files["onnx"] = export_model(model, meta, d / "tiny.onnx", ExportOptions(exporter=ts), **quiet).path
    dyn = ExportOptions(dynamic="all", exporter=ts)
    files["dyn"] = export_model(model, meta, d / "tiny.dyn.onnx", dyn, **quiet).path
    int8 = ExportOptions(  # a random network quantizes badly: its accuracy is not the point here
        exporter=ts,
        verify=False,
        precision="int8",
        calib_dataset="demo",
        calib_root=str(demo_root),
        calib_count=2,
        calib_method="minmax",
    )
    files["int8"] = export_model(model, meta, d / "tiny.int8.onnx", int8, **quiet).path
    files["broken"] = d / "broken.onnx"
    files["broken"].write_bytes(files["onnx"].read_bytes()[:1000])
    return files


def _check_outputs(out: Path, n_rows: int) -> dict:
    doc = json.loads((out / "benchmark.json").read_text())
    assert len(doc["results"]) == n_rows
    assert doc["environment"]["versions"]["onnxruntime"] and doc["environment"]["cpu"]
    with open(out / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_rows and list(rows[0])[: len(COLUMNS)] == list(COLUMNS)
    md = (out / "benchmark.md").read_text()
    assert md.count("\n| ") == n_rows + 1 and "GMACs" in md and "Command: `python infer/benchmark.py" in md
    return doc


def _complete(row: dict, *, batch: bool, accuracy: bool) -> None:
    skip = {"throughput_ips"} - ({"throughput_ips"} if batch else set())
    skip |= set() if accuracy else {"miou", "macc", "aacc"}
    missing = [k for k in COLUMNS if k not in skip and row.get(k) is None]
    assert row["status"] == "ok" and not missing, (row.get("error"), missing)


@pytest.mark.slow
def test_cli_on_real_cityscapes_fixture(models, shared_fixtures, tmp_path):
    out = tmp_path / "bench"
    cmd = [
        sys.executable, "infer/benchmark.py",
        str(models["pth"]), str(models["dyn"]), str(models["broken"]),
        "--dataset", "cityscapes", "--data-root", str(shared_fixtures / "cityscapes"), "--split", "val",
        "--warmup", "1", "--runs", "2", "--batch", "2", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one model failed: non-zero exit, the others measured
    assert "| tiny.pth |" in proc.stdout and "failed: " in proc.stdout
    doc = _check_outputs(out, 3)
    pth, onnx, broken = doc["results"]
    for row in (pth, onnx):
        _complete(row, batch=True, accuracy=True)
        assert row["input"] == "64x128" and row["eval_images"] == 1
    assert (pth["format"], onnx["format"], onnx["precision"]) == ("pytorch", "onnx", "fp32")
    assert onnx["provider"] == "CPUExecutionProvider"
    assert abs(pth["miou"] - onnx["miou"]) < 0.1 and abs(pth["aacc"] - onnx["aacc"]) < 0.1
    assert pth["miou"] > 0  # the model predicts some classes right: a real comparison, not 0 == 0
    assert abs(pth["gmacs"] / onnx["gmacs"] - 1) < 0.01
    assert broken["status"] == "failed" and "broken.onnx" in broken["error"]
    if HAS_PLOT:
        png = cv2.imread(str(out / "latency_vs_miou.png"))
        assert png is not None and png.shape == (640, 960, 3)


def test_demo_data_checkpoint_fp32_and_int8(models, demo_root, tmp_path):
    cfg = BenchConfig(
        models=[str(models[k]) for k in ("pth", "onnx", "int8")],
        dataset="demo",
        data_root=str(demo_root),
        warmup=1,
        runs=2,
        out=str(tmp_path / "out"),
        isolate=False,
        progress=False,
    )
    rows, written = run_benchmark(cfg)
    assert set(written) == {"json", "csv", "md"} | ({"png"} if HAS_PLOT else set())
    _check_outputs(tmp_path / "out", 3)
    pth, fp32, int8 = rows
    for row in rows:
        _complete(row, batch=False, accuracy=True)
        assert row["eval_images"] == 3
    assert [r["precision"] for r in rows] == ["fp32", "fp32", "int8"]
    # the .pth runs each image at its own size, which is the files' 64x128 here: one size, no "not comparable" note
    assert [r["eval_resolution"] for r in rows] == ["64x128", "64x128", "64x128"]
    assert not any("not comparable" in (r.get("note") or "") for r in rows)
    assert abs(pth["miou"] - fp32["miou"]) < 0.1
    assert pth["gmacs"] == pytest.approx(fp32["gmacs"], rel=0.01) and int8["gmacs"] == fp32["gmacs"]
    assert fp32["size_mb"] > int8["size_mb"] * 1.5  # INT8 weights take a quarter of the bytes


def test_sliding_window_and_flip_agree_across_formats(models, demo_root, tmp_path):
    cfg = BenchConfig(
        models=[str(models["pth"]), str(models["dyn"])],
        dataset="demo",
        data_root=str(demo_root),
        warmup=0,
        runs=1,
        mode="slide",
        crop=(48, 64),
        stride=(32, 48),
        flip=True,
        out=str(tmp_path),
        isolate=False,
        progress=False,
    )
    pth, onnx = run_benchmark(cfg)[0]
    assert pth["status"] == onnx["status"] == "ok", (pth.get("error"), onnx.get("error"))
    assert abs(pth["miou"] - onnx["miou"]) < 0.1
    assert pth["eval_resolution"] == onnx["eval_resolution"] == "48x64 windows"


def test_wrong_dataset_and_static_size_give_failed_rows(models, shared_fixtures, tmp_path):
    cfg = BenchConfig(
        models=[str(models["onnx"]), str(tmp_path / "missing.pth"), str(models["onnx"].with_suffix(".txt"))],
        dataset="voc",
        data_root=str(shared_fixtures / "voc/VOCdevkit/VOC2012"),
        size=(32, 32),
        runs=1,
        out=str(tmp_path),
        isolate=False,
        progress=False,
    )
    rows = run_benchmark(cfg)[0]
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert "accepts only 64x128" in rows[0]["error"]
    assert "does not exist" in rows[1]["error"]
    cfg.size, cfg.models = None, [str(models["onnx"])]
    (row,) = run_benchmark(cfg)[0]
    assert "21" in row["error"] and "19 classes" in row["error"]  # VOC has 21 classes, the model 19
    assert "failed: ValueError" in format_table([row])


def test_fixed_batch_model_has_no_throughput_but_a_note(models, tmp_path):
    cfg = BenchConfig(
        models=[str(models["onnx"])], batch=4, runs=1, out=str(tmp_path), isolate=False, progress=False
    )
    (row,) = run_benchmark(cfg)[0]
    assert row["status"] == "ok" and row.get("throughput_ips") is None
    assert row["note"] == "built for batch 1: no batch-4 throughput"
    assert "ok (built for batch 1" in (tmp_path / "benchmark.md").read_text()


def test_stage_columns_are_written_and_add_up_to_the_pipeline(models, tmp_path):
    from segkd.infer.bench.measure import STAGE_KEYS

    cfg = BenchConfig(
        models=[str(models["onnx"])], runs=4, warmup=1, out=str(tmp_path), isolate=False, progress=False
    )
    (row,) = run_benchmark(cfg)[0]
    stages = [row[k] for k in STAGE_KEYS]
    assert row["status"] == "ok" and all(v > 0 for v in stages), row
    assert row["stage_runs"] == 4
    # medians of the parts against the median of the wholes: equal for one run, close for any
    assert sum(stages) <= 1.5 * row["pipeline_ms"] + 1.0
    doc = json.loads((tmp_path / "benchmark.json").read_text())
    assert all(doc["results"][0][k] == row[k] for k in STAGE_KEYS)
    with open(tmp_path / "benchmark.csv", newline="") as f:
        (csv_row,) = list(csv.DictReader(f))
    assert all(float(csv_row[k]) == pytest.approx(row[k]) for k in STAGE_KEYS)
    header = (tmp_path / "benchmark.md").read_text().split("\n| Model")[1].split("\n")[0]
    titles = ["Decode (ms)", "Pre (ms)", "Infer (ms)", "Post (ms)", "Render (ms)"]
    assert [t for t in header.split(" | ") if t in titles] == titles  # in pipeline order


def test_settings_are_checked():
    assert parse_hw("512x1024") == (512, 1024) and parse_hw("64, 96") == (64, 96)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_hw("512")
    with pytest.raises(ValueError, match="--data-root"):
        BenchConfig(models=["a.onnx"], dataset="demo")
    with pytest.raises(ValueError, match="--crop"):
        BenchConfig(models=["a.onnx"], mode="slide")
    with pytest.raises(SystemExit):
        main(["a.onnx", "--runs", "0", "--no-progress"])
    with pytest.raises(SystemExit):
        main(["a.onnx", "--size", "12"])


def _points(ax) -> dict[str, list[list[float]]]:  # noqa: ANN001
    """Each scatter's legend label and its (latency, mIoU) points."""
    return {c.get_label(): c.get_offsets().tolist() for c in ax.collections}


def _rgb(bgr: tuple[int, int, int]) -> list[float]:
    return [bgr[2] / 255, bgr[1] / 255, bgr[0] / 255, 1.0]


@needs_plot
def test_plot_shows_one_labelled_point_per_model_coloured_by_format(tmp_path):
    from segkd.infer.formats import get_format

    rows = [
        {"model": "a_model_with_a_rather_long_name.onnx", "format": "onnx", "precision": "int8",
         "latency_median_ms": 10.0, "miou": 70.0},
        {"model": "b.pth", "format": "pytorch", "precision": "fp32", "latency_median_ms": 30.0, "miou": 72.5},
        {"model": "c.xml", "format": "openvino", "precision": "fp32", "latency_median_ms": 12.0, "miou": 70.5},
        {"model": "d.onnx", "format": "onnx", "precision": "fp32", "latency_median_ms": 15.0, "miou": 71.0},
        {"model": "x.onnx", "format": "onnx", "precision": "fp32", "latency_median_ms": 9.0, "miou": None},
        {"model": "y.bin", "format": "mystery", "precision": "fp16", "latency_median_ms": 5.0, "miou": 60.0},
    ]  # fmt: skip
    fig = latency_vs_miou_figure(rows)
    (ax,) = fig.axes
    assert _points(ax) == {  # table order, a format outside the table last; x.onnx has no mIoU: no point
        "onnx": [[10.0, 70.0], [15.0, 71.0]],
        "openvino": [[12.0, 70.5]],
        "pytorch": [[30.0, 72.5]],
        "mystery": [[5.0, 60.0]],
    }
    colors = {c.get_label(): c.get_facecolor()[0].tolist() for c in ax.collections}
    for name in ("onnx", "openvino", "pytorch"):
        assert colors[name] == pytest.approx(_rgb(get_format(name).color))
    assert colors["mystery"] == pytest.approx(_rgb((90, 90, 90)))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["onnx", "openvino", "pytorch", "mystery"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("latency (ms)", "mIoU (%)")
    assert ax.get_title() == "mIoU vs latency (batch 1, median)"
    labels = {t.get_text(): t.xy for t in ax.texts}
    assert labels == {
        "a_model_with_a_rather_long_name.onnx (int8)": (10.0, 70.0),
        "b.pth (fp32)": (30.0, 72.5),
        "c.xml (fp32)": (12.0, 70.5),
        "d.onnx (fp32)": (15.0, 71.0),
        "y.bin (fp16)": (5.0, 60.0),
    }
    assert ax.get_xlim() == pytest.approx((0.0, 30.0 * 1.15))  # from 0 ms, room right of the slowest model
    y_pad = (72.5 - 60.0) * 0.15
    assert ax.get_ylim() == pytest.approx((60.0 - y_pad, 72.5 + y_pad))
    fig.draw_without_rendering()
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["0", "5", "10"]
    assert "70" in [t.get_text() for t in ax.get_yticklabels()]
    for t in ax.texts:  # every label inside the axes
        assert ax.get_window_extent().contains(*t.get_window_extent().p0), t.get_text()
        assert ax.get_window_extent().contains(*t.get_window_extent().p1), t.get_text()
    img = cv2.imread(str(plot_latency_vs_miou(rows, tmp_path / "p.png")))
    assert img is not None and img.shape == (640, 960, 3)


@needs_plot
def test_plot_without_points_draws_empty_axes(tmp_path):
    no_miou = {"model": "a.onnx", "format": "onnx", "latency_median_ms": 3.0, "miou": None}
    fig = latency_vs_miou_figure([no_miou])
    (ax,) = fig.axes
    assert not ax.collections and not ax.texts and ax.get_legend() is None
    assert ax.get_xlabel() == "latency (ms)" and ax.get_xlim() == pytest.approx((0.0, 1.15))
    img = cv2.imread(str(plot_latency_vs_miou([], tmp_path / "p.png")))
    assert img is not None and img.shape == (640, 960, 3)


def test_without_matplotlib_the_plot_is_skipped(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now fails, as if not installed
    row = {"model": "a.onnx", "format": "onnx", "precision": "fp32", "latency_median_ms": 3.0, "miou": 50.0}
    assert plot_latency_vs_miou([row], tmp_path / "p.png") is None and not (tmp_path / "p.png").exists()


# ------------------------------------------------------------------------------------------- format table
def _road_runner_class():
    """A new format's runner: every pixel is class 0 (road), whatever the image."""
    from segkd.infer.datasets import dataset_info
    from segkd.infer.runtime.base import Runner

    names, palette = dataset_info("cityscapes")

    class RoadRunner(Runner):
        format = "dummy"

        def __init__(self, path, *, device="cpu", provider=None, cuda_lib=None, threads=None) -> None:
            meta = ModelMeta(arch={"name": "road"}, class_names=names, palette=palette, input_size=list(SIZE))
            super().__init__(path, meta, precision="fp32", provider="road", device=device, input_size=SIZE)

        def _run(self, x: np.ndarray) -> np.ndarray:
            logits = np.zeros((len(x), len(names), *x.shape[2:]), np.float32)  # (N, K, H, W)
            logits[:, 0] = 1.0
            return logits

    return RoadRunner


@pytest.fixture()
def dummy_format():
    from segkd.infer.formats import Format, register_format, unregister_format

    fmt = register_format(
        Format(
            name="dummy",
            suffixes=(".dummy",),
            runner=_road_runner_class(),
            exporter="echo > x.dummy",
            gpu_timing="not on GPUs",
            precisions=("fp32",),
            color=(3, 250, 7),  # BGR, a colour nothing else in the plot has
            description="a test format",
        )
    )
    yield fmt
    unregister_format("dummy")


def test_a_format_added_to_the_table_alone_is_run_benchmarked_and_plotted(
    dummy_format, demo_root, tmp_path, monkeypatch, capsys
):
    from segkd.infer.benchmark import build_parser
    from segkd.infer.datasets import build_dataset
    from segkd.infer.runtime import RUNTIMES, load_runner

    model = tmp_path / "road.dummy"
    model.write_bytes(b"")
    assert ".dummy" in RUNTIMES and ".dummy (dummy)" in build_parser().format_help()
    with load_runner(model) as r:
        (labels,) = r.predict([np.zeros((40, 50, 3), np.uint8)])
        assert labels.shape == (40, 50) and not labels.any()
    cfg = BenchConfig(
        models=[str(model)], dataset="demo", data_root=str(demo_root), runs=2, warmup=0, out=str(tmp_path / "b"),
        isolate=False, progress=False,
    )  # fmt: skip
    (row,), written = run_benchmark(cfg)
    assert row["status"] == "ok", row.get("error")
    assert (row["format"], row["provider"], row["timing"]) == ("dummy", "road", "host arrays, perf_counter")
    ds = build_dataset("demo", demo_root, "val")
    labels = np.concatenate([ds[i][1].ravel() for i in range(len(ds))])
    valid = labels != 255
    assert row["aacc"] == pytest.approx(100 * (labels[valid] == 0).mean())  # everything predicted road
    if HAS_PLOT:  # its point, in its table colour, with its legend entry
        (ax,) = latency_vs_miou_figure([row]).axes
        assert _points(ax) == {"dummy": [[row["latency_median_ms"], row["miou"]]]}
        assert ax.collections[0].get_facecolor()[0].tolist() == pytest.approx(_rgb((3, 250, 7)))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dummy"]
        assert cv2.imread(str(written["png"])).shape == (640, 960, 3)
    # without matplotlib the benchmark still writes its tables and says how to get the plot
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    cfg.out = str(tmp_path / "c")
    _, written = run_benchmark(cfg)
    assert set(written) == {"json", "csv", "md"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "no latency-vs-mIoU plot: matplotlib is not installed (pip install -e .[plot])"


def test_round_statistics_ratios_and_spread_flag():
    from segkd.infer.bench.rounds import _stats, ratios_to

    s = _stats(np.array([10.0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]))
    assert s["latency_median_ms"] == 15 and s["latency_p10_ms"] == 11 and s["latency_p90_ms"] == 19
    assert s["spread"] == pytest.approx(8 / 15) and s["unreliable"] is True  # 8 / 15 > 0.5
    steady = _stats(np.array([10.0] * 9 + [30.0]))  # p90 = 10 + 0.1 x 20 = 12: spread 0.2
    assert steady["spread"] == pytest.approx(0.2) and steady["unreliable"] is False
    assert _stats(np.array([10.0, 10, 30, 30]))["unreliable"] is True
    rows = [
        {"model": "a.onnx", "path": "/x/a.onnx", "latency_median_ms": 20.0},
        {"model": "b", "path": "b.xml"},
    ]
    rows[1]["latency_median_ms"] = 5.0
    assert [r["ratio"] for r in ratios_to(rows, "a.onnx")] == [1.0, 0.25]
    with pytest.raises(ValueError, match="names no measured row; rows: a.onnx, b"):
        ratios_to(rows, "c")


def test_gemm_peak_is_a_rate():
    from segkd.infer.bench.rounds import gemm_peak_gflops, load_average

    assert gemm_peak_gflops(n=64, repeats=2) > 0
    load = load_average()
    assert load is None or (len(load) == 3 and all(v >= 0 for v in load))


def test_peak_graphs_compute_the_product_they_time():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from segkd.infer.bench.rounds import matmul_model, ort_gemm_rate

    rng = np.random.default_rng(3)
    # activations below 128: AVX2 without VNNI adds u8 x s8 pairs in saturating int16, exact only while
    # 2 x 127 x 127 fits (full-range u8 saturates there, which is why ONNX Runtime offers reduce_range)
    for precision, a in (
        ("int8", rng.integers(0, 128, (16, 16), dtype=np.uint8)),
        ("fp32", rng.random((16, 16))),
    ):
        proto = matmul_model(precision, 16)
        b = numpy_helper.to_array(onnx.load_from_string(proto).graph.initializer[0])
        sess = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"A": a if precision == "int8" else a.astype(np.float32)})
        if precision == "int8":  # u8 x s8 -> exact int32 sums
            assert b.dtype == np.int8 and y.dtype == np.int32
            np.testing.assert_array_equal(y, a.astype(np.int32) @ b.astype(np.int32))
        else:
            np.testing.assert_allclose(y, a.astype(np.float32) @ b, rtol=1e-5, atol=1e-5)
        assert ort_gemm_rate(precision, 1, n=32, repeats=2) > 0


def test_each_row_is_measured_against_its_own_precision_peak():
    from segkd.infer.bench.rounds import device_peaks, peak_key

    assert peak_key({"precision": "int8", "provider": "OpenVINO 2026.4 CPU bf16"}) == "int8"
    assert peak_key({"precision": "bf16", "provider": "torch-cpu-autocast"}) == "bf16"
    assert peak_key({"precision": "fp32", "provider": "OpenVINO 2026.4 CPU bf16"}) == "bf16"
    assert peak_key({"precision": "fp16", "provider": "CPUExecutionProvider"}) == "fp32"
    peaks = device_peaks({"fp32", "int8"}, threads=1)
    assert set(peaks) == {"fp32", "int8"} and all(v["gflops"] > 0 for v in peaks.values())
    assert "MatMulInteger u8 x s8" in peaks["int8"]["method"]


def test_interleaved_rounds_and_compare_to(models, demo_root, tmp_path):
    args = [str(models["onnx"]), str(models["int8"]), "--runs", "2", "--warmup", "1", "--rounds", "5"]
    args += ["--compare-to", "tiny.onnx", "--out", str(tmp_path), "--in-process", "--no-progress"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "benchmark.json").read_text())
    rows, facts = doc["results"], doc["environment"]["interleaved"]
    assert facts["rounds"] == 5 and facts["peak_gflops"] > 0 and len(facts["load_start"]) == 3
    assert [r["rounds"] for r in rows] == [5, 5] and rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["latency_median_ms"] / rows[0]["latency_median_ms"])
    for r in rows:
        assert r["latency_p10_ms"] <= r["latency_median_ms"] <= r["latency_p90_ms"]
        basis = "int8" if r["precision"] == "int8" else "fp32"
        expect = 2 * r["gmacs"] / (r["latency_median_ms"] / 1000) / facts["peaks"][basis]["gflops"]
        assert r["peak_basis"] == basis and r["peak_fraction"] == pytest.approx(expect)
    assert facts["peak_gflops"] == facts["peaks"]["fp32"]["gflops"]
    md = (tmp_path / "benchmark.md").read_text()
    assert "| Ratio |" in md and "Peak frac." in md and "Load average" in md
    assert "of int8 |" in md and "int8 " in md.split("Peak frac. =")[1]
    assert main([str(models["onnx"]), "--compare-to", "nope", "--out", str(tmp_path), "--in-process"]) == 2


def test_a_failed_reference_row_keeps_the_table_and_says_why(models, tmp_path, capsys) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    args = [str(models["onnx"]), str(broken), "--compare-to", "broken.onnx", "--runs", "2", "--warmup", "0",
            "--out", str(tmp_path / "o"), "--in-process", "--no-progress"]  # fmt: skip
    assert main(args) == 1  # one row failed; the run still ends with its table
    err = capsys.readouterr().err
    assert "warning: no ratio column" in err and "it failed:" in err
    rows = json.loads((tmp_path / "o" / "benchmark.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["ok", "failed"]


def test_rows_evaluated_at_other_sizes_are_flagged():
    from segkd.infer.bench.run import _flag_eval_sizes

    rows = [
        {"eval_resolution": "64x128"},
        {"eval_resolution": "64x128"},
        {"eval_resolution": "32x64", "note": "n"},
    ]
    _flag_eval_sizes(rows)
    assert (
        "note" not in rows[0]
        and rows[2]["note"] == "n; evaluated at 32x64, others at 64x128: mIoU not comparable"
    )
    assert "Eval size" in format_table([{**r, "status": "ok"} for r in rows])


def test_pth_runner_bf16_autocast_is_reported_and_close_to_fp32(tmp_path):
    pytest.importorskip("torch")
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.infer.runtime import RunnerError, load_runner

    model, meta = _tiny_model([np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)])
    path = save_checkpoint(tmp_path / "tiny.pth", model, meta)
    x = np.random.default_rng(1).standard_normal((1, 3, *SIZE)).astype(np.float32)
    fp32, bf16 = load_runner(path), load_runner(path, provider="bf16")
    assert (fp32.precision, bf16.precision, bf16.provider) == ("fp32", "bf16", "torch-cpu-autocast")
    a, b = fp32._run(x), bf16._run(x)
    assert b.dtype == np.float32 and a.shape == b.shape
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert np.abs(a - b).max() > 0 and corr > 0.95, corr  # rounded to bf16, not another network
    with pytest.raises(RunnerError, match="fp32 or bf16, not 'fp16'"):
        load_runner(path, provider="fp16")
    cfg = BenchConfig(models=[str(path)], cpu_precision="bf16")
    from segkd.infer.bench.measure import runner_provider

    assert runner_provider(Path("m.pth"), cfg) == "bf16" and runner_provider(Path("m.xml"), cfg) == "bf16"
    assert runner_provider(Path("m.onnx"), cfg) is None
    cfg.cpu_precision = "fp32"
    assert runner_provider(Path("m.xml"), cfg) == "f32"


def _gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_gpu_check_plan_lists_every_step_for_every_size():
    students = "deeplabv3_mbv2 pspnet_mbv2 deeplabv3_r18 pspnet_r18"
    done = _gpu_check("--plan", env={"SIZES": "512x1024 1024x2048", "OUT": "o", "DEPLOY_STUDENTS": students})
    assert done.returncode == 0, done.stderr
    steps = done.stdout.splitlines()
    # install, the gpu tests, then per size: 4 training-step and 2 inference timings, demo data,
    # 4 x (checkpoint, onnx, fp16 engine, int8 engine), 4 benchmark runs
    assert len(steps) == 2 + 2 * (6 + 1 + 4 * 4 + 4)
    assert steps[0].startswith("0. install") and "--no-index" in steps[0]  # offline
    assert "-m gpu tests/" in steps[1]
    assert all(re.search(r"\[<= \d+ s; needs ", s) for s in steps[1:])  # each step has its time limit
    assert sum("--precision int8" in s and "o/1024x2048/" in s for s in steps) == 4
    assert sum("infer/benchmark.py" in s and "--device cuda" in s for s in steps) == 8
    assert sum("--compile" in s and "--channels-last" in s and "bf16" in s for s in steps) == 2


@pytest.mark.slow  # runs the script end to end
def test_gpu_check_on_a_cpu_skips_what_is_missing_and_sums_up(tmp_path):
    out = tmp_path / "out"
    keep = "checkpoint-deeplabv3_r18-64x128"  # the quickest step; the others are left out or skipped
    plan = _gpu_check("--cpu", "--plan").stdout.splitlines()[1:]
    names = [line.split(". ", 1)[1].split(" [")[0] for line in plan]
    skip = " ".join(n for n in names if n != keep and "tensorrt" not in n and "trt" not in n)
    env = {"INSTALL": "none", "OUT": str(out), "SKIP": skip, "PYTHON": sys.executable}
    done = _gpu_check("--cpu", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert re.search(rf"^{keep} +ok ", summary, re.M)
    assert (out / "64x128" / "deeplabv3_r18" / "deeplabv3_r18.pth").is_file()
    assert re.search(r"^trt-int8-deeplabv3_r18-64x128 +skipped .*missing: .*cuda", summary, re.M)
    assert re.search(r"^gpu-tests +skipped .*left out", summary, re.M)


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # the driver tool present, no GPU behind it
    (tmp_path / "nvidia-smi").chmod(0o755)
    done = _gpu_check(env={"PATH": f"{tmp_path}:/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert done.returncode == 3 and "no NVIDIA GPU" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


@needs_plot
def test_plot_legend_lists_only_present_formats_outside_the_axes():
    rows = [
        {"model": f"m{i}", "format": "onnx", "precision": "fp32", "latency_median_ms": 10.0, "miou": 50.0}
        for i in range(3)
    ]  # three points at one spot: their labels must not be drawn on top of one another
    fig = latency_vs_miou_figure(rows)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["onnx"]
    fig.draw_without_rendering()
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1  # right of the axes
    boxes = [t.get_window_extent() for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == ["m0 (fp32)", "m1 (fp32)", "m2 (fp32)"]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_cpu_table_reads_each_students_run_into_one_line(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_table", REPO / "benchmarks" / "cpu_table.py")
    cpu_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_table)
    assert (
        cpu_table._column("a.int8-cpu.onnx") == "ONNX int8 (cpu)"
        and cpu_table._column("a.onnx") == "ONNX fp32"
    )
    assert cpu_table._column("a.int8.xml") == "OpenVINO int8" and cpu_table._column("a.trt") is None
    rows = [
        {"path": "/r/s.onnx", "ratio": 1.0, "spread": 0.1, "input": "64x128", "latency_median_ms": 50.0},
        {"path": "/r/s.int8-cpu.onnx", "ratio": 0.55, "spread": 0.7, "unreliable": True},
        {"path": "/r/s.int8.xml", "ratio": 0.4, "spread": 0.2},
    ]
    env = {"threads": 2, "interleaved": {"rounds": 3, "load_start": [0.1, 0, 0], "load_end": [0.2, 0, 0],
                                         "peaks": {"fp32": {"gflops": 70.4}, "int8": {"gflops": 150.0}}}}  # fmt: skip
    (tmp_path / "run" / "stud").mkdir(parents=True)
    (tmp_path / "run" / "stud" / "benchmark.json").write_text(
        json.dumps({"results": rows, "environment": env})
    )
    out = cpu_table.table([tmp_path / "run"])
    assert "| stud | 64x128 | 2 | 50 | – | 1.00 (0.10) | 0.55 (0.70) (unreliable) | – | 0.40 (0.20) |" in out
    assert "3 rounds, load [0.1, 0, 0] -> [0.2, 0, 0], peaks G(FL)OP/s: fp32 70, int8 150" in out


def test_a_row_timed_on_a_busy_machine_is_flagged() -> None:
    from segkd.infer.bench.run import NOISY_P90, _flag_noisy

    rows = [
        {"latency_median_ms": 14.0, "latency_p90_ms": 15.0, "note": None},
        {"latency_median_ms": 14.0, "latency_p90_ms": 14.0 * NOISY_P90 + 1, "note": "x"},
        {"status": "failed"},
    ]
    _flag_noisy(rows)
    assert "unreliable" not in rows[0] and rows[1]["unreliable"] and "unreliable" not in rows[2]
    assert rows[1]["note"].startswith("x; p90 1.6x the median") and "--rounds" in rows[1]["note"]


def test_the_default_threads_are_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segkd.infer.bench.run import run_benchmark

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = BenchConfig(models=[str(tmp_path / "missing.onnx")], out=str(tmp_path / "out"), isolate=False,
                      progress=False, warmup=0, runs=1)  # fmt: skip
    run_benchmark(cfg)
    env = json.loads((tmp_path / "out" / "benchmark.json").read_text())["environment"]
    assert env["threads"] == len(os.sched_getaffinity(0)) and len(env["load_start"]) == 3


@needs_plot
def test_plot_latency_axis_turns_logarithmic_past_a_tenfold_span_and_labels_name_the_run() -> None:
    rows = [
        {"model": "best.onnx", "path": "runs/cwd/best.onnx", "format": "onnx", "precision": "fp32",
         "latency_median_ms": 4.0, "miou": 70.0},
        {"model": "best.pth", "path": "runs/cwd/best.pth", "format": "pytorch", "precision": "fp32",
         "latency_median_ms": 30.0, "miou": 70.5},
    ]  # fmt: skip
    (ax,) = latency_vs_miou_figure(rows).axes
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0.0  # a 7.5x span stays linear from 0
    assert {t.get_text() for t in ax.texts} == {"cwd/best.onnx (fp32)", "cwd/best.pth (fp32)"}
    rows[1]["latency_median_ms"] = 400.0  # 100x: the fast model would sit in the first percent of the axis
    (ax,) = latency_vs_miou_figure(rows).axes
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(2.0) and "log" in ax.get_xlabel()


def test_device_cuda_without_a_gpu_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segkd.infer.bench.run as bench_run

    monkeypatch.setattr(bench_run, "gpu_names", lambda: [])
    cfg = BenchConfig(models=[str(tmp_path / "m.onnx")], out=str(tmp_path / "o"), device="cuda", isolate=False,
                      progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="--device cuda, but no NVIDIA GPU is visible"):
        bench_run.run_benchmark(cfg)
    assert not (tmp_path / "o" / "benchmark.json").exists()
