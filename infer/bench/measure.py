"""Measure one model file: size, load, latency, throughput, memory, MACs, parameters and accuracy into one row."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segkd.infer.bench.config import BenchConfig
from segkd.infer.bench.memory import PeakRSS
from segkd.infer.formats import format_for_path

__all__ = ["STAGE_KEYS", "benchmark_model", "format_name", "hw_text", "runner_provider"]

# The row's per-stage medians (see _time_stages), in pipeline order.
STAGE_KEYS = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "render_ms")
STAGE_RUNS = 30  # at most this many pipeline runs per row (each includes a network call)

# --cpu-precision as each format's runner spells it; formats not listed keep --provider.
_PRECISION_PROVIDERS = {
    "pytorch": {"fp32": "fp32", "bf16": "bf16"},
    "openvino": {"fp32": "f32", "bf16": "bf16"},
}


def runner_provider(path: Path, cfg: BenchConfig) -> str | None:
    """The ``provider`` argument for ``path``'s runner: the precision for PyTorch/OpenVINO, else --provider."""
    spelled = _PRECISION_PROVIDERS.get(format_name(path), {})
    return spelled.get(cfg.cpu_precision, cfg.provider) if cfg.cpu_precision else cfg.provider


def _file_size(path: Path) -> int:
    """Bytes on disk, with an ONNX file's external weight files."""
    size = path.stat().st_size
    if (
        path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file()
    ):  # OpenVINO IR: weights in the .bin
        size += path.with_suffix(".bin").stat().st_size
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # unreadable: the runner reports why when it loads the file
            return size
        locations = {
            e.value
            for t in proto.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
        size += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
    return size


def hw_text(hw: tuple[int, int] | list[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _latency_stats(times_ms: np.ndarray) -> dict[str, float]:
    return {
        "latency_mean_ms": float(times_ms.mean()),
        "latency_median_ms": float(np.median(times_ms)),
        "latency_p90_ms": float(np.percentile(times_ms, 90)),
        "latency_p99_ms": float(np.percentile(times_ms, 99)),
        "fps": float(1000.0 / times_ms.mean()),
    }


def _time_stages(runner: Any, image: np.ndarray, hw: tuple[int, int], runs: int) -> dict[str, float]:
    """Median ms of each stage of one image's way through the demo pipeline, over ``runs`` runs after one warm-up.

    decode = ``cv2.imdecode`` of the image as a JPEG (quality 95, as a camera or MJPEG stream sends it);
    preprocess = ``make_input``; inference = ``forward``; postprocess = logits (or labels) to labels at the image
    size, as :meth:`Runner.predict`; render = the demo's overlay, legend and HUD. ``pipeline_ms`` is the median of
    the runs' whole times, so the stages add up to about it.
    """
    from segkd.infer.runtime.base import output_to_labels
    from segkd.infer.video.render import draw_legend, draw_stats, legend_entries, render

    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    meta = runner.meta
    times = np.empty((runs + 1, len(STAGE_KEYS)), np.float64)
    for i in range(runs + 1):  # run 0 warms the decoder, allocator and caches up and is dropped
        t = [time.perf_counter()]
        frame = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        t.append(time.perf_counter())
        x = runner.make_input([frame], hw)
        t.append(time.perf_counter())
        out = runner.forward(x)
        t.append(time.perf_counter())
        labels = output_to_labels(
            out[0],
            frame.shape[:2],
            meta.num_classes,
            outputs_labels=runner.outputs_labels,
            align_corners=meta.align_corners,
        )
        t.append(time.perf_counter())
        canvas = render("overlay", frame, labels, meta)
        draw_legend(canvas, legend_entries(labels, meta.num_classes), meta)
        draw_stats(canvas, 0.0, {key.removesuffix("_ms"): 0.0 for key in STAGE_KEYS})
        t.append(time.perf_counter())
        times[i] = np.diff(t)
    ms = 1e3 * times[1:]  # (runs, stages)
    stages = {key: float(v) for key, v in zip(STAGE_KEYS, np.median(ms, axis=0))}
    return {**stages, "pipeline_ms": float(np.median(ms.sum(axis=1))), "stage_runs": runs}


def _measure_speed(runner: Any, cfg: BenchConfig, hw: tuple[int, int], row: dict[str, Any]) -> None:
    """Batch-1 latency, per-stage times on the same input, and batch-B throughput into ``row``."""
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x1 = runner.make_input([image], hw)
    row.update(_latency_stats(runner.time_forward(x1, warmup=cfg.warmup, runs=cfg.runs)))
    row.update(_time_stages(runner, image, hw, runs=min(cfg.runs, STAGE_RUNS)))
    row["timing"] = format_for_path(runner.path).timing(runner.device)
    if cfg.batch > 1 and runner.fixed_batch not in (None, cfg.batch):
        row["note"] = f"built for batch {runner.fixed_batch}: no batch-{cfg.batch} throughput"
    elif cfg.batch > 1:
        xb = runner.make_input([image] * cfg.batch, hw)
        runs_b = max(3, math.ceil(cfg.runs / cfg.batch))  # about as many images as the batch-1 timing
        tb = runner.time_forward(xb, warmup=max(1, cfg.warmup // cfg.batch), runs=runs_b)
        row["throughput_ips"] = float(cfg.batch * 1000.0 / tb.mean())


def _evaluate(runner: Any, cfg: BenchConfig, dataset: Any, row: dict[str, Any]) -> None:
    from segkd.infer.evaluate import evaluate

    result = evaluate(
        runner,
        dataset,
        limit=cfg.limit,
        progress=cfg.progress,
        mode=cfg.mode,
        size=cfg.eval_size,
        crop=cfg.crop,
        stride=cfg.stride,
        flip=cfg.flip,
        scales=tuple(cfg.scales),
    )
    if cfg.mode == "slide":
        resolution = f"{hw_text(cfg.crop)} windows"
    elif cfg.eval_size or runner.input_size:
        resolution = hw_text(cfg.eval_size or runner.input_size)
    elif len(result.get("image_sizes", [])) == 1:  # each image at its own size, and they all share one
        resolution = hw_text(result["image_sizes"][0])
    else:
        resolution = "image size"
    row.update(
        eval_resolution=resolution,
        miou=result["mIoU"],
        macc=result["mAcc"],
        aacc=result["aAcc"],
        eval_images=result["images"],
        eval_seconds=result["seconds"],
    )


def format_name(path: Path) -> str:
    """The format table's name for ``path``, or its bare suffix when no row has it (the row then fails)."""
    try:
        return format_for_path(path).name
    except KeyError:
        return path.suffix or "?"


def benchmark_model(
    path: str | os.PathLike[str], cfg: BenchConfig, dataset: Any = None, name: str = ""
) -> dict:
    """Measure one model file; never raises for a problem with the file (the row says ``failed`` and why)."""
    from segkd.infer.runtime import RunnerError, load_runner

    path = Path(path)
    row: dict[str, Any] = {
        "model": name or path.name,
        "path": str(path),
        "format": format_name(path),
        "device": cfg.device,
        "batch": cfg.batch,
        "status": "failed",
    }
    runner = None
    try:
        row["load_failed"] = True  # until the runner is up: the file itself (or its library) is the problem
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        row["size_mb"] = _file_size(path) / 1e6
        with contextlib.suppress(RunnerError):  # a missing library is reported by load_runner below
            format_for_path(path).load_runner().import_library()  # its memory is not the model's
        rss = PeakRSS().start()
        runner = load_runner(
            path,
            device=cfg.device,
            provider=runner_provider(path, cfg),
            cuda_lib=cfg.cuda_lib,
            threads=cfg.threads,
        )
        del row["load_failed"]
        row.update(
            format=runner.format, precision=runner.precision, provider=runner.provider, device=runner.device
        )
        hw = tuple(cfg.size or runner.input_size or runner.meta.input_size)
        row["input"] = hw_text(hw)
        _measure_speed(runner, cfg, hw, row)
        rss_delta, device_mem = rss.peak_delta(), runner.device_memory()
        mem, row["mem_method"] = device_mem or (rss_delta, "peak RSS - RSS before loading")
        row["peak_mem_mb"] = None if mem is None else mem / 1e6
        params, macs = runner.count_params(), runner.count_macs(hw)
        row["params_m"] = None if params is None else params / 1e6
        row["gmacs"] = None if macs is None else macs / 1e9
        if dataset is not None:
            _evaluate(runner, cfg, dataset, row)
        row["status"] = "ok"
    except Exception as e:  # a failing model must not stop the others: record why
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
    finally:
        if runner is not None:
            runner.close()
        gc.collect()
    return row
