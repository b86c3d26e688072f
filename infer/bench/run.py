"""Run the benchmark over every model, each in a fresh process (``isolate``), and write the results."""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segkd.infer.bench.config import BenchConfig
from segkd.infer.bench.environment import environment
from segkd.infer.bench.measure import benchmark_model, format_name
from segkd.infer.bench.plot import PLOT_INSTALL, plottable
from segkd.infer.bench.rounds import interleaved_rounds, ratios_to
from segkd.infer.bench.writers import format_table, write_results
from segkd.infer.fileio import check_writable_dir
from segkd.infer.runtime.gpu import gpu_names

__all__ = ["run_benchmark"]


def _names(paths: list[Path]) -> list[str]:
    """Row labels: file names, with the parent folder where two files share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _dataset(cfg: BenchConfig) -> Any:
    if not cfg.dataset:
        return None
    from segkd.infer.datasets import build_dataset

    return build_dataset(cfg.dataset, cfg.data_root, cfg.split)


def _no_plot_reason(cfg: BenchConfig, rows: list[dict[str, Any]]) -> str:
    if cfg.dataset is None:
        return "it needs --dataset and --data-root"
    if not plottable(rows):
        return "no model has a finite mIoU"
    return f"matplotlib is not installed ({PLOT_INSTALL})"


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
                "format": format_name(path),
            }
            row.update(device=cfg.device, batch=cfg.batch, status="failed")
            row["error"] = "the process running this model died (a crash inside a native library)"
            return row


# A row whose p90 is this many times its median was timed on a busy machine: its mean and FPS mislead.
NOISY_P90 = 1.5


def _load() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _flag_noisy(rows: list[dict[str, Any]]) -> None:
    """Mark rows timed one after another whose latency spread says another load interfered (--rounds is the fix)."""
    for r in rows:
        median, p90 = r.get("latency_median_ms"), r.get("latency_p90_ms")
        if median and p90 and p90 > NOISY_P90 * median:
            r["unreliable"] = True
            note = f"p90 {p90 / median:.1f}x the median: the machine was busy; --rounds N times the rows side by side"
            r["note"] = f"{r['note']}; {note}" if r.get("note") else note


def _flag_eval_sizes(rows: list[dict[str, Any]]) -> None:
    """Note rows whose accuracy was measured at another size than the others' (their mIoU is not comparable)."""
    sizes = [r.get("eval_resolution") for r in rows if r.get("eval_resolution")]
    if len(set(sizes)) < 2:
        return
    common = max(set(sizes), key=sizes.count)
    for r in rows:
        if r.get("eval_resolution") and r["eval_resolution"] != common:
            note = f"evaluated at {r['eval_resolution']}, others at {common}: mIoU not comparable"
            r["note"] = f"{r['note']}; {note}" if r.get("note") else note


def run_benchmark(
    cfg: BenchConfig, command: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Benchmark every model in ``cfg.models``, print the table, write the result files.

    Returns:
        (rows, written paths). Raises only for problems that concern every model (dataset not found, ...).
    """
    if cfg.threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        cfg.threads = int(os.environ["OMP_NUM_THREADS"])  # let ONNX Runtime follow the limit PyTorch follows
    if (
        cfg.threads is None
    ):  # never more threads than cores this process may use (a container's host count is not)
        cfg.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_start = _load()
    check_writable_dir(cfg.out, "--out")  # a read-only folder stops here, not after every model ran
    if cfg.device == "cuda" and not gpu_names():  # else every row would run on the CPU under a 'cuda' heading
        raise ValueError(
            "--device cuda, but no NVIDIA GPU is visible (nvidia-smi lists none); use --device cpu"
        )
    dataset = _dataset(cfg)  # a missing dataset stops here, before any model runs
    paths = [Path(m) for m in cfg.models]
    labels = [*map(str, paths), *(p.name for p in paths), *_names(paths)]
    if cfg.compare_to and cfg.compare_to not in labels:  # a typo stops here, before any model runs
        raise ValueError(
            f"--compare-to {cfg.compare_to!r} names none of the models: {', '.join(_names(paths))}"
        )
    rows = []
    bar = tqdm(list(zip(paths, _names(paths))), desc="models", unit="model", disable=not cfg.progress)
    for path, name in bar:
        bar.set_postfix_str(name)
        rows.append(
            _benchmark_isolated(path, cfg, name) if cfg.isolate else benchmark_model(path, cfg, dataset, name)
        )
    env = environment(cfg.threads)
    env["load_start"], env["load_end"] = load_start, _load()
    if cfg.rounds:  # the per-model timings above ran one after another; these run side by side
        env["interleaved"] = interleaved_rounds(rows, cfg, cfg.rounds)
    else:
        _flag_noisy(rows)
    if cfg.compare_to:
        try:
            ratios_to(rows, cfg.compare_to)
        except ValueError as e:  # the reference row failed: the table still shows every row and why
            failed = next(
                (r for r in rows if cfg.compare_to in (r.get("model"), Path(r.get("path", "")).name)), None
            )
            why = f" (it failed: {failed.get('error')})" if failed and failed.get("status") != "ok" else ""
            print(f"warning: no ratio column: {e}{why}", file=sys.stderr)
    _flag_eval_sizes(rows)
    command = command or "python infer/benchmark.py " + " ".join(shlex.quote(m) for m in cfg.models)
    written = write_results(rows, env, cfg, cfg.out, command)
    print(format_table(rows))
    print("written: " + ", ".join(str(p) for p in written.values()))
    if "png" not in written:
        print(f"no latency-vs-mIoU plot: {_no_plot_reason(cfg, rows)}")
    return rows, written
