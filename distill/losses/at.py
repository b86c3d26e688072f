"""Attention transfer, AT (Zagoruyko & Komodakis, ICLR 2017), in CIRKD's segmentation form."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, check_same_shape

__all__ = ["AttentionTransferKD", "attention_map"]


def attention_map(f: Tensor) -> Tensor:
    """Spatial attention (N, h*w): the channel mean of f^2, L2-normalised over positions."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)  # (N, h*w)


@LOSSES.register("at")
class AttentionTransferKD(KDLoss):
    """Match the L2-normalised spatial attention maps of student and teacher.

    Formula::

        a(F) = normalize_positions(mean_c F[:, c]^2)          # (N, h*w)
        L_at = mean_{n,i} (a(F_S)[n,i] - a(F_T)[n,i])^2

    Citation: Zagoruyko, Komodakis, "Paying More Attention to Attention", ICLR 2017.
    Default weight 10000 (CIRKD). Widths may differ (the map averages over channels); sizes must agree.
    Reduction: mean over images and positions. Ignore handling: none. Features.
    """

    sources = ("feat",)
    default_weight = 10000.0

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        a_s, a_t = attention_map(s), attention_map(t)
        check_same_shape(a_s, a_t, "at attention maps", "feature sizes h, w must agree")
        return (a_s - a_t).pow(2).mean()
