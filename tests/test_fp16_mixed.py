"""Mixed FP16 for transformers (`segkd.export.fp16`): LayerNorm, softmax and attention logits stay float32.

A small SegFormer whose first attention's logits exceed float16's 65504 (its query and key projections scaled up)
turns into NaN as a half-precision copy and fails the FP16 gate; the mixed export of the same checkpoint passes.
Both files run on ONNX's reference evaluator, which computes every op in the dtype the graph gives it, as a strongly
typed TensorRT build does: ONNX Runtime's CPU provider cannot show an FP16 overflow, since it runs the ops it has
no float16 kernel for (MatMul, Softmax, the reductions) in float32 and drops the Casts between them.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "transformers", reason="SegFormer needs the transformers extra: pip install 'segkd[transformers]'"
)
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from segkd.distill.models import build_model  # noqa: E402
from segkd.export import pipeline  # noqa: E402
from segkd.export.fp16 import FP32_OPS, float32_ops  # noqa: E402
from segkd.export.pipeline import ExportOptions, export_checkpoint  # noqa: E402
from segkd.export.verify import torch_reference, verify  # noqa: E402
from segkd.infer.runtime.ort_runner import OrtRunner  # noqa: E402

ARCH = {"name": "segformer_b0", "num_classes": 5, "depths": [1, 1, 1, 1], "decoder_hidden_size": 32}
FP16_MAX = 65504.0
_OPTS = {"precision": "fp16", "exporter": "torchscript", "verify_count": 2}


class _StrictFp16Runner(OrtRunner):
    """An ONNX file run by ``onnx.reference``: each op in its graph dtype (float16 stays float16)."""

    def __init__(self, path) -> None:  # noqa: ANN001 (a Path)
        from onnx.reference import ReferenceEvaluator

        super().__init__(path, device="cpu")
        self._reference = ReferenceEvaluator(str(path))

    def _run(self, x):  # noqa: ANN001, ANN202 (numpy arrays)
        return self._reference.run(None, {self._in_name: x})[0]


def _strict_gate(path, checkpoint):  # noqa: ANN001, ANN202 (Paths -> VerifyReport)
    """The FP16 gate of ``path`` on the strict runner, against the checkpoint's PyTorch model."""
    from segkd.distill.load import load_model
    from segkd.export.calib import synthetic_samples

    model, meta = load_model(checkpoint)
    with _StrictFp16Runner(path) as runner:
        samples = synthetic_samples(2, (64, 128))
        return verify(
            runner, torch_reference(model, meta), meta, samples, precision="fp16", source="synthetic"
        )


def _max_logit(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest Q·K^T / sqrt(d) of the first attention layer (what its softmax receives; a logit below -65504
    only becomes -inf, which the softmax maps to 0 as float32 would)."""
    att = model.net.segformer.stages[0].blocks[0].attention
    seen = {}
    hooks = [
        getattr(att, p).register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o))
        for p in ("q_proj", "k_proj")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    q, k = seen["q_proj"], seen["k_proj"]  # (N, L, C), (N, L', C): one head in stage 1 of B0
    return float((q @ k.transpose(1, 2)).max()) / q.shape[-1] ** 0.5


@pytest.fixture
def overflowing_checkpoint(tmp_path):  # noqa: ANN201 (a Path)
    """SegFormer-B0 (small) whose first attention logits reach 4x float16's largest value."""
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.export.calib import synthetic_samples
    from segkd.infer.meta import ModelMeta, preprocess

    torch.manual_seed(0)
    model = build_model(**ARCH).eval()
    meta = ModelMeta(
        arch=ARCH, class_names=[f"c{i}" for i in range(5)], palette=[[i, i, i] for i in range(5)],
        input_size=[64, 128],
    )  # fmt: skip
    x = torch.from_numpy(preprocess([s.image for s in synthetic_samples(2, (64, 128))], meta))
    att = model.net.segformer.stages[0].blocks[0].attention
    scale = (4 * FP16_MAX / _max_logit(model, x)) ** 0.5
    with torch.no_grad():
        for proj in (att.q_proj, att.k_proj):
            proj.weight.mul_(scale)
            proj.bias.mul_(scale)
    assert _max_logit(model, x) > FP16_MAX
    return save_checkpoint(tmp_path / "segformer_b0.pth", model, meta)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings; FP16-on-CPU notes
def test_half_copy_overflows_and_mixed_fp16_passes(overflowing_checkpoint, tmp_path, monkeypatch) -> None:
    """Today's half-precision copy gives NaN and fails the FP16 gate; the mixed file passes it (and the export's
    own gate on ONNX Runtime), with float16 input and logits."""
    pure = tmp_path / "pure.fp16.onnx"
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_is_transformer", lambda meta: False)  # the CNN path: model.half() exported
        export_checkpoint(
            overflowing_checkpoint, ExportOptions(out=str(pure), verify=False, **_OPTS), log=lambda _: None
        )
    failed = _strict_gate(pure, overflowing_checkpoint)
    assert not failed.passed and failed.non_finite > 0, failed
    result = export_checkpoint(overflowing_checkpoint, ExportOptions(**_OPTS), log=lambda _: None)
    assert result.report.passed and result.report.non_finite == 0, result.report
    strict = _strict_gate(result.path, overflowing_checkpoint)
    assert strict.passed and strict.non_finite == 0, strict
    graph = onnx.load(str(result.path))
    f16 = onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*graph.graph.input, *graph.graph.output)] == [f16, f16]


def test_metadata_lists_the_ops_kept_in_float32(overflowing_checkpoint) -> None:
    """``extra.fp32_ops`` is what the graph computes in float32: every LayerNorm and Softmax, one attention MatMul
    per Softmax, nothing else; the convolutions and Linear layers are float16."""
    result = export_checkpoint(overflowing_checkpoint, ExportOptions(**_OPTS), log=lambda _: None)
    listed = dict(item.split(":") for item in result.meta.extra["fp32_ops"].split(","))
    listed = {op: int(n) for op, n in listed.items()}
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(result.path)))
    assert listed == dict(float32_ops(graph))
    count = {op: sum(n.op_type == op for n in graph.graph.node) for op in ("LayerNormalization", "Softmax")}
    assert listed["LayerNormalization"] == count["LayerNormalization"] > 0
    assert listed["Softmax"] == listed["MatMul"] == count["Softmax"] > 0
    assert set(listed) <= {*FP32_OPS, "MatMul", "Div", "Mul", "Add", "Reshape"}
    # precision lives in the graph (strongly typed TensorRT): the weights of Conv/Gemm are float16 initializers
    inits = {i.name: i.data_type for i in graph.graph.initializer}
    weights = [
        inits[n.input[1]] for n in graph.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in inits
    ]
    assert weights and set(weights) == {onnx.TensorProto.FLOAT16}
