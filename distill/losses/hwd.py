"""Holistic weighted distillation, HWD (Sun et al., ICME 2023; seed 001)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, check_same_shape

__all__ = ["HolisticWeightedKD", "hwd_channel_weights"]


def hwd_channel_weights(
    log_ps: Tensor, log_pt: Tensor, *, beta: float, mu: float, eps: float, correction: int
) -> Tensor:
    """Per-image channel weights (N, C) from the spatial log-distributions (N, C, h*w); no gradient.

    d = per-channel squared distance of the distributions, standardised across channels (+ mu), passed through
    (1 - beta^u) / (1 - beta) and a softmax scaled so that each image's weights sum to C.
    """
    with torch.no_grad():
        d = (log_ps.exp() - log_pt.exp()).pow(2).sum(-1)  # (N, C)
        mean = d.mean(dim=1, keepdim=True)  # (N, 1)
        std = d.std(dim=1, keepdim=True, correction=correction)  # (N, 1)
        u = (d - mean) / (std + eps) + mu  # (N, C); eps: all-equal distances (S == T) give u = mu, not NaN
        g = (1 - torch.pow(beta, u)) / (1 - beta)
        return d.shape[1] * F.softmax(g, dim=1)


@LOSSES.register("hwd")
class HolisticWeightedKD(KDLoss):
    """CWD on logits where each channel's KL is weighted by how badly the student still matches that channel.

    Formula (zS, zT logits (N, C, h, w); softmaxes over the h*w positions, tau = 4)::

        pS = softmax(zS / tau), pT = softmax(zT / tau)
        with no gradient:
            d[n,c] = sum_i (pS[n,c,i] - pT[n,c,i])^2
            u[n,c] = (d[n,c] - mean_c d[n,:]) / (std_c d[n,:] + eps) + mu
            g[n,c] = (1 - beta^u[n,c]) / (1 - beta)
            w[n,:] = C * softmax_c(g[n,:])
        L_hwd = tau^2 / (N*C) * sum_{n,c} w[n,c] * KL(pT[n,c] || pS[n,c])

    Citation: Sun, Chen, Wang, Ye, Feng, Chen, "Holistic Weighted Distillation for Semantic Segmentation",
    ICME 2023 (official code built on CIRKD, run with ``--activation --L MSE --process E --parameter 0.1
    --shift 1.0``).

    Defaults: beta = 0.1, mu = 1.0 (Cityscapes; the paper uses mu = 0 for ADE20K and 0.1 for COCO-Stuff),
    tau = 4, weight 3. The std across channels is the unbiased one (``correction=1``) as in torch's default used by
    the official code; ``eps`` guards it: when every channel distance is equal (S == T) the official code divides
    0 by 0, here u = mu and the loss is exactly 0.
    Reduction: sum over positions, weighted mean over images and channels. Ignore handling: none (labels unused).
    Logits only; needs at least 2 channels.

    Args:
        tau: Softmax temperature tau.
        beta: Base of the saturating transform, in (0, 1).
        mu: Shift added to the standardised distance.
        eps: Added to the std across channels.
        correction: Degrees-of-freedom correction of that std (1 unbiased, 0 population).
        weight: Loss weight (default 3).
    """

    sources = ("logits",)
    default_weight = 3.0

    def __init__(
        self,
        *,
        tau: float = 4.0,
        beta: float = 0.1,
        mu: float = 1.0,
        eps: float = 1e-12,
        correction: int = 1,
        weight: float | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(weight=weight, source=source)
        if not 0.0 < beta < 1.0:
            raise ValueError(f"hwd beta must lie in (0, 1), got {beta}")
        self.tau, self.beta, self.mu = float(tau), float(beta), float(mu)
        self.eps, self.correction = float(eps), int(correction)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        check_same_shape(s, t, "hwd logits")
        n, c = s.shape[:2]
        if c < 2:
            raise ValueError(f"hwd weights channels against each other and needs >= 2 of them, got {c}")
        tau = self.tau
        log_ps = F.log_softmax(s.flatten(2) / tau, dim=-1)  # (N, C, h*w)
        log_pt = F.log_softmax(t.flatten(2) / tau, dim=-1)  # (N, C, h*w)
        w = hwd_channel_weights(
            log_ps, log_pt, beta=self.beta, mu=self.mu, eps=self.eps, correction=self.correction
        )  # (N, C)
        kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # (N, C)
        return tau**2 * (w * kl).sum() / (n * c)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau:g}, beta={self.beta:g}, mu={self.mu:g}"
