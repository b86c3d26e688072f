"""Benchmark deployable model files in one table: size, params, GMACs, latency, FPS, memory, mIoU.

    python infer/benchmark.py student.pth student.onnx student_int8.onnx \
        --dataset cityscapes --data-root data/cityscapes --split val --size 512x1024 --runs 100 --out runs/bench

Exit status: 0 all measured, 1 some model failed (its row says why), 2 bad settings or no model could be loaded.
Each MODEL is a file of a format in `segkd.infer.formats` (``.pth`` checkpoint, ``.onnx``, TensorRT ``.engine``). Writes benchmark.md/.csv/.json
and latency_vs_miou.png to --out; a model that fails gets a failed row with the reason. Conventions (warm-up,
timing, MACs, memory) are in ``infer/bench/``.

``segkd benchmark CKPT --formats all`` exports the checkpoint to every installed format first (each file
verified), then benchmarks them with it; see ``python -m segkd.export.bench_formats --help``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from segkd.infer.bench import BenchConfig, run_benchmark
from segkd.infer.cliargs import hw_arg
from segkd.infer.datasets import dataset_names
from segkd.infer.evaluate import MODES
from segkd.infer.formats import suffix_help
from segkd.infer.runtime import CUDA_LIBS
from segkd.script import prog


def _scales(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated scales such as 0.75,1,1.25, got {text!r}"
        ) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("infer/benchmark.py"),
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=f"model files: {suffix_help()}")
    p.add_argument("--dataset", help=f"dataset name for mIoU ({dataset_names()})")
    p.add_argument("--data-root", help="dataset root folder")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--size", type=hw_arg, help="HxW input for latency and GMACs (default: the model's input size)"
    )
    p.add_argument(
        "--batch", type=int, default=1, help="batch for the throughput measurement (default 1: none)"
    )
    p.add_argument("--warmup", type=int, default=10, help="discarded runs before timing (default 10)")
    p.add_argument("--runs", type=int, default=100, help="timed runs at batch 1 (default 100)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    p.add_argument("--provider", help="ONNX Runtime provider to force, e.g. CUDAExecutionProvider")
    p.add_argument("--cuda-lib", choices=sorted(CUDA_LIBS), default="cuda-python", help="TensorRT buffers")
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="re-time all models interleaved in N rounds (median, p10-p90, spread flag, load, peak fraction)",
    )
    p.add_argument(
        "--compare-to", metavar="ROW", help="print latency ratios to this row (model label or file)"
    )
    p.add_argument(
        "--cpu-precision",
        choices=["fp32", "bf16"],
        help="precision of .pth rows (bf16 = autocast) and OpenVINO rows (inference precision hint)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: OMP_NUM_THREADS, else library default)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--mode", choices=MODES, default="whole", help="whole image or sliding window")
    ev.add_argument("--crop", type=hw_arg, help="HxW window for --mode slide")
    ev.add_argument("--stride", type=hw_arg, help="HxW step for --mode slide (default 2/3 of the crop)")
    ev.add_argument("--eval-size", type=hw_arg, help="HxW to resize every image to in whole mode")
    ev.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    ev.add_argument("--scales", type=_scales, default=[1.0], help="e.g. 0.75,1,1.25 (multi-scale)")
    ev.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument(
        "--in-process",
        dest="isolate",
        action="store_false",
        help="run every model in this process (faster start; memory figures and crashes then mix)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = BenchConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
    command = "python infer/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        rows, _ = run_benchmark(cfg, command)
    except (ValueError, OSError) as e:  # dataset missing or unreadable, output folder not writable, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    if all(r.get("load_failed") for r in rows):  # nothing could even be loaded: a usage error, as elsewhere
        for r in rows:
            print(f"error: {r.get('path', r['model'])}: {r.get('error', 'failed')}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
