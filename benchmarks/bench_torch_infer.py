"""PyTorch eager inference latency of the students: fp32, fp16 (weights and input in half) and bf16 autocast.

    python benchmarks/bench_torch_infer.py --device cuda --size 512x1024 --json infer.json
    python benchmarks/bench_torch_infer.py --students deeplabv3_mbv2 --size 64x128 --precisions fp32,bf16 --runs 3

Random weights at batch 1 (``--batch`` for more), median and p90 of ``--runs`` timed forwards after ``--warmup``,
timed with CUDA events on a GPU and ``perf_counter`` on a CPU. It needs torch and segkd's models only (no OpenCV,
ONNX Runtime or TensorRT), so it runs on a bare CUDA image; `infer/benchmark.py` measures the deployed formats.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from segkd.distill.models import build_model

STUDENTS = ("deeplabv3_mbv2", "pspnet_mbv2", "deeplabv3_r18", "pspnet_r18")
PRECISIONS = ("fp32", "fp16", "bf16")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", default=",".join(STUDENTS), help="comma list of registered model names")
    p.add_argument(
        "--precisions", default=",".join(PRECISIONS), help=f"comma list of {', '.join(PRECISIONS)}"
    )
    p.add_argument("--size", default="512x1024", help="input HxW (default 512x1024)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--device", default="cuda")
    p.add_argument("--channels-last", action="store_true", help="model and input in NHWC memory format")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Milliseconds of one call: CUDA events around it on a GPU, ``perf_counter`` on a CPU."""
    if device.type == "cuda":

        def cuda_ms(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return cuda_ms

    def cpu_ms(fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t)

    return cpu_ms


def measure(model: torch.nn.Module, x: torch.Tensor, precision: str, args: argparse.Namespace) -> dict:
    """Median/p90 latency of ``model(x)`` in ``precision`` (the model is copied, never changed)."""
    model = copy.deepcopy(model)
    if precision == "fp16":
        model, x = model.half(), x.half()
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    timer = _timer(x.device)
    with torch.inference_mode(), autocast:
        for _ in range(args.warmup):
            model(x)
        times = sorted(timer(lambda: model(x)) for _ in range(args.runs))
    median = statistics.median(times)
    return {
        "median_ms": median,
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "images_per_s": 1000 * len(x) / median,
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.lower().split("x"))
    results: dict = {"config": vars(args) | {"json": str(args.json)}, "device": str(device), "rows": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"{'model':16} {'precision':9} {'median ms':>9} {'p90 ms':>8} {'img/s':>8}  "
          f"(batch {args.batch}, {h}x{w}, {results.get('gpu', device)})")  # fmt: skip
    for name in args.students.split(","):
        torch.manual_seed(0)
        model = build_model(name, num_classes=args.classes).eval().to(device, memory_format=fmt)
        x = torch.randn(args.batch, 3, h, w, device=device).contiguous(memory_format=fmt)
        for precision in args.precisions.split(","):
            row = {"model": name, "precision": precision, **measure(model, x, precision, args)}
            results["rows"].append(row)
            print(
                f"{name:16} {precision:9} {row['median_ms']:9.2f} {row['p90_ms']:8.2f} {row['images_per_s']:8.1f}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
