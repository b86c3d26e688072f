"""INT8 by explicit quantization: Q/DQ nodes calibrated with ONNX Runtime, in the form TensorRT builds from.

Settings (see ``DEPLOY.md``): ``quant_pre_process``, then ``quantize_static`` with QDQ format, per-channel
symmetric INT8 weights, per-tensor symmetric INT8 activations (all zero points 0), float biases
(``QuantizeBias=False``: TensorRT rejects INT32 bias DequantizeLinear) and only Conv/Gemm quantized, so
that no Q/DQ pair lands on Relu, Concat or Resize.

Q/DQ go on the *inputs* of Conv/Gemm only, not on their outputs (``OpTypesToExcludeOutputQuantization``): the
placement TensorRT documents for explicit quantization (it fuses Conv+Relu and propagates the scales itself). A
Q/DQ on every Conv output rounds each activation twice (pre-Relu output, then the next Conv's input) and, measured
on DeepLabV3-R18 at 64x128 with 2 MinMax images, took argmax agreement with FP32 from 97.1 % down to 79.7 %
(mean |logit error| 0.0017 -> 0.0156; 55 activation quantizers instead of 24).

Entropy calibration is run here rather than inside ``quantize_static``: ONNX Runtime's entropy calibrator
defaults to as many histogram bins as quantized bins (128/128), which leaves exactly one candidate threshold
and makes "entropy" identical to min-max. The ranges are computed with :data:`ENTROPY_BINS` bins and handed to
``quantize_static`` through its calibration cache.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkd.export.formats import CALIB_METHODS
from segkd.infer.fileio import scratch_cwd, work_dir

__all__ = [
    "CALIB_GROUP_MB",
    "CPU_OP_TYPES",
    "ENTROPY_BINS",
    "Ranges",
    "calibrate_ranges",
    "calibrated_tensor_bytes",
    "pre_process",
    "quantize_with_ranges",
    "quantized_tensors",
    "read_ranges",
    "tensor_groups",
    "QUANT_OP_TYPES",
    "quantize_int8",
    "quantize_settings",
]

# MatMul stays float: in the registered models the only MatMuls are the PSP head's pooling matrices
# (``P_h @ x @ P_w^T``, fixed averaging weights, not learnt), which INT8 would turn into biased averages of
# already-quantized features for no speed-up worth having. A model with learnt MatMuls (attention, linear
# layers) would add it back together with a rule that leaves such constant matrices out.
QUANT_OP_TYPES = ["Conv", "Gemm"]
# The ``cpu`` target also quantizes the ops between convolutions, so that ONNX Runtime keeps activations in uint8
# from one QLinearConv to the next instead of dequantizing around each Add/Concat/Resize/pool (chosen by
# measurement: docs/quantization.md).
CPU_OP_TYPES = [*QUANT_OP_TYPES, "Add", "Concat", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool"]
# Histogram bins of the entropy search (TensorRT's own calibrator uses 2048; the search is pure Python in ONNX
# Runtime and costs ~0.05 s per tensor at 512 bins, ~0.4 s at 2048).
ENTROPY_BINS = 512
# The share of each activation's histogram the percentile method keeps: 99.99, chosen with the default method by
# measurement on the demo students (docs/quantization.md; ONNX Runtime's own default is 99.999).
DEFAULT_PERCENTILE = 99.99
# Megabytes of calibrated tensors per batch that one calibration pass holds (histogram methods); more tensors
# than that are calibrated in several passes over the images (see `_calibrate`).
CALIB_GROUP_MB = 512.0


def _tensorrt_settings() -> dict[str, Any]:
    """s8 symmetric Q/DQ on Conv/Gemm inputs: the explicit-quantization graph TensorRT builds (DEPLOY.md)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": list(QUANT_OP_TYPES),
        "extra_options": {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": list(QUANT_OP_TYPES),
        },
    }


def _cpu_settings(fmt: str = "qoperator", op_types: list[str] | None = None) -> dict[str, Any]:
    """u8 asymmetric activations, s8 symmetric per-channel weights, INT32 biases: ONNX Runtime's fast x86 form.

    ONNX Runtime's integer GEMM kernels on x86 are written for u8 activations x s8 weights; with s8 activations
    (the TensorRT form) they fall back to a slow path. ``fmt`` is ``qdq`` or ``qoperator`` (QLinearConv,
    QLinearAdd, ... nodes). QOperator with Add/Concat/Resize/pooling quantized is the default: on an AVX2-only AMD
    EPYC at 512x1024, one thread, it measured fastest or level (docs/quantization.md).
    """
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[fmt],
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": list(op_types or CPU_OP_TYPES),
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True},
    }


# --target -> quantize_static settings (the calibration method is added by quantize_settings).
_TARGETS: dict[str, Callable[[], dict[str, Any]]] = {"tensorrt": _tensorrt_settings, "cpu": _cpu_settings}


def quantize_settings(method: str, target: str = "tensorrt") -> dict[str, Any]:
    """Keyword arguments of ``quantize_static`` for a ``--calib-method`` and ``--target`` value."""
    from onnxruntime.quantization import CalibrationMethod

    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if target not in _TARGETS:
        raise ValueError(f"unknown INT8 target {target!r}; choose one of {', '.join(_TARGETS)}")
    return {**_TARGETS[target](), "calibrate_method": getattr(CalibrationMethod, CALIB_METHODS[method])}


def pre_process(src: Path, dst: Path, log: Callable[[str], None] = print) -> None:
    """Shape inference + graph optimisation before quantization (symbolic shapes first, plain ONNX if that fails)."""
    from onnxruntime.quantization import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    try:
        with scratch_cwd("preprocess"):  # where a failed symbolic shape inference saves its debug model
            quant_pre_process(str(src), str(dst))
    except Exception as e:  # the symbolic shape inference gives up on some graphs; ONNX's own suffices here
        log(f"symbolic shape inference failed ({type(e).__name__}); pre-processing with ONNX shape inference")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


class _OneBatch:
    """A calibration reader that yields one batch of another reader, then stops (see `_calibrate`)."""

    def __init__(self, item: dict[str, Any]) -> None:
        self._item: dict[str, Any] | None = item

    def get_next(self) -> dict[str, Any] | None:
        item, self._item = self._item, None
        return item


def _calibrator(model: Path, op_types: list[str], method: str, percentile: float, augmented: Path) -> Any:
    """An ONNX Runtime calibrator for ``method``, not yet augmented (the same settings as ``create_calibrator``)."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    if method == "minmax":
        return MinMaxCalibrater(str(model), op_types, str(augmented))
    if method == "entropy":
        return EntropyCalibrater(
            str(model), op_types, str(augmented), num_bins=ENTROPY_BINS, num_quantized_bins=128
        )
    # ONNX Runtime's percentile default: a symmetric histogram of |x| over 2048 bins.
    return PercentileCalibrater(
        str(model), op_types, str(augmented), symmetric=True, num_bins=2048, percentile=float(percentile)
    )


def calibrated_tensor_bytes(
    model: Path, op_types: list[str], input_shape: Sequence[int]
) -> dict[str, int | None]:
    """Bytes of one batch of each tensor the calibration records, from shape inference at ``input_shape``.

    A tensor whose shape does not resolve to numbers maps to None.
    """
    import onnx
    from onnxruntime.quantization.calibrate import CalibraterBase

    m = onnx.load(str(model))
    graph_input = next(i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer})
    for dim, size in zip(graph_input.type.tensor_type.shape.dim, input_shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    probe = CalibraterBase.__new__(CalibraterBase)
    probe.op_types_to_calibrate = op_types
    tensors, infos = probe.select_tensors_to_calibrate(m)
    itemsize = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2}
    out: dict[str, int | None] = {}
    for name in sorted(tensors):
        t = infos[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[name] = None if None in dims or not dims else int(np.prod(dims)) * itemsize[t.elem_type]
    return out


def quantized_tensors(model: Path, op_types: list[str]) -> set[str]:
    """The activation tensors of ``model`` that quantizing ``op_types`` needs a range for."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibraterBase

    probe = CalibraterBase.__new__(CalibraterBase)
    probe.op_types_to_calibrate = op_types
    tensors, _ = probe.select_tensors_to_calibrate(onnx.load(str(model)))
    return set(tensors)


def tensor_groups(sizes: dict[str, int | None], budget: int) -> list[set[str]]:
    """Split the calibrated tensors into groups of at most ``budget`` bytes per batch (one pass each).

    Tensors are packed largest first into the first group with room (first-fit decreasing); a tensor larger than
    the budget, or of unknown size, gets a group of its own.
    """
    groups: list[tuple[int, set[str]]] = []
    known = sorted(((b, n) for n, b in sizes.items() if b is not None), key=lambda t: (-t[0], t[1]))
    for size, name in known:
        for i, (used, members) in enumerate(groups):
            if used + size <= budget:
                members.add(name)
                groups[i] = (used + size, members)
                break
        else:
            groups.append((size, {name}))
    return [members for _, members in groups] + [{n} for n, b in sorted(sizes.items()) if b is None]


def _only(
    select: Callable[[Any], tuple[set[str], dict]], group: set[str]
) -> Callable[[Any], tuple[set, dict]]:
    """A calibrator's tensor selection narrowed to ``group``."""

    def narrowed(model: Any) -> tuple[set[str], dict]:
        tensors, infos = select(model)
        return tensors & group, infos

    return narrowed


def _calibrate(
    model: Path,
    reader: Any,
    method: str,
    target: str,
    cache: Path,
    workdir: Path,
    *,
    progress: bool,
    percentile: float = DEFAULT_PERCENTILE,
    group_mb: float = CALIB_GROUP_MB,
    log: Callable[[str], None] = print,
) -> int:
    """Collect activation ranges over ``reader`` and save them as an ONNX Runtime calibration cache.

    ONNX Runtime's histogram calibrators turn every calibrated tensor into a graph output and keep each batch's
    outputs until the end of a ``collect_data`` call; ranges and histograms merge across calls. So each batch
    goes in its own call, and the tensors are split into groups of at most ``group_mb`` megabytes per batch,
    each group calibrated in its own pass over the images: resident memory is bounded by one group's tensors
    plus the histograms, whatever the image count and resolution. MinMax reduces every tensor inside the graph
    and needs a single pass. Returns the number of passes.
    """
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    from tqdm import tqdm

    op_types = quantize_settings(method, target)["op_types_to_quantize"]
    first = reader.get_next()
    if first is None:
        raise ValueError("the calibration reader yielded no batch")
    if method == "minmax":
        groups: list[set[str] | None] = [None]
    else:
        shape = next(iter(first.values())).shape
        sizes = calibrated_tensor_bytes(model, op_types, shape)
        groups = list(tensor_groups(sizes, int(group_mb * 2**20)))
        if len(groups) > 1:
            total = sum(b or 0 for b in sizes.values()) / 2**20
            log(f"calibrating {len(sizes)} tensors ({total:.0f} MB per batch) in {len(groups)} passes of at most "
                f"{group_mb:g} MB")  # fmt: skip
    batches = len(reader) if hasattr(reader, "__len__") else None
    bar = tqdm(total=None if batches is None else batches * len(groups), desc="calibration", unit="batch",
               disable=not progress, leave=False)  # fmt: skip
    data: dict[str, Any] = {}
    calibration_method = None
    for i, group in enumerate(groups):
        calibrator = _calibrator(model, op_types, method, percentile, workdir / "augmented.onnx")
        if group is not None:
            select = calibrator.select_tensors_to_calibrate
            calibrator.select_tensors_to_calibrate = _only(select, group)
        calibrator.augment_graph()
        if group is not None:
            del (
                calibrator.select_tensors_to_calibrate
            )  # the narrowing refers back to the calibrator: no cycle
        calibrator.create_inference_session()
        if len(groups) > 1:
            bar.set_description(f"calibration pass {i + 1}/{len(groups)}")
        if i > 0:
            reader.rewind()
            first = reader.get_next()
        item = first
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their own progress
            while item is not None:
                calibrator.collect_data(_OneBatch(item))
                bar.update(1)
                item = reader.get_next()
            ranges = calibrator.compute_data()
        data.update(ranges.data)
        calibration_method = ranges.calibration_method
        calibrator.infer_session = calibrator.collector = None  # this pass's session and histograms go now
        del calibrator, ranges
    bar.close()
    save_tensors_data(TensorsData(calibration_method, data), cache)
    return len(groups)


Ranges = dict[str, tuple[float, float]]
"""Activation ranges by ONNX tensor name: (lowest, highest) in float32 values, what `quantize_with_ranges` takes."""


def read_ranges(cache: Path) -> Ranges:
    """The (lowest, highest) of each tensor in an ONNX Runtime calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(cache).data

    def value(v: Any) -> float:
        return float(np.asarray(v, dtype=np.float32).reshape(-1)[0])

    return {name: (value(t.range_value[0]), value(t.range_value[1])) for name, t in sorted(data.items())}


def calibrate_ranges(
    pre: str | os.PathLike[str],
    reader: Any,
    *,
    method: str = "percentile",
    target: str = "tensorrt",
    percentile: float = DEFAULT_PERCENTILE,
    group_mb: float = CALIB_GROUP_MB,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Ranges:
    """The activation ranges of the pre-processed graph ``pre`` (see `pre_process`) over ``reader``'s images.

    The ranges cover every tensor the ``target`` form quantizes; `quantize_with_ranges` turns them into the
    INT8 graph, as many times as needed (with other layers left in float) without calibrating again.
    """
    quantize_settings(method, target)  # unknown method/target: one clear error before any work
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if not group_mb > 0:
        raise ValueError(f"group_mb must be > 0, got {group_mb}")
    with work_dir("calib") as work:
        cache = work / "ranges.json"
        _calibrate(Path(pre), reader, method, target, cache, work, progress=progress, percentile=percentile,
                   group_mb=group_mb, log=log)  # fmt: skip
        return read_ranges(cache)


def quantize_with_ranges(
    pre: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ranges: Ranges,
    *,
    target: str = "tensorrt",
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
) -> None:
    """Write the INT8 graph of the pre-processed float graph ``pre`` for ``target`` with the given ranges.

    ``nodes_to_exclude`` names nodes of ``pre`` that stay in float; ``nodes_to_quantize``, when given, names the
    only nodes that are quantized (the rest stay float), each even where its input is float (ONNX Runtime's
    ``ForceQuantizeNoInputCheck``: a Resize or pooling quantized alone would otherwise stay float). Every tensor
    the form quantizes needs a range; weights are quantized from their own values (per channel, symmetric).
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    settings = quantize_settings("minmax", target)
    if nodes_to_quantize is not None:
        settings["extra_options"] = {**settings["extra_options"], "ForceQuantizeNoInputCheck": True}
    data = {name: (np.array(lo, np.float32), np.array(hi, np.float32)) for name, (lo, hi) in ranges.items()}
    with work_dir("int8") as work:
        cache = work / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(dst),
                None,
                calibration_cache_path=str(cache),
                calibration_providers=["CPUExecutionProvider"],
                nodes_to_exclude=list(nodes_to_exclude),
                nodes_to_quantize=None if nodes_to_quantize is None else list(nodes_to_quantize),
                **settings,
            )


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    reader: Any,
    *,
    method: str = "percentile",
    target: str = "tensorrt",
    percentile: float = DEFAULT_PERCENTILE,
    group_mb: float = CALIB_GROUP_MB,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Ranges:
    """Quantize the float32 ONNX graph ``src`` into the INT8 graph ``dst`` for ``target``; returns the ranges.

    Args:
        reader: calibration data (``get_next() -> {input name: array} | None``), e.g.
            :class:`segkd.export.calib.CalibrationReader`.
        method: ``entropy``, ``minmax`` or ``percentile``.
        target: ``tensorrt`` (s8 symmetric Q/DQ) or ``cpu`` (u8 activations, for ONNX Runtime on x86).
        percentile: with ``method="percentile"``, the percent of each activation histogram kept (the range
            clips the rest), e.g. 99.99.
        progress: show a progress bar over the calibration batches (on stderr).
    """
    quantize_settings(method, target)
    with work_dir("int8") as work:
        pre = work / "pre.onnx"
        pre_process(Path(src), pre, log)
        ranges = calibrate_ranges(pre, reader, method=method, target=target, percentile=percentile,
                                  group_mb=group_mb, progress=progress, log=log)  # fmt: skip
        quantize_with_ranges(pre, dst, ranges, target=target)
    return ranges
