"""The learnable student -> teacher width adapter that feature losses own.

A loss that compares a student feature with a teacher feature of another width maps the student through a 1x1
convolution without bias (optionally followed by BatchNorm and ReLU). The projector is a submodule of the loss, so
its parameters appear in ``loss.parameters()`` and the trainer adds them to the student's optimizer; it is discarded
after training (checkpoints hold the student only).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import KDLoss, check_same_shape

__all__ = ["Projector", "build_projector", "ProjectedLoss"]


class Projector(nn.Sequential):
    """1x1 conv (no bias) from ``in_channels`` to ``out_channels``, optionally followed by BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, bn: bool = False) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)]
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
) -> Projector | None:
    """Build the projector a feature loss needs, or ``None``.

    Args:
        student_channels: Width of the student feature (``model.feat_channels``).
        teacher_channels: Width of the teacher feature.
        project: ``None`` (default) projects exactly when the widths differ; ``True`` always; ``False`` never.
        bn: Append BatchNorm + ReLU after the 1x1 conv.
    """
    if project is False:
        return None
    if student_channels is None or teacher_channels is None:
        if project:
            raise ValueError("project=True needs both student_channels and teacher_channels")
        return None
    if project or student_channels != teacher_channels:
        return Projector(int(student_channels), int(teacher_channels), bn=bn)
    return None


class ProjectedLoss(KDLoss):
    """Base class of feature losses: owns the projector and checks that the compared shapes match.

    Args:
        student_channels: Width of the student feature; with ``teacher_channels`` decides the projector.
        teacher_channels: Width of the teacher feature.
        project: ``None`` projects exactly when the widths differ; ``True`` always; ``False`` never.
        projector_bn: Follow the projector's 1x1 conv with BatchNorm + ReLU.
        weight: Loss weight (``None``: the authors' value).
        source: Output entry compared (``"feat"`` for feature losses).
    """

    sources = ("feat",)

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        project: bool | None = None,
        projector_bn: bool = False,
        weight: float | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(weight=weight, source=source)
        self.projector = build_projector(student_channels, teacher_channels, project=project, bn=projector_bn)

    def project(self, s: Tensor, t: Tensor) -> Tensor:
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
