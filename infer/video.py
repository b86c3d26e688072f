"""Video segmentation demo: sources, rendering, timing and the frame loop behind `infer/run_camera.py`.

A source is a camera index (``"0"``), a stream URL (anything with ``://``, read through FFMPEG) or a video file.
Files are read in order, every frame; live sources are read on a thread that keeps only the newest frame, so latency
does not grow when the model is slower than the camera. Each frame goes through timed stages (capture, preprocess,
inference, postprocess, render, output) and is shown, written, or both. numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from infer.fileio import atomic_path, atomic_write_text
from infer.meta import ModelMeta, colorize

__all__ = [
    "VIEWS",
    "SourceError",
    "StreamStopped",
    "DisplayError",
    "check_display",
    "SourceInfo",
    "FileReader",
    "LatestFrameReader",
    "open_source",
    "overlay",
    "render",
    "legend_entries",
    "draw_legend",
    "draw_stats",
    "StageTimer",
    "VideoSink",
    "DemoOptions",
    "Summary",
    "run_demo",
    "write_summary",
]

# The first four are the model's path and drawn on the frame; render = colours, legend, text; output = video
# writer, window and keys.
STAGES = ("capture", "preprocess", "inference", "postprocess", "render", "output")
_FALLBACK_FPS = 30.0
_OPEN_TIMEOUT_MS = 10_000  # FFMPEG otherwise waits ~30 s on an unreachable stream
_QUIT_KEYS = (ord("q"), 27)  # q, Esc
_WINDOW = "segkd"


class SourceError(RuntimeError):
    """A video source that does not exist or cannot be opened."""


class StreamStopped(RuntimeError):
    """A live source that stopped delivering frames; ``summary`` holds the run up to then, when known."""

    summary: Summary | None = None


class DisplayError(RuntimeError):
    """A window was asked for where there is no display."""


# --------------------------------------------------------------------------------------------------- sources


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


# --------------------------------------------------------------------------------------------------- rendering


def overlay(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """``round((1 - alpha) * frame + alpha * color)`` per pixel, both BGR uint8 (H, W, 3)."""
    return cv2.addWeighted(frame, 1.0 - alpha, color, alpha, 0.0)


def _view_overlay(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return overlay(frame, color, alpha)


def _view_mask(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return color


def _view_side(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return np.hstack([frame, color])  # (H, 2W, 3): input left, segmentation right


VIEWS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "overlay": _view_overlay,
    "mask": _view_mask,
    "side": _view_side,
}


def render(
    view: str, frame: np.ndarray, labels: np.ndarray, meta: ModelMeta, alpha: float = 0.5
) -> np.ndarray:
    """The picture of one frame: ``overlay`` blends the palette colours over the frame by ``alpha``,
    ``mask`` shows the colours alone, ``side`` puts the frame and the colours side by side (twice as wide)."""
    assert labels.shape == frame.shape[:2], (labels.shape, frame.shape)
    if labels.dtype == np.uint8:  # one table lookup: 4x faster than colorize's clip + cast on every pixel
        lut = colorize(np.arange(256, dtype=np.uint8), meta.palette, meta.ignore_index)  # (256, 3) BGR
        color = np.take(lut, labels, axis=0)  # (H, W, 3)
    else:
        color = colorize(labels, meta.palette, meta.ignore_index)
    return VIEWS[view](frame, color, alpha)


def legend_entries(labels: np.ndarray, num_classes: int, max_items: int | None = None) -> list[int]:
    """Class ids present in ``labels``, largest area first (ties by id); at most ``max_items``."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    return order[:max_items].tolist() if max_items is not None else order.tolist()


def _font_scale(height: int) -> float:
    return float(np.clip(height / 720.0, 0.4, 1.0))


def _line_height(scale: float) -> int:
    return int(round(36 * scale))


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Darken a box in place (halve it) so white text stays readable on any background."""
    roi = img[max(y0, 0) : y1, max(x0, 0) : x1]
    np.right_shift(roi, 1, out=roi)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_legend(img: np.ndarray, classes: Sequence[int], meta: ModelMeta) -> None:
    """Draw a swatch and name per class id in ``classes`` in the top-right corner of ``img`` (in place).

    Classes that do not fit the height are summarised as ``+N more``.
    """
    if not classes:
        return
    h, w = img.shape[:2]
    scale = _font_scale(h)
    line = _line_height(scale)
    fit = max((h - 8) // line, 1)
    shown = list(classes) if len(classes) <= fit else list(classes[: fit - 1])
    names = [meta.class_names[c] for c in shown] + (
        [f"+{len(classes) - len(shown)} more"] if shown != list(classes) else []
    )
    text_w = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in names)
    sw = line - 6  # swatch side
    x0 = w - (text_w + sw + 16)
    _shade(img, x0, 0, w, len(names) * line + 6)
    for i, name in enumerate(names):
        y = 4 + i * line
        if i < len(shown):
            r, g, b = meta.palette[shown[i]]
            cv2.rectangle(
                img, (x0 + 4, y + 2), (x0 + 4 + sw, y + 2 + sw), (int(b), int(g), int(r)), cv2.FILLED
            )
        _text(img, name, (x0 + sw + 10, y + sw), scale)


def draw_stats(img: np.ndarray, fps: float, stage_ms: dict[str, float]) -> None:
    """Draw the frame rate and the per-stage milliseconds in the top-left corner of ``img`` (in place)."""
    scale = _font_scale(img.shape[0])
    lines = [f"{fps:5.1f} FPS"] + [f"{name:<11} {ms:5.1f} ms" for name, ms in stage_ms.items()]
    line = _line_height(scale)
    width = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for s in lines)
    _shade(img, 0, 0, width + 12, len(lines) * line + 8)
    for i, s in enumerate(lines):
        _text(img, s, (6, (i + 1) * line), scale)


# --------------------------------------------------------------------------------------------------- timing


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


# --------------------------------------------------------------------------------------------------- output


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


# --------------------------------------------------------------------------------------------------- loop


@dataclass
class DemoOptions:
    """Settings of one demo run (see `infer/run_camera.py` for their command-line names)."""

    view: str = "overlay"
    alpha: float = 0.5
    save: Path | None = None
    headless: bool = False
    max_frames: int | None = None
    size: tuple[int, int] | None = None
    fast_postprocess: bool = False
    snapshot_dir: Path = Path(".")
    stats: bool = True
    legend: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.view not in VIEWS:
            problems.append(f"view {self.view!r} is not one of {', '.join(VIEWS)}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha {self.alpha} is outside 0..1")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            problems.append(f"size {self.size} must be two positive numbers (height, width)")
        if self.max_frames is not None and self.max_frames < 1:
            problems.append(f"max_frames {self.max_frames} must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Summary:
    """What a run did, printed at exit and written as JSON with ``--json-summary``."""

    source: str
    model: str
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    stop: str = ""
    saved: str | None = None
    saved_frames: int = 0
    snapshots: list[str] = field(default_factory=list)
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def format(self) -> str:
        rows = [
            f"source   {self.source}",
            f"model    {self.model}",
            f"frames   {self.frames} processed, {self.dropped} dropped (stopped: {self.stop})",
            f"speed    {self.fps:.1f} FPS mean over {self.seconds:.2f} s",
            f"{'stage':<12}{'mean ms':>9}{'median':>9}{'p90':>9}",
        ]
        rows += [
            f"{s:<12}{v['mean']:>9.2f}{v['median']:>9.2f}{v['p90']:>9.2f}" for s, v in self.stages_ms.items()
        ]
        if self.saved:
            rows.append(f"saved    {self.saved} ({self.saved_frames} frames)")
        rows += [f"snapshot {p}" for p in self.snapshots]
        return "\n".join(rows)


class _Stages:
    """A runner's work split into the three timed steps.

    Runners of :mod:`infer.runtime` expose ``make_input`` (resize, normalise) and ``forward`` (the network);
    the label map is made here with the runtime's own resize and argmax, so it equals ``runner.predict``.
    ``fast`` takes the argmax at network resolution and upsamples the labels by nearest neighbour instead:
    with 19 classes at 720p that is ~1 ms instead of ~120 ms on a CPU, at the price of blockier class edges.
    Any other object with ``predict`` is timed as a whole under inference.
    """

    def __init__(self, runner: Any, size: tuple[int, int] | None = None, fast: bool = False) -> None:
        self.runner, self.size, self.fast = runner, size, fast
        self.split = all(callable(getattr(runner, m, None)) for m in ("make_input", "forward"))
        if size is not None and not self.split:
            raise ValueError(f"{type(runner).__name__} cannot run at a chosen size; leave the size out")
        if size is not None and getattr(runner, "input_size", None) not in (None, tuple(size)):
            h, w = runner.input_size
            raise ValueError(f"the model takes {h}x{w} inputs only; leave --size out or re-export it dynamic")

    def preprocess(self, frame: np.ndarray) -> Any:
        return self.runner.make_input([frame], self.size) if self.split else [frame]

    def infer(self, x: Any) -> Any:
        return self.runner.forward(x) if self.split else self.runner.predict(x)

    def postprocess(self, out: Any, hw: tuple[int, int]) -> np.ndarray:
        if not self.split:
            return out[0]
        from infer.runtime.base import resize_scores, scores_to_labels

        k = self.runner.meta.num_classes
        out = out[0]
        if getattr(self.runner, "outputs_labels", False):  # the network ends in an argmax
            labels = out.reshape(out.shape[-2:]).astype(np.uint8 if k <= 255 else np.int32)  # (h, w)
        elif self.fast:
            labels = scores_to_labels(out.astype(np.float32, copy=False), k)  # (h, w)
        else:
            scores = resize_scores(
                out.astype(np.float32, copy=False), hw, align_corners=self.runner.meta.align_corners
            )  # (K, H, W)
            return scores_to_labels(scores, k)  # (H, W)
        return cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)  # (H, W)


class _Loop:
    """State of one run: reader, model steps, timer, sink and the keys pressed."""

    def __init__(self, runner: Any, reader: FileReader | LatestFrameReader, opts: DemoOptions) -> None:
        self.runner, self.reader, self.opts = runner, reader, opts
        self.meta: ModelMeta = runner.meta
        self.stages = _Stages(runner, opts.size, opts.fast_postprocess)
        self.timer = StageTimer()
        self.sink = VideoSink(opts.save, reader.info.fps) if opts.save else None
        self.frames, self.paused_s = 0, 0.0
        self.snapshots: list[str] = []
        self.canvas: np.ndarray | None = None

    def step(self) -> str | None:
        """Process one frame: read, segment, draw, write, show; the reason to stop, or None to go on."""
        t0 = time.perf_counter()
        frame = self.reader.read()
        if frame is None:
            return "end of file"
        t1 = time.perf_counter()
        x = self.stages.preprocess(frame)
        t2 = time.perf_counter()
        out = self.stages.infer(x)
        t3 = time.perf_counter()
        labels = self.stages.postprocess(out, frame.shape[:2])
        t4 = time.perf_counter()
        self.canvas = self._draw(frame, labels)
        t5 = time.perf_counter()
        if self.sink is not None:
            self.sink.write(self.canvas)
        self.frames += 1
        paused = self.paused_s
        go_on = self.opts.headless or self.handle_keys()
        t6 = time.perf_counter()
        output = t6 - t5 - (self.paused_s - paused)
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, output)):
            self.timer.add(stage, dt)
        self.timer.frame_done(t6)
        return None if go_on else "quit key"

    def _draw(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        canvas = render(self.opts.view, frame, labels, self.meta, self.opts.alpha)
        if self.opts.legend:
            draw_legend(canvas, legend_entries(labels, self.meta.num_classes), self.meta)
        if self.opts.stats:
            recent = self.timer.recent_ms()
            draw_stats(canvas, self.timer.recent_fps(), {s: recent[s] for s in STAGES[:4]})
        return canvas

    def snapshot(self) -> None:
        if self.canvas is None:
            return
        self.opts.snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.opts.snapshot_dir / f"snapshot_{time.strftime('%Y%m%d_%H%M%S')}_{self.frames:06d}.png"
        ok, png = cv2.imencode(".png", self.canvas)
        assert ok
        with atomic_path(path) as tmp:
            tmp.write_bytes(png.tobytes())
        self.snapshots.append(str(path))
        print(f"snapshot saved to {path}", flush=True)

    def handle_keys(self) -> bool:
        """Show the frame and act on the key pressed; False to quit (q, Esc, or the window closed)."""
        cv2.imshow(_WINDOW, self.canvas)
        key = cv2.waitKey(1) & 0xFF
        if key == ord("s"):
            self.snapshot()
        if key == ord(" "):
            key = self._pause()
        return key not in _QUIT_KEYS and _window_open()

    def _pause(self) -> int:
        """Hold the frame until space (resume) or q/Esc (quit); 's' still saves. Paused time is not counted."""
        t, key = time.perf_counter(), 255
        while _window_open():
            key = cv2.waitKey(50) & 0xFF
            if key == ord("s"):
                self.snapshot()
            if key == ord(" ") or key in _QUIT_KEYS:
                break
        self.paused_s += time.perf_counter() - t
        self.timer.forget_gap()
        return key


def _window_open() -> bool:
    return cv2.getWindowProperty(_WINDOW, cv2.WND_PROP_VISIBLE) >= 1


@contextlib.contextmanager
def _sigint_stops_after_frame(requested: threading.Event) -> Iterator[None]:
    """Make a first Ctrl-C set ``requested`` (the loop then stops after the current frame, so that every frame
    counted is in the video); a second one interrupts at once. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(reader: FileReader | LatestFrameReader, opts: DemoOptions) -> Any:
    from tqdm import tqdm

    total = reader.info.frame_count or None
    if opts.max_frames:
        total = min(total or opts.max_frames, opts.max_frames)
    return tqdm(total=total, unit="frame", disable=None, desc="segmenting")


def run_demo(runner: Any, reader: FileReader | LatestFrameReader, opts: DemoOptions) -> Summary:
    """Segment every frame ``reader`` gives until it ends, ``max_frames``, q/Esc, or Ctrl-C.

    Ctrl-C stops after the frame in progress; pressed twice, at once.

    The video writer is always finished, so ``--save`` plays after Ctrl-C or a stopped stream; the partial file
    is removed only when an unexpected error ends the run.

    Raises:
        StreamStopped: a live source stopped (the summary so far is attached as ``summary``).
        DisplayError: a window was asked for where there is no display.
        ValueError: ``opts.size`` the model cannot run at.
    """
    try:
        if not opts.headless:
            check_display()
        loop = _Loop(runner, reader, opts)
    except BaseException:
        reader.close()
        raise
    if not opts.headless:
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)  # resizable, for large frames
    summary = Summary(
        reader.info.describe(), _describe_runner(runner), saved=str(opts.save) if opts.save else None
    )
    bar = _progress(reader, opts) if opts.headless else None
    keep, stopped, interrupt = True, None, threading.Event()
    start = time.perf_counter()
    try:
        reader.start()
        summary.stop = "max-frames"
        with _sigint_stops_after_frame(interrupt):
            while opts.max_frames is None or loop.frames < opts.max_frames:
                stop = loop.step() or ("interrupted (Ctrl-C)" if interrupt.is_set() else None)
                if stop is not None:
                    summary.stop = stop
                    break
                if bar is not None:
                    bar.update()
    except KeyboardInterrupt:  # a second Ctrl-C, or one raised inside the model
        summary.stop = "interrupted (Ctrl-C)"
    except StreamStopped as e:
        summary.stop, stopped = "stream stopped", e
    except BaseException:
        keep = False
        raise
    finally:
        summary.seconds = time.perf_counter() - start - loop.paused_s
        reader.close()
        if bar is not None:
            bar.close()
        if loop.sink is not None:
            loop.sink.close(keep=keep)
            summary.saved_frames = loop.sink.frames
        if not opts.headless:
            cv2.destroyAllWindows()
    summary.frames, summary.dropped, summary.snapshots = loop.frames, reader.dropped, loop.snapshots
    summary.fps = loop.frames / summary.seconds if summary.seconds > 0 else 0.0
    summary.stages_ms = loop.timer.summary_ms()
    if stopped is not None:
        stopped.summary = summary
        raise stopped
    return summary


def _describe_runner(runner: Any) -> str:
    parts = [str(getattr(runner, a)) for a in ("path", "format", "provider") if getattr(runner, a, None)]
    return " / ".join(parts) or type(runner).__name__


def write_summary(summary: Summary, path: str | os.PathLike[str]) -> None:
    """Write the summary as JSON, atomically."""
    atomic_write_text(path, summary.to_json() + "\n")
