"""The resumable run state: plain tensors and JSON that load without unpickling, written atomically.

``state/`` holds ``model.pt`` (the step module: student, projectors, loss buffers), ``optimizer.pt`` (and one
``<name>.pt`` per further component, e.g. a discriminator and its optimizer), ``progress.json`` (iteration, best
score, guard) and ``rng_<rank>.pt`` (every process's random generators, module-private ones included). Every
``.pt`` is read with ``torch.load(weights_only=True)``: a file planted in a run folder cannot run code, it only
fails to load with :class:`RunStateError`. The data position needs no file: the sampler's sequence is fixed by
the seed, and a resumed run skips the batches its iterations consumed.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkd.distill.config import ConfigError
from segkd.distill.runlog import json_safe

__all__ = [
    "FORMAT_VERSION",
    "PROGRESS",
    "RunStateError",
    "is_disk_full",
    "is_state",
    "load_run_state",
    "remove_partial",
    "save_run_state",
]

FORMAT_VERSION = 1
PROGRESS = "progress.json"  # written last: a folder with it is complete


class RunStateError(ConfigError):
    """A state folder that cannot be loaded: corrupted, foreign, or not made of plain tensors and JSON."""


def is_state(path: Path) -> bool:
    """True when ``path`` holds a state in this format (a folder with ``progress.json``)."""
    return (path / PROGRESS).is_file()


def save_run_state(
    accelerator: Any, path: Path, components: Mapping[str, Any], progress: dict[str, Any], model: nn.Module
) -> None:
    """Write the state into the (new, empty) folder ``path``; every process writes its random states.

    Args:
        components: name -> object with ``state_dict()`` (the main process saves them, e.g. ``model``,
            ``optimizer``); they hold the same values on every process.
        progress: JSON-able loop state.
        model: the module whose private ``torch.Generator`` attributes are saved with the random states.
    """
    if accelerator.is_main_process:
        path.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_tensors(_rng_state(model), path / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        for name, obj in components.items():
            _save_tensors(obj.state_dict(), path / f"{name}.pt")
        record = {"format_version": FORMAT_VERSION, "num_processes": accelerator.num_processes, **progress}
        _write_durable(path / PROGRESS, json.dumps(json_safe(record), allow_nan=False, indent=1).encode())
    accelerator.wait_for_everyone()


def load_run_state(
    accelerator: Any, path: Path, components: Mapping[str, Any], model: nn.Module
) -> dict[str, Any]:
    """Restore ``components`` and this process's random states from ``path``; returns the progress record.

    Raises:
        RunStateError: a file is missing, corrupted, holds anything but tensors and plain containers (it is
            never unpickled), or does not fit the run (another model, another process count).
    """
    progress = _read_progress(path)
    if progress.get("num_processes") != accelerator.num_processes:
        raise RunStateError(
            f"the state in {path} was saved by {progress.get('num_processes')} process(es), this run has "
            f"{accelerator.num_processes}; resume with the same number of processes (the data order and the "
            "random states are per process)"
        )
    for name, obj in components.items():
        state = _load_tensors(path / f"{name}.pt")
        try:
            obj.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise RunStateError(
                f"{path / (name + '.pt')} does not fit this run's {name} (was the model or the method "
                f"changed?): {str(e).splitlines()[0]}; resume with the config the run was started with"
            ) from e
    _set_rng_state(_load_tensors(path / f"rng_{accelerator.process_index}.pt"), model, path)
    return progress


# ---------------------------------------------------------------------------------------------------- files


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _load_tensors(path: Path) -> Any:
    if not path.is_file():
        raise RunStateError(f"the state folder {path.parent} has no {path.name}: it is incomplete; {_ADVICE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any failure of a foreign file is the same user-facing problem)
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise RunStateError(
            f"{path} is not a run state file this trainer writes (only tensors and plain values are loaded, "
            f"nothing is unpickled): {type(e).__name__}: {reason}; {_ADVICE}"
        ) from None


def _read_progress(path: Path) -> dict[str, Any]:
    file = path / PROGRESS
    try:
        record = json.loads(file.read_bytes())
    except (OSError, ValueError) as e:
        raise RunStateError(f"{file} cannot be read as JSON ({type(e).__name__}); {_ADVICE}") from None
    if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
        raise RunStateError(f"{file} is not a progress record of this trainer; {_ADVICE}")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise RunStateError(
            f"{file} has state format {record['format_version']}, newer than this version's {FORMAT_VERSION}; "
            "upgrade segkd to resume it"
        )
    return record


_ADVICE = (
    "resume from another state with train.resume=PATH/state, or start over with train.resume=none "
    "train.overwrite=true"
)


def remove_partial(path: Path) -> None:
    """Delete a state folder that was being written (a full disk, a kill)."""
    shutil.rmtree(path, ignore_errors=True)


def is_disk_full(e: BaseException, where: Path, need: int) -> bool:
    """True when a failed write of ``need`` bytes into the folder ``where`` failed for lack of space.

    The OS says so with ENOSPC/EDQUOT; torch's zip writer does not (its message changes between releases: "file
    write failed", "unexpected pos ..."), so any other write error counts as a full disk when the disk has less
    room than the write needed (the partial file is removed before this is asked).
    """
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(e, OSError | RuntimeError):
        return False
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return False
    return free < need + 2**20  # a MiB of slack for the zip headers and the file system's own blocks


# ---------------------------------------------------------------------------------------------------- random


def _generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Private generators of the modules (e.g. a loss's own mask generator), by ``module.attribute`` name."""
    found = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attr}" if name else attr] = value
    return found


def _rng_state(model: nn.Module) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },  # fmt: skip
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "generators": {k: g.get_state() for k, g in _generators(model).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], model: nn.Module, path: Path) -> None:
    try:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
        )
        random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
        generators = _generators(model)
        for key, value in state["generators"].items():
            generators[key].set_state(value)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RunStateError(f"the random states in {path} do not fit this run ({e}); {_ADVICE}") from None
