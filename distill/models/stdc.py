"""STDC-Seg (Fan et al., "Rethinking BiSeNet For Real-time Semantic Segmentation", CVPR 2021): STDC1 and STDC2.

    model = build_model("stdc1", num_classes=19)          # STDC1-Seg, 12.0M parameters in its training form
    segkd convert model_maxmIOU75.pth --arch stdc2 --dataset cityscapes --out stdc2_citys.pth

The network keeps the state-dict layout of the official code (MichaelFan01/STDC-Seg ``models/model_stages.py``,
``BiSeNet(use_boundary_8=True)`` on ``nets/stdcnet.py``), key for key, so that its released ImageNet backbones and
Cityscapes models load as they are. That layout holds weights the segmentation forward never reads: the ImageNet
classifier of the backbone (``conv_last``, ``fc``, ``bn``, ``linear``) and the detail heads at strides 2, 4 and 16
(``conv_out_sp2/4/16``; the official recipe trains only the stride-8 one). Its backbone also registers each stage
twice (``features.N`` and ``xS.0.N`` name the same modules), so the files hold both names. The unread weights are
frozen (``requires_grad=False``): they keep the values they are loaded with, as in the official training.

Eval mode runs the deployed path only: backbone, context path, feature fusion and the main head. Train mode adds
the two auxiliary heads (on the context path at strides 8 and 16) and the detail map: the 1-channel logits at
stride 8 that the official ``DetailAggregateLoss`` compares with Laplacian boundaries of the labels, so that the
shallow stage learns spatial detail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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

__all__ = ["STDCNet", "STDCSeg", "stdc1", "stdc2"]

# Blocks per stage (strides 8, 16, 32) of each backbone, and the official names of its ImageNet files.
_STAGES = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}
_IMAGENET_FILES = {"stdc1": "STDCNet813M_73.91.tar", "stdc2": "STDCNet1446_76.47.tar"}
_BASE = 64  # the backbone's stem width; the official segmentation head is written for this width only
_BLOCK_CONVS = 4  # convolutions per STDC block (the official ``block_num``)


class _ConvBNReLU(nn.Module):
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU: the official ``ConvX`` and ``ConvBNReLU``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class _STDCBlock(nn.Module):
    """Short-Term Dense Concatenate block: convolutions of halving width whose outputs are concatenated.

    The first (1x1) convolution gives half the output channels, each following 3x3 one half of the previous
    width, the last repeats the width before it, so the concatenation has ``cout`` channels. A stride-2 block
    downsamples after the first convolution (a depthwise conv, ``avd_layer``) and average-pools that first output
    before it joins the concatenation.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        # C/2, C/4, C/8, C/8 for four convolutions
        widths = [cout // 2 ** min(i + 1, _BLOCK_CONVS - 1) for i in range(_BLOCK_CONVS)]
        self.conv_list = nn.ModuleList(
            [_ConvBNReLU(cin, widths[0], kernel=1)]
            + [_ConvBNReLU(a, b) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.stride = stride
        if stride == 2:
            half = cout // 2
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, 2, padding=1, groups=half, bias=False), nn.BatchNorm2d(half)
            )
            self.skip = nn.AvgPool2d(3, 2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        first = self.conv_list[0](x)  # (N, C/2, h, w)
        y = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            y = conv(y)
            outs.append(y)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first, *outs], dim=1)  # (N, C, h/s, w/s)


class STDCNet(nn.Module):
    """The STDC backbone (STDC1 = the official ``STDCNet813``, STDC2 = ``STDCNet1446``).

    ``forward`` returns the outputs at strides 2, 4, 8, 16 and 32 (32, 64, 256, 512 and 1024 channels).
    ``use_conv_last`` passes the stride-32 output through the 1x1 ``conv_last`` of the ImageNet classifier.
    """

    def __init__(self, stages: tuple[int, int, int], *, use_conv_last: bool = False) -> None:
        super().__init__()
        self.use_conv_last = use_conv_last
        self.features = nn.Sequential(*self._layers(stages))
        width = max(1024, _BASE * 16)
        # The ImageNet classifier: unused by the segmentation forward (but conv_last), kept for the official layout.
        self.conv_last = _ConvBNReLU(_BASE * 16, width, kernel=1)
        self.fc = nn.Linear(width, width, bias=False)
        self.bn = nn.BatchNorm1d(width)
        self.linear = nn.Linear(width, 1000, bias=False)
        # The official stage views: slices of ``features`` (shared modules), each wrapped once more.
        ends = [1, 2, 2 + stages[0], 2 + stages[0] + stages[1], len(self.features)]
        for name, start, end in zip(("x2", "x4", "x8", "x16", "x32"), [0, *ends[:-1]], ends):
            setattr(self, name, nn.Sequential(self.features[start:end]))
        self._init_weights()

    @staticmethod
    def _layers(stages: tuple[int, int, int]) -> list[nn.Module]:
        """Two stride-2 stem convolutions, then per stage one stride-2 STDC block and stride-1 ones."""
        layers: list[nn.Module] = [
            _ConvBNReLU(3, _BASE // 2, stride=2),
            _ConvBNReLU(_BASE // 2, _BASE, stride=2),
        ]
        cin = _BASE
        for i, blocks in enumerate(stages):
            cout = _BASE * 4 * 2**i  # 256, 512, 1024
            layers += [_STDCBlock(cin if j == 0 else cout, cout, 2 if j == 0 else 1) for j in range(blocks)]
            cin = cout
        return layers

    def _init_weights(self) -> None:
        """The official initialisation of a backbone trained from scratch (an ImageNet file replaces it)."""
        for m in self.modules():
            if m.__dict__.get("_parameters", {}).get("weight") is not None and m.weight.is_meta:
                continue  # the converter's layouts on the meta device: nothing to fill, and normal_ costs seconds
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in (self.x2, self.x4, self.x8, self.x16, self.x32):
            x = stage(x)
            feats.append(x)
        if self.use_conv_last:
            feats[-1] = self.conv_last(feats[-1])
        return feats  # strides 2, 4, 8, 16, 32


def _channel_attention(x: Tensor, *layers: Callable[[Tensor], Tensor]) -> Tensor:
    """``x`` scaled per channel by sigmoid(layers(global average of x)): the ARM's and the FFM's attention."""
    a = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1); a global average pool that exports at any size
    for layer in layers:
        a = layer(a)
    return x * torch.sigmoid(a)


class _AttentionRefinement(nn.Module):
    """ARM: a 3x3 conv whose output each channel re-weights by its global context."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return _channel_attention(self.conv(x), self.conv_atten, self.bn_atten)


class _ContextPath(nn.Module):
    """Backbone + global context + two ARMs, upsampled (nearest) from stride 32 to 16 to 8."""

    def __init__(self, stages: tuple[int, int, int], *, use_conv_last: bool) -> None:
        super().__init__()
        self.backbone = STDCNet(stages, use_conv_last=use_conv_last)
        self.arm16 = _AttentionRefinement(512, 128)
        self.arm32 = _AttentionRefinement(1024, 128)
        self.conv_head32 = _ConvBNReLU(128, 128)
        self.conv_head16 = _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(1024, 128, kernel=1)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Returns (backbone outputs at strides 2..32, context at stride 8, context at stride 16)."""
        feats = self.backbone(x)
        f8, f16, f32 = feats[2:]
        # (N, 128, 1, 1); adding it broadcasts, which is the official nearest upsampling of a 1x1 map
        context = self.conv_avg(f32.mean((2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(f32) + context, size=f16.shape[-2:], mode="nearest")
        cp16 = self.conv_head32(up32)  # (N, 128, H/16, W/16)
        up16 = F.interpolate(self.arm16(f16) + cp16, size=f8.shape[-2:], mode="nearest")
        cp8 = self.conv_head16(up16)  # (N, 128, H/8, W/8)
        return feats, cp8, cp16


class _FeatureFusion(nn.Module):
    """FFM: the stride-8 backbone output and context concatenated, mixed, and re-weighted per channel (residual)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(cin, cout, kernel=1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))  # (N, C, h, w)
        return feat + _channel_attention(feat, self.conv1, F.relu, self.conv2)


class _Head(nn.Module):
    """A 3x3 conv-BN-ReLU then a 1x1 classifier (the official ``BiSeNetOutput``)."""

    def __init__(self, cin: int, mid: int, classes: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class STDCSeg(nn.Module):
    """STDC-Seg in its official training form (see the module docstring); the output contract of
    :mod:`segkd.distill.models`, with ``aux_all`` (the two auxiliary logits) and ``boundary`` (the detail map).

    ``align_corners`` is the bilinear upsampling of the logits to the input size (the official code's: True),
    applied to the main and the auxiliary logits alike.
    """

    def __init__(
        self, stages: tuple[int, int, int], num_classes: int, *, use_conv_last: bool, align_corners: bool
    ) -> None:
        super().__init__()
        self.cp = _ContextPath(stages, use_conv_last=use_conv_last)
        self.ffm = _FeatureFusion(256 + 128, 256)
        self.conv_out = _Head(256, 256, num_classes)
        self.conv_out16 = _Head(128, 64, num_classes)
        self.conv_out32 = _Head(128, 64, num_classes)
        # Detail heads on the backbone outputs at strides 16, 8, 4, 2: the official recipe trains the stride-8 one.
        for stride, cin in ((16, 512), (8, 256), (4, 64), (2, 32)):
            setattr(self, f"conv_out_sp{stride}", _Head(cin, 64, 1))
        self.feat_channels = 256
        self.align_corners = align_corners
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("cp.backbone.") and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, a=1)  # the official initialisation of the heads
        self._freeze_unread(use_conv_last)

    def _freeze_unread(self, use_conv_last: bool) -> None:
        """Freeze the weights no forward reads: they stay as loaded, as they did in the official training (which
        gave them no gradient), and no optimizer or DistributedDataParallel waits for their gradients."""
        backbone = self.cp.backbone
        unread = [
            backbone.fc,
            backbone.bn,
            backbone.linear,
            *(getattr(self, f"conv_out_sp{s}") for s in (2, 4, 16)),
        ]
        for m in unread + ([] if use_conv_last else [backbone.conv_last]):
            m.requires_grad_(False)

    def _up(self, logits: Tensor, x: Tensor) -> Tensor:
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        feats, cp8, cp16 = self.cp(x)
        feat = self.conv_out.conv(self.ffm(feats[2], cp8))  # (N, 256, H/8, W/8)
        logits = self.conv_out.conv_out(feat)  # (N, K, H/8, W/8)
        out = self._up(logits, x)  # (N, K, H, W)
        if not return_features:
            return out
        train = self.training  # the auxiliary logits and the detail map only feed training losses
        aux_all = [self._up(self.conv_out16(cp8), x), self._up(self.conv_out32(cp16), x)] if train else []
        return {
            "out": out,
            "logits": logits,
            "feat": feat,
            "aux": aux_all[0] if train else None,
            "aux_all": aux_all,
            "boundary": self.conv_out_sp8(feats[2]) if train else None,  # (N, 1, H/8, W/8) detail logits
            "stages": feats[1:],  # strides 4, 8, 16, 32
        }


def _load_imagenet(backbone: STDCNet, path: str | Path, variant: str) -> LoadReport:
    """Load an official ImageNet STDCNet file into ``backbone``; anything but BN counters and the second names
    of shared stage modules missing (or any key unexpected, any shape wrong) raises :class:`WeightsError`."""
    sd = strip_training_wrappers(read_state_dict(path))
    report = load_mapped(backbone, sd, strict=False)
    loaded = set(sd)
    report.missing = [
        k for k in report.missing if not k.endswith("num_batches_tracked") and _features_name(k) not in loaded
    ]
    if not report.ok:
        raise WeightsError(
            f"{path} does not fit the {variant} backbone ({_IMAGENET_FILES[variant]} is the official ImageNet "
            f"file of {variant}; the other variant's file fits the other builder):\n{report}"
        )
    return report


def _features_name(key: str) -> str:
    """``x8.0.2.conv_list.0.conv.weight`` -> ``features.2.conv_list.0.conv.weight`` (the same tensor)."""
    head, _, rest = key.partition(".0.")
    return f"features.{rest}" if head in ("x2", "x4", "x8", "x16", "x32") else key


@model_family
def _stdc(
    variant: str,
    *,
    num_classes: int = 19,
    use_conv_last: bool = False,
    align_corners: bool = True,
    pretrained: str | None = None,
) -> STDCSeg:
    """STDC-Seg on the STDC1 or STDC2 backbone.

    Args:
        variant: ``stdc1`` or ``stdc2``.
        num_classes: output classes.
        use_conv_last: the official option that passes the stride-32 features through the backbone's
            ``conv_last`` (off in the official recipes and released models). The official network has no width
            option: its heads are written for the 64-channel stem.
        align_corners: the bilinear upsampling of the logits to the input size; True is the official one.
        pretrained: an official ImageNet backbone file (``STDCNet813M_73.91.tar`` for stdc1,
            ``STDCNet1446_76.47.tar`` for stdc2).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = STDCSeg(_STAGES[variant], num_classes, use_conv_last=use_conv_last, align_corners=align_corners)
    if pretrained:
        _load_imagenet(model.cp.backbone, pretrained, variant)
    return model


@register_model
def stdc1(**kw: Any) -> STDCSeg:
    """STDC1-Seg (STDCNet813 backbone), 12.0M parameters in the official training form at 19 classes."""
    return _stdc("stdc1", **kw)


@register_model
def stdc2(**kw: Any) -> STDCSeg:
    """STDC2-Seg (STDCNet1446 backbone), 16.1M parameters in the official training form at 19 classes."""
    return _stdc("stdc2", **kw)


# The official Cityscapes recipe normalises RGB images with the ImageNet mean and std (torchvision's Normalize).
register_official_layout(
    OfficialLayout(
        source="MichaelFan01/STDC-Seg models/model_stages.py",
        mean=tuple(IMAGENET_RGB[0]),
        std=tuple(IMAGENET_RGB[1]),
        channel_order="RGB",
        align_corners=True,
    ),
    "stdc1",
    "stdc2",
)
