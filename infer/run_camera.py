"""Live video segmentation: a model's classes over a camera, a stream or a video file.

    python infer/run_camera.py MODEL [--source 0|video.mp4|rtsp://...] [--view overlay|mask|side] [--alpha 0.5]
        [--save out.mp4] [--headless] [--max-frames N] [--device cpu|cuda] [--provider NAME] [--threads N]
        [--size HxW] [--fast-postprocess] [--snapshot-dir DIR] [--json-summary PATH] [--no-stats] [--no-legend]

MODEL is a file of any format in `segkd.infer.formats` (.pth, .onnx, .engine, ...). In the window: q / Esc quit, space pauses, s saves a
snapshot. Exit status: 0 done, 2 the source, display or model cannot be used or a live stream stopped, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

from segkd.infer.cliargs import hw_arg
from segkd.infer.fileio import check_writable, check_writable_dir
from segkd.infer.formats import suffix_help
from segkd.infer.video import (
    VIEWS,
    DemoOptions,
    DisplayError,
    SourceError,
    StreamStopped,
    check_display,
    open_source,
    run_demo,
    write_summary,
)
from segkd.script import prog


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog("infer/run_camera.py"),
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
    )
    p.add_argument("model", help=f"model file: {suffix_help()}")
    p.add_argument("--source", default="0", help="camera index (0), video file, or stream URL (rtsp://...)")
    p.add_argument("--view", default="overlay", choices=list(VIEWS), help="side: input and mask side by side")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours, 0..1")
    p.add_argument("--save", type=Path, help="write the rendered video (mp4, the source's frame rate)")
    p.add_argument("--headless", action="store_true", help="open no window (servers, SSH, tests)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument(
        "--provider", help="ONNX Runtime provider, e.g. CUDAExecutionProvider (default: by --device)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: the runtime's)")
    p.add_argument(
        "--size", type=hw_arg, help="network input HxW for dynamic-size models (default: the frame's)"
    )
    p.add_argument(
        "--fast-postprocess",
        action="store_true",
        help="argmax at network resolution, then upsample the labels (far cheaper for many classes; blockier)",
    )
    p.add_argument("--snapshot-dir", type=Path, default=Path("."), help="where the s key saves PNG snapshots")
    p.add_argument("--json-summary", type=Path, help="also write the exit summary as JSON")
    p.add_argument(
        "--no-stats",
        dest="stats",
        action="store_false",
        help="leave out the FPS / stage-times panel (top left)",
    )
    p.add_argument(
        "--no-legend", dest="legend", action="store_false", help="leave out the class legend (top right)"
    )
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        opts = DemoOptions(
            view=args.view,
            alpha=args.alpha,
            save=args.save,
            headless=args.headless,
            max_frames=args.max_frames,
            size=args.size,
            fast_postprocess=args.fast_postprocess,
            snapshot_dir=args.snapshot_dir,
            stats=args.stats,
            legend=args.legend,
        )
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        for path, what in ((args.save, "--save"), (args.json_summary, "--json-summary")):
            if path is not None:
                check_writable(path, what)  # before the model loads and frames are spent
        check_writable_dir(args.snapshot_dir, "--snapshot-dir")
        model = Path(args.model)
        if not model.is_file():  # before a window opens or a camera starts
            raise ValueError(
                f"model {model} is a folder; pass a model file in it"
                if model.is_dir()
                else f"model {model} does not exist"
            )
        if not args.headless:
            check_display()
        reader = open_source(args.source)
    except (ValueError, SourceError, DisplayError) as e:
        return _fail(str(e))
    try:
        from segkd.infer.runtime import load_runner

        runner = load_runner(args.model, device=args.device, provider=args.provider, threads=args.threads)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        reader.close()
        return _fail(f"cannot load model {args.model}: {e.args[0] if isinstance(e, KeyError) else e}")
    code, stopped = 0, None
    try:
        summary = run_demo(runner, reader, opts)
        code = 130 if summary.stop.startswith("interrupted") else 0
    except StreamStopped as e:
        summary, stopped, code = e.summary, e, 2
    except (ValueError, OSError) as e:  # --size a fixed-size model refuses, --save to a read-only folder, ...
        return _fail(str(e))
    finally:
        runner.close()
    print(summary.format(), flush=True)
    if args.json_summary:
        write_summary(summary, args.json_summary)
    if stopped is not None:
        _fail(str(stopped))
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while the model loads; the frame loop handles its own
        sys.exit(130)
