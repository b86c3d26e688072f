"""Backbones with dilated output stride: ResNet (deep or plain stem) and MobileNetV2.

Each backbone returns a tuple of four stage outputs (strides 4, 8, 8|16, 8|16|32 depending on ``output_stride``)
and exposes ``channels`` (the width of each stage). Layer names follow torchvision's so ImageNet files map 1:1.
The builders at the end register them by name (``resnet18``, ``resnet50``, ``resnet101``, ``mobilenetv2``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_backbone

__all__ = [
    "ResNet",
    "MobileNetV2",
    "BasicBlock",
    "Bottleneck",
    "scale_channels",
    "resnet18",
    "resnet50",
    "resnet101",
    "mobilenetv2",
]


def scale_channels(ch: int, width: float) -> int:
    """Scale a channel count by the width multiplier (at least 8)."""
    return max(8, int(round(ch * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convs; in the first block of a dilated stage conv1 enters at ``entry_dilation``, conv2 at ``dilation``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        *,
        entry_dilation: int | None = None,
    ) -> None:
        super().__init__()
        entry = dilation if entry_dilation is None else entry_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, entry, entry, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1; in the first block of a dilated stage the 3x3 conv runs at ``entry_dilation``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        *,
        entry_dilation: int | None = None,
    ) -> None:
        super().__init__()
        entry = dilation if entry_dilation is None else entry_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, entry, entry, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_RESNET_CFG = {
    18: (BasicBlock, [2, 2, 2, 2]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    """ResNet-18/50/101 for dense prediction.

    Args:
        depth: 18, 50 or 101.
        deep_stem: three 3x3 convs (64-64-128) instead of one 7x7 (the segmentation-KD papers' backbones).
        output_stride: 8 (layer3 dilation 2, layer4 dilation 4) or 16 (layer4 dilation 2) or 32.
        width: channel multiplier (the seeds' "ResNet-18 (0.5)").
    """

    def __init__(
        self, depth: int = 18, *, deep_stem: bool = True, output_stride: int = 8, width: float = 1.0
    ):
        super().__init__()
        if depth not in _RESNET_CFG:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNET_CFG)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = _RESNET_CFG[depth]
        self.deep_stem = deep_stem
        c64, c128 = scale_channels(64, width), scale_channels(128, width)
        if deep_stem:
            self.conv1 = nn.Conv2d(3, c64, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c64)
            self.conv2 = nn.Conv2d(c64, c64, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c64)
            self.conv3 = nn.Conv2d(c64, c128, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c128)
            self.inplanes = c128
        else:
            self.conv1 = nn.Conv2d(3, c64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(c64)
            self.inplanes = c64
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        # (stride, dilation) per stage: dilation replaces stride once the output stride is reached.
        d3, d4 = {8: (2, 4), 16: (1, 2), 32: (1, 1)}[output_stride]
        self.layer1 = self._make_layer(block, scale_channels(64, width), layers[0], 1, 1)
        self.layer2 = self._make_layer(block, scale_channels(128, width), layers[1], 2, 1)
        self.layer3 = self._make_layer(block, scale_channels(256, width), layers[2], 1 if d3 > 1 else 2, d3)
        self.layer4 = self._make_layer(block, scale_channels(512, width), layers[3], 1 if d4 > 1 else 2, d4)
        self.channels = [scale_channels(c, width) * block.expansion for c in (64, 128, 256, 512)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # The first block of a dilated stage enters at half the stage dilation, as the DeepLab/PSPNet backbones
        # of CIRKD (and HWD, DIST_KD) build it: a Bottleneck's 3x3 conv and a BasicBlock's conv1 take the half,
        # a BasicBlock's conv2 already the full dilation. Parameters are unaffected.
        entry = max(1, dilation // 2)
        mods = [block(self.inplanes, planes, stride, dilation, downsample, entry_dilation=entry)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 64w, H/2, W/2)
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))  # (N, 128w, H/2, W/2)
        x = self.maxpool(x)  # (N, C, H/4, W/4)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)  # stride 8
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class _InvertedResidual(nn.Module):
    """MobileNetV2 block; ``conv`` is a flat Sequential (indices 0,1,3,4[,6,7] hold weights)."""

    def __init__(self, inp: int, oup: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, dilation, dilation, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# t (expansion), c (channels), n (repeats), s (stride)
_MBV2_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 without its last 1x1 conv (ends at 320 channels), dilated to ``output_stride``.

    Stage outputs are taken after features[3] (stride 4), [6] (8), [13] (16 or dilated) and [17].
    """

    def __init__(self, *, output_stride: int = 8, width: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        inp = _make_divisible(32 * width)
        feats: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(inplace=True))
        ]
        stride, dilation = 2, 1
        for t, c, n, s in _MBV2_CFG:
            oup = _make_divisible(c * width)
            entry = dilation  # the stage's first block: the dilation reached so far
            if s > 1 and stride >= output_stride:
                # Keep the resolution and grow the receptive field instead; the formerly strided depthwise conv
                # keeps the previous (half) dilation and the later blocks take the doubled one, as in CIRKD.
                dilation, s = dilation * s, 1
            else:
                stride *= s
            for i in range(n):
                feats.append(
                    _InvertedResidual(inp, oup, s if i == 0 else 1, entry if i == 0 else dilation, t)
                )
                inp = oup
        self.features = nn.Sequential(*feats)
        self.channels = [_make_divisible(c * width) for c in (24, 32, 96, 320)]
        self._taps = (3, 6, 13, 17)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        outs = []
        for i, f in enumerate(self.features):
            x = f(x)
            if i in self._taps:
                outs.append(x)
        return tuple(outs)  # type: ignore[return-value]


# --- Registered builders ------------------------------------------------------------------------------------------
@register_backbone
def resnet18(*, deep_stem: bool = True, output_stride: int = 8, width: float = 1.0) -> ResNet:
    """ResNet-18 (BasicBlock 2-2-2-2, stage widths 64/128/256/512)."""
    return ResNet(18, deep_stem=deep_stem, output_stride=output_stride, width=width)


@register_backbone
def resnet50(*, deep_stem: bool = True, output_stride: int = 8, width: float = 1.0) -> ResNet:
    """ResNet-50 (Bottleneck 3-4-6-3, stage widths 256/512/1024/2048)."""
    return ResNet(50, deep_stem=deep_stem, output_stride=output_stride, width=width)


@register_backbone
def resnet101(*, deep_stem: bool = True, output_stride: int = 8, width: float = 1.0) -> ResNet:
    """ResNet-101 (Bottleneck 3-4-23-3, stage widths 256/512/1024/2048)."""
    return ResNet(101, deep_stem=deep_stem, output_stride=output_stride, width=width)


@register_backbone
def mobilenetv2(*, output_stride: int = 8, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 without its last 1x1 conv (stage widths 24/32/96/320)."""
    return MobileNetV2(output_stride=output_stride, width=width)
