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
- GMACs: multiply-accumulates of convolutions and matrix products at batch 1 (see :mod:`segkd.infer.macs`);
  FLOPs would be 2 x GMACs.
- Accuracy: :func:`segkd.infer.evaluate.evaluate` with the same pre-processing for every format.

One model failing gives a row with ``status="failed"`` and the reason; the others still run.

Modules: `config` (settings), `memory` (peak RSS probe), `measure` (one model), `environment` (machine and
versions), `writers` (JSON/CSV/Markdown), `plot` (latency vs mIoU), `run` (every model, process isolation).
"""

from segkd.infer.bench.config import BenchConfig
from segkd.infer.bench.environment import environment
from segkd.infer.bench.measure import benchmark_model
from segkd.infer.bench.plot import plot_latency_vs_miou
from segkd.infer.bench.run import run_benchmark
from segkd.infer.bench.writers import COLUMNS, format_table, write_results
from segkd.infer.cliargs import parse_hw

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
