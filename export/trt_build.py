"""Build a TensorRT engine from an exported ONNX file, with a JSON sidecar, through one code path for TRT 10 and 11.

Precision lives in the ONNX graph (float32, float16, or INT8 Q/DQ), so the network is always created strongly
typed (the ``STRONGLY_TYPED`` flag where it exists: TensorRT 10; TensorRT 11 networks are strongly typed
without it) and no precision builder flag is ever set. Both versions share the rest: ``OnnxParser``,
``set_memory_pool_limit``, optimization profiles, timing caches and ``build_serialized_network``.

An engine runs only on the TensorRT version and GPU model that built it, unless it was built version- or
hardware-compatible. The sidecar ``<name>.engine.json`` records both, and `check_engine_compat` refuses a
mismatch with the command that rebuilds the engine. TensorRT (and the GPU queries) are imported lazily: this
module imports without torch, onnxruntime or tensorrt, and the deploy runtime uses its checks.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infer import __version__
from infer.fileio import atomic_path, atomic_write_text
from infer.meta import ModelMeta

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
    "gpu_info",
    "import_tensorrt",
    "parse_shapes",
    "read_sidecar",
    "rebuild_command",
    "sidecar_path",
]

TRT_INSTALL_HINT = "pip install -e .[trt]  (TensorRT and cuda-python wheels; needs an NVIDIA GPU and driver)"
SIDECAR_FORMAT = "segkd-engine"
# Version-compatible engines also run on the next major version in these pairs (TensorRT support matrix).
_CROSS_MAJOR = {(8, 10), (10, 11)}
# Compute capability from which AMPERE_PLUS hardware-compatible engines run.
_AMPERE = (8, 0)


class TensorRTUnavailable(ImportError):
    """TensorRT does not import here."""


class EngineBuildError(RuntimeError):
    """The ONNX file cannot be parsed or built (bad shapes, unsupported layer, out of memory, ...)."""


class EngineCompatError(RuntimeError):
    """An engine built by another TensorRT version or GPU model: it must be rebuilt here."""


def import_tensorrt() -> Any:
    """``import tensorrt`` or raise TensorRTUnavailable with the install command."""
    try:
        import tensorrt
    except ImportError as e:  # also OSError-like failures of the bindings surface as ImportError
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}); install it with: {TRT_INSTALL_HINT}"
        ) from e
    return tensorrt


# ----------------------------------------------------------------------------------------------------- shapes
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


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not dimensions joined by 'x', e.g. 1x3x512x1024") from None
    if any(d < 1 for d in dims):
        raise ValueError(f"shape {text!r} has a dimension below 1")
    return dims


def parse_shapes(text: str) -> ShapeProfile:
    """``"1x3x512x1024"`` (fixed) or ``"MIN:OPT:MAX"`` such as ``"1x3x512x1024:2x3x512x1024:4x3x1024x2048"``.

    Raises:
        ValueError: not 1 or 3 shapes, ranks that differ, or not min <= opt <= max in every dimension.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 3):
        raise ValueError(
            f"--shapes {text!r}: give one shape or MIN:OPT:MAX, e.g. 1x3x512x1024:1x3x512x1024:4x3x512x1024"
        )
    shapes = [_parse_dims(p) for p in parts] * (3 if len(parts) == 1 else 1)
    lo, opt, hi = shapes
    if not len(lo) == len(opt) == len(hi):
        raise ValueError(f"--shapes {text!r}: min, opt and max have different ranks")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise ValueError(f"--shapes {text!r}: need min <= opt <= max in every dimension")
    return ShapeProfile(lo, opt, hi)


def fit_profile(profile: ShapeProfile, dims: tuple[int, ...], name: str = "input") -> None:
    """Check a profile against the network input's dims (-1 = dynamic).

    Raises:
        ValueError: different rank, or a fixed dimension that the profile changes.
    """
    if len(profile.min) != len(dims):
        raise ValueError(
            f"--shapes {profile} has rank {len(profile.min)}; input {name!r} is {_fmt_dims(dims)}"
        )
    for i, d in enumerate(dims):
        if d >= 0 and not profile.min[i] == profile.opt[i] == profile.max[i] == d:
            raise ValueError(
                f"--shapes {profile}: dimension {i} of input {name!r} ({_fmt_dims(dims)}) is fixed to {d} in the "
                "ONNX file; export it with --dynamic to vary it"
            )


def _fmt_dims(dims: tuple[int, ...]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in dims)


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


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    """``best.fp16.engine`` -> ``best.fp16.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


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
            f"input {inp.name!r} is {_fmt_dims(dims)}: give its range with --shapes MIN:OPT:MAX"
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
            "onnx_sha256": _sha256(onnx_path),
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

    model = onnx.load(str(path), load_external_data=False)
    try:
        return ModelMeta.from_props({p.key: p.value for p in model.metadata_props})
    except ValueError as e:
        raise EngineBuildError(f"{path}: {e}") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------- GPU query
def _gpu_cuda_python() -> tuple[str, str] | None:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    err, prop = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"


def _gpu_nvidia_smi() -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    name, _, cc = out.strip().partition(",")
    return (name.strip(), cc.strip()) if name.strip() else None


def gpu_info() -> tuple[str | None, str | None]:
    """(name, compute capability "major.minor") of GPU 0 via cuda-python, else nvidia-smi; (None, None) if none."""
    for query in (_gpu_cuda_python, _gpu_nvidia_smi):
        found = query()
        if found:
            return found
    return None, None


# ----------------------------------------------------------------------------------------------------- loading
def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar record of an engine (``x.engine``) or the sidecar file itself (``x.engine.json``).

    Raises:
        EngineCompatError: no sidecar, or not one written by `build_engine`.
    """
    path = Path(path)
    side = path if path.suffix == ".json" else sidecar_path(path)
    if not side.is_file():
        raise EngineCompatError(
            f"{path} has no sidecar {side.name} recording how it was built; rebuild it with "
            "`python export/to_trt.py MODEL.onnx` (an engine cannot be checked or run without one)"
        )
    try:
        record = json.loads(side.read_text())
    except ValueError as e:
        raise EngineCompatError(f"{side} is not valid JSON ({e}); rebuild the engine") from e
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT or "build" not in record:
        raise EngineCompatError(f"{side} is not a {SIDECAR_FORMAT} sidecar; rebuild the engine")
    return record


def rebuild_command(record: dict[str, Any]) -> str:
    """The ``to_trt.py`` command that rebuilds the engine a sidecar describes, with its original options."""
    b = record["build"]
    s = b.get("shapes") or {}
    cmd = ["python", "export/to_trt.py", b.get("onnx") or "MODEL.onnx"]
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
