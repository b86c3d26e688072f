"""The self-describing checkpoint: one `.pth` that export and infer need nothing beside.

Layout (plain containers and tensors only, so ``torch.load(weights_only=True)`` reads it)::

    {
      "format": "segkd-checkpoint", "format_version": 1,
      "meta": ModelMeta.to_dict(),   # arch spec, class names, palette, mean/std, channel order, training crop
      "state_dict": {...},           # the student/model only: no teacher, no projectors
      "provenance": {"config": {...}, "iteration": int, "metrics": {...}, "created": ISO time, "toolkit": version}
    }
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from infer import __version__
from infer.fileio import atomic_path
from infer.meta import ModelMeta

__all__ = ["FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint", "load_model", "CheckpointError"]

FORMAT = "segkd-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this toolkit."""


@dataclass
class Checkpoint:
    meta: ModelMeta
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | dict[str, torch.Tensor],
    meta: ModelMeta,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (the previous file survives a crash mid-write)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit": __version__,
    }
    prov.update(provenance or {})
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "provenance": prov,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (weights only: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted, truncated, or a pickle with arbitrary objects
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "pass a .pth written by distill/train.py, or convert foreign weights with "
            "`python -m distill.models.pretrained`"
        ) from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path} is not a {FORMAT} file (top-level: {keys}); a bare state dict lacks class names and "
            "normalisation: convert it with `python -m distill.models.pretrained --help`"
        )
    return Checkpoint(ModelMeta.from_dict(blob["meta"]), blob["state_dict"], blob.get("provenance", {}))


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Build the model a checkpoint describes, load its weights strictly, and return it in eval mode."""
    from distill.models import build_model

    ckpt = load_checkpoint(path)
    arch = dict(ckpt.meta.arch)
    model = build_model(arch.pop("name"), **arch)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device).eval(), ckpt.meta
