"""Command lines of ``export/to_onnx.py`` and ``export/to_trt.py`` (parsing, messages, exit codes).

Exit codes: 0 done; 1 verification failed (nothing written); 2 a user mistake (bad option, missing or foreign
checkpoint, unusable calibration images, ...); 3 TensorRT failed to build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segkd.export.formats import CALIB_METHODS, INT8_TARGETS, LABEL_DTYPES, PRECISIONS
from segkd.infer.datasets import dataset_names
from segkd.script import command, prog

__all__ = ["onnx_main", "openvino_main", "trt_main"]

EXIT_VERIFY, EXIT_USAGE, EXIT_BUILD = 1, 2, 3


def _add_export_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    g.add_argument("--height", type=int, help="input height (default: the checkpoint's input_size)")
    g.add_argument("--width", type=int, help="input width (default: the checkpoint's input_size)")
    g.add_argument("--batch", type=int, default=1, help="batch size of a fixed-batch graph (default 1)")
    g.add_argument(
        "--dynamic", nargs="?", const="all", default="none", choices=["none", "batch", "all"],
        help="dynamic axes: 'batch', or 'all' (batch, height, width; the default when the flag has no value)",
    )  # fmt: skip
    g.add_argument("--argmax", action="store_true", help="output the (N, H, W) label map instead of logits")
    g.add_argument(
        "--label-dtype", default="uint8", choices=list(LABEL_DTYPES), help="label map dtype with --argmax"
    )
    g.add_argument(
        "--fuse-preprocess", action="store_true",
        help="graph takes raw BGR uint8 NHWC frames and normalises inside (metadata: fused_preprocess=true)",
    )  # fmt: skip
    g.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; dynamo needs >= 18)")
    g.add_argument(
        "--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
        help="torch exporter; auto = dynamo when onnxscript is installed, else torchscript",
    )  # fmt: skip
    g.add_argument(
        "--no-slim", dest="slim", action="store_false", help="do not simplify the graph with onnxslim"
    )
    c = p.add_argument_group("calibration (int8) and verification images")
    c.add_argument("--calib-dataset", help=f"dataset name ({dataset_names()})")
    c.add_argument("--calib-root", help="dataset root folder")
    c.add_argument("--calib-split", default="train", help="split to calibrate on (default train)")
    c.add_argument(
        "--calib-images", help="folder of images to calibrate (and verify) on, searched recursively"
    )
    c.add_argument("--calib-count", type=int, default=32, help="calibration images (default 32)")
    c.add_argument(
        "--calib-method",
        default="percentile",
        choices=list(CALIB_METHODS),
        help="activation ranges: percentile (default; clips the top 0.01 %%), minmax (the full range: level with "
        "percentile on the demo students), entropy (KL search: clipped most, 0.3-1.3 mIoU lost on the demo "
        "students, and 5-10x slower); docs/quantization.md has the measurements",
    )
    c.add_argument(
        "--calib-percentile",
        type=float,
        default=99.99,
        help="with --calib-method percentile: percent of each activation histogram the range keeps (default 99.99)",
    )
    c.add_argument(
        "--calib-group-mb",
        type=float,
        default=512.0,
        help="ONNX Runtime calibration: megabytes of one batch's activations held at once (default 512); more are "
        "calibrated in further passes over the images, so memory stays bounded at any resolution (lower it on a "
        "small machine; each pass costs one more inference per image)",
    )
    c.add_argument(
        "--no-verify", dest="verify", action="store_false", help="write without checking against PyTorch"
    )
    c.add_argument("--verify-split", default="val", help="labelled split to verify on with --calib-dataset")
    c.add_argument("--verify-count", type=int, default=8, help="verification images (default 8)")
    c.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output that was exported with other options (size, precision, target, "
        "dynamic axes, argmax, fused preprocessing); without it such a file is kept and the export stops",
    )


def _options(args: argparse.Namespace, precision: str, out: str | None):  # noqa: ANN202 (lazy import)
    from segkd.export.pipeline import ExportOptions

    fields = ExportOptions.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in fields and k not in ("precision", "out")}
    return ExportOptions(precision=precision, out=out, **kw)


def _user_errors() -> tuple[type[BaseException], ...]:
    from segkd.distill.checkpoint import CheckpointError
    from segkd.export.calib import CalibrationError
    from segkd.export.onnx_export import ExportError
    from segkd.infer.datasets import DatasetError, LabelError
    from segkd.infer.datasets.reading import UnreadableFileError
    from segkd.infer.fileio import DiskFullError, OutputPathError

    return (
        CheckpointError, CalibrationError, ExportError, DatasetError, LabelError, UnreadableFileError,
        DiskFullError, OutputPathError,
    )  # fmt: skip


def _print_verification(result) -> None:  # noqa: ANN001 (segkd.export.pipeline.ExportResult, imported lazily)
    if result.report is not None:
        print(f"  verified: {result.report.summary()} [{result.report.gate}]")
    else:
        print("  not verified (--no-verify)")


def _export(checkpoint: str, args: argparse.Namespace, precision: str, out: str | None) -> Path:
    from segkd.export.pipeline import export_checkpoint

    result = export_checkpoint(checkpoint, _options(args, precision, out))
    m = result.meta.extra
    size = "x".join(map(str, result.meta.input_size))
    shape = f"dynamic ({m['dynamic']}) around {size}" if m["dynamic"] else size
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MB, {precision}, input {m['input_dtype']} "
        f"{m['input_layout']} {shape}, output {m['output']}, {result.exporter} exporter) in {result.seconds:.1f} s"
    )
    _print_verification(result)
    return result.path


def _export_openvino(checkpoint: str, args: argparse.Namespace, precision: str, out: str | None) -> Path:
    from segkd.export.openvino_export import export_openvino

    result = export_openvino(checkpoint, _options(args, precision, out))
    size = result.path.stat().st_size + result.path.with_suffix(".bin").stat().st_size
    print(f"wrote {result.path} + .bin ({size / 2**20:.1f} MB, {precision}) in {result.seconds:.1f} s")
    _print_verification(result)
    return result.path


def _each_precision(args: argparse.Namespace, export) -> int:  # noqa: ANN001 (export: _export or _export_openvino)
    """Run ``export`` once per requested precision (``--out`` names one file, so it takes one precision)."""
    precisions = list(dict.fromkeys(args.precision))
    if args.out and len(precisions) > 1:
        print("error: --out names one file; give one --precision with it", file=sys.stderr)
        return EXIT_USAGE
    for precision in precisions:
        export(args.checkpoint, args, precision, args.out)
    return 0


def _run(fn, *a) -> int:  # noqa: ANN001 (fn: one of the *_main bodies)
    from segkd.export.verify import VerificationError

    try:
        return fn(*a)
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VERIFY
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


# --------------------------------------------------------------------------------------------------- to_onnx
def onnx_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("export/to_onnx.py"),
        description="Export a checkpoint to ONNX (FP32 / FP16 / INT8 Q/DQ), verified against PyTorch.",
        epilog="precisions: " + "; ".join(f"{k}: {v.description}" for k, v in PRECISIONS.items()),
    )
    p.add_argument("checkpoint", help="self-describing .pth written by distill/train.py")
    p.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
        help="one or more; files <ckpt>.onnx, <ckpt>.fp16.onnx, <ckpt>.int8.onnx (<ckpt>.int8-cpu.onnx for --target cpu)",
    )  # fmt: skip
    p.add_argument(
        "--target", default="tensorrt", choices=list(INT8_TARGETS),
        help="INT8 form: " + "; ".join(f"{k}: {v[1]}" for k, v in INT8_TARGETS.items()) + " (default tensorrt)",
    )  # fmt: skip
    p.add_argument("--out", help="output path (one precision only; default derived from the checkpoint)")
    _add_export_args(p)
    return p


def _onnx_body(args: argparse.Namespace) -> int:
    return _each_precision(args, _export)


def onnx_main(argv: Sequence[str] | None = None) -> int:
    return _run(_onnx_body, onnx_parser().parse_args(argv))


# --------------------------------------------------------------------------------------------------- to_trt
def trt_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("export/to_trt.py"),
        description=(
            "Build a strongly typed TensorRT engine (+ JSON sidecar). From a checkpoint, the ONNX of the precision "
            "is exported and verified first; without TensorRT the command stops there (exit 2: no engine was "
            "built) and says how to install it."
        ),
    )
    p.add_argument("source", help="checkpoint (.pth) or ONNX file written by to_onnx.py")
    p.add_argument("--precision", choices=list(PRECISIONS), help="default fp32 (an ONNX file brings its own)")
    p.add_argument(
        "--shapes",
        help="input shape, fixed (1x3x512x1024) or MIN:OPT:MAX (1x3x512x1024:2x3x512x1024:4x3x1024x2048); "
        "NHWC (Nx H x W x3) with --fuse-preprocess",
    )
    p.add_argument("--workspace", type=float, default=4.0, help="builder workspace in GiB (default 4)")
    p.add_argument("--timing-cache", help="timing cache file: read if present, written after the build")
    p.add_argument("--version-compatible", action="store_true", help="engine runs on later TensorRT versions")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on Ampere and newer GPUs")
    p.add_argument("--out", help="engine path (default <onnx name>.engine)")
    _add_export_args(p)
    return p


def _shape_export_args(args: argparse.Namespace, shapes) -> None:  # noqa: ANN001 (ShapeProfile)
    """Fixed size and dynamic axes of the ONNX to export, from the engine's --shapes."""
    opt = shapes.opt
    hw_axes = (1, 2) if args.fuse_preprocess else (2, 3)
    args.height, args.width = opt[hw_axes[0]], opt[hw_axes[1]]
    args.batch = opt[0]
    varies = [i for i in range(len(opt)) if not shapes.min[i] == opt[i] == shapes.max[i]]
    args.dynamic = "none" if not varies else "batch" if varies == [0] else "all"


def _default_shapes(onnx_path: Path):  # noqa: ANN202 (ShapeProfile | None)
    """A dynamic graph without --shapes: fixed at batch 1 and its metadata's input size (said on stdout)."""
    import onnx

    from segkd.export.onnx_export import read_metadata
    from segkd.export.trt_shapes import ShapeProfile
    from segkd.infer.meta import HW_AXES, guess_layout

    graph_input = onnx.load(str(onnx_path), load_external_data=False).graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_input.type.tensor_type.shape.dim]
    if all(d > 0 for d in dims):
        return None
    meta = read_metadata(onnx_path)
    h, w = meta.input_size
    hw = dict(zip(HW_AXES[guess_layout(dims, meta.extra)[0]], (h, w)))  # NHWC (fused preprocessing) or NCHW
    fixed = tuple(1 if i == 0 else hw.get(i, d) for i, d in enumerate(dims))
    print(f"no --shapes for a dynamic graph: building for {'x'.join(map(str, fixed))} only")
    return ShapeProfile(fixed, fixed, fixed)


def _trt_body(args: argparse.Namespace) -> int:
    from segkd.export.onnx_export import ExportError, read_metadata
    from segkd.export.trt_build import (
        TRT_INSTALL_HINT,
        BuildOptions,
        EngineBuildError,
        TensorRTUnavailable,
        build_engine,
        import_tensorrt,
        parse_shapes,
    )
    from segkd.infer.fileio import check_writable

    try:
        shapes = parse_shapes(args.shapes) if args.shapes else None
    except ValueError as e:
        raise ExportError(str(e)) from e
    if args.out:  # before minutes of export and build
        check_writable(args.out, "engine output")
    if args.timing_cache:
        check_writable(args.timing_cache, "timing cache")
    source = Path(args.source)
    if source.suffix.lower() == ".onnx":
        if not source.is_file():
            raise ExportError(f"ONNX file {source} does not exist")
        onnx_path = source
        try:
            meta = read_metadata(onnx_path)
        except ValueError as e:
            raise ExportError(f"{source}: {e}") from e
        have = meta.extra.get("precision", "fp32")
        if args.precision and args.precision != have:
            raise ExportError(
                f"{source.name} is an {have} graph and TensorRT builds it in {have} (strongly typed: precision comes "
                f"from the graph); export a {args.precision} ONNX with `{command('export', 'python export/to_onnx.py')} CKPT "
                f"--precision {args.precision}` or build from the checkpoint"
            )
        if meta.extra.get("target", "tensorrt") != "tensorrt":
            raise ExportError(
                f"{source.name} is INT8 in the {meta.extra['target']} form (u8 QOperator nodes TensorRT does not "
                f"build); export the TensorRT form with `{command('export', 'python export/to_onnx.py')} CKPT --precision int8` (--target "
                "tensorrt, the default) or build from the checkpoint"
            )
    else:
        if shapes is not None:
            _shape_export_args(args, shapes)
        onnx_path = _export(str(source), args, args.precision or "fp32", None)
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable:
        if source.suffix.lower() == ".onnx":
            raise
        print(
            f"TensorRT is not installed: stopped after the verified ONNX {onnx_path}, which ONNX Runtime runs as it is. "
            f"To build the engine: pip install -e .[trt] on a machine with an NVIDIA GPU, then "
            f"{command('trt', 'python export/to_trt.py')} {onnx_path}"
            + (f" --shapes {shapes}" if shapes else "")
        )
        print(f"error: no engine built: TensorRT is not installed ({TRT_INSTALL_HINT})", file=sys.stderr)
        return EXIT_USAGE  # a script chaining to_trt.py must not take the missing engine for success
    if shapes is None:
        shapes = _default_shapes(onnx_path)
    options = BuildOptions(
        shapes, args.workspace, args.timing_cache, args.version_compatible, args.hardware_compatible
    )
    try:
        record = build_engine(onnx_path, args.out, options, trt=trt)
    except EngineBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUILD
    print(
        f"wrote {record['engine']} and its sidecar {record['engine']}.json in {record['build']['build_time_s']:.1f} s"
    )
    return 0


def trt_main(argv: Sequence[str] | None = None) -> int:
    from segkd.export.trt_build import TensorRTUnavailable

    args = trt_parser().parse_args(argv)
    try:
        return _run(_trt_body, args)
    except TensorRTUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


# --------------------------------------------------------------------------------------------------- to_openvino
def openvino_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("export/to_openvino.py"),
        description="Export a checkpoint to an OpenVINO IR (FP32 / FP16 / INT8 with NNCF), verified against PyTorch.",
    )
    p.add_argument("checkpoint", help="self-describing .pth written by distill/train.py")
    p.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
        help="one or more; files <ckpt>.xml, <ckpt>.fp16.xml, <ckpt>.int8.xml (each with its .bin)",
    )  # fmt: skip
    p.add_argument("--out", help="output .xml path (one precision only; default derived from the checkpoint)")
    _add_export_args(p)
    return p


def _openvino_body(args: argparse.Namespace) -> int:
    return _each_precision(args, _export_openvino)


def openvino_main(argv: Sequence[str] | None = None) -> int:
    return _run(_openvino_body, openvino_parser().parse_args(argv))
