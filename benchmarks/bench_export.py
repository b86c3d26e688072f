"""ONNX Runtime CPU latency (FP32, INT8 Q/DQ) against PyTorch eager, and what export costs in accuracy.

    python benchmarks/bench_export.py                                   # DeepLabV3-R18 + PSPNet-R18, 512x1024, batch 1
    python benchmarks/bench_export.py --checkpoint runs/demo/deeplabv3_r18/best.pth --runs 10 --threads 4
    python benchmarks/bench_export.py --models pspnet_mbv2 --size 256x512 --out bench_export.json

For each model: FP32 and INT8 ONNX files are exported with `segkd.export.pipeline.export_model` (INT8 calibrated on
the demo train split), verified on the demo val split against PyTorch (argmax agreement, mIoU of both), and timed
batch 1 on the CPU: ``--warmup`` untimed then ``--runs`` timed calls each, median and p90 in milliseconds.
Without ``--checkpoint`` the models have untrained weights: latency is unaffected, the agreement still measures
the export's fidelity, but mIoU values are near zero and their deltas mean little (the table says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: import from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from segkd.export.pipeline import ExportOptions, export_model  # noqa: E402
from segkd.export.verify import VerificationError  # noqa: E402
from segkd.infer.cliargs import parse_hw  # noqa: E402
from segkd.infer.meta import ModelMeta  # noqa: E402


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["deeplabv3_r18", "pspnet_r18"], help="registered names")
    p.add_argument("--checkpoint", nargs="*", default=[], help="trained checkpoints (replace --models)")
    p.add_argument("--size", default="512x1024", help="HxW (default 512x1024)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads for PyTorch and ONNX Runtime (default 1)"
    )
    p.add_argument("--calib", type=int, default=8, help="INT8 calibration frames (demo train split)")
    p.add_argument("--val", type=int, default=8, help="verification frames (demo val split)")
    p.add_argument("--calib-method", default="entropy", choices=["entropy", "minmax", "percentile"])
    p.add_argument("--demo-root", help="demo dataset folder (default: generated in a temporary folder)")
    p.add_argument("--workdir", help="where the ONNX files go (default: a temporary folder)")
    p.add_argument("--out", help="also write the results as JSON here")
    return p.parse_args(argv)


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "runs": len(a)}


def _time(fn, warmup: int, runs: int) -> dict[str, float]:  # noqa: ANN001 (a no-argument callable)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times)


def _models(args: argparse.Namespace, classes: list[str], palette: list[list[int]], size: tuple[int, int]):  # noqa: ANN202
    """(label, float32 eval model, meta) for each checkpoint, else each registered name with untrained weights."""
    if args.checkpoint:
        from segkd.distill.load import load_model

        for path in args.checkpoint:
            model, meta = load_model(path)
            yield Path(path).name, model, meta, True
        return
    from segkd.distill.models import build_model

    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, num_classes=len(classes)).eval()
        meta = ModelMeta(
            arch={"name": name, "num_classes": len(classes)}, class_names=classes, palette=palette
        )
        meta.input_size = list(size)
        yield name, model, meta, False


def _torch_latency(
    model: torch.nn.Module, size: tuple[int, int], args: argparse.Namespace
) -> dict[str, float]:
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        return _time(lambda: model(x), args.warmup, args.runs)


def _ort_latency(path: Path, args: argparse.Namespace) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(0).standard_normal(inp.shape).astype(dtype)
    return _time(lambda: sess.run(None, {inp.name: x}), args.warmup, args.runs)


def _bench_model(label, model, meta, trained, demo, work, size, args) -> list[dict]:  # noqa: ANN001
    rows = [{"model": label, "format": "pytorch", "precision": "fp32", **_torch_latency(model, size, args)}]
    for precision in ("fp32", "int8"):
        opts = ExportOptions(
            precision=precision, height=size[0], width=size[1], calib_dataset="demo", calib_root=str(demo),
            calib_count=args.calib, verify_count=args.val, calib_method=args.calib_method,
        )  # fmt: skip
        out = Path(work) / f"{label}.{precision}.onnx"
        t0 = time.perf_counter()
        try:
            report = export_model(model, meta, out, opts, log=lambda _: None).report
        except VerificationError as e:  # measured anyway: the table shows why it failed
            report = e.report
            opts.verify = False
            export_model(model, meta, out, opts, log=lambda _: None)
        row = {"model": label, "format": "onnxruntime", "precision": precision}
        row.update(export_s=round(time.perf_counter() - t0, 1), size_mb=round(out.stat().st_size / 2**20, 1))
        row.update(_ort_latency(out, args))
        row.update(
            agreement=report.agreement, miou_torch=report.miou_torch, miou_exported=report.miou_exported,
            passed=report.passed, trained=trained,
        )  # fmt: skip
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | runtime | precision | size MB | median ms | p90 ms | speed-up | agreement % | mIoU PyTorch | "
        "mIoU ONNX | delta mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = {r["model"]: r["median_ms"] for r in rows if r["format"] == "pytorch"}
    for r in rows:
        miou = r.get("miou_torch") is not None
        note = "" if r.get("trained", True) else " (untrained)"
        lines.append(
            f"| {r['model']} | {r['format']} | {r['precision']} | {r.get('size_mb', '')} | {r['median_ms']:.0f} | "
            f"{r['p90_ms']:.0f} | {eager[r['model']] / r['median_ms']:.2f}x | "
            + (f"{r['agreement']:.2f} | " if "agreement" in r else "- | ")
            + (
                f"{r['miou_torch']:.2f}{note} | {r['miou_exported']:.2f} | {r['miou_exported'] - r['miou_torch']:+.2f} |"
                if miou
                else "- | - | - |"
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    h, w = parse_hw(args.size)
    from segkd.infer.datasets import build_dataset
    from segkd.scenes.street import generate_demo

    with tempfile.TemporaryDirectory(prefix="segkd-bench-export-") as tmp:
        demo = Path(args.demo_root or Path(tmp) / "demo")
        generate_demo(demo, {"train": args.calib, "val": args.val}, size=(h, w))
        ds = build_dataset("demo", demo, "val")
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        for label, model, meta, trained in _models(args, ds.class_names, ds.palette, (h, w)):
            print(f"{label}: {h}x{w}, batch 1, {args.threads} thread(s), {args.runs} runs", flush=True)
            rows += _bench_model(label, model, meta, trained, demo, work, (h, w), args)
    print(_table(rows))
    env = {"torch": torch.__version__, "threads": args.threads, "size": [h, w]}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
