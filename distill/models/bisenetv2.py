"""BiSeNetV2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation", IJCV 2021), in the official layout.

    model = build_model("bisenetv2", num_classes=19)   # 5.2 M parameters with its four auxiliary heads

Two branches read the image: a wide, shallow detail branch (1/8) and a narrow, deep semantic branch (1/32, with
the gather-and-expand layers and the context embedding). The guided aggregation layer (``bga``) lets each branch
gate the other; one segment head classifies the result at 1/8. Four auxiliary heads, on the semantic branch's
stages (1/4, 1/8, 1/16, 1/32), run in training only.

Module names, conv geometry and the state dict are those of the official code (CoinCheung/BiSeNet,
``lib/models/bisenetv2.py``, built with ``aux_mode='train'``), key for key, so that its ImageNet backbone and its
Cityscapes checkpoints load without a key mapping (``segkd convert FILE --arch bisenetv2``). The aggregation
upsamples by a fixed factor, as in the official code: height and width must be multiples of 32.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pretrained import (
    LoadReport,
    OfficialLayout,
    WeightsError,
    load_mapped,
    read_state_dict,
    register_official_layout,
    strip_training_wrappers,
)
from .registry import model_family, register_model

__all__ = ["SIZE_MULTIPLE", "BiSeNetV2", "bisenetv2", "load_backbone"]

# What heights and widths must be multiples of: the semantic branch ends at 1/32 and the aggregation upsamples it
# by a fixed 4 onto the detail branch's 1/8 grid, so only multiples of 32 line the two branches up.
SIZE_MULTIPLE = 32


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU, its parts named ``conv``/``bn`` as the official code's."""
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(cout), relu=nn.ReLU(inplace=True)))


def _dwconv(channels: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 grouped conv, ``cout // channels`` filters per input channel (depthwise when ``cout == channels``)."""
    return nn.Conv2d(channels, cout, 3, stride, padding=1, groups=channels, bias=False)


def _pointwise(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class _DetailBranch(nn.Module):
    """Three VGG-like stages of plain 3x3 convs, each halving the size: (N, 3, H, W) -> (N, 128, H/8, W/8)."""

    def __init__(self) -> None:
        super().__init__()
        self.S1 = nn.Sequential(_conv_bn_relu(3, 64, stride=2), _conv_bn_relu(64, 64))
        self.S2 = nn.Sequential(_conv_bn_relu(64, 64, stride=2), _conv_bn_relu(64, 64), _conv_bn_relu(64, 64))
        self.S3 = nn.Sequential(
            _conv_bn_relu(64, 128, stride=2), _conv_bn_relu(128, 128), _conv_bn_relu(128, 128)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.S3(self.S2(self.S1(x)))


class _StemBlock(nn.Module):
    """The semantic branch's stem, 1/4 at once: a strided conv path and a max-pool path, concatenated and fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(3, 16, stride=2)
        self.left = nn.Sequential(_conv_bn_relu(16, 8, kernel=1), _conv_bn_relu(8, 16, stride=2))
        self.right = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse = _conv_bn_relu(32, 16)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (N, 16, H/2, W/2)
        both = torch.cat([self.left(x), self.right(x)], dim=1)  # (N, 32, H/4, W/4)
        return self.fuse(both)  # (N, 16, H/4, W/4)


class _GatherExpand(nn.Module):
    """Gather-and-expand layer at stride 1: 3x3 conv, a 6x expanding depthwise conv, a 1x1 projection, identity
    shortcut. The projection's BatchNorm starts at zero (the official initialisation), so the block starts as
    the identity."""

    def __init__(self, cin: int, cout: int, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        self.conv1 = _conv_bn_relu(cin, cin)
        self.dwconv = nn.Sequential(_dwconv(cin, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_pointwise(mid, cout), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.dwconv(self.conv1(x))) + x)


class _GatherExpandDown(nn.Module):
    """Gather-and-expand layer at stride 2: the expansion is strided, followed by a second depthwise conv; the
    shortcut is a strided depthwise conv and a 1x1 projection, each with its BatchNorm."""

    def __init__(self, cin: int, cout: int, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        self.conv1 = _conv_bn_relu(cin, cin)
        self.dwconv1 = nn.Sequential(_dwconv(cin, mid, stride=2), nn.BatchNorm2d(mid))
        self.dwconv2 = nn.Sequential(_dwconv(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(_pointwise(mid, cout), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(
            _dwconv(cin, cin, stride=2), nn.BatchNorm2d(cin), _pointwise(cin, cout), nn.BatchNorm2d(cout)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.dwconv2(self.dwconv1(self.conv1(x))))  # (N, cout, h/2, w/2)
        return self.relu(y + self.shortcut(x))


class _ContextEmbedding(nn.Module):
    """Global average pooling, BatchNorm and a 1x1 conv, broadcast back onto the feature; then a 3x3 conv."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = _conv_bn_relu(channels, channels, kernel=1)
        self.conv_last = _conv_bn_relu(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        context = self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True)))  # (N, C, 1, 1)
        return self.conv_last(x + context)


class _SemanticBranch(nn.Module):
    """Stem (1/4), two gather-and-expand stages (1/8, 1/16), the 1/32 stage and the context embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.S1S2 = _StemBlock()
        self.S3 = nn.Sequential(_GatherExpandDown(16, 32), _GatherExpand(32, 32))
        self.S4 = nn.Sequential(_GatherExpandDown(32, 64), _GatherExpand(64, 64))
        self.S5_4 = nn.Sequential(
            _GatherExpandDown(64, 128),
            _GatherExpand(128, 128),
            _GatherExpand(128, 128),
            _GatherExpand(128, 128),
        )
        self.S5_5 = _ContextEmbedding(128)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The five outputs: 1/4 (16 ch), 1/8 (32), 1/16 (64), 1/32 before (128) and after the context (128)."""
        feats = [self.S1S2(x)]
        for stage in (self.S3, self.S4, self.S5_4, self.S5_5):
            feats.append(stage(feats[-1]))
        return feats


class _GuidedAggregation(nn.Module):
    """Bilateral guided aggregation: each branch gates the other at its own resolution, then a 3x3 conv fuses.

    The detail feature (1/8) is gated by the upsampled semantic one; the semantic feature (1/32) is gated by the
    downsampled detail one and then upsampled. Both upsamplings are nearest, by 4: the sizes must line up exactly.
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        c = channels
        self.left1 = nn.Sequential(_dwconv(c, c), nn.BatchNorm2d(c), _pointwise(c, c))
        self.left2 = nn.Sequential(
            nn.Conv2d(c, c, 3, 2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.right1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.right2 = nn.Sequential(_dwconv(c, c), nn.BatchNorm2d(c), _pointwise(c, c))
        self.conv = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )

    def forward(self, detail: Tensor, semantic: Tensor) -> Tensor:
        up = 4  # 1/32 -> 1/8
        gate = F.interpolate(self.right1(semantic), scale_factor=up, mode="nearest")  # (N, C, H/8, W/8)
        detail_part = self.left1(detail) * torch.sigmoid(gate)
        semantic_part = self.left2(detail) * torch.sigmoid(self.right2(semantic))  # (N, C, H/32, W/32)
        semantic_part = F.interpolate(semantic_part, scale_factor=up, mode="nearest")  # (N, C, H/8, W/8)
        return self.conv(detail_part + semantic_part)


class _SegmentHead(nn.Module):
    """3x3 conv, dropout, 1x1 classifier, bilinear upsampling by ``up`` (align_corners=False) to the input size.

    An auxiliary head (``aux=True``) first doubles the size (nearest) and narrows to ``up**2`` channels with a
    3x3 conv, then classifies and upsamples by ``up / 2``. The main head's pieces are also called one by one
    (:meth:`features`, :meth:`classify`) for the model contract's ``feat`` and ``logits``.
    """

    def __init__(self, cin: int, mid: int, num_classes: int, up: int, aux: bool) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(cin, mid)
        self.drop = nn.Dropout(0.1)
        widen = (
            nn.Sequential(nn.Upsample(scale_factor=2), _conv_bn_relu(mid, up * up)) if aux else nn.Identity()
        )
        cls_in, cls_up = (up * up, up // 2) if aux else (mid, up)
        self.conv_out = nn.Sequential(
            widen,
            nn.Conv2d(cls_in, num_classes, 1, bias=True),
            nn.Upsample(scale_factor=cls_up, mode="bilinear", align_corners=False),
        )

    def features(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def classify(self, feat: Tensor) -> Tensor:
        """Logits at the head's working resolution, before the final upsampling."""
        return self.conv_out[1](self.conv_out[0](self.drop(feat)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out[2](self.classify(self.features(x)))


class BiSeNetV2(nn.Module):
    """BiSeNetV2 with its four auxiliary heads, following the model contract of :mod:`segkd.distill.models`.

    ``model(x)`` is the main head's 1/8 logits upsampled bilinearly to the input (``align_corners``; the official
    network's own upsampling is ``align_corners=False``, the default). With ``return_features=True``: ``logits``
    (1/8), ``feat`` (the head's 1024-channel conv, before dropout and classifier), ``stages`` (the semantic
    branch at 1/4, 1/8, 1/16 and 1/32) and, in train mode only, ``aux_all``: the four auxiliary logits at the input
    size, as the official heads upsample them (``aux`` is the first, on the 1/4 stem).
    """

    # Read by the exporter: export sizes, and the sizes a dynamic graph is checked at, are multiples of this.
    size_multiple = SIZE_MULTIPLE

    def __init__(self, num_classes: int = 19, *, align_corners: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.align_corners = align_corners
        self.detail = _DetailBranch()
        self.segment = _SemanticBranch()
        self.bga = _GuidedAggregation(128)
        self.head = _SegmentHead(128, 1024, num_classes, up=8, aux=False)
        # One head per semantic stage: input channels, output stride (the upsampling back to the input).
        self.aux2 = _SegmentHead(16, 128, num_classes, up=4, aux=True)
        self.aux3 = _SegmentHead(32, 128, num_classes, up=8, aux=True)
        self.aux4 = _SegmentHead(64, 128, num_classes, up=16, aux=True)
        self.aux5_4 = _SegmentHead(128, 128, num_classes, up=32, aux=True)
        self.feat_channels: int = 1024
        _init_weights(self)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        _check_size(x)
        s2, s3, s4, s5_4, s5 = self.segment(x)
        feat = self.head.features(self.bga(self.detail(x), s5))  # (N, 1024, H/8, W/8)
        logits = self.head.classify(feat)  # (N, K, H/8, W/8)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        if not return_features:
            return out  # (N, K, H, W)
        aux_all = []  # training only: the four auxiliary logits, (N, K, H, W) each
        if self.training:
            heads = (self.aux2, self.aux3, self.aux4, self.aux5_4)
            aux_all = [head(s) for head, s in zip(heads, (s2, s3, s4, s5_4))]
        return {
            "out": out,
            "logits": logits,
            "feat": feat,
            "aux": aux_all[0] if aux_all else None,
            "aux_all": aux_all,
            "stages": [s2, s3, s4, s5],
            "boundary": None,
        }


def _check_size(x: Tensor) -> None:
    """Refuse an input the fixed 4x upsampling cannot line up, with the sizes that work (not while exporting)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    h, w, m = *x.shape[-2:], SIZE_MULTIPLE
    if h % m or w % m:
        raise ValueError(
            f"BiSeNetV2 takes heights and widths that are multiples of {m}, got {h}x{w}; resize or pad the "
            f"input (e.g. to {-(-h // m) * m}x{-(-w // m) * m})"
        )


def _init_weights(model: nn.Module) -> None:
    """The official initialisation: Kaiming-normal convs (fan out), zero biases, BatchNorm at 1/0, and the last
    BatchNorm of every gather-and-expand branch at 0, so that each layer starts as its shortcut."""
    # A layout probe on the meta device (the converter's) has no values to draw, and drawing there is slow.
    if next(model.parameters()).is_meta:
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, (_GatherExpand, _GatherExpandDown)):
            nn.init.zeros_(m.conv2[1].weight)


def _read_backbone_file(path: str | Path, children: set[str]) -> dict[str, Tensor]:
    """Read an ImageNet backbone file as model keys.

    The official file (``backbone_v2.pth``) holds one state dict per child module (``{"detail": {...},
    "segment": {...}}``), which the official code loads child by child; it is flattened to ``detail.S1.0.conv.
    weight``... Any other file is read as a flat state dict (:func:`read_state_dict`, which names what is wrong).
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not readable here: read_state_dict below says why
        blob = None
    nested = isinstance(blob, dict) and blob and set(blob) <= children
    if nested and all(isinstance(v, dict) for v in blob.values()):
        blob = {f"{child}.{k}": v for child, sd in blob.items() for k, v in sd.items()}
    else:
        blob = read_state_dict(path)
    return strip_training_wrappers(blob)


def load_backbone(model: BiSeNetV2, path: str | Path) -> LoadReport:
    """Load the official ImageNet-pretrained branches into ``model``; the other modules keep their initialisation.

    Raises:
        WeightsError: a key the model lacks, a shape that differs, or a module the file covers only in part.
    """
    sd = _read_backbone_file(path, {name for name, _ in model.named_children()})
    report = load_mapped(model, sd, strict=False)
    covered = {k.split(".", 1)[0] for k in sd}
    report.missing = [
        k for k in report.missing if k.split(".", 1)[0] in covered and not k.endswith("num_batches_tracked")
    ]
    if not report.ok or not covered:
        raise WeightsError(
            f"{path} is not a BiSeNetV2 ImageNet backbone in the official layout (CoinCheung/BiSeNet's "
            f"backbone_v2.pth: the detail and segment branches):\n{report}"
        )
    return report


@model_family
def _bisenetv2(
    *, num_classes: int = 19, align_corners: bool = False, pretrained: str | None = None
) -> BiSeNetV2:
    """The BiSeNetV2 family (one member; the official code has no width option).

    Args:
        num_classes: output classes.
        align_corners: the final bilinear upsampling of the logits; the official network's is False.
        pretrained: the official ImageNet backbone file (``backbone_v2.pth``), loaded into the two branches.
    """
    model = BiSeNetV2(num_classes, align_corners=align_corners)
    if pretrained:
        load_backbone(model, pretrained)
    return model


@register_model
def bisenetv2(**kw: Any) -> BiSeNetV2:
    """BiSeNetV2, 5.2 M parameters in training form (3.3 M deployed: the auxiliary heads are not exported)."""
    return _bisenetv2(**kw)


# The official Cityscapes training (configs/bisenetv2_city.py, lib/data/cityscapes_cv2.py): RGB in 0..1 with the
# Cityscapes mean and std, here on the 0..255 scale.
register_official_layout(
    OfficialLayout(
        source="CoinCheung/BiSeNet lib/models/bisenetv2.py",
        mean=tuple(255 * m for m in (0.3257, 0.3690, 0.3223)),  # type: ignore[arg-type]
        std=tuple(255 * s for s in (0.2112, 0.2148, 0.2115)),  # type: ignore[arg-type]
        channel_order="RGB",
        align_corners=False,
    ),
    "bisenetv2",
)
