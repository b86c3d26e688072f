"""The TensorRT engine record (the JSON sidecar beside every engine) and the policy of where an engine may run.

An engine runs only on the TensorRT version and GPU model that built it, unless it was built version- or
hardware-compatible. The sidecar ``<name>.engine.json`` records both (``export/to_trt.py`` writes it);
`check_engine_compat` refuses a mismatch with the command that rebuilds the engine. The runtime owns this
record because it is what the runtime reads; the builder imports it from here. Torch-free, TensorRT-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkd.infer.runtime.gpu import gpu_info, import_tensorrt

__all__ = [
    "SIDECAR_FORMAT",
    "EngineCompatError",
    "ShapeProfile",
    "check_engine_compat",
    "host_code_allowed",
    "read_sidecar",
    "rebuild_command",
    "sidecar_path",
]

SIDECAR_FORMAT = "segkd-engine"
# Version-compatible engines also run on the next major version in these pairs (TensorRT support matrix).
_CROSS_MAJOR = {(8, 10), (10, 11)}
# Compute capability from which AMPERE_PLUS hardware-compatible engines run.
_AMPERE = (8, 0)


class EngineCompatError(RuntimeError):
    """An engine built by another TensorRT version or GPU model: it must be rebuilt here."""


@dataclass(frozen=True)
class ShapeProfile:
    """Min/opt/max shapes of the network input (one optimization profile)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def __str__(self) -> str:
        shapes = (self.opt,) if self.static else (self.min, self.opt, self.max)
        return ":".join("x".join(map(str, s)) for s in shapes)


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    """``best.fp16.engine`` -> ``best.fp16.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar record of an engine (``x.engine``) or the sidecar file itself (``x.engine.json``).

    Raises:
        EngineCompatError: no sidecar, or not one written by the engine builder.
    """
    path = Path(path)
    side = path if path.suffix == ".json" else sidecar_path(path)
    if not side.is_file():
        raise EngineCompatError(
            f"{path} has no sidecar {side.name} recording how it was built; rebuild it with "
            "`segkd trt MODEL.onnx` (an engine cannot be checked or run without one)"
        )
    try:
        record = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise EngineCompatError(f"{side} is not valid JSON ({e}); rebuild the engine") from e
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT or "build" not in record:
        raise EngineCompatError(f"{side} is not a {SIDECAR_FORMAT} sidecar; rebuild the engine")
    return record


def host_code_allowed(record: dict[str, Any]) -> bool:
    """Whether the runtime must allow the engine's embedded host code before deserialising it.

    A version-compatible plan carries its own lean runtime, which TensorRT refuses to run unless
    ``runtime.engine_host_code_allowed = True``; the builder records that need in the sidecar.
    """
    build = record.get("build", {})
    return bool(build.get("engine_host_code_allowed", build.get("version_compatible", False)))


def rebuild_command(record: dict[str, Any]) -> str:
    """The ``to_trt.py`` command that rebuilds the engine a sidecar describes, with its original options."""
    b = record["build"]
    s = b.get("shapes") or {}
    cmd = ["segkd", "trt", b.get("onnx") or "MODEL.onnx"]
    if s:
        cmd += ["--shapes", str(ShapeProfile(tuple(s["min"]), tuple(s["opt"]), tuple(s["max"])))]
    if b.get("workspace_gb"):
        cmd += ["--workspace", f"{b['workspace_gb']:g}"]
    cmd += ["--version-compatible"] * bool(b.get("version_compatible"))
    cmd += ["--hardware-compatible"] * bool(b.get("hardware_compatible"))
    return " ".join(cmd)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


def _version_problem(build: dict[str, Any], runtime: str) -> str | None:
    built = str(build.get("tensorrt_version") or "")
    if not built or built == runtime:
        return None
    if build.get("version_compatible"):
        b, r = _version(built), _version(runtime)
        if b and r and r >= b and (r[0] == b[0] or (b[0], r[0]) in _CROSS_MAJOR):
            return None
        return f"it was built version-compatible with TensorRT {built}, which TensorRT {runtime} cannot load"
    return f"it was built with TensorRT {built} and this is TensorRT {runtime}"


def _gpu_problem(build: dict[str, Any], gpu_name: str | None, cc: str | None) -> str | None:
    built_name, built_cc = build.get("gpu_name"), build.get("compute_capability")
    if build.get("hardware_compatible"):
        if cc and _version(cc) < _AMPERE:
            return f"it was built hardware-compatible for Ampere or newer, and this GPU is sm {cc}"
        return None
    if built_name and gpu_name and built_name.strip().lower() != gpu_name.strip().lower():
        return f"it was built on {built_name} and this GPU is {gpu_name}"
    if built_cc and cc and built_cc != cc:
        return f"it was built for compute capability {built_cc} and this GPU has {cc}"
    return None


def check_engine_compat(
    sidecar: dict[str, Any] | str | os.PathLike[str],
    trt_version: str | None = None,
    gpu_name: str | None = None,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """Refuse an engine this machine cannot run; return its sidecar record when it can.

    Args:
        sidecar: the record, the sidecar file, or the engine file (its sidecar is read beside it).
        trt_version: the TensorRT that will load the engine (default: the installed one).
        gpu_name, compute_capability: the GPU it will run on (default: GPU 0, queried; the capability is only
            queried when the name is too).

    Raises:
        EngineCompatError: another TensorRT version or GPU model built it (the message gives the command that
            rebuilds it), or there is no readable sidecar.
    """
    record = sidecar if isinstance(sidecar, dict) else read_sidecar(sidecar)
    if trt_version is None:
        trt_version = str(import_tensorrt().__version__)
    if gpu_name is None:
        gpu_name, compute_capability = gpu_info()
    build = record.get("build", {})
    problems = [
        p
        for p in (_version_problem(build, trt_version), _gpu_problem(build, gpu_name, compute_capability))
        if p
    ]
    if problems:
        raise EngineCompatError(
            f"engine {record.get('engine', '?')} cannot run here: {'; '.join(problems)}. Engines are tied to the "
            f"TensorRT version and GPU model that built them: rebuild it on this machine with `{rebuild_command(record)}`"
        )
    return record
