"""Every export option, declared once: the field the exporters read and the command-line flag that sets it.

:class:`ExportOptions` is what :func:`segkd.export.pipeline.export_checkpoint` and the other exporters take; each
field's metadata says how the commands offer it (flag, help, group, argparse settings). The format table
(:data:`segkd.export.formats.EXPORT_FORMATS`) names the fields each format honours, and
:func:`add_option_arguments` turns those into a parser's arguments, so a flag exists where it has an effect and
nowhere else. Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from segkd.export.formats import CALIB_METHODS, INT8_TARGETS, LABEL_DTYPES
from segkd.export.quantize import CALIB_GROUP_MB, DEFAULT_PERCENTILE
from segkd.infer.datasets import dataset_names
from segkd.infer.meta import ModelMeta

__all__ = ["GROUPS", "ExportOptions", "add_option_arguments", "option_flag", "option_flags"]

# Argument groups of the commands' --help, in order.
GROUPS = {
    "export": "export",
    "calibration": "calibration (int8) and verification images",
}


def _option(
    default: Any, help: str, group: str = "export", flag: str | None = None, **argparse_kw: Any
) -> Any:
    """A dataclass field with its command-line form (``flag`` defaults to ``--<name-with-dashes>``)."""
    return field(
        default=default, metadata={"help": help, "group": group, "flag": flag, "argparse": argparse_kw}
    )


def _cli(default: Any) -> Any:
    """A field each command declares itself (its help differs per format: ``--precision``, ``--out``)."""
    return field(default=default, metadata={"cli": False})


@dataclass
class ExportOptions:
    """Everything an export takes besides the checkpoint (each field's help is its ``--help`` line)."""

    precision: str = _cli("fp32")
    height: int | None = _option(None, "input height (default: the checkpoint's input_size)", type=int)
    width: int | None = _option(None, "input width (default: the checkpoint's input_size)", type=int)
    batch: int = _option(1, "batch size of a fixed-batch graph (default 1)", type=int)
    dynamic: str = _option(
        "none",
        "dynamic axes: 'batch', or 'all' (batch, height, width; the default when the flag has no value)",
        nargs="?",
        const="all",
        choices=["none", "batch", "all"],
    )
    argmax: bool = _option(False, "output the (N, H, W) label map instead of logits", action="store_true")
    label_dtype: str = _option("uint8", "label map dtype with --argmax", choices=list(LABEL_DTYPES))
    fuse_preprocess: bool = _option(
        False,
        "graph takes raw BGR uint8 NHWC frames and normalises inside (metadata: fused_preprocess=true)",
        action="store_true",
    )
    opset: int = _option(18, "ONNX opset (default 18; dynamo needs >= 18)", type=int)
    exporter: str = _option(
        "auto",
        "torch exporter; auto = dynamo when onnxscript is installed, else torchscript",
        choices=["auto", "dynamo", "torchscript"],
    )
    slim: bool = _option(
        True, "do not simplify the graph with onnxslim", flag="--no-slim", action="store_false"
    )
    calib_dataset: str | None = _option(None, f"dataset name ({dataset_names()})", group="calibration")
    calib_root: str | None = _option(None, "dataset root folder", group="calibration")
    calib_split: str = _option("train", "split to calibrate on (default train)", group="calibration")
    calib_images: str | None = _option(
        None, "folder of images to calibrate (and verify) on, searched recursively", group="calibration"
    )
    calib_count: int = _option(32, "calibration images (default 32)", group="calibration", type=int)
    calib_method: str = _option(  # chosen by measurement: docs/quantization.md
        "percentile",
        "activation ranges: percentile (default; clips the top 0.01 %%), minmax (the full range: level with "
        "percentile on the demo students), entropy (KL search: clipped most, 0.3-1.3 mIoU lost on the demo "
        "students, and 5-10x slower); docs/quantization.md has the measurements",
        group="calibration",
        choices=list(CALIB_METHODS),
    )
    calib_percentile: float = _option(
        DEFAULT_PERCENTILE,
        "with --calib-method percentile: percent of each activation histogram the range keeps (default 99.99)",
        group="calibration",
        type=float,
    )
    calib_group_mb: float = _option(
        CALIB_GROUP_MB,
        "ONNX Runtime calibration: megabytes of one batch's activations held at once (default 512); more are "
        "calibrated in further passes over the images, so memory stays bounded at any resolution (lower it on a "
        "small machine; each pass costs one more inference per image)",
        group="calibration",
        type=float,
    )
    max_drop: float | None = _option(
        None,
        "with --precision int8 and labelled images (--calib-dataset/--calib-root): keep the layers whose INT8 "
        "rounding hurts most in float (ranked by measured sensitivity on the calibration images) until the file's "
        "mIoU on the verification images is within D points of FP32 (D <= 1.0, the int8 gate); says which layers "
        "were kept and their cost in CPU latency, and refuses (writing nothing) when D cannot be met. ONNX export "
        "only (to_onnx.py, both --target forms); docs/quantization.md",
        group="calibration",
        type=float,
        metavar="D",
    )
    target: str = _option(
        "tensorrt",
        "INT8 form: " + "; ".join(f"{k}: {v[1]}" for k, v in INT8_TARGETS.items()) + " (default tensorrt)",
        choices=list(INT8_TARGETS),
    )
    verify: bool = _option(
        True,
        "write without checking against PyTorch",
        group="calibration",
        flag="--no-verify",
        action="store_false",
    )
    verify_split: str = _option(
        "val", "labelled split to verify on with --calib-dataset", group="calibration"
    )
    verify_count: int = _option(8, "verification images (default 8)", group="calibration", type=int)
    out: str | None = _cli(None)
    force: bool = _option(
        False,
        "replace an existing output that was exported with other options (size, precision, target, dynamic axes, "
        "argmax, fused preprocessing); without it such a file is kept and the export stops",
        group="calibration",
        action="store_true",
    )

    def size(self, meta: ModelMeta) -> tuple[int, int]:
        """(H, W) of the export: the options', else the checkpoint's input size."""
        h = self.height if self.height is not None else int(meta.input_size[0])
        w = self.width if self.width is not None else int(meta.input_size[1])
        return h, w


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(ExportOptions) if f.metadata.get("cli", True)}


def option_flag(name: str) -> str:
    """The flag of option ``name`` (``calib_count`` -> ``--calib-count``, ``slim`` -> ``--no-slim``)."""
    return _fields()[name].metadata["flag"] or "--" + name.replace("_", "-")


def option_flags() -> dict[str, str]:
    """Every option's flag -> its field name."""
    return {option_flag(name): name for name in _fields()}


def add_option_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the options ``names`` (fields of :class:`ExportOptions`) to ``parser``, grouped as in :data:`GROUPS`."""
    fields, wanted = _fields(), set(names)
    unknown = wanted - set(fields)
    if unknown:
        raise ValueError(f"not export options: {sorted(unknown)}")
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for name, f in fields.items():  # in the dataclass's order
        if name not in wanted:
            continue
        kw = dict(f.metadata["argparse"])
        if kw.get("action") not in ("store_true", "store_false"):
            kw.setdefault("default", f.default)
        else:
            kw["default"] = f.default
        groups[f.metadata["group"]].add_argument(option_flag(name), dest=name, help=f.metadata["help"], **kw)
