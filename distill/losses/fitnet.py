"""FitNet / naive feature MSE (Romero et al., ICLR 2015), in CIRKD's segmentation form."""

from __future__ import annotations

from torch import Tensor

from .base import LOSSES
from .projector import ProjectedLoss

__all__ = ["FitNetKD"]


@LOSSES.register("fitnet")
class FitNetKD(ProjectedLoss):
    """Mean squared error between the projected student feature and the teacher feature.

    Formula (proj: the 1x1 projector, identity when the widths agree and ``project`` is not set)::

        L_fitnet = mean_{n,c,i} (proj(F_S)[n,c,i] - F_T[n,c,i])^2

    Citation: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    Default weight 10 (seed 003 shows the right weight ranges from 10 to 1000 with the feature norms; see ``md``
    and ``lad`` for its decomposition). Reduction: mean over all values. Ignore handling: none. Features.
    """

    default_weight = 10.0

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        s = self.align(s, t)
        return (s - t).pow(2).mean()
