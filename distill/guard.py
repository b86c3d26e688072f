"""The non-finite-loss guard: a step whose loss is NaN/inf is skipped; too many in a row stop the run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from segkd.distill.runlog import warn

__all__ = ["MAX_NONFINITE", "NonFiniteGuard", "NonFiniteLossError"]

MAX_NONFINITE = 5  # consecutive skipped steps before the run stops


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for :data:`MAX_NONFINITE` iterations in a row (or the weights became non-finite)."""


class NonFiniteGuard:
    """Counts consecutive non-finite losses; warns for each skipped step and raises after ``limit`` in a row.

    ``recovery`` returns the sentence that names the last finite state and the command that resumes from it
    (the trainer sets :func:`segkd.distill.run_dir.recovery_hint`).
    """

    def __init__(
        self,
        limit: int = MAX_NONFINITE,
        run_dir: Path | None = None,
        recovery: Callable[[], str] | None = None,
    ) -> None:
        self.limit, self.run_dir, self.streak, self.recovery = limit, run_dir, 0, recovery

    def update(self, finite: bool, iteration: int, losses: dict[str, float]) -> None:
        """Record the outcome of ``iteration``; ``losses`` are the (this-process) term values, for messages."""
        if finite:
            self.streak = 0
            return
        self.streak += 1
        bad = (
            ", ".join(f"{k}={v:g}" for k, v in losses.items() if not math.isfinite(v)) or "on another process"
        )
        warn(
            f"iteration {iteration}: non-finite loss ({bad}); step skipped, the model left as it was "
            f"({self.streak}/{self.limit} in a row)"
        )
        if self.streak >= self.limit:
            hint = self.recovery() if self.recovery is not None else ""
            raise NonFiniteLossError(
                f"the loss was non-finite for {self.limit} iterations in a row (last at iteration {iteration}: {bad}); "
                "training diverged. Lower optim.lr (or add optim.warmup_iters), use train.mixed_precision=bf16 "
                f"instead of fp16, and check the labels with `segkd check`.{hint}"
            )

    def state_dict(self) -> dict[str, int]:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.streak = int(state["streak"])
