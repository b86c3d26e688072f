"""Build a TensorRT engine from an exported ONNX file, with a JSON sidecar, through one code path for TRT 10 and 11.

Precision lives in the ONNX graph (float32, float16, or INT8 Q/DQ), so the network is always created strongly
typed (the ``STRONGLY_TYPED`` flag where it exists: TensorRT 10; TensorRT 11 networks are strongly typed
without it) and no precision builder flag is ever set. Both versions share the rest: ``OnnxParser``,
``set_memory_pool_limit``, optimization profiles, timing caches and ``build_serialized_network``.

The sidecar it writes, and the policy of where an engine may run, belong to the runtime
(`segkd.infer.runtime.engine_record`); shapes are parsed in `segkd.export.trt_shapes`, GPUs queried in `segkd.infer.runtime.gpu`.
TensorRT is imported lazily: this module imports without torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segkd.export.trt_shapes import ShapeProfile, fit_profile, fmt_dims, parse_shapes
from segkd.infer import __version__
from segkd.infer.fileio import atomic_path, atomic_write_text, sha256_file
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.engine_record import (
    SIDECAR_FORMAT,
    EngineCompatError,
    check_engine_compat,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from segkd.infer.runtime.gpu import TRT_INSTALL_HINT, TensorRTUnavailable, gpu_info, import_tensorrt

__all__ = [
    "TRT_INSTALL_HINT",
    "BuildOptions",
    "EngineBuildError",
    "EngineCompatError",
    "ShapeProfile",
    "TensorRTUnavailable",
    "build_engine",
    "check_engine_compat",
    "engine_path_for",
    "fit_profile",
    "gpu_info",
    "import_tensorrt",
    "parse_shapes",
    "read_sidecar",
    "rebuild_command",
    "sidecar_path",
]


class EngineBuildError(RuntimeError):
    """The ONNX file cannot be parsed or built (bad shapes, unsupported layer, out of memory, ...)."""


# ----------------------------------------------------------------------------------------------------- build
@dataclass
class BuildOptions:
    """How the engine is built (recorded in the sidecar)."""

    shapes: ShapeProfile | None = None  # required when the ONNX input has dynamic dimensions
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False


def engine_path_for(onnx_path: str | os.PathLike[str]) -> Path:
    """``best.fp16.onnx`` -> ``best.fp16.engine``."""
    return Path(onnx_path).with_suffix(".engine")


def _network_flags(trt: Any) -> int:
    """Creation flags: STRONGLY_TYPED where the enum has it (TRT 10); TRT 11 networks are strongly typed."""
    enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flag = getattr(enum, "STRONGLY_TYPED", None) if enum is not None else None
    return 1 << int(flag) if flag is not None else 0


def _parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no details)"])
        )


def _tensors(network: Any) -> dict[str, list[dict[str, Any]]]:
    def describe(t: Any) -> dict[str, Any]:
        return {
            "name": t.name,
            "shape": [int(d) for d in t.shape],
            "dtype": str(t.dtype).split(".")[-1].lower(),
        }

    return {
        "inputs": [describe(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [describe(network.get_output(i)) for i in range(network.num_outputs)],
    }


def _configure(trt: Any, builder: Any, options: BuildOptions) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    return config


def _add_profile(builder: Any, config: Any, network: Any, shapes: ShapeProfile | None) -> ShapeProfile:
    """Add the optimization profile a dynamic input needs; return the shapes the engine accepts."""
    inp = network.get_input(0)
    dims = tuple(int(d) for d in inp.shape)
    if shapes is not None:
        try:
            fit_profile(shapes, dims, inp.name)
        except ValueError as e:
            raise EngineBuildError(str(e)) from e
    if all(d >= 0 for d in dims):
        return ShapeProfile(dims, dims, dims)
    if shapes is None:
        raise EngineBuildError(
            f"input {inp.name!r} is {fmt_dims(dims)}: give its range with --shapes MIN:OPT:MAX"
        )
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    return shapes


def _set_timing_cache(config: Any, path: Path | None, log: Callable[[str], None]) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        log(f"timing cache: {path} ({len(data) / 1024:.0f} KiB)")
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is not used


def _save_timing_cache(config: Any, path: Path) -> None:
    blob = config.get_timing_cache().serialize()
    with atomic_path(path) as tmp:
        tmp.write_bytes(memoryview(blob))


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str] | None = None,
    options: BuildOptions | None = None,
    *,
    trt: Any = None,
    gpu: tuple[str | None, str | None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build ``onnx_path`` into ``engine_path`` (default ``<name>.engine``) and write its sidecar.

    Args:
        options: profile shapes, workspace, timing cache, compatibility modes.
        trt: the ``tensorrt`` module (default: imported here); tests pass a stand-in.
        gpu: (name, compute capability) of the building GPU (default: queried).

    Returns:
        The sidecar record (also written to ``<engine>.json``).

    Raises:
        TensorRTUnavailable: TensorRT does not import.
        EngineBuildError: parse or build failure, shapes that do not fit the graph.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else engine_path_for(onnx_path)
    options = options or BuildOptions()
    trt = trt or import_tensorrt()
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file {onnx_path} does not exist")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} is too old: strongly typed builds need 10 or later"
        )
    meta = _onnx_meta(onnx_path)
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    _parse_onnx(trt, network, logger, onnx_path)
    config = _configure(trt, builder, options)
    shapes = _add_profile(builder, config, network, options.shapes)
    cache = Path(options.timing_cache) if options.timing_cache else None
    _set_timing_cache(config, cache, log)
    log(f"building {engine_path.name} from {onnx_path.name} (TensorRT {trt.__version__}, input {shapes})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name}; its log above says why")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(memoryview(plan))
    if cache is not None:
        _save_timing_cache(config, cache)
    name, cc = gpu if gpu is not None else gpu_info()
    record = {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "meta": meta.to_dict(),
        "params": meta.extra.get("params"),
        **_tensors(network),
        "build": {
            "tensorrt_version": str(trt.__version__),
            "gpu_name": name,
            "compute_capability": cc,
            "onnx": str(onnx_path),
            "onnx_sha256": sha256_file(onnx_path),
            "shapes": {
                "input": network.get_input(0).name,
                "min": shapes.min,
                "opt": shapes.opt,
                "max": shapes.max,
            },
            "strongly_typed": True,
            # A version-compatible plan embeds its lean runtime: the loader must set
            # ``runtime.engine_host_code_allowed = True`` (only for engines it trusts).
            "engine_host_code_allowed": options.version_compatible,
            "build_time_s": round(time.perf_counter() - t0, 2),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "toolkit_version": __version__,
            **{k: v for k, v in asdict(options).items() if k != "shapes"},
        },
    }
    atomic_write_text(sidecar_path(engine_path), json.dumps(record, indent=2, default=list) + "\n")
    return record


def _onnx_meta(path: Path) -> ModelMeta:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors: a damaged file, or not ONNX at all
        raise EngineBuildError(
            f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it"
        ) from e
    try:
        return ModelMeta.from_props({p.key: p.value for p in model.metadata_props})
    except ValueError as e:
        raise EngineBuildError(f"{path}: {e}") from e
