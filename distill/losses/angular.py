"""Raw-feature angular and magnitude distillation: LAD, CAD and MD (Liu et al., WACV 2024; seed 003).

Seed 003 (Eq. 10) splits the naive feature MSE of one group of N values (m = ||F_T||, n = ||F_S||, theta their
angle) into a magnitude and an angle term::

    L_naive = (1/N) ||F_T - F_S||^2 = (1/N) [ (m - n)^2 + 2mn (1 - cos theta) ]

The angle term carries the benefit but its weight 2mn/N depends on the feature norms; the angular losses distil
``1 - cos theta`` directly, the magnitude loss the first term. The main paper's text is not available here: the
group over which the cosine is taken follows the decomposition and the supplement's wording, and is a parameter
(``granularity``) so that either reading can be run:

* ``"layer"`` — each image's whole C*h*w feature is one vector (LAD, registered as ``lad``);
* ``"channel"`` — each channel's h*w map is one vector (CAD, registered as ``cad``);
* ``"pixel"`` — each position's C-vector is one vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from .base import LOSSES, Param, cosine
from .projector import ProjectedLoss

__all__ = ["AngularKD", "LayerAngularKD", "ChannelAngularKD", "MagnitudeKD", "GRANULARITIES", "group_vectors"]


def _layer(x: Tensor) -> tuple[Tensor, int]:
    return x.flatten(1), 1  # (N, C*h*w): one vector per image


def _channel(x: Tensor) -> tuple[Tensor, int]:
    return x.flatten(2), -1  # (N, C, h*w): one vector per channel


def _pixel(x: Tensor) -> tuple[Tensor, int]:
    return x.flatten(2), 1  # (N, C, h*w): one vector per position, along C


GRANULARITIES: dict[str, Callable[[Tensor], tuple[Tensor, int]]] = {
    "layer": _layer,
    "channel": _channel,
    "pixel": _pixel,
}


def _check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}, not {granularity!r}")
    return granularity


def group_vectors(x: Tensor, granularity: str) -> tuple[Tensor, int]:
    """Reshape a feature (N, C, h, w) for ``granularity``; returns the view and the dimension holding vectors."""
    return GRANULARITIES[_check_granularity(granularity)](x)


class AngularKD(ProjectedLoss):
    """Angular distillation: ``1 - cos`` between student and teacher vectors, averaged over the vectors.

    Formula (F_S projected to the teacher width; vectors grouped by ``granularity``, see the module docstring)::

        L_ad = mean_{groups g} (1 - <F_S[g], F_T[g]> / (||F_S[g]|| * ||F_T[g]||))

    Citation: Liu, Chen, Yang, Tan, "Rethinking Knowledge Distillation with Raw Features for Semantic
    Segmentation", WACV 2024. Default weight 3 for every model pair (the paper's single hyper-parameter).
    Invariant to scaling either feature by a positive factor (without BN in the projector); zero when the
    directions agree. Reduction: mean over groups and images. Ignore handling: none (labels unused). Features.
    The base of ``lad`` and ``cad``, which differ only in their default granularity.
    """

    default_weight = 3.0
    default_granularity: ClassVar[str] = "layer"
    params = {
        "granularity": Param(
            None,
            "vector grouping: layer, channel or pixel (None: the loss's own)",
            str,
            choices=tuple(GRANULARITIES),
        ),
        "eps": Param(1e-8, "lower bound on the norms in the cosine (zero vectors give cos = 0)", float),
    }

    def setup(self) -> None:
        super().setup()
        if self.granularity is None:
            self.granularity = self.default_granularity

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        s = self.align(s, t)
        sv, dim = group_vectors(s, self.granularity)
        tv, _ = group_vectors(t, self.granularity)
        return (1 - cosine(sv, tv, dim=dim, eps=self.eps)).mean()


@LOSSES.register("lad")
class LayerAngularKD(AngularKD):
    """LAD, layer-wise angular distillation: each image's whole C*h*w feature is one vector.

    Formula: ``L_lad = mean_n (1 - cos(proj(F_S)[n], F_T[n]))``. Citation: Liu et al., WACV 2024 (seed 003).
    Default weight 3. Reduction: mean over images. Ignore handling: none. ``granularity`` may still be overridden
    (see ``AngularKD``).
    """

    default_granularity = "layer"


@LOSSES.register("cad")
class ChannelAngularKD(AngularKD):
    """CAD, channel-wise angular distillation: each channel's h*w map is one vector.

    Formula: ``L_cad = mean_{n,c} (1 - cos(proj(F_S)[n,c], F_T[n,c]))``. Citation: Liu et al., WACV 2024 (seed 003).
    Default weight 3. Reduction: mean over images and channels. Ignore handling: none. ``granularity`` may still be
    overridden (see ``AngularKD``).
    """

    default_granularity = "channel"


@LOSSES.register("md")
class MagnitudeKD(ProjectedLoss):
    """Magnitude distillation, the ablation baseline of seed 003: the first term of Eq. 10.

    Formula (m = ||F_T[g]||, n = ||F_S[g]|| per group g, N_total = number of feature values in the batch)::

        L_md = sum_g (m_g - n_g)^2 / N_total

    With ``granularity="layer"`` this is ``mean_images (m - n)^2 / (C*h*w)``, and naive MSE (``fitnet`` with the
    same weight) equals L_md plus ``mean_images 2mn (1 - cos) / (C*h*w)``; every granularity keeps that identity.
    Citation: Liu et al., WACV 2024 (supplement, Fig. 7). Default weight 10, the naive-MSE (FitNet) weight, so that
    at defaults ``fitnet = md + angle term``; the seed sweeps 10 to 1000 for both.
    Reduction: sum over groups / number of values. Ignore handling: none (labels unused). Features.
    """

    default_weight = 10.0
    params = {
        "granularity": Param(
            "layer", "vector grouping: layer, channel or pixel", str, choices=tuple(GRANULARITIES)
        ),
    }

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        s = self.align(s, t)
        sv, dim = group_vectors(s, self.granularity)
        tv, _ = group_vectors(t, self.granularity)
        return (tv.norm(dim=dim) - sv.norm(dim=dim)).pow(2).sum() / t.numel()
