"""Decode heads: DeepLabV3 (ASPP), PSPNet (pyramid pooling that exports exactly) and the FCN auxiliary head.

Every decode head exposes ``features(x) -> feat`` (the distilled decoder feature), ``classifier`` (1x1 conv) and
``channels`` (the width of ``feat``). They are registered by name: ``aspp``, ``psp`` and ``fcn`` (auxiliary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_head

__all__ = ["ASPPHead", "PSPHead", "FCNHead", "adaptive_avg_pool2d_exact"]


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ImagePool(nn.Module):
    """ASPP image-level branch: global average, 1x1 conv-BN-ReLU, broadcast back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _cbr(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.mean(dim=(2, 3), keepdim=True))  # (N, C, 1, 1)
        return y.expand(-1, -1, x.shape[2], x.shape[3])  # exports as Expand: dynamic H/W stay exact


@register_head("aspp")
class ASPPHead(nn.Module):
    """DeepLabV3 head: ASPP (1x1 + three dilated 3x3 + image pooling), project, 3x3 conv-BN-ReLU-Dropout."""

    def __init__(
        self, cin: int, channels: int, num_classes: int, rates: tuple[int, ...] = (12, 24, 36)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, channels, 1)] + [_cbr(cin, channels, 3, r) for r in rates])
        self.pool = _ImagePool(cin, channels)
        n = len(self.branches) + 1
        self.project = nn.Sequential(*_cbr(channels * n, channels), nn.Dropout(0.5))
        self.bottleneck = nn.Sequential(*_cbr(channels, channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.channels = channels

    def features(self, x: Tensor) -> Tensor:
        ys = [b(x) for b in self.branches] + [self.pool(x)]
        return self.bottleneck(self.project(torch.cat(ys, dim=1)))  # (N, channels, h, w)


def _pool_matrix(n: int, bins: int, like: Tensor) -> Tensor:
    """(bins, n) matrix whose row i averages [floor(i*n/bins), ceil((i+1)*n/bins)) like adaptive_avg_pool."""
    idx = torch.arange(n, device=like.device)
    i = torch.arange(bins, device=like.device).unsqueeze(1)  # (bins, 1)
    start = (i * n) // bins
    end = ((i + 1) * n + bins - 1) // bins
    mask = ((idx >= start) & (idx < end)).to(like.dtype)  # (bins, n)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d_exact(x: Tensor, bins: int) -> Tensor:
    """``adaptive_avg_pool2d(x, bins)`` as two matmuls, ``P_h @ x @ P_w^T``.

    Numerically the same as the PyTorch op, and it exports to ONNX as MatMuls at any fixed input size (the op
    itself fails or explodes for sizes that are not multiples of ``bins``).
    """
    ph = _pool_matrix(x.shape[-2], bins, x)  # (b, H)
    pw = _pool_matrix(x.shape[-1], bins, x)  # (b, W)
    return ph @ x @ pw.transpose(0, 1)  # (N, C, b, b)


class _PyramidStage(nn.Module):
    def __init__(self, cin: int, cout: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.conv = _cbr(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(adaptive_avg_pool2d_exact(x, self.bins))  # (N, cout, b, b)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


@register_head("psp")
class PSPHead(nn.Module):
    """PSPNet head: pyramid pooling over bins 1/2/3/6 (each 1x1 conv to cin/4), concat, 3x3 conv-BN-ReLU-Dropout."""

    def __init__(
        self, cin: int, channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        mid = cin // 4
        self.stages = nn.ModuleList([_PyramidStage(cin, mid, b) for b in bins])
        self.bottleneck = nn.Sequential(*_cbr(cin + mid * len(bins), channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.channels = channels

    def features(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([x] + [s(x) for s in self.stages], dim=1))  # (N, channels, h, w)


@register_head("fcn")
class FCNHead(nn.Module):
    """Auxiliary head: 3x3 conv to cin/4, BN-ReLU-Dropout(0.1), 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(*_cbr(cin, cin // 4, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(cin // 4, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(x))
