"""Video sources: a camera index (``"0"``), a stream URL (anything with ``://``, read through FFMPEG) or a file.

Files are read in order, every frame; live sources are read on a thread that keeps only the newest frame, so
latency does not grow when the model is slower than the camera.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["FileReader", "LatestFrameReader", "SourceError", "SourceInfo", "StreamStopped", "open_source"]

_FALLBACK_FPS = 30.0
_OPEN_TIMEOUT_MS = 10_000  # FFMPEG otherwise waits ~30 s on an unreachable stream


class SourceError(RuntimeError):
    """A video source that does not exist or cannot be opened."""


class StreamStopped(RuntimeError):
    """A live source that stopped delivering frames; ``summary`` holds the run up to then, when known."""

    summary: Any = None  # segkd.infer.video.loop.Summary


@dataclass
class SourceInfo:
    """What was opened: ``kind`` is ``camera``, ``stream`` or ``file``; ``frame_count`` is 0 when unknown."""

    name: str
    kind: str
    width: int
    height: int
    fps: float
    frame_count: int = 0

    def describe(self) -> str:
        count = f", {self.frame_count} frames" if self.frame_count else ""
        return f"{self.name} ({self.kind}, {self.width}x{self.height} @ {self.fps:g} fps{count})"


def _source_kind(source: str) -> str:
    if source.isdigit():
        return "camera"
    return "stream" if "://" in source else "file"


def _capture_camera(source: str) -> cv2.VideoCapture:
    return cv2.VideoCapture(int(source))


def _capture_stream(source: str) -> cv2.VideoCapture:
    timeouts = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        _OPEN_TIMEOUT_MS,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        _OPEN_TIMEOUT_MS,
    ]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)


def _capture_file(source: str) -> cv2.VideoCapture:
    if Path(source).is_dir():
        raise SourceError(
            f"{source!r} is a folder, not a video file; pass a video file in it, a camera index such as 0, or a "
            "stream URL (to segment a folder of images: segkd predict MODEL FOLDER)"
        )
    if not Path(source).is_file():
        raise SourceError(
            f"video file {source!r} not found (working directory: {os.getcwd()}). Pass an existing video file, "
            "a camera index such as 0, or a stream URL such as rtsp://host:554/path"
        )
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG)


_CAPTURES: dict[str, Callable[[str], cv2.VideoCapture]] = {
    "camera": _capture_camera,
    "stream": _capture_stream,
    "file": _capture_file,
}

_CANNOT_OPEN_HINTS = {
    "camera": "is a camera connected and free (not used by another program)? List devices with "
    "`ls /dev/video*` and try another index, e.g. --source 1",
    "stream": "check the URL, credentials and network, and that it plays in ffplay or VLC; for RTSP behind a "
    "firewall try OPENCV_FFMPEG_CAPTURE_OPTIONS='rtsp_transport;tcp'",
    "file": "is it a video OpenCV's FFMPEG backend decodes (mp4, avi, mkv, ...)? Check that it plays in ffplay or VLC",
}


def _stream_fps(cap: cv2.VideoCapture) -> float:
    """The source's frame rate; cameras and streams often report 0 or nonsense, then 30 is assumed."""
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 1.0 <= fps <= 240.0 else _FALLBACK_FPS


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(level)


def open_source(source: str) -> FileReader | LatestFrameReader:
    """Open ``source``: ``"0"`` -> camera 0, ``"x://..."`` -> stream, anything else -> video file.

    Raises:
        SourceError: the source does not exist or cannot be opened; the message names it and what to try.
    """
    kind = _source_kind(source)
    with _quiet_opencv():  # OpenCV's backend-by-backend warnings would bury the one message below
        cap = _CAPTURES[kind](source)
        ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise SourceError(f"cannot open {kind} {source!r}: {_CANNOT_OPEN_HINTS[kind]}")
    h, w = first.shape[:2]
    count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0) if kind == "file" else 0
    info = SourceInfo(source, kind, w, h, _stream_fps(cap), count)
    reader_cls = FileReader if kind == "file" else LatestFrameReader
    return reader_cls(cap, info, first)


class FileReader:
    """Every frame of a file, in order; :meth:`read` returns ``None`` at the end."""

    def __init__(self, cap: Any, info: SourceInfo, first: np.ndarray | None = None) -> None:
        self.cap, self.info, self._pending = cap, info, first
        self.dropped = 0  # never: kept for the same interface as LatestFrameReader

    def start(self) -> None:
        """Nothing to start: frames are decoded on demand."""

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


class LatestFrameReader:
    """Reads a live source on a thread and keeps only the newest frame.

    When the consumer is slower than the source the frames in between are dropped (counted in ``dropped``),
    so what is shown is at most one frame old. A failed read, or no new frame for ``stall_s`` seconds, ends the
    stream: :meth:`read` then raises :class:`StreamStopped`.
    """

    def __init__(
        self, cap: Any, info: SourceInfo, first: np.ndarray | None = None, stall_s: float = 5.0
    ) -> None:
        self.cap, self.info, self.stall_s = cap, info, stall_s
        self._cond = threading.Condition()
        self._frame, self._seq, self._taken = first, int(first is not None), 0
        self._ended: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="frame-reader", daemon=True)

    @property
    def dropped(self) -> int:
        """Frames captured but never handed out."""
        with self._cond:
            return self._seq - self._taken - int(self._frame is not None)

    def start(self) -> None:
        """Start capturing; call it just before the first :meth:`read` (e.g. once the model has loaded)."""
        if self._thread.ident is None:
            with self._cond:
                self._frame = None  # the frame that proved the source open is stale by now
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ok, frame = self.cap.read()
            with self._cond:
                if not ok:
                    self._ended = "the source returned no frame"
                    self._cond.notify_all()
                    return
                self._frame, self._seq = frame, self._seq + 1
                self._cond.notify_all()

    def read(self) -> np.ndarray:
        """The newest frame not yet returned; waits for one.

        Raises:
            StreamStopped: the stream ended or stalled.
        """
        self.start()
        with self._cond:
            got = self._cond.wait_for(lambda: self._frame is not None or self._ended, timeout=self.stall_s)
            if self._frame is None:
                why = self._ended or f"no new frame for {self.stall_s:g} s"
                raise StreamStopped(
                    f"{self.info.kind} {self.info.name!r} stopped after {self._seq} frames ({why}). Check the "
                    "cable or network connection and that no other program took the device, then run again"
                )
            assert got
            frame, self._frame = self._frame, None
            self._taken += 1
            return frame

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # releasing under a read still blocked in FFMPEG could crash
            self.cap.release()
