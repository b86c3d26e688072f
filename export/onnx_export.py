"""PyTorch model -> ONNX graph (float32 or float16), with optional in-graph preprocessing and argmax.

The exported graph is ``DeployModule``: the segmentation model, optionally preceded by the input normalisation
(raw BGR uint8 NHWC frames in, so a camera frame goes in without any host-side work) and followed by an argmax
(a label map out: K times less to copy back than logits). Everything a runner needs to know about the file goes
into ``metadata_props`` (`write_metadata`), readable back with `read_metadata`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from segkd.distill.load import half_safe
from segkd.export.formats import LABEL_DTYPES
from segkd.infer.meta import ModelMeta

__all__ = [
    "DYNAMIC_CHOICES",
    "EXPORTERS",
    "other_size",
    "size_multiple",
    "DeployModule",
    "ExportError",
    "check_dynamic_sizes",
    "read_metadata",
    "resolve_exporter",
    "torch_to_onnx",
    "write_metadata",
]

# --dynamic value -> dynamic axes of a normalised NCHW input (an NHWC input moves H/W to axes 1 and 2).
DYNAMIC_CHOICES = {"none": (), "batch": ("batch",), "all": ("batch", "height", "width")}
EXPORTERS = ("auto", "dynamo", "torchscript")
# Where ONNX's 2 GiB protobuf limit starts to bite (weights + graph).
_MAX_SINGLE_FILE = 2**31 - 2**24
_TORCH_LABEL_DTYPES = {"uint8": torch.uint8, "int32": torch.int32}


class ExportError(RuntimeError):
    """The model cannot be exported as asked (the message says why and what to change)."""


class DeployModule(nn.Module):
    """What is exported: [normalise] -> model -> [argmax].

    Args:
        model: segmentation model, ``model(x) -> (N, K, H, W)`` logits at input resolution.
        meta: normalisation (mean/std on 0..255, channel order) used when ``fuse_preprocess``.
        fuse_preprocess: input is raw BGR uint8 (N, H, W, 3); normalisation runs in float32 inside the graph.
        argmax: output the (N, H, W) label map in ``label_dtype`` instead of logits.
        dtype: float dtype the model runs in (its weights must already be in it).
    """

    def __init__(
        self,
        model: nn.Module,
        meta: ModelMeta,
        *,
        fuse_preprocess: bool = False,
        argmax: bool = False,
        label_dtype: str = "uint8",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.model = model
        self.fuse_preprocess = fuse_preprocess
        self.argmax = argmax
        self.label_dtype = _TORCH_LABEL_DTYPES[label_dtype]
        self.dtype = dtype
        # BGR frames -> the network's channel order; the constants stay float32 whatever ``dtype`` is.
        order = [2, 1, 0] if meta.channel_order == "RGB" else [0, 1, 2]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(meta.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(meta.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.fuse_preprocess:
            # Cast first: TensorRT lets only a Cast consume a uint8 network input.
            x = x.float().permute(0, 3, 1, 2)  # (N, 3, H, W) BGR, 0..255
            x = x.index_select(1, self.order)  # (N, 3, H, W) in the network's channel order
            x = ((x - self.mean) * self.inv_std).to(self.dtype)
        logits = self.model(x)  # (N, K, H, W)
        if self.argmax:
            return logits.argmax(dim=1).to(self.label_dtype)  # (N, H, W)
        return logits


def resolve_exporter(name: str) -> str:
    """``auto`` -> ``dynamo`` when onnxscript (which torch's dynamo exporter needs) imports, else ``torchscript``."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown exporter {name!r}; choose one of {', '.join(EXPORTERS)}")
    if name != "auto":
        return name
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return "torchscript"
    return "dynamo"


def _dynamic_axes(dynamic: str, fused: bool) -> dict[str, int]:
    """Axis name -> input axis index for a ``--dynamic`` value."""
    pos = {"batch": 0, "height": 1 if fused else 2, "width": 2 if fused else 3}
    return {a: pos[a] for a in DYNAMIC_CHOICES[dynamic]}


def _export_dynamo(
    module: nn.Module, x: Tensor, path: Path, axes: dict[str, int], out_name: str, opset: int
) -> None:
    dims = {
        i: torch.export.Dim(a, min=1 if a == "batch" else 32, max=4096 if a == "batch" else 16384)
        for a, i in axes.items()
    }
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["input"],
            output_names=[out_name],
            opset_version=opset,
            dynamic_shapes=(dims,) if dims else None,
            external_data=False,
            dynamo=True,
        )


def _export_torchscript(
    module: nn.Module, x: Tensor, path: Path, axes: dict[str, int], out_name: str, opset: int
) -> None:
    out_axes = {i: a for a, i in axes.items() if a == "batch"}
    if "height" in axes:  # the output is (N, K, H, W) or (N, H, W)
        h = 1 if out_name == "labels" else 2
        out_axes.update({h: "height", h + 1: "width"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of this exporter, tracer notes on shape arithmetic
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["input"],
            output_names=[out_name],
            opset_version=opset,
            dynamic_axes={"input": {i: a for a, i in axes.items()}, out_name: out_axes} if axes else None,
            dynamo=False,
        )


_EXPORT_FNS: dict[str, Callable[..., None]] = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _slim(path: Path, log: Callable[[str], None]) -> None:
    """Fold constants and drop dead nodes with onnxslim when it is installed (the file is verified after)."""
    try:
        import onnxslim
    except ImportError:
        log("onnxslim not installed: graph left as exported (pip install onnxslim to simplify it)")
        return
    model = onnx.load(str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
    except Exception as e:  # a simplifier failure must not cost the export: keep the exported graph
        log(f"onnxslim failed ({type(e).__name__}: {str(e)[:200]}); graph left as exported")
        return
    onnx.save(slim, str(path))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what torch's exporters print about themselves on every export (torchvision ops it skips, a pytree
    deprecation): noise a user cannot act on. Their errors still raise."""
    names = ("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def torch_to_onnx(
    model: nn.Module,
    meta: ModelMeta,
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int],
    batch: int = 1,
    dtype: str = "float32",
    dynamic: str = "none",
    fuse_preprocess: bool = False,
    argmax: bool = False,
    label_dtype: str = "uint8",
    opset: int = 18,
    exporter: str = "auto",
    slim: bool = True,
    log: Callable[[str], None] = print,
) -> str:
    """Export ``model`` (float32, eval mode) to a single-file ONNX graph at ``path``; returns the exporter used.

    Args:
        size: (H, W) of the example input; the graph's fixed size unless ``dynamic`` is ``all``.
        batch: example (and, unless dynamic, fixed) batch size.
        dtype: ``float32``, or ``float16`` to export a copy of the model in half precision (fp16 graph,
            fp16 normalised input and fp16 logits).
        dynamic: ``none``, ``batch`` or ``all`` (batch, height and width).
        label_dtype: ``uint8`` or ``int32`` label map when ``argmax``.

    Raises:
        ExportError: the exporter failed, or the graph exceeds the single-file 2 GiB limit.
    """
    path = Path(path)
    exporter = resolve_exporter(exporter)
    tdtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    net = half_safe(model).to(tdtype) if tdtype != torch.float32 else model
    module = DeployModule(
        net, meta, fuse_preprocess=fuse_preprocess, argmax=argmax, label_dtype=label_dtype, dtype=tdtype
    ).eval()
    h, w = size
    x = (
        torch.zeros(batch, h, w, 3, dtype=torch.uint8)
        if fuse_preprocess
        else torch.zeros(batch, 3, h, w, dtype=tdtype)
    )
    out_name = "labels" if argmax else "logits"
    shape = "x".join(map(str, x.shape)) + (f", dynamic {dynamic}" if dynamic != "none" else "")
    log(
        f"exporting {meta.arch.get('name', 'model')} ({dtype}, input {shape}) with torch's {exporter} exporter ..."
    )
    try:
        with torch.no_grad(), _quiet_exporter():
            _EXPORT_FNS[exporter](module, x, path, _dynamic_axes(dynamic, fuse_preprocess), out_name, opset)
    except Exception as e:
        hint = " (try --exporter torchscript)" if exporter == "dynamo" else " (try --exporter dynamo)"
        if "adaptive_avg_pool2d" in str(e):  # UPerNet's pyramid pooling at a size its bins do not divide
            hint = " (the dynamo exporter handles adaptive pooling at any size: --exporter dynamo)"
        raise ExportError(f"{exporter} ONNX export failed: {type(e).__name__}: {str(e)[:500]}{hint}") from e
    if path.stat().st_size > _MAX_SINGLE_FILE:
        raise ExportError(
            f"the graph is {path.stat().st_size / 2**30:.1f} GiB: over ONNX's 2 GiB single-file limit"
        )
    if slim:
        _slim(path, log)
    return exporter


def size_multiple(model: nn.Module) -> int:
    """What the model's input heights and widths must be multiples of (its ``size_multiple`` attribute; else 1).

    A network that aligns two branches by a fixed upsampling factor (BiSeNetV2: 1/32 upsampled 4x onto 1/8) is
    only correct at such sizes; its dynamic graph runs at those and fails (ONNX Runtime: a broadcast error) at
    others.
    """
    return int(getattr(model, "size_multiple", 1))


def other_size(size: tuple[int, int], multiple: int = 1) -> tuple[int, int]:
    """A height and width unlike ``size`` in both dimensions (odd ones when ``multiple`` is 1), to check a dynamic
    graph at; with ``multiple`` > 1, the next multiples of it above ``size``."""
    h, w = size
    if multiple == 1:
        return h * 3 // 4 + 5, w * 5 // 4 + 3
    return (h // multiple + 1) * multiple, (w // multiple + 2) * multiple


def check_dynamic_sizes(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: ModelMeta,
    *,
    size: tuple[int, int],
    dynamic: str,
    fuse_preprocess: bool,
    rtol: float,
) -> None:
    """Run a dynamic graph at another batch/size than it was traced at and compare with PyTorch.

    A model whose forward turned a shape into a constant would pass verification at the export size and be
    silently wrong at any other; this check makes such an export fail.

    Raises:
        ExportError: ONNX Runtime fails at the other size, or its logits differ beyond ``rtol`` of their range.
    """
    from segkd.export.calib import network_input, synthetic_samples
    from segkd.infer.meta import preprocess
    from segkd.infer.runtime.ort_runner import ORT_DTYPES
    from segkd.infer.runtime.ort_session import cpu_session

    n = 2 if "batch" in DYNAMIC_CHOICES[dynamic] else 1
    hw = other_size(size, size_multiple(model)) if "height" in DYNAMIC_CHOICES[dynamic] else size
    images = [s.image for s in synthetic_samples(n, hw, seed=1)]
    sess = cpu_session(path)
    inp = sess.get_inputs()[0]
    dtype = "float32" if fuse_preprocess else np.dtype(ORT_DTYPES[inp.type]).name
    x = network_input(images, meta, fused=fuse_preprocess, dtype=dtype)
    try:
        got = sess.run(None, {inp.name: x})[0]
    except Exception as e:
        raise ExportError(
            f"the dynamic graph fails at batch {n}, {hw[0]}x{hw[1]} ({str(e).splitlines()[0][:300]}); this model "
            "does not export with dynamic shapes: export at a fixed size (drop --dynamic or use --dynamic batch)"
        ) from e
    with torch.no_grad():
        ref = model(torch.from_numpy(preprocess(images, meta))).numpy()  # (n, K, H', W')
    if got.shape[:1] + got.shape[-2:] != ref.shape[:1] + ref.shape[-2:]:
        raise ExportError(
            f"the dynamic graph returns shape {got.shape} for input {x.shape}; expected {ref.shape}"
        )
    if got.dtype.kind == "f":
        err, scale = float(np.abs(got.astype(np.float32) - ref).max()), float(np.abs(ref).max()) or 1.0
        wrong = (
            f"max |diff| {err:.3g} against PyTorch (logits up to {scale:.3g})" if err > rtol * scale else ""
        )
    else:
        agree = float((got == ref.argmax(1)).mean())
        wrong = f"argmax agreement {100 * agree:.1f}% with PyTorch" if agree < 0.95 else ""
    if wrong:
        raise ExportError(
            f"the dynamic graph is wrong at batch {n}, {hw[0]}x{hw[1]}: {wrong}; the model specialised a shape "
            "while tracing: export at a fixed size (drop --dynamic or use --dynamic batch)"
        )


def write_metadata(src: str | os.PathLike[str], dst: str | os.PathLike[str], meta: ModelMeta) -> None:
    """Copy the graph at ``src`` to ``dst`` with ``meta.to_props()`` as its ``metadata_props`` (replacing any)."""
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = f"{meta.arch.get('name', 'model')} segmentation, {meta.num_classes} classes (segkd)"
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def read_metadata(path: str | os.PathLike[str]) -> ModelMeta:
    """The `ModelMeta` stored in an ONNX file's ``metadata_props``.

    Raises:
        ValueError: not an ONNX file, or one without toolkit metadata.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a damaged file, or not ONNX at all
        raise ValueError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it") from e
    return ModelMeta.from_props({p.key: p.value for p in model.metadata_props})


def label_dtype_fits(label_dtype: str, num_classes: int) -> bool:
    """Whether ``num_classes`` ids fit the label dtype."""
    return num_classes <= LABEL_DTYPES[label_dtype]
