"""The export commands (``export/to_onnx.py``, ``to_openvino.py``, ``to_trt.py`` and any format added to the table),
their parsers generated from the format table (:data:`segkd.export.formats.EXPORT_FORMATS`): each command offers
the options its format honours and refuses the others, naming the commands that take them.

Exit codes: 0 done; 1 verification failed (nothing written); 2 a user mistake (bad option, missing or foreign
checkpoint, unusable calibration images, ...); 3 TensorRT failed to build.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkd.export.formats import EXPORT_FORMATS, PRECISIONS, ExportFormat
from segkd.export.options import add_option_arguments, option_flags
from segkd.infer.cliargs import hw_arg
from segkd.script import command, exit_status, prog, stop_on_sigterm

__all__ = ["format_main", "format_parser", "onnx_main", "openvino_main", "parse_format_args", "trt_main"]

EXIT_VERIFY, EXIT_USAGE, EXIT_BUILD = 1, 2, 3


def format_parser(fmt: ExportFormat, *, source_help: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``fmt``'s command: the checkpoint, ``--precision``, ``--out`` and the options it honours."""
    p = argparse.ArgumentParser(
        prog=prog(fmt.script),
        description=f"Export a checkpoint to a {fmt.description}, verified against PyTorch.",
        epilog="precisions: "
        + "; ".join(f"{k}: {v.description}" for k, v in PRECISIONS.items())
        + f". INT8: {fmt.quantizer}.",
    )
    p.add_argument("checkpoint", help=source_help or "self-describing .pth written by distill/train.py")
    names = ", ".join(str(fmt.default_path("<ckpt>", k)) for k in PRECISIONS)
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=list(PRECISIONS),
        help=f"one or more; files {names}",
    )
    p.add_argument(
        "--out", help=f"output {fmt.suffix} path (one precision only; default derived from the checkpoint)"
    )
    add_option_arguments(p, fmt.options)
    _add_size(p, fmt)
    return p


def _add_size(p: argparse.ArgumentParser, fmt: ExportFormat) -> None:
    """``--size HxW`` as every other command spells it, for ``--height H --width W``."""
    if {"height", "width"} <= fmt.options:
        p.add_argument(
            "--size", type=hw_arg, metavar="HxW", help="input HxW (the same as --height H --width W)"
        )


def parse_format_args(
    fmt: ExportFormat, parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; an export option ``fmt`` does not honour is refused with the commands that take it."""
    args, extra = parser.parse_known_args(argv)
    flags = option_flags()
    for token in extra:
        name = flags.get(token.split("=", 1)[0])
        if name is not None:
            takers = [f"segkd {f.command}" for f in EXPORT_FORMATS.values() if name in f.options]
            parser.error(
                f"{token.split('=', 1)[0]} has no effect on {fmt.name} files, so this command does not take it"
                + (f"; it is an option of {', '.join(takers)}" if takers else "")
            )
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _options(args: argparse.Namespace, precision: str, out: str | None):  # noqa: ANN202 (lazy import)
    from segkd.export.options import ExportOptions

    fields = ExportOptions.__dataclass_fields__
    kw = {k: v for k, v in vars(args).items() if k in fields and k not in ("precision", "out")}
    if getattr(args, "size", None):
        if {kw.get("height"), kw.get("width")} - {None} and (kw.get("height"), kw.get("width")) != tuple(
            args.size
        ):
            from segkd.export.onnx_export import ExportError

            raise ExportError(
                f"--size {args.size[0]}x{args.size[1]} and --height/--width disagree; give one of them"
            )
        kw["height"], kw["width"] = args.size
    return ExportOptions(precision=precision, out=out, **kw)


def _exporter(fmt: ExportFormat) -> Any:
    module, func = fmt.exporter.split(":")
    return getattr(importlib.import_module(module), func)


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


def _export(
    fmt: ExportFormat, checkpoint: str, args: argparse.Namespace, precision: str, out: str | None
) -> Path:
    """Export one precision with the format's exporter and say what was written."""
    result = _exporter(fmt)(checkpoint, _options(args, precision, out))
    m = result.meta.extra
    size = "x".join(map(str, result.meta.input_size))
    shape = f"dynamic ({m['dynamic']}) around {size}" if m.get("dynamic") else size
    files = [result.path, *(result.path.with_suffix(c) for c in fmt.companions)]
    mb = sum(f.stat().st_size for f in files if f.is_file()) / 2**20
    also = "".join(f" + {c}" for c in fmt.companions)
    print(
        f"wrote {result.path}{also} ({mb:.1f} MB, {precision}, input {m.get('input_dtype', '?')} "
        f"{m.get('input_layout', '?')} {shape}, output {m.get('output', 'logits')}, {result.exporter} exporter) in "
        f"{result.seconds:.1f} s"
    )
    _print_verification(result)
    return result.path


def _each_precision(fmt: ExportFormat, args: argparse.Namespace) -> int:
    """Export once per requested precision (``--out`` names one file, so it takes one precision)."""
    precisions = list(dict.fromkeys(args.precision))
    if args.out and len(precisions) > 1:
        print("error: --out names one file; give one --precision with it", file=sys.stderr)
        return EXIT_USAGE
    for precision in precisions:
        _export(fmt, args.checkpoint, args, precision, args.out)
    return 0


def format_main(name: str, argv: Sequence[str] | None = None) -> int:
    """The command of export format ``name``: parse, export each precision, verify; returns the exit status."""
    fmt = EXPORT_FORMATS[name]
    return _run(_each_precision, fmt, parse_format_args(fmt, format_parser(fmt), argv))


def _run(fn, *a) -> int:  # noqa: ANN001 (fn: one of the *_main bodies)
    from segkd.export.verify import VerificationError

    stop_on_sigterm()
    try:
        return fn(*a)
    except (
        KeyboardInterrupt
    ) as e:  # Ctrl-C or SIGTERM: temporary files are gone, the output was never replaced
        code = exit_status(e)
        what = "terminated (SIGTERM)" if code == 143 else "interrupted"
        print(f"{what}: nothing was written, any earlier file at the output path is kept", file=sys.stderr)
        return code
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VERIFY
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


# --------------------------------------------------------------------------------------------------- to_onnx
def onnx_main(argv: Sequence[str] | None = None) -> int:
    return format_main("onnx", argv)


# --------------------------------------------------------------------------------------------------- to_trt
def trt_parser() -> argparse.ArgumentParser:
    fmt = EXPORT_FORMATS["tensorrt"]
    p = argparse.ArgumentParser(
        prog=prog(fmt.script),
        description=(
            "Build a strongly typed TensorRT engine (+ JSON sidecar) and verify it on the GPU against PyTorch (from "
            "a checkpoint) or the ONNX file it was built from. From a checkpoint, the ONNX of the precision is "
            "exported and verified first; without TensorRT the command stops there (exit 2: no engine was built) "
            "and says how to install it."
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
    add_option_arguments(p, fmt.options)
    _add_size(p, fmt)
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
        onnx_path = _export(EXPORT_FORMATS["onnx"], str(source), args, args.precision or "fp32", None)
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
    if args.verify:
        from segkd.export.engine import verify_engine

        precision = args.precision or "fp32"
        report = verify_engine(record["engine"], source, _options(args, precision, None))
        print(f"  verified on the GPU: {report.summary()} [{report.gate}]")
    else:
        print("  not verified (--no-verify)")
    return 0


def trt_main(argv: Sequence[str] | None = None) -> int:
    from segkd.export.trt_build import TensorRTUnavailable

    args = parse_format_args(EXPORT_FORMATS["tensorrt"], trt_parser(), argv)
    try:
        return _run(_trt_body, args)
    except TensorRTUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


# --------------------------------------------------------------------------------------------------- to_openvino
def openvino_main(argv: Sequence[str] | None = None) -> int:
    return format_main("openvino", argv)
