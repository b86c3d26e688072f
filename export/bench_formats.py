"""``segkd benchmark CKPT --formats all``: export a checkpoint to every format whose library is installed, verify
each file, then time them all with the checkpoint itself in one interleaved table.

    segkd benchmark runs/demo/cwd/best.pth --formats all --precision fp32 int8 --dataset demo --data-root data/demo
    segkd benchmark best.pth --formats onnx,openvino --runs 50

Formats whose library does not import are skipped with the reason and the install command; a format whose export
or verification fails is reported and left out of the table. Every other option is the benchmark's own
(``segkd benchmark --help``); the exported files go to ``<out>/files/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from segkd.export.formats import EXPORT_FORMATS, PRECISIONS, ExportFormat
from segkd.script import prog

__all__ = ["main", "missing_requirements", "select_formats"]


def missing_requirements(fmt: ExportFormat) -> list[str]:
    """The modules ``fmt`` needs that do not import here."""
    return [name for name in fmt.requires if importlib.util.find_spec(name) is None]


def select_formats(spec: str) -> list[ExportFormat]:
    """``all`` or a comma-separated list of format names -> table rows (a ValueError names the valid ones)."""
    names = list(EXPORT_FORMATS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORT_FORMATS]
    if unknown or not names:
        raise ValueError(
            f"unknown format(s) {unknown or spec!r}; choose all or some of {', '.join(EXPORT_FORMATS)}"
        )
    return [EXPORT_FORMATS[n] for n in names]


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog=prog("-m segkd.export.bench_formats"), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("checkpoint", help="self-describing .pth written by distill/train.py")
    p.add_argument(
        "--formats", required=True, help=f"all, or some of {', '.join(EXPORT_FORMATS)}, comma-separated"
    )
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS), help="default fp32")
    p.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    return p.parse_known_args(argv)


def _int8_target(fmt: ExportFormat, rest: list[str]) -> str:
    """The INT8 form the benchmark's device runs fast: ONNX Runtime's x86 kernels on a CPU, TensorRT's on a GPU."""
    on_gpu = "cuda" in rest and rest[rest.index("cuda") - 1] == "--device" or "--device=cuda" in rest
    return "cpu" if fmt.name == "onnx" and not on_gpu else "tensorrt"  # OpenVINO and engines have one form


def _images(rest: list[str]) -> dict[str, str]:
    """Calibrate and verify on the benchmark's dataset when it names one (its train and evaluated splits)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dataset")
    p.add_argument("--data-root")
    p.add_argument("--split", default="val")
    known, _ = p.parse_known_args(rest)
    if not (known.dataset and known.data_root):
        return {}
    return {"calib_dataset": known.dataset, "calib_root": known.data_root, "verify_split": known.split}


def main(argv: Sequence[str] | None = None) -> int:
    from segkd.export.options import ExportOptions

    args, rest = _parse(argv)
    try:
        formats = select_formats(args.formats)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files_dir = Path(args.out) / "files"
    files: list[str] = []
    for fmt in formats:
        missing = missing_requirements(fmt)
        if missing:
            print(f"{fmt.name}: skipped ({', '.join(missing)} not installed: {fmt.install})")
            continue
        module, func = fmt.exporter.split(":")
        exporter = getattr(importlib.import_module(module), func)
        for precision in args.precision:
            out = fmt.default_path(files_dir / Path(args.checkpoint).name, precision, _int8_target(fmt, rest))
            opts = ExportOptions(
                precision=precision, out=str(out), force=True, target=_int8_target(fmt, rest), **_images(rest)
            )
            try:
                result = exporter(args.checkpoint, opts, log=lambda m: None)
            except (
                Exception
            ) as e:  # one format's failure is a line of the report, not the end of the benchmark
                print(
                    f"{fmt.name} {precision}: not benchmarked ({type(e).__name__}: {str(e).splitlines()[0]})"
                )
                continue
            verified = result.report.summary() if result.report is not None else "not verified"
            print(f"{fmt.name} {precision}: {result.path} ({verified})")
            files.append(str(result.path))
    from segkd.infer.benchmark import main as benchmark

    return benchmark([args.checkpoint, *files, "--out", args.out, *rest])
