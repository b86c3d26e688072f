"""GPU libraries and queries shared by the runners, the engine checks and the benchmark (all imported lazily).

cuda-python moved its runtime bindings to ``cuda.bindings.runtime`` in 12.6; older releases have ``cuda.cudart``.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

__all__ = [
    "TRT_INSTALL_HINT",
    "TensorRTUnavailable",
    "device_info",
    "device_name",
    "gpu_info",
    "gpu_names",
    "gpu_used_bytes",
    "import_cudart",
    "import_tensorrt",
]

TRT_INSTALL_HINT = "pip install -e .[trt]  (TensorRT and cuda-python wheels; needs an NVIDIA GPU and driver)"


class TensorRTUnavailable(ImportError):
    """TensorRT does not import here."""


def import_tensorrt() -> Any:
    """``import tensorrt`` or raise TensorRTUnavailable with the install command."""
    try:
        import tensorrt
    except ImportError as e:  # also OSError-like failures of the bindings surface as ImportError
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}); install it with: {TRT_INSTALL_HINT}"
        ) from e
    return tensorrt


def import_cudart() -> Any | None:
    """cuda-python's runtime module, or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def _ok(cudart: Any, err: Any) -> bool:
    return err == cudart.cudaError_t.cudaSuccess


def device_name(prop: Any) -> str:
    """The name field of ``cudaDeviceProp`` as text (bytes in some releases, NUL-padded in others)."""
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip()


def device_info(cudart: Any, device: int = 0) -> tuple[str, str] | None:
    """(name, compute capability "major.minor") of ``device`` through cuda-python, None when the query fails."""
    err, prop = cudart.cudaGetDeviceProperties(device)
    if not _ok(cudart, err):
        return None
    return device_name(prop), f"{prop.major}.{prop.minor}"


def _gpu_cuda_python() -> tuple[str, str] | None:
    cudart = import_cudart()
    return None if cudart is None else device_info(cudart, 0)


def _gpu_nvidia_smi() -> tuple[str, str] | None:
    rows = _nvidia_smi("name,compute_cap", "--id=0")
    if not rows:
        return None
    name, _, cc = rows[0].partition(",")
    return (name.strip(), cc.strip()) if name.strip() else None


def _nvidia_smi(query: str, *extra: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader", *extra],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_info() -> tuple[str | None, str | None]:
    """(name, compute capability "major.minor") of GPU 0 via cuda-python, else nvidia-smi; (None, None) if none."""
    for query in (_gpu_cuda_python, _gpu_nvidia_smi):
        found = query()
        if found:
            return found
    return None, None


def gpu_names() -> list[str]:
    """``"name, driver version"`` of every GPU nvidia-smi lists (empty without one)."""
    return _nvidia_smi("name,driver_version")


def gpu_used_bytes() -> int | None:
    """Device memory in use on the current GPU (all processes), via cuda-python; None without it or a GPU."""
    cudart = import_cudart()
    if cudart is None:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    return int(total - free) if _ok(cudart, err) else None
