"""SegFormer and UPerNet-Swin: the output contract, the published sizes, and training through the trainer."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "transformers", reason="SegFormer/UPerNet need the transformers extra: pip install 'segkd[transformers]'"
)

from segkd.distill.models import build_model  # noqa: E402

# published parameter counts at 150 classes (SegFormer paper Table 1; Swin paper Table 3, with the auxiliary head)
PUBLISHED = {
    "segformer_b0": 3.8e6,
    "segformer_b1": 13.7e6,
    "segformer_b2": 27.5e6,
    "segformer_b3": 47.3e6,
    "segformer_b4": 64.1e6,
    "segformer_b5": 84.7e6,
    "upernet_swin_t": 60e6,
    "upernet_swin_s": 81e6,
    "upernet_swin_b": 121e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_paper(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name, num_classes=150)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.02, f"{name}: {count / 1e6:.2f}M"


# small variants: same code path, a fraction of the time
SMALL = {
    "segformer_b0": {"depths": [1, 1, 1, 1], "decoder_hidden_size": 32},
    "segformer_b2": {"depths": [1, 1, 1, 1], "decoder_hidden_size": 32},
    "upernet_swin_t": {"depths": [1, 1, 1, 1], "head_channels": 32},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_output_contract(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **SMALL[name]).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        d = model(x, return_features=True)
        plain = model(x)
    h, w = size
    assert d["out"].shape == (2, 5, h, w)
    assert d["logits"].shape == (2, 5, h // 4, w // 4)  # stride 4, not the CNNs' 8
    assert d["feat"].shape == (2, model.feat_channels, h // 4, w // 4)
    assert len(d["stages"]) == 4
    for i, stage in enumerate(d["stages"]):
        assert stage.ndim == 4 and stage.shape[-2:] == (h // 2 ** (i + 2), w // 2 ** (i + 2))
    if name.startswith("upernet"):
        assert d["aux"].shape == (2, 5, h // 16, w // 16)
    else:
        assert d["aux"] is None
    torch.testing.assert_close(plain, d["out"])
    # the classifier applied to ``feat`` gives ``logits``: feat really is the classifier's input
    classifier = model.net.decode_head.classifier
    torch.testing.assert_close(classifier(d["feat"]), d["logits"])


def test_align_corners_changes_the_upsampling() -> None:
    torch.manual_seed(0)
    a = build_model("segformer_b0", num_classes=3, **SMALL["segformer_b0"]).eval()
    b = build_model("segformer_b0", num_classes=3, align_corners=True, **SMALL["segformer_b0"]).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        da, db = a(x, return_features=True), b(x, return_features=True)
    torch.testing.assert_close(da["logits"], db["logits"])
    expected = torch.nn.functional.interpolate(
        db["logits"], size=(64, 64), mode="bilinear", align_corners=True
    )
    torch.testing.assert_close(db["out"], expected)
    assert not torch.allclose(da["out"], db["out"])


def test_bad_depths_are_refused() -> None:
    with pytest.raises(ValueError, match="depths must be 4"):
        build_model("segformer_b0", num_classes=3, depths=[1, 1])


@pytest.mark.slow
def test_r101_teacher_distils_into_segformer_through_train_py(
    tmp_path, distill_run, tiny_r101_teacher
) -> None:
    """A 1/8 CNN teacher and a 1/4 transformer student: KD on the logits, CWD on projected features."""
    from segkd.distill.load import load_model

    steps = distill_run(
        {"name": "segformer_b0", "options": SMALL["segformer_b0"]}, tiny_r101_teacher,
        [{"name": "kd"}, {"name": "cwd", "source": "feat"}],
    )  # fmt: skip
    assert [r["iter"] for r in steps] == [1, 2]
    for r in steps:
        assert r["loss/kd/kd"] > 0 and r["loss/kd/cwd_feat"] > 0
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if k.startswith("loss/"))
    student, student_meta = load_model(tmp_path / "run" / "last.pth", torch.device("cpu"))
    assert student_meta.arch["depths"] == SMALL["segformer_b0"]["depths"]
    assert student_meta.arch["name"] == "segformer_b0"
    with torch.no_grad():
        assert student(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


@pytest.mark.slow
def test_swin_b_teacher_distils_into_swin_t_through_train_py(tmp_path, distill_run) -> None:
    """Seed 003's pairing, reduced in depth and head width: UPerNet-Swin-B -> UPerNet-Swin-T, 4 iterations.

    Both sides are at 1/4 with different decoder widths (128 vs 32): CWD on the logits needs no resize, CWD on
    the features a projector; the loss weight is seed 003's 10 for transformers.
    """
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.load import load_model
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(2)
    arch = {"name": "upernet_swin_b", "num_classes": 19, "depths": [1, 1, 1, 1], "head_channels": 128}
    meta = ModelMeta(
        arch=arch, class_names=[f"c{i}" for i in range(19)], palette=[[i, i, i] for i in range(19)]
    )
    teacher = save_checkpoint(tmp_path / "swin_b.pth", build_model(**arch), meta)
    steps = distill_run(
        {"name": "upernet_swin_t", "options": SMALL["upernet_swin_t"]}, teacher,
        [{"name": "cwd", "weight": 10.0}, {"name": "cwd", "source": "feat", "weight": 10.0}], iters=4,
    )  # fmt: skip
    assert [r["iter"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss/kd/cwd_logits"] > 0 and r["loss/kd/cwd_feat"] > 0 for r in steps)
    assert all(torch.isfinite(torch.tensor(v)) for r in steps for k, v in r.items() if k.startswith("loss/"))
    student, student_meta = load_model(tmp_path / "run" / "last.pth", torch.device("cpu"))
    assert student_meta.arch["name"] == "upernet_swin_t" and student_meta.arch["depths"] == [1, 1, 1, 1]
    with torch.no_grad():
        assert student(torch.randn(1, 3, 64, 128)).shape == (1, 19, 64, 128)


def test_logit_loss_resizes_the_teacher_to_the_student() -> None:
    """Student logits at 1/4 and teacher logits at 1/8: the teacher's map is upsampled, the student's kept."""
    from segkd.distill.losses import build_loss

    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)
    loss = build_loss("kd")
    t_up = torch.nn.functional.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)
    got = loss({"logits": s}, {"logits": t})
    torch.testing.assert_close(got, loss({"logits": s}, {"logits": t_up}))
    assert not torch.allclose(got, loss({"logits": s[..., ::2, ::2]}, {"logits": t}))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_segformer_b0_exports_to_onnx_fp32_matching_pytorch(tmp_path, exporter: str) -> None:
    """Full-size SegFormer-B0 (random weights) through the export pipeline, then read back and run here."""
    np = pytest.importorskip("numpy")
    ort = pytest.importorskip("onnxruntime")
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.export.pipeline import ExportOptions, export_checkpoint
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(0)
    model = build_model("segformer_b0", num_classes=19).eval()
    meta = ModelMeta(
        arch={"name": "segformer_b0", "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, i, i] for i in range(19)],
        input_size=[64, 128],
    )
    ckpt = save_checkpoint(tmp_path / "segformer.pth", model, meta)
    result = export_checkpoint(ckpt, ExportOptions(exporter=exporter, verify_count=2), log=lambda _: None)
    assert result.exporter == exporter and result.report.passed
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 128)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


RECIPES = {  # a named recipe, or dataset student method composed from configs/: the losses
    "configs/ade20k/upernet_swin_b_to_t_kd.yaml": ["kd"],
    "configs/ade20k/upernet_swin_b_to_t_cwd.yaml": ["cwd"],
    "configs/ade20k/upernet_swin_b_to_t_lad.yaml": ["lad"],
    "configs/ade20k/upernet_swin_b_to_t_cad.yaml": ["cad"],
    "ade20k upernet_swin_t baseline": [],
    "cityscapes segformer_b0 baseline": [],
    "cityscapes segformer_b0 cwd": ["cwd"],
    "cityscapes segformer_b0 hwd": ["hwd"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_transformer_recipes_load_with_their_student_and_losses(recipe: str) -> None:
    from pathlib import Path

    from segkd.distill.config import GROUPS, load_config

    if recipe.endswith(".yaml"):
        cfg = load_config(Path(__file__).resolve().parents[1] / recipe)
        assert cfg.teacher.checkpoint == "runs/ade20k/teacher_upernet_swin_b/best.pth"
    else:
        cfg = load_config(None, [f"{g}={v}" for g, v in zip(GROUPS, recipe.split(), strict=False)])
    name, losses = cfg.student.name, RECIPES[recipe]
    assert name in recipe or name == "upernet_swin_t"
    assert cfg.student.name == name and cfg.student.channel_order == "RGB"
    assert [spec["name"] for spec in cfg.losses] == losses
    assert (cfg.teacher.checkpoint is None) == (not losses)
    if name.startswith("segformer"):
        assert cfg.train.aux_weight == 0  # SegFormer has no auxiliary head


def _small_checkpoint(tmp_path, name: str):  # noqa: ANN202 (a Path)
    """A randomly initialised small variant of ``name`` (5 classes, 64x128) saved as a checkpoint."""
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(0)
    arch = {"name": name, "num_classes": 5, **SMALL[name]}
    meta = ModelMeta(
        arch=arch, class_names=[f"c{i}" for i in range(5)], palette=[[i, i, i] for i in range(5)],
        input_size=[64, 128],
    )  # fmt: skip
    return save_checkpoint(tmp_path / f"{name}.pth", build_model(**arch).eval(), meta)


@pytest.mark.parametrize("name", ["segformer_b0", pytest.param("upernet_swin_t", marks=pytest.mark.slow)])
def test_transformers_export_fp16_and_int8_with_attention_kept_float(tmp_path, name: str) -> None:
    """FP16 and INT8 (TensorRT form) pass the export gates; INT8 covers Conv and the Linear layers (Gemm) and
    leaves attention's MatMuls, Softmax, LayerNorm and GELU in float."""
    pytest.importorskip("onnxruntime")
    import onnx

    from segkd.export.calib import synthetic_samples
    from segkd.export.pipeline import ExportOptions, export_checkpoint

    ckpt = _small_checkpoint(tmp_path, name)
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    for i, s in enumerate(synthetic_samples(3, (64, 128), seed=4)):
        cv2.imwrite(str(frames / f"{i}.png"), s.image)
    # UPerNet's pyramid pooling (bins 1, 2, 3, 6) exports at any size only with the dynamo exporter.
    exporter = "dynamo" if name.startswith("upernet") else "torchscript"
    common = {"exporter": exporter, "verify_count": 2, "calib_count": 3, "calib_images": str(frames)}
    for precision in ("fp16", "int8"):
        opts = ExportOptions(precision=precision, **common)
        result = export_checkpoint(ckpt, opts, log=lambda _: None)
        assert result.report is not None and result.report.passed, result.report
    graph = onnx.load(str(tmp_path / f"{name}.int8.onnx"))
    made = {o: n.op_type for n in graph.graph.node for o in n.output}
    fed = {n.op_type for n in graph.graph.node for i in n.input if made.get(i) == "DequantizeLinear"}
    assert "Conv" in fed and (name != "segformer_b0" or "Gemm" in fed or "MatMul" in fed)
    ops = {n.op_type for n in graph.graph.node}
    assert {"Softmax", "LayerNormalization"} <= ops
    assert not fed & {"Softmax", "LayerNormalization", "Erf", "Div"}


@pytest.mark.parametrize(
    ("name", "exporter"),
    [("segformer_b0", "torchscript"), pytest.param("upernet_swin_t", "dynamo", marks=pytest.mark.slow)],
)
def test_dynamic_sizes_where_the_model_allows(tmp_path, name: str, exporter: str) -> None:
    """SegFormer exports with dynamic batch/height/width (checked at other sizes by the exporter); UPerNet-Swin
    does not (its graph fails at another size), and the exporter says to export at a fixed size instead."""
    pytest.importorskip("onnxruntime")
    from segkd.export.onnx_export import ExportError
    from segkd.export.pipeline import ExportOptions, export_checkpoint

    ckpt = _small_checkpoint(tmp_path, name)
    opts = ExportOptions(dynamic="all", exporter=exporter, verify_count=2)
    if name == "segformer_b0":
        result = export_checkpoint(ckpt, opts, log=lambda _: None)
        assert result.report.passed and result.meta.extra["dynamic"] == "batch,height,width"
    else:
        with pytest.raises(ExportError, match="export at a fixed size"):
            export_checkpoint(ckpt, opts, log=lambda _: None)
        assert not list(tmp_path.glob("*.onnx"))
