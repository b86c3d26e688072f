"""What a training run holds while it runs: :class:`Run` (built once) and :class:`Progress` (saved with the state).

Types only: the trainer's pieces (the step, the run folder, the loop) all take a ``Run``, so it imports none of
them, only what its fields are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segkd.distill.guard import NonFiniteGuard

if TYPE_CHECKING:
    from torch import nn

    from segkd.distill.adversarial import Adversarial
    from segkd.distill.config import Config
    from segkd.infer.meta import ModelMeta

__all__ = ["Progress", "Run"]


@dataclass
class Progress:
    """What the loop needs besides the models and the optimizer; saved with the state as JSON."""

    iteration: int = 0
    best_miou: float = -math.inf
    best_iter: int = -1
    last_metrics: dict[str, Any] = field(default_factory=dict)
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)
    teacher_sha256: str | None = None  # the distilled teacher's file: a resume must distil from the same one

    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher_sha256": self.teacher_sha256,
            "iteration": self.iteration,
            "best_miou": self.best_miou if math.isfinite(self.best_miou) else None,
            "best_iter": self.best_iter,
            "last_metrics": self.last_metrics,
            "guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state["best_miou"]
        self.iteration, self.best_iter = int(state["iteration"]), int(state["best_iter"])
        self.best_miou = -math.inf if best is None else float(best)
        nan = float("nan")
        self.last_metrics = {k: _nan_for_none(v, nan) for k, v in state["last_metrics"].items()}
        self.guard.load_state_dict(state["guard"])


def _nan_for_none(value: Any, nan: float) -> Any:
    if isinstance(value, list):
        return [nan if v is None else v for v in value]
    return nan if value is None else value


@dataclass
class Run:
    """Everything a training iteration touches (built once by :func:`build_run`)."""

    cfg: Config
    accelerator: Any
    run_dir: Path
    step: nn.Module
    optimizer: Any
    train_loader: Any
    eval_loader: Any
    teacher: nn.Module | None
    teacher_meta: ModelMeta | None
    meta: ModelMeta
    progress: Progress
    adversarial: Adversarial | None = None
    lock: Any = None  # the run folder's lock file (main process), see segkd.distill.run_dir

    def components(self) -> dict[str, Any]:
        """What the run state saves besides progress and random states, by file name."""
        parts = {"model": self.accelerator.unwrap_model(self.step), "optimizer": self.optimizer}
        if self.accelerator.scaler is not None:  # fp16 loss scaling
            parts["scaler"] = self.accelerator.scaler
        if self.adversarial is not None:
            parts.update(self.adversarial.components())
        return parts

    @property
    def student(self) -> nn.Module:
        """The student inside the (possibly wrapped) step module."""
        return self.accelerator.unwrap_model(self.step).student
