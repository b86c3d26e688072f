"""Timing a user can trust on a shared machine: contenders interleaved in rounds, medians, spread, load, peak.

Every model is loaded once in this process; each round times one batch-1 call of every model in turn, so that a
burst of load from elsewhere slows every contender alike instead of one row. Per row: the median over rounds,
p10 and p90, and ``spread = (p90 - p10) / median``. A row is flagged ``unreliable`` when its spread exceeds
:data:`UNRELIABLE_SPREAD` (the middle 80 % of its rounds differ by more than half its median: a ratio between two
such rows is not worth a digit). Fraction of peak: the row's ``2 x MACs`` per second (FLOP/s of its convolutions and
matrix products) against this machine's FP32 GEMM FLOP/s measured once per run with numpy (torch-free).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UNRELIABLE_SPREAD", "gemm_peak_gflops", "interleaved_rounds", "load_average", "ratios_to"]

UNRELIABLE_SPREAD = 0.5


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (``uptime``), or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def gemm_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best FP32 GEMM GFLOP/s of ``n x n`` numpy matrices (BLAS follows OMP_NUM_THREADS like the runtimes)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9  # an n x n x n product is n^3 multiply-adds = 2 n^3 FLOPs


def _stats(times_ms: np.ndarray) -> dict[str, Any]:
    median = float(np.median(times_ms))
    p10, p90 = (float(v) for v in np.percentile(times_ms, [10, 90]))
    spread = (p90 - p10) / median if median > 0 else float("inf")
    return {
        "rounds": int(times_ms.size),
        "latency_median_ms": median,
        "latency_p10_ms": p10,
        "latency_p90_ms": p90,
        "latency_p99_ms": float(np.percentile(times_ms, 99)),
        "latency_mean_ms": float(times_ms.mean()),
        "spread": spread,
        "unreliable": bool(spread > UNRELIABLE_SPREAD),
    }


def interleaved_rounds(rows: list[dict[str, Any]], cfg: Any, rounds: int) -> dict[str, Any]:
    """Re-time every ``ok`` row in interleaved rounds and update its latency columns in place.

    Returns the run-level facts: rounds, load average at start and end, the GEMM peak.
    """
    from infer.bench.measure import runner_provider
    from infer.runtime import load_runner

    facts: dict[str, Any] = {"rounds": rounds, "load_start": load_average()}
    contenders = []
    try:
        for row in rows:
            if row.get("status") != "ok":
                continue
            runner = load_runner(
                Path(row["path"]),
                device=cfg.device,
                provider=runner_provider(Path(row["path"]), cfg),
                cuda_lib=cfg.cuda_lib,
                threads=cfg.threads,
            )
            hw = tuple(int(v) for v in row["input"].split("x"))
            image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
            x = runner.make_input([image], hw)
            runner.time_forward(x, warmup=max(1, cfg.warmup), runs=1)  # warm-up apart from the rounds
            contenders.append((row, runner, x, []))
        for _ in range(rounds):  # round-robin: one timed call of each model per round
            for _row, runner, x, times in contenders:
                times.extend(runner.time_forward(x, warmup=0, runs=1).tolist())
    finally:
        for _row, runner, _x, _times in contenders:
            runner.close()
    peak = gemm_peak_gflops() if cfg.device == "cpu" else None
    facts.update(load_end=load_average(), peak_gflops=peak, peak_method="numpy FP32 GEMM 1024^3, best of 5")
    for row, _runner, _x, times in contenders:
        row.update(_stats(np.asarray(times, dtype=np.float64)))
        row["fps"] = 1000.0 / row["latency_median_ms"]
        row["timing"] = f"{rounds} interleaved rounds, median"
        if peak and row.get("gmacs"):
            gflops = 2.0 * row["gmacs"] / (row["latency_median_ms"] / 1000.0)  # FLOP/s = 2 x MAC/s
            row["peak_fraction"] = gflops / peak
    return facts


def ratios_to(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Set ``ratio`` = median latency / the reference row's (matched by model label, path or file name)."""
    ref = next(
        (
            r
            for r in rows
            if reference in (r.get("model"), r.get("path"), Path(str(r.get("path", ""))).name)
            and r.get("latency_median_ms")
        ),
        None,
    )
    if ref is None:
        names = ", ".join(str(r.get("model")) for r in rows)
        raise ValueError(f"--compare-to {reference!r} names no measured row; rows: {names}")
    for r in rows:
        if r.get("latency_median_ms"):
            r["ratio"] = r["latency_median_ms"] / ref["latency_median_ms"]
    return rows
