"""Masked generative distillation, MGD (Yang et al., ECCV 2022), semantic-segmentation setting."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LOSSES
from .projector import ProjectedLoss

__all__ = ["MaskedGenerativeKD"]


class _Generator(nn.Sequential):
    """conv3x3 - ReLU - conv3x3 at the teacher width: regenerates the teacher feature from the masked student."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )


@LOSSES.register("mgd")
class MaskedGenerativeKD(ProjectedLoss):
    """Mask random student positions, regenerate the full teacher feature from what is left, and match it.

    Formula (proj: the 1x1 projector; M a random (N, 1, h, w) mask, 0 with probability ``mask_ratio``)::

        G = conv3x3(ReLU(conv3x3(proj(F_S) * M)))
        L_mgd = sum_{n,c,i} (G[n,c,i] - F_T[n,c,i])^2 / N          # N = batch size

    Citation: Yang, Li, Shao, Shi, Yuan, Yuan, "Masked Generative Distillation", ECCV 2022.
    Defaults: mask ratio 0.75 and alpha = 2e-5 (the segmentation setting), alpha being the loss weight here.
    The generator is learnable and, like the projector, a submodule: its parameters are in ``loss.parameters()``
    and must join the student's optimizer. The projector is this toolkit's 1x1 conv without bias (the official
    alignment conv has a bias). The mask comes from the global torch RNG (so ``torch.manual_seed`` reproduces it)
    or, with ``seed`` set, from the loss's own ``torch.Generator``. Reduction: sum over values, mean over images.
    Ignore handling: none (labels unused). Features; ``teacher_channels`` is required (it sizes the generator).

    Args:
        teacher_channels: Teacher feature width (required).
        student_channels: Student feature width (default: the teacher's).
        mask_ratio: Fraction of positions masked out.
        seed: Seed of a private mask generator; ``None`` uses the global RNG.
        project, projector_bn: Projector options.
        weight: Loss weight alpha (default 2e-5).
    """

    default_weight = 2e-5

    def __init__(
        self,
        *,
        teacher_channels: int | None = None,
        student_channels: int | None = None,
        mask_ratio: float = 0.75,
        seed: int | None = None,
        project: bool | None = None,
        projector_bn: bool = False,
        weight: float | None = None,
        source: str | None = None,
    ) -> None:
        if teacher_channels is None:
            raise ValueError("mgd needs teacher_channels (the teacher feature width) to build its generator")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mgd mask_ratio must lie in [0, 1), got {mask_ratio}")
        student_channels = teacher_channels if student_channels is None else student_channels
        super().__init__(
            student_channels=student_channels,
            teacher_channels=teacher_channels,
            project=project,
            projector_bn=projector_bn,
            weight=weight,
            source=source,
        )
        self.generator = _Generator(int(teacher_channels))
        self.mask_ratio = float(mask_ratio)
        self._rng = None if seed is None else torch.Generator().manual_seed(int(seed))

    def random_mask(self, like: Tensor) -> Tensor:
        """Mask (N, 1, h, w) for a feature ``like`` (N, C, h, w): 0 with probability ``mask_ratio``, else 1."""
        n, _, h, w = like.shape
        if self._rng is None:
            u = torch.rand((n, 1, h, w), device=like.device)
        else:
            u = torch.rand((n, 1, h, w), generator=self._rng).to(like.device)
        return (u >= self.mask_ratio).to(like.dtype)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        s = self.project(s, t)
        regenerated = self.generator(s * self.random_mask(s))  # (N, C_t, h, w)
        return (regenerated - t).pow(2).sum() / t.shape[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_ratio={self.mask_ratio:g}"
