"""DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022), on per-pixel class probabilities."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, boolean, check_same_shape, positive

__all__ = ["DISTKD", "pearson"]


def pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of the rows of ``x`` and ``y`` (R, D) -> (R,); eps added to the norm product."""
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)


@LOSSES.register("dist")
class DISTKD(KDLoss):
    """Match the relations of the class probabilities: across classes per pixel, and across pixels per class.

    Formula (zS, zT logits; Y = softmax over classes, laid out as (P, K) with P = N*h*w pixels of the batch)::

        Y_S = softmax(zS / tau), Y_T = softmax(zT / tau)
        inter = 1 - mean_p pearson(Y_S[p, :], Y_T[p, :])       # per pixel, across classes
        intra = 1 - mean_k pearson(Y_S[:, k], Y_T[:, k])       # per class, across all pixels of the batch
        L_dist = tau^2 * (beta * inter + gamma * intra)

    Citation: Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
    Defaults beta = gamma = 1, tau = 1, weight 1. ``softmax=False`` correlates the raw logits instead (seed 001's
    code did so for its appendix; it helps on ADE20K and hurts on Cityscapes). Reduction: means as above.
    Ignore handling: none (labels unused). Logits: the main ones (``source="logits"``) or the auxiliary head's
    (``source="aux"``, default weight 0.4): the official segmentation recipe (DIST_KD's ``segmentation/train_kd.py``)
    adds ``0.4 x DIST`` between the student's and the teacher's auxiliary logits for students with an auxiliary
    head (list both terms in the config).
    """

    sources = ("logits", "aux")
    default_weight = {"logits": 1.0, "aux": 0.4}
    params = {
        "tau": Param(1.0, "softmax temperature tau", positive),
        "beta": Param(1.0, "weight of the inter-class term", float),
        "gamma": Param(1.0, "weight of the intra-class term", float),
        "softmax": Param(True, "correlate probabilities (true) or raw logits (false)", boolean),
    }

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        check_same_shape(s, t, "dist logits")
        tau = self.tau
        if self.softmax:
            s, t = F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1)
        k = s.shape[1]
        ys = s.movedim(1, -1).reshape(-1, k)  # (P, K)
        yt = t.movedim(1, -1).reshape(-1, k)  # (P, K)
        inter = 1 - pearson(ys, yt).mean()
        intra = 1 - pearson(ys.T, yt.T).mean()
        return tau**2 * (self.beta * inter + self.gamma * intra)
