"""The training loop: plain training (teachers, baselines) and distillation, one code path.

    run = build_run(cfg)                 # checked inputs, seeded models, optimizer, loaders
    state = prepare_run_dir(run)         # resume what the run folder holds, record the config
    while iteration < stop:
        set_lr(...); optimizer_step(...) # one guarded step over grad_accum micro-batches
        log / evaluate + best.pth / last.pth + state

Pieces, each usable alone: :mod:`segkd.distill.step` (one forward, a dict of named losses; the guarded optimizer
step), :mod:`segkd.distill.schedule` (lr per iteration), :mod:`segkd.distill.evaluation` (mIoU over all processes),
:mod:`segkd.distill.run_dir` (config, checkpoints, resumable state), :mod:`segkd.distill.runlog` (metrics.jsonl).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkd.distill.build import build_run
from segkd.distill.config import Config, ConfigError
from segkd.distill.curves import plot_curves
from segkd.distill.evaluation import evaluate
from segkd.distill.run import Run
from segkd.distill.run_dir import (
    check_finite,
    forget_failed_fork,
    prepare_run_dir,
    recovery_hint,
    release_lock,
    resume,
    save_checkpoints,
    save_state,
)
from segkd.distill.runlog import MetricsLog, say
from segkd.distill.schedule import lr_at, set_lr
from segkd.distill.step import optimizer_step
from segkd.script import Terminated, command, train_command

__all__ = ["RunStopped", "TrainResult", "train"]


class RunStopped(RuntimeError):
    """The run stopped early with its state saved: Ctrl-C (exit code 130) or the launcher died (exit code 1)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """What :func:`train` leaves: the run folder, the trained student (on this process) and the scores."""

    run_dir: Path
    student: nn.Module
    iteration: int
    finished: bool
    best_miou: float
    best_iter: int
    metrics: dict[str, Any]
    process_index: int
    num_processes: int
    discriminator: nn.Module | None = None  # the adversarial term's, when enabled


def train(cfg: Config) -> TrainResult:
    """Train (or distil into) the student described by ``cfg``; see ``distill/train.py`` for the command line.

    Raises:
        ConfigError: a problem with the config, the data or the teacher, found before any computation.
        NonFiniteLossError: the loss stayed non-finite for :data:`segkd.distill.guard.MAX_NONFINITE` iterations.
    """
    run = build_run(cfg)
    acc, p = run.accelerator, run.progress
    try:
        try:
            state = prepare_run_dir(run)
            if state is not None:
                resume(run, state)
            if cfg.quantize.target:
                from segkd.distill.qat import prepare_qad

                run.meta = prepare_qad(run, resumed=state is not None, log=lambda m: say(acc, m))
        except ConfigError:
            forget_failed_fork(run)  # a fork's new folder that got only its config is not left behind
            raise
        p.guard.recovery = lambda: recovery_hint(run)
        if acc.log_with:
            acc.init_trackers("tb")
        log = MetricsLog(run.run_dir / "metrics.jsonl", acc, p.iteration)
        log.write({"iter": p.iteration, "event": "resume" if state is not None else "start",
                   "num_processes": acc.num_processes, "device": str(acc.device),
                   "mixed_precision": acc.mixed_precision})  # fmt: skip
        started, start_iter = time.perf_counter(), p.iteration
        _loop(run, log)
        finished = p.iteration >= cfg.train.max_iters
        _summary(run, finished, time.perf_counter() - started, p.iteration - start_iter)
        if acc.trackers:
            acc.end_training()
    finally:
        release_lock(run)
    return TrainResult(run.run_dir, run.student, p.iteration, finished, p.best_miou, p.best_iter,
                       p.last_metrics, acc.process_index, acc.num_processes,
                       run.adversarial.discriminator if run.adversarial else None)  # fmt: skip


def _loop(run: Run, log: MetricsLog) -> None:
    """Iterations from the current one to ``stop_after``/``max_iters``: step, log, evaluate, save."""
    from tqdm import tqdm

    acc, t, p = run.accelerator, run.cfg.train, run.progress
    skip = p.iteration * t.grad_accum  # micro-batches already consumed by the run being resumed
    batches = iter(acc.skip_first_batches(run.train_loader, skip) if skip else run.train_loader)
    save_every = t.save_every or t.eval_every
    stop = min(t.stop_after or t.max_iters, t.max_iters)
    window: dict[str, list[float]] = defaultdict(list)
    # A terminal gets a live bar; a log file gets a line every 30 s, not one per step.
    bar = tqdm(total=t.max_iters, initial=p.iteration, disable=not acc.is_main_process, unit="it",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip
    stop_request = _StopRequest()
    try:
        while p.iteration < stop:
            reason = stop_request.poll(acc)
            if reason is not None:
                _save(run)
                why, code = reason
                raise RunStopped(
                    f"{why} at iteration {p.iteration}; the state is saved in {run.run_dir / 'state'}; resume with: "
                    f"{train_command()} --config {shlex.quote(str(run.run_dir / 'config.yaml'))}",
                    code,
                )
            tic = time.perf_counter()
            lr = lr_at(run.cfg, p.iteration)
            set_lr(run.optimizer, lr)
            losses, stepped = optimizer_step(run, batches)
            p.iteration += 1
            p.guard.update(stepped, p.iteration, losses)
            if stepped:
                for k, v in losses.items():
                    window[k].append(v)
            window["time"].append(time.perf_counter() - tic)
            bar.update(1)
            bar.set_postfix(_postfix(losses, lr), refresh=False)
            if p.iteration % t.log_every == 0 or p.iteration == stop:
                _log_window(run, log, window, lr)
                window.clear()
            if p.iteration % t.eval_every == 0 or p.iteration == t.max_iters:
                _eval_and_keep_best(run, log)
            if p.iteration % save_every == 0 or p.iteration == stop:
                _save(run)
    finally:
        stop_request.restore()
        bar.close()


def _save(run: Run) -> None:
    """``last.pth`` and the run state, after checking that nothing in them is NaN/inf."""
    check_finite(run)
    save_checkpoints(run, "last.pth")
    save_state(run)


class _StopRequest:
    """Ctrl-C (SIGINT), SIGTERM (a scheduler or ``docker stop``) or the death of the launcher, noticed between
    iterations so that the state is consistent.

    A second signal interrupts at once. Under ``accelerate launch`` or ``torchrun`` the trainer's parent is the
    launcher: when it dies (``kill -9``), the trainer is re-parented and stops after saving.
    """

    def __init__(self) -> None:
        self.interrupted = self.terminated = False
        launched = any(k in os.environ for k in ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID"))
        self.parent = os.getppid() if launched else None
        self.previous: dict[int, Any] = {}
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted or self.terminated:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if signum == signal.SIGTERM:
            self.terminated = True
        else:
            self.interrupted = True

    def poll(self, acc: Any) -> tuple[str, int] | None:
        """(message, exit code) when the run must stop now, on every process alike."""
        orphaned = self.parent is not None and os.getppid() != self.parent
        flags = torch.tensor([int(self.interrupted), int(self.terminated), int(orphaned)], device=acc.device)
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        interrupted, terminated, orphaned = (bool(v) for v in flags.tolist())
        if terminated:
            return "terminated (SIGTERM)", 143
        if interrupted:
            return "interrupted", 130
        if orphaned:
            return f"the launcher (process {self.parent}) died", 1
        return None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _postfix(losses: dict[str, float], lr: float) -> dict[str, str]:
    short = {k.replace("kd/", ""): f"{v:.3f}" for k, v in losses.items()}
    return {**short, "lr": f"{lr:.2e}"}


def _log_window(run: Run, log: MetricsLog, window: dict[str, list[float]], lr: float) -> None:
    acc = run.accelerator
    keys = [k for k in window if k != "time"]
    means = [sum(window[k]) / len(window[k]) for k in keys]
    if acc.num_processes > 1 and keys:
        means = acc.reduce(torch.tensor(means, device=acc.device), reduction="mean").tolist()
    step_time = sum(window["time"]) / max(len(window["time"]), 1)
    record = {"iter": run.progress.iteration, "lr": lr}
    record.update({f"loss/{k}": v for k, v in zip(keys, means)})
    record.update({"time/step_s": step_time, "images_per_s": run.cfg.data.batch_size / step_time})
    log.write(record)


def _eval_and_keep_best(run: Run, log: MetricsLog) -> None:
    p, e = run.progress, run.cfg.eval
    _sync_buffers(run.accelerator, run.student)
    metrics = evaluate(run.student, run.eval_loader, run.accelerator, run.meta, mode=e.mode,
                       crop_size=e.crop_size or run.cfg.data.crop_size, stride=e.stride)  # fmt: skip
    p.last_metrics = metrics
    miou = metrics["mIoU"]
    log.write({"iter": p.iteration, **{f"eval/{k}": v for k, v in metrics.items() if k != "Acc"}})
    improved = miou > p.best_miou or p.best_iter < 0
    if improved:
        check_finite(run)
        p.best_miou, p.best_iter = (miou if math.isfinite(miou) else -math.inf), p.iteration
        save_checkpoints(run, "best.pth")
    if run.accelerator.is_main_process:
        plot_curves(run.run_dir / "metrics.jsonl")  # curves.png beside it (nothing without matplotlib)
    tag = " (best)" if improved else f" (best {p.best_miou:.2f} at {p.best_iter})"
    say(run.accelerator, f"iteration {p.iteration}: mIoU {miou:.2f}  mAcc {metrics['mAcc']:.2f}  "
                         f"aAcc {metrics['aAcc']:.2f}{tag}")  # fmt: skip


def _sync_buffers(accelerator: Any, model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics (each process updated its own copy in the last step)."""
    if accelerator.num_processes > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _summary(run: Run, finished: bool, elapsed: float, iters: int) -> None:
    acc, p, run_dir = run.accelerator, run.progress, run.run_dir
    speed = f" ({iters * run.cfg.data.batch_size / elapsed:.1f} images/s)" if iters and elapsed > 0 else ""
    lines = [f"{'finished' if finished else 'stopped'} at iteration {p.iteration}/{run.cfg.train.max_iters} in "
             f"{elapsed:.0f}s{speed}; run folder {run_dir}"]  # fmt: skip
    if not finished:
        lines.append("continue it with the same command (train.resume=auto is the default)")
    best = run_dir / "best.pth"
    if p.best_iter >= 0 and best.is_file():
        lines.append(f"best mIoU {p.best_miou:.2f} at iteration {p.best_iter}: {best}")
    elif p.best_iter >= 0:  # a fork that never beat the run it was forked from: that run holds the best.pth
        lines.append(
            f"best mIoU {p.best_miou:.2f} at iteration {p.best_iter} is the forked run's; this run did not beat it "
            f"(its weights: {run_dir / 'last.pth'})"
        )
        best = run_dir / "last.pth"
    if finished and p.best_iter >= 0:  # the engine where TensorRT is installed, else the verified ONNX file
        export = (
            ("trt", "python export/to_trt.py") if _has_tensorrt() else ("export", "python export/to_onnx.py")
        )
        target = run.cfg.quantize.target  # a QAD checkpoint exports to the INT8 form it was trained for
        int8 = f" --precision int8{' --target cpu' if target == 'cpu' else ''}" if target else ""
        if target == "cpu":
            export = ("export", "python export/to_onnx.py")  # the CPU form is for ONNX Runtime, not TensorRT
        lines.append(f"next: {command(*export)} {shlex.quote(str(best))}{int8}")
    say(acc, "\n".join(lines))
