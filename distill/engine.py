"""The Accelerate training loop: plain training (teachers, baselines) and distillation, one code path.

Pieces, each usable alone: :func:`train_step` (one forward, a dict of named losses), :func:`evaluate` (whole-image
or sliding-window mIoU over all processes), :func:`save_run_state` / :func:`load_run_state` (atomic, resumable),
:func:`train` (the loop). The trainable part of a step, the student plus the losses' projectors, is one module
(:class:`DistillStep`) so that Accelerate wraps it once and every trained parameter is synchronised across
processes; the teacher stays outside it, frozen, on the device.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from distill.config import Config, ConfigError, config_to_dict, load_yaml, save_config
from distill.data import EvalSet, TrainSet, build_eval_loader, build_train_loader, normalize
from infer.fileio import atomic_write_text
from infer.meta import ModelMeta
from infer.metrics import ConfusionMatrix

__all__ = [
    "MAX_NONFINITE",
    "DistillStep",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "TrainResult",
    "check_classes",
    "evaluate",
    "evaluate_checkpoint",
    "load_run_state",
    "poly_lr_factor",
    "save_run_state",
    "sliding_window_logits",
    "train",
    "train_step",
]

_REPO = Path(__file__).resolve().parents[1]  # where configs/ lives in a checkout
MAX_NONFINITE = 5  # consecutive skipped steps before the run stops
_STATE, _STATE_TMP, _STATE_OLD = "state", "state.tmp", "state.old"
# Config keys that may change when a run is resumed without changing what it computes.
_RUN_CONTROL = {"train.resume", "train.stop_after", "train.output_dir", "train.log_every", "data.num_workers"}


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for :data:`MAX_NONFINITE` iterations in a row."""


# ----------------------------------------------------------------------------------------------------------------
# Model side


class DistillStep(nn.Module):
    """The trainable part of an iteration: student forward, cross-entropy, auxiliary and distillation terms.

    ``forward`` returns ``{"total", "ce", "aux", "kd/<term>", ...}``: every weighted term and their sum (weights
    are applied once, here and in the distillation criterion). Losses are computed in float32 outside autocast.

    Args:
        student: a ``SegModel``.
        criterion: a ``distill.losses.KDCriterion`` (owns the projectors), or None for plain training.
        aux_weight: weight of the auxiliary head's cross-entropy.
        ignore_index: label value left out of the cross-entropy.
    """

    def __init__(
        self, student: nn.Module, criterion: nn.Module | None, aux_weight: float, ignore_index: int
    ) -> None:
        super().__init__()
        self.student = student
        self.criterion = criterion
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def forward(
        self, x: Tensor, labels: Tensor, teacher_out: dict[str, Any] | None = None
    ) -> dict[str, Tensor]:
        out = self.student(x, return_features=True)
        with torch.autocast(device_type=x.device.type, enabled=False):
            terms = {"ce": F.cross_entropy(out["out"].float(), labels, ignore_index=self.ignore_index)}
            if out["aux"] is not None:
                aux = F.interpolate(  # as the model upsamples its main logits (CIRKD: align_corners=True)
                    out["aux"].float(),
                    size=labels.shape[-2:],
                    mode="bilinear",
                    align_corners=getattr(self.student, "align_corners", False),
                )
                terms["aux"] = self.aux_weight * F.cross_entropy(aux, labels, ignore_index=self.ignore_index)
            if self.criterion is not None:
                assert teacher_out is not None, "distillation needs the teacher's outputs"
                terms.update(self.criterion(out, teacher_out, labels))
        return {"total": sum(terms.values()), **terms}


def _frozen_teacher(path: str, device: torch.device, half: bool) -> tuple[nn.Module, ModelMeta]:
    """Load the teacher in eval mode without gradients (half precision on a GPU when asked)."""
    with torch.random.fork_rng(devices=[]):  # building it must not shift the student's random stream
        teacher, meta = load_model(path, device)
    teacher.requires_grad_(False)
    if half and device.type == "cuda":
        teacher.half()
    return teacher.eval(), meta


def train_step(
    step: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    student_meta: ModelMeta,
    teacher: nn.Module | None = None,
    teacher_meta: ModelMeta | None = None,
    autocast: Any = None,
) -> dict[str, Tensor]:
    """One forward of an iteration: the teacher's targets (no gradient), then the student's named losses.

    Args:
        step: the (possibly Accelerate-wrapped) :class:`DistillStep`.
        images: uint8 BGR (N, 3, H, W) on the device; each model normalises them as its metadata says.
        labels: (N, H, W) integer labels.
        student_meta, teacher_meta: normalisation of each model's input.
        teacher: frozen teacher, or None for plain training.
        autocast: context manager factory for the teacher's forward (``accelerator.autocast``).
    """
    labels = labels.long()
    teacher_out = None
    if teacher is not None:
        assert teacher_meta is not None
        t_in = normalize(images, teacher_meta.mean, teacher_meta.std, teacher_meta.channel_order)
        half = next(teacher.parameters()).dtype == torch.float16
        ctx = (
            autocast()
            if autocast is not None and not half
            else torch.autocast(images.device.type, enabled=False)
        )
        with torch.no_grad(), ctx:
            teacher_out = teacher(t_in.half() if half else t_in, return_features=True)
    x = normalize(images, student_meta.mean, student_meta.std, student_meta.channel_order)
    return step(x, labels, teacher_out)


def poly_lr_factor(
    it: int, *, max_iters: int, power: float, warmup_iters: int = 0, warmup_factor: float = 0.1
) -> float:
    """Learning-rate multiplier at iteration ``it``: poly decay, times a linear warm-up at the start."""
    factor = (1.0 - min(it, max_iters) / max_iters) ** power
    if it < warmup_iters:
        factor *= warmup_factor + (1.0 - warmup_factor) * it / warmup_iters
    return factor


class NonFiniteGuard:
    """Counts consecutive non-finite losses; warns for each skipped step and raises after ``limit`` in a row."""

    def __init__(self, limit: int = MAX_NONFINITE, run_dir: Path | None = None) -> None:
        self.limit, self.run_dir, self.streak = limit, run_dir, 0

    def update(self, finite: bool, iteration: int, losses: dict[str, float]) -> None:
        """Record the outcome of ``iteration``; ``losses`` are the (this-process) term values, for messages."""
        if finite:
            self.streak = 0
            return
        self.streak += 1
        bad = (
            ", ".join(f"{k}={v:g}" for k, v in losses.items() if not math.isfinite(v)) or "on another process"
        )
        _warn(
            f"iteration {iteration}: non-finite loss ({bad}); step skipped ({self.streak}/{self.limit} in a row)"
        )
        if self.streak >= self.limit:
            where = f" The last saved state is in {self.run_dir / _STATE}." if self.run_dir else ""
            raise NonFiniteLossError(
                f"the loss was non-finite for {self.limit} iterations in a row (last at iteration {iteration}: {bad}); "
                "training diverged. Lower optim.lr (or add optim.warmup_iters), use train.mixed_precision=bf16 "
                f"instead of fp16, and check the labels with `python -m infer.datasets check`.{where}"
            )

    def state_dict(self) -> dict[str, int]:
        return {"streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.streak = int(state["streak"])


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def sliding_window_logits(
    model: Callable[[Tensor], Tensor], x: Tensor, num_classes: int, crop: list[int], stride: list[int]
) -> Tensor:
    """Average the logits of overlapping ``crop`` windows (H, W), ``stride`` apart, covering ``x``.

    The last window of a row or column is shifted back to end at the border, so every pixel is covered and
    all windows have the crop size (or the image size where that is smaller). Returns (N, K, H, W) float32.
    """
    n, _, h, w = x.shape
    (ch, cw), (sh, sw) = crop, stride
    rows = max(math.ceil((h - ch) / sh), 0) + 1
    cols = max(math.ceil((w - cw) / sw), 0) + 1
    logits = x.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * sh, max(h - ch, 0)), min(c * sw, max(w - cw, 0))
            y1, x1 = min(y0 + ch, h), min(x0 + cw, w)
            logits[:, :, y0:y1, x0:x1] += model(x[:, :, y0:y1, x0:x1]).float()
            count[:, :, y0:y1, x0:x1] += 1
    return logits / count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    accelerator: Any,
    meta: ModelMeta,
    *,
    mode: str = "whole",
    crop_size: list[int] | None = None,
    stride: list[int] | None = None,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc / per-class IoU of ``model`` on this process's share of ``loader``, summed over processes.

    Each process counts a confusion matrix over the images its :class:`distill.data.ShardSampler` gives it (every
    image exactly once across processes, no padding), and ``accelerator.reduce`` sums the matrices before the
    metrics are computed, so the result equals a single-process evaluation of the same data.
    """
    k, device = meta.num_classes, accelerator.device
    was_training = model.training
    model.eval()
    counts = torch.zeros(k * k, dtype=torch.int64, device=device)
    if mode == "slide":
        assert crop_size is not None
        stride = stride or [max(1, 2 * s // 3) for s in crop_size]
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device).long()
        x = normalize(images, meta.mean, meta.std, meta.channel_order)
        with accelerator.autocast():
            logits = model(x) if mode == "whole" else sliding_window_logits(model, x, k, crop_size, stride)
        pred = logits.argmax(1)  # (N, H, W)
        keep = (labels != meta.ignore_index) & (labels < k)
        counts += torch.bincount(labels[keep] * k + pred[keep], minlength=k * k)
    counts = accelerator.reduce(counts, reduction="sum")
    model.train(was_training)
    cm = ConfusionMatrix(k, meta.ignore_index)
    cm.matrix = counts.view(k, k).cpu().numpy().astype("int64")
    return cm.compute()


# ----------------------------------------------------------------------------------------------------------------
# Setup helpers


def _make_accelerator(cfg: Config, run_dir: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    # Under torchrun on a machine without CUDA, Accelerate stays single-process unless told to use the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
        log_with="tensorboard" if is_tensorboard_available() else None,
        project_dir=str(run_dir),
    )


def _teacher_hint(path: Path) -> str:
    """The command that makes ``runs/<x>/best.pth`` when ``configs/<x>.yaml`` exists."""
    parts = path.parts
    if len(parts) >= 3 and parts[0] == "runs" and path.name in ("best.pth", "last.pth"):
        recipe = Path("configs", *parts[1:-1]).with_suffix(".yaml")
        if recipe.is_file() or (_REPO / recipe).is_file():
            return f"; train it first with: accelerate launch distill/train.py --config {recipe}"
    return "; set teacher.checkpoint to a teacher .pth written by distill/train.py"


def _load_datasets(cfg: Config) -> tuple[Any, Any]:
    from infer.datasets import DatasetError, build_dataset

    try:
        train_set = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split)
        val_set = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split)
    except (DatasetError, KeyError) as e:
        hint = ""
        if not Path(cfg.data.root).expanduser().is_dir() and cfg.data.dataset != "demo":
            hint = f"; see the README for the {cfg.data.dataset} layout, check it with `python -m infer.datasets check`"
        raise ConfigError(
            f"cannot read the {cfg.data.dataset} data at {cfg.data.root}: {e.args[0]}{hint}"
        ) from e
    return train_set, val_set


def check_classes(dataset: Any, teacher_meta: ModelMeta | None, student_classes: int | None) -> int:
    """Return the class count after checking that data, teacher and student agree (a ConfigError otherwise)."""
    k = dataset.num_classes
    problems = []
    if student_classes is not None and student_classes != k:
        problems.append(
            f"student.num_classes={student_classes} but the {dataset.name} data at {dataset.root} has {k} classes; "
            "remove student.num_classes (it defaults to the dataset's) or point data.root at the right data"
        )
    if teacher_meta is not None and teacher_meta.num_classes != k:
        problems.append(
            f"the teacher predicts {teacher_meta.num_classes} classes ({', '.join(teacher_meta.class_names[:4])}, ...) "
            f"but the {dataset.name} data has {k} ({', '.join(dataset.class_names[:4])}, ...); distil with a "
            "teacher trained on this dataset"
        )
    if problems:
        raise ConfigError("class counts disagree:\n  " + "\n  ".join(problems))
    if teacher_meta is not None and list(teacher_meta.class_names) != list(dataset.class_names):
        _warn(
            "the teacher's class names differ from the dataset's (same count); check that they mean the same"
        )
    return k


def _check_strides(meta: ModelMeta, teacher_meta: ModelMeta | None, default: int = 8) -> None:
    """Distilled logits and features are compared position by position: both models need the same stride."""
    if teacher_meta is None:
        return
    s, t = meta.arch.get("output_stride", default), teacher_meta.arch.get("output_stride", default)
    if s != t:
        raise ConfigError(
            f"the student's output stride {s} differs from the teacher's {t}, so their 1/{s} and 1/{t} maps "
            f"cannot be compared; set student.output_stride={t}"
        )


def _student_meta(cfg: Config, dataset: Any, num_classes: int) -> ModelMeta:
    s = cfg.student
    arch: dict[str, Any] = {"name": s.name, "num_classes": num_classes}
    for key in ("width", "output_stride", "deep_stem", "aux", "align_corners"):
        if getattr(s, key) is not None:
            arch[key] = getattr(s, key)
    if cfg.train.aux_weight == 0:
        arch["aux"] = False  # no auxiliary head to train
    method = "+".join(spec["name"] for spec in cfg.losses) if cfg.distill else "plain"
    return ModelMeta(
        arch=arch,
        class_names=list(dataset.class_names),
        palette=[list(map(int, c)) for c in dataset.palette],
        mean=list(s.mean),
        std=list(s.std),
        channel_order=s.channel_order,
        input_size=list(cfg.data.crop_size),
        ignore_index=int(dataset.ignore_index),
        extra={"dataset": cfg.data.dataset, "method": method},
    )


def _build_student(meta: ModelMeta, pretrained: str | None) -> nn.Module:
    from distill.models import build_model

    arch = dict(meta.arch)
    return build_model(arch.pop("name"), pretrained=pretrained, **arch)


def _build_criterion(
    cfg: Config, student: nn.Module, teacher: nn.Module | None, num_classes: int
) -> nn.Module | None:
    if not cfg.distill:
        return None
    from distill.losses import KDCriterion

    try:
        return KDCriterion(
            cfg.losses,
            student_channels=student.feat_channels,
            teacher_channels=teacher.feat_channels,
            num_classes=num_classes,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e


# ----------------------------------------------------------------------------------------------------------------
# Run folder: checkpoints, state, metrics


@dataclass
class _Progress:
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


def save_run_state(accelerator: Any, run_dir: Path) -> Path:
    """``accelerator.save_state`` into ``run_dir/state`` atomically: written aside, then swapped in by renames.

    A kill at any moment leaves a complete state in ``state`` or (between the two renames) ``state.old``.
    """
    tmp, final, old = run_dir / _STATE_TMP, run_dir / _STATE, run_dir / _STATE_OLD
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


def _find_state(run_dir: Path, resume: str) -> Path | None:
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "custom_checkpoint_0.pkl").is_file():
            raise ConfigError(
                f"train.resume={resume} is not a state folder written by this trainer (a run's state/)"
            )
        return path
    for name in (_STATE, _STATE_OLD):
        if (run_dir / name / "custom_checkpoint_0.pkl").is_file():
            return run_dir / name
    return None


def load_run_state(accelerator: Any, path: Path) -> None:
    """Restore model, optimizer, scheduler, progress and every process's random states from ``path``."""
    accelerator.load_state(str(path))


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{path}.")
        elif a != b and path not in _RUN_CONTROL:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


class _MetricsLog:
    """``metrics.jsonl`` (one JSON record per line) and TensorBoard scalars, written by the main process."""

    def __init__(self, path: Path, accelerator: Any, start_iter: int) -> None:
        self.path, self.accelerator = path, accelerator
        if accelerator.is_main_process:
            # A killed run may have logged past its last saved state: keep only what the resumed run continues.
            kept = []
            if start_iter > 0 and path.is_file():
                kept = [ln for ln in path.read_text().splitlines() if _record_iter(ln) <= start_iter]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {k: _json_safe(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.accelerator.trackers and "event" not in record:
            scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "iter"}
            self.accelerator.log(scalars, step=record["iter"])


def _record_iter(line: str) -> float:
    """Iteration of a metrics.jsonl line; infinite for a line cut short by a kill (so it is dropped)."""
    try:
        return json.loads(line)["iter"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _json_safe(value: Any) -> Any:
    """NaN/inf (a class absent from the validation data has IoU nan) -> null, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _warn(msg: str) -> None:
    """Print a warning once, from the main process (every process reaches the same warnings)."""
    from tqdm import tqdm

    if int(os.environ.get("RANK", "0")) == 0:
        tqdm.write(f"WARNING: {msg}", file=sys.stderr)


def _say(accelerator: Any, msg: str) -> None:
    if accelerator.is_main_process:
        from tqdm import tqdm

        tqdm.write(msg)


def _sync_buffers(accelerator: Any, model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics (each process updated its own copy in the last step)."""
    if accelerator.num_processes > 1:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


# ----------------------------------------------------------------------------------------------------------------
# The loop


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


@dataclass
class _Run:
    """Everything a training iteration touches (built once by :func:`_setup`)."""

    cfg: Config
    accelerator: Any
    run_dir: Path
    step: nn.Module
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    teacher: nn.Module | None
    teacher_meta: ModelMeta | None
    meta: ModelMeta
    progress: _Progress


@dataclass
class _Inputs:
    """The checked inputs of a run."""

    train_set: Any
    val_set: Any
    teacher_meta: ModelMeta | None
    micro_batch: int


def _check_inputs(cfg: Config, num_processes: int) -> _Inputs:
    """Check everything a user can get wrong, reporting every problem together, before any model is built."""
    problems: list[str] = []
    datasets, teacher_meta, micro_batch = None, None, 0
    try:
        datasets = _load_datasets(cfg)
    except ConfigError as e:
        problems.append(str(e))
    if cfg.distill:
        tpath = Path(cfg.teacher.checkpoint)
        if not tpath.is_file():
            problems.append(f"teacher checkpoint {tpath} does not exist{_teacher_hint(tpath)}")
        else:
            try:
                teacher_meta = load_checkpoint(tpath).meta
            except CheckpointError as e:
                problems.append(f"teacher.checkpoint: {e}")
    if cfg.student.pretrained and not Path(cfg.student.pretrained).is_file():
        problems.append(
            f"student.pretrained file {cfg.student.pretrained} does not exist; download the ImageNet backbone "
            "(see the README) or set student.pretrained=null to start from random weights"
        )
    try:
        micro_batch = _micro_batch(cfg, num_processes)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    train_set, val_set = datasets
    return _Inputs(train_set, val_set, teacher_meta, micro_batch)


def _build_step(
    cfg: Config, meta: ModelMeta, device: torch.device
) -> tuple[nn.Module, nn.Module | None, Any]:
    """Seeded student (+ teacher and distillation losses): returns (step module, teacher, teacher meta)."""
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    student = _build_student(meta, cfg.student.pretrained)
    teacher, teacher_meta = None, None
    if cfg.distill:
        teacher, teacher_meta = _frozen_teacher(cfg.teacher.checkpoint, device, cfg.teacher.half)
    criterion = _build_criterion(cfg, student, teacher, meta.num_classes)
    step = DistillStep(student, criterion, cfg.train.aux_weight, meta.ignore_index)
    return step, teacher, teacher_meta


def _optimizer(cfg: Config, step: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """SGD over the student and the losses' projectors, with the per-iteration poly schedule."""
    o = cfg.optim
    optimizer = torch.optim.SGD(step.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    factor = _PolyFactor(cfg.train.max_iters, o.power, o.warmup_iters, o.warmup_factor)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _setup(cfg: Config) -> _Run:
    run_dir = Path(cfg.train.output_dir)
    accelerator = _make_accelerator(cfg, run_dir)
    inputs = _check_inputs(cfg, accelerator.num_processes)
    num_classes = check_classes(inputs.train_set, inputs.teacher_meta, cfg.student.num_classes)
    meta = _student_meta(cfg, inputs.train_set, num_classes)
    _check_strides(meta, inputs.teacher_meta)
    step, teacher, teacher_meta = _build_step(cfg, meta, accelerator.device)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)  # students see 1-2 images per GPU
    optimizer, scheduler = _optimizer(cfg, step)
    d, t = cfg.data, cfg.train
    train_loader = build_train_loader(
        TrainSet(inputs.train_set, d.crop_size, d.scale_range, d.flip, seed=t.seed),
        batch_size=inputs.micro_batch,
        total_batches=t.max_iters * t.grad_accum * accelerator.num_processes,
        num_workers=d.num_workers,
        seed=t.seed,
    )
    step, optimizer, train_loader, scheduler = accelerator.prepare(step, optimizer, train_loader, scheduler)
    eval_loader = build_eval_loader(
        EvalSet(inputs.val_set, cfg.eval.limit),
        batch_size=cfg.eval.batch_size,
        num_workers=min(d.num_workers, 2),
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    progress = _Progress(guard=NonFiniteGuard(MAX_NONFINITE, run_dir))
    accelerator.register_for_checkpointing(progress)
    return _Run(
        cfg, accelerator, run_dir, step, optimizer, scheduler, train_loader, eval_loader, teacher, teacher_meta, meta,
        progress,
    )  # fmt: skip


def _micro_batch(cfg: Config, num_processes: int) -> int:
    """Images per process and micro-step: the total batch split over processes and accumulation steps."""
    parts = num_processes * cfg.train.grad_accum
    if cfg.data.batch_size % parts:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (images per optimizer step, in total) does not split over "
            f"{num_processes} process(es) x train.grad_accum={cfg.train.grad_accum}; make it a multiple of {parts}"
        )
    micro = cfg.data.batch_size // parts
    sync_bn = num_processes > 1 and torch.cuda.is_available()
    if micro < 2 and not sync_bn:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} over {num_processes} process(es) x train.grad_accum="
            f"{cfg.train.grad_accum} leaves {micro} image per BatchNorm batch; the heads' image-pooling BatchNorm "
            "needs at least 2 (SyncBatchNorm pools them across GPUs, not across CPU processes or accumulation "
            "steps): raise data.batch_size or lower the processes / grad_accum"
        )
    return micro


class _PolyFactor:
    """Picklable ``it -> factor`` for LambdaLR (see :func:`poly_lr_factor`)."""

    def __init__(self, max_iters: int, power: float, warmup_iters: int, warmup_factor: float) -> None:
        self.kw = {
            "max_iters": max_iters,
            "power": power,
            "warmup_iters": warmup_iters,
            "warmup_factor": warmup_factor,
        }

    def __call__(self, it: int) -> float:
        return poly_lr_factor(it, **self.kw)


def _student(run: _Run) -> nn.Module:
    return run.accelerator.unwrap_model(run.step).student


def _any_nonfinite(accelerator: Any, total: Tensor) -> bool:
    """True when the loss is NaN/inf on any process (all processes then skip the step together)."""
    bad = (~torch.isfinite(total.detach())).to(torch.int64).reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item())


def _iteration(run: _Run, batches: Any) -> tuple[dict[str, float], bool]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss terms and whether it stepped."""
    acc, cfg = run.accelerator, run.cfg
    sums: dict[str, float] = defaultdict(float)
    skipped = False
    for _ in range(cfg.train.grad_accum):
        images, labels = next(batches)
        with acc.accumulate(run.step):
            losses = train_step(
                run.step,
                images,
                labels,
                student_meta=run.meta,
                teacher=run.teacher,
                teacher_meta=run.teacher_meta,
                autocast=acc.autocast,
            )
            if _any_nonfinite(acc, losses["total"]):
                skipped = True
            else:
                acc.backward(losses["total"])
            if acc.sync_gradients and not skipped:
                run.optimizer.step()
            run.optimizer.zero_grad()
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
        for key, v in zip(losses, values):
            sums[key] += v / cfg.train.grad_accum
    run.scheduler.step()
    return dict(sums), not skipped


def _evaluate_run(run: _Run) -> dict[str, Any]:
    e = run.cfg.eval
    student = _student(run)
    _sync_buffers(run.accelerator, student)
    return evaluate(
        student,
        run.eval_loader,
        run.accelerator,
        run.meta,
        mode=e.mode,
        crop_size=e.crop_size or run.cfg.data.crop_size,
        stride=e.stride,
    )


def _save_checkpoint(run: _Run, name: str) -> None:
    if run.accelerator.is_main_process:
        p = run.progress
        provenance = {
            "config": config_to_dict(run.cfg),
            "iteration": p.iteration,
            "metrics": {k: v for k, v in p.last_metrics.items() if k != "Acc"},
            "teacher": run.cfg.teacher.checkpoint if run.cfg.distill else None,
        }
        save_checkpoint(run.run_dir / name, _student(run).state_dict(), run.meta, provenance)


def _prepare_run_dir(run: _Run) -> Path | None:
    """Find the state to resume from (if any), then write the resolved config; returns the state folder."""
    cfg, acc, run_dir = run.cfg, run.accelerator, run.run_dir
    state = _find_state(run_dir, cfg.train.resume)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / "config.yaml"
        if state is not None and saved.is_file():
            changes = _config_changes(load_yaml(saved), config_to_dict(cfg))
            if changes:
                _warn("resuming with a changed config:\n  " + "\n  ".join(changes))
        save_config(cfg, saved)
    acc.wait_for_everyone()
    return state


def _postfix(losses: dict[str, float], lr: float) -> dict[str, str]:
    short = {k.replace("kd/", ""): f"{v:.3f}" for k, v in losses.items()}
    return {**short, "lr": f"{lr:.2e}"}


def train(cfg: Config) -> TrainResult:
    """Train (or distil into) the student described by ``cfg``; see ``distill/train.py`` for the command line.

    Raises:
        ConfigError: a problem with the config, the data or the teacher, found before any computation.
        NonFiniteLossError: the loss stayed non-finite for :data:`MAX_NONFINITE` iterations.
    """
    run = _setup(cfg)
    acc, p = run.accelerator, run.progress
    state = _prepare_run_dir(run)
    if state is not None:
        load_run_state(acc, state)
        _say(acc, f"resumed {run.run_dir} at iteration {p.iteration} from {state}")
    if acc.log_with:
        acc.init_trackers("tb")
    log = _MetricsLog(run.run_dir / "metrics.jsonl", acc, p.iteration)
    event = "resume" if state is not None else "start"
    log.write({"iter": p.iteration, "event": event, "num_processes": acc.num_processes, "device": str(acc.device),
               "mixed_precision": acc.mixed_precision})  # fmt: skip
    started, start_iter = time.perf_counter(), p.iteration
    _loop(run, log)
    finished = p.iteration >= cfg.train.max_iters
    _summary(run, finished, time.perf_counter() - started, p.iteration - start_iter)
    if acc.trackers:
        acc.end_training()
    return TrainResult(run.run_dir, _student(run), p.iteration, finished, p.best_miou, p.best_iter,
                       p.last_metrics, acc.process_index, acc.num_processes)  # fmt: skip


def _loop(run: _Run, log: _MetricsLog) -> None:
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
    try:
        while p.iteration < stop:
            tic = time.perf_counter()
            lr = run.scheduler.get_last_lr()[0]
            losses, stepped = _iteration(run, batches)
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
                _save_checkpoint(run, "last.pth")
                save_run_state(acc, run.run_dir)
    finally:
        bar.close()


def _log_window(run: _Run, log: _MetricsLog, window: dict[str, list[float]], lr: float) -> None:
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


def _eval_and_keep_best(run: _Run, log: _MetricsLog) -> None:
    p = run.progress
    metrics = _evaluate_run(run)
    p.last_metrics = metrics
    miou = metrics["mIoU"]
    log.write({"iter": p.iteration, **{f"eval/{k}": v for k, v in metrics.items() if k != "Acc"}})
    improved = miou > p.best_miou or p.best_iter < 0
    if improved:
        p.best_miou, p.best_iter = (miou if math.isfinite(miou) else -math.inf), p.iteration
        _save_checkpoint(run, "best.pth")
    tag = " (best)" if improved else f" (best {p.best_miou:.2f} at {p.best_iter})"
    _say(
        run.accelerator,
        f"iteration {p.iteration}: mIoU {miou:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}{tag}",
    )


def _summary(run: _Run, finished: bool, elapsed: float, iters: int) -> None:
    acc, p, run_dir = run.accelerator, run.progress, run.run_dir
    speed = f" ({iters * run.cfg.data.batch_size / elapsed:.1f} images/s)" if iters and elapsed > 0 else ""
    lines = [
        f"{'finished' if finished else 'stopped'} at iteration {p.iteration}/{run.cfg.train.max_iters} in {elapsed:.0f}s{speed}; run folder {run_dir}"
    ]
    if not finished:
        lines.append("continue it with the same command (train.resume=auto is the default)")
    if p.best_iter >= 0:
        lines.append(f"best mIoU {p.best_miou:.2f} at iteration {p.best_iter}: {run_dir / 'best.pth'}")
        if finished:
            lines.append(f"next: python export/to_trt.py {run_dir / 'best.pth'}")
    _say(acc, "\n".join(lines))


def evaluate_checkpoint(path: str, cfg: Config) -> dict[str, Any]:
    """Evaluate a checkpoint on ``cfg``'s validation split (over all launched processes); returns the metrics."""
    run_dir = Path(cfg.train.output_dir)
    accelerator = _make_accelerator(cfg, run_dir)
    _, val_set = _load_datasets(cfg)
    model, meta = load_model(path, accelerator.device)
    check_classes(val_set, meta, None)
    loader = build_eval_loader(
        EvalSet(val_set, cfg.eval.limit),
        batch_size=cfg.eval.batch_size,
        num_workers=min(cfg.data.num_workers, 2),
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    metrics = evaluate(
        model,
        loader,
        accelerator,
        meta,
        mode=cfg.eval.mode,
        crop_size=cfg.eval.crop_size or cfg.data.crop_size,
        stride=cfg.eval.stride,
    )
    return {**metrics, "num_processes": accelerator.num_processes, "process_index": accelerator.process_index}
