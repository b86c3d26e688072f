"""Structured KD, pair-wise term (Liu et al., CVPR 2019 / TPAMI 2020), in CIRKD's segmentation form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, check_same_shape, optional_int

__all__ = ["PairwiseKD", "pairwise_similarity"]


def pairwise_similarity(f: Tensor, patch: int) -> Tensor:
    """Max-pool ``patch`` x ``patch``, L2-normalise over channels, return A = F^T F per image (N, P, P)."""
    f = F.max_pool2d(f, kernel_size=patch, stride=patch, ceil_mode=True)  # (N, C, h', w')
    f = F.normalize(f, p=2, dim=1).flatten(2)  # (N, C, P)
    return torch.bmm(f.transpose(1, 2), f)  # (N, P, P)


@LOSSES.register("skd")
class PairwiseKD(KDLoss):
    """Match the pixel-to-pixel cosine-similarity matrices of student and teacher (SKD's pair-wise term).

    Formula (pool: 2x2 max-pool, ceil mode; normalisation over channels)::

        G = normalize_c(pool(F)).reshape(N, C, P),   A = G^T G   # (N, P, P)
        L_pair = mean_{n,i,j} (A_S[n,i,j] - A_T[n,i,j])^2

    Citation: Liu, Chen, Liu, Qin, Luo, Wang, "Structured Knowledge Distillation for Semantic Segmentation",
    CVPR 2019 (TPAMI 2020 version). Default weight 10 (CIRKD). Only the pair-wise term: the holistic adversarial
    term needs a discriminator with its own optimizer and is not part of this loss. Widths may differ.
    Reduction: mean over images and position pairs. Ignore handling: none. Features.
    """

    sources = ("feat",)
    default_weight = 10.0
    params = {
        "patch": Param(2, "max-pool size before the similarity (2: a quarter of the positions)", optional_int)
    }

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        a_s, a_t = pairwise_similarity(s, self.patch), pairwise_similarity(t, self.patch)
        check_same_shape(a_s, a_t, "skd similarity maps", "feature sizes h, w must agree")
        return (a_s - a_t).pow(2).mean()
