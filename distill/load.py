"""A checkpoint back into a model: the architecture its ``arch`` names, its weights loaded strictly.

    model, meta = load_model("runs/x/best.pth")              # eval mode, on the CPU

The file format (save, read, validate) is :mod:`segkd.distill.checkpoint`; this module adds the model zoo to it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from segkd.distill.checkpoint import CheckpointError, load_checkpoint
from segkd.distill.models import build_model
from segkd.infer.meta import ModelMeta

__all__ = ["load_model"]


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
