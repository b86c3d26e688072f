"""Where rendered frames go: an MP4 file written temp-then-rename, and the check that a window can open."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CODECS", "DisplayError", "VideoSink", "check_display", "screen_size", "window_size"]


class DisplayError(RuntimeError):
    """A window was asked for where there is no display."""


# Codecs tried in order: H.264 plays in every browser, but OpenCV's pip wheels carry an FFmpeg without an H.264
# encoder; MPEG-4 Part 2 (mp4v) is always there and plays in VLC/ffplay, not in browsers.
CODECS = ("avc1", "mp4v")


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter | None, str]:
    """The first codec of :data:`CODECS` OpenCV can write here (OpenCV's own complaints silenced)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        for codec in CODECS:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
            if writer.isOpened():
                return writer, codec
            writer.release()
    finally:
        cv2.utils.logging.setLogLevel(level)
    return None, ""


class VideoSink:
    """MP4 writer at the source's frame rate, sized by the first frame written: H.264 where OpenCV can encode it,
    else MPEG-4 Part 2 with a note (``codec`` says which).

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
        self.codec = ""

    def write(self, img: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = img.shape[:2]
            self._writer, self.codec = _open_writer(self._tmp, self.fps, (w, h))
            if self._writer is None:
                raise OSError(
                    f"cannot write video {self.path}: OpenCV could not create an MP4 file of {w}x{h} at "
                    f"{self._tmp}; is the folder writable, with space left?"
                )
            if self.codec != CODECS[0]:
                print(
                    f"note: {self.path} is MPEG-4 Part 2 (this OpenCV cannot encode H.264), which browsers do not "
                    f"play; for the web: ffmpeg -i {self.path} -c:v libx264 {self.path.with_suffix('.h264.mp4')}",
                    file=sys.stderr,
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


def screen_size() -> tuple[int, int]:
    """(width, height) of the screen in pixels, or 1920x1080 when it cannot be asked (no Tk)."""
    try:
        import tkinter

        root = tkinter.Tk()
        root.withdraw()
        size = root.winfo_screenwidth(), root.winfo_screenheight()
        root.destroy()
        return size
    except Exception:  # no tkinter, or no display it can reach: a common desktop size
        return 1920, 1080


def window_size(
    frame_wh: tuple[int, int], screen_wh: tuple[int, int], margin: float = 0.9
) -> tuple[int, int]:
    """The frame's own size, scaled down (keeping its aspect) only when it exceeds ``margin`` of the screen."""
    w, h = frame_wh
    scale = min(1.0, margin * screen_wh[0] / w, margin * screen_wh[1] / h)
    return max(1, round(w * scale)), max(1, round(h * scale))
