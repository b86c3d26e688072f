"""The run folder: one writer, the resolved config, the resumable state (written atomically) and checkpoints.

Layout of ``train.output_dir``: ``config.yaml`` (the config that ran last), ``metrics.jsonl``, ``last.pth`` /
``best.pth`` (student checkpoints), ``state/`` (see :mod:`segkd.distill.run_state`), ``.lock`` (held with
`filelock` while a trainer writes the folder; the OS drops it when the trainer dies) and ``.lock.owner`` (which
process holds it, emptied on release).

Resuming with changed settings: the optimizer and schedule settings (``optim.*``, ``train.max_iters``) and the
evaluation/saving cadence apply from the resumed iteration on (the lr is a function of the iteration, so the
schedule is rebuilt; extending a finished run continues at the longer schedule's lr). Any other change (model,
data, losses, seed, batch) is refused in the same folder, with the command that forks the run instead.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.config import Config, ConfigError, config_to_dict, load_yaml, save_config
from segkd.distill.guard import NonFiniteLossError
from segkd.distill.run import Progress, Run
from segkd.distill.run_state import (
    PROGRESS,
    RunStateError,
    is_disk_full,
    is_state,
    load_run_state,
    remove_partial,
)
from segkd.distill.run_state import save_run_state as _write_state
from segkd.distill.runlog import say, warn
from segkd.infer.fileio import LOCK_NAME, OWNER_NAME, FolderBusy, lock_folder, unlock_folder
from segkd.script import train_command

__all__ = [
    "DiskFullError",
    "Progress",
    "check_finite",
    "find_state",
    "forget_failed_fork",
    "prepare_run_dir",
    "raise_on_all",
    "recovery_hint",
    "release_lock",
    "resume",
    "save_checkpoints",
    "save_state",
    "saved_settings",
]

STATE, STATE_TMP, STATE_OLD = "state", "state.tmp", "state.old"
# The lock, and who holds it: a file of its own, as filelock may truncate or recreate the lock file it locks.
_OUTPUTS = ("metrics.jsonl", "best.pth", "last.pth", STATE, STATE_OLD)
# Keys that may change between invocations without changing what the run computes.
_RUN_CONTROL = {"train.resume", "train.stop_after", "train.output_dir", "train.log_every", "train.overwrite",
                "data.num_workers", "data.check", "data.max_bad_files"}  # fmt: skip
# Keys that decide the tensors a state holds (the student's layers, the losses' projectors, the discriminator).
_STRUCTURE = tuple(
    f"student.{k}:" for k in ("name", "width", "output_stride", "deep_stem", "aux", "num_classes")
) + ("student.options.", "adversarial.enabled:", "adversarial.width:")
# Keys whose new value a resumed run applies from the resumed iteration on.
_APPLIED = ("optim.", "train.max_iters", "train.eval_every", "train.save_every", "eval.")


class DiskFullError(OSError):
    """The disk filled up while the run state or a checkpoint was written (the last good one is kept)."""


# ------------------------------------------------------------------------------------------- one writer


def _lock(run_dir: Path) -> Any:
    """Hold the run folder's lock (see :func:`segkd.infer.fileio.lock_folder`); refuse a second writer. A lock
    whose holder died is taken over with a warning."""
    try:
        lock, previous = lock_folder(run_dir)
    except FolderBusy as e:
        raise ConfigError(
            f"run folder {run_dir} is being written by {e.holder or 'another process'}; wait for it to "
            "finish, or train into another folder with train.output_dir=PATH"
        ) from None
    if previous:
        warn(f"took over the lock of {run_dir} from {previous}, which is no longer running")
    return lock


def release_lock(run: Run) -> None:
    """Let another trainer write the folder (the owner record is emptied, then the lock released)."""
    if run.lock is not None:
        unlock_folder(run.run_dir, run.lock)
        run.lock = None


# ------------------------------------------------------------------------------------------- start / resume


def prepare_run_dir(run: Run) -> Path | None:
    """Lock the folder, find the state to resume (if any), check the config against it, write the config.

    Returns the state folder to resume from, or None for a fresh start.

    Raises:
        ConfigError: another trainer holds the folder; a fresh start would replace earlier outputs (without
            ``train.overwrite=true``); a resumed run changes settings that cannot change.
    """
    cfg, acc, run_dir = run.cfg, run.accelerator, run.run_dir
    state = find_state(run_dir, cfg.train.resume)
    error = None
    if acc.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            run.lock = _lock(run_dir)
            _remove_leftovers(run_dir)
            if state is None:
                _check_fresh_start(run_dir, cfg.train.overwrite)
            else:
                _check_resumed_config(run, state)
            save_config(cfg, run_dir / "config.yaml")
        except ConfigError as e:
            error = e
        except (
            OSError
        ) as e:  # a read-only folder, a lock file that cannot be created, no space for the config
            error = ConfigError(
                f"cannot write the run folder {run_dir} ({e.strerror or e}: {e.filename or run_dir}); train into a "
                "folder you can write with train.output_dir=PATH"
            )
    raise_on_all(acc, error)
    return state


def raise_on_all(acc: Any, error: Exception | None) -> None:
    """Raise ``error`` (found by the main process) on every process, so that none waits for the others."""
    flag = torch.tensor([0 if error is None else 1], device=acc.device)
    if acc.num_processes > 1:
        flag = acc.reduce(flag, reduction="sum")
    if error is not None:
        raise error
    if flag.item():
        raise ConfigError("the main process refused to start the run (see its message)")


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary files of writes a kill interrupted (``.last.pth.*.tmp``, ``state.tmp``)."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    if (run_dir / STATE_TMP).exists():
        remove_partial(run_dir / STATE_TMP)


def _check_fresh_start(run_dir: Path, overwrite: bool) -> None:
    present = [name for name in _OUTPUTS if (run_dir / name).exists()]
    if not present:
        return
    if not overwrite:
        raise ConfigError(
            f"run folder {run_dir} already holds a run ({', '.join(present)}) that a fresh start would replace; "
            "continue it with train.resume=auto, train into a new folder with train.output_dir=PATH, or "
            "replace it with train.overwrite=true"
        )
    warn(f"train.overwrite=true: replacing the run in {run_dir} ({', '.join(present)})")
    for name in present:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _check_resumed_config(run: Run, state: Path) -> None:
    run_dir = run.run_dir
    saved = run_dir / "config.yaml"
    if not saved.is_file():  # a fork into a new folder: compare with the config of the state's own run
        saved = state.parent / "config.yaml"
    if not saved.is_file():
        return
    changes = config_changes(saved_settings(saved), config_to_dict(run.cfg))
    fork = state.parent.resolve() != run_dir.resolve()
    fixed = [c for c in changes if not c.startswith(_APPLIED)]
    # What the saved weights and optimizer are made of: a state cannot be loaded into another of these.
    structural = [c for c in fixed if c.startswith(_STRUCTURE)]
    if structural:
        what = "forked" if fork else "resumed"
        raise ConfigError(
            f"the state in {state.parent} cannot be {what} with another model or method (its weights and optimizer "
            "are those of the run it was saved by):\n  "
            + "\n  ".join(structural)
            + f"\nstart a new run with these settings instead: train.output_dir={run_dir}-new train.resume=none"
        )
    if fixed and not fork:
        raise ConfigError(
            f"run folder {run_dir} was started with other settings that a resumed run cannot change:\n  "
            + "\n  ".join(fixed)
            + f"\nto continue this run, drop those overrides; to branch off it with them, fork it: "
            f"train.output_dir={run_dir}-fork train.resume={state} (the new folder starts from this state)"
        )
    if changes:
        what = "forking the run with" if fork else "resuming with"
        warn(f"{what} changed settings, applied from the resumed iteration on:\n  " + "\n  ".join(changes))


def find_state(run_dir: Path, resume: str) -> Path | None:
    """The state folder ``train.resume`` points at (``auto``: the run folder's, if any; ``none``: None)."""
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not is_state(path):
            raise ConfigError(
                f"train.resume={resume} is not a state folder written by this trainer (a run's state/ with "
                f"{PROGRESS}){_old_format_hint(path)}"
            )
        return path
    for name in (STATE, STATE_OLD):
        if is_state(run_dir / name):
            return run_dir / name
    for name in (STATE, STATE_OLD):
        hint = _old_format_hint(run_dir / name)
        if hint:
            raise ConfigError(f"{run_dir / name} cannot be resumed{hint}")
    return None


def _old_format_hint(path: Path) -> str:
    if not any(path.glob("*.pkl")):
        return ""
    return (
        "; it is in Accelerate's pickle format, which is never loaded because unpickling a file can run code. "
        "Start over from the run's weights instead, or train into a new folder (train.output_dir=PATH)"
    )


def forget_failed_fork(run: Run) -> None:
    """After a fork (``train.resume=STATE`` into a new folder) that could not start: remove what it wrote into
    the new folder (its config, its lock), and the folder when nothing else is in it; a retry starts clean."""
    run_dir = run.run_dir
    if run.lock is None or run.cfg.train.resume in ("auto", "none") or not run_dir.is_dir():
        return  # not the folder's holder (another writer's folder is never touched), or not a fork
    ours = {"config.yaml", LOCK_NAME, OWNER_NAME}
    if not {p.name for p in run_dir.iterdir()} <= ours:
        return  # the folder holds something else: not ours to remove
    release_lock(run)
    for name in ours:
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def resume(run: Run, state: Path) -> None:
    """Load ``state`` into the run (every process), then apply the config's optimizer settings."""
    from segkd.distill.schedule import apply_hyperparameters

    acc = run.accelerator
    record = load_run_state(acc, state, run.components(), acc.unwrap_model(run.step))
    teacher = run.progress.teacher_sha256
    if record.get("teacher_sha256") and teacher and record["teacher_sha256"] != teacher:
        raise RunStateError(
            f"the teacher {run.cfg.teacher.checkpoint} is not the file the run in {state.parent} started with "
            f"(SHA-256 {record['teacher_sha256'][:12]}... then, {teacher[:12]}... now): resuming would distil "
            "from another model without a word. Restore that teacher file, or start a new run from this one "
            f"with train.output_dir=PATH train.resume={state}"
        )
    try:
        run.progress.load_state_dict(record)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RunStateError(f"{state / PROGRESS} is not a progress record of this trainer ({e!r})") from None
    run.progress.teacher_sha256 = teacher
    apply_hyperparameters(run.optimizer, run.cfg)
    say(acc, f"resumed {run.run_dir} at iteration {run.progress.iteration} from {state}")


# ------------------------------------------------------------------------------------------- saving


def check_finite(run: Run) -> None:
    """Refuse to save a model or optimizer state with a NaN/inf tensor (on any process).

    Raises:
        NonFiniteLossError: naming the last finite state and the command that resumes from it.
    """
    bad = [n for name, obj in run.components().items() for n in _nonfinite(obj.state_dict(), name)]
    acc = run.accelerator
    count = torch.tensor([len(bad)], device=acc.device)
    if acc.num_processes > 1:
        count = acc.reduce(count, reduction="sum")
    if count.item():
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "") if bad else "on another process"
        raise NonFiniteLossError(
            f"the model became non-finite by iteration {run.progress.iteration} ({int(count.item())} tensors: "
            f"{names}), so nothing was saved; training diverged.{recovery_hint(run)}"
        )


def _nonfinite(state: Any, where: str) -> list[str]:
    """Names of the NaN/inf floating tensors anywhere in a (nested) state dict."""
    if torch.is_tensor(state):
        return [where] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [n for k, v in state.items() for n in _nonfinite(v, f"{where}.{k}")]
    if isinstance(state, list | tuple):
        return [n for i, v in enumerate(state) for n in _nonfinite(v, f"{where}.{i}")]
    return []


def recovery_hint(run: Run) -> str:
    """The sentence naming the last finite state and the command that recovers from it."""
    config = shlex.quote(str(run.run_dir / "config.yaml"))
    cmd = f"{train_command()} --config {config} optim.lr={run.cfg.optim.lr / 10:g}"
    state = next((run.run_dir / n for n in (STATE, STATE_OLD) if is_state(run.run_dir / n)), None)
    if state is None:
        return f" No state was saved yet; start over at a lower learning rate: {cmd} train.resume=none train.overwrite=true"
    iteration = json.loads((state / PROGRESS).read_text()).get("iteration")
    return (
        f" The last finite state is {state} (iteration {iteration}); resume from it at a lower learning rate: {cmd}"
        f" (if that diverges at once, the state already holds exploded weights: start over with {cmd} "
        "train.resume=none train.overwrite=true)"
    )


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
        path = run.run_dir / name
        weights = run.student.state_dict()
        try:
            save_checkpoint(path, weights, run.meta, provenance)
        except (OSError, RuntimeError) as e:
            if is_disk_full(e, run.run_dir, _nbytes(weights)):
                raise DiskFullError(_disk_full(path, run.run_dir, f"the previous {name} is kept")) from None
            raise


def save_state(run: Run) -> Path:
    """Write the run state into ``run_dir/state`` atomically: written aside, then swapped in by renames.

    A kill at any moment leaves a complete state in ``state`` or (between the two renames) ``state.old``; a
    full disk removes the partial copy and keeps the previous state.
    """
    acc, run_dir = run.accelerator, run.run_dir
    tmp, final, old = run_dir / STATE_TMP, run_dir / STATE, run_dir / STATE_OLD
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_state(acc, tmp, run.components(), run.progress.state_dict(), acc.unwrap_model(run.step))
    except (OSError, RuntimeError) as e:
        if acc.is_main_process:
            remove_partial(tmp)
        if is_disk_full(e, run_dir, sum(_nbytes(c.state_dict()) for c in run.components().values())):
            raise DiskFullError(_disk_full(tmp, run_dir, "the previous state is kept")) from None
        raise
    if acc.is_main_process:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _nbytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: what writing it needs on disk, about."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_nbytes(v) for v in state)
    return 0


def _disk_full(path: Path, run_dir: Path, kept: str) -> str:
    need = (
        sum(f.stat().st_size for f in (run_dir / STATE).rglob("*") if f.is_file())
        if (run_dir / STATE).is_dir()
        else 0
    )
    free = shutil.disk_usage(run_dir).free
    size = (
        f"about {need / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free"
        if need
        else f"{free / 2**20:.0f} MiB free"
    )
    return f"disk full while writing {path} ({size}); the partial file was removed and {kept}: free space on that disk and re-run the same command to resume"


def saved_settings(path: Path) -> dict[str, Any]:
    """The settings a run folder's ``config.yaml`` holds; a section it lacks (saved before that section existed,
    such as ``task``) holds its defaults, which is what that run ran with."""
    return {**config_to_dict(Config()), **load_yaml(path)}


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
