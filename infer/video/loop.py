"""The frame loop of the video demo: read, segment, draw, write, show, until the source ends or the user stops."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segkd.infer.fileio import atomic_path, atomic_write_text
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.base import output_to_labels
from segkd.infer.video.output import VideoSink, check_display, screen_size, window_size
from segkd.infer.video.render import VIEWS, draw_legend, draw_stats, legend_entries, render
from segkd.infer.video.sources import FileReader, LatestFrameReader, StreamStopped
from segkd.infer.video.timing import STAGES, StageTimer

__all__ = ["DemoOptions", "Summary", "run_demo", "write_summary"]

_QUIT_KEYS = (ord("q"), 27)  # q, Esc
_WINDOW = "segkd"
_MAX_SIDE = 16384  # per side of --size: larger is a typo


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
        if self.size is not None and (
            len(self.size) != 2 or min(self.size) < 1 or max(self.size) > _MAX_SIDE
        ):
            problems.append(f"size {self.size} must be two numbers (height, width) within 1..{_MAX_SIDE}")
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

    Runners of :mod:`segkd.infer.runtime` expose ``make_input`` (resize, normalise) and ``forward`` (the network);
    the label map is made here with the runtime's own resize and argmax, so it equals ``runner.predict``.
    ``fast`` takes the argmax at network resolution and upsamples the labels by nearest neighbour instead:
    with 19 classes at 720p that is ~1 ms instead of ~120 ms on a CPU, at the price of blockier class edges.
    When the network runs at the frame's size the two are the same argmax (19 x 256 x 512: ~1.3 ms on one core).
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
        outputs_labels = getattr(self.runner, "outputs_labels", False)  # the network ends in an argmax
        k = self.runner.meta.num_classes
        return output_to_labels(
            out[0],
            hw,
            k,
            outputs_labels=outputs_labels,
            fast=self.fast,
            align_corners=self.runner.meta.align_corners,
        )


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
        self._window_sized = False

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
        if self.sink is not None:
            self.sink.write(self.canvas)
        self.frames += 1
        paused = self.paused_s
        go_on = self.opts.headless or self.handle_keys()
        t5 = time.perf_counter()
        drawn = t5 - t4 - (self.paused_s - paused)  # drawing, writing and showing; a pause is not counted
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, drawn)):
            self.timer.add(stage, dt)
        self.timer.frame_done(t5)
        return None if go_on else "quit key"

    def _draw(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        canvas = render(self.opts.view, frame, labels, self.meta, self.opts.alpha)
        if self.opts.legend:
            draw_legend(canvas, legend_entries(labels, self.meta.num_classes), self.meta)
        if self.opts.stats:
            recent = self.timer.recent_ms()
            draw_stats(canvas, self.timer.recent_fps(), recent)  # render: the frames before this one
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
        if not self._window_sized:  # open at the frame's size, scaled down only to fit the screen
            cv2.resizeWindow(_WINDOW, *window_size(self.canvas.shape[1::-1], screen_size()))
            self._window_sized = True
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
        # resizable (large frames), without the Qt toolbar and status bar that would take height from the frame
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
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
