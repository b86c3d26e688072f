"""Mixed FP16 for transformers: export float32, then convert to float16 keeping the ops that overflow in float32.

A transformer's LayerNorm variance, its reductions and its attention logits (Q·K^T before the softmax) exceed
float16's 65504 long before its activations do: a half-precision copy of SegFormer or UPerNet-Swin can turn into
inf/NaN (the known TensorRT FP16 failure of transformer segmenters). Here the float32 graph is converted with ONNX
Runtime's converter (``onnxruntime.transformers.float16``) and an op block list: those nodes keep float32
weights, and explicit Casts around them carry the precision, which strongly typed TensorRT builds take from the
graph. The file keeps the FP16 contract (float16 input and logits).

    kept = to_mixed_fp16("graph.onnx", "graph.fp16.onnx")  # "LayerNormalization:19,Softmax:4,MatMul:4,Div:4"
"""

from __future__ import annotations

import os
from collections import Counter

import onnx

__all__ = ["FP32_OPS", "attention_score_nodes", "float32_ops", "to_mixed_fp16"]

# Op types always computed in float32: LayerNorm (its variance), the softmax, and the reductions/powers of a
# LayerNorm written out by hand.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")
# What may lie between attention's Q·K^T MatMul and its Softmax: the 1/sqrt(d) scale, Swin's relative position
# bias and shifted-window mask (with the reshapes around the mask).
_SCORE_PATH = frozenset({"Div", "Mul", "Add", "Reshape"})
_MAX_SCORE_DEPTH = 6


def attention_score_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute each Softmax's input from its Q·K^T MatMul (the MatMul included).

    Walks back from every Softmax through scale/bias/reshape nodes; a branch that reaches no MatMul within a few
    nodes (a bias table, a mask) is left alone.
    """
    producer = {out: n for n in model.graph.node for out in n.output}

    def path(tensor: str, depth: int) -> list[onnx.NodeProto]:
        node = producer.get(tensor)
        if node is None or depth > _MAX_SCORE_DEPTH:
            return []
        if node.op_type == "MatMul":
            return [node]
        if node.op_type not in _SCORE_PATH:
            return []
        found = [n for inp in node.input for n in path(inp, depth + 1)]
        return [node, *found] if found else []

    names = [n.name for s in model.graph.node if s.op_type == "Softmax" for n in path(s.input[0], 0)]
    return list(dict.fromkeys(names))


def float32_ops(model: onnx.ModelProto) -> Counter[str]:
    """Op type -> number of nodes (Casts aside) with a float32 output: what a mixed graph computes in float32."""
    fp32 = {
        v.name for v in (*model.graph.value_info, *model.graph.output) if _elem(v) == onnx.TensorProto.FLOAT
    }
    return Counter(n.op_type for n in model.graph.node if n.op_type != "Cast" and fp32 & set(n.output))


def _elem(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the converter's node block list and its Casts go by names."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Repair and simplify the converter's output: it appends one Cast per blocked consumer of a tensor (the
    same node twice when two LayerNorms read one tensor) after the other nodes. Keep one of each, drop Cast pairs
    that return to float32 between two float32 ops, and restore topological order (ONNX requires it)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    nodes, made = [], set()
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in made:
            continue
        made.update(node.output)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    infos = {v.name: v for v in model.graph.value_info}
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos.values())
    tidy = OnnxModel(model)
    tidy.remove_cascaded_cast_nodes()
    tidy.remove_useless_cast_nodes()
    tidy.topological_sort()
    return tidy.model


def to_mixed_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Convert the float32 graph at ``src`` to float16 at ``dst``, keeping :data:`FP32_OPS` and the attention
    logits in float32; returns what was kept, ``"Op:count,..."`` (the metadata's ``extra.fp32_ops``).

    Raises:
        ImportError: onnxruntime (which ships the converter) is not installed.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:
        raise ImportError("mixed FP16 needs onnxruntime: pip install onnxruntime") from e

    model = onnx.load(str(src))
    _name_nodes(model)
    scores = attention_score_nodes(model)
    model = convert_float_to_float16(
        model, keep_io_types=False, op_block_list=list(FP32_OPS), node_block_list=scores
    )
    model = _tidy(model)
    # value types for float32_ops (and for readers of the file)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(dst))
    return ",".join(f"{op}:{n}" for op, n in sorted(float32_ops(model).items()))
