"""The optimizer and its learning-rate schedule: SGD, poly decay per iteration with an optional warm-up.

The learning rate is a pure function of the iteration and ``cfg.optim`` / ``cfg.train.max_iters``, set before
every step (:func:`set_lr`); nothing about it is stored in the run state. A resumed run therefore follows the
schedule of the config it runs with: extending ``train.max_iters`` of a finished run continues at the lr the
longer schedule has there, never at 0.
"""

from __future__ import annotations

from typing import Any

import torch

from segkd.distill.config import Config

__all__ = ["apply_hyperparameters", "build_optimizer", "lr_at", "poly_lr_factor", "set_lr"]


def poly_lr_factor(
    it: int, *, max_iters: int, power: float, warmup_iters: int = 0, warmup_factor: float = 0.1
) -> float:
    """Learning-rate multiplier at iteration ``it``: poly decay, times a linear warm-up at the start."""
    factor = (1.0 - min(it, max_iters) / max_iters) ** power
    if it < warmup_iters:
        factor *= warmup_factor + (1.0 - warmup_factor) * it / warmup_iters
    return factor


def lr_at(cfg: Config, it: int) -> float:
    """The learning rate of iteration ``it`` (0-based) under ``cfg``."""
    o = cfg.optim
    factor = poly_lr_factor(
        it,
        max_iters=cfg.train.max_iters,
        power=o.power,
        warmup_iters=o.warmup_iters,
        warmup_factor=o.warmup_factor,
    )
    return o.lr * factor


def set_lr(optimizer: Any, lr: float) -> None:
    """Give every parameter group the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def apply_hyperparameters(optimizer: Any, cfg: Config) -> None:
    """Set momentum and weight decay of every group from ``cfg.optim`` (after a resumed optimizer state)."""
    for group in optimizer.param_groups:
        group["momentum"], group["weight_decay"] = cfg.optim.momentum, cfg.optim.weight_decay


def build_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    """SGD over ``params`` (the student and the losses' projectors) at the lr of iteration 0."""
    o = cfg.optim
    return torch.optim.SGD(params, lr=lr_at(cfg, 0), momentum=o.momentum, weight_decay=o.weight_decay)
