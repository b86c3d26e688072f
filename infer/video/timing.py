"""Per-stage wall times of every frame of the video demo."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = ["STAGES", "StageTimer"]

# decode = reading and decoding the frame; preprocess = resize, normalise, layout; inference = the network call;
# postprocess = logits to labels at the frame's size; render = colours, legend, HUD, video writer, window and keys.
STAGES = ("decode", "preprocess", "inference", "postprocess", "render")


class StageTimer:
    """Per-stage wall times (``time.perf_counter``) of every frame, plus a recent window for the on-frame display."""

    def __init__(self, stages: Sequence[str] = STAGES, window: int = 30) -> None:
        self.samples: dict[str, list[float]] = {s: [] for s in stages}
        self._ends: deque[float] = deque(maxlen=window + 1)
        self._window = window

    def add(self, stage: str, seconds: float) -> None:
        self.samples[stage].append(seconds)

    def frame_done(self, t: float) -> None:
        """Mark the end of a frame at perf_counter time ``t`` (for the recent frame rate)."""
        self._ends.append(t)

    def recent_fps(self) -> float:
        if len(self._ends) < 2:
            return 0.0
        return (len(self._ends) - 1) / max(self._ends[-1] - self._ends[0], 1e-9)

    def forget_gap(self) -> None:
        """Drop the recent window after a pause, so paused time does not read as slowness."""
        self._ends.clear()

    def recent_ms(self) -> dict[str, float]:
        return {s: 1e3 * float(np.mean(v[-self._window :])) if v else 0.0 for s, v in self.samples.items()}

    def summary_ms(self) -> dict[str, dict[str, float]]:
        """Per stage: mean, median and 90th percentile in milliseconds."""
        out = {}
        for s, v in self.samples.items():
            a = 1e3 * np.asarray(v or [0.0])
            out[s] = {
                "mean": float(a.mean()),
                "median": float(np.median(a)),
                "p90": float(np.percentile(a, 90)),
            }
        return out
