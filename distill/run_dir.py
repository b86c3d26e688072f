"""The run folder: resolved config, progress, the resumable state (written atomically) and checkpoints.

Layout of ``train.output_dir``: ``config.yaml`` (what ran), ``metrics.jsonl``, ``last.pth`` / ``best.pth``
(student checkpoints) and ``state/`` (everything a resumed run needs to continue bit-exactly).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.checkpoint import save_checkpoint
from distill.config import ConfigError, config_to_dict, load_yaml, save_config
from distill.guard import NonFiniteGuard
from distill.runlog import warn

if TYPE_CHECKING:
    from distill.build import Run

__all__ = [
    "Progress",
    "find_state",
    "load_run_state",
    "prepare_run_dir",
    "save_checkpoints",
    "save_run_state",
]

STATE, STATE_TMP, STATE_OLD = "state", "state.tmp", "state.old"
# Config keys that may change when a run is resumed without changing what it computes.
_RUN_CONTROL = {"train.resume", "train.stop_after", "train.output_dir", "train.log_every", "data.num_workers"}


@dataclass
class Progress:
    """What the loop needs besides the Accelerate-managed objects; saved with the state."""

    iteration: int = 0
    best_miou: float = -math.inf
    best_iter: int = -1
    last_metrics: dict[str, Any] = field(default_factory=dict)
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "best_iter": self.best_iter,
            "last_metrics": json.dumps(self.last_metrics),
            "guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.best_miou, self.best_iter = (
            state["iteration"],
            state["best_miou"],
            state["best_iter"],
        )
        self.last_metrics = json.loads(state["last_metrics"])
        self.guard.load_state_dict(state["guard"])


def save_checkpoints(run: Run, name: str) -> None:
    """Write the student as ``run_dir/name`` (main process), with the config and scores that made it."""
    if run.accelerator.is_main_process:
        p = run.progress
        provenance = {
            "config": config_to_dict(run.cfg),
            "iteration": p.iteration,
            "metrics": {k: v for k, v in p.last_metrics.items() if k != "Acc"},
            "teacher": run.cfg.teacher.checkpoint if run.cfg.distill else None,
        }
        save_checkpoint(run.run_dir / name, run.student.state_dict(), run.meta, provenance)


def save_run_state(accelerator: Any, run_dir: Path) -> Path:
    """``accelerator.save_state`` into ``run_dir/state`` atomically: written aside, then swapped in by renames.

    A kill at any moment leaves a complete state in ``state`` or (between the two renames) ``state.old``.
    """
    tmp, final, old = run_dir / STATE_TMP, run_dir / STATE, run_dir / STATE_OLD
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_state(run_dir: Path, resume: str) -> Path | None:
    """The state folder ``train.resume`` points at (``auto``: the run folder's, if any; ``none``: None)."""
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "custom_checkpoint_0.pkl").is_file():
            raise ConfigError(
                f"train.resume={resume} is not a state folder written by this trainer (a run's state/)"
            )
        return path
    for name in (STATE, STATE_OLD):
        if (run_dir / name / "custom_checkpoint_0.pkl").is_file():
            return run_dir / name
    return None


def load_run_state(accelerator: Any, path: Path) -> None:
    """Restore model, optimizer, scheduler, progress and every process's random states from ``path``."""
    accelerator.load_state(str(path))


def prepare_run_dir(run: Run) -> Path | None:
    """Find the state to resume from (if any), then write the resolved config; returns the state folder."""
    cfg, acc, run_dir = run.cfg, run.accelerator, run.run_dir
    state = find_state(run_dir, cfg.train.resume)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / "config.yaml"
        if state is not None and saved.is_file():
            changes = config_changes(load_yaml(saved), config_to_dict(cfg))
            if changes:
                warn("resuming with a changed config:\n  " + "\n  ".join(changes))
        save_config(cfg, saved)
    acc.wait_for_everyone()
    return state


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs, run-control keys left out."""
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{path}.")
        elif a != b and path not in _RUN_CONTROL:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes
