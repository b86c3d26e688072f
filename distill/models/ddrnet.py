"""DDRNet-23 and DDRNet-23-slim (Hong et al. 2021, "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes"), in the official state-dict layout so that the official checkpoints load as they are.

    model = build_model("ddrnet_23_slim", num_classes=19)
    d = model(x, return_features=True)   # "logits" and "aux" at 1/8; "aux" only in train mode

Two branches run side by side from 1/8 on: a high-resolution one that stays at 1/8 (``layer3_``, ``layer4_``,
``layer5_``) and a low-resolution one that keeps halving (``layer3``, ``layer4``, ``layer5``) and ends in the Deep
Aggregation Pyramid Pooling Module (``spp``). After stages 3 and 4 they exchange features (``down3/4`` take the
high branch down, ``compression3/4`` bring the low one up). The sum of both feeds ``final_layer``; in training
``seghead_extra`` also predicts from the high branch after stage 3 (the official ``augment=True``).

Layout, geometry and forward follow ydhongHIT/DDRNet de0db31 ``segmentation/DDRNet_23{,_slim}.py``: every module
name, key and shape of the official training form, BatchNorm for its SyncBatchNorm. One change: the official code
resizes the low branch to ``(H // 8, W // 8)``, which is the high branch's size only when H and W are multiples of
8 (elsewhere it fails); here it is resized to the high branch's own size, the same numbers wherever the official
code runs, and any input size works. Normalisation is the official training's (HRNet's ``BaseDataset``: RGB,
ImageNet mean/std); every upsampling is bilinear with ``align_corners=False``, the official evaluation's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkd.infer.meta import IMAGENET_RGB

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

__all__ = ["DDRNet", "ddrnet_23", "ddrnet_23_slim"]

# variant -> its widths: the official DualResNet_imagenet of each file.
_VARIANTS = {
    "23_slim": {"planes": 32, "spp_planes": 128, "head_planes": 64},
    "23": {"planes": 64, "spp_planes": 128, "head_planes": 128},
}
_HEADS = ("spp.", "final_layer.", "seghead_extra.")  # not in an ImageNet file: they start at initialisation


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A square convolution padded to keep the size (divided by ``stride``)."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _upsample(x: Tensor, size: tuple[int, ...] | Any) -> Tensor:
    """Bilinear resize to ``size`` with ``align_corners=False``: every resize inside the official network."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """ResNet basic block; the last block of a stage leaves out its final ReLU (``relu_out=False``), as officially:
    the branches add each other's features to a stage's output before the ReLU that the next stage applies."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, relu_out: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)
        self.relu_out = relu_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out) if self.relu_out else out


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 2, as officially); a one-block stage of it ends without a ReLU."""

    expansion = 2

    def __init__(self, cin: int, planes: int, stride: int = 1, relu_out: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _shortcut(cin, planes * self.expansion, stride)
        self.relu_out = relu_out

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out) if self.relu_out else out


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The 1x1 conv + BN projection of a block whose input and output differ in width or size (else None)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


def _stage(
    block: type[BasicBlock | Bottleneck], cin: int, planes: int, blocks: int, stride: int = 1
) -> nn.Sequential:
    """``blocks`` blocks, the first one strided; with several, the last one returns without its ReLU."""
    layers = [block(cin, planes, stride)]  # a one-block stage keeps the block's default (official)
    cin = planes * block.expansion
    layers += [block(cin, planes, relu_out=i < blocks - 1) for i in range(1, blocks)]
    return nn.Sequential(*layers)


def _bn_relu_conv(cin: int, cout: int, kernel: int, pool: nn.Module | None = None) -> nn.Sequential:
    """[pool,] BN, ReLU, conv: DAPPM's pre-activation unit (the pool is index 0 when present, as officially)."""
    layers = [pool] if pool is not None else []
    return nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(inplace=True), _conv(cin, cout, kernel))


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module: the 1/64 context of the low branch at five scales.

    Branch ``i`` (``scale1``..``scale4``: average pools of stride 2, 4, 8 and the global one) is upsampled, added
    to branch ``i - 1``'s processed output and processed by a 3x3 conv (``process{i}``); the five are concatenated,
    compressed to ``cout`` and added to a 1x1 shortcut.
    """

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__()
        pools = [nn.AvgPool2d(2 * s + 1, stride=s, padding=s) for s in (2, 4, 8)] + [nn.AdaptiveAvgPool2d(1)]
        for i, pool in enumerate(pools, start=1):
            setattr(self, f"scale{i}", _bn_relu_conv(cin, branch, 1, pool))
        self.scale0 = _bn_relu_conv(cin, branch, 1)
        for i in range(1, 5):
            setattr(self, f"process{i}", _bn_relu_conv(branch, branch, 3))
        self.compression = _bn_relu_conv(branch * 5, cout, 1)
        self.shortcut = _bn_relu_conv(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [self.scale0(x)]
        for i in range(1, 5):
            scale, process = getattr(self, f"scale{i}"), getattr(self, f"process{i}")
            outs.append(process(_upsample(scale(x), size) + outs[-1]))
        return self.compression(torch.cat(outs, dim=1)) + self.shortcut(x)  # (N, 5 * branch, h, w) compressed


class SegmentHead(nn.Module):
    """BN, ReLU, 3x3 conv, BN, ReLU, then the 1x1 classifier ``conv2``: the official ``segmenthead``."""

    def __init__(self, cin: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, channels, 3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, num_classes, 1, bias=True)

    def features(self, x: Tensor) -> Tensor:
        """The feature the classifier reads, (N, channels, h, w): what feature distillation compares."""
        return F.relu(self.bn2(self.conv1(F.relu(self.bn1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.features(x))


class DDRNet(nn.Module):
    """DDRNet in the official training form (see the module docstring); the output contract is
    :mod:`segkd.distill.models`'s, plus ``aux_all`` and ``boundary`` (None: DDRNet has no boundary branch).

    ``stages`` are the low branch's four stage outputs before each exchange (1/4, 1/8, 1/16, 1/32), the official
    ``layers``. ``seghead_extra`` (the auxiliary head) runs in train mode only: eval mode is the deployed path.
    """

    def __init__(
        self,
        *,
        planes: int,
        spp_planes: int,
        head_planes: int,
        num_classes: int,
        aux: bool = True,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        high = planes * 2  # the high-resolution branch's width
        self.conv1 = nn.Sequential(
            _conv(3, planes, 3, 2, bias=True), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            _conv(planes, planes, 3, 2, bias=True), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.layer1 = _stage(BasicBlock, planes, planes, 2)
        self.layer2 = _stage(BasicBlock, planes, planes * 2, 2, stride=2)
        self.layer3 = _stage(BasicBlock, planes * 2, planes * 4, 2, stride=2)
        self.layer4 = _stage(BasicBlock, planes * 4, planes * 8, 2, stride=2)
        self.compression3 = nn.Sequential(_conv(planes * 4, high, 1), nn.BatchNorm2d(high))
        self.compression4 = nn.Sequential(_conv(planes * 8, high, 1), nn.BatchNorm2d(high))
        self.down3 = nn.Sequential(_conv(high, planes * 4, 3, 2), nn.BatchNorm2d(planes * 4))
        self.down4 = nn.Sequential(
            _conv(high, planes * 4, 3, 2), nn.BatchNorm2d(planes * 4), nn.ReLU(inplace=True),
            _conv(planes * 4, planes * 8, 3, 2), nn.BatchNorm2d(planes * 8),
        )  # fmt: skip
        self.layer3_ = _stage(BasicBlock, planes * 2, high, 2)
        self.layer4_ = _stage(BasicBlock, high, high, 2)
        self.layer5_ = _stage(Bottleneck, high, high, 1)
        self.layer5 = _stage(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        self.seghead_extra = SegmentHead(high, head_planes, num_classes) if aux else None
        self.final_layer = SegmentHead(planes * 4, head_planes, num_classes)
        self.feat_channels: int = head_planes
        self.align_corners = align_corners
        _init_official(self)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        high, low, aux_in, stages = self._branches(x)
        feat = self.final_layer.features(low + high)  # (N, head_planes, H/8, W/8)
        logits = self.final_layer.conv2(feat)  # (N, K, H/8, W/8)
        out = F.interpolate(
            logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )  # (N, K, H, W)
        if not return_features:
            return out
        aux = self.seghead_extra(aux_in) if self.training and self.seghead_extra is not None else None
        return {
            "out": out, "logits": logits, "feat": feat, "aux": aux, "aux_all": [] if aux is None else [aux],
            "boundary": None, "stages": stages,
        }  # fmt: skip

    def _branches(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Both branches to their ends: (high, low upsampled to high's size, the auxiliary head's input, stages)."""
        l1 = self.layer1(self.conv1(x))  # (N, p, H/4, W/4)
        l2 = self.layer2(F.relu(l1))  # (N, 2p, H/8, W/8)
        l3 = self.layer3(F.relu(l2))  # (N, 4p, H/16, W/16)
        high = self.layer3_(F.relu(l2))  # (N, 2p, H/8, W/8)
        low, high = _exchange(l3, high, self.down3, self.compression3)
        aux_in = high
        l4 = self.layer4(F.relu(low))  # (N, 8p, H/32, W/32)
        high = self.layer4_(F.relu(high))
        low, high = _exchange(l4, high, self.down4, self.compression4)
        high = self.layer5_(F.relu(high))  # (N, 4p, H/8, W/8)
        low = _upsample(self.spp(self.layer5(F.relu(low))), high.shape[-2:])  # (N, 4p, H/64, W/64) -> 1/8
        return high, low, aux_in, [l1, l2, l3, l4]


def _init_official(model: nn.Module) -> None:
    """The official initialisation: He-normal convs (fan out); BatchNorm's default is already 1 and 0.

    Skipped on the meta device, where the converter builds layouts: there is nothing to fill, and torch's
    ``normal_`` on meta tensors costs seconds.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _exchange(low: Tensor, high: Tensor, down: nn.Module, compress: nn.Module) -> tuple[Tensor, Tensor]:
    """The bilateral fusion: each branch adds the other's output resampled to its size (both from the values
    before the fusion); the high branch's size, not (H // 8, W // 8), is the target, so any input size works."""
    fused_low = low + down(F.relu(high))
    fused_high = high + _upsample(compress(F.relu(low)), high.shape[-2:])
    return fused_low, fused_high


def _load_imagenet(model: DDRNet, path: str, variant: str) -> LoadReport:
    """Load an official ImageNet DDRNet file (``DDRNet23s_imagenet.pth``) into everything but the heads.

    Its classifier (``down5``, ``last_layer``, ``linear``) is ignored; ``spp``, ``final_layer`` and
    ``seghead_extra`` stay at initialisation. Any other key missing, or any shape differing, raises: the file is
    not this variant's.
    """
    sd = strip_training_wrappers(read_state_dict(path))
    own = model.state_dict()
    report = load_mapped(model, {k: v for k, v in sd.items() if k in own}, strict=False)
    report.ignored = [k for k in sd if k not in own]
    report.missing = [
        k for k in report.missing if not k.startswith(_HEADS) and not k.endswith("num_batches_tracked")
    ]
    if not report.ok:
        raise WeightsError(
            f"{path} does not fit DDRNet-{variant}'s backbone: pass the official ImageNet file of the same variant "
            f"(DDRNet23s_imagenet.pth for ddrnet_23_slim, DDRNet23_imagenet.pth for ddrnet_23):\n{report}"
        )
    return report


@model_family
def _ddrnet(
    variant: str,
    *,
    num_classes: int = 19,
    planes: int | None = None,
    spp_planes: int | None = None,
    head_planes: int | None = None,
    aux: bool = True,
    align_corners: bool = False,
    pretrained: str | None = None,
) -> DDRNet:
    """DDRNet-``variant`` (``23_slim``, ``23``) with the official widths unless given.

    Args:
        num_classes: output classes.
        planes: the stem's width; the low branch doubles it per stage, the high branch is ``2 * planes``
            (official: 32 slim, 64).
        spp_planes: width of each DAPPM branch (official: 128).
        head_planes: width of the heads' 3x3 conv, the decoder feature ``feat`` (official: 64 slim, 128).
        aux: the auxiliary head ``seghead_extra`` (the official ``augment``; in the official checkpoints).
        align_corners: the final bilinear upsampling of the logits (official evaluation: False).
        pretrained: the official ImageNet file of the same variant, loaded into all but the heads.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    given = {"planes": planes, "spp_planes": spp_planes, "head_planes": head_planes}
    widths = {k: _VARIANTS[variant][k] if v is None else v for k, v in given.items()}
    model = DDRNet(**widths, num_classes=num_classes, aux=aux, align_corners=align_corners)
    if pretrained:
        _load_imagenet(model, pretrained, variant)
    return model


@register_model
def ddrnet_23_slim(**kw: Any) -> DDRNet:
    """DDRNet-23-slim (5.7M parameters with its auxiliary head at 19 classes; 77.8 Cityscapes val mIoU officially)."""
    return _ddrnet("23_slim", **kw)


@register_model
def ddrnet_23(**kw: Any) -> DDRNet:
    """DDRNet-23 (20.3M parameters with its auxiliary head at 19 classes; 79.5 Cityscapes val mIoU officially)."""
    return _ddrnet("23", **kw)


def _official_layout(file: str) -> OfficialLayout:
    """The official Cityscapes training's input and evaluation of ``segmentation/<file>``."""
    mean, std, order = IMAGENET_RGB  # HRNet's BaseDataset: the BGR image flipped to RGB, ImageNet mean/std
    return OfficialLayout(
        source=f"ydhongHIT/DDRNet de0db31 segmentation/{file}",
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        channel_order=order,
        align_corners=False,  # "Keep align_corners=False in all places" (the official README)
    )


register_official_layout(_official_layout("DDRNet_23_slim.py"), "ddrnet_23_slim")
register_official_layout(_official_layout("DDRNet_23.py"), "ddrnet_23")
