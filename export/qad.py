"""INT8 files of a quantization-aware trained checkpoint: its own ranges, no calibration.

A checkpoint written by a QAD run (`segkd.distill.qat`) carries the range of every tensor its INT8 form
quantizes. Its export builds the same graph as post-training INT8 (`segkd.export.quantize`: same placement, same
settings, so ``export/to_trt.py`` and the runners take it unchanged) from those ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from segkd.distill.qat import QuantizationError, QuantSpec, attach_fake_quant, conv_input_tensors
from segkd.export.quantize import pre_process, quantize_settings, quantize_with_ranges, quantized_tensors

__all__ = [
    "QAD_REFERENCE",
    "biases_on_int32_grid",
    "fake_quantized_reference",
    "qad_extra",
    "quantize_qad",
    "unsigned_nonnegative",
    "verification_reference",
]

QAD_REFERENCE = "PyTorch fake-INT8"  # how verification reports call the reference of a QAD file

# Operators whose output cannot be negative when their inputs cannot (or, for the first two, ever).
_NONNEGATIVE = {"Relu", "Sigmoid"}
_KEEPS_SIGN = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceMax",
    "Resize",
    "Concat",
    "Add",
    "Mul",
    "Identity",
    "Reshape",
    "Transpose",
    "Slice",
    "Split",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
}
_ALL_INPUTS = {"Concat", "Add", "Mul"}  # the others: the first input is the data, the rest shapes or indices


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
    if spec.target == "tensorrt":  # the cpu form's QLinearConv already carries its bias as INT32
        snapped = biases_on_int32_grid(dst, dst)
        log(f"{snapped} Conv biases on their INT32 grid, as the run trained them")


def biases_on_int32_grid(src: Path, dst: Path) -> int:
    """Write ``src`` (a ``tensorrt``-form Q/DQ graph) to ``dst`` with every quantized Conv's float bias rounded to
    the INT32 grid input scale x weight scale (per channel) that its quantization-aware run trained with. Returns
    the number of biases rewritten.

    ONNX Runtime's graph optimiser rounds such a bias to that grid when it runs the file and TensorRT adds it in
    float; on the grid, both compute the same numbers as the fake-quantized model (`segkd.distill.qat`
    ``bias_rounding``). The graph, its operators and its tensor names are unchanged.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def dq_scale(name: str) -> np.ndarray | None:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            return None
        return numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)

    snapped = 0
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        x_scale, w_scale = dq_scale(node.input[0]), dq_scale(node.input[1])
        if x_scale is None or w_scale is None or x_scale.size != 1:
            continue
        bias = numpy_helper.to_array(inits[node.input[2]])
        grid = (x_scale.reshape(()) * w_scale).astype(np.float32)  # float32, as ONNX Runtime multiplies
        steps = np.clip(np.round(bias.astype(np.float64) / grid.astype(np.float64)), -(2**31), 2**31 - 1)
        on_grid = (steps.astype(np.float32) * grid).astype(np.float32)
        name = node.input[2]
        if readers.get(name, 0) > 1:  # shared: this Conv gets its own copy
            name = f"{node.name or node.output[0]}_bias_int32_grid"
            node.input[2] = name
            graph.initializer.append(numpy_helper.from_array(on_grid, name))
        else:
            inits[name].CopyFrom(numpy_helper.from_array(on_grid, name))
        snapped += 1
    onnx.save(model, str(dst))
    return snapped


def unsigned_nonnegative(src: Path, dst: Path) -> int:
    """Write ``src`` (a ``tensorrt``-form Q/DQ graph) to ``dst`` with every s8 quantization of a tensor that
    cannot be negative (after a ReLU, a sigmoid, and what pools, resizes, concatenates or adds only those) as
    ``Clip(0, 127 * scale)`` followed by u8 quantization with zero point 0. Returns the number rewritten.

    The integers, and so the computed values, are the same (ONNX Runtime gives identical outputs); what changes is
    how OpenVINO reads the graph: it shifts an s8 activation to u8 by 128 before a pooling and pads with 0, not
    128, so a padded ``AveragePool`` (STDC's stride-2 blocks) reads -128 at the border, and a Concat of such tensors
    loses its scale. u8 with zero point 0 is OpenVINO's own form for these tensors.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nonneg: set[str] = set()

    def is_nonneg(name: str) -> bool:
        return name in nonneg or (name in inits and bool(np.all(numpy_helper.to_array(inits[name]) >= 0)))

    for node in graph.node:  # nodes are in topological order
        data = [i for i in (node.input if node.op_type in _ALL_INPUTS else node.input[:1]) if i]
        if (
            node.op_type in _NONNEGATIVE
            or (node.op_type in _KEEPS_SIGN and data and all(map(is_nonneg, data)))
            or node.op_type in {"QuantizeLinear", "DequantizeLinear"}
            and is_nonneg(node.input[0])
        ):
            nonneg.update(node.output)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    rewritten, nodes = 0, []
    for node in graph.node:
        zp = inits.get(node.input[2]) if node.op_type == "QuantizeLinear" and len(node.input) > 2 else None
        scale = inits.get(node.input[1]) if zp is not None else None
        if (
            zp is None or scale is None or zp.data_type != TensorProto.INT8 or node.input[0] not in nonneg
            or numpy_helper.to_array(zp).size != 1 or int(numpy_helper.to_array(zp)) != 0
            or numpy_helper.to_array(scale).size != 1
            or not all(r.op_type == "DequantizeLinear" for r in readers.get(node.output[0], []))
        ):  # fmt: skip
            nodes.append(node)
            continue
        base = node.output[0]
        hi = np.float32(float(numpy_helper.to_array(scale)) * 127.0)
        graph.initializer.extend([
            numpy_helper.from_array(np.array(0.0, np.float32), base + "_clip_lo"),
            numpy_helper.from_array(np.array(hi, np.float32), base + "_clip_hi"),
            numpy_helper.from_array(np.array(0, np.uint8), base + "_zero_point_u8"),
        ])  # fmt: skip
        nodes.append(helper.make_node("Clip", [node.input[0], base + "_clip_lo", base + "_clip_hi"],
                                      [base + "_clipped"], name=node.name + "_clip"))  # fmt: skip
        node.input[0], node.input[2] = base + "_clipped", base + "_zero_point_u8"
        nodes.append(node)
        for reader in readers[base]:
            reader.input[2] = base + "_zero_point_u8"
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return rewritten


def fake_quantized_reference(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """The model a QAD file is verified against: a copy of ``model`` computing in ``spec``'s fake INT8, as its run
    trained and evaluated it (its float forward is not the model the weights were trained to be)."""
    import copy

    reference = copy.deepcopy(model).float().eval()
    attach_fake_quant(reference, spec, freeze_bn=True)
    return reference.eval()


def verification_reference(model: nn.Module, spec: QuantSpec | None) -> tuple[nn.Module, str]:
    """What an exported file is verified against, and what reports call it: the model itself, or for a QAD
    checkpoint its fake-quantized copy."""
    if spec is None:
        return model, "PyTorch"
    return fake_quantized_reference(model, spec), QAD_REFERENCE


def qad_extra(spec: QuantSpec) -> dict[str, str]:
    """What the metadata of a QAD INT8 file says about how it was quantized."""
    return {
        "quantized_by": "qad",
        "qad_source": Path(spec.source).name,
        "qad_source_sha256": spec.source_sha256,
        "calibration": f"{spec.method} on {spec.images} training images at the start of QAD",
    }
