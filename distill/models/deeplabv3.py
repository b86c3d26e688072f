"""DeepLabV3 (ASPP rates 12/24/36 + image pooling) on ResNet and MobileNetV2: the CIRKD-layout students and teachers.

Decoder feature widths follow CIRKD: 256 channels on ResNet-50/101, 128 on ResNet-18 and MobileNetV2, times
``width``. ResNet models carry the auxiliary FCN head on stage 3, MobileNetV2 ones do not (as in CIRKD).
``align_corners=True`` is CIRKD's final upsampling of the logits (the papers' recipes set it); the default False
keeps checkpoints that predate the option as they were. The options and their defaults: :func:`.segmodel.on_resnet`
and :func:`.segmodel.on_mobilenetv2`.
"""

from __future__ import annotations

from typing import Any

from .backbones import resnet18, resnet50, resnet101
from .registry import register_model
from .segmodel import SegModel, on_mobilenetv2, on_resnet

__all__ = ["deeplabv3_r18", "deeplabv3_r50", "deeplabv3_r101", "deeplabv3_mbv2"]


@register_model
def deeplabv3_r18(**kw: Any) -> SegModel:
    """DeepLabV3-ResNet18, the papers' main student (13.6M parameters at 19 classes)."""
    return on_resnet(resnet18, "aspp", 128, **kw)


@register_model
def deeplabv3_r50(**kw: Any) -> SegModel:
    """DeepLabV3-ResNet50."""
    return on_resnet(resnet50, "aspp", 256, **kw)


@register_model
def deeplabv3_r101(**kw: Any) -> SegModel:
    """DeepLabV3-ResNet101, the papers' teacher (61.1M parameters at 19 classes)."""
    return on_resnet(resnet101, "aspp", 256, **kw)


@register_model
def deeplabv3_mbv2(**kw: Any) -> SegModel:
    """DeepLabV3-MobileNetV2, the papers' light student (3.2M parameters at 19 classes)."""
    return on_mobilenetv2("aspp", 128, **kw)
