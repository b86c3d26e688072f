"""Intra-class feature variation distillation, IFVD (Wang et al., ECCV 2020), in CIRKD's form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, cosine, optional_int, resize_labels

__all__ = ["IntraClassVariationKD", "class_centre_cosine"]


def class_centre_cosine(
    f: Tensor, labels: Tensor, valid: Tensor, num_classes: int, eps: float = 1e-8
) -> Tensor:
    """Cosine (N, h*w) between each pixel's feature and its image's mean feature of the pixel's class.

    Args:
        f: Feature (N, C, h, w).
        labels: Labels (N, h, w) at the feature's size.
        valid: Bool mask (N, h, w) of pixels with a class in ``[0, num_classes)``; the others get cosine 1.
        num_classes: Number of classes.
        eps: Lower bound on the norms in the cosine.
    """
    flat = f.flatten(2)  # (N, C, P)
    valid = valid.flatten(1)  # (N, P)
    onehot = F.one_hot(labels.flatten(1).where(valid, 0), num_classes).to(f.dtype)  # (N, P, K)
    onehot = onehot * valid[..., None]
    count = onehot.sum(1)  # (N, K)
    centres = torch.bmm(flat, onehot) / count.clamp(min=1)[:, None]  # (N, C, K)
    centre_map = torch.bmm(centres, onehot.transpose(1, 2))  # (N, C, P): each pixel's class centre
    cos = cosine(flat, centre_map, dim=1, eps=eps)  # (N, P)
    return cos.where(valid, torch.ones_like(cos))


@LOSSES.register("ifvd")
class IntraClassVariationKD(KDLoss):
    """Match, pixel by pixel, how far each feature lies from its class centre (cosine), student vs teacher.

    Formula (labels nearest-resized to the feature size h, w; centres per image and class)::

        c_k(F)[n] = mean_{i : y[n,i] = k} F[n,:,i]
        cos(F)[n,i] = <F[n,:,i], c_{y[n,i]}(F)[n]> / (||F[n,:,i]|| * ||c_{y[n,i]}(F)[n]||)
        L_ifvd = mean_{n,i} (cos(F_S)[n,i] - cos(F_T)[n,i])^2

    Citation: Wang, Zhou, Jiang, Bai, Xu, "Intra-class Feature Variation Distillation for Semantic Segmentation",
    ECCV 2020. Default weight 20 (per this toolkit's method sheet; the official recipe uses 200).
    Widths may differ (each network's cosine is its own). Reduction: mean over images and all h*w pixels.
    Ignore handling: pixels labelled ``ignore_index`` (or >= ``num_classes``) take cosine 1 on both sides, so they
    add 0 but count in the mean, as in the official code. Features; needs the label map.

    """

    sources = ("feat",)
    default_weight = 20.0
    params = {
        "num_classes": Param(None, "number of classes; None takes the largest valid label + 1", optional_int),
        "ignore_index": Param(255, "label value of ignored pixels", int),
    }

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            raise ValueError("ifvd needs the label map: call loss(student, teacher, target)")
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"ifvd features: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in N/h/w"
            )
        labels = resize_labels(target.to(s.device), s.shape[-2:])  # (N, h, w)
        valid = labels != self.ignore_index
        if self.num_classes is None:
            k = int(labels[valid].max()) + 1 if bool(valid.any()) else 1
        else:
            k = int(self.num_classes)
            valid &= (labels >= 0) & (labels < k)
        return (
            (class_centre_cosine(s, labels, valid, k) - class_centre_cosine(t, labels, valid, k))
            .pow(2)
            .mean()
        )
