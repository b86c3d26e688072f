"""Benchmark model files: size, parameters, GMACs, latency, throughput, peak memory and accuracy in one table.

The library behind ``python infer/benchmark.py`` (see that script for the command line). Conventions:

- Latency: batch 1, ``warmup`` calls discarded, then ``runs`` timed calls of the network on an already
  pre-processed input; mean / median / p90 / p99 in ms. CPU: host arrays in and out, ``perf_counter``. GPU: input
  and output stay on the device (no copies timed), CUDA events (PyTorch, TensorRT) or a synchronising
  IO-binding run (ONNX Runtime). FPS = 1000 / mean batch-1 latency.
- Throughput: images per second at batch ``B``, timed apart (about ``runs`` images in total).
- Peak memory: CPU: peak resident memory during loading and timing minus before loading (the runtime library
  already imported). GPU: the runner's device-memory figure (named in the ``mem_method`` column). Each model runs
  in a fresh process (``isolate``), so that memory freed by one model does not hide the next one's, and a crash
  in a native library fails one row only.
- GMACs: multiply-accumulates of convolutions and matrix products at batch 1 (see :mod:`infer.macs`);
  FLOPs would be 2 x GMACs.
- Accuracy: :func:`infer.evaluate.evaluate` with the same pre-processing for every format.

One model failing gives a row with ``status="failed"`` and the reason; the others still run.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from infer.cliargs import parse_hw
from infer.fileio import atomic_path, atomic_write_text

__all__ = [
    "COLUMNS",
    "BenchConfig",
    "benchmark_model",
    "environment",
    "format_table",
    "parse_hw",
    "plot_latency_vs_miou",
    "run_benchmark",
    "write_results",
]

# row key -> table header; the order of the CSV, Markdown and printed table
COLUMNS = {
    "model": "Model",
    "format": "Format",
    "precision": "Precision",
    "provider": "Provider",
    "size_mb": "Size (MB)",
    "params_m": "Params (M)",
    "gmacs": "GMACs",
    "input": "Input",
    "latency_mean_ms": "Mean (ms)",
    "latency_median_ms": "Median (ms)",
    "latency_p90_ms": "p90 (ms)",
    "latency_p99_ms": "p99 (ms)",
    "fps": "FPS",
    "throughput_ips": "Batch img/s",
    "peak_mem_mb": "Peak mem (MB)",
    "miou": "mIoU",
    "macc": "mAcc",
    "aacc": "aAcc",
    "status": "Status",
}
_EXTRA_KEYS = (
    "path",
    "device",
    "batch",
    "mem_method",
    "timing",
    "eval_resolution",
    "eval_images",
    "eval_seconds",
    "note",
    "error",
)
_FORMAT_BY_SUFFIX = {
    ".pth": "pytorch",
    ".pt": "pytorch",
    ".onnx": "onnx",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}


@dataclass
class BenchConfig:
    """What to measure and how; field names follow the command-line options of ``infer/benchmark.py``."""

    models: list[str]
    dataset: str | None = None
    data_root: str | None = None
    split: str = "val"
    size: tuple[int, int] | None = None
    batch: int = 1
    warmup: int = 10
    runs: int = 100
    device: str = "cpu"
    out: str = "runs/benchmark"
    provider: str | None = None
    cuda_lib: str = "cuda-python"
    threads: int | None = None
    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    eval_size: tuple[int, int] | None = None
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    limit: int | None = None
    isolate: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.models:
            problems.append("give at least one model file")
        if self.batch < 1 or self.runs < 1 or self.warmup < 0:
            problems.append(
                f"need batch >= 1, runs >= 1, warmup >= 0 (got {self.batch}, {self.runs}, {self.warmup})"
            )
        if self.device not in ("cpu", "cuda"):
            problems.append(f"device must be cpu or cuda, not {self.device!r}")
        if (self.dataset is None) != (self.data_root is None):
            problems.append("--dataset and --data-root go together")
        if self.mode == "slide" and self.crop is None:
            problems.append("--mode slide needs --crop HxW")
        if problems:
            raise ValueError("invalid benchmark settings: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- memory
class _PeakRSS:
    """Peak resident memory of this process between ``start()`` and ``peak_delta()``, in bytes.

    Linux: the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``. Elsewhere a
    thread samples the resident size every 2 ms (needs psutil); without either it reports None.
    """

    def __init__(self) -> None:
        self._base = 0
        self._hwm = False
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text)[1]) * 1024  # type: ignore[index]

    def start(self) -> _PeakRSS:
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self._base, self._hwm = self._status("VmRSS"), True
            return self
        except OSError:
            pass
        try:
            import psutil
        except ImportError:
            return self
        proc = psutil.Process()
        self._base = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._samples.append(proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def peak_delta(self) -> int | None:
        if self._hwm:
            return self._status("VmHWM") - self._base
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        return max(self._samples, default=self._base) - self._base


# --------------------------------------------------------------------------------------------- one model
def _file_size(path: Path) -> int:
    """Bytes on disk, with an ONNX file's external weight files."""
    size = path.stat().st_size
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


def _hw_text(hw: tuple[int, int] | list[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _latency_stats(times_ms: np.ndarray) -> dict[str, float]:
    return {
        "latency_mean_ms": float(times_ms.mean()),
        "latency_median_ms": float(np.median(times_ms)),
        "latency_p90_ms": float(np.percentile(times_ms, 90)),
        "latency_p99_ms": float(np.percentile(times_ms, 99)),
        "fps": float(1000.0 / times_ms.mean()),
    }


def _timing_method(runner: Any) -> str:
    if runner.device == "cpu":
        return "host arrays, perf_counter"
    return {
        "pytorch": "device tensors, CUDA events",
        "tensorrt": "device buffers, CUDA events",
        "onnx": "IO binding on device, perf_counter around synchronising run",
    }[runner.format]


def _measure_speed(runner: Any, cfg: BenchConfig, hw: tuple[int, int], row: dict[str, Any]) -> None:
    """Batch-1 latency and batch-B throughput into ``row``."""
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x1 = runner.make_input([image], hw)
    row.update(_latency_stats(runner.time_forward(x1, warmup=cfg.warmup, runs=cfg.runs)))
    row["timing"] = _timing_method(runner)
    if cfg.batch > 1 and runner.fixed_batch not in (None, cfg.batch):
        row["note"] = f"built for batch {runner.fixed_batch}: no batch-{cfg.batch} throughput"
    elif cfg.batch > 1:
        xb = runner.make_input([image] * cfg.batch, hw)
        runs_b = max(3, math.ceil(cfg.runs / cfg.batch))  # about as many images as the batch-1 timing
        tb = runner.time_forward(xb, warmup=max(1, cfg.warmup // cfg.batch), runs=runs_b)
        row["throughput_ips"] = float(cfg.batch * 1000.0 / tb.mean())


def _evaluate(runner: Any, cfg: BenchConfig, dataset: Any, row: dict[str, Any]) -> None:
    from infer.evaluate import evaluate

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
        resolution = f"{_hw_text(cfg.crop)} windows"
    elif cfg.eval_size or runner.input_size:
        resolution = _hw_text(cfg.eval_size or runner.input_size)
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


def benchmark_model(
    path: str | os.PathLike[str], cfg: BenchConfig, dataset: Any = None, name: str = ""
) -> dict:
    """Measure one model file; never raises for a problem with the file (the row says ``failed`` and why)."""
    from infer.runtime import RUNTIMES, RunnerError, load_runner

    path = Path(path)
    row: dict[str, Any] = {
        "model": name or path.name,
        "path": str(path),
        "format": _FORMAT_BY_SUFFIX.get(path.suffix.lower(), path.suffix),
        "device": cfg.device,
        "batch": cfg.batch,
        "status": "failed",
    }
    runner = None
    try:
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        row["size_mb"] = _file_size(path) / 1e6
        with contextlib.suppress(RunnerError):  # a missing library is reported by load_runner below
            RUNTIMES.get(path.suffix.lower()).import_library()  # its memory is not the model's
        rss = _PeakRSS().start()
        runner = load_runner(
            path, device=cfg.device, provider=cfg.provider, cuda_lib=cfg.cuda_lib, threads=cfg.threads
        )
        row.update(
            format=runner.format, precision=runner.precision, provider=runner.provider, device=runner.device
        )
        hw = tuple(cfg.size or runner.input_size or runner.meta.input_size)
        row["input"] = _hw_text(hw)
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


# --------------------------------------------------------------------------------------------- environment
def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        if m:
            return m[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def environment(threads: int | None = None) -> dict[str, Any]:
    """The machine and library versions the numbers were measured with (no library is imported for this)."""
    mem_total = None
    with contextlib.suppress(OSError, TypeError):  # not Linux
        kib = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]  # type: ignore[index]
        mem_total = round(int(kib) / 2**20, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": cores,
        "memory_gib": mem_total,
        "gpus": _gpu_names(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": {
            "segkd": _version("segkd"),
            "numpy": _version("numpy"),
            "opencv": _version("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime-gpu", "onnxruntime"),
            "torch": _version("torch"),
            "tensorrt": _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
            "cuda-python": _version("cuda-python"),
            "pycuda": _version("pycuda"),
        },
    }


# --------------------------------------------------------------------------------------------- output
def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        digits = {"size_mb": 1, "params_m": 2, "gmacs": 2, "fps": 1, "throughput_ips": 1, "peak_mem_mb": 0}
        return f"{value:.{digits.get(key, 2)}f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (failed rows show their reason in the Status column)."""
    keys = [k for k in COLUMNS if k != "throughput_ips" or any(r.get(k) is not None for r in rows)]
    keys = [k for k in keys if k not in ("miou", "macc", "aacc") or any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(COLUMNS[k] for k in keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for r in rows:
        status = (
            f"failed: {r.get('error', '')}"
            if r["status"] != "ok"
            else "ok" + (f" ({r['note']})" if r.get("note") else "")
        )
        cells = [_cell(k, status if k == "status" else r.get(k)) for k in keys]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]], env: dict[str, Any], cfg: BenchConfig, command: str) -> str:
    v = env["versions"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    settings = (
        f"batch-1 latency at the input size shown, {cfg.warmup} warm-up + {cfg.runs} timed runs, device "
        f"`{cfg.device}`, threads {env['threads'] or 'library default'}"
    )
    if cfg.batch > 1:
        settings += f"; throughput at batch {cfg.batch}"
    if cfg.dataset:
        settings += f"; accuracy on `{cfg.dataset}` `{cfg.split}`"
        if cfg.mode == "slide":
            settings += f", sliding {_hw_text(cfg.crop)} windows"
            settings += f" every {_hw_text(cfg.stride)}" if cfg.stride else ""
        elif cfg.eval_size:
            settings += f", images resized to {_hw_text(cfg.eval_size)}"
        else:
            settings += ", whole images at their own size (fixed-size models: resized to their input)"
        settings += ", with flip" if cfg.flip else ""
        settings += f", scales {cfg.scales}" if list(cfg.scales) != [1.0] else ""
    return "\n".join(
        [
            "# Benchmark",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {env['cpu']} ({env['cpu_cores']} cores, {env['memory_gib']} GiB), "
            + (f"GPU {', '.join(env['gpus'])}, " if env["gpus"] else "no GPU, ")
            + f"{env['os']}, Python {env['python']}, {env['date']}.",
            "",
            f"Libraries: {libs}.",
            "",
            f"Settings: {settings}. GMACs = multiply-accumulates of convolutions and matrix products (FLOPs = 2 x "
            "MACs); FPS = 1000 / mean latency; peak memory = peak RSS growth on CPU.",
            "",
            format_table(rows),
            "",
        ]
    )


def write_results(
    rows: list[dict[str, Any]],
    env: dict[str, Any],
    cfg: BenchConfig,
    out_dir: str | os.PathLike[str],
    command: str,
) -> dict[str, Path]:
    """Write ``benchmark.{json,csv,md}`` and ``latency_vs_miou.png`` (when there is an mIoU); returns the paths."""
    out = Path(out_dir)
    paths = {"json": out / "benchmark.json", "csv": out / "benchmark.csv", "md": out / "benchmark.md"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("models", "progress", "out")}
    doc = {"command": command, "environment": env, "settings": settings, "results": rows}
    atomic_write_text(paths["json"], json.dumps(doc, indent=2, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *_EXTRA_KEYS], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], _markdown(rows, env, cfg, command))
    if any(r.get("miou") is not None for r in rows):
        paths["png"] = out / "latency_vs_miou.png"
        plot_latency_vs_miou(rows, paths["png"])
    return paths


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= step) if step > 0 else 1.0
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


_FORMAT_COLORS = {"pytorch": (180, 119, 31), "onnx": (14, 127, 255), "tensorrt": (44, 160, 44)}  # BGR


def plot_latency_vs_miou(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Scatter of median batch-1 latency (x) against mIoU (y), one labelled point per model, drawn with OpenCV.

    OpenCV is already a dependency; a plotting library would be one more install for a single scatter plot.
    """
    pts = [r for r in rows if r.get("miou") is not None and r.get("latency_median_ms") is not None]
    width, height, left, right, top, bottom = 960, 640, 90, 30, 50, 70
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "mIoU vs latency (batch 1, median)", (left, 32), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    xs = [r["latency_median_ms"] for r in pts] or [0.0, 1.0]
    ys = [r["miou"] for r in pts] or [0.0, 1.0]
    x0, x1 = 0.0, max(xs) * 1.15 or 1.0
    y_pad = max((max(ys) - min(ys)) * 0.15, 1.0)
    y0, y1 = max(min(ys) - y_pad, 0.0), min(max(ys) + y_pad, 100.0)

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return int(round(px)), int(round(py))

    cv2.rectangle(img, to_px(x0, y1), to_px(x1, y0), (0, 0, 0), 1)
    for tx in _nice_ticks(x0, x1):
        px, py = to_px(tx, y0)
        cv2.line(img, (px, py), (px, py + 6), (0, 0, 0), 1)
        cv2.putText(img, f"{tx:g}", (px - 14, py + 24), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for ty in _nice_ticks(y0, y1):
        px, py = to_px(x0, ty)
        cv2.line(img, (px - 6, py), (px, py), (0, 0, 0), 1)
        cv2.putText(img, f"{ty:g}", (px - 50, py + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "latency (ms)", (width // 2 - 50, height - 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "mIoU (%)", (10, top - 8), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for r in pts:
        px, py = to_px(r["latency_median_ms"], r["miou"])
        color = _FORMAT_COLORS.get(r.get("format", ""), (90, 90, 90))
        cv2.circle(img, (px, py), 6, color, -1, cv2.LINE_AA)
        label = f"{r['model']} ({r.get('precision', '?')})"
        (tw, _), _ = cv2.getTextSize(label, font, 0.42, 1)
        tx = px + 9 if px + 9 + tw < width - 5 else px - 9 - tw  # keep labels inside the image
        cv2.putText(img, label, (tx, py - 6), font, 0.42, (40, 40, 40), 1, cv2.LINE_AA)
    for i, (fmt, color) in enumerate(_FORMAT_COLORS.items()):
        y = top + 20 + 22 * i
        cv2.circle(img, (width - right - 110, y - 4), 6, color, -1, cv2.LINE_AA)
        cv2.putText(img, fmt, (width - right - 96, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    with atomic_path(path) as tmp:
        ok, png = cv2.imencode(".png", img)
        assert ok, "PNG encoding failed"
        tmp.write_bytes(png.tobytes())
    return path


# --------------------------------------------------------------------------------------------- driver
def _names(paths: list[Path]) -> list[str]:
    """Row labels: file names, with the parent folder where two files share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _dataset(cfg: BenchConfig) -> Any:
    if not cfg.dataset:
        return None
    from infer.datasets import build_dataset

    return build_dataset(cfg.dataset, cfg.data_root, cfg.split)


def _child(path: str, cfg: BenchConfig, name: str) -> dict[str, Any]:
    return benchmark_model(path, cfg, _dataset(cfg), name)


def _benchmark_isolated(path: Path, cfg: BenchConfig, name: str) -> dict[str, Any]:
    """:func:`benchmark_model` in a fresh process: its peak memory is its own, and a crash in a native library
    (a segmentation fault in a GPU runtime) fails this row only."""
    ctx = multiprocessing.get_context(
        "spawn"
    )  # no state (threads, CUDA context, allocator) from this process
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(_child, str(path), cfg, name).result()
        except BrokenProcessPool:
            row = {
                "model": name,
                "path": str(path),
                "format": _FORMAT_BY_SUFFIX.get(path.suffix.lower(), "?"),
            }
            row.update(device=cfg.device, batch=cfg.batch, status="failed")
            row["error"] = "the process running this model died (a crash inside a native library)"
            return row


def run_benchmark(
    cfg: BenchConfig, command: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Benchmark every model in ``cfg.models``, print the table, write the result files.

    Returns:
        (rows, written paths). Raises only for problems that concern every model (dataset not found, ...).
    """
    if cfg.threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        cfg.threads = int(os.environ["OMP_NUM_THREADS"])  # let ONNX Runtime follow the limit PyTorch follows
    dataset = _dataset(cfg)  # a missing dataset stops here, before any model runs
    paths = [Path(m) for m in cfg.models]
    rows = []
    bar = tqdm(list(zip(paths, _names(paths))), desc="models", unit="model", disable=not cfg.progress)
    for path, name in bar:
        bar.set_postfix_str(name)
        rows.append(
            _benchmark_isolated(path, cfg, name) if cfg.isolate else benchmark_model(path, cfg, dataset, name)
        )
    env = environment(cfg.threads)
    command = command or "python infer/benchmark.py " + " ".join(shlex.quote(m) for m in cfg.models)
    written = write_results(rows, env, cfg, cfg.out, command)
    print(format_table(rows))
    print("written: " + ", ".join(str(p) for p in written.values()))
    if not any(r.get("miou") is not None for r in rows):
        print("no latency-vs-mIoU plot: it needs --dataset and --data-root")
    return rows, written
