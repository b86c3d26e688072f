"""Masked generative distillation, MGD (Yang et al., ECCV 2022), semantic-segmentation setting."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LOSSES, Param, optional_int
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
    and must join the student's optimizer. The official alignment conv has a bias: ``projector_bias=true`` (the
    MGD recipe sets it); the default is this toolkit's projector without bias.

    The mask comes from the global torch RNG (so ``torch.manual_seed`` reproduces it) or, with ``seed`` set,
    from the loss's own ``torch.Generator``, whose state is part of ``state_dict()`` (a uint8 tensor, loadable
    with ``weights_only=True``), so a resumed run draws the masks the uninterrupted one would have.
    Where: the official segmentation code (yzd-v/MGD ``seg/``) distils the backbone's last stage (``source:
    stage4``, 512 -> 2048 channels for ResNet-18 -> ResNet-101: pass both widths) and adds CWD on the logits
    (tau 4, weight 3); the default here is the decoder feature (``feat``), the feature the other losses of this
    toolkit and CIRKD-based comparisons such as HWD's use (``_methods/mgd.yaml`` and ``mgd_official.yaml``).
    Reduction: sum over values, mean over images. Ignore handling: none (labels unused). Features;
    ``teacher_channels`` is required (it sizes the generator); ``student_channels`` defaults to it.
    """

    sources = ("feat", "stage4")
    default_weight = 2e-5
    params = {
        "teacher_channels": Param(
            None, "teacher feature width (sizes the generator)", optional_int, required=True
        ),
        "mask_ratio": Param(
            0.75,
            "fraction of positions masked out",
            float,
            check=lambda r: 0.0 <= r < 1.0,
            rule="lie in [0, 1)",
        ),
        "seed": Param(None, "seed of a private mask generator; None uses the global RNG", optional_int),
    }

    def setup(self) -> None:
        if self.student_channels is None:
            self.student_channels = self.teacher_channels
        super().setup()
        self.generator = _Generator(self.teacher_channels)
        self._rng = None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def random_mask(self, like: Tensor) -> Tensor:
        """Mask (N, 1, h, w) for a feature ``like`` (N, C, h, w): 0 with probability ``mask_ratio``, else 1."""
        n, _, h, w = like.shape
        if self._rng is None:
            u = torch.rand((n, 1, h, w), device=like.device)
        else:
            u = torch.rand((n, 1, h, w), generator=self._rng).to(like.device)
        return (u >= self.mask_ratio).to(like.dtype)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        s = self.align(s, t)
        regenerated = self.generator(s * self.random_mask(s))  # (N, C_t, h, w)
        return (regenerated - t).pow(2).sum() / t.shape[0]

    def get_extra_state(self) -> dict[str, Tensor]:
        return {} if self._rng is None else {"rng_state": self._rng.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        if ("rng_state" in state) != (self._rng is not None):
            raise ValueError(
                "mgd state and loss disagree on the private mask generator: build the loss with the same "
                "'seed' setting (set or unset) as the run that saved it"
            )
        if self._rng is not None:
            self._rng.set_state(state["rng_state"])
