"""Multiply-accumulates and parameters counted from an ONNX graph, without torch.

What is counted (per image, batch 1; the usual "FLOPs (G)" of segmentation papers, which are MACs):

- ``Conv`` / ``ConvInteger`` / ``QLinearConv``: output elements x (input channels / group) x kernel area;
- ``ConvTranspose``: input elements x (output channels / group) x kernel area;
- ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul``: output elements x the contracted dimension;
- ``Gemm``: M x N x K.

Bias additions, normalisation, activations, pooling, resizing, softmax and element-wise ops are not counted:
the same rule as ``torch.utils.flop_counter`` (convolutions and matrix products only), so that the count of an
ONNX file and of the checkpoint it came from agree. An INT8 Q/DQ graph counts the same MACs as its FP32 source.

Parameters are the elements of the initializers the graph computes with: weights and biases (after BatchNorm
folding, when the exporter folded it), not the scales and zero points of Q/DQ nodes nor shape constants. They
are counted per use, because graph optimisers merge equal constants (zero biases) that are separate weights.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from segkd.infer.cliargs import hw_arg
from segkd.infer.meta import HW_AXES, guess_layout

__all__ = ["MAC_OPS", "count_macs", "count_params", "describe", "macs_by_op"]

Shape = tuple[int, ...]


def _conv(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    w, y = ins[1], outs[0]
    return int(np.prod(y)) * int(np.prod(w[1:]))  # (Cin/g) x kh x kw per output element


def _qlinear_conv(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    # inputs: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp[, bias]
    return int(np.prod(outs[0])) * int(np.prod(ins[3][1:]))


def _conv_transpose(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    x, w = ins[0], ins[1]  # w: (Cin, Cout/g, kh, kw): every input element meets Cout/g x kh x kw weights
    return int(np.prod(x)) * int(np.prod(w[1:]))


def _matmul(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    a = ins[0]
    return int(np.prod(outs[0])) * int(a[-1])


def _qlinear_matmul(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    return int(np.prod(outs[0])) * int(ins[0][-1])  # inputs: a, a_scale, a_zp, b, ...


def _gemm(node: Any, ins: list[Shape | None], outs: list[Shape | None]) -> int:
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    k = ins[0][0] if trans_a else ins[0][1]
    return int(np.prod(outs[0])) * int(k)


# op type -> (MACs of one node, the input indices whose shapes it needs)
MAC_OPS = {
    "Conv": (_conv, (1,)),
    "ConvInteger": (_conv, (1,)),
    "QLinearConv": (_qlinear_conv, (3,)),
    "ConvTranspose": (_conv_transpose, (0, 1)),
    "MatMul": (_matmul, (0,)),
    "MatMulInteger": (_matmul, (0,)),
    "QLinearMatMul": (_qlinear_matmul, (0,)),
    "Gemm": (_gemm, (0,)),
}

# inputs that hold weights (op type -> input indices); a DequantizeLinear in between is looked through
_WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "ConvInteger": (1,),
    "QLinearConv": (3, 8),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "MatMulInteger": (1,),
    "QLinearMatMul": (3,),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
}


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model), load_external_data=False)  # dims only: weights may stay on disk
    return model


def count_params(model: str | os.PathLike[str] | Any) -> int:
    """Weights of an ONNX file or ``ModelProto``: initializers consumed as weights/biases (see module doc)."""
    graph = _load(model).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    total = 0
    for node in graph.node:
        for i in _WEIGHT_INPUTS.get(node.op_type, ()):
            if i >= len(node.input):
                continue
            name = node.input[i]
            src = producer.get(name)
            if src is not None and src.op_type == "DequantizeLinear":  # int8 weight -> DQ -> Conv
                name = src.input[0]
            if name in inits:
                # per use: graph optimisers merge equal constants (e.g. zero biases) that are separate weights
                total += int(np.prod(inits[name].dims))
    return total


def macs_by_op(model: str | os.PathLike[str] | Any, size: tuple[int, int] | None = None) -> dict[str, int]:
    """MACs of one image per op type (only :data:`MAC_OPS`), at input height/width ``size``.

    Args:
        model: path of an ONNX file or a loaded ``ModelProto``.
        size: (H, W) to fix dynamic input dimensions to; required when the graph's input is dynamic.
    """
    shapes, graph = _shapes(_load(model), size)
    totals: dict[str, int] = defaultdict(int)
    for node in graph.node:
        if node.op_type not in MAC_OPS:
            continue
        fn, _ = MAC_OPS[node.op_type]
        ins = [shapes.get(n) for n in node.input]
        outs = [shapes.get(n) for n in node.output]
        totals[node.op_type] += fn(node, ins, outs)
    return dict(totals)


def count_macs(model: str | os.PathLike[str] | Any, size: tuple[int, int] | None = None) -> int:
    """Total multiply-accumulates of one image at (H, W) ``size`` (see :func:`macs_by_op`).

    Raises:
        ValueError: a dynamic input without ``size``, or a ``size`` other than a static input's own.
    """
    return int(sum(macs_by_op(model, size).values()))


def _fixed_input(model: Any, size: tuple[int, int] | None) -> Any:
    """Copy of ``model`` whose first input is batch 1 at ``size`` (NCHW, or NHWC for a 3-last input)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    hw_idx = HW_AXES[guess_layout(values)[0]]
    fixed = {0: 1}
    if size is not None:
        static = {i: dims[i].dim_value for i in hw_idx if dims[i].HasField("dim_value")}
        if static and tuple(static.get(i, v) for i, v in zip(hw_idx, size)) != tuple(size):
            h, w = (static.get(i, "?") for i in hw_idx)
            raise ValueError(
                f"size {size[0]}x{size[1]} conflicts with the graph's fixed input {h}x{w}; count it at its own size "
                "(size=None) or export it with dynamic height/width"
            )
        fixed.update(dict(zip(hw_idx, size)))
    for i, v in fixed.items():
        dims[i].ClearField("dim_param")
        dims[i].dim_value = int(v)
    missing = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
    if missing:
        raise ValueError(
            f"input {inp.name!r} has dynamic dimensions {missing}; pass size=(H, W) to count MACs at a resolution"
        )
    return model


def _shapes(model: Any, size: tuple[int, int] | None) -> tuple[dict[str, Shape], Any]:
    """Static shape of every tensor a MAC-counted node needs, with the input fixed to batch 1 at ``size``.

    ONNX shape inference (with data propagation, for Resize sizes computed from Shape ops) resolves most
    graphs; ONNX Runtime's symbolic shape inference is the fallback, and as a last resort the few unresolved
    tensors are read off one ONNX Runtime run on a zero input.
    """
    import onnx

    from segkd.infer.fileio import scratch_cwd

    fixed = _fixed_input(model, size)
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = _collect(inferred.graph)
    need = _needed(inferred.graph, shapes)
    if need:
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            with scratch_cwd("shapes"):  # it saves a debug model into the working directory when it gives up
                shapes.update(_collect(SymbolicShapeInference.infer_shapes(fixed, auto_merge=True).graph))
        except Exception:  # the fallback below handles graphs this cannot
            pass
        need = _needed(inferred.graph, shapes)
    if need:
        shapes.update(_run_for_shapes(fixed, model, sorted(need)))
    return shapes, inferred.graph


def _collect(graph: Any) -> dict[str, Shape]:
    out: dict[str, Shape] = {t.name: tuple(t.dims) for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _needed(graph: Any, shapes: dict[str, Shape]) -> set[str]:
    need: set[str] = set()
    for node in graph.node:
        if node.op_type in MAC_OPS:
            _, idx = MAC_OPS[node.op_type]
            need.update(n for n in (*(node.input[i] for i in idx), node.output[0]) if n not in shapes)
    return need


def _run_for_shapes(fixed: Any, original: Any, names: list[str]) -> dict[str, Shape]:
    """Shapes of ``names`` from one ONNX Runtime CPU run with those tensors exposed as outputs."""
    import onnx

    from segkd.infer.runtime.ort_session import cpu_session

    probe = onnx.ModelProto.FromString(fixed.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    if original.graph.initializer and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in original.graph.initializer
    ):
        raise ValueError(
            "cannot resolve shapes of a graph with external weights; re-export with static shapes"
        )
    inp = fixed.graph.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    x = np.zeros([d.dim_value for d in inp.type.tensor_type.shape.dim], dtype)
    sess = cpu_session(probe.SerializeToString())
    values = sess.run(names, {inp.name: x})
    return {n: tuple(v.shape) for n, v in zip(names, values)}


def describe(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> str:
    """One line per op type: ``Conv 12.3 GMACs``; for quick inspection (``python -m segkd.infer.macs FILE``)."""
    parts = macs_by_op(path, size)
    lines = [f"{op:14s} {v / 1e9:10.3f} GMACs" for op, v in sorted(parts.items())]
    lines.append(
        f"{'total':14s} {sum(parts.values()) / 1e9:10.3f} GMACs, {count_params(path) / 1e6:.3f} M params"
    )
    return f"{Path(path).name}\n" + "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="GMACs and parameters of an ONNX file, per op type.")
    parser.add_argument("onnx", nargs="+")
    parser.add_argument("--size", type=hw_arg, default=None, help="HxW for dynamic inputs, e.g. 512x1024")
    args = parser.parse_args()
    hw = args.size
    for f in args.onnx:
        print(describe(f, hw))
