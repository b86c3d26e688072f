"""Pixel-wise logit distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, check_same_shape, positive

__all__ = ["PixelKD"]


@LOSSES.register("kd")
class PixelKD(KDLoss):
    """Per-pixel KL divergence between the teacher's and the student's class distributions.

    Formula (zS, zT logits (N, K, h, w), tau the temperature)::

        pT = softmax(zT / tau, dim=classes),  log pS = log_softmax(zS / tau, dim=classes)
        L_kd = tau^2 / (N*h*w) * sum_{n,i} sum_k pT[n,k,i] * (log pT[n,k,i] - log pS[n,k,i])

    Citation: Hinton, Vinyals, Dean, arXiv:1503.02531 (2015), in CIRKD's segmentation form.
    Default weight 1, tau = 1. SKD/IFVD write the same term as an element-wise mean with weight 10, i.e. 10/K here.
    Reduction: sum over classes, mean over images and pixels. Ignore handling: none, every pixel is distilled
    (the teacher's prediction exists at ignored pixels too). Logits only.
    """

    sources = ("logits",)
    default_weight = 1.0
    params = {"tau": Param(1.0, "softmax temperature", positive)}

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        check_same_shape(s, t, "kd logits")
        tau = self.tau
        log_ps = F.log_softmax(s / tau, dim=1)  # (N, K, h, w)
        log_pt = F.log_softmax(t / tau, dim=1)
        kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(1)  # (N, h, w)
        return tau**2 * kl.mean()
