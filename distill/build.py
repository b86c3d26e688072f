"""Building a run from its checked config: the accelerator, the student's metadata, the step module, the loaders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkd.distill.adversarial import Adversarial
from segkd.distill.checks import check_classes, check_data, check_inputs, check_strides, takes_option
from segkd.distill.config import Config, ConfigError
from segkd.distill.data import EvalSet, TrainSet, build_eval_loader, build_train_loader
from segkd.distill.guard import MAX_NONFINITE, NonFiniteGuard
from segkd.distill.run import Progress, Run
from segkd.distill.schedule import build_optimizer
from segkd.distill.step import DistillStep, frozen_teacher
from segkd.distill.task_loss import TaskLoss
from segkd.infer.fileio import sha256_file
from segkd.infer.meta import ModelMeta

__all__ = ["build_run", "make_accelerator"]


def make_accelerator(cfg: Config, run_dir: Path) -> Any:
    """The Accelerator of a run (CPU processes under torchrun on a machine without CUDA)."""
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    precision = cfg.train.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(
            "fp16 mixed precision needs a CUDA GPU and this machine has none; use train.mixed_precision=bf16 "
            "(or no) on a CPU"
        )
    # Under torchrun on a machine without CUDA, Accelerate stays single-process unless told to use the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with="tensorboard" if is_tensorboard_available() else None,
            project_dir=str(run_dir),
        )
    except ValueError as e:  # e.g. bf16 on hardware without it
        raise ConfigError(f"cannot set up the run's devices: {e}") from e


def build_run(cfg: Config) -> Run:
    """Check the inputs, then build the seeded student (+ teacher and losses), optimizer and loaders."""
    run_dir = Path(cfg.train.output_dir)
    accelerator = make_accelerator(cfg, run_dir)
    inputs = check_inputs(cfg, accelerator.num_processes)
    if cfg.data.check:
        _on_main(accelerator, lambda: check_data(cfg))
    start = inputs.start_meta  # quantization-aware training: the float checkpoint's model
    classes = start.num_classes if start is not None else cfg.student.num_classes
    num_classes = check_classes(inputs.train_set, inputs.teacher_meta, classes)
    meta = _student_meta(cfg, inputs.train_set, num_classes) if start is None else _qad_meta(cfg, start)
    check_strides(meta, inputs.teacher_meta)
    step, teacher, teacher_meta = _build_step(cfg, meta, accelerator.device)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)  # students see 1-2 images per GPU
    optimizer = build_optimizer(cfg, step.parameters())
    d, t = cfg.data, cfg.train
    train_loader = build_train_loader(
        TrainSet(
            inputs.train_set, d.crop_size, d.scale_range, d.flip, seed=t.seed, max_bad_files=d.max_bad_files
        ),
        batch_size=inputs.micro_batch,
        total_batches=t.max_iters * t.grad_accum * accelerator.num_processes,
        num_workers=d.num_workers,
        seed=t.seed,
    )
    step, optimizer, train_loader = accelerator.prepare(step, optimizer, train_loader)
    eval_loader = build_eval_loader(
        EvalSet(inputs.val_set, cfg.eval.limit),
        batch_size=cfg.eval.batch_size,
        num_workers=min(d.num_workers, 2),
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    progress = Progress(guard=NonFiniteGuard(MAX_NONFINITE, run_dir))
    if cfg.distill:
        progress.teacher_sha256 = sha256_file(cfg.teacher.checkpoint)
    adversarial = _build_adversarial(cfg, num_classes, accelerator)
    return Run(cfg, accelerator, run_dir, step, optimizer, train_loader, eval_loader, teacher, teacher_meta, meta,
               progress, adversarial)  # fmt: skip


def _build_adversarial(cfg: Config, num_classes: int, accelerator: Any) -> Adversarial | None:
    """The discriminator of the adversarial term (built after the student, so that its init is unchanged)."""
    a = cfg.adversarial
    if not (a.enabled and cfg.distill):
        return None
    adv = Adversarial(num_classes, accelerator.device, lambda_adv=a.lambda_adv, lambda_d=a.lambda_d, lr=a.lr,
                      betas=tuple(a.betas), width=a.width, spectral_norm=a.spectral_norm)  # fmt: skip
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        adv.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(adv.discriminator)  # as CIRKD does
        adv.optimizer = torch.optim.Adam(adv.discriminator.parameters(), lr=a.lr, betas=tuple(a.betas))
    return adv


def _on_main(accelerator: Any, check: Any) -> None:
    """Run ``check()`` on the main process only; its ConfigError is raised on every process."""
    from segkd.distill.run_dir import raise_on_all

    error = None
    if accelerator.is_main_process:
        try:
            check()
        except ConfigError as e:
            error = e
    raise_on_all(accelerator, error)


def _student_meta(cfg: Config, dataset: Any, num_classes: int) -> ModelMeta:
    s = cfg.student
    arch: dict[str, Any] = {"name": s.name, "num_classes": num_classes}
    for key in ("width", "output_stride", "deep_stem", "aux", "align_corners"):
        if getattr(s, key) is not None:
            arch[key] = getattr(s, key)
    arch.update({k: v for k, v in s.options.items() if k not in arch})
    if cfg.train.aux_weight == 0 and takes_option(s.name, "aux", False):
        arch["aux"] = False  # no auxiliary head to train (a model without one, SegFormer, has no such option)
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


def _qad_meta(cfg: Config, start: ModelMeta) -> ModelMeta:
    """A quantization-aware run's student is its float checkpoint's model: same architecture, classes, input."""
    import dataclasses

    method = "+".join(spec["name"] for spec in cfg.losses) if cfg.distill else "plain"
    extra = {"dataset": cfg.data.dataset, "method": f"qad({cfg.quantize.target})+{method}"}
    return dataclasses.replace(start, input_size=list(cfg.data.crop_size), extra=extra)


def _build_step(
    cfg: Config, meta: ModelMeta, device: torch.device
) -> tuple[nn.Module, nn.Module | None, Any]:
    """Seeded student (+ teacher and distillation losses): returns (step module, teacher, teacher meta)."""
    from accelerate.utils import set_seed

    from segkd.distill.models import build_model

    set_seed(cfg.train.seed)
    arch = dict(meta.arch)
    if cfg.quantize.target:
        from segkd.distill.load import load_model

        student = load_model(cfg.quantize.checkpoint)[0].train()
    else:
        student = build_model(arch.pop("name"), pretrained=cfg.student.pretrained, **arch)
    teacher, teacher_meta = None, None
    if cfg.distill:
        teacher, teacher_meta = frozen_teacher(cfg.teacher.checkpoint, device, cfg.teacher.half)
    criterion = _build_criterion(cfg, student, teacher, meta.num_classes)
    task = TaskLoss(cfg.task, ignore_index=meta.ignore_index, aux_weight=cfg.train.aux_weight,
                    align_corners=getattr(student, "align_corners", False),
                    class_weights=_class_weights(cfg, meta.num_classes))  # fmt: skip
    step = DistillStep(student, criterion, cfg.train.aux_weight, meta.ignore_index, task)
    return step, teacher, teacher_meta


def _class_weights(cfg: Config, num_classes: int) -> list[float] | None:
    """``task.class_weights`` of this run's dataset, checked against its class count (None: unweighted)."""
    weights = cfg.task.class_weights.get(cfg.data.dataset)
    if weights is not None and len(weights) != num_classes:
        raise ConfigError(
            f"task.class_weights.{cfg.data.dataset} has {len(weights)} weights but the run has {num_classes} "
            f"classes; give one weight per class, or drop the entry (task.class_weights={{}}) to train unweighted"
        )
    return weights


def _build_criterion(
    cfg: Config, student: nn.Module, teacher: nn.Module | None, num_classes: int
) -> nn.Module | None:
    if not cfg.distill:
        return None
    from segkd.distill.losses import KDCriterion

    try:
        return KDCriterion(
            cfg.losses,
            student_channels=student.feat_channels,
            teacher_channels=teacher.feat_channels,
            num_classes=num_classes,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
