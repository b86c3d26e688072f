"""Segmentation models, registered by name (``deeplabv3_r18``, ``pspnet_mbv2``, ...).

Contract (what the trainer, the losses and the exporter rely on)::

    model = build_model("deeplabv3_r18", num_classes=19)
    out = model(x)                            # (N, K, H, W) logits at input resolution: what is exported
    d = model(x, return_features=True)        # dict, no hooks needed:
    d["out"]     # (N, K, H, W)   logits at input resolution
    d["logits"]  # (N, K, h, w)   logits at the output stride (1/8): what logit distillation uses
    d["aux"]     # (N, K, h, w)   auxiliary FCN logits on stage 3, or None
    d["feat"]    # (N, C, h, w)   decoder feature before the classifier (C = model.feat_channels)
    d["stages"]  # 4 backbone stage outputs
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from infer.registry import Registry

from .backbones import MobileNetV2, ResNet
from .heads import ASPPHead, FCNHead, PSPHead

__all__ = ["MODELS", "STUDENTS", "TEACHERS", "SegModel", "build_model"]

MODELS: Registry = Registry("model")


class SegModel(nn.Module):
    """Backbone + decode head + optional auxiliary head (see the module docstring for the output contract)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.feat_channels: int = head.channels

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        stages = self.backbone(x)
        feat = self.head.features(stages[-1])  # (N, C, h, w)
        logits = self.head.classifier(feat)  # (N, K, h, w)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # (N, K, H, W)
        if not return_features:
            return out
        aux = self.aux_head(stages[2]) if self.aux_head is not None else None
        return {"out": out, "logits": logits, "aux": aux, "feat": feat, "stages": stages}


def _head_channels(cin: int, head: str, width: float) -> int:
    # CIRKD widths: DeepLabV3 256 (ResNet-50/101) or 128; PSPNet 512 (ResNet-50/101) or 128.
    big = cin >= int(2048 * width)
    base = (256 if head == "deeplabv3" else 512) if big else 128
    return max(8, int(round(base * width)))


def _build(
    backbone_name: str,
    head: str,
    *,
    num_classes: int,
    width: float = 1.0,
    output_stride: int = 8,
    deep_stem: bool = True,
    aux: bool | None = None,
    pretrained: str | None = None,
) -> SegModel:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if backbone_name == "mbv2":
        backbone: nn.Module = MobileNetV2(output_stride=output_stride, width=width)
        aux = False if aux is None else aux  # CIRKD's MobileNetV2 students have no auxiliary head
    else:
        depth = int(backbone_name[1:])
        backbone = ResNet(depth, deep_stem=deep_stem, output_stride=output_stride, width=width)
        aux = True if aux is None else aux
    if pretrained:
        from .pretrained import load_backbone_weights

        load_backbone_weights(backbone, pretrained)
    cin = backbone.channels[-1]
    ch = _head_channels(cin, head, width)
    head_mod = ASPPHead(cin, ch, num_classes) if head == "deeplabv3" else PSPHead(cin, ch, num_classes)
    aux_mod = FCNHead(backbone.channels[2], num_classes) if aux else None
    return SegModel(backbone, head_mod, aux_mod)


def _register(head: str, backbone_name: str) -> None:
    name = f"{head}_{backbone_name}"

    def builder(**kw: Any) -> SegModel:
        return _build(backbone_name, head, **kw)

    builder.__name__ = name
    builder.__doc__ = f"{head} on {backbone_name}; keyword arguments as in ``build_model``."
    MODELS.register(name)(builder)


for _head in ("deeplabv3", "pspnet"):
    for _bb in ("r18", "r50", "r101", "mbv2"):
        _register(_head, _bb)

STUDENTS = ["deeplabv3_r18", "pspnet_r18", "deeplabv3_mbv2", "pspnet_mbv2"]
TEACHERS = ["deeplabv3_r101", "pspnet_r101"]


def build_model(name: str, *, num_classes: int, pretrained: str | None = None, **kw: Any) -> SegModel:
    """Build a registered model.

    Args:
        name: registry name, e.g. ``deeplabv3_r18``; see ``MODELS.names()``.
        num_classes: output classes.
        pretrained: optional ImageNet backbone file (torchvision or CIRKD deep-stem layout).
        **kw: ``width`` (channel multiplier), ``output_stride`` (8/16/32), ``deep_stem`` (ResNet), ``aux``.
    """
    return MODELS.get(name)(num_classes=num_classes, pretrained=pretrained, **kw)
