"""BiSeNetV2: the official layout key for key (../shared/fixtures/realtime_official_layouts.json), the model
contract, conversion of official checkpoints, ImageNet backbone files and the ONNX export.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_realtime_bisenetv2.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from realtime_layouts import conv_geometry, official, random_official_state_dict

from segkd.distill.convert import convert_official_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import MODELS, build_model
from segkd.distill.models.pretrained import OFFICIAL_LAYOUTS, WeightsError
from segkd.export.onnx_export import torch_to_onnx
from segkd.export.pipeline import ExportOptions, export_model
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.ort_session import cpu_session

torch.set_num_threads(1)

BUILDERS = [n for n in MODELS.names() if MODELS.get(n).__module__.endswith(".bisenetv2")]
FAST = {"exporter": "torchscript", "verify_count": 2}


def _quiet(_: str) -> None:
    """The exporter's log, unprinted."""


@pytest.fixture(scope="module", params=BUILDERS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(name: str) -> torch.nn.Module:
    """One model per builder, seeded: the shape tests share it (train-mode forwards only move BN statistics)."""
    torch.manual_seed(0)
    return build_model(name, num_classes=19)


def _meta(name: str, size: tuple[int, int]) -> ModelMeta:
    layout = OFFICIAL_LAYOUTS[name]
    return ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(19)],
        mean=list(layout.mean),
        std=list(layout.std),
        channel_order=layout.channel_order,
        input_size=list(size),
    )


# ------------------------------------------------------------------------------------------ the official layout
def test_builders_registered() -> None:
    assert BUILDERS == ["bisenetv2"] and set(BUILDERS) <= set(OFFICIAL_LAYOUTS)


def test_a_random_official_checkpoint_converts_and_loads_with_its_tensors(name: str, tmp_path: Path) -> None:
    sd = random_official_state_dict(name)
    torch.save(sd, tmp_path / "official.pth")  # as the official trainer saves it: the bare state dict
    report = convert_official_checkpoint(tmp_path / "official.pth", name, "cityscapes", tmp_path / "ours.pth")
    assert report.ok and report.loaded == len(sd)
    converted, meta = load_model(tmp_path / "ours.pth")
    own = converted.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert meta.arch == {"name": name, "num_classes": 19, "align_corners": False}
    assert meta.channel_order == "RGB" and meta.mean == pytest.approx([83.0535, 94.095, 82.1865])
    assert meta.std == pytest.approx([53.856, 54.774, 53.9325])


def test_conv_geometry_is_the_official_one(name: str, model: torch.nn.Module) -> None:
    assert conv_geometry(model) == official(name)["convs"]


def test_state_dict_and_parameter_count_are_the_official_ones(name: str, model: torch.nn.Module) -> None:
    want = official(name)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == want["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == want["params"]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("hw", [(128, 256), (96, 160)])
def test_output_shapes_are_the_official_ones(
    name: str, model: torch.nn.Module, mode: str, hw: tuple[int, int]
) -> None:
    want = [tuple(s) for s in official(name)["outputs"][f"{mode} {hw[0]}x{hw[1]}"]]
    model.train(mode == "train")
    with torch.no_grad():
        d = model(torch.randn(2, 3, *hw), return_features=True)
    if mode == "train":  # official: the main logits, then aux2, aux3, aux4, aux5_4, each at the input size
        assert [tuple(t.shape) for t in [d["out"], *d["aux_all"]]] == want
        assert d["aux"] is d["aux_all"][0]
    else:  # the official forward keeps computing its auxiliary heads; the deployed path here does not
        assert tuple(d["out"].shape) == want[0] and d["aux_all"] == [] and d["aux"] is None
    h, w = hw
    assert d["logits"].shape == (2, 19, h // 8, w // 8)
    assert d["feat"].shape == (2, model.feat_channels, h // 8, w // 8)
    assert [s.shape[1:] for s in d["stages"]] == [
        (c, h // s, w // s) for c, s in [(16, 4), (32, 8), (64, 16), (128, 32)]
    ]
    assert d["boundary"] is None


def test_a_file_with_another_class_count_is_refused_with_the_fix(name: str, tmp_path: Path) -> None:
    # A VOC model (21 classes: every classifier, the main head's and the four auxiliary ones) converted with the
    # default --dataset cityscapes.
    sd = {
        k: torch.zeros(21, *v.shape[1:]) if ".conv_out.1." in k else v
        for k, v in random_official_state_dict(name).items()
    }
    torch.save(sd, tmp_path / "voc.pth")
    fix = rf"it is {name} with 21 classes: pass --arch {name} and a --dataset with 21 classes"
    with pytest.raises(WeightsError, match=rf"voc\.pth does not fit --arch {name} .*\(19 classes\); {fix}"):
        convert_official_checkpoint(tmp_path / "voc.pth", name, "cityscapes", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_a_file_without_the_auxiliary_heads_is_refused(name: str, tmp_path: Path) -> None:
    # What the official code saves when built with aux_mode='eval': the converter needs the training form.
    sd = {k: v for k, v in random_official_state_dict(name).items() if not k.startswith("aux")}
    torch.save(sd, tmp_path / "deploy.pth")
    with pytest.raises(
        WeightsError, match=r"(?s)not the layout of CoinCheung/BiSeNet.*\nmissing \d+ .*aux2\."
    ):
        convert_official_checkpoint(tmp_path / "deploy.pth", name, "cityscapes", tmp_path / "out.pth")


# ------------------------------------------------------------------------------------------ the model contract
def test_out_is_the_bilinear_upsampling_of_the_logits(name: str, model: torch.nn.Module) -> None:
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out, d = model(x), model(x, return_features=True)
    assert torch.equal(out, d["out"])
    torch.testing.assert_close(
        out, F.interpolate(d["logits"], size=(64, 96), mode="bilinear"), rtol=0, atol=0
    )


def test_a_size_that_is_no_multiple_of_32_is_refused_with_one_that_fits(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"multiples of 32, got 100x150; .*e\.g\. to 128x160"):
        model.eval()(torch.zeros(1, 3, 100, 150))


def test_options(name: str) -> None:
    with pytest.raises(TypeError, match=rf"'{name}' has no option 'width'; its options: align_corners$"):
        build_model(name, num_classes=19, width=0.5)
    assert build_model(name, num_classes=5, align_corners=True).align_corners is True


# ------------------------------------------------------------------------------------------ ImageNet backbone
def test_the_official_imagenet_file_loads_into_the_two_branches(
    name: str, model: torch.nn.Module, tmp_path: Path
) -> None:
    # backbone_v2.pth holds one state dict per branch, which the official code loads child by child.
    g = torch.Generator().manual_seed(2)
    branches = {
        child: {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
        for child, sd in ((c, getattr(model, c).state_dict()) for c in ("detail", "segment"))
    }
    torch.save(branches, tmp_path / "backbone_v2.pth")
    torch.manual_seed(0)
    built = build_model(name, num_classes=19, pretrained=str(tmp_path / "backbone_v2.pth")).state_dict()
    assert all(torch.equal(built[f"{c}.{k}"], v) for c, sd in branches.items() for k, v in sd.items())
    head = "head.conv_out.1.weight"
    assert torch.equal(built[head], model.state_dict()[head])  # the head keeps its (seeded) initialisation
    branches["detail"].pop("S1.0.conv.weight")
    torch.save(branches, tmp_path / "partial.pth")
    with pytest.raises(
        WeightsError, match=r"not a BiSeNetV2 ImageNet backbone.*\n.*\nmissing 1 .*detail\.S1\.0"
    ):
        build_model(name, num_classes=19, pretrained=str(tmp_path / "partial.pth"))


# ------------------------------------------------------------------------------------------ ONNX
# Only heights and widths that are multiples of 32 run: the aggregation upsamples the 1/32 semantic feature by a fixed
# factor 4 onto the 1/8 detail feature (as the official code does), and the two grids meet only at those sizes. So a
# fixed-size export is verified, and a graph with dynamic batch, height and width is checked at other multiples of 32,
# as the pipeline's own dynamic check does (the model's ``size_multiple``; it used to check, and fail, at 53x163).
def test_the_eval_model_exports_with_one_output(name: str, model: torch.nn.Module, tmp_path: Path) -> None:
    model.eval()
    result = export_model(
        model, _meta(name, (64, 128)), tmp_path / "m.onnx", ExportOptions(**FAST), log=_quiet
    )
    assert result.report is not None and result.report.passed
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert len(graph.output) == 1
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 128]


def test_a_dynamic_graph_runs_at_other_multiples_of_32(
    name: str, model: torch.nn.Module, tmp_path: Path
) -> None:
    model.eval()
    meta = _meta(name, (64, 128))
    torch_to_onnx(
        model, meta, tmp_path / "dyn.onnx", size=(64, 128), dynamic="all", exporter="torchscript", log=_quiet
    )
    sess = cpu_session(tmp_path / "dyn.onnx")
    for n, hw in ((2, (96, 160)), (1, (160, 64))):
        x = torch.randn(n, 3, *hw)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)
    result = export_model(
        model, meta, tmp_path / "all.onnx", ExportOptions(dynamic="all", **FAST), log=_quiet
    )
    assert result.report is not None and result.report.passed
