"""Where rendered frames go: an MP4 file written temp-then-rename, and the check that a window can open."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ["DisplayError", "VideoSink", "check_display"]


class DisplayError(RuntimeError):
    """A window was asked for where there is no display."""


class VideoSink:
    """MP4 writer (``mp4v``) at the source's frame rate, sized by the first frame written.

    Frames go to a hidden file beside ``path`` that replaces ``path`` in one rename on :meth:`close` (the shared
    ``atomic_path`` cannot serve: its ``.tmp`` suffix would stop FFMPEG choosing the MP4 container). ``close(keep=
    False)`` removes the partial file instead.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self._writer: cv2.VideoWriter | None = None

    def write(self, img: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = img.shape[:2]
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(
                    f"cannot write video {self.path}: OpenCV could not create an mp4v file of {w}x{h} at "
                    f"{self._tmp}; is the folder writable, with space left?"
                )
        self._writer.write(img)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file (the MP4 index is written on release, without it the video does not play)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if keep:
                os.replace(self._tmp, self.path)
        self._tmp.unlink(missing_ok=True)


def check_display() -> None:
    """Raise :class:`DisplayError` where no window can open (Linux without X11/Wayland)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise DisplayError(
            "no display found (DISPLAY is not set): run with --headless, and --save out.mp4 to keep the result"
        )
