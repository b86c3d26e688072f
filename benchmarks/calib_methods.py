"""Which INT8 calibration to use: mIoU and argmax agreement with FP32 per method, image count and target.

    PYTHONPATH=$PWD python benchmarks/calib_methods.py runs/demo/cwd/best.pth runs/demo/baseline/best.pth \
        --dataset demo --data-root data/demo --counts 8 32 128 --out docs/calib_methods_demo.md

Per checkpoint: one FP32 ONNX export, then for every target (tensorrt: s8 symmetric Q/DQ; cpu: u8 activations),
method (entropy, minmax, percentile at each --percentiles value) and number of calibration images (spread over
the train split) an INT8 graph, each scored on the whole val split against the labels (mIoU) and against the
FP32 graph's own predictions (argmax agreement, the export gate's measure). Every INT8 graph runs on ONNX
Runtime's CPU kernels: the TensorRT form's numbers are what its Q/DQ ranges give, not TensorRT's speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

__all__ = ["main"]


def _predictions(path: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    from segkd.infer.runtime import load_runner

    with load_runner(path, threads=os.cpu_count()) as runner:
        return [runner.predict([im])[0] for im in images]


def _scores(
    preds: list[np.ndarray], ref: list[np.ndarray], labels: list[np.ndarray], k: int
) -> tuple[float, float]:
    """(mIoU %, agreement % with ``ref``)."""
    from segkd.infer.metrics import ConfusionMatrix

    cm = ConfusionMatrix(k)
    agree = total = 0
    for p, r, lab in zip(preds, ref, labels):
        cm.update(p, lab)
        agree += int((p == r).sum())
        total += p.size
    return float(cm.compute()["mIoU"]), 100.0 * agree / total


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/calib_methods.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-root", default="data/demo")
    p.add_argument("--calib-split", default="train")
    p.add_argument("--split", default="val", help="split scored (all of it)")
    p.add_argument("--counts", nargs="+", type=int, default=[8, 32, 128])
    p.add_argument("--methods", nargs="+", default=["entropy", "minmax", "percentile"])
    p.add_argument("--percentiles", nargs="+", type=float, default=[99.99, 99.999])
    p.add_argument("--targets", nargs="+", default=["tensorrt", "cpu"])
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    from segkd.distill.load import load_model
    from segkd.export.calib import CalibrationReader, dataset_samples
    from segkd.export.pipeline import ExportOptions, export_model
    from segkd.export.quantize import quantize_int8
    from segkd.infer.datasets import build_dataset

    load = os.getloadavg()[0]
    variants = [(m, None) for m in a.methods if m != "percentile"]
    variants += [("percentile", q) for q in a.percentiles] if "percentile" in a.methods else []
    lines = [
        f"Command: `python benchmarks/calib_methods.py {' '.join(map(str, a.checkpoints))} --dataset {a.dataset} "
        f"--data-root {a.data_root} --counts {' '.join(map(str, a.counts))}`; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.2f} at the start.",
        "",
        "| checkpoint | target | method | calib images | mIoU (%) | Δ mIoU vs FP32 | argmax agreement (%) | calib s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ckpt in a.checkpoints:
        model, meta = load_model(ckpt)
        size = (int(meta.input_size[0]), int(meta.input_size[1]))
        ds = build_dataset(a.dataset, a.data_root, a.split)
        val = dataset_samples(a.dataset, a.data_root, a.split, len(ds), size, meta.num_classes)
        images, labels = [s.image for s in val], [s.label for s in val]
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_model(
                model, meta, fp32, ExportOptions(verify=False, exporter="torchscript"), log=lambda _: None
            )
            ref = _predictions(fp32, images)
            base_miou, _ = _scores(ref, ref, labels, meta.num_classes)
            lines.append(f"| {ckpt} | – | FP32 | – | {base_miou:.2f} | – | 100 | – |")
            print(lines[-1], flush=True)
            for target in a.targets:
                for count in a.counts:
                    calib = dataset_samples(
                        a.dataset, a.data_root, a.calib_split, count, size, meta.num_classes
                    )
                    for method, q in variants:
                        out = Path(tmp) / f"{target}-{method}-{q}-{count}.onnx"
                        reader = CalibrationReader(calib, meta, "input", batch=1, fused=False)
                        t0 = time.perf_counter()
                        kw = {"percentile": q} if q is not None else {}
                        quantize_int8(fp32, out, reader, method=method, target=target, progress=False,
                                      log=lambda _: None, **kw)  # fmt: skip
                        seconds = time.perf_counter() - t0
                        miou, agree = _scores(_predictions(out, images), ref, labels, meta.num_classes)
                        name = f"percentile {q:g}" if q is not None else method
                        lines.append(
                            f"| {ckpt} | {target} | {name} | {count} | {miou:.2f} | {miou - base_miou:+.2f} | "
                            f"{agree:.2f} | {seconds:.1f} |"
                        )
                        print(lines[-1], flush=True)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.2f}."]
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")
        print(f"table: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
