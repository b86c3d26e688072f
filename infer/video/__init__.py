"""Video segmentation demo: sources, rendering, timing and the frame loop behind `infer/run_camera.py`.

A source is a camera index (``"0"``), a stream URL (anything with ``://``, read through FFMPEG) or a video file.
Files are read in order, every frame; live sources are read on a thread that keeps only the newest frame, so latency
does not grow when the model is slower than the camera. Each frame goes through timed stages (decode, preprocess,
inference, postprocess, render: drawing, writing and showing) and is shown, written, or both. numpy + OpenCV only (no torch).

Modules: `sources` (cameras, streams, files), `render` (colours, legend, stats), `timing` (per-stage times),
`output` (MP4 writer, display check), `loop` (`run_demo`).
"""

from segkd.infer.video.loop import DemoOptions, Summary, run_demo, write_summary
from segkd.infer.video.output import DisplayError, VideoSink, check_display
from segkd.infer.video.render import VIEWS, draw_legend, draw_stats, legend_entries, overlay, render
from segkd.infer.video.sources import (
    FileReader,
    LatestFrameReader,
    SourceError,
    SourceInfo,
    StreamStopped,
    open_source,
)
from segkd.infer.video.timing import STAGES, StageTimer

__all__ = [
    "STAGES",
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
