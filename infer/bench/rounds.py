"""Timing a user can trust on a shared machine: contenders interleaved in rounds, medians, spread, load, peak.

Every model is loaded once in this process; each round times one batch-1 call of every model in turn, so that a
burst of load from elsewhere slows every contender alike instead of one row. Per row: the median over rounds,
p10 and p90, and ``spread = (p90 - p10) / median``. A row is flagged ``unreliable`` when its spread exceeds
:data:`UNRELIABLE_SPREAD` (the middle 80 % of its rounds differ by more than half its median: a ratio between two
such rows is not worth a digit). Fraction of peak: the row's ``2 x MACs`` per second (FLOP/s of its convolutions and
matrix products) against this machine's GEMM rate *in the row's precision*, measured once per run (torch-free
except for bf16): FP32 as the best of numpy and ONNX Runtime's MatMul, INT8 as ONNX Runtime's MatMulInteger with u8
activations and constant s8 weights (the kernel the ``cpu`` INT8 form runs), bf16 as a PyTorch bf16 matmul. FP16
rows on a CPU run FP32 kernels and are compared with the FP32 rate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "UNRELIABLE_SPREAD",
    "device_peaks",
    "gemm_peak_gflops",
    "interleaved_rounds",
    "load_average",
    "peak_key",
    "ratios_to",
]

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
    return _best_rate(lambda: a @ b, n, repeats)


def _best_rate(call: Any, n: int, repeats: int) -> float:
    """Best ``2 n^3`` operations per second (in G) of ``call()`` over ``repeats`` timed calls after one warm-up.

    An n x n x n product is n^3 multiply-adds = 2 n^3 operations.
    """
    call()  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def matmul_model(precision: str, n: int) -> bytes:
    """A one-node ONNX graph ``A (n x n) @ B``, B a constant (as convolution weights are, so ONNX Runtime prepacks it).

    ``fp32``: MatMul in float32. ``int8``: MatMulInteger, A uint8, B int8, output int32.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "int8":
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm_peak",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        initializer=[b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_gemm_rate(precision: str, threads: int | None, n: int = 1024, repeats: int = 5) -> float | None:
    """ONNX Runtime CPU GEMM G(FL)OP/s for ``fp32`` (MatMul) or ``int8`` (MatMulInteger u8 x s8); None without it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(matmul_model(precision, n), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8) if precision == "int8" else rng.standard_normal((n, n))
    feed = {"A": a if precision == "int8" else a.astype(np.float32)}
    return _best_rate(lambda: sess.run(None, feed), n, repeats)


def torch_bf16_rate(threads: int | None, n: int = 1024, repeats: int = 5) -> float | None:
    """PyTorch bfloat16 matmul GFLOP/s on the CPU (what autocast runs); None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(torch.bfloat16)
    return _best_rate(lambda: a @ b, n, repeats)


def peak_key(row: dict[str, Any]) -> str:
    """Which peak a row is measured against: ``int8``, ``bf16`` (autocast or OpenVINO's bf16 hint) or ``fp32``."""
    if row.get("precision") == "int8":
        return "int8"
    if row.get("precision") == "bf16" or str(row.get("provider", "")).endswith("bf16"):
        return "bf16"
    return "fp32"  # fp32, and fp16 files, which CPU runtimes run with fp32 kernels


def device_peaks(keys: set[str], threads: int | None) -> dict[str, dict[str, Any]]:
    """The measured GEMM rate for each of ``keys`` (``fp32``/``int8``/``bf16``): ``{key: {gflops, method}}``.

    A rate that cannot be measured here (no ONNX Runtime for int8, no PyTorch for bf16) is left out.
    """
    peaks: dict[str, dict[str, Any]] = {}
    if "fp32" in keys:
        numpy_rate = gemm_peak_gflops()
        ort_rate = ort_gemm_rate("fp32", threads)
        if ort_rate and ort_rate > numpy_rate:
            peaks["fp32"] = {"gflops": ort_rate, "method": "ONNX Runtime MatMul FP32 1024^3, best of 5"}
        else:
            peaks["fp32"] = {"gflops": numpy_rate, "method": "numpy FP32 GEMM 1024^3, best of 5"}
    if "int8" in keys and (rate := ort_gemm_rate("int8", threads)):
        peaks["int8"] = {"gflops": rate, "method": "ONNX Runtime MatMulInteger u8 x s8 1024^3, best of 5"}
    if "bf16" in keys and (rate := torch_bf16_rate(threads)):
        peaks["bf16"] = {"gflops": rate, "method": "PyTorch bf16 matmul 1024^3, best of 5"}
    return peaks


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
    from segkd.infer.bench.measure import runner_provider
    from segkd.infer.runtime import load_runner

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
    facts["load_end"] = load_average()
    peaks = (
        device_peaks({"fp32"} | {peak_key(r) for r, *_ in contenders}, cfg.threads)
        if cfg.device == "cpu"
        else {}
    )
    fp32 = peaks.get("fp32", {})
    facts.update(peaks=peaks, peak_gflops=fp32.get("gflops"), peak_method=fp32.get("method"))
    for row, _runner, _x, times in contenders:
        row.update(_stats(np.asarray(times, dtype=np.float64)))
        row["fps"] = 1000.0 / row["latency_median_ms"]
        row["timing"] = f"{rounds} interleaved rounds, median"
        peak = peaks.get(peak_key(row))
        if peak and row.get("gmacs"):
            gflops = 2.0 * row["gmacs"] / (row["latency_median_ms"] / 1000.0)  # FLOP/s = 2 x MAC/s
            row["peak_fraction"] = gflops / peak["gflops"]
            row["peak_basis"] = peak_key(row)
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
