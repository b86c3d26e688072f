"""Model traits: given at ``@register_model``, read by the converter, the set-up checks and the OpenVINO export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from segkd.distill.models import MODELS, ModelTraits, build_model, model_traits, register_model
from segkd.distill.models.registry import model_family
from segkd.export.openvino_export import _is_transformer
from segkd.infer.meta import ModelMeta

HF_FAMILIES = ["segformer_b0", "segformer_b5", "upernet_swin_t", "upernet_swin_b"]
CNNS = ["deeplabv3_r18", "deeplabv3_mbv2", "pspnet_r101", "pspnet_mbv2", "imported"]


@pytest.mark.parametrize("name", HF_FAMILIES)
def test_hugging_face_families_are_hf_transformers(name: str) -> None:
    assert model_traits(name) == ModelTraits(hf=True, transformer=True)


@pytest.mark.parametrize("name", CNNS)
def test_cnns_have_no_traits(name: str) -> None:
    assert model_traits(name).hf is False and model_traits(name).transformer is False


def test_an_unknown_model_has_no_traits_to_answer() -> None:
    with pytest.raises(KeyError, match="unknown model 'segformer_b9'. Did you mean"):
        model_traits("segformer_b9")


class _Tiny(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@model_family
def _tiny(variant: str, *, num_classes: int = 19, pretrained: str | None = None) -> nn.Module:
    return _Tiny(num_classes)


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names a test registers; unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        MODELS.remove(name)


def test_register_model_bare_and_with_traits(registered: list[str]) -> None:
    @register_model
    def test_tiny_cnn(**kw: Any) -> nn.Module:
        return _tiny("cnn", **kw)

    @register_model(transformer=True)
    def test_tiny_vit(**kw: Any) -> nn.Module:
        return _tiny("vit", **kw)

    registered += ["test_tiny_cnn", "test_tiny_vit"]
    assert model_traits("test_tiny_cnn") == ModelTraits()
    assert model_traits("test_tiny_vit") == ModelTraits(hf=False, transformer=True)
    assert test_tiny_vit.__name__ == "test_tiny_vit"  # the decorators hand the builder back
    assert build_model("test_tiny_vit", num_classes=3)(torch.zeros(1, 3, 4, 4)).shape[1] == 3
    with pytest.raises(TypeError, match="'test_tiny_cnn' has no option 'width'; its options: $"):
        build_model("test_tiny_cnn", num_classes=3, width=0.5)


def _meta(name: str) -> ModelMeta:
    return ModelMeta(arch={"name": name, "num_classes": 2}, class_names=["a", "b"], palette=[[0, 0, 0]] * 2)


def test_openvino_takes_the_transformer_scheme_by_trait(registered: list[str]) -> None:
    @register_model(transformer=True)
    def test_user_vit(**kw: Any) -> nn.Module:
        return _tiny("vit", **kw)

    registered.append("test_user_vit")
    assert _is_transformer(_meta("test_user_vit"))
    assert _is_transformer(_meta("segformer_b0")) and _is_transformer(_meta("upernet_swin_t"))
    assert not _is_transformer(_meta("pspnet_r18")) and not _is_transformer(_meta("imported"))
    assert not _is_transformer(_meta("not_registered_anywhere"))
