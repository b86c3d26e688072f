"""The five CIRKD-layout models have CIRKD's geometry, conv for conv, and its bilinear upsampling.

The reference is ``../shared/fixtures/cirkd_v1_geometry.json``: every Conv2d of CIRKD's v1 models (winycg/CIRKD at
2d8ad0f, 19 classes) as its public code builds them. Dilation and padding change no parameter, so a model can load
CIRKD's weights strictly and still compute something else: only a comparison of the conv settings shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.models import build_model
from distill.models.pretrained import map_cirkd_segmentation

torch.set_num_threads(1)

# CIRKD's model name -> the project's.
CIRKD_MODELS = {
    "deeplabv3_resnet101": "deeplabv3_r101",
    "deeplabv3_resnet18": "deeplabv3_r18",
    "psp_resnet18": "pspnet_r18",
    "deeplab_mobile_mbv2": "deeplabv3_mbv2",
    "psp_mobile_mbv2": "pspnet_mbv2",
}


@pytest.fixture(scope="module")
def geometry(shared_fixtures: Path) -> dict:
    return json.loads((shared_fixtures / "cirkd_v1_geometry.json").read_text())["models"]


def _our_name(cirkd_conv: str) -> str:
    """CIRKD module name -> the project's, through the checkpoint converter's own key mapping."""
    (key,) = map_cirkd_segmentation({f"{cirkd_conv}.weight": torch.empty(0)})
    return key.removesuffix(".weight")


def _fields(conv: nn.Conv2d) -> list:
    """The fixture's fields (in, out, kernel, stride, padding, dilation, groups, bias) of a square conv."""
    for attr in ("kernel_size", "stride", "padding", "dilation"):
        value = getattr(conv, attr)
        assert value[0] == value[1], f"{attr} {value} is not square"
    return [
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        conv.stride[0],
        conv.padding[0],
        conv.dilation[0],
        conv.groups,
        conv.bias is not None,
    ]


@pytest.mark.parametrize("cirkd,ours", CIRKD_MODELS.items())
def test_every_conv_has_cirkds_kernel_stride_padding_dilation_groups_and_bias(
    geometry: dict, cirkd: str, ours: str
) -> None:
    model = build_model(ours, num_classes=19, align_corners=True)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    differences, matched = [], set()
    for name, *want in geometry[cirkd]["convs"]:
        mapped = _our_name(name)
        assert mapped in convs, f"{ours} has no conv {mapped} for CIRKD's {name}"
        matched.add(mapped)
        got = _fields(convs[mapped])
        if got != want:
            differences.append(f"{name} -> {mapped}: CIRKD {want}, ours {got}")
    assert not differences, f"{ours} differs from CIRKD's {cirkd}:\n" + "\n".join(differences)
    assert sorted(convs) == sorted(matched), f"{ours} has convs CIRKD lacks: {sorted(set(convs) - matched)}"


@pytest.mark.parametrize("cirkd,ours", CIRKD_MODELS.items())
def test_every_bilinear_upsampling_is_cirkds(
    geometry: dict, cirkd: str, ours: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIRKD's forward upsamples (PSP pyramid, ASPP pooling) with these modes; its loss and evaluation upsample
    the logits likewise. Ours must use no other, the final upsampling to the input size included."""
    want = {(c["mode"], c["align_corners"]) for c in geometry[cirkd]["interpolate_calls_in_forward"]}
    calls = []
    interpolate = torch.nn.functional.interpolate

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (F.interpolate's own signature)
        calls.append((kwargs.get("mode", "nearest"), kwargs.get("align_corners")))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", recording)
    model = build_model(ours, num_classes=19, width=0.125, align_corners=True).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls and set(calls) == want, (
        f"{ours} upsamples with {sorted(set(calls))}, CIRKD with {sorted(want)}"
    )
