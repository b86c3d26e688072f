"""Cross-image relational KD, CIRKD (Yang et al., CVPR 2022): the mini-batch pixel-to-pixel term.

The memory-bank pixel and region terms are ``cirkd_memory`` (``cirkd_memory.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, optional_int, positive

__all__ = ["CrossImagePixelKD"]


@LOSSES.register("cirkd")
class CrossImagePixelKD(KDLoss):
    """Match, for every ordered pair of images (i, j) in the batch, each pixel's similarity distribution.

    Formula (G = L2-normalise over channels of the (optionally avg-pooled) feature, (N, C, P); tau = 0.1)::

        A[i,j] = G[i]^T G[j]                                   # (P, P) cosine similarities, pixel p of i vs q of j
        L_cirkd = 1 / (N^2 * P) * sum_{i,j} sum_p KL(softmax(A_T[i,j][p, :] / tau) || softmax(A_S[i,j][p, :] / tau))

    Citation: Yang, Zhou, An, Jiang, Xu, Zhang, "Cross-Image Relational Knowledge Distillation for Semantic
    Segmentation", CVPR 2022. Default weight 1 (``lambda_minibatch_pixel``), tau = 0.1, no pooling, as in the
    official recipe (``train_cirkd.py``, which adds ``kd`` with weight 1 and the memory terms, ``cirkd_memory``
    with weight 0.1: list all three in the config, see ``configs/_methods/cirkd.yaml``). Widths may differ (each
    network's similarities are its own). Cost: N^2 matrices of P x P (P = h*w) — the heaviest loss here;
    ``pool=2`` quarters P. Reduction: mean over image pairs and pixels p. Ignore handling: none (labels unused).
    Features. Computed on the local batch (no gathering across processes; the official code has the gather
    commented out too).
    """

    sources = ("feat",)
    default_weight = 1.0
    params = {
        "tau": Param(0.1, "temperature of the similarity softmax", positive),
        "pool": Param(1, "average-pool size applied first (1: none)", optional_int),
    }

    def _embed(self, f: Tensor) -> Tensor:
        if self.pool > 1:
            f = F.avg_pool2d(f, kernel_size=self.pool, stride=self.pool, ceil_mode=True)
        return F.normalize(f, p=2, dim=1).flatten(2)  # (N, C, P)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"cirkd features: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in N/h/w"
            )
        gs, gt = self._embed(s), self._embed(t)
        n, _, p = gs.shape
        total = s.new_zeros(())
        for i in range(n):  # one image against the whole batch at a time: N x P x P values live at once
            log_ps = F.log_softmax(torch.einsum("cp,ncq->npq", gs[i], gs) / self.tau, dim=-1)  # (N, P, P)
            log_pt = F.log_softmax(torch.einsum("cp,ncq->npq", gt[i], gt) / self.tau, dim=-1)  # (N, P, P)
            total = total + F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
        return total / (n * n * p)
