"""GMACs and parameters from ONNX graphs: hand-computed cases, and agreement with the PyTorch count."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segkd.infer.macs import count_macs, count_params, macs_by_op


def _model(nodes, inputs, outputs, inits=(), value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def test_conv_grouped_conv_and_transpose_by_hand():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),  # 3 -> 8, 3x3, 10x12
        helper.make_node("Conv", ["a", "w2"], ["b"], group=4, strides=[2, 2]),  # 8 -> 8, groups 4, 1x1, 5x6
        helper.make_node("ConvTranspose", ["b", "w3"], ["c"], strides=[2, 2]),  # 8 -> 6, 2x2, 10x12
    ]
    m = _model(
        nodes,
        [_x("x", [1, 3, 10, 12])],
        [_x("c", None)],
        [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 8, 2, 1, 1), _w("w3", 8, 6, 2, 2)],
    )
    conv = 8 * 10 * 12 * (3 * 9) + 8 * 5 * 6 * 2  # out elements x (Cin/g) x kernel
    deconv = 8 * 5 * 6 * (6 * 4)  # in elements x (Cout/g) x kernel
    assert macs_by_op(m) == {"Conv": conv, "ConvTranspose": deconv}
    assert count_params(m) == 8 * 27 + 8 + 8 * 2 + 8 * 6 * 4


def test_matmul_broadcast_and_gemm_by_hand():
    nodes = [
        helper.make_node("MatMul", ["p", "x"], ["y"]),  # (2, 6) @ (1, 4, 6, 5) -> (1, 4, 2, 5), K = 6
        helper.make_node("Gemm", ["a", "g"], ["z"], transA=1),  # a: (7, 3) transposed -> (3, 7) @ (7, 9)
    ]
    m = _model(
        nodes,
        [_x("x", [1, 4, 6, 5]), _x("a", [7, 3])],
        [_x("y", None), _x("z", None)],
        [_w("p", 2, 6), _w("g", 7, 9)],
    )
    assert macs_by_op(m) == {"MatMul": 1 * 4 * 2 * 5 * 6, "Gemm": 3 * 9 * 7}


def test_dynamic_input_needs_a_size_and_scales_with_it():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    m = _model([conv], [_x("x", ["n", 3, "h", "w"])], [_x("y", None)], [_w("w", 4, 3, 3, 3)])
    with pytest.raises(ValueError, match="size="):
        count_macs(m)
    assert count_macs(m, (10, 20)) == 4 * 10 * 20 * 27
    assert count_macs(m, (20, 20)) == 2 * count_macs(m, (10, 20))


def test_qdq_weights_count_once_and_scales_not():
    w8 = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.int8), "w8")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w8", "ws"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["y"]),
    ]
    inits = [
        w8,
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "ws"),
        _w("b", 4),
    ]
    m = _model(nodes, [_x("x", [1, 3, 8, 8])], [_x("y", None)], inits)
    assert count_params(m) == 4 * 27 + 4
    assert count_macs(m) == 4 * 6 * 6 * 27


# --------------------------------------------------------------------------------------------- vs PyTorch
def _export(model, path, size=(64, 128)):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, *size),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}},
        )
    return path


def _model_names() -> list[str]:
    try:
        from segkd.distill.models import MODELS
    except ImportError:  # torch missing: the test below skips
        return ["none"]
    # the CNN families, which take ``width``; the transformer models need the transformers extra
    return [
        n for n in MODELS.names() if MODELS.get(n).__module__.rsplit(".", 1)[-1] in ("deeplabv3", "pspnet")
    ]


@pytest.mark.parametrize("name", _model_names())
def test_onnx_count_matches_pytorch_count_for_every_registered_model(name, tmp_path):
    pytest.importorskip("torch")
    from segkd.distill.models import STUDENTS, build_model
    from segkd.distill.runner import torch_macs_and_params

    model = build_model(name, num_classes=19, width=0.25).eval()
    path = _export(model, tmp_path / f"{name}.onnx")
    for size in [(64, 128), (96, 160)]:  # the second is no multiple of the pyramid bins
        torch_macs, torch_params = torch_macs_and_params(model, size)
        onnx_macs = count_macs(path, size)
        assert abs(onnx_macs / torch_macs - 1) < 0.01, (name, size, onnx_macs, torch_macs)
    # ONNX folds BatchNorm into the convolutions; the auxiliary head is not exported
    assert abs(count_params(path) / torch_params - 1) < 0.05
    if name in STUDENTS:
        assert torch_params < sum(p.numel() for p in model.parameters()) or model.aux_head is None


def test_int8_files_count_the_same_macs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from segkd.distill.models import build_model
    from segkd.export.onnx_export import torch_to_onnx
    from segkd.export.quantize import quantize_int8
    from segkd.infer.meta import ModelMeta

    # the FP32 graph and the INT8 one exactly as the exporter writes them (folded constants, then Q/DQ)
    fp32 = tmp_path / "m.onnx"
    meta = ModelMeta(
        arch={"name": "pspnet_mbv2"}, class_names=[str(i) for i in range(19)], palette=[[0, 0, 0]] * 19
    )
    model = build_model("pspnet_mbv2", num_classes=19, width=0.25).eval()
    torch_to_onnx(
        model, meta, fp32, size=(64, 128), dynamic="all", exporter="torchscript", log=lambda _: None
    )

    class Reader:  # the exporter's calibration reader protocol: get_next() until None
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter(
                [{"input": rng.normal(size=(1, 3, 64, 128)).astype(np.float32)} for _ in range(2)]
            )

        def get_next(self):
            return next(self.batches, None)

    int8 = tmp_path / "m.int8.onnx"
    quantize_int8(fp32, int8, Reader(), method="minmax", log=lambda _: None)  # the exporter's own recipe
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "DequantizeLinear" in ops
    assert count_macs(int8, (64, 128)) == count_macs(fp32, (64, 128))
    assert count_params(int8) == count_params(fp32)

    # the cpu form (QLinearConv, com.microsoft QLinearAdd/Concat/...): ONNX Runtime's symbolic shape inference
    # gives up on it and saves a debug model into the working directory; counting must leave that folder clean
    cpu = tmp_path / "m.int8-cpu.onnx"
    quantize_int8(fp32, cpu, Reader(), method="minmax", target="cpu", log=lambda _: None)
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(cpu)).graph.node}
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert count_macs(cpu, (64, 128)) == count_macs(fp32, (64, 128))
    assert list(here.iterdir()) == []
