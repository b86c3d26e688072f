"""PSPNet (pyramid pooling over bins 1/2/3/6) on ResNet and MobileNetV2: the CIRKD-layout students and teachers.

Decoder feature widths follow CIRKD: 512 channels on ResNet-50/101, 128 on ResNet-18 and MobileNetV2, times
``width``. ResNet models carry the auxiliary FCN head on stage 3, MobileNetV2 ones do not (as in CIRKD).
``align_corners=True`` is CIRKD's final upsampling of the logits (the papers' recipes set it); the default False
keeps checkpoints that predate the option as they were.
"""

from __future__ import annotations

from .backbones import mobilenetv2, resnet18, resnet50, resnet101, scale_channels
from .registry import register_model
from .segmodel import SegModel, segmentation_model

__all__ = ["pspnet_r18", "pspnet_r50", "pspnet_r101", "pspnet_mbv2"]


@register_model
def pspnet_r18(
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    deep_stem: bool = True,
    aux: bool = True,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """PSPNet-ResNet18, the CWD paper's student (12.9M parameters at 19 classes)."""
    backbone = resnet18(deep_stem=deep_stem, output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        "psp",
        num_classes=num_classes,
        head_channels=scale_channels(128, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )


@register_model
def pspnet_r50(
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    deep_stem: bool = True,
    aux: bool = True,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """PSPNet-ResNet50."""
    backbone = resnet50(deep_stem=deep_stem, output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        "psp",
        num_classes=num_classes,
        head_channels=scale_channels(512, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )


@register_model
def pspnet_r101(
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    deep_stem: bool = True,
    aux: bool = True,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """PSPNet-ResNet101, the CWD paper's teacher."""
    backbone = resnet101(deep_stem=deep_stem, output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        "psp",
        num_classes=num_classes,
        head_channels=scale_channels(512, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )


@register_model
def pspnet_mbv2(
    *,
    num_classes: int = 19,
    width: float = 1.0,
    output_stride: int = 8,
    aux: bool = False,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> SegModel:
    """PSPNet-MobileNetV2, the papers' light student (2.7M parameters at 19 classes)."""
    backbone = mobilenetv2(output_stride=output_stride, width=width)
    return segmentation_model(
        backbone,
        "psp",
        num_classes=num_classes,
        head_channels=scale_channels(128, width),
        aux=aux,
        align_corners=align_corners,
        pretrained=pretrained,
    )
