"""The segmentation model every CNN builder returns: backbone + decode head + optional auxiliary head.

The output contract is written in the package docstring (:mod:`segkd.distill.models`); the trainer, the losses and the
exporter rely on it. The two CNN families end this file: a decode head on a ResNet (:func:`on_resnet`) and on a
MobileNetV2 (:func:`on_mobilenetv2`), each holding the options of the ``deeplabv3_*`` and ``pspnet_*`` builders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import mobilenetv2, scale_channels
from .registry import HEADS, model_family

__all__ = ["SegModel", "on_mobilenetv2", "on_resnet", "segmentation_model"]


class SegModel(nn.Module):
    """Backbone + decode head + optional auxiliary head (see :mod:`segkd.distill.models` for the output contract).

    ``align_corners`` is the final bilinear upsampling of the logits to the input size. It is part of the
    architecture (stored in the checkpoint's ``arch``) because the trainer's losses, the runners' resize and the
    exported graph must all use the one the model was trained with.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None,
        *,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.feat_channels: int = head.channels
        self.align_corners = align_corners

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        stages = self.backbone(x)
        feat = self.head.features(stages[-1])  # (N, C, h, w)
        logits = self.head.classifier(feat)  # (N, K, h, w)
        out = F.interpolate(
            logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )  # (N, K, H, W)
        if not return_features:
            return out
        aux = self.aux_head(stages[2]) if self.aux_head is not None else None
        return {"out": out, "logits": logits, "aux": aux, "feat": feat, "stages": stages}


def segmentation_model(
    backbone: nn.Module,
    head: str,
    *,
    num_classes: int,
    head_channels: int,
    aux: bool,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """Put a built backbone, a registered decode head and the optional auxiliary FCN head together.

    Args:
        backbone: a module returning four stage outputs and exposing ``channels``.
        head: decode head name in ``HEADS`` (``aspp``, ``psp``); it reads the last stage.
        num_classes: output classes.
        head_channels: width of the decoder feature ``feat`` (what feature distillation compares).
        aux: add the auxiliary FCN head on stage 3 (trained with ``train.aux_weight``, not exported).
        align_corners: the final bilinear upsampling of the logits (and the trainer's of the auxiliary logits).
            CIRKD's models and recipes use True; False, the default, keeps checkpoints written before this
            option existed as they were.
        pretrained: ImageNet backbone file loaded before the heads are built (torchvision or CIRKD layout).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pretrained:
        from .pretrained import load_backbone_weights

        load_backbone_weights(backbone, pretrained)
    # The heads are built after the backbone, in this order, so that a seed gives the same initial weights.
    decode = HEADS.build(head, cin=backbone.channels[-1], channels=head_channels, num_classes=num_classes)
    aux_head = HEADS.build("fcn", cin=backbone.channels[2], num_classes=num_classes) if aux else None
    return SegModel(backbone, decode, aux_head, align_corners=align_corners)


@model_family
def on_resnet(
    resnet: Callable[..., nn.Module],
    head: str,
    head_channels: int,
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    deep_stem: bool = True,
    aux: bool = True,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """Decode head ``head`` on the ResNet that ``resnet`` builds, with the auxiliary FCN head (as in CIRKD).

    Args:
        resnet: ``resnet18``, ``resnet50`` or ``resnet101`` (:mod:`.backbones`).
        head: decode head name in ``HEADS``.
        head_channels: the decoder feature's width at ``width=1`` (CIRKD's: 128 on ResNet-18, 256 or 512 on the
            deeper ones).
        width: channel multiplier of backbone and heads. The other options: :func:`segmentation_model` and the
            backbone's.
    """
    backbone = resnet(deep_stem=deep_stem, output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        head,
        num_classes=num_classes,
        head_channels=scale_channels(head_channels, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )


@model_family
def on_mobilenetv2(
    head: str,
    head_channels: int,
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    aux: bool = False,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """Decode head ``head`` on MobileNetV2, without the auxiliary head by default (as in CIRKD).

    Args:
        head: decode head name in ``HEADS``.
        head_channels: the decoder feature's width at ``width=1`` (CIRKD's: 128).
        width: channel multiplier of backbone and heads. The other options: :func:`segmentation_model` and the
            backbone's.
    """
    backbone = mobilenetv2(output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        head,
        num_classes=num_classes,
        head_channels=scale_channels(head_channels, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )
