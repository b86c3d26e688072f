"""INT8 files of a quantization-aware trained checkpoint: its own ranges, no calibration.

A checkpoint written by a QAD run (`segkd.distill.qat`) carries the range of every tensor its INT8 form
quantizes. Its export builds the same graph as post-training INT8 (`segkd.export.quantize`: same placement, same
settings, so ``export/to_trt.py`` and the runners take it unchanged) from those ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from segkd.distill.qat import QuantizationError, QuantSpec, conv_input_tensors
from segkd.export.quantize import pre_process, quantize_settings, quantize_with_ranges, quantized_tensors

__all__ = ["qad_extra", "quantize_qad"]


def quantize_qad(
    graph: Path,
    dst: Path,
    spec: QuantSpec,
    model: nn.Module,
    size: tuple[int, int],
    log: Callable[[str], None] = print,
) -> None:
    """Quantize the float graph ``graph`` of ``model`` into ``dst`` with the ranges of its QAD run.

    Each Conv's input takes the range its module trained with, whatever the tensor is called in this graph
    (fused preprocessing renames the first one); the other tensors of the form (the ``cpu`` form also quantizes
    Add, Concat, Resize and pooling) keep the ranges calibrated at the start of the run.

    Raises:
        QuantizationError: the graph has a tensor to quantize the run has no range for.
    """
    pre = dst.with_name(dst.stem + "-pre.onnx")
    pre_process(graph, pre, log)
    ranges = {name: (float(lo), float(hi)) for name, (lo, hi) in spec.ranges.items()}
    for module, tensor in conv_input_tensors(model, graph, size).items():
        if module in spec.conv_inputs:
            ranges[tensor] = spec.conv_range(module)
    op_types = quantize_settings("minmax", spec.target)["op_types_to_quantize"]
    missing = sorted(quantized_tensors(pre, op_types) - set(ranges))
    if missing:
        raise QuantizationError(
            f"the quantization-aware run recorded no range for {len(missing)} tensors of this graph "
            f"({', '.join(missing[:3])}); it calibrated the graph of the default export options: drop --exporter/"
            "--no-slim/--opset, or export --precision fp32 and quantize it after training (post-training INT8)"
        )
    log(f"INT8 for {spec.target} with the ranges of its quantization-aware training ({len(ranges)} tensors; "
        "no calibration)")  # fmt: skip
    quantize_with_ranges(pre, dst, ranges, target=spec.target)


def qad_extra(spec: QuantSpec) -> dict[str, str]:
    """What the metadata of a QAD INT8 file says about how it was quantized."""
    return {
        "quantized_by": "qad",
        "qad_source": Path(spec.source).name,
        "qad_source_sha256": spec.source_sha256,
        "calibration": f"{spec.method} on {spec.images} training images at the start of QAD",
    }
