"""The one table of model file formats: it drives the runtimes, the benchmark, the exporters' and commands' help.

    fmt = format_for_path("best.int8.onnx")        # Format(name="onnx", suffixes=(".onnx",), ...)
    fmt.load_runner()                               # the Runner class, imported on demand

| name     | suffixes          | written by                      | runner                      | precisions       |
|----------|-------------------|---------------------------------|-----------------------------|------------------|
| pytorch  | .pth .pt          | python distill/train.py CONFIG  | segkd.distill.runner.TorchRunner  | fp32             |
| onnx     | .onnx             | python export/to_onnx.py CKPT   | segkd.infer.runtime.OrtRunner     | fp32 fp16 int8   |
| tensorrt | .engine .plan     | python export/to_trt.py CKPT    | segkd.infer.runtime.TrtRunner     | fp32 fp16 int8   |
| openvino | .xml (+ .bin)     | python export/to_openvino.py    | segkd.infer.runtime.OvRunner      | fp32 fp16 int8   |

The deploy runtime ships the ONNX and TensorRT rows. Other installed packages add rows through the
``segkd.formats`` entry point group (pyproject.toml ``[project.entry-points."segkd.formats"]``; each entry names a
`Format`): that is how the training side contributes ``.pth`` without the runtime importing it. A new format is one
runner module and one row, here or in such an entry point. Torch-free; nothing heavy is imported.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from segkd.infer.registry import Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "Format",
    "format_for_path",
    "formats",
    "get_format",
    "register_format",
    "suffix_help",
    "suffixes",
    "unregister_format",
]

ENTRY_POINT_GROUP = "segkd.formats"
_CPU_TIMING = "host arrays, perf_counter"


@dataclass(frozen=True)
class Format:
    """One row of the table.

    Attributes:
        name: what the runner's ``format`` attribute and the benchmark's Format column say.
        suffixes: file suffixes (lower case, with the dot) the format is recognised by.
        runner: the `segkd.infer.runtime.base.Runner` subclass, or ``"module:attribute"`` naming it (imported only when
            a file of this format is loaded, so that listing formats imports no runtime library).
        exporter: the command that writes such a file (help texts and error messages).
        gpu_timing: how the benchmark times it on a GPU (on CPU every format is timed with host arrays).
        precisions: what such a file can compute in.
        color: BGR colour of its points in the benchmark plot.
        description: a few words for ``--help``.
    """

    name: str
    suffixes: tuple[str, ...]
    runner: Any
    exporter: str
    gpu_timing: str
    precisions: tuple[str, ...]
    color: tuple[int, int, int]
    description: str

    def load_runner(self) -> Any:
        """The runner class (importing its module when the row names it by string)."""
        if not isinstance(self.runner, str):
            return self.runner
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(module), attr)

    def timing(self, device: str) -> str:
        """How the benchmark's latency of this format on ``device`` is measured."""
        return _CPU_TIMING if device == "cpu" else self.gpu_timing


_FORMATS: Registry[Format] = Registry("model format")
_BUILTIN = (
    Format(
        name="onnx",
        suffixes=(".onnx",),
        runner="segkd.infer.runtime.ort_runner:OrtRunner",
        exporter="python export/to_onnx.py CKPT",
        gpu_timing="IO binding on device, perf_counter around synchronising run",
        precisions=("fp32", "fp16", "int8"),
        color=(14, 127, 255),
        description="ONNX Runtime",
    ),
    Format(
        name="tensorrt",
        suffixes=(".engine", ".plan"),
        runner="segkd.infer.runtime.trt_runner:TrtRunner",
        exporter="python export/to_trt.py CKPT",
        gpu_timing="device buffers, CUDA events",
        precisions=("fp32", "fp16", "int8"),
        color=(44, 160, 44),
        description="TensorRT engine with its .json sidecar",
    ),
    Format(
        name="openvino",
        suffixes=(".xml",),
        runner="segkd.infer.runtime.ov_runner:OvRunner",
        exporter="python export/to_openvino.py CKPT",
        gpu_timing="CPU only (the OpenVINO runner refuses --device cuda)",
        precisions=("fp32", "fp16", "int8"),
        color=(189, 103, 148),
        description="OpenVINO IR (.xml + .bin), CPU",
    ),
)
_plugins_loaded = False


def register_format(fmt: Format) -> Format:
    """Add a row; a name or suffix that is already taken raises."""
    taken = {s: f.name for f in _FORMATS.values() for s in f.suffixes}
    clash = [s for s in fmt.suffixes if s in taken]
    if clash:
        raise KeyError(f"format {fmt.name!r}: suffix {clash[0]} is already {taken[clash[0]]!r}'s")
    if any(s != s.lower() or not s.startswith(".") for s in fmt.suffixes):
        raise ValueError(
            f"format {fmt.name!r}: suffixes must be lower case and start with '.': {fmt.suffixes}"
        )
    return _FORMATS.register(fmt.name)(fmt)


def _load_plugins() -> None:
    """Register the rows installed packages declare under the ``segkd.formats`` entry point group, once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            fmt = ep.load()
        except Exception as e:  # a broken plugin must not take the other formats down
            warnings.warn(f"model format {ep.name!r} ({ep.value}) cannot be loaded: {e}", stacklevel=3)
            continue
        if fmt.name not in _FORMATS:
            register_format(fmt)


def formats() -> list[Format]:
    """Every row: the built-in ones, then those of installed packages, then any registered at run time."""
    _load_plugins()
    return _FORMATS.values()


def unregister_format(name: str) -> Format:
    """Remove a row registered at run time (tests)."""
    return _FORMATS.remove(name)


def get_format(name: str) -> Format:
    """The row called ``name`` (KeyError with the valid names and the closest one)."""
    _load_plugins()
    return _FORMATS.get(name)


def suffixes() -> dict[str, Format]:
    """Suffix -> row, over every row."""
    return {s: f for f in formats() for s in f.suffixes}


def format_for_path(path: str | os.PathLike[str]) -> Format:
    """The row whose suffix ``path`` has.

    Raises:
        KeyError: no row has that suffix (the message lists the known suffixes and the closest one).
    """
    by_suffix: Registry[Format] = Registry("model file suffix")
    for s, f in suffixes().items():
        by_suffix.register(s)(f)
    suffix = Path(path).suffix.lower()
    try:
        return by_suffix.get(suffix)
    except KeyError as e:
        raise KeyError(
            f"{e.args[0]}. A format not listed comes with the package that runs it (`segkd.formats` entry "
            "points): is the toolkit installed (pip install -e .)?"
        ) from None


def suffix_help() -> str:
    """``.pth/.pt (pytorch), .onnx (onnx), ...`` for the ``MODEL`` argument of every command."""
    return ", ".join(f"{'/'.join(f.suffixes)} ({f.name})" for f in formats())


for _fmt in _BUILTIN:
    register_format(_fmt)
