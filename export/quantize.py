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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.formats import CALIB_METHODS
from infer.fileio import work_dir

__all__ = ["CPU_OP_TYPES", "ENTROPY_BINS", "QUANT_OP_TYPES", "quantize_int8", "quantize_settings"]

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


def _pre_process(src: Path, dst: Path, log: Callable[[str], None]) -> None:
    """Shape inference + graph optimisation before quantization (symbolic shapes first, plain ONNX if that fails)."""
    from onnxruntime.quantization import quant_pre_process

    try:
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
) -> None:
    """Collect activation ranges over ``reader`` and save them as an ONNX Runtime calibration cache.

    ONNX Runtime's calibrators keep every intermediate tensor of every batch they are given until the end of a
    ``collect_data`` call; its min-max ranges and histograms merge across calls. So each batch goes in its own
    call: resident memory is one batch's tensors plus the histograms, whatever the number of images.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from tqdm import tqdm

    settings = quantize_settings(method, target)
    options: dict[str, Any] = {}
    if method == "entropy":
        options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128}
    elif method == "percentile":
        options = {"percentile": float(percentile)}
    calibrator = create_calibrator(
        str(model),
        settings["op_types_to_quantize"],
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=settings["calibrate_method"],
        providers=["CPUExecutionProvider"],
        extra_options=options,
    )
    total = len(reader) if hasattr(reader, "__len__") else None
    bar = tqdm(total=total, desc="calibration", unit="batch", disable=not progress, leave=False)
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their own progress
        while (item := reader.get_next()) is not None:
            calibrator.collect_data(_OneBatch(item))
            bar.update(1)
        bar.close()
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    reader: Any,
    *,
    method: str = "percentile",
    target: str = "tensorrt",
    percentile: float = DEFAULT_PERCENTILE,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """Quantize the float32 ONNX graph ``src`` into the INT8 graph ``dst`` for ``target``.

    Args:
        reader: calibration data (``get_next() -> {input name: array} | None``), e.g.
            :class:`export.calib.CalibrationReader`.
        method: ``entropy``, ``minmax`` or ``percentile``.
        target: ``tensorrt`` (s8 symmetric Q/DQ) or ``cpu`` (u8 activations, for ONNX Runtime on x86).
        percentile: with ``method="percentile"``, the percent of each activation histogram kept (the range
            clips the rest), e.g. 99.99.
        progress: show a progress bar over the calibration batches (on stderr).
    """
    from onnxruntime.quantization import quantize_static

    settings = quantize_settings(method, target)
    with work_dir("int8") as work:
        pre, cache = work / "pre.onnx", work / "ranges.json"
        _pre_process(Path(src), pre, log)
        if method == "percentile" and not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        _calibrate(pre, reader, method, target, cache, work, progress=progress, percentile=percentile)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(dst),
                None,
                calibration_cache_path=str(cache),
                calibration_providers=["CPUExecutionProvider"],
                **settings,
            )
