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
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkd.infer import __version__
from segkd.infer.fileio import atomic_path
from segkd.infer.meta import ModelMeta

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "half_copy",
    "load_checkpoint",
    "save_checkpoint",
]

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
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the .pth file in it (e.g. {path / 'best.pth'})"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted, truncated, or a pickle with arbitrary objects
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(path, e)}); {_FIX}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path} is not a {FORMAT} file (top-level: {keys}); a bare state dict lacks class names and "
            "normalisation: convert it with `segkd convert --help`"
        )
    version = blob.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this segkd reads up to {FORMAT_VERSION}: it was written by "
            "a newer segkd, upgrade it (pip install -U segkd) to read this file"
        )
    try:
        meta = ModelMeta.from_dict(blob["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has no valid model metadata ({type(e).__name__}: {e}); {_FIX}") from e
    if not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no state_dict; {_FIX}")
    return Checkpoint(meta, blob["state_dict"], blob.get("provenance", {}))


def half_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write ``src`` again with its floating-point weights in float16: half the file, for checkpoints shipped
    as assets. Loading casts them back into the model's float32 parameters; everything else is kept."""
    ckpt = load_checkpoint(src)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    prov = {**ckpt.provenance, "weights_dtype": "float16", "half_copy_of": Path(src).name}
    return save_checkpoint(dst, state, ckpt.meta, prov)


_FIX = "pass a .pth written by distill/train.py, or convert foreign weights with `segkd convert`"


def load_failure(path: Path, e: Exception) -> str:
    """Why ``torch.load`` refused the file, in one line, without torch's advice to turn ``weights_only`` off."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index sits at the very end
        return "not a torch zip archive: truncated by an interrupted copy, or another kind of file"
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
        # Refused, rightly: such a file can run code when loaded. torch's own text advises turning the weights-only guard off.
        return (
            "it holds Python objects besides tensors and plain containers, and loading those could run code"
        )
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return (
        f"{type(e).__name__}: {first[:200]}"
        if first
        else f"{type(e).__name__} (truncated or not a torch file)"
    )
