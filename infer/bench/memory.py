"""Peak resident memory of this process over a stretch of work (the CPU memory column of the benchmark)."""

from __future__ import annotations

import gc
import re
import threading
from pathlib import Path

__all__ = ["PeakRSS"]


class PeakRSS:
    """Peak resident memory of this process between ``start()`` and ``peak_delta()``, in bytes.

    Linux: the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``. Elsewhere a
    thread samples the resident size every 2 ms (needs psutil); without either it reports None.
    """

    def __init__(self) -> None:
        self._base = 0
        self._hwm = False
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text)[1]) * 1024  # type: ignore[index]

    def start(self) -> PeakRSS:
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self._base, self._hwm = self._status("VmRSS"), True
            return self
        except OSError:
            pass
        try:
            import psutil
        except ImportError:
            return self
        proc = psutil.Process()
        self._base = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._samples.append(proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def peak_delta(self) -> int | None:
        if self._hwm:
            return self._status("VmHWM") - self._base
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        return max(self._samples, default=self._base) - self._base
