"""Model runners behind one interface, chosen by file suffix through the format table (`segkd.infer.formats`).

    runner = load_runner("student.onnx", device="cuda")   # or .pth, .engine
    labels = runner.predict([cv2.imread("frame.png")])    # one (H, W) label map per image
    logits = runner.predict_logits([image])               # float32 (N, K, h, w) at network resolution

Every runner pre- and post-processes from the model's own metadata (see :class:`~segkd.infer.runtime.base.Runner`);
torch, onnxruntime, tensorrt and the CUDA buffer libraries are imported only by the runner that needs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segkd.infer.formats import format_for_path, suffixes
from segkd.infer.runtime.base import Runner, RunnerError
from segkd.infer.runtime.trt_runner import CUDA_LIBS

__all__ = ["CUDA_LIBS", "RUNTIMES", "Runner", "RunnerError", "load_runner"]


class _Runtimes:
    """File suffix -> runner class, read from the format table (kept for ``RUNTIMES.get(".onnx")`` callers)."""

    def names(self) -> list[str]:
        return sorted(suffixes())

    def get(self, suffix: str) -> type[Runner]:
        return format_for_path(f"model{suffix}").load_runner()

    def __contains__(self, suffix: object) -> bool:
        return suffix in suffixes()

    def __iter__(self) -> Any:
        return iter(self.names())


RUNTIMES = _Runtimes()


def load_runner(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    provider: str | None = None,
    cuda_lib: str = "cuda-python",
    threads: int | None = None,
) -> Runner:
    """Load a model file with the runner its suffix names (see `segkd.infer.formats`).

    Args:
        path: ``.pth``/``.pt`` checkpoint, ``.onnx`` file or ``.engine``/``.plan`` TensorRT engine.
        device: ``"cpu"`` or ``"cuda"``.
        provider: ONNX Runtime provider to use instead of the automatic choice (``.onnx`` only).
        cuda_lib: ``"cuda-python"`` or ``"pycuda"`` for TensorRT buffers (engines only).
        threads: CPU threads for PyTorch / ONNX Runtime (None: the library's default).

    Raises:
        KeyError: unknown suffix (the message lists the known ones).
        RunnerError: the file cannot be loaded (missing library, corrupted file, engine built elsewhere, ...).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    path = Path(path)
    cls = format_for_path(path).load_runner()
    return cls(path, device=device, provider=provider, cuda_lib=cuda_lib, threads=threads)
