"""Which INT8 form ONNX Runtime runs fastest on this CPU: latency ratios to ONNX Runtime FP32, side by side.

    PYTHONPATH=$PWD python benchmarks/bench_int8_cpu.py --models deeplabv3_r18 pspnet_mbv2 --size 512 1024

Contenders per model (random weights: speed does not depend on them; agreement is printed for information only):
FP32; the TensorRT form (s8 symmetric Q/DQ, Conv only); the CPU form (u8 activations, s8 per-channel weights) as
QDQ or QOperator, with Conv/Gemm only or also Add/Concat/Resize/pooling. One thread, batch 1, interleaved rounds,
medians; the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _session(path: Path, threads: int):  # noqa: ANN202 (onnxruntime.InferenceSession)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _contenders(name: str, size: tuple[int, int], work: Path) -> dict[str, Path]:
    """Export FP32 and write each INT8 form of it; returns label -> ONNX file."""
    from onnxruntime.quantization import quantize_static

    from segkd.distill.models import build_model
    from segkd.export.calib import CalibrationReader, synthetic_samples
    from segkd.export.onnx_export import torch_to_onnx
    from segkd.export.quantize import (
        QUANT_OP_TYPES,
        _calibrate,
        _cpu_settings,
        pre_process,
        quantize_settings,
    )
    from segkd.infer.meta import ModelMeta

    model = build_model(name, num_classes=19).eval()
    meta = ModelMeta(arch={"name": name, "num_classes": 19}, class_names=[str(i) for i in range(19)],
                     palette=[[i, i, i] for i in range(19)], input_size=list(size))  # fmt: skip
    fp32, pre = work / f"{name}.fp32.onnx", work / f"{name}.pre.onnx"
    torch_to_onnx(model, meta, fp32, size=size, batch=1, dtype="float32", argmax=False, label_dtype="uint8",
                  opset=18, exporter="torchscript", slim=True, log=lambda _: None, fuse_preprocess=False,
                  dynamic="none")  # fmt: skip
    pre_process(fp32, pre, print)
    samples = synthetic_samples(2, size)
    out = {"fp32": fp32}

    def reader() -> CalibrationReader:
        return CalibrationReader(samples, meta, "input", batch=1, fused=False)

    forms = {
        "int8 tensorrt (s8 QDQ, Conv)": ("tensorrt", None),
        "int8 cpu QDQ, Conv": ("cpu", _cpu_settings("qdq", QUANT_OP_TYPES)),
        "int8 cpu QDQ, +Add/Concat/Resize/pool": ("cpu", _cpu_settings("qdq")),
        "int8 cpu QOperator, Conv": ("cpu", _cpu_settings("qoperator", QUANT_OP_TYPES)),
        "int8 cpu QOperator, +Add/Concat/Resize/pool": ("cpu", _cpu_settings("qoperator")),
    }
    caches = {}
    for i, (label, (target, settings)) in enumerate(forms.items()):
        if target not in caches:
            caches[target] = work / f"{name}.{target}.ranges.json"
            _calibrate(pre, reader(), "minmax", target, caches[target], work, progress=False)
        settings = settings or quantize_settings("minmax", "tensorrt")
        settings = {**settings, "calibrate_method": quantize_settings("minmax", target)["calibrate_method"]}
        path = work / f"{name}.{i}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(path), None, calibration_cache_path=str(caches[target]), **settings)
        out[label] = path
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["deeplabv3_r18", "pspnet_mbv2"])
    p.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    size = tuple(args.size)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            files = _contenders(name, size, Path(tmp))
            sessions = {k: _session(v, args.threads) for k, v in files.items()}
            ref = sessions["fp32"].run(None, {"input": x})[0]
            times: dict[str, list[float]] = {k: [] for k in sessions}
            agree = {}
            for k, s in sessions.items():  # warm-up, and the agreement with FP32
                agree[k] = 100.0 * float((s.run(None, {"input": x})[0].argmax(1) == ref.argmax(1)).mean())
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    times[k].append(time.perf_counter() - t0)
            base = statistics.median(times["fp32"])
            print(f"\n{name} {size[0]}x{size[1]} batch 1, {args.threads} thread(s), {args.rounds} rounds")
            print("| contender | ratio to ORT FP32 (median) | min..max ratio | agreement with FP32 |")
            print("|---|---|---|---|")
            for k, t in times.items():
                med = statistics.median(t)
                print(
                    f"| {k} | {med / base:.2f} | {min(t) / base:.2f}..{max(t) / base:.2f} | {agree[k]:.1f} % |"
                )
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
