"""One training iteration: the distillation step module, its forward, and the optimizer step with its guard.

The trainable part of a step, the student plus the losses' projectors, is one module (:class:`DistillStep`) so
that Accelerate wraps it once and every trained parameter is synchronised across processes; the teacher stays
outside it, frozen, on the device.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from segkd.distill.data import normalize
from segkd.distill.load import half_safe, load_model
from segkd.distill.task_loss import TaskLoss
from segkd.infer.meta import ModelMeta

if TYPE_CHECKING:
    from segkd.distill.adversarial import Adversarial
    from segkd.distill.run import Run

__all__ = ["DistillStep", "any_nonfinite", "frozen_teacher", "optimizer_step", "train_step"]


class DistillStep(nn.Module):
    """The trainable part of an iteration: student forward, task terms (cross-entropy, auxiliary heads, boundary
    maps) and distillation terms.

    ``forward`` returns ``{"total", "ce", "aux", "kd/<term>", ...}``: every weighted term and their sum (weights
    are applied once, in the task loss and in the distillation criterion). Losses are computed in float32 outside
    autocast.

    Args:
        student: a ``SegModel``.
        criterion: a ``segkd.distill.losses.KDCriterion`` (owns the projectors), or None for plain training.
        aux_weight: weight of the auxiliary head's cross-entropy (when ``task`` does not set its own weights).
        ignore_index: label value left out of the cross-entropy.
        task: the task terms (:class:`segkd.distill.task_loss.TaskLoss`); None: cross-entropy plus ``aux_weight``
            times the auxiliary head's.
    """

    def __init__(
        self,
        student: nn.Module,
        criterion: nn.Module | None,
        aux_weight: float,
        ignore_index: int,
        task: TaskLoss | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.criterion = criterion
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        if task is None:  # cross-entropy + aux_weight x the auxiliary head's, at the student's upsampling
            align = getattr(student, "align_corners", False)
            task = TaskLoss(ignore_index=ignore_index, aux_weight=aux_weight, align_corners=align)
        self.task = task

    def forward(
        self,
        x: Tensor,
        labels: Tensor,
        teacher_out: dict[str, Any] | None = None,
        adversary: Adversarial | None = None,
    ) -> dict[str, Tensor]:
        out = self.student(x, return_features=True)
        with torch.autocast(device_type=x.device.type, enabled=False):
            terms = self.task(out, labels)  # "ce", "aux", the boundary terms: at the label size
            if self.criterion is not None:
                assert teacher_out is not None, "distillation needs the teacher's outputs"
                terms.update(self.criterion(out, teacher_out, labels))
            if adversary is not None:  # the student's side of the adversarial term, on the 1/8 logits
                terms["adv"] = adversary.generator_loss(out["logits"], teacher_out["logits"])
        return {"total": sum(terms.values()), **terms}


def frozen_teacher(path: str, device: torch.device, half: bool) -> tuple[nn.Module, ModelMeta]:
    """Load the teacher in eval mode without gradients (half precision on a GPU when asked)."""
    with torch.random.fork_rng(devices=[]):  # building it must not shift the student's random stream
        teacher, meta = load_model(path, device)
    teacher.requires_grad_(False)
    if half and device.type == "cuda":
        teacher = half_safe(teacher).half()  # BatchNorm statistics beyond float16's range stay usable
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
    adversary: Adversarial | None = None,
) -> dict[str, Tensor]:
    """One forward of an iteration: the teacher's targets (no gradient), then the student's named losses.

    Args:
        step: the (possibly Accelerate-wrapped) :class:`DistillStep`.
        images: uint8 BGR (N, 3, H, W) on the device; each model normalises them as its metadata says.
        labels: (N, H, W) integer labels.
        student_meta, teacher_meta: normalisation of each model's input.
        teacher: frozen teacher, or None for plain training.
        autocast: context manager factory for the teacher's forward (``accelerator.autocast``).
        adversary: the adversarial term (:class:`segkd.distill.adversarial.Adversarial`), or None.
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
    return step(x, labels, teacher_out, adversary)


def any_nonfinite(accelerator: Any, total: Tensor) -> bool:
    """True when the loss is NaN/inf on any process (all processes then skip the step together)."""
    bad = (~torch.isfinite(total.detach())).to(torch.int64).reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item())


def optimizer_step(run: Run, batches: Any) -> tuple[dict[str, float], bool]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss terms and whether it stepped.

    A step whose loss is non-finite on any process is skipped by all of them, and leaves the model exactly as it
    was: the forward already updated the BatchNorm running statistics, so every buffer is put back. With the
    adversarial term, the discriminator steps after the student, on the same logits (its objective is logged as
    ``adv_d``, outside ``total``), and is skipped and restored alike.
    """
    acc, cfg, adv = run.accelerator, run.cfg, run.adversarial
    sums: dict[str, float] = defaultdict(float)
    modules = [run.step] + ([adv.discriminator] if adv is not None else [])
    buffers = [
        b for m in modules for b in m.buffers()
    ]  # BatchNorm statistics, batch counters, power iterations
    saved = [b.detach().clone() for b in buffers]
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
                adversary=adv,
            )
            d_loss = adv.discriminator_loss() if adv is not None else None
            checked = losses["total"] if d_loss is None else losses["total"] + d_loss.detach()
            if any_nonfinite(acc, checked):
                skipped = True
            else:
                acc.backward(losses["total"])
                if d_loss is not None:
                    (d_loss / cfg.train.grad_accum).backward()
            if acc.sync_gradients and not skipped:
                run.optimizer.step()
            run.optimizer.zero_grad()
        if d_loss is not None:
            losses["adv_d"] = d_loss
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
        for key, v in zip(losses, values):
            sums[key] += v / cfg.train.grad_accum
    if adv is not None:
        if skipped:
            adv.optimizer.zero_grad(set_to_none=True)
        else:
            adv.step(acc)
    if skipped:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
    return dict(sums), not skipped
