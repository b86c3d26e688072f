"""The learnable student -> teacher width adapter that feature losses own, and the base class that owns it.

A loss that compares a student feature with a teacher feature of another width maps the student through a 1x1
convolution, without bias by default (optionally followed by BatchNorm and ReLU). The projector is a submodule of
the loss, so its parameters appear in ``loss.parameters()`` and the trainer adds them to the student's optimizer;
it is discarded after training (checkpoints hold the student only).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from .base import KDLoss, Param, boolean, check_same_shape, optional_int

__all__ = ["Projector", "build_projector", "ProjectedLoss"]


class Projector(nn.Sequential):
    """1x1 conv from ``in_channels`` to ``out_channels`` (bias optional), optionally followed by BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, bn: bool = False, bias: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)]
        if bn:
            layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels


def build_projector(
    student_channels: int | None,
    teacher_channels: int | None,
    *,
    project: bool | None = None,
    bn: bool = False,
    bias: bool = False,
) -> Projector | None:
    """Build the projector a feature loss needs, or ``None``.

    Args:
        student_channels: Width of the student feature (``model.feat_channels``).
        teacher_channels: Width of the teacher feature.
        project: ``None`` (default) projects exactly when the widths differ; ``True`` always; ``False`` never.
        bn: Append BatchNorm + ReLU after the 1x1 conv.
        bias: Give the 1x1 conv a bias (MGD's official alignment conv has one).
    """
    if project is False:
        return None
    if student_channels is None or teacher_channels is None:
        if project:
            raise ValueError("project=True needs both student_channels and teacher_channels")
        return None
    if project or student_channels != teacher_channels:
        return Projector(int(student_channels), int(teacher_channels), bn=bn, bias=bias)
    return None


class ProjectedLoss(KDLoss):
    """Base class of feature losses: declares the projector options once, owns the projector, checks shapes.

    The projector is built for the sources in ``projected_sources`` only (logits have the class count as width
    on both sides and are never projected). Subclasses call ``self.align(s, t)`` in ``compute``.
    """

    sources = ("feat",)
    projected_sources: ClassVar[tuple[str, ...]] = ("feat", "stage4")
    params = {
        "student_channels": Param(
            None, "student feature width; with teacher_channels decides the projector", optional_int
        ),
        "teacher_channels": Param(None, "teacher feature width", optional_int),
        "project": Param(
            None, "None: project exactly when the widths differ; true: always; false: never", boolean
        ),
        "projector_bn": Param(False, "follow the projector's 1x1 conv with BatchNorm + ReLU", boolean),
        "projector_bias": Param(False, "give the projector's 1x1 conv a bias", boolean),
    }

    def setup(self) -> None:
        self.projector = None
        if self.source in self.projected_sources:
            self.projector = build_projector(
                self.student_channels,
                self.teacher_channels,
                project=self.project,
                bn=self.projector_bn,
                bias=self.projector_bias,
            )

    def align(self, s: Tensor, t: Tensor) -> Tensor:
        """Map the student tensor to the teacher width (when a projector exists) and check the shapes match."""
        if self.projector is not None:
            s = self.projector(s)
        hint = ""
        if s.shape[1] != t.shape[1]:
            hint = (
                f"widths differ: pass student_channels={s.shape[1]}, teacher_channels={t.shape[1]} "
                f"so that the loss builds its projector"
            )
        check_same_shape(s, t, f"{type(self).__name__} inputs", hint)
        return s
