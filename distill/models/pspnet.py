"""PSPNet (pyramid pooling over bins 1/2/3/6) on ResNet and MobileNetV2: the CIRKD-layout students and teachers.

Decoder feature widths follow CIRKD: 512 channels on ResNet-50/101, 128 on ResNet-18 and MobileNetV2, times
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

__all__ = ["pspnet_r18", "pspnet_r50", "pspnet_r101", "pspnet_mbv2"]


@register_model
def pspnet_r18(**kw: Any) -> SegModel:
    """PSPNet-ResNet18, the CWD paper's student (12.9M parameters at 19 classes)."""
    return on_resnet(resnet18, "psp", 128, **kw)


@register_model
def pspnet_r50(**kw: Any) -> SegModel:
    """PSPNet-ResNet50."""
    return on_resnet(resnet50, "psp", 512, **kw)


@register_model
def pspnet_r101(**kw: Any) -> SegModel:
    """PSPNet-ResNet101, the CWD paper's teacher."""
    return on_resnet(resnet101, "psp", 512, **kw)


@register_model
def pspnet_mbv2(**kw: Any) -> SegModel:
    """PSPNet-MobileNetV2, the papers' light student (2.7M parameters at 19 classes)."""
    return on_mobilenetv2("psp", 128, **kw)
