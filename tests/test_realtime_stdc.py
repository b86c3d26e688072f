"""STDC-Seg (stdc1, stdc2): the official layout and geometry, the output contract, conversion, ImageNet files, export.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_realtime_stdc.py

The official model (MichaelFan01/STDC-Seg 59ff37f) is recorded in ../shared/fixtures/realtime_official_layouts.json;
the tests that read it skip when it is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from realtime_layouts import conv_geometry, official, random_official_state_dict

from segkd.distill.convert import convert_official_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import build_model
from segkd.distill.models.pretrained import WeightsError
from segkd.distill.models.stdc import STDCNet
from segkd.export.pipeline import ExportOptions, export_model
from segkd.infer.meta import ModelMeta, preprocess
from segkd.infer.runtime.ort_session import cpu_session

torch.set_num_threads(1)

NAMES = ["stdc1", "stdc2"]
SIZES = [(128, 256), (96, 160)]


def _official_file(name: str, path: Path) -> dict[str, torch.Tensor]:
    """A random official checkpoint of ``name`` as the official trainer saves it (``module.`` prefixes).

    The official backbone registers each stage twice (``features.N`` and ``xS.0.N`` are the same modules), so a
    real file holds equal tensors under both names: the random values are made to agree likewise.
    """
    sd = random_official_state_dict(name)
    for key in sd:
        alias = re.match(r"(cp\.backbone\.)x\d+\.0\.(.*)", key)
        if alias:
            sd[key] = sd[f"{alias[1]}features.{alias[2]}"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return sd


@pytest.mark.parametrize("name", NAMES)
def test_an_official_checkpoint_converts_and_loads_with_its_tensors(name: str, tmp_path: Path) -> None:
    sd = _official_file(name, tmp_path / "official.pth")
    report = convert_official_checkpoint(tmp_path / "official.pth", name, "cityscapes", tmp_path / "ours.pth")
    assert report.ok and report.loaded == len(sd)
    model, meta = load_model(tmp_path / "ours.pth")
    own = model.state_dict()
    assert list(own) == list(sd)  # key for key, in the official order
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert meta.arch == {"name": name, "num_classes": 19, "align_corners": True}
    assert (meta.mean, meta.std, meta.channel_order) == (
        [123.675, 116.28, 103.53],
        [58.395, 57.12, 57.375],
        "RGB",
    )


@pytest.mark.parametrize("name", NAMES)
def test_conv_geometry_and_parameter_count_are_the_official_ones(name: str) -> None:
    model = build_model(name, num_classes=19)
    assert conv_geometry(model) == official(name)["convs"]
    assert sum(p.numel() for p in model.parameters()) == official(name)["params"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == official(name)["state_dict"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
def test_output_shapes_are_the_official_ones_in_train_and_eval_mode(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, num_classes=19)
    x = torch.randn(2, 3, *size)
    h, w = size[0] // 8, size[1] // 8
    with torch.no_grad():
        d = model.train()(x, return_features=True)
        # The official forward returns (logits, aux at 1/8, aux at 1/16, detail map) in either mode.
        train = [d["out"], *d["aux_all"], d["boundary"]]
        assert [list(t.shape) for t in train] == official(name)["outputs"][f"train {size[0]}x{size[1]}"]
        assert d["aux"] is d["aux_all"][0] and d["logits"].shape == (2, 19, h, w)
        assert d["feat"].shape == (2, model.feat_channels, h, w)
        assert [s.shape[-1] for s in d["stages"]] == [size[1] // s for s in (4, 8, 16, 32)]
        e = model.eval()(x, return_features=True)  # the deployed path only: no auxiliary or detail head runs
        assert list(e["out"].shape) == official(name)["outputs"][f"eval {size[0]}x{size[1]}"][0]
        assert (e["aux"], e["aux_all"], e["boundary"]) == (None, [], None)
        assert torch.equal(model(x), e["out"])


@pytest.mark.parametrize("use_conv_last", [False, True])
def test_the_training_outputs_give_every_trainable_weight_a_gradient(use_conv_last: bool) -> None:
    # What no forward reads (the ImageNet classifier, the detail heads at strides 2, 4, 16) is frozen instead.
    model = build_model("stdc1", num_classes=3, use_conv_last=use_conv_last).train()
    d = model(torch.randn(2, 3, 64, 96), return_features=True)
    (d["out"].sum() + sum(a.sum() for a in d["aux_all"]) + d["boundary"].sum()).backward()
    unread = ("cp.backbone.fc.", "cp.backbone.bn.", "cp.backbone.linear.", "conv_out_sp2.", "conv_out_sp4.",
              "conv_out_sp16.") + (() if use_conv_last else ("cp.backbone.conv_last.",))  # fmt: skip
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(unread)}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


MISFITS = [  # the file's variant, --arch, --dataset, what the error must say
    ("stdc2", "stdc1", "cityscapes", r"it is stdc2: pass --arch stdc2\."),
    ("stdc1", "stdc2", "cityscapes", r"it is stdc1: pass --arch stdc1\."),
    ("stdc1", "stdc1", "voc", r"\(21 classes\); it is stdc1 with 19 classes: pass --arch stdc1 and a --dataset with 19"),
]  # fmt: skip


@pytest.mark.parametrize("variant,arch,dataset,message", MISFITS)
def test_the_converter_refuses_another_variant_or_class_count(
    variant: str, arch: str, dataset: str, message: str, tmp_path: Path
) -> None:
    _official_file(variant, tmp_path / "official.pth")
    with pytest.raises(WeightsError, match=rf"does not fit --arch {arch} .*{message}"):
        convert_official_checkpoint(tmp_path / "official.pth", arch, dataset, tmp_path / "ours.pth")
    assert not (tmp_path / "ours.pth").exists()


def _imagenet_file(variant: str, path: Path, *, aliases: bool) -> dict[str, torch.Tensor]:
    """An ImageNet STDCNet file as the official one: ``{"state_dict": ...}``, with or without the stage aliases."""
    stages = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}[variant]
    sd = {k: v + 0.5 for k, v in STDCNet(stages).state_dict().items() if aliases or not k.startswith("x")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 300}, path)
    return sd


@pytest.mark.parametrize("aliases", [True, False])
def test_an_imagenet_backbone_file_loads_into_the_backbone(aliases: bool, tmp_path: Path) -> None:
    sd = _imagenet_file("stdc1", tmp_path / "STDCNet813M_73.91.tar", aliases=aliases)
    model = build_model("stdc1", num_classes=19, pretrained=str(tmp_path / "STDCNet813M_73.91.tar"))
    own = model.cp.backbone.state_dict()
    assert torch.equal(
        own["features.5.conv_list.3.bn.running_var"], sd["features.5.conv_list.3.bn.running_var"]
    )
    assert torch.equal(own["x16.0.5.conv_list.3.conv.weight"], sd["features.5.conv_list.3.conv.weight"])


def test_an_imagenet_file_of_the_other_variant_is_refused_with_the_right_file_named(tmp_path: Path) -> None:
    _imagenet_file("stdc2", tmp_path / "STDCNet1446_76.47.tar", aliases=True)
    with pytest.raises(WeightsError, match=r"does not fit the stdc1 backbone \(STDCNet813M_73\.91\.tar is"):
        build_model("stdc1", num_classes=19, pretrained=str(tmp_path / "STDCNet1446_76.47.tar"))


# STDC2 differs from STDC1 only in how many blocks each stage repeats: its exports take longer and test no other op.
EXPORTED = ["stdc1"]  # STDC2 has the same graph structure (docs/quantization.md exports both)


def _meta(name: str, size: tuple[int, int]) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, i, i] for i in range(19)],
        input_size=list(size),
    )


def _random_eval_model(name: str) -> torch.nn.Module:
    """An eval model with random BatchNorm statistics, so that every layer is checked, not only the convs."""
    model = build_model(name, num_classes=19)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                (
                    m.running_mean.uniform_(-0.1, 0.1),
                    m.running_var.uniform_(0.5, 1.5),
                    m.bias.uniform_(-0.1, 0.1),
                )
    return model.eval()


@pytest.mark.parametrize("name", EXPORTED)
def test_the_eval_model_exports_one_verified_output_at_a_fixed_size(name: str, tmp_path: Path) -> None:
    opts = ExportOptions(exporter="torchscript", verify_count=2)
    result = export_model(
        _random_eval_model(name), _meta(name, (64, 128)), tmp_path / "m.onnx", opts, log=print
    )
    assert result.report.passed
    assert len(onnx.load(result.path).graph.output) == 1


# STDC accepts any input size: every downsampling (stride-2 3x3 convolutions and 3x3 average pools, padding 1)
# gives ceil(n/2), so the concatenated branches always agree; the context path upsamples to the shapes it reads
# (nearest) and the global pooling is a mean, so no shape is traced into a constant.
@pytest.mark.parametrize("name", EXPORTED)
def test_the_eval_model_exports_with_dynamic_sizes_and_matches_pytorch_at_odd_ones(
    name: str, tmp_path: Path
) -> None:
    model, meta = _random_eval_model(name), _meta(name, (65, 97))
    opts = ExportOptions(exporter="torchscript", verify_count=2, dynamic="all")  # checks 53x124 itself
    result = export_model(model, meta, tmp_path / "m.onnx", opts, log=print)
    sess = cpu_session(result.path)
    for n, (h, w) in [(1, (33, 47)), (2, (97, 131))]:
        x = preprocess(
            [np.random.default_rng(h).integers(0, 256, (h, w, 3), np.uint8) for _ in range(n)], meta
        )
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 19, h, w)
        np.testing.assert_allclose(got, ref, atol=1e-4 * float(np.abs(ref).max()))
