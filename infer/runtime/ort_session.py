"""The ONNX Runtime session every check uses (verification, shape probing, MAC counting), apart from the runner.

The runner (:mod:`segkd.infer.runtime.ort_runner`) counts MACs with :mod:`segkd.infer.macs`, which itself needs a
session: both take it from here, so neither imports the other at module level or lazily.
"""

from __future__ import annotations

import os
from typing import Any

from segkd.infer.runtime.base import RunnerError

__all__ = ["cpu_session", "import_ort"]


def cpu_session(model: str | os.PathLike[str] | bytes) -> Any:
    """A quiet CPU-only ONNX Runtime session (verification, shape probing): the reference every check uses."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # constant-folding notes about fp16 kernels are not the user's concern
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def import_ort() -> Any:
    """``onnxruntime``, or a RunnerError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RunnerError(
            "running an .onnx file needs ONNX Runtime: pip install onnxruntime-gpu (or onnxruntime on "
            "platforms without CUDA builds)"
        ) from e
    return onnxruntime
