"""Knowledge-distillation losses for semantic segmentation, registered by name.

Build one with ``build_loss(name, **params)`` and call it as ``loss(student, teacher, target)`` with the models'
output dicts (``logits`` (N, K, h, w), ``feat`` (N, C, h, w)) and the label map; it returns the weighted scalar.
A config combining several is a ``KDCriterion`` (``build_losses(specs, **shared)``), which returns named terms.

Registered: ``kd``, ``cwd``, ``hwd``, ``lad``, ``cad``, ``md``, ``fitnet``, ``at``, ``skd``, ``ifvd``, ``dist``,
``mgd``, ``cirkd`` (mini-batch term) (see each class's docstring for its citation, formula and default weight).
"""

from __future__ import annotations

from . import angular, at, cirkd, cwd, dist, fitnet, hwd, ifvd, kd, mgd, skd  # noqa: F401  (registers the losses)
from .base import LOSSES, KDLoss, resize_labels
from .criterion import KDCriterion, build_loss, build_losses, loss_params
from .projector import ProjectedLoss, Projector, build_projector

__all__ = [
    "LOSSES",
    "KDLoss",
    "ProjectedLoss",
    "Projector",
    "KDCriterion",
    "build_loss",
    "build_losses",
    "build_projector",
    "loss_params",
    "resize_labels",
]
