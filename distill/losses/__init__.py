"""Knowledge-distillation losses for semantic segmentation, registered by name.

Build one with ``build_loss(name, **params)`` and call it as ``loss(student, teacher, target)`` with the models'
output dicts (``logits`` (N, K, h, w), ``feat`` (N, C, h, w), ``aux``) and the label map; it returns the weighted
scalar. A config combining several is a ``KDCriterion`` (``build_losses(specs, **shared)``), which returns named
terms. ``LOSSES.names()`` lists them; each class's docstring gives its citation, formula, default weight and its
parameters.

Every module of this package is imported below, so a loss registers itself by being defined in any file here with
``@LOSSES.register("name")`` (``tests/test_losses.py`` checks that every loss class of every module is registered).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import LOSSES, KDLoss, Param, resize_labels
from .criterion import KDCriterion, build_loss, build_losses, loss_params
from .projector import ProjectedLoss, Projector, build_projector

for _module in pkgutil.iter_modules(__path__):  # discovery: no hand-kept import list to forget a loss in
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "LOSSES",
    "KDLoss",
    "Param",
    "ProjectedLoss",
    "Projector",
    "KDCriterion",
    "build_loss",
    "build_losses",
    "build_projector",
    "loss_params",
    "resize_labels",
]
