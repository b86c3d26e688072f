"""PIDNet-S/M/L (Xu et al., "PIDNet: A Real-time Semantic Segmentation Network Inspired by PID Controllers", CVPR
2023), in the official layout of XuJiacong/PIDNet (``models/pidnet.py``), so that its files load key for key.

Three branches run side by side at 1/8 of the input: I (integral, a ResNet-like context path down to 1/64 with
pyramid pooling), P (proportional, detail, fed context by the two ``pag`` gates) and D (derivative, boundaries,
fed the I branch's differences). ``dfm`` fuses them, weighting P against I by the sigmoid of D, and
``final_layer`` classifies. The two auxiliary heads of the official training form run in train mode only: the P
head (``seghead_p``, semantic logits, weight 0.4 in the official loss) and the D head (``seghead_d``, the boundary
map trained with a weighted BCE, which also selects the pixels of the boundary-aware semantic loss).

    model = build_model("pidnet_s", num_classes=19)
    model(x)                                   # (N, K, H, W) logits, bilinear align_corners=True (official eval)
    model.train()(x, return_features=True)     # + "aux_all": [P logits], "boundary": (N, 1, H/8, W/8)

Sizes: any input size. The official forward resizes the I and D features to ``(H // 8, W // 8)``, which fits
the P branch only when ``H`` and ``W`` are multiples of 8; here they are resized to the P branch's own size, the
same for those inputs, and right for every other one.
"""

from __future__ import annotations

from dataclasses import dataclass
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

__all__ = ["PIDNet", "pidnet_s", "pidnet_m", "pidnet_l"]


# --- blocks ------------------------------------------------------------------------------------------------------
def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The 1x1 conv-BN shortcut of a block that changes width or resolution; None when identity fits."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with a residual; ReLU at the end unless the block ends its stack (``relu_out=False``)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, relu_out: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)
        self.relu_out = relu_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out) if self.relu_out else out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 conv-BN to ``2 * planes`` with a residual; never a ReLU at the end (the
    official block's default, which every PIDNet stack keeps, ``layer5``'s first block included)."""

    expansion = 2

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 2)
        self.downsample = _downsample(cin, planes * 2, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return out + (x if self.downsample is None else self.downsample(x))


def _stack(
    block: type[BasicBlock | Bottleneck], cin: int, planes: int, n: int, stride: int = 1
) -> nn.Sequential:
    """``n`` blocks, the first strided. The stack ends without ReLU (the caller applies one where the official
    forward does): its last BasicBlock has none, and a Bottleneck never has one."""
    cout = planes * block.expansion
    blocks = [block(cin if i == 0 else cout, planes, stride if i == 0 else 1) for i in range(n)]
    if isinstance(blocks[-1], BasicBlock):
        blocks[-1].relu_out = False
    return nn.Sequential(*blocks)


class SegHead(nn.Module):
    """BN-ReLU-3x3 conv, BN-ReLU, then the 1x1 classifier ``conv2`` (official ``segmenthead``)."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 1, bias=True)

    def features(self, x: Tensor) -> Tensor:
        """The feature the classifier reads: (N, mid, h, w)."""
        return F.relu(self.bn2(self.conv1(F.relu(self.bn1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.features(x))


def _up(x: Tensor, size: torch.Size) -> Tensor:
    """Bilinear resize inside the network (the official code's ``align_corners=False``)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --- context: pyramid pooling -------------------------------------------------------------------------------------
def _bn_relu_conv(cin: int, cout: int, k: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
    ]


class _PyramidPooling(nn.Module):
    """The pooled branches shared by DAPPM and PAPPM: average pools of stride 2/4/8 and a global one (``scale1``
    ... ``scale4``), the unpooled ``scale0``, the ``compression`` of their concatenation and a ``shortcut``."""

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__()
        for i, (k, s) in enumerate([(5, 2), (9, 4), (17, 8)], start=1):
            setattr(self, f"scale{i}", nn.Sequential(nn.AvgPool2d(k, s, k // 2), *_bn_relu_conv(cin, branch)))
        self.scale4 = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), *_bn_relu_conv(cin, branch))
        self.scale0 = nn.Sequential(*_bn_relu_conv(cin, branch))

    def _pooled(self, x: Tensor) -> list[Tensor]:
        """The four pooled branches, each (N, branch, h, w) at the input's size."""
        return [_up(getattr(self, f"scale{i}")(x), x.shape[-2:]) for i in range(1, 5)]


class PAPPM(_PyramidPooling):
    """Parallel aggregation PPM (PIDNet-S/M): the pooled branches, each plus ``scale0``, in one grouped 3x3."""

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__(cin, branch, cout)
        self.scale_process = nn.Sequential(*_bn_relu_conv(branch * 4, branch * 4, 3, groups=4))
        self.compression = nn.Sequential(*_bn_relu_conv(branch * 5, cout))
        self.shortcut = nn.Sequential(*_bn_relu_conv(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.scale0(x)  # (N, branch, h, w)
        scales = self.scale_process(
            torch.cat([y + x0 for y in self._pooled(x)], dim=1)
        )  # (N, 4 * branch, h, w)
        return self.compression(torch.cat([x0, scales], dim=1)) + self.shortcut(x)  # (N, cout, h, w)


class DAPPM(_PyramidPooling):
    """Deep aggregation PPM (PIDNet-L, from DDRNet): each pooled branch adds the previous one's output and is
    refined by its own 3x3 (``process1`` ... ``process4``)."""

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__(cin, branch, cout)
        for i in range(1, 5):
            setattr(self, f"process{i}", nn.Sequential(*_bn_relu_conv(branch, branch, 3)))
        self.compression = nn.Sequential(*_bn_relu_conv(branch * 5, cout))
        self.shortcut = nn.Sequential(*_bn_relu_conv(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.scale0(x)]  # (N, branch, h, w) each
        for i, y in enumerate(self._pooled(x), start=1):
            outs.append(getattr(self, f"process{i}")(y + outs[-1]))
        return self.compression(torch.cat(outs, dim=1)) + self.shortcut(x)  # (N, cout, h, w)


# --- fusion -------------------------------------------------------------------------------------------------------
def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class PagFM(nn.Module):
    """Pixel-attention-guided fusion: P takes I's feature where their 1x1 embeddings agree (sigmoid of the dot
    product over channels)."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.f_x = _conv_bn(channels, mid)
        self.f_y = _conv_bn(channels, mid)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        size = x.shape[-2:]
        sim = torch.sigmoid((self.f_x(x) * _up(self.f_y(y), size)).sum(dim=1, keepdim=True))  # (N, 1, h, w)
        return (1 - sim) * x + sim * _up(y, size)


class LightBag(nn.Module):
    """Light boundary-attention-guided fusion (PIDNet-S/M, official ``Light_Bag``): D's sigmoid weights I into P
    and P into I, then two 1x1 conv-BN summed."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_p = _conv_bn(cin, cout)
        self.conv_i = _conv_bn(cin, cout)

    def forward(self, p: Tensor, i: Tensor, d: Tensor) -> Tensor:
        edge = torch.sigmoid(d)
        return self.conv_p((1 - edge) * i + p) + self.conv_i(i + edge * p)


class Bag(nn.Module):
    """Boundary-attention-guided fusion (PIDNet-L): P where D sees an edge, I elsewhere, then BN-ReLU-3x3."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_bn_relu_conv(cin, cout, 3))

    def forward(self, p: Tensor, i: Tensor, d: Tensor) -> Tensor:
        edge = torch.sigmoid(d)
        return self.conv(edge * p + (1 - edge) * i)


# --- the network --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Variant:
    """One official configuration (``get_seg_model``): block counts ``m``/``n`` and the widths."""

    m: int  # BasicBlocks of layer1/2 and of the P branch's layer3_/4_
    n: int  # BasicBlocks of layer3/4
    planes: int
    ppm_planes: int
    head_planes: int


_VARIANTS = {
    "s": _Variant(m=2, n=3, planes=32, ppm_planes=96, head_planes=128),
    "m": _Variant(m=2, n=3, planes=64, ppm_planes=96, head_planes=128),
    "l": _Variant(m=3, n=4, planes=64, ppm_planes=112, head_planes=256),
}


class PIDNet(nn.Module):
    """PIDNet with the output contract of :mod:`segkd.distill.models` (module names as the official code's).

    ``m == 2`` (S, M) builds the light D branch (a Bottleneck ``layer4_d``), PAPPM and ``LightBag``; ``m == 3`` (L)
    a BasicBlock ``layer4_d``, DAPPM and ``Bag``, as the official code does. In the contract's dict, ``feat`` is
    the final head's feature before its 1x1 classifier (``head_planes`` channels) and ``stages`` the I branch's
    outputs at 1/8, 1/16, 1/32 and 1/64 (the last one before the pyramid pooling).
    """

    def __init__(
        self, v: _Variant, num_classes: int, *, aux: bool = True, align_corners: bool = True
    ) -> None:
        super().__init__()
        c, light = v.planes, v.m == 2
        # I branch: stem to 1/4, then 1/8 ... 1/64.
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.layer1 = _stack(BasicBlock, c, c, v.m)
        self.layer2 = _stack(BasicBlock, c, c * 2, v.m, stride=2)
        self.layer3 = _stack(BasicBlock, c * 2, c * 4, v.n, stride=2)
        self.layer4 = _stack(BasicBlock, c * 4, c * 8, v.n, stride=2)
        self.layer5 = _stack(Bottleneck, c * 8, c * 8, 2, stride=2)
        # P branch, at 1/8, with I's context gated in after stages 3 and 4.
        self.compression3 = nn.Sequential(nn.Conv2d(c * 4, c * 2, 1, bias=False), nn.BatchNorm2d(c * 2))
        self.compression4 = nn.Sequential(nn.Conv2d(c * 8, c * 2, 1, bias=False), nn.BatchNorm2d(c * 2))
        self.pag3 = PagFM(c * 2, c)
        self.pag4 = PagFM(c * 2, c)
        self.layer3_ = _stack(BasicBlock, c * 2, c * 2, v.m)
        self.layer4_ = _stack(BasicBlock, c * 2, c * 2, v.m)
        self.layer5_ = _stack(Bottleneck, c * 2, c * 2, 1)
        # D branch, at 1/8, with I's stages 3 and 4 added.
        d3 = c if light else c * 2
        self.layer3_d = BasicBlock(c * 2, d3, relu_out=False)
        self.layer4_d = _stack(Bottleneck, c, c, 1) if light else BasicBlock(c * 2, c * 2, relu_out=False)
        self.diff3 = nn.Sequential(nn.Conv2d(c * 4, d3, 3, padding=1, bias=False), nn.BatchNorm2d(d3))
        self.diff4 = nn.Sequential(nn.Conv2d(c * 8, c * 2, 3, padding=1, bias=False), nn.BatchNorm2d(c * 2))
        self.spp = (PAPPM if light else DAPPM)(c * 16, v.ppm_planes, c * 4)
        self.dfm = (LightBag if light else Bag)(c * 4, c * 4)
        self.layer5_d = _stack(Bottleneck, c * 2, c * 2, 1)
        # Heads: the two auxiliary ones (training only), then the final one.
        self.seghead_p = SegHead(c * 2, v.head_planes, num_classes) if aux else None
        self.seghead_d = SegHead(c * 2, c, 1) if aux else None
        self.final_layer = SegHead(c * 4, v.head_planes, num_classes)
        self.feat_channels: int = v.head_planes
        self.align_corners = align_corners
        self._init_weights()

    def _init_weights(self) -> None:
        """The official initialisation: He normal (fan-out) convolutions, unit BatchNorm."""
        for mod in self.modules():
            if (
                isinstance(mod, nn.Conv2d) and not mod.weight.is_meta
            ):  # meta: the converter's layouts, nothing to fill
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def _branches(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """Run the three branches and fuse them: (fused (N, 4C, h, w), P after stage 3, D after stage 4, I stages),
        all at 1/8 but the I stages (1/8 ... 1/64). The P and D features are those the auxiliary heads read: the
        official code hands them over before an in-place ReLU that alters them, so they are ReLU'd here."""
        x2 = F.relu(self.layer2(F.relu(self.layer1(self.conv1(x)))))  # (N, 2C, h, w), h = H/8
        size = x2.shape[-2:]
        p, d = self.layer3_(x2), self.layer3_d(x2)  # (N, 2C, h, w), (N, C or 2C, h, w)
        x3 = F.relu(self.layer3(x2))  # (N, 4C, h/2, w/2)
        p3 = F.relu(self.pag3(p, self.compression3(x3)))
        d = d + _up(self.diff3(x3), size)
        x4 = F.relu(self.layer4(x3))  # (N, 8C, h/4, w/4)
        p = self.pag4(self.layer4_(p3), self.compression4(x4))
        d4 = F.relu(self.layer4_d(F.relu(d)) + _up(self.diff4(x4), size))  # (N, 2C, h, w)
        x5 = self.layer5(x4)  # (N, 16C, h/8, w/8)
        i = _up(self.spp(x5), size)  # (N, 4C, h, w)
        fused = self.dfm(self.layer5_(F.relu(p)), i, self.layer5_d(d4))  # (N, 4C, h, w)
        return fused, p3, d4, [x2, x3, x4, x5]

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        fused, p3, d4, stages = self._branches(x)
        feat = self.final_layer.features(fused)  # (N, head_planes, h, w)
        logits = self.final_layer.conv2(feat)  # (N, K, h, w)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        if not return_features:
            return out  # (N, K, H, W)
        train_heads = self.training and self.seghead_p is not None
        aux_all = [self.seghead_p(p3)] if train_heads else []  # [(N, K, h, w)]
        boundary = self.seghead_d(d4) if train_heads else None  # (N, 1, h, w) logits of "is an edge"
        return {
            "out": out,
            "logits": logits,
            "feat": feat,
            "aux": aux_all[0] if aux_all else None,
            "stages": stages,
            "aux_all": aux_all,
            "boundary": boundary,
        }


# --- building -----------------------------------------------------------------------------------------------------
# The class-count-dependent convolutions: a file of another class count (e.g. Cityscapes weights as the start of a
# VOC model) leaves them at initialisation.
_CLASSIFIERS = ("final_layer.conv2.", "seghead_p.conv2.")


def _load_pretrained(model: PIDNet, path: str) -> LoadReport:
    """Load an official ImageNet (or Cityscapes) file by name and shape, as the official ``get_seg_model`` does,
    but refuse one of another variant instead of keeping only its few fitting tensors."""
    report = load_mapped(model, strip_training_wrappers(read_state_dict(path)), strict=False)
    report.ignored = report.unexpected + [k for k, _, _ in report.mismatched if k.startswith(_CLASSIFIERS)]
    report.unexpected = []
    report.mismatched = [m for m in report.mismatched if not m[0].startswith(_CLASSIFIERS)]
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if report.mismatched or not report.loaded:
        raise WeightsError(
            f"{path} does not fit this PIDNet: pass the official file of the same variant "
            f"(PIDNet_S/M/L_ImageNet.pth.tar for pidnet_s/m/l) or build with its widths:\n{report}"
        )
    return report


@model_family
def _pidnet(
    variant: str,
    *,
    num_classes: int = 19,
    planes: int | None = None,
    ppm_planes: int | None = None,
    head_planes: int | None = None,
    aux: bool = True,
    align_corners: bool = True,
    pretrained: str | None = None,
) -> PIDNet:
    """PIDNet ``variant`` (``s``, ``m``, ``l``) in the official training form.

    Args:
        num_classes: output classes.
        planes, ppm_planes, head_planes: the official widths (base channels, pyramid-pooling branch, head); None
            keeps the variant's (S: 32/96/128, M: 64/96/128, L: 64/112/256).
        aux: build the P and D auxiliary heads (``seghead_p``, ``seghead_d``), run in train mode only; False is the
            official deploy form (``augment=False``), whose files lack them.
        align_corners: the final bilinear upsampling of the logits; True is the official evaluation's.
        pretrained: an official ImageNet file (``PIDNet_S_ImageNet.pth.tar``), loaded by key and shape.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    base = _VARIANTS[variant]
    widths = {"planes": planes, "ppm_planes": ppm_planes, "head_planes": head_planes}
    v = _Variant(base.m, base.n, **{k: w if w is not None else getattr(base, k) for k, w in widths.items()})
    model = PIDNet(v, num_classes, aux=aux, align_corners=align_corners)
    if pretrained:
        _load_pretrained(model, pretrained)
    return model


@register_model
def pidnet_s(**kw: Any) -> PIDNet:
    """PIDNet-S (7.7M parameters in the training form at 19 classes; 78.8 mIoU on Cityscapes val)."""
    return _pidnet("s", **kw)


@register_model
def pidnet_m(**kw: Any) -> PIDNet:
    """PIDNet-M (80.1 mIoU on Cityscapes val)."""
    return _pidnet("m", **kw)


@register_model
def pidnet_l(**kw: Any) -> PIDNet:
    """PIDNet-L (80.9 mIoU on Cityscapes val)."""
    return _pidnet("l", **kw)


register_official_layout(
    OfficialLayout(
        source="XuJiacong/PIDNet models/pidnet.py",
        mean=tuple(IMAGENET_RGB[0]),  # the official loader: RGB / 255, ImageNet mean and std (here on 0..255)
        std=tuple(IMAGENET_RGB[1]),
        channel_order="RGB",
        align_corners=True,  # MODEL.ALIGN_CORNERS, the official full-size upsampling
    ),
    "pidnet_s",
    "pidnet_m",
    "pidnet_l",
)
