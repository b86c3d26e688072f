"""The benchmark's result files: benchmark.json, .csv, .md and the latency-vs-mIoU plot (with matplotlib)."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from segkd.infer.bench.config import BenchConfig
from segkd.infer.bench.measure import STAGE_RUNS, hw_text
from segkd.infer.bench.plot import plot_latency_vs_miou, plottable
from segkd.infer.fileio import atomic_write_text, to_json

__all__ = ["COLUMNS", "format_table", "write_results"]

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
    "eval_images",
    "eval_seconds",
    "note",
    "error",
    "rounds",
    "unreliable",
    "pipeline_ms",
    "stage_runs",
)
# Shown only when some row has them (interleaved rounds, --compare-to, evaluation), each after the column named.
_OPTIONAL = {
    "latency_p10_ms": ("p10 (ms)", "latency_median_ms"),
    "spread": ("Spread", "latency_p90_ms"),
    "ratio": ("Ratio", "spread"),
    "peak_fraction": ("Peak frac.", "ratio"),
    "eval_resolution": ("Eval size", "peak_mem_mb"),
    # per-stage medians of one image through the demo pipeline (measure._time_stages)
    "decode_ms": ("Decode (ms)", "fps"),
    "preprocess_ms": ("Pre (ms)", "decode_ms"),
    "inference_ms": ("Infer (ms)", "preprocess_ms"),
    "postprocess_ms": ("Post (ms)", "inference_ms"),
    "render_ms": ("Render (ms)", "postprocess_ms"),
}


def _display_columns() -> dict[str, str]:
    """COLUMNS with the optional columns inserted where they read best."""
    out = dict(COLUMNS)
    for key, (title, after) in _OPTIONAL.items():
        items = list(out.items())
        i = [k for k, _ in items].index(after) + 1
        out = dict([*items[:i], (key, title), *items[i:]])
    return out


def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        if key == "spread":
            return f"{value:.2f}"
        if key == "peak_fraction":
            return f"{100 * value:.1f}%"
        digits = {"size_mb": 1, "params_m": 2, "gmacs": 2, "fps": 1, "throughput_ips": 1, "peak_mem_mb": 0}
        return f"{value:.{digits.get(key, 2)}f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (failed rows show their reason in the Status column)."""
    columns = _display_columns()
    keys = [k for k in columns if k not in _OPTIONAL or any(r.get(k) is not None for r in rows)]
    keys = [k for k in keys if k != "throughput_ips" or any(r.get(k) is not None for r in rows)]
    keys = [k for k in keys if k not in ("miou", "macc", "aacc") or any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(columns[k] for k in keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for r in rows:
        status = (
            f"failed: {r.get('error', '')}"
            if r["status"] != "ok"
            else "ok" + (f" ({r['note']})" if r.get("note") else "")
        )
        if r.get("unreliable") and "spread" in r:
            status += " (unreliable: p10-p90 spread > 0.5 x median)"
        elif r.get("unreliable"):
            status += " (unreliable)"
        cells = [_cell(k, status if k == "status" else r.get(k)) for k in keys]
        if "peak_fraction" in keys and r.get("peak_basis") and r.get("peak_fraction") is not None:
            i = keys.index("peak_fraction")
            cells[i] += f" of {r['peak_basis']}"  # which precision's GEMM rate it is a fraction of
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
            settings += f", sliding {hw_text(cfg.crop)} windows"
            settings += f" every {hw_text(cfg.stride)}" if cfg.stride else ""
        elif cfg.eval_size:
            settings += f", images resized to {hw_text(cfg.eval_size)}"
        else:
            settings += ", whole images at their own size (fixed-size models: resized to their input)"
        settings += ", with flip" if cfg.flip else ""
        settings += f", scales {cfg.scales}" if list(cfg.scales) != [1.0] else ""
    timing = ""
    if env.get("interleaved"):
        f = env["interleaved"]
        peaks = f.get("peaks") or {}
        peak = (
            "; ".join(f"{k} {v['gflops']:.1f} G(FL)OP/s ({v['method']})" for k, v in peaks.items())
            if peaks
            else "not measured"
        )
        timing = (
            f"Timing: latency re-measured in {f['rounds']} interleaved rounds (one call of every model per round); "
            f"median, p10, p90, spread = (p90 - p10) / median, unreliable when spread > 0.5. Load average "
            f"(1/5/15 min) at start {f['load_start']}, at end {f['load_end']}. Peak frac. = 2 x GMACs per second "
            f"(FLOP/s) / the measured GEMM rate of the row's precision: {peak}.\n"
        )
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
            "MACs); FPS = 1000 / mean latency; peak memory = peak RSS growth on CPU. Stages (medians of up to "
            f"{STAGE_RUNS} runs of the whole pipeline on the latency's input): Decode = JPEG decoding of the image, Pre = resize, "
            "normalise and layout, Infer = the network call, Post = output to labels at the image size, Render = "
            "the camera demo's overlay, legend and HUD.",
            "",
            timing,
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
    """Write ``benchmark.{json,csv,md}`` and ``latency_vs_miou.png`` (when there is an mIoU and matplotlib is
    installed); returns the paths."""
    out = Path(out_dir)
    paths = {"json": out / "benchmark.json", "csv": out / "benchmark.csv", "md": out / "benchmark.md"}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("models", "progress", "out")}
    doc = {"command": command, "environment": env, "settings": settings, "results": rows}
    atomic_write_text(paths["json"], to_json(doc, indent=2, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *_OPTIONAL, *_EXTRA_KEYS], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["md"], _markdown(rows, env, cfg, command))
    png = plot_latency_vs_miou(rows, out / "latency_vs_miou.png") if plottable(rows) else None
    if png is not None:  # None: matplotlib is not installed
        paths["png"] = png
    return paths
