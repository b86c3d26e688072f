"""FP16 as a half-precision copy against FP16 converted from FP32 with LayerNorm/Softmax/attention logits kept in
float32 (`segkd.export.fp16`): file size, agreement and mIoU against PyTorch, and NaN/inf under strict float16.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python benchmarks/fp16_mixed.py runs/x/best.pth \
        --dataset demo --data-root data/demo --count 50 [--strict]

Per checkpoint: the FP32 graph, the half copy (``model.half()`` exported: the FP16 path of CNNs) and the mixed
conversion of the FP32 graph, each verified by ONNX Runtime's CPU provider on the val split (the export gate), and
with ``--strict`` each FP16 graph also run by ``onnx.reference`` on 1 of those images, every op in its graph dtype as a strongly typed
TensorRT build runs it (ONNX Runtime's CPU provider computes ops without a float16 kernel in float32 and would hide
an overflow).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

__all__ = ["main"]


def _strict_non_finite(path: Path, model, meta, samples) -> int:  # noqa: ANN001
    """NaN/inf values of the graph's logits on ``onnx.reference`` (float16 ops computed in float16)."""
    from onnx.reference import ReferenceEvaluator

    from segkd.export.calib import network_input

    x = network_input([s.image for s in samples], meta, fused=False, dtype="float16")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = ReferenceEvaluator(str(path)).run(None, {"input": x})[0]
    return int((~np.isfinite(out)).sum())


def main(argv: list[str] | None = None) -> int:
    from segkd.distill.load import load_model
    from segkd.export.calib import dataset_samples
    from segkd.export.fp16 import to_mixed_fp16
    from segkd.export.onnx_export import torch_to_onnx, write_metadata
    from segkd.export.pipeline import ExportOptions, _export_meta
    from segkd.export.verify import verify_onnx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--exporter", default="torchscript")
    p.add_argument(
        "--strict", action="store_true", help="also run each FP16 graph on onnx.reference (slow on CNNs)"
    )
    args = p.parse_args(argv)
    print(
        "| checkpoint | file | size (MB) | fp32 ops | agreement | mIoU (PyTorch / file) | strict fp16 NaN/inf |"
    )
    print("|---|---|---|---|---|---|---|")
    for ckpt in args.checkpoints:
        model, meta = load_model(ckpt)
        size = tuple(meta.input_size)
        samples = dataset_samples(
            args.dataset, args.data_root, args.split, args.count, size, meta.num_classes
        )
        with tempfile.TemporaryDirectory() as tmp:
            files = {k: Path(tmp) / f"{k}.onnx" for k in ("fp32", "half copy", "mixed")}
            for name, dtype in (("fp32", "float32"), ("half copy", "float16")):
                torch_to_onnx(model, meta, files[name], size=size, dtype=dtype, exporter=args.exporter,
                              log=lambda _: None)  # fmt: skip
            kept = to_mixed_fp16(files["fp32"], files["mixed"])
            for name, path in files.items():
                prec = "fp32" if name == "fp32" else "fp16"
                write_metadata(
                    path, path, _export_meta(meta, ExportOptions(precision=prec), model, "", None, None)
                )
                r = verify_onnx(path, model, meta, samples, precision=prec, source=args.split)
                strict = (
                    "-"
                    if prec == "fp32" or not args.strict
                    else str(_strict_non_finite(path, model, meta, samples[:1]))
                )
                print(
                    f"| {Path(ckpt).name} | {name} | {path.stat().st_size / 1e6:.2f} | "
                    f"{kept if name == 'mixed' else '-'} | {r.agreement:.3f} % | "
                    f"{r.miou_torch:.2f} / {r.miou_exported:.2f} | {strict} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
