"""Models: the registry builds, the output contract holds, sizes match the papers, foreign weights map."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from segkd.distill.convert import convert_cirkd_checkpoint
from segkd.distill.models import BACKBONES, HEADS, MODELS, STUDENTS, build_model
from segkd.distill.models.heads import adaptive_avg_pool2d_exact
from segkd.distill.models.pretrained import (
    WeightsError,
    load_backbone_weights,
    load_mapped,
    map_cirkd_segmentation,
)

torch.set_num_threads(1)

# Millions of parameters reported in METHODS.md (CIRKD layouts, 19 classes).
PAPER_PARAMS = {
    "deeplabv3_r101": 61.1,
    "deeplabv3_r18": 13.6,
    "pspnet_r18": 12.9,
    "deeplabv3_mbv2": 3.2,
    "pspnet_mbv2": 2.7,
}
CIRKD_NAMES = {
    "deeplabv3_resnet101": "deeplabv3_r101",
    "deeplabv3_resnet18": "deeplabv3_r18",
    "psp_resnet18": "pspnet_r18",
    "deeplab_mobile_mbv2": "deeplabv3_mbv2",
    "psp_mobile_mbv2": "pspnet_mbv2",
}


# the CNN families (stride 8, ``width``); SegFormer, UPerNet and imported models: test_transformers, test_byo_model
CNN_MODELS = [
    n for n in MODELS.names() if MODELS.get(n).__module__.rsplit(".", 1)[-1] in ("deeplabv3", "pspnet")
]


@pytest.mark.parametrize("name", CNN_MODELS)
def test_every_model_builds_and_follows_the_contract(name: str) -> None:
    model = build_model(name, num_classes=5, width=0.125).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        d = model(x, return_features=True)
    assert out.shape == (2, 5, 64, 96)
    assert d["logits"].shape == (2, 5, 8, 12)  # output stride 8
    assert d["feat"].shape == (2, model.feat_channels, 8, 12)
    assert len(d["stages"]) == 4
    assert torch.equal(d["out"], out)
    # The exported output is the bilinear upsampling of the 1/8 logits.
    torch.testing.assert_close(out, F.interpolate(d["logits"], size=(64, 96), mode="bilinear"))
    if name.endswith("mbv2"):
        assert d["aux"] is None
    else:
        assert d["aux"].shape == (2, 5, 8, 12)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_refuses_an_option_it_lacks_before_building(name: str) -> None:
    # Checked against the family builder's signature before anything is built (no transformers import needed).
    with pytest.raises(TypeError, match=rf"^model '{name}' has no option 'no_such_option'; its options: \w"):
        build_model(name, num_classes=19, no_such_option=1)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_returns_four_stages_of_its_declared_widths(name: str) -> None:
    backbone = BACKBONES.build(name, width=0.125).eval()
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, 64, 64))
    assert [s.shape[1] for s in stages] == backbone.channels
    assert [s.shape[-1] for s in stages] == [16, 8, 8, 8]  # output stride 8: the last two stages dilate


@pytest.mark.parametrize("name", sorted(set(HEADS.names()) - {"fcn"}))
def test_every_decode_head_gives_its_feature_and_logits_at_the_input_size(name: str) -> None:
    head = HEADS.build(name, cin=32, channels=16, num_classes=3).eval()
    with torch.no_grad():
        feat = head.features(torch.randn(2, 32, 9, 13))
    assert feat.shape == (2, head.channels, 9, 13) and head.classifier(feat).shape == (2, 3, 9, 13)


def test_an_option_the_model_lacks_is_named_with_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"'deeplabv3_mbv2' has no option 'deep_stem'.*width, output_stride"):
        build_model("deeplabv3_mbv2", num_classes=19, deep_stem=False)


@pytest.mark.parametrize("name,paper", PAPER_PARAMS.items())
def test_parameter_counts_match_the_papers(name: str, paper: float) -> None:
    n = sum(p.numel() for p in build_model(name, num_classes=19).parameters()) / 1e6
    assert abs(n - paper) / paper < 0.02, f"{name}: {n:.2f}M vs {paper}M"


def test_students_registered_and_output_stride_16() -> None:
    assert set(STUDENTS) <= set(MODELS.names())
    m = build_model("deeplabv3_r18", num_classes=3, width=0.125, output_stride=16).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64), return_features=True)["logits"].shape[-2:] == (4, 4)


def test_unknown_model_names_closest_match() -> None:
    with pytest.raises(KeyError, match="deeplabv3_r18"):
        build_model("deeplabv3_r81", num_classes=19)


@pytest.mark.parametrize("size", [(7, 11), (13, 9), (64, 128), (12, 12)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_exact_pyramid_pooling_matches_adaptive_avg_pool(size: tuple[int, int], bins: int) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d_exact(x, bins), F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize("cirkd,ours", CIRKD_NAMES.items())
def test_cirkd_segmentation_layouts_load_strictly(shared_fixtures, cirkd: str, ours: str) -> None:
    layout = json.loads((shared_fixtures / "cirkd_v1_state_dicts.json").read_text())[cirkd]
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=gen) if s else torch.tensor(7)) for k, s in layout}
    model = build_model(ours, num_classes=19)
    report = load_mapped(model, map_cirkd_segmentation(sd), strict=True)
    assert report.ok and report.loaded == len(layout)
    own = model.state_dict()
    # Spot-check that tensors land where the mapping says (values, not just shapes).
    classifier = "head.block.4.weight" if cirkd.startswith("deeplab") else "head.classifier.weight"
    assert torch.equal(own["head.classifier.weight"], sd[classifier])
    first = "pretrained.conv1.weight" if "resnet" in cirkd else "pretrained.net.features.0.0.weight"
    ours_first = "backbone.conv1.weight" if "resnet" in cirkd else "backbone.features.0.0.weight"
    assert torch.equal(own[ours_first], sd[first])


def test_cirkd_layout_with_wrong_class_count_is_reported(shared_fixtures) -> None:
    layout = json.loads((shared_fixtures / "cirkd_v1_state_dicts.json").read_text())["psp_resnet18"]
    sd = {k: torch.zeros(s) for k, s in layout}
    with pytest.raises(WeightsError, match=r"mis-shaped head\.classifier\.weight: file \[19, 128, 1, 1\]"):
        load_mapped(build_model("pspnet_r18", num_classes=21), map_cirkd_segmentation(sd))


def _torchvision_mbv2_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's mobilenet_v2 (nested Conv2dNormActivation), written out independently."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{s}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["features.0.0.weight"] = (32, 3, 3, 3)
    bn("features.0.1", 32)
    inp, idx = 32, 1
    for t, c, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:  # fmt: skip
        for _ in range(n):
            hid, p = inp * t, f"features.{idx}.conv"
            if t == 1:
                shapes[f"{p}.0.0.weight"] = (hid, 1, 3, 3)
                bn(f"{p}.0.1", hid)
                shapes[f"{p}.1.weight"] = (c, hid, 1, 1)
                bn(f"{p}.2", c)
            else:
                shapes[f"{p}.0.0.weight"] = (hid, inp, 1, 1)
                bn(f"{p}.0.1", hid)
                shapes[f"{p}.1.0.weight"] = (hid, 1, 3, 3)
                bn(f"{p}.1.1", hid)
                shapes[f"{p}.2.weight"] = (c, hid, 1, 1)
                bn(f"{p}.3", c)
            inp, idx = c, idx + 1
    shapes["features.18.0.weight"] = (1280, 320, 1, 1)
    bn("features.18.1", 1280)
    shapes["classifier.1.weight"] = (1000, 1280)
    shapes["classifier.1.bias"] = (1000,)
    return shapes


def test_torchvision_mobilenetv2_file_loads(tmp_path) -> None:
    sd = {k: torch.randn(s) if s else torch.tensor(3) for k, s in _torchvision_mbv2_layout().items()}
    torch.save(sd, tmp_path / "mbv2.pth")
    model = build_model("deeplabv3_mbv2", num_classes=19)
    report = load_backbone_weights(model.backbone, tmp_path / "mbv2.pth")
    assert report.ok and len(report.ignored) == 2 + 6  # classifier + the last 1x1 conv-BN
    own = model.backbone.state_dict()
    assert torch.equal(own["features.2.conv.3.weight"], sd["features.2.conv.1.0.weight"])  # depthwise
    assert torch.equal(own["features.1.conv.4.running_var"], sd["features.1.conv.2.running_var"])


def test_resnet_imagenet_files_load_and_stem_mismatch_is_explained(tmp_path) -> None:
    plain = build_model("pspnet_r18", num_classes=19, deep_stem=False)
    sd = {k: torch.randn_like(v.float()) for k, v in plain.backbone.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tv.pth")
    fresh = build_model("pspnet_r18", num_classes=19, deep_stem=False, pretrained=str(tmp_path / "tv.pth"))
    assert torch.equal(fresh.backbone.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    with pytest.raises(WeightsError, match="deep-stem"):
        build_model("pspnet_r18", num_classes=19, pretrained=str(tmp_path / "tv.pth"))


@pytest.mark.slow
def test_cirkd_checkpoint_converts_to_a_self_describing_one(shared_fixtures, tmp_path) -> None:
    import subprocess
    import sys

    from segkd.distill.load import load_model

    layout = json.loads((shared_fixtures / "cirkd_v1_state_dicts.json").read_text())["deeplab_mobile_mbv2"]
    sd = {f"module.{k}": (torch.randn(s) if s else torch.tensor(1)) for k, s in layout}
    torch.save({"state_dict": sd}, tmp_path / "cirkd.pth")
    out = tmp_path / "converted.pth"
    cmd = [sys.executable, "-m", "segkd.distill.convert", str(tmp_path / "cirkd.pth"), "--arch",
           "deeplabv3_mbv2", "--dataset", "cityscapes", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    model, meta = load_model(out)
    assert meta.channel_order == "BGR" and meta.mean == [104.008, 116.669, 122.679] and meta.std == [1.0] * 3
    assert meta.class_names[:3] == ["road", "sidewalk", "building"] and meta.num_classes == 19
    assert torch.equal(model.head.classifier.bias, sd["module.head.block.4.bias"])
    wrong = [a if a != "deeplabv3_mbv2" else "pspnet_mbv2" for a in cmd[:-1]] + [str(tmp_path / "y.pth")]
    res = subprocess.run(wrong, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "unexpected" in res.stdout and not (tmp_path / "y.pth").exists()


def _random_cirkd_file(shared_fixtures, cirkd: str, path, edit=None):  # noqa: ANN001, ANN202
    """A CIRKD v1 checkpoint of random weights in the fixture's exact layout (running variances positive)."""
    layout = json.loads((shared_fixtures / "cirkd_v1_state_dicts.json").read_text())[cirkd]
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.rand(s, generator=gen) + 0.5 if s else torch.tensor(7)) for k, s in layout}
    sd = {k: v - 1.0 if k.endswith(("weight", "bias")) else v for k, v in sd.items()}  # signed weights
    if edit:
        edit(sd)
    torch.save({"state_dict": sd}, path)
    return sd


@pytest.mark.parametrize(
    "cirkd,ours", [("deeplabv3_resnet18", "deeplabv3_r18"), ("psp_mobile_mbv2", "pspnet_mbv2")]
)
def test_a_converted_cirkd_model_upsamples_its_logits_as_cirkd_does(
    shared_fixtures, tmp_path, cirkd, ours
) -> None:
    from segkd.distill.load import load_model

    _random_cirkd_file(shared_fixtures, cirkd, tmp_path / "cirkd.pth")
    convert_cirkd_checkpoint(tmp_path / "cirkd.pth", ours, "cityscapes", tmp_path / "ours.pth")
    model, meta = load_model(tmp_path / "ours.pth")
    assert meta.arch == {"name": ours, "num_classes": 19, "align_corners": True}
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        logits = model(x, return_features=True)["logits"]  # (1, 19, 8, 12)
    cirkd_out = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=True)  # CIRKD's loss/eval
    torch.testing.assert_close(out, cirkd_out, rtol=0, atol=0)
    assert not torch.allclose(out, F.interpolate(logits, size=(64, 96), mode="bilinear"), atol=1e-3)


def _drop(key: str):  # noqa: ANN202
    return lambda sd: sd.pop(key)


def _add(key: str, shape: tuple[int, ...]):  # noqa: ANN202
    return lambda sd: sd.update({key: torch.zeros(shape)})


NONE_FITS = r"matches none of the CIRKD-layout models.*\n.*\n"  # the hint, then the load report's lines
MISFITS = [  # CIRKD file, --arch, --dataset, how the file is altered, what the error must say
    ("psp_resnet18", "pspnet_r18", "voc", None,
     r"\(21 classes\); it is a pspnet_r18 with 19 classes: pass --arch pspnet_r18 and a --dataset with 19 classes"),
    ("deeplabv3_resnet18", "deeplabv3_r101", "cityscapes", None, r"it is a deeplabv3_r18: pass --arch deeplabv3_r18"),
    ("psp_mobile_mbv2", "deeplabv3_mbv2", "cityscapes", None, r"it is a pspnet_mbv2: pass --arch pspnet_mbv2"),
    ("deeplabv3_resnet18", "deeplabv3_r18", "cityscapes", _drop("head.block.0.weight"),
     NONE_FITS + r"missing 1 .*head\.bottleneck\.0\.weight"),
    ("deeplab_mobile_mbv2", "deeplabv3_mbv2", "cityscapes", _add("head.extra.weight", (3,)),
     NONE_FITS + r"unexpected 1: head\.extra\.weight"),
    ("deeplab_mobile_mbv2", "deeplabv3_mbv2", "cityscapes", _add("head.block.0.weight", (64, 128, 3, 3)),
     NONE_FITS + r"mis-shaped head\.bottleneck\.0\.weight: file \[64, 128, 3, 3\] vs model \[128, 128, 3, 3\]"),
]  # fmt: skip


@pytest.mark.parametrize("cirkd,arch,dataset,edit,message", MISFITS)
def test_the_converter_refuses_weights_of_another_model_than_claimed(
    shared_fixtures, tmp_path, cirkd, arch, dataset, edit, message
) -> None:
    _random_cirkd_file(shared_fixtures, cirkd, tmp_path / "cirkd.pth", edit)
    with pytest.raises(
        WeightsError, match=rf"^{tmp_path / 'cirkd.pth'} does not fit --arch {arch}.*{message}"
    ):
        convert_cirkd_checkpoint(tmp_path / "cirkd.pth", arch, dataset, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_the_converter_refuses_a_file_not_in_cirkds_layout(tmp_path) -> None:
    plain = build_model("pspnet_r18", num_classes=19, width=0.125).state_dict()
    torch.save(plain, tmp_path / "ours.pth")
    with pytest.raises(
        WeightsError, match=r"ours\.pth does not fit .*keys \(aux_head\..*are not CIRKD's v1 layout"
    ):
        convert_cirkd_checkpoint(tmp_path / "ours.pth", "pspnet_r18", "cityscapes", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
