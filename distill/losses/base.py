"""The loss registry, the base class every distillation loss derives from, and small shared helpers.

Every loss is called as ``loss(student, teacher, target)`` where ``student`` and ``teacher`` are the dicts a
``SegModel`` returns with ``return_features=True`` (at least ``logits`` (N, K, h, w) and ``feat`` (N, C, h, w)) and
``target`` is the label map (N, H, W) with 255 marking ignored pixels. It returns the *weighted* scalar.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from infer.registry import Registry

__all__ = ["LOSSES", "KDLoss", "resize_labels", "check_same_shape", "cosine"]

LOSSES: Registry[type[KDLoss]] = Registry("loss")


class KDLoss(nn.Module):
    """Base class: picks the compared tensors, detaches the teacher, applies the weight.

    Subclasses set ``sources`` (the entries of the model's output dict they may compare, the first one is the
    default) and ``default_weight`` (a number, or a dict per source), and implement ``compute``, which returns the
    unweighted loss. The teacher tensor is detached here, once, so that no loss can send gradient into it, and both
    tensors are cast to float32 so that softmaxes over thousands of positions stay exact under mixed precision.

    Args:
        weight: Loss weight; ``None`` takes the authors' value for the chosen source.
        source: Which entry of the output dicts to compare (``"logits"`` or ``"feat"``).
    """

    sources: ClassVar[tuple[str, ...]] = ("logits",)
    default_weight: ClassVar[float | Mapping[str, float]] = 1.0

    def __init__(self, *, weight: float | None = None, source: str | None = None) -> None:
        super().__init__()
        source = self.sources[0] if source is None else source
        if source not in self.sources:
            raise ValueError(
                f"{type(self).__name__} compares {' or '.join(map(repr, self.sources))}, not {source!r}; "
                f"set source to one of those"
            )
        self.source = source
        if weight is None:
            dw = self.default_weight
            weight = dw[source] if isinstance(dw, Mapping) else dw
        self.weight = float(weight)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        """Return the unweighted loss for student tensor ``s`` and (detached) teacher tensor ``t``."""
        raise NotImplementedError

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], target: Tensor | None = None
    ) -> Tensor:
        s = _pick(student, self.source, "student").float()
        t = _pick(teacher, self.source, "teacher").detach().float()
        return self.weight * self.compute(s, t, target)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, weight={self.weight:g}"


def _pick(outputs: Mapping[str, Tensor], key: str, who: str) -> Tensor:
    if key not in outputs:
        raise KeyError(
            f"the {who} outputs hold {sorted(outputs)} but this loss needs {key!r}; "
            f"call the model with return_features=True"
        )
    return outputs[key]


def resize_labels(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-resize a label map (N, H, W) to ``size`` = (h, w), keeping it integer (ignore labels survive)."""
    if target.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(target.shape)}")
    if tuple(target.shape[-2:]) == tuple(size):
        return target.long()
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest")  # (N, 1, h, w)
    return resized[:, 0].long()


def check_same_shape(s: Tensor, t: Tensor, what: str, hint: str = "") -> None:
    """Raise a ValueError naming both shapes when a student and a teacher tensor cannot be compared."""
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ{'; ' + hint if hint else ''}"
        )


def cosine(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Cosine similarity along ``dim``: <a, b> / max(||a|| * ||b||, eps) (zero vectors give 0).

    Written out because ``F.cosine_similarity`` runs about twice slower forward + backward on large maps.
    """
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)
