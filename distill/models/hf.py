"""Hugging Face ``transformers`` segmentation models behind the project's output contract.

``transformers`` is an optional extra (``pip install segkd[transformers]``): it is imported inside the builders of
``segformer.py`` and ``upernet.py`` only, so the CNN models never need it. It was chosen over hand-written attention
or mmsegmentation because it is maintained, imports without torchvision or mmcv, and loads the public checkpoints
(``nvidia/mit-b0``, ``openmmlab/upernet-swin-tiny``) by their usual names.

The wrapped network is kept whole (``self.net``), so its state dict keeps the Hugging Face layout under ``net.``;
the decoder feature is read by a forward pre-hook on the decode head's classifier, which leaves the library's
forward untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HFSegModel", "require_transformers"]


def require_transformers() -> Any:
    """Import ``transformers`` or say how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "the SegFormer and UPerNet-Swin models need Hugging Face transformers: "
            "pip install 'segkd[transformers]' (or pip install 'transformers>=4.40')"
        ) from exc
    return transformers


class HFSegModel(nn.Module):
    """A ``transformers`` segmentation network with the :mod:`distill.models` output contract.

    Args:
        net: the ``...ForSemanticSegmentation`` module.
        encode: ``net, x -> 4 stage outputs (NCHW)``.
        head: the decode head, called on the stages; it must own a ``classifier`` (its input is ``feat``).
        aux_head: optional auxiliary head called on the stages (UPerNet's FCN head on stage 3).
        feat_channels: channels of ``feat``.
        align_corners: the final bilinear upsampling of the logits to the input size.
    """

    def __init__(
        self,
        net: nn.Module,
        encode: Callable[[nn.Module, Tensor], Sequence[Tensor]],
        head: nn.Module,
        aux_head: nn.Module | None,
        *,
        feat_channels: int,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self._encode = encode
        self._head = [head]  # a list: the head is already registered inside ``net``
        self._aux_head = [aux_head]
        self.feat_channels = feat_channels
        self.align_corners = align_corners
        self._feat: Tensor | None = None
        head.classifier.register_forward_pre_hook(self._keep_feat)

    def _keep_feat(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._feat = args[0]

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | dict[str, Any]:
        stages = list(self._encode(self.net, x))  # 4 x (N, C_i, H/2^(i+2), W/2^(i+2))
        logits = self._head[0](stages)  # (N, K, H/4, W/4)
        feat, self._feat = self._feat, None  # (N, C, H/4, W/4)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        if not return_features:
            return out
        aux_head = self._aux_head[0]
        aux = aux_head(stages) if aux_head is not None else None
        return {"out": out, "logits": logits, "aux": aux, "feat": feat, "stages": stages}
