"""Model runners behind one interface, chosen by file suffix.

    runner = load_runner("student.onnx", device="cuda")   # or .pth, .engine
    labels = runner.predict([cv2.imread("frame.png")])    # one (H, W) label map per image
    logits = runner.predict_logits([image])               # float32 (N, K, h, w) at network resolution

Every runner pre- and post-processes from the model's own metadata (see :class:`~infer.runtime.base.Runner`);
torch, onnxruntime, tensorrt and the CUDA buffer libraries are imported only by the runner that needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

from infer.registry import Registry
from infer.runtime.base import Runner, RunnerError
from infer.runtime.ort_runner import OrtRunner
from infer.runtime.ov_runner import OvRunner
from infer.runtime.torch_runner import TorchRunner
from infer.runtime.trt_runner import CUDA_LIBS, TrtRunner

__all__ = ["CUDA_LIBS", "RUNTIMES", "Runner", "RunnerError", "load_runner"]

# file suffix -> runner class
RUNTIMES: Registry[type[Runner]] = Registry("model file suffix")
for _suffix, _cls in {
    ".pth": TorchRunner,
    ".pt": TorchRunner,
    ".onnx": OrtRunner,
    ".engine": TrtRunner,
    ".plan": TrtRunner,
    ".xml": OvRunner,
}.items():
    RUNTIMES.register(_suffix)(_cls)


def load_runner(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    provider: str | None = None,
    cuda_lib: str = "cuda-python",
    threads: int | None = None,
) -> Runner:
    """Load a model file with the runner its suffix names.

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
    cls = RUNTIMES.get(path.suffix.lower())
    return cls(path, device=device, provider=provider, cuda_lib=cuda_lib, threads=threads)
