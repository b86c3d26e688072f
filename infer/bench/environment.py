"""The machine and library versions a benchmark was measured with (no library is imported for this)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from segkd.infer.runtime.gpu import gpu_names

__all__ = ["environment"]


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        if m:
            return m[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None = None) -> dict[str, Any]:
    """The machine and library versions the numbers were measured with (no library is imported for this)."""
    mem_total = None
    with contextlib.suppress(OSError, TypeError):  # not Linux
        kib = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]  # type: ignore[index]
        mem_total = round(int(kib) / 2**20, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": cores,
        "memory_gib": mem_total,
        "gpus": gpu_names(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": {
            "segkd": _version("segkd"),
            "numpy": _version("numpy"),
            "opencv": _version("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime-gpu", "onnxruntime"),
            "torch": _version("torch"),
            "tensorrt": _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
            "cuda-python": _version("cuda-python"),
            "pycuda": _version("pycuda"),
        },
    }
