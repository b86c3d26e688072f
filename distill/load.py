"""A checkpoint back into a model: the architecture its ``arch`` names, its weights loaded strictly.

    model, meta = load_model("runs/x/best.pth")              # eval mode, on the CPU

The file format (save, read, validate) is :mod:`segkd.distill.checkpoint`; this module adds the model zoo to it.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from segkd.distill.checkpoint import CheckpointError, load_checkpoint
from segkd.distill.models import build_model
from segkd.infer.meta import ModelMeta

__all__ = ["batchnorm_affine", "half_safe", "load_model"]


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a checkpoint describes, load its weights strictly, and return it in eval mode."""
    ckpt = load_checkpoint(path)
    arch = dict(ckpt.meta.arch)
    try:
        model = build_model(arch.pop("name", None), **arch)
    except (KeyError, TypeError, ValueError) as e:  # unknown architecture name or options
        raise CheckpointError(
            f"{path}: cannot build its model {ckpt.meta.arch}: {e.args[0] if e.args else e}"
        ) from e
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:  # missing/unexpected keys, wrong shapes
        detail = " ".join(str(e).split())[:400]
        raise CheckpointError(
            f"{path}: its weights do not fit the {_arch_name(ckpt.meta)} it describes ({detail}); the file is "
            "damaged or was edited: use the checkpoint training wrote"
        ) from e
    return model.to(device).eval(), ckpt.meta


def _arch_name(meta: ModelMeta) -> str:
    return str(meta.arch.get("name", "model"))


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel scale k and shift c (float64) of a BatchNorm in eval mode: y = k x + c, with
    k = gamma / sqrt(var + eps) and c = beta - mean k (what folding it into the Conv before it multiplies and adds)."""
    k = (bn.running_var.detach().double() + bn.eps).rsqrt()  # type: ignore[union-attr, operator]
    if bn.weight is not None:
        k = k * bn.weight.detach().double()  # type: ignore[union-attr]
    c = -bn.running_mean.detach().double() * k  # type: ignore[union-attr, operator]
    if bn.bias is not None:
        c = c + bn.bias.detach().double()  # type: ignore[union-attr]
    return k, c


def half_safe(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorms compute the same function with parameters float16 can hold.

    A BatchNorm's running variance can exceed float16's 65504 (PIDNet-L's first BatchNorm reads Conv outputs up to
    ~1000: variance 1.4e5), and cast to float16 it becomes inf, zeroing the channel. Each affine BatchNorm's scale
    and shift (`batchnorm_affine`) are computed in float32 or better instead and stored as weight and bias over unit
    statistics: the same y = k x + c, which the exporter folds into the Conv as before.
    """
    net = copy.deepcopy(model)
    with torch.no_grad():
        for bn in net.modules():
            if (
                not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None
                or bn.weight is None or bn.bias is None
            ):  # fmt: skip
                continue  # without statistics there is nothing to overflow; without affine parameters, no place
            k, c = batchnorm_affine(bn)
            bn.weight.copy_(k)
            bn.bias.copy_(c)
            bn.running_mean.zero_()  # type: ignore[union-attr]
            bn.running_var.fill_(1.0 - bn.eps)  # type: ignore[union-attr]
    return net
